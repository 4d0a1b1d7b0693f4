"""Reading a capture end to end: source -> decoder -> meter -> flow records.

With ``workers=2`` the reading, record walking, decoding and batch preparation
run in a forked child process while this process keeps the flow table; the
child hands over :class:`~probe.prepare.Prepared` batches (columns and the few
payload bytes the records keep), never the capture buffer. The pipe between
them holds at most a batch or two, so memory stays bounded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from probe.decode import Decoder
from probe.errors import CaptureError, UnsupportedLinkType
from probe.meter import FlowMeter, MeterConfig, MeterStats, conn_rows
from probe.prepare import Prepared, prepare
from probe.records import FlowRecord, Weird
from probe.sources import CaptureSource, LinkType, ReadStatus, open_source

__all__ = ["CaptureRun", "FlowReader", "read_capture"]

SUPPORTED_LINKTYPES = frozenset(int(x) for x in LinkType)


def _heap_trimmer() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is no glibc.

    Metering frees many mid-sized numpy arrays per batch (gathered logs, batch columns);
    glibc keeps such freed memory in the heap for reuse, and with the heap fragmented
    the process's resident size only ever grows. Giving the free pages back after each
    few batches keeps the resident size nearer to what is really in use (on the benchmark
    capture, every 8th batch: about a sixth lower peak for no measurable time; after
    every batch the pages given back are faulted in again, which costs ~10 % of the run).
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


trim_heap = _heap_trimmer()
"""Return the heap's free pages to the system (no-op without glibc)."""

TRIM_EVERY = 8
"""Batches between two :func:`trim_heap` calls."""


def _check_linktypes(status: ReadStatus) -> None:
    if status.linktypes and not status.linktypes & SUPPORTED_LINKTYPES:
        kinds = ", ".join(str(x) for x in sorted(status.linktypes))
        raise UnsupportedLinkType(f"{status.source}: unsupported link type {kinds}")


def _prepared(src: CaptureSource, decoder: Decoder, idle_ns: np.ndarray,  # type: ignore[type-arg]
              n_payloads: int, snap: tuple[int, int, int]) -> Iterator[Prepared]:
    checked = False
    for batch in src.batches():
        if not checked:
            checked = True
            _check_linktypes(src.status)
        yield prepare(batch, decoder.decode(batch), idle_ns, n_payloads, snap)
    if not checked:
        _check_linktypes(src.status)


def _produce(src: CaptureSource, idle_ns: np.ndarray, n_payloads: int,  # type: ignore[type-arg]
             snap: tuple[int, int, int], conn: Connection) -> None:
    """Child process: read, decode and prepare batches, send them to the parent."""
    try:
        for i, p in enumerate(_prepared(src, Decoder(), idle_ns, n_payloads, snap), 1):
            conn.send(("batch", p, src.status.bytes_read))
            del p
            if i % TRIM_EVERY == 0:
                trim_heap()
        conn.send(("end", src.status, 0))
    except CaptureError as exc:
        conn.send(("capture-error", f"{type(exc).__name__}|{exc}", 0))
    except BrokenPipeError:
        pass
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}", 0))
    finally:
        conn.close()


def _widen_pipe(fd: int) -> None:
    """Give the pipe a few MiB of buffer (Linux) so a batch crosses in few system calls."""
    try:
        import fcntl
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, 1031, min(limit, 8 << 20))  # F_SETPIPE_SZ
    except (OSError, ValueError, ImportError):
        pass


class FlowReader:
    """Iterate the flows of a capture as they end.

    ``progress`` (optional) is called after each batch with the bytes of input
    consumed so far. ``workers=2`` reads and decodes in a second process.
    After iteration, :attr:`status` says whether the capture was read
    completely, :attr:`stats` holds the counters and :attr:`weirds` the
    decoding problems that belong to no flow.
    """

    def __init__(self, source: str | Path | BinaryIO, config: MeterConfig | None = None,
                 progress: Callable[[int], None] | None = None, workers: int = 1) -> None:
        self.config = config or MeterConfig()
        self._src = open_source(source, self.config.chunk_size)
        self.meter = FlowMeter(self.config)
        self._progress = progress
        self._workers = workers if "fork" in mp.get_all_start_methods() else 1
        self._final_status: ReadStatus | None = None

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
        batches = self._inline() if self._workers <= 1 else self._forked()
        for i, p in enumerate(batches, 1):
            yield from self.meter.apply(p)
            del p
            if i % TRIM_EVERY == 0:
                trim_heap()
        trim_heap()  # the end of input empties the table: the peak is about to come
        for i, rec in enumerate(self.meter.finish(), 1):
            yield rec
            if i % (TRIM_EVERY * 1024) == 0:
                trim_heap()

    def conn_rows(self) -> Iterator[dict[str, Any]]:
        """Iterate the flows as they end, as their conn.log columns only
        (:meth:`FlowRecord.conn_dict`), made straight from the flow table's columns:
        no record, payload sample or timing series is built (what ``marsad flows``
        prints; a third less work in the metering process)."""
        batches = self._inline() if self._workers <= 1 else self._forked()
        for i, p in enumerate(batches, 1):
            for e in self.meter.apply_gathered(p):
                yield from conn_rows(e)
            del p
            if i % TRIM_EVERY == 0:
                trim_heap()
        for e in self.meter.finish_gathered():
            yield from conn_rows(e)

    def _inline(self) -> Iterator[Prepared]:
        cfg = self.config
        for p in _prepared(self._src, Decoder(), self.meter.idle_ns, cfg.payload_samples,
                           self.meter.snaps):
            yield p
            if self._progress is not None:
                self._progress(self._src.status.bytes_read)

    def _forked(self) -> Iterator[Prepared]:
        cfg = self.config
        ctx = mp.get_context("fork")
        recv, send = ctx.Pipe(duplex=False)
        _widen_pipe(send.fileno())
        sys.stdout.flush()
        sys.stderr.flush()
        proc = ctx.Process(target=_produce, name="marsad-reader", daemon=True,
                           args=(self._src, self.meter.idle_ns, cfg.payload_samples,
                                 self.meter.snaps, send))
        proc.start()
        send.close()
        self._src.close()
        try:
            while True:
                try:
                    kind, body, done = recv.recv()
                except EOFError:
                    raise CaptureError(f"{self._src.status.source}: reader process ended "
                                       f"unexpectedly") from None
                if kind == "batch":
                    yield body
                    if self._progress is not None:
                        self._progress(done)
                elif kind == "end":
                    self._final_status = replace(body)
                    return
                elif kind == "capture-error":
                    name, _, msg = body.partition("|")
                    raise (UnsupportedLinkType(msg) if name == "UnsupportedLinkType"
                           else CaptureError(msg))
                else:
                    raise RuntimeError(f"reader process failed: {body}")
        finally:
            recv.close()
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()


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
