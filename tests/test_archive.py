"""``marsad analyze DIR --out DATASET``: a folder of 200 small captures (ring files cut from
synthetic captures, sample calls, damaged files, duplicates; bench/gen_archive.py) into a
Parquet dataset, row for row the same as single-capture runs; resumed after kill -9
without redoing what was done; skipped when already there; redone for another policy."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from api.archive import PARTITION, TABLES, expand_inputs, read_table, rows_as_json
from api.pipeline import analyze_capture
from bench.gen_archive import make_archive

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ("started_at", "hash_s", "analysis_s", "worker")
"""Manifest columns that differ from run to run."""


def marsad(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, **kw)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("archive") / "ring"
    info = make_archive(folder, files=200)
    return folder, info


@pytest.fixture(scope="module")
def clean(archive: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
          ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """The folder analysed in one uninterrupted batch on two processes."""
    folder, _ = archive
    out = tmp_path_factory.mktemp("clean") / "dataset"
    proc = marsad("analyze", str(folder), "--out", str(out), "--jobs", "2")
    return out, proc


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (a zombie has ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def table_rows(out: Path, table: str) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in read_table(str(out), table).to_pylist():
        if table == "manifest":
            for k in TIMINGS:
                r.pop(k)
            # of files with the same content, the one analysed first (the duplicates race)
            path = r.pop("path")
            if r["error"]:
                r["error"] = r["error"].removeprefix(path)
        rows.setdefault(r[PARTITION], []).append(r)
    return rows


def test_folder_of_200_into_dataset(archive: tuple[Path, dict[str, Any]],
                                    clean: tuple[Path, subprocess.CompletedProcess[str]]
                                    ) -> None:
    folder, info = archive
    out, proc = clean
    kinds: dict[str, str] = info["kinds"]
    assert len(kinds) >= 200
    # unreadable files in the folder: exit 2, and the batch went on past them
    assert proc.returncode == 2, proc.stderr
    by_sha: dict[str, list[str]] = {}
    for name in kinds:
        by_sha.setdefault(sha(folder / name), []).append(name)
    manifest = {r[PARTITION]: r for r in read_table(str(out), "manifest").to_pylist()}
    assert set(manifest) == set(by_sha)  # every content once, duplicates not twice
    dups = sum(len(v) - 1 for v in by_sha.values())
    assert dups == len(info["copies"]) > 0
    assert f"{dups} duplicate" in proc.stderr
    # a gzip capture cut short: whatever analysing it alone gives (today: unreadable when
    # the cut comes within the reader's first block)
    alone = marsad("analyze", str(folder / "cut.pcap.gz"), "--json").returncode
    expect = {"ring": "ok", "sample": "ok", "truncated": "damaged",
              "gzip-truncated": {2: "unreadable", 3: "damaged"}[alone], "text": "unreadable",
              "empty": "unreadable"}
    statuses: dict[str, int] = {}
    for digest, names in by_sha.items():
        kind = next(kinds[n] for n in names if kinds[n] != "duplicate")
        row = manifest[digest]
        assert row["status"] == expect[kind], (names, row)
        assert row["size_bytes"] == (folder / names[0]).stat().st_size
        assert row["path"] in {str(folder / n) for n in names}
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        if row["status"] == "ok":
            assert row["error"] is None and row["packets"] > 0
        else:
            assert row["error"].startswith(row["path"] + ": ")
        if row["status"] == "damaged":
            assert "truncated" in row["error"] and row["stopped_at"] > 0
            assert row["packets"] > 0
    assert statuses["damaged"] >= 5 and statuses["unreadable"] in (2, 3)
    assert statuses["ok"] >= 180
    for name in ("notes.pcap", "empty.pcap"):
        assert f"unreadable: {folder / name}: " in proc.stderr
    for name in ("cut.pcap.gz", "ring/calls-00-024.pcap"):  # the path first analysed
        same = by_sha[sha(folder / name)]
        assert any(f"{expect[kinds[name]]}: {folder / n}: " in proc.stderr for n in same)
    # no table holds a partition of an unreadable capture; every other one has flows
    flows = table_rows(out, "flows")
    assert {d for d, r in manifest.items() if r["status"] != "unreadable"} >= set(flows)
    assert sum(len(v) for v in flows.values()) == sum(r["flows"] for r in manifest.values()
                                                      if r["flows"])
    verdicts = read_table(str(out), "verdicts").to_pylist()
    assert {v["verdict"] for v in verdicts} >= {"ok", "blocked"}
    assert not (out / "_staging").exists()


def test_dataset_equals_single_capture_runs(
        archive: tuple[Path, dict[str, Any]],
        clean: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """Every capture's flows, calls and verdicts in the dataset are, row for row, what
    analysing it alone gives (``marsad analyze --json``'s records)."""
    folder, info = archive
    out, _ = clean
    flows = table_rows(out, "flows")
    calls = table_rows(out, "calls")
    verdicts = table_rows(out, "verdicts")
    evidence = table_rows(out, "evidence")
    manifest = {r[PARTITION]: r for r in read_table(str(out), "manifest").to_pylist()}
    checked = 0
    for digest, row in manifest.items():
        if row["status"] == "unreadable":
            continue
        alone = analyze_capture(row["path"], workers=1).to_json()
        assert rows_as_json("flows", flows.get(digest, [])) == alone["flows"], row["path"]
        assert rows_as_json("calls", calls.get(digest, [])) == alone["calls"], row["path"]
        want = sorted([("call", c["uid"], c["verdict"], c["reasons"]) for c in alone["calls"]]
                      + [("flow", f["uid"], f["verdict"], f["reasons"])
                         for f in alone["flows"] if "verdict" in f])
        got = sorted((v["subject"], v["uid"], v["verdict"], v["reasons"])
                     for v in verdicts.get(digest, []))
        assert got == want, row["path"]
        fired = sorted((c["uid"], e["rule"], e["text"]) for c in alone["calls"]
                       for e in c["evidence"])
        assert sorted((e["uid"], e["rule"], e["text"]) for e in evidence.get(digest, [])
                      if e["subject"] == "call") == fired
        checked += 1
    assert checked >= 185
    # and three of them against the command itself, as a user runs it
    for name in ("sample-blocked.pcap", "sample-sip.pcap", sorted(info["kinds"])[5]):
        proc = marsad("analyze", str(folder / name), "--json")
        alone = json.loads(proc.stdout)
        digest = sha(folder / name)
        assert rows_as_json("flows", flows[digest]) == alone["flows"]
        assert rows_as_json("calls", calls.get(digest, [])) == alone["calls"]


def test_kill9_mid_batch_then_resume(archive: tuple[Path, dict[str, Any]],
                                     clean: tuple[Path, subprocess.CompletedProcess[str]],
                                     tmp_path: Path) -> None:
    folder, _ = archive
    out = tmp_path / "dataset"
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "analyze", str(folder),
                             "--out", str(out), "--jobs", "2"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    manifest_dir = out / "manifest"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if manifest_dir.is_dir() and len(os.listdir(manifest_dir)) >= 40:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the batch ended before it could be killed"
        workers = children(proc.pid)
        assert len(workers) >= 2  # the pool's two processes (and multiprocessing's tracker)
        os.kill(proc.pid, signal.SIGKILL)  # the command alone: its workers must follow
        proc.wait()
        killed_at = time.time()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(p) for p in workers):
            time.sleep(0.05)
        assert not any(alive(p) for p in workers), "worker processes outlived the command"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # no half partition: every partition there is a whole, readable file
    for table in TABLES:
        for part in (out / table).glob(f"{PARTITION}=*"):
            assert [p.name for p in part.iterdir()] == ["part-0.parquet"], part
            pq.read_table(part / "part-0.parquet")
    before = {r[PARTITION]: r for r in read_table(str(out), "manifest").to_pylist()}
    total = len(table_rows(clean[0], "manifest"))
    assert 40 <= len(before) < total
    resumed = marsad("analyze", str(folder), "--out", str(out), "--jobs", "2")
    assert resumed.returncode == 2, resumed.stderr
    after = {r[PARTITION]: r for r in read_table(str(out), "manifest").to_pylist()}
    assert set(after) == set(table_rows(clean[0], "manifest"))
    for digest, row in before.items():  # what was done is not done again
        assert after[digest] == row
    redone = [d for d in after if d not in before]
    assert len(redone) == total - len(before)
    assert all(after[d]["started_at"] >= killed_at for d in redone)
    # the resumed dataset is the uninterrupted one
    for table in TABLES:
        assert table_rows(out, table) == table_rows(clean[0], table), table
    assert not (out / "_staging").exists()


