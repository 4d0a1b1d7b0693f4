"""Verdict rules on small captures built from real protocol bytes (scapy)."""

from __future__ import annotations

import struct
from pathlib import Path

from scapy.layers.inet import IP, UDP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from api.pipeline import analyze_capture
from policy.records import Reason, VerdictKind

INVITE = (b"INVITE sip:bob@198.51.100.7 SIP/2.0\r\n"
          b"Via: SIP/2.0/UDP 192.168.1.50:5060;branch=z9hG4bK776asdhds\r\n"
          b"Max-Forwards: 70\r\nTo: <sip:bob@198.51.100.7>\r\n"
          b"From: <sip:alice@192.168.1.50>;tag=1928301774\r\n"
          b"Call-ID: a84b4c76e66710@192.168.1.50\r\nCSeq: 314159 INVITE\r\n"
          b"Contact: <sip:alice@192.168.1.50>\r\nContent-Length: 0\r\n\r\n")


def _pcap(path: Path, packets: list[tuple[float, bytes]]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, data in packets:
        sec = int(ts)
        out.append(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data), len(data)))
        out.append(data)
    path.write_bytes(b"".join(out))


def _udp(ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes
         ) -> tuple[float, bytes]:
    return ts, bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) /
                     Raw(payload))


def test_invite_without_any_response_is_blocked(tmp_path: Path) -> None:
    pkts = [_udp(10.0 + t, "192.168.1.50", 5060, "198.51.100.7", 5060, INVITE)
            for t in (0.0, 0.5, 1.5, 3.5)]
    # Other traffic is answered: a DNS exchange.
    pkts += [_udp(9.0, "192.168.1.50", 40000, "192.168.1.1", 53, b"\x12\x34" + b"\x00" * 10),
             _udp(9.1, "192.168.1.1", 53, "192.168.1.50", 40000, b"\x12\x34\x80" + b"\x00" * 9),
             _udp(16.0, "192.168.1.50", 40001, "192.168.1.1", 53, b"\x12\x35" + b"\x00" * 10)]
    path = tmp_path / "invite.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    (call,) = [c for c in result.analysis.calls if c.app == "sip"]
    assert call.verdict.kind is VerdictKind.BLOCKED
    assert call.verdict.reasons[0] is Reason.SIP_UNANSWERED
    assert call.verdict.evidence[0].figures["invites"] == 4


def test_invite_cut_by_the_end_of_the_capture_is_not_judged(tmp_path: Path) -> None:
    pkts = [_udp(10.0 + t, "192.168.1.50", 5060, "198.51.100.7", 5060, INVITE)
            for t in (0.0, 0.5)]
    path = tmp_path / "short.pcap"
    _pcap(path, pkts)
    result = analyze_capture(path, workers=1)
    kinds = {c.verdict.kind for c in result.analysis.calls}
    assert VerdictKind.BLOCKED not in kinds


def _rtp(seq: int, ts: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts, ssrc) + b"\xd5" * 160


def _rtcp_rr(reporter: int, source: int, fraction: int, lost: int, highest: int,
             jitter: int) -> bytes:
    # RFC 3550 §6.4.2: V=2, RC=1, PT=201, length 7 words; one report block.
    block = struct.pack("!IB3sIIII", source, fraction, lost.to_bytes(3, "big"), highest, jitter,
                        0, 0)
    return struct.pack("!BBHI", 0x81, 201, 7, reporter) + block


def test_rtcp_receiver_reports_give_the_far_side_view(tmp_path: Path) -> None:
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    pkts = []
    for i in range(250):
        t = 1.0 + i * 0.02
        pkts.append(_udp(t, *me, *peer, _rtp(i, i * 160, 0xAAAA)))
        pkts.append(_udp(t + 0.005, *peer, *me, _rtp(i, i * 160, 0xBBBB)))
    # The far end reports on our stream: 25/256 lost lately, 12 in all, jitter 80 units.
    pkts.append(_udp(4.01, *peer, me[0], me[1] + 1, _rtcp_rr(0xBBBB, 0xAAAA, 25, 12, 150, 80)))
    path = tmp_path / "rtcp.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    legs = [leg for c in result.analysis.calls for leg in c.legs if leg.ssrc == 0xAAAA]
    assert legs and legs[0].direction == "out"
    leg = legs[0]
    assert leg.rtcp_reports == 1
    assert abs((leg.rtcp_fraction_lost or 0) - 25 / 256) < 1e-9
    assert leg.rtcp_jitter_s is not None and abs(leg.rtcp_jitter_s - 80 / 8000) < 1e-9
