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

A classic pcap file may come from one of the patched libpcaps of 1999 or from a
Nokia appliance, whose record headers carry 4, 8 or 12 bytes more than the standard
16 with nothing in the file header to say so (the ss990417 and Nokia variants use the
standard magic; ss990915 and ss991029 the modified magic 0xA1B2CD34). As Wireshark's
reader does, the variant is told by reading the first three records as each candidate
and taking the one whose headers make the most sense (:func:`pcap_variant`).

References: pcap format (draft-ietf-opsawg-pcap), pcapng
(draft-ietf-opsawg-pcapng) sections 4.1 SHB, 4.2 IDB, 4.3 EPB, 4.4 SPB,
appendix A OPB; the record header variants as Wireshark's wiretap/libpcap.c reads them.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import select
import struct
import sys
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from probe.errors import CaptureError, NotACapture

__all__ = [
    "MAX_DECOMPRESSED",
    "MAX_RECORD",
    "MIN_SNAP",
    "PCAPNG_BOM",
    "PCAPNG_SHB",
    "PCAP_HEADER",
    "PCAP_MAGICS",
    "PCAP_MAGIC_MODIFIED",
    "PCAP_MAGIC_NS",
    "PCAP_MAGIC_US",
    "PCAP_VARIANTS",
    "RECORD_HEADER",
    "CaptureSource",
    "LinkType",
    "PcapHeader",
    "RawBatch",
    "ReadStatus",
    "open_source",
    "pcap_header",
    "pcap_variant",
    "record_headers",
    "record_offsets",
]

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_MAGIC_MODIFIED = 0xA1B2CD34
"""Magic of the ss990915 and ss991029 patched libpcaps (microsecond timestamps)."""
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
GZIP_MAGIC = b"\x1f\x8b"
MAX_DECOMPRESSED = 64 << 30
"""Default bound on what a gzip-compressed capture may decompress to (64 GiB): a small
file that inflates without end (a gzip bomb) is read up to it, then stops as damaged."""
MAX_RECORD = 1 << 24
"""Largest packet record we believe (16 MiB); anything bigger means a corrupt header."""
NS = 1_000_000_000
SPB_NO_TS = 1 << 64
"""Raw timestamp of a simple packet block (it has none; no real one is this big)."""
MIN_SNAP = 262144
"""Captured lengths up to this are believed whatever snapshot length a pcap header
declares: writers are loose about it."""
PCAP_HEADER = 24
"""Bytes of a classic pcap file header."""
RECORD_HEADER = 16
"""Bytes of a classic pcap record header: ts_sec, ts_frac, caplen, wirelen."""
PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": ("<", 1000), b"\xa1\xb2\xc3\xd4": (">", 1000),
               b"\x4d\x3c\xb2\xa1": ("<", 1), b"\xa1\xb2\x3c\x4d": (">", 1)}
"""Classic pcap magic, as its four bytes appear in the file -> (byte order, nanoseconds
per unit of a record's fraction field)."""
_MODIFIED_MAGICS = {b"\x34\xcd\xb2\xa1": "<", b"\xa1\xb2\xcd\x34": ">"}
PCAP_VARIANTS = {"pcap": 0, "ss990417": 8, "nokia": 4, "ss991029": 8, "ss990915": 12}
"""Classic pcap record header variants -> bytes their record headers carry after the
standard 16: an interface index, protocol, packet type and padding (ss99*), four
bytes of unknown use (Nokia)."""
_STANDARD_VARIANTS = ("pcap", "ss990417", "nokia")
_MODIFIED_VARIANTS = ("ss991029", "ss990915")
MAX_WIRE_TRY = 128 << 20
"""An original length past this (128 MiB) marks a record header read the wrong way."""


