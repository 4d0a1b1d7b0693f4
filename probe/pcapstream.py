"""A classic pcap stream checked and mended on its way into the live probe.

The live probe's input is a byte stream that nobody vouches for: ``cat a.pcap
b.pcap``, a feeder killed mid-record, bytes damaged in transit, a device whose
clock jumps. :class:`PcapStream` sits between the input and its two readers (the
capture ring and the flow meter) and hands both the same clean stream, one
pcap file header followed by whole records, so that their frame numbers agree:

* **Concatenated captures.** A pcap file header found where a record header
  was expected starts a new section; its records are rewritten into the first
  section's byte order and timestamp resolution (nanoseconds to microseconds
  truncates), and the stream is read whole. A section of another link type
  cannot join one pcap stream: the stream stops there (:attr:`stopped_at`).
* **Damage.** A record header is believed when its captured length is within
  the snapshot length (or the meter's own bound), its fraction of a second is
  below one second and its original length is not zero. Otherwise the bytes
  from there on are skipped until the next plausible record (the heuristics of
  Wireshark's and pcapfix's pcap repair): the captured length within the
  snapshot length and the original length, the timestamp within
  :data:`RESYNC_NEAR_S` of the last good record, and the record that follows
  plausible too (or the stream ending right after it). The skipped bytes are
  counted (:attr:`skipped_bytes`, :attr:`damaged`) and reading carries on.
* **Truncation.** At the end of input, a record cut short (or damage with no
  good record after it) sets :attr:`stopped_at`, the byte offset in the input
  where the stream stopped being read, and :attr:`stop_message`.
* **Time.** A record more than :data:`TIME_JUMP_S` away from the one before it
  (either way) is a timestamp jump: counted (:attr:`time_jumps`) and passed on;
  nothing here uses packet time as a clock.

* **Patched-libpcap records.** A stream whose first records read better with the
  longer record headers of the ss990417 or Nokia libpcaps
  (:func:`probe.sources.pcap_variant`, told once the first three records are in, or
  the input ended) has each record passed on with the standard 16-byte header, the
  extra bytes dropped: the file reader and the stream give the same packets.

A stream that does not start with a classic pcap magic (pcapng, gzip) is
passed on unchanged for the flow reader to judge; :attr:`kind` says which.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from probe.sources import (
    MIN_SNAP,
    PCAP_HEADER,
    PCAP_MAGICS,
    PCAP_VARIANTS,
    RECORD_HEADER,
    PcapHeader,
    pcap_header,
    pcap_variant,
    record_headers,
    record_offsets,
)

__all__ = ["RESYNC_NEAR_S", "TIME_JUMP_S", "PcapStream"]

RESYNC_NEAR_S = 86400.0
"""While resynchronising, a candidate record's time must be this close to the last good
record's."""
TIME_JUMP_S = 3600.0
"""A record this far from the one before it (either way) is counted as a time jump."""


def _section(header: bytes | bytearray) -> PcapHeader | None:
    """The section a 24-byte pcap file header opens (version 2 only), or None."""
    sec = pcap_header(header)
    return sec if sec is not None and sec.major == 2 else None


_MAGIC_WORDS = {order: np.array([int.from_bytes(m, "little" if order == "<" else "big")
                                for m in PCAP_MAGICS], dtype=np.int64)
                for order in "<>"}
"""The pcap magics as a record header's first field reads them in each byte order."""


def _lengths(sec: PcapHeader, a: int, b: int) -> tuple[int, int]:
    """(captured, original) length from a record header's third and fourth fields, in
    the order the section's version wrote them (:attr:`PcapHeader.lengths_swapped`). A
    later section whose version wrote them otherwise than the first has its records
    rewritten the first section's way: what comes out is read with the first header."""
    swapped = sec.lengths_swapped
    if swapped == "yes" or (swapped == "maybe" and a > b):
        return b, a
    return a, b


def _written(sec: PcapHeader, incl: int, orig: int) -> tuple[int, int]:
    """A record header's third and fourth fields for these lengths, as the section's
    version writes them (:func:`_lengths` reads them back)."""
    return (orig, incl) if sec.lengths_swapped == "yes" else (incl, orig)


VARIANT_WAIT = 1 << 20
"""Bytes of a stream's start after which its record header variant is told with what
has come, whole records or not."""


