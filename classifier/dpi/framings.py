"""Application framings of call apps that are not a public protocol.

Each ``parse_*`` function looks at one transport payload and returns a record
of what it recognised, or ``None`` when the bytes are not that framing. It
raises :class:`~probe.errors.ParseError` only when the bytes claim the framing
(the fixed marker is there) but what follows is cut short or contradicts it.
Recognising a framing is evidence for the engine, not a verdict: several of
these markers are short and need the flow's ports or addresses to back them.

- Zoom: the SFU encapsulation spoken with Zoom's media routers on UDP 8801-8810
  (types 1-5; type 5 carries a media header naming audio, video, screen share
  or RTCP and placing the RTP/RTCP packet), the same media header alone on
  peer-to-peer flows, and the P2P hello that starts ``1f 02 01``.
- Discord: voice IP discovery (74-byte request/response) and the 8-byte
  ``13 37 ca fe`` keep-alive.
- Telegram: relay packets whose peer tag is followed by exactly twelve 0xFF
  bytes (libtgvoip's UDP reflector requests and replies).
- Viber: the short UDP and length-prefixed TCP framings of the Viber app.
- WhatsApp: the chat connection prologue on TCP (``ED 00 01`` edge routing
  header, ``WA`` + version).
- IMO: the call packets nDPI's imo.c recognises: the 10-byte ping ``09 02``, the
  11-byte ``00 09 03`` reply through a relay and 1099-byte ``88 49 1a 00`` media
  packets; marsad wants two of them in a flow (:func:`imo_packets`).

Errors (all from :mod:`probe.errors`)::

    ParseError
    ├── Truncated   the framing's marker is present but the payload stops early
    └── Malformed   the marker is present but a length or field contradicts it
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from probe.cursor import Cursor
from probe.errors import Malformed, Truncated
from probe.plugins import Framing, PayloadView

__all__ = [
    "TELEGRAM_PEER_TAG_LEN",
    "TELEGRAM_RELAY_MARKER",
    "ZOOM_KEEPALIVE_LEN",
    "ZOOM_MEDIA_TYPES",
    "ZOOM_P2P_PORT_AT",
    "ZOOM_SFU_HEADER_LEN",
    "ZOOM_SFU_RTP",
    "DiscordIpDiscovery",
    "DiscordKeepalive",
    "TelegramRelay",
    "ViberFraming",
    "WhatsAppPrologue",
    "ZoomMedia",
    "ZoomMediaKind",
    "ZoomP2pHello",
    "ZoomSfu",
    "ZoomSfuType",
    "imo_packets",
    "is_imo_packet",
    "parse_discord",
    "parse_telegram_relay",
    "parse_viber",
    "parse_whatsapp_prologue",
    "parse_zoom_media",
    "parse_zoom_p2p_hello",
    "parse_zoom_sfu",
]


# -- Zoom -----------------------------------------------------------------------------------
# Layout facts: Princeton-Cabernet zoom-analysis (Wireshark dissector and paper, IMC 2022)
# and nDPI's zoom.c; checked against zoom.pcap and that project's published packet bytes.

ZOOM_LAYER = "zoom"
ZOOM_SFU_HEADER_LEN = 8
"""The SFU header of type-5 packets: type(1) sequence(2) unknown(4) direction(1)."""
ZOOM_KEEPALIVE_LEN = 13
"""Keep-alive requests and responses (types 3 and 4) are 13 bytes, bytes 1-3 zero."""
_ZOOM_SFU_HEADER_LEN = ZOOM_SFU_HEADER_LEN


class ZoomSfuType(IntEnum):
    """First byte of the SFU encapsulation."""

    CLIENT_HELLO = 0x01  # client -> router, opens the flow
    SERVER_HELLO = 0x02  # router -> client
    KEEPALIVE_REQ = 0x03  # 13-byte exchange seen after the hellos
    KEEPALIVE_RSP = 0x04
    MEDIA = 0x05  # media header follows the 8-byte SFU header


class ZoomMediaKind(StrEnum):
    """What a Zoom media header carries (the first three values are marsad's media
    names)."""

    AUDIO = "audio"
    VIDEO = "video"
    SCREEN_SHARE = "screen"
    RTCP = "rtcp"


ZOOM_MEDIA_TYPES: Mapping[int, tuple[ZoomMediaKind, int]] = MappingProxyType({
    15: (ZoomMediaKind.AUDIO, 19),
    16: (ZoomMediaKind.VIDEO, 24),  # 20 when byte 20 is not 0x02 (no frame-info block)
    13: (ZoomMediaKind.SCREEN_SHARE, 27),  # server screen share, sub-type byte 7 == 0x1e
    30: (ZoomMediaKind.SCREEN_SHARE, 20),  # peer-to-peer screen share
    33: (ZoomMediaKind.RTCP, 16),
    34: (ZoomMediaKind.RTCP, 16),
    35: (ZoomMediaKind.RTCP, 16),
})
"""Media type byte -> (kind, offset of the RTP/RTCP header from the media header start)."""
_ZOOM_MEDIA = ZOOM_MEDIA_TYPES


_ZOOM_VIDEO, _ZOOM_SCREEN = 16, 13
_ZOOM_VIDEO_INFO = 20
"""Video: the byte at this offset is 0x02 when a frame-info block precedes the RTP packet."""
_ZOOM_VIDEO_NO_INFO_REL = 20
"""Video without the frame-info block: the RTP packet starts here instead."""


@dataclass(frozen=True, slots=True)
class ZoomMedia:
    """A Zoom media header and where the RTP (or RTCP) packet behind it starts."""

    media_type: int
    """Media type byte (15 audio, 16 video, 13/30 screen share, 33-35 RTCP)."""
    kind: ZoomMediaKind
    """Audio, video, screen share or RTCP."""
    rtp_offset: int
    """Offset of the RTP/RTCP header from the start of the payload."""
    payload_type: int
    """RTP payload type (or RTCP packet type) found at ``rtp_offset``."""
    ssrc: int
    """SSRC of the RTP packet (sender SSRC for RTCP)."""


@dataclass(frozen=True, slots=True)
class ZoomSfu:
    """One packet of Zoom's SFU encapsulation."""

    sfu_type: int
    """First byte (compare with :class:`ZoomSfuType`)."""
    header_length: int
    """Bytes before the media header: 8 (SFU header of 2020-2022 clients), 1 (newer
    clients: type byte only), 3 for the other types."""
    sequence: int | None
    """Bytes 1-2: SFU sequence number (8-byte header), hello/keep-alive sub-type; else None."""
    direction: int | None
    """Byte 7 of the 8-byte header: 0 towards Zoom, 4 from Zoom; None otherwise."""
    media: ZoomMedia | None
    """Decoded media header of type-5 packets that carry a known media type."""


