"""Verdict rules on small captures built from real protocol bytes (scapy)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from api.pipeline import analyze_capture
from policy.records import Call, Reason, Verdict, VerdictKind

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


RESOLVER = "198.51.100.53"
"""The operator's DNS resolver: a lookup it answered is traffic that went past the host's
own network and came back (the rules' control: that network path works)."""

_HEADERS: dict[tuple[str, int, str, int, int], bytes] = {}


def _udp(ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes
         ) -> tuple[float, bytes]:
    # Ethernet, IPv4 and UDP headers built by scapy once per 5-tuple and size; the UDP
    # checksum left out (zero: RFC 768 allows it over IPv4) so the headers can be reused.
    key = (src, sport, dst, dport, len(payload))
    head = _HEADERS.get(key)
    if head is None:
        frame = bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport, chksum=0)
                      / Raw(payload))
        head = _HEADERS[key] = frame[:-len(payload)] if payload else frame
    return ts, head + payload


def unanswered_invite(path: Path) -> Path:
    """A capture of an INVITE sent four times in 3.5 s with no response at all, ending
    6 s after the first, while a DNS exchange was answered."""
    pkts = [_udp(10.0 + t, "192.168.1.50", 5060, "198.51.100.7", 5060, INVITE)
            for t in (0.0, 0.5, 1.5, 3.5)]
    # Other traffic is answered: a DNS exchange.
    pkts += [_udp(9.0, "192.168.1.50", 40000, RESOLVER, 53, b"\x12\x34" + b"\x00" * 10),
             _udp(9.1, RESOLVER, 53, "192.168.1.50", 40000, b"\x12\x34\x80" + b"\x00" * 9),
             _udp(16.0, "192.168.1.50", 40001, "192.168.1.1", 53, b"\x12\x35" + b"\x00" * 10)]
    _pcap(path, sorted(pkts))
    return path


def test_invite_without_any_response_is_blocked(tmp_path: Path) -> None:
    result = analyze_capture(unanswered_invite(tmp_path / "invite.pcap"), workers=1)
    (call,) = [c for c in result.analysis.calls if c.app == "sip"]
    assert call.verdict.kind is VerdictKind.BLOCKED
    assert call.verdict.reasons[0] is Reason.SIP_UNANSWERED
    assert call.verdict.evidence[0].figures["invites"] == 4


def _invite_call(path: Path, resends: tuple[float, ...], end: float, copies: int = 1
                 ) -> Call:
    """The SIP call of a capture where an INVITE went out at ``resends`` (s after 10.0),
    each ``copies`` times, with no response; a DNS exchange answered before it, the
    capture's last packet ``end`` s after the first INVITE."""
    pkts = [_udp(10.0 + t + k * 1e-6, "192.168.1.50", 5060, "198.51.100.7", 5060, INVITE)
            for t in resends for k in range(copies)]
    pkts += [_udp(9.0, "192.168.1.50", 40000, RESOLVER, 53, b"\x12\x34" + b"\x00" * 10),
             _udp(9.1, RESOLVER, 53, "192.168.1.50", 40000, b"\x12\x34\x80" + b"\x00" * 9),
             _udp(10.0 + end, "192.168.1.50", 40001, "192.168.1.1", 53, b"\x12\x35" + b"\x00" * 10)]
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    (call,) = [c for c in result.analysis.calls if c.app == "sip"]
    return call


def test_invite_the_client_stopped_resending_was_answered(tmp_path: Path) -> None:
    # Over UDP a client with no response resends its INVITE at 0.5, 1.5, 3.5, 7.5 s...
    # until Timer B (RFC 3261 17.1.1.2). Sent twice, then never again while the capture
    # went on 10 s: its response came, out of the capture's sight (a lossy tap).
    call = _invite_call(tmp_path / "stopped.pcap", (0.0, 0.5), 10.0)
    assert call.verdict.kind is not VerdictKind.BLOCKED, call.verdict
    assert Reason.SIP_UNANSWERED not in call.verdict.reasons


@pytest.mark.parametrize(("resends", "end", "copies"), [
    ((0.0, 0.5, 1.5, 3.5, 7.5, 15.5), 20.0, 2),  # still resending; a mirror port's copies
    ((0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.498), 70.0, 1),  # resent until Timer B, given up
])
def test_invite_resent_as_rfc_3261_says_is_still_a_block(
        tmp_path: Path, resends: tuple[float, ...], end: float, copies: int) -> None:
    call = _invite_call(tmp_path / "resent.pcap", resends, end, copies)
    assert call.verdict.kind is VerdictKind.BLOCKED, call.verdict
    assert call.verdict.reasons[0] is Reason.SIP_UNANSWERED


def test_invite_in_a_capture_of_one_direction_is_not_a_block(tmp_path: Path) -> None:
    # The same INVITEs, but nothing in the capture was answered both ways (a tap that
    # sees only what the host sends): the responses may have gone by unseen.
    pkts = [_udp(10.0 + t, "192.168.1.50", 5060, "198.51.100.7", 5060, INVITE)
            for t in (0.0, 0.5, 1.5, 3.5)]
    pkts += [_udp(9.0 + t, "192.168.1.50", 40000, "192.168.1.1", 53, b"\x12\x34" + b"\x00" * 10)
             for t in (0.0, 7.0)]
    path = tmp_path / "one-way.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    (call,) = [c for c in result.analysis.calls if c.app == "sip"]
    assert call.verdict.kind is VerdictKind.UNKNOWN, call.verdict
    assert call.verdict.reasons[0] is Reason.SIP_UNANSWERED
    assert call.verdict.evidence[0].rule == "unknown.sip"
    assert "one direction only" in call.verdict.evidence[0].text


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


def _voice(src: tuple[str, int], dst: tuple[str, int], ssrc: int, *, n: int = 500,
           delay_s: list[float] | None = None, lost: set[int] | None = None
           ) -> list[tuple[float, bytes]]:
    """n packets of 20 ms PCMU from src to dst, as captured: extra delay per packet, and
    the packets the network lost left out."""
    return [_udp(1.0 + i * 0.02 + (delay_s[i] if delay_s else 0.0), *src, *dst,
                 _rtp(i, i * 160, ssrc))
            for i in range(n) if not lost or i not in lost]


