"""Verdicts of flows in no call: silence or a refusal shows a block only when something
shows the service was there to answer.

A SYN nobody answered, a RST to a SYN, a router's "host unreachable": a peer that went
offline, a port scan's target, a closed or filtered port and the destination's own
firewall produce the same packets. For a flow in no call they are ``blocked`` only when
the classifier named the server's app, or another connection to the same address and
port was answered in the capture; otherwise ``unknown`` with the same reason. A router's
"administratively prohibited" stays a block.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

from scapy.layers.inet import ICMP, IP, TCP, UDP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from api.pipeline import analyze_capture
from classifier.records import Classification
from policy.calls import CallSpan
from policy.pipeline import AnalysisResult
from policy.records import Reason, Verdict, VerdictKind
from probe import FlowRecord
from tests.unit.policy.test_verdict_rules import _dns_answered, _pcap, _syn, _udp, _voice

ME, ROUTER, FAR = "192.168.1.50", "192.168.1.1", "203.0.113.77"


def _tcp(ts: float, src: tuple[str, int], dst: tuple[str, int], flags: str
         ) -> tuple[float, bytes]:
    return ts, bytes(Ether() / IP(src=src[0], dst=dst[0]) /
                     TCP(sport=src[1], dport=dst[1], flags=flags, seq=1000, ack=1))


def _verdicts(tmp_path: Path, packets: list[tuple[float, bytes]]) -> dict[int, Verdict]:
    path = tmp_path / "lone.pcap"
    # An answered lookup first (other traffic was answered), a last packet at 20 s.
    # The capture goes on to 20 s: long enough after every SYN to judge it.
    _pcap(path, sorted([*_dns_answered(ME), *packets,
                        _udp(20.0, ME, 40002, ROUTER, 53, b"\x00" * 12)]))
    result = analyze_capture(path, workers=1, hash_capture=False)
    return {f.orig_p: result.analysis.flow_verdicts[f.uid] for f in result.flows
            if f.uid in result.analysis.flow_verdicts}


def _kind_and_rule(v: Verdict) -> tuple[VerdictKind, str]:
    return v.kind, v.evidence[0].rule


def test_a_syn_to_a_service_nothing_shows_up_is_unknown(tmp_path: Path) -> None:
    syns = [_syn(2.0 + t, (ME, 50001), (FAR, 6346)) for t in (0.0, 1.0, 3.0)]
    v = _verdicts(tmp_path, syns)[50001]
    assert _kind_and_rule(v) == (VerdictKind.UNKNOWN, "unknown.syn")
    assert v.reasons == (Reason.SYN_UNANSWERED,)


def test_a_syn_to_a_service_that_answered_elsewhere_is_blocked(tmp_path: Path) -> None:
    answered = [_tcp(1.0, (ME, 50000), (FAR, 443), "S"), _tcp(1.02, (FAR, 443), (ME, 50000), "SA"),
                _tcp(1.021, (ME, 50000), (FAR, 443), "A")]
    syns = [_syn(2.0 + t, (ME, 50001), (FAR, 443)) for t in (0.0, 1.0, 3.0)]
    v = _verdicts(tmp_path, answered + syns)[50001]
    assert _kind_and_rule(v) == (VerdictKind.BLOCKED, "blocked.syn")


def test_a_reset_from_a_closed_port_is_unknown(tmp_path: Path) -> None:
    refused = [_tcp(2.0, (ME, 50003), (FAR, 3389), "S"), _tcp(2.02, (FAR, 3389), (ME, 50003), "RA")]
    v = _verdicts(tmp_path, refused)[50003]
    assert _kind_and_rule(v) == (VerdictKind.UNKNOWN, "unknown.tcp_reset")


def _unreachable(reporter: str, code: int) -> list[tuple[float, bytes]]:
    sent = _udp(2.0, ME, 50004, FAR, 5000, b"\x01" * 40)
    quoted = IP(src=ME, dst=FAR) / UDP(sport=50004, dport=5000, chksum=0) / Raw(b"\x01" * 8)
    err = bytes(Ether() / IP(src=reporter, dst=ME) / ICMP(type=3, code=code) / quoted)
    return [sent, (2.03, err)]


def test_a_routers_host_unreachable_for_a_host_nothing_shows_up_is_unknown(
        tmp_path: Path) -> None:
    v = _verdicts(tmp_path, _unreachable(ROUTER, 1))[50004]
    assert _kind_and_rule(v) == (VerdictKind.UNKNOWN, "unknown.icmp")


def test_a_routers_administrative_prohibition_is_blocked(tmp_path: Path) -> None:
    v = _verdicts(tmp_path, _unreachable(ROUTER, 13))[50004]
    assert _kind_and_rule(v) == (VerdictKind.BLOCKED, "blocked.icmp")


def test_the_destinations_own_prohibition_is_unknown(tmp_path: Path) -> None:
    v = _verdicts(tmp_path, _unreachable(FAR, 10))[50004]
    assert _kind_and_rule(v) == (VerdictKind.UNKNOWN, "unknown.icmp")


def _call_with_failed_pair(tmp_path: Path, code: int, reporter: str = ROUTER
                           ) -> AnalysisResult:
    """Media both ways through a relay from one socket; ICE checks from the same socket
    to a peer's address, each quoted back by an ICMP error of ``code`` from ``reporter``."""
    me, relay, peer = (ME, 40000), ("198.51.100.20", 3478), ("203.0.113.90", 50000)
    pkts = _voice(me, relay, 0xAAAA, n=500) + _voice(relay, me, 0xBBBB, n=500)
    for k in range(3):
        check = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes([k]) * 12
        pkts.append(_udp(1.0 + k, me[0], me[1], peer[0], peer[1], check))
        quoted = IP(src=me[0], dst=peer[0]) / UDP(sport=me[1], dport=peer[1], chksum=0) / \
            Raw(check[:8])
        pkts.append((1.05 + k, bytes(Ether() / IP(src=reporter, dst=me[0]) /
                                     ICMP(type=3, code=code) / quoted)))
    path = tmp_path / "pair.pcap"
    _pcap(path, sorted([*_dns_answered(me[0]), *pkts]))
    return analyze_capture(path, workers=1, hash_capture=False)


