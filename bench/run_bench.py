#!/usr/bin/env python3
"""Time marsad against a dpkt loop, nfstream and (optionally) tshark on synthetic captures.

marsad is timed as users run it: ``marsad flows`` (flow records only), ``marsad
analyze FILE --json`` (the one pipeline: flows, labels, calls, verdicts) and the live
probe fed the capture as a stream (``cat FILE | marsad probe -r - --data-dir D``, with
the capture ring and the store on, a fresh data directory per run).

It runs on two captures from ``gen_capture.py`` (``--captures``, default both): ``web``,
mostly web and DNS flows with a few long calls, and ``calls``, most packets in many
short voice and video calls. Each tool runs as its own process on the same file; runs
alternate between the tools and the captures for ``--reps`` rounds and the median wall
time is kept. Peak memory is
measured over the tool's whole process tree (nfstream meters and marsad
workers are separate processes), sampled from /proc every ~20 ms (PSS every
~100 ms, see ``PSS_EVERY``), two ways:
the summed resident set size (RSS), which counts a page shared by forked
processes once per process, and the summed proportional set size (PSS), which
splits shared pages between the processes that map them and so adds up to the
memory the tree really holds. Both are reported; the memory ratios use both.

Tools that are not installed, or marsad subcommands that do not exist yet, are
skipped with a note. Results go to ``bench/out/`` as JSON and markdown, one table and
its ratios per capture, with the machine they were measured on.

``--flatness`` instead runs marsad flows and nfstream without DPI on a
scale-1 and a scale-10 capture of the same flows (``gen_capture.py --scale``)
and reports how much more memory the ten times longer capture needed.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = ROOT / ".venv" / "bin"
PAGE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_S = 0.02
"""Interval between two RSS samples."""
PSS_EVERY = 5
"""PSS is read on every 5th sample (100 ms): the kernel walks the page tables for it
(~1.3 ms per 400 MiB process), which at 20 ms would cost the measured tools CPU and
page-table lock contention. PSS never exceeds RSS, so it is also skipped when the summed
RSS is below the PSS peak already seen."""
sys.path.insert(0, str(BENCH))
from gen_capture import PROFILES, default_path  # noqa: E402

DEFAULT_PACKETS = {"web": 2_000_000, "calls": 500_000}
"""Size of each profile's generated capture unless ``--packets`` says otherwise."""

# --------------------------------------------------------------------------------------
# Measuring one process tree
# --------------------------------------------------------------------------------------

