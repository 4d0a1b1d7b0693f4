"""The capture ring: a classic pcap stream kept as rotating files, so that the packets
behind any verdict of the retention window can be cut out again.

:class:`CaptureRing` splits the stream at record boundaries (walked with
:func:`probe.sources.record_offsets`, as the capture reader walks them) into
files rotated by size and by age, and deletes files beyond a total size budget
and a retention time on the wall clock (never packet time). Each file is named
after its first packet's time (``ring-20240102T030405.123456Z-000001.pcap``)
and the ring keeps ``index.json``: for every file its first frame number
(frames count from 1 over the whole stream, as in the flow records), packet
count, first and last packet time, size and, once closed, SHA-256. A pcapng or
compressed stream cannot be split here: the ring then keeps nothing and says
why (:attr:`CaptureRing.disabled`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from probe.prepare import origin_digest
from probe.sources import (
    MAX_RECORD,
    PCAP_HEADER,
    RECORD_HEADER,
    PcapHeader,
    pcap_header,
    record_headers,
    record_offsets,
)

__all__ = ["INDEX_FILE", "CaptureRing", "RingConfig", "RingFile", "files_spanning", "ring_origin",
           "ring_stream"]

NS = 1_000_000_000

INDEX_FILE = "index.json"
"""The ring's file list, rewritten atomically whenever it changes."""
MB = 1 << 20


@dataclass(frozen=True, slots=True)
class RingConfig:
    """Where and how long raw packets are kept."""

    directory: Path
    """Directory of the ring files (created if missing)."""
    file_bytes: int = 50 * MB
    """A file is closed before it would grow past this size."""
    file_age_s: float = 300.0
    """A file is closed once it covers this many seconds (capture time, or wall clock on a
    quiet link)."""
    total_bytes: int = 2048 * MB
    """The oldest closed files are deleted while the ring holds more than this."""
    keep_s: float = 86400.0
    """Closed files closed longer ago than this (wall clock) are deleted. Retention never
    follows packet time: one record stamped decades ahead (or a clock step) would
    otherwise age every file out at once."""


@dataclass(frozen=True, slots=True)
class RingFile:
    """One file of the ring."""

    name: str
    """File name in the ring directory."""
    first_frame: int
    """Stream frame number of its first packet (1-based)."""
    packets: int
    """Packets in it."""
    first_ts: float
    """Time of its first packet (seconds since the epoch)."""
    last_ts: float
    """Time of its last packet."""
    size: int
    """Bytes in it, header included."""
    sha256: str | None
    """SHA-256 of the file once closed; None while it is written."""
    closed_at: float | None = None
    """When the file was closed (wall clock, seconds since the epoch); None while open."""

    @property
    def last_frame(self) -> int:
        """Stream frame number of its last packet."""
        return self.first_frame + self.packets - 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "first_frame": self.first_frame, "packets": self.packets,
                "first_ts": self.first_ts, "last_ts": self.last_ts, "size": self.size,
                "sha256": self.sha256, "closed_at": self.closed_at}


@dataclass(slots=True)
class _Open:
    fh: BinaryIO
    hash: Any
    name: str
    first_frame: int
    first_ts: float
    opened_wall: float
    packets: int = 0
    last_ts: float = 0.0
    size: int = 0


