"""Pseudonyms for the local side, and the payloads that name it.

An evidence bundle made with ``--anonymize`` must not name the subscriber anywhere: not
in the IP headers (:func:`api.evidence.anonymise_frames` rewrites those) and not in the
payloads that carry addresses and ports as data. This module holds both halves of the
mapping and the payload rewriters:

Pseudonyms
    :class:`Pseudonyms` maps an address to one in space that is never routed: IPv4 to
    the reserved block 240.0.0.0/4 (RFC 1112 §4, "reserved for future use"), IPv6 to the
    documentation prefix 2001:db8::/32 (RFC 3849). A private block keeps its own place in
    240.0.0.0/4 (10/8 to 240/8, 172.16/12 to 241.16/12, 192.168/16 to 242.168/16,
    100.64/10 to 243.64/10, 169.254/16 to 244.254/16, 127/8 to 245/8, 192.0.0/29 to
    246.0.0/29) and its host bits
    go through the keyed prefix-preserving map (Crypto-PAn construction), so two hosts
    of one subnet stay in one subnet; any other address (a subscriber's public address)
    goes to 250.0.0.0/8 by 24 bits of the same map. An IPv6 address keeps its /64
    together: the upper 64 bits become a keyed 32-bit network under 2001:db8::/32, the
    interface identifier goes through the prefix-preserving map. Ports of the local side
    go through a keyed permutation of the registered and dynamic ports (1024-65535) that
    keeps each even/odd pair together (RTP and RTCP on adjacent ports, RFC 3550 §11);
    well-known ports and the STUN/TURN/SIP service ports (:data:`KEPT_PORTS`) name a
    protocol, not a subscriber, and stay.

Payloads (:func:`rewrite_payload`)
    * STUN and TURN (RFC 5389/8489, 5766/8656): every address attribute whose address is
      local, plain (MAPPED-ADDRESS, RESPONSE-ORIGIN, OTHER-ADDRESS...) or XOR-ed with the
      magic cookie (and, for IPv6, the transaction ID: XOR-MAPPED-ADDRESS,
      XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS), the message inside a DATA attribute too;
      FINGERPRINT is recomputed. MESSAGE-INTEGRITY needs a key the bundle does not have
      and no longer verifies (:attr:`Rewritten.integrity_broken` counts them).
    * DNS (port 53, mDNS 5353): A and AAAA answers that hold a local address.
    * Zoom's peer-to-peer hello (:class:`classifier.dpi.framings.ZoomP2pHello`): the
      address it is sent to, written as text in a length-value field, and that end's
      port beside it.
    * SIP and SDP (RFC 3261, 4566), ICE candidates in SDP (RFC 8839): every local
      address written as text, a local endpoint's ``addr:port``, the ``m=`` and
      ``a=rtcp`` ports of a description whose connection address is local, a
      candidate's port and ``rport``; ``Content-Length`` follows the body. The text may
      change length: the caller fixes the datagram's lengths and checksums.

Nothing here raises on odd bytes: a payload that does not parse as one of these is left
as it is.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from classifier.dpi.framings import ZOOM_P2P_PORT_AT, parse_zoom_p2p_hello

__all__ = ["KEPT_PORTS", "Names", "Pseudonyms", "Rewritten", "rewrite_payload"]

KEPT_PORTS = frozenset({3478, 3479, 5060, 5061, 5349, 5350})
"""Service ports kept as they are, with the port that shares their even/odd pair: STUN
and TURN (3478, 5349), SIP (5060, 5061). Ports below 1024 are kept too."""

STUN_COOKIE = 0x2112A442
_XOR_ATTRS = frozenset({0x0012, 0x0016, 0x0020, 0x8020})
"""XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS (and its pre-RFC code)."""
_PLAIN_ATTRS = frozenset({0x0001, 0x0002, 0x0004, 0x0005, 0x000B, 0x8023, 0x802B, 0x802C})
"""MAPPED-, RESPONSE-, SOURCE-, CHANGED-ADDRESS, REFLECTED-FROM, ALTERNATE-SERVER,
RESPONSE-ORIGIN, OTHER-ADDRESS."""
_DATA = 0x0013
_MESSAGE_INTEGRITY = frozenset({0x0008, 0x001C})
_FINGERPRINT = 0x8028
_FINGERPRINT_XOR = 0x5354554E

_V4_HOMES: tuple[tuple[int, int, int], ...] = tuple(
    (int(ipaddress.IPv4Address(net)), plen, int(ipaddress.IPv4Address(home)))
    for net, plen, home in (
        ("10.0.0.0", 8, "240.0.0.0"), ("172.16.0.0", 12, "241.16.0.0"),
        ("192.168.0.0", 16, "242.168.0.0"), ("100.64.0.0", 10, "243.64.0.0"),
        ("169.254.0.0", 16, "244.254.0.0"), ("127.0.0.0", 8, "245.0.0.0"),
        ("192.0.0.0", 29, "246.0.0.0")))
"""(private block, prefix length, its place in 240.0.0.0/4)."""
_V4_OTHER = int(ipaddress.IPv4Address("250.0.0.0"))
_V6_DOC = int(ipaddress.IPv6Address("2001:db8::"))


class Names(Protocol):
    """What the payload rewriters ask of a mapping."""

    def address(self, text: str) -> str:
        """The pseudonym of an address written as text."""
        ...

    def packed(self, raw: bytes) -> bytes:
        """The pseudonym of a packed address."""
        ...

    def port(self, port: int) -> int:
        """The pseudonym of a local port."""
        ...


class Pseudonyms:
    """Keyed pseudonyms for addresses and ports (see the module docstring). Deterministic
    for a key; the key is at least 16 bytes."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the anonymisation key must be at least 16 bytes")
        self._key = key
        self._bits: dict[tuple[int, int, bytes], int] = {}
        self._ports: dict[int, int] = {}
        self._taken: dict[int, int] = {}
        """Pseudonym to original, to find the (improbable) clash of two hashed ones."""

    def prefix_map(self, value: int, bits: int, context: bytes = b"") -> int:
        """The Crypto-PAn map of a ``bits``-wide value: bit *i* of the output is bit *i*
        of the input XOR one bit of HMAC-SHA256 of the *i* bits before it (and
        ``context``), so two values sharing a *k*-bit prefix map to two values sharing
        exactly a *k*-bit prefix."""
        got = self._bits.get((value, bits, context))
        if got is not None:
            return got
        out = 0
        family = context + bytes([bits])
        for i in range(bits):
            prefix = value >> (bits - i)
            msg = family + bytes([i]) + prefix.to_bytes(16, "big")
            flip = hmac.new(self._key, msg, hashlib.sha256).digest()[0] & 1
            out = (out << 1) | (((value >> (bits - 1 - i)) & 1) ^ flip)
        self._bits[(value, bits, context)] = out
        return out

    def link(self, mac: bytes) -> bytes:
        """The pseudonym of a 6-byte link-layer (MAC) address: a keyed, locally
        administered unicast address (first octet 0x02: the U/L bit set, IEEE 802 §8.2),
        which no vendor assigns; a group address (I/G bit set: broadcast, multicast)
        names no device and is kept."""
        if len(mac) != 6 or mac[0] & 1:
            return mac
        return bytes([0x02]) + self._keyed(b"l2", int.from_bytes(mac, "big"), 40).to_bytes(5, "big")

    def _keyed(self, label: bytes, value: int, width: int) -> int:
        d = hmac.new(self._key, label + value.to_bytes(16, "big"), hashlib.sha256).digest()
        return int.from_bytes(d[:8], "big") >> (64 - width)

    def v4(self, value: int) -> int:
        """The pseudonym of an IPv4 address (as an integer)."""
        for net, plen, home in _V4_HOMES:
            host_bits = 32 - plen
            if value >> host_bits == net >> host_bits:
                host = value & ((1 << host_bits) - 1)
                return home | self.prefix_map(host, host_bits, net.to_bytes(4, "big"))
        return self._unclashed(value, _V4_OTHER | self.prefix_map(value, 32) & 0xFFFFFF)

    def v6(self, value: int) -> int:
        """The pseudonym of an IPv6 address (as an integer)."""
        net = self._keyed(b"v6net", value >> 64, 32)
        iid = self.prefix_map(value & ((1 << 64) - 1), 64, (value >> 64).to_bytes(8, "big"))
        return self._unclashed(value, _V6_DOC | (net << 64) | iid)

    def _unclashed(self, value: int, mapped: int) -> int:
        had = self._taken.setdefault(mapped, value)
        if had != value:
            raise ValueError(f"two addresses share the pseudonym {mapped:#x}; use another key")
        return mapped

    def address(self, text: str) -> str:
        """The pseudonym of an address written as text, written the same way."""
        ip = ipaddress.ip_address(text)
        if ip.version == 4:
            return str(ipaddress.IPv4Address(self.v4(int(ip))))
        return str(ipaddress.IPv6Address(self.v6(int(ip))))

    def packed(self, raw: bytes) -> bytes:
        """The pseudonym of a packed (network-order) address of 4 or 16 bytes."""
        if len(raw) == 4:
            return self.v4(int.from_bytes(raw, "big")).to_bytes(4, "big")
        return self.v6(int.from_bytes(raw, "big")).to_bytes(16, "big")

    def port(self, port: int) -> int:
        """The pseudonym of a local port: well-known and :data:`KEPT_PORTS` stay; the
        others move in even/odd pairs. The pairs (512-32767 without the kept ones) are
        numbered, shuffled by a keyed permutation ``s`` (a 16-bit Feistel network, walked
        until it lands among them) and swapped two by two: pair ``i`` goes to
        ``s⁻¹(s(i) xor 1)``, a bijection with no fixed point, so no port keeps its
        number."""
        got = self._ports.get(port)
        if got is not None:
            return got
        pair = port >> 1
        if port < 1024 or pair in _KEPT_PAIRS or port > 65535:
            out = port
        else:
            i = _PAIR_INDEX[pair]
            j = self._shuffle(self._shuffle(i, False) ^ 1, True)
            out = (_PAIRS[j] << 1) | (port & 1)
        self._ports[port] = out
        return out

    def _shuffle(self, i: int, inverse: bool) -> int:
        x = i
        while True:
            x = self._feistel(x, inverse)
            if x < len(_PAIRS):
                return x

    def _round(self, r: int, half: int) -> int:
        return hmac.new(self._key, b"port" + bytes([r, half]), hashlib.sha256).digest()[0]

    def _feistel(self, x: int, inverse: bool) -> int:
        left, right = x >> 8, x & 0xFF
        if not inverse:
            for r in range(4):
                left, right = right, left ^ self._round(r, right)
        else:
            for r in range(3, -1, -1):
                left, right = right ^ self._round(r, left), left
        return (left << 8) | right