def _shaped_delay(n: int) -> list[float]:
    """A token bucket's queue: from 1 s on it fills by 100 ms/s to 300 ms and stays full."""
    return [min(max(i * 0.02 - 1.0, 0.0) * 0.1, 0.3) for i in range(n)]


def test_stream_captured_past_the_shaper_is_judged_whichever_way_it_went(
        tmp_path: Path) -> None:
    # Taken at the far end of the path: the local side's own stream arrives here after a
    # shaper (every 8th packet lost once the queue is full, delay climbing then level).
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    pkts = _voice(peer, me, 0xBBBB)
    pkts += _voice(me, peer, 0xAAAA, delay_s=_shaped_delay(500),
                   lost={i for i in range(200, 500) if i % 8 == 0})
    path = tmp_path / "far-end.pcap"
    _pcap(path, sorted(pkts))
    (call,) = analyze_capture(path, workers=1).analysis.calls
    assert call.verdict.kind is VerdictKind.THROTTLED, call.verdict
    ev = call.verdict.evidence[0]
    assert ev.figures["direction"] == "out" and ev.figures["ssrc"] == 0xAAAA
    assert ev.figures["sender"] == me[0] and ev.figures["receiver"] == peer[0]
    assert "captured after crossing the network" in ev.text


def test_delay_spike_that_recedes_is_loss_not_a_shaper(tmp_path: Path) -> None:
    # A radio handover: 2.5 s with 160 ms more delay and some loss, then back to normal;
    # 8 % lost in all. The delay rose, but no queue stood: degraded, never throttled.
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    spike = [0.16 if 200 <= i < 325 else 0.0 for i in range(500)]
    lost = {i for i in range(500) if i % 13 == 0} | {i for i in range(200, 325) if i % 5 == 0}
    pkts = _voice(me, peer, 0xAAAA) + _voice(peer, me, 0xBBBB, delay_s=spike, lost=lost)
    path = tmp_path / "handover.pcap"
    _pcap(path, sorted(pkts))
    (call,) = analyze_capture(path, workers=1).analysis.calls
    leg = next(leg for leg in call.legs if leg.ssrc == 0xBBBB)
    assert (leg.delay_rise_ms or 0) > 120 and not leg.delay_plateau
    assert call.verdict.kind is VerdictKind.DEGRADED, call.verdict
    assert call.verdict.reasons[0] is Reason.HIGH_LOSS
    assert "did not hold" in call.verdict.evidence[0].text


def test_one_sided_capture_is_no_block(tmp_path: Path) -> None:
    # A tap that recorded only one direction of a working call: every flow is one-way,
    # which a path that returned nothing would also show. The packets cannot tell, so
    # no block.
    a, b = ("10.0.1.2", 30000), ("10.0.2.2", 30000)
    path = tmp_path / "one-sided.pcap"
    _pcap(path, sorted(_voice(b, a, 0xBBBB) + _voice(b, (a[0], 30002), 0xCCCC)))
    result = analyze_capture(path, workers=1)
    kinds = {c.verdict.kind for c in result.analysis.calls} | {
        v.kind for v in result.analysis.flow_verdicts.values()}
    assert result.analysis.calls
    assert VerdictKind.BLOCKED not in kinds, result.analysis.calls


def test_failed_candidate_pair_beside_the_relayed_one_is_listed_not_judged(
        tmp_path: Path) -> None:
    # ICE: 4 s of media on the direct pair to the callee's own address, never answered,
    # then the call over the relay, both ways, from the same local socket.
    me, callee, relay = ("192.168.1.50", 40000), ("198.51.100.20", 50010), \
        ("203.0.113.9", 50000)
    pkts = _voice(me, callee, 0xDDDD, n=200)
    pkts += [(t + 4.2, p) for t, p in _voice(me, relay, 0xAAAA) + _voice(relay, me, 0xBBBB)]
    path = tmp_path / "fallback.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    (call,) = result.analysis.calls
    assert call.verdict.kind is VerdictKind.OK, call.verdict
    assert not result.analysis.flow_verdicts
    (failed,) = call.extra["failed_paths"]
    assert failed["reason"] == "media-no-return"
    assert failed["remote_hosts"] == [callee[0]] and failed["worked_via"] == [relay[0]]
    assert failed["figures"]["sent_pkts"] == 200 and failed["frames"]
    assert set(failed["flow_uids"]) < set(call.flow_uids)
    assert call.to_dict()["failed_paths"] == call.extra["failed_paths"]


CLIENT_HELLO = (Path(__file__).resolve().parents[2] / "vectors" / "dpi" /
                "443-curl_f4.bin").read_bytes()  # curl's ClientHello for www.ntop.org


def _tls_attempt(t0: float, cport: int, after_hello: list[tuple[float, str, str]]
                 ) -> list[tuple[float, bytes]]:
    """A TCP handshake to port 443, curl's ClientHello, then (delay, side, flags)."""
    from scapy.layers.inet import TCP  # type: ignore[attr-defined]

    me, server = "192.168.1.50", "203.0.113.5"
    cseq, sseq = 1000, 5000

    def seg(t: float, side: str, flags: str, payload: bytes = b"") -> tuple[float, bytes]:
        src, dst, sport, dport = (me, server, cport, 443) if side == "c" else \
            (server, me, 443, cport)
        seq, ack = (cseq, sseq) if side == "c" else (sseq, cseq)
        return t, bytes(Ether() / IP(src=src, dst=dst) /
                        TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) /
                        Raw(payload))

    pkts = [seg(t0, "c", "S"), seg(t0 + 0.02, "s", "SA"), seg(t0 + 0.021, "c", "A"),
            seg(t0 + 0.022, "c", "PA", CLIENT_HELLO)]
    cseq += len(CLIENT_HELLO)
    pkts += [seg(t0 + 0.022 + dt, side, flags) for dt, side, flags in after_hello]
    return pkts


