"""Capture sources: classic pcap, pcapng (plain or gzip) from a file or a stream.

The format is told from the magic, never from the file name. A source yields
:class:`RawBatch` objects: one chunk of the input with the position, lengths,
timestamp and link type of every complete packet record in it, as numpy
columns. Record headers are walked in a tight loop; everything else is done on
the columns.

A damaged capture is not an exception: the source stops at the first record it
cannot trust and says where in :class:`ReadStatus` (``complete=False``,
``stopped_at`` = byte offset in the decompressed input). An input that is not a
capture at all raises :class:`~probe.errors.NotACapture` before any batch.

References: pcap format (draft-ietf-opsawg-pcap), pcapng
(draft-ietf-opsawg-pcapng) sections 4.1 SHB, 4.2 IDB, 4.3 EPB, 4.4 SPB,
appendix A OPB.
"""

from __future__ import annotations

import gzip
import io
import os
import select
import struct
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from probe.errors import CaptureError, NotACapture

__all__ = ["CaptureSource", "LinkType", "RawBatch", "ReadStatus", "open_source"]

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
GZIP_MAGIC = b"\x1f\x8b"
MAX_RECORD = 1 << 24
"""Largest packet record we believe (16 MiB); anything bigger means a corrupt header."""


class LinkType(IntEnum):
    """Link-layer header types (tcpdump.org/linktypes.html)."""

    NULL = 0
    ETHERNET = 1
    RAW_12 = 12
    RAW_14 = 14
    RAW = 101
    LOOP = 108
    LINUX_SLL = 113
    IPV4 = 228
    IPV6 = 229
    LINUX_SLL2 = 276


class _BlockType(IntEnum):
    """pcapng block types we read; any other type is skipped."""

    OPB = 0x00000002
    IDB = 0x00000001
    SPB = 0x00000003
    EPB = 0x00000006
    SHB = 0x0A0D0D0A


@dataclass(slots=True)
class ReadStatus:
    """How reading a capture went; filled in as the source is consumed."""

    source: str
    """Path of the capture, or ``-`` for standard input."""
    format: str = "?"
    """``pcap`` or ``pcapng``."""
    compressed: bool = False
    """True if the input was gzip-compressed."""
    packets: int = 0
    """Packet records read."""
    bytes_read: int = 0
    """Bytes of (decompressed) input consumed up to the last complete record."""
    complete: bool = True
    """False if reading stopped early because of damage."""
    stopped_at: int | None = None
    """Byte offset (in the decompressed input) where reading stopped, if it stopped early."""
    message: str | None = None
    """One human line saying what went wrong, if anything."""
    linktypes: set[int] = field(default_factory=set)
    """Link types of the interfaces seen."""

    def damaged(self, offset: int, message: str) -> None:
        """Record that the input cannot be trusted from ``offset`` on."""
        self.complete = False
        self.stopped_at = offset
        self.message = message


@dataclass(frozen=True, slots=True)
class RawBatch:
    """Complete packet records from one chunk of input, as columns."""

    buf: bytes | bytearray
    """The chunk; packet data is referenced by offset into it."""
    data_off: npt.NDArray[np.int64]
    """Offset of each packet's first byte in ``buf``."""
    caplen: npt.NDArray[np.int64]
    """Captured length of each packet."""
    wirelen: npt.NDArray[np.int64]
    """Original length on the wire."""
    ts_ns: npt.NDArray[np.int64]
    """Timestamp, nanoseconds since the epoch."""
    linktype: npt.NDArray[np.int32]
    """Link type of each packet."""
    frame0: int
    """1-based frame number of the first packet in this batch."""

    def __len__(self) -> int:
        return int(self.data_off.shape[0])


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    resol_dec: int | None
    """Decimal exponent k for 10^-k units, or None when binary."""
    resol_bin: int
    """Binary exponent k for 2^-k units when ``resol_dec`` is None."""
    offset_s: int