def test_an_icmp_error_on_a_failed_candidate_pair_of_a_working_call_is_no_block(
        tmp_path: Path) -> None:
    # A router says the peer's address is unreachable while the media flows both ways
    # through the relay from the same socket: a candidate pair that failed (RFC 8445),
    # listed with the call.
    result = _call_with_failed_pair(tmp_path, 1)
    (call,) = result.analysis.calls
    assert call.verdict.kind is VerdictKind.OK, call.verdict
    assert not [v for v in result.analysis.flow_verdicts.values()
                if v.kind is VerdictKind.BLOCKED]
    assert [p["reason"] for p in call.extra["failed_paths"]] == ["icmp-unreachable"]


def test_a_routers_prohibition_on_a_candidate_pair_stays_a_block(tmp_path: Path) -> None:
    # "Administratively prohibited" from a router: the network refused that path.
    result = _call_with_failed_pair(tmp_path, 13)
    (call,) = result.analysis.calls
    assert "failed_paths" not in call.extra
    assert [v.kind for v in result.analysis.flow_verdicts.values()] == [VerdictKind.BLOCKED]


def test_a_syn_to_a_named_apps_server_is_blocked(tmp_path: Path) -> None:
    # The app's server was looked up by name first: an app's servers are there to answer.
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    server = "157.240.22.60"
    query = IP(src=ME, dst=ROUTER) / UDP(sport=40100, dport=53) / DNS(
        id=7, rd=1, qd=DNSQR(qname="web.whatsapp.com"))
    answer = IP(src=ROUTER, dst=ME) / UDP(sport=53, dport=40100) / DNS(
        id=7, qr=1, qd=DNSQR(qname="web.whatsapp.com"),
        an=DNSRR(rrname="web.whatsapp.com", rdata=server, ttl=60))
    pkts = [(1.0, bytes(Ether() / query)), (1.02, bytes(Ether() / answer))]
    pkts += [_syn(2.0 + t, (ME, 50005), (server, 443)) for t in (0.0, 1.0, 3.0)]
    v = _verdicts(tmp_path, pkts)[50005]
    assert _kind_and_rule(v) == (VerdictKind.BLOCKED, "blocked.syn")


