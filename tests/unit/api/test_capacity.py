"""Capacity per hour and per day (api.capacity, ``/v1/stats/capacity``): peaks and 95th
percentiles on a one-minute grid, calls in progress, interfered share and quality per
app, labelled by source; exact on hand-made rows, and served on real captures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.capacity import capacity, nearest_rank
from api.config import Settings
from api.main import create_app
from api.store import Page, Query
from tests.unit.api.test_shared_data_dir import _probe

CAPTURES = Path(__file__).resolve().parents[3] / "captures"
H = 1_700_000_000 - 1_700_000_000 % 86400  # a midnight, so hours and days line up


class _Rows:
    """Only what :func:`capacity` reads of a store: ``flows()`` and ``calls()``."""

    def __init__(self, flows: list[dict[str, Any]], calls: list[dict[str, Any]]) -> None:
        self.rows = {"flows": flows, "calls": calls}

    def _page(self, table: str, query: Query) -> Page:
        rows = self.rows[table]
        return Page(items=rows[query.offset:query.offset + query.limit], total=len(rows))

    def flows(self, query: Query) -> Page:
        return self._page("flows", query)

    def calls(self, query: Query) -> Page:
        return self._page("calls", query)


def _flow(app: str, category: str, first: float, last: float, wire: int,
          capture: str = "live-1-1") -> dict[str, Any]:
    return {"capture_id": capture, "app": app, "category": category, "first_ts": first,
            "last_ts": last, "orig_wire_bytes": wire, "resp_wire_bytes": 0}


def _call(app: str, start: float, end: float, verdict: str, mos: float | None,
          loss: float | None, capture: str = "live-1-1") -> dict[str, Any]:
    return {"capture_id": capture, "app": app, "start_ts": start, "end_ts": end,
            "verdict": verdict, "quality": {"mos": mos, "loss_ratio": loss}}


def test_nearest_rank() -> None:
    assert nearest_rank([], 0) == 0
    assert nearest_rank([5.0], 19) == 0  # one busy minute in twenty: the 19th is idle
    assert nearest_rank([5.0, 6.0], 18) == 5.0  # the 19th of twenty
    assert nearest_rank([float(i) for i in range(1, 101)], 0) == 95


def test_peak_and_95th_percentile_per_hour_and_day() -> None:
    flows = [
        # observed from H to H + 60 min (a flow over the whole hour keeps the source seen)
        _flow("zoom", "voice", H, H + 3600, 3600 * 1000),         # 1000 B/s all hour
        _flow("zoom", "video", H + 600, H + 660, 60 * 9000),       # one minute at 9000 B/s
        _flow("teams", "voice", H + 3600 + 60, H + 3600 + 120, 6000),  # next hour, 100 B/s
        _flow("zoom", "voice", H + 100, H + 100, 500, capture="P1"),   # a capture file
    ]
    calls = [
        _call("zoom", H + 30, H + 190, "ok", 4.2, 0.0),        # minutes 0, 1, 2, 3
        _call("zoom", H + 90, H + 130, "blocked", None, None),  # minutes 1, 2
        _call("zoom", H + 3000, H + 3010, "throttled", 3.0, 0.02),
    ]
    got = capacity(_Rows(flows, calls), period="hour")  # type: ignore[arg-type]
    rows = {(r.start_ts, r.source, r.app, r.category): r for r in got.traffic}
    zoom = rows[float(H), "live", "zoom", None]
    assert zoom.bytes == 3600 * 1000 + 60 * 9000
    assert zoom.observed_s == 3600  # the whole hour (the source is seen into the next)
    # to the minute holding the last packet (H + 3720: the third minute of the hour)
    assert rows[float(H + 3600), "live", "teams", None].observed_s == 180
    zoom_hour = zoom
    assert zoom_hour.peak_bps == (60 * 1000 + 60 * 9000) * 8 / 60  # the video minute
    assert zoom_hour.p95_bps == 1000 * 8  # every other minute carries the voice
    video = rows[float(H), "live", "zoom", "video"]
    assert video.peak_bps == 9000 * 8 and video.p95_bps == 0  # 1 minute of 60
    teams = rows[float(H + 3600), "live", "teams", None]
    assert teams.bytes == 6000 and teams.peak_bps == 800
    assert rows[float(H), "capture", "zoom", None].bytes == 500  # labelled apart
    calls_by = {(r.start_ts, r.source, r.app): r for r in got.calls}
    hour = calls_by[float(H), "live", "zoom"]
    assert (hour.calls, hour.interfered, hour.peak_concurrent) == (3, 2, 2)
    assert hour.interfered_share == round(2 / 3, 4)
    assert hour.mos_mean == 3.6 and hour.loss_mean == 0.01
    assert hour.p95_concurrent == 1  # 4 (+1 for the third call) busy minutes of 60, 2 at 2
    day = capacity(_Rows(flows, calls), period="day")  # type: ignore[arg-type]
    day_zoom = next(r for r in day.traffic
                    if (r.source, r.app, r.category) == ("live", "zoom", None))
    assert day_zoom.start_ts == H and day_zoom.peak_bps == zoom_hour.peak_bps
    assert day.period_s == 86400 and day.resolution_s == 60


def test_capacity_is_served_for_probes_and_captures(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _probe(data, "sample-blocked.pcap")
    app = create_app(Settings(data_dir=data, preload=(CAPTURES / "sample-call.pcap",)))
    with TestClient(app) as client:
        assert app.state.services.jobs.wait(60)
        r = client.get("/v1/stats/capacity", params={"period": "hour"})
        assert r.status_code == 200, r.text
        got = r.json()
        assert {row["source"] for row in got["traffic"]} == {"live", "capture"}
        calls = {(c["source"], c["app"]): c for c in got["calls"]}
        assert calls["live", "whatsapp"]["interfered"] == 1
        assert calls["live", "whatsapp"]["interfered_share"] == 1.0
        assert calls["capture", "whatsapp"]["interfered_share"] == 0.0
        assert calls["capture", "whatsapp"]["mos_mean"] > 4
        assert calls["capture", "whatsapp"]["peak_concurrent"] == 1
        wa = [t for t in got["traffic"] if (t["source"], t["app"], t["category"])
              == ("capture", "whatsapp", None)]
        assert len(wa) == 1 and wa[0]["peak_bps"] >= wa[0]["p95_bps"] > 0
        live = client.get("/v1/stats/capacity", params={"period": "day", "source": "live"})
        assert {row["source"] for row in live.json()["traffic"]} == {"live"}
        assert client.get("/v1/stats/capacity", params={"period": "week"}).status_code == 422
