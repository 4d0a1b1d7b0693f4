"""DNS inspector: messages over UDP and TCP, names, A/AAAA/CNAME answers.

Input: a DNS/UDP payload, or a DNS/TCP byte stream (each message preceded by
a 2-byte length, possibly several per segment). The answer records let a later
stage map the addresses a client was given back to the names it asked for
(:func:`address_names`), following CNAME chains.

Errors: :class:`probe.errors.ParseError` with layer ``"dns"``:
:class:`~probe.errors.Truncated` when the message ends early,
:class:`~probe.errors.Malformed` for impossible lengths, bad labels and
compression pointers that loop or point forward.

References: RFC 1035 §4.1 (message format), §4.1.4 (compression), §4.2.2
(TCP framing); RFC 3596 (AAAA); RFC 6891 (OPT); RFC 6895 (RCODEs).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from probe.cursor import Cursor
from probe.errors import Malformed, Truncated

__all__ = [
    "DnsGist",
    "DnsMessage",
    "DnsQuestion",
    "DnsRecord",
    "Opcode",
    "RRType",
    "Rcode",
    "address_names",
    "dns_gist",
    "parse_dns",
    "parse_dns_tcp",
    "read_name",
]

LAYER = "dns"

_HEADER = 12
"""ID, flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT: six 16-bit fields (RFC 1035 §4.1.1)."""
_MAX_NAME = 255
"""Longest name in wire form (RFC 1035 §2.3.4)."""
_MAX_POINTERS = 64
"""Compression pointers followed per name before giving up."""

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.2)
_QR = 0x8000
_AA = 0x0400
_TC = 0x0200
_RD = 0x0100
_RA = 0x0080


class RRType(IntEnum):
    """Resource record types the inspector names (IANA DNS parameters)."""

    A = 1
    NS = 2
    CNAME = 5
    SOA = 6
    PTR = 12
    MX = 15
    TXT = 16
    AAAA = 28
    SRV = 33
    OPT = 41
    SVCB = 64
    HTTPS = 65
    ANY = 255


class Rcode(IntEnum):
    """Response codes in the 4-bit header field (RFC 1035 §4.1.1, RFC 6895 §2.3)."""

    NOERROR = 0
    FORMERR = 1
    SERVFAIL = 2
    NXDOMAIN = 3
    NOTIMP = 4
    REFUSED = 5
    YXDOMAIN = 6
    YXRRSET = 7
    NXRRSET = 8
    NOTAUTH = 9
    NOTZONE = 10


class Opcode(IntEnum):
    """Header opcodes (RFC 1035 §4.1.1, RFC 1996, RFC 2136)."""

    QUERY = 0
    IQUERY = 1
    STATUS = 2
    NOTIFY = 4
    UPDATE = 5


@dataclass(frozen=True, slots=True)
class DnsQuestion:
    """One entry of the question section."""

    name: str
    """Queried name, lower-case, without the trailing dot ("" for the root)."""
    qtype: int
    """QTYPE (``RRType`` value when known)."""
    qclass: int
    """QCLASS (1 = IN; the top bit is mDNS's unicast-response flag)."""


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One resource record (answer, authority or additional)."""

    name: str
    """Owner name, lower-case, without the trailing dot."""
    rtype: int
    """TYPE (``RRType`` value when known)."""
    rclass: int
    """CLASS (for OPT: the requester's UDP payload size)."""
    ttl: int
    """TTL in seconds (for OPT: extended RCODE and flags)."""
    rdata: bytes
    """RDATA as sent."""
    address: str | None
    """The address of an A or AAAA record, in text form; None otherwise."""
    target: str | None
    """The target name of a CNAME, NS or PTR record; None otherwise."""


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """A decoded DNS message."""

    id: int
    """Transaction ID."""
    is_response: bool
    """QR bit."""
    opcode: int
    """``Opcode`` value."""
    authoritative: bool
    """AA bit."""
    truncated: bool
    """TC bit: the answer did not fit and should be retried over TCP."""
    recursion_desired: bool
    """RD bit."""
    recursion_available: bool
    """RA bit."""
    rcode: int
    """``Rcode`` value of the 4-bit header field."""
    questions: tuple[DnsQuestion, ...]
    """Question section."""
    answers: tuple[DnsRecord, ...]
    """Answer section."""
    authority: tuple[DnsRecord, ...]
    """Authority section."""
    additional: tuple[DnsRecord, ...]
    """Additional section (OPT pseudo-record included)."""


def read_name(cur: Cursor, message: bytes) -> str:
    """Read a possibly compressed name at ``cur`` and move past it (RFC 1035 §4.1.4).

    ``message`` is the whole message that pointers refer into. Every pointer
    must point strictly before the label that holds it, and at most
    ``_MAX_POINTERS`` are followed, so a pointer loop cannot spin.
    """
    layer = cur.layer
    labels: list[str] = []
    wire_len = 1
    reader = cur
    hops = 0
    while True:
        at = reader.pos
        length = reader.u8()
        if length == 0:
            break
        kind = length & 0xC0
        if kind == 0xC0:
            target = ((length & 0x3F) << 8) | reader.u8()
            if target >= at:
                raise Malformed(layer, at, f"compression pointer to {target} does not go back")
            hops += 1
            if hops > _MAX_POINTERS:
                raise Malformed(layer, at, "too many compression pointers")
            reader = Cursor(message, layer, target, at)
            continue
        if kind:
            raise Malformed(layer, at, f"label type {kind:#x} unsupported")
        label = reader.take(length)
        wire_len += length + 1
        if wire_len > _MAX_NAME:
            raise Malformed(layer, at, "name longer than 255 bytes")
        labels.append(label.decode("ascii", "backslashreplace").lower())
    return ".".join(labels)


def _record(cur: Cursor, message: bytes) -> DnsRecord:
    name = read_name(cur, message)
    rtype = cur.u16()
    rclass = cur.u16()
    ttl = cur.u32()
    rdlength = cur.u16()
    rd_start = cur.pos
    rdata = cur.peek(rdlength)
    address: str | None = None
    target: str | None = None
    with cur.block(rdlength):
        if rtype == RRType.A and rclass == 1:
            if rdlength != 4:
                raise Malformed(cur.layer, rd_start, f"A record of {rdlength} bytes")
            address = socket.inet_ntop(socket.AF_INET, cur.take(4))
        elif rtype == RRType.AAAA and rclass == 1:
            if rdlength != 16:
                raise Malformed(cur.layer, rd_start, f"AAAA record of {rdlength} bytes")
            address = socket.inet_ntop(socket.AF_INET6, cur.take(16))
        elif rtype in (RRType.CNAME, RRType.NS, RRType.PTR):
            target = read_name(cur, message)
        else:
            cur.skip(rdlength)
    return DnsRecord(name, rtype, rclass, ttl, rdata, address, target)


def parse_dns(data: bytes, layer: str = LAYER, *, answers_only: bool = False) -> DnsMessage:
    """Decode one DNS message (a UDP payload, or one TCP message without its length).

    ``answers_only`` stops after the answer section (authority and additional come back
    empty): what the classifier's name map needs, at a fraction of the cost.
    """
    cur = Cursor(data, layer)
    msg_id = cur.u16()
    flags = cur.u16()
    counts = [cur.u16() for _ in range(4)]
    questions = []
    for _ in range(counts[0]):
        name = read_name(cur, data)
        questions.append(DnsQuestion(name, cur.u16(), cur.u16()))
    wanted = counts[1:2] if answers_only else counts[1:]
    sections = [tuple(_record(cur, data) for _ in range(n)) for n in wanted]
    sections += [()] * (3 - len(sections))
    return DnsMessage(
        id=msg_id,
        is_response=bool(flags & _QR),
        opcode=(flags >> 11) & 0x0F,
        authoritative=bool(flags & _AA),
        truncated=bool(flags & _TC),
        recursion_desired=bool(flags & _RD),
        recursion_available=bool(flags & _RA),
        rcode=flags & 0x0F,
        questions=tuple(questions),
        answers=sections[0],
        authority=sections[1],
        additional=sections[2],
    )


@dataclass(frozen=True, slots=True)
class DnsGist:
    """What the classifier reads from a DNS message: :func:`dns_gist`."""

    is_response: bool
    rcode: int
    question: str | None
    """The first question's name (lower case), if there is one."""
    addresses: tuple[tuple[str, str], ...]
    """:func:`address_names` of the message, in its order."""


class _Plain(Exception):
    """The message is not the plain kind the fast path reads."""


def _gist_name(data: bytes, pos: int, limit: int,
               seen: dict[int, tuple[str, int]]) -> tuple[str, int]:
    """A name at ``pos`` (RFC 1035 §4.1.4) and where the reading stopped; the same rules
    as :func:`read_name` (pointers strictly back, labels before the pointer that led to
    them, at most ``_MAX_POINTERS`` hops, 255 bytes), raising :class:`_Plain` instead.

    ``seen`` maps where names without pointers began to (name, where they ended): a name
    that is only a pointer to one of those (an answer pointing back at the question, the
    usual case) is that name, read again under the same rules, so it is not walked again.
    """
    if seen and pos + 1 < limit and data[pos] & 0xC0 == 0xC0:
        known = seen.get(((data[pos] & 0x3F) << 8) | data[pos + 1])
        if known is not None and known[1] <= pos:  # and so the target is before ``pos``
            return known[0], pos + 2
    start = pos
    labels: list[bytes] = []
    wire = 1
    hops = 0
    end = -1
    while True:
        if pos >= limit:
            raise _Plain
        length = data[pos]
        if length == 0:
            # decoded and lowered at once: the same text as label by label (ASCII only)
            name = b".".join(labels).decode("ascii", "backslashreplace").lower()
            if end < 0:
                seen[start] = (name, pos + 1)
                return name, pos + 1
            return name, end
        if length & 0xC0 == 0xC0:
            if pos + 1 >= limit:
                raise _Plain
            target = ((length & 0x3F) << 8) | data[pos + 1]
            hops += 1
            if target >= pos or hops > _MAX_POINTERS:
                raise _Plain
            if end < 0:
                end = pos + 2
            pos, limit = target, pos
            continue
        if length & 0xC0 or pos + 1 + length > limit:
            raise _Plain
        wire += length + 1
        if wire > _MAX_NAME:
            raise _Plain
        pos += 1
        labels.append(data[pos:pos + length])
        pos += length


_COUNTS = struct.Struct("!HHH")
"""Flags, QDCOUNT, ANCOUNT (RFC 1035 §4.1.1), from offset 2."""
_RR_FIXED = struct.Struct("!HHIH")
"""TYPE, CLASS, TTL, RDLENGTH after a record's owner name (RFC 1035 §4.1.3)."""
_A, _AAAA, _CNAME = int(RRType.A), int(RRType.AAAA), int(RRType.CNAME)
_NAME_TARGETS = frozenset({int(RRType.CNAME), int(RRType.NS), int(RRType.PTR)})


def dns_gist(data: bytes) -> DnsGist | None:
    """The classifier's fast read of one DNS message over UDP: header flags, the first
    question and the (name, address) pairs of the answer section, walking the bytes
    directly. ``None`` when anything is out of the ordinary (cut short, a bad pointer, an
    odd record): :func:`parse_dns` then gives the full answer and its exact error."""
    n = len(data)
    if n < _HEADER:
        return None
    flags, qd, an = _COUNTS.unpack_from(data, 2)
    pos = _HEADER
    question: str | None = None
    owners: list[str] = []
    addrs: list[str | None] = []
    aliases: dict[str, list[str]] = {}
    known: dict[int, tuple[str, int]] = {}
    try:
        for i in range(qd):
            name, pos = _gist_name(data, pos, n, known)
            if pos + 4 > n:
                return None
            pos += 4
            if i == 0:
                question = name
        for _ in range(an):
            name, pos = _gist_name(data, pos, n, known)
            if pos + 10 > n:
                return None
            rtype, rclass, _ttl, rdlength = _RR_FIXED.unpack_from(data, pos)
            pos += 10
            stop = pos + rdlength
            if stop > n:
                return None
            address = None
            if rtype == _A and rclass == 1:
                if rdlength != 4:
                    return None
                address = socket.inet_ntop(socket.AF_INET, data[pos:stop])
            elif rtype == _AAAA and rclass == 1:
                if rdlength != 16:
                    return None
                address = socket.inet_ntop(socket.AF_INET6, data[pos:stop])
            elif rtype in _NAME_TARGETS:
                target, end = _gist_name(data, pos, stop, known)
                if end != stop:
                    return None
                if rtype == _CNAME:
                    aliases.setdefault(target, []).append(name)
            pos = stop
            owners.append(name)
            addrs.append(address)
    except _Plain:
        return None
    pairs: list[tuple[str, str]] = []
    for owner, address in zip(owners, addrs, strict=True):
        if address is None:
            continue
        if not aliases:
            pairs.append((owner, address))
            continue
        pairs.extend((nm, address) for nm in _names_leading_to(owner, aliases))
    return DnsGist(bool(flags & _QR), flags & 0x0F, question, tuple(pairs))


def parse_dns_tcp(data: bytes, layer: str = LAYER) -> tuple[DnsMessage, ...]:
    """Decode every message of a DNS/TCP stream (2-byte length prefix, RFC 1035 §4.2.2).

    Raises :class:`Truncated` at the start of a message the stream cuts off.
    """
    cur = Cursor(data, layer)
    out: list[DnsMessage] = []
    while not cur.eof():
        start = cur.pos
        length = cur.u16()
        if length < _HEADER:
            raise Malformed(layer, start, f"DNS/TCP message of {length} bytes")
        if cur.remaining() < length:
            raise Truncated(layer, start, f"message of {length} bytes, {cur.remaining()} left")
        try:
            out.append(parse_dns(cur.take(length), layer))
        except Truncated as exc:
            raise Truncated(layer, start + 2 + exc.offset, exc.reason) from None
        except Malformed as exc:
            raise Malformed(layer, start + 2 + exc.offset, exc.reason) from None
    return tuple(out)


def address_names(msg: DnsMessage) -> Iterator[tuple[str, str]]:
    """Yield (name, address) for every A/AAAA answer, once per name that leads to it.

    A query for ``web.example`` answered with ``web.example CNAME edge.cdn``
    and ``edge.cdn A 192.0.2.7`` yields ``("web.example", "192.0.2.7")`` and
    ``("edge.cdn", "192.0.2.7")``, the name at the head of the chain first.
    CNAME loops are cut.
    """
    aliases: dict[str, list[str]] = {}  # canonical name -> names that CNAME to it
    for rr in msg.answers:
        if rr.rtype == RRType.CNAME and rr.target is not None:
            aliases.setdefault(rr.target, []).append(rr.name)
    for rr in msg.answers:
        if rr.address is not None:
            for name in _names_leading_to(rr.name, aliases):
                yield name, rr.address


def _names_leading_to(owner: str, aliases: dict[str, list[str]]) -> list[str]:
    """``owner`` and every name that CNAMEs to it, directly or through others, the head of
    each chain first (``aliases``: canonical name -> names that CNAME to it); loops cut."""
    chain: list[str] = []
    todo = [owner]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        chain.append(name)
        todo.extend(aliases.get(name, ()))
    chain.reverse()
    return chain
