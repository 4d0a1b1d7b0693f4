#!/usr/bin/env python3
"""Build the replay traces in ``captures/traces/``: one call-media flow per app.

Run from anywhere: ``python captures/traces/make_traces.py [OUTDIR]`` (default: the
directory of this script). Every run writes the same bytes: timestamps are fixed and
every random byte comes from a generator seeded with the trace's name.

A trace is what an active replay test sends (``marsad test replay APP``): one call's
media flow as the app puts it on the wire, made from the specifications the app
follows and from the classifier's own knowledge of the app. The bytes a middlebox
could key on (STUN message types and attributes, TURN REALMs, Zoom's and Telegram's
framings, SIP) come from the classifier's tables (:mod:`classifier.dpi.stun`,
:mod:`classifier.dpi.framings`, :mod:`classifier.engine`), so a trace and the detector
cannot drift apart; everything encrypted (SRTP payloads and tags, DTLS ciphertext,
relay packets) is seeded random bytes.

The convention every trace follows (the replay engine relies on it):

- Ethernet link type; exactly one 5-tuple (UDP, or TCP for ``<app>-tcp.pcap``);
- client 192.0.2.10, server 198.51.100.20 (RFC 5737 documentation addresses): the
  direction of a packet is which of the two sent it, and the first packet is the
  client's;
- payloads unique within each direction, so a receiver identifies a trace packet by
  its bytes alone (STUN transaction ids, RTP sequence numbers, random ciphertext);
- 6-10 s long, under 300 KB;
- ``MANIFEST.json`` lists each trace's app, transport, SHA-256, packets, duration and
  bytes.

The timing is the one a capture on the client would show: the client's packets on
its own clocks (20 ms audio frames, 15 frames/s video, a few tenths of a millisecond
of scheduling noise), the server's after a fixed path delay with a few milliseconds
of jitter, and never reordered within a stream.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
import json
import random
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from classifier.dpi.framings import (  # noqa: E402
    TELEGRAM_PEER_TAG_LEN,
    TELEGRAM_RELAY_MARKER,
    ZOOM_KEEPALIVE_LEN,
    ZOOM_MEDIA_TYPES,
    ZOOM_SFU_HEADER_LEN,
    ZoomMediaKind,
    ZoomSfuType,
)
from classifier.dpi.sip import START_LINES  # noqa: E402
from classifier.dpi.stun import (  # noqa: E402
    MAGIC_COOKIE,
    VENDOR_ATTRIBUTES,
    VENDOR_MESSAGE_TYPES,
    AttrType,
    Vendor,
)
from classifier.engine import MESSENGER_TURN_REALM, REALM_APPS  # noqa: E402

CLIENT = "192.0.2.10"
"""The client's address in every trace (RFC 5737 TEST-NET-1)."""
SERVER = "198.51.100.20"
"""The server's address in every trace (RFC 5737 TEST-NET-2)."""
UP = 0
"""Direction of a packet the client sent."""
DOWN = 1
"""Direction of a packet the server sent."""
T0_US = 1_767_225_600_000_000
"""2026-01-01T00:00:00Z in microseconds: the first packet of every trace."""
MAX_BYTES = 300_000
"""Largest trace file the generator accepts."""
DURATION_S = (6.0, 10.0)
"""Shortest and longest trace, first to last packet."""

MAC_CLIENT = bytes.fromhex("02c11e000010")
MAC_GATEWAY = bytes.fromhex("02a7e0000001")
ETHERTYPE_IPV4 = 0x0800
LINKTYPE_ETHERNET = 1
TTL_CLIENT = 64
"""The client's own TTL (the capture is taken on the client)."""
TTL_SERVER = 52
"""The server's packets as they reach the client, twelve hops away."""

# STUN/TURN message types: method and class bits (RFC 8489 §5, §18.2; RFC 8656 §17)
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ALLOCATE_REQUEST = 0x0003
ALLOCATE_SUCCESS = 0x0103
ALLOCATE_ERROR = 0x0113
CREATE_PERMISSION_REQUEST = 0x0008
CREATE_PERMISSION_SUCCESS = 0x0108
CHANNEL_BIND_REQUEST = 0x0009
CHANNEL_BIND_SUCCESS = 0x0109
FINGERPRINT_XOR = 0x5354554E
"""RFC 8489 §14.7: the CRC-32 of FINGERPRINT is XORed with this."""
CHANNEL = 0x4000
"""First TURN channel number, RFC 8656 §12."""
PROTO_UDP = 17
"""REQUESTED-TRANSPORT for UDP (an IANA protocol number), RFC 8656 §18.8."""

# Vendor numbers, from the classifier's tables (and checked to be the vendor's there)
WA_REQUEST, WA_RESPONSE = sorted(t for t, v in VENDOR_MESSAGE_TYPES.items()
                                 if v is Vendor.WHATSAPP)[:2]
"""WhatsApp's relay request and its answer, 0x0800/0x0801 (message types of Meta's call
stack)."""
WA_TOKEN, WA_VERSION, WA_ROUTE, WA_CHECK, WA_FLAGS = (
    int(AttrType.WHATSAPP_4000), int(AttrType.WHATSAPP_4001), int(AttrType.WHATSAPP_4002),
    int(AttrType.WHATSAPP_4003), int(AttrType.WHATSAPP_4004))
"""WhatsApp's private attributes 0x4000-0x4004."""
MS_SERVICE_QUALITY = int(AttrType.MS_SERVICE_QUALITY)
MS_CANDIDATE_IDENTIFIER = int(AttrType.MS_CANDIDATE_IDENTIFIER)
MS_IMPLEMENTATION_VERSION = int(AttrType.MS_IMPLEMENTATION_VERSION)
MS_VERSION = int(AttrType.MS_VERSION)
for _n in (WA_TOKEN, WA_VERSION, WA_ROUTE, WA_CHECK, WA_FLAGS):
    assert VENDOR_ATTRIBUTES[_n] is Vendor.WHATSAPP, hex(_n)
for _n in (WA_REQUEST, WA_RESPONSE):
    assert VENDOR_MESSAGE_TYPES[_n] is Vendor.WHATSAPP, hex(_n)
for _n in (MS_SERVICE_QUALITY, MS_CANDIDATE_IDENTIFIER, MS_IMPLEMENTATION_VERSION):
    assert VENDOR_ATTRIBUTES[_n] is Vendor.MICROSOFT, hex(_n)

TG_PING_TAIL = struct.pack("<i", -2)
"""libtgvoip's relay ping: after the peer tag and the twelve 0xFF bytes, int32 -2 and a
64-bit query id."""
TG_SELF_INFO = 0xC01572C7
"""TL id of the relay's answer to a ping (``udpReflectorSelfInfo``: date, query id, the
client's address and port as the relay saw them)."""
TG_MSG_KEY_LEN = 16
"""MTProto-style message key before each encrypted block (AES-IGE, 16-byte blocks)."""

# RTP (RFC 3550 §5.1) and its WebRTC header extensions (RFC 8285 §4.2)
RTP_VERSION = 0x80
ONE_BYTE_EXT = 0xBEDE
EXT_AUDIO_LEVEL = 1
"""RFC 6464 client-to-mixer audio level, one byte."""
EXT_TRANSPORT_CC = 3
"""Transport-wide sequence number (draft-holmer-rmcat-transport-wide-cc-extensions), two
bytes: the same counter over audio and video."""
OPUS_CLOCK_STEP = 960
"""Opus RTP clock is 48 kHz whatever the audio bandwidth (RFC 7587 §4.1): 20 ms = 960."""
VIDEO_CLOCK_STEP = 6000
"""90 kHz video clock at 15 frames/s."""
SRTP_TAG = 10
"""AES_CM_128_HMAC_SHA1_80 authentication tag (RFC 3711 §5.2, RFC 4568)."""
GCM_TAG = 16
"""AEAD_AES_128_GCM tag (RFC 7714 §12), the DTLS-SRTP profile WebRTC prefers."""