def test_a_routers_unreachable_for_a_service_seen_answering_is_blocked(tmp_path: Path) -> None:
    answered = [_udp(1.0, ME, 50006, FAR, 5000, b"\x02" * 40),
                _udp(1.03, FAR, 5000, ME, 50006, b"\x03" * 40)]
    v = _verdicts(tmp_path, answered + _unreachable(ROUTER, 1))[50004]
    assert _kind_and_rule(v) == (VerdictKind.BLOCKED, "blocked.icmp")


def test_fragmentation_needed_is_no_verdict(tmp_path: Path) -> None:
    # Path MTU discovery (RFC 1191): the path works, with smaller packets.
    assert 50004 not in _verdicts(tmp_path, _unreachable(ROUTER, 4))


def test_a_stun_server_seen_answering_on_a_flow_seen_backwards_is_not_blocked(
        tmp_path: Path) -> None:
    # The capture caught one socket's exchange from the server's answer on (so that flow's
    # first packet goes from the server's port 3478), and the same host's requests from
    # another socket unanswered: the server answered this host, the path is open.
    server = ("203.0.113.60", 3478)

    def msg(kind: int, k: int) -> bytes:
        return struct.pack(">HHI", kind, 0, 0x2112A442) + bytes([k]) * 12

    pkts = []
    for k in range(6):
        pkts.append(_udp(1.0 + k, *server, ME, 45658, msg(0x0101, k)))
        pkts.append(_udp(1.5 + k, ME, 45658, *server, msg(0x0001, k + 1)))
    for k in range(6):
        pkts.append(_udp(2.0 + k, ME, 48415, *server, msg(0x0001, 100 + k)))
    path = tmp_path / "stun.pcap"
    _pcap(path, sorted([*_dns_answered(ME), *pkts, _udp(20.0, ME, 40002, ROUTER, 53,
                                                          b"\x00" * 12)]))
    result = analyze_capture(path, workers=1, hash_capture=False)
    kinds = {c.verdict.kind for c in result.analysis.calls} | {
        v.kind for v in result.analysis.flow_verdicts.values()}
    assert VerdictKind.BLOCKED not in kinds, result.analysis.calls


def test_the_peers_own_prohibition_on_a_candidate_pair_is_a_failed_pair(
        tmp_path: Path) -> None:
    # The peer's address itself answers "host administratively prohibited": its firewall.
    result = _call_with_failed_pair(tmp_path, 10, reporter="203.0.113.90")
    (call,) = result.analysis.calls
    assert not [v for v in result.analysis.flow_verdicts.values()
                if v.kind is VerdictKind.BLOCKED]
    assert [p["reason"] for p in call.extra["failed_paths"]] == ["icmp-unreachable"]


