#!/usr/bin/env python3
"""Write a reproducible synthetic classic pcap (Ethernet) for the throughput benchmark.

The capture mixes what a probe in an access network sees: two-way voice RTP
with ICE STUN checks and RTCP on the same 5-tuple, bursty video RTP, TLS 1.3
over TCP (handshake with a real ClientHello carrying an SNI, request/response
data, FIN), QUIC v1 (a client Initial protected per RFC 9001 around a real
ClientHello, then short-header packets), DNS queries and answers, and STUN
binding requests/responses. About 15 % of the flows are IPv6 and 8 % carry an
802.1Q tag. IPv4 header, UDP and TCP checksums are correct.

``--profile`` picks the mix (:data:`PROFILES`): ``web`` (the default) has a few long
calls among many web and DNS flows; ``calls`` puts most packets in many short voice and
video calls, one flow each, as an access network busy with calls sees them.

The same seed gives the same bytes. Flows are drawn first, from their own
random stream, so ``--scale K`` gives the same flows (addresses, ports, names,
keys, sizes) with every packet train K times longer: media calls last K times
as long, TLS and QUIC connections carry K times as many exchanges, DNS and
STUN clients repeat their exchanges K times on the same socket, and flow start
times are spread over a K times longer capture, so the number of flows alive at
any moment stays the same while the packet count grows K-fold.

How it stays fast: per flow, every (direction, header variant) gets a header
template once; packets are numpy columns (time, flow, direction, variant,
payload slice, TCP flags, RTP fields); sequence numbers, IP ids and checksums
are computed on whole columns; records are assembled chunk by chunk with
numpy gathers. Payload bytes are slices of a random pool (encrypted media and
application data look random on the wire) or per-flow protocol messages.

A JSON sidecar (``<out>.json``) records the packet and flow counts per kind.

References: pcap (draft-ietf-opsawg-pcap), RTP (RFC 3550), RTCP mux (RFC 5761),
STUN (RFC 8489), ICE (RFC 8445), DNS (RFC 1035, EDNS RFC 6891), TLS 1.3
(RFC 8446), SNI (RFC 6066), QUIC (RFC 9000, RFC 9001), 802.1Q, IPv6 (RFC 8200).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]
Bool = npt.NDArray[np.bool_]

BASE_SPAN_US = 180_000_000
"""Length of a scale-1 capture: three minutes."""
EPOCH_S = 1_717_243_200
"""First timestamp of every capture (2024-06-01 12:00:00 UTC), so runs are byte-identical."""
FILL_POOL = 1 << 22
"""Bytes of random filler that encrypted payloads are sliced from."""
MSS = 1400
"""TCP payload per full segment."""
CHUNK = 16384
"""Packets assembled per numpy chunk when writing."""
ROUTER_MAC = bytes.fromhex("001b213a4f10")
"""MAC address of the access router every client talks through."""

TCP_FIN, TCP_SYN, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x08, 0x10
"""TCP flag bits (RFC 9293 section 3.1)."""


class Variant(IntEnum):
    """Header variant of a packet: what sits between the L4 header and the payload slice."""

    PLAIN = 0
    SYN = 1  # TCP header with options (MSS, NOP, WS, NOP, NOP, SACK permitted)
    RTP = 2  # 12-byte RTP header (RFC 3550 section 5.1)
    QUIC_SHORT = 3  # QUIC short header: first byte + 8-byte DCID (RFC 9000 section 17.3)
    TLS_RECORD = 4  # TLS application_data record header (RFC 8446 section 5.1)


PREFIX_LEN = {Variant.PLAIN: 0, Variant.SYN: 0, Variant.RTP: 12, Variant.QUIC_SHORT: 9,
              Variant.TLS_RECORD: 5}
N_VARIANTS = len(Variant)


class Patch(IntEnum):
    """Per-exchange identifier written into a repeated message."""

    NONE = 0
    DNS_ID = 1  # 16-bit DNS message ID at payload offset 0 (RFC 1035 section 4.1.1)
    STUN_TXID = 2  # last 4 bytes of the STUN transaction ID, payload offset 16 (RFC 8489 5)


class Kind(IntEnum):
    """Flow kind, for the counts in the sidecar."""

    DNS = 0
    STUN = 1
    VOICE = 2
    VIDEO = 3
    TLS = 4
    QUIC = 5


@dataclass(frozen=True, slots=True)
class Slot:
    """One packet position in a repeated unit of a flow's packet train."""

    direction: int
    """0: client to server (originator), 1: server to client."""
    offset_us: int = 0
    """Time from the start of the unit (multiplied by the flow's RTT stretch if one is given)."""
    jitter_us: int = 0
    """Uniform random extra delay, 0 to this many microseconds."""
    variant: Variant = Variant.PLAIN
    """Header variant (decides the template and which fields are patched)."""
    flags: int = 0
    """TCP flags (ignored for UDP)."""
    size: tuple[int, int] = (0, 0)
    """Filler length range, inclusive, added to the flow's size base if one is given."""
    clip: tuple[int, int] = (0, 65000)
    """Bounds the filler length is clipped to."""
    msg: str | None = None
    """Name of the per-flow message this slot carries instead of filler."""
    part: int = 0
    """Which MSS-sized part of the message (a slot whose part is empty is dropped)."""
    keep: float = 1.0
    """Probability the packet exists in a given unit (video frames vary in size)."""
    patch: Patch = Patch.NONE
    """Identifier to write into the payload, one random value per unit."""


# --------------------------------------------------------------------------------------
# Protocol messages
# --------------------------------------------------------------------------------------

def u8(v: int) -> bytes:
    return struct.pack("!B", v)


def u16(v: int) -> bytes:
    return struct.pack("!H", v)


def u24(v: int) -> bytes:
    return struct.pack("!I", v)[1:]


def quic_varint(v: int) -> bytes:
    """Variable-length integer (RFC 9000 section 16)."""
    if v < 0x40:
        return u8(v)
    if v < 0x4000:
        return u16(0x4000 | v)
    if v < 0x4000_0000:
        return struct.pack("!I", 0x8000_0000 | v)
    return struct.pack("!Q", 0xC000_0000_0000_0000 | v)