# ---------------------------------------------------------------------------
# A trace and its pcap


@dataclass
class Trace:
    """One flow's packets as (time in µs from the start, direction, payload)."""

    name: str
    app: str
    transport: str
    client_port: int
    server_port: int
    what: str
    follows: str
    packets: list[tuple[int, int, bytes]] = field(default_factory=list)
    signatures: list[tuple[str, int | None, bytes]] = field(default_factory=list)
    """What a middlebox could key on: (what, offset in the payload or None for anywhere,
    bytes). The manifest says how many packets of each direction carry each."""

    def sign(self, what: str, offset: int | None, value: bytes) -> None:
        self.signatures.append((what, offset, value))

    def add(self, t_us: int, direction: int, payload: bytes) -> None:
        self.packets.append((t_us, direction, payload))

    def ordered(self) -> list[tuple[int, int, bytes]]:
        """Packets by time; equal times keep the order they were added in."""
        return sorted(self.packets, key=lambda p: p[0])


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _addr(a: str) -> bytes:
    return bytes(int(x) for x in a.split("."))


def _ipv4(src: str, dst: str, proto: int, l4: bytes, ident: int, ttl: int) -> bytes:
    head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, ttl, proto, 0,
                       _addr(src), _addr(dst))
    return head[:10] + struct.pack(">H", _checksum(head)) + head[12:] + l4


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    return _addr(src) + _addr(dst) + struct.pack(">BBH", 0, proto, length)


def _udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    n = 8 + len(payload)
    head = struct.pack(">HHHH", sport, dport, n, 0)
    c = _checksum(_pseudo(src, dst, 17, n) + head + payload) or 0xFFFF
    return head[:6] + struct.pack(">H", c) + payload


