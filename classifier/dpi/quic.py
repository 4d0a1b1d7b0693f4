"""QUIC inspector: long headers, client Initial decryption, the ClientHello inside.

Input: the first client (originator) UDP payloads of a flow, in capture order.
IETF QUIC (v1, v2, drafts 22-32), Facebook mvfst and Google's TLS flavour
(T050/T051) carry a TLS ClientHello in CRYPTO frames of Initial packets that
are protected with keys any observer can derive from the client's Destination
Connection ID (RFC 9001 §5.2). Google QUIC Q035-Q046 sends its CHLO handshake
message in the clear; Q050 encrypts it like an Initial but keeps the CHLO.

Errors: :class:`probe.errors.ParseError` with layer ``"quic"`` (or ``"gquic"``
for Google's own formats): :class:`~probe.errors.Truncated` when more bytes
(or more packets) would help, :class:`~probe.errors.Malformed` when the bytes
are wrong, including an Initial whose AEAD tag does not verify.

References: RFC 8999 (invariants), RFC 9000 §12.2, §17.2, §19 (packets,
coalescing, frames), RFC 9001 §5 (Initial protection), RFC 9369 §3 (v2),
draft-ietf-quic-tls-22/-23/-29 §5.2 (draft salts). Google QUIC: the wire
layouts documented in "QUIC Crypto" and the Chromium "QUIC wire layout" notes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from classifier.dpi.tls import (
    ClientHello,
    Transport,
    client_hello_names,
    ja4,
    parse_client_hello,
)
from probe.cursor import Cursor
from probe.errors import Malformed, Truncated

__all__ = [
    "FrameType",
    "GquicHello",
    "InitialKeys",
    "InitialPayload",
    "LongHeader",
    "PacketType",
    "QuicClientInitial",
    "QuicNames",
    "QuicVersion",
    "client_initial_names",
    "decrypt_initial",
    "initial_keys",
    "inspect_client",
    "inspect_client_initials",
    "parse_gquic_chlo",
    "parse_gquic_packet",
    "parse_initial_frames",
    "parse_long_header",
    "split_datagram",
]

LAYER = "quic"
GLAYER = "gquic"


class QuicVersion(IntEnum):
    """Version numbers seen on the wire (RFC 9000 §15, RFC 9369, IANA QUIC versions)."""

    NEGOTIATION = 0x00000000
    V1 = 0x00000001
    V2 = 0x6B3343CF
    DRAFT_22 = 0xFF000016
    DRAFT_23 = 0xFF000017
    DRAFT_24 = 0xFF000018
    DRAFT_25 = 0xFF000019
    DRAFT_26 = 0xFF00001A
    DRAFT_27 = 0xFF00001B
    DRAFT_28 = 0xFF00001C
    DRAFT_29 = 0xFF00001D
    DRAFT_30 = 0xFF00001E
    DRAFT_31 = 0xFF00001F
    DRAFT_32 = 0xFF000020
    MVFST_22 = 0xFACEB001
    MVFST_27 = 0xFACEB002
    MVFST_EXP = 0xFACEB00E
    Q035 = 0x51303335
    Q039 = 0x51303339
    Q043 = 0x51303433
    Q046 = 0x51303436
    Q050 = 0x51303530
    T050 = 0x54303530
    T051 = 0x54303531


class PacketType(IntEnum):
    """Long-header packet types, independent of how a version encodes them."""

    INITIAL = 0
    ZERO_RTT = 1
    HANDSHAKE = 2
    RETRY = 3
    VERSION_NEGOTIATION = 4


class FrameType(IntEnum):
    """Frame types allowed in an Initial packet (RFC 9000 §12.4, §19)."""

    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    ACK_ECN = 0x03
    CRYPTO = 0x06
    GQUIC_CRYPTO = 0x08
    """Q050/T050/T051 carry their handshake stream in frame type 0x08."""
    CONNECTION_CLOSE = 0x1C
    CONNECTION_CLOSE_APP = 0x1D


_V2_TYPES = {1: PacketType.INITIAL, 2: PacketType.ZERO_RTT, 3: PacketType.HANDSHAKE,
             0: PacketType.RETRY}
"""RFC 9369 §3.2: v2 shuffles the two long packet type bits."""

# Initial salts: RFC 9001 §5.2, RFC 9369 §3.3.1, draft-ietf-quic-tls-22/-23/-29 §5.2;
# Google's Q050/T050/T051 salts as shipped by Chromium.
_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")
_SALT_D22 = bytes.fromhex("7fbcdb0e7c66bbe9193a96cd21519ebd7a02644a")
_SALT_Q50 = bytes.fromhex("504574efd066fe2f9d945cfcdbd3a7f0d3b56b45")
_SALT_T50 = bytes.fromhex("7ff579e5acd072915580304c43a2367c60488310")
_SALT_T51 = bytes.fromhex("7a4edef4e7ccee5fa4506c19124fc8ccda6e033d")

_GQUIC_SALTS = {QuicVersion.Q050: _SALT_Q50, QuicVersion.T050: _SALT_T50,
                QuicVersion.T051: _SALT_T51}

_MAX_CID = 20
"""Connection IDs are at most 20 bytes in QUIC v1 and v2 (RFC 9000 §17.2)."""
_SAMPLE = 16
"""Header protection samples 16 bytes, 4 bytes after the packet number start (RFC 9001 §5.4.2)."""
_TAG = 16
"""AEAD_AES_128_GCM tag length."""


def _is_draft(version: int) -> bool:
    return version >> 8 == 0xFF0000


def _is_gquic(version: int) -> bool:
    """Q0xx / T0xx: ASCII 'Q' or 'T', then '0' (Google QUIC)."""
    return version >> 16 in (0x5130, 0x5430)


def _initial_salt(version: int) -> bytes | None:
    """The Initial salt for ``version``, or None if the version is not one we can decrypt."""
    if version == QuicVersion.V1:
        return _SALT_V1
    if version == QuicVersion.V2:
        return _SALT_V2
    if version in _GQUIC_SALTS:
        return _GQUIC_SALTS[QuicVersion(version)]
    if version == QuicVersion.MVFST_22:
        return _SALT_D22
    if version in (QuicVersion.MVFST_27, QuicVersion.MVFST_EXP):
        return _SALT_D23
    if (version & 0x0F0F0F0F) == 0x0A0A0A0A:  # reserved versions: assume a recent draft
        return _SALT_D29
    if _is_draft(version):
        draft = version & 0xFF
        if draft >= 29:
            return _SALT_D29
        if draft >= 23:
            return _SALT_D23
        if draft == 22:
            return _SALT_D22
    return None


@dataclass(frozen=True, slots=True)
class LongHeader:
    """A long-header packet inside a datagram (RFC 9000 §17.2), header protection still on."""

    offset: int
    """Where the packet starts in the datagram."""
    size: int
    """Bytes of the whole packet (header and protected payload)."""
    first_byte: int
    """The first byte as sent (low bits still masked for protected types)."""
    version: int
    """The version field (``QuicVersion`` when known)."""
    packet_type: PacketType
    """Initial, 0-RTT, Handshake, Retry or Version Negotiation."""
    dcid: bytes
    """Destination Connection ID."""
    scid: bytes
    """Source Connection ID."""
    token: bytes
    """Initial token (empty for other types); the Retry token for Retry packets."""
    pn_offset: int
    """Offset of the protected packet number from the packet start (0 if none)."""
    length: int
    """The Length field: packet number plus protected payload bytes (0 if none)."""


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Client Initial protection keys (RFC 9001 §5.1-5.2)."""

    key: bytes
    """AEAD_AES_128_GCM key."""
    iv: bytes
    """12-byte AEAD IV."""
    hp: bytes
    """AES-128 header protection key."""