_KEPT_PAIRS = frozenset(p >> 1 for p in KEPT_PORTS)
_PAIRS = tuple(q for q in range(512, 32768) if q not in _KEPT_PAIRS)
"""The port pairs that move (an even count, so that every one has a partner)."""
_PAIR_INDEX = {q: i for i, q in enumerate(_PAIRS)}


@dataclass(slots=True)
class Rewritten:
    """What :func:`rewrite_payload` changed in one payload."""

    data: bytes
    """The payload, rewritten (the same object when nothing changed)."""
    kind: str | None = None
    """``stun``, ``dns``, ``sip`` or ``zoom`` when the payload was read as one."""
    changes: int = 0
    """Addresses and ports rewritten."""
    integrity_broken: int = 0
    """STUN messages whose MESSAGE-INTEGRITY no longer verifies."""
    addresses: list[str] = field(default_factory=list)
    """The original local addresses met (text)."""


Local = Callable[[bytes], bool]
"""Whether a packed address belongs to the local side."""


# -- STUN / TURN --------------------------------------------------------------------------------


def _stun(data: bytes, local: Local, names: Names, out: Rewritten) -> bytes | None:
    """The STUN message rewritten, or None when ``data`` is not one."""
    if len(data) < 20 or data[0] & 0xC0 or struct.unpack_from("!I", data, 4)[0] != STUN_COOKIE:
        return None
    length = struct.unpack_from("!H", data, 2)[0]
    if 20 + length != len(data):
        return None
    attrs = _attributes(data, True) or _attributes(data, False)
    if attrs is None:
        return None
    buf = bytearray(data)
    txid = data[8:20]
    fingerprint_at, integrity = -1, False
    for pos, atype, alen in attrs:
        v = pos + 4
        if atype in _XOR_ATTRS or atype in _PLAIN_ATTRS:
            _stun_address(buf, v, alen, atype in _XOR_ATTRS, txid, local, names, out)
        elif atype == _DATA:
            inner = bytes(buf[v:v + alen])
            got = _stun(inner, local, names, out)
            if got is not None:
                buf[v:v + alen] = got
        elif atype in _MESSAGE_INTEGRITY:
            integrity = True
        elif atype == _FINGERPRINT and alen == 4:
            fingerprint_at = pos
    if bytes(buf) == data:
        return data
    if integrity:
        out.integrity_broken += 1
    if fingerprint_at >= 0:
        was = struct.unpack_from("!I", data, fingerprint_at + 4)[0]
        if was == (zlib.crc32(data[:fingerprint_at]) ^ _FINGERPRINT_XOR):
            struct.pack_into("!I", buf, fingerprint_at + 4,
                             zlib.crc32(bytes(buf[:fingerprint_at])) ^ _FINGERPRINT_XOR)
    return bytes(buf)


