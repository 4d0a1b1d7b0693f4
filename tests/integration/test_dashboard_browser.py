"""The dashboard in a real browser: Debian's headless Chromium against ``marsad serve``.

The service runs on 127.0.0.1 with the WhatsApp call and the blocked WhatsApp call
preloaded; Chromium loads ``/`` and ``/?lang=ar``, runs the page's script and
dumps the rendered DOM, which must show the data the API holds. Every host name
but 127.0.0.1 is made unresolvable for the browser, and the service's access log
must list only the page's own requests. Screenshots go to the test's temporary
directory; with ``MARSAD_UPDATE_SCREENSHOT=1`` the whole-page ones (English and Arabic,
1400 and 400 px wide, and a call's page) are copied to ``docs/`` for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.active import record_test
from api.store import SqliteStore
from policy.ledger import Ledger
from tests.activetests import measure
from tests.conftest import ROOT
from tests.integration.cdp import Browser
from tests.unit.api.test_api_http import Server, _until

CAPTURES = ROOT / "captures"
CHROMIUM = next((found for name in ("chromium", "chromium-browser")
                 if (found := shutil.which(name)) is not None), None)
BROWSER_S = 90.0
PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def _chromium(profile: Path, url: str, *mode: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-default-apps", "--hide-scrollbars",
            f"--user-data-dir={profile}", "--window-size=1400,1000",
            "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", *mode, url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=BROWSER_S,
                          check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _console(stderr: str) -> list[str]:
    """What the page wrote to the browser console, or what the browser said about it."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Server, dict[str, Any]]]:
    srv = Server(tmp_path / "data", "--preload", str(CAPTURES / "sample-call.pcap"),
                 str(CAPTURES / "sample-blocked.pcap"), str(CAPTURES / "bad-truncated.pcap"))
    try:
        _until("the server to answer /healthz", 30.0, srv.up)
        with httpx.Client(base_url=srv.base, timeout=10) as c:
            _until("the preloaded captures to be analysed", 90.0, lambda: [
                x for x in c.get("/v1/captures").json()["items"]
                if x["state"] == "done"][2:])
            blocked = c.get("/v1/calls", params={"verdict": "blocked"}).json()
            assert blocked["total"] == 1
            facts = {"blocked": blocked["items"][0], "calls": c.get("/v1/calls").json()["total"]}
        yield srv, facts
    finally:
        srv.stop()