def _variant_ready(buf: bytearray, sec: PcapHeader) -> bool:
    """Whether ``buf`` (a stream's start) holds the first three records as the standard
    header reads them: enough for :func:`pcap_variant` to find a standard stream
    standard (nothing wrong with it) or another reading better, without holding a
    quiet live stream back for longer than its third packet."""
    if len(buf) >= VARIANT_WAIT:
        return True
    pos = PCAP_HEADER
    for _ in range(3):
        if pos + RECORD_HEADER > len(buf):
            return False
        incl = sec.incl(buf, pos)
        if incl > MIN_SNAP:
            return True
        pos += RECORD_HEADER + incl
        if pos > len(buf):
            return False
    return True


class PcapStream:
    """Checks a pcap byte stream and gives it on clean (see the module docstring).

    ``feed`` takes the next input bytes and returns the clean bytes ready to pass
    on; ``finish`` is called at the end of input. ``note`` (optional) is called
    with one human line for each damage, section and the first few time jumps.
    ``fast=False`` walks every record with the per-record code alone (the reference
    the fast path, :meth:`_plain_run`, is held to).
    """

    def __init__(self, note: Callable[[str], None] | None = None, *,
                 fast: bool = True) -> None:
        self._note = note or (lambda _line: None)
        self._fast = fast
        self._buf = bytearray()
        self._base = 0
        """Input offset of ``_buf[0]``."""
        self._out: PcapHeader | None = None
        self._cur: PcapHeader | None = None
        self._last_ts: float | None = None
        self._good_ts: float | None = None
        """Time of the last record not counted as a jump (the resync reference)."""
        self._damage_at: int | None = None
        """Input offset where the damage being skipped began."""
        self._extra = 0
        """Bytes each input record header carries after the standard 16 (the first
        section's variant)."""
        self.variant = "pcap"
        """The first section's record header variant (:data:`probe.sources.PCAP_VARIANTS`)."""
        self.kind: str | None = None
        """``pcap`` once the stream is known to be classic pcap, ``other`` for a stream
        passed on unchanged, None before the first bytes."""
        self.frames = 0
        """Records passed on."""
        self.sections = 0
        """pcap file headers read (more than one in a concatenated stream)."""
        self.skipped_bytes = 0
        """Bytes of damage skipped while resynchronising."""
        self.damaged = 0
        """Stretches of damage skipped."""
        self.time_jumps = 0
        """Records more than :data:`TIME_JUMP_S` from the one before."""
        self.converted = 0
        """Records rewritten into the first section's byte order or resolution."""
        self.stopped_at: int | None = None
        """Input offset where reading stopped early (truncated, or a section that cannot
        be joined), None if the stream was read to its end."""
        self.stop_message: str | None = None
        """Why reading stopped early."""
        self.record_starts: list[int] | None = None
        """Where the records of the bytes ``feed`` or ``finish`` last returned start, when
        they are one run of records passed on unchanged and read as the first section
        reads them (after the file header, in the first bytes): the capture ring is
        given them and need not walk the records again. None otherwise."""

    # -- the stream -----------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take the next input bytes; return the clean bytes they complete."""
        self.record_starts = None
        if self.kind == "other":
            return data
        if self.stopped_at is not None:
            return b""
        self._buf += data
        return self._walk(eof=False)

    def finish(self) -> bytes:
        """The input ended: return the last clean bytes and note a truncation."""
        self.record_starts = None
        if self.kind == "other" or self.stopped_at is not None:
            return b""
        if self.kind is None:  # too short to tell: let the flow reader say what it is
            self.kind = "other"
            out = bytes(self._buf)
            self._buf = bytearray()
            return out
        out = self._walk(eof=True)
        buf = self._buf
        if self._damage_at is not None:
            skipped = self._base + len(buf) - self._damage_at
            self.skipped_bytes += len(buf)
            self._stop(self._damage_at, f"damaged from byte {self._damage_at} to the end of "
                                        f"the input ({skipped} bytes): no record found after it")
        elif buf:
            at = self._base
            cur = self._cur
            if bytes(buf[:4]) in PCAP_MAGICS and len(buf) < PCAP_HEADER:
                self._stop(at, f"capture truncated at byte {at}: a pcap file header with "
                               f"{len(buf)} of {PCAP_HEADER} bytes")
            elif len(buf) >= RECORD_HEADER and cur is not None:
                want = RECORD_HEADER + self._extra + cur.incl(buf, 0)
                self._stop(at, f"capture truncated at byte {at}: last record has {len(buf)} "
                               f"of {want} bytes")
            else:
                self._stop(at, f"capture truncated at byte {at}: {len(buf)} bytes of a "
                               f"header")
        self._buf = bytearray()
        return out

    def _stop(self, at: int, message: str) -> None:
        self.stopped_at = at
        self.stop_message = message
        self._note(message)

    def _walk(self, eof: bool) -> bytes:
        buf = self._buf
        out = bytearray()
        if self.kind is None:
            if len(buf) < 4:
                return b""
            if bytes(buf[:4]) not in PCAP_MAGICS:
                self.kind = "other"
                self._buf = bytearray()
                return bytes(buf)
            if len(buf) < PCAP_HEADER:
                return b""
            first = _section(buf[:PCAP_HEADER])
            if first is None:
                self.kind = "other"
                self._buf = bytearray()
                return bytes(buf)
            if not eof and not _variant_ready(buf, first):
                return b""
            self.variant = pcap_variant(buf, at_eof=eof)
            self._extra = PCAP_VARIANTS[self.variant]
            if self._extra:
                self._note(f"records have the {self.variant} header ({self._extra} bytes "
                           "more than the standard 16): passed on as standard records")
            self.kind = "pcap"
            self.sections = 1
            self._out = self._cur = first
            out += buf[:PCAP_HEADER]
            pos = PCAP_HEADER
        else:
            pos = 0
        out_sec = self._out
        assert out_sec is not None
        end = len(buf)
        run = begin = pos  # start of a run of records passed on unchanged
        head = len(out)
        frames = self.frames
        taken: list[int] = []  # the offsets of the records of the last plain run
        while True:
            cur = self._cur
            assert cur is not None
            if self._damage_at is not None:
                found, resume = self._resync(buf, pos, eof)
                if found is None:  # what was scanned is damage; the rest may still tell
                    self.skipped_bytes += resume - pos
                    pos = run = resume
                    break
                self.skipped_bytes += found - pos
                self.damaged += 1
                self._note(f"skipped {self._base + found - self._damage_at} bytes of damage "
                           f"at byte {self._damage_at} (after frame {self.frames}): "
                           f"resynchronised")
                self._damage_at = None
                pos = run = found
                continue
            if (self._fast and not self._extra and cur.order == out_sec.order
                    and cur.frac_ns == out_sec.frac_ns
                    and cur.lengths_swapped == out_sec.lengths_swapped):
                pos, taken = self._plain_run(buf, pos)
            if pos + 4 <= end and bytes(buf[pos:pos + 4]) in PCAP_MAGICS:
                if pos + PCAP_HEADER > end:
                    break
                sec = _section(buf[pos:pos + PCAP_HEADER])
                if sec is not None:
                    out += buf[run:pos]
                    if sec.linktype != out_sec.linktype:
                        self._stop(self._base + pos,
                                   f"a capture of link type {sec.linktype} begins at byte "
                                   f"{self._base + pos} of a stream of link type "
                                   f"{out_sec.linktype}: the stream is read up to there "
                                   f"(give the captures one at a time)")
                        pos = run = end
                        break
                    self.sections += 1
                    self._cur = sec
                    self._extra = 0  # a section's variant is told at the stream's start only
                    self._note(f"capture {self.sections} begins at byte {self._base + pos} "
                               f"(frame {self.frames + 1}): read on")
                    pos = run = pos + PCAP_HEADER
                    continue
            rec_len = RECORD_HEADER + self._extra
            if pos + rec_len > end:
                break
            sec_s, frac, len_a, len_b = cur.record.unpack_from(buf, pos)
            incl, orig = _lengths(cur, len_a, len_b)
            if not self._plausible(cur, frac, incl, orig):
                out += buf[run:pos]
                self._damage_at = self._base + pos
                run = pos
                continue
            nxt = pos + rec_len + incl
            if nxt > end:
                break
            ts = sec_s + frac * cur.frac_ns / 1e9
            self._time(ts)
            if (cur.order != out_sec.order or cur.frac_ns != out_sec.frac_ns or self._extra
                    or _lengths(out_sec, len_a, len_b) != (incl, orig)):
                out += buf[run:pos]
                if cur.frac_ns != out_sec.frac_ns:
                    frac = frac * cur.frac_ns // out_sec.frac_ns
                out += out_sec.record.pack(sec_s, frac, *_written(out_sec, incl, orig))
                out += buf[pos + rec_len:nxt]
                self.converted += not self._extra
                run = nxt
            self.frames += 1
            pos = nxt
        if (self._damage_at is None and run == begin and len(out) == head
                and len(taken) == self.frames - frames):
            self.record_starts = [p - begin + head for p in taken]
        if self._damage_at is None:
            with memoryview(buf) as view:
                out += view[run:pos]
        del buf[:pos]
        self._base += pos
        return bytes(out)

    def _plain_run(self, buf: bytearray, pos: int) -> tuple[int, list[int]]:
        """Take the run of records from ``pos`` that are passed on as they are, all at
        once: the per-record walk below, without its per-record Python, for a section in
        the first section's byte order and resolution with standard record headers.
        Counts their frames and time jumps (and notes them) as :meth:`_time` does.
        Returns the offset of the first record it leaves to the per-record walk (one
        starting with a pcap magic: a new section, maybe; one not plausible: damage; one
        not complete in ``buf``) and the offsets of the records it took."""
        cur = self._cur
        assert cur is not None
        offs, end = record_offsets(buf, pos, cur)
        if not offs:
            return pos, offs
        sec, frac, len_a, len_b = record_headers(buf, offs, cur.order).T
        swapped = cur.lengths_swapped
        if swapped == "no":
            incl, orig = len_a, len_b
        elif swapped == "yes":
            incl, orig = len_b, len_a
        else:
            incl, orig = np.minimum(len_a, len_b), np.maximum(len_a, len_b)
        plain = ((incl <= cur.max_incl) & (frac * cur.frac_ns < 1_000_000_000) & (orig > 0)
                 & ~np.isin(sec, _MAGIC_WORDS[cur.order]))
        n = len(offs) if plain.all() else int(np.argmin(plain))
        if n == 0:
            return pos, []
        ts = sec[:n] + frac[:n] * cur.frac_ns / 1e9
        prev = np.empty_like(ts)
        prev[0] = ts[0] if self._last_ts is None else self._last_ts
        prev[1:] = ts[:-1]
        jump = np.abs(ts - prev) > TIME_JUMP_S
        if jump.any():
            at = np.flatnonzero(jump)
            noted = at[:max(0, 5 - self.time_jumps)]  # as _time notes the first five
            for j in noted:
                self.time_jumps += 1
                self._note(f"frame {self.frames + int(j) + 1}: timestamp jumps "
                           f"{float(ts[j] - prev[j]):+.0f} s")
            self.time_jumps += len(at) - len(noted)
            steady = np.flatnonzero(~jump)
            if len(steady):
                self._good_ts = float(ts[steady[-1]])
        else:
            self._good_ts = float(ts[-1])
        self._last_ts = float(ts[-1])
        self.frames += n
        if n == len(offs):
            return end, offs
        return offs[n], offs[:n]

    @staticmethod
    def _plausible(sec: PcapHeader, frac: int, incl: int, orig: int) -> bool:
        return incl <= sec.max_incl and frac * sec.frac_ns < 1_000_000_000 and orig > 0

    def _near(self, ts: float) -> bool:
        refs = [t for t in (self._good_ts, self._last_ts) if t is not None]
        return not refs or any(abs(ts - t) <= RESYNC_NEAR_S for t in refs)

    def _candidate(self, buf: bytearray, p: int, sec: PcapHeader) -> int | None:
        """End of a plausible record at ``p`` (strict checks), or None."""
        s, frac, len_a, len_b = (int(x) for x in sec.record.unpack_from(buf, p))
        incl, orig = _lengths(sec, len_a, len_b)
        if not (self._plausible(sec, frac, incl, orig) and incl <= orig
                and self._near(s + frac * sec.frac_ns / 1e9)):
            return None
        return p + RECORD_HEADER + self._extra + incl

    def _resync(self, buf: bytearray, pos: int, eof: bool) -> tuple[int | None, int]:
        """(offset of the next plausible record or pcap file header from ``pos``, None if
        there is none in ``buf`` yet; the first offset not yet ruled out)."""
        cur = self._cur
        assert cur is not None
        end = len(buf)
        for p in range(pos, end):
            if p + RECORD_HEADER + self._extra > end:
                return None, p
            if bytes(buf[p:p + 4]) in PCAP_MAGICS:
                if p + PCAP_HEADER > end:
                    return None, p
                if _section(buf[p:p + PCAP_HEADER]) is not None:
                    return p, p
            nxt = self._candidate(buf, p, cur)
            if nxt is None:
                continue
            if nxt == end and eof:
                return p, p
            if nxt + RECORD_HEADER + self._extra > end:
                if eof:
                    continue
                return None, p  # wait for the bytes that tell
            if self._candidate(buf, nxt, cur) is not None or (
                    bytes(buf[nxt:nxt + 4]) in PCAP_MAGICS):
                return p, p
        return None, end

    def _time(self, ts: float) -> None:
        last = self._last_ts
        if last is not None and abs(ts - last) > TIME_JUMP_S:
            self.time_jumps += 1
            if self.time_jumps <= 5:
                self._note(f"frame {self.frames + 1}: timestamp jumps {ts - last:+.0f} s")
        else:
            self._good_ts = ts
        self._last_ts = ts