HAS_CHILDREN_FILES = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
"""Whether the kernel lists each thread's children (CONFIG_PROC_CHILDREN)."""


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants.

    From each thread's list of children (/proc/<pid>/task/<tid>/children) where the
    kernel has them: a few small reads per process of the tree, where the scan of every
    process's parent link (the fallback) reads one file per process on the machine, 50
    times a second, on CPU the measured tools would otherwise have."""
    if not HAS_CHILDREN_FILES:
        return process_tree_scan(root)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:  # gone
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                    todo.extend(int(x) for x in fh.read().split())
            except (OSError, ValueError):
                continue
    return tree


def process_tree_scan(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent links in /proc/<pid>/stat."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Fields after the command name (which may contain spaces): state, ppid, ...
        parent[int(name)] = int(stat[stat.rfind(b")") + 2:].split()[1])
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (/proc/<pid>/statm, second field), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of one process (/proc/<pid>/smaps_rollup): pages shared with
    other processes count as a share each, so a process tree's PSS adds up to what the
    tree really holds. 0 if the process is gone or the kernel has no smaps_rollup."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeSampler(threading.Thread):
    """Samples the summed RSS and PSS of a process tree until told to stop; keeps the
    peaks. RSS counts a page shared by forked processes once in each of them; PSS splits
    it between them, which is fair to tools that fork workers (marsad and nfstream do)."""

    def __init__(self, root: int) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.peak = 0
        self.peak_pss = 0
        self.samples = 0
        self.max_procs = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_S)

    def sample(self) -> None:
        tree = process_tree(self.root)
        total = sum(rss_bytes(pid) for pid in tree)
        self.samples += 1
        self.max_procs = max(self.max_procs, len(tree))
        self.peak = max(self.peak, total)
        if (self.samples - 1) % PSS_EVERY == 0 and total > self.peak_pss:
            self.peak_pss = max(self.peak_pss, sum(pss_bytes(pid) for pid in tree))

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass(slots=True)
class Run:
    """One timed run of one tool."""

    wall_s: float
    """Wall-clock time from start to exit."""
    peak_rss: int
    """Peak of the summed RSS of the process tree, bytes."""
    peak_pss: int
    """Peak of the summed PSS of the process tree, bytes (0 where PSS is unavailable)."""
    returncode: int
    """Exit status (negative: killed by that signal)."""
    flows: int | None
    """Flow count the tool printed, if it prints one."""
    procs: int
    """Most processes seen in the tree at once."""
    stderr_tail: str
    """Last lines of standard error (kept when the run failed)."""


def timed_run(argv: Sequence[str], keep_stdout: bool, timeout_s: float) -> Run:
    """Run a command, sampling its process tree's memory; parse ``flows N`` from its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        stdout = out if keep_stdout else subprocess.DEVNULL
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), stdout=stdout, stderr=err, cwd=ROOT)
        sampler = TreeSampler(proc.pid)
        sampler.sample()
        sampler.start()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        wall = time.perf_counter() - start
        sampler.stop()
        flows = None
        if keep_stdout:
            out.seek(0)
            text = out.read().decode(errors="replace")
            m = re.search(r"^flows (\d+)$", text, re.M)
            if m:
                flows = int(m.group(1))
            elif "<->" in text:  # tshark conversation tables
                flows = sum(1 for line in text.splitlines() if "<->" in line)
        err.seek(0)
        tail = "\n".join(err.read().decode(errors="replace").splitlines()[-5:])
    return Run(wall, sampler.peak, sampler.peak_pss, rc, flows, sampler.max_procs,
               tail if rc else "")


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------

@dataclass(slots=True)
class Tool:
    """A command under test."""

    name: str
    """Row label."""
    argv: list[str]
    """Command line, with ``{pcap}`` where the capture goes."""
    keep_stdout: bool = True
    """Capture standard output (to read the flow count) instead of discarding it."""
    data_dir: bool = False
    """Give every run a fresh empty directory, ``{datadir}`` in ``argv``, removed after."""
    skip: str | None = None
    """Why the tool is not run, if it is not."""
    runs: list[Run] = field(default_factory=list)
    """Measurements."""

    def command(self, pcap: Path, data_dir: Path | None = None) -> list[str]:
        out = [a.replace("{pcap}", str(pcap)) for a in self.argv]
        if data_dir is not None:
            out = [a.replace("{datadir}", str(data_dir)) for a in out]
        return out

    def fresh(self) -> Tool:
        """The same tool with no measurements (one per capture)."""
        return Tool(self.name, list(self.argv), self.keep_stdout, self.data_dir, self.skip)


MARSAD_FORMAT = {"flows": "--jsonl", "analyze": "--json"}
"""Output option each timed marsad subcommand runs with. ``analyze --json`` and
``--jsonl`` run the same pipeline; ``--json`` is the output users ask for."""


def marsad_tool(sub: str) -> Tool:
    """``marsad <sub> FILE --jsonl|--json``, skipped when the CLI or the subcommand is
    missing."""
    exe = VENV_BIN / "marsad"
    tool = Tool(f"marsad {sub}", [str(exe), sub, "{pcap}", MARSAD_FORMAT.get(sub, "--jsonl")],
                keep_stdout=False)
    tool.skip = marsad_missing(exe, sub)
    return tool


def marsad_probe_tool() -> Tool:
    """The live probe fed the capture as a stream, as on a tap: ``cat FILE | marsad probe
    -r - --data-dir D``, the capture ring and the store on (the defaults with a data
    directory). The shell, ``cat`` and the probe's processes are one tree, so the memory
    sampler counts all of them; standard output (the JSON lines) is discarded."""
    exe = VENV_BIN / "marsad"
    tool = Tool("marsad probe (stream)",
                ["sh", "-c", 'cat "$1" | "$2" probe -r - --data-dir "$3"', "sh", "{pcap}",
                 str(exe), "{datadir}"], keep_stdout=False, data_dir=True)
    tool.skip = marsad_missing(exe, "probe")
    return tool