class CaptureRing:
    """Splits a classic pcap stream into rotating files (see the module docstring).

    ``feed`` takes the stream in chunks of any size; ``tick`` closes a file that
    has been open ``file_age_s`` of wall clock; ``close`` closes the current file.
    ``on_close`` is called with each file as it is closed. A pcapng or gzip stream
    cannot be split at packet boundaries here: the ring then keeps nothing and
    :attr:`disabled` says why. ``fast=False`` walks every record with the per-record
    code alone (the reference the fast path, :meth:`_count_plain`, is held to).
    """

    def __init__(self, config: RingConfig, *, clock: Callable[[], float] = time.time,
                 on_close: Callable[[RingFile], None] | None = None,
                 fast: bool = True) -> None:
        self.cfg = config
        self._fast = fast
        self._clock = clock
        self._on_close = on_close
        config.directory.mkdir(parents=True, exist_ok=True)
        self._buf = bytearray()
        self._header: bytes | None = None
        self._head: PcapHeader
        self._seq = 0
        self._open: _Open | None = None
        self.files: list[RingFile] = []
        """Closed files still in the ring, oldest first."""
        self.disabled: str | None = None
        """Why the ring keeps nothing (not a classic pcap stream), or None."""
        self.frames = 0
        self.origin = b""
        """The stream's identity (:func:`~probe.prepare.origin_digest` of its first
        record), as the flow meter reading the same stream computes it; in ``index.json``
        so that a ring file analysed on its own names its flows as the live probe did
        (:func:`ring_origin`)."""
        """Packets seen in the stream."""
        self.newest_ts = 0.0
        """Time of the newest packet seen."""
        self.deleted = 0
        """Files deleted by the budget."""

    # -- the stream -----------------------------------------------------------------------
    def feed(self, data: bytes, starts: list[int] | None = None) -> None:
        """Take the next bytes of the stream. ``starts``, when the caller has walked the
        records already (:attr:`PcapStream.record_starts
        <probe.pcapstream.PcapStream.record_starts>`), are the offsets in ``data`` of its
        records, as :func:`~probe.sources.record_offsets` walks them from the end of the
        file header; ``data`` then holds whole records only."""
        if self.disabled is not None:
            return
        buf = self._buf
        if buf or not self._fast:
            starts = None
        buf += data
        pos = 0
        if self._header is None:
            if len(buf) < PCAP_HEADER:
                return
            head = pcap_header(buf)
            if head is None:
                self.disabled = ("the stream is not classic pcap (pcapng or compressed): "
                                 "no ring files are kept")
                self._buf = bytearray()
                return
            self._head = head
            self._header = bytes(buf[:PCAP_HEADER])
            pos = PCAP_HEADER
        head = self._head
        rec = head.record
        if starts is None:
            offs, end = record_offsets(buf, pos, head)
        else:
            offs, end = starts, len(buf)
        start = pos  # first byte not yet written
        cols = self._columns(buf, offs) if self._fast and offs else None
        i = 0
        while i < len(offs):
            if cols is not None:
                i = self._count_plain(i, start, *cols)
                if i == len(offs):
                    break
            pos = offs[i]
            i += 1
            sec, frac, incl, wire = rec.unpack_from(buf, pos)
            if incl > MAX_RECORD:
                self._corrupt(buf, start, pos)
                return
            nxt = pos + RECORD_HEADER + incl
            if not self.origin:  # the stream's first packet names every flow of it
                self.origin = origin_digest(head.linktype, sec * NS + frac * head.frac_ns,
                                            wire, bytes(buf[pos + RECORD_HEADER:nxt]))
            ts = sec + frac * head.frac_ns / 1e9
            cur = self._open
            if cur is not None and cur.packets and (
                    cur.size + (pos - start) + (nxt - pos) > self.cfg.file_bytes
                    or ts - cur.first_ts >= self.cfg.file_age_s):
                self._write(buf, start, pos)
                start = pos
                self._close_current()
                cur = None
            if cur is None:
                cur = self._start(ts)
            cur.packets += 1
            cur.last_ts = ts
            self.frames += 1
            self.newest_ts = max(self.newest_ts, ts)
        if end + RECORD_HEADER <= len(buf) and rec.unpack_from(buf, end)[2] > MAX_RECORD:
            self._corrupt(buf, start, end)
            return
        self._write(buf, start, end)
        del buf[:end]

    def _columns(self, buf: bytearray, offs: list[int]
                 ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64],
                            npt.NDArray[np.int64]]:
        """For the records at ``offs``: the third header field (the captured length, as
        :meth:`feed` reads it), the time, and the end of the record."""
        head = self._head
        sec, frac, incl, _wire = record_headers(buf, offs, head.order).T
        ts = sec + frac * head.frac_ns / 1e9
        return incl, ts, np.asarray(offs, dtype=np.int64) + RECORD_HEADER + incl

    def _count_plain(self, i: int, start: int, incl: npt.NDArray[np.int64],
                     ts: npt.NDArray[np.float64], nxt: npt.NDArray[np.int64]) -> int:
        """Count the records from the ``i``-th on that go into the open file as they are,
        all at once: :meth:`feed`'s per-record walk without its per-record Python, while
        the stream's origin is known and a file is open with packets in it. Returns the
        index of the first record left to the per-record walk: one that closes the file
        (by size or by capture time), one whose captured length is past
        :data:`~probe.sources.MAX_RECORD`, or ``i`` when no file is open."""
        cur = self._open
        if not self.origin or cur is None or not cur.packets:
            return i
        cfg = self.cfg
        stop = ((incl[i:] > MAX_RECORD) | (nxt[i:] - start > cfg.file_bytes - cur.size)
                | (ts[i:] - cur.first_ts >= cfg.file_age_s))
        j = len(incl) if not stop.any() else i + int(np.argmax(stop))
        if j > i:
            cur.packets += j - i
            cur.last_ts = float(ts[j - 1])
            self.frames += j - i
            self.newest_ts = max(self.newest_ts, float(ts[i:j].max()))
        return j

    def _corrupt(self, buf: bytearray, start: int, at: int) -> None:
        """A record header at ``at`` cannot be believed: keep what came before, stop."""
        self.disabled = (f"corrupt record header after frame {self.frames}: the ring "
                         f"stops here")
        self._write(buf, start, at)
        self.close()
        self._buf = bytearray()

    def _write(self, buf: bytearray, a: int, z: int) -> None:
        cur = self._open
        if cur is None or z <= a:
            return
        chunk = memoryview(buf)[a:z]
        cur.fh.write(chunk)
        cur.hash.update(chunk)
        cur.size += z - a
        chunk.release()

    def _start(self, ts: float) -> _Open:
        assert self._header is not None
        self._seq += 1
        stamp = datetime.fromtimestamp(ts, UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"ring-{stamp}-{self._seq:06d}.pcap"
        fh = open(self.cfg.directory / name, "wb")  # noqa: SIM115 - closed in _close_current
        h = hashlib.sha256(self._header)
        fh.write(self._header)
        self._open = _Open(fh, h, name, self.frames + 1, ts, self._clock(),
                           size=len(self._header))
        self._write_index()
        return self._open

    def _close_current(self) -> None:
        cur = self._open
        if cur is None:
            return
        self._open = None
        cur.fh.flush()
        os.fsync(cur.fh.fileno())
        cur.fh.close()
        done = RingFile(cur.name, cur.first_frame, cur.packets, cur.first_ts, cur.last_ts,
                        cur.size, cur.hash.hexdigest(), self._clock())
        self.files.append(done)
        self._prune()
        self._write_index()
        if self._on_close is not None:
            self._on_close(done)

    def _prune(self) -> None:
        """Delete the oldest closed files beyond the size budget and those closed more than
        ``keep_s`` ago by the wall clock (never by packet time)."""
        total = sum(f.size for f in self.files)
        horizon = self._clock() - self.cfg.keep_s
        while self.files and (total > self.cfg.total_bytes
                              or (self.files[0].closed_at or 0.0) < horizon):
            gone = self.files.pop(0)
            total -= gone.size
            (self.cfg.directory / gone.name).unlink(missing_ok=True)
            self.deleted += 1

    def flush(self) -> None:
        """Push what was written to the open file to the operating system."""
        if self._open is not None:
            self._open.fh.flush()

    def tick(self) -> None:
        """Close the open file if it has been open ``file_age_s`` of wall clock; delete the
        files past their retention (a quiet ring ages too)."""
        cur = self._open
        if cur is not None and self._clock() - cur.opened_wall >= self.cfg.file_age_s:
            self._close_current()
        else:
            self.flush()
            before = self.deleted
            self._prune()
            if self.deleted != before:
                self._write_index()

    def close(self) -> None:
        """Close the open file (the stream ended)."""
        self._close_current()

    def seal(self, last_frame: int) -> None:
        """Close the open file now if it holds ``last_frame``, so that evidence resting on
        that frame can be recorded with the file's SHA-256 at once."""
        cur = self._open
        if cur is not None and cur.first_frame <= last_frame:
            self._close_current()

    # -- lookups --------------------------------------------------------------------------
    def current(self) -> RingFile | None:
        """The file being written, if any."""
        cur = self._open
        if cur is None:
            return None
        return RingFile(cur.name, cur.first_frame, cur.packets, cur.first_ts, cur.last_ts,
                        cur.size, None)

    def closed_through(self) -> int:
        """The last frame number held by a closed file (0 if none)."""
        cur = self._open
        if cur is not None:
            return cur.first_frame - 1
        return self.frames if self._header is not None else 0

    def spanning(self, first_frame: int, last_frame: int) -> list[RingFile]:
        """Closed files still in the ring holding any frame of ``first..last``."""
        return files_spanning(self.files, first_frame, last_frame)

    def _write_index(self) -> None:
        files = [f.to_dict() for f in self.files]
        cur = self.current()
        if cur is not None:
            files.append(cur.to_dict())
        path = self.cfg.directory / INDEX_FILE
        tmp = path.with_suffix(".json.part")
        doc: dict[str, Any] = {"files": files}
        if self.origin:
            doc["origin"] = self.origin.hex()
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def files_spanning(files: Iterable[RingFile], first_frame: int, last_frame: int
                   ) -> list[RingFile]:
    """The files, of a ring's closed files, that hold any frame of ``first..last``."""
    return [f for f in files if f.first_frame <= last_frame and f.last_frame >= first_frame]


def ring_origin(path: str | Path) -> bytes | None:
    """The identity of the live capture a ring file belongs to (``origin`` in the
    ``index.json`` beside it, when that index lists the file), or None for a file that is
    not one of a ring's: analysed with it, the file's flows get the uids the live probe
    gave them."""
    p = Path(path)
    try:
        doc = json.loads((p.parent / INDEX_FILE).read_text(encoding="utf-8"))
        names = {f.get("name") for f in doc.get("files", []) if isinstance(f, dict)}
        origin = doc.get("origin")
        if p.name in names and isinstance(origin, str):
            return bytes.fromhex(origin)
    except (OSError, ValueError, AttributeError, TypeError):
        return None
    return None


def ring_stream(files: Sequence[str | Path]) -> BinaryIO:
    """The stretch of the stream that consecutive ring files (in stream order) were cut
    from: the first file whole, then each next one's records (every file starts with a
    copy of the stream's pcap header). Read into memory: a few files of a ring."""
    out = io.BytesIO()
    for i, path in enumerate(files):
        data = Path(path).read_bytes()
        out.write(data if i == 0 else data[PCAP_HEADER:])
    out.seek(0)
    return out