@dataclass(frozen=True, slots=True)
class PcapHeader:
    """A classic pcap file header (draft-ietf-opsawg-pcap section 4)."""

    order: str
    """Byte order of the file's headers, ``<`` or ``>``."""
    frac_ns: int
    """Nanoseconds per unit of a record's fraction field (1000 for microseconds, 1)."""
    major: int
    """Major version (2 for every pcap written since 1998)."""
    snaplen: int
    """Snapshot length the header declares."""
    linktype: int
    """Link type of every record (the low 16 bits of the header's field)."""
    fcs: int
    """Bytes of frame check sequence at the end of each packet (0 if the field says
    none)."""
    minor: int = 4
    """Minor version."""
    extra: int = 0
    """Bytes each record header carries after the standard 16 (:data:`PCAP_VARIANTS`)."""

    @property
    def lengths_swapped(self) -> str:
        """Where a record's captured length is: ``no`` (the third field); ``yes`` (the
        fourth: files before version 2.3 wrote the two lengths the other way round, and
        DG/UX's tcpdump writes version 543 that way); ``maybe`` (version 2.3, which some
        writers wrote either way: the smaller of the two is the captured length). As
        libpcap and Wireshark read them."""
        if self.major == 543 or (self.major == 2 and self.minor < 3) or self.major < 2:
            return "yes"
        if self.major == 2 and self.minor == 3:
            return "maybe"
        return "no"

    def incl(self, buf: bytes | bytearray, pos: int) -> int:
        """Captured length of the record whose header starts at ``pos``."""
        swapped = self.lengths_swapped
        if swapped == "no":
            return int(_INCL[self.order](buf, pos + 8)[0])
        a, b = _LENGTHS[self.order](buf, pos + 8)
        return int(b) if swapped == "yes" else int(min(a, b))

    @property
    def max_incl(self) -> int:
        """Largest captured length believed in this file."""
        return max(min(self.snaplen, MAX_RECORD), MIN_SNAP)

    @property
    def record(self) -> struct.Struct:
        """A record header: ts_sec, ts_frac, caplen, wirelen."""
        return _RECORD[self.order]


_RECORD = {"<": struct.Struct("<IIII"), ">": struct.Struct(">IIII")}
_LENGTHS = {"<": struct.Struct("<II").unpack_from, ">": struct.Struct(">II").unpack_from}


def pcap_header(data: bytes | bytearray) -> PcapHeader | None:
    """The classic pcap file header at the start of ``data`` (24 bytes at least), or None
    if it does not start with a pcap magic."""
    kind = PCAP_MAGICS.get(bytes(data[:4]))
    if kind is None or len(data) < PCAP_HEADER:
        return None
    order, frac_ns = kind
    major, minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
        order + "HHiIII", data, 4)
    return PcapHeader(order, frac_ns, major, snaplen, *_link_info(network), minor=minor)


def _try_variant(buf: bytes | bytearray, header: PcapHeader, extra: int, name: str,
                 at_eof: bool) -> int:
    """How many things are wrong with the first three records of ``buf`` (from byte 24)
    read with record headers of ``16 + extra`` bytes: Wireshark's figure of merit, 0 when
    nothing is. A fraction of a second past a million microseconds, a captured length past
    the largest packet or the declared snapshot length, an original length past 128 MiB or
    smaller than the captured one, a record cut short by the end of the file; for the
    ss99* headers an interface index past 10000, a protocol that is neither an Ethertype
    nor one of Linux's ETH_P_ values, a packet type past 4; for Nokia's, four bytes not of
    the form seen in its files."""
    o = header.order
    merit = 0
    pos = PCAP_HEADER
    for _ in range(3):
        if pos + RECORD_HEADER + extra > len(buf):
            merit += at_eof and pos < len(buf)
            break
        _sec, frac, incl, orig = struct.unpack_from(o + "IIII", buf, pos)
        merit += frac >= 1_000_000
        too_big = incl > MIN_SNAP
        merit += too_big
        merit += incl > header.snaplen
        merit += orig > MAX_WIRE_TRY
        merit += incl > orig
        if name == "nokia":
            stuff = struct.unpack_from(o + "I", buf, pos + 16)[0]
            merit += not (stuff & 0x0FFF00F0 == 0x0FBF0000
                          and stuff & 0xF0000000 in (0x90000000, 0xB0000000)
                          and stuff & 0x0000F000 in (0x0000B000, 0x0000D000)
                          and stuff & 0x00000F00 in (0x00000600, 0x00000900)
                          and stuff & 0x0000000F in (1, 2))
        elif extra:
            ifindex, proto, ptype = struct.unpack_from(o + "IHB", buf, pos + 16)
            merit += ifindex > 10000
            merit += not (proto >= 0x0600 or proto in (0x0060, 0x0200, 0x0400)
                          or proto <= 0x0017)
            merit += ptype > 4
        if too_big:
            break
        pos += RECORD_HEADER + extra + incl
        if pos > len(buf):
            merit += at_eof
            break
    return merit


def _candidates(buf: bytes | bytearray) -> tuple[PcapHeader | None, tuple[str, ...]]:
    """The file header and the record header variants a classic pcap file starting
    ``buf`` may use (none to choose from: it is plain pcap)."""
    order = _MODIFIED_MAGICS.get(bytes(buf[:4]))
    if order is not None:
        return (pcap_header(PCAP_MAGIC_US.to_bytes(4, "little" if order == "<" else "big")
                            + bytes(buf[4:PCAP_HEADER])), _MODIFIED_VARIANTS)
    header = pcap_header(buf)
    if header is None or header.frac_ns != 1000 or (header.major, header.minor) < (2, 4):
        return header, ()
    return header, _STANDARD_VARIANTS


