"""The ``marsad`` command line.

Exit status: 0 success; 2 the input could not be read at all (not a capture,
empty, unsupported link type, missing); 3 the capture was damaged and only the
part before the damage was used.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

from api.output import (
    CONN_CSV_FIELDS,
    FLOWS_SAMPLES_CSV_FIELDS,
    CsvWriter,
    ZeekConnWriter,
    dumps,
    write_jsonl,
)
from api.version import marsad_version
from policy.errors import PolicyError
from policy.settling import PipelineConfig
from probe import (
    CaptureError,
    FlowReader,
    MeterConfig,
    MeterStats,
    ReadStatus,
    default_workers,
)
from probe.speed import exit_at_once, exit_follows, gc_paused, keep_until_exit

if TYPE_CHECKING:
    from api.evidence import RecordSummary
    from api.output import GatheredResult
    from api.pipeline import AnalysisResult
    from policy.ledger import Ledger
    from policy.pipeline import Step
    from policy.records import Call, Verdict
    from policy.rules import Policy

# The classifier, the policy and the pipeline are imported where they are used: a
# command that reads a capture starts its reader process first, and reading then goes
# on while they load.

__all__ = ["main"]

EXIT_OK = 0
EXIT_UNREADABLE = 2
EXIT_PARTIAL = 3

_N = TypeVar("_N", int, float)


def _meter_config(args: argparse.Namespace, payloads: int | None = None) -> MeterConfig:
    """The meter settings of the command line, with the classifier's payload policy (what
    the probe keeps whole and where it finds RTP) whatever the command."""
    from classifier.payloads import meter_config
    return meter_config(
        udp_idle_s=args.udp_idle, tcp_idle_s=args.tcp_idle, active_s=args.active_timeout,
        payload_samples=args.payloads if payloads is None else payloads,
        timing_packets=args.timing_packets, max_decompressed_bytes=args.max_decompressed_bytes)


def _checked(kind: Callable[[str], _N], ok: Callable[[_N], bool], what: str,
             need: str) -> Callable[[str], _N]:
    """An argparse type: ``kind`` of the text, refused unless ``ok``; ``what`` names the
    kind in the error for text that is not one, ``need`` says what is wanted."""
    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{need}, not {text}")
        return value
    return parse


_positive = _checked(float, lambda v: 0 < v < math.inf, "a number", "must be a positive number")
"""A duration or size that must be above zero."""
_nonnegative = _checked(float, lambda v: 0 <= v < math.inf, "a number", "must be 0 or more")
"""A duration that may be zero but not negative."""
_count = _checked(int, lambda v: v >= 0, "a whole number", "must be 0 or more")
"""A whole number of zero or more."""
_port = _checked(int, lambda v: 0 < v < 65536, "a port number", "a port is 1 to 65535")
"""A TCP port, 1 to 65535."""


def _add_meter_options(p: argparse.ArgumentParser) -> None:
    d = MeterConfig()
    p.add_argument("--udp-idle", type=_positive, default=d.udp_idle_s, metavar="S",
                   help=f"UDP idle timeout in seconds (default {d.udp_idle_s:g})")
    p.add_argument("--tcp-idle", type=_positive, default=d.tcp_idle_s, metavar="S",
                   help=f"TCP idle timeout in seconds (default {d.tcp_idle_s:g})")
    p.add_argument("--active-timeout", type=_positive, default=d.active_s, metavar="S",
                   help=f"active timeout in seconds (default {d.active_s:g})")
    p.add_argument("--payloads", type=_count, default=d.payload_samples, metavar="N",
                   help=f"payloads kept per direction for inspection (default "
                        f"{d.payload_samples})")
    p.add_argument("--timing-packets", type=_count, default=d.timing_packets, metavar="M",
                   help=f"packets per flow in the timing series (default {d.timing_packets})")
    p.add_argument("--max-decompressed-bytes", type=int, default=d.max_decompressed_bytes,
                   metavar="N", help="read a gzip capture up to N bytes decompressed, then "
                                     "stop as damaged, exit 3 (default "
                                     f"{d.max_decompressed_bytes})")
    p.add_argument("--workers", type=int, choices=(1, 2), default=default_workers(),
                   help="1: one process; 2: read and decode in a second process "
                        "(default where two cores exist)")


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    d = PipelineConfig()
    p.add_argument("--call-interval", type=_positive, default=d.cut_s, metavar="S",
                   help="seconds of capture time between two settling points, where flows "
                        f"are classified and calls judged (default {d.cut_s:g})")
    p.add_argument("--call-settle", type=_nonnegative, default=d.call_settle_s, metavar="S",
                   help="report a call once capture time has passed its end by this much "
                        f"(default {d.call_settle_s:g})")


_CAPTURES_HELP = ("pcap or pcapng file (gzip allowed), or - for stdin; with --out, any "
                  "number of files, directories (their captures, recursively) and globs, "
                  "local paths or fsspec URLs (file://, s3://...)")


def _add_batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR",
                   help="write a Parquet dataset of every capture (flows, calls, verdicts, "
                        "evidence and a manifest, partitioned by capture SHA-256) to DIR, a "
                        "path or fsspec URL; captures already there with the same version, "
                        "policy and settings are skipped")
    p.add_argument("--jobs", type=_checked(int, lambda v: v >= 1, "a whole number",
                                           "must be 1 or more"),
                   default=len(os.sched_getaffinity(0)), metavar="N",
                   help="with --out: captures analysed at once, one process each (default: "
                        "the number of cores)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="with --out: run the captures on a Dask cluster (tcp://HOST:8786, or "
                        "a scheduler file) instead of local processes")


class _BatchProgress:
    """One progress display over a batch's files (files, bytes, rate, time left), on
    stderr when it is a terminal; nothing otherwise."""

    def __init__(self, sources: Sequence[str]) -> None:
        self._bar: Any = None
        self._task: Any = None
        self.total = len(sources)
        self.done = 0
        if not sys.stderr.isatty():
            return
        from fsspec.core import url_to_fs
        size = 0
        for src in sources:
            with contextlib.suppress(OSError, ValueError):
                fs, path = url_to_fs(src)
                size += int(fs.size(path))
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        self._bar = Progress("[progress.description]{task.description}", BarColumn(),
                             DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=True,
                             redirect_stdout=False, redirect_stderr=False)
        self._task = self._bar.add_task(self._text(), total=size)
        self._bar.start()

    def _text(self) -> str:
        return f"{self.done}/{self.total} files"

    def update(self, size: int) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=size, description=self._text())

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _run_batch(args: argparse.Namespace) -> int:
    """``marsad analyze|flows CAPTURE... --out DIR``: every capture into the dataset.
    Exit status: 2 if a capture could not be read at all (or its task failed), else 3 if
    one was damaged (the others are in the dataset either way), else 0."""
    from api.archive import Settings, expand_inputs, make_executor, run_batch
    from policy.rules import load_policy
    try:
        policy = load_policy(args.policy if args.command == "analyze" else None)
    except PolicyError as exc:
        print(f"marsad: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    meter = {"udp_idle_s": args.udp_idle, "tcp_idle_s": args.tcp_idle,
             "active_s": args.active_timeout, "payload_samples": args.payloads,
             "timing_packets": args.timing_packets,
             "max_decompressed_bytes": args.max_decompressed_bytes}
    settings = Settings(command=args.command, policy=policy, meter=meter,
                        pipeline=(_pipeline_config(args) if args.command == "analyze"
                                  else PipelineConfig()),
                        fingerprints=bool(getattr(args, "ja4", False)))
    sources = expand_inputs(args.capture)
    if not sources:
        print("marsad: no captures found in " + " ".join(args.capture), file=sys.stderr)
        return EXIT_UNREADABLE
    executor = make_executor(args.jobs, args.scheduler, fork=True)  # before any thread
    progress = _BatchProgress(sources)
    try:
        summary = run_batch(sources, args.out, settings, executor,
                            on_done=lambda o: progress.update(o.size_bytes))
    finally:
        progress.stop()
        executor.shutdown(wait=True, cancel_futures=True)
    for o in summary.outcomes:
        if o.status in ("damaged", "unreadable", "error"):
            print(f"marsad: {o.status}: {o.error}", file=sys.stderr)
    counts = ", ".join(f"{summary.count(k)} {k}" for k in
                       ("ok", "damaged", "unreadable", "error", "skipped", "duplicate")
                       if summary.count(k))
    peaks: dict[str, int] = {}
    for o in summary.outcomes:
        peaks[o.worker] = max(peaks.get(o.worker, 0), o.peak_rss_bytes)
    print(f"marsad: {args.out}: {len(sources)} capture(s) in {summary.seconds:.1f} s: "
          f"{counts}" + (f"; {summary.removed} partition(s) of an interrupted batch "
                         f"removed" if summary.removed else ""), file=sys.stderr)
    if peaks:
        print(f"marsad: {len(peaks)} worker(s), peak memory (RSS) per worker: "
              + ", ".join(f"{v / 2**20:.0f}" for v in sorted(peaks.values(), reverse=True))
              + " MiB", file=sys.stderr)
    if summary.held("unreadable") or summary.count("error"):
        return EXIT_UNREADABLE
    return EXIT_PARTIAL if summary.held("damaged") else EXIT_OK


def _pipeline_config(args: argparse.Namespace) -> PipelineConfig:
    return PipelineConfig(cut_s=args.call_interval, call_settle_s=args.call_settle)


def _add_format(p: argparse.ArgumentParser, calls: bool = False) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--json", dest="fmt", action="store_const", const="json",
                   help=("one JSON object {\"flows\": [...], \"calls\": [...]} at the end "
                         "(the default)") if calls else
                   "one JSON object {\"flows\": [...]} at the end")
    g.add_argument("--jsonl", dest="fmt", action="store_const", const="jsonl",
                   help="one JSON record per line, as flows end"
                        + ("" if calls else " (the default)"))
    g.add_argument("--csv", dest="fmt", action="store_const", const="csv",
                   help="CSV, one row per flow, with a fixed header (see api/output.py)"
                        + ("; calls go to --calls-csv FILE" if calls else ""))
    g.add_argument("--zeek", dest="fmt", action="store_const", const="zeek",
                   help="Zeek conn.log (tab-separated, with Zeek's #fields/#types header)")
    if calls:
        p.add_argument("--calls-csv", metavar="FILE",
                       help="with --csv: also write the calls, one row each, to FILE")


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
                                 console=Console(stderr=True), transient=True,
                                 # the records go to stdout, which may be a file: rich
                                 # would otherwise capture it and draw it on the terminal
                                 redirect_stdout=False, redirect_stderr=False)
            self._task = self._bar.add_task(os.path.basename(path), total=size)
            self._bar.start()

    def update(self, done: int) -> None:
        sys.stdout.flush()  # flows of the batch just metered are out as soon as it is done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()


@dataclass(slots=True)
class _Outcome:
    """What :func:`_reported` made of a command's body."""

    code: int | None = None
    """The exit status of a failure it reported; None when the body ran through."""


