#!/usr/bin/env python3
"""Build the per-app captures in ``captures/apps/`` and their ``README.md``.

Run from the repository root: ``python captures/make_app_captures.py [OUTDIR]``
(default: ``captures/apps`` next to this script). Every run writes the same
bytes: timestamps are fixed and every random payload comes from a generator
seeded with the capture's name.

Each capture stands for one app the shared reference captures do not cover
(or cover without a call), and is built only from what the vendor or a public
reference documents about that app: its host names (asked in DNS, sent as TLS
SNI or HTTP Host), its published address space and ports, and for calls the
STUN/TURN exchanges of RFC 8489 / RFC 8656 / RFC 8445 followed by SRTP-like
media (RTP header of RFC 3550 §5.1, stable SSRC, 20 ms packets). Nothing in
them is keyed to a rule written for this file: the classifier must name them
with its general rules (hostname table, owner table, STUN REALM, cross-flow
call peers, RTP statistics). Addresses outside an app's published space come
from the documentation ranges of RFC 5737.

The packet helpers (Ethernet, IPv4, UDP, TCP sessions, DNS, TLS ClientHello,
RTP header, pcap writer) are those of ``make_captures.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from make_captures import (
    ORIG,
    RESP,
    STUN_COOKIE,
    Capture,
    Flow,
    Tcp,
    at,
    dns,
    eth,
    ntp,
    pad4,
    rtp,
    send_udp,
    tcp_session,
    tls_client_hello,
    tls_server_flight,
    write_pcap,
    xor_mapped,
)

PHONE = "192.168.1.23"
"""The capturing phone on its LAN."""
GATEWAY = "192.168.1.1"
"""The LAN's router and DNS resolver."""
PUBLIC = "203.0.113.77"
"""The phone's address after NAT (RFC 5737 documentation range)."""
PEER = "198.51.100.44"
"""The other party's public address (RFC 5737 documentation range)."""

# STUN/TURN message types: method and class bits, RFC 8489 §5 and §18.2, RFC 8656 §17
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
ALLOCATE_REQUEST = 0x0003
ALLOCATE_SUCCESS = 0x0103
ALLOCATE_ERROR = 0x0113
CHANNEL_BIND_REQUEST = 0x0009
CHANNEL_BIND_SUCCESS = 0x0109

# STUN attributes, RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16.1
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
CHANNEL_NUMBER = 0x000C
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
XOR_MAPPED_ADDRESS = 0x0020
PRIORITY = 0x0024
SOFTWARE = 0x8022
FINGERPRINT = 0x8028
ICE_CONTROLLING = 0x802A

FINGERPRINT_XOR = 0x5354554E
"""RFC 8489 §14.7: the CRC-32 of FINGERPRINT is XORed with this."""
CHANNEL = 0x4000
"""First TURN channel number, RFC 8656 §12."""
UDP_PROTO = 17
"""REQUESTED-TRANSPORT value for UDP (an IANA protocol number), RFC 8656 §18.1."""


# ---------------------------------------------------------------------------
# STUN, TURN and media builders


def attr(code: int, value: bytes) -> bytes:
    """One STUN attribute: type, length, value padded to 4 bytes (RFC 8489 §14)."""
    return struct.pack(">HH", code, len(value)) + pad4(value)