def pcap_variant_decidable(buf: bytes | bytearray) -> bool:
    """Whether ``buf`` holds enough of a classic pcap file for :func:`pcap_variant`: every
    candidate's walk over the first three records ends inside it (or at a length no
    record can have). A reader fills its buffer until it does (or the input ends), so
    the variant does not depend on how much the first read happened to return."""
    header, candidates = _candidates(buf)
    if header is None or len(candidates) < 2:
        return True
    incl_of = _INCL[header.order]
    for name in candidates:
        pos = PCAP_HEADER
        for _ in range(3):
            if pos + RECORD_HEADER + PCAP_VARIANTS[name] > len(buf):
                return False
            incl = int(incl_of(buf, pos + 8)[0])
            if incl > MIN_SNAP:
                break
            pos += RECORD_HEADER + PCAP_VARIANTS[name] + incl
            if pos > len(buf):
                return False
    return True


def pcap_variant(buf: bytes | bytearray, at_eof: bool = True) -> str:
    """Which record header variant the classic pcap file starting ``buf`` uses (a key of
    :data:`PCAP_VARIANTS`), by Wireshark's rule: each candidate of the file's magic in
    turn reads the first three records; the first with nothing wrong wins, else the one
    with fewest things wrong. Only files of version 2.4 (the standard magic) can be a
    variant, and nanosecond files never are. ``at_eof`` says ``buf`` holds the whole file
    (a record cut by its end then counts against the candidate)."""
    header, candidates = _candidates(buf)
    if header is None or not candidates:
        return "pcap"
    merits = [_try_variant(buf, header, PCAP_VARIANTS[c], c, at_eof) for c in candidates]
    for name, merit in zip(candidates, merits, strict=True):
        if merit == 0:
            return name
    return candidates[merits.index(min(merits))]


def record_offsets(buf: bytes | bytearray, pos: int, header: PcapHeader
                   ) -> tuple[list[int], int]:
    """Walk the classic pcap record headers of ``buf`` from ``pos``: the offsets of the
    complete records, and where the walk stopped (the first record not complete in
    ``buf``, or the end). Captured lengths are not checked here: the caller does, in
    bulk (a length past ``header.max_incl`` means a corrupt header)."""
    offs: list[int] = []
    ap = offs.append
    end = len(buf)
    rec_len = RECORD_HEADER + header.extra
    last = end - rec_len
    if header.lengths_swapped != "no":
        while pos <= last:
            nxt = pos + rec_len + header.incl(buf, pos)
            if nxt > end:
                break
            ap(pos)
            pos = nxt
        return offs, pos
    incl_at = _INCL_AT[header.order]
    while pos <= last:  # one test per record: only the last one taken can be cut short
        ap(pos)
        pos += rec_len + incl_at(buf, pos)[0]
    if pos > end and offs:
        pos = offs.pop()
    return offs, pos


_INCL = {"<": struct.Struct("<I").unpack_from, ">": struct.Struct(">I").unpack_from}
_INCL_AT = {"<": struct.Struct("<8xI").unpack_from, ">": struct.Struct(">8xI").unpack_from}
"""The captured length of the record header at an offset."""


def record_headers(buf: bytes | bytearray, offs: list[int] | npt.NDArray[np.int64], order: str
                   ) -> npt.NDArray[np.int64]:
    """The first four fields (ts_sec, ts_frac and the two lengths, as written) of the
    classic pcap record headers at ``offs`` in ``buf``, in byte order ``order``: one row
    per record. ``buf`` is not held on to (a bytearray may be resized afterwards)."""
    if not len(offs):
        return np.zeros((0, 4), dtype=np.int64)
    # Row p of this view is the four 32-bit fields starting at byte p.
    fields = np.ndarray((len(buf) - RECORD_HEADER + 1, 4), dtype=np.dtype(order + "u4"),
                        buffer=buf, strides=(1, 4))
    rows = fields[np.asarray(offs, dtype=np.intp)].astype(np.int64)
    del fields
    return rows