def tls_ext(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + u16(len(body)) + body


def tls_client_hello(rnd: bytes, session_id: bytes, sni: str, key_share: bytes,
                     alpn: Sequence[bytes], quic_params: bytes | None) -> bytes:
    """A TLS 1.3 ClientHello handshake message (RFC 8446 section 4.1.2), no record header."""
    name = sni.encode()
    alpn_list = b"".join(u8(len(p)) + p for p in alpn)
    exts = [
        tls_ext(0, u16(len(name) + 3) + b"\x00" + u16(len(name)) + name),  # server_name, RFC 6066
        tls_ext(10, u16(6) + bytes.fromhex("001d00170018")),  # supported_groups
        tls_ext(13, u16(16) + bytes.fromhex("04030804040105030805050108060601")),
        tls_ext(16, u16(len(alpn_list)) + alpn_list),  # ALPN, RFC 7301
        tls_ext(43, b"\x02\x03\x04" if quic_params is not None else b"\x04\x03\x04\x03\x03"),
        tls_ext(45, b"\x01\x01"),  # psk_key_exchange_modes: psk_dhe_ke
        tls_ext(51, u16(36) + u16(0x001D) + u16(32) + key_share),  # key_share: x25519
    ]
    if quic_params is None:
        exts[1:1] = [tls_ext(11, b"\x01\x00"), tls_ext(35, b""), tls_ext(23, b""),
                     tls_ext(5, b"\x01\x00\x00\x00\x00")]
        suites = bytes.fromhex("130113021303c02bc02fc02cc030cca9cca8c013c014009c009d002f0035")
    else:
        exts.append(tls_ext(0x39, quic_params))  # quic_transport_parameters, RFC 9001 8.2
        suites = bytes.fromhex("130113021303")
    ext_block = b"".join(exts)
    body = (b"\x03\x03" + rnd + u8(len(session_id)) + session_id + u16(len(suites)) + suites
            + b"\x01\x00" + u16(len(ext_block)) + ext_block)
    return b"\x01" + u24(len(body)) + body


def tls_server_hello(rnd: bytes, session_id: bytes, key_share: bytes) -> bytes:
    """A TLS 1.3 ServerHello handshake message (RFC 8446 section 4.1.3), no record header."""
    exts = tls_ext(43, b"\x03\x04") + tls_ext(51, u16(0x001D) + u16(32) + key_share)
    body = (b"\x03\x03" + rnd + u8(len(session_id)) + session_id + b"\x13\x01\x00"
            + u16(len(exts)) + exts)
    return b"\x02" + u24(len(body)) + body


def tls_record(content_type: int, payload: bytes) -> bytes:
    """A TLS record (RFC 8446 section 5.1): version 0x0303, 0x0301 for a ClientHello."""
    version = 0x0301 if content_type == 22 and payload[:1] == b"\x01" else 0x0303
    return u8(content_type) + u16(version) + u16(len(payload)) + payload


def quic_transport_parameters(scid: bytes) -> bytes:
    """Client transport parameters (RFC 9000 section 18.2)."""
    params = [(0x01, 30000), (0x03, 1472), (0x04, 15_728_640), (0x05, 6_291_456),
              (0x06, 6_291_456), (0x07, 6_291_456), (0x08, 100), (0x09, 103)]
    out = b"".join(quic_varint(k) + quic_varint(len(quic_varint(v))) + quic_varint(v)
                   for k, v in params)
    return out + quic_varint(0x0F) + quic_varint(len(scid)) + scid


QUIC_V1_SALT = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
"""Initial salt of QUIC version 1 (RFC 9001 section 5.2)."""


def hkdf_expand_label(secret: bytes, label: str, length: int) -> bytes:
    """HKDF-Expand-Label with an empty context (RFC 8446 section 7.1)."""
    full = b"tls13 " + label.encode()
    info = u16(length) + u8(len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


@dataclass(frozen=True, slots=True)
class InitialKeys:
    """Packet protection keys of one side of a QUIC v1 Initial exchange (RFC 9001 5.2)."""

    key: bytes
    """AEAD_AES_128_GCM key."""
    iv: bytes
    """AEAD nonce base."""
    hp: bytes
    """Header protection key (AES-128-ECB)."""


def quic_initial_keys(original_dcid: bytes, server: bool) -> InitialKeys:
    """Derive the Initial keys from the client's first Destination Connection ID."""
    h = hmac.HMAC(QUIC_V1_SALT, hashes.SHA256())
    h.update(original_dcid)
    initial_secret = h.finalize()
    secret = hkdf_expand_label(initial_secret, "server in" if server else "client in", 32)
    return InitialKeys(hkdf_expand_label(secret, "quic key", 16),
                       hkdf_expand_label(secret, "quic iv", 12),
                       hkdf_expand_label(secret, "quic hp", 16))


def quic_protect_initial(keys: InitialKeys, dcid: bytes, scid: bytes, pn: int,
                         frames: bytes, min_size: int, pn_len: int = 2) -> bytes:
    """A protected QUIC v1 Initial packet (RFC 9000 17.2.2, RFC 9001 5.3 and 5.4).

    ``frames`` is padded with PADDING frames so the packet is at least ``min_size`` bytes;
    the packet number is sent in ``pn_len`` bytes.
    """
    first = 0xC0 | (pn_len - 1)  # long header, fixed bit, type Initial (0), pn length
    head = u8(first) + struct.pack("!I", 1) + u8(len(dcid)) + dcid + u8(len(scid)) + scid + b"\x00"
    overhead = len(head) + 2 + pn_len + 16  # 2-byte Length varint, AEAD tag
    if overhead + len(frames) < min_size:
        frames += bytes(min_size - overhead - len(frames))
    length = pn_len + len(frames) + 16
    header = head + u16(0x4000 | length) + pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(keys.key).encrypt(nonce, frames, header)
    sample = sealed[4 - pn_len: 4 - pn_len + 16]
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    pn_off = len(header) - pn_len
    prot = bytearray(header)
    prot[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        prot[pn_off + i] ^= mask[1 + i]
    return bytes(prot) + sealed


def quic_crypto_frame(data: bytes) -> bytes:
    """CRYPTO frame at offset 0 (RFC 9000 section 19.6)."""
    return b"\x06\x00" + quic_varint(len(data)) + data


def quic_long_filler(packet_type: int, dcid: bytes, scid: bytes, body: bytes) -> bytes:
    """A long-header packet whose protected payload is opaque (Handshake: type 2)."""
    first = 0xC0 | (packet_type << 4) | (body[0] & 0x0F)
    return (u8(first) + struct.pack("!I", 1) + u8(len(dcid)) + dcid + u8(len(scid)) + scid
            + u16(0x4000 | (len(body) - 1)) + body[1:])


def dns_name(name: str) -> bytes:
    return b"".join(u8(len(p)) + p.encode() for p in name.split(".")) + b"\x00"


DNS_OPT = b"\x00" + u16(41) + u16(1232) + b"\x00\x00\x00\x00" + u16(0)
"""EDNS(0) OPT pseudo-record, 1232-byte UDP size (RFC 6891)."""


def dns_query(name: str, qtype: int) -> bytes:
    """A recursive query with EDNS(0) (RFC 1035 section 4.1); the ID is patched per exchange."""
    return (struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 1) + dns_name(name)
            + u16(qtype) + u16(1) + DNS_OPT)


def dns_response(name: str, qtype: int, answers: Sequence[bytes], ttl: int) -> bytes:
    """The answer to :func:`dns_query`, records compressed to the question name."""
    rrs = b"".join(b"\xc0\x0c" + u16(qtype) + u16(1) + struct.pack("!I", ttl) + u16(len(a)) + a
                   for a in answers)
    return (struct.pack("!HHHHHH", 0, 0x8180, 1, len(answers), 0, 1) + dns_name(name)
            + u16(qtype) + u16(1) + rrs + DNS_OPT)


STUN_COOKIE = 0x2112A442
"""STUN magic cookie (RFC 8489 section 5)."""


def stun_attr(attr_type: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return u16(attr_type) + u16(len(value)) + value + bytes(pad)


def stun_message(msg_type: int, txid: bytes, attrs: Sequence[bytes], fingerprint: bool) -> bytes:
    """A STUN message (RFC 8489 section 5), with FINGERPRINT (section 14.7) when asked."""
    body = b"".join(attrs)
    if not fingerprint:
        return u16(msg_type) + u16(len(body)) + struct.pack("!I", STUN_COOKIE) + txid + body
    head = u16(msg_type) + u16(len(body) + 8) + struct.pack("!I", STUN_COOKIE) + txid
    crc = (zlib.crc32(head + body) ^ 0x5354554E) & 0xFFFFFFFF
    return head + body + stun_attr(0x8028, struct.pack("!I", crc))


def stun_xor_address(ip: bytes, port: int, txid: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 8489 section 14.2)."""
    key = struct.pack("!I", STUN_COOKIE) + txid
    family = 0x01 if len(ip) == 4 else 0x02
    x_ip = bytes(a ^ b for a, b in zip(ip, key, strict=False))
    return b"\x00" + u8(family) + u16(port ^ (STUN_COOKIE >> 16)) + x_ip


def rtcp_sender_report(ssrc: int, ntp: int, rtp_ts: int, count: int, cname: bytes) -> bytes:
    """RTCP SR with no report blocks followed by an SDES CNAME chunk (RFC 3550 6.4.1, 6.5)."""
    sr = struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, ntp, rtp_ts, count, count * 120)
    item = b"\x01" + u8(len(cname)) + cname + b"\x00"
    item += bytes((-(4 + len(item))) % 4)
    sdes = struct.pack("!BBHI", 0x81, 202, (4 + len(item)) // 4, ssrc) + item
    return sr + sdes


def rtcp_receiver_report(ssrc: int, media_ssrc: int, highest: int, jitter: int) -> bytes:
    """RTCP RR with one report block (RFC 3550 section 6.4.2)."""
    return struct.pack("!BBHIIIIIII", 0x81, 201, 7, ssrc, media_ssrc, 0, highest, jitter, 0, 0)


# --------------------------------------------------------------------------------------
# Names and addresses
# --------------------------------------------------------------------------------------

TLS_NAMES = (
    "web.whatsapp.com", "mmg.whatsapp.net", "g.whatsapp.net", "media-waw1-1.cdn.whatsapp.net",
    "teams.microsoft.com", "teams.live.com", "api.flightproxy.teams.microsoft.com",
    "zoom.us", "us04web.zoom.us", "edge.skype.com", "api.skype.com", "www.viber.com",
    "dl-media.viber.com", "edge-chat.facebook.com", "graph.facebook.com", "www.facebook.com",
    "scontent.xx.fbcdn.net", "www.messenger.com", "chat.signal.org", "storage.signal.org",
    "web.telegram.org", "venus.web.telegram.org", "meet.google.com", "www.google.com",
    "mail.google.com", "play.googleapis.com", "fonts.gstatic.com", "www.gstatic.com",
    "i.ytimg.com", "www.instagram.com", "i.instagram.com", "www.netflix.com",
    "occ-0-1234-3211.1.nflxso.net", "www.amazon.com", "m.media-amazon.com",
    "gateway.icloud.com", "init.push.apple.com", "github.com", "api.github.com",
    "en.wikipedia.org", "www.bing.com", "login.microsoftonline.com", "outlook.office365.com",
    "www.linkedin.com", "x.com", "abs.twimg.com", "www.tiktok.com", "discord.com",
    "gateway.discord.gg", "slack.com", "wss-primary.slack.com", "www.reddit.com",
    "cdn.jsdelivr.net", "www.cloudflare.com", "update.googleapis.com",
    "settings-win.data.microsoft.com",
)
"""Server names seen in TLS over TCP."""
QUIC_NAMES = (
    "www.google.com", "www.youtube.com", "rr4---sn-4g5e6nsz.googlevideo.com", "i.ytimg.com",
    "fonts.gstatic.com", "meet.google.com", "mail.google.com", "www.facebook.com",
    "edge-chat.facebook.com", "scontent.xx.fbcdn.net", "www.instagram.com",
    "graph.instagram.com", "static.xx.fbcdn.net", "www.cloudflare.com", "cdnjs.cloudflare.com",
)
"""Server names seen in QUIC Initials."""
V4_SERVER_NETS = ((31, 13), (157, 240), (142, 250), (172, 217), (52, 112), (13, 107),
                  (104, 16), (151, 101), (17, 253), (3, 33), (20, 190), (185, 60), (162, 159),
                  (149, 154), (91, 108), (170, 114), (204, 80), (3, 7))
"""First two octets of the IPv4 server addresses."""
V6_SERVER_NETS = ("2a032880", "2607f8b0", "26201ec0", "2a001450", "26064700", "2a0eb100")
"""First 32 bits of the IPv6 server addresses."""
DNS_SERVER_V4 = bytes([10, 20, 0, 53])
DNS_SERVER_V6 = bytes.fromhex("fd000000000000000000000000000053")


# --------------------------------------------------------------------------------------
# Flow table and packet columns
# --------------------------------------------------------------------------------------

@dataclass(slots=True)
class Flow:
    """One bidirectional flow: its endpoints and the per-direction constants of its headers."""

    kind: Kind
    """What the flow carries."""
    tcp: bool
    """TCP (else UDP)."""
    client_ip: bytes
    """Originator address (4 or 16 bytes)."""
    server_ip: bytes
    """Responder address, same family."""
    cport: int
    """Originator port."""
    sport: int
    """Responder port."""
    client_mac: bytes
    """Originator's Ethernet address."""
    vlan: int
    """802.1Q VLAN ID, 0 for untagged."""
    tos: int
    """IPv4 TOS / IPv6 traffic class byte, both directions."""
    ttl: tuple[int, int]
    """TTL / hop limit as seen at the capture point, per direction."""
    window: tuple[int, int]
    """TCP receive window field, per direction."""
    label: tuple[int, int]
    """IPv6 flow label, per direction."""
    ssrc: tuple[int, int] = (0, 0)
    """RTP SSRC per direction."""
    payload_type: int = 0
    """RTP payload type (same both ways)."""
    cid: tuple[bytes, bytes] = (b"", b"")
    """QUIC connection ID the packets of each direction carry as DCID."""


class Capture:
    """Collects flows, their messages and their packet columns, then writes the pcap."""

    def __init__(self, seed: int, scale: int) -> None:
        self.scale = scale
        self.span_us = BASE_SPAN_US * scale
        self.frng = np.random.default_rng([seed, 1])  # flows: independent of the scale
        self.prng = np.random.default_rng([seed, 2, scale])  # per-packet draws
        self.flows: list[Flow] = []
        self.fill = np.random.default_rng([seed, 3]).integers(0, 256, FILL_POOL, dtype=np.uint8)
        self.msg_parts: list[bytes] = []
        self.msg_size = 0
        self.cols: dict[str, list[npt.NDArray[Any]]] = {
            k: [] for k in ("ts", "flow", "dir", "var", "flags", "off", "len", "rtp_ts",
                            "marker", "patch", "xid")}
        self.n_clients = 4000

    # ---- flows -------------------------------------------------------------------
    def new_flow(self, kind: Kind, tcp: bool, v6: bool, sport: int, server_ip: bytes | None,
                 used: set[tuple[bytes, int, bytes, int, bool]]) -> int:
        """Draw a client, a port and a server for a new flow with a unique 5-tuple."""
        r = self.frng
        while True:
            c = int(r.integers(self.n_clients))
            if v6:
                cip = bytes.fromhex("20010db8") + bytes([0x10, c >> 8, c & 0xFF, 0]) + bytes(4) \
                    + r.bytes(4)
            else:
                cip = bytes([10, 20 + c // 250 % 40, c % 250 + 2, 10 + c * 7 % 200])
            if server_ip is None:
                if v6:
                    sip = bytes.fromhex(V6_SERVER_NETS[int(r.integers(len(V6_SERVER_NETS)))]) \
                        + r.bytes(12)
                else:
                    net = V4_SERVER_NETS[int(r.integers(len(V4_SERVER_NETS)))]
                    sip = bytes([net[0], net[1], int(r.integers(256)), int(r.integers(1, 255))])
            else:
                sip = server_ip
            cport = int(r.integers(32768, 61000))
            key = (cip, cport, sip, sport, tcp)
            if key not in used:
                used.add(key)
                break
        win = (int(r.integers(500, 2100)), int(r.integers(250, 1100))) if tcp else (0, 0)
        self.flows.append(Flow(
            kind=kind, tcp=tcp, client_ip=cip, server_ip=sip, cport=cport, sport=sport,
            client_mac=bytes([0x02, 0x00, 0x5E, c >> 8, c & 0xFF, 0x01]),
            vlan=int(r.choice((100, 200, 300, 1010))) if r.random() < 0.08 else 0,
            tos=0, ttl=(int(r.choice((64, 128))), int(r.integers(44, 60))), window=win,
            label=(int(r.integers(1 << 20)), int(r.integers(1 << 20))) if v6 else (0, 0)))
        return len(self.flows) - 1

    def message(self, data: bytes) -> tuple[int, int]:
        """Store a per-flow message; returns its (offset in the payload pool, length)."""
        off = FILL_POOL + self.msg_size
        self.msg_parts.append(data)
        self.msg_size += len(data)
        return off, len(data)

    # ---- packets -----------------------------------------------------------------
    def emit(self, flows: I64, t0: I64, period: I64, reps: I64, slots: Sequence[Slot], *,
             msgs: Mapping[str, tuple[I64, I64]] | None = None, size_base: I64 | None = None,
             stretch: F64 | None = None, rtp_step: int = 0, marker_last: bool = False,
             rtp_ts0: I64 | None = None) -> None:
        """Expand ``reps[i]`` units of ``slots`` for flow ``flows[i]``, every ``period[i]`` µs."""
        r = self.prng
        msgs = msgs or {}
        reps = np.asarray(reps, dtype=np.int64)
        n_units = int(reps.sum())
        if n_units == 0:
            return
        uf = np.repeat(np.arange(len(flows)), reps)
        first = np.cumsum(reps) - reps
        ui = np.arange(n_units, dtype=np.int64) - np.repeat(first, reps)
        ut = t0[uf] + ui * period[uf]
        n_slots = len(slots)
        offs = np.array([s.offset_us for s in slots], dtype=np.float64)
        jit = np.array([s.jitter_us for s in slots], dtype=np.float64)
        scale = stretch[uf][:, None] if stretch is not None else np.ones((n_units, 1))
        ts = ut[:, None] + (offs[None, :] * scale).astype(np.int64) \
            + (r.random((n_units, n_slots)) * jit[None, :]).astype(np.int64)
        keep = r.random((n_units, n_slots)) < np.array([s.keep for s in slots])[None, :]
        length = np.zeros((n_units, n_slots), dtype=np.int64)
        off = np.zeros((n_units, n_slots), dtype=np.int64)
        for j, s in enumerate(slots):
            if s.msg is not None:
                m_off, m_len = msgs[s.msg]
                part_len = np.clip(m_len[uf] - s.part * MSS, 0, MSS)
                length[:, j] = part_len
                off[:, j] = m_off[uf] + s.part * MSS
                keep[:, j] &= part_len > 0
            else:
                lo, hi = s.size
                n = r.integers(lo, hi + 1, n_units)
                if size_base is not None:
                    n = n + size_base[uf]
                n = np.clip(n, s.clip[0], s.clip[1])
                length[:, j] = n
                off[:, j] = r.integers(0, FILL_POOL - n)
        is_rtp = np.array([s.variant == Variant.RTP for s in slots])
        marker = np.zeros((n_units, n_slots), dtype=np.bool_)
        if marker_last and is_rtp.any():
            cand = keep & is_rtp[None, :]
            last = n_slots - 1 - np.argmax(cand[:, ::-1], axis=1)
            rows = np.flatnonzero(cand.any(axis=1))
            marker[rows, last[rows]] = True
        rtp_ts = np.zeros((n_units, n_slots), dtype=np.int64)
        if is_rtp.any():
            base = rtp_ts0[uf] if rtp_ts0 is not None else np.zeros(n_units, dtype=np.int64)
            rtp_ts[:, is_rtp] = ((base + ui * rtp_step) & 0xFFFFFFFF)[:, None]
        xid = np.repeat(r.integers(0, 1 << 32, n_units, dtype=np.int64)[:, None], n_slots, 1)
        flat = keep.ravel()
        c = self.cols
        c["ts"].append(ts.ravel()[flat])
        c["flow"].append(np.repeat(flows[uf][:, None], n_slots, 1).ravel()[flat])
        c["dir"].append(np.tile(np.array([s.direction for s in slots], np.int8), n_units)[flat])
        c["var"].append(np.tile(np.array([s.variant for s in slots], np.int8), n_units)[flat])
        c["flags"].append(np.tile(np.array([s.flags for s in slots], np.uint8), n_units)[flat])
        c["off"].append(off.ravel()[flat])
        c["len"].append(length.ravel()[flat])
        c["rtp_ts"].append(rtp_ts.ravel()[flat])
        c["marker"].append(marker.ravel()[flat])
        c["patch"].append(np.tile(np.array([s.patch for s in slots], np.int8), n_units)[flat])
        c["xid"].append(xid.ravel()[flat])

    def drawn(self) -> int:
        """Packets emitted so far."""
        return sum(len(ts) for ts in self.cols["ts"])

    # ---- writing -----------------------------------------------------------------
    def write(self, path: Path) -> dict[str, Any]:
        """Sort the packets, compute the per-packet fields and write the pcap."""
        col = {k: np.concatenate(v) for k, v in self.cols.items()}
        self.cols = {}
        n = len(col["ts"])
        flow = col["flow"].astype(np.int64)
        d = col["dir"].astype(np.int64)
        var = col["var"].astype(np.int64)
        plen = col["len"]
        prefix = np.array([PREFIX_LEN[Variant(v)] for v in range(N_VARIANTS)], np.int64)[var]
        nf = len(self.flows)
        is_tcp = np.array([f.tcp for f in self.flows])
        # IP ID and RTP sequence: running counts per (flow, direction) in time order.
        fd = flow * 2 + d
        order = np.lexsort((col["ts"], fd))
        ipid0 = self.frng.integers(0, 1 << 16, nf * 2)
        rtp0 = self.frng.integers(0, 1 << 16, nf * 2)
        isn = self.frng.integers(0, 1 << 32, nf * 2)
        ipid = np.empty(n, np.int64)
        ipid[order] = group_count(fd[order])
        ipid = (ipid + ipid0[fd]) & 0xFFFF
        rtp_key = fd * 2 + (var == Variant.RTP)
        order = np.lexsort((col["ts"], rtp_key))
        rtp_seq = np.empty(n, np.int64)
        rtp_seq[order] = group_count(rtp_key[order])
        rtp_seq = (rtp_seq + rtp0[fd]) & 0xFFFF
        # TCP sequence and acknowledgement numbers (RFC 9293 3.4), in time order per flow.
        flags = col["flags"].astype(np.int64)
        seq = np.zeros(n, np.int64)
        ack = np.zeros(n, np.int64)
        tcp_pk = np.flatnonzero(is_tcp[flow])
        if len(tcp_pk):
            o = tcp_pk[np.lexsort((col["ts"][tcp_pk], flow[tcp_pk]))]
            used = plen[o] + prefix[o] + ((flags[o] & (TCP_SYN | TCP_FIN)) != 0)
            dd = d[o]
            fo = flow[o]
            c0 = group_cumsum(fo, np.where(dd == 0, used, 0))
            c1 = group_cumsum(fo, np.where(dd == 1, used, 0))
            own = np.where(dd == 0, c0, c1) - used
            other = np.where(dd == 0, c1, c0)
            seq[o] = (isn[fo * 2 + dd] + own) & 0xFFFFFFFF
            ack[o] = np.where(flags[o] & TCP_ACK, (isn[fo * 2 + 1 - dd] + other) & 0xFFFFFFFF, 0)
        # Output order: time, made strictly increasing.
        order = np.argsort(col["ts"], kind="stable")
        ts = col["ts"][order]
        ar = np.arange(n, dtype=np.int64)
        ts = np.maximum.accumulate(ts - ar) + ar
        tmpl = Templates(self.flows)
        lay_of, row_of = tmpl.build(flow, d, var)
        fields = {
            "ts": ts, "lay": lay_of[order], "row": row_of[order], "len": plen[order],
            "off": col["off"][order], "flags": flags[order], "seq": seq[order], "ack": ack[order],
            "ipid": ipid[order], "rtp_seq": rtp_seq[order], "rtp_ts": col["rtp_ts"][order],
            "marker": col["marker"][order], "patch": col["patch"][order],
            "xid": col["xid"][order],
        }
        pool = Pool(np.concatenate([self.fill,
                                    np.frombuffer(b"".join(self.msg_parts), np.uint8)]))
        size = 24
        with path.open("wb") as fh:
            fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
            for i0 in range(0, n, CHUNK):
                part = {k: v[i0:i0 + CHUNK] for k, v in fields.items()}
                out = assemble(part, tmpl, pool)
                fh.write(out)
                size += len(out)
        per_flow = np.bincount(flow, minlength=nf)
        kinds = np.array([f.kind for f in self.flows])
        by_kind = {k.name.lower(): {"flows": int((kinds == k).sum()),
                                    "packets": int(per_flow[kinds == k].sum())} for k in Kind}
        return {"packets": n, "flows": nf, "bytes": size, "by_kind": by_kind,
                "ipv6_flows": sum(len(f.client_ip) == 16 for f in self.flows),
                "vlan_flows": sum(f.vlan != 0 for f in self.flows),
                "first_ts": EPOCH_S + int(ts[0]) / 1e6, "last_ts": EPOCH_S + int(ts[-1]) / 1e6}


def group_count(keys: I64) -> I64:
    """Running index within runs of equal keys (keys sorted)."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, np.int64)
    start = np.concatenate([[True], keys[1:] != keys[:-1]])
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    return np.arange(n, dtype=np.int64) - first


def group_cumsum(keys: I64, values: I64) -> I64:
    """Inclusive running sum of ``values`` within runs of equal keys (keys sorted)."""
    n = len(keys)
    total = np.cumsum(values)
    start = np.concatenate([[True], keys[1:] != keys[:-1]])
    first = np.maximum.accumulate(np.where(start, np.arange(n), 0))
    before = (total - values)[first]
    return np.asarray(total - before, dtype=np.int64)


# --------------------------------------------------------------------------------------
# Header templates and record assembly
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Layout:
    """Where the patched fields sit in the header of one (VLAN, family, L4, variant) shape."""

    vlan: bool
    """Has an 802.1Q tag."""
    v6: bool
    """IPv6 (else IPv4)."""
    tcp: bool
    """TCP (else UDP)."""
    variant: Variant
    """Header variant."""

    @property
    def ip(self) -> int:
        return 18 if self.vlan else 14

    @property
    def l4(self) -> int:
        return self.ip + (40 if self.v6 else 20)

    @property
    def prefix(self) -> int:
        if not self.tcp:
            return self.l4 + 8
        return self.l4 + (32 if self.variant == Variant.SYN else 20)

    @property
    def size(self) -> int:
        return self.prefix + PREFIX_LEN[self.variant]


class Templates:
    """Header bytes per (flow, direction, variant), grouped by layout."""

    def __init__(self, flows: Sequence[Flow]) -> None:
        self.flows = flows
        self.layouts: list[Layout] = []
        self.rows: list[list[bytes]] = []
        self.psum: list[list[int]] = []
        self.arrays: list[U8] = []
        self.psums: list[I64] = []

    def build(self, flow: I64, d: I64, var: I64) -> tuple[I64, I64]:
        """Make the templates the packets need; return each packet's (layout, row)."""
        key = (flow * 2 + d) * N_VARIANTS + var
        uniq, inv = np.unique(key, return_inverse=True)
        lay_ids: dict[Layout, int] = {}
        lay_u = np.empty(len(uniq), np.int64)
        row_u = np.empty(len(uniq), np.int64)
        for i, k in enumerate(uniq.tolist()):
            fi, rest = divmod(k, 2 * N_VARIANTS)
            direction, v = divmod(rest, N_VARIANTS)
            f = self.flows[fi]
            layout = Layout(f.vlan != 0, len(f.client_ip) == 16, f.tcp, Variant(v))
            li = lay_ids.get(layout)
            if li is None:
                li = lay_ids[layout] = len(self.layouts)
                self.layouts.append(layout)
                self.rows.append([])
                self.psum.append([])
            head, psum = header(f, direction, Variant(v))
            lay_u[i] = li
            row_u[i] = len(self.rows[li])
            self.rows[li].append(head)
            self.psum[li].append(psum)
        for li, layout in enumerate(self.layouts):
            self.arrays.append(np.frombuffer(b"".join(self.rows[li]), np.uint8)
                               .reshape(-1, layout.size))
            self.psums.append(np.array(self.psum[li], np.int64))
        self.rows = []
        return lay_u[inv.ravel()], row_u[inv.ravel()]


def header(f: Flow, direction: int, variant: Variant) -> tuple[bytes, int]:
    """Header template of one direction of a flow and the sum of its pseudo-header addresses."""
    v6 = len(f.client_ip) == 16
    src, dst = (f.client_ip, f.server_ip) if direction == 0 else (f.server_ip, f.client_ip)
    sport, dport = (f.cport, f.sport) if direction == 0 else (f.sport, f.cport)
    smac, dmac = (f.client_mac, ROUTER_MAC) if direction == 0 else (ROUTER_MAC, f.client_mac)
    ethertype = 0x86DD if v6 else 0x0800
    eth = dmac + smac + (u16(0x8100) + u16(f.vlan) if f.vlan else b"") + u16(ethertype)
    proto = 6 if f.tcp else 17
    if v6:
        ip = struct.pack("!IHBB", (6 << 28) | (f.tos << 20) | f.label[direction], 0, proto,
                         f.ttl[direction]) + src + dst
    else:
        ip = struct.pack("!BBHHHBBH", 0x45, f.tos, 0, 0, 0x4000, f.ttl[direction], proto, 0) \
            + src + dst
    if f.tcp:
        opts = b""
        if variant == Variant.SYN:
            opts = struct.pack("!BBH", 2, 4, 1440 if v6 else 1460) + b"\x01\x03\x03\x07" \
                + b"\x01\x01\x04\x02"
        # Windows in SYNs are never scaled (RFC 7323 2.2): typical initial values there.
        win = (64240, 65535)[direction] if variant == Variant.SYN else f.window[direction]
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, (5 + len(opts) // 4) << 4, 0,
                         win, 0, 0) + opts
    else:
        l4 = struct.pack("!HHHH", sport, dport, 0, 0)
    if variant == Variant.RTP:
        pre = struct.pack("!BBHII", 0x80, f.payload_type, 0, 0, f.ssrc[direction])
    elif variant == Variant.QUIC_SHORT:
        pre = u8(0x40 | (f.ssrc[direction] & 0x3F)) + f.cid[direction]
    elif variant == Variant.TLS_RECORD:
        pre = b"\x17\x03\x03\x00\x00"
    else:
        pre = b""
    addr = src + dst
    psum = sum(struct.unpack(f"!{len(addr) // 2}H", addr)) + proto
    return eth + ip + l4 + pre, psum


def put16(h: U8, col: int, v: I64) -> None:
    h[:, col] = (v >> 8) & 0xFF
    h[:, col + 1] = v & 0xFF


def put32(h: U8, col: int, v: I64) -> None:
    for i in range(4):
        h[:, col + i] = (v >> (24 - 8 * i)) & 0xFF


def fold(s: I64) -> I64:
    """One's-complement fold of a 64-bit sum to 16 bits (RFC 1071)."""
    for _ in range(4):
        s = (s & 0xFFFF) + (s >> 16)
    return s


class Pool:
    """The bytes payloads are sliced from, with running 16-bit word sums for checksums.

    Sums are kept modulo 65535, which is one's-complement addition (RFC 1071); ``even`` sums
    the words that start at even pool offsets, ``odd`` those that start at odd ones.
    """

    def __init__(self, data: U8) -> None:
        self.data = data
        self.view = memoryview(data.data)
        self.even = running_mod(data, 0)
        self.odd = running_mod(data, 1)

    def word_sum(self, off: I64, length: I64) -> I64:
        """One's-complement sum (mod 65535) of each slice, an odd tail byte padded with zero."""
        half = length // 2
        k = off // 2
        s = np.where(off % 2 == 0, self.even[k + half] - self.even[k],
                     self.odd[k + half] - self.odd[k])
        tail = np.where(length % 2 == 1, self.data[np.maximum(off + length - 1, 0)]
                        .astype(np.int64) << 8, 0)
        return np.asarray((s + tail) % 65535, dtype=np.int64)


def running_mod(data: U8, start: int) -> npt.NDArray[np.int32]:
    """Running sums modulo 65535, with a leading zero, of the big-endian words at
    ``data[start::2]`` (a missing last low byte counts as zero); done in blocks to bound memory.
    """
    n_words = (len(data) - start + 1) // 2
    out = np.empty(n_words + 1, np.int32)
    out[0] = 0
    carry = 0
    step = 1 << 22
    for w0 in range(0, n_words, step):
        b0 = start + 2 * w0
        block = data[b0:b0 + 2 * step + 1]
        hi = block[0::2][:min(step, n_words - w0)].astype(np.int64) << 8
        lo = np.zeros(len(hi), np.int64)
        low = block[1::2][:len(hi)]
        lo[:len(low)] = low
        c = np.cumsum(hi | lo) + carry
        out[w0 + 1:w0 + 1 + len(c)] = c % 65535
        carry = int(c[-1] % 65535)
    return out


def assemble(p: Mapping[str, npt.NDArray[Any]], tmpl: Templates, pool: Pool) -> bytearray:
    """Build the pcap records of one chunk of packets (in output order)."""
    n = len(p["ts"])
    lay = p["lay"]
    hlen = np.array([la.size for la in tmpl.layouts], np.int64)[lay]
    plen = p["len"].astype(np.int64)
    poff = p["off"].astype(np.int64)
    cap = hlen + plen
    rec_start = np.cumsum(16 + cap) - (16 + cap)
    buf = bytearray(int((16 + cap).sum()))
    out = np.frombuffer(buf, np.uint8)
    ts = p["ts"]
    rec = np.empty((n, 4), "<u4")
    rec[:, 0] = EPOCH_S + ts // 1_000_000
    rec[:, 1] = ts % 1_000_000
    rec[:, 2] = cap
    rec[:, 3] = cap
    out[rec_start[:, None] + np.arange(16)] = rec.view(np.uint8).reshape(n, 16)
    hstart = rec_start + 16
    # Payload word sums, with the per-exchange identifiers that are written in later.
    xid = p["xid"].astype(np.int64)
    patch = p["patch"]
    pay_sum = pool.word_sum(poff, plen)
    pay_sum += np.where(patch == Patch.DNS_ID, xid & 0xFFFF, 0)
    pay_sum += np.where(patch == Patch.STUN_TXID, (xid >> 16) + (xid & 0xFFFF), 0)
    for li in np.unique(lay).tolist():
        la = tmpl.layouts[li]
        idx = np.flatnonzero(lay == li)
        h = tmpl.arrays[li][p["row"][idx]]
        pl = plen[idx]
        ip = la.ip
        l4_len = la.size - la.l4 + pl
        if la.v6:
            put16(h, ip + 4, l4_len)
        else:
            put16(h, ip + 2, la.size - ip + pl)
            put16(h, ip + 4, p["ipid"][idx])
            w = h[:, ip:ip + 20].astype(np.int64)
            put16(h, ip + 10, ~fold((w[:, 0::2] << 8 | w[:, 1::2]).sum(axis=1)) & 0xFFFF)
        if la.tcp:
            put32(h, la.l4 + 4, p["seq"][idx])
            put32(h, la.l4 + 8, p["ack"][idx])
            h[:, la.l4 + 13] = p["flags"][idx]
            csum_col = la.l4 + 16
        else:
            put16(h, la.l4 + 4, l4_len)
            csum_col = la.l4 + 6
        if la.variant == Variant.RTP:
            h[:, la.prefix + 1] |= (p["marker"][idx].astype(np.uint8) << 7)
            put16(h, la.prefix + 2, p["rtp_seq"][idx])
            put32(h, la.prefix + 4, p["rtp_ts"][idx])
        elif la.variant == Variant.TLS_RECORD:
            put16(h, la.prefix + 3, pl)
        # L4 checksum (RFC 768, RFC 9293 3.1, RFC 8200 8.1): pseudo-header, L4 header and
        # prefix, payload. A payload that starts at an odd offset adds its sum byte-swapped,
        # which modulo 65535 is a multiplication by 256.
        seg = h[:, la.l4:].astype(np.int64)
        if seg.shape[1] % 2:
            seg = np.concatenate([seg, np.zeros((len(idx), 1), np.int64)], axis=1)
        hsum = (seg[:, 0::2] << 8 | seg[:, 1::2]).sum(axis=1)
        shift = 256 if (la.size - la.l4) % 2 else 1
        total = (tmpl.psums[li][p["row"][idx]] + l4_len + hsum + pay_sum[idx] * shift) % 65535
        c = ~np.where(total == 0, 0xFFFF, total) & 0xFFFF
        put16(h, csum_col, np.where(c == 0, 0xFFFF, c))
        out[hstart[idx][:, None] + np.arange(la.size)] = h
    # Payload slices from the pool, then the per-exchange identifiers.
    pstart = hstart + hlen
    src = pool.view
    dst = memoryview(buf)
    for d, o, ln in zip(pstart.tolist(), poff.tolist(), plen.tolist(), strict=True):
        dst[d:d + ln] = src[o:o + ln]
    sel = np.flatnonzero(patch == Patch.DNS_ID)
    for i in range(2):
        out[pstart[sel] + i] = (xid[sel] >> (8 - 8 * i)) & 0xFF
    sel = np.flatnonzero(patch == Patch.STUN_TXID)
    for i in range(4):
        out[pstart[sel] + 16 + i] = (xid[sel] >> (24 - 8 * i)) & 0xFF
    return buf


# --------------------------------------------------------------------------------------
# The traffic mix
# --------------------------------------------------------------------------------------

def fit_starts(cap: Capture, dur: I64) -> I64:
    """Start times so each flow of length ``dur`` (µs, already scaled) ends inside the capture."""
    room = np.maximum(cap.span_us - dur - 1_000_000, 0)
    return (cap.frng.random(len(dur)) * room).astype(np.int64)


def media_durations(cap: Capture, budget: int, pps: float,
                    call_s: tuple[float, float] = (20.0, 150.0)) -> list[int]:
    """Call lengths (scale-1 µs), uniform in ``call_s`` seconds, whose packets add up to
    about ``budget``; the last one is cut to what is left."""
    out: list[int] = []
    left = budget
    while left > pps * min(5.0, call_s[0]):
        d = float(cap.frng.uniform(*call_s))
        d = min(d, left / pps)
        out.append(int(d * 1e6))
        left -= int(d * pps)
    return out


def add_ice(cap: Capture, ids: I64, t0: I64, msgs: dict[str, tuple[I64, I64]]) -> None:
    """Two ICE connectivity checks (both sides) before the media on the same 5-tuple."""
    slots = [Slot(0, 0, 2000, msg="ice_req0"), Slot(1, 20_000, 8000, msg="ice_resp0"),
             Slot(1, 40_000, 2000, msg="ice_req1"), Slot(0, 60_000, 8000, msg="ice_resp1")]
    ones = np.ones(len(ids), np.int64)
    cap.emit(ids, t0, ones, ones, slots, msgs=msgs)


def ice_messages(cap: Capture, f: Flow, msgs: dict[str, list[tuple[int, int]]]) -> None:
    """STUN binding request/response pairs as ICE sends them (RFC 8445 7.1.1, 7.2.5)."""
    r = cap.frng
    ufrag = (r.bytes(4).hex(), r.bytes(4).hex())
    for side in (0, 1):
        src_ip, src_port = (f.client_ip, f.cport) if side == 0 else (f.server_ip, f.sport)
        txid = r.bytes(12)
        attrs = [stun_attr(0x0006, f"{ufrag[1 - side]}:{ufrag[side]}".encode()),
                 stun_attr(0x0024, struct.pack("!I", 0x6E7F1EFF)),
                 stun_attr(0x802A if side == 0 else 0x8029, r.bytes(8)),
                 stun_attr(0x0008, r.bytes(20))]
        req = stun_message(0x0001, txid, attrs, fingerprint=True)
        resp = stun_message(0x0101, txid, [stun_attr(0x0020, stun_xor_address(src_ip, src_port,
                                                                                txid)),
                                           stun_attr(0x0008, r.bytes(20))], fingerprint=True)
        msgs[f"ice_req{side}"].append(cap.message(req))
        msgs[f"ice_resp{side}"].append(cap.message(resp))


def as_arrays(msgs: Mapping[str, list[tuple[int, int]]]) -> dict[str, tuple[I64, I64]]:
    return {k: (np.array([a for a, _ in v], np.int64), np.array([b for _, b in v], np.int64))
            for k, v in msgs.items()}


def gen_media(cap: Capture, kind: Kind, budget: int, used: set[Any],
              call_s: tuple[float, float] = (20.0, 150.0)) -> int:
    """Voice (two-way, 50 pps per direction) or video (bursty frames one way, RTCP back),
    one flow per call, each lasting ``call_s`` seconds (uniform) at scale 1.

    Returns the expected packet count at scale 1.
    """
    r = cap.frng
    video = kind == Kind.VIDEO
    pps = 125.0 if video else 100.0
    durs = media_durations(cap, budget, pps, call_s)
    ids: list[int] = []
    msgs: dict[str, list[tuple[int, int]]] = {k: [] for k in (
        "ice_req0", "ice_resp0", "ice_req1", "ice_resp1", "rtcp0", "rtcp1")}
    sizes: list[int] = []
    fps30: list[bool] = []
    for _ in durs:
        v6 = r.random() < 0.1
        port = int(r.choice((3478, 3479, 3480, 3481, int(r.integers(16384, 32768)),
                             int(r.integers(50000, 60000)))))
        fid = cap.new_flow(kind, False, v6, port, None, used)
        f = cap.flows[fid]
        f.ssrc = (int(r.integers(1, 1 << 32)), int(r.integers(1, 1 << 32)))
        f.tos = 0xB8 if r.random() < 0.3 else 0
        if video:
            f.payload_type = int(r.choice((96, 98, 102)))
            fps30.append(bool(r.random() < 0.7))
        else:
            f.payload_type = 111 if r.random() < 0.8 else 0
        sizes.append(160 if f.payload_type == 0 else int(r.integers(70, 186)))
        ice_messages(cap, f, msgs)
        cname = r.bytes(8).hex().encode()
        if video:
            msgs["rtcp0"].append(cap.message(rtcp_sender_report(
                f.ssrc[0], int(r.integers(1 << 62)), int(r.integers(1 << 32)), 1000, cname)))
            msgs["rtcp1"].append(cap.message(rtcp_receiver_report(
                f.ssrc[1], f.ssrc[0], int(r.integers(1 << 16)), int(r.integers(10, 300)))))
        else:
            for side in (0, 1):
                msgs[f"rtcp{side}"].append(cap.message(rtcp_sender_report(
                    f.ssrc[side], int(r.integers(1 << 62)), int(r.integers(1 << 32)), 250,
                    cname)))
        ids.append(fid)
    if not ids:
        return 0
    fids = np.array(ids, np.int64)
    dur = np.array(durs, np.int64) * cap.scale
    t0 = fit_starts(cap, dur)
    m = as_arrays(msgs)
    add_ice(cap, fids, t0, m)
    start = t0 + 100_000
    rtp_ts0 = r.integers(0, 1 << 32, len(ids))
    if video:
        fps = np.array(fps30)
        period = np.where(fps, 33_333, 66_667).astype(np.int64)
        keep = (1.0, 1.0, 0.9, 0.7, 0.5, 0.35, 0.2, 0.1)
        frame = [Slot(0, 250 * i, 100, Variant.RTP, size=(1030, 1150), keep=k)
                 for i, k in enumerate(keep)]
        for group, step in ((fps, 3000), (~fps, 6000)):
            sel = np.flatnonzero(group)
            reps = dur[sel] // period[sel]
            cap.emit(fids[sel], start[sel], period[sel], reps, frame, rtp_step=step,
                     marker_last=True, rtp_ts0=rtp_ts0[sel])
        rtcp = [Slot(0, 0, 50_000, msg="rtcp0"), Slot(1, 500_000, 50_000, msg="rtcp1")]
        cap.emit(fids, start, np.full(len(ids), 1_000_000), dur // 1_000_000, rtcp, msgs=m)
        per_frame = sum(keep)
        base_units = np.array(durs, np.int64) // period
        seconds = np.array(durs, np.int64) // 1_000_000
        return int(4 * len(ids) + base_units.sum() * per_frame + 2 * seconds.sum())
    else:
        base = np.array(sizes, np.int64)
        pcmu = base == 160
        for group, spread, step in ((pcmu, 0, 160), (~pcmu, 12, 960)):
            sel = np.flatnonzero(group)
            two_way = [Slot(0, 0, 1500, Variant.RTP, size=(-spread, spread), clip=(60, 200)),
                       Slot(1, 9000, 3000, Variant.RTP, size=(-spread, spread), clip=(60, 200))]
            cap.emit(fids[sel], start[sel], np.full(len(sel), 20_000), dur[sel] // 20_000,
                     two_way, size_base=base[sel], rtp_step=step, rtp_ts0=rtp_ts0[sel])
        rtcp = [Slot(0, 0, 100_000, msg="rtcp0"), Slot(1, 2_500_000, 100_000, msg="rtcp1")]
        cap.emit(fids, start, np.full(len(ids), 5_000_000), dur // 5_000_000, rtcp, msgs=m)
        base_s = np.array(durs, np.int64) // 1_000_000
        return int(4 * len(ids) + 100 * base_s.sum() + 2 * (base_s // 5).sum())


def gen_dns(cap: Capture, n: int, used: set[Any]) -> int:
    """Stub-resolver sockets: a query and its answer, repeated K times at scale K.

    Returns the packet count at scale 1.
    """
    r = cap.frng
    names = TLS_NAMES + QUIC_NAMES
    ids: list[int] = []
    msgs: dict[str, list[tuple[int, int]]] = {"q": [], "a": []}
    for _ in range(n):
        v6 = r.random() < 0.15
        fid = cap.new_flow(Kind.DNS, False, v6, 53, DNS_SERVER_V6 if v6 else DNS_SERVER_V4, used)
        name = names[int(r.integers(len(names)))]
        qtype = int(r.choice((1, 28, 65), p=(0.6, 0.3, 0.1)))
        if qtype == 1:
            answers = [r.bytes(4) for _ in range(int(r.integers(1, 4)))]
        elif qtype == 28:
            answers = [bytes.fromhex("2a00145040010800") + r.bytes(8)
                       for _ in range(int(r.integers(1, 3)))]
        else:
            answers = [u16(1) + b"\x00" + tls_ext(1, b"\x02h3\x02h2")]  # HTTPS RR, RFC 9460
        msgs["q"].append(cap.message(dns_query(name, qtype)))
        msgs["a"].append(cap.message(dns_response(name, qtype, answers,
                                                  int(r.integers(30, 3600)))))
        ids.append(fid)
    reps = np.where(r.random(n) < 0.85, 1, r.integers(2, 5, n)).astype(np.int64)
    period = r.integers(15_000_000, 90_000_000, n).astype(np.int64)
    slots = [Slot(0, 0, 0, msg="q", patch=Patch.DNS_ID),
             Slot(1, 3000, 60_000, msg="a", patch=Patch.DNS_ID)]
    emit_repeated(cap, np.array(ids, np.int64), reps, period, slots, as_arrays(msgs))
    return int(reps.sum()) * 2


def emit_repeated(cap: Capture, ids: I64, reps: I64, period: I64, slots: Sequence[Slot],
                  msgs: Mapping[str, tuple[I64, I64]]) -> None:
    """Repeat a unit ``reps * scale`` times, shortening the period when it would not fit."""
    reps = reps * cap.scale
    period = np.minimum(period, (cap.span_us * 9 // 10) // reps)
    t0 = fit_starts(cap, reps * period)
    cap.emit(ids, t0, period, reps, slots, msgs=msgs)


def gen_stun(cap: Capture, n: int, used: set[Any]) -> int:
    """Server-reflexive address discovery and keepalives: binding request and response.

    Returns the packet count at scale 1.
    """
    r = cap.frng
    ids: list[int] = []
    msgs: dict[str, list[tuple[int, int]]] = {"q": [], "a": []}
    for _ in range(n):
        v6 = r.random() < 0.15
        fid = cap.new_flow(Kind.STUN, False, v6, int(r.choice((3478, 19302, 3479))), None, used)
        f = cap.flows[fid]
        txid = r.bytes(8) + bytes(4)  # the last 4 bytes are written per exchange
        msgs["q"].append(cap.message(stun_message(0x0001, txid, [], fingerprint=False)))
        resp = stun_message(0x0101, txid, [
            stun_attr(0x0020, stun_xor_address(f.client_ip, f.cport, txid)),
            stun_attr(0x8022, b"synthetic relay")], fingerprint=False)
        msgs["a"].append(cap.message(resp))
        ids.append(fid)
    reps = r.integers(1, 9, n).astype(np.int64)
    period = r.integers(1_000_000, 20_000_000, n).astype(np.int64)
    slots = [Slot(0, 0, 0, msg="q", patch=Patch.STUN_TXID),
             Slot(1, 15_000, 60_000, msg="a", patch=Patch.STUN_TXID)]
    emit_repeated(cap, np.array(ids, np.int64), reps, period, slots, as_arrays(msgs))
    return int(reps.sum()) * 2


RESPONSE_SEGMENTS = (1, 2, 4, 8, 16, 32)
RESPONSE_WEIGHTS = (0.3, 0.25, 0.2, 0.13, 0.08, 0.04)


def response_unit(tcp: bool, m: int) -> list[Slot]:
    """A request and an ``m``-segment response; the client acknowledges every second segment."""
    var = Variant.TLS_RECORD if tcp else Variant.QUIC_SHORT
    full = (MSS - 5, MSS - 5) if tcp else (1200, 1240)
    last = (150, MSS - 5) if tcp else (100, 1240)
    slots = [Slot(0, 0, 2000, var, TCP_PSH | TCP_ACK, size=(80, 700))]
    for i in range(m):
        slots.append(Slot(1, 40_000 + 200 * i, 500, var,
                          TCP_PSH | TCP_ACK if i == m - 1 else TCP_ACK,
                          size=last if i == m - 1 else full))
        if i % 2 == 1 or i == m - 1:
            slots.append(Slot(0, 60_000 + 200 * i, 500,
                              Variant.PLAIN if tcp else Variant.QUIC_SHORT, TCP_ACK,
                              size=(0, 0) if tcp else (22, 40)))
    return slots


def units_for_budget(weights: F64, per_unit: I64, budget: int) -> I64:
    """Per-flow unit counts, at least 1, proportional to ``weights``, about ``budget`` packets."""
    lo, hi = 0.0, 1.0
    while (np.maximum(1, np.round(weights * hi)) * per_unit).sum() < budget and hi < 1e9:
        hi *= 2
    for _ in range(50):
        mid = (lo + hi) / 2
        if (np.maximum(1, np.round(weights * mid)) * per_unit).sum() < budget:
            lo = mid
        else:
            hi = mid
    return np.maximum(1, np.round(weights * hi)).astype(np.int64)


def gen_tls_quic(cap: Capture, n_tls: int, n_quic: int, budget: int, used: set[Any]) -> None:
    """TLS 1.3 over TCP and QUIC v1 connections with request/response exchanges."""
    r = cap.frng
    head_pk = {True: 14, False: 7}
    kinds = [True] * n_tls + [False] * n_quic
    m_idx = r.choice(len(RESPONSE_SEGMENTS), size=len(kinds), p=RESPONSE_WEIGHTS)
    per_unit = np.array([len(response_unit(True, RESPONSE_SEGMENTS[i])) for i in m_idx], np.int64)
    weights = r.lognormal(0.0, 0.9, len(kinds))
    body_budget = budget - sum(head_pk[k] for k in kinds)
    units = units_for_budget(weights, per_unit, max(body_budget, len(kinds)))
    period = r.integers(300_000, 6_000_000, len(kinds)).astype(np.int64)
    stretch = r.uniform(0.3, 3.0, len(kinds))
    ids = np.empty(len(kinds), np.int64)
    msgs: dict[str, list[tuple[int, int]]] = {k: [] for k in ("ch", "sf", "cf", "qi1", "qs1",
                                                              "qs2", "qi2")}
    for i, tcp in enumerate(kinds):
        v6 = r.random() < 0.15
        fid = cap.new_flow(Kind.TLS if tcp else Kind.QUIC, tcp, v6, 443, None, used)
        ids[i] = fid
        f = cap.flows[fid]
        if tcp:
            sni = TLS_NAMES[int(r.integers(len(TLS_NAMES)))]
            sid = r.bytes(32)
            ch = tls_client_hello(r.bytes(32), sid, sni, r.bytes(32), (b"h2", b"http/1.1"), None)
            msgs["ch"].append(cap.message(tls_record(22, ch)))
            sh = tls_record(22, tls_server_hello(r.bytes(32), sid, r.bytes(32)))
            flight = sh + b"\x14\x03\x03\x00\x01\x01"
            for size in (int(r.integers(60, 120)), int(r.integers(2000, 3700)), 264, 52):
                flight += tls_record(23, r.bytes(size))
            msgs["sf"].append(cap.message(flight))
            finished = b"\x14\x03\x03\x00\x01\x01" + tls_record(23, r.bytes(53))
            msgs["cf"].append(cap.message(finished))
        else:
            sni = QUIC_NAMES[int(r.integers(len(QUIC_NAMES)))]
            odcid, ccid, scid = r.bytes(8), r.bytes(8), r.bytes(8)
            f.cid = (scid, ccid)
            f.ssrc = (int(r.integers(1 << 32)), int(r.integers(1 << 32)))
            ch = tls_client_hello(r.bytes(32), b"", sni, r.bytes(32), (b"h3",),
                                  quic_transport_parameters(ccid))
            ck = quic_initial_keys(odcid, server=False)
            sk = quic_initial_keys(odcid, server=True)
            msgs["qi1"].append(cap.message(
                quic_protect_initial(ck, odcid, ccid, 0, quic_crypto_frame(ch), 1250)))
            sh = tls_server_hello(r.bytes(32), b"", r.bytes(32))
            s_init = quic_protect_initial(sk, ccid, scid, 0,
                                          b"\x02\x00\x00\x00\x00" + quic_crypto_frame(sh), 0)
            hs = quic_long_filler(2, ccid, scid, r.bytes(1200 - len(s_init) - 26))
            msgs["qs1"].append(cap.message(s_init + hs))
            msgs["qs2"].append(cap.message(quic_long_filler(2, ccid, scid,
                                                            r.bytes(int(r.integers(900, 1200))))))
            c_init = quic_protect_initial(ck, scid, ccid, 1, b"\x02\x00\x00\x00\x00", 0)
            c_hs = quic_long_filler(2, scid, ccid, r.bytes(80))
            msgs["qi2"].append(cap.message(c_init + c_hs + bytes(max(0, 1200 - len(c_init)
                                                                  - len(c_hs)))))
    m = as_arrays({k: v for k, v in msgs.items() if v})
    tcp_arr = np.array(kinds)
    rtt = stretch
    for tcp in (True, False):
        sel = np.flatnonzero(tcp_arr == tcp)
        if not len(sel):
            continue
        reps = units[sel] * cap.scale
        per = np.minimum(period[sel], (cap.span_us * 8 // 10) // np.maximum(reps, 1))
        dur = reps * per + 1_000_000
        t0 = fit_starts(cap, dur)
        one = np.ones(len(sel), np.int64)
        if tcp:
            head = [Slot(0, 0, 0, Variant.SYN, TCP_SYN),
                    Slot(1, 20_000, 2000, Variant.SYN, TCP_SYN | TCP_ACK),
                    Slot(0, 40_000, 2000, Variant.PLAIN, TCP_ACK),
                    Slot(0, 40_500, 500, Variant.PLAIN, TCP_PSH | TCP_ACK, msg="ch"),
                    Slot(1, 60_500, 2000, Variant.PLAIN, TCP_ACK),
                    *[Slot(1, 62_000 + 200 * k, 100, Variant.PLAIN,
                           TCP_PSH | TCP_ACK if k == 3 else TCP_ACK, msg="sf", part=k)
                      for k in range(4)],
                    Slot(0, 82_000, 2000, Variant.PLAIN, TCP_ACK),
                    Slot(0, 84_000, 1000, Variant.PLAIN, TCP_PSH | TCP_ACK, msg="cf")]
            tail = [Slot(0, 0, 0, Variant.PLAIN, TCP_FIN | TCP_ACK),
                    Slot(1, 20_000, 2000, Variant.PLAIN, TCP_FIN | TCP_ACK),
                    Slot(0, 40_000, 2000, Variant.PLAIN, TCP_ACK)]
        else:
            head = [Slot(0, 0, 0, msg="qi1"), Slot(1, 20_000, 2000, msg="qs1"),
                    Slot(1, 20_300, 300, msg="qs2"), Slot(0, 40_000, 2000, msg="qi2"),
                    Slot(0, 41_000, 1000, Variant.QUIC_SHORT, size=(40, 80)),
                    Slot(1, 61_000, 2000, Variant.QUIC_SHORT, size=(30, 300))]
            tail = [Slot(0, 0, 0, Variant.QUIC_SHORT, size=(25, 60))]
        cap.emit(ids[sel], t0, one, one, head, msgs=_select(m, tcp, len(sel)), stretch=rtt[sel])
        body_t0 = t0 + (100_000 * rtt[sel]).astype(np.int64)
        for mi, segs in enumerate(RESPONSE_SEGMENTS):
            g = np.flatnonzero(m_idx[sel] == mi)
            if len(g):
                cap.emit(ids[sel][g], body_t0[g], per[g], reps[g], response_unit(tcp, segs),
                         stretch=rtt[sel][g])
        cap.emit(ids[sel], body_t0 + reps * per + 50_000, one, one, tail, stretch=rtt[sel])


def _select(m: Mapping[str, tuple[I64, I64]], tcp: bool, n: int) -> dict[str, tuple[I64, I64]]:
    names = ("ch", "sf", "cf") if tcp else ("qi1", "qs1", "qs2", "qi2")
    out = {k: m[k] for k in names if k in m}
    assert all(len(a) == n for a, _ in out.values())
    return out


@dataclass(frozen=True, slots=True)
class Mix:
    """How the packet budget and the flows are split between kinds."""

    voice_share: float = 0.33
    """Share of packets in voice RTP calls."""
    video_share: float = 0.24
    """Share of packets in video RTP flows."""
    dns_flows: float = 0.42
    """Share of the non-media flows that are DNS."""
    stun_flows: float = 0.06
    """Share of the non-media flows that are standalone STUN."""
    quic_flows: float = 0.18
    """Share of the non-media flows that are QUIC (the rest is TLS over TCP)."""
    call_s: tuple[float, float] = (20.0, 150.0)
    """Range of call lengths in seconds at scale 1 (uniform), voice and video alike."""
    exact_budget: bool = False
    """Give web traffic what is left of the packet budget after the packets already drawn.
    Otherwise media calls are counted in whole seconds each, which is close for long calls
    (the ``web`` profile was first made so and keeps its bytes) but misses about half a
    second of packets per call when calls last a few seconds."""


PROFILES: dict[str, Mix] = {
    "web": Mix(),
    "calls": Mix(voice_share=0.57, video_share=0.18, dns_flows=0.6, quic_flows=0.12,
                 call_s=(0.5, 3.0), exact_budget=True),
}
"""Named mixes. ``web``: most flows are web and DNS; a few long calls (20-150 s) carry over
half the packets. ``calls``: three quarters of the packets are in short voice and video
calls (0.5-3 s), about one call per 250 packets (2,000 calls among 12,500 flows in 500,000
packets); the other flows are web and DNS, with more DNS so the web part fits what is left."""


def generate(packets: int, flows: int, scale: int, seed: int, out: Path,
             mix: Mix = Mix()) -> dict[str, Any]:
    """Build and write a capture; returns the sidecar contents."""
    cap = Capture(seed, scale)
    used: set[Any] = set()
    base = gen_media(cap, Kind.VOICE, int(packets * mix.voice_share), used, mix.call_s)
    base += gen_media(cap, Kind.VIDEO, int(packets * mix.video_share), used, mix.call_s)
    rest = max(flows - len(cap.flows), 10)
    n_dns = int(rest * mix.dns_flows)
    n_stun = int(rest * mix.stun_flows)
    n_quic = int(rest * mix.quic_flows)
    n_tls = rest - n_dns - n_stun - n_quic
    base += gen_dns(cap, n_dns, used)
    base += gen_stun(cap, n_stun, used)
    if mix.exact_budget:
        base = cap.drawn()
    gen_tls_quic(cap, n_tls, n_quic, packets - base, used)
    info = cap.write(out)
    by_kind = info["by_kind"]
    info.update({"seed": seed, "scale": scale, "span_s": cap.span_us / 1e6,
                 "target_packets": packets, "target_flows": flows,
                 "calls": by_kind["voice"]["flows"] + by_kind["video"]["flows"]})
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=2_000_000, help="target packets at scale 1")
    ap.add_argument("--flows", type=int, default=None, help="target flows (default packets/40)")
    ap.add_argument("--scale", type=int, default=1, help="make every flow K times longer")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--profile", choices=sorted(PROFILES), default="web",
                    help="traffic mix: web (few long calls) or calls (many short calls)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output pcap (default bench/data/synth-<packets>-s<scale>.pcap, "
                    "synth-<profile>-<packets>-s<scale>.pcap for other profiles)")
    a = ap.parse_args(argv)
    if a.packets < 1000 or a.scale < 1:
        ap.error("--packets must be at least 1000 and --scale at least 1")
    flows = a.flows if a.flows is not None else max(a.packets // 40, 10)
    out = a.out or default_path(a.packets, a.scale, a.profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    info = generate(a.packets, flows, a.scale, a.seed, out, PROFILES[a.profile])
    info["profile"] = a.profile
    info["generate_s"] = round(time.perf_counter() - t, 2)
    Path(str(out) + ".json").write_text(json.dumps(info, indent=2) + "\n")
    kinds = ", ".join(f"{k} {v['flows']}/{v['packets']}" for k, v in info["by_kind"].items())
    print(f"{out}: {info['packets']} packets, {info['flows']} flows, "
          f"{info['bytes'] / 2**20:.1f} MiB, {info['span_s']:.0f} s span, "
          f"{info['generate_s']} s to generate")
    print(f"  flows/packets by kind: {kinds}; calls {info['calls']}; "
          f"ipv6 flows {info['ipv6_flows']}, 802.1Q flows {info['vlan_flows']}")
    return 0


def default_path(packets: int, scale: int, profile: str = "web") -> Path:
    """Where a capture of this profile, size and scale is written by default (the web
    profile's name has no profile in it: it was the only one)."""
    name = f"synth-{packets}-s{scale}" if profile == "web" else \
        f"synth-{profile}-{packets}-s{scale}"
    return Path(__file__).resolve().parent / "data" / f"{name}.pcap"


if __name__ == "__main__":
    sys.exit(main())
