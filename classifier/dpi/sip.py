"""SIP messages (RFC 3261) and their SDP bodies (RFC 8866, formerly RFC 4566).

A payload may hold several SIP messages (TCP, or a UDP datagram carrying more
than one): each is a start line, header fields up to an empty line, then a
body of ``Content-Length`` bytes (RFC 3261 §18.3; on UDP a missing
Content-Length means "the rest of the datagram"). Compact header names
(RFC 3261 §7.3.3, e.g. ``i:`` for Call-ID) are expanded. Headers are kept in
order, and the ones a later stage needs to follow a call are decoded.

SDP bodies are parsed into session and media sections; :func:`media_endpoints`
lists where media is expected to flow, for matching against RTP flows.

Errors (all from :mod:`probe.errors`)::

    ParseError
    ├── Truncated   the payload ends inside the headers or before Content-Length bytes
    └── Malformed   no SIP start line, a header line without a colon, a bad SDP line
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from probe.cursor import Cursor
from probe.errors import Malformed, Truncated
from probe.plugins import Prefix

__all__ = [
    "COMPACT_HEADERS",
    "START_LINES",
    "Direction",
    "MediaEndpoint",
    "NameAddr",
    "RtpMap",
    "Sdp",
    "SdpConnection",
    "SdpMedia",
    "SdpOrigin",
    "SipMessage",
    "media_endpoints",
    "parse_sdp",
    "parse_sip",
    "sip_start_line",
]

LAYER = "sip"
SDP_LAYER = "sdp"
_VERSION = "SIP/2.0"

START_LINES = (b"SIP/2.0 ", b"INVITE ", b"ACK ", b"BYE ", b"CANCEL ", b"REGISTER ",
               b"OPTIONS sip", b"PRACK ", b"SUBSCRIBE ", b"NOTIFY ", b"PUBLISH ", b"INFO ",
               b"REFER ", b"MESSAGE ", b"UPDATE ")
"""How SIP messages start: the status line, and the request line of each RFC 3261 method
and extension (``OPTIONS`` with its URI scheme, since HTTP has an OPTIONS method too)."""

KEEP_WHOLE = tuple(dict.fromkeys(Prefix.of("sip", start[:4]) for start in START_LINES))
"""For the probe (:mod:`probe.plugins`): SIP messages are kept whole whatever their rank
in a flow, since a dialog's final answer, late in the flow, says whether the call failed
and its SDP which media flows belong to it. Four bytes tell them apart from other UDP."""

COMPACT_HEADERS: Mapping[str, str] = MappingProxyType({
    # RFC 3261 §7.3.3 and §20, plus later registrations in the IANA SIP header registry
    "a": "accept-contact", "b": "referred-by", "c": "content-type", "d": "request-disposition",
    "e": "content-encoding", "f": "from", "i": "call-id", "j": "reject-contact",
    "k": "supported", "l": "content-length", "m": "contact", "n": "identity-info",
    "o": "event", "r": "refer-to", "s": "subject", "t": "to", "u": "allow-events",
    "v": "via", "x": "session-expires", "y": "identity",
})
"""Compact header name -> full name (lower case)."""


# -- SDP ------------------------------------------------------------------------------------


class Direction(StrEnum):
    """Media direction attribute (RFC 8866 §6.7)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"


@dataclass(frozen=True, slots=True)
class SdpConnection:
    """A c= line (RFC 8866 §5.7)."""

    net_type: str
    """Network type, "IN"."""
    addr_type: str
    """"IP4" or "IP6"."""
    address: str
    """Connection address, without any /ttl or /count suffix."""