def test_reset_after_the_client_gave_up_is_no_block(tmp_path: Path) -> None:
    # Through a full queue: no ServerHello, the client closes after 4 s, the server
    # closes later and resets the client's late segments. A reset injected right after
    # the ClientHello, with no FIN from the client, is still a block.
    gave_up = _tls_attempt(10.0, 50001, [(4.0, "c", "FA"), (9.0, "s", "FA"), (9.5, "s", "R")])
    injected = _tls_attempt(30.0, 50002, [(0.005, "s", "R")])
    path = tmp_path / "tls.pcap"
    _pcap(path, sorted(gave_up + injected))
    result = analyze_capture(path, workers=1)
    by_port = {f.orig_p: f.uid for f in result.flows}
    verdicts = result.analysis.flow_verdicts
    assert by_port[50001] not in verdicts, verdicts.get(by_port[50001])
    assert verdicts[by_port[50002]].reasons == (Reason.TLS_RESET_AFTER_HELLO,)


def _dns_answered(me: str) -> list[tuple[float, bytes]]:
    """A lookup the operator's resolver answered before the call: other traffic went past
    the local network and was answered."""
    return [_udp(0.5, me, 40001, RESOLVER, 53, b"\x12\x34" + b"\x00" * 10),
            _udp(0.6, RESOLVER, 53, me, 40001, b"\x12\x34\x80" + b"\x00" * 9)]


def _syn(ts: float, src: tuple[str, int], dst: tuple[str, int]) -> tuple[float, bytes]:
    from scapy.layers.inet import TCP  # type: ignore[attr-defined]
    return ts, bytes(Ether() / IP(src=src[0], dst=dst[0]) /
                     TCP(sport=src[1], dport=dst[1], flags="S", seq=1000))


@pytest.mark.parametrize("n", [1200, 17000])
def test_syns_lost_in_a_shapers_full_queue_are_no_block(tmp_path: Path, n: int) -> None:
    # A token bucket throttles everything toward the far host: the call's media shows the
    # standing queue, and a connection the client opens to that host mid-call loses every
    # SYN retry in the same full queue. That is the throttle, not a block of the connection.
    # (A six-minute call ends long after the connection has timed out in the flow table:
    # its verdict must wait for the call's.)
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    pkts = _voice(peer, me, 0xBBBB, n=n)
    pkts += _voice(me, peer, 0xAAAA, n=n, delay_s=_shaped_delay(n),
                   lost={i for i in range(200, n) if i % 8 == 0})
    pkts += _dns_answered(me[0])
    pkts += [_syn(6.0 + t, (me[0], 45000), (peer[0], 443)) for t in (0.0, 1.0, 3.0, 7.0)]
    path = tmp_path / "shaped-syn.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    (call,) = result.analysis.calls
    assert call.verdict.kind is VerdictKind.THROTTLED, call.verdict
    kinds = {v.kind for v in result.analysis.flow_verdicts.values()}
    assert VerdictKind.BLOCKED not in kinds, result.analysis.flow_verdicts


def test_syns_unanswered_beside_a_clean_call_are_still_a_block(tmp_path: Path) -> None:
    # The same connection attempts while the call to that host runs clean: nothing on the
    # path explains the silence, so the rule still fires (the capture goes on 18 s after
    # the first SYN: blocked.syn_min_wait_s).
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    pkts = _voice(peer, me, 0xBBBB, n=1200) + _voice(me, peer, 0xAAAA, n=1200)
    pkts += _dns_answered(me[0])
    pkts += [_syn(6.0 + t, (me[0], 45000), (peer[0], 443)) for t in (0.0, 1.0, 3.0, 7.0)]
    path = tmp_path / "clean-syn.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    (call,) = result.analysis.calls
    assert call.verdict.kind is VerdictKind.OK, call.verdict
    reasons = {r for v in result.analysis.flow_verdicts.values() for r in v.reasons}
    assert Reason.SYN_UNANSWERED in reasons, result.analysis.flow_verdicts


def test_a_serverhello_the_capture_missed_is_no_reset_block(tmp_path: Path) -> None:
    # The server sent its ServerHello (payload) but the capture lost the packet; the
    # connection ended with the server's RST much later. A server that sent payload
    # answered the hello: capture loss, not a reset that replaced the answer.
    answered = _tls_attempt(10.0, 50003, [(0.05, "s", "A"), (0.3, "c", "A"),
                                          (20.0, "s", "R")])
    # the server's data segment (the ServerHello's remainder) the capture did keep
    from scapy.layers.inet import TCP  # type: ignore[attr-defined]
    data = (10.2, bytes(Ether() / IP(src="203.0.113.5", dst="192.168.1.50") /
                        TCP(sport=443, dport=50003, flags="PA", seq=6400, ack=2000) /
                        Raw(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)))
    injected = _tls_attempt(40.0, 50004, [(0.005, "s", "R")])
    path = tmp_path / "tls-loss.pcap"
    _pcap(path, sorted([*answered, data, *injected]))
    result = analyze_capture(path, workers=1)
    by_port = {f.orig_p: f.uid for f in result.flows}
    verdicts = result.analysis.flow_verdicts
    assert by_port[50003] not in verdicts, verdicts.get(by_port[50003])
    assert verdicts[by_port[50004]].reasons == (Reason.TLS_RESET_AFTER_HELLO,)


def test_a_syn_the_capture_ends_soon_after_is_not_judged(tmp_path: Path) -> None:
    # SYNs at 2, 3 and 5 s, the capture over at 10 s: the client was still trying (its
    # next SYN would go at 9 s, an answer to it later still), so the silence proves
    # nothing. The same SYNs in a capture that goes on to 20 s are judged.
    me, far = "192.168.1.50", "203.0.113.77"
    syns = [_syn(2.0 + t, (me, 50001), (far, 443)) for t in (0.0, 1.0, 3.0)]
    for end, judged in ((10.0, False), (20.0, True)):
        path = tmp_path / f"cut-{end:.0f}.pcap"
        _pcap(path, sorted([*_dns_answered(me), *syns,
                            _udp(end, me, 40002, "192.168.1.1", 53, b"\x00" * 12)]))
        result = analyze_capture(path, workers=1)
        (syn_flow,) = [f for f in result.flows if f.orig_p == 50001]
        assert (syn_flow.uid in result.analysis.flow_verdicts) is judged, end