def stun_message(msg_type: int, txid: bytes, attrs: list[tuple[int, bytes]], *,
                 key: bytes | None = None, fingerprint: bool = False) -> bytes:
    """A STUN message, with MESSAGE-INTEGRITY (RFC 8489 §14.5: HMAC-SHA1 over the message
    up to the attribute, the header length already counting it) and FINGERPRINT (§14.7:
    CRC-32 of the message up to the attribute, XOR 0x5354554e) when asked."""
    body = b"".join(attr(c, v) for c, v in attrs)
    if key is not None:
        head = struct.pack(">HHI", msg_type, len(body) + 24, STUN_COOKIE) + txid
        body += attr(MESSAGE_INTEGRITY, hmac.new(key, head + body, hashlib.sha1).digest())
    if fingerprint:
        head = struct.pack(">HHI", msg_type, len(body) + 8, STUN_COOKIE) + txid
        body += attr(FINGERPRINT, struct.pack(">I", zlib.crc32(head + body) ^ FINGERPRINT_XOR))
    return struct.pack(">HHI", msg_type, len(body), STUN_COOKIE) + txid + body


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """Long-term credential key, RFC 8489 §9.2.2: MD5(username ":" realm ":" password)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


def error_code(code: int, phrase: str) -> bytes:
    """ERROR-CODE value, RFC 8489 §14.8: class (hundreds) and number, then the phrase."""
    return struct.pack(">HBB", 0, code // 100, code % 100) + phrase.encode()


def channel_data(channel: int, data: bytes) -> bytes:
    """TURN ChannelData message, RFC 8656 §12.4 (no padding over UDP)."""
    return struct.pack(">HH", channel, len(data)) + data


Wrap = Callable[[bytes], bytes]


def plain(data: bytes) -> bytes:
    return data


@dataclass(frozen=True)
class Voice:
    """One direction of a voice stream: SSRC, payload type and RTP clock step per packet."""

    ssrc: int
    pt: int
    step: int


def voice(cap: Capture, flow: Flow, t0: Fraction, seconds: Fraction, rng: random.Random,
          out: Voice, back: Voice, *, wrap: Wrap = plain, delay: Fraction = Fraction(37, 1000),
          size: tuple[int, int] = (28, 40)) -> Fraction:
    """Two-way SRTP-like voice on ``flow``: one RTP packet every 20 ms each way (RFC 3550
    §5.1 header, stable SSRC, sequence +1, timestamp + one frame), payloads of random
    bytes standing for encrypted low-rate speech frames plus the SRTP tag."""
    n = int(seconds * 50)
    for direction, v, start, jitter in ((ORIG, out, t0, 300), (RESP, back, t0 + delay, 4000)):
        seq = rng.randrange(0, 0x8000)
        rts = rng.getrandbits(31)
        last = start
        for i in range(n):
            ts = start + Fraction(i, 50) + Fraction(rng.randrange(0, jitter + 1), 1_000_000)
            ts = max(ts, last + Fraction(1, 1_000_000))
            last = ts
            packet = rtp(seq + i, rts + v.step * i, v.ssrc, v.pt,
                         rng.randbytes(rng.randrange(*size)), marker=i == 0)
            send_udp(cap, flow, eth, ts, direction, wrap(packet))
    return t0 + seconds + delay


def binding(cap: Capture, flow: Flow, t: Fraction, rng: random.Random, rtt: Fraction,
            *, times: int = 2, request_attrs: list[tuple[int, bytes]] | None = None,
            key: bytes | None = None, fingerprint: bool = False) -> Fraction:
    """STUN Binding requests answered with the phone's public address (RFC 8489 §3)."""
    mapped = xor_mapped(PUBLIC, flow.orig_p)
    for _ in range(times):
        txid = rng.randbytes(12)
        send_udp(cap, flow, eth, t, ORIG, stun_message(
            BINDING_REQUEST, txid, request_attrs or [], key=key, fingerprint=fingerprint))
        send_udp(cap, flow, eth, t + rtt, RESP, stun_message(
            BINDING_SUCCESS, txid, [(XOR_MAPPED_ADDRESS, mapped)], key=key,
            fingerprint=fingerprint))
        t += rtt + Fraction(50, 1000)
    return t


def turn_allocation(cap: Capture, flow: Flow, t: Fraction, rng: random.Random, rtt: Fraction,
                    *, realm: str, username: str, password: str, relayed: tuple[str, int],
                    peer: tuple[str, int], software: str | None = None) -> Fraction:
    """TURN over UDP, RFC 8656 §7-§11: Allocate, 401 with REALM and NONCE, Allocate with
    long-term credentials, success with the relayed and mapped addresses, then a
    ChannelBind of channel 0x4000 to the peer. Returns when the channel is bound."""
    key = long_term_key(username, realm, password)
    nonce = rng.randbytes(12).hex().encode()
    transport = [(REQUESTED_TRANSPORT, struct.pack(">B3x", UDP_PROTO))]
    sw = [(SOFTWARE, software.encode())] if software else []
    txid = rng.randbytes(12)
    send_udp(cap, flow, eth, t, ORIG, stun_message(ALLOCATE_REQUEST, txid, transport + sw,
                                                   fingerprint=True))
    send_udp(cap, flow, eth, t + rtt, RESP, stun_message(
        ALLOCATE_ERROR, txid, [(ERROR_CODE, error_code(401, "Unauthorized")),
                               (REALM, realm.encode()), (NONCE, nonce)], fingerprint=True))
    t += rtt + Fraction(2, 1000)
    creds = [(USERNAME, username.encode()), (REALM, realm.encode()), (NONCE, nonce)]
    txid = rng.randbytes(12)
    send_udp(cap, flow, eth, t, ORIG, stun_message(ALLOCATE_REQUEST, txid, transport + sw + creds,
                                                   key=key, fingerprint=True))
    send_udp(cap, flow, eth, t + rtt, RESP, stun_message(
        ALLOCATE_SUCCESS, txid, [(XOR_RELAYED_ADDRESS, xor_mapped(*relayed)),
                                 (LIFETIME, struct.pack(">I", 600)),
                                 (XOR_MAPPED_ADDRESS, xor_mapped(PUBLIC, flow.orig_p))],
        key=key, fingerprint=True))
    t += rtt + Fraction(2, 1000)
    txid = rng.randbytes(12)
    send_udp(cap, flow, eth, t, ORIG, stun_message(
        CHANNEL_BIND_REQUEST, txid, [(CHANNEL_NUMBER, struct.pack(">H2x", CHANNEL)),
                                     (XOR_PEER_ADDRESS, xor_mapped(*peer)), *creds],
        key=key, fingerprint=True))
    send_udp(cap, flow, eth, t + rtt, RESP, stun_message(CHANNEL_BIND_SUCCESS, txid, [], key=key,
                                                         fingerprint=True))
    return t + rtt + Fraction(10, 1000)


def on_channel(data: bytes) -> bytes:
    return channel_data(CHANNEL, data)


def lookup(cap: Capture, t: Fraction, sport: int, name: str, answers: list[str]) -> Fraction:
    """A DNS A lookup by the phone through the LAN resolver; returns when the answer came."""
    _, done = dns(cap, eth, t, PHONE, GATEWAY, sport, sport & 0xFFFF, name, answers)
    return done