def test_lone_limits_which_flows_outside_calls_are_judged(tmp_path: Path) -> None:
    """The pipeline asks only for the verdicts it may write at a point (``lone``): the
    other flows outside calls are not judged, and the calls are the same either way."""
    from policy.calls import analyse_calls

    answered = [_tcp(1.0, (ME, 50000), (FAR, 443), "S"), _tcp(1.02, (FAR, 443), (ME, 50000), "SA"),
                _tcp(1.021, (ME, 50000), (FAR, 443), "A")]
    syns = [_syn(2.0 + t, (ME, p), (FAR, 443)) for p in (50001, 50002) for t in (0.0, 1.0, 3.0)]
    path = tmp_path / "lone.pcap"
    _pcap(path, sorted([*_dns_answered(ME), *answered, *syns,
                        *_voice((ME, 40000), (FAR, 40000), 1),
                        *_voice((FAR, 40000), (ME, 40000), 2),
                        _udp(20.0, ME, 40002, ROUTER, 53, b"\x00" * 12)]))
    result = analyze_capture(path, workers=1, hash_capture=False)
    flows, classes = result.flows, result.classes  # as the pipeline classified them
    everyone = analyse_calls(flows, classes)
    blocked = {f.orig_p: f.uid for f in flows if f.uid in everyone.flow_verdicts}
    assert {50001, 50002} <= set(blocked)
    only = analyse_calls(flows, classes, lone={blocked[50001]})
    assert blocked[50001] in only.flow_verdicts and blocked[50002] not in only.flow_verdicts
    assert only.flow_verdicts[blocked[50001]] == everyone.flow_verdicts[blocked[50001]]
    assert [c.to_dict() for c in only.calls] == [c.to_dict() for c in everyone.calls]
    assert everyone.calls


def _two_calls(tmp_path: Path, extra: Sequence[tuple[float, bytes]] = ()
               ) -> tuple[list[FlowRecord], list[Classification]]:
    """Flows and classifications (the pipeline's) of a capture with two calls a minute
    apart."""
    far2 = "198.51.100.20"
    late = [(ts + 60.0, b) for ts, b in [*_voice((ME, 41000), (far2, 41000), 3),
                                         *_voice((far2, 41000), (ME, 41000), 4)]]
    path = tmp_path / "two.pcap"
    _pcap(path, sorted([*_dns_answered(ME), *_voice((ME, 40000), (FAR, 40000), 1),
                        *_voice((FAR, 40000), (ME, 40000), 2), *late, *extra]))
    result = analyze_capture(path, workers=1, hash_capture=False)
    return result.flows, result.classes


def test_due_judges_the_calls_written_now_and_leaves_the_others_waiting(
        tmp_path: Path) -> None:
    """The pipeline writes only the calls that are due at a point (``due``): only those are
    judged, the others come back unjudged with what it needs to know of them, and what is
    judged is what judging every call gives."""
    from policy.calls import analyse_calls

    flows, classes = _two_calls(tmp_path)
    everyone = analyse_calls(flows, classes)
    assert len(everyone.calls) == 2 and not everyone.waiting
    asked = []

    def due(span: CallSpan) -> bool:
        asked.append(span.flow_uids)
        return span.end_ts < 30.0

    early = analyse_calls(flows, classes, due=due)
    assert len(asked) == 2
    assert [c.to_dict() for c in early.calls] == [everyone.calls[0].to_dict()]
    (span,) = early.waiting
    later = everyone.calls[1]
    assert (span.flow_uids, span.start_ts, span.end_ts, span.local) == (
        later.flow_uids, later.start_ts, later.end_ts, later.local)
    assert early.flow_verdicts == everyone.flow_verdicts


def test_due_judges_every_call_when_a_flow_judged_alone_shows_something(
        tmp_path: Path) -> None:
    """Unanswered SYNs in no call: the congestion a call shows may explain them, so every
    call is judged, due or not."""
    from policy.calls import analyse_calls

    syns = [_syn(70.0 + t, (ME, 50001), (FAR, 443)) for t in (0.0, 1.0, 3.0)]
    # the capture goes on long enough after them to judge them (blocked.syn_min_wait_s)
    later = _udp(90.0, ME, 40002, ROUTER, 53, b"\x00" * 12)
    flows, classes = _two_calls(tmp_path, [*syns, later])
    everyone = analyse_calls(flows, classes)
    assert everyone.flow_verdicts
    early = analyse_calls(flows, classes, due=lambda s: s.end_ts < 30.0)
    assert not early.waiting
    assert [c.to_dict() for c in early.calls] == [c.to_dict() for c in everyone.calls]
    assert early.flow_verdicts == everyone.flow_verdicts
