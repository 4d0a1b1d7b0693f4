"""The service runs a replay test end to end with the project's own runner: a replay server
on loopback serving the committed WhatsApp trace, ``POST /v1/tests``, the judged result,
its ledger entry re-judged by verification, and the metric."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.config import ReplayServer as ConfiguredServer
from api.config import Settings
from api.main import create_app
from api.replay_test import DEFAULT_TRACES
from probe.active.replay import ReplayServer
from probe.active.trace import load_trace

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_a_replay_test_through_the_service_is_judged_recorded_and_counted(
        tmp_path: Path) -> None:
    trace = load_trace(DEFAULT_TRACES / "whatsapp.pcap")
    token_file = tmp_path / "replay.token"
    token_file.write_text("replay-secret\n")
    with ReplayServer("127.0.0.1", 0, b"replay-secret", {trace.name: trace}) as srv:
        host, port = srv.address
        settings = Settings(data_dir=tmp_path / "data", api_token=SecretStr(TOKEN),
                            replay_servers=(ConfiguredServer(name="lo", host=host, port=port,
                                                             token_file=token_file),))
        with TestClient(create_app(settings)) as client:
            resp = client.post("/v1/tests", headers=AUTH,
                               json={"kind": "replay", "app": "whatsapp", "server": "lo"})
            assert resp.status_code == 202, resp.text
            assert client.app.state.services.tests.wait(120)  # type: ignore[attr-defined]
            job = client.get(resp.headers["location"]).json()
            assert job["state"] == "done", job
            test = client.get(f"/v1/tests/{job['test_uid']}").json()
            report = client.get("/v1/ledger/verify", params={"rederive": "true"},
                                headers=AUTH).json()
            metrics = client.get("/metrics").text
    # A clean loopback path: both runs of the trace and both controls delivered alike.
    assert test["kind"] == "replay" and test["app"] == "whatsapp"
    assert test["verdict"] == "ok", test["evidence"]
    runs = test["test_keys"]["measurement"]["runs"]
    assert [r["kind"] for r in runs] == ["original", "inverted", "random-ports", "original"]
    assert all(r["answered"] and r["failure"] is None for r in runs)
    assert report["ok"] is True and report["entries"] == 1, report
    assert 'marsad_test_finished_total{app="whatsapp",kind="replay",verdict="ok"} 1.0' \
        in metrics
    assert 'marsad_test_last_timestamp_seconds{app="whatsapp",kind="replay"}' in metrics