def _zoom_media_at(cur: Cursor, base: int) -> ZoomMedia | None:
    """Media header at ``base``; None when the type is unknown or no RTP version is there."""
    cur.seek(base)
    media_type = cur.u8()
    if media_type not in _ZOOM_MEDIA:
        return None
    kind, rel = _ZOOM_MEDIA[media_type]
    if media_type == _ZOOM_VIDEO:
        cur.seek(base + _ZOOM_VIDEO_INFO)
        if cur.u8() != 0x02:
            rel = _ZOOM_VIDEO_NO_INFO_REL
    elif media_type == _ZOOM_SCREEN:
        cur.seek(base + 7)
        if cur.u8() != 0x1E:
            return None  # screen-share control, no RTP behind it
    cur.seek(base + rel)
    b0 = cur.u8()
    b1 = cur.u8()
    cur.skip(2)  # RTP sequence number / RTCP length
    if kind is not ZoomMediaKind.RTCP:
        cur.skip(4)  # RTP timestamp
    ssrc = cur.u32()
    if b0 >> 6 != 2:
        return None
    return ZoomMedia(media_type, kind, base + rel,
                     b1 if kind is ZoomMediaKind.RTCP else b1 & 0x7F, ssrc)


def parse_zoom_sfu(payload: bytes | bytearray | memoryview) -> ZoomSfu | None:
    """Zoom SFU encapsulation (UDP to/from ports 8801-8810)."""
    buf = bytes(payload)
    if len(buf) < 3 or buf[0] not in tuple(ZoomSfuType):
        return None
    cur = Cursor(buf, ZOOM_LAYER)
    sfu_type = cur.u8()
    if sfu_type in (ZoomSfuType.CLIENT_HELLO, ZoomSfuType.SERVER_HELLO):
        if buf[1] != 0x00 or buf[2] not in (0x01, 0x02, 0x03):
            return None
        return ZoomSfu(sfu_type, 3, cur.u16(), None, None)
    if sfu_type in (ZoomSfuType.KEEPALIVE_REQ, ZoomSfuType.KEEPALIVE_RSP):
        if len(buf) != ZOOM_KEEPALIVE_LEN or buf[1:4] != b"\0\0\0":
            return None
        return ZoomSfu(sfu_type, 3, cur.u16(), None, None)
    if len(buf) >= _ZOOM_SFU_HEADER_LEN + 1:
        sequence = cur.u16()
        cur.skip(4)
        direction = cur.u8()
        media = _zoom_media_at(cur, _ZOOM_SFU_HEADER_LEN)
        if media is not None:
            return ZoomSfu(sfu_type, _ZOOM_SFU_HEADER_LEN, sequence, direction, media)
    # Newer clients (zoom.pcap, 2023) put the media header right after the type byte.
    return ZoomSfu(sfu_type, 1, None, None, _zoom_media_at(cur, 1))


