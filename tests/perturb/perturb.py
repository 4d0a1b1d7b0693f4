"""Benign damage to real captures must not make interference appear.

Captures in the field are imperfect: a tap's kernel drops packets, a capture starts late
or stops early, a mirror port or asymmetric routing shows one direction only. None of
these is the network blocking or throttling a call, so none may turn into a ``blocked``
or ``throttled`` verdict that the undamaged capture does not already give. This module
damages each capture of the reference sets in those ways (:data:`PERTURBATIONS`),
analyses every version with the same pipeline as ``marsad analyze`` and reports each
interference verdict (call or flow: scope, app, kind, reasons) that only a damaged
version gives.

Flow uids change with the packets, so verdicts are compared by what they say, not by
uid. Captures dpkt cannot read, and link types other than Ethernet for the one-sided
versions (the busiest link-layer address picks the side), are skipped and counted.

    python -m tests.perturb.perturb [--sets real-dev,ndpi-dev] [--limit N] [--json FILE]

Exit status 0 when no damaged capture gives new interference, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dpkt

from api.pipeline import analyze_capture
from policy.pipeline import AnalysisResult

ROOT = Path(__file__).resolve().parents[2]
SHARED_CAPTURES = ROOT.parent / "shared" / "captures"
SETS = ("real-dev", "ndpi-dev")
"""The sets damaged by default (``ndpi-train`` too with ``--sets``)."""
SEED = 1
ETHERNET = 1

Packet = tuple[float, bytes, int]
"""(timestamp, frame as captured, its length on the wire)."""
Verdicts = Counter[tuple[str, str, str, tuple[str, ...]]]


def _drop(share: float) -> Callable[[list[Packet], random.Random], list[Packet]]:
    def damage(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
        return [p for p in pkts if rnd.random() >= share]
    return damage


def _bursts(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
    out = list(pkts)
    for _ in range(5):
        if len(out) > 100:
            at = rnd.randrange(len(out) - 50)
            del out[at:at + rnd.randint(10, 40)]
    return out


def _busiest_sender(pkts: list[Packet]) -> bytes | None:
    senders = Counter(buf[6:12] for _, buf, _ in pkts if len(buf) >= 14)
    return senders.most_common(1)[0][0] if senders else None


def _duplicates(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
    return [q for ts, buf, n in pkts for q in ((ts, buf, n), (ts + 1e-6, buf, n))]


def _snap(length: int) -> Callable[[list[Packet], random.Random], list[Packet]]:
    def damage(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
        return [(ts, buf[:length], n) for ts, buf, n in pkts]
    return damage


def _reorder(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
    out = list(pkts)
    for i in range(len(out) - 1):
        if rnd.random() < 0.02:  # a packet overtaken by the next, timestamps as written
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def _jitter(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
    out: list[Packet] = []
    last = float("-inf")
    for ts, buf, n in pkts:  # late, never before the packet written ahead of it
        last = max(ts + rnd.uniform(0.0, 0.005), last)
        out.append((last, buf, n))
    return out


def _clock_step(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
    half = len(pkts) // 2
    return [*pkts[:half], *((ts + 2.0, buf, n) for ts, buf, n in pkts[half:])]


def _one_side(sent: bool) -> Callable[[list[Packet], random.Random], list[Packet]]:
    def damage(pkts: list[Packet], rnd: random.Random) -> list[Packet]:
        mac = _busiest_sender(pkts)
        return [p for p in pkts if (p[1][6:12] == mac) == sent]
    return damage


@dataclass(frozen=True)
class Perturbation:
    name: str
    stands_for: str
    damage: Callable[[list[Packet], random.Random], list[Packet]]
    ethernet_only: bool = False


PERTURBATIONS = (
    Perturbation("loss-5", "a tap dropping 5 % of packets at random", _drop(0.05)),
    Perturbation("loss-20", "a tap dropping 20 % of packets at random", _drop(0.20)),
    Perturbation("bursts", "five buffer overruns, 10-40 packets each", _bursts),
    Perturbation("head", "the capture stopped half-way", lambda p, r: p[:len(p) // 2]),
    Perturbation("tail", "the capture started half-way", lambda p, r: p[len(p) // 2:]),
    Perturbation("duplicates", "a mirror port copying every packet twice (ingress and "
                 "egress)", _duplicates),
    Perturbation("snap-96", "tcpdump -s 96: every frame cut to its first 96 bytes",
                 _snap(96)),
    Perturbation("reorder", "2 % of packets written after the next one (a capture from "
                 "several queues)", _reorder),
    Perturbation("jitter", "timestamps late by up to 5 ms (interrupt coalescing)", _jitter),
    Perturbation("clock-step", "the capture's clock stepped 2 s ahead half-way (NTP)",
                 _clock_step),
    Perturbation("sent-only", "a one-sided tap: what the busiest host sent",
                 _one_side(True), ethernet_only=True),
    Perturbation("received-only", "a one-sided tap: all but what the busiest host sent",
                 _one_side(False), ethernet_only=True),
)


def read_packets(path: Path) -> tuple[int, list[Packet]]:
    """The link type and (timestamp, frame) of every packet of a pcap or pcapng file."""
    with path.open("rb") as fh:
        magic = fh.read(4)
        fh.seek(0)
        reader: Any = dpkt.pcapng.Reader(fh) if magic == b"\n\r\r\n" else dpkt.pcap.Reader(fh)
        return reader.datalink(), [(float(ts), bytes(buf), len(buf)) for ts, buf in reader]


def write_packets(path: Path, linktype: int, pkts: list[Packet]) -> None:
    """A pcapng file, microsecond timestamps (64 bits: some reference captures hold times a
    classic pcap header cannot), each frame's captured and wire lengths (pcapng, RFC draft
    of the IETF opsawg: section header, interface description, enhanced packet blocks)."""
    with path.open("wb") as fh:
        fh.write(struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) +
                 struct.pack("<I", 28))
        fh.write(struct.pack("<IIHHII", 1, 20, linktype, 0, 262144, 20))
        for ts, buf, wire in pkts:
            us = round(ts * 1e6)
            pad = -len(buf) % 4
            total = 32 + len(buf) + pad
            fh.write(struct.pack("<IIIIIII", 6, total, 0, us >> 32, us & 0xFFFFFFFF,
                                 len(buf), max(wire, len(buf))))
            fh.write(buf + b"\0" * pad + struct.pack("<I", total))


def interference(result: AnalysisResult) -> Verdicts:
    """What the blocked and throttled verdicts say, (scope, app, kind, reasons), and how
    many say it: a damaged version that gives one more of a kind the capture already had
    adds one."""
    by_uid = {c.uid: c for c in result.classes}
    out: Verdicts = Counter(
        ("call", c.app or "", str(c.verdict.kind), tuple(str(r) for r in c.verdict.reasons))
        for c in result.analysis.calls if str(c.verdict.kind) in ("blocked", "throttled"))
    out.update(("flow", (by_uid[u].app or "") if u in by_uid else "", str(v.kind),
                tuple(str(r) for r in v.reasons))
               for u, v in result.analysis.flow_verdicts.items()
               if str(v.kind) in ("blocked", "throttled"))
    return out


@dataclass
class Report:
    captures: int = 0
    versions: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    new: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"captures": self.captures, "versions": self.versions,
                "skipped": self.skipped, "new_interference": self.new}


def captures_of(sets: list[str]) -> Iterator[Path]:
    for name in sets:
        root = SHARED_CAPTURES / name
        for sub in ("pcap", "pcap_other"):
            if (root / sub).is_dir():
                yield from sorted(p for p in (root / sub).iterdir() if p.is_file())


def check(path: Path, workdir: Path, report: Report,
          perturbations: tuple[Perturbation, ...] = PERTURBATIONS) -> None:
    """Damage one capture every way and add what only a damaged version says."""
    try:
        linktype, pkts = read_packets(path)
    except (ValueError, dpkt.dpkt.Error) as exc:
        report.skipped[path.name] = f"dpkt cannot read it: {exc}"
        return
    if not 0 <= linktype <= 0xFFFF:  # a pcap link type with FCS bits: pcapng has no room
        report.skipped[path.name] = f"link type field {linktype:#x} carries FCS bits"
        return
    base = interference(analyze_capture(path, workers=1, hash_capture=False))
    report.captures += 1
    for p in perturbations:
        if p.ethernet_only and linktype != ETHERNET:
            continue
        damaged = p.damage(pkts, random.Random(f"{SEED}:{path.name}:{p.name}"))
        if not damaged:
            continue
        out = workdir / f"{p.name}.pcapng"
        write_packets(out, linktype, damaged)
        got = interference(analyze_capture(out, workers=1, hash_capture=False))
        report.versions += 1
        for scope, app, kind, reasons in sorted((got - base).elements()):
            report.new.append({"capture": path.name, "perturbation": p.name,
                               "stands_for": p.stands_for, "scope": scope, "app": app,
                               "verdict": kind, "reasons": list(reasons)})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default=",".join(SETS),
                    help="reference sets under ../shared/captures (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=0, help="captures per set (0: all)")
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    report = Report()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="marsad-perturb-") as tmp:
        for name in args.sets.split(","):
            paths = list(captures_of([name]))
            if not paths:
                print(f"{name}: no captures under {SHARED_CAPTURES / name}", file=sys.stderr)
                return 2
            for path in paths[:args.limit or None]:
                before = len(report.new)
                check(path, Path(tmp), report)
                for n in report.new[before:]:
                    print(f"NEW {n['capture']} [{n['perturbation']}]: {n['scope']} "
                          f"{n['app']} {n['verdict']} {','.join(n['reasons'])}", flush=True)
    summary = (f"captures={report.captures} versions={report.versions} "
               f"skipped={len(report.skipped)} new_interference={len(report.new)} "
               f"seconds={time.monotonic() - started:.0f}")
    print(summary)
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    return 1 if report.new else 0


if __name__ == "__main__":
    sys.exit(main())