def test_dashboard_renders_in_chromium(served: tuple[Server, dict[str, Any]],
                                       tmp_path: Path) -> None:
    srv, facts = served
    blocked = facts["blocked"]
    profile = tmp_path / "profile"

    raw = httpx.get(srv.base + "/").text
    assert not re.search(r"(?i)https?://", raw)
    for asset in ("dashboard.js", "dashboard.css", "i18n.json"):
        assert not re.search(r"(?i)https?://", httpx.get(f"{srv.base}/static/{asset}").text)

    en = _chromium(profile, srv.base + "/", "--dump-dom")
    dom = en.stdout
    assert '<html lang="en" dir="ltr">' in dom
    assert 'data-state="ready"' in dom, dom[-3000:]
    assert not re.search(r"(?i)https?://", dom)
    # Traffic per app: whatsapp in the chart's legend, drawn as an SVG path.
    assert '<li data-app="whatsapp"' in dom and '<bdi class="app">whatsapp</bdi>' in dom
    assert "<title>whatsapp</title>" in dom and "Traffic per app over time" in dom
    # Calls by verdict: the blocked call and the one that went through.
    assert re.search(r'<g class="verdict" data-verdict="blocked".*?>1</text>', dom)
    assert re.search(r'<g class="verdict" data-verdict="ok".*?>1</text>', dom)
    assert re.search(r'id="n-calls">' + str(facts["calls"]) + "<", dom)
    # The latest blocked call, its reasons and a link to its evidence bundle.
    row = re.search(r'<tr data-uid="' + blocked["uid"] + r'" data-verdict="blocked">(.*?)</tr>',
                    dom, re.S)
    assert row is not None, dom[-3000:]
    cells = row.group(1)
    assert "STUN requests got no answer" in cells and "media sent, none came back" in cells
    assert "<code dir=\"ltr\">stun-unanswered</code>" in cells
    assert "<code dir=\"ltr\">media-no-return</code>" in cells
    assert blocked["evidence"][0]["text"] in cells
    link = re.search(r'href="(/v1/calls/[^"?]+/evidence)\?capture=([^"]+)"', cells)
    assert f'href="/?call={blocked["uid"]}&amp;capture_of={blocked["capture_id"]}"' in cells
    assert link is not None
    assert link.group(1) == f"/v1/calls/{blocked['uid']}/evidence"
    assert link.group(2) == blocked["capture_id"]
    # Probe health: no probe runs here.
    assert 'data-state="absent">no probe<' in dom
    assert not [line for line in _console(en.stderr)
                if "Uncaught" in line or "Refused" in line], _console(en.stderr)

    ar = _chromium(profile, srv.base + "/?lang=ar", "--dump-dom")
    dom_ar = ar.stdout
    assert '<html lang="ar" dir="rtl">' in dom_ar
    assert 'data-state="ready"' in dom_ar
    assert not re.search(r"(?i)https?://", dom_ar)
    for label in ("حركة المرور لكل تطبيق عبر الزمن", "المكالمات حسب الحكم",
                  "أحدث المكالمات المحجوبة والمخنوقة والمتدهورة", "صحة المسبار",
                  "محجوبة", "طلبات STUN لم تلقَ ردًا", "حزمة الأدلة", "لا يوجد مسبار"):
        assert label in dom_ar, label
    for english in ("Traffic per app over time", "Calls by verdict", "Probe health",
                    "evidence bundle", "STUN requests got no answer"):
        assert english not in dom_ar, english
    # App names, codes and links stay as they are.
    assert '<bdi class="app">whatsapp</bdi>' in dom_ar
    assert f'href="/v1/calls/{blocked["uid"]}/evidence?capture=' in dom_ar
    assert '<a id="lang-switch" class="button" href="?lang=en"' in dom_ar

    shots = {}
    for lang in ("en", "ar"):
        out = tmp_path / f"dashboard-{lang}.png"
        _chromium(profile, f"{srv.base}/?lang={lang}", f"--screenshot={out}")
        data = out.read_bytes()
        assert data[:8] == PNG and len(data) > 20_000, lang
        # Width and height from the IHDR chunk.
        assert (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) == (
            1400, 1000)
        shots[lang] = out

    # The browser asked this service for the page's own files and API reads only.
    log = srv.stop()
    paths = re.findall(r'"GET ([^ ]+) HTTP/1\.1"', log)
    assert paths and all(p.split("?")[0] in {
        "/", "/favicon.ico", "/static/dashboard.js", "/static/dashboard.css",
        "/static/i18n.json", "/healthz", "/v1/probe", "/v1/stats/apps", "/v1/flows",
        "/v1/captures", "/v1/calls", "/v1/stats/capacity", "/v1/tests"} for p in paths
    ), sorted(set(paths))
    assert "/v1/stats/apps?bucket=1" in paths


def test_openapi_docs_render_offline(tmp_path: Path) -> None:
    """``/docs`` draws the API in Chromium with every other host unreachable: Swagger UI's
    files come from the service itself."""
    srv = Server(tmp_path / "data")
    try:
        _until("the server to answer /healthz", 30.0, srv.up)
        page = httpx.get(srv.base + "/docs").text
        assert "/docs/assets/swagger-ui-bundle.js" in page
        assert not re.search(r'(?i)(src|href)="https?://', page), page
        done = _chromium(tmp_path / "profile", srv.base + "/docs", "--dump-dom")
        dom = done.stdout
        # Swagger UI ran and drew the operations of openapi.json.
        assert 'class="swagger-ui"' in dom and "opblock" in dom, dom[-2000:]
        assert "/v1/captures" in dom and "/v1/calls/{uid}/evidence" in dom
        assert not [line for line in _console(done.stderr) if "Uncaught" in line]
    finally:
        log = srv.stop()
    paths = set(re.findall(r'"GET ([^ ]+) HTTP/1\.1"', log))
    assert {"/docs", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css",
            "/openapi.json"} <= paths, paths


