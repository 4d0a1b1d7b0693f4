"""DTLS inspector: record headers, fragmented handshake messages, hellos, alerts.

Input: a flow's first UDP payloads in one direction, in capture order. WebRTC
and VoIP media flows multiplex STUN, DTLS and SRTP on one port (RFC 7983), so
datagrams that do not start like a DTLS record are skipped, not rejected. The
hello bodies are read by the TLS inspector's parsers with the DTLS cookie.

Errors: :class:`probe.errors.ParseError` with layer ``"dtls"``:
:class:`~probe.errors.Truncated` when the datagrams end before the message,
:class:`~probe.errors.Malformed` when the bytes contradict the RFCs.

References: RFC 6347 §4.1 (record layer), §4.2.2-4.2.3 (handshake header,
fragmentation), §4.2.1 (HelloVerifyRequest, cookie); RFC 9147 §4, §5
(DTLS 1.3 keeps the DTLSPlaintext header for the hellos); RFC 5764 §4.1
(use_srtp); RFC 7983 §7 (demultiplexing by first byte).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from classifier.dpi.tls import (
    ClientHello,
    ContentType,
    HandshakeType,
    ServerHello,
    TlsAlert,
    parse_client_hello_body,
    parse_server_hello_body,
)
from probe.cursor import Cursor
from probe.errors import Malformed, Truncated

__all__ = [
    "DtlsRecord",
    "DtlsVersion",
    "HandshakeFragment",
    "HandshakeMessage",
    "find_dtls_alert",
    "handshake_messages",
    "looks_like_dtls",
    "parse_dtls_client_hello",
    "parse_dtls_records",
    "parse_dtls_server_hello",
    "parse_handshake_fragment",
]

LAYER = "dtls"

_RECORD_HEADER = 13
"""type(1) version(2) epoch(2) sequence_number(6) length(2), RFC 6347 §4.1."""
_MAX_MESSAGE = 1 << 17
"""Largest first handshake message we reassemble (a ClientHello is far smaller)."""


class DtlsVersion(IntEnum):
    """DTLS version numbers, the ones' complement of the TLS ones (RFC 6347 §4.1)."""

    DTLS_1_0 = 0xFEFF
    DTLS_1_2 = 0xFEFD
    DTLS_1_3 = 0xFEFC


@dataclass(frozen=True, slots=True)
class DtlsRecord:
    """One DTLSPlaintext/DTLSCiphertext record with the classic 13-byte header."""

    content_type: int
    """``ContentType`` code."""
    version: int
    """Record version (``DtlsVersion`` value; 0xfeff in many first ClientHellos)."""
    epoch: int
    """Epoch: 0 until keys change, so hellos and plaintext alerts have 0."""
    sequence: int
    """48-bit record sequence number."""
    offset: int
    """Offset of the record header in its datagram."""
    fragment: bytes
    """The record body."""


@dataclass(frozen=True, slots=True)
class HandshakeFragment:
    """A handshake message fragment as carried in one record (RFC 6347 §4.2.2)."""

    msg_type: int
    """``HandshakeType`` code."""
    length: int
    """Length of the whole message body."""
    message_seq: int
    """Handshake message sequence number."""
    fragment_offset: int
    """Where this fragment starts in the message body."""
    data: bytes
    """The fragment bytes."""


@dataclass(frozen=True, slots=True)
class HandshakeMessage:
    """A whole handshake message, reassembled from its fragments."""

    msg_type: int
    """``HandshakeType`` code."""
    message_seq: int
    """Handshake message sequence number."""
    body: bytes
    """The message body (after the 12-byte handshake header)."""
    version: int
    """Version of the record that carried its first fragment."""


def looks_like_dtls(data: bytes) -> bool:
    """True if ``data`` starts like a DTLS record (RFC 7983 §7: first byte 20-63, then 0xfe)."""
    return len(data) >= _RECORD_HEADER and 20 <= data[0] <= 63 and data[1] == 0xFE


def parse_dtls_records(data: bytes, layer: str = LAYER) -> tuple[DtlsRecord, ...]:
    """Split one datagram into DTLS records (a datagram may hold several, §4.1.1).

    A DTLS 1.3 record with the unified header (first bits 001, RFC 9147 §4) is
    encrypted and has no fixed layout: the records before it are returned.
    """
    cur = Cursor(data, layer)
    out: list[DtlsRecord] = []
    while not cur.eof():
        start = cur.pos
        if cur.peek_u8() & 0xE0 == 0x20:
            break
        ctype = cur.u8()
        if not 20 <= ctype <= 25:
            raise Malformed(layer, start, f"content type {ctype} is not a DTLS record")
        version = cur.u16()
        if version >> 8 != 0xFE:
            raise Malformed(layer, start + 1, f"record version {version:#06x} is not DTLS")
        epoch = cur.u16()
        sequence = int.from_bytes(cur.take(6), "big")
        fragment = cur.take(cur.u16())
        out.append(DtlsRecord(ctype, version, epoch, sequence, start, fragment))
    return tuple(out)


