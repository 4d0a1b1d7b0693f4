"""``marsad analyze --out --scheduler``: the same tasks on a real Dask cluster, a ``dask
scheduler`` and two ``dask worker`` processes started from Dask's command line on
localhost, with the captures and the dataset named by ``file://`` URLs; the dataset is
the local pool's."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed (make test "
                                          "installs it)")

from api.archive import PARTITION, TABLES, read_table
from bench.dask_cluster import Cluster, local_cluster
from bench.gen_archive import make_archive
from tests.unit.api.test_api_archive import NAMES, listing, service

ROOT = Path(__file__).resolve().parent.parent.parent


def marsad(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def rows(out: str) -> dict[str, list[dict[str, Any]]]:
    got = {}
    for table in TABLES:
        rs = read_table(out, table).to_pylist()
        for r in rs:
            for k in ("started_at", "hash_s", "analysis_s", "worker"):
                r.pop(k, None)
            if table == "manifest":
                # of files with the same content, the one analysed first (duplicates race)
                path = r.pop("path")
                if r["error"]:
                    r["error"] = r["error"].removeprefix(path)
        got[table] = sorted(rs, key=lambda r: (r[PARTITION], str(r.get("uid"))))
    return got


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), workers=2) as c:
        yield c


def test_dask_cluster_gives_the_local_dataset(cluster: Cluster, tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    make_archive(folder, files=40, base_packets=3000)
    local = tmp_path / "local"
    proc = marsad("analyze", str(folder), "--out", str(local), "--jobs", "2")
    assert proc.returncode == 2, proc.stderr  # the folder holds unreadable files
    assert shutil.which("dask") or Path(sys.executable).with_name("dask").exists()
    out = f"file://{tmp_path / 'on-dask'}"
    proc = marsad("analyze", f"file://{folder}", "--out", out, "--scheduler",
                  cluster.address)
    assert proc.returncode == 2, proc.stderr
    assert "duplicate" in proc.stderr
    manifest = read_table(out, "manifest").to_pylist()
    # both workers ran tasks, none of them in this process or the command's
    pids = {str(p.pid) for p in cluster.workers}
    ran = {r["worker"].rsplit(":", 1)[1] for r in manifest}
    assert ran == pids, (ran, pids)
    assert all(r["path"].startswith("file://") for r in manifest)
    # the same again: every capture skipped, by the cluster too
    again = marsad("analyze", f"file://{folder}", "--out", out, "--scheduler",
                   cluster.address)
    assert f"{len(manifest)} skipped" in again.stderr, again.stderr
    assert rows(out) == rows(str(local))


def test_serve_on_the_dask_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """``serve --scheduler``: uploads analysed by the cluster's workers, stored as one
    thread of the service stores them."""
    preload = tuple(ROOT / "captures" / n for n in NAMES)
    with service(tmp_path / "thread", preload=preload) as one:
        want = listing(one)
    from distributed import Client
    with Client(cluster.address) as client:
        before = sum(client.run(_executed).values())
        with service(tmp_path / "dask", preload=preload, analysis_workers=2,
                     scheduler=cluster.address) as on_dask:
            got = listing(on_dask)
        assert sum(client.run(_executed).values()) - before == len(NAMES)
    assert got == want and all(state == "done" for _, state, *_ in got["captures"])


def _executed(dask_worker: Any) -> int:
    """Tasks a worker has run."""
    n: int = dask_worker.state.executed_count
    return n
