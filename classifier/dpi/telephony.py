"""Classic telephony control protocols, recognised from their framing.

These set up and control calls without naming an OTT app: MGCP (RFC 3435, text
commands and responses on UDP 2427/2727), H.323 (H.225.0 call signalling as
Q.931 inside TPKT on TCP, RFC 1006; RAS on UDP 1719), Cisco SCCP ("Skinny",
little-endian length, header version, message id on TCP 2000), Mumble's UDP
ping (a 12-byte request, 24-byte reply carrying the server version and user
counts) and Agora's SD-RTN control messages (a 4-byte id, a 16-bit zero, a
message type, and a length-prefixed three-letter tag).

Also IAX2 (RFC 5456: full frames with a 12-byte header and information elements,
UDP 4569), Megaco/H.248 in its text encoding (ITU-T H.248.1 annex B, RFC 3525:
``MEGACO/1`` or ``!/1`` and the sender's mId), BFCP (RFC 8855, RFC 4582: a 12-byte
common header whose conference ID stays the same across messages) and TeamSpeak
(``TS3INIT1`` opening a TeamSpeak 3 session on UDP; TeamSpeak 2's ``f4 be 0x 00``
connection packets), after the layouts nDPI's iax.c, megaco.c, bfcp.c and
teamspeak.c test.

Each ``parse_*`` returns a small record when the bytes have the layout, or
None. They never raise: bytes that merely do not fit are simply not that
protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "IAX2_PORT",
    "Telephony",
    "parse_agora",
    "parse_bfcp",
    "parse_h225_tpkt",
    "parse_iax2",
    "parse_megaco",
    "parse_mgcp",
    "parse_mumble_ping",
    "parse_sccp",
    "parse_teamspeak",
    "parse_tpkt",
]

IAX2_PORT = 4569
"""IANA's port for IAX2 (RFC 5456 §2)."""
IAX2_FRAME_TYPES = range(0x01, 0x0B)
"""RFC 5456 §8.2: DTMF, voice, video, control, null, IAX, text, image, HTML, comfort
noise."""
IAX2_MAX_IES = 32

MGCP_VERBS = frozenset({b"EPCF", b"CRCX", b"MDCX", b"DLCX", b"RQNT", b"NTFY", b"AUEP", b"AUCX",
                        b"RSIP"})
"""RFC 3435 §2.3 commands."""
Q931_DISCRIMINATOR = 0x08
"""ITU-T Q.931 protocol discriminator used by H.225.0 call signalling."""


@dataclass(frozen=True, slots=True)
class Telephony:
    """A telephony control message recognised in a payload."""

    protocol: str
    """``mgcp``, ``h323``, ``sccp``, ``mumble``, ``agora``, ``iax2``, ``megaco``,
    ``bfcp`` or ``teamspeak``."""
    what: str
    """The command, message id or message type, for the explanation."""


def parse_mgcp(data: bytes) -> Telephony | None:
    """An MGCP command (``VERB txid endpoint MGCP 1.0``) or response (``NNN txid``)."""
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    parts = line.split(b" ")
    if len(parts) >= 4 and parts[0] in MGCP_VERBS and parts[1].isdigit() and \
            parts[3].startswith(b"MGCP"):
        return Telephony("mgcp", parts[0].decode())
    if len(parts) >= 2 and len(parts[0]) == 3 and parts[0].isdigit() and parts[1].isdigit() \
            and 100 <= int(parts[0]) <= 999 and len(parts[1]) <= 9:
        return Telephony("mgcp", parts[0].decode())
    return None


def parse_tpkt(data: bytes) -> int | None:
    """Length of the first TPKT packet (RFC 1006: version 3, reserved 0, 16-bit length)."""
    if len(data) < 4 or data[0] != 3 or data[1] != 0:
        return None
    n = int.from_bytes(data[2:4], "big")
    return n if n >= 4 else None


def parse_h225_tpkt(data: bytes) -> Telephony | None:
    """Q.931/H.225.0 call signalling inside TPKT (TCP 1720), or a TPKT header alone."""
    n = parse_tpkt(data)
    if n is None:
        return None
    if len(data) >= 6 and data[4] == Q931_DISCRIMINATOR:
        cref_len = data[5] & 0x0F
        if cref_len <= 3 and len(data) > 6 + cref_len:
            msg = data[6 + cref_len]
            return Telephony("h323", f"Q.931 message 0x{msg:02x}")
    if n == len(data) or len(data) == 4:
        return Telephony("tpkt", f"TPKT length {n}")
    return None


def parse_sccp(data: bytes) -> Telephony | None:
    """Cisco SCCP: little-endian length (of what follows the 8-byte header, counting the id),
    a 32-bit header version (0, 0x11, 0x12, 0x14, 0x16), a little-endian message id."""
    if len(data) < 12:
        return None
    length = int.from_bytes(data[0:4], "little")
    version = int.from_bytes(data[4:8], "little")
    msg = int.from_bytes(data[8:12], "little")
    if version not in (0, 0x11, 0x12, 0x14, 0x16) or msg > 0x1FF:
        return None
    if length + 8 != len(data) and not (length + 8 < len(data) and length >= 4):
        return None
    return Telephony("sccp", f"message 0x{msg:04x}")


