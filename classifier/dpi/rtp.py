"""RTP headers, RTCP compound packets, and cheap RTP/RTCP predicates.

RTP (RFC 3550 §5.1) is parsed up to the end of the header: fixed part, CSRC
list and header extension (§5.3.1). The payload is usually SRTP-encrypted, so
only its length is reported. RTCP (RFC 3550 §6) is walked packet by packet
through a compound datagram: SR and RR with report blocks, SDES items, BYE,
APP, transport- and payload-specific feedback (RFC 4585) and XR (RFC 3611).

SRTCP (RFC 3711 §3.4) encrypts everything after the first eight bytes and
appends an index and an authentication tag, so on an SRTCP datagram only the
first packet's header and sender SSRC are meaningful; :attr:`RtcpCompound.complete`
tells the two apart. :func:`rtcp_report_blocks` is the classifier's fast read of the report
blocks of a plain (complete, SR/RR/SDES) compound; anything else is left to :func:`parse_rtcp`.

Errors (all from :mod:`probe.errors`)::

    ParseError
    ├── Truncated   the buffer ends inside a header or a packet
    └── Malformed   version is not 2, a count that cannot fit, a bad packet type
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from probe.cursor import Cursor
from probe.errors import Malformed, ParseError
from probe.payload_types import STATIC_PAYLOAD_TYPES, PayloadTypeInfo
from probe.plugins import Prefix

__all__ = [
    "KEEP_WHOLE",
    "ReportBlock",
    "ReportGist",
    "RtcpCompound",
    "RtcpPacket",
    "RtcpType",
    "RtpHeader",
    "SdesChunk",
    "SdesItem",
    "SdesType",
    "SenderInfo",
    "is_rtcp",
    "is_rtcp_compound_start",
    "is_rtp",
    "parse_rtcp",
    "parse_rtp",
    "rtcp_report_blocks",
]

RTP_LAYER = "rtp"
RTCP_LAYER = "rtcp"


# -- RTP ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RtpHeader:
    """An RTP header (RFC 3550 §5.1)."""

    version: int
    """Always 2."""
    padding: bool
    """P bit: padding octets end the packet (count in the last octet, unless SRTP)."""
    extension: bool
    """X bit: a header extension follows the CSRC list."""
    marker: bool
    """M bit (profile-defined; frame boundary for video, talkspurt start for audio)."""
    payload_type: int
    """7-bit payload type."""
    sequence: int
    """16-bit sequence number."""
    timestamp: int
    """32-bit media timestamp."""
    ssrc: int
    """Synchronisation source identifier."""
    csrcs: tuple[int, ...]
    """Contributing sources (CC of them)."""
    extension_profile: int | None
    """First 16 bits of the header extension (0xBEDE one-byte, 0x100x two-byte, RFC 8285)."""
    extension_data: bytes
    """Header extension body (length * 4 bytes); empty without X."""
    header_length: int
    """Bytes from the start of the packet to the payload."""
    payload_length: int
    """Bytes after the header (padding and any SRTP tag included)."""

    @property
    def static_type(self) -> PayloadTypeInfo | None:
        """RFC 3551 meaning of the payload type when it is a static one."""
        return STATIC_PAYLOAD_TYPES.get(self.payload_type)


def _parse_rtp(cur: Cursor) -> RtpHeader:
    start = cur.pos
    b0 = cur.u8()
    version = b0 >> 6
    if version != 2:
        raise Malformed(RTP_LAYER, start, f"version {version}")
    b1 = cur.u8()
    sequence = cur.u16()
    timestamp = cur.u32()
    ssrc = cur.u32()
    csrcs = tuple(cur.u32() for _ in range(b0 & 0x0F))
    profile: int | None = None
    ext = b""
    if b0 & 0x10:
        profile = cur.u16()
        ext = cur.take(cur.u16() * 4)
    return RtpHeader(
        version=version, padding=bool(b0 & 0x20), extension=bool(b0 & 0x10),
        marker=bool(b1 & 0x80), payload_type=b1 & 0x7F, sequence=sequence,
        timestamp=timestamp, ssrc=ssrc, csrcs=csrcs, extension_profile=profile,
        extension_data=ext, header_length=cur.pos - start, payload_length=cur.remaining(),
    )


def parse_rtp(data: bytes | bytearray | memoryview) -> RtpHeader:
    """Parse the RTP header at the start of ``data``.

    Raises :class:`Malformed` when the version is not 2 or the payload type falls in
    64-95, the range RFC 5761 §4 keeps free so RTCP (PT 192-223) can share the port.
    """
    cur = Cursor(data, RTP_LAYER)
    hdr = _parse_rtp(cur)
    if 64 <= hdr.payload_type <= 95:
        raise Malformed(RTP_LAYER, 1, f"payload type {hdr.payload_type} collides with RTCP")
    return hdr


# -- RTCP -----------------------------------------------------------------------------------


class RtcpType(IntEnum):
    """RTCP packet types."""

    SR = 200  # RFC 3550 §6.4.1
    RR = 201  # RFC 3550 §6.4.2
    SDES = 202  # RFC 3550 §6.5
    BYE = 203  # RFC 3550 §6.6
    APP = 204  # RFC 3550 §6.7
    RTPFB = 205  # RFC 4585 §6.2: transport-layer feedback (NACK, TWCC...)
    PSFB = 206  # RFC 4585 §6.3: payload-specific feedback (PLI, FIR, REMB...)
    XR = 207  # RFC 3611 §2


KEEP_WHOLE = tuple(Prefix(f"rtcp-{t.name.lower()}", 0x80000000 | t << 16, 0xC0FF0000)
                   for t in (RtcpType.SR, RtcpType.RR))
"""For the probe (:mod:`probe.plugins`): RTCP sender and receiver reports (version 2,
packet type 200/201) are kept whole whatever their rank in a flow; their report blocks
give the far side's view of loss and jitter over the whole call."""


