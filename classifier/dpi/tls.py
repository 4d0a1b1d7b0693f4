"""TLS inspector: ClientHello, ServerHello, alerts and the JA4 fingerprint.

Input is what a flow's first payloads hold: TLS records as sent over TCP (the
ClientHello may span several records and several segments: pass the
concatenation of the first originator payloads), or a bare handshake message as
carried in QUIC CRYPTO frames. The DTLS inspector reuses the hello body parsers
here. Nothing in this module classifies; it only reports what the bytes say.

Errors: every problem is a :class:`probe.errors.ParseError` with layer
``"tls"``: :class:`~probe.errors.Truncated` when more bytes would help,
:class:`~probe.errors.Malformed` when the bytes contradict RFC 8446.

References: RFC 8446 (TLS 1.3) §4.1.2-4.1.3, §4.2, §5.1, §6; RFC 6066 §3 (SNI);
RFC 7301 (ALPN); RFC 8701 (GREASE); JA4 by FoxIO
(https://github.com/FoxIO-LLC/ja4/blob/main/technical_details/JA4.md).
"""

from __future__ import annotations

import hashlib
import struct
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

from probe.cursor import Cursor
from probe.errors import Malformed, Truncated

__all__ = [
    "HRR_RANDOM",
    "AlertDescription",
    "AlertLevel",
    "ClientHello",
    "ContentType",
    "Extension",
    "ExtensionType",
    "HandshakeType",
    "ServerHello",
    "TlsAlert",
    "TlsRecord",
    "Transport",
    "certificate_names",
    "find_alert",
    "is_grease",
    "iter_records",
    "ja4",
    "ja4_raw",
    "parse_client_hello",
    "parse_client_hello_body",
    "parse_handshake_header",
    "parse_records",
    "parse_server_hello",
    "parse_server_hello_body",
    "parse_tls_client_hello",
    "parse_tls_server_hello",
    "reassemble_handshake",
    "server_certificate",
]

LAYER = "tls"

_MAX_RECORD = 16384 + 2048
"""Largest TLSCiphertext.length allowed (RFC 8446 §5.2)."""