def parse_zoom_media(payload: bytes | bytearray | memoryview) -> ZoomMedia | None:
    """Zoom media header without the SFU header (peer-to-peer media flows)."""
    buf = bytes(payload)
    if not buf or buf[0] not in _ZOOM_MEDIA:
        return None
    return _zoom_media_at(Cursor(buf, ZOOM_LAYER), 0)


_ZOOM_PROBE_MIN_LEN = 40
"""The probe takes RTP from type-5 payloads longer than this only: it looks at UDP on
every port, where a one-byte marker is weak evidence, and media packets are longer."""


_I64 = npt.NDArray[np.int64]
_Bool = npt.NDArray[np.bool_]
_ZOOM_RTP_REL = np.zeros(256, dtype=np.int64)
for _t, (_kind, _rel) in _ZOOM_MEDIA.items():
    _ZOOM_RTP_REL[_t] = _rel
_ZOOM_IS_RTCP = np.zeros(256, dtype=bool)
_ZOOM_IS_RTCP[[t for t, (k, _) in _ZOOM_MEDIA.items() if k is ZoomMediaKind.RTCP]] = True


def _zoom_media_cols(view: PayloadView, base: int) -> tuple[_I64, _Bool, _Bool]:
    """:func:`_zoom_media_at` over columns: the RTP/RTCP offset of a media header at
    ``base``, whether one is there (known type, RTP version 2 behind it), and whether
    it carries RTP rather than RTCP."""
    media = view.byte(base)
    rel = _ZOOM_RTP_REL[media]
    rel = np.where((media == _ZOOM_VIDEO) & (view.byte(base + _ZOOM_VIDEO_INFO) != 0x02),
                   _ZOOM_VIDEO_NO_INFO_REL, rel)
    known = (rel > 0) & ~((media == _ZOOM_SCREEN) & (view.byte(base + 7) != 0x1E))
    off = base + rel
    found = known & ((view.byte(off) >> 6) == 2)
    return off, found, found & ~_ZOOM_IS_RTCP[media]


def _zoom_sfu_rtp(view: PayloadView) -> tuple[_I64, _Bool]:
    """Where :func:`parse_zoom_sfu` places the RTP packet of a type-5 payload: behind the
    8-byte SFU header when a media header is there, else right after the type byte."""
    n = len(view.start)
    off = np.zeros(n, dtype=np.int64)
    claimed = np.zeros(n, dtype=bool)
    sfu = np.flatnonzero((view.byte(0) == ZoomSfuType.MEDIA)
                         & (view.length > _ZOOM_PROBE_MIN_LEN))
    if len(sfu):  # the media headers are read on type-5 payloads only
        sub = view.subset(sfu)
        off8, found8, rtp8 = _zoom_media_cols(sub, _ZOOM_SFU_HEADER_LEN)
        off1, _, rtp1 = _zoom_media_cols(sub, 1)
        off[sfu] = np.where(found8, off8, off1)
        claimed[sfu] = np.where(found8, rtp8, rtp1)
    return off, claimed


