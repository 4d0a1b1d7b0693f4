"""Background analysis of uploaded captures.

:class:`Jobs` takes in a capture file (an upload already on disk, or a file
named at start-up), keeps it under the data directory, records it in the store
as a queued job and analyses it on a worker thread with
:func:`api.pipeline.analyze_capture`: progress is written to the store as the
input is read; the flows, calls and verdicts are stored in one transaction;
each verdict other than ok is appended to the evidence ledger
(:func:`api.evidence.record_verdicts`: once per capture content and verdict).

A capture whose content (SHA-256) is already stored and not failed is not
analysed twice: the existing capture is returned.

On shutdown, a running analysis stops at its next batch and queued ones are not
started; they are all marked ``interrupted``, as are any a crashed run left
behind (:meth:`api.store.Store.interrupt_unfinished` at start).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Executor, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, BinaryIO

from api.evidence import EvidenceError, derivations, record_verdicts
from api.pipeline import AnalysisResult, analyze_capture, settings_configs
from api.store import CaptureRow, JobState, Store
from classifier.payloads import meter_config
from policy.errors import LedgerError
from policy.ledger import Derivation, Ledger
from policy.rules import Policy
from probe import MAX_DECOMPRESSED, CaptureError, open_source

__all__ = [
    "UPLOAD_PREFIX",
    "InflatesTooLarge",
    "Inflation",
    "Intake",
    "Jobs",
    "NotACaptureFile",
    "TooLarge",
    "Upload",
    "analyse_file",
]

log = logging.getLogger(__name__)

UPLOAD_PREFIX = ".upload-"
"""Prefix of capture files still being received (removed at start-up)."""

_CHUNK = 1 << 16
_PROGRESS_EVERY_S = 0.25


class TooLarge(Exception):
    """The capture is larger than the configured limit."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the capture is larger than the limit of {limit} bytes")
        self.limit = limit


class InflatesTooLarge(TooLarge):
    """A gzip-compressed capture decompresses to more than the configured limit."""

    def __init__(self, limit: int) -> None:
        Exception.__init__(self, f"the capture decompresses to more than the limit of {limit} "
                                 "bytes")
        self.limit = limit


class Inflation:
    """Counts what a capture decompresses to as its bytes arrive (nothing for one that is
    not gzip-compressed), and raises :class:`InflatesTooLarge` as soon as that passes
    ``limit``: a gzip bomb is refused after the few bytes that inflate past the limit,
    before it is stored or analysed. Output is counted and dropped a block at a time, so
    memory stays at one block. Bytes that are not valid gzip stop the count (the analysis
    reads what comes before them, as for any damaged capture)."""

    _BLOCK = 1 << 20

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        """Decompressed bytes so far."""
        self._head = b""
        self._z: Any = None
        self._state = "start"  # then "gzip", "plain" or "broken"

    def feed(self, data: bytes) -> None:
        """Count the next bytes of the capture."""
        if self._state == "start":
            self._head += data
            if len(self._head) < 2:
                return
            self._state = "gzip" if self._head[:2] == b"\x1f\x8b" else "plain"
            data, self._head = self._head, b""
            self._z = zlib.decompressobj(wbits=31)
        if self._state != "gzip":
            return
        try:
            self._inflate(data)
        except zlib.error:
            self._state = "broken"

    def _inflate(self, data: bytes) -> None:
        z = self._z
        while True:
            out = z.decompress(data, self._BLOCK)
            self.total += len(out)
            if self.total > self.limit:
                raise InflatesTooLarge(self.limit)
            if z.eof:  # a gzip file may hold several members, one after another
                data = z.unused_data
                z = self._z = zlib.decompressobj(wbits=31)
                if not data:
                    return
                continue
            data = z.unconsumed_tail
            if not data and len(out) < self._BLOCK:
                return


class NotACaptureFile(Exception):
    """The bytes received are not a pcap or pcapng capture (plain or gzip)."""


class _Stopping(Exception):
    """The service is shutting down: abandon the analysis."""