@contextlib.contextmanager
def _reported(progress: _Progress | None = None,
              errors: tuple[type[Exception], ...] = (CaptureError, PolicyError),
              ) -> Iterator[_Outcome]:
    """A command's body: the progress bar is taken down whatever happens; an expected
    failure (``errors``) becomes one line on stderr and exit status 2 in the outcome. A
    closed standard output (``BrokenPipeError``) goes on up to :func:`main`, which ends
    quietly."""
    outcome = _Outcome()
    try:
        yield outcome
    except BrokenPipeError:
        raise
    except errors as exc:
        if progress is not None:
            progress.stop()
        print(f"marsad: {_said(exc)}", file=sys.stderr)
        outcome.code = EXIT_UNREADABLE
    finally:
        if progress is not None:
            progress.stop()


def _said(exc: BaseException) -> str:
    """An error as one line: a system error names its file first, the way the other
    errors do ("F: no such file or directory"), not as ``[Errno 2] ...: 'F'``."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror[:1].lower()}{exc.strerror[1:]}"
    return str(exc)


def _run_flows(args: argparse.Namespace) -> int:
    fmt = args.fmt or "jsonl"
    progress = _Progress(args.capture)
    out = sys.stdout
    collected: list[dict[str, Any]] = []
    csvw = (CsvWriter(out, FLOWS_SAMPLES_CSV_FIELDS if args.samples else CONN_CSV_FIELDS)
            if fmt == "csv" else None)
    zeek = ZeekConnWriter(out) if fmt == "zeek" else None

    def emit(row: dict[str, Any]) -> None:
        if fmt == "json":
            collected.append(row)
        elif fmt == "jsonl":
            write_jsonl([row], out)
        elif csvw is not None:
            csvw.write(row)

    with _reported(progress, (CaptureError,)) as failed:
        # Payload samples and timing series are kept only when they are printed.
        config = _meter_config(args, None if args.samples else 0)
        if not args.samples:  # the conn.log columns count RTP streams and no more
            config = replace(config, rtp_quality=False)
            if zeek is None:  # Zeek's TCP history comes from the series
                config = replace(config, timing_packets=0)
        reader = FlowReader(args.capture, config, progress=progress.update,
                            workers=args.workers)
        if zeek is not None:
            for rec in reader:
                zeek.write_record(rec)
        elif args.samples:
            for rec in reader:
                row = rec.conn_dict()
                row["payloads"] = [{"frame": s.frame, "ts": s.ts, "direction": s.direction,
                                    "hex": s.data.hex()} for s in rec.payloads]
                row["rtp_streams"] = [s.to_dict() for s in rec.rtp_streams]
                emit(row)
        else:  # the conn.log columns alone, without building records
            for row in reader.conn_rows():
                emit(row)
    if failed.code is not None:
        return failed.code
    if fmt == "json":
        collected.sort(key=lambda r: (r["first_frame"], r["uid"]))
        out.write(dumps({"flows": collected}))
        out.write("\n")
    elif csvw is not None:
        csvw.close()
    elif zeek is not None:
        zeek.close()
    return _finish(reader)


def _run_analyze(args: argparse.Namespace) -> int:
    """``marsad analyze``; with ``--ledger``, also record every verdict other than ok."""
    fmt = args.fmt or "json"
    if args.ledger is not None and args.capture == "-":
        print("marsad: --ledger needs a capture file (its SHA-256 is recorded), not stdin",
              file=sys.stderr)
        return EXIT_UNREADABLE
    progress = _Progress(args.capture)
    out = sys.stdout
    recorded = tail = None
    # The collector stays paused through the output too: the records it would walk over
    # and over are all alive until the command ends.
    with _reported(progress) as failed, gc_paused(), _maybe_ledger(args.ledger) as ledger:
        reader = FlowReader(args.capture, _meter_config(args), progress=progress.update,
                            workers=args.workers)
        reader.start()  # reading begins while the rest loads
        from api.output import GatheredResult
        from policy.pipeline import Pipeline, run_capture
        from policy.rules import load_policy
        try:
            policy = load_policy(args.policy)
        except BaseException:
            reader.close()  # started, never to be read: its process is ended
            raise
        verdicts = None if ledger is None else _LedgerVerdicts(args.capture)
        pipe = Pipeline(policy, reader.config, fingerprints=args.ja4,
                        config=_pipeline_config(args))
        # A step is let go once written (--jsonl) or made into its flows' text (the other
        # formats, written whole at the end): the records' memory is the window's, however
        # long the capture (holding every step to the end is faster on long captures, 7 %
        # on bench/README's 24-minute one, but grows with the capture without bound).
        whole = None if fmt == "jsonl" else GatheredResult(fmt, pipe.cfg.window_s)
        for step in run_capture(reader, pipe):
            if verdicts is not None:
                verdicts.add(step)
            if whole is None:
                _write_step(step, out)
            else:
                whole.add(step, pipe.clock)
            del step
        progress.stop()  # before anything else goes to the terminal
        if whole is not None:
            _write_whole(whole, out, args.calls_csv)
        status, stats = reader.status, reader.stats
        if ledger is not None and verdicts is not None:
            from api.pipeline import analysis_settings
            recorded = verdicts.record(ledger, analysis_settings(reader.config, pipe.cfg),
                                       policy)
            tail = ledger.anchor()
        keep_until_exit(reader, whole)
    if failed.code is not None:
        return failed.code
    if recorded is not None:
        print(f"marsad: ledger {args.ledger}: {len(recorded.appended)} verdict(s) recorded, "
              f"{len(recorded.skipped)} already there{_anchor_note(tail)}", file=sys.stderr)
    return _finish_status(status, stats)


def _anchor_note(tail: Any) -> str:
    """What to keep outside a ledger to show later that no entry was cut from its end
    (``marsad verify --anchor``): its last entry's position and hash."""
    if tail is None:
        return ""
    return f"; its end is {tail} (keep it elsewhere: verify --anchor)"