def _tcp(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
         payload: bytes, *, syn: bool) -> bytes:
    # SYN: MSS 1460, SACK permitted, window scale 7 (RFC 9293 §3.2, RFC 2018, RFC 7323)
    opts = bytes.fromhex("020405b4" "0402" "01" "030307") if syn else b""
    opts += bytes(-len(opts) % 4)
    off = (20 + len(opts)) // 4
    window = 64240 if syn else 2052
    head = struct.pack(">HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       off << 4, flags, window, 0, 0) + opts
    c = _checksum(_pseudo(src, dst, 6, len(head) + len(payload)) + head + payload)
    return head[:16] + struct.pack(">H", c) + head[18:] + payload


FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10


def _frames(trace: Trace) -> Iterator[tuple[int, int, bytes]]:
    """(time µs, direction, IPv4 packet) of every frame of the trace."""
    ident = {UP: 0x1C00, DOWN: 0x6A00}
    ends = {UP: (CLIENT, trace.client_port, SERVER, trace.server_port),
            DOWN: (SERVER, trace.server_port, CLIENT, trace.client_port)}
    ttl = {UP: TTL_CLIENT, DOWN: TTL_SERVER}

    def ip(direction: int, proto: int, l4: bytes) -> bytes:
        ident[direction] = (ident[direction] + 1) & 0xFFFF
        src, _, dst, _ = ends[direction]
        return _ipv4(src, dst, proto, l4, ident[direction], ttl[direction])

    packets = trace.ordered()
    if trace.transport == "udp":
        for t, d, payload in packets:
            src, sport, dst, dport = ends[d]
            yield t, d, ip(d, 17, _udp(src, sport, dst, dport, payload))
        return
    # TCP: handshake before the first data, data segments carrying the ACK of what has
    # reached their sender (the client has what the capture shows; the server, sending
    # one path delay before the capture sees its segment, has the client's bytes sent a
    # round trip before that), and FIN both ways after the last
    rng = random.Random(trace.name + "/isn")
    nxt = {UP: rng.getrandbits(32), DOWN: rng.getrandbits(32)}
    rtt = 2 * _PATH_DELAY_US
    client_sent: list[tuple[int, int]] = []
    """(time, sequence number after it) of every client segment, in time order."""

    def seg(t: int, d: int, flags: int, payload: bytes = b"") -> tuple[int, int, bytes]:
        src, sport, dst, dport = ends[d]
        ack = 0
        if flags & ACK:
            ack = nxt[DOWN]
            if d == DOWN:
                i = bisect.bisect_right(client_sent, (t - rtt, 1 << 33))
                ack = client_sent[i - 1][1] if i else client_sent[0][1]
        l4 = _tcp(src, sport, dst, dport, nxt[d], ack, flags, payload, syn=bool(flags & SYN))
        nxt[d] += len(payload) + bool(flags & SYN) + bool(flags & FIN)
        if d == UP:
            client_sent.append((t, nxt[UP]))
        return t, d, ip(d, 6, l4)

    t0 = packets[0][0]
    yield seg(t0 - rtt - 400, UP, SYN)
    yield seg(t0 - 400, DOWN, SYN | ACK)
    yield seg(t0 - 250, UP, ACK)
    for t, d, payload in packets:
        yield seg(t, d, PSH | ACK, payload)
    end = packets[-1][0]
    yield seg(end + 20_000, UP, FIN | ACK)
    yield seg(end + 20_000 + rtt, DOWN, FIN | ACK)
    yield seg(end + 20_000 + rtt + 150, UP, ACK)


def pcap_bytes(trace: Trace) -> bytes:
    """The trace as a classic little-endian microsecond pcap with Ethernet frames."""
    out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_ETHERNET))
    frames = list(_frames(trace))
    base = min(t for t, _, _ in frames)
    for t, d, packet in frames:
        macs = MAC_GATEWAY + MAC_CLIENT if d == UP else MAC_CLIENT + MAC_GATEWAY
        frame = macs + struct.pack(">H", ETHERTYPE_IPV4) + packet
        us = T0_US + t - base
        out += struct.pack("<IIII", us // 1_000_000, us % 1_000_000, len(frame), len(frame))
        out += frame
    return bytes(out)


# ---------------------------------------------------------------------------
# STUN and TURN (RFC 8489, RFC 8656, RFC 8445)


def attr(code: int, value: bytes) -> bytes:
    """One STUN attribute: type, length, value padded to 4 bytes (RFC 8489 §14)."""
    return struct.pack(">HH", code, len(value)) + value + bytes(-len(value) % 4)


def stun(msg_type: int, txid: bytes, attrs: list[tuple[int, bytes]], *,
         key: bytes | None = None, fingerprint: bool = False) -> bytes:
    """A STUN message, with MESSAGE-INTEGRITY (RFC 8489 §14.5: HMAC-SHA1 over the message
    up to the attribute, the length already counting it) and FINGERPRINT (§14.7)."""
    body = b"".join(attr(c, v) for c, v in attrs)
    if key is not None:
        head = struct.pack(">HHI", msg_type, len(body) + 24, MAGIC_COOKIE) + txid
        body += attr(AttrType.MESSAGE_INTEGRITY, hmac.new(key, head + body, "sha1").digest())
    if fingerprint:
        head = struct.pack(">HHI", msg_type, len(body) + 8, MAGIC_COOKIE) + txid
        crc = zlib.crc32(head + body) ^ FINGERPRINT_XOR
        body += attr(AttrType.FINGERPRINT, struct.pack(">I", crc))
    return struct.pack(">HHI", msg_type, len(body), MAGIC_COOKIE) + txid + body


def xor_address(address: str, port: int) -> bytes:
    """XOR-MAPPED-ADDRESS style value for IPv4 (RFC 8489 §14.2)."""
    a = struct.unpack(">I", _addr(address))[0]
    return struct.pack(">BBHI", 0, 1, port ^ (MAGIC_COOKIE >> 16), a ^ MAGIC_COOKIE)


def error_code(code: int, phrase: str) -> bytes:
    """ERROR-CODE value (RFC 8489 §14.8)."""
    return struct.pack(">HBB", 0, code // 100, code % 100) + phrase.encode()


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key, RFC 8489 §9.2.2: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def channel_data(data: bytes, *, tcp: bool = False) -> bytes:
    """TURN ChannelData on channel 0x4000 (RFC 8656 §12.4), padded over TCP (§12.5)."""
    out = struct.pack(">HH", CHANNEL, len(data)) + data
    return out + bytes(-len(out) % 4) if tcp else out


def realm_of(app: str) -> str:
    """The TURN REALM text that names ``app`` in the classifier's table: the first of its
    needles (Messenger's relays: the realm the classifier reads as Messenger's own
    signalling). The exact realms are not published; the needle stands for them."""
    if app == "messenger":
        return MESSENGER_TURN_REALM
    for needle, named in REALM_APPS:
        if named == app:
            return needle
    raise KeyError(app)


class Clock:
    """Times of one exchange: the client sends at ``t``, the answer arrives one round trip
    later; ``t`` then moves on by the client's think time."""

    def __init__(self, trace: Trace, rng: random.Random, t_us: int = 0) -> None:
        self.trace, self.rng, self.t = trace, rng, t_us

    def exchange(self, up: bytes, down: bytes, *, then_us: int = 2_000) -> None:
        rtt = 2 * _PATH_DELAY_US + self.rng.randrange(0, 3_000)
        self.trace.add(self.t, UP, up)
        self.trace.add(self.t + rtt, DOWN, down)
        self.t += rtt + then_us


_PATH_DELAY_US = 24_000
"""One-way delay between the client and the server in every trace."""


def turn_allocation(clock: Clock, *, realm: str, username: str, password: str,
                    relayed_port: int, peer: tuple[str, int], extra: list[tuple[int, bytes]],
                    reply: tuple[tuple[int, bytes], ...] = ()) -> None:
    """TURN allocation (RFC 8656 §7): Allocate, 401 with REALM and NONCE, Allocate with
    long-term credentials, then CreatePermission and ChannelBind for the peer; ``extra``
    goes into both Allocate requests, ``reply`` into the success. Over TCP the messages
    are the same bytes, one after the other on the stream (RFC 8656 §12.5)."""
    rng = clock.rng
    key = long_term_key(username, realm, password)
    nonce = rng.randbytes(16).hex().encode()
    transport = [(int(AttrType.REQUESTED_TRANSPORT), struct.pack(">B3x", PROTO_UDP))]
    txid = rng.randbytes(12)
    clock.exchange(
        stun(ALLOCATE_REQUEST, txid, transport + extra, fingerprint=True),
        stun(ALLOCATE_ERROR, txid, [(AttrType.ERROR_CODE, error_code(401, "Unauthorized")),
                                    (AttrType.REALM, realm.encode()), (AttrType.NONCE, nonce)],
             fingerprint=True))
    creds = [(int(AttrType.USERNAME), username.encode()), (int(AttrType.REALM), realm.encode()),
             (int(AttrType.NONCE), nonce)]
    txid = rng.randbytes(12)
    mapped = xor_address("203.0.113.61", clock.trace.client_port)
    clock.exchange(
        stun(ALLOCATE_REQUEST, txid, transport + extra + creds, key=key, fingerprint=True),
        stun(ALLOCATE_SUCCESS, txid, [(AttrType.XOR_RELAYED_ADDRESS,
                                       xor_address(SERVER, relayed_port)),
                                      (AttrType.XOR_MAPPED_ADDRESS, mapped),
                                      (AttrType.LIFETIME, struct.pack(">I", 600)), *reply],
             key=key, fingerprint=True))
    txid = rng.randbytes(12)
    clock.exchange(
        stun(CREATE_PERMISSION_REQUEST, txid,
             [(AttrType.XOR_PEER_ADDRESS, xor_address(*peer)), *creds], key=key,
             fingerprint=True),
        stun(CREATE_PERMISSION_SUCCESS, txid, [], key=key, fingerprint=True))
    txid = rng.randbytes(12)
    clock.exchange(
        stun(CHANNEL_BIND_REQUEST, txid,
             [(AttrType.CHANNEL_NUMBER, struct.pack(">H2x", CHANNEL)),
              (AttrType.XOR_PEER_ADDRESS, xor_address(*peer)), *creds],
             key=key, fingerprint=True),
        stun(CHANNEL_BIND_SUCCESS, txid, [], key=key, fingerprint=True))


def ice_check(rng: random.Random, ufrag: str, password: bytes, *, controlling: bool,
              extra: list[tuple[int, bytes]]) -> tuple[bytes, bytes]:
    """An ICE connectivity check and its answer (RFC 8445 §7.2.2, §7.3): USERNAME,
    PRIORITY, ICE-CONTROLLING/CONTROLLED, USE-CANDIDATE from the controlling agent,
    MESSAGE-INTEGRITY with the peer's password, FINGERPRINT."""
    txid = rng.randbytes(12)
    role = (AttrType.ICE_CONTROLLING if controlling else AttrType.ICE_CONTROLLED,
            rng.randbytes(8))
    attrs = [(int(AttrType.USERNAME), ufrag.encode()), *extra,
             (int(role[0]), role[1]),
             (int(AttrType.PRIORITY), struct.pack(">I", 0x1E7F00FF))]
    if controlling:
        attrs.append((int(AttrType.USE_CANDIDATE), b""))
    req = stun(BINDING_REQUEST, txid, attrs, key=password, fingerprint=True)
    resp = stun(BINDING_SUCCESS, txid,
                [(int(AttrType.XOR_MAPPED_ADDRESS), xor_address("203.0.113.61", 50712))],
                key=password, fingerprint=True)
    return req, resp


# ---------------------------------------------------------------------------
# DTLS 1.2 handshake for DTLS-SRTP (RFC 6347, RFC 5764)


def _dtls_record(ctype: int, epoch: int, seq: int, body: bytes, version: int = 0xFEFD) -> bytes:
    return struct.pack(">BHH", ctype, version, epoch) + seq.to_bytes(6, "big") + \
        struct.pack(">H", len(body)) + body


def _handshake(msg_type: int, msg_seq: int, body: bytes) -> bytes:
    n = len(body)
    return struct.pack(">B", msg_type) + n.to_bytes(3, "big") + struct.pack(">H", msg_seq) + \
        (0).to_bytes(3, "big") + n.to_bytes(3, "big") + body


def _ext(code: int, data: bytes) -> bytes:
    return struct.pack(">HH", code, len(data)) + data


def _certificate(rng: random.Random) -> bytes:
    """A self-signed ECDSA P-256 certificate's size and outer DER shape (WebRTC makes
    one per call); its contents are random, as no one on the path can check them."""
    inner = rng.randbytes(rng.randrange(300, 340))
    der = b"\x30\x82" + struct.pack(">H", len(inner)) + inner
    one = len(der).to_bytes(3, "big") + der
    return len(one).to_bytes(3, "big") + one


def dtls_handshake(rng: random.Random) -> list[tuple[int, bytes]]:
    """A DTLS 1.2 handshake as WebRTC runs it (RFC 6347 §4.2.4 full handshake with
    mutual certificates; use_srtp of RFC 5764 §4.1.1 offering AEAD_AES_128_GCM and
    AES_CM_128_HMAC_SHA1_80; ECDHE with X25519): the client's hello, the server's
    flight, the client's certificate/key exchange/verify/CCS/Finished, the server's
    CCS/Finished. Returns (direction, datagram) in order."""
    srtp = _ext(14, struct.pack(">HHHB", 4, 0x0007, 0x0001, 0))
    groups = _ext(10, struct.pack(">HHHH", 6, 0x001D, 0x0017, 0x0018))
    points = _ext(11, b"\x01\x00")
    sigalgs = _ext(13, struct.pack(">H6H", 12, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501))
    ems = _ext(23, b"")
    reneg = _ext(0xFF01, b"\x00")
    exts = ems + reneg + groups + points + sigalgs + srtp
    suites = struct.pack(">H8H", 16, 0xC02B, 0xC02F, 0xCCA9, 0xCCA8, 0xC009, 0xC013, 0xC00A,
                         0xC014)
    hello = struct.pack(">H", 0xFEFD) + rng.randbytes(32) + b"\x00" + b"\x00" + suites + \
        b"\x01\x00" + struct.pack(">H", len(exts)) + exts
    out = [(UP, _dtls_record(22, 0, 0, _handshake(1, 0, hello), version=0xFEFF))]
    s_exts = ems + reneg + points + _ext(14, struct.pack(">HHB", 2, 0x0007, 0))
    server_hello = struct.pack(">H", 0xFEFD) + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + \
        struct.pack(">HB", 0xC02B, 0) + struct.pack(">H", len(s_exts)) + s_exts
    kx = b"\x03\x00\x1d\x20" + rng.randbytes(32) + struct.pack(">HH", 0x0403, 71) + \
        b"\x30\x45" + rng.randbytes(69)
    cert_req = b"\x01\x40" + struct.pack(">H", 8) + struct.pack(">4H", 0x0403, 0x0804, 0x0401,
                                                                   0x0503) + b"\x00\x00"
    flight = b"".join(_dtls_record(22, 0, i, _handshake(t, i, body)) for i, (t, body) in
                      enumerate([(2, server_hello), (11, _certificate(rng)), (12, kx),
                                 (13, cert_req), (14, b"")]))
    out.append((DOWN, flight))
    ckx = b"\x20" + rng.randbytes(32)
    verify = struct.pack(">HH", 0x0403, 71) + b"\x30\x45" + rng.randbytes(69)
    client = _dtls_record(22, 0, 1, _handshake(11, 1, _certificate(rng))) + \
        _dtls_record(22, 0, 2, _handshake(16, 2, ckx)) + \
        _dtls_record(22, 0, 3, _handshake(15, 3, verify)) + \
        _dtls_record(20, 0, 4, b"\x01") + \
        _dtls_record(22, 1, 0, rng.randbytes(40))  # Finished, AES-GCM: nonce, 24, tag
    out.append((UP, client))
    server = _dtls_record(20, 0, 5, b"\x01") + _dtls_record(22, 1, 0, rng.randbytes(40))
    out.append((DOWN, server))
    return out


# ---------------------------------------------------------------------------
# Media


@dataclass
class Stream:
    """One RTP stream (RFC 3550 §5.1): SSRC, payload type, sequence and timestamp."""

    ssrc: int
    pt: int
    seq: int
    ts: int

    def header(self, step: int, marker: bool, ext: bytes = b"") -> bytes:
        """The header of the next packet; the timestamp moves by ``step`` before it."""
        self.seq = (self.seq + 1) & 0xFFFF
        self.ts = (self.ts + step) & 0xFFFFFFFF
        b0 = RTP_VERSION | (0x10 if ext else 0)
        return struct.pack(">BBHII", b0, (marker << 7) | self.pt, self.seq, self.ts,
                           self.ssrc) + ext


def new_stream(rng: random.Random, pt: int) -> Stream:
    return Stream(rng.getrandbits(32) | 1, pt, rng.randrange(0, 0x8000), rng.getrandbits(31))


def talk_spurts(rng: random.Random, start_us: int, end_us: int,
                starts_talking: bool) -> Callable[[int], bool]:
    """Who talks when: turns of 0.8-2.6 s that alternate between the two parties, so
    each side's voice frames are full-size while it talks and small while it listens."""
    turns: list[tuple[int, bool]] = []
    t, talking = start_us, starts_talking
    while t < end_us:
        turns.append((t, talking))
        t += rng.randrange(800_000, 2_600_000)
        talking = not talking

    def at(t_us: int) -> bool:
        state = turns[0][1]
        for begin, talk in turns:
            if begin > t_us:
                break
            state = talk
        return state

    return at


@dataclass
class Media:
    """How one app sends its call media."""

    audio_pt: int
    audio_step: int
    frame_ms: int = 20
    video_pt: int | None = None
    webrtc_ext: bool = False
    tag: int = SRTP_TAG
    talk: tuple[int, int] = (62, 118)
    """Voice frame sizes while talking (Opus at 24-40 kb/s)."""
    quiet: tuple[int, int] = (6, 14)
    """Voice frame sizes while listening (Opus comfort noise, DTX off)."""
    video_delta: tuple[int, int] = (250, 780)
    video_key: int = 5200
    video_mtu: int = 1080
    rtcp: bool = False
    """SRTCP sender reports on the same 5-tuple (RTP/RTCP multiplexing, RFC 5761)."""
    feedback_ms: int | None = None
    """Transport-wide congestion control feedback every so many milliseconds (WebRTC)."""


class MediaSender:
    """Writes one direction's audio (and video) packets of a call into a trace."""

    def __init__(self, trace: Trace, rng: random.Random, direction: int, media: Media,
                 wrap: Callable[[bytes], bytes], talking: Callable[[int], bool]) -> None:
        self.trace, self.rng, self.direction, self.media = trace, rng, direction, media
        self.wrap, self.talking = wrap, talking
        self.audio = new_stream(rng, media.audio_pt)
        self.video = new_stream(rng, media.video_pt) if media.video_pt is not None else None
        self.twcc = rng.randrange(0, 0x8000)
        self.last = -1

    def _ext(self, audio_level: int | None) -> bytes:
        if not self.media.webrtc_ext:
            return b""
        self.twcc = (self.twcc + 1) & 0xFFFF
        elems = b""
        if audio_level is not None:
            elems += bytes([(EXT_AUDIO_LEVEL << 4) | 0, audio_level])
        elems += bytes([(EXT_TRANSPORT_CC << 4) | 1]) + struct.pack(">H", self.twcc)
        elems += bytes(-len(elems) % 4)
        return struct.pack(">HH", ONE_BYTE_EXT, len(elems) // 4) + elems

    def _send(self, t_us: int, payload: bytes) -> None:
        t_us = max(t_us, self.last + 1)
        self.last = t_us
        self.trace.add(t_us, self.direction, self.wrap(payload))

    def _delay(self) -> int:
        """Where the capture is: the client's packets leave on time (scheduling noise of a
        few tenths of a millisecond), the server's arrive one path delay later with
        jitter."""
        if self.direction == UP:
            return self.rng.randrange(0, 400)
        return _PATH_DELAY_US + self.rng.randrange(0, 4_000)

    def run(self, start_us: int, end_us: int) -> None:
        m = self.media
        frame_us = m.frame_ms * 1000
        n_audio = (end_us - start_us) // frame_us
        events: list[tuple[int, int, int]] = [(start_us + i * frame_us, 0, i)
                                              for i in range(n_audio)]
        if self.video is not None:
            video_start = start_us + 150_000
            n_video = (end_us - video_start) * 15 // 1_000_000
            events += [(video_start + i * 1_000_000 // 15, 1, i) for i in range(n_video)]
        events.sort()
        for t, kind, i in events:
            if kind == 0:
                talking = self.talking(t)
                size = self.rng.randrange(*(m.talk if talking else m.quiet))
                level = self.rng.randrange(20, 50) if talking else self.rng.randrange(90, 127)
                head = self.audio.header(m.audio_step if i else 0, i == 0, self._ext(level))
                self._send(t + self._delay(), head + self.rng.randbytes(size + m.tag))
            else:
                assert self.video is not None
                size = m.video_key if i == 0 or i % 90 == 0 else \
                    self.rng.randrange(*m.video_delta)
                parts = max(1, -(-size // m.video_mtu))
                base = t + self._delay()
                for k in range(parts):
                    chunk = size // parts + (1 if k < size % parts else 0)
                    head = self.video.header(VIDEO_CLOCK_STEP if i and not k else 0,
                                             k == parts - 1, self._ext(None))
                    # VP8/H.264 payload descriptor and data, encrypted: random bytes
                    self._send(base + k * 180, head + self.rng.randbytes(chunk + m.tag))


def srtcp(rng: random.Random, first: bytes, ssrc: int, body_len: int, index: int,
          tag: int) -> bytes:
    """An SRTCP packet (RFC 3711 §3.4): the first RTCP header and sender SSRC in clear,
    the rest of the compound packet encrypted, the E flag with the 31-bit SRTCP index,
    the authentication tag."""
    return first + struct.pack(">I", ssrc) + rng.randbytes(body_len) + \
        struct.pack(">I", 0x80000000 | index) + rng.randbytes(tag)


def rtcp_flow(trace: Trace, rng: random.Random, sender: MediaSender, start_us: int,
              end_us: int, media: Media, wrap: Callable[[bytes], bytes]) -> None:
    """One direction's SRTCP: a sender report with one report block and an SDES CNAME
    at randomised intervals around 1 s (RFC 3550 §6.3.1), and, where asked, transport-wide
    congestion feedback (RTPFB, FMT 15) on its own period."""
    index = 0
    t = start_us + rng.randrange(300_000, 700_000)
    while t < end_us:
        index += 1
        # SR: 28 bytes + one 24-byte report block; SDES with a 16-character CNAME: 24 bytes
        first = struct.pack(">BBH", 0x81, 200, (28 + 24) // 4 - 1)
        trace.add(t + sender._delay(), sender.direction,
                  wrap(srtcp(rng, first, sender.audio.ssrc, 52 + 24 - 8, index, media.tag)))
        t += rng.randrange(500_000, 1_500_000)
    if media.feedback_ms is None:
        return
    t = start_us + rng.randrange(50_000, 150_000)
    while t < end_us:
        index += 1
        n = 12 + 8 + 2 * rng.randrange(2, 6) + rng.randrange(4, 14)
        n += -n % 4
        first = struct.pack(">BBH", 0x8F, 205, n // 4 - 1)
        trace.add(t + sender._delay(), sender.direction,
                  wrap(srtcp(rng, first, sender.audio.ssrc, n - 8, index, media.tag)))
        t += media.feedback_ms * 1000 + rng.randrange(-20_000, 20_000)


def call_media(trace: Trace, rng: random.Random, start_us: int, end_us: int, media: Media,
               wrap: Callable[[bytes], bytes] = lambda b: b) -> None:
    """Both directions of a call's media from ``start_us`` to ``end_us``."""
    talking = talk_spurts(rng, start_us, end_us, starts_talking=True)
    up = MediaSender(trace, rng, UP, media, wrap, talking)
    up.run(start_us, end_us)
    down = MediaSender(trace, rng, DOWN, media, wrap, lambda t: not talking(t))
    down.run(start_us, end_us)
    if media.rtcp:
        for sender in (up, down):
            rtcp_flow(trace, rng, sender, start_us, end_us, media, wrap)


END_US = 8_000_000
"""Where each trace's media stops: 8 s after the first packet."""


# ---------------------------------------------------------------------------
# The traces


STUN_COOKIE = struct.pack(">I", MAGIC_COOKIE)
CHANNEL_BYTES = struct.pack(">H", CHANNEL)


def _sign_turn(tr: Trace, realm: str) -> None:
    tr.sign("STUN magic cookie (RFC 8489 §5)", 4, STUN_COOKIE)
    tr.sign("TURN REALM naming the app", None, realm.encode())
    tr.sign("TURN ChannelData on channel 0x4000 (RFC 8656 §12.4)", 0, CHANNEL_BYTES)


def make_whatsapp() -> Trace:
    """WhatsApp: its relay exchange (Binding requests with its private attributes, its
    own request/response types) and SRTP with Opus voice and H.264 video on the same
    5-tuple, the relay answering on UDP 3478."""
    tr = Trace("whatsapp.pcap", "whatsapp", "udp", 47012, 3478,
               "WhatsApp call through a relay on UDP 3478: two Binding requests carrying "
               "WhatsApp's attributes 0x4000/0x4001/0x4004 answered with XOR-MAPPED-ADDRESS "
               "and 0x4002, its own request/response 0x0800/0x0801 with 0x4003, then SRTP "
               "(Opus PT 120 at 20 ms, H.264 PT 97 at 15 frames/s, one SSRC each per "
               "direction), SRTCP sender reports about once a second each way (RTP/RTCP "
               "multiplexed) and a Binding keep-alive every 2 s",
               "STUN RFC 8489; WhatsApp's message types and attributes as in the classifier's "
               "tables (classifier.dpi.stun, from nDPI's stun.c); SRTP RFC 3711; Opus RTP "
               "RFC 7587; H.264 RTP RFC 6184")
    rng = random.Random(tr.name)
    clock = Clock(tr, rng)
    token = rng.randbytes(16)
    tr.sign("STUN magic cookie (RFC 8489 §5)", 4, STUN_COOKIE)
    tr.sign("WhatsApp STUN request type 0x0800", 0, struct.pack(">H", WA_REQUEST))
    tr.sign("WhatsApp STUN attribute 0x4000 first", 20, struct.pack(">H", WA_TOKEN))

    def binding() -> tuple[bytes, bytes]:
        txid = rng.randbytes(12)
        return (stun(BINDING_REQUEST, txid, [(WA_TOKEN, token),
                                             (WA_VERSION, struct.pack(">I", 3)),
                                             (WA_FLAGS, b"\x00\x01")]),
                stun(BINDING_SUCCESS, txid, [(AttrType.XOR_MAPPED_ADDRESS,
                                              xor_address("203.0.113.61", tr.client_port)),
                                             (WA_ROUTE, rng.randbytes(8))]))

    for _ in range(2):
        clock.exchange(*binding(), then_us=30_000)
    txid = rng.randbytes(12)
    clock.exchange(stun(WA_REQUEST, txid, [(WA_CHECK, rng.randbytes(4))]),
                   stun(WA_RESPONSE, txid, [(WA_CHECK, rng.randbytes(4))]), then_us=20_000)
    start = clock.t
    call_media(tr, rng, start, END_US, Media(audio_pt=120, audio_step=OPUS_CLOCK_STEP,
                                             video_pt=97, rtcp=True))
    for k in range(1, 4):
        clock.t = start + k * 2_000_000 + 7_000
        clock.exchange(*binding())
    return tr


def _webrtc_relayed(tr: Trace, rng: random.Random, realm: str, media: Media) -> None:
    """A WebRTC call through a TURN relay: allocation, ICE checks and DTLS-SRTP in
    ChannelData, a consent check (RFC 7675) every ~4 s."""
    _sign_turn(tr, realm)
    clock = Clock(tr, rng)
    peer = ("203.0.113.140", 51820)
    user = f"{1767229200 + rng.randrange(0, 86400)}:{rng.randbytes(6).hex()}"
    turn_allocation(clock, realm=realm, username=user, password=rng.randbytes(20).hex(),
                    relayed_port=40000 + rng.randrange(0, 20000), peer=peer, extra=[])
    ice_pwd = rng.randbytes(24).hex().encode()
    goog = [(int(AttrType.GOOG_NETWORK_INFO), struct.pack(">HH", 1, 10))]
    ufrag = f"{rng.randbytes(2).hex()}:{rng.randbytes(2).hex()}"
    req, resp = ice_check(rng, ufrag, ice_pwd, controlling=True, extra=goog)
    clock.exchange(channel_data(req), channel_data(resp), then_us=3_000)
    for d, datagram in dtls_handshake(rng):
        if d == UP:
            clock.trace.add(clock.t, UP, channel_data(datagram))
        else:
            clock.t += 2 * _PATH_DELAY_US + rng.randrange(0, 2_000)
            clock.trace.add(clock.t, DOWN, channel_data(datagram))
            clock.t += 1_500
    start = clock.t + 4_000
    call_media(tr, rng, start, END_US, media, wrap=channel_data)
    for k in (1, 2):
        clock.t = start + k * 4_000_000 - 11_000
        req, resp = ice_check(rng, ufrag, ice_pwd, controlling=True, extra=goog)
        clock.exchange(channel_data(req), channel_data(resp))


def make_messenger() -> Trace:
    tr = Trace("messenger.pcap", "messenger", "udp", 52431, 3478,
               "Messenger call through Meta's TURN relay on UDP 3478: Allocate, 401 with "
               f"REALM {realm_of('messenger')!r} and a NONCE, authenticated Allocate, "
               "CreatePermission and ChannelBind; then in ChannelData: an ICE check, the "
               "DTLS 1.2 handshake (use_srtp), SRTP with Opus PT 111 and VP8 PT 96 at 15 "
               "frames/s (RFC 8285 audio-level and transport-wide-cc extensions, AES-GCM "
               "tags), SRTCP sender reports and transport-wide congestion feedback every "
               "~200 ms each way, and ICE consent checks",
               "TURN RFC 8656; ICE RFC 8445, consent RFC 7675; DTLS-SRTP RFC 5764 over DTLS "
               "1.2 RFC 6347; SRTP AES-GCM RFC 7714; Opus RTP RFC 7587; VP8 RTP RFC 7741; "
               "the REALM of Messenger's relays as the classifier reads it "
               "(classifier.engine.MESSENGER_TURN_REALM)")
    rng = random.Random(tr.name)
    _webrtc_relayed(tr, rng, realm_of("messenger"),
                    Media(audio_pt=111, audio_step=OPUS_CLOCK_STEP, video_pt=96,
                          webrtc_ext=True, tag=GCM_TAG, rtcp=True, feedback_ms=200))
    return tr


def make_signal() -> Trace:
    tr = Trace("signal.pcap", "signal", "udp", 53602, 3478,
               "Signal call through Signal's TURN relay on UDP 3478: Allocate, 401 with "
               f"REALM {realm_of('signal')!r}, authenticated Allocate, CreatePermission, "
               "ChannelBind; then in ChannelData: an ICE check, the DTLS 1.2 handshake "
               "(use_srtp), SRTP with Opus PT 102 and VP8 PT 108 at 15 frames/s (RFC 8285 "
               "extensions, AES-GCM tags), SRTCP sender reports and transport-wide "
               "congestion feedback every ~200 ms each way, and ICE consent checks",
               "TURN RFC 8656; ICE RFC 8445, consent RFC 7675; DTLS-SRTP RFC 5764; RingRTC "
               "(WebRTC) media; Signal's TURN REALM as in the classifier's table "
               "(classifier.engine.REALM_APPS, from nDPI's stun.c)")
    rng = random.Random(tr.name)
    _webrtc_relayed(tr, rng, realm_of("signal"),
                    Media(audio_pt=102, audio_step=OPUS_CLOCK_STEP, video_pt=108,
                          webrtc_ext=True, tag=GCM_TAG, rtcp=True, feedback_ms=200))
    return tr


def make_viber() -> Trace:
    tr = Trace("viber.pcap", "viber", "udp", 51005, 3478,
               "Viber call through Viber's TURN relay on UDP 3478: Allocate, 401 with REALM "
               f"{realm_of('viber')!r}, authenticated Allocate, CreatePermission, ChannelBind; "
               "then SRTP in ChannelData with voice (PT 106, 20 ms at 16 kHz) and video "
               "(PT 97 at 15 frames/s) and SRTCP sender reports",
               "TURN RFC 8656; SRTP RFC 3711; the REALM containing 'viber' as in the "
               "classifier's table (classifier.engine.REALM_APPS, from nDPI's stun.c)")
    rng = random.Random(tr.name)
    clock = Clock(tr, rng)
    _sign_turn(tr, realm_of("viber"))
    turn_allocation(clock, realm=realm_of("viber"),
                    username=f"{1767229200 + rng.randrange(0, 86400)}:{rng.randbytes(4).hex()}",
                    password=rng.randbytes(16).hex(), relayed_port=50112,
                    peer=("203.0.113.150", 40022), extra=[])
    call_media(tr, rng, clock.t + 10_000, END_US,
               Media(audio_pt=106, audio_step=320, video_pt=97, rtcp=True), wrap=channel_data)
    return tr


def _teams_relay(tr: Trace, rng: random.Random, *, tcp: bool) -> None:
    """Teams: [MS-TURN] allocation with Microsoft's attributes on the transport relay,
    ICE checks with [MS-ICE2] attributes and SRTP (SILK wideband, PT 104) in ChannelData."""
    clock = Clock(tr, rng)
    tr.sign("STUN magic cookie (RFC 8489 §5)", 4, STUN_COOKIE)
    tr.sign("MS-SERVICE-QUALITY attribute ([MS-TURN])", None,
            struct.pack(">HH", MS_SERVICE_QUALITY, 4))
    tr.sign("TURN ChannelData on channel 0x4000 (RFC 8656 §12.4)", 0, CHANNEL_BYTES)
    wrap: Callable[[bytes], bytes] = (lambda b: channel_data(b, tcp=True)) if tcp else \
        channel_data
    quality = [(MS_VERSION, struct.pack(">I", 6)),
               (MS_SERVICE_QUALITY, struct.pack(">HH", 1, 0))]  # stream type audio, best
    turn_allocation(clock, realm="teams.microsoft.com", username=rng.randbytes(24).hex(),
                    password=rng.randbytes(16).hex(), relayed_port=51000 + rng.randrange(900),
                    peer=("203.0.113.170", 50012), extra=quality, reply=(quality[0],))
    pwd = rng.randbytes(16).hex().encode()
    ms = [(MS_IMPLEMENTATION_VERSION, struct.pack(">I", 2)),
          (MS_CANDIDATE_IDENTIFIER, rng.randbytes(4))]
    for _ in range(2):
        req, resp = ice_check(rng, f"{rng.randbytes(4).hex()}:{rng.randbytes(4).hex()}", pwd,
                              controlling=True, extra=ms)
        clock.exchange(wrap(req), wrap(resp), then_us=25_000)
    call_media(tr, rng, clock.t + 5_000, END_US,
               Media(audio_pt=104, audio_step=320, talk=(40, 76), quiet=(5, 12), rtcp=True),
               wrap=wrap)


def make_teams() -> Trace:
    tr = Trace("teams.pcap", "teams", "udp", 50012, 3479,
               "Teams audio through a Teams transport relay on UDP 3479 (the relay's audio "
               "port): Allocate with MS-VERSION and MS-SERVICE-QUALITY, 401 with a REALM naming "
               "the provider's domain, authenticated Allocate answered with MS-VERSION, "
               "CreatePermission, ChannelBind; ICE checks with MS-IMPLEMENTATION-VERSION and "
               "MS-CANDIDATE-IDENTIFIER and SRTP voice "
               "(SILK wideband PT 104, 16 kHz, 20 ms) and SRTCP in ChannelData; Teams sends "
               "video on its own relay port (3480), so this flow carries the voice",
               "[MS-TURN] (MS-VERSION, MS-SERVICE-QUALITY), [MS-ICE2] "
               "(MS-IMPLEMENTATION-VERSION, MS-CANDIDATE-IDENTIFIER) with the attribute "
               "numbers of the classifier's table (classifier.dpi.stun.VENDOR_ATTRIBUTES); "
               "Microsoft 365 network connectivity principles (relay UDP 3478-3481, TCP 443 "
               "fallback); TURN RFC 8656; SRTP RFC 3711")
    _teams_relay(tr, random.Random(tr.name), tcp=False)
    return tr


def make_teams_tcp() -> Trace:
    tr = Trace("teams-tcp.pcap", "teams", "tcp", 50122, 443,
               "Teams' TCP fallback: the same relay exchange as teams.pcap as TURN over TCP "
               "443 (STUN messages back to back, ChannelData padded to 4 bytes), one "
               "message per segment, after the TCP handshake",
               "[MS-TURN], [MS-ICE2]; TURN over TCP RFC 8656 §12.5; Microsoft 365 network "
               "connectivity principles (TCP 443 when UDP 3478-3481 is blocked)")
    _teams_relay(tr, random.Random(tr.name), tcp=True)
    return tr


def make_zoom() -> Trace:
    tr = Trace("zoom.pcap", "zoom", "udp", 60344, 8801,
               "Zoom audio with a Zoom multimedia router on UDP 8801: the SFU hellos "
               "(01 00 03 / 02 00 03), keep-alives (types 3 and 4, 13 bytes), then type-5 "
               "packets: the 8-byte SFU header and the audio media header (type 15) with "
               "the RTP packet behind it (PT 112, 16 kHz, 20 ms); the Zoom client opens one "
               "connection per media type, so this flow carries the voice and the video "
               "would be a flow of its own",
               "the SFU encapsulation and media header as in the classifier's table "
               "(classifier.dpi.framings: ZOOM_MEDIA_TYPES, ZOOM_SFU_HEADER_LEN, from the "
               "Wireshark Zoom dissector of Princeton's zoom-analysis and nDPI's zoom.c); "
               "Zoom's 'Connection Process' white paper (April 2020: one connection per media "
               "type to the multimedia router, UDP 8801 first) and firewall rules (UDP "
               "8801-8810)")
    rng = random.Random(tr.name)
    clock = Clock(tr, rng)
    audio_type = next(t for t, (k, _) in ZOOM_MEDIA_TYPES.items() if k is ZoomMediaKind.AUDIO)
    rtp_at = ZOOM_MEDIA_TYPES[audio_type][1]
    seq = {UP: rng.randrange(0, 0x8000), DOWN: rng.randrange(0, 0x8000)}
    direction_byte = {UP: 0, DOWN: 4}
    tr.sign("Zoom SFU client hello", 0, bytes([ZoomSfuType.CLIENT_HELLO, 0, 3]))
    tr.sign("Zoom SFU media packet (type 5)", 0, bytes([ZoomSfuType.MEDIA]))
    tr.sign("Zoom audio media header after the SFU header", ZOOM_SFU_HEADER_LEN,
            bytes([audio_type]))

    def hello(kind: int) -> bytes:
        return bytes([kind, 0x00, 0x03]) + rng.randbytes(rng.randrange(60, 90))

    clock.exchange(hello(ZoomSfuType.CLIENT_HELLO), hello(ZoomSfuType.SERVER_HELLO))

    def keepalive(kind: int) -> bytes:
        return bytes([kind, 0, 0, 0]) + rng.randbytes(ZOOM_KEEPALIVE_LEN - 4)

    clock.exchange(keepalive(ZoomSfuType.KEEPALIVE_REQ), keepalive(ZoomSfuType.KEEPALIVE_RSP),
                   then_us=10_000)
    start = clock.t

    def sfu(direction: int) -> Callable[[bytes], bytes]:
        def wrap(rtp: bytes) -> bytes:
            seq[direction] = (seq[direction] + 1) & 0xFFFF
            head = struct.pack(">BH", ZoomSfuType.MEDIA, seq[direction]) + rng.randbytes(4) + \
                bytes([direction_byte[direction]])
            assert len(head) == ZOOM_SFU_HEADER_LEN
            media_head = bytes([audio_type]) + struct.pack(">H", seq[direction]) + \
                rng.randbytes(rtp_at - 3)
            return head + media_head + rtp
        return wrap

    media = Media(audio_pt=112, audio_step=320, tag=4, talk=(48, 90), quiet=(8, 16))
    talking = talk_spurts(rng, start, END_US, starts_talking=True)
    MediaSender(tr, rng, UP, media, sfu(UP), talking).run(start, END_US)
    MediaSender(tr, rng, DOWN, media, sfu(DOWN), lambda t: not talking(t)).run(start, END_US)
    for k in range(1, 4):
        clock.t = start + k * 2_000_000 + 3_000
        clock.exchange(keepalive(ZoomSfuType.KEEPALIVE_REQ),
                       keepalive(ZoomSfuType.KEEPALIVE_RSP))
    return tr


def make_telegram() -> Trace:
    tr = Trace("telegram.pcap", "telegram", "udp", 41522, 596,
               "Telegram call through a Telegram relay (reflector) on UDP 596: relay pings "
               "(the call's 16-byte peer tag, twelve 0xFF bytes, int32 -2, a query id) "
               "answered with the relay's self-info (peer tag, twelve 0xFF bytes, TL id "
               "0xc01572c7, date, query id, the client's address and port), then encrypted "
               "packets (peer tag, 16-byte message key, AES-IGE ciphertext) carrying Opus "
               "voice in 60 ms frames, a relay ping every 2 s; libtgvoip's relay protocol "
               "carries voice calls (Telegram's video calls came with its WebRTC-based "
               "tgcalls), so this flow has no video",
               "libtgvoip's relay framing (VoIPController: SendRelayPings, "
               "udpReflectorSelfInfo) with the marker of the classifier's table "
               "(classifier.dpi.framings.TELEGRAM_RELAY_MARKER, TELEGRAM_PEER_TAG_LEN, from "
               "nDPI's telegram.c); Telegram's relays on UDP 500-600")
    rng = random.Random(tr.name)
    clock = Clock(tr, rng)
    tag = rng.randbytes(TELEGRAM_PEER_TAG_LEN)
    tr.sign("Telegram relay marker: twelve 0xFF bytes after the peer tag",
            TELEGRAM_PEER_TAG_LEN, TELEGRAM_RELAY_MARKER)
    tr.sign("the call's peer tag", 0, tag)
    date = 1767225600

    def ping() -> tuple[bytes, bytes]:
        qid = rng.randbytes(8)
        req = tag + TELEGRAM_RELAY_MARKER + TG_PING_TAIL + qid
        resp = tag + TELEGRAM_RELAY_MARKER + struct.pack("<II", TG_SELF_INFO, date) + qid + \
            bytes(10) + b"\xff\xff" + _addr("203.0.113.61") + struct.pack("<I",
                                                                          tr.client_port)
        return req, resp

    for _ in range(2):
        clock.exchange(*ping(), then_us=15_000)
    start = clock.t

    def relay(data: bytes) -> bytes:
        # the RTP-like inner packet is encrypted as a whole: only its size shows
        n = len(data) + 4  # inner length prefix
        return tag + rng.randbytes(TG_MSG_KEY_LEN) + rng.randbytes(n + (-n % 16))

    call_media(tr, rng, start, END_US,
               Media(audio_pt=111, audio_step=2880, frame_ms=60, talk=(150, 230),
                     quiet=(20, 40), tag=0), wrap=relay)
    for k in range(1, 4):
        clock.t = start + k * 2_000_000 + 5_000
        clock.exchange(*ping())
    return tr


def make_sip() -> Trace:
    tr = Trace("sip.pcap", "sip", "udp", 5060, 5060,
               "SIP call with a provider's session border controller on UDP 5060: INVITE "
               "with SDP, 100 Trying, 180 Ringing, 200 OK with SDP, ACK, then G.711 A-law "
               "RTP (PT 8, 20 ms, 160 bytes) both ways, BYE and 200 OK; the SDP on both "
               "sides names the signalling port for media, so the whole call is one 5-tuple",
               "SIP RFC 3261 §7, §13; SDP offer/answer RFC 3264, RFC 4566; RTP RFC 3550 with "
               "the static payload types of RFC 3551 (PT 8 PCMA, PT 101 telephone-event "
               "RFC 4733); the classifier's SIP start lines (classifier.dpi.sip.START_LINES)")
    rng = random.Random(tr.name)
    clock = Clock(tr, rng)
    tr.sign("SIP INVITE request line", 0, b"INVITE sip:")
    tr.sign("SIP status line", 0, b"SIP/2.0 ")
    tr.sign("RTP version 2, PCMA (PT 8)", 0, b"\x80\x08")
    call_id = f"{rng.randbytes(8).hex()}@{CLIENT}"
    tag_a, tag_b = rng.randbytes(4).hex(), rng.randbytes(4).hex()
    branch = "z9hG4bK" + rng.randbytes(6).hex()
    caller, callee = "sip:+12025550143@sip.example.net", "sip:+12025550188@sip.example.net"

    def sdp(host: str, sess: int) -> str:
        return ("v=0\r\n"
                f"o=- {sess} {sess} IN IP4 {host}\r\n"
                "s=-\r\n"
                f"c=IN IP4 {host}\r\n"
                "t=0 0\r\n"
                "m=audio 5060 RTP/AVP 8 0 101\r\n"
                "a=rtpmap:8 PCMA/8000\r\n"
                "a=rtpmap:0 PCMU/8000\r\n"
                "a=rtpmap:101 telephone-event/8000\r\n"
                "a=fmtp:101 0-16\r\n"
                "a=ptime:20\r\n"
                "a=sendrecv\r\n")

    def msg(start: str, *, cseq: str, to_tag: bool, via_branch: str, body: str = "",
            contact: str | None = None, extra: str = "") -> bytes:
        head = (f"{start}\r\n"
                f"Via: SIP/2.0/UDP {CLIENT}:5060;branch={via_branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <{caller}>;tag={tag_a}\r\n"
                f"To: <{callee}>" + (f";tag={tag_b}" if to_tag else "") + "\r\n"
                f"Call-ID: {call_id}\r\n"
                f"CSeq: {cseq}\r\n")
        if contact:
            head += f"Contact: <{contact}>\r\n"
        head += extra
        if body:
            head += "Content-Type: application/sdp\r\n"
        head += f"Content-Length: {len(body.encode())}\r\n\r\n"
        out = (head + body).encode()
        assert out.startswith(START_LINES), start  # what the classifier reads as SIP
        return out

    agent = "User-Agent: Linphone/5.2.0 (belle-sip/5.2.0)\r\n"
    invite = msg(f"INVITE {callee} SIP/2.0", cseq="20 INVITE", to_tag=False, via_branch=branch,
                 body=sdp(CLIENT, rng.randrange(10**9)), contact=f"sip:+12025550143@{CLIENT}",
                 extra=agent + "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n")
    trying = msg("SIP/2.0 100 Trying", cseq="20 INVITE", to_tag=False, via_branch=branch)
    clock.exchange(invite, trying, then_us=0)
    clock.t += 1_400_000  # ringing, the other side picks up
    ringing = msg("SIP/2.0 180 Ringing", cseq="20 INVITE", to_tag=True, via_branch=branch,
                  contact=f"sip:+12025550188@{SERVER}")
    tr.add(clock.t - 1_000_000, DOWN, ringing)
    ok = msg("SIP/2.0 200 OK", cseq="20 INVITE", to_tag=True, via_branch=branch,
             body=sdp(SERVER, rng.randrange(10**9)), contact=f"sip:+12025550188@{SERVER}")
    ack = msg(f"ACK sip:+12025550188@{SERVER} SIP/2.0", cseq="20 ACK", to_tag=True,
              via_branch="z9hG4bK" + rng.randbytes(6).hex())
    tr.add(clock.t, DOWN, ok)
    tr.add(clock.t + 2_000, UP, ack)
    start = clock.t + 20_000
    end = END_US - 300_000
    call_media(tr, rng, start, end, Media(audio_pt=8, audio_step=160, tag=0, talk=(160, 161),
                                          quiet=(160, 161)))
    bye_branch = "z9hG4bK" + rng.randbytes(6).hex()
    clock.t = end + 60_000
    clock.exchange(msg(f"BYE sip:+12025550188@{SERVER} SIP/2.0", cseq="21 BYE", to_tag=True,
                       via_branch=bye_branch, extra=agent),
                   msg("SIP/2.0 200 OK", cseq="21 BYE", to_tag=True, via_branch=bye_branch))
    return tr


MAKERS: tuple[Callable[[], Trace], ...] = (
    make_whatsapp, make_messenger, make_teams, make_teams_tcp, make_zoom, make_signal,
    make_telegram, make_viber, make_sip)


def _signature(packets: list[tuple[int, int, bytes]], what: str, offset: int | None,
               value: bytes) -> dict[str, object]:
    """A signature as the manifest lists it, with how many packets carry it each way."""
    def has(p: bytes) -> bool:
        return value in p if offset is None else p[offset:offset + len(value)] == value
    return {"what": what, "offset": offset, "hex": value.hex(),
            "up_packets": sum(has(p) for _, d, p in packets if d == UP),
            "down_packets": sum(has(p) for _, d, p in packets if d == DOWN)}


def build(outdir: Path) -> dict[str, dict[str, object]]:
    """Write every trace into ``outdir`` and return the manifest."""
    outdir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, dict[str, object]] = {}
    for make in MAKERS:
        tr = make()
        data = pcap_bytes(tr)
        packets = tr.ordered()
        first, last = packets[0], packets[-1]
        if first[1] != UP:
            raise ValueError(f"{tr.name}: the first packet is not the client's")
        for d in (UP, DOWN):
            payloads = [p for _, dd, p in packets if dd == d]
            if len(set(payloads)) != len(payloads):
                raise ValueError(f"{tr.name}: repeated payloads in direction {d}")
        duration = (last[0] - first[0]) / 1e6
        if not DURATION_S[0] <= duration <= DURATION_S[1] or len(data) > MAX_BYTES:
            raise ValueError(f"{tr.name}: {duration:.2f} s, {len(data)} bytes")
        (outdir / tr.name).write_bytes(data)
        manifest[tr.name] = {
            "app": tr.app, "transport": tr.transport,
            "sha256": hashlib.sha256(data).hexdigest(),
            "packets": len(packets), "duration_s": round(duration, 6), "bytes": len(data),
            "client_port": tr.client_port, "server_port": tr.server_port,
            "signatures": [_signature(packets, *sig) for sig in tr.signatures],
            "what": tr.what, "follows": tr.follows,
        }
    (outdir / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def main(argv: list[str]) -> None:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    for name, entry in build(outdir).items():
        print(f"{name}: {entry['packets']} packets, {entry['bytes']} bytes, "
              f"{entry['duration_s']} s")


if __name__ == "__main__":
    main(sys.argv)