def https(cap: Capture, t: Fraction, rng: random.Random, sport: int, server: str, sni: str,
          *, port: int = 443, rounds: int = 1) -> Fraction:
    """A short TLS 1.3 session whose ClientHello names ``sni`` (RFC 6066 §3): handshake,
    ``rounds`` small request/response records, FIN both ways."""
    rtt = Fraction(30, 1000)
    c = Tcp(cap, Flow("tcp", PHONE, sport, server, port), eth,
            (rng.getrandbits(32), rng.getrandbits(32)))
    t = c.handshake(t, rtt)
    t = c.exchange(t, rtt, tls_client_hello(sni, rng), tls_server_flight(rng, 240))
    for _ in range(rounds):
        req = b"\x17\x03\x03" + struct.pack(">H", 80) + rng.randbytes(80)
        resp = b"\x17\x03\x03" + struct.pack(">H", 300) + rng.randbytes(300)
        t = c.exchange(t + Fraction(5, 100), rtt, req, resp)
    return c.close(t + Fraction(1, 10), rtt)


def framed_tcp(cap: Capture, t: Fraction, rng: random.Random, flow: Flow,
               messages: list[tuple[bytes, bytes]], rtt: Fraction) -> Fraction:
    """A TCP connection carrying request/response pairs of app framing, then closed."""
    c = Tcp(cap, flow, eth, (rng.getrandbits(32), rng.getrandbits(32)))
    t = c.handshake(t, rtt)
    for req, resp in messages:
        t = c.exchange(t + Fraction(20, 1000), rtt, req, resp)
    return c.close(t + Fraction(50, 1000), rtt)


def save(outdir: Path, name: str, cap: Capture) -> None:
    (outdir / name).write_bytes(write_pcap(cap.records(), 1))


# ---------------------------------------------------------------------------
# The captures


@dataclass(frozen=True)
class Entry:
    """One capture of this directory and its README line."""

    name: str
    what: str
    documentation: str
    build: Callable[[Path], None]


def make_facetime(outdir: Path) -> None:
    """FaceTime call from an iPhone, next to other Apple traffic that is not FaceTime.

    Apple, 'If you use FaceTime and iMessage behind a firewall' (support.apple.com
    HT202078): FaceTime needs TCP 80, 443, 5223 and UDP 3478-3497, 16384-16387,
    16393-16402. Apple, 'Use Apple products on enterprise networks'
    (support.apple.com/101555): push notifications on TCP 5223 to *.push.apple.com,
    services under apple.com and icloud.com. Apple's address space is AS714's
    17.0.0.0/8 (../shared/ANCHORS.md §6). Apple publishes no relay names and no
    FaceTime-specific STUN attribute, so the relay exchange is plain RFC 8489 Binding.
    """
    rng = random.Random("facetime")
    cap = Capture()
    t = at(3000)
    # identity lookup before the call (Apple identity services, *.ess.apple.com)
    t1 = lookup(cap, t, 50001, "identity.ess.apple.com", ["17.57.144.84"])
    https(cap, t1 + Fraction(1, 100), rng, 50002, "17.57.144.84", "identity.ess.apple.com")
    # the push channel that rings the phone: TLS on TCP 5223, shared by every app
    t2 = lookup(cap, t + Fraction(3, 10), 50003, "1-courier.push.apple.com", ["17.57.146.52"])
    https(cap, t2 + Fraction(1, 100), rng, 50004, "17.57.146.52", "1-courier.push.apple.com",
          port=5223, rounds=2)
    # the call: STUN with two Apple relays in 3478-3497 from the phone's 16393, media on
    # the one that answers best, then a direct path to the other phone
    local = 16393
    probe = Flow("udp", PHONE, local, "17.188.129.6", 3483)
    relay = Flow("udp", PHONE, local, "17.188.131.20", 3479)
    tc = t + 2
    binding(cap, probe, tc, rng, Fraction(64, 1000), times=3)
    tm = binding(cap, relay, tc + Fraction(1, 100), rng, Fraction(22, 1000), times=3)
    # AAC-ELD at 24 kHz, 480 samples (20 ms) per packet; dynamic payload types
    tm = voice(cap, relay, tm, Fraction(1, 1), rng, Voice(0x3C6F1E01, 104, 480),
               Voice(0x5A17D002, 104, 480))
    direct = Flow("udp", PHONE, local, PEER, 16395)
    binding(cap, direct, tm, rng, Fraction(31, 1000), times=2)
    voice(cap, direct, tm + Fraction(2, 10), Fraction(3, 5), rng, Voice(0x3C6F1E01, 104, 480),
          Voice(0x5A17D002, 104, 480))
    # Apple traffic that is not FaceTime: the web site, iCloud, and network time
    t3 = lookup(cap, t + 5, 50005, "www.apple.com", ["17.253.144.10"])
    https(cap, t3 + Fraction(1, 100), rng, 50006, "17.253.144.10", "www.apple.com", rounds=2)
    t4 = lookup(cap, t + 6, 50007, "p26-keyvalueservice.icloud.com", ["17.248.185.140"])
    https(cap, t4 + Fraction(1, 100), rng, 50008, "17.248.185.140",
          "p26-keyvalueservice.icloud.com")
    t5 = lookup(cap, t + 7, 50009, "time.apple.com", ["17.253.34.253"])
    clock = Flow("udp", PHONE, 50123, "17.253.34.253", 123)
    send_udp(cap, clock, eth, t5 + Fraction(1, 100), ORIG, ntp(3, 0, rng))
    send_udp(cap, clock, eth, t5 + Fraction(4, 100), RESP, ntp(4, 1, rng))
    save(outdir, "facetime.pcap", cap)