def _download(me: str, server: str, port: int, t0: float, t1: float, pps: int,
              resent: int = 0) -> list[tuple[float, bytes]]:
    """A TCP download from ``server`` to ``me``: handshake, then 1400-byte segments, the
    first ``resent`` of every 50 sent again a second later (a queue dropped them)."""
    from scapy.layers.inet import TCP  # type: ignore[attr-defined]

    def seg(t: float, down: bool, flags: str, seq: int, payload: bytes = b""
            ) -> tuple[float, bytes]:
        src, dst, sp, dp = (server, me, 443, port) if down else (me, server, port, 443)
        return t, bytes(Ether() / IP(src=src, dst=dst) /
                        TCP(sport=sp, dport=dp, flags=flags, seq=seq) / Raw(payload))

    out = [seg(t0, False, "S", 100), seg(t0 + 0.02, True, "SA", 900),
           seg(t0 + 0.021, False, "A", 101)]
    n = int((t1 - t0) * pps)
    out += [seg(t0 + 0.05 + i / pps, True, "A", 901 + i * 1400, b"d" * 1400) for i in range(n)]
    out += [seg(t0 + 1.05 + i / pps, True, "A", 901 + i * 1400, b"d" * 1400)
            for i in range(n - pps) if i % 50 < resent]
    return out


def test_a_queue_the_hosts_own_download_fills_is_no_throttle(tmp_path: Path) -> None:
    # The received stream shows a shaper's signature (loss, the delay climbing then
    # holding), but while the queue stood the host was downloading at 30 times the
    # stream's rate over the same link, and the download lost packets too (its server
    # resent them): that traffic fills the queue too. Degraded, and the evidence says so.
    # Without the download, or with one that lost nothing (a queue it did not share: a
    # shaper on the call's packets alone), the same stream is throttled.
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    pkts = _voice(me, peer, 0xAAAA)
    pkts += _voice(peer, me, 0xBBBB, delay_s=_shaped_delay(500),
                   lost={i for i in range(200, 500) if i % 8 == 0})
    for resent, kind in ((2, VerdictKind.DEGRADED), (0, VerdictKind.THROTTLED),
                         (None, VerdictKind.THROTTLED)):
        busy = resent == 2
        extra = [] if resent is None else _download(me[0], "198.51.100.80", 45000, 1.5,
                                                     10.5, 170, resent)
        path = tmp_path / f"busy-{resent}.pcap"
        _pcap(path, sorted([*pkts, *extra]))
        (call,) = analyze_capture(path, workers=1).analysis.calls
        assert call.verdict.kind is kind, (busy, call.verdict)
        if busy:
            ev = call.verdict.evidence[0]
            assert ev.rule == "degraded.loss" and ev.figures["busy_host"] == me[0]
            assert ev.figures["other_bytes"] > 10 * ev.figures["stream_bytes"]
            assert "busy link" in ev.text


def _binding(ts: float, me: str, server: str, txid: int, port: int = 40100,
             kind: int = 0x0001, attrs: bytes = b"") -> tuple[float, bytes]:
    """A STUN Binding request (RFC 8489 §5; or a message of type ``kind``) with ``attrs``,
    to a STUN server's port."""
    return _udp(ts, me, port, server, 3478, struct.pack("!HHI", kind, len(attrs), 0x2112A442)
                + txid.to_bytes(12, "big") + attrs)


MS_VERSION = struct.pack("!HHI", 0x8070, 4, 3)
"""[MS-ICE2] MS-IMPLEMENTATION-VERSION: a Teams client's STUN attribute."""


def _tcp_at(ts: float, src: tuple[str, int], dst: tuple[str, int], flags: str,
            payload: bytes = b"") -> tuple[float, bytes]:
    from scapy.layers.inet import TCP  # type: ignore[attr-defined]
    return ts, bytes(Ether() / IP(src=src[0], dst=dst[0]) /
                     TCP(sport=src[1], dport=dst[1], flags=flags, seq=1000, ack=9) /
                     Raw(payload))


ME_HOST, FAR_HOST = "192.168.1.50", "203.0.113.77"


@pytest.mark.parametrize(("tries", "judged"), [
    # one SYN, never resent: answered out of the capture's sight, or given up
    ([(0.0, 50001, "S")], set()),
    # the same SYN twice from a mirror port
    ([(0.0, 50001, "S"), (0.00005, 50001, "S")], set()),
    # the client's ACK and data: it had the SYN-ACK the capture lost
    ([(0.0, 50001, "S"), (0.7, 50001, "A"), (0.7, 50001, "PA")], set()),
    # the client reset the connection: an RST|ACK answers a segment it received
    ([(0.0, 50001, "S"), (3.0, 50001, "RA")], set()),
    # the client gave its attempt up (a bare RST): no resend
    ([(0.0, 50001, "S"), (0.8, 50001, "R")], set()),
    # ... also as a mirror port copies it: SYN, its copy, RST, its copy
    ([(0.0, 50001, "S"), (0.00005, 50001, "S"), (0.8, 50001, "R"),
      (0.80005, 50001, "R")], set()),
    # two connections opened together, one given up by a RST 3 s later: no SYN again
    ([(0.0, 50001, "S"), (0.001, 50002, "S"), (3.0, 50002, "R")], set()),
    # resent 1, 3 and 7 s after (RFC 6298)
    ([(0.0, 50001, "S"), (1.0, 50001, "S"), (3.0, 50001, "S"), (7.0, 50001, "S")],
     {50001}),
    # tried again from new sockets every 0.7 s, one SYN each: every connection but the
    # last, which nothing followed
    ([(0.7 * k, 50001 + k, "S") for k in range(8)], set(range(50001, 50008))),
    # one SYN an hour after another: no try again (past blocked.syn_retry_window_s)
    ([(0.0, 50001, "S"), (3600.0, 50002, "S")], set()),
    # a connection in between got its answer: the later one is no try again of the first
    ([(0.0, 50001, "S"), (20.0, 50003, "S"), (20.02, 50003, "SA*"), (25.0, 50002, "S")],
     set()),
], ids=["once", "mirror-copy", "acked", "client-rst-ack", "client-rst", "client-rst-mirror",
        "parallel-one-reset", "resent", "new-sockets", "an-hour-apart", "answered-between"])
