#!/usr/bin/env python3
"""Build marsad's synthetic captures, ``captures/manifest.json`` and ``captures/README.md``.

Run from the repository root: ``python captures/make_captures.py [OUTDIR]``
(default: the directory of this script). Every run writes the same bytes:
timestamps are fixed, random payloads come from seeded generators and gzip
members carry no file name and mtime 0.

Packets are built with scapy (IPv4/IPv6, TCP, UDP, ICMP, DNS and their
checksums). The containers are written here with ``struct`` because no library
writes every variant the probe must read: classic pcap in both byte orders and
both time resolutions, pcapng with two sections of different byte order,
SPB/OPB blocks, unknown blocks and per-interface ``if_tsresol``.

Each record carries what a correct reader must conclude about it: the flow it
belongs to, its direction, its transport payload length, the ICMP notice it is,
or the decoding problem it must raise. The manifest's expected flows are
summed from those annotations, never typed in by hand.

Formats: pcap https://www.ietf.org/archive/id/draft-ietf-opsawg-pcap-04.html,
pcapng https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html,
link types https://www.tcpdump.org/linktypes.html.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.packet import Packet, Raw

ORIG = 0
RESP = 1
T0 = Fraction(1_700_000_000)  # 2023-11-14T22:13:20Z, the base of every timestamp
UDP_IDLE_TIMEOUT_S = 120  # the default UDP idle timeout the manifest assumes

Link = Callable[[bytes, int], bytes]
"""Wraps an IP packet into the capture's link layer; the int is the direction (ORIG/RESP)."""


def at(seconds: str | int | Fraction) -> Fraction:
    """Absolute capture time ``seconds`` after T0, kept exact."""
    return T0 + (seconds if isinstance(seconds, Fraction) else Fraction(str(seconds)))


# ---------------------------------------------------------------------------
# Annotated records and the expectations derived from them


@dataclass(eq=False)
class Flow:
    """A bidirectional flow as a correct meter must report it."""

    proto: str
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    vlan: int | None = None
    tunnel: str | None = None

    @property
    def ip_version(self) -> int:
        return 6 if ":" in self.orig_h else 4

    def ends(self, direction: int) -> tuple[str, int, str, int]:
        """(src, sport, dst, dport) of a packet sent in ``direction``."""
        if direction == ORIG:
            return self.orig_h, self.orig_p, self.resp_h, self.resp_p
        return self.resp_h, self.resp_p, self.orig_h, self.orig_p


@dataclass(frozen=True)
class Notice:
    """An ICMP error quoting one of ``flow``'s packets."""

    flow: Flow
    family: int
    type: int
    code: int
    reporter: str


@dataclass
class Rec:
    """One capture record with what a reader must make of it."""

    ts: Fraction
    data: bytes
    flow: Flow | None = None
    direction: int = ORIG
    payload: int = 0
    notice: Notice | None = None
    weird: str | None = None
    extra: tuple[str, str, int, str, int] | None = None
    iface: int = 0
    section: int = 0
    block: str = "epb"


class Capture:
    """Records in arrival order plus a per-capture IPv4 id counter."""

    def __init__(self) -> None:
        self._recs: list[Rec] = []
        self._ip_id = 0x2000

    def next_id(self) -> int:
        self._ip_id = (self._ip_id + 7) & 0xFFFF
        return self._ip_id

    def add(self, rec: Rec) -> None:
        self._recs.append(rec)

    def records(self) -> list[Rec]:
        """Records sorted by time (stable, so equal times keep insertion order)."""
        return sorted(self._recs, key=lambda r: r.ts)


def flow_key(flow: Flow) -> dict[str, Any]:
    return {"proto": flow.proto, "ip_version": flow.ip_version, "orig_h": flow.orig_h,
            "orig_p": flow.orig_p, "resp_h": flow.resp_h, "resp_p": flow.resp_p}


def expected_flows(recs: list[Rec], *, timed: bool = True) -> list[dict[str, Any]]:
    """Sum the annotations of ``recs`` (in capture order) into expected flow records."""
    out: dict[int, dict[str, Any]] = {}
    for frame, r in enumerate(recs, 1):
        if r.notice is not None:
            f = out[id(r.notice.flow)]
            f["icmp"].append({"frame": frame, "family": r.notice.family, "type": r.notice.type,
                              "code": r.notice.code, "reporter": r.notice.reporter})
            continue
        if r.flow is None:
            continue
        if id(r.flow) not in out:
            out[id(r.flow)] = {
                **flow_key(r.flow),
                "orig_pkts": 0, "orig_bytes": 0, "orig_wire_bytes": 0,
                "resp_pkts": 0, "resp_bytes": 0, "resp_wire_bytes": 0,
                "first_frame": frame, "last_frame": frame,
                "first_ts": float(r.ts) if timed else None, "last_ts": None,
                "vlan": r.flow.vlan, "tunnel": r.flow.tunnel, "icmp": [],
            }
        f = out[id(r.flow)]
        side = "orig" if r.direction == ORIG else "resp"
        f[side + "_pkts"] += 1
        f[side + "_bytes"] += r.payload
        f[side + "_wire_bytes"] += len(r.data)
        f["last_frame"] = frame
        if timed:
            f["first_ts"] = min(f["first_ts"], float(r.ts))
            f["last_ts"] = max(f["last_ts"] or 0.0, float(r.ts))
    return list(out.values())


def expected_weirds(recs: list[Rec]) -> list[dict[str, Any]]:
    return [{"frame": n, "layer": r.weird} for n, r in enumerate(recs, 1) if r.weird]


def extra_tuples(recs: list[Rec]) -> list[list[Any]]:
    return [list(r.extra) for r in recs if r.extra is not None]


# ---------------------------------------------------------------------------
# Link layers (https://www.tcpdump.org/linktypes.html)

MAC_A = bytes.fromhex("02a0c9000023")  # the capturing host
MAC_B = bytes.fromhex("02b0c90000fe")  # its gateway

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_MPLS = 0x8847
IP_GRE = 47


def ethertype(ip: bytes) -> int:
    return ETH_IPV6 if ip[0] >> 4 == 6 else ETH_IPV4


def macs(direction: int) -> bytes:
    """Destination then source MAC for a frame sent in ``direction``."""
    return MAC_B + MAC_A if direction == ORIG else MAC_A + MAC_B


def eth(ip: bytes, direction: int) -> bytes:
    return macs(direction) + struct.pack(">H", ethertype(ip)) + ip


def eth_padded(ip: bytes, direction: int) -> bytes:
    """Ethernet frame padded to the 60-byte minimum, as received frames are."""
    frame = eth(ip, direction)
    return frame + bytes(max(0, 60 - len(frame)))


def vlan(vid: int) -> Link:
    """IEEE 802.1Q tag, priority 5 (https://standards.ieee.org/ieee/802.1Q/10323/)."""
    def wrap(ip: bytes, direction: int) -> bytes:
        return (macs(direction) + struct.pack(">HH", ETH_VLAN, (5 << 13) | vid)
                + struct.pack(">H", ethertype(ip)) + ip)
    return wrap


def qinq(outer: int, inner: int) -> Link:
    """IEEE 802.1ad S-tag (0x88a8) outside an 802.1Q C-tag."""
    def wrap(ip: bytes, direction: int) -> bytes:
        return (macs(direction) + struct.pack(">HHHH", ETH_QINQ, outer, ETH_VLAN, inner)
                + struct.pack(">H", ethertype(ip)) + ip)
    return wrap


def mpls(labels: list[int]) -> Link:
    """MPLS label stack, RFC 3032 §2.1: label 20 bits, TC 3, bottom-of-stack 1, TTL 8."""
    def wrap(ip: bytes, direction: int) -> bytes:
        stack = b"".join(struct.pack(">I", (label << 12) | ((i == len(labels) - 1) << 8) | 63)
                         for i, label in enumerate(labels))
        return macs(direction) + struct.pack(">H", ETH_MPLS) + stack + ip
    return wrap


def sll(ip: bytes, direction: int) -> bytes:
    """Linux cooked v1 (113): type, ARPHRD, address length, 8-byte address, protocol."""
    pkttype = 4 if direction == ORIG else 0  # outgoing / to us
    src = MAC_A if direction == ORIG else MAC_B
    return (struct.pack(">HHH", pkttype, 1, 6) + src + b"\0\0"
            + struct.pack(">H", ethertype(ip)) + ip)


def sll2(ip: bytes, direction: int) -> bytes:
    """Linux cooked v2 (276): protocol, reserved, ifindex, ARPHRD, type, address length, address."""
    pkttype = 4 if direction == ORIG else 0
    src = MAC_A if direction == ORIG else MAC_B
    return struct.pack(">HHIHBB", ethertype(ip), 0, 2, 1, pkttype, 6) + src + b"\0\0" + ip


def raw(ip: bytes, direction: int) -> bytes:
    return ip


def null_le(ip: bytes, direction: int) -> bytes:
    """BSD loopback (0): address family in the writer's byte order; macOS AF_INET6 = 30."""
    return struct.pack("<I", 30 if ip[0] >> 4 == 6 else 2) + ip


def loop_be(ip: bytes, direction: int) -> bytes:
    """OpenBSD loopback (108): address family in network byte order; AF_INET6 = 24."""
    return struct.pack(">I", 24 if ip[0] >> 4 == 6 else 2) + ip


def outer_ip(cap: Capture, src: str, dst: str, l4: Packet, proto: int | None = None) -> bytes:
    ip = IP(src=src, dst=dst, ttl=62, id=cap.next_id(), flags="DF")
    if proto is not None:
        ip.proto = proto
    return bytes(ip / l4)


def gre(cap: Capture, key: int | None) -> Link:
    """GRE, RFC 2784 (plain) and RFC 2890 (K bit + 4-byte key), between two routers."""
    def wrap(ip: bytes, direction: int) -> bytes:
        hdr = struct.pack(">HH", 0x2000 if key is not None else 0, ETH_IPV4)
        if key is not None:
            hdr += struct.pack(">I", key)
        a, b = ("192.0.2.1", "192.0.2.2") if direction == ORIG else ("192.0.2.2", "192.0.2.1")
        return eth(outer_ip(cap, a, b, Raw(hdr + ip), IP_GRE), direction)
    return wrap


