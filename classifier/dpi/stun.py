"""STUN and TURN messages, TURN ChannelData, and the first-byte demultiplexer.

Covers STUN (RFC 8489, formerly RFC 5389), classic STUN without the magic
cookie (RFC 3489, accepted over UDP only, when the attribute walk ends exactly
at the end of the message), every TURN method (RFC 8656/5766 and RFC 6062),
the non-standard message types seen in WhatsApp calls (0x0800-0x0805), TCP
framing (bare messages back to back, or RFC 4571 two-byte length prefix),
Microsoft's multiplexed TURN wrapper (0xFF10 + 12-byte header) and TURN
ChannelData.

Every attribute is kept, in order, as (type, raw value); the ones that carry
something a later stage may use to name the app or to tie flows together are
decoded as well. Nothing here decides which app a flow belongs to.

:func:`stun_gist` is the classifier's fast read of the plain case (one UDP message with the
cookie, no DATA): only the fields it keeps, the same values; anything else is left to
:func:`parse_stun_payload`. Addresses are written as :mod:`ipaddress` writes them.

Errors (all from :mod:`probe.errors`)::

    ParseError
    ├── Truncated   the buffer ends inside a header, an attribute or a message
    └── Malformed   not STUN / not ChannelData, or a length that cannot hold
"""

from __future__ import annotations

import ipaddress
import socket
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from probe.cursor import Cursor
from probe.errors import Malformed, ParseError, Truncated
from probe.plugins import Framing, PayloadView, Prefix

__all__ = [
    "KEEP_WHOLE",
    "MAGIC_COOKIE",
    "MS_TURN_MULTIPLEXED_CHANNEL",
    "MS_TURN_MULTIPLEXED_RTP",
    "TURN_CHANNEL_RTP",
    "TURN_METHODS",
    "VENDOR_ATTRIBUTES",
    "VENDOR_MESSAGE_TYPES",
    "AttrType",
    "ChannelData",
    "ErrorCode",
    "Kind",
    "MessageClass",
    "Method",
    "StunAttribute",
    "StunFraming",
    "StunGist",
    "StunMessage",
    "StunPayload",
    "TransportAddress",
    "Vendor",
    "classify_first_byte",
    "looks_like_stun",
    "parse_channel_data",
    "parse_stun",
    "parse_stun_payload",
    "stun_gist",
    "udp_stun_possible",
]

LAYER = "stun"

MAGIC_COOKIE = 0x2112A442
"""RFC 8489 §5: fixed value in bytes 4-7 of every RFC 5389+ message."""

_FINGERPRINT_XOR = 0x5354554E  # RFC 8489 §14.7: CRC-32 XOR "STUN"
_HEADER_LEN = 20  # RFC 8489 §5
_MS_MUX_MAGIC = 0xFF10  # [MS-TURN] multiplexed TURN session framing
_MS_MUX_HEADER_LEN = 12
_CHANNEL_HEADER_LEN = 4  # RFC 8656 §12.4: channel number(2) length(2)
_CHANNEL_FIRST_BYTES = (0x40, 0x4F)  # RFC 8656 §12: channel numbers 0x4000-0x4FFF


# -- demultiplexing (RFC 7983 §7, updated by RFC 9443 §3) --------------------------------------


class Kind(IntEnum):
    """What the first byte of a UDP/TCP payload on a media 5-tuple says it is."""

    STUN = 1  # 0-3
    ZRTP = 2  # 16-19
    DTLS = 3  # 20-63
    TURN_CHANNEL = 4  # 64-79
    QUIC = 5  # 80-127 and 192-255 (RFC 9443)
    RTP_RTCP = 6  # 128-191
    UNKNOWN = 0  # 4-15, unassigned


def classify_first_byte(b: int) -> Kind:
    """Demultiplex by the first payload byte as RFC 9443 §3 lays the ranges out."""
    if not 0 <= b <= 255:
        raise ValueError(f"not a byte: {b}")
    if b <= 3:
        return Kind.STUN
    if 16 <= b <= 19:
        return Kind.ZRTP
    if 20 <= b <= 63:
        return Kind.DTLS
    if 64 <= b <= 79:
        return Kind.TURN_CHANNEL
    if 128 <= b <= 191:
        return Kind.RTP_RTCP
    if b >= 80:
        return Kind.QUIC
    return Kind.UNKNOWN


# -- message type (RFC 8489 §5) ----------------------------------------------------------------