def make_viber(outdir: Path) -> None:
    """Viber: chat connection with Viber's TCP framing, a UDP keep-alive with its UDP
    framing, and a call relayed through TURN whose REALM names Viber.

    Host names viber.com / cdn.viber.com and the AWS ranges of Viber Media (ARIN
    AWS-VIBER-MEDIA reassignments, e.g. 52.0.252.0/22, and 18.195.4.0/23 as listed in
    ../shared/ANCHORS.md §2); framings as recorded in nDPI's viber.c (same section); a
    STUN REALM containing "viber" marks Viber's call relays (nDPI's stun.c). The exact
    REALM text is not published: "viber.com" stands for it. Ports 5242/5243 carry no
    weight for the classifier.
    """
    rng = random.Random("viber")
    cap = Capture()
    t = at(4000)
    t1 = lookup(cap, t, 51001, "www.viber.com", ["52.0.253.17"])
    https(cap, t1 + Fraction(1, 100), rng, 51002, "52.0.253.17", "www.viber.com")

    def fcff(n: int) -> bytes:  # LE16 total length, bytes 6-7 fc ff, byte 9 0x80
        body = rng.randbytes(n - 10)
        head = struct.pack("<H", n) + rng.randbytes(4) + b"\xfc\xff" + rng.randbytes(1) + b"\x80"
        return head + body

    chat = Flow("tcp", PHONE, 51003, "18.195.4.37", 5242)
    framed_tcp(cap, t + Fraction(5, 10), rng, chat,
               [(fcff(64), fcff(48)), (fcff(120), fcff(200)), (fcff(40), fcff(40))],
               Fraction(45, 1000))
    keepalive = Flow("udp", PHONE, 51004, "18.195.5.9", 5243)
    for k in range(3):  # bytes 2-3 are 03 00
        send_udp(cap, keepalive, eth, t + 1 + k, ORIG,
                 rng.randbytes(2) + b"\x03\x00" + rng.randbytes(24))
        send_udp(cap, keepalive, eth, t + 1 + k + Fraction(46, 1000), RESP,
                 rng.randbytes(2) + b"\x03\x00" + rng.randbytes(12))
    call = Flow("udp", PHONE, 51005, "52.0.254.200", 3478)
    tm = turn_allocation(cap, call, t + 4, rng, Fraction(44, 1000), realm="viber.com",
                         username="1730000000:8f1e2d", password="pw-viber",
                         relayed=("52.0.254.200", 50112), peer=(PEER, 40022))
    voice(cap, call, tm, Fraction(8, 5), rng, Voice(0x0B1BE401, 106, 320),
          Voice(0x0B1BE402, 106, 320), wrap=on_channel)
    save(outdir, "viber.pcap", cap)


def whatsapp_setup(cap: Capture, flow: Flow, t: Fraction, rng: random.Random,
                   rtt: Fraction) -> Fraction:
    """WhatsApp's relay exchange: Binding requests with its private attributes
    0x4000-0x4007, then its own message types 0x0800/0x0801/0x0802 (both documented in
    nDPI's stun.c, ../shared/ANCHORS.md §2)."""
    token = rng.randbytes(16)
    for _ in range(2):
        txid = rng.randbytes(12)
        send_udp(cap, flow, eth, t, ORIG, stun_message(BINDING_REQUEST, txid, [
            (0x4000, token), (0x4001, struct.pack(">I", 3)), (0x4004, b"\x00\x01")]))
        send_udp(cap, flow, eth, t + rtt, RESP, stun_message(BINDING_SUCCESS, txid, [
            (XOR_MAPPED_ADDRESS, xor_mapped(PUBLIC, flow.orig_p)), (0x4002, rng.randbytes(8))]))
        t += rtt + Fraction(30, 1000)
    txid = rng.randbytes(12)
    send_udp(cap, flow, eth, t, ORIG, stun_message(0x0800, txid, [(0x4003, rng.randbytes(4))]))
    send_udp(cap, flow, eth, t + rtt, RESP, stun_message(0x0801, txid,
                                                         [(0x4003, rng.randbytes(4))]))
    return t + rtt + Fraction(20, 1000)