def erspan2(cap: Capture, session: int) -> Link:
    """ERSPAN type II: GRE with sequence number, protocol 0x88be, 8-byte ERSPAN header,
    then the mirrored Ethernet frame (draft-foschiano-erspan-03 §4.1)."""
    seq = [0]

    def wrap(ip: bytes, direction: int) -> bytes:
        seq[0] += 1
        gre_hdr = struct.pack(">HHI", 0x1000, 0x88BE, seq[0])
        span = struct.pack(">HHI", (1 << 12) | 0, (0 << 13) | (3 << 11) | session, 7)
        mirrored = eth(ip, direction)
        return eth(outer_ip(cap, "192.0.2.10", "192.0.2.20", Raw(gre_hdr + span + mirrored),
                            IP_GRE), ORIG)
    return wrap


def vxlan(cap: Capture, vni: int) -> Link:
    """VXLAN, RFC 7348 §5: UDP to 4789, flags 0x08, 24-bit VNI, inner Ethernet frame."""
    def wrap(ip: bytes, direction: int) -> bytes:
        hdr = struct.pack(">II", 0x08000000, vni << 8)
        inner = eth(ip, direction)
        a, b, sport = (("198.51.100.1", "198.51.100.2", 49321) if direction == ORIG
                       else ("198.51.100.2", "198.51.100.1", 51877))
        return eth(outer_ip(cap, a, b, UDP(sport=sport, dport=4789) / Raw(hdr + inner)), direction)
    return wrap


def gtpu(cap: Capture, teid: int, variant: str) -> Link:
    """GTP-U v1 G-PDU (3GPP TS 29.281 §5.1) on UDP 2152.

    ``plain``: 8-byte header. ``seq``: S flag, adds sequence number, N-PDU number and
    next-extension type. ``ext``: E flag with one PDU Session Container extension (0x85).
    """
    seq = [100]

    def wrap(ip: bytes, direction: int) -> bytes:
        opt = b""
        flags = 0x30
        if variant == "seq":
            flags |= 0x02
            seq[0] += 1
            opt = struct.pack(">HBB", seq[0], 0, 0)
        elif variant == "ext":
            flags |= 0x04
            qfi = 9
            container = struct.pack(">BBBB", 1, (0x10 if direction == ORIG else 0x00), qfi, 0)
            opt = struct.pack(">HBB", 0, 0, 0x85) + container
        hdr = struct.pack(">BBHI", flags, 0xFF, len(opt) + len(ip), teid) + opt
        a, b = ("10.200.0.1", "10.200.0.2") if direction == ORIG else ("10.200.0.2", "10.200.0.1")
        return eth(outer_ip(cap, a, b, UDP(sport=2152, dport=2152) / Raw(hdr + ip)), direction)
    return wrap


# ---------------------------------------------------------------------------
# Transport helpers


def ip_of(cap: Capture, src: str, dst: str, l4: Packet, ttl: int = 64) -> Packet:
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=ttl) / l4
    return IP(src=src, dst=dst, ttl=ttl, id=cap.next_id(), flags="DF") / l4


def send_udp(cap: Capture, flow: Flow, link: Link, ts: Fraction, direction: int,
             payload: bytes, **rec: Any) -> bytes:
    """Add one UDP datagram of ``flow``; returns the IP packet (for ICMP quoting)."""
    src, sport, dst, dport = flow.ends(direction)
    ip = bytes(ip_of(cap, src, dst, UDP(sport=sport, dport=dport) / Raw(payload)))
    cap.add(Rec(ts, link(ip, direction), flow, direction, len(payload), **rec))
    return ip


SYN_OPTS = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]


class Tcp:
    """One TCP connection's sequence space; each call adds one segment."""

    def __init__(self, cap: Capture, flow: Flow, link: Link, isn: tuple[int, int],
                 step: Fraction = Fraction(1, 10000), **rec: Any) -> None:
        self.cap, self.flow, self.link, self.rec = cap, flow, link, rec
        self.nxt = [isn[0], isn[1]]
        self.step = step  # host-side delay between an arrival and the answer

    def seg(self, ts: Fraction, direction: int, flags: str, payload: bytes = b"") -> bytes:
        src, sport, dst, dport = self.flow.ends(direction)
        ack = self.nxt[1 - direction] if "A" in flags else 0
        opts = SYN_OPTS if "S" in flags else []
        l4 = TCP(sport=sport, dport=dport, seq=self.nxt[direction], ack=ack, flags=flags,
                 window=64240 if "S" in flags else 502, options=opts)
        if payload:
            l4 = l4 / Raw(payload)
        ip = bytes(ip_of(self.cap, src, dst, l4))
        self.nxt[direction] += len(payload) + ("S" in flags) + ("F" in flags)
        self.cap.add(Rec(ts, self.link(ip, direction), self.flow, direction, len(payload),
                         **self.rec))
        return ip

    def handshake(self, t: Fraction, rtt: Fraction) -> Fraction:
        self.seg(t, ORIG, "S")
        self.seg(t + rtt, RESP, "SA")
        self.seg(t + rtt + self.step, ORIG, "A")
        return t + rtt + 2 * self.step

    def exchange(self, t: Fraction, rtt: Fraction, request: bytes, response: bytes) -> Fraction:
        """Request, response (ACKing the request), ACK of the response."""
        self.seg(t, ORIG, "PA", request)
        self.seg(t + rtt, RESP, "PA", response)
        self.seg(t + rtt + 3 * self.step, ORIG, "A")
        return t + rtt + 4 * self.step

    def close(self, t: Fraction, rtt: Fraction) -> Fraction:
        """FIN both ways: orig FIN, resp ACK + FIN, orig ACK."""
        self.seg(t, ORIG, "FA")
        self.seg(t + rtt, RESP, "A")
        self.seg(t + rtt + self.step, RESP, "FA")
        self.seg(t + 2 * rtt + self.step, ORIG, "A")
        return t + 2 * rtt + 2 * self.step


def tcp_session(cap: Capture, flow: Flow, link: Link, t: Fraction, *,
                request: bytes = b"GET / HTTP/1.1\r\nHost: example.net\r\n\r\n",
                response: bytes = b"HTTP/1.1 204 No Content\r\n\r\n",
                isn: tuple[int, int] = (1_000_000, 5_000_000),
                rtt: Fraction = Fraction(12, 1000), step: Fraction = Fraction(1, 10000),
                **rec: Any) -> Fraction:
    """Handshake, one request/response, FIN both ways."""
    c = Tcp(cap, flow, link, isn, step, **rec)
    t = c.handshake(t, rtt)
    t = c.exchange(t, rtt, request, response)
    return c.close(t + 100 * step, rtt)


def blob(rng: random.Random, n: int) -> bytes:
    """Opaque payload whose first byte carries no RTP/RTCP version 2, so no heuristic
    dissector takes it for media control."""
    b = rng.randbytes(n)
    return bytes([b[0] & 0x3F]) + b[1:] if b else b


def ntp(mode: int, stratum: int, rng: random.Random) -> bytes:
    """NTPv4 header, RFC 5905 §7.3: LI/VN/mode, stratum, poll, precision, delay,
    dispersion, reference id, then four 64-bit timestamps."""
    return struct.pack(">BBbbII4s", (4 << 3) | mode, stratum, 6, -24, 0x00000100,
                       0x00000200, b"GPS\0" if stratum == 1 else b"\0\0\0\0") + rng.randbytes(32)


def udp_exchange(cap: Capture, flow: Flow, link: Link, t: Fraction,
                 sizes: Iterable[tuple[int, int]], rng: random.Random,
                 gap: Fraction = Fraction(5, 1000), **rec: Any) -> Fraction:
    """Query/answer pairs of random payloads with the given (query, answer) sizes."""
    for q, a in sizes:
        send_udp(cap, flow, link, t, ORIG, blob(rng, q), **rec)
        send_udp(cap, flow, link, t + gap, RESP, blob(rng, a), **rec)
        t += 2 * gap
    return t


