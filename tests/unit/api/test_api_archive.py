"""The service and the batch's executor and dataset: ``serve --jobs N`` analyses uploads in
N local processes and stores what one thread stores; ``serve --dataset DIR`` shows a
dataset's calls, flows and verdicts as it shows those of the same captures uploaded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from api.cli import main
from api.config import Settings
from api.deps import Services
from api.main import create_app
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
NAMES = ("sample-call.pcap", "sample-blocked.pcap", "sample-sip.pcap")


def _services(client: TestClient) -> Services:
    found: Services = client.app.state.services  # type: ignore[attr-defined]
    return found


@contextmanager
def service(data: Path, **kw: Any) -> Iterator[TestClient]:
    app = create_app(Settings(data_dir=data, **kw), clock=lambda: 1_700_100_000.0)
    with TestClient(app) as client:
        assert _services(client).jobs.wait(120)
        yield client


def listing(client: TestClient) -> dict[str, Any]:
    """Calls, flows and captures as the API lists them, without the service's ids."""
    calls = client.get("/v1/calls", params={"limit": 500}).json()["items"]
    flows = client.get("/v1/flows", params={"limit": 500}).json()["items"]
    caps = client.get("/v1/captures", params={"limit": 500}).json()["items"]
    for row in calls + flows:
        row.pop("capture_id", None)
    summaries = sorted((c["sha256"], c["state"], c["summary"]["flows"], c["summary"]["calls"],
                        c["summary"]["verdicts"], c["summary"]["flow_verdicts"]) for c in caps)
    return {"calls": sorted(calls, key=_key), "flows": sorted(flows, key=_key),
            "captures": summaries}


def _key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True)


def test_serve_jobs_uses_processes_and_stores_the_same(tmp_path: Path) -> None:
    preload = tuple(CAPTURES / n for n in NAMES)
    with service(tmp_path / "one", preload=preload) as one:
        alone = listing(one)
    with service(tmp_path / "two", preload=preload, analysis_workers=2) as two:
        executor = _services(two).jobs._executor
        assert isinstance(executor, ProcessPoolExecutor)
        assert executor._processes  # the analyses ran in the pool's processes
        assert listing(two) == alone
    assert len(alone["calls"]) >= 3 and {c["verdict"] for c in alone["calls"]} >= {"blocked"}


def test_serve_dataset_shows_its_calls_and_verdicts(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    # an unreadable file in the batch is in the manifest, not in the service
    (tmp_path / "notes.pcap").write_text("not a capture\n")
    code = main(["analyze", *(str(CAPTURES / n) for n in NAMES), str(tmp_path / "notes.pcap"),
                 "--out", str(out), "--jobs", "1"])
    assert code == 2
    with service(tmp_path / "uploaded", preload=tuple(CAPTURES / n for n in NAMES)) as up:
        want = listing(up)
    with service(tmp_path / "registered", datasets=(str(out),)) as reg:
        got = listing(reg)
        caps = reg.get("/v1/captures").json()["items"]
        assert sorted(c["filename"] for c in caps) == sorted(NAMES)
        blocked = [c for c in got["calls"] if c["verdict"] == "blocked"]
        assert blocked and reg.get(f"/v1/calls/{blocked[0]['uid']}").status_code == 200
        stats = reg.get("/v1/stats/apps")
        assert stats.status_code == 200
    assert got == want
    # registered once: a restart does not add the captures again
    with service(tmp_path / "registered", datasets=(str(out),)) as again:
        assert len(again.get("/v1/captures").json()["items"]) == len(NAMES)


def test_serve_dataset_of_flows_only_registers_nothing_and_says_so(
        tmp_path: Path, caplog: Any) -> None:
    """``marsad flows --out`` writes conn.log columns only: no classification, call or
    verdict for the service to show. Its captures are not registered (a warning says how
    many), and the service starts."""
    out = tmp_path / "flows-dataset"
    assert main(["flows", str(CAPTURES / NAMES[0]), "--out", str(out), "--jobs", "1"]) == 0
    with caplog.at_level("WARNING"), service(tmp_path / "srv", datasets=(str(out),)) as srv:
        assert srv.get("/v1/captures").json()["items"] == []
    assert any("1 capture(s) written by marsad flows --out" in r.getMessage()
               for r in caplog.records)


def test_a_dataset_calls_report_and_evidence_come_from_the_file_its_manifest_names(
        tmp_path: Path) -> None:
    """A capture registered from a dataset is no copy of the service's: its call's report
    and evidence bundle are cut from the file the manifest names while it is there with
    the same SHA-256, and are gone (410) once it is not."""
    import shutil

    from pydantic import SecretStr

    cap = tmp_path / "in" / "sample-blocked.pcap"
    cap.parent.mkdir()
    shutil.copy(CAPTURES / "sample-blocked.pcap", cap)
    out = tmp_path / "dataset"
    assert main(["analyze", str(cap), "--out", str(out), "--jobs", "1"]) == 0
    auth = {"Authorization": "Bearer t0ken-for-tests"}
    with service(tmp_path / "srv", datasets=(str(out),),
                 api_token=SecretStr("t0ken-for-tests")) as srv:
        calls = srv.get("/v1/calls").json()["items"]
        uid = next(c["uid"] for c in calls if c["verdict"] == "blocked")
        report = srv.get(f"/v1/calls/{uid}/report", params={"format": "md"})
        assert report.status_code == 200 and uid in report.text
        bundle = srv.get(f"/v1/calls/{uid}/evidence", headers=auth)
        assert bundle.status_code == 200 and bundle.content[:2] == b"PK"
        cap.write_bytes(cap.read_bytes()[:-10])  # no longer the file the dataset analysed
        assert srv.get(f"/v1/calls/{uid}/report").status_code == 410