@dataclass(frozen=True, slots=True)
class Intake:
    """A capture written under the data directory, hashed, not yet recorded."""

    path: Path
    """Temporary file in the captures directory."""
    sha256: str
    """SHA-256 of its content."""
    size_bytes: int
    """Its size."""


def _suffix(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"\x1f\x8b":
        return ".pcap.gz"
    if head == b"\x0a\x0d\x0d\x0a":
        return ".pcapng"
    return ".pcap"


class Upload:
    """An upload being received: written to a temporary file, hashed and counted as it
    comes; more than ``limit`` bytes raise :class:`TooLarge`, a gzip capture inflating
    past its limit :class:`InflatesTooLarge` (``inflation``). Used as a context manager:
    the file is closed on the way out, and removed if the block raised."""

    def __init__(self, out: BinaryIO, path: Path, limit: int, inflation: Inflation) -> None:
        self._out = out
        self.path = path
        """The temporary file."""
        self.size = 0
        """Bytes written."""
        self._limit = limit
        self._inflation = inflation
        self._hash = hashlib.sha256()

    def write(self, block: bytes) -> None:
        """Take the next bytes of the upload."""
        self.size += len(block)
        if self.size > self._limit:
            raise TooLarge(self._limit)
        self._inflation.feed(block)
        self._hash.update(block)
        self._out.write(block)

    def sha256(self) -> str:
        """SHA-256 of what was written, in hex."""
        return self._hash.hexdigest()

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_exc: object) -> None:
        self._out.close()
        if kind is not None:
            self.path.unlink(missing_ok=True)


def analyse_file(path: str, policy: Policy, max_decompressed_bytes: int,
                 settings: Mapping[str, Any] | None = None) -> AnalysisResult:
    """A stored capture's analysis with the service's policy, one process: what a job
    hands to an executor's worker (a local process or a Dask worker). ``settings``: meter
    and pipeline settings other than the defaults, as a ledger entry records them
    (:func:`api.pipeline.settings_configs`; a :class:`ValueError` if they cannot be read)."""
    meter, pipeline = settings_configs(settings or {})
    return analyze_capture(path, policy=policy, pipeline=pipeline, workers=1,
                           config=replace(meter, max_decompressed_bytes=max_decompressed_bytes))