@dataclass(frozen=True, slots=True)
class SdpOrigin:
    """The o= line (RFC 8866 §5.2)."""

    username: str
    """Originator's login or "-"."""
    session_id: str
    """Numeric session id."""
    session_version: str
    """Version number, bumped on every change."""
    address: str
    """Originating host's address."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    """An a=rtpmap attribute (RFC 8866 §6.6)."""

    payload_type: int
    """Dynamic or static RTP payload type."""
    encoding: str
    """Encoding name, e.g. "opus", "PCMU", "H264"."""
    clock_rate: int
    """RTP clock rate in Hz."""
    channels: int | None
    """Audio channels when given."""


@dataclass(frozen=True, slots=True)
class SdpMedia:
    """One m= section with its own lines."""

    media: str
    """Media type: audio, video, application, image, text..."""
    port: int
    """Transport port (0 = stream rejected/disabled)."""
    port_count: int
    """Number of ports from the "/n" suffix (1 if absent)."""
    proto: str
    """Transport protocol, e.g. "RTP/AVP", "UDP/TLS/RTP/SAVPF"."""
    formats: tuple[str, ...]
    """Format list (RTP payload type numbers for RTP profiles)."""
    connection: SdpConnection | None
    """Media-level c= line, if any."""
    rtpmaps: tuple[RtpMap, ...]
    """a=rtpmap lines."""
    direction: Direction | None
    """Media-level direction attribute, if any."""
    rtcp_port: int | None
    """a=rtcp port (RFC 3605)."""
    rtcp_address: str | None
    """a=rtcp address when given."""
    attributes: tuple[tuple[str, str | None], ...]
    """Every a= line as (name, value or None for flags)."""


@dataclass(frozen=True, slots=True)
class Sdp:
    """A session description."""

    version: int
    """v= (always 0)."""
    origin: SdpOrigin | None
    """o= line."""
    session_name: str | None
    """s= line."""
    connection: SdpConnection | None
    """Session-level c= line."""
    direction: Direction | None
    """Session-level direction attribute."""
    attributes: tuple[tuple[str, str | None], ...]
    """Session-level a= lines."""
    media: tuple[SdpMedia, ...]
    """m= sections in order."""


@dataclass(frozen=True, slots=True)
class MediaEndpoint:
    """Where an SDP says media will arrive: to be matched with RTP flows."""

    address: str
    """Connection address (media-level c= wins over session-level)."""
    port: int
    """RTP port."""
    media: str
    """audio, video..."""
    direction: Direction
    """Effective direction: media-level, else session-level, else sendrecv (RFC 8866 §6.7)."""
    proto: str
    """Transport protocol from the m= line."""
    rtcp_port: int | None
    """RTCP port: a=rtcp when present, else port + 1 for RTP profiles (RFC 3550 §11)."""


def _conn(value: str, lineno: int) -> SdpConnection:
    parts = value.split()
    if len(parts) != 3:
        raise Malformed(SDP_LAYER, lineno, f"c= needs 3 fields: {value!r}")
    return SdpConnection(parts[0], parts[1], parts[2].split("/")[0])


def _int(text: str, lineno: int, what: str) -> int:
    if not text.isdigit():
        raise Malformed(SDP_LAYER, lineno, f"{what} not a number: {text!r}")
    return int(text)


class _MediaBuilder:
    __slots__ = ("attrs", "conn", "direction", "formats", "media", "port", "port_count",
                 "proto", "rtcp_addr", "rtcp_port", "rtpmaps")

    def __init__(self, media: str, port: int, port_count: int, proto: str,
                 formats: tuple[str, ...]) -> None:
        self.media, self.port, self.port_count = media, port, port_count
        self.proto, self.formats = proto, formats
        self.conn: SdpConnection | None = None
        self.rtpmaps: list[RtpMap] = []
        self.direction: Direction | None = None
        self.rtcp_port: int | None = None
        self.rtcp_addr: str | None = None
        self.attrs: list[tuple[str, str | None]] = []

    def build(self) -> SdpMedia:
        return SdpMedia(self.media, self.port, self.port_count, self.proto, self.formats,
                        self.conn, tuple(self.rtpmaps), self.direction, self.rtcp_port,
                        self.rtcp_addr, tuple(self.attrs))


def parse_sdp(body: bytes | str) -> Sdp:
    """Parse an SDP body. ``Malformed`` offsets are line numbers (1-based)."""
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    if not lines or not lines[0].startswith("v="):
        raise Malformed(SDP_LAYER, 1, "SDP does not start with v=")
    version = _int(lines[0][2:].strip(), 1, "v=")
    origin: SdpOrigin | None = None
    name: str | None = None
    s_conn: SdpConnection | None = None
    s_dir: Direction | None = None
    s_attrs: list[tuple[str, str | None]] = []
    media: list[_MediaBuilder] = []
    for lineno, line in enumerate(lines[1:], start=2):
        if len(line) < 2 or line[1] != "=":
            raise Malformed(SDP_LAYER, lineno, f"not a type=value line: {line[:40]!r}")
        kind, value = line[0], line[2:]
        cur_m = media[-1] if media else None
        if kind == "m":
            parts = value.split()
            if len(parts) < 3:
                raise Malformed(SDP_LAYER, lineno, f"m= needs media, port, proto: {value!r}")
            port_text, _, count_text = parts[1].partition("/")
            media.append(_MediaBuilder(
                parts[0], _int(port_text, lineno, "port"),
                _int(count_text, lineno, "port count") if count_text else 1,
                parts[2], tuple(parts[3:])))
        elif kind == "o":
            parts = value.split()
            if len(parts) != 6:
                raise Malformed(SDP_LAYER, lineno, f"o= needs 6 fields: {value!r}")
            origin = SdpOrigin(parts[0], parts[1], parts[2], parts[5])
        elif kind == "s":
            name = value
        elif kind == "c":
            if cur_m is None:
                s_conn = _conn(value, lineno)
            elif cur_m.conn is None:
                cur_m.conn = _conn(value, lineno)
        elif kind == "a":
            attr_name, sep, attr_value = value.partition(":")
            attr: tuple[str, str | None] = (attr_name, attr_value if sep else None)
            if attr_name in Direction.__members__.values():
                if cur_m is None:
                    s_dir = Direction(attr_name)
                else:
                    cur_m.direction = Direction(attr_name)
            if cur_m is None:
                s_attrs.append(attr)
                continue
            cur_m.attrs.append(attr)
            if attr_name == "rtpmap":
                pt_text, _, spec = attr_value.partition(" ")
                enc = spec.strip().split("/")
                if len(enc) < 2:
                    raise Malformed(SDP_LAYER, lineno, f"rtpmap without clock rate: {value!r}")
                cur_m.rtpmaps.append(RtpMap(
                    _int(pt_text, lineno, "payload type"), enc[0],
                    _int(enc[1], lineno, "clock rate"),
                    _int(enc[2], lineno, "channels") if len(enc) > 2 else None))
            elif attr_name == "rtcp":
                parts = attr_value.split()
                if not parts:
                    raise Malformed(SDP_LAYER, lineno, "a=rtcp without a port")
                cur_m.rtcp_port = _int(parts[0], lineno, "rtcp port")
                if len(parts) >= 4:
                    cur_m.rtcp_addr = parts[3]
    return Sdp(version, origin, name, s_conn, s_dir, tuple(s_attrs),
               tuple(m.build() for m in media))


def media_endpoints(sdp: Sdp) -> tuple[MediaEndpoint, ...]:
    """Expected media destinations: one per m= with a port and a known connection address."""
    out: list[MediaEndpoint] = []
    for m in sdp.media:
        conn = m.connection or sdp.connection
        if m.port == 0 or conn is None:
            continue
        direction = m.direction or sdp.direction or Direction.SENDRECV
        rtcp = m.rtcp_port
        if rtcp is None and "RTP" in m.proto:
            rtcp = m.port + 1
        out.append(MediaEndpoint(conn.address, m.port, m.media, direction, m.proto, rtcp))
    return tuple(out)


# -- SIP ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NameAddr:
    """A From/To/Contact value: URI plus the tag parameter."""

    display_name: str | None
    """Quoted or token display name, if any."""
    uri: str
    """The SIP/SIPS/TEL URI, without angle brackets."""
    tag: str | None
    """The ``tag`` header parameter (dialog identifier half)."""


@dataclass(frozen=True, slots=True)
class SipMessage:
    """One SIP request or response."""

    offset: int
    """Offset of the start line in the payload."""
    is_request: bool
    """True for requests, False for responses."""
    method: str | None
    """Request method (INVITE, BYE...); None for responses."""
    request_uri: str | None
    """Request-URI; None for responses."""
    status_code: int | None
    """Response status code; None for requests."""
    reason: str | None
    """Response reason phrase; None for requests."""
    headers: tuple[tuple[str, str], ...]
    """Every header in order as (full lower-case name, value), compact names expanded."""
    call_id: str | None
    """Call-ID: the key that ties a call's messages (and its media) together."""
    cseq_number: int | None
    """CSeq sequence number."""
    cseq_method: str | None
    """CSeq method (tells which request a response answers)."""
    from_: NameAddr | None
    """From header."""
    to: NameAddr | None
    """To header."""
    via: tuple[str, ...]
    """Via values, topmost first (comma-separated values split)."""
    contact: tuple[NameAddr, ...]
    """Contact values."""
    user_agent: str | None
    """User-Agent (requests) or Server (responses): names the client software."""
    content_type: str | None
    """Content-Type, without parameters, lower case."""
    content_length: int | None
    """Content-Length as sent."""
    body: bytes
    """Message body."""
    sdp: Sdp | None
    """Parsed body when Content-Type is application/sdp."""