def marsad_missing(exe: Path, sub: str) -> str | None:
    """Why ``marsad <sub>`` cannot be run, or None when ``marsad <sub> --help`` works."""
    if not exe.exists():
        return f"{exe} not found (package not installed?)"
    try:
        probe = subprocess.run([str(exe), sub, "--help"], capture_output=True, timeout=60,
                               cwd=ROOT)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`marsad {sub} --help` failed: {e}"
    if probe.returncode != 0:
        msg = (probe.stderr or probe.stdout).decode(errors="replace").strip().splitlines()
        return f"`marsad {sub}` not available (exit {probe.returncode}" \
            + (f": {msg[-1]}" if msg else "") + ")"
    return None


def python_tool(name: str, script: str, *args: str, needs: str | None = None) -> Tool:
    """A bench script run by the venv's Python."""
    tool = Tool(name, [sys.executable, str(BENCH / script), "{pcap}", *args])
    if needs is not None:
        try:
            metadata.version(needs)
        except metadata.PackageNotFoundError:
            tool.skip = f"{needs} is not installed (pip install -e '.[bench]')"
    return tool


def tshark_tool() -> Tool:
    exe = shutil.which("tshark")
    tool = Tool("tshark conv", [exe or "tshark", "-q", "-z", "conv,udp", "-z", "conv,tcp",
                                "-r", "{pcap}"])
    if exe is None:
        tool.skip = "tshark not on PATH"
    return tool


def all_tools(with_tshark: bool) -> list[Tool]:
    tools = [marsad_tool("flows"), marsad_tool("analyze"), marsad_probe_tool(),
             python_tool("dpkt loop", "dpkt_loop.py", needs="dpkt"),
             python_tool("nfstream no-DPI", "nfstream_run.py", "--mode", "no-dpi",
                         needs="nfstream"),
             python_tool("nfstream DPI", "nfstream_run.py", "--mode", "dpi", needs="nfstream")]
    if with_tshark:
        tools.append(tshark_tool())
    return tools


def run_tool(tool: Tool, pcap: Path, timeout_s: float) -> Run:
    """One timed run of a tool on a capture (in a fresh data directory if it takes one)."""
    if not tool.data_dir:
        return timed_run(tool.command(pcap), tool.keep_stdout, timeout_s)
    data = Path(tempfile.mkdtemp(prefix="marsad-bench-"))
    try:
        return timed_run(tool.command(pcap, data), tool.keep_stdout, timeout_s)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def measure(plan: Sequence[tuple[str, Path, Sequence[Tool]]], reps: int,
            timeout_s: float) -> None:
    """Run every available tool on its capture ``reps`` times; each round runs every tool
    on every capture in turn, so a change in the machine's load falls on all of them."""
    for rep in range(reps):
        for label, pcap, tools in plan:
            for tool in tools:
                if tool.skip:
                    continue
                run = run_tool(tool, pcap, timeout_s)
                tool.runs.append(run)
                state = "ok" if run.returncode == 0 else f"exit {run.returncode}"
                print(f"  [{rep + 1}/{reps}] {label:6s} {tool.name:22s} {run.wall_s:8.2f} s "
                      f"{run.peak_rss / 2**20:8.1f} MiB  {state}", flush=True)


# --------------------------------------------------------------------------------------
# Capture facts and the machine
# --------------------------------------------------------------------------------------

