"""A call on an IPv6-only access network: the app's server, IPv4-only, is reached through
NAT64 at an address of the well-known prefix 64:ff9b::/96 (RFC 6052 §2.1; DNS64 gives
it, 464XLAT's translator sends to it), and is named by its operator's published IPv4
ranges as it would be without the translation."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
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


def _sip(path: Path, direction: str = "sendrecv") -> Path:
    """A phone on an IPv6-only network calls through its provider's IPv4 proxy (reached
    at its NAT64 address); the 200 OK's SDP names the IPv4 media server, which the
    phone's RTP reaches at its NAT64 address. With ``direction`` sendonly the SDP makes
    the media one-way: only the phone sends."""
    mac = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"}
    proxy, media = "64:ff9b::c633:640a", "198.51.100.20"  # 198.51.100.10 through NAT64
    sdp = (f"v=0\r\no=- 1 1 IN IP4 {media}\r\ns=-\r\nc=IN IP4 {media}\r\nt=0 0\r\n"
           f"m=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n")
    head = ("Via: SIP/2.0/UDP [2a01:e0a:1f:2d0::7]:5060;branch=z9hG4bK1\r\n"
            "From: <sip:alice@example.org>;tag=1\r\nTo: <sip:bob@example.org>\r\n"
            "Call-ID: nat64-call@example.org\r\nCSeq: 1 INVITE\r\n"
            "Contact: <sip:alice@[2a01:e0a:1f:2d0::7]>\r\n")
    invite = ("INVITE sip:bob@example.org SIP/2.0\r\n" + head
              + "Content-Length: 0\r\n\r\n").encode()
    ok = ("SIP/2.0 200 OK\r\n" + head + "Content-Type: application/sdp\r\n"
          f"Content-Length: {len(sdp)}\r\n\r\n{sdp}").encode()
    t0 = 1_700_000_000.0
    pkts = []
    for t, src, dst, data in ((t0, PHONE6, proxy, invite), (t0 + 0.2, proxy, PHONE6, ok)):
        p = Ether(**mac) / IPv6(src=src, dst=dst) / UDP(sport=5060, dport=5060) / data
        p.time = t
        pkts.append(p)
    nat = f"64:ff9b::{media}"
    for i in range(150):
        for d, (src, dst, sport, dport, ssrc) in enumerate((
                (PHONE6, nat, 40000, 30000, 0x1111), (nat, PHONE6, 30000, 40000, 0x2222))):
            if d and direction == "sendonly":
                continue
            rtp = struct.pack("!BBHII", 0x80, 0, i, i * 160, ssrc) + bytes(160)
            p = Ether(**mac) / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / rtp
            p.time = t0 + 0.5 + i * 0.02 + d * 0.003
            pkts.append(p)
    wrpcap(str(path), pkts)
    return path


def test_media_an_sdp_names_by_its_ipv4_address_is_found_through_nat64(tmp_path: Path) -> None:
    run = read_capture(_sip(tmp_path / "sip.pcap"), meter_config())
    by_port = {f.resp_p if f.orig_h == PHONE6 else f.orig_p: c
               for f, c in zip(run.flows, classify_flows(run.flows), strict=True)}
    media = by_port[30000]
    assert (media.app, media.method) == ("sip", "call-peer"), media.reason
    assert "SDP" in media.reason


@pytest.mark.parametrize("direction", ["sendrecv", "sendonly"])
def test_a_sip_call_through_nat64_is_one_call_with_its_dialog(tmp_path: Path,
                                                             direction: str) -> None:
    """The media is joined to the dialog whose SDP named its server's IPv4 address: one
    call, judged with its SDP, so media one-way by design is no block."""
    from api.pipeline import analyze_capture
    from policy.records import VerdictKind

    result = analyze_capture(_sip(tmp_path / "sip.pcap", direction), workers=1)
    (call,) = result.analysis.calls
    assert call.extra.get("sip_call_id") == "nat64-call@example.org"
    assert len(call.flow_uids) == 2
    assert call.verdict.kind not in (VerdictKind.BLOCKED, VerdictKind.THROTTLED), call.verdict
    if direction == "sendrecv":
        assert call.verdict.kind is VerdictKind.OK, call.verdict