class SdesType(IntEnum):
    """SDES item types (RFC 3550 §6.5)."""

    END = 0
    CNAME = 1
    NAME = 2
    EMAIL = 3
    PHONE = 4
    LOC = 5
    TOOL = 6
    NOTE = 7
    PRIV = 8


@dataclass(frozen=True, slots=True)
class SenderInfo:
    """Sender information of an SR (RFC 3550 §6.4.1)."""

    ntp_timestamp: int
    """64-bit NTP wallclock time (seconds << 32 | fraction)."""
    rtp_timestamp: int
    """RTP timestamp matching the NTP time."""
    packet_count: int
    """Packets sent since the start."""
    octet_count: int
    """Payload octets sent since the start."""


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """One reception report block (RFC 3550 §6.4.1)."""

    ssrc: int
    """Source this block reports on."""
    fraction_lost: int
    """Loss since the previous report, as a fraction of 256."""
    cumulative_lost: int
    """Packets lost since the start; signed 24-bit (duplicates can make it negative)."""
    highest_sequence: int
    """Extended highest sequence number received (cycles << 16 | seq)."""
    jitter: int
    """Interarrival jitter in timestamp units."""
    last_sr: int
    """Middle 32 bits of the NTP time of the last SR received (LSR)."""
    delay_since_last_sr: int
    """Delay since that SR, in units of 1/65536 s (DLSR)."""


@dataclass(frozen=True, slots=True)
class SdesItem:
    """One SDES item."""

    type: int
    """Item type (compare with :class:`SdesType`)."""
    value: bytes
    """Item text, normally UTF-8."""


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One SDES chunk: a source and its items."""

    ssrc: int
    """SSRC or CSRC the items describe."""
    items: tuple[SdesItem, ...]
    """Items in order (END excluded)."""

    @property
    def cname(self) -> str | None:
        """The CNAME item as text, if present."""
        for it in self.items:
            if it.type == SdesType.CNAME:
                return it.value.decode("utf-8", errors="replace")
        return None


@dataclass(frozen=True, slots=True)
class RtcpPacket:
    """One RTCP packet of a compound datagram."""

    packet_type: int
    """Packet type (compare with :class:`RtcpType`)."""
    count: int
    """The 5-bit field: report count, source count, APP subtype or feedback FMT."""
    padding: bool
    """P bit."""
    length: int
    """Length field: 32-bit words minus one."""
    ssrc: int | None
    """Sender SSRC (SR, RR, APP, RTPFB, PSFB, XR); None for SDES/BYE, which list sources."""
    sender_info: SenderInfo | None
    """SR sender information."""
    reports: tuple[ReportBlock, ...]
    """SR/RR reception report blocks."""
    sdes: tuple[SdesChunk, ...]
    """SDES chunks."""
    bye_sources: tuple[int, ...]
    """Sources leaving (BYE)."""
    bye_reason: str | None
    """Optional BYE reason text."""
    app_name: bytes | None
    """APP 4-character name."""
    media_ssrc: int | None
    """Media source SSRC of RTPFB/PSFB feedback."""
    decoded: bool
    """False when the counts did not fit the body (SRTCP-encrypted or damaged): then only the
    header fields and ``ssrc`` (the first word) mean anything."""
    body: bytes
    """Whatever follows the fixed fields: profile extensions, APP data, FCI, XR blocks."""

    @property
    def cnames(self) -> tuple[str, ...]:
        """Every CNAME of an SDES packet."""
        return tuple(c for c in (ch.cname for ch in self.sdes) if c is not None)


@dataclass(frozen=True, slots=True)
class RtcpCompound:
    """A compound RTCP datagram."""

    packets: tuple[RtcpPacket, ...]
    """Packets that decoded cleanly, in order."""
    complete: bool
    """True when the packets (plus padding) fill the datagram exactly: plain RTCP. False means
    SRTCP or damage: trust only the first packet's header and SSRC."""
    trailer: bytes
    """Bytes the walk could not use (SRTCP encrypted part, index and tag)."""