HRR_RANDOM = bytes.fromhex(
    "cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
"""ServerHello.random of a HelloRetryRequest (RFC 8446 §4.1.3)."""


class ContentType(IntEnum):
    """TLS record content types (RFC 8446 §5.1, RFC 6520)."""

    CHANGE_CIPHER_SPEC = 20
    ALERT = 21
    HANDSHAKE = 22
    APPLICATION_DATA = 23
    HEARTBEAT = 24


class HandshakeType(IntEnum):
    """Handshake message types (RFC 8446 §4, RFC 6347 §4.3.2)."""

    HELLO_REQUEST = 0
    CLIENT_HELLO = 1
    SERVER_HELLO = 2
    HELLO_VERIFY_REQUEST = 3
    NEW_SESSION_TICKET = 4
    END_OF_EARLY_DATA = 5
    ENCRYPTED_EXTENSIONS = 8
    CERTIFICATE = 11
    SERVER_KEY_EXCHANGE = 12
    CERTIFICATE_REQUEST = 13
    SERVER_HELLO_DONE = 14
    CERTIFICATE_VERIFY = 15
    CLIENT_KEY_EXCHANGE = 16
    FINISHED = 20
    KEY_UPDATE = 24
    MESSAGE_HASH = 254


class ExtensionType(IntEnum):
    """Extension code points the inspectors read (IANA TLS ExtensionType registry)."""

    SERVER_NAME = 0
    STATUS_REQUEST = 5
    SUPPORTED_GROUPS = 10
    EC_POINT_FORMATS = 11
    SIGNATURE_ALGORITHMS = 13
    USE_SRTP = 14
    ALPN = 16
    PADDING = 21
    EXTENDED_MASTER_SECRET = 23
    SESSION_TICKET = 35
    PRE_SHARED_KEY = 41
    EARLY_DATA = 42
    SUPPORTED_VERSIONS = 43
    COOKIE = 44
    PSK_KEY_EXCHANGE_MODES = 45
    KEY_SHARE = 51
    QUIC_TRANSPORT_PARAMETERS = 57
    ENCRYPTED_CLIENT_HELLO = 0xFE0D
    RENEGOTIATION_INFO = 0xFF01
    QUIC_TRANSPORT_PARAMETERS_DRAFT = 0xFFA5


class AlertLevel(IntEnum):
    """Alert levels (RFC 8446 §6)."""

    WARNING = 1
    FATAL = 2


class AlertDescription(IntEnum):
    """Alert descriptions (RFC 8446 §6, IANA TLS Alerts registry)."""

    CLOSE_NOTIFY = 0
    UNEXPECTED_MESSAGE = 10
    BAD_RECORD_MAC = 20
    DECRYPTION_FAILED = 21
    RECORD_OVERFLOW = 22
    HANDSHAKE_FAILURE = 40
    BAD_CERTIFICATE = 42
    UNSUPPORTED_CERTIFICATE = 43
    CERTIFICATE_REVOKED = 44
    CERTIFICATE_EXPIRED = 45
    CERTIFICATE_UNKNOWN = 46
    ILLEGAL_PARAMETER = 47
    UNKNOWN_CA = 48
    ACCESS_DENIED = 49
    DECODE_ERROR = 50
    DECRYPT_ERROR = 51
    PROTOCOL_VERSION = 70
    INSUFFICIENT_SECURITY = 71
    INTERNAL_ERROR = 80
    INAPPROPRIATE_FALLBACK = 86
    USER_CANCELED = 90
    NO_RENEGOTIATION = 100
    MISSING_EXTENSION = 109
    UNSUPPORTED_EXTENSION = 110
    UNRECOGNIZED_NAME = 112
    BAD_CERTIFICATE_STATUS_RESPONSE = 113
    UNKNOWN_PSK_IDENTITY = 115
    CERTIFICATE_REQUIRED = 116
    NO_APPLICATION_PROTOCOL = 120


class Transport(IntEnum):
    """What carried the hello, as JA4's first character encodes it."""

    TCP = ord("t")
    QUIC = ord("q")
    DTLS = ord("d")


def is_grease(value: int) -> bool:
    """True for the 16 reserved GREASE values 0x0a0a, 0x1a1a ... 0xfafa (RFC 8701 §2)."""
    return (value & 0x0F0F) == 0x0A0A and (value >> 8) == (value & 0xFF)


@dataclass(frozen=True, slots=True)
class TlsRecord:
    """One TLS (TLSPlaintext/TLSCiphertext) record header and body."""

    content_type: int
    """``ContentType`` code (kept as int: unknown types are reported, not rejected)."""
    version: int
    """legacy_record_version, e.g. 0x0301 or 0x0303."""
    offset: int
    """Offset of the record header in the input."""
    fragment: bytes
    """The record body (may be shorter than the header says when ``partial``)."""
    partial: bool
    """True if the input ended inside this record's body."""


@dataclass(frozen=True, slots=True)
class TlsAlert:
    """A plaintext alert record."""

    level: int
    """``AlertLevel`` code (1 warning, 2 fatal)."""
    description: int
    """``AlertDescription`` code."""
    offset: int
    """Offset of the alert record header in the input."""


@dataclass(frozen=True, slots=True)
class Extension:
    """One hello extension, in wire order."""

    type: int
    """Extension code point (``ExtensionType`` when known; GREASE values kept)."""
    data: bytes
    """extension_data as sent."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of a ClientHello that identify a client and its destination."""

    legacy_version: int
    """ClientHello.legacy_version (0x0303 for TLS 1.2/1.3, 0xfefd for DTLS 1.2...)."""
    random: bytes
    """The 32-byte client random."""
    session_id: bytes
    """legacy_session_id (0-32 bytes)."""
    cookie: bytes | None
    """DTLS cookie (RFC 6347 §4.2.1); None for TLS and QUIC."""
    cipher_suites: tuple[int, ...]
    """Offered cipher suites in wire order, GREASE included."""
    compression_methods: bytes
    """legacy_compression_methods."""
    extensions: tuple[Extension, ...]
    """All extensions in wire order, GREASE included."""
    sni: str | None
    """First host_name of the server_name extension, or None without one."""
    alpn: tuple[str, ...]
    """ALPN protocol names in order, each byte as one latin-1 character."""
    supported_versions: tuple[int, ...]
    """Versions listed in supported_versions, in order, GREASE included."""
    signature_algorithms: tuple[int, ...]
    """SignatureScheme values in order, GREASE included."""
    supported_groups: tuple[int, ...]
    """NamedGroup values in order, GREASE included."""
    srtp_profiles: tuple[int, ...]
    """SRTP protection profiles from use_srtp (RFC 5764 §4.1.1), DTLS-SRTP only."""

    @property
    def extension_types(self) -> tuple[int, ...]:
        """Extension code points in wire order."""
        return tuple(e.type for e in self.extensions)


@dataclass(frozen=True, slots=True)
class ServerHello:
    """The fields of a ServerHello a later stage needs."""

    legacy_version: int
    """ServerHello.legacy_version."""
    random: bytes
    """The 32-byte server random."""
    session_id: bytes
    """legacy_session_id_echo."""
    cipher_suite: int
    """The selected cipher suite."""
    compression_method: int
    """legacy_compression_method (0 in practice)."""
    extensions: tuple[Extension, ...]
    """Extensions in wire order."""
    selected_version: int
    """supported_versions.selected_version when present, else legacy_version."""
    alpn: str | None
    """The negotiated ALPN protocol, if the server sent one in the clear (TLS <= 1.2)."""
    is_hello_retry: bool
    """True if this is a HelloRetryRequest (special random, RFC 8446 §4.1.3)."""


# -- records ---------------------------------------------------------------

def iter_records(data: bytes, layer: str = LAYER) -> Iterator[TlsRecord]:
    """Yield TLS records from ``data`` one by one (RFC 8446 §5.1).

    The last record may be cut short by the end of the input; it is yielded
    with ``partial=True``. An input ending inside a record header raises
    :class:`Truncated`; an unknown content type, a major version other than 3
    or an oversized length raises :class:`Malformed`. Being lazy, it lets a
    caller stop once it has what it wants and ignore whatever follows.
    """
    cur = Cursor(data, layer)
    while not cur.eof():
        start = cur.pos
        ctype = cur.u8()
        version = cur.u16()
        length = cur.u16()
        _check_record_header(layer, start, ctype, version, length)
        partial = cur.remaining() < length
        body = cur.take(min(length, cur.remaining()))
        yield TlsRecord(ctype, version, start, body, partial)


def _check_record_header(layer: str, start: int, ctype: int, version: int, length: int) -> None:
    """Reject a record header (RFC 8446 §5.1) that no TLS stack sends."""
    if not 20 <= ctype <= 24:
        raise Malformed(layer, start, f"content type {ctype} is not a TLS record")
    if version >> 8 != 0x03:
        raise Malformed(layer, start + 1, f"record version {version:#06x}")
    if length > _MAX_RECORD:
        raise Malformed(layer, start + 3, f"record length {length} too large")


def parse_records(data: bytes, layer: str = LAYER) -> tuple[TlsRecord, ...]:
    """All TLS records in ``data`` (see :func:`iter_records`)."""
    return tuple(iter_records(data, layer))


def _leading_handshake(data: bytes, layer: str) -> bytes:
    """The first handshake message carried by the leading handshake records.

    Reads records only until the message (type, u24 length, body) is whole, so
    whatever follows it in the stream is never looked at. Raises
    :class:`Truncated` at ``len(data)`` if the input ends first. The records are
    read as :func:`iter_records` reads them, with the same errors, but by direct
    indexing: every TLS flow's first bytes go through here.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    n = len(data)
    pos = 0
    buf = b""
    while pos < n:
        start = pos
        ctype = data[pos]
        if pos + 5 > n:
            at = pos + 1 if pos + 3 > n else pos + 3
            raise Truncated(layer, at, f"need 2 bytes, {n - at} left")
        version = (data[pos + 1] << 8) | data[pos + 2]
        length = (data[pos + 3] << 8) | data[pos + 4]
        _check_record_header(layer, start, ctype, version, length)
        pos = min(n, pos + 5 + length)
        if ctype != ContentType.HANDSHAKE:
            if not buf:
                raise Malformed(layer, start,
                                f"first record is content type {ctype}, not handshake")
            break
        buf += data[start + 5:pos]
        if len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[1:4], "big"):
            return buf
    if not buf and not data:
        raise Truncated(layer, 0, "no TLS record")
    raise Truncated(layer, len(data), "input ends inside the first handshake message")


def reassemble_handshake(records: Iterable[TlsRecord]) -> bytes:
    """Concatenate the bodies of the leading handshake records.

    Stops at the first record of another content type (a ChangeCipherSpec or
    encrypted data ends the plaintext handshake).
    """
    parts: list[bytes] = []
    for rec in records:
        if rec.content_type != ContentType.HANDSHAKE:
            break
        parts.append(rec.fragment)
    return b"".join(parts)


def find_alert(data: bytes, layer: str = LAYER) -> TlsAlert | None:
    """The first plaintext alert in a stream of records, or None.

    A plaintext alert is an alert record with a 2-byte body; an encrypted one
    (after ChangeCipherSpec, or any TLS 1.3 alert after ServerHello) is longer
    or hides inside application_data and is not reported.
    """
    for rec in iter_records(data, layer):
        if rec.content_type == ContentType.ALERT and len(rec.fragment) == 2 and not rec.partial:
            return TlsAlert(rec.fragment[0], rec.fragment[1], rec.offset)
    return None


# -- handshake messages ------------------------------------------------------

def parse_handshake_header(cur: Cursor) -> tuple[int, int]:
    """Read msg_type(1) and length(3) of a handshake message (RFC 8446 §4)."""
    return cur.u8(), cur.u24()


def _check_version(layer: str, pos: int, version: int) -> None:
    if version >> 8 not in (0x02, 0x03, 0xFE):
        raise Malformed(layer, pos, f"hello version {version:#06x}")


def _u16_list(cur: Cursor, length_size: int, what: str) -> tuple[int, ...]:
    n = cur.u8() if length_size == 1 else cur.u16()
    if n % 2:
        raise Malformed(cur.layer, cur.pos, f"odd {what} length {n}")
    raw = cur.take(n)
    return struct.unpack(f">{n // 2}H", raw)


def _decode_name(raw: bytes) -> str:
    return raw.decode("ascii", "backslashreplace")


def _read_extensions(cur: Cursor) -> tuple[Extension, ...]:
    if cur.eof():  # extensions are optional before TLS 1.3 (RFC 5246 §7.4.1.2)
        return ()
    total = cur.u16()
    out: list[Extension] = []
    with cur.block(total):
        while not cur.eof():
            etype = cur.u16()
            out.append(Extension(etype, cur.take(cur.u16())))
    return tuple(out)


def _parse_sni(data: bytes, layer: str) -> str | None:
    cur = Cursor(data, layer)
    with cur.block(cur.u16()):
        while not cur.eof():
            name_type = cur.u8()
            name = cur.take(cur.u16())
            if name_type == 0:  # host_name, RFC 6066 §3
                return _decode_name(name)
    if not cur.eof():
        raise Malformed(layer, cur.pos, "bytes after server_name list")
    return None


def _parse_alpn(data: bytes, layer: str) -> tuple[str, ...]:
    cur = Cursor(data, layer)
    names: list[str] = []
    with cur.block(cur.u16()):
        while not cur.eof():
            names.append(cur.take(cur.u8()).decode("latin-1"))
    if not cur.eof():
        raise Malformed(layer, cur.pos, "bytes after ALPN list")
    return tuple(names)


def _whole(data: bytes, layer: str, length_size: int, what: str) -> tuple[int, ...]:
    cur = Cursor(data, layer)
    values = _u16_list(cur, length_size, what)
    if not cur.eof():
        raise Malformed(layer, cur.pos, f"bytes after {what}")
    return values


def _parse_srtp(data: bytes, layer: str) -> tuple[int, ...]:
    cur = Cursor(data, layer)
    profiles = _u16_list(cur, 2, "use_srtp profiles")
    cur.take(cur.u8())  # srtp_mki
    if not cur.eof():
        raise Malformed(layer, cur.pos, "bytes after use_srtp")
    return profiles


def parse_client_hello_body(cur: Cursor, dtls: bool = False) -> ClientHello:
    """Read a ClientHello body (after the handshake header) up to ``cur.end``.

    ``dtls`` adds the cookie field of RFC 6347 §4.2.1 / RFC 9147 §5.3.
    """
    layer = cur.layer
    vpos = cur.pos
    version = cur.u16()
    _check_version(layer, vpos, version)
    random = cur.take(32)
    session_id = cur.take(cur.u8())
    if len(session_id) > 32:
        raise Malformed(layer, cur.pos, f"session id of {len(session_id)} bytes")
    cookie = cur.take(cur.u8()) if dtls else None
    ciphers = _u16_list(cur, 2, "cipher suites")
    compression = cur.take(cur.u8())
    extensions = _read_extensions(cur)
    if not cur.eof():
        raise Malformed(layer, cur.pos, "bytes after ClientHello extensions")
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    versions: tuple[int, ...] = ()
    sigalgs: tuple[int, ...] = ()
    groups: tuple[int, ...] = ()
    srtp: tuple[int, ...] = ()
    for ext in extensions:
        if ext.type == ExtensionType.SERVER_NAME and ext.data:
            sni = _parse_sni(ext.data, layer)
        elif ext.type == ExtensionType.ALPN:
            alpn = _parse_alpn(ext.data, layer)
        elif ext.type == ExtensionType.SUPPORTED_VERSIONS:
            versions = _whole(ext.data, layer, 1, "supported_versions")
        elif ext.type == ExtensionType.SIGNATURE_ALGORITHMS:
            sigalgs = _whole(ext.data, layer, 2, "signature_algorithms")
        elif ext.type == ExtensionType.SUPPORTED_GROUPS:
            groups = _whole(ext.data, layer, 2, "supported_groups")
        elif ext.type == ExtensionType.USE_SRTP:
            srtp = _parse_srtp(ext.data, layer)
    return ClientHello(version, random, session_id, cookie, ciphers, compression, extensions,
                       sni, alpn, versions, sigalgs, groups, srtp)


def parse_client_hello(data: bytes, layer: str = LAYER) -> ClientHello:
    """Parse a bare handshake ClientHello (type 1, u24 length, body), e.g. from QUIC CRYPTO.

    Bytes after the message are ignored (a QUIC client may send nothing else,
    but a TLS stream may carry more handshake messages).
    """
    cur = Cursor(data, layer)
    msg_type, length = parse_handshake_header(cur)
    if msg_type != HandshakeType.CLIENT_HELLO:
        raise Malformed(layer, 0, f"handshake type {msg_type} is not ClientHello")
    with cur.block(length):
        return parse_client_hello_body(cur)


def parse_tls_client_hello(data: bytes, layer: str = LAYER) -> ClientHello:
    """Parse a ClientHello carried in TLS records (possibly several records or segments).

    Raises :class:`Truncated` at ``len(data)`` if the records end before the
    ClientHello does; bytes after the ClientHello are not examined.
    """
    return parse_client_hello(_leading_handshake(data, layer), layer)


_SERVER_NAME = int(ExtensionType.SERVER_NAME)
_NAME_EXTENSIONS = frozenset({_SERVER_NAME, int(ExtensionType.ALPN)})


def client_hello_names(hello: bytes) -> tuple[str | None, tuple[str, ...]]:
    """SNI and ALPN of a bare handshake ClientHello, read without building the full record.

    The classifier's fast path: it needs only the names, on every TLS and QUIC flow.
    Raises :class:`ParseError` like :func:`parse_client_hello` for bytes that are not a
    ClientHello; the full parser (and JA4) is used when more is asked for.
    """
    n = len(hello)
    if n < 4 or hello[0] != HandshakeType.CLIENT_HELLO:
        raise Malformed(LAYER, 0, "not a ClientHello")
    end = min(n, 4 + int.from_bytes(hello[1:4], "big"))
    p = 4 + 2 + 32  # version, random
    if p >= end:
        raise Truncated(LAYER, p, "ClientHello ends before its session id")
    p += 1 + hello[p]  # session id
    if p + 2 > end:
        raise Truncated(LAYER, p, "ClientHello ends before its cipher suites")
    p += 2 + int.from_bytes(hello[p:p + 2], "big")  # cipher suites
    if p + 1 > end:
        raise Truncated(LAYER, p, "ClientHello ends before its compression methods")
    p += 1 + hello[p]  # compression methods
    if p + 2 > end:
        return None, ()  # no extensions
    ext_end = min(end, p + 2 + int.from_bytes(hello[p:p + 2], "big"))
    p += 2
    sni: str | None = None
    alpn: list[str] = []
    while p + 4 <= ext_end:
        etype = (hello[p] << 8) | hello[p + 1]
        at = p + 4
        p = at + ((hello[p + 2] << 8) | hello[p + 3])
        if p > n:
            raise Truncated(LAYER, at, "extension cut short")
        if etype not in _NAME_EXTENSIONS:
            continue
        body = hello[at:p]
        # as in parse_client_hello: the last extension of a type is the one that counts
        if etype == _SERVER_NAME:
            if body:
                sni = _first_host_name(body)
        else:
            alpn = []
            q = 2
            while q < len(body):
                k = body[q]
                alpn.append(body[q + 1:q + 1 + k].decode("latin-1"))
                q += 1 + k
    return sni, tuple(alpn)


def _first_host_name(body: bytes) -> str | None:
    """The first host_name entry of a server_name list (what :func:`_parse_sni` returns)."""
    q = 2
    while q + 3 <= len(body):
        k = int.from_bytes(body[q + 1:q + 3], "big")
        if body[q] == 0:
            return _decode_name(body[q + 3:q + 3 + k])
        q += 3 + k
    return None


def tls_client_hello_names(data: bytes) -> tuple[str | None, tuple[str, ...]]:
    """:func:`client_hello_names` for a ClientHello carried in TLS records."""
    return client_hello_names(_leading_handshake(data, LAYER))


def parse_server_hello_body(cur: Cursor) -> ServerHello:
    """Read a ServerHello body (after the handshake header) up to ``cur.end``."""
    layer = cur.layer
    vpos = cur.pos
    version = cur.u16()
    _check_version(layer, vpos, version)
    random = cur.take(32)
    session_id = cur.take(cur.u8())
    cipher = cur.u16()
    compression = cur.u8()
    extensions = _read_extensions(cur)
    if not cur.eof():
        raise Malformed(layer, cur.pos, "bytes after ServerHello extensions")
    selected = version
    alpn: str | None = None
    for ext in extensions:
        if ext.type == ExtensionType.SUPPORTED_VERSIONS:
            vcur = Cursor(ext.data, layer)
            selected = vcur.u16()
            if not vcur.eof():
                raise Malformed(layer, vcur.pos, "bytes after selected_version")
        elif ext.type == ExtensionType.ALPN:
            names = _parse_alpn(ext.data, layer)
            alpn = names[0] if names else None
    return ServerHello(version, random, session_id, cipher, compression, extensions, selected,
                       alpn, random == HRR_RANDOM)


def parse_server_hello(data: bytes, layer: str = LAYER) -> ServerHello:
    """Parse a bare handshake ServerHello (type 2, u24 length, body)."""
    cur = Cursor(data, layer)
    msg_type, length = parse_handshake_header(cur)
    if msg_type != HandshakeType.SERVER_HELLO:
        raise Malformed(layer, 0, f"handshake type {msg_type} is not ServerHello")
    with cur.block(length):
        return parse_server_hello_body(cur)


def parse_tls_server_hello(data: bytes, layer: str = LAYER) -> ServerHello:
    """Parse the ServerHello at the start of the responder's TLS records.

    A responder that answers with an alert instead raises :class:`Malformed`
    (first record is not handshake); use :func:`find_alert` to read the alert.
    """
    return parse_server_hello(_leading_handshake(data, layer), layer)


# -- the server's certificate (TLS 1.2 and earlier) -------------------------------

def server_certificate(data: bytes, layer: str = LAYER) -> bytes | None:
    """The DER bytes of the server's own certificate, read from the responder's TLS records.

    Before TLS 1.3 the server's Certificate message follows its ServerHello in the clear
    (RFC 5246 §7.3, §7.4.2); its list starts with the server's own certificate, the
    signers' after it. Under TLS 1.3 and its drafts it is encrypted (RFC 8446 §4.4.2):
    None when the ServerHello selects 1.3, when the plaintext handshake ends without a
    Certificate (a resumed session) or when the server sends none. The records are read
    only until that certificate is whole: what follows it is never looked at. Raises
    :class:`Truncated` when the input ends first and :class:`Malformed` when the records
    or messages contradict the RFCs.
    """
    buf = b""
    pos = 0  # where the next handshake message starts in ``buf``
    for rec in iter_records(data, layer):
        if rec.content_type != ContentType.HANDSHAKE:
            return None  # the plaintext handshake ended with no Certificate
        buf += rec.fragment
        while len(buf) - pos >= 4:
            msg_type, length = buf[pos], int.from_bytes(buf[pos + 1:pos + 4], "big")
            body = pos + 4
            if msg_type == HandshakeType.CERTIFICATE:
                if length < 3:
                    raise Malformed(layer, pos, f"{length}-byte Certificate message")
                if len(buf) - body < 3:
                    break
                total = int.from_bytes(buf[body:body + 3], "big")
                if total + 3 != length or 0 < total < 3:
                    raise Malformed(layer, pos, f"certificate list of {total} bytes in a "
                                    f"{length}-byte Certificate message")
                if total == 0:
                    return None  # an empty list: the server sent no certificate
                if len(buf) - body < 6:
                    break
                first = int.from_bytes(buf[body + 3:body + 6], "big")
                if not 0 < first <= total - 3:
                    raise Malformed(layer, pos, f"first certificate of {first} bytes in a "
                                    f"{total}-byte list")
                if len(buf) - body - 6 < first:
                    break
                return buf[body + 6:body + 6 + first]
            if len(buf) - body < length:
                break
            if msg_type == HandshakeType.SERVER_HELLO:
                if buf[body] == 0x7F:
                    return None  # a TLS 1.3 draft's version (0x7fNN): encrypted from here
                cur = Cursor(buf, layer, body, body + length)
                if parse_server_hello_body(cur).selected_version >= 0x0304:
                    return None
            elif msg_type != HandshakeType.HELLO_REQUEST:
                return None  # anything else before the Certificate: the server sends none
            pos = body + length
    if not data:
        raise Truncated(layer, 0, "no TLS record")
    raise Truncated(layer, len(data), "input ends before the server's certificate is whole")


def certificate_names(der: bytes) -> tuple[str, ...]:
    """The DNS names a certificate is for, lower-cased: its subject's common name first,
    then its subjectAltName dNSName entries in order (RFC 5280 §4.1.2.6, §4.2.1.6), each
    once. Raises :class:`Malformed` when ``der`` is not a certificate."""
    from cryptography import x509
    from cryptography.utils import CryptographyDeprecationWarning
    from cryptography.x509.oid import NameOID

    # Certificates RFC 5280 forbids but servers send (a serial number that is not
    # positive...) are still read: the library, which reads parts of a certificate only
    # when asked, warns then of a future refusal, and nobody here can act on it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)
        try:
            cert = x509.load_der_x509_certificate(der)
            cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                alt = san.value.get_values_for_type(x509.DNSName)
            except x509.ExtensionNotFound:
                alt = []
        except (ValueError, x509.InvalidVersion, x509.DuplicateExtension,
                x509.UnsupportedGeneralNameType) as exc:
            raise Malformed(LAYER, 0, f"certificate: {exc}") from None
    names = (n.strip().lower() for n in (*cns, *alt) if isinstance(n, str))
    return tuple(dict.fromkeys(n for n in names if n))


# -- JA4 ------------------------------------------------------------------------

_JA4_VERSIONS = {
    0x0304: "13", 0x0303: "12", 0x0302: "11", 0x0301: "10", 0x0300: "s3", 0x0002: "s2",
    0xFEFF: "d1", 0xFEFD: "d2", 0xFEFC: "d3",
}
"""JA4 two-character version codes (JA4.md, "TLS and DTLS Version")."""


def _ja4_version(ch: ClientHello) -> str:
    """Highest non-GREASE supported_versions value, else legacy_version.

    JA4.md takes the numerically highest value, so a client that also lists
    TLS 1.3 draft versions (0x7fXX) gets "00", and a DTLS client offering
    1.2 and 1.3 gets "d2"; FoxIO's tools and nDPI do the same.
    """
    versions = [v for v in ch.supported_versions if not is_grease(v)]
    best = max(versions) if versions else ch.legacy_version
    return _JA4_VERSIONS.get(best, "00")


def _ja4_alpn(ch: ClientHello) -> str:
    if not ch.alpn or not ch.alpn[0]:
        return "00"
    raw = ch.alpn[0].encode("latin-1", "replace")
    first, last = chr(raw[0]), chr(raw[-1])
    if first.isascii() and first.isalnum() and last.isascii() and last.isalnum():
        return first + last
    hexed = raw.hex()  # JA4.md: non-alphanumeric ends -> first and last hex digits
    return hexed[0] + hexed[-1]


def _ja4_parts(ch: ClientHello, transport: Transport) -> tuple[str, list[str], list[str],
                                                                list[str]]:
    ciphers = [f"{c:04x}" for c in ch.cipher_suites if not is_grease(c)]
    exts = [e.type for e in ch.extensions if not is_grease(e.type)]
    sigs = [f"{s:04x}" for s in ch.signature_algorithms if not is_grease(s)]
    a = "".join((
        chr(transport),
        _ja4_version(ch),
        "d" if ExtensionType.SERVER_NAME in exts else "i",
        f"{min(len(ciphers), 99):02d}",
        f"{min(len(exts), 99):02d}",
        _ja4_alpn(ch),
    ))
    hashed_exts = sorted(f"{e:04x}" for e in exts
                         if e not in (ExtensionType.SERVER_NAME, ExtensionType.ALPN))
    return a, sorted(ciphers), hashed_exts, sigs


def ja4_raw(ch: ClientHello, transport: Transport = Transport.TCP) -> str:
    """JA4_r: the JA4 inputs before hashing (sorted ciphers, sorted extensions, sigalgs)."""
    a, ciphers, exts, sigs = _ja4_parts(ch, transport)
    out = f"{a}_{','.join(ciphers)}_{','.join(exts)}"
    return out + (f"_{','.join(sigs)}" if sigs else "")


def _trunc_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def ja4(ch: ClientHello, transport: Transport = Transport.TCP) -> str:
    """The JA4 fingerprint of a ClientHello, GREASE ignored.

    ``a_b_c``: a = transport, version, SNI d/i, cipher and extension counts,
    first and last character of the first ALPN; b = truncated SHA-256 of the
    sorted cipher list; c = truncated SHA-256 of the sorted extension list
    (without SNI and ALPN), then ``_`` and the signature algorithms in order.
    An empty cipher or extension list gives twelve zeros.
    """
    a, ciphers, exts, sigs = _ja4_parts(ch, transport)
    b = _trunc_sha256(",".join(ciphers)) if ciphers else "000000000000"
    c_text = ",".join(exts) + (f"_{','.join(sigs)}" if sigs else "")
    c = _trunc_sha256(c_text) if exts else "000000000000"
    return f"{a}_{b}_{c}"