class Jobs:
    """Receives captures and analyses ``workers`` of them at once: on the job's own thread,
    or, given an ``executor`` (:func:`api.archive.make_executor`: local processes or a
    Dask cluster), on the executor's workers while the thread waits for the result."""

    def __init__(self, store: Store, ledger: Ledger, *, captures_dir: Path, policy: Policy,
                 workers: int = 1, max_upload_bytes: int,
                 max_decompressed_bytes: int = MAX_DECOMPRESSED,
                 retention: tuple[float | None, int | None] = (None, None),
                 clock: Callable[[], float] = time.time,
                 executor: Executor | None = None) -> None:
        self._executor = executor
        self._store = store
        self._ledger = ledger
        self.captures_dir = captures_dir
        self._policy = policy
        self.max_upload_bytes = max_upload_bytes
        self.max_decompressed_bytes = max_decompressed_bytes
        self._meter_config = meter_config(max_decompressed_bytes=max_decompressed_bytes)
        self._retention = retention
        self._clock = clock
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="marsad-job")
        self._futures: set[Future[None]] = set()
        self._futures_lock = threading.Lock()
        self._listeners: list[Callable[[AnalysisResult], None]] = []
        captures_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in captures_dir.glob(UPLOAD_PREFIX + "*"):
            stale.unlink(missing_ok=True)

    def add_listener(self, listener: Callable[[AnalysisResult], None]) -> None:
        """Call ``listener`` with every analysis stored (e.g. to update metrics); it runs on
        the worker thread and its exceptions are logged, not raised."""
        self._listeners.append(listener)

    # -- intake ----------------------------------------------------------------------------

    def new_upload(self) -> Upload:
        """A temporary file in the captures directory to receive an upload, hashed and
        bounded by ``max_upload_bytes`` as it is written (:class:`Upload`)."""
        fd, name = tempfile.mkstemp(prefix=UPLOAD_PREFIX, dir=self.captures_dir)
        return Upload(os.fdopen(fd, "wb"), Path(name), self.max_upload_bytes, self.inflation())

    def check(self, tmp: Path, sha256: str, size: int) -> Intake:
        """Check a received file is a capture; raises :class:`NotACaptureFile` (and
        removes the file) if not."""
        try:
            with open_source(tmp, chunk_size=64):
                pass
        except CaptureError as exc:
            tmp.unlink(missing_ok=True)
            reason = str(exc).removeprefix(str(tmp)).lstrip(": ")
            raise NotACaptureFile(reason) from exc
        return Intake(tmp, sha256, size)

    def inflation(self) -> Inflation:
        """A counter of what an incoming capture decompresses to, against the limit."""
        return Inflation(self.max_decompressed_bytes)

    def copy_in(self, source: Path) -> Intake:
        """Copy a local capture file into the captures directory (hashing it)."""
        with open(source, "rb") as fh:
            return self.copy_stream(fh)

    def copy_stream(self, src: IO[bytes]) -> Intake:
        """Copy a readable binary stream into the captures directory (hashing it) and
        check it is a capture."""
        with self.new_upload() as up:
            while block := src.read(_CHUNK):
                up.write(block)
        return self.check(up.path, up.sha256(), up.size)

    def accept(self, intake: Intake, filename: str) -> tuple[CaptureRow, bool]:
        """Record a checked capture and queue its analysis; returns the capture and True,
        or the stored capture with the same content and False."""
        existing = self._store.capture_by_sha256(intake.sha256)
        if existing is not None:
            intake.path.unlink(missing_ok=True)
            return existing, False
        capture_id = "P" + secrets.token_hex(8)
        final = self.captures_dir / (capture_id + _suffix(intake.path))
        os.replace(intake.path, final)
        row = self._store.add_capture(capture_id=capture_id, filename=filename[:255],
                                      path=str(final), sha256=intake.sha256,
                                      size_bytes=intake.size_bytes)
        self._submit(capture_id)
        return row, True

    def _submit(self, capture_id: str) -> None:
        fut = self._pool.submit(self.run, capture_id)
        with self._futures_lock:
            self._futures.add(fut)
        fut.add_done_callback(self._forget)

    def _forget(self, fut: Future[None]) -> None:
        with self._futures_lock:
            self._futures.discard(fut)

    # -- analysis --------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        """The policy the service judges with."""
        return self._policy

    def analyse(self, path: str | Path, progress: Callable[[int], None] | None = None,
                settings: Mapping[str, Any] | None = None) -> AnalysisResult:
        """Analyse a stored capture with the service's policy (one process), and with
        ``settings`` (as :func:`analyse_file` takes them) when given. On an executor,
        progress is not followed; a shutdown abandons the wait."""
        if self._executor is None:
            if settings:
                return analyse_file(str(path), self._policy, self.max_decompressed_bytes,
                                    settings)
            return analyze_capture(path, policy=self._policy, config=self._meter_config,
                                   workers=1, progress=progress)
        fut = self._executor.submit(analyse_file, str(path), self._policy,
                                    self.max_decompressed_bytes, settings)
        while True:
            try:
                result: AnalysisResult = fut.result(timeout=_PROGRESS_EVERY_S)
                return result
            except FutureTimeout:
                if self._stopping.is_set():
                    fut.cancel()
                    raise _Stopping from None

    def run(self, capture_id: str) -> None:
        """Analyse one queued capture (what a worker thread does)."""
        store = self._store
        if self._stopping.is_set() or not store.start_job(capture_id):
            return
        row = store.capture(capture_id)
        if row is None:
            return
        last = time.monotonic()

        def progress(done: int) -> None:
            nonlocal last
            if self._stopping.is_set():
                raise _Stopping
            now = time.monotonic()
            if now - last >= _PROGRESS_EVERY_S and row.size_bytes:
                last = now
                store.set_progress(capture_id, done / row.size_bytes)

        try:
            result = self.analyse(row.path, progress)
        except _Stopping:
            store.end_job(capture_id, JobState.INTERRUPTED,
                          "the service stopped during the analysis; upload the capture again")
            return
        except CaptureError as exc:
            store.end_job(capture_id, JobState.FAILED, str(exc).replace(row.path, row.filename))
            return
        except Exception as exc:
            log.exception("analysis of capture %s failed", capture_id)
            store.end_job(capture_id, JobState.FAILED,
                          f"internal error during the analysis: {type(exc).__name__}")
            return
        warnings: list[str] = []
        appended = self._record(result, warnings)
        try:
            store.save_results(capture_id, result, _summary(result, appended, warnings))
        except Exception as exc:
            log.exception("storing the results of capture %s failed", capture_id)
            store.end_job(capture_id, JobState.FAILED,
                          f"the results could not be stored: {type(exc).__name__}")
            return
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:
                log.exception("a listener failed on capture %s", capture_id)
        self.prune()

    def _record(self, result: AnalysisResult, warnings: list[str]) -> int:
        """Append the capture's verdicts to the ledger (those it does not hold yet)."""
        try:
            return len(record_verdicts(self._ledger, result, self._policy).appended)
        except (LedgerError, EvidenceError) as exc:
            warnings.append(f"verdicts not recorded in the evidence ledger: {exc}")
            return 0

    def derive(self, sha256: str, context: Mapping[str, Any] | None = None
               ) -> list[Derivation] | None:
        """Re-derive a stored capture's verdicts (for ledger verification), with the
        settings the entries recorded (``context``, :func:`policy.ledger.derivation_context`);
        None when the capture is no longer stored. Settings the service cannot read give
        no verdict (each entry then does not follow)."""
        row = self._store.capture_by_sha256(sha256)
        if row is None or not Path(row.path).is_file():
            return None
        settings = (context or {}).get("settings") or {}
        try:
            settings_configs(settings)  # checked here: analyse's own errors are not this
        except ValueError:
            return []
        try:
            result = self.analyse(row.path, settings=settings)
        except CaptureError:
            return None
        return derivations(result)

    # -- retention and lifetime ------------------------------------------------------------

    def prune(self) -> int:
        """Apply retention: delete old captures with their results and files."""
        max_age_s, max_captures = self._retention
        removed = self._store.prune(max_age_s=max_age_s, max_captures=max_captures)
        for row in removed:
            Path(row.path).unlink(missing_ok=True)
        return len(removed)

    def wait(self, timeout_s: float) -> bool:
        """Wait until no job is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._futures_lock:
                pending = list(self._futures)
            if not pending:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                pending[0].exception(timeout=left)
            except TimeoutError:
                return False
            except CancelledError:
                self._forget(pending[0])

    def shutdown(self) -> None:
        """Stop: abandon running analyses at their next batch, drop queued ones, and mark
        them all interrupted."""
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._store.interrupt_unfinished()


def _summary(result: AnalysisResult, appended: int, warnings: list[str]) -> dict[str, Any]:
    st = result.status
    calls = result.analysis.calls
    times = [f.first_ts for f in result.flows] + [f.last_ts for f in result.flows]
    return {
        "format": st.format, "compressed": st.compressed, "packets": result.stats.packets,
        "flows": len(result.flows), "calls": len(calls), "weirds": result.stats.weird,
        "complete": st.complete, "stopped_at": st.stopped_at, "message": st.message,
        "first_ts": min(times) if times else None, "last_ts": max(times) if times else None,
        "verdicts": dict(Counter(str(c.verdict.kind) for c in calls)),
        "flow_verdicts": dict(Counter(str(v.kind) for v in
                                      result.analysis.flow_verdicts.values())),
        "ledger_entries": appended, "warnings": warnings,
    }

