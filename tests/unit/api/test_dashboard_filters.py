"""What the dashboard's filters and call page read: listings by source (live probe runs
or capture files), traffic per app by app and source, and the flows of one call."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from tests.unit.api.test_shared_data_dir import _probe

CAPTURES = Path(__file__).resolve().parents[3] / "captures"


def test_listings_by_source_and_the_flows_of_a_call(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _probe(data, "sample-blocked.pcap")  # a live probe run on the data directory
    settings = Settings(data_dir=data, preload=(CAPTURES / "sample-call.pcap",))
    app = create_app(settings)
    with TestClient(app) as client:
        assert app.state.services.jobs.wait(60)
        calls = {src: client.get("/v1/calls", params={"source": src}).json()
                 for src in ("live", "capture")}
        assert [c["verdict"] for c in calls["live"]["items"]] == ["blocked"]
        assert all(c["capture_id"].startswith("live-") for c in calls["live"]["items"])
        assert [c["verdict"] for c in calls["capture"]["items"]] == ["ok"]
        assert client.get("/v1/calls").json()["total"] == 2
        assert client.get("/v1/calls", params={"source": "nope"}).status_code == 422
        flows = {src: client.get("/v1/flows", params={"source": src, "limit": 1}).json()["total"]
                 for src in ("live", "capture")}
        assert flows["live"] > 0 and flows["capture"] > 0
        assert client.get("/v1/flows", params={"limit": 1}).json()["total"] == sum(
            flows.values())
        # Traffic per app, by app and by source.
        both = client.get("/v1/stats/apps").json()
        live = client.get("/v1/stats/apps", params={"source": "live"}).json()
        wa = client.get("/v1/stats/apps", params={"app": "whatsapp",
                                                  "source": "capture"}).json()
        assert live["flows"] == flows["live"] and live["flows"] < both["flows"]
        assert [a["app"] for a in wa["apps"]] == ["whatsapp"]
        # One call's flows: every flow it names, from its own capture, oldest first.
        call = calls["live"]["items"][0]
        got = client.get(f"/v1/calls/{call['uid']}/flows",
                         params={"capture": call["capture_id"]})
        assert got.status_code == 200, got.text
        items = got.json()["items"]
        assert sorted(f["uid"] for f in items) == sorted(call["flow_uids"])
        assert [f["first_ts"] for f in items] == sorted(f["first_ts"] for f in items)
        assert all(f["capture_id"] == call["capture_id"] for f in items)
        assert client.get("/v1/calls/Knope/flows").status_code == 404