ZOOM_SFU_RTP = (Framing("zoom-sfu", _zoom_sfu_rtp),)
"""For the probe (:mod:`probe.plugins`): RTP behind Zoom's type-5 media encapsulation, at
the offsets :data:`_ZOOM_MEDIA` gives (the same table :func:`parse_zoom_sfu` reads)."""


@dataclass(frozen=True, slots=True)
class ZoomP2pHello:
    """First packet of a Zoom peer-to-peer media flow, as nDPI's ``zoom.c`` reads it:
    ``1f 02 01``, a 24-byte header, then length-value fields (a 4-byte big-endian length
    each) holding an address as text and an identifier, then four zero bytes. In real
    captures (real-dev ``zoom-menace31-stop-video``) the address is the one the hello is
    sent to, and header bytes 22-23 that end's port."""

    length: int
    """Payload length."""
    address: str | None
    """The address field, when it is an IP address in text."""
    address_at: int
    """Offset of the address field's text (its 4-byte length is just before it)."""
    address_len: int
    """Length of the address field's text."""
    port: int
    """Header bytes 22-23 (big-endian): the port of the end the address names."""


_ZOOM_P2P_HELLO = b"\x1f\x02\x01"
_ZOOM_P2P_FIELDS_AT = 24
ZOOM_P2P_PORT_AT = 22
"""Where a peer-to-peer hello's header holds the port of the end it is sent to."""
_ZOOM_P2P_MIN_LEN = 37
"""nDPI's ``zoom.c`` looks for the hello in payloads longer than 36 bytes."""


def parse_zoom_p2p_hello(payload: bytes | bytearray | memoryview) -> ZoomP2pHello | None:
    """Zoom P2P hello (:class:`ZoomP2pHello`): its two length-value fields and the four
    zero bytes after them must make up the payload exactly."""
    if len(payload) < _ZOOM_P2P_MIN_LEN or bytes(payload[:3]) != _ZOOM_P2P_HELLO:
        return None  # most payloads: nothing copied
    buf = bytes(payload)
    n = len(buf)
    if buf[-4:] != b"\0\0\0\0":
        return None
    at = _ZOOM_P2P_FIELDS_AT
    ip_len = int.from_bytes(buf[at:at + 4], "big")
    uuid_at = at + 4 + ip_len
    if uuid_at + 4 >= n:
        return None
    uuid_len = int.from_bytes(buf[uuid_at:uuid_at + 4], "big")
    if uuid_at + 4 + uuid_len + 4 != n:
        return None
    return ZoomP2pHello(n, _ip_text(buf[at + 4:uuid_at]), at + 4, ip_len,
                        int.from_bytes(buf[ZOOM_P2P_PORT_AT:ZOOM_P2P_PORT_AT + 2], "big"))


def _ip_text(field: bytes) -> str | None:
    try:
        return str(ipaddress.ip_address(field.rstrip(b"\0").decode("ascii")))
    except (UnicodeDecodeError, ValueError):
        return None


# -- Discord --------------------------------------------------------------------------------
# Discord voice gateway docs, "IP Discovery": type, length 70, SSRC, 64-byte address, port.

DISCORD_LAYER = "discord"
_DISCORD_KEEPALIVE = b"\x13\x37\xca\xfe"


@dataclass(frozen=True, slots=True)
class DiscordIpDiscovery:
    """Discord voice IP discovery request (type 1) or response (type 2), 74 bytes."""

    is_response: bool
    """True for the server's reply, which carries the client's public address."""
    ssrc: int
    """The client's audio SSRC."""
    address: str
    """Address text from the 64-byte field (empty in requests)."""
    port: int
    """Port field (the client's public port in responses)."""


@dataclass(frozen=True, slots=True)
class DiscordKeepalive:
    """Discord 8-byte UDP keep-alive: ``13 37 ca fe`` + a 32-bit little-endian counter."""

    counter: int
    """Keep-alive counter."""