class MessageClass(IntEnum):
    """The two class bits C1 C0 of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS_RESPONSE = 0b10
    ERROR_RESPONSE = 0b11


class Method(IntEnum):
    """The 12-bit method of the message type."""

    BINDING = 0x001  # RFC 8489 §18.2
    SHARED_SECRET = 0x002  # RFC 3489 §11.1 (classic, retired)
    ALLOCATE = 0x003  # RFC 8656 §17
    REFRESH = 0x004  # RFC 8656 §17
    SEND = 0x006  # RFC 8656 §17 (indication only)
    DATA = 0x007  # RFC 8656 §17 (indication only)
    CREATE_PERMISSION = 0x008  # RFC 8656 §17
    CHANNEL_BIND = 0x009  # RFC 8656 §17
    CONNECT = 0x00A  # RFC 6062 §6.1
    CONNECTION_BIND = 0x00B  # RFC 6062 §6.1
    CONNECTION_ATTEMPT = 0x00C  # RFC 6062 §6.1
    WHATSAPP_200 = 0x200  # type 0x0800, not registered; seen in WhatsApp calls
    WHATSAPP_201 = 0x201  # type 0x0801
    WHATSAPP_202 = 0x202  # type 0x0802
    WHATSAPP_204 = 0x204  # type 0x0804
    WHATSAPP_205 = 0x205  # type 0x0805


TURN_METHODS = frozenset({Method.ALLOCATE, Method.REFRESH, Method.SEND, Method.DATA,
                          Method.CREATE_PERMISSION, Method.CHANNEL_BIND, Method.CONNECT,
                          Method.CONNECTION_BIND, Method.CONNECTION_ATTEMPT})


def _plausible_type(msg_type: int) -> bool:
    """Message types real stacks send: standard methods, plus the 0x08xx WhatsApp family."""
    if msg_type & 0xC000:
        return False
    if msg_type & 0x3EEF <= 0x000C:
        return True
    return msg_type in VENDOR_MESSAGE_TYPES



# -- attributes ------------------------------------------------------------------------------


class AttrType(IntEnum):
    """Attribute types (IANA "STUN Attributes" registry plus vendor numbers seen in calls)."""

    MAPPED_ADDRESS = 0x0001  # RFC 8489 §14.1
    RESPONSE_ADDRESS = 0x0002  # RFC 3489 §11.2.2
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    SOURCE_ADDRESS = 0x0004  # RFC 3489 §11.2.5
    CHANGED_ADDRESS = 0x0005  # RFC 3489 §11.2.3
    USERNAME = 0x0006  # RFC 8489 §14.3
    PASSWORD = 0x0007  # RFC 3489 §11.2.7
    MESSAGE_INTEGRITY = 0x0008  # RFC 8489 §14.5
    ERROR_CODE = 0x0009  # RFC 8489 §14.8
    UNKNOWN_ATTRIBUTES = 0x000A  # RFC 8489 §14.9
    REFLECTED_FROM = 0x000B  # RFC 3489 §11.2.11
    CHANNEL_NUMBER = 0x000C  # RFC 8656 §18.1
    LIFETIME = 0x000D  # RFC 8656 §18.2
    MS_MAGIC_COOKIE = 0x000F  # [MS-TURN] 2.2.2.6
    BANDWIDTH = 0x0010  # draft-ietf-behave-turn-08, [MS-TURN] 2.2.2.7
    DESTINATION_ADDRESS = 0x0011  # [MS-TURN] 2.2.2.8
    XOR_PEER_ADDRESS = 0x0012  # RFC 8656 §18.3
    DATA = 0x0013  # RFC 8656 §18.4
    REALM = 0x0014  # RFC 8489 §14.9
    NONCE = 0x0015  # RFC 8489 §14.10
    XOR_RELAYED_ADDRESS = 0x0016  # RFC 8656 §18.5
    REQUESTED_ADDRESS_FAMILY = 0x0017  # RFC 8656 §18.6
    EVEN_PORT = 0x0018  # RFC 8656 §18.7
    REQUESTED_TRANSPORT = 0x0019  # RFC 8656 §18.8
    DONT_FRAGMENT = 0x001A  # RFC 8656 §18.9
    MESSAGE_INTEGRITY_SHA256 = 0x001C  # RFC 8489 §14.6
    PASSWORD_ALGORITHM = 0x001D  # RFC 8489 §14.12
    USERHASH = 0x001E  # RFC 8489 §14.4
    XOR_MAPPED_ADDRESS = 0x0020  # RFC 8489 §14.2
    RESERVATION_TOKEN = 0x0022  # RFC 8656 §18.10
    PRIORITY = 0x0024  # RFC 8445 §16.1
    USE_CANDIDATE = 0x0025  # RFC 8445 §16.1
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
    CONNECTION_ID = 0x002A  # RFC 6062 §6.2
    ZOOM_0101 = 0x0101  # Zoom, not registered
    ZOOM_0103 = 0x0103  # Zoom, not registered
    MS_24DF = 0x24DF  # Microsoft, not registered
    MS_3802 = 0x3802  # Microsoft, not registered
    WHATSAPP_4000 = 0x4000  # WhatsApp, not registered (0x4000-0x4007)
    WHATSAPP_4001 = 0x4001
    WHATSAPP_4002 = 0x4002
    WHATSAPP_4003 = 0x4003
    WHATSAPP_4004 = 0x4004
    WHATSAPP_4005 = 0x4005
    WHATSAPP_4006 = 0x4006
    WHATSAPP_4007 = 0x4007
    MS_ADDITIONAL_ADDRESS = 0x8006  # Microsoft (Skype/Teams), not registered
    MS_VERSION = 0x8008  # [MS-TURN] 2.2.2.10
    XOR_MAPPED_ADDRESS_OLD = 0x8020  # draft-ietf-behave-rfc3489bis-02, [MS-TURN] 2.2.2.12
    SOFTWARE = 0x8022  # RFC 8489 §14.14
    ALTERNATE_SERVER = 0x8023  # RFC 8489 §14.15
    TRANSACTION_TRANSMIT_COUNTER = 0x8025  # RFC 7982 §3.1
    CACHE_TIMEOUT = 0x8027  # RFC 5780 §7.7
    FINGERPRINT = 0x8028  # RFC 8489 §14.7
    ICE_CONTROLLED = 0x8029  # RFC 8445 §16.1
    ICE_CONTROLLING = 0x802A  # RFC 8445 §16.1
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4
    MS_ALTERNATE_HOST_NAME = 0x8032  # [MS-TURN]
    MS_8036 = 0x8036  # Microsoft (Teams), not registered
    MS_APP_ID = 0x8037  # [MS-TURN] 2.2.2.16
    MS_SEQUENCE_NUMBER = 0x8050  # [MS-TURN] 2.2.2.14
    MS_CANDIDATE_IDENTIFIER = 0x8054  # [MS-ICE2] 2.2.2.3
    MS_SERVICE_QUALITY = 0x8055  # [MS-TURN] 2.2.2.15
    MS_IMPLEMENTATION_VERSION = 0x8070  # [MS-ICE2] 2.2.2.4
    MS_MULTIPLEXED_TURN_SESSION_ID = 0x8095  # [MS-TURN] 2.2.2.17
    GOOG_NETWORK_INFO = 0xC057  # Google WebRTC network id + cost (generic WebRTC)
    GOOG_LAST_ICE_CHECK_RECEIVED = 0xC058  # Google WebRTC
    GOOG_MISC_INFO = 0xC059  # Google WebRTC
    GOOG_FF03 = 0xFF03  # Google Meet, not registered


class Vendor(StrEnum):
    """Whose private STUN numbers a message carries (evidence for the engine, not a verdict)."""

    WHATSAPP = "whatsapp"
    MICROSOFT = "microsoft"
    ZOOM = "zoom"
    GOOGLE = "google"


VENDOR_ATTRIBUTES: Mapping[int, Vendor] = MappingProxyType({
    0x4000: Vendor.WHATSAPP, 0x4001: Vendor.WHATSAPP, 0x4002: Vendor.WHATSAPP,
    0x4003: Vendor.WHATSAPP, 0x4004: Vendor.WHATSAPP, 0x4005: Vendor.WHATSAPP,
    0x4006: Vendor.WHATSAPP, 0x4007: Vendor.WHATSAPP,
    0x8054: Vendor.MICROSOFT, 0x8055: Vendor.MICROSOFT, 0x8070: Vendor.MICROSOFT,
    0x8095: Vendor.MICROSOFT, 0x8036: Vendor.MICROSOFT, 0x24DF: Vendor.MICROSOFT,
    0x3802: Vendor.MICROSOFT, 0x8006: Vendor.MICROSOFT,
    0x0101: Vendor.ZOOM, 0x0103: Vendor.ZOOM,
    0xFF03: Vendor.GOOGLE,
})
"""Attribute number -> vendor that uses it. 0xC057 is left out on purpose: every
Google-WebRTC-based client (Meet, Messenger, Discord, Telegram...) sends it."""

VENDOR_MESSAGE_TYPES: Mapping[int, Vendor] = MappingProxyType({
    0x0800: Vendor.WHATSAPP, 0x0801: Vendor.WHATSAPP, 0x0802: Vendor.WHATSAPP,
    0x0804: Vendor.WHATSAPP, 0x0805: Vendor.WHATSAPP,
})
"""Non-standard message types -> vendor: the 0x08xx types nDPI's stun.c names WhatsApp
calls by (0x0800-0x0802, 0x0804, 0x0805)."""

_KEPT_TYPES = (0x0001, 0x0101, 0x0111, 0x0011,  # Binding request, answers, indication
               0x0003, 0x0103, 0x0113,  # TURN Allocate (RFC 8656 §7.2): retried after the
               # 401 challenge and on every relay a client tries, often past 256 bytes
               0x0004, 0x0104, 0x0114,  # TURN Refresh (RFC 8656 §7.3): USERNAME, REALM
               0x0008, 0x0108, 0x0118,  # CreatePermission (§9)
               0x0009, 0x0109, 0x0119)  # ChannelBind (§11), refreshed every 10 minutes
KEEP_WHOLE = (*(Prefix(f"stun-0x{t:04x}", t << 16, 0xFFFF0003) for t in _KEPT_TYPES),
              *(Prefix(f"stun-0x{t:04x}", t << 16, 0xFFFF0000) for t in VENDOR_MESSAGE_TYPES))
"""For the probe (:mod:`probe.plugins`): STUN messages that are no media (not Send or
Data indications) are kept whatever their rank in a flow, by their first four bytes
(the message type, and for registered types a length that is a multiple of four, RFC
8489 §5; WhatsApp's own types do not keep to that): the checks that keep a call's path
alive (ICE consent freshness every few seconds, RFC 7675 §5.1; TURN refreshes and
permissions, RFC 8656) carry the attributes that name the app (REALM, SOFTWARE, vendor
attributes) in a flow whose first packets the capture missed. The inspector validates
each (magic cookie, length)."""

_ADDRESS_ATTRS = frozenset({AttrType.MAPPED_ADDRESS, AttrType.RESPONSE_ADDRESS,
                            AttrType.SOURCE_ADDRESS, AttrType.CHANGED_ADDRESS,
                            AttrType.REFLECTED_FROM, AttrType.ALTERNATE_SERVER,
                            AttrType.RESPONSE_ORIGIN, AttrType.OTHER_ADDRESS,
                            AttrType.DESTINATION_ADDRESS, AttrType.MS_ALTERNATE_HOST_NAME})
_XOR_ADDRESS_ATTRS = frozenset({AttrType.XOR_MAPPED_ADDRESS, AttrType.XOR_MAPPED_ADDRESS_OLD,
                                AttrType.XOR_PEER_ADDRESS, AttrType.XOR_RELAYED_ADDRESS})


@dataclass(frozen=True, slots=True)
class TransportAddress:
    """An IP address and port carried in an address attribute."""

    family: int
    """Address family code on the wire: 1 IPv4, 2 IPv6 (RFC 8489 §14.1)."""
    address: str
    """Text form of the address (XOR already undone for XOR-* attributes)."""
    port: int
    """UDP/TCP port (XOR already undone)."""


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """Decoded ERROR-CODE attribute (RFC 8489 §14.8)."""

    code: int
    """Class * 100 + number, e.g. 401 or 438."""
    reason: str
    """Reason phrase, UTF-8 (invalid bytes replaced)."""


@dataclass(frozen=True, slots=True)
class StunAttribute:
    """One attribute exactly as it appeared on the wire."""

    type: int
    """Attribute type number (compare with :class:`AttrType`)."""
    value: bytes
    """Value bytes, without the 4-byte TLV header and without padding."""
    offset: int
    """Offset of the attribute's TLV header from the start of the message."""


@dataclass(frozen=True, slots=True)
class StunMessage:
    """A decoded STUN/TURN message."""

    msg_type: int
    """Raw 14-bit message type (e.g. 0x0001, 0x0113, 0x0800)."""
    method: int
    """Method bits of the type (compare with :class:`Method`); non-standard values kept."""
    cls: MessageClass
    """Request, indication, success or error response."""
    length: int
    """Message length from the header: bytes after the 20-byte header."""
    magic_cookie: bool
    """True for RFC 5389+ messages, False for classic RFC 3489 ones."""
    transaction_id: bytes
    """Transaction id: 12 bytes, or the 16 bytes after the type/length of a classic message."""
    attributes: tuple[StunAttribute, ...]
    """Every attribute in wire order, decoded or not."""
    mapped_address: TransportAddress | None
    """MAPPED-ADDRESS (0x0001)."""
    xor_mapped_address: TransportAddress | None
    """XOR-MAPPED-ADDRESS (0x0020, or the pre-RFC 0x8020 Microsoft still sends)."""
    xor_peer_addresses: tuple[TransportAddress, ...]
    """Every XOR-PEER-ADDRESS (0x0012); CreatePermission may carry several. In messages
    without the cookie (pre-RFC TURN) 0x0012 is a plain REMOTE-ADDRESS and is kept here too."""
    xor_relayed_address: TransportAddress | None
    """XOR-RELAYED-ADDRESS (0x0016): the relay's allocated address."""
    response_origin: TransportAddress | None
    """RESPONSE-ORIGIN (0x802B)."""
    other_address: TransportAddress | None
    """OTHER-ADDRESS (0x802C)."""
    alternate_server: TransportAddress | None
    """ALTERNATE-SERVER (0x8023)."""
    username: str | None
    """USERNAME (0x0006), UTF-8 with invalid bytes replaced."""
    realm: str | None
    """REALM (0x0014): names the TURN operator (e.g. "telegram.org")."""
    nonce: str | None
    """NONCE (0x0015)."""
    software: str | None
    """SOFTWARE (0x8022)."""
    error: ErrorCode | None
    """ERROR-CODE (0x0009)."""
    lifetime: int | None
    """LIFETIME (0x000D) in seconds."""
    channel_number: int | None
    """CHANNEL-NUMBER (0x000C)."""
    requested_transport: int | None
    """REQUESTED-TRANSPORT (0x0019): IP protocol number (17 UDP, 6 TCP)."""
    data: bytes | None
    """DATA (0x0013): the relayed datagram of a Send/Data indication."""
    inner: StunMessage | None
    """The DATA attribute parsed as STUN, when it is a STUN message."""
    message_integrity: bytes | None
    """MESSAGE-INTEGRITY HMAC (0x0008), not verified (the key is not known)."""
    fingerprint: int | None
    """FINGERPRINT value (0x8028)."""
    fingerprint_ok: bool | None
    """Whether FINGERPRINT matches CRC-32 of the message XOR 0x5354554e; None if absent."""
    priority: int | None
    """ICE PRIORITY (0x0024)."""
    use_candidate: bool
    """ICE USE-CANDIDATE (0x0025) present."""
    ice_controlled: int | None
    """ICE-CONTROLLED tie-breaker (0x8029)."""
    ice_controlling: int | None
    """ICE-CONTROLLING tie-breaker (0x802A)."""
    ms_version: int | None
    """[MS-TURN] MS-VERSION (0x8008)."""
    ms_implementation_version: int | None
    """[MS-ICE2] MS-IMPLEMENTATION-VERSION (0x8070)."""
    network_info: tuple[int, int] | None
    """Google WebRTC GOOG-NETWORK-INFO (0xC057) as (network id, network cost)."""
    vendors: frozenset[Vendor]
    """Vendors whose private attribute numbers or message types appear in the message."""
    undecoded: tuple[int, ...]
    """Types of attributes whose value did not fit their registered layout (kept raw)."""

    @property
    def is_turn(self) -> bool:
        """True for TURN methods (RFC 8656 / RFC 6062)."""
        return self.method in TURN_METHODS

    def get(self, attr_type: int) -> StunAttribute | None:
        """First attribute of the given type, if any."""
        for a in self.attributes:
            if a.type == attr_type:
                return a
        return None


@dataclass(frozen=True, slots=True)
class ChannelData:
    """A TURN ChannelData message (RFC 8656 §12.4)."""

    channel: int
    """Channel number, 0x4000-0x7FFF (RFC 5766; RFC 8656 narrows it to 0x4FFF)."""
    length: int
    """Length of the application data in bytes (padding excluded)."""
    data: bytes
    """The relayed application data."""
    inner_kind: Kind
    """What the relayed data's first byte says it is (RFC 9443 demultiplexing)."""
    inner_stun: StunMessage | None
    """The relayed data parsed as STUN when it is STUN."""


class StunFraming(IntEnum):
    """How STUN messages were laid out in one transport payload."""

    BARE = 0  # messages back to back (UDP: exactly one)
    RFC4571 = 1  # RFC 4571 §2: 16-bit length before each message (TCP)
    MS_MULTIPLEXED = 2  # [MS-TURN] 0xFF10 header, 12 bytes, before the message


@dataclass(frozen=True, slots=True)
class StunPayload:
    """Everything STUN/TURN found in one transport payload."""

    framing: StunFraming
    """Layout of the payload."""
    ms_session_id: bytes | None
    """The 8-byte session id from a 0xFF10 multiplexed-TURN header."""
    items: tuple[StunMessage | ChannelData, ...]
    """Messages in payload order."""
    trailing: bytes = b""
    """Bytes after the last message of a UDP payload (WhatsApp appends some)."""

    @property
    def messages(self) -> tuple[StunMessage, ...]:
        """Only the STUN messages."""
        return tuple(m for m in self.items if isinstance(m, StunMessage))


# -- parsing ---------------------------------------------------------------------------------


def looks_like_stun(data: bytes | bytearray | memoryview) -> bool:
    """Cheap test: first two bits zero, a plausible type, cookie or classic-length match."""
    if len(data) < _HEADER_LEN:
        return False
    msg_type = (data[0] << 8) | data[1]
    if not _plausible_type(msg_type):
        return False
    length = (data[2] << 8) | data[3]
    if int.from_bytes(data[4:8], "big") == MAGIC_COOKIE:
        return True
    return length % 4 == 0 and length + _HEADER_LEN == len(data)


def udp_stun_possible(data: bytes | bytearray | memoryview) -> bool:
    """False when :func:`parse_stun_payload` of this UDP payload can only raise: a first
    byte of 0x50 or more (RTP, RTCP, QUIC... by RFC 9443 §3) without the 0xFF10
    multiplexed-TURN header. Cheap enough for every payload of a media flow."""
    return len(data) < 2 or data[0] < 0x50 or (data[0] == 0xFF and data[1] == 0x10)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _need(pos: int, n: int, end: int) -> Truncated:
    """The error :meth:`Cursor.take` raises for ``n`` bytes at ``pos`` before ``end``."""
    return Truncated(LAYER, pos, f"need {n} bytes, {end - pos} left")


def _ip_text(family: int, raw: bytes) -> str:
    """Text form of an address, as :mod:`ipaddress` writes it (``socket.inet_ntop`` is the
    same text, and much faster, except for IPv6 addresses with an embedded IPv4 part)."""
    if family == 1:
        return socket.inet_ntop(socket.AF_INET, raw)
    text = socket.inet_ntop(socket.AF_INET6, raw)
    return str(ipaddress.IPv6Address(raw)) if "." in text else text


def _address(value: bytes, key: bytes | None, offset: int) -> TransportAddress:
    """Address attribute value (RFC 8489 §14.1); ``key`` = cookie + transaction id for XOR-*.
    ``offset`` is where the value starts in the message (for errors)."""
    n = len(value)
    if n < 4:
        raise Truncated(LAYER, offset + n, "address attribute cut short")
    family = value[1]
    port = (value[2] << 8) | value[3]
    if family == 1:
        size = 4
    elif family == 2:
        size = 16
    else:
        raise Malformed(LAYER, offset + 1, f"address family {family}")
    if n < 4 + size:
        raise _need(offset + 4, size, offset + n)
    raw = value[4:4 + size]
    if key is not None:
        port ^= MAGIC_COOKIE >> 16
        raw = (int.from_bytes(raw, "big") ^ int.from_bytes(key[:size], "big")).to_bytes(size, "big")
    return TransportAddress(family, _ip_text(family, raw), port)


def _u32(a: StunAttribute, start: int) -> int:
    if len(a.value) != 4:
        raise Malformed(LAYER, start + a.offset, f"attribute 0x{a.type:04x} length {len(a.value)}")
    return int.from_bytes(a.value, "big")


def _u64(a: StunAttribute, start: int) -> int:
    if len(a.value) != 8:
        raise Malformed(LAYER, start + a.offset, f"attribute 0x{a.type:04x} length {len(a.value)}")
    return int.from_bytes(a.value, "big")


class _Fields:
    """Mutable scratch space while walking attributes (first occurrence wins)."""

    __slots__ = ("alternate_server", "channel_number", "data", "error", "fingerprint",
                 "fingerprint_ok", "ice_controlled", "ice_controlling", "inner", "lifetime",
                 "mapped_address", "message_integrity", "ms_implementation_version",
                 "ms_version", "network_info", "nonce", "other_address", "priority", "realm",
                 "requested_transport", "response_origin", "software", "use_candidate",
                 "username", "xor_mapped_address", "xor_relayed_address")

    def __init__(self) -> None:
        self.mapped_address: TransportAddress | None = None
        self.xor_mapped_address: TransportAddress | None = None
        self.xor_relayed_address: TransportAddress | None = None
        self.response_origin: TransportAddress | None = None
        self.other_address: TransportAddress | None = None
        self.alternate_server: TransportAddress | None = None
        self.username: str | None = None
        self.realm: str | None = None
        self.nonce: str | None = None
        self.software: str | None = None
        self.error: ErrorCode | None = None
        self.lifetime: int | None = None
        self.channel_number: int | None = None
        self.requested_transport: int | None = None
        self.data: bytes | None = None
        self.inner: StunMessage | None = None
        self.message_integrity: bytes | None = None
        self.fingerprint: int | None = None
        self.fingerprint_ok: bool | None = None
        self.priority: int | None = None
        self.use_candidate = False
        self.ice_controlled: int | None = None
        self.ice_controlling: int | None = None
        self.ms_version: int | None = None
        self.ms_implementation_version: int | None = None
        self.network_info: tuple[int, int] | None = None


_NO_FIELDS = _Fields()
"""What a message without attributes has (shared: only ever read)."""

_ADDRESS_FIELD = {
    AttrType.MAPPED_ADDRESS: "mapped_address",
    AttrType.XOR_MAPPED_ADDRESS: "xor_mapped_address",
    AttrType.XOR_MAPPED_ADDRESS_OLD: "xor_mapped_address",
    AttrType.XOR_RELAYED_ADDRESS: "xor_relayed_address",
    AttrType.RESPONSE_ORIGIN: "response_origin",
    AttrType.OTHER_ADDRESS: "other_address",
    AttrType.ALTERNATE_SERVER: "alternate_server",
}
_TEXT_FIELD = {
    AttrType.USERNAME: "username",
    AttrType.REALM: "realm",
    AttrType.NONCE: "nonce",
    AttrType.SOFTWARE: "software",
}
_U32_FIELD = {
    AttrType.LIFETIME: "lifetime",
    AttrType.PRIORITY: "priority",
    AttrType.MS_VERSION: "ms_version",
    AttrType.MS_IMPLEMENTATION_VERSION: "ms_implementation_version",
}

# How each decoded attribute type is read (types absent here are kept raw only).
_ADDR, _XOR_ADDR, _PEER, _TEXT, _U32, _ERROR, _CHANNEL, _TRANSPORT, _DATA, _INTEGRITY, \
    _FINGERPRINT, _USE_CANDIDATE, _CONTROLLED, _CONTROLLING, _NETWORK_INFO = range(15)
_DECODER: dict[int, int] = {
    **{int(t): _ADDR for t in _ADDRESS_ATTRS},
    **{int(t): _XOR_ADDR for t in _XOR_ADDRESS_ATTRS},
    AttrType.XOR_PEER_ADDRESS: _PEER,
    **{int(t): _TEXT for t in _TEXT_FIELD},
    **{int(t): _U32 for t in _U32_FIELD},
    AttrType.ERROR_CODE: _ERROR,
    AttrType.CHANNEL_NUMBER: _CHANNEL,
    AttrType.REQUESTED_TRANSPORT: _TRANSPORT,
    AttrType.DATA: _DATA,
    AttrType.MESSAGE_INTEGRITY: _INTEGRITY,
    AttrType.FINGERPRINT: _FINGERPRINT,
    AttrType.USE_CANDIDATE: _USE_CANDIDATE,
    AttrType.ICE_CONTROLLED: _CONTROLLED,
    AttrType.ICE_CONTROLLING: _CONTROLLING,
    AttrType.GOOG_NETWORK_INFO: _NETWORK_INFO,
}
_FIELD_OF: dict[int, str] = {int(t): name for t, name in
                             (*_ADDRESS_FIELD.items(), *_TEXT_FIELD.items(),
                              *_U32_FIELD.items())}


def _set_once(f: _Fields, name: str, value: object) -> None:
    if getattr(f, name) is None:
        setattr(f, name, value)


def _decode_attribute(f: _Fields, how: int, attr: StunAttribute, buf: bytes, start: int,
                      key: bytes | None, depth: int) -> None:
    """Fill ``f`` from one attribute read the ``how`` way (see ``_DECODER``); ``buf`` and
    ``start`` locate the whole message. Raises :class:`ParseError` for a value that does not
    fit its registered layout."""
    t = attr.type
    value = attr.value
    if how in (_XOR_ADDR, _ADDR):
        addr = _address(value, key if how == _XOR_ADDR else None, start + attr.offset + 4)
        name = _FIELD_OF.get(t)
        if name is not None:
            _set_once(f, name, addr)
    elif how == _TEXT:
        _set_once(f, _FIELD_OF[t], _text(value))
    elif how == _U32:
        _set_once(f, _FIELD_OF[t], _u32(attr, start))
    elif how == _ERROR:
        if len(value) < 4:
            raise Truncated(LAYER, start + attr.offset + 4 + len(value), "ERROR-CODE cut short")
        _set_once(f, "error", ErrorCode((value[2] & 0x07) * 100 + value[3], _text(value[4:])))
    elif how == _CHANNEL:
        _set_once(f, "channel_number", _u32(attr, start) >> 16)
    elif how == _TRANSPORT:
        _set_once(f, "requested_transport", _u32(attr, start) >> 24)
    elif how == _DATA:
        _set_once(f, "data", value)
        if f.inner is None and depth < 2 and looks_like_stun(value):
            try:
                f.inner = _parse_message(value, 0, len(value), tcp=False, depth=depth + 1)[0]
            except (Truncated, Malformed):
                f.inner = None
    elif how == _INTEGRITY:
        _set_once(f, "message_integrity", value)
    elif how == _FINGERPRINT:
        crc = _u32(attr, start)
        if f.fingerprint is None:
            f.fingerprint = crc
            covered = buf[start:start + attr.offset]
            f.fingerprint_ok = (zlib.crc32(covered) ^ _FINGERPRINT_XOR) == crc
    elif how == _USE_CANDIDATE:
        f.use_candidate = True
    elif how == _CONTROLLED:
        _set_once(f, "ice_controlled", _u64(attr, start))
    elif how == _CONTROLLING:
        _set_once(f, "ice_controlling", _u64(attr, start))
    elif how == _NETWORK_INFO:
        word = _u32(attr, start)
        _set_once(f, "network_info", (word >> 16, word & 0xFFFF))


def _walk_attributes(buf: bytes, start: int, pos: int, stop: int, *,
                     padded: bool) -> list[StunAttribute]:
    """TLVs of the attribute block ``buf[pos:stop]`` of the message at ``start``; values
    padded to 4 bytes (RFC 8489 §14). The block is read exactly as a :class:`Cursor` block
    would be, with the same errors; by hand, because every STUN packet of a call goes
    through here."""
    out: list[StunAttribute] = []
    while pos < stop:
        if pos + 4 > stop:
            raise _need(pos, 2, stop) if pos + 2 > stop else _need(pos + 2, 2, stop)
        a_type = (buf[pos] << 8) | buf[pos + 1]
        a_len = (buf[pos + 2] << 8) | buf[pos + 3]
        value_at = pos + 4
        end = value_at + a_len
        if end > stop:
            raise _need(value_at, a_len, stop)
        out.append(StunAttribute(a_type, buf[value_at:end], pos - start))
        pos = end
        pad = -a_len & 3
        if padded and pad:
            if stop - pos < pad:
                raise Malformed(LAYER, pos, "attribute padding missing")
            pos += pad
    return out


_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_CLASS_OF_BITS = tuple(MessageClass(c) for c in range(4))


def _parse_message(buf: bytes, start: int, end: int, *, tcp: bool,
                   depth: int = 0) -> tuple[StunMessage, int]:
    """Parse one message at ``buf[start:end]``; returns it and where it ends.

    Reads as a :class:`Cursor` over ``buf`` from ``start`` to ``end`` would, raising the
    same errors at the same offsets.
    """
    if start + 2 > end:
        raise _need(start, 2, end)
    msg_type = (buf[start] << 8) | buf[start + 1]
    if msg_type & 0xC000:
        raise Malformed(LAYER, start, f"first two bits set (type 0x{msg_type:04x})")
    if start + 4 > end:
        raise _need(start + 2, 2, end)
    length = (buf[start + 2] << 8) | buf[start + 3]
    if start + 8 > end:
        raise _need(start + 4, 4, end)
    cookie = buf[start + 4:start + 8] == _COOKIE_BYTES
    if length % 4 and not cookie:
        raise Malformed(LAYER, start + 2, f"length {length} not a multiple of 4")
    key: bytes | None
    if cookie:
        if start + 20 > end:
            raise _need(start + 8, 12, end)
        txid = buf[start + 8:start + 20]
        key = buf[start + 4:start + 20]  # the cookie, then the transaction id
    else:
        # RFC 3489 has no cookie: only over UDP, only plausible types; the caller checks
        # that the message fills the datagram exactly.
        if tcp:
            raise Malformed(LAYER, start + 4, "no magic cookie on TCP")
        if not _plausible_type(msg_type):
            raise Malformed(LAYER, start, f"classic STUN with type 0x{msg_type:04x}")
        if start + 20 > end:
            raise _need(start + 4, 16, end)
        txid = buf[start + 4:start + 20]
        # Without the cookie nothing is XORed: RFC 3489 had no XOR attributes, and the
        # pre-RFC TURN Microsoft still sends (0x0115 Data indication) uses 0x0012 as a
        # plain REMOTE-ADDRESS.
        key = None
    # RFC 8489 §5: M11..M7 C1 M6..M4 C0 M3..M0
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = _CLASS_OF_BITS[((msg_type >> 4) & 0x1) | ((msg_type >> 7) & 0x2)]
    body_at = start + _HEADER_LEN
    stop = body_at + length
    if stop > end:
        raise Truncated(LAYER, body_at, f"attributes of {length} bytes, {end - body_at} left")
    vendor = VENDOR_MESSAGE_TYPES.get(msg_type)
    vendors: set[Vendor] = set() if vendor is None else {vendor}
    peers: list[TransportAddress] = []
    undecoded: list[int] = []
    f = _NO_FIELDS
    attrs: list[StunAttribute] = []
    if length:
        try:
            attrs = _walk_attributes(buf, start, body_at, stop, padded=True)
        except ParseError as padded_error:
            # Microsoft's pre-RFC TURN does not pad attribute values (teams.pcap): retry
            # unpadded. The block is all there, so a walk that overruns it means wrong
            # bytes, not missing.
            try:
                attrs = _walk_attributes(buf, start, body_at, stop, padded=False)
            except ParseError:
                raise Malformed(LAYER, padded_error.offset, padded_error.reason) from None
        f = _Fields()
        for attr in attrs:
            a_type = attr.type
            if a_type in VENDOR_ATTRIBUTES:
                vendors.add(VENDOR_ATTRIBUTES[a_type])
            how = _DECODER.get(a_type)
            if how is None:
                continue
            try:
                if how == _PEER:  # there may be several: collected apart
                    peers.append(_address(attr.value, key, start + attr.offset + 4))
                else:
                    _decode_attribute(f, how, attr, buf, start, key, depth)
            except ParseError:
                # A value that does not fit its registered type (vendors reuse numbers,
                # e.g. WhatsApp sends a 4-byte 0x802B): keep it raw, note it, go on.
                undecoded.append(a_type)
    return StunMessage(
        msg_type=msg_type, method=method, cls=cls, length=length, magic_cookie=cookie,
        transaction_id=txid, attributes=tuple(attrs), mapped_address=f.mapped_address,
        xor_mapped_address=f.xor_mapped_address, xor_peer_addresses=tuple(peers),
        xor_relayed_address=f.xor_relayed_address, response_origin=f.response_origin,
        other_address=f.other_address, alternate_server=f.alternate_server,
        username=f.username, realm=f.realm, nonce=f.nonce, software=f.software,
        error=f.error, lifetime=f.lifetime, channel_number=f.channel_number,
        requested_transport=f.requested_transport, data=f.data, inner=f.inner,
        message_integrity=f.message_integrity, fingerprint=f.fingerprint,
        fingerprint_ok=f.fingerprint_ok, priority=f.priority, use_candidate=f.use_candidate,
        ice_controlled=f.ice_controlled, ice_controlling=f.ice_controlling,
        ms_version=f.ms_version, ms_implementation_version=f.ms_implementation_version,
        network_info=f.network_info, vendors=frozenset(vendors),
        undecoded=tuple(undecoded),
    ), stop


def parse_stun(data: bytes | bytearray | memoryview, *, tcp: bool = False) -> StunMessage:
    """Parse exactly one STUN message filling ``data`` (one UDP datagram).

    Raises :class:`Truncated` when ``data`` ends inside the message and
    :class:`Malformed` when it is not STUN or has bytes after the message.
    """
    buf = bytes(data)
    n = len(buf)
    if not tcp and n >= 8 and buf[4:8] != _COOKIE_BYTES:
        length = int.from_bytes(buf[2:4], "big")
        if length + _HEADER_LEN != n:
            raise Malformed(LAYER, 2, f"classic STUN length {length} does not fill "
                            f"{n} bytes")
    msg, stop = _parse_message(buf, 0, n, tcp=tcp)
    if stop != n:
        raise Malformed(LAYER, stop, f"{n - stop} bytes after the message")
    return msg


def _parse_channel(cur: Cursor, buf: bytes, *, tcp: bool) -> ChannelData:
    start = cur.pos
    channel = cur.u16()
    if not 0x4000 <= channel <= 0x7FFF:
        raise Malformed(LAYER, start, f"channel number 0x{channel:04x} outside 0x4000-0x7FFF")
    length = cur.u16()
    data = cur.take(length)
    if tcp:
        cur.skip((-length) % 4)  # RFC 8656 §12.5: padded to 4 bytes over TCP/TLS
    inner_kind = classify_first_byte(data[0]) if data else Kind.UNKNOWN
    inner: StunMessage | None = None
    if inner_kind is Kind.STUN and looks_like_stun(data):
        try:
            inner = parse_stun(data)
        except (Truncated, Malformed):
            inner = None
    return ChannelData(channel, length, data, inner_kind, inner)


def _channel_data_rtp(view: PayloadView) -> tuple[int, npt.NDArray[np.bool_]]:
    b0 = view.byte(0)
    lo, hi = _CHANNEL_FIRST_BYTES
    data_len = view.byte(2) << 8 | view.byte(3)
    claimed: npt.NDArray[np.bool_] = (
        (b0 >= lo) & (b0 <= hi)
        # the length field counts the data; over UDP up to 3 padding bytes follow (§12.5)
        & (view.full_length >= data_len + _CHANNEL_HEADER_LEN)
        & (view.full_length <= data_len + _CHANNEL_HEADER_LEN + 3))
    return _CHANNEL_HEADER_LEN, claimed


TURN_CHANNEL_RTP = Framing("turn-channel-data", _channel_data_rtp)
"""For the probe (:mod:`probe.plugins`): RTP relayed in TURN ChannelData sits right after
the 4-byte header of a channel number in RFC 8656's range, whose length field agrees with
the payload's. A QUIC short header (RFC 9000 §17.3: first bits 01) starts with the same
byte range; its next bytes are a connection ID, not a length."""

MS_TURN_MULTIPLEXED_CHANNEL = 0xFF10
"""[MS-TURN] §2.2.3: the channel ID of a Multiplexed TURN message, which carries the
streams of many clients over one port of a Microsoft TURN server (Teams' relays)."""
_MS_MULTIPLEXED_HEADER_LEN = 12
"""[MS-TURN] §2.2.3: channel ID (2), length (2), MTURN_Session_ID (8), then the data."""


def _ms_multiplexed_rtp(view: PayloadView) -> tuple[int, npt.NDArray[np.bool_]]:
    claimed: npt.NDArray[np.bool_] = (
        (view.byte(0) == MS_TURN_MULTIPLEXED_CHANNEL >> 8)
        & (view.byte(1) == MS_TURN_MULTIPLEXED_CHANNEL & 0xFF)
        # the length field counts what follows it: the session ID and the data
        & ((view.byte(2) << 8 | view.byte(3)) == view.full_length - 4))
    return _MS_MULTIPLEXED_HEADER_LEN, claimed


MS_TURN_MULTIPLEXED_RTP = Framing("ms-turn-multiplexed", _ms_multiplexed_rtp)
"""For the probe: RTP relayed in an [MS-TURN] Multiplexed TURN message sits after its
12-byte header (channel 0xFF10, length, 8-byte session ID)."""


def parse_channel_data(data: bytes | bytearray | memoryview, *, tcp: bool = False) -> ChannelData:
    """Parse one TURN ChannelData message (RFC 8656 §12.4).

    Over UDP up to three padding bytes may follow the data (§12.5); more is Malformed.
    """
    buf = bytes(data)
    cur = Cursor(buf, LAYER)
    msg = _parse_channel(cur, buf, tcp=tcp)
    if cur.remaining() > 3:
        raise Malformed(LAYER, cur.pos, f"{cur.remaining()} bytes after the channel data")
    return msg


def parse_stun_payload(data: bytes | bytearray | memoryview, *,
                       tcp: bool = False) -> StunPayload:
    """Everything STUN/TURN in one transport payload.

    UDP: one message, or a ChannelData, optionally behind a 0xFF10 multiplexed-TURN header.
    TCP: messages back to back, each either bare or behind an RFC 4571 16-bit length;
    ChannelData may be interleaved. A payload cut inside a message raises :class:`Truncated`.
    """
    buf = bytes(data)
    n = len(buf)
    framing = StunFraming.BARE
    if n >= 2 and buf[0] == _MS_MUX_MAGIC >> 8 and buf[1] == _MS_MUX_MAGIC & 0xFF:
        # [MS-TURN]: 0xFF10, 16-bit length of what follows the first 4 bytes, 8-byte session id
        if n < 4:
            raise _need(2, 2, n)
        mux_len = (buf[2] << 8) | buf[3]
        if n < _MS_MUX_HEADER_LEN:
            raise _need(4, 8, n)
        session = buf[4:_MS_MUX_HEADER_LEN]
        if mux_len != n - 4:
            raise Malformed(LAYER, 2, f"multiplexed length {mux_len} for {n - 4} bytes")
        inner, stop = _parse_message(buf, _MS_MUX_HEADER_LEN, n, tcp=tcp)
        if stop != n:
            raise Malformed(LAYER, stop, f"{n - stop} bytes after the message")
        return StunPayload(StunFraming.MS_MULTIPLEXED, session, (inner,))
    if not tcp:
        if buf and 64 <= buf[0] <= 79:  # Kind.TURN_CHANNEL
            return StunPayload(framing, None, (parse_channel_data(buf),))
        if n >= 8 and buf[4:8] == _COOKIE_BYTES:
            # WhatsApp appends bytes after some messages (stun_wa_call.pcapng): keep them
            msg, stop = _parse_message(buf, 0, n, tcp=False)
            return StunPayload(framing, None, (msg,), buf[stop:])
        return StunPayload(framing, None, (parse_stun(buf),))
    items: list[StunMessage | ChannelData] = []
    rfc4571 = n >= 10 and buf[2] <= 3 and buf[6:10] == _COOKIE_BYTES and \
        buf[4:8] != _COOKIE_BYTES
    if rfc4571:
        framing = StunFraming.RFC4571
    pos = 0
    while pos < n:
        if rfc4571:
            if pos + 2 > n:
                raise _need(pos, 2, n)
            frame_len = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
            if pos + frame_len > n:
                raise Truncated(LAYER, pos, f"block of {frame_len} bytes, {n - pos} left")
            msg, stop = _parse_message(buf, pos, pos + frame_len, tcp=True)
            if stop != pos + frame_len:
                raise Malformed(LAYER, stop, f"block of {frame_len} bytes read {stop - pos}")
            items.append(msg)
            pos = stop
        elif 64 <= buf[pos] <= 79:  # Kind.TURN_CHANNEL
            cur = Cursor(buf, LAYER, pos)
            items.append(_parse_channel(cur, buf, tcp=True))
            pos = cur.pos
        else:
            msg, pos = _parse_message(buf, pos, n, tcp=True)
            items.append(msg)
    if not items:
        raise Truncated(LAYER, 0, "empty payload")
    return StunPayload(framing, None, tuple(items))

# Attribute numbers :func:`stun_gist` reads, as plain ints.
_T_MAPPED = int(AttrType.MAPPED_ADDRESS)
_T_XOR_MAPPED = frozenset({int(AttrType.XOR_MAPPED_ADDRESS),
                           int(AttrType.XOR_MAPPED_ADDRESS_OLD)})
_T_XOR_PEER = int(AttrType.XOR_PEER_ADDRESS)
_T_XOR_RELAYED = int(AttrType.XOR_RELAYED_ADDRESS)
_T_SOFTWARE = int(AttrType.SOFTWARE)
_T_REALM = int(AttrType.REALM)
_T_USERNAME = int(AttrType.USERNAME)
_T_DATA = int(AttrType.DATA)
_T_USE_CANDIDATE = int(AttrType.USE_CANDIDATE)
_T_PRIORITY = int(AttrType.PRIORITY)
_T_MS_VERSION = int(AttrType.MS_VERSION)
_T_MS_IMPLEMENTATION_VERSION = int(AttrType.MS_IMPLEMENTATION_VERSION)
_T_ICE_CONTROLLED = int(AttrType.ICE_CONTROLLED)
_T_ICE_CONTROLLING = int(AttrType.ICE_CONTROLLING)


class StunGist(NamedTuple):
    """What the classifier reads from a plain STUN message (:func:`stun_gist`): the
    :class:`StunMessage` fields of the same names, with the same values."""

    msg_type: int
    method: int
    cls: MessageClass
    vendors: frozenset[Vendor]
    mapped_address: TransportAddress | None
    xor_mapped_address: TransportAddress | None
    xor_peer_addresses: tuple[TransportAddress, ...]
    xor_relayed_address: TransportAddress | None
    realm: str | None
    software: str | None
    priority: int | None
    use_candidate: bool
    ice_controlled: int | None
    ice_controlling: int | None
    ms_version: int | None
    ms_implementation_version: int | None
    username: str | None

    @property
    def is_turn(self) -> bool:
        """True for TURN methods (RFC 8656 / RFC 6062)."""
        return self.method in TURN_METHODS


_NO_VENDORS: frozenset[Vendor] = frozenset()


def stun_gist(data: bytes) -> StunGist | None:
    """The classifier's fast read of a UDP payload holding one plain STUN message (magic
    cookie, attributes padded, no DATA to look into), walking the bytes directly and
    decoding only the attributes :class:`StunGist` keeps. ``None`` for anything else
    (ChannelData, classic STUN, odd or cut-short bytes, not STUN at all):
    :func:`parse_stun_payload` then gives the full answer or its exact error."""
    n = len(data)
    if n < _HEADER_LEN or data[0] & 0xC0 or data[4:8] != _COOKIE_BYTES:
        return None
    msg_type = (data[0] << 8) | data[1]
    stop = _HEADER_LEN + ((data[2] << 8) | data[3])
    if stop > n:
        return None
    key = data[4:20]
    vendor = VENDOR_MESSAGE_TYPES.get(msg_type)
    vendors = _NO_VENDORS if vendor is None else frozenset((vendor,))
    mapped = xor_mapped = relayed = None
    peers: list[TransportAddress] = []
    realm = software = username = None
    priority = controlled = controlling = ms_version = ms_implementation = None
    use_candidate = False
    pos = _HEADER_LEN
    while pos < stop:
        if pos + 4 > stop:
            return None
        a_type = (data[pos] << 8) | data[pos + 1]
        a_len = (data[pos + 2] << 8) | data[pos + 3]
        at = pos + 4
        pos = at + a_len + (-a_len & 3)
        if pos > stop:
            return None  # cut short, or not padded: the full parser sorts it out
        if a_type in VENDOR_ATTRIBUTES:
            vendors = vendors | {VENDOR_ATTRIBUTES[a_type]}
        value = data[at:at + a_len]
        try:
            if a_type in _T_XOR_MAPPED:
                if xor_mapped is None:
                    xor_mapped = _address(value, key, at)
            elif a_type == _T_MAPPED:
                if mapped is None:
                    mapped = _address(value, None, at)
            elif a_type == _T_XOR_PEER:
                peers.append(_address(value, key, at))
            elif a_type == _T_XOR_RELAYED:
                if relayed is None:
                    relayed = _address(value, key, at)
            elif a_type == _T_SOFTWARE:
                software = software if software is not None else _text(value)
            elif a_type == _T_REALM:
                realm = realm if realm is not None else _text(value)
            elif a_type == _T_USERNAME:
                username = username if username is not None else _text(value)
            elif a_type == _T_DATA:
                return None  # may hold a message of its own: the full parser reads it
            elif a_type == _T_USE_CANDIDATE:
                use_candidate = True
            elif a_len == 4:
                if a_type == _T_PRIORITY and priority is None:
                    priority = int.from_bytes(value, "big")
                elif a_type == _T_MS_VERSION and ms_version is None:
                    ms_version = int.from_bytes(value, "big")
                elif a_type == _T_MS_IMPLEMENTATION_VERSION and ms_implementation is None:
                    ms_implementation = int.from_bytes(value, "big")
            elif a_len == 8:
                if a_type == _T_ICE_CONTROLLED and controlled is None:
                    controlled = int.from_bytes(value, "big")
                elif a_type == _T_ICE_CONTROLLING and controlling is None:
                    controlling = int.from_bytes(value, "big")
        except ParseError:
            continue  # an address that does not fit: the full parser keeps it undecoded
    method = (msg_type & 0x000F) | ((msg_type & 0x00E0) >> 1) | ((msg_type & 0x3E00) >> 2)
    cls = _CLASS_OF_BITS[((msg_type >> 4) & 0x1) | ((msg_type >> 7) & 0x2)]
    return StunGist(msg_type, method, cls, vendors, mapped, xor_mapped, tuple(peers), relayed,
                    realm, software, priority, use_candidate, controlled, controlling,
                    ms_version, ms_implementation, username)

