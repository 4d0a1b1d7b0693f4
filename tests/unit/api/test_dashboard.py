"""The dashboard's page, its files and ``/v1/stats/apps`` (traffic per app over time)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.config import Settings
from api.main import create_app
from api.probe_status import ProbeState
from api.routes.dashboard import ASSETS, CSP, MAX_BUCKETS, app_traffic
from api.store import JobState, Page, Query
from policy import records
from policy.records import Reason, VerdictKind
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
TOKEN = "dash-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_700_100_000.0
ARABIC = re.compile("[\u0600-\u06ff]")


def _client(tmp_path: Path, *preload: str, **kw: Any) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", api_token=SecretStr(TOKEN),
                        preload=tuple(CAPTURES / p for p in preload), **kw)
    return TestClient(create_app(settings, clock=lambda: NOW))


@pytest.fixture
def loaded(tmp_path: Path) -> Iterator[TestClient]:
    with _client(tmp_path, "sample-call.pcap", "sample-sip.pcap") as c:
        assert c.app.state.services.jobs.wait(60)  # type: ignore[attr-defined]
        yield c


def _all_flows(c: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = c.get("/v1/flows", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    page = r.json()
    assert page["total"] == len(page["items"])
    items: list[dict[str, Any]] = page["items"]
    return items


def _wire(f: dict[str, Any]) -> int:
    return int(f["orig_wire_bytes"]) + int(f["resp_wire_bytes"])


# -- /v1/stats/apps on the sample captures ---------------------------------------------------


def test_every_flows_wire_bytes_land_in_its_apps_series(loaded: TestClient) -> None:
    flows = _all_flows(loaded)
    want_bytes: dict[str | None, int] = defaultdict(int)
    want_flows: dict[str | None, int] = defaultdict(int)
    for f in flows:
        want_bytes[f["app"]] += _wire(f)
        want_flows[f["app"]] += 1
    r = loaded.get("/v1/stats/apps", params={"bucket": 10})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["complete"] is True and got["flows"] == len(flows) == 16
    # Both captures fit in the window: from the first flow's start to the last flow's end.
    assert got["start_ts"] == 1_700_001_000.0
    assert got["end_ts"] == max(f["last_ts"] for f in flows)
    assert got["bucket_s"] == 10 and got["buckets"] == 101
    apps = {a["app"]: a for a in got["apps"]}
    assert set(apps) == {"whatsapp", "sip", None}
    assert [a["app"] for a in got["apps"]] == ["whatsapp", "sip", None]  # most bytes first
    for app, a in apps.items():
        assert len(a["series"]) == got["buckets"]
        assert a["flows"] == want_flows[app]
        assert a["bytes"] == pytest.approx(want_bytes[app], abs=1)
        assert sum(a["series"]) == pytest.approx(want_bytes[app], abs=len(a["series"]))


def test_a_flows_bytes_are_spread_over_its_life(loaded: TestClient) -> None:
    sip = [f for f in _all_flows(loaded) if f["app"] == "sip"]
    voice = next(f for f in sip if f["category"] == "voice")  # 4.0 s of RTP both ways
    lo, hi = voice["first_ts"], voice["last_ts"]
    got = loaded.get("/v1/stats/apps", params={"bucket": 1, "since": lo, "until": hi}).json()
    assert got["bucket_s"] == 1 and got["start_ts"] == 1_700_002_004.0 and got["buckets"] == 5
    series = next(a for a in got["apps"] if a["app"] == "sip")["series"]
    # Each SIP flow overlapping a one-second bucket adds its bytes in proportion to the
    # part of its life inside that bucket and the window.
    for i, value in enumerate(series):
        left, right = max(lo, 1_700_002_004.0 + i), min(hi, 1_700_002_005.0 + i)
        expected = sum(_wire(f) * max(min(right, f["last_ts"]) - max(left, f["first_ts"]), 0)
                       / (f["last_ts"] - f["first_ts"]) for f in sip)
        assert value == pytest.approx(expected, abs=1), i
    # The window starts with the voice flow, 0.243 s into the first bucket.
    assert 0.7 < series[0] / series[1] < 0.8


def test_wide_windows_get_wider_buckets(loaded: TestClient) -> None:
    got = loaded.get("/v1/stats/apps", params={"bucket": 1}).json()
    # 1,008 s of capture time in at most 360 buckets.
    assert got["bucket_s"] == 3 and got["buckets"] <= MAX_BUCKETS
    assert got["start_ts"] % 3 == 0
    total = sum(sum(a["series"]) for a in got["apps"])
    assert total == pytest.approx(sum(_wire(f) for f in _all_flows(loaded)), abs=400)


def test_window_and_capture_filters(loaded: TestClient) -> None:
    captures = {c["filename"]: c["id"] for c in loaded.get("/v1/captures").json()["items"]}
    sip = loaded.get("/v1/stats/apps", params={"capture": captures["sample-sip.pcap"],
                                               "bucket": 10}).json()
    assert {a["app"] for a in sip["apps"]} == {"sip", None}
    assert sip["start_ts"] == 1_700_002_000.0
    # A window that ends before the SIP capture begins holds only the WhatsApp call's time.
    early = loaded.get("/v1/stats/apps", params={"until": 1_700_001_100}).json()
    assert "sip" not in {a["app"] for a in early["apps"]}
    assert early["end_ts"] == 1_700_001_100
    # Part of a flow's life outside the window is not counted.
    clipped = loaded.get("/v1/stats/apps", params={"since": 1_700_001_010,
                                                   "until": 1_700_001_011}).json()
    wa = next(a for a in clipped["apps"] if a["app"] == "whatsapp")
    whole = next(a for a in early["apps"] if a["app"] == "whatsapp")
    assert 0 < wa["bytes"] < whole["bytes"] / 10
    nothing = loaded.get("/v1/stats/apps", params={"since": "2001-01-01T00:00:00Z",
                                                   "until": "2001-01-02T00:00:00Z"}).json()
    assert nothing["apps"] == [] and nothing["start_ts"] is None and nothing["buckets"] == 0


def test_bad_parameters(loaded: TestClient) -> None:
    assert loaded.get("/v1/stats/apps", params={"bucket": 0}).status_code == 422
    assert loaded.get("/v1/stats/apps", params={"bucket": 86_401}).status_code == 422
    r = loaded.get("/v1/stats/apps", params={"since": 1_700_001_100, "until": 1_700_001_000})
    assert r.status_code == 400 and "since" in r.json()["detail"]


def test_too_many_flows_counts_the_newest(loaded: TestClient) -> None:
    store = loaded.app.state.services.store  # type: ignore[attr-defined]
    got = app_traffic(store, bucket_s=60, max_flows=5)
    assert got.complete is False and got.flows == 5
    newest = _all_flows(loaded)[:5]
    assert sum(a.bytes for a in got.apps) == pytest.approx(
        sum(_wire(f) for f in newest), abs=2)
    assert app_traffic(store, bucket_s=60, max_flows=16).complete is True


def test_empty_store(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        got = c.get("/v1/stats/apps").json()
    assert got == {"bucket_s": 60, "start_ts": None, "end_ts": None, "buckets": 0, "flows": 0,
                   "complete": True, "apps": []}


def test_stats_follow_the_read_access_setting(tmp_path: Path) -> None:
    with _client(tmp_path, open_reads=False) as c:
        assert c.get("/v1/stats/apps").status_code == 401
        assert c.get("/v1/stats/apps", headers=AUTH).status_code == 200
        assert c.get("/").status_code == 200  # the page itself is not secret


# -- the arithmetic, on hand-made rows ---------------------------------------------------------


class _Rows:
    """Only what :func:`app_traffic` reads of a store: ``flows()``, newest first."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = sorted(rows, key=lambda r: -r["first_ts"])
        self.queries: list[Query] = []

    def flows(self, query: Query) -> Page:
        self.queries.append(query)
        rows = [r for r in self.rows
                if (query.since is None or r["last_ts"] >= query.since)
                and (query.until is None or r["first_ts"] <= query.until)]
        return Page(items=rows[query.offset:query.offset + query.limit], total=len(rows))


