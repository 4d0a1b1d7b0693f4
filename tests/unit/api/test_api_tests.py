"""``/v1/tests`` end to end: the token, the checks against the configuration, the job,
the stored result, its ledger entry, its bundle and its metrics (the runner injected
through ``create_app(test_runner=...)``; it measures on loopback)."""

from __future__ import annotations

import io
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.active import ReachRequest, ReplayRequest, TestRequest
from api.config import ReplayServer, Settings
from api.evidence import check_bundle
from api.main import create_app
from policy.records import TestResult
from policy.rules import Policy
from tests.activetests import judge_module, measure

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Recorder:
    """A runner that measures on loopback and remembers what it was asked."""

    def __init__(self) -> None:
        self.requests: list[TestRequest] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, request: TestRequest, out_dir: Path, policy: Policy) -> TestResult:
        self.requests.append(request)
        assert self.gate.wait(30)
        if isinstance(request, ReplayRequest):
            raise RuntimeError("this test runner does not replay")
        return measure(out_dir, request.app)


def _app(tmp_path: Path, runner: Any, **kw: Any) -> TestClient:
    token_file = tmp_path / "lab.token"
    token_file.write_text("replay-secret\n")
    settings = Settings(data_dir=tmp_path / "data", api_token=SecretStr(TOKEN),
                        replay_servers=(ReplayServer(name="lab", host="192.0.2.7", port=5201,
                                                     token_file=token_file),),
                        test_resolvers=("192.0.2.53",), **kw)
    return TestClient(create_app(settings, test_runner=runner))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(tmp_path: Path, recorder: Recorder) -> Iterator[TestClient]:
    with _app(tmp_path, recorder) as c:
        yield c


def _wait(client: TestClient) -> None:
    assert client.app.state.services.tests.wait(30)  # type: ignore[attr-defined]


def test_token_is_required(client: TestClient) -> None:
    body = {"kind": "reachability", "app": "whatsapp"}
    assert client.post("/v1/tests", json=body).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post("/v1/tests", json=body, headers=bad).status_code == 401


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"kind": "reachability", "app": "nosuchapp"}, "app", "unknown app"),
    ({"kind": "replay", "app": "whatsapp"}, "server", "needs 'server'"),
    ({"kind": "replay", "app": "whatsapp", "server": "wehe.example.org:55555"}, "server",
     "not in the service's configuration"),
    ({"kind": "replay", "app": "whatsapp", "server": "lab", "resolvers": ["192.0.2.53"]},
     "resolvers", "for reachability"),
    ({"kind": "reachability", "app": "whatsapp", "server": "lab"}, "server", "replay tests"),
    ({"kind": "reachability", "app": "whatsapp", "resolvers": ["8.8.8.8"]}, "resolvers",
     "MARSAD_TEST_RESOLVERS"),
    ({"kind": "reachability", "app": "whatsapp", "resolvers": ["dns.example"]}, "resolvers",
     "not an IP address"),
])
def test_invalid_tests_are_refused_by_field(client: TestClient, recorder: Recorder,
                                            body: dict[str, Any], field: str,
                                            words: str) -> None:
    resp = client.post("/v1/tests", json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text
    [err] = resp.json()["detail"]
    assert err["loc"] == ["body", field] and words in err["msg"]
    assert recorder.requests == []


@pytest.mark.parametrize("body", [
    {"kind": "ping", "app": "whatsapp"},
    {"kind": "reachability", "app": "whatsapp", "timeout_s": 0},
    {"kind": "reachability", "app": "whatsapp", "token": "x"},  # no unknown fields
])
def test_malformed_bodies(client: TestClient, body: dict[str, Any]) -> None:
    assert client.post("/v1/tests", json=body, headers=AUTH).status_code == 422


def test_a_test_runs_is_recorded_and_served(client: TestClient, recorder: Recorder) -> None:
    resp = client.post("/v1/tests", headers=AUTH, json={
        "kind": "reachability", "app": "whatsapp", "resolvers": ["192.0.2.53"]})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["state"] in ("queued", "running", "done")
    assert resp.headers["location"] == f"/v1/tests/jobs/{job['id']}"
    _wait(client)
    assert recorder.requests == [ReachRequest(app="whatsapp", resolvers=("192.0.2.53",))]
    job = client.get(resp.headers["location"]).json()
    assert job["state"] == "done" and job["error"] is None
    uid = job["test_uid"]
    test = client.get(f"/v1/tests/{uid}").json()
    assert test["verdict"] == "blocked" and test["reasons"] == ["tcp-reset"]
    assert test["capture_kept"] is True and "capture" not in test
    assert test["ledger_seq"] == 1
    assert test["test_keys"]["measurement"]["app"] == "whatsapp"
    # In the ledger, verifiable; in the listing and its filters.
    services = client.app.state.services  # type: ignore[attr-defined]
    [entry] = services.ledger.entries()
    assert entry.subject_uid == uid and entry.capture_sha256 == test["capture_sha256"]
    page = client.get("/v1/tests").json()
    assert page["total"] == 1 and page["items"][0]["uid"] == uid
    assert client.get("/v1/tests", params={"verdict": "ok"}).json()["total"] == 0
    assert client.get("/v1/tests", params={"kind": "replay"}).json()["total"] == 0
    assert client.get("/v1/tests", params={"app": "whatsapp",
                                           "kind": "reachability"}).json()["total"] == 1
    assert client.get("/v1/tests", params={"verdict": "nonsense"}).status_code == 422
    assert client.get("/v1/tests/nope").status_code == 404
    # The bundle (token), checked.
    assert client.get(f"/v1/tests/{uid}/evidence").status_code == 401
    bundle = client.get(f"/v1/tests/{uid}/evidence", headers=AUTH)
    assert bundle.status_code == 200 and bundle.headers["content-type"] == "application/zip"
    assert check_bundle(bundle.content).ok
    with zipfile.ZipFile(io.BytesIO(bundle.content)) as z:
        assert z.read("test.pcap") == Path(services.store.test(uid).capture_path).read_bytes()
    # Its report, in each language and both formats.
    fr = client.get(f"/v1/tests/{uid}/report", params={"lang": "fr"})
    assert fr.status_code == 200 and fr.headers["content-type"].startswith("text/html")
    assert "bloqué" in fr.text and entry.entry_hash in fr.text
    md = client.get(f"/v1/tests/{uid}/report", params={"format": "md", "lang": "ar"})
    assert md.headers["content-type"].startswith("text/markdown") and "محجوبة" in md.text
    assert client.get(f"/v1/tests/{uid}/report", params={"lang": "de"}).status_code == 422
    assert client.get("/v1/tests/nope/report").status_code == 404
    # The metrics.
    text = client.get("/metrics").text
    assert ('marsad_test_finished_total{app="whatsapp",kind="reachability",'
            'verdict="blocked"} 1.0') in text
    assert 'marsad_test_last_timestamp_seconds{app="whatsapp",kind="reachability"}' in text


def test_ledger_verification_rederives_the_test(client: TestClient,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "policy.reach", judge_module())
    client.post("/v1/tests", headers=AUTH, json={"kind": "reachability", "app": "signal"})
    _wait(client)
    report = client.get("/v1/ledger/verify", params={"rederive": "true"}, headers=AUTH).json()
    assert report["ok"] is True and report["entries"] == 1
    assert len(report["captures_checked"]) == 1 and not report["captures_unavailable"]


def test_a_failing_runner_fails_the_job_with_its_reason(client: TestClient) -> None:
    resp = client.post("/v1/tests", headers=AUTH,
                       json={"kind": "replay", "app": "zoom", "server": "192.0.2.7:5201"})
    assert resp.status_code == 202
    _wait(client)
    job = client.get(resp.headers["location"]).json()
    assert job["state"] == "failed" and "does not replay" in job["error"]
    assert job["request"] == {"kind": "replay", "app": "zoom", "server": "lab",
                              "transport": "udp"}  # the server by name; never its token
    assert client.get("/v1/tests").json()["total"] == 0


def test_missing_runner_module_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "api.reach_test", None)
    with _app(tmp_path, None) as client:
        resp = client.post("/v1/tests", headers=AUTH,
                           json={"kind": "reachability", "app": "telegram"})
        _wait(client)
        job = client.get(resp.headers["location"]).json()
    assert job["state"] == "failed"
    assert "reachability test runner (api.reach_test) is not installed" in job["error"]