class _Input:
    """Reads chunks from a file or pipe, gzip-aware, remembering consumed bytes."""

    def __init__(self, fh: BinaryIO, name: str) -> None:
        self.name = name
        self._raw = fh
        head = self._peek_raw(2)
        self.compressed = head == GZIP_MAGIC
        self._stream: BinaryIO = (
            gzip.GzipFile(fileobj=fh, mode="rb") if self.compressed else fh  # type: ignore[assignment]
        )
        try:
            self._fd: int | None = fh.fileno()
            self._is_pipe = not os.path.isfile(f"/proc/self/fd/{self._fd}") and not fh.seekable()
        except (OSError, AttributeError, io.UnsupportedOperation):
            self._fd = None
            self._is_pipe = False

    def _peek_raw(self, n: int) -> bytes:
        peek = getattr(self._raw, "peek", None)
        if peek is not None:
            return bytes(peek(n)[:n])
        pos = self._raw.tell()
        data = self._raw.read(n)
        self._raw.seek(pos)
        return data

    @property
    def pipe(self) -> bool:
        """True for a pipe or socket (no end known in advance, reads may wait)."""
        return self._is_pipe

    @property
    def direct(self) -> bool:
        """True when chunks can be read straight into a buffer (a plain file)."""
        return not self._is_pipe and not self.compressed

    def readinto(self, view: memoryview) -> int:
        """Fill ``view`` from a plain file; returns the bytes read (0 at the end)."""
        got = 0
        while got < len(view):
            n = self._stream.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        return got

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; on a pipe, returns early with what is available."""
        if not self._is_pipe:
            return self._stream.read(n)
        out = bytearray()
        read1 = getattr(self._stream, "read1", self._stream.read)
        while len(out) < n:
            try:
                part = read1(n - len(out))
            except EOFError:
                break
            if not part:
                break
            out += part
            if self._fd is not None and not self.compressed:
                ready, _, _ = select.select([self._fd], [], [], 0.05 if len(out) < 65536 else 0)
                if not ready:
                    break
        return bytes(out)


class CaptureSource:
    """Iterates a capture as :class:`RawBatch` chunks.

    ``source`` is a path, ``"-"`` for standard input, or an open binary file.
    ``chunk_size`` bounds how much input one batch covers.
    """

    def __init__(self, source: str | Path | BinaryIO, chunk_size: int = 16 << 20) -> None:
        self._owned: BinaryIO | None = None
        if isinstance(source, str | Path):
            name = str(source)
            if name == "-":
                # A private handle on fd 0: a forked reader process closes sys.stdin.
                fh: BinaryIO = os.fdopen(os.dup(sys.stdin.fileno()), "rb")
                self._owned = fh
            else:
                try:
                    fh = open(name, "rb")  # noqa: SIM115 - closed in close()
                except FileNotFoundError as exc:
                    raise CaptureError(f"{name}: no such file") from exc
                except IsADirectoryError as exc:
                    raise CaptureError(f"{name}: is a directory") from exc
                except PermissionError as exc:
                    raise CaptureError(f"{name}: permission denied") from exc
                self._owned = fh
        else:
            fh = source
            name = getattr(source, "name", "<stream>")
        self.chunk_size = chunk_size
        self._in = _Input(fh, name)
        self.status = ReadStatus(source=name, compressed=self._in.compressed)
        try:
            self._pending = self._in.read(max(chunk_size, 64))
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            self.close()
            raise NotACapture(f"{name}: unreadable gzip data ({exc})") from exc
        self._detect()

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    @property
    def stream(self) -> bool:
        """True when reading a pipe or socket, where input may pause for any time."""
        return self._in.pipe

    def __enter__(self) -> CaptureSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- format detection ----------------------------------------------------
    def _detect(self) -> None:
        head = self._pending[:4]
        name = self.status.source
        if len(head) == 0:
            self.close()
            raise NotACapture(f"{name}: empty input, not a capture")
        if len(head) < 4:
            self.close()
            raise NotACapture(f"{name}: {len(head)} bytes, too short to be a capture")
        le = struct.unpack("<I", head)[0]
        be = struct.unpack(">I", head)[0]
        if le == PCAPNG_SHB:
            self.status.format = "pcapng"
            self._kind = "pcapng"
            return
        for value, big in ((le, False), (be, True)):
            if value in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                self.status.format = "pcap"
                self._kind = "pcap"
                self._big = big
                self._nano = value == PCAP_MAGIC_NS
                return
        self.close()
        raise NotACapture(f"{name}: not a pcap or pcapng capture (starts with {head.hex()})")

    # -- iteration -----------------------------------------------------------
    def batches(self) -> Iterator[RawBatch]:
        """Yield batches until the end of input or the first damage."""
        try:
            if self._kind == "pcap":
                yield from self._pcap_batches()
            else:
                yield from self._pcapng_batches()
        finally:
            self.close()

    def _more(self, buf: bytes | bytearray, pos: int) -> tuple[bytes | bytearray, int, bool]:
        """Drop consumed bytes and append the next chunk. Returns (buf, base_shift, eof)."""
        if self._in.direct:
            left = len(buf) - pos
            new = bytearray(left + self.chunk_size)
            new[:left] = memoryview(buf)[pos:]
            try:
                got = self._in.readinto(memoryview(new)[left:])
            except OSError as exc:
                self.status.damaged(self.status.bytes_read,
                                    f"input unreadable after byte {self.status.bytes_read}: {exc}")
                return buf[pos:], pos, True
            if left + got < len(new):
                del new[left + got:]
            return new, pos, got == 0
        try:
            nxt = self._in.read(self.chunk_size)
        except (OSError, EOFError, gzip.BadGzipFile, struct.error, zlib.error) as exc:
            self.status.damaged(self.status.bytes_read,
                                f"input unreadable after byte {self.status.bytes_read}: {exc}")
            return buf[pos:], pos, True
        return buf[pos:] + nxt, pos, not nxt

    def _pcap_batches(self) -> Iterator[RawBatch]:
        st = self.status
        buf: bytes | bytearray = self._pending
        self._pending = b""
        if len(buf) < 24:
            buf, _, _ = self._more(buf, 0)
        if len(buf) < 24:
            raise NotACapture(f"{st.source}: pcap file header truncated ({len(buf)} of 24 bytes)")
        e = ">" if self._big else "<"
        _, _, _, _, _, snaplen, network = struct.unpack(e + "IHHiIII", buf[:24])
        linktype = network & 0x0FFFFFFF
        st.linktypes.add(linktype)
        max_incl = max(min(snaplen, MAX_RECORD), 262144)
        incl_at = struct.Struct(e + "I").unpack_from
        frac_scale = 1 if self._nano else 1000
        base = 0  # file offset of buf[0]
        pos = 24
        frame = 1
        eof = False
        while True:
            offs: list[int] = []
            ap = offs.append
            end = len(buf)
            bad = False
            last = end - 16
            # The tight loop: record lengths are checked against max_incl afterwards, in bulk.
            while pos <= last:
                nxt = pos + 16 + incl_at(buf, pos + 8)[0]
                if nxt > end:
                    break
                ap(pos)
                pos = nxt
            if pos <= last and incl_at(buf, pos + 8)[0] > max_incl:
                bad = True
            if offs:
                o = np.asarray(offs, dtype=np.int64)
                arr = np.frombuffer(buf, dtype=np.uint8)
                hdr = arr[o[:, None] + np.arange(16)].view(">u4" if self._big else "<u4")
                hdr = hdr.astype(np.int64)
                over = np.flatnonzero(hdr[:, 2] > max_incl)
                if len(over):  # a corrupt record header: keep what came before it
                    k = int(over[0])
                    pos = int(o[k])
                    bad = True
                    o, hdr = o[:k], hdr[:k]
                sec, frac, cap, wire = hdr[:, 0], hdr[:, 1], hdr[:, 2], hdr[:, 3]
                wire = np.maximum(wire, cap)
                n = len(o)
                if n:
                    yield RawBatch(buf, o + 16, cap, wire,
                                   sec * 1_000_000_000 + frac * frac_scale,
                                   np.full(n, linktype, dtype=np.int32), frame)
                frame += n
                st.packets += n
            st.bytes_read = base + pos
            if bad:
                incl = incl_at(buf, pos + 8)[0]
                st.damaged(base + pos, f"corrupt record header at byte {base + pos}: "
                                       f"captured length {incl} exceeds {max_incl}")
                return
            if eof or not st.complete:
                if pos < len(buf) and st.complete:
                    left = len(buf) - pos
                    want = 16 + incl_at(buf, pos + 8)[0] if left >= 16 else 16
                    st.damaged(base + pos, f"capture truncated at byte {base + pos}: last record "
                                           f"has {left} of {want} bytes")
                return
            buf, shift, eof = self._more(buf, pos)
            base += shift
            pos = 0

    def _pcapng_batches(self) -> Iterator[RawBatch]:
        st = self.status
        buf: bytes | bytearray = self._pending
        self._pending = b""
        ifaces: list[_Interface] = []  # all interfaces across sections
        section: list[int] = []  # local id -> index in ifaces
        big = False
        u32 = struct.Struct("<I").unpack_from
        base = 0
        pos = 0
        frame = 1
        eof = False
        while True:
            d_off: list[int] = []
            d_cap: list[int] = []
            d_wire: list[int] = []
            d_if: list[int] = []
            d_ts: list[int] = []
            end = len(buf)
            bad: str | None = None
            while pos + 12 <= end:
                btype = u32(buf, pos)[0] if not big else struct.unpack_from(">I", buf, pos)[0]
                if btype == PCAPNG_SHB:
                    bom = buf[pos + 8:pos + 12]
                    if len(bom) < 4:
                        break
                    if bom == b"\x4d\x3c\x2b\x1a":
                        big = False
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        big = True
                    else:
                        bad = f"bad section header byte-order magic at byte {base + pos}"
                        break
                    u32 = struct.Struct(">I" if big else "<I").unpack_from
                blen = u32(buf, pos + 4)[0]
                if blen < 12 or blen % 4 or blen > MAX_RECORD + 64:
                    bad = f"corrupt block header at byte {base + pos}: block length {blen}"
                    break
                if pos + blen > end:
                    break
                if u32(buf, pos + blen - 4)[0] != blen:
                    bad = (f"corrupt block at byte {base + pos}: trailing length does not "
                           f"match {blen}")
                    break
                e = ">" if big else "<"
                if btype == _BlockType.EPB or btype == _BlockType.OPB:
                    if btype == _BlockType.EPB:
                        if blen < 32:
                            bad = f"short enhanced packet block at byte {base + pos}"
                            break
                        iface, hi, lo, cap, wire = struct.unpack_from(e + "IIIII", buf, pos + 8)
                    else:
                        if blen < 32:
                            bad = f"short packet block at byte {base + pos}"
                            break
                        iface, _drops, hi, lo, cap, wire = struct.unpack_from(
                            e + "HHIIII", buf, pos + 8)
                    if cap > blen - 32:
                        bad = (f"corrupt packet block at byte {base + pos}: captured length "
                               f"{cap} exceeds block")
                        break
                    if iface >= len(section):
                        bad = f"packet block at byte {base + pos} names unknown interface {iface}"
                        break
                    d_off.append(pos + 28)
                    d_cap.append(cap)
                    d_wire.append(max(wire, cap))
                    d_if.append(section[iface])
                    d_ts.append((hi << 32) | lo)
                elif btype == _BlockType.SPB:
                    if not section:
                        bad = f"simple packet block at byte {base + pos} before any interface"
                        break
                    wire = u32(buf, pos + 8)[0]
                    snap = ifaces[section[0]].snaplen or wire
                    cap = min(wire, snap, blen - 16)
                    d_off.append(pos + 12)
                    d_cap.append(cap)
                    d_wire.append(wire)
                    d_if.append(section[0])
                    d_ts.append(-1)
                elif btype == _BlockType.IDB:
                    lt, _res, snap = struct.unpack_from(e + "HHI", buf, pos + 8)
                    iface_rec = _Interface(lt, snap, 6, 0, 0)
                    self._idb_options(buf, pos + 16, pos + blen - 4, e, iface_rec)
                    section.append(len(ifaces))
                    ifaces.append(iface_rec)
                    st.linktypes.add(lt)
                elif btype == _BlockType.SHB:
                    section = []
                pos += blen
            if d_off:
                yield self._ng_batch(buf, d_off, d_cap, d_wire, d_if, d_ts, ifaces, frame)
                frame += len(d_off)
                st.packets += len(d_off)
            st.bytes_read = base + pos
            if bad is not None:
                st.damaged(base + pos, bad)
                return
            if eof or not st.complete:
                if pos < len(buf) and st.complete:
                    left = len(buf) - pos
                    st.damaged(base + pos, f"capture truncated at byte {base + pos}: last block "
                                           f"has {left} bytes")
                return
            buf, shift, eof = self._more(buf, pos)
            base += shift
            pos = 0

    @staticmethod
    def _idb_options(buf: bytes | bytearray, p: int, end: int, e: str, rec: _Interface) -> None:
        while p + 4 <= end:
            code, length = struct.unpack_from(e + "HH", buf, p)
            if code == 0:
                break
            val = buf[p + 4:p + 4 + length]
            if code == 9 and length >= 1:  # if_tsresol
                v = val[0]
                if v & 0x80:
                    rec.resol_dec = None
                    rec.resol_bin = v & 0x7F
                else:
                    rec.resol_dec = v
            elif code == 14 and length == 8:  # if_tsoffset
                rec.offset_s = struct.unpack(e + "q", val)[0]
            p += 4 + ((length + 3) & ~3)

    def _ng_batch(self, buf: bytes | bytearray, d_off: list[int], d_cap: list[int],
                  d_wire: list[int], d_if: list[int], d_ts: list[int], ifaces: list[_Interface],
                  frame: int) -> RawBatch:
        iface_idx = np.asarray(d_if, dtype=np.int64)
        raw = np.asarray(d_ts, dtype=np.int64)
        ts = np.zeros(len(d_ts), dtype=np.int64)
        lts = np.zeros(len(d_ts), dtype=np.int32)
        for k in np.unique(iface_idx).tolist():
            rec = ifaces[k]
            m = iface_idx == k
            lts[m] = rec.linktype
            r = raw[m]
            if rec.resol_dec is not None:
                if rec.resol_dec <= 9:
                    t = r * (10 ** (9 - rec.resol_dec))
                else:
                    t = r // (10 ** (rec.resol_dec - 9))
            else:
                sh = rec.resol_bin
                ur = r.astype(np.uint64)
                sec = (ur >> np.uint64(sh)).astype(np.int64)
                fr = (ur & np.uint64((1 << sh) - 1)).astype(np.float64)
                t = sec * 1_000_000_000 + np.floor(fr * 1e9 / float(1 << sh)).astype(np.int64)
            t = t + rec.offset_s * 1_000_000_000
            ts[m] = t
        # Simple packet blocks carry no timestamp: they take the one before them.
        missing = raw < 0
        if missing.any():
            idx = np.where(missing, 0, np.arange(len(raw)))
            np.maximum.accumulate(idx, out=idx)
            ts = ts[idx]
            ts[missing & (idx == 0) & (raw[0] < 0)] = 0
        return RawBatch(buf, np.asarray(d_off, dtype=np.int64), np.asarray(d_cap, dtype=np.int64),
                        np.asarray(d_wire, dtype=np.int64), ts, lts, frame)


def open_source(source: str | Path | BinaryIO, chunk_size: int = 16 << 20) -> CaptureSource:
    """Open a capture file, ``"-"`` (stdin) or a binary stream; format from the magic."""
    return CaptureSource(source, chunk_size)