def _line(cur: Cursor, buf: bytes) -> bytes:
    """Next line without its CRLF/LF."""
    nl = buf.find(b"\n", cur.pos, cur.end)
    if nl < 0:
        raise Truncated(LAYER, cur.pos, "line without end")
    raw = cur.take(nl - cur.pos + 1)
    return raw.rstrip(b"\r\n")


def _name_addr(value: str) -> NameAddr:
    value = value.strip()
    display: str | None = None
    if "<" in value and ">" in value:
        before, _, rest = value.partition("<")
        uri, _, params = rest.partition(">")
        display = before.strip().strip('"') or None
    else:
        uri, _, params = value.partition(";")
        params = ";" + params if params else ""
    tag: str | None = None
    for p in params.split(";"):
        k, _, v = p.strip().partition("=")
        if k.lower() == "tag":
            tag = v
    return NameAddr(display, uri.strip(), tag)


def _split_commas(value: str) -> list[str]:
    """Split a header value on commas outside quotes and angle brackets."""
    out: list[str] = []
    depth, quoted, start = 0, False, 0
    for i, ch in enumerate(value):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def _parse_one(cur: Cursor, buf: bytes, tcp: bool) -> SipMessage:
    start = cur.pos
    first = _line(cur, buf).decode("utf-8", errors="replace")
    parts = first.split(" ", 2)
    if len(parts) == 3 and parts[0] == _VERSION and len(parts[1]) == 3 and parts[1].isdigit():
        is_request, method, uri = False, None, None
        status: int | None = int(parts[1])
        reason: str | None = parts[2]
    elif len(parts) == 3 and parts[2] == _VERSION and parts[0].isalpha() and parts[0].isupper():
        is_request, method, uri, status, reason = True, parts[0], parts[1], None, None
    else:
        raise Malformed(LAYER, start, f"not a SIP start line: {first[:60]!r}")
    headers: list[tuple[str, str]] = []
    while True:
        line_at = cur.pos
        raw = _line(cur, buf)
        if not raw:
            break
        text = raw.decode("utf-8", errors="replace")
        if text[0] in " \t":  # RFC 3261 §7.3.1 line folding
            if not headers:
                raise Malformed(LAYER, line_at, "continuation line before any header")
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {text.strip()}")
            continue
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise Malformed(LAYER, line_at, f"header line without a name: {text[:40]!r}")
        key = name.strip().lower()
        headers.append((COMPACT_HEADERS.get(key, key), value.strip()))
    values: dict[str, str] = {}
    for k, v in headers:
        values.setdefault(k, v)
    length_text = values.get("content-length")
    length: int | None = None
    if length_text is not None:
        if not length_text.isdigit():
            raise Malformed(LAYER, start, f"Content-Length {length_text!r}")
        length = int(length_text)
    if length is None:
        # RFC 3261 §18.3: mandatory on streams; on datagrams the body runs to the end
        length = 0 if tcp else cur.remaining()
    body = cur.take(length)
    cseq_no: int | None = None
    cseq_method: str | None = None
    if "cseq" in values:
        num, _, meth = values["cseq"].partition(" ")
        if num.isdigit():
            cseq_no = int(num)
            cseq_method = meth.strip() or None
    ctype = values.get("content-type")
    ctype = ctype.split(";")[0].strip().lower() if ctype else None
    sdp = parse_sdp(body) if ctype == "application/sdp" and body.strip() else None
    via = tuple(v for k, val in headers if k == "via" for v in _split_commas(val))
    contact = tuple(_name_addr(v) for k, val in headers if k == "contact"
                    for v in _split_commas(val) if v != "*")
    return SipMessage(
        offset=start, is_request=is_request, method=method, request_uri=uri,
        status_code=status, reason=reason, headers=tuple(headers),
        call_id=values.get("call-id"), cseq_number=cseq_no, cseq_method=cseq_method,
        from_=_name_addr(values["from"]) if "from" in values else None,
        to=_name_addr(values["to"]) if "to" in values else None,
        via=via, contact=contact,
        user_agent=values.get("user-agent", values.get("server")),
        content_type=ctype, content_length=int(length_text) if length_text else None,
        body=body, sdp=sdp,
    )


