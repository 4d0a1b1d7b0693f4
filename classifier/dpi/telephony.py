"""Classic telephony control protocols, recognised from their framing.

These set up and control calls without naming an OTT app: MGCP (RFC 3435, text
commands and responses on UDP 2427/2727), H.323 (H.225.0 call signalling as
Q.931 inside TPKT on TCP, RFC 1006; RAS on UDP 1719), Cisco SCCP ("Skinny",
little-endian length, header version, message id on TCP 2000), Mumble's UDP
ping (a 12-byte request, 24-byte reply carrying the server version and user
counts) and Agora's SD-RTN control messages (a 4-byte id, a 16-bit zero, a
message type, and a length-prefixed three-letter tag).

Each ``parse_*`` returns a small record when the bytes have the layout, or
None. They never raise: bytes that merely do not fit are simply not that
protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Telephony",
    "parse_agora",
    "parse_h225_tpkt",
    "parse_mgcp",
    "parse_mumble_ping",
    "parse_sccp",
    "parse_tpkt",
]

MGCP_VERBS = frozenset({b"EPCF", b"CRCX", b"MDCX", b"DLCX", b"RQNT", b"NTFY", b"AUEP", b"AUCX",
                        b"RSIP"})
"""RFC 3435 §2.3 commands."""
Q931_DISCRIMINATOR = 0x08
"""ITU-T Q.931 protocol discriminator used by H.225.0 call signalling."""


@dataclass(frozen=True, slots=True)
class Telephony:
    """A telephony control message recognised in a payload."""

    protocol: str
    """``mgcp``, ``h323``, ``sccp``, ``mumble`` or ``agora``."""
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