def test_tests_panel_in_chromium(tmp_path: Path) -> None:
    # A reachability test measured on loopback, recorded in the data directory's store and
    # ledger as the service records one, then served.
    data = tmp_path / "data"
    data.mkdir()
    with Ledger(data / "ledger.db", clock=time.time) as ledger:
        store = SqliteStore(data / "marsad.db", clock=time.time)
        result = measure(data / "tests")
        record_test(result, ledger=ledger, store=store)
        store.close()
    srv = Server(data)
    try:
        _until("the server to answer /healthz", 30.0, srv.up)
        profile = tmp_path / "profile"
        dom = _chromium(profile, srv.base + "/", "--dump-dom").stdout
        row = re.search(r'<tr data-uid="' + result.uid + r'" data-verdict="blocked">(.*?)</tr>',
                        dom, re.S)
        assert row is not None, dom[-3000:]
        cells = row.group(1)
        assert "reachability (DNS, TCP, TLS, STUN)" in cells
        assert '<code dir="ltr">tcp-reset</code>' in cells
        assert result.verdict.evidence[0].text in cells
        assert '<code>refused</code> ["mmg.whatsapp.net"]' in cells
        assert f'href="/v1/tests/{result.uid}/evidence"' in cells
        assert f'href="/v1/tests/{result.uid}/report?lang=en"' in cells
        dom_ar = _chromium(profile, srv.base + "/?lang=ar", "--dump-dom").stdout
        assert "الاختبارات النشطة" in dom_ar and "إمكانية الوصول (DNS وTCP وTLS وSTUN)" in dom_ar
    finally:
        srv.stop()


def _app_colours() -> dict[str, str]:
    """The page's own colour of each app of the output contract."""
    js = (ROOT / "api" / "dashboard" / "dashboard.js").read_text(encoding="utf-8")
    block = re.search(r"const APP_COLOURS = \{(.*?)\};", js, re.S)
    assert block is not None
    return dict(re.findall(r'(\w+): "(#[0-9a-f]{6})"', block.group(1)))


def test_every_app_has_a_colour_of_its_own() -> None:
    """The apps a chart may show side by side are never drawn alike (two of them once
    hashed to one palette entry: whatsapp and sip on the sample dashboard)."""
    from classifier.records import APPS
    colours = _app_colours()
    assert set(colours) == APPS
    assert len(set(colours.values())) == len(colours)
    assert not set(colours.values()) & {"#2e8b57", "#d8a31a", "#e0702b", "#c8333b", "#7a5ab8",
                                        "#8a94a3", "#9aa4b2", "#6b7480"}  # verdicts, greys


def _app_colour(app: str) -> str:
    """The colour the page gives an app: its own, else FNV-1a of its name into the page's
    palette."""
    own = _app_colours().get(app)
    if own is not None:
        return own
    js = (ROOT / "api" / "dashboard" / "dashboard.js").read_text(encoding="utf-8")
    block = re.search(r"const PALETTE = \[(.*?)\];", js, re.S)
    assert block is not None
    palette = re.findall(r'"(#[0-9a-f]{6})"', block.group(1))
    h = 0x811C9DC5
    for ch in app:
        h = ((h ^ ord(ch)) * 0x01000193) & 0xFFFFFFFF
    return palette[h % len(palette)]


def _click(b: Browser, selector: str) -> None:
    found = b.js(f"(() => {{ const n = document.querySelector({selector!r}); if (!n) return false;"
                 " n.dispatchEvent(new MouseEvent('click', {bubbles: true, cancelable: true}));"
                 " return true; })()")
    assert found, selector


def _texts(b: Browser, selector: str) -> list[str]:
    got: list[str] = b.js(f"[...document.querySelectorAll({selector!r})]"
                          ".map(n => n.textContent)")
    return got


