"""The live probe's tee, in a process of its own: a pcap stream in; the stream checked and
mended (:class:`~probe.pcapstream.PcapStream`), kept in the capture ring
(:class:`~probe.ring.CaptureRing`) and passed on to the flow reader's pipe.

The tee runs beside the process that keeps the flow table and judges calls, not in one of
its threads: checking a stream and writing, hashing and syncing ring files is work of its
own, and in a thread of that process it would wait for (and hold up) the interpreter the
flow table, the pipeline and the store share.

What the probe's process needs of the tee crosses two ways:

* counters in shared memory, written after each chunk and read at any time without a
  round trip: frames, bytes read and the wall-clock time of the last arrival
  (:attr:`TeeProcess.frames`, :attr:`~TeeProcess.bytes_read`,
  :attr:`~TeeProcess.last_arrival`);
* a request and its answer, a :class:`TeeState`, on a pipe: :meth:`TeeProcess.report`
  (the stream's repairs, the ring's closed files, the processing lag; the ring closes a
  file that has been open long enough), :meth:`~TeeProcess.seal` (close the ring file
  holding a frame, so that a verdict resting on it goes into the ledger with the file's
  SHA-256 before it is reported), :meth:`~TeeProcess.finish` (the final state, once the
  input has ended) and :meth:`~TeeProcess.stop` (close the ring and end now: a stream
  read by the tee cannot be interrupted otherwise).

The tee process's main thread answers requests, another copies; they share the stream and
the ring under one lock, which the loop holds only while it checks a chunk and hands it to
the ring, never while it waits to read or to write.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from probe.pcapstream import PcapStream
from probe.ring import CaptureRing, RingFile, files_spanning
from probe.speed import end_with_parent

__all__ = ["TEE_READ_BYTES", "TeeProcess", "TeeState"]

log = logging.getLogger("marsad.probe")

TEE_READ_BYTES = 1 << 20
"""What the tee reads at once (the pipes it reads and writes hold as much)."""

_FRAMES, _BYTES, _ARRIVAL = range(3)
"""Slots of the shared counters."""


@dataclass(frozen=True, slots=True)
class TeeState:
    """The stream and the ring as the tee saw them when it answered."""

    frames: int = 0
    """Records passed on so far."""
    bytes_read: int = 0
    """Bytes of input read."""
    skipped_bytes: int = 0
    """Damaged bytes skipped (:attr:`PcapStream.skipped_bytes`)."""
    time_jumps: int = 0
    """Timestamp jumps seen (:attr:`PcapStream.time_jumps`)."""
    sections: int = 0
    """Captures concatenated in the stream."""
    stopped_at: int | None = None
    """Byte offset of the input where the stream was cut short, or None."""
    stop_message: str | None = None
    """Why it was cut short."""
    oldest_waiting: float | None = None
    """Wall-clock arrival of the oldest record not yet metered (the request says how
    many are), or None when every record that arrived is metered."""
    ring_files: tuple[RingFile, ...] = ()
    """The ring's closed files still kept, oldest first."""
    ring_closed_through: int = 0
    """The last frame held by a closed ring file."""
    ring_disabled: str | None = None
    """Why the ring keeps nothing, or None."""
    ended: bool = False
    """The input has ended (or the tee was stopped): nothing changes any more."""

    def spanning(self, first_frame: int, last_frame: int) -> list[RingFile]:
        """Closed ring files holding any frame of ``first..last``
        (:meth:`CaptureRing.spanning`)."""
        return files_spanning(self.ring_files, first_frame, last_frame)


# -- requests ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Report:
    done: int
    """Records metered so far (for the lag)."""


@dataclass(frozen=True, slots=True)
class _Seal:
    last_frame: int
    done: int


@dataclass(frozen=True, slots=True)
class _Finish:
    done: int
    wait_s: float
    """How long the tee waits for the end of its input before it stops there."""


@dataclass(frozen=True, slots=True)
class _Stop:
    done: int


_Request = _Report | _Seal | _Finish | _Stop


