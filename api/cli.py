"""The ``marsad`` command line.

Exit status: 0 success; 2 the input could not be read at all (not a capture,
empty, unsupported link type, missing); 3 the capture was damaged and only the
part before the damage was used.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from api.output import CsvWriter, dumps, write_jsonl
from api.pipeline import AnalysisResult, flow_row
from classifier.engine import Classifier
from classifier.records import Classification
from policy.calls import analyse_calls
from policy.errors import PolicyError
from policy.rules import load_policy
from probe import CaptureError, FlowReader, FlowRecord, MeterConfig
from probe.run import default_workers

__all__ = ["main"]

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_PARTIAL = 3


def _meter_config(args: argparse.Namespace, payloads: int | None = None) -> MeterConfig:
    return MeterConfig(
        udp_idle_s=args.udp_idle, tcp_idle_s=args.tcp_idle, active_s=args.active_timeout,
        payload_samples=args.payloads if payloads is None else payloads,
        timing_packets=args.timing_packets)


def _add_meter_options(p: argparse.ArgumentParser) -> None:
    d = MeterConfig()
    p.add_argument("--udp-idle", type=float, default=d.udp_idle_s, metavar="S",
                   help=f"UDP idle timeout in seconds (default {d.udp_idle_s:g})")
    p.add_argument("--tcp-idle", type=float, default=d.tcp_idle_s, metavar="S",
                   help=f"TCP idle timeout in seconds (default {d.tcp_idle_s:g})")
    p.add_argument("--active-timeout", type=float, default=d.active_s, metavar="S",
                   help=f"active timeout in seconds (default {d.active_s:g})")
    p.add_argument("--payloads", type=int, default=d.payload_samples, metavar="N",
                   help=f"payloads kept per direction for inspection (default "
                        f"{d.payload_samples})")
    p.add_argument("--timing-packets", type=int, default=d.timing_packets, metavar="M",
                   help=f"packets per flow in the timing series (default {d.timing_packets})")
    p.add_argument("--workers", type=int, choices=(1, 2), default=default_workers(),
                   help="1: one process; 2: read and decode in a second process "
                        "(default where two cores exist)")


def _add_format(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", dest="fmt", action="store_const", const="json",
                   help="one JSON object {\"flows\": [...]} at the end")
    g.add_argument("--jsonl", dest="fmt", action="store_const", const="jsonl",
                   help="one JSON record per line, as flows end")
    g.add_argument("--csv", dest="fmt", action="store_const", const="csv",
                   help="CSV, one row per flow as flows end")


class _Progress:
    """A progress bar on stderr when it is a terminal and the input size is known."""

    def __init__(self, path: str) -> None:
        self._bar: Any = None
        self._task: Any = None
        size = 0
        if path != "-" and sys.stderr.isatty():
            try:
                size = os.path.getsize(path)
            except OSError:
                size = 0
        if size > 4 << 20:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
            )
            self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                                 DownloadColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(os.path.basename(path), total=size)
            self._bar.start()

    def update(self, done: int) -> None:
        sys.stdout.flush()  # flows of the batch just metered are out as soon as it is done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _run_flows(args: argparse.Namespace) -> int:
    fmt = args.fmt or "jsonl"
    progress = _Progress(args.capture)
    out = sys.stdout
    collected: list[dict[str, Any]] = []
    csvw = CsvWriter(out) if fmt == "csv" else None

    def emit(rec: FlowRecord) -> None:
        row = rec.conn_dict()
        if args.samples:
            row["payloads"] = [{"frame": s.frame, "ts": s.ts, "direction": s.direction,
                                "hex": s.data.hex()} for s in rec.payloads]
            row["rtp_streams"] = [s.to_dict() for s in rec.rtp_streams]
        if fmt == "json":
            collected.append(row)
        elif fmt == "jsonl":
            write_jsonl([row], out)
        elif csvw is not None:
            csvw.write(row)

    try:
        # Payload samples are kept only when they are printed.
        config = _meter_config(args, None if args.samples else 0)
        reader = FlowReader(args.capture, config, progress=progress.update,
                            workers=args.workers)
        for rec in reader:
            emit(rec)
    except CaptureError as exc:
        progress.stop()
        print(f"marsad: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except BrokenPipeError:
        return EXIT_OK
    finally:
        progress.stop()
    if fmt == "json":
        collected.sort(key=lambda r: (r["first_frame"], r["uid"]))
        out.write(dumps({"flows": collected}))
        out.write("\n")
    return _finish(reader)


def _light(rec: FlowRecord) -> FlowRecord:
    """The record without its payload samples (kept for call assembly in streams)."""
    return replace(rec, payloads=())


def _run_analyze(args: argparse.Namespace) -> int:
    fmt = args.fmt or "json"
    progress = _Progress(args.capture)
    out = sys.stdout
    classifier = Classifier(fingerprints=args.ja4)
    try:
        reader = FlowReader(args.capture, _meter_config(args), progress=progress.update,
                            workers=args.workers)
        policy = load_policy(args.policy)
        if fmt == "jsonl":
            flows: list[FlowRecord] = []
            classes: list[Classification] = []
            for rec in reader:
                c = classifier.classify(rec)
                flows.append(_light(rec))
                classes.append(c)
                write_jsonl([{"record": "flow", **flow_row(rec, c)}], out)
            analysis = analyse_calls(flows, classes, policy)
            write_jsonl([{"record": "call", **call.to_dict()} for call in analysis.calls], out)
            write_jsonl([{"record": "flow-verdict", "uid": u, **v.to_dict()}
                         for u, v in analysis.flow_verdicts.items()], out)
        else:
            flows = sorted(reader, key=lambda r: (r.first_frame, r.uid))
            classes = classifier.classify_all(flows)
            result = AnalysisResult(flows, classes, analyse_calls(flows, classes, policy),
                                    reader.status, reader.stats, reader.weirds)
            if fmt == "csv":
                w = CsvWriter(out)
                for row in result.flow_rows():
                    w.write(row)
            else:
                out.write(dumps(result.to_json()))
                out.write("\n")
    except (CaptureError, PolicyError) as exc:
        progress.stop()
        print(f"marsad: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except BrokenPipeError:
        return EXIT_OK
    finally:
        progress.stop()
    return _finish(reader)


def _finish(reader: FlowReader) -> int:
    st = reader.status
    stats = reader.stats
    if stats.weird:
        print(f"marsad: {stats.weird} malformed packet(s) recorded as weird", file=sys.stderr)
    if not st.complete:
        print(f"marsad: {st.source}: {st.message}; flows before byte {st.stopped_at} were "
              f"reported", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _run_refresh(args: argparse.Namespace) -> int:
    from classifier import refresh
    return refresh.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marsad", description=(
        "Observe over-the-top voice and video calls and record, with evidence, whether the "
        "network blocked or throttled them."))
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flows", help="bidirectional flow records of a capture")
    f.add_argument("capture", help="pcap or pcapng file (gzip allowed), or - for stdin")
    _add_format(f)
    f.add_argument("--samples", action="store_true",
                   help="also print each flow's payload samples (hex) and RTP stream summaries")
    _add_meter_options(f)
    f.set_defaults(func=_run_flows)
    a = sub.add_parser("analyze", help="flows with their app, category and media")
    a.add_argument("capture", help="pcap or pcapng file (gzip allowed), or - for stdin")
    _add_format(a)
    _add_meter_options(a)
    a.add_argument("--policy", metavar="FILE",
                   help="verdict thresholds (YAML; default: the packaged policy)")
    a.add_argument("--ja4", action="store_true",
                   help="add the JA4 fingerprint of each TLS/QUIC/DTLS ClientHello")
    a.set_defaults(func=_run_analyze)
    r = sub.add_parser("refresh-data", add_help=False,
                       help="rebuild the IP-owner or hostname tables from a local copy of a "
                            "public list (run 'marsad refresh-data --help')")
    r.add_argument("rest", nargs=argparse.REMAINDER)
    r.set_defaults(func=_run_refresh)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["refresh-data"]:  # its own parser, options and help
        from classifier import refresh
        return refresh.main(argv[1:])
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