def _attributes(data: bytes, padded: bool) -> list[tuple[int, int, int]] | None:
    """(offset, type, length) of a STUN message's attributes, each padded to four bytes
    (RFC 5389) or not (the older Microsoft TURN, whose message lengths are not multiples
    of four); None unless they fill the message exactly."""
    out = []
    pos = 20
    while pos + 4 <= len(data):
        atype, alen = struct.unpack_from("!HH", data, pos)
        if pos + 4 + alen > len(data):
            return None
        out.append((pos, atype, alen))
        pos += 4 + alen + (-alen % 4 if padded else 0)
    return out if pos == len(data) else None


def _stun_address(buf: bytearray, v: int, alen: int, xor: bool, txid: bytes, local: Local,
                  names: Names, out: Rewritten) -> None:
    family = buf[v + 1] if alen >= 8 else 0
    width = 4 if family == 1 else 16 if family == 2 else 0
    if not width or alen < 4 + width:
        return
    mask = struct.pack("!I", STUN_COOKIE) + txid
    port = struct.unpack_from("!H", buf, v + 2)[0]
    raw = bytes(buf[v + 4:v + 4 + width])
    if xor:
        port ^= STUN_COOKIE >> 16
        raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
    if not local(raw):
        return
    out.addresses.append(str(ipaddress.ip_address(raw)))
    new_raw, new_port = names.packed(raw), names.port(port)
    if xor:
        new_port ^= STUN_COOKIE >> 16
        new_raw = bytes(a ^ b for a, b in zip(new_raw, mask, strict=False))
    struct.pack_into("!H", buf, v + 2, new_port)
    buf[v + 4:v + 4 + width] = new_raw
    out.changes += 2