def _report_block(cur: Cursor) -> ReportBlock:
    ssrc = cur.u32()
    fraction = cur.u8()
    lost = cur.u24()
    if lost & 0x800000:
        lost -= 1 << 24
    return ReportBlock(ssrc, fraction, lost, cur.u32(), cur.u32(), cur.u32(), cur.u32())


def _sdes_chunks(cur: Cursor, count: int) -> tuple[SdesChunk, ...]:
    chunks: list[SdesChunk] = []
    for _ in range(count):
        chunk_start = cur.pos
        ssrc = cur.u32()
        items: list[SdesItem] = []
        while True:
            item_type = cur.u8()
            if item_type == SdesType.END:
                break
            items.append(SdesItem(item_type, cur.take(cur.u8())))
        cur.skip((-(cur.pos - chunk_start)) % 4)  # null octets up to the next 32-bit boundary
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return tuple(chunks)


def _parse_rtcp_packet(cur: Cursor) -> RtcpPacket:
    start = cur.pos
    b0 = cur.u8()
    if b0 >> 6 != 2:
        raise Malformed(RTCP_LAYER, start, f"version {b0 >> 6}")
    ptype = cur.u8()
    if not 192 <= ptype <= 223:
        raise Malformed(RTCP_LAYER, start + 1, f"packet type {ptype}")
    count = b0 & 0x1F
    length = cur.u16()
    body = cur.sub(length * 4)
    ssrc: int | None = None
    sender: SenderInfo | None = None
    reports: tuple[ReportBlock, ...] = ()
    sdes: tuple[SdesChunk, ...] = ()
    bye: tuple[int, ...] = ()
    reason: str | None = None
    app_name: bytes | None = None
    media_ssrc: int | None = None
    decoded = True
    try:
        if ptype in (RtcpType.SR, RtcpType.RR):
            ssrc = body.u32()
            if ptype == RtcpType.SR:
                sender = SenderInfo(body.u64(), body.u32(), body.u32(), body.u32())
            reports = tuple(_report_block(body) for _ in range(count))
        elif ptype == RtcpType.SDES:
            sdes = _sdes_chunks(body, count)
        elif ptype == RtcpType.BYE:
            bye = tuple(body.u32() for _ in range(count))
            if not body.eof():
                reason = body.take(body.u8()).decode("utf-8", errors="replace")
        elif ptype == RtcpType.APP:
            ssrc = body.u32()
            app_name = body.take(4)
        elif ptype in (RtcpType.RTPFB, RtcpType.PSFB):
            ssrc = body.u32()
            media_ssrc = body.u32()
        elif body.remaining() >= 4:  # XR and unknown types start with the sender SSRC
            ssrc = body.u32()
    except ParseError:
        # The counts do not fit the body: encrypted (SRTCP) or damaged. Keep the header and
        # the first word, which SRTCP leaves in clear.
        decoded = False
    if not decoded:
        body.seek(start + 4)
        ssrc = body.u32() if body.remaining() >= 4 else None
        sender, reports, sdes, bye = None, (), (), ()
        reason, app_name, media_ssrc = None, None, None
    return RtcpPacket(ptype, count, bool(b0 & 0x20), length, ssrc, sender, reports, sdes, bye,
                      reason, app_name, media_ssrc, decoded, body.rest())


def parse_rtcp(data: bytes | bytearray | memoryview) -> RtcpCompound:
    """Walk a compound RTCP datagram.

    The first packet's header must fit (else :class:`ParseError`); a later packet that does
    not is left in :attr:`RtcpCompound.trailer` with ``complete`` False (SRTCP, RFC 3711 §3.4).
    """
    buf = bytes(data)
    cur = Cursor(buf, RTCP_LAYER)
    packets = [_parse_rtcp_packet(cur)]
    # RFC 3550 §6.4.1: only the last packet of a compound may carry padding
    while not cur.eof() and not packets[-1].padding and packets[-1].decoded:
        at = cur.pos
        try:
            packets.append(_parse_rtcp_packet(cur))
        except ParseError:
            cur.seek(at)
            break
    complete = cur.eof() and all(p.decoded for p in packets)
    return RtcpCompound(tuple(packets), complete, cur.rest())