class _LedgerVerdicts:
    """What ``marsad analyze --ledger`` records, gathered from the pipeline's steps as they
    settle: the calls judged other than ok and every flow's own verdict (a later step's
    replacing an earlier one's), in the order a whole result holds them; the capture
    file's SHA-256 is computed beside the run from the start."""

    def __init__(self, capture: str) -> None:
        from api.pipeline import CaptureHasher
        self._calls: list[Call] = []
        self._flows: dict[str, Verdict] = {}
        self._hasher = CaptureHasher(capture)
        self._hasher.start()

    def add(self, step: Step) -> None:
        from policy.records import VerdictKind
        self._calls.extend(c for c in step.calls if c.verdict.kind is not VerdictKind.OK)
        self._flows.update(step.flow_verdicts)

    def record(self, ledger: Ledger, settings: dict[str, Any], policy: Policy
               ) -> RecordSummary:
        """Append what the ledger does not hold yet (:func:`api.evidence.record_items`)."""
        from api.evidence import record_items, verdict_items
        calls = sorted(self._calls, key=lambda c: (c.start_ts, c.uid))
        return record_items(ledger, self._hasher.result(),
                            verdict_items(calls, self._flows, settings, policy))


@contextlib.contextmanager
def _maybe_ledger(path: str | None) -> Iterator[Ledger | None]:
    """The ledger at ``path`` opened (created if missing) for the command, or None."""
    if path is None:
        yield None
        return
    with _open_ledger(path, must_exist=False) as ledger:
        yield ledger


def _finish(reader: FlowReader) -> int:
    return _finish_status(reader.status, reader.stats)


def _finish_status(st: ReadStatus, stats: MeterStats) -> int:
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


def _write_step(step: Step, out: Any) -> None:
    """``marsad analyze --jsonl`` records of one settled pipeline step."""
    from policy.pipeline import flow_row
    write_jsonl([{"record": "flow", **flow_row(f, c)} for f, c in step.flows], out)
    write_jsonl([{"record": "call", **call.to_dict()} for call in step.calls], out)
    write_jsonl([{"record": "flow-verdict", "uid": u, **v.to_dict()}
                 for u, v in step.flow_verdicts.items()], out)


def _write_whole(whole: GatheredResult, out: Any, calls_csv: str | None = None) -> None:
    """``marsad analyze``'s output of a whole capture (``--json``, ``--csv``, ``--zeek``)."""
    if whole.fmt == "json":
        whole.write_json(out)
    elif whole.fmt == "zeek":
        whole.write_zeek(out)
    else:
        _csv_tables(lambda calls_out: whole.write_csv(out, calls_out), len(whole.calls),
                    calls_csv)


def _csv_tables(write: Callable[[TextIO | None], None], calls: int,
                calls_csv: str | None) -> None:
    """``marsad analyze --csv``: ``write`` the flows (on the output) and, given a file to
    write them to, the calls; without ``--calls-csv``, say how many calls were not
    written."""
    if calls_csv is None:
        write(None)
        if calls:
            print(f"marsad: {calls} call(s) not written: --calls-csv FILE writes them",
                  file=sys.stderr)
        return
    with open(calls_csv, "w", encoding="utf-8", newline="") as calls_out:
        write(calls_out)


def _result_status(result: AnalysisResult) -> int:
    """Exit status and warnings of a finished result, as :func:`_finish` gives them."""
    return _finish_status(result.status, result.stats)


def _open_ledger(path: str, must_exist: bool) -> Any:
    import time

    from policy.ledger import Ledger
    if must_exist and not os.path.isfile(path):
        raise PolicyError(f"{path}: no such ledger")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise PolicyError(f"{path}: cannot create the ledger: no directory {folder}")
    try:
        return Ledger(path, clock=time.time)
    except sqlite3.Error as exc:
        raise PolicyError(f"{path}: cannot open the ledger: {exc}") from None


def _parse_anchor(text: str) -> Any:
    from policy.ledger import Anchor
    seq, _, digest = text.partition(":")
    if not seq.isdigit() or len(digest) != 64:
        raise ValueError(f"--anchor wants SEQ:SHA256, got {text!r}")
    return Anchor(int(seq), digest.lower())


def _run_verify(args: argparse.Namespace) -> int:
    """``marsad verify``: the chain, and each verdict against its capture's packets."""
    from api.evidence import PROBLEM_WORDS, iter_problem_lines, verify_ledger
    from api.pipeline import capture_sha256
    from policy.rules import load_policy
    with _reported(errors=(CaptureError, PolicyError, OSError, ValueError)) as failed:
        anchor = None if args.anchor is None else _parse_anchor(args.anchor)
        policy = load_policy(args.policy)
        captures = args.capture or []
        shas = {capture_sha256(c): c for c in captures}
        with _open_ledger(args.ledger, must_exist=True) as ledger:
            tail = ledger.anchor()  # before the walk: an entry appended since is not said
            report = verify_ledger(ledger, captures, policy=policy, anchor=anchor)
            recorded = {e.capture_sha256 for e in ledger.entries()}
    if failed.code is not None:
        return failed.code
    unused = sorted(c for sha, c in shas.items() if sha not in recorded)
    if args.json:
        sys.stdout.write(dumps({
            "ledger": args.ledger, "entries": report.entries, "ok": report.ok,
            "problems": [{"seq": p.seq, "kind": p.kind.name.lower(),
                          "what": PROBLEM_WORDS.get(p.kind.name, p.kind.name.lower()),
                          "detail": p.detail} for p in report.problems],
            # an active test without a capture is re-judged from its measurement: no file
            "captures_checked": [{"sha256": s, "file": shas.get(s)} for s in
                                 report.captures_checked],
            "captures_unavailable": list(report.captures_unavailable),
            "captures_without_entries": unused,
            # entries cut from the end leave a whole chain: an anchor kept elsewhere shows it
            "anchor": None if tail is None or not report.ok else str(tail)}))
        sys.stdout.write("\n")
    else:
        state = "no problems" if report.ok else f"{len(report.problems)} problem(s)"
        print(f"{args.ledger}: {report.entries} entries, {state}")
        for line in iter_problem_lines(report):
            print(f"  {line}")
        for s in report.captures_checked:
            print(f"  re-derived from {shas.get(s, 'a test measurement')} ({s[:16]})")
        if report.captures_unavailable:
            print(f"  not checked against packets: entries of {len(report.captures_unavailable)}"
                  f" capture(s) not given with --capture")
        for c in unused:
            print(f"  {c}: no entries in the ledger")
        if report.ok and tail is not None:
            print(f"  its end is {tail}: entries cut from the end leave "
                  f"a whole chain; keep this elsewhere and give it as --anchor to show none "
                  f"were")
    return EXIT_OK if report.ok else 1


