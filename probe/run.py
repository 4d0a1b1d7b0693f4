"""Reading a capture end to end: source -> decoder -> meter -> flow records.

With ``workers=2`` the reading, record walking, decoding and batch preparation
run in a forked child process while this process keeps the flow table; the
child hands over :class:`~probe.prepare.Prepared` batches (columns and the few
payload bytes the records keep), never the capture buffer, their arrays out of
band (:mod:`probe.wire`). A thread writes them to the pipe; the pipe and that thread
hold at most a batch or two, so memory stays bounded.

:meth:`FlowReader.observed` also lets the child, which has time to spare,
observe part of the finished flows (the classifier's order-free half of the
work): chunks of them go back to it as columns (:class:`~probe.meter.Ended`). What
crosses either way is one of the typed messages of :mod:`probe.wire`.

However the flows are asked for (records, records with watermarks, observed records,
conn.log rows), one loop meters the batches and empties the table at the end of input
(:meth:`FlowReader._steps`), reading in this process or taking the reader process's
messages.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

import numpy as np

from probe.decode import Decoder
from probe.errors import CaptureError, UnsupportedLinkType
from probe.meter import (
    NO_OPEN_FLOWS,
    Ended,
    FlowMeter,
    MeterConfig,
    MeterStats,
    OpenFlows,
    build_records,
    conn_rows,
)
from probe.plugins import PayloadPolicy
from probe.prepare import Prepared, prepare
from probe.records import FlowRecord, Weird
from probe.ring import ring_origin
from probe.sources import CaptureSource, LinkType, ReadStatus, open_source
from probe.speed import TRIM_EVERY, GcTimetable, end_with_parent, trim_heap, widen_pipe
from probe.wire import (
    Batch,
    CaptureFailed,
    End,
    FromReader,
    NoMoreRequests,
    Observe,
    Observed,
    ReaderFailed,
    SetObserver,
    ToReader,
    frames,
    recv_from_reader,
    recv_request,
    send_frames,
    send_message,
)

__all__ = ["CaptureRun", "FlowReader", "Watermark", "default_workers", "read_capture"]

T = TypeVar("T")

SUPPORTED_LINKTYPES = frozenset(int(x) for x in LinkType)

SHARE_AHEAD = 3
"""Chunks of finished flows :meth:`FlowReader.observed` lets wait in the reader process."""

OUTBOX_DEPTH = 3
"""Batches the reader process may have pickled and queued beyond the one being written:
they absorb the bursts of flows ending in this process (a few MiB each)."""

EOF_CHUNK = 256
"""Flows per chunk when :meth:`FlowReader.observed` empties the table at the end of input:
each chunk waiting for the reader process is held here, and once more while it is sent,
so the chunk is small; and small chunks let both processes run out of flows at about the
same time."""

FINISH_CHUNK = 2048
"""Flows per chunk when the end of input empties the table otherwise."""

TRIM_EVERY_CHUNKS = 4
"""Chunks of flows emptied at the end of input between two :func:`trim_heap` calls."""


@dataclass(frozen=True, slots=True)
class Watermark:
    """The flow table's clock after a batch: the capture time of the newest packet metered.

    Every flow whose timeout had run out by then (``last_ts + timeout_s < ts``, the
    timeout by :meth:`MeterConfig.timeout_s`) has ended and been handed out before it, so a
    consumer can settle everything older without knowing how the input was cut in batches.
    """

    ts: float
    """Seconds since the epoch."""
    open_udp: OpenFlows = NO_OPEN_FLOWS
    """The UDP flows not yet ended, their endpoints and starts: the flows that may still
    come out after the watermark's time."""


def _check_linktypes(status: ReadStatus) -> None:
    if status.linktypes and not status.linktypes & SUPPORTED_LINKTYPES:
        kinds = ", ".join(str(x) for x in sorted(status.linktypes))
        raise UnsupportedLinkType(f"{status.source}: unsupported link type {kinds}")