def make_messenger(outdir: Path) -> None:
    """A Messenger call and a WhatsApp call from the same phone, both through relays in
    Meta's shared address space. The phone runs both apps (each one's own signalling is
    there: Messenger's MQTT edge, WhatsApp's chat server), so the STUN exchanges tell the
    calls apart.

    Messenger's MQTT edge edge-mqtt.facebook.com and messenger.com (Meta's registered
    names, ../shared/ANCHORS.md §2); STUN REALM containing "facebook" for Messenger's
    call relays and WhatsApp's STUN message types and attributes (nDPI's stun.c, same
    section); Meta's AS32934 covers 157.240.0.0/17 and 31.13.64.0/18 for all its apps.
    The exact REALM text is not published: "facebook.com" stands for it.
    """
    rng = random.Random("messenger")
    cap = Capture()
    t = at(5000)
    t1 = lookup(cap, t, 52001, "edge-mqtt.facebook.com", ["157.240.22.11"])
    https(cap, t1 + Fraction(1, 100), rng, 52002, "157.240.22.11", "edge-mqtt.facebook.com",
          rounds=2)
    messenger = Flow("udp", PHONE, 52003, "157.240.22.60", 3478)
    tm = turn_allocation(cap, messenger, t + 1, rng, Fraction(28, 1000), realm="facebook.com",
                         username="1730000000:m8u1", password="pw-messenger",
                         relayed=("157.240.22.60", 41800), peer=(PEER, 39001))
    voice(cap, messenger, tm, Fraction(1, 1), rng, Voice(0x7E55E201, 111, 960),
          Voice(0x7E55E202, 111, 960), wrap=on_channel)
    wa_rng = random.Random("messenger-whatsapp-chat")
    t2 = lookup(cap, t + 4, 52005, "g.whatsapp.net", ["157.240.22.54"])
    https(cap, t2 + Fraction(1, 100), wa_rng, 52006, "157.240.22.54", "g.whatsapp.net")
    whatsapp = Flow("udp", PHONE, 52004, "31.13.66.49", 3478)
    tw = whatsapp_setup(cap, whatsapp, t + 5, rng, Fraction(33, 1000))
    voice(cap, whatsapp, tw, Fraction(1, 1), rng, Voice(0x1A2B3C4D, 120, 960),
          Voice(0x5E6F7081, 120, 960))
    save(outdir, "messenger.pcap", cap)


def make_signal(outdir: Path) -> None:
    """A Signal group call: chat service, the calling SFU's HTTPS front and the media
    flow to the SFU address that DNS gave for sfu.voip.signal.org.

    Signal's service names chat.signal.org and sfu.voip.signal.org (the chat and SFU
    URLs in Signal's client sources, e.g. Signal-iOS TSConstants, github.com/signalapp);
    ICE connectivity checks of RFC 8445 §7.2 (USERNAME, PRIORITY, ICE-CONTROLLING,
    MESSAGE-INTEGRITY, FINGERPRINT). The SFU's address is a documentation address and
    its UDP port carries no weight for the classifier.
    """
    rng = random.Random("signal")
    cap = Capture()
    t = at(6000)
    t1 = lookup(cap, t, 53001, "chat.signal.org", ["198.51.100.80"])
    https(cap, t1 + Fraction(1, 100), rng, 53002, "198.51.100.80", "chat.signal.org", rounds=2)
    sfu = "198.51.100.90"
    t2 = lookup(cap, t + 1, 53003, "sfu.voip.signal.org", [sfu])
    https(cap, t2 + Fraction(1, 100), rng, 53004, sfu, "sfu.voip.signal.org")
    media = Flow("udp", PHONE, 53005, sfu, 10000)
    ice = [(USERNAME, b"sfu7f3a:cl91b2"), (PRIORITY, struct.pack(">I", 0x6E7F1EFF)),
           (ICE_CONTROLLING, rng.randbytes(8))]
    tm = binding(cap, media, t + 2, rng, Fraction(26, 1000), times=2, request_attrs=ice,
                 key=b"sfu-ice-password-22chars", fingerprint=True)
    voice(cap, media, tm, Fraction(8, 5), rng, Voice(0x51C0A101, 102, 960),
          Voice(0x51C0A102, 102, 960))
    save(outdir, "signal.pcap", cap)


def make_wechat(outdir: Path) -> None:
    """WeChat messaging: DNS for its long- and short-connection names, the long
    connection on TCP 8080 and a short-connection HTTP POST; plus a visit to www.qq.com
    (Tencent, but not WeChat).

    Host names weixin.qq.com / wx.qq.com / wechat.com as listed for WeChat in nDPI's
    host table (ntop/nDPI ndpi_content_match.c.inc); long.weixin.qq.com and
    short.weixin.qq.com are the long- and short-link hosts named in public WeChat
    protocol clients on GitHub, whose short-link requests are HTTP POSTs to /mmtls/<id>.
    No public source documents WeChat's call media, so the capture has none.
    """
    rng = random.Random("wechat")
    cap = Capture()
    t = at(7000)
    long_ip, short_ip = "203.0.113.140", "203.0.113.141"
    t1 = lookup(cap, t, 54001, "long.weixin.qq.com", [long_ip])
    conn = Flow("tcp", PHONE, 54002, long_ip, 8080)
    framed_tcp(cap, t1 + Fraction(1, 100), rng, conn,
               [(rng.randbytes(180), rng.randbytes(260)), (rng.randbytes(90), rng.randbytes(60))],
               Fraction(60, 1000))
    t2 = lookup(cap, t + 1, 54003, "short.weixin.qq.com", [short_ip])
    body = rng.randbytes(200)
    tcp_session(cap, Flow("tcp", PHONE, 54004, short_ip, 80), eth, t2 + Fraction(1, 100),
                request=b"POST /mmtls/3f2a0c11 HTTP/1.1\r\nHost: short.weixin.qq.com\r\n"
                b"Accept: */*\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 200\r\n\r\n" + body,
                response=b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                b"Content-Length: 120\r\n\r\n" + rng.randbytes(120),
                isn=(rng.getrandbits(32), rng.getrandbits(32)), rtt=Fraction(60, 1000))
    t3 = lookup(cap, t + 2, 54005, "www.qq.com", ["203.0.113.150"])
    https(cap, t3 + Fraction(1, 100), rng, 54006, "203.0.113.150", "www.qq.com")
    save(outdir, "wechat.pcap", cap)


