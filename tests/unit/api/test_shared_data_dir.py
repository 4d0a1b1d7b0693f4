"""``marsad probe`` and ``marsad serve`` on one data directory: the service lists the
probe's runs beside the uploads, with the same summary schema, across restarts."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from tests.conftest import ROOT

MARSAD = [sys.executable, "-c", "import sys; from api.cli import run; sys.argv[0] = 'marsad'; "
          "run()"]


def _probe(data: Path, capture: str) -> None:
    out = subprocess.run([*MARSAD, "probe", "-r", str(ROOT / "captures" / capture),
                          "--data-dir", str(data)], capture_output=True, cwd=ROOT,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr.decode()


def test_the_service_lists_the_probes_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _probe(data, "sample-blocked.pcap")
    for _ in range(2):  # and again after a restart of the service
        with TestClient(create_app(Settings(data_dir=data))) as client:
            page = client.get("/v1/captures")
            assert page.status_code == 200, page.text
            live = [c for c in page.json()["items"] if c["id"].startswith("live-")]
            assert len(live) == 1
            summary = live[0]["summary"]
            assert summary["live"] is True and summary["complete"] is True
            assert summary["calls"] == 1 and summary["verdicts"] == {"blocked": 1}
            assert summary["ledger_entries"] >= 1 and summary["first_ts"] < summary["last_ts"]
            one = client.get(f"/v1/captures/{live[0]['id']}")
            assert one.status_code == 200 and one.json()["summary"] == summary


def test_a_summary_written_by_an_older_probe_still_reads(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _probe(data, "sample-call.pcap")
    db = sqlite3.connect(data / "marsad.db")
    old = {"live": True, "interface": None, "packets": 10, "dropped": 0, "flows": 2,
           "calls": 0, "verdicts": {}, "complete": True}
    db.execute("UPDATE captures SET summary = ? WHERE id LIKE 'live-%'", (json.dumps(old),))
    db.commit()
    db.close()
    with TestClient(create_app(Settings(data_dir=data))) as client:
        page = client.get("/v1/captures")
        assert page.status_code == 200, page.text
        (item,) = [c for c in page.json()["items"] if c["id"].startswith("live-")]
        assert item["summary"]["packets"] == 10 and item["summary"]["warnings"] == []