def parse_handshake_fragment(cur: Cursor) -> HandshakeFragment:
    """Read one handshake header and its fragment (a record may hold several)."""
    start = cur.pos
    msg_type = cur.u8()
    length = cur.u24()
    message_seq = cur.u16()
    frag_offset = cur.u24()
    frag_length = cur.u24()
    if frag_offset + frag_length > length:
        raise Malformed(cur.layer, start + 6,
                        f"fragment {frag_offset}+{frag_length} beyond length {length}")
    return HandshakeFragment(msg_type, length, message_seq, frag_offset, cur.take(frag_length))


def _fragments(datagrams: Iterable[bytes], layer: str
               ) -> Iterator[tuple[HandshakeFragment, int]]:
    for data in datagrams:
        if not looks_like_dtls(data):
            continue
        for rec in parse_dtls_records(data, layer):
            if rec.content_type != ContentType.HANDSHAKE or rec.epoch != 0:
                continue
            cur = Cursor(rec.fragment, layer)
            while not cur.eof():
                yield parse_handshake_fragment(cur), rec.version


def handshake_messages(datagrams: Iterable[bytes], layer: str = LAYER
                       ) -> Iterator[HandshakeMessage]:
    """Whole epoch-0 handshake messages, in the order they complete.

    Fragments of one message (same ``message_seq``) are joined by offset;
    retransmitted copies are harmless. Messages still incomplete when the
    datagrams end are not yielded.
    """
    pending: dict[int, tuple[HandshakeFragment, bytearray, list[bool], int]] = {}
    done: set[int] = set()
    for frag, version in _fragments(datagrams, layer):
        if frag.message_seq in done:
            continue
        if frag.length > _MAX_MESSAGE:
            raise Malformed(layer, 1, f"handshake message of {frag.length} bytes")
        entry = pending.get(frag.message_seq)
        if entry is None:
            entry = (frag, bytearray(frag.length), [False] * frag.length, version)
            pending[frag.message_seq] = entry
        first, body, seen, first_version = entry
        if frag.length != first.length or frag.msg_type != first.msg_type:
            raise Malformed(layer, 0, f"fragments of message {frag.message_seq} disagree")
        end = frag.fragment_offset + len(frag.data)
        body[frag.fragment_offset:end] = frag.data
        seen[frag.fragment_offset:end] = [True] * len(frag.data)
        if all(seen):
            done.add(frag.message_seq)
            del pending[frag.message_seq]
            yield HandshakeMessage(first.msg_type, frag.message_seq, bytes(body), first_version)


def _first_message(datagrams: Iterable[bytes], msg_type: HandshakeType,
                   layer: str) -> HandshakeMessage:
    items = list(datagrams)
    for msg in handshake_messages(items, layer):
        if msg.msg_type == msg_type:
            return msg
    raise Truncated(layer, sum(len(d) for d in items),
                    f"no complete {msg_type.name} in the datagrams")


def parse_dtls_client_hello(datagrams: Iterable[bytes], layer: str = LAYER) -> ClientHello:
    """The first complete ClientHello in the originator's datagrams.

    Raises :class:`Truncated` (offset: total bytes seen) when none is whole.
    """
    msg = _first_message(datagrams, HandshakeType.CLIENT_HELLO, layer)
    return parse_client_hello_body(Cursor(msg.body, layer), dtls=True)


def parse_dtls_server_hello(datagrams: Iterable[bytes], layer: str = LAYER) -> ServerHello:
    """The first complete ServerHello in the responder's datagrams (after HelloVerifyRequest)."""
    msg = _first_message(datagrams, HandshakeType.SERVER_HELLO, layer)
    return parse_server_hello_body(Cursor(msg.body, layer))


def find_dtls_alert(datagrams: Iterable[bytes], layer: str = LAYER) -> TlsAlert | None:
    """The first plaintext alert (epoch 0, 2-byte body), or None; offset is within its datagram."""
    for data in datagrams:
        if not looks_like_dtls(data):
            continue
        for rec in parse_dtls_records(data, layer):
            if rec.content_type == ContentType.ALERT and rec.epoch == 0 and len(rec.fragment) == 2:
                return TlsAlert(rec.fragment[0], rec.fragment[1], rec.offset)
    return None