def make_imo(outdir: Path) -> None:
    """imo: its web front imo.im over TLS and a voice call relayed by a server in imo's
    own address space.

    Host name imo.im (imo.im); the routes of imo's network (PageBites, as compiled in
    ntop/nDPI src/lib/inc_generated/ndpi_asn_imo.c.inc), e.g. 5.150.156.0/22. imo's own
    call protocol is not documented, so the relay carries plain RTP.
    """
    rng = random.Random("imo")
    cap = Capture()
    t = at(8000)
    t1 = lookup(cap, t, 55001, "imo.im", ["5.150.156.20"])
    https(cap, t1 + Fraction(1, 100), rng, 55002, "5.150.156.20", "imo.im", rounds=2)
    call = Flow("udp", PHONE, 55003, "5.150.157.45", 36535)
    voice(cap, call, t + 2, Fraction(8, 5), rng, Voice(0x1A0C0001, 111, 960),
          Voice(0x1A0C0002, 111, 960))
    save(outdir, "imo.pcap", cap)


def make_snapchat(outdir: Path) -> None:
    """Snapchat: DNS and TLS to its API and CDN names.

    Host names snapchat.com and sc-cdn.net (Snap Inc.'s domains, listed for Snapchat in
    nDPI's host table, ntop/nDPI ndpi_content_match.c.inc). No public source documents
    Snapchat's call transport, so the capture has no call.
    """
    rng = random.Random("snapchat")
    cap = Capture()
    t = at(9000)
    t1 = lookup(cap, t, 56001, "app.snapchat.com", ["203.0.113.160"])
    https(cap, t1 + Fraction(1, 100), rng, 56002, "203.0.113.160", "app.snapchat.com", rounds=2)
    t2 = lookup(cap, t + 1, 56003, "cf-st.sc-cdn.net", ["203.0.113.161"])
    https(cap, t2 + Fraction(1, 100), rng, 56004, "203.0.113.161", "cf-st.sc-cdn.net", rounds=3)
    save(outdir, "snapchat.pcap", cap)


def make_webex(outdir: Path) -> None:
    """A Webex app call: the Webex cloud over TLS, then STUN and media on UDP 5004 to a
    Webex media node.

    Cisco, 'Network Requirements for Webex Services' (help.webex.com WBX000028782):
    *.wbx2.com and *.webex.com for the app, media on UDP 5004 (and 9000) to the IP
    subnets for Webex media services, e.g. 62.109.192.0/18.
    """
    rng = random.Random("webex")
    cap = Capture()
    t = at(10000)
    t1 = lookup(cap, t, 57001, "locus-a.wbx2.com", ["203.0.113.170"])
    https(cap, t1 + Fraction(1, 100), rng, 57002, "203.0.113.170", "locus-a.wbx2.com", rounds=2)
    media = Flow("udp", PHONE, 57003, "62.109.229.158", 5004)
    tm = binding(cap, media, t + 2, rng, Fraction(35, 1000), times=2)
    voice(cap, media, tm, Fraction(8, 5), rng, Voice(0x0EBE0001, 101, 960),
          Voice(0x0EBE0002, 101, 960))
    save(outdir, "webex.pcap", cap)


def zoom_p2p_hello(rng: random.Random, to: tuple[str, int]) -> bytes:
    """The first packet of a Zoom peer-to-peer media flow, laid out as nDPI's zoom.c
    checks it: ``1f 02 01``, the rest of a 24-byte header (bytes 22-23: the port it is
    sent to), the address it is sent to as text and an identifier, each behind a 4-byte
    big-endian length, then four zero bytes (as real clients send it)."""
    address, port = to
    ident = rng.randbytes(16).hex().encode()
    return (b"\x1f\x02\x01" + rng.randbytes(19) + struct.pack(">H", port)
            + struct.pack(">I", len(address)) + address.encode()
            + struct.pack(">I", len(ident)) + ident + b"\0\0\0\0")


def zoom_media(media_type: int, rtp_at: int, rng: random.Random) -> Wrap:
    """A Zoom media header (Princeton-Cabernet/zoom-analysis, as nDPI's zoom.c reads it:
    the type byte, then the RTP packet ``rtp_at`` bytes from its start)."""
    def wrap(packet: bytes) -> bytes:
        head = bytearray(rng.randbytes(rtp_at))
        head[0] = media_type
        if media_type == ZOOM_SCREEN_SFU:
            head[7] = 0x1E  # a screen-share packet that carries RTP
        return bytes(head) + packet
    return wrap