def test_filters_drill_down_colours_and_narrow_layout(
        served: tuple[Server, dict[str, Any]], tmp_path: Path) -> None:
    """Driven through the DevTools protocol: filters kept in the URL, drill-down from the
    charts and a verdict to a call's page, what each chart covers, values on hover, app
    colours that do not change between views, a truncated capture's warning, and a 400 px
    layout with nothing off-screen, in English and in Arabic (mirrored)."""
    assert CHROMIUM is not None
    srv, facts = served
    blocked = facts["blocked"]
    whatsapp = _app_colour("whatsapp")
    with Browser(CHROMIUM, tmp_path / "profile") as b:
        b.open(srv.base + "/")
        # What each chart covers, said on it.
        assert b.js("document.getElementById('traffic-cover').textContent") == \
            "Covers all stored data (all time)."
        assert b.js("document.getElementById('verdict-cover').textContent").startswith(
            "Covers all stored data (all time).")
        note = b.js("document.getElementById('traffic-note').textContent")
        assert re.match(r"Chart: \S*2023-11-14 22:2\d:\d\d\S* to \S*2023-11-14 22:3\d:\d\d\S* "
                        r"of capture time \(UTC\), 1 s per bar\.", note), note
        # Values on hover: each bucket's rates per app and in all, each verdict's count.
        tips = _texts(b, "#traffic-chart rect.bucket title")
        assert tips and any(re.search(r"\nwhatsapp: [\d.]+ [kM]?bit/s\n.*total: ", tip, re.S)
                            for tip in tips), tips[:3]
        assert "blocked: 1 call(s)" in _texts(b, "#verdict-chart g.verdict title")
        # A truncated capture is listed with a warning, not as plainly done.
        cut = b.js("(() => { const r = document.querySelector("
                   "'tr[data-complete=\"false\"]'); return r && r.textContent; })()")
        assert cut and "bad-truncated.pcap" in cut and "cut short at byte 800" in cut, cut
        # Capacity per hour, then per day (kept in the URL): whatsapp's row per source.
        cap = b.js("[...document.querySelectorAll('#capacity-rows tr')]"
                   ".map(r => [r.dataset.app, r.dataset.source, r.cells[4].textContent,"
                   " r.cells[6].textContent, r.cells[9].textContent])")
        assert any(row[:2] == ["whatsapp", "capture"] for row in cap), cap
        wa = next(row for row in cap if row[:2] == ["whatsapp", "capture"])
        assert wa[2].endswith("bit/s") and wa[3] == "2" and wa[4] == "50 %", wa
        b.js("(() => { const s = document.getElementById('f-period'); s.value = 'day';"
             " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
        assert "period=day" in b.settle("location.search", lambda v: "period=" in v)
        assert b.settle("document.querySelector('#capacity-rows td').textContent",
                        lambda v: v == "2023-11-14")
        # Stable app colours: from the name, the same when filtered.
        colour = "document.querySelector('#traffic-legend li[data-app=\"whatsapp\"]')" \
                 ".dataset.colour"
        assert b.js(colour) == whatsapp
        # Drill-down from the chart: an app of the legend, then a bar's time.
        _click(b, '#traffic-legend li[data-app="whatsapp"]')
        assert "app=whatsapp" in b.settle("location.search", lambda v: "app=" in v)
        assert b.settle("[...document.querySelectorAll('#traffic-legend li')]"
                        ".map(n => n.dataset.app).join()", lambda v: v == "whatsapp")
        assert b.js(colour) == whatsapp
        assert "App whatsapp" in b.js("document.getElementById('traffic-cover').textContent")
        _click(b, "#traffic-chart rect.bucket")
        search = b.settle("location.search", lambda v: "range=custom" in v)
        assert re.search(r"since=2023-11-14T22%3A\d\d%3A\d\d&until=", search), search
        assert b.settle("document.getElementById('traffic-cover').textContent",
                        lambda v: v.startswith("Covers \u20662023-11-14 22:"))
        # Drill-down from a verdict: its calls are listed.
        b.open(srv.base + "/")
        _click(b, '#verdict-chart g.verdict[data-verdict="blocked"]')
        assert "verdict=blocked" in b.settle("location.search", lambda v: "verdict=" in v)
        assert b.settle("document.getElementById('latest-title').textContent",
                        lambda v: v == "Latest calls judged blocked")
        assert b.js("[...document.querySelectorAll('#latest-rows tr')]"
                    ".map(r => r.dataset.verdict).join()") == "blocked"
        # Filters live in the URL: a reload, or a link, shows the same view.
        ok_view = srv.base + "/?verdict=ok&source=capture&app=whatsapp"
        b.open(ok_view)
        assert b.js("document.getElementById('latest-title').textContent") == \
            "Latest calls judged ok"
        assert b.js("document.getElementById('f-verdict').value") == "ok"
        assert b.js("document.getElementById('f-source').value") == "capture"
        assert b.js("document.getElementById('f-app').value") == "whatsapp"
        b.open(srv.base + "/?source=live")
        assert b.js("document.getElementById('verdict-chart').textContent") == "No calls yet."
        b.open(f"{srv.base}/?capture={blocked['capture_id']}&verdict=ok")
        assert b.js("document.getElementById('latest-rows').children.length") == 0
        # From a call's row to its page: flows, legs, quality, evidence, bundle.
        b.open(srv.base + "/")
        _click(b, f'tr[data-uid="{blocked["uid"]}"] a.call-link')
        b.settle("document.body.dataset.view", lambda v: v == "call")
        n_flows = len(blocked["flow_uids"])
        assert b.settle("document.querySelectorAll('#flow-rows tr').length",
                        lambda v: v == n_flows)
        assert sorted(b.js("[...document.querySelectorAll('#flow-rows tr')]"
                           ".map(r => r.dataset.flow)")) == sorted(blocked["flow_uids"])
        assert b.js("document.querySelectorAll('#call-timeline rect.flow').length") == n_flows
        legs = blocked["legs"]
        assert b.js("document.querySelectorAll('#leg-rows tr').length") == len(legs) > 0
        assert b.js("document.querySelectorAll('#call-quality g.quality').length") == \
            3 * len(legs)
        assert b.js("document.querySelector('#call-quality g.quality rect')"
                    ".getAttribute('fill')") == whatsapp
        assert blocked["evidence"][0]["text"] in b.js(
            "document.getElementById('call-evidence-list').textContent")
        assert b.js("document.querySelector('#call-links a').getAttribute('href')") == \
            f"/v1/calls/{blocked['uid']}/evidence?capture={blocked['capture_id']}"
        assert b.js("document.getElementById('overview').hidden") is True
        b.js("history.back()")
        b.settle("document.body.dataset.view", lambda v: v == "overview")

        # 400 px wide: nothing off-screen, axis labels at their real size, Arabic mirrored.
        b.viewport(400, 900)
        for lang in ("en", "ar"):
            b.open(f"{srv.base}/?lang={lang}")
            assert b.js("document.documentElement.scrollWidth") <= 400, lang
            boxes = b.js("[...document.querySelectorAll('#latest-rows td, #capture-rows td')]"
                         ".map(td => { const r = td.getBoundingClientRect();"
                         " return [r.left, r.right]; })")
            assert boxes and all(left >= 0 and right <= 400 for left, right in boxes), boxes
            sizes = b.js("[...document.querySelectorAll('#traffic-chart text')]"
                         ".map(n => n.getBoundingClientRect().height)")
            assert sizes and min(sizes) >= 10, sizes
            # the rate axis sits at the start of the line: left in English, right in Arabic
            xs = b.js("[...document.querySelectorAll('#traffic-chart text')]"
                      ".filter(n => n.textContent.endsWith('bit/s'))"
                      ".map(n => n.getBoundingClientRect().left)")
            assert xs and (max(xs) < 100 if lang == "en" else min(xs) > 300), (lang, xs)
        b.open(f"{srv.base}/?lang=ar&call={blocked['uid']}&capture_of={blocked['capture_id']}")
        assert b.js("document.documentElement.scrollWidth") <= 400
        assert b.js("document.documentElement.dir") == "rtl"
        assert b.js("document.getElementById('call-back').textContent").startswith("→")

        # Screenshots of the whole page: both languages at 1400 and 400 px, and a call's
        # page; MARSAD_UPDATE_SCREENSHOT=1 puts them in docs/ for the README.
        call = f"call={blocked['uid']}&capture_of={blocked['capture_id']}"
        shots = {"dashboard.png": (1400, "/?lang=en"), "dashboard-ar.png": (1400, "/?lang=ar"),
                 "dashboard-400.png": (400, "/?lang=en"),
                 "dashboard-ar-400.png": (400, "/?lang=ar"),
                 "dashboard-call.png": (1400, f"/?lang=en&{call}"),
                 "dashboard-call-ar-400.png": (400, f"/?lang=ar&{call}")}
        for name, (width, url) in shots.items():
            b.viewport(width, 900)
            b.open(srv.base + url)
            data = b.screenshot(tmp_path / name)
            assert data[:8] == PNG and int.from_bytes(data[16:20], "big") == width, name
            if os.environ.get("MARSAD_UPDATE_SCREENSHOT") == "1":
                shutil.copyfile(tmp_path / name, ROOT / "docs" / name)