def test_queue_is_bounded(tmp_path: Path, recorder: Recorder) -> None:
    recorder.gate.clear()
    with _app(tmp_path, recorder, tests_max_queued=2) as client:
        body = {"kind": "reachability", "app": "viber"}
        codes = [client.post("/v1/tests", headers=AUTH, json=body).status_code
                 for _ in range(3)]
        assert codes == [202, 202, 429]
        recorder.gate.set()
        _wait(client)
        assert client.get("/v1/tests").json()["total"] == 2


def test_a_restart_marks_unfinished_jobs_interrupted(tmp_path: Path,
                                                     recorder: Recorder) -> None:
    recorder.gate.clear()
    with _app(tmp_path, recorder) as client:
        first = client.post("/v1/tests", headers=AUTH,
                            json={"kind": "reachability", "app": "teams"}).json()
        second = client.post("/v1/tests", headers=AUTH,
                             json={"kind": "reachability", "app": "teams"}).json()
        # The service stops while the first runs: it finishes, the queued one never starts.
        threading.Timer(0.5, recorder.gate.set).start()
    with _app(tmp_path, recorder) as client:
        states = [client.get(f"/v1/tests/jobs/{j['id']}").json()
                  for j in (first, second)]
    assert [s["state"] for s in states] == ["done", "interrupted"]
    assert "request it again" in states[1]["error"]
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("body", [
    {"kind": "reachability", "app": "netflix"},      # the classifier's, no endpoints
    {"kind": "reachability", "app": "sip"},          # no public endpoints at all
    {"kind": "replay", "app": "netflix", "server": "lab"},                 # no trace
    {"kind": "replay", "app": "whatsapp", "server": "lab", "transport": "tcp"},
])
def test_an_app_the_test_cannot_run_for_is_refused_not_queued(
        client: TestClient, recorder: Recorder, body: dict[str, Any]) -> None:
    # Such a request used to be accepted (202), its job failing later in the runner.
    resp = client.post("/v1/tests", json=body, headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"][0]["loc"] == ["body", "app"]
    assert recorder.requests == []
