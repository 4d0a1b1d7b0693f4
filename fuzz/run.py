"""Run the fuzz targets one after another under atheris (libFuzzer), and sum up.

    python -m fuzz.run [--seconds S | --runs N] [--targets a,b] [--work DIR] [--report FILE]

Each target runs in its own process, one at a time (one core), on its seed corpus
(``fuzz/corpus/<target>``, read only) plus a work corpus (``<work>/corpus/<target>``)
that keeps what the fuzzer finds from one run to the next. A crash (an escaped
exception, a broken contract), a hang (an input running longer than ``--timeout``) or
memory beyond ``--rss-limit-mb`` writes the input to ``<work>/crashes/`` and makes the
run fail. The summary gives per target: inputs run, libFuzzer's coverage (``cov``: edges,
``ft``: features), corpus size, crashes, known issues counted (see
``fuzz.targets.KNOWN_ISSUES``) and duration; ``--report`` writes it as JSON too.

``python -m fuzz.run --child TARGET -- LIBFUZZER_ARGS`` is the process that fuzzes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "corpus"

MAX_LEN = {"pcap": 8192, "pcapng": 8192, "gzip": 8192, "decode": 4096, "inspect": 4096}
"""Largest input per target (libFuzzer ``-max_len``); others take 2048."""

_DONE = re.compile(r"#(\d+)\s+DONE\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_STAT = re.compile(r"stat::(\w+):\s+(\d+)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def _child(name: str, args: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["probe", "classifier", "fuzz.targets"]):
        from fuzz import targets
    run = targets.TARGETS[name].run
    atheris.Setup([sys.argv[0], *args], run)
    atheris.Fuzz()


def _segment(name: str, work: Path, seconds: float | None, runs: int | None, timeout: int,
             rss_limit_mb: int, log: Path, known: Path, seed: int | None = None
             ) -> dict[str, Any]:
    """One fuzzing process on target ``name``; returns its figures."""
    corpus = work / "corpus" / name
    crashes = work / "crashes"
    args = [f"-timeout={timeout}", f"-rss_limit_mb={rss_limit_mb}",
            f"-max_len={MAX_LEN.get(name, 2048)}", f"-artifact_prefix={crashes}/{name}-",
            "-print_final_stats=1", "-print_pcs=0"]
    if runs is not None:
        args.append(f"-runs={runs}")
    if seed is not None:
        args.append(f"-seed={seed}")
    if seconds is not None:
        args.append(f"-max_total_time={max(1, int(seconds))}")
    args += [str(corpus), str(SEEDS / name)]
    env = dict(os.environ, MARSAD_FUZZ_KNOWN=str(known), PYTHONPATH=str(ROOT))
    with open(log, "a") as out:
        rc = subprocess.call([sys.executable, "-m", "fuzz.run", "--child", name, "--", *args],
                             cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    text = log.read_text(errors="replace").rsplit("INFO: Running with entropic power", 1)[-1]
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    last = _DONE.findall(text) or _STATUS.findall(text)
    execs, cov, ft, corp = (int(x) for x in last[-1]) if last else (0, 0, 0, 0)
    artifacts = _ARTIFACT.findall(text)
    return {"inputs": stats.get("number_of_executed_units", execs), "cov": cov, "ft": ft,
            "corpus": corp, "exit": rc, "artifacts": artifacts,
            "hang": "ALARM: working on the last Unit" in text
            or any("timeout-" in a for a in artifacts),
            "oom": "out-of-memory" in text or any("oom-" in a for a in artifacts),
            "peak_rss_mb": stats.get("peak_rss_mb", 0)}


def fuzz_target(name: str, work: Path, seconds: float | None, runs: int | None,
                timeout: int, rss_limit_mb: int, log: Path, segment_s: float,
                seed: int | None = None) -> dict[str, object]:
    """Fuzz one target for ``seconds`` (or ``runs`` inputs) in processes of at most
    ``segment_s`` each, the corpus carried from one to the next: under atheris the fuzzing
    process grows by some KB per input (replaying the same inputs without it does not), so
    a long run in one process would end at the memory limit."""
    (work / "corpus" / name).mkdir(parents=True, exist_ok=True)
    (work / "crashes").mkdir(parents=True, exist_ok=True)
    known = work / f"known-{name}.log"
    known.unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    t0 = time.monotonic()
    total, segments = 0, 0
    seg: dict[str, Any] = {}
    while True:
        left = None if seconds is None else seconds - (time.monotonic() - t0)
        if left is not None and left < 1:
            break
        seg = _segment(name, work, None if left is None else min(left, segment_s),
                       None if runs is None else runs - total, timeout, rss_limit_mb, log, known,
                       None if seed is None else seed + segments)
        segments += 1
        total += int(seg["inputs"])
        if seg["exit"] != 0 or (runs is not None and total >= runs) or not seg["inputs"]:
            break
    known_hits = known.read_text().splitlines() if known.exists() else []
    return {"target": name, "inputs": total, "cov": seg.get("cov", 0), "ft": seg.get("ft", 0),
            "corpus": seg.get("corpus", 0), "crashes": 0 if seg.get("exit", 0) == 0 else 1,
            "hang": seg.get("hang", False), "oom": seg.get("oom", False),
            "exit": seg.get("exit", 0), "artifacts": seg.get("artifacts", []),
            "known_issues": len(known_hits), "segments": segments,
            "seconds": round(time.monotonic() - t0, 1), "log": str(log)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:])
        return 0
    from fuzz.targets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated targets (default: all)")
    ap.add_argument("--seconds", type=float, help="time per target")
    ap.add_argument("--runs", type=int, help="inputs per target")
    ap.add_argument("--seed", type=int, help="libFuzzer's random seed (default: a new one "
                                             "each run); a fixed one makes a run repeatable")
    ap.add_argument("--timeout", type=int, default=20, help="seconds one input may take")
    ap.add_argument("--rss-limit-mb", type=int, default=2048)
    ap.add_argument("--segment", type=float, default=60.0,
                    help="longest fuzzing process, seconds (the corpus carries over)")
    ap.add_argument("--work", type=Path, default=ROOT / "fuzz" / "work")
    ap.add_argument("--report", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.seconds is None and args.runs is None:
        args.seconds = 60.0
    names = [n for n in args.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown targets: {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'target':<10} {'inputs':>9} {'cov':>6} {'ft':>7} {'corpus':>6} {'crash':>5} "
          f"{'known':>5} {'sec':>6}", flush=True)
    for name in names:
        row = fuzz_target(name, args.work, args.seconds, args.runs, args.timeout,
                          args.rss_limit_mb, args.work / f"{name}.log", args.segment,
                          args.seed)
        rows.append(row)
        print(f"{name:<10} {row['inputs']:>9} {row['cov']:>6} {row['ft']:>7} "
              f"{row['corpus']:>6} {row['crashes']:>5} {row['known_issues']:>5} "
              f"{row['seconds']:>6}", flush=True)
        if row["crashes"]:
            artifacts = [str(a) for a in row["artifacts"]]  # type: ignore[attr-defined]
            print(f"  CRASH (exit {row['exit']}): see {row['log']}; input: "
                  f"{', '.join(artifacts) or '?'}", flush=True)
    total = sum(int(r["inputs"]) for r in rows)  # type: ignore[call-overload]
    crashed = [str(r["target"]) for r in rows if r["crashes"]]
    print(f"total inputs {total}, crashes {len(crashed)}"
          + (f" ({', '.join(crashed)})" if crashed else ""), flush=True)
    if args.report:
        args.report.write_text(json.dumps({"targets": rows, "total_inputs": total,
                                           "crashed": crashed}, indent=2) + "\n")
    return 1 if crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