@dataclass(frozen=True, slots=True)
class InitialPayload:
    """The frames of one decrypted Initial packet."""

    packet_number: int
    """Full packet number (Initial numbering starts at 0, so no expansion is needed)."""
    frame_types: tuple[int, ...]
    """Frame types in order (runs of PADDING count once)."""
    crypto: tuple[tuple[int, bytes], ...]
    """CRYPTO frames as (stream offset, data), in wire order."""


@dataclass(frozen=True, slots=True)
class QuicNames:
    """The names a client's Initials carry (:func:`client_initial_names`)."""

    version: int
    sni: str | None
    alpn: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QuicClientInitial:
    """What a client's Initial packets reveal."""

    version: int
    """QUIC version of the first Initial (``QuicVersion`` when known)."""
    dcid: bytes
    """Original Destination Connection ID (the one the Initial keys derive from)."""
    scid: bytes
    """The client's Source Connection ID."""
    client_hello: ClientHello
    """The reassembled TLS ClientHello."""
    packets: int
    """Initial packets decrypted to get it."""

    @property
    def sni(self) -> str | None:
        """Server name from the ClientHello."""
        return self.client_hello.sni

    @property
    def alpn(self) -> tuple[str, ...]:
        """ALPN protocols offered."""
        return self.client_hello.alpn

    @property
    def ja4(self) -> str:
        """JA4 with the ``q`` prefix."""
        return ja4(self.client_hello, Transport.QUIC)


