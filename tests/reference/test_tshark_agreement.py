"""Per-flow packet and byte counts agree with tshark's conversation statistics.

tshark (Wireshark's dissectors) is a reference nobody here wrote. For every
capture of ../shared/captures/ndpi-dev, each TCP/UDP conversation tshark lists
must be one of our flows with the same packets per direction and the same wire
bytes (tshark prints large byte counts as whole kB/MB, so those are compared
within the printed precision).

Differences that are right for marsad are listed in ``EXPECTED`` with the
reason; the test fails if they stop happening too, so the list stays true.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from probe import FlowRecord, read_capture
from tests.conftest import capture_ids, need_shared, need_tool, shared_captures
from tests.reference.tshark_conv import Conv, tshark_conversations

CAPTURES = shared_captures()

EXPECTED: dict[tuple[str, str, frozenset[tuple[str, int]]], str] = {}
"""(capture, proto, endpoints) -> why our flow differs from tshark's row."""


def _exp(capture: str, proto: str, a: str, b: str, why: str) -> None:
    def ep(s: str) -> tuple[str, int]:
        h, _, p = s.rpartition(":")
        return h, int(p)
    EXPECTED[(capture, proto, frozenset((ep(a), ep(b))))] = why


IDLE = "split by marsad's UDP idle timeout (120 s); tshark never splits by time"
GTPU = ("GTP-U tunnel: marsad meters the inner flows it carries, tshark also lists the outer "
        "UDP 2152 conversation")
SKINNY = ("tshark's SCCP dissector registers each RTP direction as its own conversation; "
          "marsad keeps one bidirectional flow (36 + 33 packets, same totals)")
_exp("agora-sd-rtn.pcap", "udp", "192.168.2.100:55322", "104.166.161.75:8130", IDLE)
_exp("agora-sd-rtn.pcap", "udp", "192.168.2.100:47805", "199.190.44.135:8130", IDLE)
_exp("sip.pcap", "udp", "192.168.1.2:5060", "212.242.33.35:5060", IDLE)
_exp("skinny.pcap", "udp", "192.168.195.58:32144", "192.168.195.50:17718", SKINNY)
_exp("dtls.pcap", "udp", "10.116.8.57:2152", "10.238.250.51:2152", GTPU)
_exp("rtmp.pcap", "udp", "10.134.25.76:2152", "10.132.15.176:2152", GTPU)
_exp("rtmp.pcap", "udp", "10.134.25.41:2152", "10.132.15.176:2152", GTPU)
_exp("zoom.pcap", "udp", "10.134.25.67:2152", "10.132.15.176:2152", GTPU)


def _n(h: str) -> str:
    return str(ipaddress.ip_address(h))


def _mismatch(conv: Conv, flows: list[FlowRecord]) -> str | None:
    if not flows:
        return "no flow"
    a = (_n(conv.a[0]), conv.a[1])

    def sent_by_a(f: FlowRecord) -> bool:
        return (_n(f.orig_h), f.orig_p) == a

    af = sum(f.orig_pkts if sent_by_a(f) else f.resp_pkts for f in flows)
    bf = sum(f.resp_pkts if sent_by_a(f) else f.orig_pkts for f in flows)
    ab = sum(f.orig_wire_bytes if sent_by_a(f) else f.resp_wire_bytes for f in flows)
    bb = sum(f.resp_wire_bytes if sent_by_a(f) else f.orig_wire_bytes for f in flows)
    problems = []
    if len(flows) != 1:
        problems.append(f"{len(flows)} flows ({', '.join(f.end_reason for f in flows)})")
    if (af, bf) != (conv.a_frames, conv.b_frames):
        problems.append(f"packets {af}/{bf} vs tshark {conv.a_frames}/{conv.b_frames}")
    if not conv.a_bytes[0] <= ab <= conv.a_bytes[1]:
        problems.append(f"bytes {ab} vs tshark {conv.a_bytes}")
    if not conv.b_bytes[0] <= bb <= conv.b_bytes[1]:
        problems.append(f"bytes {bb} vs tshark {conv.b_bytes}")
    return "; ".join(problems) or None


@pytest.mark.shared
@pytest.mark.parametrize("path", CAPTURES, ids=capture_ids(CAPTURES))
def test_counts_agree_with_tshark(path: Path) -> None:
    need_shared()
    need_tool("tshark")
    convs = tshark_conversations(str(path))
    run = read_capture(path)
    ours: dict[tuple[str, frozenset[tuple[str, int]]], list[FlowRecord]] = {}
    for f in run.flows:
        if f.proto in ("tcp", "udp"):
            k = (f.proto, frozenset(((_n(f.orig_h), f.orig_p), (_n(f.resp_h), f.resp_p))))
            ours.setdefault(k, []).append(f)
    unexpected = []
    seen_expected = set()
    for c in convs:
        eps = frozenset(((_n(c.a[0]), c.a[1]), (_n(c.b[0]), c.b[1])))
        why = _mismatch(c, ours.get((c.proto, eps), []))
        key = (path.name, c.proto, eps)
        if key in EXPECTED:
            assert why is not None, f"{key} now agrees with tshark: drop it from EXPECTED"
            seen_expected.add(key)
        elif why is not None:
            unexpected.append(f"{c.proto} {c.a} <-> {c.b}: {why}")
    assert not unexpected, "\n".join(unexpected)
    listed = {k for k in EXPECTED if k[0] == path.name}
    assert listed <= seen_expected, f"expected differences not seen: {listed - seen_expected}"
