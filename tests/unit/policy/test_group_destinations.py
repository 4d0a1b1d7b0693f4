"""Packets sent to a group, not to one host, owe their sender no answer.

NetBIOS name queries broadcast on a LAN (RFC 1002 §4.2.12) carry fixed fields where an
RTP header's sequence number, timestamp and SSRC would sit: no RTP source passes RFC 3550
§A.1's probation on them, so they are neither media nor a call. Real RTP sent to a
multicast group or to a directed broadcast address gets no packet back by design: never
"blocked" for that.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from api.pipeline import analyze_capture
from policy.pipeline import AnalysisResult
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "captures"))

import make_app_captures as gen
from make_captures import ORIG, Flow, ethertype, send_udp

SENDER = bytes.fromhex("0018fe6cbcf7")
BROADCAST = bytes.fromhex("ffffffffffff")


def _to(dst_mac: bytes) -> Callable[[bytes, int], bytes]:
    def wrap(ip: bytes, direction: int) -> bytes:
        return dst_mac + SENDER + struct.pack(">H", ethertype(ip)) + ip
    return wrap


def _analyze(tmp_path: Path, build: Callable[[gen.Capture, random.Random, Fraction], None]
             ) -> AnalysisResult:
    rng = random.Random("groups")
    cap = gen.Capture()
    t = gen.at(9500)
    # Something answered elsewhere in the capture: silence is then no one-sided tap's.
    gen.lookup(cap, t, 53001, "www.example.com", ["93.184.215.14"])
    build(cap, rng, t + 1)
    gen.save(tmp_path, "g.pcap", cap)
    return analyze_capture(tmp_path / "g.pcap", workers=1, hash_capture=False)


def _verdicts(result: AnalysisResult) -> set[str]:
    return ({str(c.verdict.kind) for c in result.analysis.calls}
            | {str(v.kind) for v in result.analysis.flow_verdicts.values()})


def test_netbios_name_queries_are_no_rtp_and_no_call(tmp_path: Path) -> None:
    flow = Flow("udp", "10.0.4.131", 137, "10.0.5.255", 137)
    name = b"\x20" + b"FIFDFEFCEFEBENFPEI" + b"A" * 14 + b"\x00"

    def build(cap: gen.Capture, rng: random.Random, t: Fraction) -> None:
        for i in range(180):  # three tries a second, the transaction ID wandering
            tid = 0xA760 + (i % 3)
            query = struct.pack(">HHHHHH", tid, 0x0110, 1, 0, 0, 0) + name + b"\x00\x20\x00\x01"
            send_udp(cap, flow, _to(BROADCAST), t + Fraction(333 * i, 1000), ORIG, query)

    result = _analyze(tmp_path, build)
    (rec,) = [f for f in result.flows if f.orig_p == 137]
    assert rec.rtp_streams == ()
    assert result.analysis.calls == []
    assert "blocked" not in _verdicts(result)


def _rtp_to(dst: str, mac: bytes) -> Callable[[gen.Capture, random.Random, Fraction], None]:
    flow = Flow("udp", "10.0.4.20", 5004, dst, 5004)

    def build(cap: gen.Capture, rng: random.Random, t: Fraction) -> None:
        for i in range(500):  # ten seconds of 20 ms audio, one way by design
            send_udp(cap, flow, _to(mac), t + Fraction(i, 50), ORIG,
                     gen.rtp(4000 + i, 160 * i, 0x5EED, 0, rng.randbytes(160)))
    return build


def test_rtp_to_a_multicast_group_is_never_blocked(tmp_path: Path) -> None:
    result = _analyze(tmp_path, _rtp_to("239.255.0.1", bytes.fromhex("01005e7f0001")))
    (rec,) = [f for f in result.flows if f.orig_p == 5004]
    assert len(rec.rtp_streams) == 1
    assert "blocked" not in _verdicts(result)


def test_rtp_to_a_directed_broadcast_is_never_blocked(tmp_path: Path) -> None:
    # 10.0.5.255 is a broadcast address only on a /24: the frame's group address says so.
    result = _analyze(tmp_path, _rtp_to("10.0.5.255", BROADCAST))
    assert "blocked" not in _verdicts(result)