@dataclass(frozen=True, slots=True)
class GquicHello:
    """A Google QUIC CHLO handshake message (Q035-Q050)."""

    version: int
    """Version field of the packet (``QuicVersion.Q046``...)."""
    cid: bytes
    """Connection ID (the Destination Connection ID for Q046/Q050)."""
    tags: tuple[tuple[str, bytes], ...]
    """CHLO tag/value pairs in order, tags as text (``"SNI"``, ``"UAID"``, ``"VER"``)."""

    def tag(self, name: str) -> bytes | None:
        """The value of tag ``name``, or None."""
        for key, value in self.tags:
            if key == name:
                return value
        return None

    @property
    def sni(self) -> str | None:
        """Server name (tag ``SNI``)."""
        raw = self.tag("SNI")
        return None if raw is None else raw.decode("ascii", "backslashreplace")

    @property
    def uaid(self) -> str | None:
        """Client user agent (tag ``UAID``)."""
        raw = self.tag("UAID")
        return None if raw is None else raw.decode("ascii", "backslashreplace")


# -- headers ------------------------------------------------------------------------

_V1_TYPES = tuple(PacketType(bits) for bits in range(4))


def _packet_type(first: int, version: int) -> PacketType:
    bits = (first >> 4) & 0x03
    if version == QuicVersion.V2:
        return _V2_TYPES[bits]
    return _V1_TYPES[bits]


def _short(layer: str, pos: int, n: int, end: int) -> Truncated:
    """The error :meth:`Cursor.take` raises for ``n`` bytes at ``pos`` before ``end``."""
    return Truncated(layer, pos, f"need {n} bytes, {end - pos} left")


def _varint_at(data: bytes, pos: int, end: int, layer: str) -> tuple[int, int]:
    """A QUIC variable-length integer at ``pos`` (RFC 9000 §16) and the position after it;
    :meth:`Cursor.varint` by hand, with its errors."""
    if pos >= end:
        raise Truncated(layer, pos, "need 1 byte, 0 left")
    first = data[pos]
    if first < 0x40:
        return first, pos + 1
    size = 1 << (first >> 6)
    if pos + size > end:
        raise _short(layer, pos, size, end)
    stop = pos + size
    return int.from_bytes(data[pos:stop], "big") & ((1 << (8 * size - 2)) - 1), stop