def _row(app: str | None, first: float, last: float, orig: int, resp: int) -> dict[str, Any]:
    return {"app": app, "first_ts": first, "last_ts": last, "orig_wire_bytes": orig,
            "resp_wire_bytes": resp}


def test_spreading_is_exact_on_hand_made_flows() -> None:
    rows = _Rows([
        _row("zoom", 100.0, 130.0, 2000, 1000),   # 100 B/s over 30 s: buckets 100, 110, 120
        _row("zoom", 125.0, 125.0, 50, 0),        # an instant: all in its bucket
        _row(None, 105.0, 115.0, 500, 500),       # 100 B/s over 10 s: half in 100, half in 110
    ])
    got = app_traffic(rows, bucket_s=10)  # type: ignore[arg-type]
    assert (got.start_ts, got.end_ts, got.buckets, got.bucket_s) == (100.0, 130.0, 3, 10)
    by_app = {a.app: a for a in got.apps}
    assert by_app["zoom"].series == [1000, 1000, 1050]  # the end instant is in the last bucket
    assert by_app["zoom"].bytes == 3050 and by_app["zoom"].flows == 2
    assert by_app[None].series == [500, 500, 0]
    clipped = app_traffic(rows, bucket_s=5, since=110.0, until=120.0)  # type: ignore[arg-type]
    assert clipped.start_ts == 110.0 and clipped.buckets == 2
    assert {a.app: a.series for a in clipped.apps} == {"zoom": [500, 500], None: [500, 0]}
    with pytest.raises(ValueError):
        app_traffic(rows, bucket_s=0)  # type: ignore[arg-type]