def parse_mumble_ping(data: bytes, reply: bytes | None) -> Telephony | None:
    """Mumble's UDP ping: 4 zero bytes and an 8-byte timestamp, answered by 24 bytes that
    carry the server version, the same timestamp, users, maximum users and bandwidth."""
    if len(data) != 12 or data[:4] != b"\x00\x00\x00\x00":
        return None
    if reply is None or len(reply) != 24 or reply[4:12] != data[4:12] or reply[0] != 0:
        return None
    return Telephony("mumble", "ping")


def parse_agora(data: bytes) -> Telephony | None:
    """Agora SD-RTN control message: 4-byte id, 16-bit zero, message type, zero byte,
    4 bytes, then a small count byte and a three-letter uppercase tag (SNI, PEI...)."""
    if len(data) < 20 or data[4:6] != b"\x00\x00" or data[7] != 0 or data[8:12] != bytes(4):
        return None
    tag = data[13:16]
    if not 1 <= data[12] <= 8 or not tag.isalpha() or not tag.isupper():
        return None
    return Telephony("agora", f"type 0x{data[6]:02x} {tag.decode()}")


def _iax2_ies_fill(data: bytes, pos: int) -> bool:
    """Whether information elements (one byte of type, one of length, the data) from
    ``pos`` end exactly at the end of ``data`` (RFC 5456 §8.6)."""
    for _ in range(IAX2_MAX_IES):
        if pos == len(data):
            return True
        if pos + 2 > len(data):
            return False
        pos += 2 + data[pos + 1]
    return pos == len(data)


def parse_iax2(data: bytes, on_port: bool) -> Telephony | None:
    """An IAX2 full frame (RFC 5456 §8.1.1): the F bit, source and destination call
    numbers, a 32-bit timestamp, outbound and inbound sequence numbers, a frame type
    (1-10) and a subclass. Off UDP 4569 only the opening of a call is taken, as nDPI
    does: an IAX control frame (type 6) with both sequence numbers at their start and
    information elements that fill the datagram exactly."""
    if len(data) < 12 or not data[0] & 0x80 or data[10] not in IAX2_FRAME_TYPES:
        return None
    ftype, sub = data[10], data[11] & 0x7F
    opening = ftype == 0x06 and data[8] == 0 and data[9] <= 1 and _iax2_ies_fill(data, 12)
    if opening or (on_port and (ftype != 0x06 or _iax2_ies_fill(data, 12))):
        return Telephony("iax2", f"frame type {ftype} subclass {sub}")
    return None


def parse_megaco(data: bytes) -> Telephony | None:
    """A Megaco/H.248 text message: ``MEGACO/`` or ``!/`` and a version digit, white
    space, then the sender's mId (a bracketed address or an angle-bracketed domain
    name). Over TCP each message comes in a TPKT packet (H.248.1 annex D.1)."""
    if len(data) >= 4 and data[0] == 3 and data[1] == 0:
        data = data[4:]
    for token in (b"MEGACO/", b"!/"):
        if data.startswith(token):
            rest = data[len(token):]
            if len(rest) >= 3 and rest[:1].isdigit() and rest[1:2] in (b" ", b"\t"):
                mid = rest[2:].lstrip(b" \t")
                if mid[:1] in (b"[", b"<"):
                    return Telephony("megaco", token.decode().rstrip("/") + " " + chr(rest[0]))
    return None


def _bfcp_header(data: bytes, tcp: bool) -> int | None:
    """Conference ID of a BFCP message (RFC 8855 §5.1: version 1 or 2, reserved bits
    zero, primitive 1-17, payload length in 4-octet units after the 12-byte header),
    or None."""
    if len(data) < 12:
        return None
    version = data[0] >> 5
    if version not in (1, 2) or data[0] & 0x07 or not 1 <= data[1] <= 17:
        return None
    size = 12 + 4 * int.from_bytes(data[2:4], "big")
    if size > len(data) or (not tcp and size != len(data)):
        return None
    return int.from_bytes(data[4:8], "big")


def parse_bfcp(payloads: list[bytes], tcp: bool) -> Telephony | None:
    """BFCP: at least two messages with the common header, all of one conference."""
    conferences = [_bfcp_header(p, tcp) for p in payloads]
    if len(conferences) < 2 or None in conferences or len(set(conferences)) != 1:
        return None
    return Telephony("bfcp", f"conference {conferences[0]}")


def parse_teamspeak(data: bytes, udp: bool) -> Telephony | None:
    """TeamSpeak 3's session opening (``TS3INIT1`` on UDP) or a TeamSpeak 2 connection
    packet (``f4 be`` and a type 01-03, 00)."""
    if len(data) < 20:
        return None
    if udp and data.startswith(b"TS3INIT1"):
        return Telephony("teamspeak", "TeamSpeak 3 init")
    if data[:2] == b"\xf4\xbe" and data[2] in (1, 2, 3) and data[3] == 0:
        return Telephony("teamspeak", "TeamSpeak 2 connection")
    return None