def test_a_syn_its_client_never_resent_is_no_block(
        tmp_path: Path, tries: list[tuple[float, int, str]], judged: set[int]) -> None:
    # A capture that dropped packets in a burst keeps a SYN and loses the SYN-ACK and the
    # rest of the connection; Happy Eyeballs (RFC 8305) cancels the attempt another
    # address won. Either way the client sends no second SYN, which it does when no
    # answer comes. An earlier connection to the same service was answered.
    me, far = ME_HOST, FAR_HOST
    answered = [_syn(1.0, (me, 50000), (far, 443)),
                _tcp_at(1.02, (far, 443), (me, 50000), "SA")]
    pkts = []
    for t, port, flags in tries:
        if flags.endswith("*"):  # the server's answer
            pkts.append(_tcp_at(2.0 + t, (far, 443), (me, port), flags[:-1]))
        else:
            pkts.append(_tcp_at(2.0 + t, (me, port), (far, 443), flags,
                                b"GET / HTTP/1.1\r\n\r\n" if "P" in flags else b""))
    end = 2.0 + max(t for t, _, _ in tries) + 20.0
    path = tmp_path / "syn.pcap"
    _pcap(path, sorted([*_dns_answered(me), *answered, *pkts,
                        _udp(end, me, 40002, "192.168.1.1", 53, b"\x00" * 12)]))
    result = analyze_capture(path, workers=1)
    verdicts = {f.orig_p: result.analysis.flow_verdicts.get(f.uid) for f in result.flows
                if f.proto == "tcp" and f.orig_p != 50000}
    got = {port for port, v in verdicts.items() if v is not None}
    assert got == judged, verdicts
    for port in judged:
        v = verdicts[port]
        assert v is not None and v.kind is VerdictKind.BLOCKED, v
        assert v.reasons == (Reason.SYN_UNANSWERED,)
    if judged == {50001} and len(tries) == 4:
        assert verdicts[50001] is not None
        figures = verdicts[50001].evidence[0].figures
        assert (figures["syn_sent"], figures["connections"], figures["resend_s"]) == (4, 1, 7.0)
    if len(judged) == 7:
        first = verdicts[50001]
        assert first is not None
        figures = first.evidence[0].figures
        assert (figures["syn_sent"], figures["connections"]) == (8, 8)
        assert len(first.evidence[0].frames) == 8  # every connection counted, cited


STUN_A, STUN_B = "198.51.100.20", "198.51.100.21"


@pytest.mark.parametrize(("requests", "judged"), [
    # two transactions at once, never resent
    ([(0.0, 40100, STUN_A), (0.01, 40100, STUN_A)], False),
    # one request to each of two servers, a second apart: neither server was asked again
    ([(0.0, 40100, STUN_A), (1.0, 40100, STUN_B)], False),
    # resent 0.5, 1.5, 3.5 s after (RFC 8489 §6.2.1)
    ([(t, 40100, STUN_A) for t in (0.0, 0.5, 1.5, 3.5)], True),
    # asked again from a new socket every second
    ([(float(k), 40100 + k, STUN_A) for k in range(4)], True),
], ids=["at-once", "two-servers-once", "resent", "new-sockets"])
def test_stun_requests_their_client_never_resent_are_no_block(
        tmp_path: Path, requests: list[tuple[float, int, str]], judged: bool) -> None:
    me = "192.168.1.50"
    reqs = [_binding(3.0 + t, me, server, k, port)
            for k, (t, port, server) in enumerate(requests)]
    path = tmp_path / "stun.pcap"
    _pcap(path, sorted([*_dns_answered(me), *reqs,
                        _udp(20.0, me, 40002, "192.168.1.1", 53, b"\x00" * 12)]))
    result = analyze_capture(path, workers=1)
    stun = {f.uid for f in result.flows if f.resp_p == 3478}
    kinds = {str(v.kind) for u, v in result.analysis.flow_verdicts.items() if u in stun} \
        | {str(c.verdict.kind) for c in result.analysis.calls}
    assert ("blocked" in kinds) is judged, kinds


def _fetch(me: str, server: str, t0: float, segments: int, kept: float
           ) -> list[tuple[float, bytes]]:
    """A TCP download to ``me``: handshake, ``segments`` 1400-byte segments each
    acknowledged by ``me``; of the server's segments only the first ``kept`` share is in
    the capture (what a capture that lost them, or a tap the return path bypasses, holds);
    every acknowledgement of ``me`` is."""
    from scapy.layers.inet import TCP  # type: ignore[attr-defined]

    def seg(t: float, down: bool, flags: str, seq: int, ack: int, payload: bytes = b""
            ) -> tuple[float, bytes]:
        src, dst, sp, dp = (server, me, 443, 45500) if down else (me, server, 45500, 443)
        return t, bytes(Ether() / IP(src=src, dst=dst) /
                        TCP(sport=sp, dport=dp, flags=flags, seq=seq, ack=ack) / Raw(payload))

    out = [seg(t0, False, "S", 100, 0), seg(t0 + 0.02, True, "SA", 900, 101),
           seg(t0 + 0.021, False, "A", 101, 901)]
    for i in range(segments):
        t = t0 + 0.05 + i * 0.01
        if i < kept * segments:
            out.append(seg(t, True, "A", 901 + i * 1400, 101, b"d" * 1400))
        out.append(seg(t + 0.001, False, "A", 101, 901 + (i + 1) * 1400))
    return out