def _cid_at(data: bytes, pos: int, end: int, layer: str) -> tuple[bytes, int]:
    """A connection ID with its one-byte length at ``pos`` (RFC 9000 §17.2) and the
    position after it."""
    if pos >= end:
        raise _short(layer, pos, 1, end)
    size = data[pos]
    pos += 1
    if pos + size > end:
        raise _short(layer, pos, size, end)
    return data[pos:pos + size], pos + size


def _long_header(data: bytes, start: int, end: int, layer: str) -> LongHeader:
    """:func:`parse_long_header` over ``data[start:end]``: the same reads and errors,
    indexing the bytes directly (every QUIC flow's first datagram goes through here)."""
    if start >= end:
        raise _short(layer, start, 1, end)
    first = data[start]
    if not first & 0x80:
        raise Malformed(layer, start, "short header packet")
    if start + 5 > end:
        raise _short(layer, start + 1, 4, end)
    version = int.from_bytes(data[start + 1:start + 5], "big")
    if _is_gquic(version) and version < QuicVersion.Q050:
        raise Malformed(layer, start + 1, f"gQUIC {version:#x} has no IETF long header")
    dcid, p = _cid_at(data, start + 5, end, layer)
    scid, p = _cid_at(data, p, end, layer)
    if version != QuicVersion.NEGOTIATION and (len(dcid) > _MAX_CID or len(scid) > _MAX_CID):
        raise Malformed(layer, start + 5, "connection ID longer than 20 bytes")
    if version == QuicVersion.NEGOTIATION:
        if (end - p) % 4:
            raise Malformed(layer, p, "version list not a multiple of 4 bytes")
        return LongHeader(start, end - start, first, version,
                          PacketType.VERSION_NEGOTIATION, dcid, scid, b"", 0, 0)
    ptype = _packet_type(first, version)
    if ptype == PacketType.RETRY:
        return LongHeader(start, end - start, first, version, ptype, dcid, scid, data[p:end],
                          0, 0)
    token = b""
    if ptype == PacketType.INITIAL:
        size, p = _varint_at(data, p, end, layer)
        if p + size > end:
            raise _short(layer, p, size, end)
        token = data[p:p + size]
        p += size
    length, p = _varint_at(data, p, end, layer)
    pn_offset = p - start
    if p + length > end:
        raise _short(layer, p, length, end)
    return LongHeader(start, pn_offset + length, first, version, ptype, dcid, scid, token,
                      pn_offset, length)


def parse_long_header(cur: Cursor) -> LongHeader:
    """Read one long-header packet from ``cur`` and move past it.

    Initial, 0-RTT and Handshake packets end where their Length field says
    (several may be coalesced in one datagram); Retry and Version Negotiation
    packets take the rest of the datagram.
    """
    data = cur.data
    header = _long_header(data if isinstance(data, bytes) else bytes(data), cur.pos, cur.end,
                          cur.layer)
    cur.seek(header.offset + header.size)
    return header