def dns(cap: Capture, link: Link, t: Fraction, client: str, server: str, sport: int,
        qid: int, name: str, answers: list[str], rtt: Fraction = Fraction(18, 1000),
        **rec: Any) -> tuple[Flow, Fraction]:
    """One DNS A lookup over UDP 53 (RFC 1035)."""
    flow = Flow("udp", client, sport, server, 53)
    q = bytes(DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A")))
    an = [DNSRR(rrname=name, type="A", ttl=300, rdata=a) for a in answers]
    r = bytes(DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"), an=an))
    send_udp(cap, flow, link, t, ORIG, q, **rec)
    send_udp(cap, flow, link, t + rtt, RESP, r, **rec)
    return flow, t + rtt


# ---------------------------------------------------------------------------
# Container writers


def ts_units(ts: Fraction, per_second: int | Fraction) -> int:
    units = ts * per_second
    if units.denominator != 1:
        raise ValueError(f"timestamp {float(ts)} not representable at 1/{per_second} s")
    return int(units)


def write_pcap(recs: list[Rec], linktype: int, *, big: bool = False, nano: bool = False,
               snaplen: int = 262144, incl_len_override: dict[int, int] | None = None) -> bytes:
    """Classic pcap: magic a1b2c3d4 (µs) or a1b23c4d (ns), written in the chosen byte order."""
    e = ">" if big else "<"
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    per_s = 1_000_000_000 if nano else 1_000_000
    out = bytearray(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
    for i, r in enumerate(recs):
        units = ts_units(r.ts, per_s)
        data = r.data[:snaplen]
        incl = (incl_len_override or {}).get(i, len(data))
        out += struct.pack(e + "IIII", units // per_s, units % per_s, incl, len(r.data)) + data
    return bytes(out)


def pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + pad4(value)


def opts(e: str, items: list[tuple[int, bytes]]) -> bytes:
    if not items:
        return b""
    return b"".join(opt(e, c, v) for c, v in items) + opt(e, 0, b"")


def block(e: str, btype: int, body: bytes) -> bytes:
    body = pad4(body)
    total = 12 + len(body)
    return struct.pack(e + "II", btype, total) + body + struct.pack(e + "I", total)


SHB, IDB, OPB, SPB, NRB, ISB, EPB = 0x0A0D0D0A, 1, 2, 3, 4, 5, 6
CUSTOM_COPY = 0x00000BAD  # pcapng Custom Block, copiable
UNKNOWN_LOCAL = 0x80000A5A  # a block type from the local-use range nobody defines


def shb(e: str, options: list[tuple[int, bytes]]) -> bytes:
    return block(e, SHB, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + opts(e, options))


def idb(e: str, linktype: int, snaplen: int, options: list[tuple[int, bytes]]) -> bytes:
    return block(e, IDB, struct.pack(e + "HHI", linktype, 0, snaplen) + opts(e, options))


def epb(e: str, iface: int, units: int, data: bytes, orig_len: int,
        options: list[tuple[int, bytes]]) -> bytes:
    head = struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), orig_len)
    return block(e, EPB, head + pad4(data) + opts(e, options))


def opb(e: str, iface: int, drops: int, units: int, data: bytes, orig_len: int) -> bytes:
    head = struct.pack(e + "HHIIII", iface, drops, units >> 32, units & 0xFFFFFFFF,
                       len(data), orig_len)
    return block(e, OPB, head + pad4(data))


def spb(e: str, data: bytes, orig_len: int) -> bytes:
    return block(e, SPB, struct.pack(e + "I", orig_len) + pad4(data))


@dataclass
class Iface:
    linktype: int
    per_second: int | Fraction
    tsresol: bytes  # if_tsresol option value (empty: option absent, default 10^-6)
    name: str
    snaplen: int = 262144


@dataclass
class Section:
    big: bool
    ifaces: list[Iface]
    shb_options: list[tuple[int, bytes]] = field(default_factory=list)
    after_idbs: list[bytes] = field(default_factory=list)
    at_end: list[bytes] = field(default_factory=list)


def write_pcapng(recs: list[Rec], sections: list[Section]) -> bytes:
    """Sections in order; each record goes to ``rec.section`` / ``rec.iface`` as ``rec.block``."""
    out = bytearray()
    for s_no, sec in enumerate(sections):
        e = ">" if sec.big else "<"
        out += shb(e, sec.shb_options)
        for itf in sec.ifaces:
            io_opts: list[tuple[int, bytes]] = [(2, itf.name.encode())]
            if itf.tsresol:
                io_opts.append((9, itf.tsresol))
            out += idb(e, itf.linktype, itf.snaplen, io_opts)
        for extra in sec.after_idbs:
            out += extra
        for n, r in enumerate(x for x in recs if x.section == s_no):
            itf = sec.ifaces[r.iface]
            data = r.data[: itf.snaplen]
            if r.block == "spb":
                out += spb(e, data, len(r.data))
                continue
            units = ts_units(r.ts, itf.per_second)
            if r.block == "opb":
                out += opb(e, r.iface, 0, units, data, len(r.data))
                continue
            flags = 1 if r.direction == RESP else 2  # epb_flags: inbound / outbound
            options = [(2, struct.pack(e + "I", flags))]
            if n == 0:
                options.append((1, b"first packet of the section"))
            out += epb(e, r.iface, units, data, len(r.data), options)
        for extra in sec.at_end:
            out += extra
    return bytes(out)


def gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write(data)
    return buf.getvalue()


# ---------------------------------------------------------------------------
# The manifest


class Out:
    """Collects capture files, their manifest entries and README lines."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.manifest: dict[str, dict[str, Any]] = {}
        self.maker = ""
        """Name of the function of this script that builds the captures being saved."""

    def save(self, name: str, data: bytes, entry: dict[str, Any]) -> None:
        (self.outdir / name).write_bytes(data)
        entry.setdefault("exit_code", 0)
        entry.setdefault("complete", True)
        entry.setdefault("stopped_at", None)
        entry.setdefault("weirds", [])
        entry.setdefault("extra_flows", {"protos": [], "tuples": []})
        entry.setdefault("tshark", {"check": entry["exit_code"] == 0 and not entry["weirds"],
                                    "key": "l4"})
        entry["size"] = len(data)
        entry["made_by"] = f"make_captures.py:{self.maker}"
        self.manifest[name] = entry

    def valid(self, name: str, data: bytes, recs: list[Rec], *, description: str,
              fmt: str, link_types: list[int], compressed: bool = False, timed: bool = True,
              **extra: Any) -> None:
        self.save(name, data, {
            "description": description, "format": fmt, "compressed": compressed,
            "link_types": link_types, "packets": len(recs),
            "flows": expected_flows(recs, timed=timed), "weirds": expected_weirds(recs),
            **extra,
        })

    def finish(self) -> None:
        doc = {
            "about": (
                "Expected reader results for every capture in this directory, written by "
                "make_captures.py. Flows: one record per bidirectional flow; originator = "
                "sender of the first packet (the SYN sender for TCP); *_wire_bytes sum the "
                "original (on-the-wire) frame lengths, never the captured lengths; *_bytes "
                "sum transport payload lengths as the IP/UDP length fields state them; "
                "packets inside tunnels (GRE, ERSPAN, VXLAN, GTP-U, MPLS) are metered on "
                "the innermost flow, tunnel = innermost encapsulation crossed, vlan = "
                "outermost VLAN id (the S-tag for QinQ); the tunnel endpoints form no flow "
                "of their own. IPv4/IPv6 fragments belong to the flow of their datagram "
                "(ports come from the first fragment, whatever the arrival order), each "
                "fragment counts as one packet. An ICMP/ICMPv6 error quoting a flow's packet "
                "is an entry in that flow's icmp list and is not counted in its packets or "
                "bytes; a flow for the ICMP packet itself is allowed (extra_flows.protos). "
                "first_ts/last_ts are null where the capture has no timestamps (SPB). "
                "weirds: packet-level problems (frame >= 1) by frame and layer; a "
                "file-level problem may add at most one weird with frame 0 whose offset is "
                "stopped_at. extra_flows.tuples: flows a reader may or may not form from "
                "packets that also raise a weird. exit_code is the CLI's for "
                "'marsad flows FILE': 0 complete, 2 unreadable, 3 partial."
            ),
            "config": {"udp_idle_timeout_s": UDP_IDLE_TIMEOUT_S},
            "captures": self.manifest,
        }
        (self.outdir / "manifest.json").write_text(manifest_json(doc))
        lines = [
            "# captures/",
            "",
            "Every file here is synthetic, written by `make_captures.py` (run `make captures`; "
            "deterministic, same bytes every run) with scapy for the packets and hand-written "
            "pcap/pcapng containers. Licence: generated by the marsad project, same licence "
            "as the project (AGPL-3.0-or-later). `manifest.json` states what a correct reader "
            "must find in each; `tests/test_capture_formats.py` checks the probe and tshark "
            "against it.",
            "",
        ]
        for name, entry in self.manifest.items():
            lines.append(f"- `{name}`: {entry['description']}. Made by "
                         f"`{entry['made_by']}`; licence: generated by the marsad project.")
        lines += traces_readme()
        lines.append("")
        (self.outdir / "README.md").write_text("\n".join(lines))


TRACES_MANIFEST = Path(__file__).resolve().parent / "traces" / "MANIFEST.json"
TRACES_ORDER = ("whatsapp", "messenger", "teams", "zoom", "signal", "telegram", "viber", "sip")


def traces_readme() -> list[str]:
    """The README section on the replay traces, from ``traces/MANIFEST.json`` (written by
    ``traces/make_traces.py``)."""
    if not TRACES_MANIFEST.exists():
        return []
    traces = json.loads(TRACES_MANIFEST.read_text())

    def rank(name: str) -> tuple[int, str]:
        app = traces[name]["app"]
        return (TRACES_ORDER.index(app) if app in TRACES_ORDER else len(TRACES_ORDER), name)

    lines = [
        "",
        "## traces/: call media for the active replay test",
        "",
        "`traces/*.pcap` are the traces `marsad test replay APP` sends (Wehe's differential "
        "replay, done for call media). Source: generated by `traces/make_traces.py` (run "
        "`python captures/traces/make_traces.py`; deterministic, every random byte seeded by "
        "the trace's name) from the specifications each app follows and the classifier's own "
        "tables: the bytes DPI keys on (STUN message types and attributes, TURN REALMs, "
        "Zoom's and Telegram's framings, SIP start lines) are imported from `classifier/`, "
        "never copied from a capture; encrypted bytes (SRTP payloads and tags, DTLS "
        "ciphertext, relay packets) are seeded random. Licence: generated by the marsad "
        "project, same licence as the project (AGPL-3.0-or-later).",
        "",
        "The convention the replay engine relies on: Ethernet link type; exactly one 5-tuple "
        "(UDP, or TCP for `<app>-tcp.pcap`, whose handshake and FINs the file also holds); "
        "client 192.0.2.10, server 198.51.100.20 (RFC 5737 documentation addresses; a "
        "packet's direction is which of the two sent it); the client's packet first; "
        "payloads unique within each direction (STUN transaction ids, RTP sequence numbers, "
        "random ciphertext), so a receiver tells which trace packet arrived by its bytes "
        "alone; 6-10 s; under 300 KB. Timing is that of a capture on the client: its own "
        "packets on the codec clocks (20 ms voice frames, 15 video frames/s) with a few "
        "tenths of a millisecond of noise, the server's one 24 ms path delay later with up "
        "to 4 ms of jitter, never reordered within a stream; voice frames follow talk spurts "
        "(full-size while a side talks, comfort-noise size while it listens). "
        "`traces/MANIFEST.json` gives each trace's app, transport, ports, SHA-256, payload "
        "packets, duration, bytes, and the signatures a middlebox could key on with how "
        "many packets carry each; `tests/unit/active/test_traces.py` checks the files "
        "against it, regenerates them byte for byte, and checks that marsad's classifier "
        "names each trace as its app's call while the bit-inverted copy (the replay's "
        "control) is not named as that app.",
        "",
    ]
    for name in sorted(traces, key=rank):
        e = traces[name]
        lines.append(f"- `traces/{name}` ({e['transport'].upper()} {e['client_port']} to "
                     f"{e['server_port']}, {e['packets']} packets, {e['duration_s']:.1f} s, "
                     f"{e['bytes']} bytes): {e['what']}. Made by `traces/make_traces.py`; "
                     f"follows {e['follows']}; licence: generated by the marsad project.")
    return lines


def manifest_json(doc: dict[str, Any]) -> str:
    """JSON with one line per flow or weird, so diffs of the manifest stay readable."""
    caps = []
    for name, entry in doc["captures"].items():
        fields = []
        for k, v in entry.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                rows = ",\n".join("    " + json.dumps(x) for x in v)
                fields.append(f"   {json.dumps(k)}: [\n{rows}\n   ]")
            else:
                fields.append(f"   {json.dumps(k)}: {json.dumps(v)}")
        caps.append(f"  {json.dumps(name)}: {{\n" + ",\n".join(fields) + "\n  }")
    head = {k: v for k, v in doc.items() if k != "captures"}
    top = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    return "{\n" + ",\n".join([*top, ' "captures": {\n' + ",\n".join(caps) + "\n }"]) + "\n}\n"


# ---------------------------------------------------------------------------
# Basic content shared by the format and link-type captures

CLIENT4, SERVER4 = "192.168.1.23", "203.0.113.10"
CLIENT6, SERVER6 = "2001:db8:1::23", "2001:db8:2::10"


def basic_mix(cap: Capture, link: Link, t: Fraction, rng: random.Random, *, v6: bool = True,
              v4: bool = True, pad: bool = False, **rec: Any) -> Fraction:
    """A UDP exchange and a full TCP connection over IPv4 and/or IPv6."""
    resp_link = link
    if pad:
        def resp_link(ip: bytes, d: int) -> bytes:
            return eth_padded(ip, d) if d == RESP else eth(ip, d)
    if v4:
        f = Flow("udp", CLIENT4, 40001, SERVER4, 47005)
        t = udp_exchange(cap, f, link, t, [(48, 112), (60, 90)], rng, **rec)
        f = Flow("tcp", CLIENT4, 40002, SERVER4, 80)
        t = tcp_session(cap, f, resp_link, t + Fraction(1, 100), **rec)
    if v6:
        f = Flow("udp", CLIENT6, 40003, SERVER6, 47005)
        t = udp_exchange(cap, f, link, t + Fraction(1, 100), [(33, 77)], rng, **rec)
        f = Flow("tcp", CLIENT6, 40004, SERVER6, 443)
        t = tcp_session(cap, f, link, t + Fraction(1, 100), request=rng.randbytes(300),
                        response=rng.randbytes(1200), **rec)
    return t


def make_classic_formats(out: Out) -> None:
    for big in (False, True):
        for nano in (False, True):
            rng = random.Random(f"fmt-{big}-{nano}")
            cap = Capture()
            t = basic_mix(cap, eth, at("10.000001" if not nano else "10.000000001"), rng,
                          pad=not big)
            # a reset connection: request answered by RST from the server
            f = Flow("tcp", CLIENT4, 40010, SERVER4, 8080)
            c = Tcp(cap, f, eth, (7_000_000, 9_000_000))
            t = c.handshake(t + Fraction(1, 10), Fraction(9, 1000))
            c.seg(t, ORIG, "PA", b"HELLO\r\n")
            c.seg(t + Fraction(9, 1000), RESP, "RA")
            if nano:
                f = Flow("udp", CLIENT4, 40011, SERVER4, 123)
                send_udp(cap, f, eth, at("20.123456789"), ORIG, ntp(3, 0, rng))
                send_udp(cap, f, eth, at("20.123987654"), RESP, ntp(4, 1, rng))
            recs = cap.records()
            order = "be" if big else "le"
            res = "nsec" if nano else "usec"
            name = f"pcap-{order}-{res}.pcap"
            desc = (f"classic pcap, {'big' if big else 'little'}-endian, "
                    f"{'nanosecond' if nano else 'microsecond'} magic, Ethernet: UDP exchanges "
                    "and TCP connections (handshake, data, FIN both ways) over IPv4 and IPv6, "
                    "a connection reset by the server" + ("" if big else
                                                         ", server frames padded to 60 bytes"))
            out.valid(name, write_pcap(recs, 1, big=big, nano=nano), recs, description=desc,
                      fmt="pcap", link_types=[1], byte_order="big" if big else "little",
                      ts_resolution=res)
    # snaplen 96: frames cut, wire bytes from orig_len, payload from the headers
    rng = random.Random("snaplen")
    cap = Capture()
    f = Flow("tcp", CLIENT4, 40020, SERVER4, 80)
    c = Tcp(cap, f, eth, (11, 22))
    t = c.handshake(at(30), Fraction(20, 1000))
    t = c.exchange(t, Fraction(20, 1000), b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n",
                   rng.randbytes(1400))
    c.seg(t, RESP, "PA", rng.randbytes(1000))
    c.seg(t + Fraction(1, 1000), ORIG, "A")
    t = c.close(t + Fraction(2, 1000), Fraction(20, 1000))
    f = Flow("udp", CLIENT4, 40021, SERVER4, 47004)
    udp_exchange(cap, f, eth, t, [(500, 900), (40, 1200)], rng)
    recs = cap.records()
    out.valid("pcap-snaplen96.pcap", write_pcap(recs, 1, snaplen=96), recs,
              description="classic pcap with snaplen 96: every large frame is cut; wire bytes "
              "must come from orig_len and payload bytes from the IP/UDP length fields",
              fmt="pcap", link_types=[1], snaplen=96)


def make_pcapng(out: Out) -> bytes:
    rng = random.Random("pcapng")
    cap = Capture()
    # section 0 (little-endian): iface 0 Ethernet at 10^-6, iface 1 raw IP at 10^-9
    t = at(40)
    f = Flow("udp", CLIENT4, 41001, SERVER4, 47005)
    t = udp_exchange(cap, f, eth, t, [(50, 150), (50, 150)], rng, section=0, iface=0)
    f = Flow("tcp", CLIENT4, 41002, SERVER4, 80)
    # the data exchange travels in obsolete Packet Blocks (type 2)
    c = Tcp(cap, f, eth, (100, 200), section=0, iface=0)
    t = c.handshake(t, Fraction(1, 100))
    c.rec = {"section": 0, "iface": 0, "block": "opb"}
    t = c.exchange(t, Fraction(1, 100), b"GET /opb HTTP/1.1\r\n\r\n", rng.randbytes(400))
    c.rec = {"section": 0, "iface": 0}
    t = c.close(t, Fraction(1, 100))
    f = Flow("udp", "10.8.0.2", 41003, "10.8.0.1", 47194)
    send_udp(cap, f, raw, at("40.500000001"), ORIG, blob(rng, 90), section=0, iface=1)
    send_udp(cap, f, raw, at("40.512345678"), RESP, blob(rng, 190), section=0, iface=1)
    send_udp(cap, f, raw, at("40.600000999"), ORIG, blob(rng, 70), section=0, iface=1)
    # section 1 (big-endian): iface 0 Ethernet at 2^-20, iface 1 raw IPv6 at 10^-3
    tick = Fraction(1, 2**20)
    f = Flow("udp", CLIENT4, 41004, SERVER4, 47005)
    base = at(50)
    for k, (d, n) in enumerate([(ORIG, 60), (RESP, 160), (ORIG, 61), (RESP, 161)]):
        send_udp(cap, f, eth, base + (1000 * k + 3) * tick, d, blob(rng, n),
                 section=1, iface=0)
    f = Flow("tcp", CLIENT4, 41005, SERVER4, 443)
    tcp_session(cap, f, eth, base + 5000 * tick, isn=(1, 2), rtt=256 * tick, step=16 * tick,
                request=rng.randbytes(200), response=rng.randbytes(600), section=1, iface=0)
    f = Flow("udp", CLIENT6, 41006, SERVER6, 47006)
    send_udp(cap, f, raw, at("50.250"), ORIG, blob(rng, 40), section=1, iface=1)
    send_udp(cap, f, raw, at("50.251"), RESP, blob(rng, 80), section=1, iface=1)
    recs = cap.records()
    # sections are written one after the other: section 0's records first
    recs = [r for r in recs if r.section == 0] + [r for r in recs if r.section == 1]
    e0, e1 = "<", ">"
    nrb_body = (struct.pack("<HH", 1, 4 + 13) + pad4(bytes([203, 0, 113, 10]) + b"srv.example\0\0")
                + struct.pack("<HH", 0, 0))
    isb_body = struct.pack("<III", 0, 0, 0) + opts("<", [(4, struct.pack("<Q", 20)),
                                                          (5, struct.pack("<Q", 0))])
    sections = [
        Section(False, [Iface(1, 10**6, b"\x06", "eth0"), Iface(101, 10**9, b"\x09", "tun0")],
                shb_options=[(2, b"x86_64"), (3, b"Linux 6.1"), (4, b"make_captures.py"),
                             (1, b"section one, little-endian")],
                after_idbs=[block(e0, NRB, nrb_body),
                            block(e0, CUSTOM_COPY, struct.pack("<I", 32473) + b"custom data"),
                            block(e0, UNKNOWN_LOCAL, b"\x01\x02\x03\x04 skip me")],
                at_end=[block(e0, ISB, isb_body)]),
        Section(True, [Iface(1, 2**20, b"\x94", "en0"), Iface(229, 10**3, b"\x03", "utun1")],
                shb_options=[(4, b"make_captures.py"), (1, b"section two, big-endian")],
                after_idbs=[block(e1, UNKNOWN_LOCAL, b"more to skip")]),
    ]
    data = write_pcapng(recs, sections)
    out.valid("pcapng-multi.pcapng", data, recs, fmt="pcapng", link_types=[1, 101, 1, 229],
              description="pcapng, two sections (little- then big-endian), two interfaces each "
              "(Ethernet 10^-6 s + raw IP 10^-9 s; Ethernet 2^-20 s + raw IPv6 10^-3 s), EPBs "
              "with options, OPBs (type 2), a name resolution block, a custom block, unknown "
              "local-use blocks and an interface statistics block to skip")
    # simple packet blocks: no timestamps, interface 0, snaplen 128 from the IDB
    cap = Capture()
    _, t = dns(cap, eth, at(60), CLIENT4, "192.168.1.1", 41010, 0x1111, "spb.example.net",
                ["203.0.113.99"], block="spb")
    f = Flow("udp", CLIENT4, 41011, "203.0.113.99", 47900)
    udp_exchange(cap, f, eth, t, [(300, 20), (250, 30)], rng, block="spb")
    recs = cap.records()
    data2 = write_pcapng(recs, [Section(False, [Iface(1, 10**6, b"", "eth0", snaplen=128)])])
    out.valid("pcapng-spb.pcapng", data2, recs, fmt="pcapng", link_types=[1], timed=False,
              description="pcapng with simple packet blocks only (no timestamps, interface "
              "snaplen 128 so large frames are cut; wire bytes from the original length)")
    return data


def make_gzip(out: Out, pcapng_bytes: bytes) -> None:
    src = out.outdir / "pcap-le-usec.pcap"
    entry = json.loads(json.dumps(out.manifest["pcap-le-usec.pcap"]))
    entry["description"] = "gzip copy of pcap-le-usec.pcap"
    entry["compressed"] = True
    out.save("gz-pcap.pcap.gz", gz(src.read_bytes()), entry)
    entry = json.loads(json.dumps(out.manifest["pcapng-multi.pcapng"]))
    entry["description"] = ("gzip copy of pcapng-multi.pcapng under a misleading .pcap name: "
                            "format must be found from the magic, not the extension")
    entry["compressed"] = True
    out.save("gz-pcapng-misnamed.pcap", gz(pcapng_bytes), entry)


def make_link_types(out: Out) -> None:
    cases: list[tuple[str, int, Link, bool, bool, str]] = [
        ("lt-sll.pcap", 113, sll, True, True, "Linux cooked capture v1 (113)"),
        ("lt-sll2.pcap", 276, sll2, True, True, "Linux cooked capture v2 (276)"),
        ("lt-raw101.pcap", 101, raw, True, True, "raw IP, LINKTYPE_RAW (101)"),
        ("lt-raw12.pcap", 12, raw, True, True, "raw IP as DLT 12 (raw on most BSDs)"),
        ("lt-raw14.pcap", 14, raw, True, True, "raw IP as DLT 14 (raw on OpenBSD)"),
        ("lt-ipv4.pcap", 228, raw, True, False, "LINKTYPE_IPV4 (228), IPv4 only"),
        ("lt-ipv6.pcap", 229, raw, False, True, "LINKTYPE_IPV6 (229), IPv6 only"),
        ("lt-null.pcap", 0, null_le, True, True,
         "BSD loopback NULL (0): family in host (file) byte order, little-endian, AF_INET6=30"),
        ("lt-loop.pcap", 108, loop_be, True, True,
         "OpenBSD LOOP (108): family in network byte order inside a little-endian file, "
         "AF_INET6=24"),
    ]
    for name, lt, link, v4, v6, what in cases:
        cap = Capture()
        basic_mix(cap, link, at(100), random.Random(name), v4=v4, v6=v6)
        recs = cap.records()
        out.valid(name, write_pcap(recs, lt), recs, fmt="pcap", link_types=[lt],
                  description=f"{what}: UDP exchange and TCP connection"
                  + (" over IPv4 and IPv6" if v4 and v6 else ""))


def make_encapsulations(out: Out) -> None:
    rng = random.Random("encap")
    a, b = "10.1.0.5", "10.2.0.9"

    def two(cap: Capture, links: list[tuple[Link, int | None, str | None]],
            t: Fraction) -> None:
        for i, (link, vid, tun) in enumerate(links):
            u = Flow("udp", a, 42000 + 2 * i, b, 47060 + i, vlan=vid, tunnel=tun)
            t = udp_exchange(cap, u, link, t, [(100, 200), (80, 60)], rng)
            tf = Flow("tcp", a, 42001 + 2 * i, b, 443, vlan=vid, tunnel=tun)
            t = tcp_session(cap, tf, link, t + Fraction(1, 100), request=rng.randbytes(150),
                            response=rng.randbytes(700)) + Fraction(1, 100)

    specs: list[tuple[str, str, Callable[[Capture], list[tuple[Link, int | None, str | None]]]]]
    specs = [
        ("encap-vlan.pcap", "802.1Q VLAN 42 flows next to untagged ones",
         lambda c: [(vlan(42), 42, None), (eth, None, None)]),
        ("encap-qinq.pcap", "QinQ: 802.1ad S-tag 100 (0x88a8) outside 802.1Q C-tag 200; "
         "vlan = the outer id", lambda c: [(qinq(100, 200), 100, None)]),
        ("encap-mpls.pcap", "MPLS with one label (1000) and with two labels (2000, 3000)",
         lambda c: [(mpls([1000]), None, "mpls"), (mpls([2000, 3000]), None, "mpls")]),
        ("encap-gre.pcap", "GRE over IPv4: plain (RFC 2784) and with a key (RFC 2890)",
         lambda c: [(gre(c, None), None, "gre"), (gre(c, 0x0000BEEF), None, "gre")]),
        ("encap-erspan.pcap", "ERSPAN type II (GRE 0x88be, sequence numbers) carrying "
         "mirrored Ethernet frames", lambda c: [(erspan2(c, 77), None, "erspan")]),
        ("encap-vxlan.pcap", "VXLAN (UDP 4789, VNI 5001) carrying Ethernet frames",
         lambda c: [(vxlan(c, 5001), None, "vxlan")]),
        ("encap-gtpu.pcap", "GTP-U on UDP 2152: plain header, with the S flag (sequence "
         "number) and with the E flag (PDU session container extension)",
         lambda c: [(gtpu(c, 0x11, "plain"), None, "gtpu"), (gtpu(c, 0x22, "seq"), None, "gtpu"),
                    (gtpu(c, 0x33, "ext"), None, "gtpu")]),
    ]
    for name, desc, links in specs:
        cap = Capture()
        two(cap, links(cap), at(200))
        recs = cap.records()
        lt = [1]
        out.valid(name, write_pcap(recs, 1), recs, fmt="pcap", link_types=lt,
                  description=desc + ": a UDP exchange and a TCP connection per variant")


def make_ipv6_ext(out: Out) -> None:
    rng = random.Random("ipv6ext")
    cap = Capture()
    f = Flow("udp", CLIENT6, 43001, SERVER6, 47683)
    t = at(300)
    for d, n in [(ORIG, 40), (RESP, 90), (ORIG, 41)]:
        src, sp, dst, dp = f.ends(d)
        pkt = (IPv6(src=src, dst=dst) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting(
            addresses=["2001:db8:ffff::1"], segleft=0) / IPv6ExtHdrDestOpt()
            / UDP(sport=sp, dport=dp) / Raw(blob(rng, n)))
        cap.add(Rec(t, eth(bytes(pkt), d), f, d, n))
        t += Fraction(3, 1000)
    # a TCP connection whose segments carry a destination-options header
    f = Flow("tcp", CLIENT6, 43002, SERVER6, 443)
    c = Tcp(cap, f, lambda ip, d: eth(add_dstopt(ip), d), (3, 4))
    t = c.handshake(t, Fraction(5, 1000))
    t = c.exchange(t, Fraction(5, 1000), b"ping", b"pong")
    t = c.close(t, Fraction(5, 1000))
    # a UDP datagram in two IPv6 fragments, then a short answer
    f = Flow("udp", CLIENT6, 43003, SERVER6, 47433)
    big = IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrFragment(id=0x5EED) / UDP(
        sport=43003, dport=47433) / Raw(blob(rng, 1800))
    for i, frag in enumerate(fragment6(big, 1280)):  # type: ignore[no-untyped-call]
        cap.add(Rec(t + i * Fraction(1, 10000), eth(bytes(frag), ORIG), f, ORIG,
                    1800 if i == 0 else 0))
    send_udp(cap, f, eth, t + Fraction(8, 1000), RESP, blob(rng, 30))
    recs = cap.records()
    out.valid("ipv6-ext.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="IPv6 extension headers: hop-by-hop + routing + destination options "
              "before UDP, destination options before TCP, and a UDP datagram in two "
              "Fragment-header fragments", tshark={"check": True, "key": "ip"})


def add_dstopt(ip6: bytes) -> bytes:
    """Insert an empty (PadN) destination-options header after the fixed IPv6 header."""
    nh = ip6[6]
    ext = bytes([nh, 0, 1, 4, 0, 0, 0, 0])
    plen = struct.unpack(">H", ip6[4:6])[0] + len(ext)
    return ip6[:4] + struct.pack(">HB", plen, 60) + ip6[7:40] + ext + ip6[40:]


def make_ipv4_frag(out: Out) -> None:
    for name, order, desc in [
        ("ipv4-frag.pcap", [0, 1, 2], "in order"),
        ("ipv4-frag-ooo.pcap", [2, 0, 1], "out of order (last, first, middle)"),
    ]:
        rng = random.Random(name)
        cap = Capture()
        f = Flow("udp", "192.168.1.23", 44001, "198.51.100.33", 47700)
        dgram = IP(src=f.orig_h, dst=f.resp_h, id=0x4242, ttl=64) / UDP(
            sport=f.orig_p, dport=f.resp_p) / Raw(blob(rng, 2000))
        frags = fragment(dgram, fragsize=680)  # type: ignore[no-untyped-call]
        for k, i in enumerate(order):
            cap.add(Rec(at(400) + k * Fraction(1, 10000), eth(bytes(frags[i]), ORIG), f, ORIG,
                        2000 if i == 0 else 0))
        send_udp(cap, f, eth, at("400.02"), RESP, blob(rng, 64))
        # a second flow between the same hosts, unfragmented, to keep fragments apart
        g = Flow("udp", "192.168.1.23", 44002, "198.51.100.33", 47700)
        udp_exchange(cap, g, eth, at("400.05"), [(100, 100)], rng)
        recs = cap.records()
        out.valid(name, write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
                  description=f"a 2008-byte UDP datagram in 3 IPv4 fragments arriving {desc}, "
                  "its unfragmented answer and another flow between the same hosts; all three "
                  "fragments count in the datagram's flow, ports from the first fragment",
                  tshark={"check": True, "key": "ip"})


def make_flow_cases(out: Out) -> None:
    rng = random.Random("flows")
    # same 5-tuple reused after a FIN close: two flows
    cap = Capture()
    f1 = Flow("tcp", CLIENT4, 45001, SERVER4, 80)
    t = tcp_session(cap, f1, eth, at(500), isn=(1000, 2000))
    f2 = Flow("tcp", CLIENT4, 45001, SERVER4, 80)
    tcp_session(cap, f2, eth, t + 2, isn=(900_000, 800_000), request=b"GET /again HTTP/1.1\r\n\r\n")
    recs = cap.records()
    out.valid("flow-tcp-reuse.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="a TCP connection closed with FIN both ways, then a new connection "
              "on the same 5-tuple 2 s later: two flows")
    # UDP idle gap longer than the idle timeout: two flows
    cap = Capture()
    f1 = Flow("udp", CLIENT4, 45002, SERVER4, 47353)
    t = udp_exchange(cap, f1, eth, at(600), [(50, 50)] * 5, rng, gap=Fraction(400, 1000))
    gap_s = 200
    f2 = Flow("udp", CLIENT4, 45002, SERVER4, 47353)
    udp_exchange(cap, f2, eth, t + gap_s, [(50, 50)] * 3, rng, gap=Fraction(400, 1000))
    recs = cap.records()
    out.valid("flow-udp-idle.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description=f"a UDP flow silent for {gap_s} s, longer than the "
              f"{UDP_IDLE_TIMEOUT_S} s default UDP idle timeout: two flows "
              "(config-dependent: with a timeout above the gap they would merge)",
              config={"udp_idle_timeout_s": UDP_IDLE_TIMEOUT_S, "gap_s": gap_s})
    # ICMP errors quoting flows
    cap = Capture()
    fu = Flow("udp", CLIENT4, 45003, "198.51.100.7", 47999)
    sent = send_udp(cap, fu, eth, at(700), ORIG, blob(rng, 60))
    icmp = bytes(IP(src="198.51.100.7", dst=CLIENT4, id=cap.next_id(), ttl=55)
                 / ICMP(type=3, code=3) / Raw(sent[:28]))  # IP header + 8 bytes, RFC 792
    cap.add(Rec(at("700.03"), eth(icmp, RESP),
                notice=Notice(fu, 4, 3, 3, "198.51.100.7")))
    ft = Flow("tcp", CLIENT4, 45004, "203.0.113.80", 443)
    c = Tcp(cap, ft, eth, (31337, 0))
    syn = c.seg(at(701), ORIG, "S")
    icmp = bytes(IP(src="192.168.1.1", dst=CLIENT4, id=cap.next_id(), ttl=64)
                 / ICMP(type=3, code=13) / Raw(syn))  # whole SYN quoted, RFC 1812 §4.3.2.3
    cap.add(Rec(at("701.002"), eth(icmp, RESP), notice=Notice(ft, 4, 3, 13, "192.168.1.1")))
    f6 = Flow("udp", CLIENT6, 45005, "2001:db8:2::7", 3478)
    sent6 = send_udp(cap, f6, eth, at(702), ORIG, stun(0x0001, rng.randbytes(12), []))
    icmp6 = bytes(IPv6(src="2001:db8:1::1", dst=CLIENT6) / ICMPv6DestUnreach(code=1)
                  / Raw(sent6))
    cap.add(Rec(at("702.004"), eth(icmp6, RESP),
                notice=Notice(f6, 6, 1, 1, "2001:db8:1::1")))
    fo = Flow("udp", CLIENT4, 45006, "198.51.100.7", 47500)  # an answered flow: no notice
    udp_exchange(cap, fo, eth, at(703), [(30, 30)], rng)
    recs = cap.records()
    out.valid("icmp-errors.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="ICMP port unreachable quoting a UDP datagram, ICMP administratively "
              "prohibited quoting a TCP SYN, ICMPv6 destination unreachable (admin prohibited) "
              "quoting UDP over IPv6, and an answered UDP flow that gets no notice",
              extra_flows={"protos": ["icmp", "icmpv6"], "tuples": []})


# ---------------------------------------------------------------------------
# Malformed packets and damaged files


def make_malformed(out: Out) -> None:
    rng = random.Random("malformed")
    cap = Capture()
    t = basic_mix(cap, eth, at(800), rng, v6=False)
    # 1. IPv4 header with IHL 4 (16 bytes, below the 20-byte minimum)
    ip = bytearray(bytes(IP(src=CLIENT4, dst=SERVER4, id=cap.next_id()) / UDP(
        sport=46001, dport=9) / Raw(b"x" * 12)))
    ip[0] = 0x44
    cap.add(Rec(t + Fraction(1, 100), eth(bytes(ip), ORIG), weird="ipv4"))
    # 2. TCP header cut to 10 bytes inside a consistent IPv4 packet
    tcp = bytes(TCP(sport=46002, dport=80, flags="S"))[:10]
    cut = bytes(IP(src=CLIENT4, dst=SERVER4, id=cap.next_id(), proto=6) / Raw(tcp))
    cap.add(Rec(t + Fraction(2, 100), eth(cut, ORIG), weird="tcp",
                extra=("tcp", CLIENT4, 46002, SERVER4, 80)))
    # 3. IPv6 payload length 200 with 20 bytes present (and the frame not cut)
    ip6 = bytearray(bytes(IPv6(src=CLIENT6, dst=SERVER6) / UDP(sport=46003, dport=9)
                          / Raw(b"y" * 12)))
    ip6[4:6] = struct.pack(">H", 200)
    cap.add(Rec(t + Fraction(3, 100), eth(bytes(ip6), ORIG), weird="ipv6",
                extra=("udp", CLIENT6, 46003, SERVER6, 9)))
    # 4. UDP length 60 where the IPv4 packet holds 8 + 12 bytes
    ip = bytearray(bytes(IP(src=CLIENT4, dst=SERVER4, id=cap.next_id()) / UDP(
        sport=46004, dport=9) / Raw(b"z" * 12)))
    ip[24:26] = struct.pack(">H", 60)
    cap.add(Rec(t + Fraction(4, 100), eth(bytes(ip), ORIG), weird="udp",
                extra=("udp", CLIENT4, 46004, SERVER4, 9)))
    f = Flow("udp", CLIENT4, 46005, SERVER4, 47005)  # life goes on after the bad packets
    udp_exchange(cap, f, eth, t + Fraction(5, 100), [(20, 20)], rng)
    recs = cap.records()
    out.valid("malformed-packets.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="good flows around four malformed packets, one weird each: IPv4 "
              "IHL 4, TCP header cut to 10 bytes, IPv6 payload length beyond the packet, UDP "
              "length beyond the IP payload",
              extra_flows={"protos": [], "tuples": extra_tuples(recs)})


def make_damaged(out: Out) -> None:
    rng = random.Random("damaged")
    cap = Capture()
    basic_mix(cap, eth, at(900), rng, v6=False)
    recs = cap.records()
    whole = write_pcap(recs, 1)
    # record offsets: 24-byte file header, then 16 + incl_len per record
    offsets = [24]
    for r in recs:
        offsets.append(offsets[-1] + 16 + len(r.data))
    cut = 7  # records 0..6 whole, record 7 cut in the middle of its data
    data = whole[: offsets[cut] + 16 + len(recs[cut].data) // 2]
    kept = recs[:cut]
    bad = {"exit_code": 3, "complete": False, "format": "pcap", "compressed": False,
           "link_types": [1], "tshark": {"check": False, "key": "l4"}}
    out.save("bad-truncated.pcap", data, {
        **bad, "description": "pcap cut in the middle of record 8: 7 packets, then stop at "
        "that record's header", "packets": cut, "stopped_at": offsets[cut],
        "flows": expected_flows(kept)})
    out.save("bad-truncated.pcap.gz", gz(data), {
        **bad, "compressed": True, "description": "gzip of bad-truncated.pcap: the gzip stream "
        "is whole, the pcap inside is cut; stopped_at counts decompressed bytes",
        "packets": cut, "stopped_at": offsets[cut], "flows": expected_flows(kept)})
    absurd = 5
    data = write_pcap(recs, 1, incl_len_override={absurd: 0x7FFFFFF0})
    out.save("bad-corrupt-header.pcap", data, {
        **bad, "description": "pcap whose 6th record header claims incl_len 0x7ffffff0: 5 "
        "packets, then stop at that header", "packets": absurd, "stopped_at": offsets[absurd],
        "flows": expected_flows(recs[:absurd])})
    # pcapng cut inside an EPB
    ng = write_pcapng(recs, [Section(False, [Iface(1, 10**6, b"\x06", "eth0")])])
    pos = 0
    starts = []
    while pos < len(ng):
        btype, length = struct.unpack_from("<II", ng, pos)
        if btype == EPB:
            starts.append(pos)
        pos += length
    cut_ng = 9
    data = ng[: starts[cut_ng] + 20]
    out.save("bad-truncated.pcapng", data, {
        **bad, "format": "pcapng", "description": "pcapng cut 20 bytes into the 10th enhanced "
        "packet block: 9 packets, then stop at that block", "packets": cut_ng,
        "stopped_at": starts[cut_ng], "flows": expected_flows(recs[:cut_ng])})
    unreadable: dict[str, Any] = {
        "exit_code": 2, "complete": False, "format": None, "compressed": False,
        "link_types": [], "packets": 0, "flows": [], "tshark": {"check": False, "key": "l4"}}
    out.save("bad-text.pcap", b"This is a text file, not a packet capture.\nSecond line.\n",
             {**unreadable, "description": "a text file named .pcap: not a capture"})
    out.save("bad-empty.pcap", b"", {**unreadable, "description": "an empty file"})
    lt147 = write_pcap(recs[:3], 147)
    out.save("bad-linktype147.pcap", lt147, {
        **unreadable, "format": "pcap", "link_types": [147],
        "description": "a well-formed pcap with link type 147 (USER0), which the probe "
        "does not decode"})


# ---------------------------------------------------------------------------
# Showcase captures: a WhatsApp-like call, the same call blocked, a SIP call

PHONE = "192.168.1.23"
GATEWAY = "192.168.1.1"
WA_CHAT = "157.240.9.53"  # g.whatsapp.net
WA_MMG = "157.240.196.62"  # mmg.whatsapp.net
RELAY1 = "157.240.27.54"  # relay picked for the call
RELAY2 = "31.13.70.49"  # second candidate, probed then dropped
PUBLIC = "203.0.113.77"  # the phone's address after NAT
STUN_COOKIE = 0x2112A442


def stun(msg_type: int, txid: bytes, attrs: list[tuple[int, bytes]]) -> bytes:
    """STUN message, RFC 8489 §5: type, length, magic cookie, 96-bit transaction id."""
    body = b"".join(struct.pack(">HH", t, len(v)) + pad4(v) for t, v in attrs)
    return struct.pack(">HHI", msg_type, len(body), STUN_COOKIE) + txid + body


def xor_mapped(ip: str, port: int) -> bytes:
    """XOR-MAPPED-ADDRESS value (RFC 8489 §14.2) for an IPv4 address."""
    addr = struct.unpack(">I", bytes(int(x) for x in ip.split(".")))[0]
    return struct.pack(">BBHI", 0, 1, port ^ (STUN_COOKIE >> 16), addr ^ STUN_COOKIE)


def tls_client_hello(sni: str, rng: random.Random) -> bytes:
    """TLS 1.3 ClientHello record (RFC 8446 §4.1.2) with server_name (RFC 6066 §3)."""
    name = sni.encode()

    def ext(code: int, data: bytes) -> bytes:
        return struct.pack(">HH", code, len(data)) + data

    exts = (
        ext(0, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name)
        + ext(10, struct.pack(">HHHH", 6, 0x001D, 0x0017, 0x0018))
        + ext(13, struct.pack(">HHHHH", 8, 0x0403, 0x0804, 0x0401, 0x0503))
        + ext(16, struct.pack(">H", 12) + b"\x02h2\x08http/1.1")
        + ext(43, b"\x04\x03\x04\x03\x03")
        + ext(51, struct.pack(">HHH", 36, 0x001D, 32) + rng.randbytes(32))
    )
    suites = struct.pack(">HHHH", 0x1301, 0x1302, 0x1303, 0xC02F)
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
            + struct.pack(">H", len(suites)) + suites + b"\x01\x00"
            + struct.pack(">H", len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def tls_server_flight(rng: random.Random, appdata: int) -> bytes:
    """ServerHello, ChangeCipherSpec and an encrypted record of ``appdata`` bytes."""
    exts = struct.pack(">HHH", 43, 2, 0x0304) + struct.pack(">HHHH", 51, 36, 0x001D, 32) \
        + rng.randbytes(32)
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32)
            + struct.pack(">HB", 0x1301, 0) + struct.pack(">H", len(exts)) + exts)
    hs = b"\x02" + len(body).to_bytes(3, "big") + body
    return (b"\x16\x03\x03" + struct.pack(">H", len(hs)) + hs + b"\x14\x03\x03\x00\x01\x01"
            + b"\x17\x03\x03" + struct.pack(">H", appdata) + rng.randbytes(appdata))


def tls_session(cap: Capture, flow: Flow, t: Fraction, rng: random.Random, sni: str,
                rounds: int, rtt: Fraction) -> Fraction:
    c = Tcp(cap, flow, eth, (rng.getrandbits(32), rng.getrandbits(32)))
    t = c.handshake(t, rtt)
    t = c.exchange(t, rtt, tls_client_hello(sni, rng), tls_server_flight(rng, 1200))
    for _ in range(rounds):
        req = b"\x17\x03\x03" + struct.pack(">H", 90) + rng.randbytes(90)
        resp = b"\x17\x03\x03" + struct.pack(">H", 1100) + rng.randbytes(1100)
        t = c.exchange(t + Fraction(5, 100), rtt, req, resp)
    return c.close(t + Fraction(1, 10), rtt)


def rtp(seq: int, ts: int, ssrc: int, pt: int, payload: bytes, marker: bool = False) -> bytes:
    """RTP fixed header, RFC 3550 §5.1: V=2, no padding/extension/CSRC."""
    return struct.pack(">BBHII", 0x80, (marker << 7) | pt, seq & 0xFFFF, ts & 0xFFFFFFFF,
                       ssrc) + payload


def web_traffic(cap: Capture, t: Fraction, rng: random.Random, sport: int) -> None:
    """Unrelated browsing: a plain HTTP fetch and an HTTPS session, each after a lookup."""
    _, t1 = dns(cap, eth, t, PHONE, GATEWAY, sport, 0x7001, "www.example.com",
                ["93.184.216.34"])
    f = Flow("tcp", PHONE, sport + 1, "93.184.216.34", 80)
    tcp_session(cap, f, eth, t1 + Fraction(1, 100), rtt=Fraction(95, 1000),
                request=b"GET / HTTP/1.1\r\nHost: www.example.com\r\nUser-Agent: Mozilla/5.0"
                b"\r\nAccept: */*\r\n\r\n",
                response=b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 1256"
                b"\r\n\r\n" + b"<!doctype html>" + bytes(rng.choice(b"abcdefgh ")
                                                         for _ in range(1241)),
                isn=(rng.getrandbits(32), rng.getrandbits(32)))
    _, t2 = dns(cap, eth, t + 6, PHONE, GATEWAY, sport + 2, 0x7002, "en.wikipedia.org",
                ["185.15.59.224"])
    f = Flow("tcp", PHONE, sport + 3, "185.15.59.224", 443)
    tls_session(cap, f, t2 + Fraction(1, 100), rng, "en.wikipedia.org", 3, Fraction(40, 1000))


def call_setup(cap: Capture, rng: random.Random, answered: bool) -> tuple[Flow, Fraction]:
    """Lookups, the chat connection, a TLS fetch and the STUN exchange with two relays.

    Returns the media flow (phone:45321 <-> RELAY1:3478) and when media starts.
    """
    t = at(1000)
    dns(cap, eth, t, PHONE, GATEWAY, 53001, 0x1A01, "g.whatsapp.net", [WA_CHAT])
    chat = Flow("tcp", PHONE, 52001, WA_CHAT, 5222)
    c = Tcp(cap, chat, eth, (rng.getrandbits(32), rng.getrandbits(32)))
    tc = c.handshake(t + Fraction(3, 100), Fraction(35, 1000))
    # noise-style chat handshake: "ED" prologue, version 0, 1
    tc = c.exchange(tc, Fraction(35, 1000), bytes.fromhex("4544000100000408") + rng.randbytes(40),
                    rng.randbytes(350))
    for k in range(4):  # call signalling and keepalives over the chat connection
        tc = c.exchange(t + Fraction(13, 10) + 7 * k, Fraction(35, 1000), rng.randbytes(120),
                        rng.randbytes(80 + 20 * k))
    _, t2 = dns(cap, eth, t + Fraction(4, 10), PHONE, GATEWAY, 53002, 0x1A02, "mmg.whatsapp.net",
                [WA_MMG])
    tls_session(cap, Flow("tcp", PHONE, 52002, WA_MMG, 443), t2 + Fraction(1, 100), rng,
                "mmg.whatsapp.net", 2, Fraction(38, 1000))
    _, t3 = dns(cap, eth, t + 1, PHONE, GATEWAY, 53003, 0x1A03, "relay-fra3.whatsapp.net",
                [RELAY1, RELAY2])
    media = Flow("udp", PHONE, 45321, RELAY1, 3478)
    other = Flow("udp", PHONE, 45321, RELAY2, 3478)
    t = t3 + Fraction(5, 100)
    token = rng.randbytes(16)
    for k in range(3):  # Binding requests with WhatsApp's attributes, to both relays
        for flow, rtt in ((media, Fraction(41, 1000)), (other, Fraction(63, 1000))):
            txid = rng.randbytes(12)
            req = stun(0x0001, txid, [(0x4000, token), (0x4001, struct.pack(">I", 3)),
                                      (0x4004, b"\x00\x01")])
            send_udp(cap, flow, eth, t, ORIG, req)
            if answered:
                resp = stun(0x0101, txid, [(0x0020, xor_mapped(PUBLIC, 45321)),
                                           (0x4002, rng.randbytes(8))])
                send_udp(cap, flow, eth, t + rtt, RESP, resp)
            t += Fraction(1, 100)
        t += Fraction(2, 10) if answered else Fraction(1, 2) * (2**k)
    for _ in range(2):  # WhatsApp's own request/response pair (0x0800 / 0x0801)
        txid = rng.randbytes(12)
        send_udp(cap, media, eth, t, ORIG, stun(0x0800, txid, [(0x4003, rng.randbytes(4)),
                                                               (0x4007, b"\x01")]))
        if answered:
            send_udp(cap, media, eth, t + Fraction(41, 1000), RESP,
                     stun(0x0801, txid, [(0x4003, rng.randbytes(4))]))
        t += Fraction(1, 10)
    send_udp(cap, media, eth, t, ORIG, stun(0x0802, rng.randbytes(12), [(0x4007, b"\x02")]))
    return media, t + Fraction(2, 10)


def media_stream(cap: Capture, flow: Flow, direction: int, t0: Fraction, n: int,
                 rng: random.Random, ssrc: int, pt: int, clock: int, size: Callable[[int], int],
                 jitter_us: int) -> None:
    """``n`` RTP packets at 20 ms spacing, RTP timestamp advancing ``clock`` per packet."""
    seq = rng.randrange(0, 0xFFFF)
    rts = rng.getrandbits(32)
    last = t0
    for i in range(n):
        ts = t0 + Fraction(i, 50) + Fraction(rng.randrange(0, jitter_us + 1), 1_000_000)
        ts = max(ts, last + Fraction(1, 1_000_000))
        last = ts
        send_udp(cap, flow, eth, ts, direction,
                 rtp(seq + i, rts + clock * i, ssrc, pt, rng.randbytes(size(i)), marker=i == 0))


def speech_size(rng: random.Random) -> Callable[[int], int]:
    """SRTP payload sizes: ~60 in silence, 90-120 bytes in talk spurts of ~1.5 s."""
    def size(i: int) -> int:
        talking = (i // 75) % 2 == 0
        return rng.randrange(88, 109) if talking else rng.randrange(48, 56)
    return size


def make_samples(out: Out) -> None:
    # the answered call
    rng = random.Random("sample-call")
    cap = Capture()
    media, t = call_setup(cap, rng, answered=True)
    seconds = 18
    media_stream(cap, media, ORIG, t, 50 * seconds, rng, 0x1A2B3C4D, 120, 960,
                 speech_size(rng), 300)
    media_stream(cap, media, RESP, t + Fraction(45, 1000), 50 * seconds, rng, 0x5E6F7081, 120,
                 960, speech_size(rng), 6000)
    for k in range(1, 4):  # keepalive 0x0800 pairs during the call
        tk = t + 5 * k + Fraction(7, 1000)
        txid = rng.randbytes(12)
        send_udp(cap, media, eth, tk, ORIG, stun(0x0800, txid, [(0x4003, rng.randbytes(4))]))
        send_udp(cap, media, eth, tk + Fraction(41, 1000), RESP,
                 stun(0x0801, txid, [(0x4003, rng.randbytes(4))]))
    web_traffic(cap, at(1005), rng, 53100)
    dns(cap, eth, at(1029), PHONE, GATEWAY, 53200, 0x1A04, "graph.whatsapp.net",
        ["157.240.9.60"])
    recs = cap.records()
    out.valid("sample-call.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="showcase (make run): ~30 s seen from a phone on a LAN: DNS for "
              "g.whatsapp.net, mmg.whatsapp.net and a relay name, the chat connection, a TLS "
              "session with SNI mmg.whatsapp.net, STUN with WhatsApp's message types "
              "(0x0800/0x0801/0x0802) and attributes (0x4000-0x4007) to two relays, then 18 s "
              "of two-way RTP (PT 120, 20 ms, stable SSRCs) on the STUN 5-tuple, plus "
              "unrelated web browsing",
              media={"flow": [PHONE, 45321, RELAY1, 3478], "pt": 120,
                     "ssrc": {"orig": 0x1A2B3C4D, "resp": 0x5E6F7081},
                     "rtp_pkts": {"orig": 50 * seconds, "resp": 50 * seconds}})
    # the blocked call: no STUN answers, media out and never back
    rng = random.Random("sample-blocked")
    cap = Capture()
    media, t = call_setup(cap, rng, answered=False)
    seconds = 6
    media_stream(cap, media, ORIG, t, 50 * seconds, rng, 0x0BADCA11, 120, 960,
                 speech_size(rng), 300)
    web_traffic(cap, at(1005), rng, 53100)
    recs = cap.records()
    out.valid("sample-blocked.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="the same call set-up where the STUN requests get no answer "
              "(retried with back-off) and 6 s of RTP go out and never come back, while DNS, "
              "the chat connection, TLS and web traffic flow normally",
              media={"flow": [PHONE, 45321, RELAY1, 3478], "pt": 120,
                     "ssrc": {"orig": 0x0BADCA11},
                     "rtp_pkts": {"orig": 50 * seconds, "resp": 0}})
    out.maker = "make_sip"
    make_sip(out)


def sip_msg(start: str, headers: list[tuple[str, str]], body: str = "") -> bytes:
    lines = [start] + [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def sdp(session: int, ip: str, port: int) -> str:
    """SDP offer/answer (RFC 8866) for PCMU and telephone-event, 20 ms packets."""
    return "\r\n".join([
        "v=0", f"o=- {session} {session} IN IP4 {ip}", "s=-", f"c=IN IP4 {ip}", "t=0 0",
        f"m=audio {port} RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv",
    ]) + "\r\n"


def make_sip(out: Out) -> None:
    rng = random.Random("sample-sip")
    cap = Capture()
    phone, proxy, media_gw = "192.168.1.50", "198.51.100.10", "198.51.100.20"
    _, t = dns(cap, eth, at(2000), phone, GATEWAY, 53300, 0x5101, "sip.example.net", [proxy])
    sig = Flow("udp", phone, 5060, proxy, 5060)
    call_id = "a84b4c76e66710@192.168.1.50"
    via = f"SIP/2.0/UDP {phone}:5060;branch=z9hG4bK776asdhds"
    frm = "\"Alice\" <sip:alice@example.net>;tag=1928301774"
    to = "<sip:bob@example.net>"
    to_tag = to + ";tag=a6c85cf"
    contact_a, contact_b = f"<sip:alice@{phone}:5060>", f"<sip:bob@{proxy}:5060>"

    def hdrs(to_h: str, cseq: str, contact: str | None = None) -> list[tuple[str, str]]:
        h = [("Via", via), ("Max-Forwards", "70"), ("From", frm), ("To", to_h),
             ("Call-ID", call_id), ("CSeq", cseq)]
        return h + ([("Contact", contact)] if contact else [])

    t += Fraction(2, 100)
    send_udp(cap, sig, eth, t, ORIG, sip_msg("INVITE sip:bob@example.net SIP/2.0",
                                             hdrs(to, "314159 INVITE", contact_a),
                                             sdp(2890844526, phone, 40000)))
    send_udp(cap, sig, eth, t + Fraction(30, 1000), RESP,
             sip_msg("SIP/2.0 100 Trying", hdrs(to, "314159 INVITE")))
    send_udp(cap, sig, eth, t + Fraction(6, 10), RESP,
             sip_msg("SIP/2.0 180 Ringing", hdrs(to_tag, "314159 INVITE", contact_b)))
    t_ok = t + Fraction(42, 10)
    send_udp(cap, sig, eth, t_ok, RESP,
             sip_msg("SIP/2.0 200 OK", hdrs(to_tag, "314159 INVITE", contact_b),
                     sdp(2890844527, media_gw, 30000)))
    send_udp(cap, sig, eth, t_ok + Fraction(2, 1000), ORIG,
             sip_msg("ACK sip:bob@198.51.100.10:5060 SIP/2.0", hdrs(to_tag, "314159 ACK")))
    rtp_flow = Flow("udp", phone, 40000, media_gw, 30000)
    seconds = 4
    n = 50 * seconds
    t_media = t_ok + Fraction(5, 1000)

    def pcmu(i: int) -> int:
        return 160

    media_stream(cap, rtp_flow, ORIG, t_media, n, rng, 0x11223344, 0, 160, pcmu, 200)
    media_stream(cap, rtp_flow, RESP, t_media + Fraction(27, 1000), n, rng, 0x55667788, 0, 160,
                 pcmu, 3000)
    rtcp_flow = Flow("udp", phone, 40001, media_gw, 30001)
    for k, d in [(1, ORIG), (2, RESP), (3, ORIG)]:  # RTCP sender reports (RFC 3550 §6.4.1)
        ssrc = 0x11223344 if d == ORIG else 0x55667788
        sr = struct.pack(">BBHIIIIII", 0x80, 200, 6, ssrc, 0xE8D4A510, 0, 160 * 50 * k,
                         50 * k, 172 * 50 * k)
        send_udp(cap, rtcp_flow, eth, t_media + k + Fraction(3, 1000), d, sr)
    t_bye = t_media + seconds + Fraction(1, 10)
    send_udp(cap, sig, eth, t_bye, ORIG,
             sip_msg("BYE sip:bob@198.51.100.10:5060 SIP/2.0", hdrs(to_tag, "314160 BYE")))
    send_udp(cap, sig, eth, t_bye + Fraction(31, 1000), RESP,
             sip_msg("SIP/2.0 200 OK", hdrs(to_tag, "314160 BYE")))
    recs = cap.records()
    out.valid("sample-sip.pcap", write_pcap(recs, 1), recs, fmt="pcap", link_types=[1],
              description="a SIP call over UDP 5060: INVITE with SDP, 100, 180, 200 with SDP, "
              "ACK, 4 s of PCMU RTP at 20 ms on the announced ports (one flow, one SSRC each "
              "way), RTCP sender reports on the ports above, BYE and 200",
              media={"flow": [phone, 40000, media_gw, 30000], "pt": 0,
                     "ssrc": {"orig": 0x11223344, "resp": 0x55667788},
                     "rtp_pkts": {"orig": n, "resp": n}})


def main(argv: list[str]) -> None:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent
    outdir.mkdir(parents=True, exist_ok=True)
    out = Out(outdir)
    out.maker = "make_classic_formats"
    make_classic_formats(out)
    out.maker = "make_pcapng"
    ng = make_pcapng(out)
    out.maker = "make_gzip"
    make_gzip(out, ng)
    for maker in (make_link_types, make_encapsulations, make_ipv6_ext, make_ipv4_frag,
                  make_flow_cases, make_malformed, make_damaged, make_samples):
        out.maker = maker.__name__
        maker(out)
    out.finish()


if __name__ == "__main__":
    main(sys.argv)