def parse_sip(data: bytes | bytearray | memoryview, *, tcp: bool = False) -> tuple[SipMessage, ...]:
    """Every SIP message in one payload, in order.

    CRLF keep-alives between messages (RFC 5626 §3.5.1) are skipped.
    """
    buf = bytes(data)
    cur = Cursor(buf, LAYER)
    out: list[SipMessage] = []
    while True:
        while not cur.eof() and cur.peek_u8() in (0x0D, 0x0A):
            cur.skip(1)
        if cur.eof():
            break
        out.append(_parse_one(cur, buf, tcp))
    if not out:
        raise Malformed(LAYER, 0, "no SIP message")
    return tuple(out)


def sip_start_line(data: bytes | bytearray | memoryview) -> tuple[str | None, int | None] | None:
    """(method, status) from a SIP start line alone (RFC 3261 §7.1-7.2: ``Method SP
    Request-URI SP SIP/2.0`` or ``SIP/2.0 SP Status-Code SP Reason``), for a message whose
    headers are too damaged to parse: its first line still says it is SIP. None if the
    first line is not one."""
    end = bytes(data[:512]).find(b"\r\n")
    if end < 0:
        return None
    parts = bytes(data[:end]).split(b" ", 2)
    if len(parts) != 3:
        return None
    if parts[0] == b"SIP/2.0" and len(parts[1]) == 3 and parts[1].isdigit():
        return None, int(parts[1])
    if parts[2] == b"SIP/2.0" and parts[0].isalpha() and parts[0].isupper() and parts[1]:
        return parts[0].decode(), None
    return None