# -- DNS ----------------------------------------------------------------------------------------


def _skip_name(data: bytes, pos: int) -> int:
    """The offset after a (possibly compressed) domain name; ValueError when cut."""
    for _ in range(128):
        if pos >= len(data):
            raise ValueError("cut")
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n & 0xC0:
            raise ValueError("label type")
        pos += 1 + n
    raise ValueError("too many labels")


def _dns(data: bytes, local: Local, names: Names, out: Rewritten) -> bytes | None:
    if len(data) < 12:
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    buf = bytearray(data)
    try:
        pos = 12
        for _ in range(qd):
            pos = _skip_name(data, pos) + 4
        for _ in range(an + ns + ar):
            pos = _skip_name(data, pos)
            if pos + 10 > len(data):
                return None
            rtype, _cls, _ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            rd = pos + 10
            if rd + rdlen > len(data):
                return None
            if (rtype, rdlen) in ((1, 4), (28, 16)) and local(data[rd:rd + rdlen]):
                out.addresses.append(str(ipaddress.ip_address(data[rd:rd + rdlen])))
                buf[rd:rd + rdlen] = names.packed(data[rd:rd + rdlen])
                out.changes += 1
            pos = rd + rdlen
    except ValueError:
        return None
    return bytes(buf)


# -- SIP / SDP ----------------------------------------------------------------------------------


_SIP_START = re.compile(rb"^(?:SIP/2\.0 \d{3} |[A-Z]+ \S+ SIP/2\.0\r?\n)")
_V4 = r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"
_V6 = r"(?<![0-9A-Fa-f:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*[0-9A-Fa-f](?![0-9A-Fa-f:])"
_ADDR_PORT = re.compile(rf"(\[?)({_V4}|{_V6})(\]?)(?::(\d{{1,5}}))?")
_MEDIA = re.compile(r"^(m=\S+ )(\d{1,5})", re.M)
_RTCP = re.compile(r"^(a=rtcp:)(\d{1,5})", re.M)
_CANDIDATE = re.compile(r"^(a=candidate:\S+ \d+ \S+ \d+ )(\S+) (\d{1,5})( typ \S+)"
                        r"(?:( raddr )(\S+)( rport )(\d{1,5}))?", re.M)
_CONNECTION = re.compile(r"^c=IN IP[46] (\S+)", re.M)
_LENGTH = re.compile(r"^(Content-Length|l)([ \t]*:[ \t]*)(\d+)", re.M | re.I)


def _is_local_text(word: str, local: Local) -> bool:
    try:
        return local(ipaddress.ip_address(word.strip("[]")).packed)
    except ValueError:
        return False


