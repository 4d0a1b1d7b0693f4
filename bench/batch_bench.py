#!/usr/bin/env python3
"""Time ``marsad analyze FOLDER --out DATASET`` on a folder of many captures: one local
job, two local jobs, and a localhost Dask cluster of two workers (``dask scheduler`` and
two ``dask worker`` processes, started once before the runs and not timed).

The folder is written by :mod:`gen_archive` into ``bench/data/`` (ring files cut from
synthetic captures, the sample calls, damaged files, duplicates). Each run writes a new
dataset; the runs alternate between modes, and the median wall time of ``--reps`` is
reported with the speed-up over one job and each worker's peak memory (RSS, as the
command reports it from each worker process). The marsad command's own process tree is
sampled too (``TreeSampler``). Results: a markdown table on stdout and JSON in
``bench/out/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_bench as rb
from dask_cluster import local_cluster
from gen_archive import make_archive

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
OUT = ROOT / "bench" / "out"
_PEAKS = re.compile(r"(\d+) worker\(s\), peak memory \(RSS\) per worker: ([\d, ]+) MiB")


def folder_of(files: int, per_file: int, base: int) -> Path:
    """The benchmark folder, written when missing."""
    path = DATA / f"archive-{files}-{per_file}"
    if not (path / "kinds.json").is_file():
        if path.exists():
            shutil.rmtree(path)
        make_archive(path, files=files, packets_per_file=per_file, base_packets=base)
    return path


def cpu_s(pids: list[int]) -> float:
    """User and system CPU seconds the processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / tick


def one_run(argv: list[str], out: Path, workers: list[int]) -> dict[str, Any]:
    """One batch; ``workers``: processes outside the command's tree (Dask workers) whose
    CPU time counts too."""
    if out.exists():
        shutil.rmtree(out)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    outside = cpu_s(workers)
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        sampler = rb.TreeSampler(proc.pid)
        sampler.sample()
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.stop()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
               + cpu_s(workers) - outside)
        err.seek(0)
        text = err.read().decode(errors="replace")
    m = _PEAKS.search(text)
    peaks = [int(x) for x in m.group(2).split(",")] if m else []
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2),
            "load_avg": os.getloadavg()[0], "returncode": rc, "workers": len(peaks),
            "peak_rss_mib_per_worker": peaks, "tree_peak_rss_mib": round(sampler.peak / 2**20),
            "summary": text.strip().splitlines()[-2:]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--packets-per-file", type=int, default=5000)
    ap.add_argument("--base-packets", type=int, default=100_000,
                    help="packets of each synthetic capture cut into ring files")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-dask", action="store_true", help="local runs only")
    a = ap.parse_args(argv)
    folder = folder_of(a.files, a.packets_per_file, a.base_packets)
    files = [p for p in folder.rglob("*") if p.is_file() and p.name != "kinds.json"]
    size = sum(p.stat().st_size for p in files)
    py = sys.executable
    base = [py, "-m", "api.cli", "analyze", str(folder)]
    runs: dict[str, list[dict[str, Any]]] = {"1 job": [], "2 jobs": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        modes = {"1 job": [*base, "--jobs", "1"], "2 jobs": [*base, "--jobs", "2"]}
        outside: dict[str, list[int]] = {"1 job": [], "2 jobs": []}
        cluster_cm = None
        if not a.no_dask:
            # in this session, as the local pool's processes are (sched_autogroup)
            cluster_cm = local_cluster(work / "cluster", workers=2, own_sessions=False)
            cluster = cluster_cm.__enter__()
            modes["Dask, 2 workers"] = [*base, "--scheduler", cluster.address]
            outside["Dask, 2 workers"] = [p.pid for p in cluster.workers]
            runs["Dask, 2 workers"] = []
        try:
            for _ in range(a.reps):
                for name, cmd in modes.items():
                    r = one_run([*cmd, "--out", str(work / "dataset")], work / "dataset",
                                outside[name])
                    runs[name].append(r)
                    print(f"{name}: {r['wall_s']} s, rc {r['returncode']}, peaks "
                          f"{r['peak_rss_mib_per_worker']} MiB", file=sys.stderr)
        finally:
            if cluster_cm is not None:
                cluster_cm.__exit__(None, None, None)
    one = statistics.median(r["wall_s"] for r in runs["1 job"])
    rows = []
    for name, rs in runs.items():
        wall = statistics.median(r["wall_s"] for r in rs)
        rows.append({"mode": name, "wall_s": wall,
                     "cpu_s": statistics.median(r["cpu_s"] for r in rs),
                     "cores_used": round(statistics.median(r["cpu_s"] / r["wall_s"]
                                                           for r in rs), 2),
                     "captures_per_s": round(len(files) / wall, 1),
                     "mib_per_s": round(size / 2**20 / wall, 1),
                     "speedup": round(one / wall, 2),
                     "workers": rs[0]["workers"],
                     "peak_rss_mib_per_worker": max(max(r["peak_rss_mib_per_worker"] or [0])
                                                    for r in rs),
                     "walls": [r["wall_s"] for r in rs]})
    result = {"machine": rb.machine(), "folder": str(folder), "files": len(files),
              "bytes": size, "reps": a.reps, "rows": rows, "runs": runs}
    loads = [r["load_avg"] for rs in runs.values() for r in rs]
    lines = [f"{len(files)} captures, {size / 2**20:.1f} MiB, median of {a.reps}; "
             f"{os.cpu_count()} cores, 1-minute load average {min(loads):.1f}–{max(loads):.1f} "
             "during the runs:", "",
             "| mode | wall s | CPU s | cores busy | captures/s | MiB/s | speed-up vs 1 job "
             "| peak RSS per worker MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['wall_s']:.2f} | {r['cpu_s']:.1f} | "
                     f"{r['cores_used']:.2f} | {r['captures_per_s']} | {r['mib_per_s']} | "
                     f"{r['speedup']:.2f}× | {r['peak_rss_mib_per_worker']} |")
    text = "\n".join(lines)
    print(text)
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"batch-{stamp}.json").write_text(json.dumps(result, indent=1) + "\n")
    (OUT / f"batch-{stamp}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