def _run_evidence(args: argparse.Namespace) -> int:
    """``marsad evidence``: write (or ``--check``) an evidence bundle."""
    from api.evidence import (
        EvidenceError,
        UnknownSubject,
        build_bundle,
        bundle_name,
        check_bundle,
        load_public_key,
        load_signing_key,
        recorded_settings,
        ring_files,
        ring_paths,
    )
    from api.pipeline import analyze_capture, capture_sha256, settings_configs
    from policy.rules import load_policy
    from probe.ring import ring_origin, ring_stream
    if args.test is not None and args.check is None:
        return _test_evidence(args)
    if args.check is not None:
        try:
            trusted = None if args.public_key is None else load_public_key(args.public_key)
            checked = check_bundle(args.check, trusted)
        except (EvidenceError, OSError) as exc:
            print(f"marsad: {args.check}: {exc}", file=sys.stderr)
            return EXIT_UNREADABLE
        for name in checked.checked:
            print(f"ok       {name}")
        for problem in checked.problems:
            print(f"PROBLEM  {problem}")
        if checked.signature != "none":
            print(f"signature {checked.signature}: Ed25519 key sha256 {checked.signer}"
                  f"{'' if trusted is not None else ' (compare it with the signer you trust)'}")
        cap = checked.manifest.get("capture") or {}
        print(f"{args.check}: {_bundle_state(checked)}; capture sha256 "
              f"{cap.get('sha256')}, anonymised: {checked.manifest.get('anonymised')}, "
              f"signed: {'no' if checked.signature == 'none' else checked.signature}"
              f"{' (its manifest)' if checked.signature == 'valid' else ''}")
        return EXIT_OK if checked.ok else 1
    missing = [o for o, v in (("CALL_UID", args.uid), ("--capture", args.capture))
               if v is None]
    if missing:
        print(f"marsad evidence: {', '.join(missing)} required (or --check BUNDLE)",
              file=sys.stderr)
        return EXIT_UNREADABLE
    with _reported(errors=(CaptureError, PolicyError, EvidenceError, OSError,
                           ValueError)) as failed:
        _bundle_folder(args.out)  # before the analysis, not after it
        key = None if args.key is None else bytes.fromhex(args.key)
        policy = load_policy(args.policy)
        entries = None
        settings: dict[str, Any] = {}
        run: list[Path] | None = None
        ring: list[dict[str, Any]] = []
        if args.ledger is not None:
            with _open_ledger(args.ledger, must_exist=True) as ledger:
                entries = ledger.entries()
                sha = capture_sha256(args.capture)
                # the settings the subject's verdict (else the capture's newest) was
                # recorded with, if not the defaults
                settings = (recorded_settings(ledger, sha, args.uid)
                            or recorded_settings(ledger, sha))
                # a live probe's subject whose frames span several of its ring files
                ring = ring_files(ledger, sha, args.uid)
                if len(ring) > 1:
                    run = ring_paths(Path(args.capture), ring)
        signing = None if args.sign is None else load_signing_key(args.sign)
        meter, pipeline = settings_configs(settings)
        with tempfile.TemporaryDirectory(prefix="marsad-evidence-") as tmp:
            capture: str | Path = args.capture
            if run is not None:  # cut from the ring files joined, as recorded
                capture = Path(tmp) / f"{Path(args.capture).stem}-joined.pcap"
                capture.write_bytes(ring_stream(run).read())
                meter = replace(meter, origin=ring_origin(args.capture) or b"")
            result = analyze_capture(capture, policy=policy, workers=args.workers,
                                     config=meter, pipeline=pipeline)
            try:
                data = build_bundle(result, args.uid, capture, args.anonymize, key,
                                    ledger_entries=entries, signing_key=signing,
                                    policy=policy, capture_name=Path(args.capture).name,
                                    ring=ring if run is not None else None,
                                    ledger_name=Path(args.ledger or "evidence.db").name)
            except UnknownSubject as exc:
                raise UnknownSubject(f"{exc}{_ring_hint(entries or [], args.uid)}") from None
        args.out = _write_bundle(data, args.out, bundle_name(args.capture, args.uid))
    if failed.code is not None:
        return failed.code
    print(f"marsad: wrote {args.out} ({len(data)} bytes"
          f"{', anonymised' if args.anonymize else ''})", file=sys.stderr)
    return _result_status(result)


def _bundle_state(checked: Any) -> str:
    """A checked bundle in a few words: its files and its signature are told apart (a
    signature by a key other than the one trusted leaves every file as it was signed)."""
    from api.evidence import SIGNATURE
    if checked.ok:
        return "intact"
    if any(not p.startswith(f"{SIGNATURE}: ") for p in checked.problems):
        return "MODIFIED"
    if checked.signature == "untrusted":
        return "files as signed, but NOT signed by the key given"
    if checked.signature == "none":
        return "NOT signed (a signature was expected)"
    return "MODIFIED after signing (the signature does not verify)"


def _ring_hint(entries: Sequence[Any], uid: str) -> str:
    """What to say of a subject missing from a ring file, when the ledger shows its
    packets span several files of the live probe's ring."""
    for e in reversed(entries):
        ring = e.evidence.get("ring") if e.subject_uid == uid else None
        if isinstance(ring, list) and len(ring) > 1:
            names = ", ".join(str(f.get("file")) for f in ring if isinstance(f, dict))
            return (f": its packets span the ring files {names}, which are not all beside "
                    "it with the SHA-256 recorded")
    return ""


def _write_bundle(data: bytes, out: str | None, name: str) -> str:
    """Write a bundle to ``out`` (a file, or a directory it is named ``name`` in; default
    here) through a ``.part`` file renamed into place; returns the path written."""
    if out is None or os.path.isdir(out):
        out = os.path.join(out or ".", name)
    _bundle_folder(out)
    tmp = f"{out}.part"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, out)
    return out


def _bundle_folder(out: str | None) -> None:
    """Raise when ``out`` (a bundle's file, or the directory it goes in) has no folder
    to be written in."""
    if out is None or os.path.isdir(out):
        return
    folder = os.path.dirname(out) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, "no such directory to write the bundle in",
                                folder)


def _test_evidence(args: argparse.Namespace) -> int:
    """``marsad evidence --test RESULT.json``: the bundle of an active test (its capture,
    result, ledger entries, report), signed with ``--sign``."""
    from api.active import build_test_bundle, bundle_name_for_test, load_result
    from api.evidence import EvidenceError, load_signing_key
    if args.uid is not None or args.capture is not None or args.anonymize:
        print("marsad evidence: --test takes no CALL_UID, --capture or --anonymize (a test's "
              "bundle holds its own capture, not anonymised)", file=sys.stderr)
        return EXIT_UNREADABLE
    with _reported(errors=(EvidenceError, OSError, ValueError)) as failed:
        result = load_result(args.test)
        entries = None
        if args.ledger is not None:
            with _open_ledger(args.ledger, must_exist=True) as ledger:
                entries = ledger.entries()
        signing = None if args.sign is None else load_signing_key(args.sign)
        data = build_test_bundle(result, ledger_entries=entries, signing_key=signing)
        args.out = _write_bundle(data, args.out, bundle_name_for_test(result))
    if failed.code is not None:
        return failed.code
    print(f"marsad: wrote {args.out} ({len(data)} bytes)", file=sys.stderr)
    return EXIT_OK


def _test_reports(args: argparse.Namespace) -> int:
    """``marsad report --test RESULT.json...``: each active test's report (Markdown, or
    the results as JSON with ``--json``). Exit 2 if a result could not be read."""
    from api.active import load_result, render_test_markdown
    if args.format not in (None, "md"):
        print("marsad report: an active test's report is Markdown (--format md) or --json",
              file=sys.stderr)
        return EXIT_UNREADABLE
    code = EXIT_OK
    results = []
    for path in args.test:
        try:
            results.append(load_result(path))
        except (OSError, ValueError) as exc:
            print(f"marsad: {path}: {exc}", file=sys.stderr)
            code = EXIT_UNREADABLE
    if args.json:
        sys.stdout.write(dumps({"tests": [r.to_dict() for r in results]}) + "\n")
    else:
        sys.stdout.write("\n".join(render_test_markdown(r) for r in results))
    return code