def parse_discord(payload: bytes | bytearray | memoryview
                  ) -> DiscordIpDiscovery | DiscordKeepalive | None:
    """Discord voice UDP framings."""
    buf = bytes(payload)
    cur = Cursor(buf, DISCORD_LAYER)
    if len(buf) == 8 and buf[:4] == _DISCORD_KEEPALIVE:
        cur.skip(4)
        return DiscordKeepalive(cur.u32le())
    if len(buf) < 4 or buf[:4] not in (b"\x00\x01\x00\x46", b"\x00\x02\x00\x46"):
        return None
    kind = cur.u16()
    length = cur.u16()
    if cur.remaining() != length:
        if cur.remaining() < length:
            raise Truncated(DISCORD_LAYER, cur.pos, f"IP discovery needs {length} bytes, "
                            f"{cur.remaining()} left")
        raise Malformed(DISCORD_LAYER, cur.pos, f"{cur.remaining() - length} bytes after "
                        "IP discovery")
    ssrc = cur.u32()
    raw = cur.take(64)
    port = cur.u16()
    text, nul, tail = raw.partition(b"\0")
    if nul and tail.strip(b"\0"):
        raise Malformed(DISCORD_LAYER, 8, "bytes after the address terminator")
    try:
        address = text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Malformed(DISCORD_LAYER, 8, "address is not ASCII") from exc
    return DiscordIpDiscovery(kind == 2, ssrc, address, port)


# -- Telegram -------------------------------------------------------------------------------

TELEGRAM_LAYER = "telegram"
TELEGRAM_PEER_TAG_LEN = 16
"""libtgvoip's relay packets start with the call's 16-byte peer tag."""
TELEGRAM_RELAY_MARKER = b"\xff" * 12
"""In relay requests and replies the peer tag is followed by exactly twelve 0xFF bytes,
then a TL constructor id."""
_TG_RUN = len(TELEGRAM_RELAY_MARKER)
_TG_PEER_TAG_LEN = TELEGRAM_PEER_TAG_LEN


@dataclass(frozen=True, slots=True)
class TelegramRelay:
    """A UDP payload with a run of exactly twelve 0xFF bytes (Telegram relay request/reply)."""

    run_offset: int
    """Where the 0xFF run starts (16 in libtgvoip's layout, after the peer tag)."""
    peer_tag: bytes | None
    """The 16 bytes before the run, when the run sits at offset 16."""
    tl_id: int | None
    """32-bit little-endian TL constructor id after the run, when the run sits at 16."""


def parse_telegram_relay(payload: bytes | bytearray | memoryview) -> TelegramRelay | None:
    """First run of exactly twelve 0xFF bytes in a payload of at least 40 bytes."""
    buf = bytes(payload)
    if len(buf) < 40:
        return None
    i = buf.find(TELEGRAM_RELAY_MARKER)
    while i >= 0:
        end = i + _TG_RUN
        run_end = end
        while run_end < len(buf) and buf[run_end] == 0xFF:
            run_end += 1
        if run_end == end and (i == 0 or buf[i - 1] != 0xFF):
            cur = Cursor(buf, TELEGRAM_LAYER)
            if i == _TG_PEER_TAG_LEN:
                tag = cur.take(_TG_PEER_TAG_LEN)
                cur.skip(_TG_RUN)
                return TelegramRelay(i, tag, cur.u32le())
            return TelegramRelay(i, None, None)
        i = buf.find(TELEGRAM_RELAY_MARKER, run_end)
    return None


# -- Viber ----------------------------------------------------------------------------------

VIBER_LAYER = "viber"


class ViberFraming(StrEnum):
    """Which Viber framing matched (byte positions as documented in nDPI's viber.c)."""

    TCP_FCFF = "tcp_fcff"  # LE16 length == payload length, bytes 6-7 fc ff, byte 9 0x80
    TCP_0380 = "tcp_0380"  # LE16 length == payload length, bytes 4-5 03 80, byte 10 0x0a
    UDP_0300 = "udp_0300"  # bytes 2-3 03 00
    UDP_0900 = "udp_0900"  # 20 bytes, bytes 2-3 09 00
    UDP_01000500 = "udp_01000500"  # bytes 0-3 01 00 05 00
    UDP_1900 = "udp_1900"  # 34 bytes, bytes 2-3 19 00 or 1b 00