def test_again_skips_everything(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("sample-call.pcap", "sample-blocked.pcap", "bad-truncated.pcap"):
        shutil.copyfile(ROOT / "captures" / name, folder / name)
    out = tmp_path / "dataset"
    first = marsad("analyze", str(folder / "*.pcap"), "--out", str(out), "--jobs", "1")
    assert first.returncode == 3, first.stderr  # a damaged capture
    assert "2 ok, 1 damaged" in first.stderr
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = marsad("analyze", str(folder), "--out", str(out), "--jobs", "2")
    assert again.returncode == 3 and "3 skipped" in again.stderr, again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == files
    # another policy: every capture again, its rows replaced, not added to
    policy = tmp_path / "policy.yaml"
    policy.write_text("blocked:\n  stun_min_requests: 3\n")
    other = marsad("analyze", str(folder), "--out", str(out), "--policy", str(policy),
                   "--jobs", "1")
    assert "2 ok, 1 damaged" in other.stderr, other.stderr
    manifest = read_table(str(out), "manifest").to_pylist()
    assert len(manifest) == 3 and len({r["policy_sha256"] for r in manifest}) == 1
    assert read_table(str(out), "flows").num_rows == sum(r["flows"] for r in manifest)


def test_flows_into_dataset(tmp_path: Path) -> None:
    out = tmp_path / "dataset"
    proc = marsad("flows", str(ROOT / "captures" / "sample-call.pcap"),
                  str(ROOT / "captures" / "sample-sip.pcap"), "--out", str(out), "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    for name in ("sample-call.pcap", "sample-sip.pcap"):
        alone = [json.loads(line) for line in
                 marsad("flows", str(ROOT / "captures" / name)).stdout.splitlines()]
        digest = sha(ROOT / "captures" / name)
        rows = read_table(str(out), "flows", [digest]).to_pylist()
        assert sorted(rows_as_json("flows", rows), key=lambda r: r["uid"]) == \
            sorted(alone, key=lambda r: r["uid"])
    assert not (out / "calls").exists()


def test_several_captures_need_out() -> None:
    proc = marsad("analyze", str(ROOT / "captures" / "sample-call.pcap"),
                  str(ROOT / "captures" / "sample-sip.pcap"), "--json")
    assert proc.returncode == 2 and "add --out DIR" in proc.stderr


def test_a_failing_task_does_not_stop_the_batch(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A task that fails for a reason of marsad's own is reported, not recorded (the next
    batch tries it again), and the other captures go on."""
    import api.archive as archive
    from api.cli import main
    real = archive._analyse

    def failing(path: str, s: archive.Settings) -> Any:
        if path.endswith("sample-sip.pcap"):
            raise RuntimeError("a bug")
        return real(path, s)

    monkeypatch.setattr(archive, "_analyse", failing)
    out = tmp_path / "dataset"
    caps = [str(ROOT / "captures" / n) for n in ("sample-call.pcap", "sample-sip.pcap",
                                                  "sample-blocked.pcap")]
    assert main(["analyze", *caps, "--out", str(out), "--jobs", "1"]) == 2
    assert len(read_table(str(out), "manifest")) == 2
    monkeypatch.setattr(archive, "_analyse", real)
    assert main(["analyze", *caps, "--out", str(out), "--jobs", "1"]) == 0
    manifest = read_table(str(out), "manifest").to_pylist()
    assert sorted(Path(r["path"]).name for r in manifest) == sorted(Path(c).name for c in caps)


def test_a_capture_analysed_again_keeps_no_rows_of_the_earlier_analysis(tmp_path: Path) -> None:
    """The capture's rows are those of its last task only: flows over an analysis leave no
    call, verdict or evidence of it, and a capture that became unreadable keeps none."""
    out = tmp_path / "dataset"
    cap = tmp_path / "blocked.pcap.gz"
    cap.write_bytes(gzip.compress((ROOT / "captures" / "sample-blocked.pcap").read_bytes()))
    digest = sha(cap)
    assert marsad("analyze", str(cap), "--out", str(out), "--jobs", "1").returncode == 0
    assert read_table(str(out), "calls", [digest]).num_rows > 0
    assert read_table(str(out), "verdicts", [digest]).num_rows > 0
    assert marsad("flows", str(cap), "--out", str(out), "--jobs", "1").returncode == 0
    for table in ("calls", "verdicts", "evidence"):
        assert read_table(str(out), table, [digest]).num_rows == 0, table
    assert read_table(str(out), "flows", [digest]).num_rows > 0
    assert marsad("analyze", str(cap), "--out", str(out), "--jobs", "1").returncode == 0
    assert read_table(str(out), "calls", [digest]).num_rows > 0
    # Too little room to decompress it now: unreadable, and nothing of it is left.
    proc = marsad("analyze", str(cap), "--out", str(out), "--jobs", "1",
                  "--max-decompressed-bytes", "10")
    assert proc.returncode == 2, proc.stderr
    manifest = read_table(str(out), "manifest", [digest]).to_pylist()
    assert [r["status"] for r in manifest] == ["unreadable"]
    for table in ("flows", "calls", "verdicts", "evidence"):
        assert read_table(str(out), table, [digest]).num_rows == 0, table


def test_local_names_are_read_as_written(tmp_path: Path) -> None:
    """A local file whose name holds glob brackets or fsspec's ``::`` is that file, as the
    other commands read it; a glob still expands."""
    src = ROOT / "captures" / "sample-call.pcap"
    odd = tmp_path / "in"
    odd.mkdir()
    for name in ("cap [1].pcap", "a::b.pcap"):
        shutil.copy(src, odd / name)
        out = tmp_path / f"out-{len(name)}"
        proc = marsad("analyze", str(odd / name), "--out", str(out), "--jobs", "1")
        assert proc.returncode == 0, proc.stderr
        rows = read_table(str(out), "manifest").to_pylist()
        assert [r["status"] for r in rows] == ["ok"] and rows[0]["path"].endswith(name)
    assert expand_inputs([str(odd / "*.pcap")]) == sorted(
        str(odd / n) for n in ("a::b.pcap", "cap [1].pcap"))