def zoom_sfu(inner: Wrap, direction: int) -> Wrap:
    """Zoom's SFU encapsulation of type 5 (media) around a media header: the type byte,
    a sequence number, four bytes, and the direction byte (0 to Zoom, 4 from it)."""
    seq = iter(range(1, 1 << 16))

    def wrap(packet: bytes) -> bytes:
        return struct.pack(">BHIB", 5, next(seq), 0, direction) + inner(packet)
    return wrap


def screen_frames(cap: Capture, flow: Flow, t0: Fraction, seconds: Fraction,
                  rng: random.Random, ssrc: int, wrap: Wrap) -> Fraction:
    """A one-way screen share of a screen that hardly changes: 6 frames a second of 1-2
    RTP packets of 300-500 bytes every 166 ms (one timestamp per frame at 90 kHz, marker on its last
    packet)."""
    seq = rng.randrange(0, 0x8000)
    rts = rng.getrandbits(31)
    for i in range(int(seconds * 6)):
        ts = t0 + Fraction(i * 166, 1000)
        n = rng.randrange(1, 3)
        for k in range(n):
            packet = rtp(seq, rts + 15000 * i, ssrc, 99, rng.randbytes(rng.randrange(300, 500)),
                         marker=k == n - 1)
            send_udp(cap, flow, eth, ts + Fraction(k, 1000), ORIG, wrap(packet))
            seq += 1
    return t0 + seconds


ZOOM_AUDIO, ZOOM_SCREEN_SFU, ZOOM_SCREEN_P2P = 15, 13, 30
"""Zoom media header types (audio; screen share through the SFU and peer to peer)."""


def make_zoom(outdir: Path) -> None:
    """Zoom: a peer-to-peer call on ports no rule knows, and a screen share through a Zoom
    server.

    Zoom, 'Zoom network firewall or proxy server settings' (support.zoom.com KB0060548):
    meeting media on UDP 8801-8810 to Zoom's published ranges (e.g. 170.114.0.0/16).
    The packet layouts (SFU encapsulation of type 5, media headers 15 audio and 13/30
    screen share with the RTP packet 19, 27 and 20 bytes in, the peer-to-peer hello) are
    those of Princeton-Cabernet/zoom-analysis as nDPI's zoom.c reads them.
    """
    rng = random.Random("zoom")
    cap = Capture()
    t = at(11000)
    p2p = Flow("udp", PHONE, 51234, PEER, 46757)
    send_udp(cap, p2p, eth, t, ORIG, zoom_p2p_hello(rng, (p2p.resp_h, p2p.resp_p)))
    send_udp(cap, p2p, eth, t + Fraction(40, 1000), RESP,
             zoom_p2p_hello(rng, (p2p.orig_h, p2p.orig_p)))
    audio = zoom_media(ZOOM_AUDIO, 19, rng)
    te = voice(cap, p2p, t + Fraction(1, 10), Fraction(11, 5), rng, Voice(0x01000402, 99, 960),
               Voice(0x01000802, 99, 960), wrap=audio, size=(16, 24))
    share = Flow("udp", PHONE, 51236, PEER, 46759)
    send_udp(cap, share, eth, t + Fraction(1, 2), ORIG,
             zoom_p2p_hello(rng, (share.resp_h, share.resp_p)))
    send_udp(cap, share, eth, t + Fraction(54, 100), RESP,
             zoom_p2p_hello(rng, (share.orig_h, share.orig_p)))
    screen_frames(cap, share, t + 1, Fraction(3, 2), rng, 0x01000803,
                  zoom_media(ZOOM_SCREEN_P2P, 20, rng))
    server = Flow("udp", PHONE, 51238, "170.114.10.76", 8801)
    screen_frames(cap, server, te + 1, Fraction(2), rng, 0x01000403,
                  zoom_sfu(zoom_media(ZOOM_SCREEN_SFU, 27, rng), 0))
    save(outdir, "zoom.pcap", cap)


