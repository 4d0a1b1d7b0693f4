"""A call on an IPv6-only access network: the app's server, IPv4-only, is reached through
NAT64 at an address of the well-known prefix 64:ff9b::/96 (RFC 6052 §2.1; DNS64 gives
it, 464XLAT's translator sends to it), and is named by its operator's published IPv4
ranges as it would be without the translation."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from classifier.engine import classify_flows
from classifier.owners import lookup
from classifier.payloads import meter_config
from probe import read_capture

PHONE4, PHONE6 = "10.0.0.7", "2a01:e0a:1f:2d0::7"
LINE_RELAY = "147.92.130.17"  # in LINE's published 147.92.128.0/17
NAT64 = "64:ff9b::935c:8211"  # the same address through NAT64


def _rtp(seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + bytes(
        (seq * 7 + k) & 0xFF for k in range(90))


def _call(path: Path, phone: str, relay: str) -> Path:
    """Four seconds of Opus-like RTP both ways, a packet every 20 ms each way."""
    ip = IPv6 if ":" in phone else IP
    pkts = []
    for i in range(200):
        t = 1_700_000_000.0 + i * 0.02
        for d, (src, dst, sport, dport, ssrc) in enumerate((
                (phone, relay, 40000, 3478, 0x1111), (relay, phone, 3478, 40000, 0x2222))):
            # both link-layer addresses given: scapy would otherwise ask the network
            p = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / ip(src=src, dst=dst) / UDP(sport=sport, dport=dport)
                 / _rtp(i, i * 960, ssrc))
            p.time = t + d * 0.003
            pkts.append(p)
    wrpcap(str(path), pkts)
    return path


def test_a_call_through_nat64_is_named_as_without_it(tmp_path: Path) -> None:
    assert lookup(NAT64) == lookup(LINE_RELAY) is not None
    got = {}
    for name, phone, relay in (("v4", PHONE4, LINE_RELAY), ("nat64", PHONE6, NAT64)):
        run = read_capture(_call(tmp_path / f"{name}.pcap", phone, relay), meter_config())
        assert len(run.flows) == 1
        (c,) = classify_flows(run.flows)
        got[name] = c
    v4, v6 = got["v4"], got["nat64"]
    assert (v6.app, v6.category, v6.media, v6.method) == (v4.app, v4.category, v4.media,
                                                          v4.method)
    assert v6.app == "line" and v6.method == "ip-owner"
    assert f"{NAT64} (NAT64 for {LINE_RELAY}) is in 147.92.128.0/17" in v6.reason