def split_datagram(data: bytes, layer: str = LAYER) -> tuple[LongHeader, ...]:
    """The long-header packets coalesced in one datagram (RFC 9000 §12.2).

    A short-header packet can only come last and is left out. Zero bytes of
    padding after the last packet are tolerated.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    end = len(data)
    pos = 0
    out: list[LongHeader] = []
    while pos < end:
        if not data[pos] & 0x80:
            # zero padding, or a short-header packet: either way the long headers are done
            if not out:
                raise Malformed(layer, pos, "datagram starts with a short header packet")
            break
        header = _long_header(data, pos, end, layer)
        out.append(header)
        pos += header.size
    return tuple(out)


# -- Initial protection ------------------------------------------------------------------

_SHA256 = hashes.SHA256()
_ECB = modes.ECB()
"""Stateless algorithm and mode objects, made once."""


def _label_info(label: bytes, length: int) -> bytes:
    """The HkdfLabel structure with an empty context (RFC 8446 §7.1)."""
    full = b"tls13 " + label
    return length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"


_CLIENT_IN_INFO = _label_info(b"client in", 32)
_KEY_IV_HP_INFO = {prefix: (_label_info(prefix + b"key", 16), _label_info(prefix + b"iv", 12),
                            _label_info(prefix + b"hp", 16))
                   for prefix in (b"quic ", b"quicv2 ")}
"""The HkdfLabels of the packet key, IV and header protection key, by label prefix."""


def initial_keys(version: int, dcid: bytes) -> InitialKeys:
    """Client Initial keys for ``version`` and the original Destination Connection ID."""
    salt = _initial_salt(version)
    if salt is None:
        raise Malformed(LAYER, 1, f"no Initial salt known for version {version:#010x}")
    # HKDF-Extract of the DCID, then HKDF-Expand-Label "client in", in one HKDF call
    client = HKDF(_SHA256, 32, salt, _CLIENT_IN_INFO).derive(dcid)
    key, iv, hp = _KEY_IV_HP_INFO[b"quicv2 " if version == QuicVersion.V2 else b"quic "]
    return InitialKeys(HKDFExpand(_SHA256, 16, key).derive(client),
                       HKDFExpand(_SHA256, 12, iv).derive(client),
                       HKDFExpand(_SHA256, 16, hp).derive(client))


def decrypt_initial(data: bytes, header: LongHeader, keys: InitialKeys,
                    layer: str = LAYER) -> tuple[int, bytes]:
    """Remove header and packet protection from an Initial (RFC 9001 §5.3-5.4).

    ``data`` is the datagram the packet was found in. Returns the packet
    number and the plaintext frames. A wrong key or damaged packet fails the
    AEAD check and raises :class:`Malformed`.
    """
    start = header.offset
    pn_at = start + header.pn_offset
    if header.length < 4 + _SAMPLE:
        raise Malformed(layer, pn_at, f"Initial payload of {header.length} bytes is too short")
    encryptor = Cipher(algorithms.AES(keys.hp), _ECB).encryptor()
    mask = encryptor.update(data[pn_at + 4:pn_at + 4 + _SAMPLE]) + encryptor.finalize()
    first = data[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    packet_number = int.from_bytes(data[pn_at:pn_at + pn_len], "big") ^ \
        int.from_bytes(mask[1:1 + pn_len], "big")
    pn_bytes = packet_number.to_bytes(pn_len, "big")
    ciphertext = data[pn_at + pn_len:pn_at + header.length]
    nonce = (int.from_bytes(keys.iv, "big") ^ packet_number).to_bytes(12, "big")
    try:
        plain = AESGCM(keys.key).decrypt(nonce, ciphertext,
                                         bytes((first,)) + data[start + 1:pn_at] + pn_bytes)
    except InvalidTag:
        raise Malformed(layer, header.offset, "Initial packet does not decrypt") from None
    return packet_number, plain


def parse_initial_frames(plain: bytes, packet_number: int = 0,
                         layer: str = LAYER) -> InitialPayload:
    """Read the frames of a decrypted Initial (RFC 9000 §19.1-19.6, §19.19).

    Only the frames allowed in Initial packets are accepted (PADDING, PING,
    ACK, CRYPTO, CONNECTION_CLOSE), plus the 0x08 handshake frame of Google's
    Q050/T05x; anything else raises :class:`Malformed`.
    """
    if not isinstance(plain, bytes):
        plain = bytes(plain)
    end = len(plain)
    pos = 0
    types: list[int] = []
    crypto: list[tuple[int, bytes]] = []
    while pos < end:
        at = pos
        ftype, pos = _varint_at(plain, pos, end, layer)
        if ftype == FrameType.PADDING:
            # A run of zero bytes is one stretch of padding: jump over it at once.
            if plain.count(0, pos, end) == end - pos:
                pos = end  # the usual case: padding to the end of the packet
            else:
                pos = end - len(plain[pos:end].lstrip(b"\x00"))
        elif ftype == FrameType.PING:
            pass
        elif ftype in (FrameType.ACK, FrameType.ACK_ECN):
            _, pos = _varint_at(plain, pos, end, layer)  # largest acknowledged
            _, pos = _varint_at(plain, pos, end, layer)  # ack delay
            ranges, pos = _varint_at(plain, pos, end, layer)
            _, pos = _varint_at(plain, pos, end, layer)  # first range
            for _ in range(ranges):
                _, pos = _varint_at(plain, pos, end, layer)  # gap
                _, pos = _varint_at(plain, pos, end, layer)  # range length
            if ftype == FrameType.ACK_ECN:
                for _ in range(3):
                    _, pos = _varint_at(plain, pos, end, layer)
        elif ftype in (FrameType.CRYPTO, FrameType.GQUIC_CRYPTO):
            offset, pos = _varint_at(plain, pos, end, layer)
            size, pos = _varint_at(plain, pos, end, layer)
            if pos + size > end:
                raise _short(layer, pos, size, end)
            crypto.append((offset, plain[pos:pos + size]))
            pos += size
        elif ftype in (FrameType.CONNECTION_CLOSE, FrameType.CONNECTION_CLOSE_APP):
            _, pos = _varint_at(plain, pos, end, layer)  # error code
            if ftype == FrameType.CONNECTION_CLOSE:
                _, pos = _varint_at(plain, pos, end, layer)  # offending frame type
            size, pos = _varint_at(plain, pos, end, layer)  # reason phrase
            if pos + size > end:
                raise _short(layer, pos, size, end)
            pos += size
        else:
            raise Malformed(layer, at, f"frame type {ftype:#x} not allowed in an Initial")
        if not types or types[-1] != ftype or ftype != FrameType.PADDING:
            types.append(ftype)
    return InitialPayload(packet_number, tuple(types), tuple(crypto))


def _assemble(chunks: Iterable[tuple[int, bytes]]) -> bytes:
    """The contiguous CRYPTO stream from offset 0, from chunks in any order."""
    pending = sorted(chunks)
    if len(pending) == 1 and pending[0][0] == 0:
        return bytes(pending[0][1])  # the usual case: the whole ClientHello in one frame
    stream = bytearray()
    progress = True
    while progress:
        progress = False
        for offset, data in pending:
            end = offset + len(data)
            if offset <= len(stream) < end:
                stream += data[len(stream) - offset:]
                progress = True
    return bytes(stream)


def _handshake_complete(stream: bytes) -> bool:
    return len(stream) >= 4 and len(stream) >= 4 + int.from_bytes(stream[1:4], "big")


# -- top level --------------------------------------------------------------------------

def _client_hello_stream(datagrams: Iterable[bytes], layer: str
                         ) -> tuple[LongHeader, bytes, int]:
    """The first Initial's header, the reassembled CRYPTO stream holding the whole
    ClientHello, and how many Initials it took (see :func:`inspect_client_initials`)."""
    first: LongHeader | None = None
    keys: InitialKeys | None = None
    chunks: list[tuple[int, bytes]] = []
    packets = 0
    consumed = 0
    for data in datagrams:
        consumed += len(data)
        for header in split_datagram(data, layer):
            if header.packet_type != PacketType.INITIAL:
                continue
            if first is None or keys is None:
                if header.version == QuicVersion.Q050:
                    raise Malformed(layer, header.offset, "Q050 carries a CHLO, not a ClientHello")
                first = header
                keys = initial_keys(header.version, header.dcid)
            elif header.version != first.version:
                continue
            try:
                pn, plain = decrypt_initial(data, header, keys, layer)
            except Malformed:
                if header.dcid == first.dcid:
                    raise
                pn, plain = decrypt_initial(data, header,
                                            initial_keys(header.version, header.dcid), layer)
            chunks.extend(parse_initial_frames(plain, pn, layer).crypto)
            packets += 1
            stream = _assemble(chunks)
            if _handshake_complete(stream):
                return first, stream, packets
    if first is None:
        raise Truncated(layer, consumed, "no Initial packet")
    raise Truncated(layer, consumed, "datagrams end before the ClientHello")


def inspect_client_initials(datagrams: Iterable[bytes],
                            layer: str = LAYER) -> QuicClientInitial:
    """Decrypt the client's Initial packets until the ClientHello is whole.

    ``datagrams`` are the originator's UDP payloads in capture order. Coalesced
    packets are split; 0-RTT and Handshake packets are skipped; CRYPTO frames
    may arrive in any order and across several Initials. Keys derive from the
    Destination Connection ID of the first Initial; an Initial that does not
    verify under them (a client restarting after Retry) is tried with its own.
    Raises :class:`Truncated` if the datagrams end before the ClientHello.
    """
    first, stream, packets = _client_hello_stream(datagrams, layer)
    hello = parse_client_hello(stream, layer)
    return QuicClientInitial(first.version, first.dcid, first.scid, hello, packets)


def client_initial_names(datagrams: Iterable[bytes], layer: str = LAYER) -> QuicNames:
    """Version, SNI and ALPN from a client's Initials: :func:`inspect_client_initials`
    without building the full ClientHello record (the classifier's fast path)."""
    first, stream, _ = _client_hello_stream(datagrams, layer)
    sni, alpn = client_hello_names(stream)
    return QuicNames(first.version, sni, alpn)


def parse_gquic_chlo(data: bytes, layer: str = GLAYER) -> tuple[tuple[str, bytes], ...]:
    """Tag/value pairs of a gQUIC handshake message that must be a CHLO.

    Layout: tag ``CHLO``, u16le entry count, u16 padding, then per entry a
    4-byte tag and a u32le end offset, then the values back to back.
    """
    cur = Cursor(data, layer)
    if cur.take(4) != b"CHLO":
        raise Malformed(layer, 0, "handshake message is not a CHLO")
    count = cur.u16le()
    cur.skip(2)
    entries: list[tuple[bytes, int]] = []
    for _ in range(count):
        entries.append((cur.take(4), cur.u32le()))
    out: list[tuple[str, bytes]] = []
    previous = 0
    for tag, end in entries:
        if end < previous:
            raise Malformed(layer, cur.pos, f"CHLO end offset {end} goes backwards")
        out.append((tag.rstrip(b"\x00").decode("ascii", "backslashreplace"),
                    cur.take(end - previous)))
        previous = end
    return tuple(out)


def _gquic_stream_frame(cur: Cursor, big_endian: bool) -> tuple[int, int, bytes]:
    """Read a gQUIC STREAM frame (type byte 1fdooosss) -> (stream id, offset, data)."""
    ftype = cur.u8()
    id_len = (ftype & 0x03) + 1
    off_code = (ftype >> 2) & 0x07
    off_len = off_code + 1 if off_code else 0
    order: Literal["big", "little"] = "big" if big_endian else "little"
    stream_id = int.from_bytes(cur.take(id_len), order)
    offset = int.from_bytes(cur.take(off_len), order) if off_len else 0
    length = cur.remaining()  # without a length field the frame runs to the end
    if ftype & 0x20:
        length = cur.u16() if big_endian else cur.u16le()
    return stream_id, offset, cur.take(length)


def _gquic_handshake_data(cur: Cursor, big_endian: bool) -> bytes:
    """The CHLO on the crypto stream (id 1) from the frames of one packet: the data at
    offset 0, or data that starts with the CHLO tag at any offset (a client that sent
    its first CHLO in a packet not captured, or sends a new one after it: Wireshark
    reads it there too)."""
    layer = cur.layer
    while not cur.eof():
        at = cur.pos
        ftype = cur.peek_u8()
        if ftype & 0x80:
            stream_id, offset, data = _gquic_stream_frame(cur, big_endian)
            if stream_id == 1 and (offset == 0 or data[:4] == b"CHLO"):
                return data
        elif ftype == 0x00:  # PADDING runs to the end of the packet
            break
        elif ftype == 0x07:  # PING
            cur.skip(1)
        else:
            raise Malformed(layer, at, f"gQUIC frame type {ftype:#x} before the CHLO")
    raise Malformed(layer, cur.pos, "no crypto stream frame at offset 0")


def parse_gquic_packet(data: bytes, layer: str = GLAYER) -> GquicHello:
    """The CHLO in a client's first gQUIC packet.

    Q035-Q043 use the public header (flags, 8-byte connection ID, version,
    1-6 byte packet number); Q046 a long header with both connection ID
    lengths in one byte; both are followed by a 12-byte message hash and
    unencrypted frames. Q050 is decrypted like an Initial (Q050 salt).
    """
    cur = Cursor(data, layer)
    flags = cur.u8()
    if flags & 0x80:
        cur.seek(0)
        version = Cursor(data, layer, 1).u32()
        if version == QuicVersion.Q050:
            return _parse_q050(data, layer)
        flags = cur.u8()
        version = cur.u32()
        if not _is_gquic(version) or version < QuicVersion.Q046:
            raise Malformed(layer, 1, f"version {version:#010x} is not gQUIC Q046")
        lengths = cur.u8()
        dcil, scil = lengths >> 4, lengths & 0x0F
        cid = cur.take(dcil + 3 if dcil else 0)
        cur.skip(scil + 3 if scil else 0)
        cur.skip((flags & 0x03) + 1)  # packet number
    else:
        if not flags & 0x01:
            raise Malformed(layer, 0, "gQUIC client packet without version")
        cid = cur.take(8) if flags & 0x08 else b""
        version = cur.u32()
        if not _is_gquic(version):
            raise Malformed(layer, cur.pos - 4, f"version {version:#010x} is not gQUIC")
        cur.skip({0x00: 1, 0x10: 2, 0x20: 4, 0x30: 6}[flags & 0x30])
    cur.skip(12)  # message authentication hash of the null encryption
    big_endian = version >= QuicVersion.Q039
    chlo = _gquic_handshake_data(cur, big_endian)
    return GquicHello(version, cid, parse_gquic_chlo(chlo, layer))


def _parse_q050(data: bytes, layer: str) -> GquicHello:
    for header in split_datagram(data, layer):
        if header.packet_type != PacketType.INITIAL:
            continue
        keys = initial_keys(header.version, header.dcid)
        pn, plain = decrypt_initial(data, header, keys, layer)
        stream = _assemble(parse_initial_frames(plain, pn, layer).crypto)
        return GquicHello(header.version, header.dcid, parse_gquic_chlo(stream, layer))
    raise Malformed(layer, 0, "no Initial packet")


def inspect_client(datagrams: Iterable[bytes], names_only: bool = False
                   ) -> QuicClientInitial | QuicNames | GquicHello:
    """Dispatch on the first datagram's version: TLS-based QUIC or gQUIC CHLO.
    ``names_only`` gives (version, SNI, ALPN) for TLS-based QUIC
    (:func:`client_initial_names`)."""
    items = list(datagrams)
    if not items:
        raise Truncated(LAYER, 0, "no datagram")
    cur = Cursor(items[0], LAYER)
    flags = cur.u8()
    if flags & 0x80:
        version = cur.u32()
    elif flags & 0x01:
        cur.skip(8 if flags & 0x08 else 0)
        version = cur.u32()
    else:
        raise Malformed(LAYER, 0, "first datagram has no version")
    if _is_gquic(version) and version not in (QuicVersion.T050, QuicVersion.T051):
        return parse_gquic_packet(items[0])
    if names_only:
        return client_initial_names(items)
    return inspect_client_initials(items)