ENTRIES = [
    Entry("facetime.pcap",
          "an iPhone's FaceTime call: DNS and TLS to identity.ess.apple.com, the push channel "
          "(TLS on TCP 5223 to 1-courier.push.apple.com), STUN Binding exchanges from UDP "
          "16393 with two relays in 17.0.0.0/8 on ports 3483 and 3479, 1 s of two-way "
          "RTP (PT 104, 20 ms, stable SSRCs) with the second relay, then STUN and 0.6 s of "
          "RTP straight to the other phone on UDP 16395; plus Apple traffic that is not "
          "FaceTime: TLS to www.apple.com and p26-keyvalueservice.icloud.com, NTP with "
          "time.apple.com",
          "Apple HT202078 'If you use FaceTime and iMessage behind a firewall' (TCP 80, 443, "
          "5223; UDP 3478-3497, 16384-16387, 16393-16402), Apple 101555 'Use Apple products "
          "on enterprise networks' (*.push.apple.com, apple.com, icloud.com), Apple's AS714 "
          "(17.0.0.0/8); STUN RFC 8489, RTP RFC 3550",
          make_facetime),
    Entry("viber.pcap",
          "Viber: DNS and TLS for www.viber.com, a chat connection on TCP 5242 with Viber's "
          "length-prefixed framing (bytes 6-7 fc ff, byte 9 0x80), UDP 5243 keep-alives "
          "with bytes 2-3 03 00, and a call through a TURN relay (Allocate, 401 with REALM "
          "viber.com, authenticated Allocate, ChannelBind) carrying 1.6 s of two-way RTP "
          "in ChannelData, all to Viber Media's AWS ranges",
          "Viber Media's AWS ranges (ARIN AWS-VIBER-MEDIA, 52.0.252.0/22; 18.195.4.0/23 "
          "from ../shared/ANCHORS.md §2); framings and the REALM containing 'viber' as "
          "recorded in nDPI's viber.c and stun.c (same section; the REALM text itself is "
          "not published); TURN RFC 8656",
          make_viber),
    Entry("messenger.pcap",
          "a Messenger call and a WhatsApp call from one phone, both through relays in Meta's "
          "shared address space: TLS to edge-mqtt.facebook.com, TURN with REALM "
          "facebook.com and 1 s of RTP in ChannelData (PT 111), then DNS and TLS for "
          "WhatsApp's chat server g.whatsapp.net, WhatsApp's STUN "
          "attributes 0x4000-0x4004 and message types 0x0800/0x0801 and 1 s of RTP (PT "
          "120) to another Meta relay",
          "Meta's registered names (messenger.com, edge-mqtt.facebook.com) and STUN "
          "signals (REALM containing 'facebook'; WhatsApp's types and attributes) as listed "
          "in ../shared/ANCHORS.md §2 from nDPI's stun.c; Meta's AS32934 routes; TURN RFC "
          "8656",
          make_messenger),
    Entry("signal.pcap",
          "a Signal group call: DNS and TLS for chat.signal.org and sfu.voip.signal.org, then "
          "ICE connectivity checks (USERNAME, PRIORITY, ICE-CONTROLLING, MESSAGE-INTEGRITY, "
          "FINGERPRINT) and 1.6 s of two-way RTP (PT 102) on UDP 10000 with the address DNS "
          "gave for the SFU (documentation range)",
          "Signal's chat and SFU URLs in its client sources (Signal-iOS TSConstants, "
          "github.com/signalapp); ICE RFC 8445 §7.2",
          make_signal),
    Entry("wechat.pcap",
          "WeChat messaging: DNS for long.weixin.qq.com and short.weixin.qq.com, the long "
          "connection on TCP 8080, a short-connection HTTP POST with Host "
          "short.weixin.qq.com, and TLS to www.qq.com (Tencent, not WeChat); no call",
          "WeChat host names as listed in nDPI's host table (weixin.qq.com, wx.qq.com, "
          "wechat.com); long/short-link hosts and the POST /mmtls/<id> request as named in "
          "public WeChat protocol clients on GitHub",
          make_wechat),
    Entry("imo.pcap",
          "imo: DNS and TLS for imo.im, then 1.6 s of two-way RTP (PT 111) with a relay in "
          "imo's address space (5.150.156.0/22)",
          "imo.im; routes of imo's network (PageBites) as compiled in nDPI's "
          "ndpi_asn_imo.c.inc",
          make_imo),
    Entry("snapchat.pcap",
          "Snapchat: DNS and TLS for app.snapchat.com and cf-st.sc-cdn.net; no call",
          "Snap Inc.'s domains snapchat.com and sc-cdn.net as listed in nDPI's host table",
          make_snapchat),
    Entry("webex.pcap",
          "a Webex app call: DNS and TLS for locus-a.wbx2.com, then STUN and 1.6 s of two-way "
          "RTP (PT 101) on UDP 5004 with a Webex media node in 62.109.192.0/18",
          "Cisco help article WBX000028782 'Network Requirements for Webex Services' "
          "(*.wbx2.com, UDP 5004/9000, IP subnets for Webex media services)",
          make_webex),
    Entry("zoom.pcap",
          "Zoom: a peer-to-peer call on UDP 51234-46757 (the peer-to-peer hello both ways, "
          "then 2.2 s of two-way RTP behind media headers of type 15), a peer-to-peer screen "
          "share (type 30) on another pair of ports, and a screen share through a Zoom "
          "server on UDP 8801 (SFU type 5 around media headers of type 13)",
          "Zoom KB0060548 (UDP 8801-8810, Zoom's ranges such as 170.114.0.0/16); the packet "
          "layouts of Princeton-Cabernet/zoom-analysis as read by nDPI's zoom.c",
          make_zoom),
]

README_HEAD = """# captures/apps/

Per-app captures written by `../make_app_captures.py` (deterministic, same bytes every run;
run it from the repository root). Each follows what the vendor or a public reference
documents about the app, with addresses outside the app's published space taken from the
RFC 5737 documentation ranges; nothing in them is matched by a rule keyed to these files.
`tests/test_app_classification.py` checks what the classifier names in each. Licence:
generated by the marsad project, same licence as the project (AGPL-3.0-or-later).
"""


def readme() -> str:
    lines = [README_HEAD]
    for e in ENTRIES:
        lines.append(f"- `{e.name}`: {e.what}. Made by `make_app_captures.py:"
                     f"{e.build.__name__}`; follows {e.documentation}; licence: generated by "
                     f"the marsad project.")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "apps"
    outdir.mkdir(parents=True, exist_ok=True)
    for e in ENTRIES:
        e.build(outdir)
    (outdir / "README.md").write_text(readme())


if __name__ == "__main__":
    main(sys.argv)