def silence_capture(path: Path, kept: float) -> Path:
    """SYNs and STUN requests of ``ME_HOST`` resent and never answered, beside a download
    it acknowledged whole, of which the capture holds the ``kept`` share (:func:`_fetch`);
    the service the SYNs went to had answered an earlier connection."""
    me = ME_HOST
    pkts = [*_dns_answered(me), *_fetch(me, "198.51.100.80", 1.0, 200, kept)]
    pkts += [_syn(0.8, (me, 50000), (FAR_HOST, 443)),
             _tcp_at(0.82, (FAR_HOST, 443), (me, 50000), "SA")]
    pkts += [_syn(3.0 + t, (me, 50001), (FAR_HOST, 443)) for t in (0.0, 1.0, 3.0, 7.0)]
    pkts += [_binding(3.0 + t, me, STUN_A, 7) for t in (0.0, 0.5, 1.5, 3.5)]
    pkts.append(_udp(25.0, me, 40002, "192.168.1.1", 53, b"\x00" * 12))
    _pcap(path, sorted(pkts))
    return path


@pytest.mark.parametrize(("kept", "kind"), [(1.0, VerdictKind.BLOCKED),
                                             (0.95, VerdictKind.BLOCKED),
                                             (0.5, VerdictKind.UNKNOWN),
                                             (0.0, VerdictKind.UNKNOWN)])
def test_silence_in_a_capture_that_missed_what_the_host_received(
        tmp_path: Path, kept: float, kind: VerdictKind) -> None:
    # The host resent its SYNs and STUN requests and got no answer; meanwhile it
    # acknowledged a download's bytes (RFC 9293 §3.4: the bytes before an acknowledgement
    # arrived). Where the capture shows them all, or nearly, the silence is the network's.
    # Where it missed more than blocked.max_capture_loss of them (a lossy capture, a tap
    # the return path bypasses), the answers may be among what it missed: unknown, and the
    # evidence says how much the capture missed.
    me = ME_HOST
    result = analyze_capture(silence_capture(tmp_path / "lossy.pcap", kept), workers=1)
    judged = [v for u, v in result.analysis.flow_verdicts.items()
              if any(f.uid == u and f.resp_h in (FAR_HOST, STUN_A) for f in result.flows)]
    judged += [c.verdict for c in result.analysis.calls]
    assert judged and {v.kind for v in judged} == {kind}, judged
    reasons = {r for v in judged for r in v.reasons}
    assert reasons == {Reason.SYN_UNANSWERED, Reason.STUN_UNANSWERED}, reasons
    if kind is VerdictKind.UNKNOWN:
        for v in judged:
            (ev,) = v.evidence
            assert ev.rule == "unknown.capture_loss", ev
            assert ev.figures["host"] == me
            assert ev.figures["missed_share"] >= 0.5 - 0.01
            assert "may have gone by unseen" in ev.text


def test_media_with_no_return_where_the_capture_holds_one_direction(tmp_path: Path) -> None:
    # The host's media went out for 10 s and nothing came back; its TCP acknowledgements
    # show it received a download the capture never showed (only what the host sent is
    # here): no block. The same with the download seen whole is a block.
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    for kept, kind in ((0.0, VerdictKind.UNKNOWN), (1.0, VerdictKind.BLOCKED)):
        pkts = [*_voice(me, peer, 0xAAAA), *_dns_answered(me[0]),
                *_fetch(me[0], "198.51.100.80", 1.0, 100, kept)]
        path = tmp_path / f"one-way-{kept}.pcap"
        _pcap(path, sorted(pkts))
        (call,) = analyze_capture(path, workers=1).analysis.calls
        assert call.verdict.kind is kind, call.verdict
        assert Reason.MEDIA_NO_RETURN in call.verdict.reasons


def test_shaped_loss_where_the_capture_lost_packets_is_degraded(tmp_path: Path) -> None:
    # A received stream shows a shaper's signature, but the capture missed half of a
    # download its host acknowledged: the stream's missing sequence numbers may be the
    # capture's loss. Degraded, saying so; with the download seen whole, throttled.
    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    pkts = _voice(me, peer, 0xAAAA)
    pkts += _voice(peer, me, 0xBBBB, delay_s=_shaped_delay(500),
                   lost={i for i in range(200, 500) if i % 8 == 0})
    for kept, kind in ((0.5, VerdictKind.DEGRADED), (1.0, VerdictKind.THROTTLED)):
        path = tmp_path / f"shaped-{kept}.pcap"
        _pcap(path, sorted([*pkts, *_fetch(me[0], "198.51.100.80", 0.5, 40, kept)]))
        (call,) = analyze_capture(path, workers=1).analysis.calls
        assert call.verdict.kind is kind, call.verdict
        if kind is VerdictKind.DEGRADED:
            ev = call.verdict.evidence[0]
            assert ev.rule == "degraded.capture_loss" and ev.figures["missed_share"] > 0.4
            assert "may be the capture's" in ev.text


def _udp6(ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes
          ) -> tuple[float, bytes]:
    from scapy.layers.inet6 import IPv6
    return ts, bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                     IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


ME6, STUN6 = "2a0b:1111:1::50", "2a0b:2222:99::20"


def _ipv6_stun_verdict(tmp_path: Path, extra: list[tuple[float, bytes]]) -> Verdict:
    """The verdict on STUN requests ME6 resent to STUN6 over IPv6 and never got answered,
    in a capture where an IPv4 lookup was answered, with ``extra`` packets besides."""
    pkts = [*_dns_answered(ME_HOST), *extra]
    pkts += [_udp6(3.0 + t, ME6, 40100, STUN6, 3478,
                   struct.pack("!HHI", 0x0001, 0, 0x2112A442) + (7).to_bytes(12, "big"))
             for t in (0.0, 0.5, 1.5, 3.5)]
    pkts.append(_udp(20.0, ME_HOST, 40002, "192.168.1.1", 53, b"\x00" * 12))
    path = tmp_path / "v6.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    stun = next(f.uid for f in result.flows if f.resp_p == 3478)
    return result.analysis.flow_verdicts.get(stun) or next(
        c.verdict for c in result.analysis.calls if stun in c.flow_uids)