def _sip(data: bytes, local: Local, names: Names, out: Rewritten) -> bytes | None:
    if not _SIP_START.match(data):
        return None
    text = data.decode("latin-1")
    head, sep, body = text.partition("\r\n\r\n")

    def port_of(p: str) -> str:
        n = int(p)
        return str(names.port(n)) if 0 < n < 65536 else p

    def media_ports(section: str) -> str:
        # m= and a=rtcp ports are the local side's when the description's address is.
        if not any(_is_local_text(a, local) for a in _CONNECTION.findall(section)):
            return section

        def sub(m: re.Match[str]) -> str:
            out.changes += 1
            return m.group(1) + port_of(m.group(2))
        return _RTCP.sub(sub, _MEDIA.sub(sub, section))

    def candidate(m: re.Match[str]) -> str:
        addr, port = m.group(2), m.group(3)
        s = m.group(1) + addr + " " + (port_of(port) if _is_local_text(addr, local) else port)
        s += m.group(4)
        if m.group(5):
            raddr, rport = m.group(6), m.group(8)
            s += m.group(5) + raddr + m.group(7) + (
                port_of(rport) if _is_local_text(raddr, local) else rport)
        return s

    def addresses(m: re.Match[str]) -> str:
        word = m.group(2)
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            return m.group(0)
        if not local(ip.packed):
            return m.group(0)
        out.addresses.append(str(ip))
        out.changes += 1
        s = m.group(1) + names.address(str(ip)) + m.group(3)
        if m.group(4) is not None:
            s += ":" + port_of(m.group(4))
            out.changes += 1
        return s

    def rewrite(part: str) -> str:
        part = _CANDIDATE.sub(candidate, part)
        part = media_ports(part)
        return _ADDR_PORT.sub(addresses, part)

    new_head, new_body = rewrite(head), rewrite(body) if sep else body
    if new_body != body:
        size = len(new_body.encode("latin-1"))
        new_head = _LENGTH.sub(lambda m: f"{m.group(1)}{m.group(2)}{size}", new_head)
    new = (new_head + sep + new_body).encode("latin-1")
    return new


def _stun_stream(data: bytes, local: Local, names: Names, out: Rewritten) -> bytes | None:
    """STUN messages and TURN ChannelData back to back, as TURN over TCP carries them
    (RFC 8656 §3.5, ChannelData padded to four bytes): each whole STUN message rewritten;
    None unless the payload starts with a STUN message."""
    pieces: list[bytes] = []
    pos = 0
    while pos + 4 <= len(data):
        first = data[pos] >> 6
        length = struct.unpack_from("!H", data, pos + 2)[0]
        if first == 0 and pos + 20 <= len(data):
            size = 20 + length
            if pos + size > len(data):
                break
            got = _stun(data[pos:pos + size], local, names, out)
            if got is None:
                break
            pieces.append(got)
        elif first == 1 and pieces:  # ChannelData: the peer's bytes, left as they are
            size = 4 + length + (-length % 4)
            if pos + size > len(data):
                break
            pieces.append(data[pos:pos + size])
        else:
            break
        pos += size
    if not pieces:
        return None
    return b"".join(pieces) + data[pos:]


def _zoom_p2p(data: bytes, local: Local, names: Names, out: Rewritten) -> bytes | None:
    """A Zoom peer-to-peer hello sent to a local address, with that address (as text, its
    length field following it) and port rewritten; None for any other payload."""
    hello = parse_zoom_p2p_hello(data)
    if hello is None or hello.address is None or not _is_local_text(hello.address, local):
        return None
    new = names.address(hello.address).encode("ascii")
    at, end = hello.address_at, hello.address_at + hello.address_len
    port = names.port(hello.port)
    out.addresses.append(hello.address)
    out.changes += 2
    return (data[:ZOOM_P2P_PORT_AT] + struct.pack("!H", port) + data[ZOOM_P2P_PORT_AT + 2:at - 4]
            + struct.pack("!I", len(new)) + new + data[end:])


def rewrite_payload(data: bytes, proto: str, ports: tuple[int, int], local: Local,
                    names: Names) -> Rewritten:
    """``data`` (a UDP or TCP payload between ``ports``) with the local side's addresses
    and ports rewritten wherever STUN, DNS, SIP/SDP or Zoom's hello carry them; see the module
    docstring."""
    out = Rewritten(data)
    for kind, fn in (("stun", _stun), ("stun", _stun_stream), ("sip", _sip),
                     ("zoom", _zoom_p2p)):
        got = fn(data, local, names, out)
        if got is not None:
            out.kind, out.data = kind, got
            return out
    if proto == "udp" and ({53, 5353} & set(ports)):
        got = _dns(data, local, names, out)
        if got is not None:
            out.kind, out.data = "dns", got
    return out