class LinkType(IntEnum):
    """Link-layer header types (tcpdump.org/linktypes.html)."""

    NULL = 0
    ETHERNET = 1
    PPP = 9
    RAW_12 = 12
    RAW_14 = 14
    PPP_HDLC = 50
    PPP_ETHER = 51
    RAW = 101
    C_HDLC = 104
    LOOP = 108
    LINUX_SLL = 113
    USER2 = 149
    """Apple's PKTAP as macOS 10.9 wrote it (Wireshark reads it as :attr:`PKTAP`)."""
    PPI = 192
    IPV4 = 228
    IPV6 = 229
    PKTAP = 258
    LINUX_SLL2 = 276


FCS_PRESENT = 0x04000000
"""P bit of the pcap header's link-type field: the FCS length is stated (bits 28-31)."""


def _link_info(network: int) -> tuple[int, int]:
    """(link type, FCS bytes at the end of each packet) from a pcap file header's
    LinkType-and-additional-information field (draft-ietf-opsawg-pcap §4): the link type
    is the low 16 bits; when the P bit is set, the top 4 bits give the FCS length in
    16-bit words; the other bits are reserved and ignored."""
    fcs = 2 * ((network >> 28) & 0xF) if network & FCS_PRESENT else 0
    return network & 0xFFFF, fcs


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
    variant: str = "pcap"
    """For a classic pcap file, its record header variant (:data:`PCAP_VARIANTS`)."""
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


TS_MAX_NS = (1 << 63) - 1
"""Newest timestamp the probe holds (nanoseconds since the epoch in an int64: year 2262)."""