@pytest.mark.parametrize("v6_works", [False, True])
def test_silence_over_an_ip_version_that_works_nowhere(tmp_path: Path, v6_works: bool
                                                       ) -> None:
    # The host resends STUN requests to its app's server over IPv6 and gets nothing back,
    # while IPv4 works. If no IPv6 exchange of the capture went past the host's network
    # and came back, the network's IPv6 may not work at all (home routers often announce
    # it with no route behind): unknown. With another IPv6 exchange answered, a block.
    resolver6 = "2a0b:3333:53::1"  # a lookup over IPv6 past the local network, answered
    verdict = _ipv6_stun_verdict(tmp_path, [
        _udp6(1.0, ME6, 40200, resolver6, 53, b"\x12\x34" + b"\x00" * 10),
        _udp6(1.1, resolver6, 53, ME6, 40200, b"\x12\x34\x80" + b"\x00" * 9)]
        if v6_works else [])
    assert verdict.reasons == (Reason.STUN_UNANSWERED,), verdict
    if v6_works:
        assert verdict.kind is VerdictKind.BLOCKED, verdict
    else:
        assert verdict.kind is VerdictKind.UNKNOWN, verdict
        (ev,) = verdict.evidence
        assert ev.rule == "unknown.family_unanswered" and ev.figures["ip_version"] == 6
        assert "IPv6 may not work there at all" in ev.text


def test_silence_over_ipv4_beside_a_broken_ipv6_is_still_judged(tmp_path: Path) -> None:
    # The client asks its app's server over both IP versions and nothing answers either;
    # IPv6 works nowhere in the capture, IPv4 does (the lookup): the IPv4 silence is a
    # block, whatever IPv6 does.
    pkts = [*_dns_answered(ME_HOST)]
    for t in (0.0, 0.5, 1.5, 3.5):
        pkts.append(_udp6(3.0 + t, ME6, 40100, STUN6, 3478,
                          struct.pack("!HHI", 0x0001, 0, 0x2112A442) + (7).to_bytes(12, "big")))
        pkts.append(_binding(3.0 + t, ME_HOST, STUN_A, 8))
    pkts.append(_udp(20.0, ME_HOST, 40002, "192.168.1.1", 53, b"\x00" * 12))
    path = tmp_path / "both.pcap"
    _pcap(path, sorted(pkts))
    result = analyze_capture(path, workers=1)
    verdicts = [*result.analysis.flow_verdicts.values(),
                *(c.verdict for c in result.analysis.calls)]
    assert any(v.kind is VerdictKind.BLOCKED and Reason.STUN_UNANSWERED in v.reasons
               for v in verdicts), verdicts


@pytest.mark.parametrize("neighbour", ["router-on-link", "neighbour-discovery"])
def test_ipv6_on_the_link_alone_shows_no_route_beyond(tmp_path: Path, neighbour: str
                                                      ) -> None:
    # What the host exchanged with its router over IPv6 on its own link (a lookup to the
    # router's address in the host's /64; neighbour discovery) says nothing of the route
    # past it: silence toward the app's server over IPv6 stays unknown.
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, IPv6
    router6 = "2a0b:1111:1::1"
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if neighbour == "router-on-link":
        extra = [_udp6(1.0, ME6, 40200, router6, 53, b"\x12\x34" + b"\x00" * 10),
                 _udp6(1.1, router6, 53, ME6, 40200, b"\x12\x34\x80" + b"\x00" * 9)]
    else:
        extra = [(1.0, bytes(eth / IPv6(src="fe80::1", dst=ME6) / ICMPv6ND_NS(tgt=ME6))),
                 (1.1, bytes(eth / IPv6(src=ME6, dst="fe80::1") / ICMPv6ND_NA(tgt=ME6)))]
    verdict = _ipv6_stun_verdict(tmp_path, extra)
    assert verdict.kind is VerdictKind.UNKNOWN, verdict
    assert verdict.evidence[0].rule == "unknown.family_unanswered"


TEAMS_STUN, TEAMS_TCP = "52.112.10.10", "52.112.10.11"
"""Addresses in Microsoft's published range for Teams media (52.112.0.0/14)."""


def _tls_stream(me: tuple[str, int], server: tuple[str, int], sni: str, t0: float,
                seconds: int, up: int, down: int, pps: int = 25) -> list[tuple[float, bytes]]:
    """A TCP connection from ``me`` to ``server``: handshake, a ClientHello naming ``sni``,
    then for ``seconds`` ``pps`` segments a second each way, of ``up`` payload bytes from
    ``me`` and ``down`` from the server (0: a bare acknowledgement)."""
    import random

    from scapy.layers.inet import TCP  # type: ignore[attr-defined]

    from captures.make_captures import tls_client_hello
    eth_up = Ether(src="02:00:00:00:00:50", dst="02:00:00:00:00:01")
    eth_down = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:50")
    seq = {True: 1000, False: 9000}

    def seg(t: float, mine: bool, flags: str, payload: bytes = b"") -> tuple[float, bytes]:
        src, dst, eth = (me, server, eth_up) if mine else (server, me, eth_down)
        pkt = eth / IP(src=src[0], dst=dst[0]) / TCP(
            sport=src[1], dport=dst[1], flags=flags, seq=seq[mine], ack=seq[not mine])
        seq[mine] += len(payload) + (1 if "S" in flags else 0)
        return t, bytes(pkt / Raw(payload)) if payload else bytes(pkt)

    out = [seg(t0, True, "S"), seg(t0 + 0.02, False, "SA"), seg(t0 + 0.021, True, "A"),
           seg(t0 + 0.03, True, "PA", tls_client_hello(sni, random.Random(3)))]
    for i in range(seconds * pps):
        t = t0 + 0.1 + i / pps
        out.append(seg(t, True, "PA" if up else "A", b"\x17\x03\x03" + b"u" * (up - 3)
                       if up else b""))
        out.append(seg(t + 0.005, False, "PA" if down else "A",
                       b"\x17\x03\x03" + b"d" * (down - 3) if down else b""))
    return out


TEAMS_RELAY = "worldaz.relay.teams.microsoft.com"
META_STUN, META_TCP = "157.240.0.10", "157.240.0.11"
"""Addresses in Meta's published ranges (157.240.0.0/16)."""


