"""The live probe: a pcap stream in, flows, calls and verdicts out while it runs.

``marsad probe -i IFACE`` starts ``tcpdump -i IFACE -U -w -`` (libpcap's kernel
ring buffer and BPF filter do the capturing; tcpdump drops its privileges with
``-Z`` when started as root) and reads its standard output;
``marsad probe -r FILE|-`` reads any pcap or pcapng stream. The input is read by the
tee, a process of its own (:class:`~probe.tee.TeeProcess`): a classic pcap stream is
first checked and mended there (:class:`~probe.pcapstream.PcapStream`: resynchronised
after damage, concatenated captures joined, a cut-off end reported, timestamp jumps
counted), and the clean stream is teed:

* into the :class:`~probe.ring.CaptureRing`, a directory of pcap files rotated by size and
  by age and deleted beyond a total size budget and a retention time on the
  wall clock (never packet time), so the packets behind
  any verdict of the retention window can be cut out again. Each file is named
  after its first packet's time (``ring-20240102T030405.123456Z-000001.pcap``)
  and the ring keeps ``index.json``: for every file its first frame number
  (frames count from 1 over the whole stream, as in the flow records), packet
  count, first and last packet time, size and, once closed, SHA-256;
* into a :class:`~probe.run.FlowReader` (a thread of the probe's process, which forks
  a reader process to read and decode), whose flows come out as
  their idle, active or TCP-close timeouts expire in capture time. On a live
  interface whose link is quiet (every packet received is metered and none has
  arrived for a second) the capture clock is run on by the wall clock: idle
  flows end (:meth:`~probe.run.FlowReader.advance`) and calls settle without
  waiting for more traffic. A stream or file read with ``-r`` keeps its own time.

Finished flows and the reader's clock go through the same pipeline as
``marsad analyze`` (:mod:`policy.pipeline`): flows are classified, grouped into
calls and judged as they settle in capture time, and written as
``{"record": "flow"}``, ``{"record": "call"}`` and ``{"record": "flow-verdict"}``
JSON lines, so the probe fed a capture says what ``marsad analyze`` says of it.

With a data directory, flows, calls and verdicts also go to the service's
store (one capture row per probe run, ``live-<start>-<pid>``) and every
verdict other than ok to the evidence ledger. A ledger entry waits until the
ring files holding its frames are closed: its ``capture_sha256`` is the file
holding its last frame, and its evidence gains ``ring``, the list of ring files
(name, SHA-256, first frame, packets) spanning the subject's frames. A verdict
that was reported but cannot be put there (no ring, a pcapng stream the ring
cannot split, files deleted by the size budget first) is counted
(``unledgered`` in the status file, ``marsad_ledger_unrecorded_verdicts_total``),
logged as an error, and makes the exit status 3.

Health, every ``status_interval_s``: ``probe-status.json`` in the data
directory (:mod:`api.probe_status`), Prometheus metrics (``--metrics-port``)
and, when the probe falls behind, a log line. Kernel receive/drop counts come
from tcpdump's own statistics, printed on stderr when it gets ``SIGUSR1`` (sent
each interval) and at exit; they are parsed, not repeated: the log shows them
once at the end, and a rise in drops when it happens. The processing lag is how
long the oldest packet received but not yet metered has waited (wall clock);
the backlog is packets teed but not yet metered. Packet times play no part in
either, so an old capture replayed is not "behind". A probe more than
``behind_s`` behind says so in the status message
and the log; nothing is dropped silently (the pipe to tcpdump fills, and then
the kernel ring, whose drops are counted).

Errors: :class:`LiveError` (the capture tool cannot be started or the input
cannot be read). tcpdump that exits before capturing (no permission, no such
interface) is explained in one line and the run ends with status 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

from api.metrics import MarsadMetrics, probe_label, write_probe_report
from api.output import write_jsonl
from api.pipeline import AnalysisResult, analysis_settings, flow_row
from api.probe_status import ProbeState, ProbeStatus, write_probe_status
from classifier.engine import Observation
from classifier.payloads import meter_config
from classifier.records import Classification
from policy.calls import Analysis
from policy.pipeline import Pipeline, PipelineConfig, Step, with_verdict
from policy.records import Verdict
from policy.rules import Policy
from probe import (
    CaptureError,
    CaptureRing,
    FlowReader,
    FlowRecord,
    MeterConfig,
    RingConfig,
    TeeProcess,
    TeeState,
    Watermark,
    default_workers,
)
from probe.active.capture import KERNEL_BLOCK_TIMEOUT_S
from probe.speed import GcTimetable
from probe.tee import TEE_READ_BYTES

__all__ = [
    "CaptureStats",
    "LiveConfig",
    "LiveError",
    "LiveProbe",
    "parse_capture_stats",
    "tcpdump_command",
]

log = logging.getLogger("marsad.probe")



class LiveError(Exception):
    """The capture tool could not be started or the stream could not be read."""


# -- capture tool statistics ----------------------------------------------------------------------

_STAT_RE = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel|"
                      r"dropped by interface)\s*$")
_STAT_PART = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel|"
                        r"dropped by interface)")


def _stats_line(line: str) -> bool:
    """True for a line of tcpdump's statistics: one count a line (at exit), or all on one
    line after ``tcpdump:`` (on ``SIGUSR1``)."""
    text = line.strip()
    if text.startswith("tcpdump:"):
        text = text[len("tcpdump:"):].strip()
    parts = [p.strip() for p in text.split(",")]
    return bool(parts) and all(_STAT_RE.match(p) for p in parts)


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """The capture tool's cumulative counters (libpcap's ``pcap_stats``)."""

    captured: int = 0
    """Packets tcpdump wrote out."""
    received: int = 0
    """Packets that passed the kernel filter (``ps_recv``)."""
    dropped: int = 0
    """Packets the kernel dropped because the ring buffer was full (``ps_drop``)."""
    if_dropped: int = 0
    """Packets the interface or its driver dropped (``ps_ifdrop``)."""


def parse_capture_stats(lines: Sequence[str], prev: CaptureStats | None = None) -> CaptureStats:
    """Fold tcpdump's statistics lines (``N packets received by filter`` ..., one a line
    or comma-separated on one) into ``prev``; other lines are ignored."""
    out = prev or CaptureStats()
    names = {"captured": "captured", "received by filter": "received",
             "dropped by kernel": "dropped", "dropped by interface": "if_dropped"}
    for line in lines:
        if not _stats_line(line):
            continue
        for m in _STAT_PART.finditer(line):
            out = replace(out, **{names[m.group(2)]: int(m.group(1))})
    return out


def tcpdump_command(iface: str, bpf: str | None, *, tcpdump: str = "tcpdump",
                    user: str | None = None, buffer_kib: int = 8192,
                    snaplen: int = 0) -> list[str]:
    """The tcpdump command line writing ``iface``'s packets to stdout as a pcap stream,
    each packet written as soon as tcpdump reads it (``-U``).

    Not ``--immediate-mode``: that makes libpcap give every packet a ring frame of the
    whole snapshot length, and on loopback (64 KiB MTU) or ``any`` (no MTU) an 8 MiB ring
    then holds a few dozen packets, which a burst overflows. Without it the kernel packs
    packets into blocks and hands a part-filled one over after tcpdump's 1 s timeout
    (:data:`probe.active.capture.KERNEL_BLOCK_TIMEOUT_S`), which the probe waits out
    before it stops tcpdump."""
    argv = [tcpdump, "-i", iface, "-n", "-U", "-B", str(buffer_kib),
            "-s", str(snaplen), "-w", "-"]
    if user is not None:
        argv += ["-Z", user]
    if bpf:
        argv.append(bpf)
    return argv


# -- the probe ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveConfig:
    """How the live probe runs."""

    source: str
    """Interface name (with ``interface=True``), capture file path or ``-``."""
    interface: bool = False
    """True: capture ``source`` with tcpdump; False: read it as a capture stream."""
    bpf: str | None = None
    """BPF filter given to tcpdump."""
    meter: MeterConfig = field(default_factory=meter_config)
    """Flow timeouts and sampling (with the classifier's payload policy)."""
    ring: RingConfig | None = None
    """The capture ring; None keeps no packets."""
    data_dir: Path | None = None
    """Store, ledger and status file; None writes only to stdout."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """When flows, calls and verdicts settle (the same defaults as ``marsad analyze``)."""
    status_interval_s: float = 2.0
    """Wall-clock seconds between status files, tcpdump statistics and metrics."""
    behind_s: float = 10.0
    """Processing lag beyond which the probe reports that it falls behind."""
    tcpdump: str = "tcpdump"
    """The tcpdump program."""
    user: str | None = None
    """User tcpdump switches to after opening the interface (``-Z``)."""
    fingerprints: bool = False
    """Add JA4 fingerprints to flow rows."""
    name: str = ""
    """The probe's name: its ``probe`` label in the service's metrics and the name of its
    report (``<data_dir>/probes/<name>.json``); empty: :attr:`probe_name` picks one."""

    @property
    def probe_name(self) -> str:
        """:attr:`name`, or the interface's name, or ``stdin`` for ``-r -``, or the capture
        file's name; as a label value (:func:`api.metrics.probe_label`)."""
        if self.name:
            return probe_label(self.name)
        if self.interface:
            return probe_label(self.source)
        return "stdin" if self.source == "-" else probe_label(Path(self.source).name)


_END = object()


PIPE_BYTES = TEE_READ_BYTES
"""What the pipes the probe reads (tcpdump's or the standard input, when a pipe) and
writes (to its flow reader) hold, and what the tee reads at once (1 MiB): Linux's default
ceiling for an unprivileged ``F_SETPIPE_SZ`` (``/proc/sys/fs/pipe-max-size``), sixteen
times the default 64 KiB. Fewer, larger reads and writes; and a writer (tcpdump) that
can run further ahead before it blocks."""


def widen_pipe(fd: int) -> None:
    """Give the pipe ``fd`` a buffer of :data:`PIPE_BYTES`, where the system allows it
    (nothing happens for a file, a socket, or where it does not)."""
    with contextlib.suppress(OSError, AttributeError):
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class LiveProbe:
    """Runs one live capture to its end (see the module docstring).

    ``out`` receives the JSON lines; ``policy`` judges the calls; ``metrics``
    (optional) is a :class:`~api.metrics.MarsadMetrics`; ``clock`` is the wall clock.
    """

    def __init__(self, config: LiveConfig, policy: Policy, out: TextIO, *,
                 metrics: Any = None, clock: Callable[[], float] = time.time,
                 stdin: IO[bytes] | None = None) -> None:
        self.cfg = config
        self.policy = policy
        self.out = out
        if metrics is None and config.data_dir is not None:
            # the report the service on the data directory exposes is made from these
            metrics = MarsadMetrics(None, active_flows=self._active_flows)
        self.metrics = metrics
        self.clock = clock
        self._stdin = stdin
        self.started_at = clock()
        self.pipeline = Pipeline(policy, config.meter, fingerprints=config.fingerprints,
                                 config=config.pipeline)
        self._settings = analysis_settings(config.meter, config.pipeline)
        """Settings other than the defaults, recorded with each verdict in the ledger."""
        self.state = ProbeState.STARTING
        self.message: str | None = None
        self.capture_stats = CaptureStats()
        self._stats_lines: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=10000)
        self._pending_ledger: list[tuple[str, Verdict, dict[str, Any], int, int]] = []
        self.flows_finished = 0
        self.calls = 0
        self.verdicts: dict[str, int] = {}
        self.ledger_appended = 0
        self._first_ts: float | None = None
        self._last_ts: float | None = None
        self._flow_verdicts: Counter[str] = Counter()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: FlowReader | None = None
        self._behind = False
        self._tee: TeeProcess | None = None
        self._tee_state = TeeState()
        """What the tee said last (:meth:`_refresh`): the stream's repairs, the ring's
        closed files, the arrival of the oldest packet not yet metered."""
        self._stderr: threading.Thread | None = None
        self._tool_lines: list[str] = []
        """tcpdump's lines held back until the capture is seen running (on failure they are
        read for the one line that explains it)."""
        self._tool_shown = False
        self._drops_shown = 0
        self._next_advance = 0.0
        self.unledgered = 0
        """Verdicts reported (other than ok) that could not be put in the ledger."""
        self._unledgered_why: str | None = None
        self._ring = CaptureRing(config.ring, clock=clock) if config.ring is not None else None
        """The capture ring, made here (a directory that cannot be made fails here) and kept
        by the tee process once it starts (:class:`~probe.tee.TeeProcess`)."""
        self._store: Any = None
        self._ledger: Any = None
        from api.store import LIVE_PREFIX
        self._capture_id = f"{LIVE_PREFIX}{int(self.started_at)}-{os.getpid()}"
        if config.data_dir is not None:
            from api.store import open_store
            from policy.ledger import Ledger
            self._store = open_store(config.data_dir, clock=clock)
            self._store.add_capture(capture_id=self._capture_id,
                                    filename=("live:" if config.interface else "stream:")
                                    + config.source,
                                    path=str(config.ring.directory if config.ring else ""),
                                    sha256="", size_bytes=0)
            self._ledger = Ledger(Path(config.data_dir) / "ledger.db", clock=time.time)
            if config.ring is None:
                log.warning("no capture ring: verdicts other than ok cannot be put in the "
                            "evidence ledger (they are counted as unledgered)")

    # -- input ------------------------------------------------------------------------------
    def _open_input(self) -> IO[bytes]:
        cfg = self.cfg
        if not cfg.interface:
            if cfg.source == "-":
                return self._stdin or os.fdopen(os.dup(sys.stdin.fileno()), "rb")
            try:
                return open(cfg.source, "rb")
            except OSError as exc:
                raise LiveError(f"{cfg.source}: {exc.strerror or exc}") from exc
        exe = shutil.which(cfg.tcpdump)
        if exe is None:
            raise LiveError(f"{cfg.tcpdump}: not found (install tcpdump)")
        argv = tcpdump_command(cfg.source, cfg.bpf, tcpdump=exe, user=cfg.user)
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            raise LiveError(f"cannot start {exe}: {exc}") from exc
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._stderr = threading.Thread(target=self._read_stderr, args=(self._proc.stderr,),
                                        name="marsad-tcpdump-stderr", daemon=True)
        self._stderr.start()
        return self._proc.stdout

    def _read_stderr(self, fh: IO[bytes]) -> None:
        """tcpdump's statistics go into :attr:`capture_stats` (shown at the end, and when
        the kernel drops packets); its other lines are logged once it is seen capturing."""
        for raw in fh:
            line = raw.decode("utf-8", "replace").rstrip()
            if _stats_line(line):
                with self._lock:
                    self.capture_stats = parse_capture_stats([line], self.capture_stats)
            elif line:
                with self._lock:
                    show = self._tool_shown
                    if not show:
                        self._tool_lines.append(line)
                if show:
                    log.info("tcpdump: %s", line)

    def _show_tool_lines(self) -> None:
        """tcpdump has been capturing for a while: log what it said so far."""
        with self._lock:
            lines, self._tool_lines = self._tool_lines, []
            self._tool_shown = True
        for line in lines:
            log.info("tcpdump: %s", line)

    def _capture_failure(self, exc: CaptureError) -> str:
        """One line on why the capture failed: for tcpdump that delivered no packet, what
        it said, made plain (no permission, no such interface)."""
        proc = self._proc
        if proc is None or self._frames() > 0:
            return str(exc)
        if self._stderr is not None:
            self._stderr.join(timeout=2)
        with self._lock:
            said = list(self._tool_lines)
        return _diagnose_tcpdump(self.cfg.source, self.cfg.tcpdump, said, proc.returncode,
                                 str(exc))

    def _read_flows(self, pipe: BinaryIO) -> None:
        """The flow reader, in a thread: flows and watermarks into the queue."""
        try:
            # reading, decoding and batch preparation in a second process, as for a file
            reader = FlowReader(pipe, self.cfg.meter, workers=default_workers())
            reader.gc_timetable = GcTimetable()
            reader.start(stream_too=True)
            self._reader = reader
            for item in reader.observed_with_clock(self.pipeline.observe):
                self._queue.put(item)
            self._queue.put(_END)
        except CaptureError as exc:
            self._queue.put(exc)
        except Exception as exc:  # handed to the main loop, which raises it
            self._queue.put(exc)
        finally:
            pipe.close()

    # -- the run -----------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> int:
        """Capture until the stream ends or ``stop`` is set; return the exit status: 0 done,
        2 the input could not be read (or the capture could not start), 3 the input was
        cut short (truncated, or a section that cannot be joined) or a reported verdict
        could not be put in the ledger (the status file and the log say which).

        Cyclic garbage is collected by the clock meanwhile (:class:`GcTimetable`)."""
        gc_timetable = GcTimetable()
        gc_timetable.start()
        try:
            return self._run(stop or threading.Event(), gc_timetable)
        finally:
            gc_timetable.stop()

    def _run(self, stop: threading.Event, gc_timetable: GcTimetable) -> int:
        try:
            src = self._open_input()
        except LiveError as exc:
            self._fail(str(exc))
            raise
        r, w = os.pipe()
        widen_pipe(w)
        widen_pipe(src.fileno())
        # the tee, in its own process, reads the input; the flow reader reads what it passes
        self._tee = TeeProcess(src.fileno(), w, self._ring, clock=self.clock, not_ours=(r,))
        os.close(w)  # the flow reader sees the end of the stream when the tee's end shuts
        src.close()
        pipe = os.fdopen(r, "rb")
        reader = threading.Thread(target=self._read_flows, args=(pipe,), name="marsad-meter",
                                  daemon=True)
        reader.start()
        self.state = ProbeState.RUNNING
        self._write_status()
        next_status = self.clock() + self.cfg.status_interval_s
        failure: BaseException | None = None
        stopping = False
        try:
            while True:
                if stop.is_set() and not stopping:
                    stopping = True
                    self.state = ProbeState.STOPPING
                    self._stop_capture()
                    if self._proc is None:
                        break  # the tee is stopped: what it passed on is judged, no more
                try:
                    item = self._queue.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    failure = item
                    break
                while isinstance(item, tuple | Watermark):  # and whatever else is ready
                    self._take(item)
                    gc_timetable.tick()  # due however long the queue stays full
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        item = None
                if item is not None:
                    self._queue.put(item)
                gc_timetable.tick()
                now = self.clock()
                self._quiet_link(now)
                if (not self._tool_shown and self._proc is not None
                        and self._proc.poll() is None
                        and (self._frames() or now - self.started_at >= 1.0)):
                    self._show_tool_lines()  # tcpdump is capturing: show what it said
                if now >= next_status:
                    next_status = now + self.cfg.status_interval_s
                    self._health()
        finally:
            if self._proc is not None and self._proc.poll() is None:
                self._stop_capture()
            wait_s = 10.0 if self._proc is not None or not stopping else 0.5
            reader.join(timeout=wait_s)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
        # the input has ended (or the run stops): the ring is closed, the tee says all
        done = self._metered()
        self._tee_state = (self._tee.finish(done) if failure is None and not stopping
                           else self._tee.stop(done))
        if failure is None:
            self._emit(self.pipeline.finish())
        self._flush_ledger(final=True)
        if self._store is not None:  # the run's final figures (ledger entries, warnings)
            self._store.save_results(self._capture_id, AnalysisResult(
                [], [], Analysis([], {}), self._reader.status if self._reader else _no_status(),
                self._reader.stats if self._reader else _no_stats()), self._summary())
        if self._proc is not None:
            time.sleep(0.05)  # tcpdump's last statistics lines
        if self._stderr is not None:
            self._stderr.join(timeout=1)
        if failure is not None:
            if isinstance(failure, CaptureError):
                self._fail(self._capture_failure(failure))
                self._close()
                return 2
            self._fail(f"{failure}")
            self._close()
            raise failure
        if self._proc is not None:
            self._show_tool_lines()
            st = self.capture_stats
            log.info("tcpdump: %d packets captured, %d received by filter, %d dropped by "
                     "kernel, %d dropped by interface", st.captured, st.received, st.dropped,
                     st.if_dropped)
        code, notes = 0, []
        if self._proc is not None and not stopping and self._proc.returncode:
            # tcpdump does not end on its own: the interface went away, or it failed
            code = 3
            notes.append(f"{self.cfg.tcpdump} ended with status {self._proc.returncode} "
                         f"while capturing on {self.cfg.source}")
            log.error("%s", notes[-1])
        cut_at, cut_why = self.truncated()
        if cut_at is not None:
            code = 3
            notes.append(cut_why or f"the input stopped at byte {cut_at}")
            if self._tee_state.stopped_at is None:  # the tee logged its own
                log.error("input: %s", cut_why)
        if self.unledgered:
            code = 3
            notes.append(f"{self.unledgered} reported verdict(s) not in the ledger: "
                         f"{self._unledgered_why}")
            log.error("%d reported verdict(s) are not in the evidence ledger: %s",
                      self.unledgered, self._unledgered_why)
        self.state = ProbeState.STOPPED
        self.message = "; ".join([self._health_line() + ("; stopped" if stopping
                                                         else "; end of stream"), *notes])
        self._health(final=True)
        self._close()
        return code

    def truncated(self) -> tuple[int | None, str | None]:
        """(byte offset of the input where reading stopped early, why), or (None, None)
        when the input was read to its end."""
        state = self._tee_state
        if state.stopped_at is not None:
            return state.stopped_at, state.stop_message
        reader = self._reader
        if reader is not None and not reader.status.complete:  # a pcapng stream's damage
            return reader.status.stopped_at, reader.status.message
        return None, None

    def _stop_capture(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                # The packets of the kernel's last part-filled block reach tcpdump only
                # when the block times out: stopping sooner would lose them.
                time.sleep(KERNEL_BLOCK_TIMEOUT_S)
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGTERM)
        elif self._tee is not None:  # a stream: stop reading it where it is
            self._tee_state = self._tee.stop(self._metered())

    def _fail(self, message: str) -> None:
        self.state = ProbeState.ERROR
        self.message = message
        log.error("%s", message)
        with contextlib.suppress(OSError):
            self._write_status()

    def _close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._ledger is not None:
            self._ledger.close()

    # -- flows, calls, verdicts -------------------------------------------------------------
    def _take(self, item: tuple[FlowRecord, Observation] | Watermark) -> None:
        """A flow the reader ended (with its observation), or the reader's clock."""
        if isinstance(item, Watermark):
            for step in self.pipeline.advance(item):
                self._emit(step)
        else:
            self.pipeline.push(*item)

    def _newest(self) -> float:
        """The probe's clock for expiring calls: the newest packet's time, run on by the
        wall clock while a live link is quiet (:meth:`_quiet_s`)."""
        reader = self._reader
        newest = reader.stats.last_ts if reader is not None else 0.0
        return newest + self._quiet_s() if newest > 0 else 0.0

    def _quiet_s(self) -> float:
        """How long a live link has been quiet: wall-clock seconds since the last input
        arrived, once every packet that arrived is metered; 0 when reading a stream or a
        file (-r), whose time is its own, or while packets wait."""
        last = self._tee.last_arrival if self._tee is not None else 0.0
        if not self.cfg.interface or last <= 0 or self.backlog() > 0:
            return 0.0
        return max(0.0, self.clock() - last)

    def _quiet_link(self, now: float) -> None:
        """On a quiet live link, end the flows idle by the wall clock (no packet moves the
        capture clock on), at most once a second."""
        reader = self._reader
        if (reader is None or now < self._next_advance or self._quiet_s() < 1.0
                or not self._queue.empty()):
            return
        self._next_advance = now + 1.0
        ended, mark = reader.advance(self._newest())
        for rec in ended:
            self._take((rec.lightened(), self.pipeline.observe(rec)))
        if mark is not None:
            self._take(mark)

    def _emit(self, step: Step) -> None:
        """Write, count and store what the pipeline settled."""
        if not step:
            return
        self.flows_finished += len(step.flows)
        for f, _ in step.flows:
            self._first_ts = min(self._first_ts or f.first_ts, f.first_ts)
            self._last_ts = max(self._last_ts or f.last_ts, f.last_ts)
        for v in step.flow_verdicts.values():
            self._flow_verdicts[str(v.kind)] += 1
        for call in step.calls:
            self.calls += 1
            kind = str(call.verdict.kind)
            self.verdicts[kind] = self.verdicts.get(kind, 0) + 1
        # Each row is made once, for the store and the output alike.
        flows = {f.uid: (f, c) for f, c in step.flows}
        flows.update(step.window)  # a call's flows are stored again, carrying its uid
        flow_rows = {u: flow_row(f, c) for u, (f, c) in flows.items()}
        calls = [call.to_dict() for call in step.calls]
        verdicts = {u: v.to_dict() for u, v in step.flow_verdicts.items()}
        # Stored and ledgered before it is reported: a verdict printed is one on record.
        self._record(step, flows, flow_rows, calls, verdicts)
        rows = [{"record": "flow", **flow_rows[f.uid]} for f, _ in step.flows]
        rows += [{"record": "call", **d} for d in calls]
        rows += [{"record": "flow-verdict", "uid": u, **d} for u, d in verdicts.items()]
        write_jsonl(rows, self.out)
        self.out.flush()
        if self.metrics is not None:
            if step.flows:
                self.metrics.observe_flows([f for f, _ in step.flows],
                                           [c for _, c in step.flows])
            self.metrics.observe_calls(step.calls, finished=True)
            if step.flow_verdicts:
                vf = [step.window[u] for u in step.flow_verdicts]
                self.metrics.observe_flow_verdicts(
                    Analysis([], step.flow_verdicts).flow_verdict_list(),
                    [f for f, _ in vf], [c for _, c in vf])

    def _record(self, step: Step, flows: dict[str, tuple[FlowRecord, Classification]],
                flow_rows: dict[str, dict[str, Any]], calls: list[dict[str, Any]],
                verdicts: dict[str, dict[str, Any]]) -> None:
        """Store the step's flows (``flows``, their rows ``flow_rows``: read, not changed),
        calls and verdicts (their ``to_dict()``); queue ledger entries."""
        if self._ledger is not None:
            result = AnalysisResult([f for f, _ in flows.values()],
                                    [c for _, c in flows.values()],
                                    Analysis(step.calls, step.flow_verdicts),
                                    self._reader.status if self._reader else _no_status(),
                                    self._reader.stats if self._reader else _no_stats(),
                                    settings=self._settings)
            self._queue_ledger(result, {u: f for u, (f, _) in flows.items()})
        if self._store is not None:  # after the ledger: the summary counts its entries
            own = step.flow_verdicts
            self._store.save_rows(
                self._capture_id, [with_verdict(dict(flow_rows[u]), own.get(u)) for u in flows],
                calls, verdicts, self._summary())

    def _queue_ledger(self, result: AnalysisResult, by_uid: dict[str, FlowRecord]) -> None:
        """Queue the ledger entries of a step's verdicts and append those whose packets are
        in closed ring files (the open file is closed for them first)."""
        from api.evidence import ledger_items
        for uid, verdict, evidence in ledger_items(result, self.policy):
            uids = evidence.get("flow_uids") or [uid]
            frames = [(by_uid[u].first_frame, by_uid[u].last_frame) for u in uids
                      if u in by_uid]
            if not frames:
                continue
            first = min(a for a, _ in frames)
            last = max(z for _, z in frames)
            self._pending_ledger.append((uid, verdict, evidence, first, last))
        if self._pending_ledger and self.cfg.ring is not None and self._tee is not None:
            # the packets behind the verdicts go into a closed file now
            self._tee_state = self._tee.seal(max(p[4] for p in self._pending_ledger),
                                             self._metered())
        self._flush_ledger()

    def _flush_ledger(self, final: bool = False) -> None:
        """Append the pending entries whose frames are all in closed ring files.

        An entry that can never be appended (no ring, a ring that stopped keeping packets
        before its frames, files deleted by the size budget, or the end of the run) is
        counted in :attr:`unledgered` and logged as an error: a verdict once reported is
        in the ledger with its packets, or the probe says why not."""
        if self._ledger is None or not self._pending_ledger:
            return
        lost: list[tuple[str, Verdict, dict[str, Any], int, int]] = []
        why = ""
        if self.cfg.ring is None:
            lost, self._pending_ledger = self._pending_ledger, []
            self._lose(len(lost), "no capture ring is kept (--no-ring)")
            return
        tee = self._tee_state
        closed = tee.ring_closed_through
        ready = [p for p in self._pending_ledger if p[4] <= closed]
        rest = [p for p in self._pending_ledger if p[4] > closed]
        if rest and (final or tee.ring_disabled is not None):
            lost, rest = rest, []
            why = tee.ring_disabled or "their packets are in no closed ring file"
        self._pending_ledger = rest
        spans = {(p[3], p[4]): tee.spanning(p[3], p[4]) for p in ready}
        if lost:
            self._lose(len(lost), why)
        from policy.ledger import NewEntry
        gone = 0
        entries: list[NewEntry] = []
        for uid, verdict, evidence, first, last in ready:
            files = spans[(first, last)]
            holder = next((f for f in files if f.first_frame <= last <= f.last_frame), None)
            if holder is None or holder.sha256 is None:
                gone += 1
                continue
            ev = dict(evidence)
            ev["ring"] = [{"file": f.name, "sha256": f.sha256, "first_frame": f.first_frame,
                           "packets": f.packets} for f in files]
            entries.append(NewEntry(holder.sha256, uid, verdict.kind, verdict.reasons, ev))
        # one transaction for the step's verdicts: one flush to disk, not one each
        self.ledger_appended += len(self._ledger.append_many(entries))
        if gone:
            self._lose(gone, "the ring no longer holds their packets (its size budget deleted "
                             "the files)" if tee.ring_disabled is None
                      else tee.ring_disabled)

    def _lose(self, n: int, why: str) -> None:
        self.unledgered += n
        self._unledgered_why = why
        log.error("%d reported verdict(s) not put in the evidence ledger: %s", n, why)

    # -- health ------------------------------------------------------------------------------
    def lag_s(self) -> float:
        """Processing lag: how long the oldest packet received but not yet metered has been
        waiting (wall clock); 0 when every packet received is metered. Packet times play
        no part: a capture replayed with -r is not "behind" for being old."""
        oldest = self._tee_state.oldest_waiting  # as of the tee's last answer
        if self.backlog() == 0 or oldest is None:
            return 0.0
        return max(0.0, self.clock() - oldest)

    def backlog(self) -> int:
        """Packets received but not metered yet."""
        if self._reader is None:
            return 0
        return max(0, self._frames() - self._metered())

    def _frames(self) -> int:
        """Packets the tee has passed on."""
        return self._tee.frames if self._tee is not None else 0

    def _metered(self) -> int:
        """Packets the flow reader has metered."""
        reader = self._reader
        return reader.stats.packets if reader is not None else 0

    def _refresh(self) -> None:
        """Ask the tee how the stream and the ring stand (the ring closes a file open long
        enough meanwhile)."""
        if self._tee is not None:
            self._tee_state = self._tee.report(self._metered())

    def _health_line(self) -> str:
        reader = self._reader
        weird = reader.stats.weird if reader is not None else 0
        parts = [f"lag {self.lag_s():.1f} s", f"backlog {self.backlog()} packets",
                 f"{weird} weird packets", f"ledger {self.ledger_appended}"]
        stream = self._tee_state
        if self.unledgered:
            parts.append(f"{self.unledgered} verdict(s) NOT in the ledger")
        if stream.skipped_bytes:
            parts.append(f"{stream.skipped_bytes} damaged bytes skipped")
        if stream.time_jumps:
            parts.append(f"{stream.time_jumps} timestamp jumps")
        if stream.sections > 1:
            parts.append(f"{stream.sections} concatenated captures")
        if self.cfg.ring is not None:
            parts.append(f"ring {len(stream.ring_files)} closed files")
            if stream.ring_disabled:
                parts.append(stream.ring_disabled)
        st = self.capture_stats
        if self._proc is not None:
            parts.append(f"kernel received {st.received} dropped {st.dropped}")
        return ", ".join(parts)

    def _health(self, final: bool = False) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(signal.SIGUSR1)
        if not final:
            self._refresh()
        self._flush_ledger()
        reader = self._reader
        behind = self.backlog() > 0 and self.lag_s() > self.cfg.behind_s
        if behind and not self._behind:
            log.warning("the probe falls behind: %s", self._health_line())
        elif self._behind and not behind:
            log.warning("the probe caught up: %s", self._health_line())
        self._behind = behind
        st = self.capture_stats
        drops = st.dropped + st.if_dropped
        if drops > self._drops_shown:
            log.warning("the kernel dropped %d packets (%d in all)", drops - self._drops_shown,
                        drops)
            self._drops_shown = drops
        if not final:
            self.message = ("FALLING BEHIND: " if behind else "") + self._health_line()
        if self.metrics is not None:
            st = self.capture_stats
            if self._proc is not None:
                self.metrics.observe_capture(received=st.received,
                                             dropped=st.dropped + st.if_dropped)
            elif reader is not None:
                self.metrics.observe_capture(received=reader.stats.packets, dropped=0)
            if reader is not None:
                self.metrics.observe_meter(reader.stats, lag_s=self.lag_s())
            self.metrics.observe_probe(skipped_bytes=self._tee_state.skipped_bytes,
                                       time_jumps=self._tee_state.time_jumps,
                                       unledgered=self.unledgered)
        self._write_status()

    def status(self) -> ProbeStatus:
        """The probe's report on itself, as written to the status file."""
        reader = self._reader
        packets = reader.stats.packets if reader is not None else 0
        st = self.capture_stats
        tee = self._tee_state
        return ProbeStatus(
            state=self.state, interface=self.cfg.source, pid=os.getpid(),
            started_at=self.started_at, updated_at=self.clock(), packets=packets,
            bytes=self._tee.bytes_read if self._tee is not None else 0,
            dropped=st.dropped + st.if_dropped,
            flows_active=reader.meter.active_flows() if reader is not None else 0,
            flows_finished=self.flows_finished, calls=self.calls, verdicts=dict(self.verdicts),
            message=self.message, lag_s=round(self.lag_s(), 3),
            skipped_bytes=tee.skipped_bytes, time_jumps=tee.time_jumps,
            truncated_at=self.truncated()[0], ledgered=self.ledger_appended,
            unledgered=self.unledgered)

    def _summary(self) -> dict[str, Any]:
        """The capture row's summary, in the schema of an analysed upload's
        (:class:`api.schemas.CaptureSummary`) plus what only a live run has."""
        s = self.status()
        truncated_at, why = self.truncated()
        warnings = []
        if self.unledgered:
            warnings.append(f"{self.unledgered} reported verdict(s) not in the ledger: "
                            f"{self._unledgered_why}")
        if self._tee_state.skipped_bytes:
            warnings.append(f"{self._tee_state.skipped_bytes} damaged bytes skipped")
        return {"format": "pcap", "compressed": False, "packets": s.packets,
                "flows": s.flows_finished, "calls": s.calls,
                "weirds": self._reader.stats.weird if self._reader is not None else 0,
                "complete": truncated_at is None, "stopped_at": truncated_at,
                "message": why, "first_ts": self._first_ts, "last_ts": self._last_ts,
                "verdicts": s.verdicts, "flow_verdicts": dict(self._flow_verdicts),
                "ledger_entries": self.ledger_appended, "warnings": warnings,
                "live": True, "interface": s.interface, "dropped": s.dropped}

    def _active_flows(self) -> int:
        reader = self._reader
        return reader.meter.active_flows() if reader is not None else 0

    def _write_status(self) -> None:
        if self.cfg.data_dir is not None:
            write_probe_status(self.cfg.data_dir, self.status())
            if self.metrics is not None:
                write_probe_report(self.cfg.data_dir, self.cfg.probe_name,
                                   metrics=self.metrics,
                                   running=self.state in (ProbeState.STARTING,
                                                          ProbeState.RUNNING),
                                   interval_s=self.cfg.status_interval_s, now=self.clock())


def _diagnose_tcpdump(iface: str, tcpdump: str, said: Sequence[str], returncode: int | None,
                      fallback: str) -> str:
    """One line saying why tcpdump delivered no capture, from what it printed."""
    text = " ".join(said)
    low = text.lower()
    if "permission" in low or "operation not permitted" in low:
        return (f"no permission to capture on {iface}: run marsad probe as root, or give "
                f"tcpdump the capture capabilities CAP_NET_RAW and CAP_NET_ADMIN: "
                f"sudo setcap cap_net_raw,cap_net_admin=eip $(which {tcpdump})")
    if "no such device" in low or "doesn't exist" in low:
        return f"no interface named {iface!r} (ip link lists them)"
    first = next((line for line in said if not line.startswith("(")), None)
    if first is not None:
        return f"{tcpdump} could not capture on {iface}: {first.removeprefix('tcpdump: ')}"
    if returncode not in (None, 0):
        return f"{tcpdump} exited with status {returncode} before capturing on {iface}"
    return fallback


def _no_status() -> Any:
    from probe import ReadStatus
    return ReadStatus(source="-")


def _no_stats() -> Any:
    from probe import MeterStats
    return MeterStats()