class TeeProcess:
    """The tee, forked at construction: it reads ``src_fd`` to its end and writes the clean
    stream to ``sink_fd``; with ``ring`` (made by the caller, so that a ring directory that
    cannot be made fails there, and used by the tee process alone from then on), it keeps
    the capture ring too. The caller closes
    its own copies of both descriptors once this returns (the flow reader sees the end of
    the stream only when every write end is shut). ``clock`` is the wall clock the ring
    and the arrival times use; ``not_ours`` are descriptors the tee process closes at
    once (the write end of a pipe it reads, held here: its end of input needs it shut)."""

    def __init__(self, src_fd: int, sink_fd: int, ring: CaptureRing | None, *,
                 clock: Callable[[], float] = time.time,
                 not_ours: tuple[int, ...] = ()) -> None:
        ctx = mp.get_context("fork")
        self._counters = ctx.RawArray("d", 3)
        self._conn, child = ctx.Pipe(duplex=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._proc = ctx.Process(target=_tee_main, name="marsad-tee", daemon=True,
                                 args=(src_fd, sink_fd, ring, clock, self._counters, child,
                                       self._conn, os.getpid(), not_ours))
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self.state = TeeState()
        """The latest answer (the final one once :attr:`TeeState.ended`)."""

    # -- shared counters --------------------------------------------------------------------
    @property
    def frames(self) -> int:
        """Records passed on so far."""
        return int(self._counters[_FRAMES])

    @property
    def bytes_read(self) -> int:
        """Bytes of input read so far."""
        return int(self._counters[_BYTES])

    @property
    def last_arrival(self) -> float:
        """Wall-clock time of the last chunk read (0 before the first)."""
        return float(self._counters[_ARRIVAL])

    # -- requests ---------------------------------------------------------------------------
    def report(self, done: int) -> TeeState:
        """The state now (``done``: records metered so far); the ring closes a file open
        for its ``file_age_s`` and deletes those past retention."""
        return self._ask(_Report(done))

    def seal(self, last_frame: int, done: int) -> TeeState:
        """Close the ring file holding ``last_frame`` (:meth:`CaptureRing.seal`)."""
        return self._ask(_Seal(last_frame, done))

    def finish(self, done: int, wait_s: float = 10.0) -> TeeState:
        """The final state, once the input has ended and the ring is closed; then the tee
        process ends. An input that has not ended within ``wait_s`` is stopped where it
        is (:meth:`stop`)."""
        state = self._ask(_Finish(done, wait_s), wait_s + 5.0)
        self.close()
        return state

    def stop(self, done: int) -> TeeState:
        """End the tee now, wherever the input is: after the write in flight (the flow
        reader gets whole records only), the ring closed."""
        state = self._ask(_Stop(done), 5.0)
        self.close()
        return state

    def close(self) -> None:
        """End the tee process (it ends on its own once its input has ended and this
        process has asked for the final state)."""
        with self._lock:
            with contextlib.suppress(OSError):
                self._conn.close()
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join()

    def _ask(self, req: _Request, timeout_s: float | None = None) -> TeeState:
        with self._lock:
            if self.state.ended or self._conn.closed:
                return self.state
            try:
                self._conn.send(req)
                if timeout_s is not None and not self._conn.poll(timeout_s):
                    return self.state
                answer: TeeState = self._conn.recv()
            except (OSError, EOFError):  # the tee process is gone: what it said last stands
                return self.state
            self.state = answer
            return answer


# -- the tee process -----------------------------------------------------------------------
def _noted_stream() -> PcapStream:
    """A stream checker whose notes are logged: a mended stream is a warning; the input cut
    short is an error, as it is however the input is framed."""
    def note(line: str) -> None:
        stopped = stream.stopped_at is not None and line == stream.stop_message
        (log.error if stopped else log.warning)("input: %s", line)
    stream = PcapStream(note=note)
    return stream


@dataclass
class _Tee:
    """The tee process's state: the stream, the ring, the arrivals not yet metered."""

    ring: CaptureRing | None
    clock: Callable[[], float]
    counters: Any
    stream: PcapStream = field(default_factory=_noted_stream)
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while a chunk is checked and kept: the stream and the ring are shared."""
    writing: threading.Lock = field(default_factory=threading.Lock)
    """Held while a chunk is passed on: a stop waits for it."""
    stopping: threading.Event = field(default_factory=threading.Event)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)
    """(frames of the stream so far, wall clock they arrived), one per chunk read."""
    ended: threading.Event = field(default_factory=threading.Event)

    def copy(self, src: int, sink: int) -> None:
        """Read ``src`` to its end; check, keep and pass on what it holds."""
        try:
            self._copy(src, sink)
        except Exception:  # a ring that cannot be written (disk full): the probe hears why
            log.exception("the capture stream's tee failed")
        finally:
            with contextlib.suppress(OSError):
                os.close(sink)
            with contextlib.suppress(OSError):
                os.close(src)
            self.end()

    def _copy(self, src: int, sink: int) -> None:
        stream, ring, counters = self.stream, self.ring, self.counters
        while True:
            try:
                data = os.read(src, TEE_READ_BYTES)
            except OSError as exc:
                log.error("capture stream unreadable: %s", exc)
                return
            now = self.clock()
            with self.lock:
                if self.ended.is_set():  # stopped meanwhile: the ring is closed
                    return
                clean = stream.feed(data) if data else stream.finish()
                if ring is not None and clean:
                    ring.feed(clean, stream.record_starts)
                frames = stream.frames
                if data and frames and (not self.arrivals or self.arrivals[-1][0] < frames):
                    self.arrivals.append((frames, now))
            counters[_BYTES] += len(data)
            if data:
                counters[_ARRIVAL] = now
            with self.writing:
                if self.stopping.is_set():
                    return
                passed = _pass_on(sink, clean)
            counters[_FRAMES] = frames
            if not data or not passed:
                return

    def end(self) -> None:
        """The input ended, or the tee is stopped: close the ring; nothing more is read."""
        with self.lock:
            try:
                if not self.ended.is_set() and self.ring is not None:
                    self.ring.close()
            except OSError as exc:
                log.error("the capture ring's last file could not be closed: %s", exc)
            finally:
                self.ended.set()

    def halt(self) -> None:
        """Stop where the input is: the write in flight completes (a reader that stopped
        reading is not waited for long), nothing more is passed on, the ring is closed."""
        self.stopping.set()
        self.writing.acquire(timeout=5.0)  # held until the process ends
        self.end()

    def state(self, done: int) -> TeeState:
        with self.lock:
            arrivals = self.arrivals
            while arrivals and arrivals[0][0] <= done:
                arrivals.popleft()
            s, ring = self.stream, self.ring
            return TeeState(
                frames=int(self.counters[_FRAMES]), bytes_read=int(self.counters[_BYTES]),
                skipped_bytes=s.skipped_bytes, time_jumps=s.time_jumps, sections=s.sections,
                stopped_at=s.stopped_at, stop_message=s.stop_message,
                oldest_waiting=arrivals[0][1] if arrivals else None,
                ring_files=tuple(ring.files) if ring is not None else (),
                ring_closed_through=ring.closed_through() if ring is not None else 0,
                ring_disabled=ring.disabled if ring is not None else None,
                ended=self.ended.is_set())

    def serve(self, conn: Connection) -> None:
        """Answer the probe's requests until it closes the pipe (or asks to stop)."""
        while True:
            try:
                req = conn.recv()
            except (EOFError, OSError):
                return
            if isinstance(req, _Seal):
                with self.lock:
                    if self.ring is not None:
                        self.ring.seal(req.last_frame)
            elif isinstance(req, _Report):
                with self.lock:
                    if self.ring is not None and not self.ended.is_set():
                        self.ring.tick()
            elif isinstance(req, _Finish):
                if not self.ended.wait(req.wait_s):
                    self.halt()
            elif isinstance(req, _Stop):
                self.halt()
            try:
                conn.send(self.state(req.done))
            except OSError:
                return
            if isinstance(req, _Finish | _Stop):
                return


def _tee_main(src: int, sink: int, ring: CaptureRing | None, clock: Callable[[], float],
              counters: Any, conn: Connection, parents_end: Connection, parent: int,
              not_ours: tuple[int, ...]) -> None:
    """The tee process: copy the stream in a thread, answer requests in this one."""
    end_with_parent(parent)
    parents_end.close()
    for fd in not_ours:
        with contextlib.suppress(OSError):
            os.close(fd)
    tee = _Tee(ring, clock, counters)
    copier = threading.Thread(target=tee.copy, args=(src, sink), name="marsad-tee-copy",
                              daemon=True)
    copier.start()
    tee.serve(conn)
    tee.end()  # stopped, or the probe is gone: the ring is closed (the end, if not yet)
    os._exit(0)  # the copying thread may be blocked reading a stream that never ends


def _pass_on(sink: int, data: bytes) -> bool:
    """Write all of ``data`` to the flow reader's pipe; False if the reader is gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(sink, view)
        except BrokenPipeError:
            return False
        view = view[n:]
    return True