def _prepared(src: CaptureSource, decoder: Decoder, idle_ns: np.ndarray,  # type: ignore[type-arg]
              n_payloads: int, snap: tuple[int, int, int], payloads: PayloadPolicy
              ) -> Iterator[Prepared]:
    checked = False
    ts_last: int | None = None
    for batch in src.batches():
        if not checked:
            checked = True
            _check_linktypes(src.status)
        yield prepare(batch, decoder.decode(batch), idle_ns, n_payloads, snap, payloads,
                      ts_last)
        if len(batch):
            ts_last = int(batch.ts_ns[-1])
    if not checked:
        _check_linktypes(src.status)


def _produce(src: CaptureSource, idle_ns: np.ndarray,  # type: ignore[type-arg]
             n_payloads: int, snap: tuple[int, int, int], payloads: PayloadPolicy,
             conn: Connection, requests: Connection | None,
             observe: Callable[[FlowRecord], Any] | None, not_ours: tuple[int, ...] = (),
             parent: int = 0, timetable: GcTimetable | None = None) -> None:
    """Child process: read, decode and prepare batches, send them to the parent.

    With ``requests``, also observe the finished flows the parent sends (gathered
    columns, :class:`~probe.meter.Ended`): between batches whatever has arrived, and
    after the end of input until the parent closes the pipe. ``observe`` may instead
    come as the first request (a process started before its observer was known)."""
    end_with_parent(parent)
    for fd in not_ours:  # e.g. the write end of the pipe this process reads: EOF needs it shut
        with contextlib.suppress(OSError):
            os.close(fd)
    out = _Outbox(conn, OUTBOX_DEPTH)
    serving = _Serving(observe)
    if timetable is not None:
        timetable.start()
    try:
        for i, p in enumerate(_prepared(src, Decoder(), idle_ns, n_payloads, snap, payloads),
                             1):
            out.send(Batch(p, src.status.bytes_read, out.queued))
            del p
            if requests is not None:
                while requests.poll():
                    if not serving.serve(requests, out):
                        requests = None
                        break
            if i % TRIM_EVERY == 0:
                trim_heap()
            if timetable is not None:
                timetable.tick()
        out.send(End(src.status))
        trim_heap()
        if requests is not None:
            while serving.serve(requests, out):
                pass
    except CaptureError as exc:
        out.send(CaptureFailed.of(exc))
    except BrokenPipeError:
        pass
    except Exception as exc:  # reported to the parent, which raises it
        out.send(ReaderFailed(f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


class _Outbox:
    """The reader process's messages to the parent: pickled by the caller, written to the
    pipe by a thread, so that reading and preparing the next batch go on while the parent
    is still busy with the one before (the pipe holds about one batch). At most
    ``depth`` pickled messages wait beyond the one being written.

    Once the parent has closed its end, the messages still queued are dropped and
    :meth:`send` raises :class:`BrokenPipeError`."""

    def __init__(self, conn: Connection, depth: int = 1) -> None:
        self._conn = conn
        self._queue: queue.Queue[list[bytes | memoryview] | None] = queue.Queue(maxsize=depth)
        self._broken = False
        self._thread = threading.Thread(target=self._write, name="marsad-outbox", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Messages waiting to be written (not counting the one being written)."""
        return self._queue.qsize()

    def send(self, msg: FromReader) -> None:
        if self._broken:
            raise BrokenPipeError("the parent process closed the pipe")
        self._queue.put(frames(msg))

    def _write(self) -> None:
        while (data := self._queue.get()) is not None:
            if not self._broken:
                try:
                    send_frames(self._conn, data)
                except OSError:
                    self._broken = True

    def close(self) -> None:
        """Write what is queued, then close the pipe."""
        self._queue.put(None)
        self._thread.join()
        self._conn.close()


class _Serving:
    """The reader process's side of the requests: the observer, and what it answers."""

    def __init__(self, observe: Callable[[FlowRecord], Any] | None) -> None:
        self.observe = observe

    def serve(self, requests: Connection, out: _Outbox) -> bool:
        """Take one request: observe a chunk of finished flows and send the observations,
        or keep the observer sent; False once the parent sends no more."""
        try:
            msg = recv_request(requests)
        except EOFError:
            return False
        if isinstance(msg, NoMoreRequests):
            return False
        if isinstance(msg, SetObserver):
            self.observe = msg.observe
            return True
        if self.observe is None:
            return False
        out.send(Observed(msg.seq, [self.observe(r) for r in build_records(msg.ended)]))
        del msg
        trim_heap()  # what the chunk's records took is free again: give it back
        return True


class _Step(NamedTuple):
    """What one turn of :meth:`FlowReader._steps` did to the flow table."""

    ended: list[Ended]
    """The flows it ended, as columns."""
    mark: Watermark | None
    """The table's clock after a batch (asked for, and a batch was metered)."""
    eof: bool
    """A chunk of the flows the end of input empties from the table."""


class FlowReader:
    """Iterate the flows of a capture as they end.

    A file of a live capture's ring (listed in the ``index.json`` beside it) is read with
    the live stream's identity (:func:`probe.ring.ring_origin`, unless ``config`` names
    one), so that its flows get the uids the live probe gave them, whoever reads it.

    ``progress`` (optional) is called after each batch with the bytes of input
    consumed so far. ``workers=2`` reads and decodes in a second process.
    After iteration, :attr:`status` says whether the capture was read
    completely, :attr:`stats` holds the counters and :attr:`weirds` the
    decoding problems that belong to no flow.
    """

    def __init__(self, source: str | Path | BinaryIO, config: MeterConfig | None = None,
                 progress: Callable[[int], None] | None = None, workers: int = 1,
                 not_ours: tuple[int, ...] = ()) -> None:
        self.config = config or MeterConfig()
        if isinstance(source, str | Path) and str(source) != "-" and not self.config.origin:
            origin = ring_origin(source)
            if origin is not None:  # a file of a live capture's ring: the live probe's uids
                self.config = replace(self.config, origin=origin)
        self.not_ours = not_ours
        """File descriptors the reader process closes first (``workers=2``): the write end
        of a pipe it reads, which it would otherwise keep open, so that it never sees EOF."""
        self.gc_timetable: GcTimetable | None = None
        """Cyclic garbage collection by the clock in the reader process (a live capture,
        which runs as long as it runs); None leaves the collector as the process found it."""
        self._src = open_source(source, self.config.chunk_size,
                                self.config.max_decompressed_bytes)
        self.meter = FlowMeter(self.config)
        self._progress = progress
        self._workers = workers if "fork" in mp.get_all_start_methods() else 1
        self._final_status: ReadStatus | None = None
        self._started: _ReaderProcess | None = None
        self._lock = threading.Lock()
        self._finishing = False

    def start(self, stream_too: bool = False) -> None:
        """Start the reader process now (``workers=2`` on a capture file; otherwise
        nothing), so that reading goes on while the caller finishes setting up (imports,
        tables): :meth:`observed` later hands it its observer. Iterating without
        observing works too (the process answers no requests then).

        ``stream_too`` starts it on a pipe or socket as well, and it then observes part of
        the flows as on a file (it takes a share only when it has batches queued, i.e.
        is not waiting for input); a caller that holds the write end of the pipe
        (``not_ours``) keeps it open until the process has started."""
        if self._started is not None or self._workers <= 1:
            return
        if not self._src.stream or stream_too:
            self._started = _ReaderProcess(self, None, requests=True)

    def close(self) -> None:
        """End a reader process started (:meth:`start`) and never iterated: the caller
        failed before reading (a policy that does not load); its source is closed."""
        proc, self._started = self._started, None
        if proc is not None:
            proc.close()
        self._src.close()

    def _reader_process(self, observe: Callable[[FlowRecord], Any] | None) -> _ReaderProcess:
        """The started reader process, given ``observe``, or a new one."""
        proc, self._started = self._started, None
        if proc is None:
            return _ReaderProcess(self, observe)
        if observe is not None:
            proc.set_observer(observe)
        return proc

    @property
    def status(self) -> ReadStatus:
        return self._final_status or self._src.status

    @property
    def stats(self) -> MeterStats:
        return self.meter.stats

    @property
    def weirds(self) -> list[Weird]:
        return self.meter.weirds

    def __iter__(self) -> Iterator[FlowRecord]:
        for item in self._records_and_clock():
            if not isinstance(item, Watermark):
                yield item

    def _records_and_clock(self) -> Iterator[FlowRecord | Watermark]:
        proc = None if self._workers <= 1 else self._reader_process(None)
        try:
            for ended, mark, _ in self._steps(proc, FINISH_CHUNK, marks=True):
                for e in ended:
                    yield from build_records(e)
                del ended
                if mark is not None:
                    yield mark
        finally:
            if proc is not None:
                proc.close()

    def _steps(self, proc: _ReaderProcess | None, chunk: int, marks: bool = False,
               observing: bool = False) -> Iterator[_Step]:
        """The batch loop every way of iterating shares: meter each batch (read here, or by
        the reader process ``proc``) and hand on the flows it ended, with the table's clock
        after it when ``marks`` asks; then empty the table, ``chunk`` flows at a time.
        Unless it is ``observing`` for this process, ``proc`` is closed at the end of
        input, before the table is emptied: nothing more is asked of it.

        A message of ``proc`` that carries no batch (the answer to a request) is a step
        that ended nothing, so that what waited for it can go on. The table is changed
        under :attr:`_lock` (:meth:`advance` may run in another thread)."""
        messages = self._inline() if proc is None else proc.messages()
        batches = 0
        for msg in messages:
            if isinstance(msg, End):
                self._final_status = msg.status
                if proc is not None and not observing:
                    proc.close()
                break
            if not isinstance(msg, Batch):
                yield _Step([], None, False)
                continue
            with self._lock:
                ended = self.meter.apply_gathered(msg.prepared)
                mark = Watermark(self.meter.now, self.meter.open_udp()) if marks else None
            if self._progress is not None:
                self._progress(msg.bytes_read)
            del msg
            yield _Step(ended, mark, False)
            del ended
            batches += 1
            if batches % TRIM_EVERY == 0:
                trim_heap()
        with self._lock:
            self._finishing = True
        trim_heap()  # the end of input empties the table: the peak is about to come
        for i, e in enumerate(self.meter.finish_gathered(chunk), 1):
            yield _Step([e], None, True)
            del e
            if i % TRIM_EVERY_CHUNKS == 0:
                trim_heap()

    def _inline(self) -> Iterator[Batch | End]:
        """The messages a reader process would send, read in this process."""
        cfg = self.config
        for p in _prepared(self._src, Decoder(), self.meter.idle_ns, cfg.payload_samples,
                           self.meter.snaps, cfg.payloads):
            yield Batch(p, self._src.status.bytes_read, 0)
            del p
        yield End(self._src.status)

    def advance(self, now_s: float) -> tuple[list[FlowRecord], Watermark | None]:
        """End the flows idle as of ``now_s`` (see :meth:`FlowMeter.expire_until`) and return
        them with the watermark they stand for: for a live capture whose link is quiet,
        where no packet moves the capture clock on. Safe to call from another thread while
        this reader is iterated (the flows so ended do not come out of the iteration);
        nothing once the input ended."""
        with self._lock:
            if self._finishing or now_s <= self.meter.now:
                return [], None
            ended = self.meter.expire_until(now_s)
            return ended, Watermark(now_s, self.meter.open_udp())

    def observed(self, observe: Callable[[FlowRecord], T]
                 ) -> Generator[tuple[FlowRecord, T], None, None]:
        """Iterate the flows as they end, each with ``observe(flow)``
        (:meth:`observed_with_clock` without its watermarks)."""
        events = self.observed_with_clock(observe)
        try:
            for item in events:
                if not isinstance(item, Watermark):
                    yield item
        finally:
            events.close()

    def observed_with_clock(self, observe: Callable[[FlowRecord], T]
                            ) -> Generator[tuple[FlowRecord, T] | Watermark, None, None]:
        """Iterate the flows as they end, each with ``observe(flow)``.

        The flows come out lightened (:meth:`FlowRecord.lightened`: what ``observe`` was
        to take from their payload bytes, timing and RTP series has been taken). ``observe``
        must depend on the flow alone (not on the flows before it) and return a picklable
        value. With ``workers=2`` on a capture file, the reader process, which
        has time to spare (reading is the lighter half of the work, and after the end of
        input it has none), observes part of the flows: each chunk of finished flows goes
        to it while fewer than :data:`SHARE_AHEAD` chunks are waiting there (before the
        end of input, only when it is well ahead: it had another batch queued in front of
        the one that ended them; after it, only while the flows waiting there, the chunk's
        with them, are no more than those still in the table), and is observed here
        otherwise. Flows come out in the same order either way.

        After the flows each batch ended comes a :class:`Watermark`: every flow whose
        timeout (:meth:`~probe.meter.MeterConfig.timeout_s`) had run out by its time has
        come out before it. The flows the end of input empties from the table come after
        the last one.
        """
        if self._workers <= 1 or (self._src.stream and self._started is None):
            for item in self._records_and_clock():
                if isinstance(item, Watermark):
                    yield item
                else:
                    yield item.lightened(), observe(item)
            return
        proc = self._reader_process(observe)
        pending: deque[tuple[int, Ended | list[FlowRecord] | Watermark, list[Any] | None]
                       ] = deque()
        seq = 0

        def share(n: int, eof: bool) -> bool:
            """Whether the reader process is to observe the next ``n`` flows."""
            if not eof:
                # Only while the reader is well ahead (it had queued another batch in
                # front of the one just taken): observing then costs it nothing this
                # process waits for.
                return proc.outstanding < SHARE_AHEAD and proc.ahead > 0
            # The end of input: the flows waiting there must not outlast those still in
            # the table (each chunk leaves it as it is gathered), or this process ends up
            # waiting for them.
            return (proc.outstanding < SHARE_AHEAD
                    and proc.outstanding_flows + n <= self.meter.active_flows())

        def take(ended: list[Ended], eof: bool) -> None:
            nonlocal seq
            for e in ended:
                seq += 1
                if share(len(e), eof):
                    proc.request(seq, e)
                    pending.append((seq, e, None))
                else:
                    recs = build_records(e)
                    obs = [observe(r) for r in recs]
                    pending.append((seq, [r.lightened() for r in recs], obs))

        def ready() -> Iterator[tuple[FlowRecord, T] | Watermark]:
            while pending:
                n, body, obs = pending[0]
                if isinstance(body, Watermark):
                    pending.popleft()
                    yield body
                    continue
                if obs is None:
                    obs = proc.results.pop(n, None)
                    if obs is None:
                        return
                recs = build_records(body, light=True) if isinstance(body, Ended) else body
                pending.popleft()
                yield from zip(recs, obs, strict=True)

        try:
            for ended, mark, eof in self._steps(proc, EOF_CHUNK, marks=True, observing=True):
                take(ended, eof)
                del ended
                if mark is not None:
                    pending.append((0, mark, []))
                if eof:
                    while proc.poll():
                        proc.next()
                yield from ready()
            while pending:
                proc.next()
                yield from ready()
        finally:
            proc.close()

    def conn_rows(self) -> Iterator[dict[str, Any]]:
        """Iterate the flows as they end, as their conn.log columns only
        (:meth:`FlowRecord.conn_dict`), made straight from the flow table's columns:
        no record, payload sample or timing series is built (what ``marsad flows``
        prints)."""
        proc = None if self._workers <= 1 else self._reader_process(None)
        try:
            for ended, _, _ in self._steps(proc, FINISH_CHUNK, marks=False):
                for e in ended:
                    yield from conn_rows(e)
        finally:
            if proc is not None:
                proc.close()


class _ReaderProcess:
    """The forked reader process (:func:`_produce`) and the pipes to and from it.

    With ``observe``, chunks of finished flows can be handed to it (:meth:`request`); a
    thread sends them, so that this process never waits on the reader process while
    the reader process may be waiting for this one to take a batch."""

    def __init__(self, reader: FlowReader, observe: Callable[[FlowRecord], Any] | None,
                 requests: bool = False) -> None:
        cfg = reader.config
        ctx = mp.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        widen_pipe(send.fileno())
        req_recv = req_send = None
        if observe is not None or requests:
            req_recv, req_send = ctx.Pipe(duplex=False)
            widen_pipe(req_send.fileno())
        sys.stdout.flush()
        sys.stderr.flush()
        self._proc = ctx.Process(target=_produce, name="marsad-reader", daemon=True,
                                 args=(reader._src, reader.meter.idle_ns, cfg.payload_samples,
                                       reader.meter.snaps, cfg.payloads, send, req_recv,
                                       observe, reader.not_ours, os.getpid(),
                                       reader.gc_timetable))
        self._proc.start()
        send.close()
        reader._src.close()
        self.source = reader._src.status.source
        self.results: dict[int, list[Any]] = {}
        """Observations received, by request number."""
        self._asked: dict[int, int] = {}
        """The requests sent and not answered yet: how many flows each, by number."""
        self.ahead = 0
        """Batches the reader process had queued, not yet written, in front of the last
        message when it queued that one (none in front of an answer): how far it is ahead
        of this process."""
        self._queue: queue.SimpleQueue[ToReader | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None
        if req_recv is not None and req_send is not None:
            req_recv.close()
            self._sender = threading.Thread(target=self._send, args=(req_send,),
                                            name="marsad-requests", daemon=True)
            self._sender.start()

    def _send(self, conn: Connection) -> None:
        try:
            while (msg := self._queue.get()) is not None:
                send_message(conn, msg)
            send_message(conn, NoMoreRequests())
        except OSError:  # the reader process is gone; next() reports why
            pass
        finally:
            conn.close()

    def set_observer(self, observe: Callable[[FlowRecord], Any]) -> None:
        """Send the observer (pickled) to a process started without one."""
        self._queue.put(SetObserver(observe))

    def request(self, seq: int, ended: Ended) -> None:
        """Have the reader process observe these flows; the answer comes as
        ``results[seq]``, in the order asked."""
        self._asked[seq] = len(ended)
        self._queue.put(Observe(seq, ended))

    @property
    def outstanding(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._asked)

    @property
    def outstanding_flows(self) -> int:
        """The flows of those requests."""
        return sum(self._asked.values())

    def poll(self) -> bool:
        """Whether a message is waiting."""
        return self._recv.poll()

    def next(self) -> Batch | End | Observed:
        """The next message from the reader process; the observations of an
        :class:`Observed` are stored in :attr:`results` too. A failure it reports is
        raised here."""
        try:
            msg = recv_from_reader(self._recv)
        except EOFError:
            raise CaptureError(f"{self.source}: reader process ended unexpectedly") from None
        self.ahead = msg.queued if isinstance(msg, Batch) else 0
        if isinstance(msg, Observed):
            self.results[msg.seq] = msg.observations
            del self._asked[msg.seq]
        elif isinstance(msg, CaptureFailed):
            raise msg.error()
        elif isinstance(msg, ReaderFailed):
            raise RuntimeError(f"reader process failed: {msg.description}")
        return msg

    def messages(self) -> Iterator[Batch | End | Observed]:
        """The messages from the reader process up to the end of input (:class:`End`)."""
        while True:
            msg = self.next()
            yield msg
            if isinstance(msg, End):
                return

    def close(self) -> None:
        # This end first: a reader process blocked sending a batch then stops, and with it
        # anything the request thread may be blocked sending to it.
        self._recv.close()
        if self._sender is not None:
            self._queue.put(None)
            self._sender.join(timeout=5)
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


@dataclass(slots=True)
class CaptureRun:
    """Everything read from one capture."""

    flows: list[FlowRecord]
    """Finished flows, ordered by their first packet."""
    weirds: list[Weird]
    """Decoding problems that belong to no flow."""
    status: ReadStatus
    """Whether the capture was read completely, and where it stopped if not."""
    stats: MeterStats = field(default_factory=MeterStats)
    """Packet and flow counters."""

    def all_weirds(self) -> list[Weird]:
        """Every weird, those of flows included, by frame."""
        out = list(self.weirds)
        for f in self.flows:
            out.extend(f.weirds)
        return sorted(out, key=lambda w: w.frame)


def read_capture(source: str | Path | BinaryIO, config: MeterConfig | None = None,
                 workers: int = 1) -> CaptureRun:
    """Read a whole capture into memory. Raises :class:`~probe.errors.CaptureError` if it
    cannot be read at all; a damaged capture returns what came before the damage."""
    reader = FlowReader(source, config, workers=workers)
    flows = sorted(reader, key=lambda f: (f.first_frame, f.uid))
    return CaptureRun(flows, reader.weirds, reader.status, reader.stats)


def default_workers() -> int:
    """Two processes where there are two cores to run them."""
    return 2 if (os.cpu_count() or 1) >= 2 else 1