@dataclass(slots=True)
class _Interface:
    linktype: int
    snaplen: int
    resol_dec: int | None
    """Decimal exponent k for 10^-k units, or None when binary."""
    resol_bin: int
    """Binary exponent k for 2^-k units when ``resol_dec`` is None."""
    offset_s: int
    raw_min: int = 0
    """Smallest raw 64-bit packet timestamp that gives a time from the epoch to
    ``TS_MAX_NS`` with this interface's resolution and offset (set by :meth:`limits`)."""
    raw_max: int = (1 << 64) - 1
    """Largest such raw timestamp; a packet stamped outside makes its block corrupt."""

    def limits(self) -> str | None:
        """Set ``raw_min``/``raw_max``: the raw timestamps :meth:`CaptureSource._ng_batch`
        turns into nanoseconds with no int64 overflow on the way. Returns what is wrong
        with the interface's ``if_tsresol`` or ``if_tsoffset`` if they cannot describe a
        capture: a unit so small that a 64-bit timestamp cannot count one second, or an
        offset beyond the time range the probe holds."""
        if self.resol_dec is not None and self.resol_dec > 19:
            return f"if_tsresol 10^-{self.resol_dec} s cannot count one second in 64 bits"
        if self.resol_dec is None and self.resol_bin > 63:
            return f"if_tsresol 2^-{self.resol_bin} s cannot count one second in 64 bits"
        if abs(self.offset_s) > TS_MAX_NS // NS:
            return f"if_tsoffset {self.offset_s} s is beyond year 2262"
        off = self.offset_s * NS
        top = TS_MAX_NS
        if self.resol_dec is not None and self.resol_dec <= 9:
            m = 10 ** (9 - self.resol_dec)  # ns = raw * m + off, raw * m itself an int64
            lo, hi = -(off // m), min((top - off) // m, top // m)
        elif self.resol_dec is not None:
            d = 10 ** (self.resol_dec - 9)  # ns = raw // d + off
            lo, hi = -off * d, (top - off + 1) * d - 1
        else:
            sh = self.resol_bin  # ns = (raw >> sh) * NS + (fraction < NS) + off
            lo = -(off // NS) << sh
            hi = ((min(top - off, top) // NS) << sh) - 1
        self.raw_min = max(lo, 0)
        self.raw_max = min(hi, (1 << 64) - 1)
        return None


PIPE_GAP_S = 0.05
"""How long reading a pipe waits for more input before a batch is handed on."""
PIPE_BATCH_S = 0.25
"""The longest a batch read from a pipe gathers input after its first bytes."""
READ_AHEAD_PIECE = 1 << 20
"""The most one read of a pipe takes (a pipe the probe widens holds as much)."""
READ_AHEAD_BYTES = 16 << 20
"""How much of a pipe may wait, read ahead, for the batch that takes it: one batch of the
default ``chunk_size``."""


def _next_wait(deadline: float) -> tuple[float, float]:
    """How long a batch being gathered from a pipe waits for more input (at most
    :data:`PIPE_GAP_S`, and never past :data:`PIPE_BATCH_S` after its first bytes), and
    its deadline: ``deadline`` is 0 until the first bytes have come."""
    now = time.monotonic()
    deadline = deadline or now + PIPE_BATCH_S
    return deadline, min(PIPE_GAP_S, deadline - now)


class _ReadAhead:
    """Reads a pipe in a thread of its own, up to :data:`READ_AHEAD_BYTES` ahead of the
    batches that take it, so that whoever writes the pipe goes on while a batch is being
    decoded instead of waiting for the pipe to be drained (a pipe holds 1 MiB at most; a
    batch is 16). ``left`` is what was read from the pipe before and not taken yet. The
    thread reads a duplicate of ``fd``, closed when it ends: at the end of the input, at an
    error (raised by the :meth:`read` that reaches it), or once :meth:`close` is called
    and its read in flight comes back."""

    def __init__(self, fd: int, left: bytes = b"") -> None:
        self._fd = os.dup(fd)
        self._pieces: deque[bytes | BaseException] = deque()
        """What was read and not taken yet, then b"" for the end of the input (or the
        error that ended it)."""
        self._held = 0
        """Bytes in ``_pieces``."""
        self._cond = threading.Condition()
        self._left = left
        self._error: BaseException | None = None
        self._ended = False
        self._closed = False
        threading.Thread(target=self._run, name="marsad-read-ahead", daemon=True).start()

    def _read_piece(self) -> bytes:
        return os.read(self._fd, READ_AHEAD_PIECE)

    def _run(self) -> None:
        cond = self._cond
        end: bytes | BaseException = b""
        try:
            while True:
                with cond:
                    while self._held >= READ_AHEAD_BYTES and not self._closed:
                        cond.wait()
                    if self._closed:
                        return
                data = self._read_piece()
                if not data:
                    return
                with cond:
                    self._pieces.append(data)
                    self._held += len(data)
                    cond.notify_all()
        except BaseException as exc:  # the read that reaches it raises it
            end = exc
        finally:
            with cond:
                self._pieces.append(end)
                cond.notify_all()
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _take(self, timeout: float | None) -> bytes | BaseException | None:
        """The next piece read, waiting at most ``timeout`` (None: as long as it takes);
        b"" once closed and nothing read is left."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pieces or self._closed, timeout):
                return None
            if not self._pieces:
                return b""
            item = self._pieces.popleft()
            if isinstance(item, bytes):
                self._held -= len(item)
            self._cond.notify_all()
            return item

    def read(self, n: int, after: bytes | bytearray | memoryview = b"") -> bytes:
        """Up to ``n`` bytes, as :meth:`_Input.read` takes them from a pipe: what arrives
        while more keeps coming (each wait for more at most :data:`PIPE_GAP_S`) until
        :data:`PIPE_BATCH_S` after the first bytes; b"" at the end of the input. They
        come ``after`` the bytes given, joined to them in the one copy."""
        parts = [self._left] if self._left else []
        got = len(self._left)
        deadline = 0.0
        while got < n and not self._ended and self._error is None:
            timeout = None
            if parts:
                deadline, timeout = _next_wait(deadline)
                if timeout <= 0:
                    break
            item = self._take(timeout)
            if item is None:
                break
            if isinstance(item, BaseException):
                self._error = item
            elif not item:
                self._ended = True
            else:
                parts.append(item)
                got += len(item)
        if got > n:  # the last piece goes past n: its rest is read next
            last = parts[-1]
            cut = len(last) - (got - n)
            parts[-1], self._left = last[:cut], last[cut:]
        else:
            self._left = b""
        if not got and self._error is not None:
            raise self._error
        return b"".join([after, *parts]) if after else b"".join(parts)

    def close(self) -> None:
        """Read no more: :meth:`read` gives what was read ahead, then the end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _Input:
    """Reads chunks from a file or pipe, gzip-aware. A compressed input gives at most
    ``max_decompressed`` bytes; ``over`` is then True and every later read gives none."""

    def __init__(self, fh: BinaryIO, name: str, max_decompressed: int = MAX_DECOMPRESSED
                 ) -> None:
        self.name = name
        self._raw = fh
        self.max_decompressed = max_decompressed
        self.inflated = 0
        """Decompressed bytes given so far."""
        self.over = False
        self._buffered = 0
        """What the file object held in its buffer when peeked at (0 once drained)."""
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
        self._ahead: _ReadAhead | None = None
        self._carry = b""
        """Read from a pipe past what a read asked for, given first by the next one."""

    def _peek_raw(self, n: int) -> bytes:
        peek = getattr(self._raw, "peek", None)
        if peek is not None:
            held = peek(n)  # all the file object holds, at least n bytes if it can
            self._buffered = len(held)
            return bytes(held[:n])
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

    def read_ahead(self) -> None:
        """From now on, read an uncompressed pipe ahead, in a thread of this process
        (:class:`_ReadAhead`). Called by the process that reads the batches, once it
        reads them: never before a fork, whose child would have the queue without the
        thread."""
        if self._ahead is None and self._is_pipe and not self.compressed \
                and self._fd is not None:
            self._ahead, self._carry = _ReadAhead(self._fd, self._carry), b""

    def close(self) -> None:
        if self._ahead is not None:
            self._ahead.close()

    def read(self, n: int, after: bytes | bytearray | memoryview = b"") -> bytes:
        """Up to ``n`` bytes; on a pipe, returns early with what is available. They come
        ``after`` the bytes given (what is left of the last chunk), joined to them in one
        copy."""
        if self._ahead is not None:
            return self._ahead.read(n, after)
        if not self.compressed:
            data = self._read(n)
        elif self.over:
            data = b""
        else:
            # One byte past the bound tells a capture that ends exactly there from one
            # that goes on; no more than that is ever decompressed.
            room = self.max_decompressed - self.inflated
            data = self._read(min(n, room + 1))
            if len(data) > room:
                self.over = True
                data = data[:room]
            self.inflated += len(data)
        return b"".join((after, data)) if after else data

    def _read(self, n: int) -> bytes:
        """Up to ``n`` bytes. On a pipe: what arrives while more keeps coming (each wait for
        more at most ``PIPE_GAP_S``) until ``PIPE_BATCH_S`` after the first bytes, so a fast
        writer fills whole batches while a quiet link's packets are not held back long."""
        if not self._is_pipe:
            return self._stream.read(n)
        out = bytearray(self._carry)
        self._carry = b""
        read1 = getattr(self._stream, "read1", self._stream.read)
        deadline = 0.0
        while len(out) < n:
            want = n - len(out)
            if not self.compressed:
                # Never less than the file object holds in its buffer (what the peek
                # filled it with): the read ahead of the descriptor, if one starts later,
                # would never see what was left there. Once empty, it stays so (a read1
                # from an empty buffer reads the descriptor straight into its result).
                want = max(want, READ_AHEAD_PIECE, self._buffered)
                self._buffered = 0
            try:
                part = read1(want)
            except EOFError:
                break
            if not part:
                break
            out += part
            if self._fd is not None and not self.compressed:
                deadline, wait = _next_wait(deadline)
                if wait <= 0 or not select.select([self._fd], [], [], wait)[0]:
                    break
        if len(out) > n:
            self._carry = bytes(out[n:])
            del out[n:]
        return bytes(out)


class CaptureSource:
    """Iterates a capture as :class:`RawBatch` chunks.

    ``source`` is a path, ``"-"`` for standard input, or an open binary file.
    ``chunk_size`` bounds how much input one batch covers; a gzip-compressed input is read
    up to ``max_decompressed`` bytes once decompressed, and stops there as damaged.
    """

    def __init__(self, source: str | Path | BinaryIO, chunk_size: int = 16 << 20,
                 max_decompressed: int = MAX_DECOMPRESSED) -> None:
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
        self._ts_last = 0
        """Timestamp of the last packet yielded (a simple packet block has none: it takes
        the one before it, across batches too)."""
        self._in = _Input(fh, name, max_decompressed)
        self.status = ReadStatus(source=name, compressed=self._in.compressed)
        try:
            self._pending = self._in.read(max(chunk_size, 64))
        except (OSError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            self.close()
            raise NotACapture(f"{name}: unreadable gzip data ({exc})") from exc
        self._detect()

    def close(self) -> None:
        self._pending = b""  # the first chunk, read ahead when opened: nothing reads it now
        self._in.close()
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
            if value in (PCAP_MAGIC_US, PCAP_MAGIC_NS, PCAP_MAGIC_MODIFIED):
                self.status.format = "pcap"
                self._kind = "pcap"
                self._big = big
                self._nano = value == PCAP_MAGIC_NS
                return
        self.close()
        raise NotACapture(f"{name}: not a pcap or pcapng capture (starts with {head.hex()})")

    # -- iteration -----------------------------------------------------------
    def batches(self) -> Iterator[RawBatch]:
        """Yield batches until the end of input or the first damage. A pipe is read ahead
        from here on (:meth:`_Input.read_ahead`), in the process that takes the batches."""
        self._in.read_ahead()
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
            with memoryview(buf) as whole, whole[pos:] as rest:
                joined = self._in.read(self.chunk_size, after=rest)
        except (OSError, EOFError, gzip.BadGzipFile, struct.error, zlib.error) as exc:
            self.status.damaged(self.status.bytes_read,
                                f"input unreadable after byte {self.status.bytes_read}: {exc}")
            return buf[pos:], pos, True
        return joined, pos, len(joined) == len(buf) - pos

    def _pcap_batches(self) -> Iterator[RawBatch]:
        st = self.status
        buf: bytes | bytearray = self._pending
        self._pending = b""
        if len(buf) < 24:
            buf, _, _ = self._more(buf, 0)
        if len(buf) < 24:
            raise NotACapture(f"{st.source}: pcap file header truncated ({len(buf)} of 24 bytes)")
        eof = False
        # A file is read until its variant is decided, whatever the chunk size; a pipe is
        # decided on what its first read brought (its next records may be minutes away).
        while not eof and not self._in.pipe and not pcap_variant_decidable(buf):
            buf, _, eof = self._more(buf, 0)
        variant = pcap_variant(buf, at_eof=eof)
        order = _MODIFIED_MAGICS.get(bytes(buf[:4]))
        if order is not None:  # the modified magic: otherwise a standard header
            buf = (PCAP_MAGIC_US.to_bytes(4, "little" if order == "<" else "big")
                   + bytes(buf[4:]))
        hdr0 = pcap_header(buf)
        assert hdr0 is not None  # the magic was checked in _detect
        extra = PCAP_VARIANTS[variant]
        hdr0 = replace(hdr0, extra=extra)
        st.variant = variant
        rec_len = RECORD_HEADER + extra
        linktype, fcs = hdr0.linktype, hdr0.fcs
        st.linktypes.add(linktype)
        max_incl = hdr0.max_incl
        incl_at = hdr0.incl
        swapped = hdr0.lengths_swapped
        frac_scale = hdr0.frac_ns
        base = 0  # file offset of buf[0]
        pos = PCAP_HEADER
        frame = 1
        while True:
            bad = False
            last = len(buf) - rec_len
            # The tight loop: record lengths are checked against max_incl afterwards, in bulk.
            offs, pos = record_offsets(buf, pos, hdr0)
            if pos <= last and incl_at(buf, pos) > max_incl:
                bad = True
            if offs:
                o = np.asarray(offs, dtype=np.int64)
                hdr = record_headers(buf, o, ">" if self._big else "<")
                if swapped == "yes":
                    hdr = hdr[:, [0, 1, 3, 2]]
                elif swapped == "maybe":
                    lo = np.minimum(hdr[:, 2], hdr[:, 3])
                    hdr[:, 3] = np.maximum(hdr[:, 2], hdr[:, 3])
                    hdr[:, 2] = lo
                over = np.flatnonzero(hdr[:, 2] > max_incl)
                if len(over):  # a corrupt record header: keep what came before it
                    k = int(over[0])
                    pos = int(o[k])
                    bad = True
                    o, hdr = o[:k], hdr[:k]
                sec, frac, cap, wire = hdr[:, 0], hdr[:, 1], hdr[:, 2], hdr[:, 3]
                wire = np.maximum(wire, cap)
                if fcs:  # the frame check sequence is no part of the packet
                    wire = np.maximum(wire - fcs, 0)
                    cap = np.minimum(cap, wire)
                n = len(o)
                if n:
                    yield RawBatch(buf, o + rec_len, cap, wire,
                                   sec * 1_000_000_000 + frac * frac_scale,
                                   np.full(n, linktype, dtype=np.int32), frame)
                frame += n
                st.packets += n
            damage = (f"corrupt record header at byte {base + pos}: captured length "
                      f"{incl_at(buf, pos)} exceeds {max_incl}") if bad else None
            left = len(buf) - pos
            want = rec_len + incl_at(buf, pos) if left >= 16 else rec_len
            if self._pass_ends(buf, base, pos, eof, damage,
                               f"last record has {left} of {want} bytes"):
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
                    raw = (hi << 32) | lo
                    rec = ifaces[section[iface]]
                    if not rec.raw_min <= raw <= rec.raw_max:
                        bad = (f"corrupt packet block at byte {base + pos}: timestamp {raw} "
                               "is out of range (before 1970 or after 2262)")
                        break
                    d_off.append(pos + 28)
                    d_cap.append(cap)
                    d_wire.append(max(wire, cap))
                    d_if.append(section[iface])
                    d_ts.append(raw)
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
                    d_ts.append(SPB_NO_TS)
                elif btype == _BlockType.IDB:
                    if blen < 20:
                        bad = f"short interface description block at byte {base + pos}"
                        break
                    lt, _res, snap = struct.unpack_from(e + "HHI", buf, pos + 8)
                    iface_rec = _Interface(lt, snap, 6, 0, 0)
                    self._idb_options(buf, pos + 16, pos + blen - 4, e, iface_rec)
                    wrong = iface_rec.limits()
                    if wrong is not None:
                        bad = f"corrupt interface description block at byte {base + pos}: {wrong}"
                        break
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
            if self._pass_ends(buf, base, pos, eof, bad,
                               f"last block has {len(buf) - pos} bytes"):
                return
            buf, shift, eof = self._more(buf, pos)
            base += shift
            pos = 0

    def _pass_ends(self, buf: bytes | bytearray, base: int, pos: int, eof: bool,
                   damage: str | None, partial: str) -> bool:
        """The end of a pass of the record walk over ``buf`` (the input from byte ``base``
        on), whose whole records end at ``pos``: count them as read, and say whether
        reading stops here. It stops at ``damage`` (a corrupt record), and when the
        input ended or failed, a partial record left at its end being damage too
        (``partial`` says what is left of it)."""
        st = self.status
        at = base + pos
        st.bytes_read = at
        if damage is not None:
            st.damaged(at, damage)
            return True
        if not eof and st.complete:
            return False
        if not self._over_limit(at) and pos < len(buf) and st.complete:
            st.damaged(at, f"capture truncated at byte {at}: {partial}")
        return True

    def _over_limit(self, at: int) -> bool:
        """At the end of the input: if it ended because it reached the bound on its
        decompressed size, say so (stopping at ``at``, the end of the last whole record)."""
        if not self._in.over or not self.status.complete:
            return False
        limit = self._in.max_decompressed
        self.status.damaged(at, f"stopped at byte {at}: the capture decompresses to more "
                                f"than the limit of {limit} bytes (max_decompressed_bytes)")
        return True

    @staticmethod
    def _idb_options(buf: bytes | bytearray, p: int, end: int, e: str, rec: _Interface) -> None:
        while p + 4 <= end:
            code, length = struct.unpack_from(e + "HH", buf, p)
            if code == 0 or p + 4 + length > end:  # the end, or an option past the block
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
        missing = np.fromiter((r == SPB_NO_TS for r in d_ts), dtype=bool, count=len(d_ts))
        # Every raw timestamp is within its interface's limits (checked as the blocks were
        # walked), so none of the arithmetic below leaves the int64 range.
        raw = np.asarray([0 if r == SPB_NO_TS else r for r in d_ts], dtype=np.uint64)
        ts = np.zeros(len(d_ts), dtype=np.int64)
        lts = np.zeros(len(d_ts), dtype=np.int32)
        for k in np.unique(iface_idx).tolist():
            rec = ifaces[k]
            m = (iface_idx == k) & ~missing
            lts[iface_idx == k] = rec.linktype
            r = raw[m]
            if rec.resol_dec is not None:  # at most 19 (Interface.limits)
                if rec.resol_dec <= 9:
                    t = r.astype(np.int64) * (10 ** (9 - rec.resol_dec))
                else:
                    t = (r // np.uint64(10 ** (rec.resol_dec - 9))).astype(np.int64)
            else:
                sh = rec.resol_bin  # at most 63
                sec = (r >> np.uint64(sh)).astype(np.int64)
                fr = (r & np.uint64((1 << sh) - 1)).astype(np.float64)
                t = sec * NS + np.floor(fr * 1e9 / float(1 << sh)).astype(np.int64)
            ts[m] = t + rec.offset_s * NS
        # Simple packet blocks carry no timestamp: they take the one before them.
        if missing.any():
            idx = np.where(missing, 0, np.arange(len(raw)))
            np.maximum.accumulate(idx, out=idx)
            ts = ts[idx]
            ts[missing & (idx == 0) & missing[0]] = self._ts_last
        if len(ts):
            self._ts_last = int(ts[-1])
        return RawBatch(buf, np.asarray(d_off, dtype=np.int64), np.asarray(d_cap, dtype=np.int64),
                        np.asarray(d_wire, dtype=np.int64), ts, lts, frame)


def open_source(source: str | Path | BinaryIO, chunk_size: int = 16 << 20,
                max_decompressed: int = MAX_DECOMPRESSED) -> CaptureSource:
    """Open a capture file, ``"-"`` (stdin) or a binary stream; format from the magic."""
    return CaptureSource(source, chunk_size, max_decompressed)