@pytest.mark.parametrize(("app", "sni", "server", "t0", "up", "down", "kind"), [
    # the call's app carried voice both ways over TCP 443 after its UDP got nowhere
    ("teams", TEAMS_RELAY, TEAMS_TCP, 8.0, 160, 160, VerdictKind.DEGRADED),
    # a download from the app's servers: payload one way, bare acknowledgements back
    ("teams", TEAMS_RELAY, TEAMS_TCP, 8.0, 0, 1200, VerdictKind.BLOCKED),
    # a trickle both ways (a chat's keep-alives): under a voice stream's rate
    ("teams", TEAMS_RELAY, TEAMS_TCP, 8.0, 20, 20, VerdictKind.BLOCKED),
    # two-way payload, but with another app's server
    ("teams", "www.example.org", "198.51.100.80", 8.0, 160, 160, VerdictKind.BLOCKED),
    # ... or with another app of the same organisation (Facebook beside WhatsApp)
    ("whatsapp", "www.facebook.com", META_TCP, 8.0, 160, 160, VerdictKind.BLOCKED),
    # ... or over before the call's UDP went unanswered
    ("teams", TEAMS_RELAY, TEAMS_TCP, -25.0, 160, 160, VerdictKind.BLOCKED),
], ids=["voice-over-tcp", "download", "trickle", "other-app", "same-organisation",
        "before-the-call"])
def test_a_call_its_app_carried_over_tcp_is_no_block(
        tmp_path: Path, app: str, sni: str, server: str, t0: float, up: int, down: int,
        kind: VerdictKind) -> None:
    # The app asks its relay over UDP 3478 and gets nothing back, resending; then the
    # same app carries the call over TCP 443 to its relay (TURN over TLS, the documented
    # fallback). The call went through: degraded, and the evidence names the connection.
    # Without a call's worth of payload both ways on a connection of the call's own app
    # from then on, the UDP silence is a block, as before.
    me = ME_HOST
    # Teams' STUN carries its own attribute; WhatsApp's has its own message type (nDPI
    # stun.c: 0x0800-0x0805).
    stun_to, msg_type, attrs = ((TEAMS_STUN, 0x0001, MS_VERSION) if app == "teams"
                                else (META_STUN, 0x0801, b""))
    base = 30.0
    stun = [_binding(base + t, me, stun_to, 9, kind=msg_type, attrs=attrs)
            for t in (0.0, 0.5, 1.5, 3.5)]
    tcp = _tls_stream((me, 50443), (server, 443), sni, base + t0, 20, up, down)
    path = tmp_path / "fallback.pcap"
    _pcap(path, sorted([*_dns_answered(me), *stun, *tcp]))
    result = analyze_capture(path, workers=1)
    (call,) = [c for c in result.analysis.calls if c.app == app]
    assert call.verdict.kind is kind, call.verdict
    (ev,) = [e for e in call.verdict.evidence if e.reason is Reason.STUN_UNANSWERED]
    if kind is VerdictKind.DEGRADED:
        assert ev.rule == "degraded.tcp_fallback"
        assert ev.figures["tcp_server"] == f"{server}:443"
        assert ev.figures["tcp_two_way_s"] >= 18
        assert "fell back to TCP" in ev.text
    else:
        assert ev.rule == "blocked.stun"


def test_a_download_seen_inside_a_tunnel_is_no_fallback(tmp_path: Path) -> None:
    # A capture taken on a tunnel (VXLAN over IPv6, with a VLAN tag outside): every frame
    # carries 74 bytes of outer headers. A download from the call's app at 150 segments a
    # second, acknowledged segment by segment, puts 150 bare acknowledgements a second
    # the other way: counted against the connection's own headers they carry no payload,
    # so the app's UDP silence stays a block.
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Dot1Q
    from scapy.layers.vxlan import VXLAN

    me = ME_HOST
    stun = [_binding(30.0 + t, me, TEAMS_STUN, 9, attrs=MS_VERSION) for t in (0.0, 0.5, 1.5, 3.5)]
    tcp = _tls_stream((me, 50443), (TEAMS_TCP, 443), TEAMS_RELAY, 38.0, 20, 0, 1200, pps=150)
    outer = (Ether(src="02:00:00:00:aa:01", dst="02:00:00:00:aa:02") / Dot1Q(vlan=7)
             / IPv6(src="2001:db8:ff::1", dst="2001:db8:ff::2")
             / UDP(sport=49152, dport=4789, chksum=0) / VXLAN(vni=42))
    pkts = [(t, bytes(outer / Raw(frame)))
            for t, frame in sorted([*_dns_answered(me), *stun, *tcp])]
    path = tmp_path / "tunnel.pcap"
    _pcap(path, pkts)
    result = analyze_capture(path, workers=1)
    (call,) = [c for c in result.analysis.calls if c.app == "teams"]
    assert call.verdict.kind is VerdictKind.BLOCKED, call.verdict
    assert call.verdict.evidence[0].rule == "blocked.stun"


def test_unanswered_stun_evidence_cites_the_requests_not_the_media() -> None:
    """The bundled blocked call: its socket sends STUN Binding requests and WhatsApp's
    pings, then RTP to the relay, and nothing comes back. The evidence cites the frames of
    the requests and pings it counts, and no RTP frame sent on the same socket."""
    from scapy.utils import rdpcap

    from classifier.dpi import stun as stun_dpi
    from tests.conftest import ROOT

    path = ROOT / "captures" / "sample-blocked.pcap"
    result = analyze_capture(path, workers=1)
    (call,) = result.analysis.calls
    (ev,) = [e for e in call.verdict.evidence if e.rule == "blocked.stun"]
    packets = rdpcap(str(path))
    cited = [bytes(packets[n - 1][UDP].payload) for n in ev.frames]
    assert len(cited) == ev.figures["stun_requests"] >= 6
    assert all(stun_dpi.looks_like_stun(p) for p in cited)
    sent = [bytes(p[UDP].payload) for p in packets
            if UDP in p and p[IP].dst == "157.240.27.54"]
    assert sum(not stun_dpi.looks_like_stun(p) for p in sent) >= 300  # the media, uncited
