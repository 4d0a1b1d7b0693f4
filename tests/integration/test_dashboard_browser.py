"""The dashboard in a real browser: Debian's headless Chromium against ``marsad serve``.

The service runs on 127.0.0.1 with the WhatsApp call and the blocked WhatsApp call
preloaded; Chromium loads ``/`` and ``/?lang=ar``, runs the page's script and
dumps the rendered DOM, which must show the data the API holds. Every host name
but 127.0.0.1 is made unresolvable for the browser, and the service's access log
must list only the page's own requests. Screenshots go to the test's temporary
directory; with ``MARSAD_UPDATE_SCREENSHOT=1`` the English one is copied to
``docs/dashboard.png`` for the README.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT
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
                 str(CAPTURES / "sample-blocked.pcap"))
    try:
        _until("the server to answer /healthz", 30.0, srv.up)
        with httpx.Client(base_url=srv.base, timeout=10) as c:
            _until("both preloaded captures to be analysed", 90.0, lambda: [
                x for x in c.get("/v1/captures").json()["items"]
                if x["state"] == "done"][1:])
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
    assert '<li data-app="whatsapp">' in dom and '<bdi class="app">whatsapp</bdi>' in dom
    assert "<title>whatsapp</title>" in dom and "Traffic per app over time" in dom
    # Calls by verdict: the blocked call and the one that went through.
    assert re.search(r'<g class="verdict" data-verdict="blocked">.*?>1</text>', dom)
    assert re.search(r'<g class="verdict" data-verdict="ok">.*?>1</text>', dom)
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
    if os.environ.get("MARSAD_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shots["en"], ROOT / "docs" / "dashboard.png")

    # The browser asked this service for the page's own files and API reads only.
    log = srv.stop()
    paths = re.findall(r'"GET ([^ ]+) HTTP/1\.1"', log)
    assert paths and all(p.split("?")[0] in {
        "/", "/favicon.ico", "/static/dashboard.js", "/static/dashboard.css",
        "/static/i18n.json", "/healthz", "/v1/probe", "/v1/stats/apps", "/v1/flows",
        "/v1/captures", "/v1/calls"} for p in paths), sorted(set(paths))
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