ReportGist = tuple[int, int, int, int, int, int]
"""(sender SSRC, source SSRC, fraction lost, cumulative lost, highest sequence, jitter)."""


def rtcp_report_blocks(data: bytes) -> tuple[ReportGist, ...] | None:
    """The classifier's fast read of a plain compound RTCP datagram of SR, RR and SDES
    packets: every report block as a :data:`ReportGist`, in order, with the values
    :func:`parse_rtcp` gives when it finds the compound complete. ``None`` for anything
    else (other packet types, SRTCP, damage): :func:`parse_rtcp` then gives the full
    answer. Walks the bytes directly, with the same length checks."""
    n = len(data)
    if not n:
        return None
    out: list[ReportGist] = []
    pos = 0
    while pos < n:
        if pos + 4 > n:
            return None
        b0 = data[pos]
        ptype = data[pos + 1]
        if b0 >> 6 != 2:
            return None
        count = b0 & 0x1F
        body = pos + 4
        end = body + 4 * ((data[pos + 2] << 8) | data[pos + 3])
        if end > n or (b0 & 0x20 and end != n):  # padding only on the last packet (§6.4.1)
            return None
        if ptype in (RtcpType.SR, RtcpType.RR):
            p = body + (24 if ptype == RtcpType.SR else 4)  # SSRC [+ sender info]
            if p + 24 * count > end:
                return None
            sender = int.from_bytes(data[body:body + 4], "big")
            for _ in range(count):
                lost = int.from_bytes(data[p + 5:p + 8], "big")
                if lost & 0x800000:
                    lost -= 1 << 24
                out.append((sender, int.from_bytes(data[p:p + 4], "big"), data[p + 4], lost,
                            int.from_bytes(data[p + 8:p + 12], "big"),
                            int.from_bytes(data[p + 12:p + 16], "big")))
                p += 24
        elif ptype == RtcpType.SDES:  # must decode: SSRC, items up to END, 32-bit aligned
            p = body
            for _ in range(count):
                chunk = p
                p += 4
                while True:
                    if p >= end:
                        return None
                    if data[p] == SdesType.END:
                        p += 1
                        break
                    if p + 2 > end or p + 2 + data[p + 1] > end:
                        return None
                    p += 2 + data[p + 1]
                p += -(p - chunk) % 4
                if p > end:
                    return None
        else:
            return None
        pos = end
    return tuple(out)


# -- predicates -----------------------------------------------------------------------------


def is_rtp(payload: bytes | bytearray | memoryview) -> bool:
    """Cheap test: version 2, header fits, payload type outside RTCP's 64-95.

    The version bits alone keep out STUN (first byte 0-3), DTLS (20-63), TURN ChannelData
    (64-79) and QUIC (64-127 short header, 192-255 long header) (RFC 9443 §3).
    """
    if len(payload) < 12 or payload[0] >> 6 != 2:
        return False
    try:
        parse_rtp(payload)
    except ParseError:
        return False
    return True


def is_rtcp(payload: bytes | bytearray | memoryview) -> bool:
    """Cheap test on the first RTCP header: version 2, PT 200-207, length fits (SRTCP too)."""
    if len(payload) < 8 or payload[0] >> 6 != 2 or not 200 <= payload[1] <= 207:
        return False
    words = (payload[2] << 8) | payload[3]
    return (words + 1) * 4 <= len(payload)


def is_rtcp_compound_start(payload: bytes | bytearray | memoryview) -> bool:
    """RFC 3550 appendix A.2's header validity for the first packet of a compound RTCP
    packet, which SRTCP leaves in clear (RFC 3711 §3.4): version 2, no padding, a sender
    or receiver report whose length holds its report count's blocks (SR: 6 + 6 RC words,
    RR: 1 + 6 RC) and fits the datagram."""
    if len(payload) < 8 or payload[0] >> 6 != 2 or payload[0] & 0x20:
        return False
    pt = payload[1]
    if pt not in (200, 201):
        return False
    rc = payload[0] & 0x1F
    words = (payload[2] << 8) | payload[3]
    need = (6 if pt == 200 else 1) + 6 * rc
    return need <= words and (words + 1) * 4 <= len(payload)