def parse_viber(payload: bytes | bytearray | memoryview, *, tcp: bool) -> ViberFraming | None:
    """Viber app framings. Short markers: combine with Viber addresses before concluding."""
    buf = bytes(payload)
    if tcp:
        if len(buf) < 11:
            return None
        cur = Cursor(buf, VIBER_LAYER)
        if cur.u16le() != len(buf):
            return None
        if buf[6:8] == b"\xfc\xff" and buf[9] == 0x80:
            return ViberFraming.TCP_FCFF
        if buf[4:6] == b"\x03\x80" and buf[10] == 0x0A:
            return ViberFraming.TCP_0380
        return None
    if len(buf) < 4:
        return None
    if buf[:4] == b"\x01\x00\x05\x00":
        return ViberFraming.UDP_01000500
    if buf[2:4] == b"\x03\x00":
        return ViberFraming.UDP_0300
    if len(buf) == 20 and buf[2:4] == b"\x09\x00":
        return ViberFraming.UDP_0900
    if len(buf) == 34 and buf[2:4] in (b"\x19\x00", b"\x1b\x00"):
        return ViberFraming.UDP_1900
    return None


# -- WhatsApp -------------------------------------------------------------------------------

WHATSAPP_LAYER = "whatsapp"


@dataclass(frozen=True, slots=True)
class WhatsAppPrologue:
    """Start of a WhatsApp chat connection (TCP 443/5222)."""

    edge_routing: bool
    """True when the ``ED 00 01`` edge routing header came first."""
    routing_info: bytes | None
    """Routing bytes of that header (None when the segment ends right after ``ED 00 01``)."""
    wa_version: tuple[int, int] | None
    """(major, minor) after ``WA``; None when the segment ends before it."""
    first_frame_length: int | None
    """24-bit length of the first frame after the prologue, when present."""


def parse_whatsapp_prologue(payload: bytes | bytearray | memoryview) -> WhatsAppPrologue | None:
    """``ED 00 01`` + 24-bit length + routing info, then ``WA`` + 2 version bytes + frames."""
    buf = bytes(payload)
    cur = Cursor(buf, WHATSAPP_LAYER)
    edge = buf[:4] == b"ED\x00\x01"
    if not edge and buf[:2] != b"WA":
        return None
    routing: bytes | None = None
    if edge:
        cur.skip(4)
        if cur.eof():
            return WhatsAppPrologue(True, None, None, None)
        routing = cur.take(cur.u24())
        if cur.eof():
            return WhatsAppPrologue(True, routing, None, None)
        if cur.peek(2) != b"WA":
            raise Malformed(WHATSAPP_LAYER, cur.pos, "no WA header after edge routing")
    elif len(buf) < 4:
        return None
    cur.skip(2)
    version = (cur.u8(), cur.u8())
    frame_len: int | None = None
    if not cur.eof():
        frame_len = cur.u24()
        if frame_len > cur.remaining():
            raise Truncated(WHATSAPP_LAYER, cur.pos - 3, f"frame of {frame_len} bytes, "
                            f"{cur.remaining()} left")
    return WhatsAppPrologue(edge, routing, version, frame_len)


# -- IMO ------------------------------------------------------------------------------------
# Layout facts: nDPI's imo.c (the packet shapes below); checked against nDPI's imo.pcap.


def is_imo_packet(payload: bytes | bytearray | memoryview) -> bool:
    """One of the IMO call packet shapes: a 10-byte ``09 02`` ping, an 11-byte
    ``00 09 03`` reply (a relay prefixes a 16-bit length) or a 1099-byte
    ``88 49 1a 00`` packet."""
    n = len(payload)
    head = bytes(payload[:4])
    return ((n == 10 and head[:2] == b"\x09\x02") or (n == 11 and head[:3] == b"\x00\x09\x03")
            or (n == 1099 and head == b"\x88\x49\x1a\x00"))


def imo_packets(payloads: list[bytes]) -> int:
    """How many of a flow's payloads have an IMO call packet shape."""
    return sum(is_imo_packet(p) for p in payloads)