def test_reads_in_pages() -> None:
    rows = _Rows([_row("teams", float(i), float(i) + 0.5, 10, 10) for i in range(2500)])
    got = app_traffic(rows, bucket_s=1)  # type: ignore[arg-type]
    assert got.flows == 2500 and got.complete
    assert [q.offset for q in rows.queries] == [0, 1000, 2000]
    assert got.bucket_s == 7 and got.buckets <= MAX_BUCKETS  # 2,499.5 s / 359
    assert got.apps[0].bytes == 50_000


# -- the page and its files --------------------------------------------------------------------


def test_page_in_english_and_arabic(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        en = c.get("/")
        ar = c.get("/", params={"lang": "ar"})
        other = c.get("/", params={"lang": "fr"})
    assert en.status_code == 200 and en.headers["content-type"].startswith("text/html")
    assert '<html lang="en" dir="ltr">' in en.text
    assert '<html lang="ar" dir="rtl">' in ar.text
    assert '<html lang="en" dir="ltr">' in other.text
    assert en.headers["content-security-policy"] == CSP
    assert "connect-src 'self'" in CSP and "script-src 'self'" in CSP
    for src in re.findall(r'(?:src|href)="([^"]+)"', en.text):
        assert src.startswith(("/", "?")), src


def test_static_files_and_nothing_else(tmp_path: Path) -> None:
    with _client(tmp_path) as c:
        js = c.get("/static/dashboard.js")
        css = c.get("/static/dashboard.css")
        i18n = c.get("/static/i18n.json")
        assert js.status_code == css.status_code == i18n.status_code == 200
        assert js.headers["content-type"].startswith("text/javascript")
        assert css.headers["content-type"].startswith("text/css")
        assert "ar" in i18n.json()
        for name in ("index.html", "nope.js", "..%2Fmain.py", "%2e%2e%2f%2e%2e%2fpyproject.toml"):
            assert c.get(f"/static/{name}").status_code == 404, name
        assert "/" not in {op for op in c.get("/openapi.json").json()["paths"]}


def test_assets_name_no_outside_url() -> None:
    for path in ASSETS.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?i)\b(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), path.name
        assert "@import" not in text and "url(" not in text, path.name


def _i18n() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, str]] = json.loads((ASSETS / "i18n.json").read_text("utf-8"))
    return data


def test_every_label_has_both_languages() -> None:
    strings = _i18n()
    assert set(strings) == {"en", "ar"}
    en, ar = strings["en"], strings["ar"]
    assert set(en) == set(ar)
    html = (ASSETS / "index.html").read_text(encoding="utf-8")
    js = (ASSETS / "dashboard.js").read_text(encoding="utf-8")
    used = set(re.findall(r'data-i18n="([^"]+)"', html))
    used |= set(re.findall(r'\bt\("([a-z_]+)"', js))
    assert used and used <= set(en), used - set(en)
    needed = ({f"verdict.{v}" for v in VerdictKind} | {f"reason.{r}" for r in Reason}
              | {f"job.{s}" for s in JobState}
              | {f"state.{s}" for s in ProbeState} | {"state.absent", "state.stale",
                                                      "state.unreadable"}
              | {f"test_kind.{k}" for k in records.TestKind})
    assert needed <= set(en), needed - set(en)
    for key, text in ar.items():
        assert ARABIC.search(text) or key == "lang_switch", (key, text)
        assert text != en[key], key
    assert ARABIC.search(en["lang_switch"]) and ar["lang_switch"] == "English"
    # Placeholders survive translation.
    for key, text in en.items():
        assert set(re.findall(r"\{\w+\}", text)) == set(re.findall(r"\{\w+\}", ar[key])), key