def count_packets(pcap: Path) -> int:
    """Packets in a classic pcap: from the generator's sidecar when it matches, else counted."""
    side = Path(str(pcap) + ".json")
    if side.exists():
        info = json.loads(side.read_text())
        if info.get("bytes") == pcap.stat().st_size:
            return int(info["packets"])
    n = 0
    with pcap.open("rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            raise SystemExit(f"{pcap}: not a classic pcap")
        magic = struct.unpack("<I", head[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            fmt = "<IIII"
        elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
            fmt = ">IIII"
        else:
            raise SystemExit(f"{pcap}: not a classic pcap (magic {magic:#x})")
        while True:
            rec = fh.read(16)
            if len(rec) < 16:
                return n
            incl = struct.unpack(fmt, rec)[2]
            fh.seek(incl, os.SEEK_CUR)
            n += 1


def ensure_capture(packets: int, scale: int, profile: str = "web") -> Path:
    """The default capture of this profile, size and scale, generated first if it is
    missing."""
    path = default_path(packets, scale, profile)
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        subprocess.run([sys.executable, str(BENCH / "gen_capture.py"), "--packets", str(packets),
                        "--scale", str(scale), "--profile", profile, "--out", str(path)],
                       check=True)
    return path


def version_of(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """CPU, cores, memory, OS and the versions of everything measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    tshark = None
    if shutil.which("tshark"):
        r = subprocess.run(["tshark", "--version"], capture_output=True, text=True)
        tshark = r.stdout.splitlines()[0].rstrip(".") if r.stdout else None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=ROOT).stdout.strip() or None
    except OSError:
        commit = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "mem_gib": mem, "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": {d: version_of(d) for d in ("marsad", "numpy", "dpkt", "nfstream",
                                                "cryptography")},
        "tshark": tshark, "commit": commit,
        "load_avg_at_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------

def summary(tool: Tool, packets: int) -> dict[str, Any]:
    """Median wall, packets/s and peak memory of a tool (skips and failures noted)."""
    ok = [r for r in tool.runs if r.returncode == 0]
    out: dict[str, Any] = {"tool": tool.name, "skip": tool.skip,
                           "runs": [asdict(r) for r in tool.runs]}
    if tool.runs and not ok:
        out["skip"] = f"failed (exit {tool.runs[-1].returncode}): {tool.runs[-1].stderr_tail}"
    if ok:
        wall = statistics.median(r.wall_s for r in ok)
        out.update({"median_wall_s": wall, "pps": packets / wall,
                    "peak_rss_mib": max(r.peak_rss for r in ok) / 2**20,
                    "peak_pss_mib": max(r.peak_pss for r in ok) / 2**20,
                    "flows": ok[-1].flows, "procs": max(r.procs for r in ok)})
    return out


def ratio(rows: dict[str, dict[str, Any]], a: str, b: str, key: str) -> str:
    ra, rb = rows.get(a, {}), rows.get(b, {})
    if key in ra and key in rb and rb[key]:
        return f"{ra[key] / rb[key]:.2f}"
    why = [f"{n} {'failed' if str(r.get('skip', '')).startswith('failed') else 'skipped'}"
           for n, r in ((a, ra), (b, rb)) if key not in r]
    return "n/a (" + ", ".join(why) + ")"


RATIOS = (("marsad flows", "nfstream no-DPI"), ("marsad flows", "dpkt loop"),
          ("marsad analyze", "nfstream DPI"), ("marsad probe (stream)", "marsad analyze"))
"""Pairs compared on each capture (a / b)."""


def markdown(result: dict[str, Any]) -> str:
    lines = [f"# Benchmark {result['started']}", "",
             f"{result['reps']} runs per tool, alternating between tools and captures; "
             "median wall time."]
    for name, cap in result["captures"].items():
        lines += ["", *capture_md(name, cap)]
    lines += ["", machine_md(result["machine"])]
    return "\n".join(lines) + "\n"


def capture_md(name: str, cap: dict[str, Any]) -> list[str]:
    """The table and the ratios of one capture."""
    lines = [f"## {name}", "",
             f"Capture `{cap['path']}`: {cap['packets']:,} packets, "
             f"{cap['bytes'] / 2**20:.1f} MiB"
             + (f", {cap['flows']:,} flows" if cap.get("flows") else "")
             + (f", {cap['calls']:,} calls" if cap.get("calls") is not None else "") + ".", "",
             "| tool | packets/s | median wall s | peak RSS MiB | peak PSS MiB | flows | procs |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in cap["tools"]:
        if "pps" in r:
            flows = r["flows"] if r["flows"] is not None else "-"
            lines.append(f"| {r['tool']} | {r['pps']:,.0f} | {r['median_wall_s']:.2f} | "
                         f"{r['peak_rss_mib']:.1f} | {r['peak_pss_mib']:.1f} | {flows} | "
                         f"{r['procs']} |")
        else:
            lines.append(f"| {r['tool']} | skipped | | | | | |")
    lines += ["", "| ratio | throughput (a/b packets/s) | peak RSS (a/b) | peak PSS (a/b) |",
              "|---|---|---|---|"]
    for row in cap["ratios"]:
        lines.append(f"| {row['a']} / {row['b']} | {row['throughput']} | {row['memory']} | "
                     f"{row['memory_pss']} |")
    notes = [f"- {r['tool']}: {r['skip']}" for r in cap["tools"] if r.get("skip")]
    if notes:
        lines += ["", "Skipped:", *notes]
    return lines


def machine_md(m: dict[str, Any]) -> str:
    vers = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    return (f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
            f"{m['mem_gib']} GiB, {m['os']}; Python {m['python']}; {vers}"
            + (f"; {m['tshark']}" if m.get("tshark") else "")
            + (f"; commit {m['commit']}" if m.get("commit") else "")
            + f"; load average at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}.")


def save(result: dict[str, Any], text: str, out_dir: Path, stem: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = result["started"].replace(":", "").replace("-", "")
    for name in (f"{stem}-{stamp}", f"{stem}-latest"):
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out_dir / f"{name}.md").write_text(text)
    print(f"saved {out_dir / f'{stem}-{stamp}'}.{{json,md}}")


def capture_facts(pcap: Path) -> dict[str, Any]:
    """Path, packets, bytes, and the flow and call counts of the generator's sidecar."""
    side = Path(str(pcap) + ".json")
    info = json.loads(side.read_text()) if side.exists() else {}
    return {"path": str(pcap), "packets": count_packets(pcap), "bytes": pcap.stat().st_size,
            "flows": info.get("flows"), "calls": info.get("calls"),
            "profile": info.get("profile")}


def captures_of(args: argparse.Namespace) -> dict[str, Path]:
    """The captures to run on, by name: ``--pcap`` alone, else the generated profiles."""
    if args.pcap is not None:
        return {args.pcap.stem: args.pcap}
    out = {}
    for name in args.captures:
        packets = args.packets if args.packets is not None else DEFAULT_PACKETS[name]
        out[name] = ensure_capture(packets, 1, name)
    return out


def bench(args: argparse.Namespace) -> dict[str, Any]:
    caps = captures_of(args)
    template = all_tools(args.tshark)
    if args.only:
        keep = {s.strip() for s in args.only.split(",")}
        template = [t for t in template if t.name in keep]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    facts = {name: capture_facts(pcap) for name, pcap in caps.items()}
    plan = [(name, pcap, [t.fresh() for t in template]) for name, pcap in caps.items()]
    for name, f in facts.items():
        print(f"{name}: {f['path']}: {f['packets']} packets", flush=True)
    print(f"{args.reps} rounds", flush=True)
    for t in template:
        if t.skip:
            print(f"  skip {t.name}: {t.skip}")
    measure(plan, args.reps, args.timeout)
    result: dict[str, Any] = {"started": started, "machine": machine(), "reps": args.reps,
                              "captures": {}}
    for name, _pcap, tools in plan:
        rows = {t.name: summary(t, facts[name]["packets"]) for t in tools}
        result["captures"][name] = {
            **facts[name], "tools": list(rows.values()),
            "ratios": [{"a": a, "b": b, "throughput": ratio(rows, a, b, "pps"),
                        "memory": ratio(rows, a, b, "peak_rss_mib"),
                        "memory_pss": ratio(rows, a, b, "peak_pss_mib")} for a, b in RATIOS]}
    text = markdown(result)
    print(text)
    save(result, text, args.out_dir, "bench")
    return result


def flatness(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory on a capture and on the same flows ten times longer."""
    caps = {k: ensure_capture(args.flat_packets, k) for k in (1, args.flat_scale)}
    tools = [marsad_tool("flows"),
             python_tool("nfstream no-DPI", "nfstream_run.py", "--mode", "no-dpi",
                         needs="nfstream")]
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    per: dict[str, dict[int, dict[str, Any]]] = {t.name: {} for t in tools}
    counts = {k: count_packets(p) for k, p in caps.items()}
    for t in tools:
        if t.skip:
            print(f"  skip {t.name}: {t.skip}")
    for k, path in caps.items():
        print(f"{path}: {counts[k]} packets", flush=True)
        for t in tools:
            t.runs = []
        measure([(f"s{k}", path, tools)], args.reps, args.timeout)
        for t in tools:
            per[t.name][k] = summary(t, counts[k])
    big = args.flat_scale
    rows = []
    for t in tools:
        s1, sk = per[t.name].get(1, {}), per[t.name].get(big, {})
        row: dict[str, Any] = {"tool": t.name, "scale1": s1, f"scale{big}": sk}
        if "peak_rss_mib" in s1 and "peak_rss_mib" in sk:
            row["memory_ratio"] = sk["peak_rss_mib"] / s1["peak_rss_mib"]
            row["flat"] = row["memory_ratio"] <= args.flat_limit
        else:
            row["skip"] = s1.get("skip") or sk.get("skip") or "not run"
        rows.append(row)
    result = {"started": started, "machine": machine(), "reps": args.reps,
              "captures": {str(k): {"path": str(p), "packets": counts[k],
                                    "bytes": p.stat().st_size} for k, p in caps.items()},
              "flat_limit": args.flat_limit, "tools": rows}
    lines = [f"# Memory flatness {started}", "",
             f"Same flows, scale 1 ({counts[1]:,} packets) and scale {big} "
             f"({counts[big]:,} packets); flat means peak RSS ratio <= {args.flat_limit}.", "",
             f"| tool | peak RSS MiB s1 | peak RSS MiB s{big} | ratio | packets/s s1 | "
             f"packets/s s{big} | flat |", "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if "memory_ratio" in row:
            s1, sk = row["scale1"], row[f"scale{big}"]
            lines.append(f"| {row['tool']} | {s1['peak_rss_mib']:.1f} | {sk['peak_rss_mib']:.1f} "
                         f"| {row['memory_ratio']:.2f} | {s1['pps']:,.0f} | {sk['pps']:,.0f} | "
                         f"{'yes' if row['flat'] else 'NO'} |")
        else:
            lines.append(f"| {row['tool']} | skipped: {row['skip']} | | | | | |")
    lines += ["", machine_md(result["machine"])]
    text = "\n".join(lines) + "\n"
    print(text)
    save(result, text, args.out_dir, "flatness")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--pcap", type=Path, help="capture to use (default: generated)")
    ap.add_argument("--captures", type=profile_list, default=list(DEFAULT_PACKETS),
                    help="generated captures to run on, comma-separated (default web,calls)")
    ap.add_argument("--packets", type=int, default=None,
                    help="size of every generated capture (default: web 2,000,000, "
                    "calls 500,000)")
    ap.add_argument("--reps", type=int, default=3, help="runs per tool (median is reported)")
    ap.add_argument("--tshark", action="store_true", help="also time tshark conversations")
    ap.add_argument("--only", help="comma-separated tool names to run (e.g. 'dpkt loop')")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per-run limit, seconds")
    ap.add_argument("--out-dir", type=Path, default=BENCH / "out")
    ap.add_argument("--flatness", action="store_true",
                    help="compare peak memory on scale-1 and scale-10 captures of the same flows")
    ap.add_argument("--flat-packets", type=int, default=200_000,
                    help="scale-1 size of the flatness captures")
    ap.add_argument("--flat-scale", type=int, default=10)
    ap.add_argument("--flat-limit", type=float, default=1.5,
                    help="largest peak-memory ratio still called flat")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    if args.pcap is not None and not args.pcap.is_file():
        ap.error(f"no such capture: {args.pcap}")
    compile_project()
    if args.flatness:
        flatness(args)
    else:
        bench(args)
    return 0


def profile_list(text: str) -> list[str]:
    """``--captures``: known profile names, comma-separated, in the order given."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in PROFILES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"unknown capture {', '.join(bad) or '(none)'}; choose from {', '.join(PROFILES)}")
    return list(dict.fromkeys(names))


PACKAGES = ("probe", "classifier", "policy", "api")
"""marsad's packages (installed editable, from the source tree)."""


def compile_project() -> None:
    """Byte-compile marsad's modules before any run, as installing a package does.

    The other tools come from wheels whose modules pip compiled at install time; marsad
    is installed editable, and where ``PYTHONDONTWRITEBYTECODE`` is set (as on the
    machines this runs on) its modules would be compiled again at every start (about
    0.1 s a run here), which is not the tool's cost."""
    for pkg in PACKAGES:
        compileall.compile_dir(ROOT / pkg, quiet=1)


if __name__ == "__main__":
    sys.exit(main())