def _run_report(args: argparse.Namespace) -> int:
    """``marsad report``: calls and interfered flows of each capture, for people (or as
    JSON). Exit status: 2 if a capture could not be read (the others are still
    reported), else 3 if one was damaged, else 0."""
    from api.pipeline import analyze_capture
    from api.report import build_report, render_rich, render_text, report_json
    from policy.rules import load_policy
    if args.test:
        if args.capture:
            print("marsad report: give captures or --test results, not both", file=sys.stderr)
            return EXIT_UNREADABLE
        return _test_reports(args)
    if not args.capture:
        print("marsad report: a capture (or --test RESULT.json) is required", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:
        print(f"marsad: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.format is not None:
        return _write_documents(args, policy)
    code = EXIT_OK
    as_json: list[dict[str, Any]] = []
    console = None
    if not args.json and sys.stdout.isatty():
        from rich.console import Console
        console = Console()
    for n, capture in enumerate(args.capture):
        progress = _Progress(capture)
        with _reported(progress, (CaptureError,)) as failed:
            result = analyze_capture(capture, policy=policy, workers=args.workers,
                                     config=_meter_config(args),
                                     pipeline=_pipeline_config(args),
                                     progress=progress.update)
        if failed.code is not None:
            code = failed.code
            continue
        if not result.status.complete and code == EXIT_OK:
            code = EXIT_PARTIAL
        if args.json:
            as_json.append(report_json(result, capture, only=args.only))
            continue
        report = build_report(result, capture, only=args.only)
        if console is not None:
            if n:
                console.print()
            render_rich(report, console)
        else:
            sys.stdout.write(("\n" if n else "") + render_text(report))
    if args.json:
        sys.stdout.write(dumps({"captures": as_json}) + "\n")
    return code


def _when(text: str | None) -> float | None:
    """A ``--since``/``--until`` time: seconds since the epoch or an ISO 8601 date-time."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        from datetime import UTC, datetime
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def _write_documents(args: argparse.Namespace, policy: Any) -> int:
    """``marsad report --format md|html|pdf``: the report a person files, per capture (or
    one call, or a period), in ``--lang``; to ``--out`` (a file for one capture, or a
    directory) or stdout (md and html)."""
    from pathlib import Path

    from api.document import build_document, render_html, render_markdown, render_pdf
    from api.evidence import policy_digest
    from api.pipeline import analyze_capture
    try:
        since, until = _when(args.since), _when(args.until)
    except ValueError as exc:
        print(f"marsad: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    code = EXIT_OK
    out_dir = Path(args.out) if args.out and Path(args.out).is_dir() else None
    if args.format == "pdf" and args.out is None:
        print("marsad report: --format pdf needs --out FILE or DIR", file=sys.stderr)
        return EXIT_UNREADABLE
    if len(args.capture) > 1 and args.out is not None and out_dir is None:
        print("marsad report: several captures need --out DIR", file=sys.stderr)
        return EXIT_UNREADABLE
    for capture in args.capture:
        progress = _Progress(capture)
        with _reported(progress, (CaptureError, ValueError)) as failed:
            result = analyze_capture(capture, policy=policy, workers=args.workers,
                                     config=_meter_config(args),
                                     pipeline=_pipeline_config(args),
                                     progress=progress.update)
            doc = build_document(result, lang=args.lang, capture_name=Path(capture).name,
                                 call_uid=args.call, since=since, until=until, policy=policy,
                                 version=marsad_version(), policy_sha256=policy_digest(policy))
            data = (render_pdf(doc) if args.format == "pdf" else
                    (render_html(doc) if args.format == "html" else
                     render_markdown(doc)).encode())
        if failed.code is not None:
            code = failed.code
            continue
        partial = _finish_status(result.status, result.stats)  # warns as analyze does
        if code == EXIT_OK:
            code = partial
        suffix = {"md": "md", "html": "html", "pdf": "pdf"}[args.format]
        if out_dir is not None:
            target = out_dir / f"{Path(capture).name}.report.{args.lang}.{suffix}"
        elif args.out is not None:
            target = Path(args.out)
        else:
            sys.stdout.write(data.decode())
            continue
        target.write_bytes(data)
        print(f"marsad: wrote {target}", file=sys.stderr)
    return code


def _run_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    import uvicorn
    from pydantic import ValidationError

    from api.config import Settings
    from api.jobs import NotACaptureFile, TooLarge
    from api.main import create_app
    from api.runtime import private_files
    from api.store import StoreError

    private_files()
    given = {"host": args.host, "port": args.port, "data_dir": args.data_dir,
             "analysis_workers": args.jobs, "scheduler": args.scheduler,
             "datasets": tuple(args.dataset) if args.dataset else None}
    overrides: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.preload:
        overrides["preload"] = tuple(Path(p) for p in args.preload)
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        print(f"marsad: bad setting: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    for path in settings.preload:
        if not path.is_file():
            print(f"marsad: {path}: no such file", file=sys.stderr)
            return EXIT_UNREADABLE
    try:
        token_file = settings.ensure_token()
        app = create_app(settings)
    except (NotACaptureFile, TooLarge) as exc:
        print(f"marsad: cannot preload: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except (OSError, StoreError, PolicyError) as exc:
        print(f"marsad: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if token_file is not None:
        print(f"marsad: the API token for uploads and evidence is in {token_file}",
              file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level)
    return EXIT_OK


def _run_probe(args: argparse.Namespace) -> int:
    """``marsad probe``: a live capture (``-i``) or a stream (``-r``), reported as it runs."""
    import logging
    import signal
    import threading
    from pathlib import Path

    from api.live import LiveConfig, LiveError, LiveProbe
    from api.runtime import private_files
    from policy.rules import load_policy
    from probe import RingConfig
    private_files()
    if (args.interface is None) == (args.read is None):
        print("marsad probe: give exactly one of -i IFACE and -r FILE|-", file=sys.stderr)
        return EXIT_UNREADABLE
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="marsad probe: %(levelname)s %(message)s")
    data_dir = Path(args.data_dir) if args.data_dir is not None else None
    ring_dir = (Path(args.ring_dir) if args.ring_dir is not None
                else (data_dir or Path(".")) / "captures" / "ring")
    ring = None if args.no_ring else RingConfig(
        ring_dir, file_bytes=int(args.ring_file_mb * (1 << 20)), file_age_s=args.ring_age_s,
        total_bytes=int(args.ring_total_mb * (1 << 20)), keep_s=args.ring_keep_s)
    cfg = LiveConfig(source=args.interface or args.read, interface=args.interface is not None,
                     bpf=args.filter, meter=_meter_config(args), ring=ring, data_dir=data_dir,
                     pipeline=_pipeline_config(args),
                     status_interval_s=args.status_interval, tcpdump=args.tcpdump,
                     user=args.user, fingerprints=args.ja4, name=args.name)
    metrics = None
    running: list[LiveProbe] = []  # the probe, once made (the active-flows gauge reads it)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        from api.metrics import probe_metrics

        def active_flows() -> int:
            return running[0].status().flows_active if running else 0

        registry, metrics = probe_metrics(marsad_version(), active_flows=active_flows)
        start_http_server(args.metrics_port, addr=args.metrics_host, registry=registry)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    with _reported(errors=(LiveError, PolicyError, OSError)) as failed:
        probe = LiveProbe(cfg, load_policy(args.policy), sys.stdout, metrics=metrics)
        running.append(probe)
        return probe.run(stop)
    assert failed.code is not None
    return failed.code


def _run_test_reachability(args: argparse.Namespace) -> int:
    """``marsad test reachability APP``: DNS, TCP, TLS and STUN to the app's endpoints,
    judged; the result and capture written to ``--out``, an entry in ``--ledger``."""
    from pathlib import Path

    from api.active import record_test
    from api.reach_test import (
        ReachError,
        ReachSpec,
        parse_target,
        run_reach_test,
    )
    from policy.errors import EntryRejected
    from policy.reach import CONTROL_GROUP
    from policy.rules import load_policy
    with _reported(errors=(ReachError, PolicyError, EntryRejected, OSError)) as failed:
        if args.timeout <= 0 or args.total <= 0 or args.max_addresses < 1:
            raise ReachError("--timeout and --total must be positive, --max-addresses >= 1")
        spec = ReachSpec(
            app=args.app, resolvers=tuple(args.resolver or ()), timeout_s=args.timeout,
            targets=tuple(parse_target(t, app=args.app) for t in args.target or ()),
            controls=tuple(parse_target(t, app=args.app, group=CONTROL_GROUP)
                           for t in args.control or ()),
            ca_file=args.ca_file, max_addresses=args.max_addresses, total_s=args.total,
            builtin=not args.only_targets, system_resolver=not args.no_system_resolver)
        result = run_reach_test(spec, Path(args.out), policy=load_policy(args.policy),
                                capture=not args.no_capture)
        if args.ledger is not None:
            with _open_ledger(args.ledger, must_exist=False) as ledger:
                record_test(result, ledger=ledger)
    if failed.code is not None:
        return failed.code
    if args.json:
        sys.stdout.write(dumps(result.to_dict()))
        sys.stdout.write("\n")
        return EXIT_OK
    keys = result.test_keys
    print(f"{result.app} reachability: {result.verdict.kind}"
          f"{' (' + ', '.join(result.verdict.reasons) + ')' if result.verdict.reasons else ''}")
    for k, v in keys.items():
        if k.startswith(f"{result.app}_") and k.endswith("_status"):
            print(f"  {k}: {v}")
    print(f"  dns: {keys['dns_consistency']['status']}; control: {keys['control']}; "
          f"network: {keys['network']}")
    for ev in result.verdict.evidence:
        print(f"  - {ev.reason}: {ev.text}")
    cap = keys["capture"]
    print(f"  result: {Path(args.out) / (result.uid + '.json')}")
    print(f"  capture: {result.capture or 'none (' + str(cap.get('problem')) + ')'}")
    return EXIT_OK


def _add_test_parsers(sub: Any, subparsers: dict[str, argparse.ArgumentParser]) -> None:
    """``marsad test``: the active tests, each kind a subcommand of the group."""
    tg = sub.add_parser("test", help="active tests: traffic marsad sends itself to test "
                                     "the path (reachability, replay)")
    tsub = tg.add_subparsers(dest="test_command", required=True)
    tr = tsub.add_parser(
        "reachability", help="DNS, TCP, TLS and STUN to an app's servers (OONI's method)",
        description="Resolve the app's server names (the system resolver and each "
                    "--resolver), connect to every answer, make TLS handshakes with the "
                    "names as SNI and send STUN binding requests; judge whether the "
                    "network blocked the app. The servers are the app's own, from "
                    "classifier/data/endpoints.json, plus any --target.")
    tr.add_argument("app", choices=("whatsapp", "messenger", "teams", "zoom", "signal",
                                    "telegram", "viber", "sip"))
    tr.add_argument("--resolver", action="append", metavar="IP[:PORT]",
                    help="also ask this DNS server (repeatable); answers are compared")
    tr.add_argument("--no-system-resolver", action="store_true",
                    help="ask only the --resolver servers, not the system's resolver")
    tr.add_argument("--target", action="append", metavar="[tcp:|tls:|stun:]HOST[:PORT]",
                    help="a server of the app to test too (repeatable; SIP's proxy, a "
                         "relay); no scheme: TLS on 443 (SIP: TCP 5060)")
    tr.add_argument("--control", action="append", metavar="[tcp:|tls:|stun:]HOST[:PORT]",
                    help="a server that should work whatever happens to the app: if it "
                         "fails too the test failed (no network), nothing is blocked")
    tr.add_argument("--only-targets", action="store_true",
                    help="test only the --target servers, not the app's own list")
    tr.add_argument("--ca-file", metavar="FILE",
                    help="verify servers with this CA bundle instead of the system store")
    tr.add_argument("--timeout", type=float, default=5.0, metavar="S",
                    help="per DNS query, connect, handshake and STUN exchange (default 5)")
    tr.add_argument("--total", type=float, default=60.0, metavar="S",
                    help="cap on the whole test (default 60)")
    tr.add_argument("--max-addresses", type=int, default=4, metavar="N",
                    help="answers tried per name (default 4)")
    tr.add_argument("--out", default=".", metavar="DIR",
                    help="where <uid>.json and <uid>.pcap go (default: here)")
    tr.add_argument("--no-capture", action="store_true", help="do not run tcpdump")
    tr.add_argument("--ledger", metavar="PATH", help="append the result to this ledger")
    tr.add_argument("--policy", metavar="FILE", help="policy file (thresholds)")
    tr.add_argument("--json", action="store_true", help="print the result as JSON")
    tr.set_defaults(func=_run_test_reachability)
    subparsers.update(test=tg)


# -- replay tests: `marsad replay-server`, `marsad test replay` ---------------------------------


def _token(path: str) -> str:
    """The token in ``path`` (its first line, stripped); a PolicyError if there is none."""
    try:
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: cannot read the token file: {exc}") from None
    if not token:
        raise PolicyError(f"{path}: the token file is empty")
    return token


def _host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``); port 0 listens on a port the system picks."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _server_host_port(text: str) -> tuple[str, int]:
    """A server to connect to: ``HOST:PORT`` with a port of 1 to 65535."""
    host, port = _host_port(text)
    if port == 0:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port of 1 to 65535, "
                                         f"got {text!r}")
    return host, port


_at_least_one = _checked(int, lambda v: v >= 1, "a whole number", "must be 1 or more")
"""A count that must be at least one (a limit of zero would refuse everything)."""
_bytes_limit = _checked(float, lambda v: 1 <= v < math.inf, "a number", "must be 1 or more")
"""A number of bytes, at least one (written 50e6 or 50000000)."""


def _replay_limits(args: argparse.Namespace) -> Any:
    from probe.active.replay import ReplayLimits
    return ReplayLimits(max_duration_s=args.max_duration, max_rate_bps=args.max_rate_kbps * 1000,
                        max_bytes=int(args.max_bytes), max_concurrent=args.max_concurrent)


def _add_replay_limits(p: argparse.ArgumentParser, client: bool) -> None:
    p.add_argument("--max-duration", type=_positive, default=30.0, metavar="S",
                   help="longest trace replayed (default 30)")
    p.add_argument("--max-rate-kbps", type=_positive, default=4000.0, metavar="N",
                   help="highest mean rate of a trace, both ways (default 4000)")
    p.add_argument("--max-bytes", type=_bytes_limit, default=50e6, metavar="N",
                   help=("bytes all runs of the test may send (default 50000000)" if client
                         else "bytes one client may replay within an hour (default 50000000)"))
    p.add_argument("--max-concurrent", type=_at_least_one, default=2, metavar="N",
                   help=argparse.SUPPRESS if client else
                   "runs one client may have going at once (default 2)")


def _run_replay_server(args: argparse.Namespace) -> int:
    """``marsad replay-server``: serve replays of the traces in ``--traces`` to clients
    that hold the token, until interrupted."""
    from pathlib import Path

    from api.replay_test import DEFAULT_TRACES
    from probe.active.replay import ReplayError, ReplayServer
    from probe.active.trace import TraceError, load_trace
    host, port = args.listen
    with _reported(errors=(PolicyError, TraceError, ReplayError, OSError)) as failed:
        token = _token(args.token_file)
        folder = args.traces or str(DEFAULT_TRACES)
        traces = {t.name: t for t in (load_trace(p) for p in sorted(
            Path(folder).glob("*.pcap")))}
        if not traces:
            raise PolicyError(f"{folder}: no traces (*.pcap)")
        server = ReplayServer(host, port, token.encode(), traces,
                              limits=_replay_limits(args), max_sessions=args.max_sessions,
                              log=lambda text: print(f"marsad: {text}", file=sys.stderr))
    if failed.code is not None:
        return failed.code
    shown = ", ".join(sorted(traces))
    print(f"marsad: replay server on {server.address[0]}:{server.address[1]} with "
          f"{len(traces)} traces ({shown})", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return EXIT_OK


def _run_test_replay(args: argparse.Namespace) -> int:
    """``marsad test replay APP``: show what the test sends, run it against the user's
    replay server, judge it; the result and capture go to ``--out``, an entry to
    ``--ledger``."""
    from pathlib import Path

    from api.replay_test import DEFAULT_TRACES, ReplaySpec, plan, run_replay_test, trace_for
    from policy.errors import EntryRejected
    from policy.rules import load_policy
    from probe.active.replay import ReplayError
    from probe.active.trace import TraceError
    host, port = args.server
    with _reported(errors=(PolicyError, TraceError, ReplayError, EntryRejected,
                           OSError)) as failed:
        spec = ReplaySpec(app=args.app, server=host, port=port, token=_token(args.token_file),
                          transport="tcp" if args.tcp else "udp", limits=_replay_limits(args),
                          seconds=args.seconds,
                          traces=Path(args.traces) if args.traces else DEFAULT_TRACES,
                          capture=not args.no_capture)
        policy = load_policy(args.policy)
        trace = trace_for(spec)
        shown = plan(spec, trace)
        out = sys.stderr if args.json else sys.stdout
        print(f"replay of {trace.name} (sha256 {trace.sha256[:12]}, {shown['transport']}) "
              f"against {shown['server']}: {shown['duration_s']:.1f} s, "
              f"{shown['bytes_per_run']} bytes at {shown['rate_bps'] / 1000:.0f} kbit/s per "
              f"run, {shown['runs']} runs (original, inverted, random ports, original again): "
              f"{shown['total_bytes']} bytes; limits: {spec.limits.max_duration_s:g} s, "
              f"{spec.limits.max_rate_bps / 1000:g} kbit/s, {spec.limits.max_bytes} bytes",
              file=out)
        if shown["refused"] is not None:
            raise ReplayError(f"the limits refuse this test: {shown['refused']}")
        if not args.yes:
            if not sys.stdin.isatty():
                raise ReplayError("not confirmed: add --yes to run without asking")
            if input("run it? [y/N] ").strip().lower() not in ("y", "yes"):
                print("marsad: not run", file=sys.stderr)
                return EXIT_OK
        ledger_cm = _open_ledger(args.ledger, must_exist=False) if args.ledger else \
            contextlib.nullcontext()
        with ledger_cm as ledger:
            result = run_replay_test(spec, Path(args.out), policy=policy, ledger=ledger)
    if failed.code is not None:
        return failed.code
    if args.json:
        sys.stdout.write(dumps(result.to_dict()))
        sys.stdout.write("\n")
        return EXIT_OK
    reasons = ", ".join(result.verdict.reasons)
    print(f"{result.app} replay: {result.verdict.kind}{f' ({reasons})' if reasons else ''}")
    for d in ("up", "down"):
        a = result.test_keys.get("analysis", {}).get(d)
        if a:
            after = a.get("original_after", {})
            print(f"  {d}: loss {a['loss']}, mean bit/s {a['mean_bps']}, area {a['area']}, "
                  f"KS p {a['ks_p']}; the original after the controls: area "
                  f"{after.get('area')}, KS p {after.get('ks_p')}")
    for ev in result.verdict.evidence:
        print(f"  - {ev.reason}: {ev.text}")
    print(f"  result: {Path(args.out) / (result.uid + '.json')}")
    print(f"  capture: {result.capture or result.test_keys['capture']['problem']}")
    return EXIT_OK


def _add_replay_parsers(sub: Any, subparsers: dict[str, argparse.ArgumentParser]) -> None:
    """``marsad replay-server`` and ``marsad test replay`` (in the ``test`` group, made
    here unless another test kind made it)."""
    rs = sub.add_parser("replay-server", help="serve replay tests to clients holding the "
                                              "token (Wehe's method)")
    rs.add_argument("--listen", type=_host_port, required=True, metavar="HOST:PORT",
                    help="the control channel's address")
    rs.add_argument("--token-file", required=True, metavar="FILE",
                    help="file whose first line is the clients' token")
    rs.add_argument("--traces", metavar="DIR",
                    help="the traces to serve (default: the project's captures/traces)")
    rs.add_argument("--max-sessions", type=_at_least_one, default=16, metavar="N",
                    help="control connections at once, all clients (default 16)")
    _add_replay_limits(rs, client=False)
    rs.set_defaults(func=_run_replay_server)
    tg = subparsers.get("test")
    if tg is None:
        tg = sub.add_parser("test", help="active tests: traffic marsad sends itself to test "
                                         "the path")
        tsub = tg.add_subparsers(dest="test_command", required=True)
        subparsers["test"] = tg
    else:
        tsub = next(a for a in tg._actions if isinstance(a, argparse._SubParsersAction))
    tr = tsub.add_parser(
        "replay", help="replay an app's call traffic and two controls (Wehe's method)",
        description="Replay the app's call trace, the same trace with inverted payload "
                    "bits and the trace between random ports against a replay server you "
                    "run (marsad replay-server); judge whether the network treated the "
                    "app's traffic differently. Exit status: 0 the test ran (whatever "
                    "the verdict), 2 it could not run.")
    tr.add_argument("app", help="the app whose trace is replayed (a name in captures/traces)")
    tr.add_argument("--server", type=_server_host_port, required=True, metavar="HOST:PORT",
                    help="your replay server")
    tr.add_argument("--token-file", required=True, metavar="FILE",
                    help="file whose first line is the server's token")
    tr.add_argument("--tcp", action="store_true", help="replay the app's TCP trace")
    tr.add_argument("--seconds", type=_positive, metavar="S",
                    help="replay only the trace's first S seconds")
    tr.add_argument("--traces", metavar="DIR", help="where the traces are")
    tr.add_argument("--out", default=".", metavar="DIR",
                    help="where <uid>.json and <uid>.pcap go (default: here)")
    tr.add_argument("--ledger", metavar="PATH", help="append the result to this ledger")
    tr.add_argument("--policy", metavar="FILE", help="policy file (thresholds)")
    tr.add_argument("--no-capture", action="store_true", help="do not run tcpdump")
    tr.add_argument("--yes", action="store_true", help="run without asking")
    tr.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_replay_limits(tr, client=True)
    tr.set_defaults(func=_run_test_replay)
    subparsers["replay-server"] = rs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="marsad", description=(
        "Observe over-the-top voice and video calls and record, with evidence, whether the "
        "network blocked or throttled them."))
    p.add_argument("--version", action="version", version=f"marsad {marsad_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    subparsers: dict[str, argparse.ArgumentParser] = {}
    f = sub.add_parser("flows", help="bidirectional flow records of a capture")
    f.add_argument("capture", nargs="+", help=_CAPTURES_HELP)
    _add_format(f)
    _add_batch_options(f)
    f.add_argument("--samples", action="store_true",
                   help="also print each flow's payload samples (hex) and RTP stream summaries")
    _add_meter_options(f)
    f.set_defaults(func=_run_flows)
    a = sub.add_parser("analyze", help="flows with their app, category and media; calls "
                                        "with their quality and verdicts")
    a.add_argument("capture", nargs="+", help=_CAPTURES_HELP)
    _add_format(a, calls=True)
    _add_batch_options(a)
    _add_meter_options(a)
    _add_pipeline_options(a)
    a.add_argument("--policy", metavar="FILE",
                   help="verdict thresholds (YAML; default: the packaged policy)")
    a.add_argument("--ja4", action="store_true",
                   help="add the JA4 fingerprint of each TLS/QUIC/DTLS ClientHello")
    a.add_argument("--ledger", metavar="PATH",
                   help="also record every verdict other than ok in this evidence ledger "
                        "(created if missing; a verdict already recorded is not repeated)")
    a.set_defaults(func=_run_analyze)
    v = sub.add_parser("verify", help="check an evidence ledger's chain and re-derive its "
                                      "verdicts from the captures")
    v.add_argument("ledger", help="the ledger file")
    v.add_argument("--capture", action="append", metavar="FILE",
                   help="a capture to re-derive verdicts from (matched by SHA-256; repeatable)")
    v.add_argument("--policy", metavar="FILE", help="the policy the verdicts were reached with")
    v.add_argument("--anchor", metavar="SEQ:SHA256",
                   help="a published checkpoint: entry SEQ must still hash to SHA256")
    v.add_argument("--json", action="store_true", help="one JSON object")
    v.set_defaults(func=_run_verify)
    e = sub.add_parser("evidence", help="write an evidence bundle (zip) for one call, or "
                                        "check one")
    e.add_argument("uid", nargs="?", metavar="CALL_UID", help="the call (or flow) uid")
    e.add_argument("--capture", metavar="FILE", help="the capture the call is in")
    e.add_argument("--out", metavar="ZIP", help="where to write the bundle (a directory, or "
                                              "by default the current one: "
                                              "<capture name>-<uid>.zip there)")
    e.add_argument("--anonymize", "--anonymise", action="store_true",
                   help="rewrite the local side's addresses (prefix-preserving)")
    e.add_argument("--key", metavar="HEX",
                   help="anonymisation key (at least 16 bytes as hex; default: random)")
    e.add_argument("--ledger", metavar="PATH", help="include the ledger's entries for the call")
    e.add_argument("--policy", metavar="FILE", help="verdict thresholds (YAML)")
    e.add_argument("--workers", type=int, choices=(1, 2), default=default_workers(),
                   help="processes reading the capture")
    e.add_argument("--check", metavar="ZIP",
                   help="verify a bundle's files against its manifest instead (and its "
                        "signature, when signed)")
    e.add_argument("--sign", metavar="KEY.pem",
                   help="sign the manifest with this Ed25519 private key (PEM, e.g. from "
                        "openssl genpkey -algorithm ed25519)")
    e.add_argument("--public-key", metavar="PUB.pem",
                   help="with --check: the signer's public key (PEM) the bundle must be "
                        "signed with")
    e.add_argument("--test", metavar="RESULT.json",
                   help="write the bundle of an active test instead (the result file a "
                        "'marsad test' run wrote, its capture beside it)")
    e.set_defaults(func=_run_evidence)
    rp = sub.add_parser("report", help="a human summary of captures' calls and verdicts")
    rp.add_argument("capture", nargs="*",
                    help="pcap or pcapng files (gzip allowed), or - for stdin")
    rp.add_argument("--test", action="append", metavar="RESULT.json",
                    help="report an active test from the result file it wrote (repeatable)")
    rp.add_argument("--only", choices=("interfered", "not-ok"),
                    help="show only calls and flows the network interfered with (blocked, "
                         "throttled), or all but the ok ones")
    rp.add_argument("--json", action="store_true",
                    help="one JSON object {\"captures\": [...]} instead of text")
    rp.add_argument("--policy", metavar="FILE", help="verdict thresholds (YAML)")
    _add_meter_options(rp)
    _add_pipeline_options(rp)
    rp.add_argument("--format", choices=("md", "html", "pdf"),
                    help="the report to file with an operator or regulator: summary, "
                         "timeline, charts, reasons, hashes and how to verify")
    rp.add_argument("--lang", default="en", choices=("en", "fr", "ar", "ar-MA", "ar-OM"),
                    help="language of --format (ar: Arabic-Indic digits; ar-MA: Western "
                         "digits)")
    rp.add_argument("--call", metavar="UID", help="with --format: this call only")
    rp.add_argument("--since", metavar="TIME",
                    help="with --format: calls starting at or after TIME (epoch seconds or "
                         "ISO 8601)")
    rp.add_argument("--until", metavar="TIME", help="with --format: calls starting before TIME")
    rp.add_argument("--out", metavar="FILE|DIR",
                    help="with --format: where to write (needed for pdf)")
    rp.set_defaults(func=_run_report)
    r = sub.add_parser("refresh-data", add_help=False,
                       help="rebuild the IP-owner or hostname tables from a local copy of a "
                            "public list (run 'marsad refresh-data --help')")
    r.add_argument("rest", nargs=argparse.REMAINDER)
    r.set_defaults(func=_run_refresh)
    s = sub.add_parser("serve", help="run the REST API (OpenAPI at /docs) and analyse uploaded "
                                     "captures in the background",
                       description="Run the REST API. Other settings come from MARSAD_* "
                                   "environment variables (see api/config.py), e.g. "
                                   "MARSAD_API_TOKEN, MARSAD_OPEN_READS, "
                                   "MARSAD_MAX_UPLOAD_BYTES, MARSAD_RETENTION_DAYS.")
    s.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_port, help="TCP port (default 8000)")
    s.add_argument("--data-dir", metavar="DIR",
                   help="store, ledger, captures and probe status (default ./marsad-data)")
    s.add_argument("--preload", nargs="+", metavar="CAPTURE",
                   help="captures to analyse at start, so there is data to look at")
    s.add_argument("--jobs", type=_checked(int, lambda v: 1 <= v <= 256, "a whole number",
                                           "must be 1 to 256"), metavar="N",
                   help="uploads analysed at once: 1 (the default) on a thread, more in as "
                        "many local processes, or on the Dask cluster of --scheduler")
    s.add_argument("--scheduler", metavar="ADDRESS",
                   help="analyse uploads on a Dask cluster (tcp://HOST:8786 or a scheduler "
                        "file); its workers must reach the data directory at the same path")
    s.add_argument("--dataset", action="append", metavar="DIR",
                   help="a dataset of marsad analyze --out whose captures, calls and verdicts "
                        "the API and dashboard show (repeatable)")
    s.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"),
                   help="server log level (default info)")
    s.set_defaults(func=_run_serve)
    subparsers["serve"] = s
    pr = sub.add_parser("probe", help="watch an interface (or a pcap stream) live: flows, "
                                      "calls and verdicts as they complete",
                        description="Capture with tcpdump (-i) or read a pcap stream (-r FILE|-) "
                                    "and write flows, calls and verdicts as JSON lines as they "
                                    "complete; keep the raw packets in a rotating ring. Exit "
                                    "status: 0 done; 2 the capture could not start or the "
                                    "input is not a capture; 3 the input was cut short "
                                    "(truncated) or a reported verdict is not in the ledger.")
    src = pr.add_mutually_exclusive_group()
    src.add_argument("-i", "--interface", metavar="IFACE", help="interface to capture on")
    src.add_argument("-r", "--read", metavar="FILE", help="pcap/pcapng file or - (stdin)")
    pr.add_argument("--filter", metavar="BPF", help="BPF capture filter (with -i)")
    pr.add_argument("--data-dir", metavar="DIR",
                    help="also write to the service's store, ledger, probe-status.json and "
                         "the probe's metrics report (probes/NAME.json, which marsad serve "
                         "on DIR exports) here")
    pr.add_argument("--name", default="", metavar="NAME",
                    help="the probe's name, its probe label in the service's metrics "
                         "(default: the interface, stdin, or the capture file's name); "
                         "probes sharing a data directory need different names")
    pr.add_argument("--ring-dir", metavar="DIR",
                    help="capture ring directory (default DATA_DIR/captures/ring, else "
                         "./captures/ring)")
    pr.add_argument("--ring-file-mb", type=_positive, default=50.0, metavar="N",
                    help="close a ring file at this size (default 50)")
    pr.add_argument("--ring-age-s", type=_positive, default=300.0, metavar="N",
                    help="close a ring file after this many seconds (default 300)")
    pr.add_argument("--ring-total-mb", type=_positive, default=2048.0, metavar="N",
                    help="delete the oldest ring files beyond this total (default 2048)")
    pr.add_argument("--ring-keep-s", type=_positive, default=86400.0, metavar="N",
                    help="delete ring files closed longer ago than this, by the wall clock "
                         "(default 86400)")
    pr.add_argument("--no-ring", action="store_true",
                    help="keep no raw packets (with --data-dir, verdicts then cannot go in "
                         "the ledger: the probe says so and exits 3)")
    pr.add_argument("--status-interval", type=_positive, default=2.0, metavar="S",
                    help="seconds between status file updates (default 2)")
    pr.add_argument("--metrics-port", type=_port, metavar="PORT",
                    help="serve Prometheus metrics on this port")
    pr.add_argument("--metrics-host", default="127.0.0.1",
                    help="address of the metrics endpoint (default 127.0.0.1)")
    pr.add_argument("--tcpdump", default="tcpdump", help="the tcpdump program")
    pr.add_argument("--user", metavar="USER",
                    help="user tcpdump switches to after opening the interface (-Z)")
    pr.add_argument("--policy", metavar="FILE", help="verdict thresholds (YAML)")
    pr.add_argument("--ja4", action="store_true", help="add JA4 fingerprints")
    _add_meter_options(pr)
    _add_pipeline_options(pr)
    pr.set_defaults(func=_run_probe)
    _add_test_parsers(sub, subparsers)
    _add_replay_parsers(sub, subparsers)
    subparsers.update(flows=f, analyze=a, verify=v, evidence=e, report=rp, probe=pr)
    p.set_defaults(subparsers=subparsers)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["refresh-data"]:  # its own parser, options and help
        from classifier import refresh
        return refresh.main(argv[1:])
    parser = build_parser()
    # Unknown options are reported by the subcommand's parser, with its usage: argparse
    # hands them up to the top-level parser, whose usage says nothing about them.
    args, unknown = parser.parse_known_args(argv)
    sub: argparse.ArgumentParser = args.subparsers.get(args.command, parser)
    if unknown:
        sub.error(f"unrecognized arguments: {' '.join(unknown)}")
    if getattr(args, "calls_csv", None) is not None and args.fmt != "csv":
        sub.error("--calls-csv goes with --csv")
    if args.command in ("flows", "analyze"):
        if args.out is not None:
            if args.fmt is not None or "-" in args.capture or any(
                    getattr(args, k, None) for k in ("calls_csv", "ledger", "samples")):
                sub.error("--out writes a dataset: give capture files or directories, "
                          "without an output format, --calls-csv, --ledger or --samples")
            args.func = _run_batch
        elif len(args.capture) > 1:
            sub.error("several captures go into a dataset: add --out DIR")
        elif args.scheduler is not None:
            sub.error("--scheduler goes with --out DIR")
        else:
            args.capture = args.capture[0]
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (``marsad flows --json | head``): nothing more
        # can be shown, and flushing at exit would fail again with a traceback.
        _quiet_stdout()
        return EXIT_OK
    except (OSError, sqlite3.Error) as exc:
        # A file that cannot be opened or written (--ledger in a missing directory,
        # --calls-csv on a read-only disk): one line, as for an unreadable capture.
        print(f"marsad: {_os_message(exc)}", file=sys.stderr)
        return EXIT_UNREADABLE


def _os_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush has nowhere to fail."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


_BATCH_COMMANDS = frozenset({"flows", "analyze", "report"})
"""Commands that read a capture, print, and are done: :func:`run` skips the interpreter's
teardown after them."""

def run() -> None:
    """The ``marsad`` console command: :func:`main`, then exit.

    After a batch command has written its output, the process ends at once
    (:func:`probe.speed.exit_at_once`), what it kept (:func:`probe.speed.keep_until_exit`)
    still held: freeing it object by object would be work for nothing. The reader
    processes are joined before; long-running commands (serve, probe) exit normally.
    """
    argv = sys.argv[1:]
    batch = bool(argv[:1]) and argv[0] in _BATCH_COMMANDS
    exit_follows(batch)
    code = main(argv)
    if batch:
        exit_at_once(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
