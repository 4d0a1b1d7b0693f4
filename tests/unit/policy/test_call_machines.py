"""One call per call: a dual-stack host's IPv4 and IPv6 candidates, and the relays of one
organisation, are one call; another host's candidates, and a call of another app of the
same organisation, are not.

Captures are built from real STUN and RTP bytes (the generators of ``captures/``) with
each host's own link-layer address, as a Wi-Fi or Ethernet capture carries it.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest

import policy.calls
from api.pipeline import analyze_capture
from policy.calls import analyse_calls
from policy.pipeline import Pipeline, PipelineConfig, run_capture
from probe import FlowReader, MeterConfig
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "captures"))

import make_app_captures as gen
from make_captures import ORIG, Flow, ethertype, send_udp

HOST = bytes.fromhex("5ce42af65e46")
NEIGHBOUR = bytes.fromhex("626501181140")
ROUTER = bytes.fromhex("f04dd446581b")
META_V4, META_V6 = "157.240.22.60", "2a03:2880:f021::24d9"
"""Relays in Meta's published address space (AS32934)."""


def _link(host_mac: bytes) -> Callable[[bytes, int], bytes]:
    def wrap(ip: bytes, direction: int) -> bytes:
        macs = ROUTER + host_mac if direction == ORIG else host_mac + ROUTER
        return macs + struct.pack(">H", ethertype(ip)) + ip
    return wrap


def _bindings(cap: gen.Capture, flow: Flow, mac: bytes, t: Fraction,
              rng: random.Random) -> None:
    """Two answered STUN Binding requests (RFC 8489 §3), as ICE gathering sends."""
    link = _link(mac)
    for k in range(2):
        txid = rng.randbytes(12)
        send_udp(cap, flow, link, t + k, ORIG, gen.stun_message(gen.BINDING_REQUEST, txid, []))
        send_udp(cap, flow, link, t + k + Fraction(3, 100), 1 - ORIG, gen.stun_message(
            gen.BINDING_SUCCESS, txid, [(gen.XOR_MAPPED_ADDRESS,
                                         gen.xor_mapped(gen.PUBLIC, flow.orig_p))]))


def _media(cap: gen.Capture, flow: Flow, mac: bytes, t: Fraction, rng: random.Random,
           ssrc: int) -> None:
    """Three seconds of two-way RTP, one packet every 20 ms each way (RFC 3550 §5.1)."""
    link = _link(mac)
    for i in range(150):
        for direction, s in ((ORIG, ssrc), (1 - ORIG, ssrc + 1)):
            send_udp(cap, flow, link, t + Fraction(i, 50) + Fraction(direction, 1000),
                     direction, gen.rtp(1000 + i, 960 * i, s, 111, rng.randbytes(60)))


def _capture(tmp_path: Path, v6_mac: bytes) -> tuple[Path, dict[int, str]]:
    rng = random.Random("machines")
    cap = gen.Capture()
    t = gen.at(8000)
    v4 = Flow("udp", "192.168.1.8", 50000, META_V4, 3478)
    v6 = Flow("udp", "2a02:a03f:c095:7d00::17", 50002, META_V6, 3478)
    tmp6 = Flow("udp", "2a02:a03f:c095:7d00:c8e9::37", 50004, META_V6, 3478)
    _bindings(cap, v4, HOST, t, rng)
    _bindings(cap, v6, v6_mac, t + Fraction(1, 20), rng)
    _bindings(cap, tmp6, v6_mac, t + Fraction(1, 10), rng)
    _media(cap, v4, HOST, t + 3, rng, 0x7E55E201)
    gen.save(tmp_path, "m.pcap", cap)
    path = tmp_path / "m.pcap"
    result = analyze_capture(path, workers=1, hash_capture=False)
    return path, {f.orig_p: f.uid for f in result.flows}


def _calls(path: Path) -> list[set[str]]:
    result = analyze_capture(path, workers=1, hash_capture=False)
    return [set(c.flow_uids) for c in result.analysis.calls]


def test_a_dual_stack_hosts_candidates_are_one_call(tmp_path: Path) -> None:
    path, uid = _capture(tmp_path, HOST)
    assert _calls(path) == [{uid[50000], uid[50002], uid[50004]}]


def test_another_hosts_candidates_are_not_its_call(tmp_path: Path) -> None:
    # Same /64, same relays, same seconds: but sent from another link-layer address.
    path, uid = _capture(tmp_path, NEIGHBOUR)
    calls = _calls(path)
    assert {uid[50000]} in [c & {uid[50000]} for c in calls]
    mine = next(c for c in calls if uid[50000] in c)
    assert not mine & {uid[50002], uid[50004]}


# -- which groups are calls, and what became of them ---------------------------------------------


def _one_host(tmp_path: Path, build: Callable[[gen.Capture, random.Random, Fraction], None]
              ) -> list[tuple[str, str, tuple[str, ...]]]:
    rng = random.Random("outcomes")
    cap = gen.Capture()
    build(cap, rng, gen.at(9000))
    gen.save(tmp_path, "o.pcap", cap)
    result = analyze_capture(tmp_path / "o.pcap", workers=1, hash_capture=False)
    return [(str(c.outcome), str(c.verdict.kind), c.media) for c in result.analysis.calls]


V4 = Flow("udp", "192.168.1.8", 50000, META_V4, 3478)
PEER = Flow("udp", "192.168.1.8", 50000, gen.PEER, 61000)


def test_allocations_that_reach_no_peer_are_no_call(tmp_path: Path) -> None:
    # A client refreshing its relay binding between calls: answered STUN, nothing else.
    assert _one_host(tmp_path, lambda cap, rng, t: _bindings(cap, V4, HOST, t, rng)) == []


def test_two_way_media_is_answered(tmp_path: Path) -> None:
    def build(cap: gen.Capture, rng: random.Random, t: Fraction) -> None:
        _bindings(cap, V4, HOST, t, rng)
        _media(cap, V4, HOST, t + 3, rng, 0x11)
    assert _one_host(tmp_path, build) == [("answered", "ok", ("audio",))]


def test_connectivity_checks_to_a_peer_without_media_ring_unanswered(tmp_path: Path) -> None:
    # ICE checks (PRIORITY, ICE-CONTROLLING: RFC 8445 §7.1) reach the peer, no media: a
    # call that rang and was not answered; without media it is never "ok".
    def build(cap: gen.Capture, rng: random.Random, t: Fraction) -> None:
        _bindings(cap, V4, HOST, t, rng)
        link = _link(HOST)
        for k in range(3):
            txid = rng.randbytes(12)
            attrs = [(gen.PRIORITY, struct.pack(">I", 0x6E0001FF)),
                     (gen.ICE_CONTROLLING, rng.randbytes(8))]
            send_udp(cap, PEER, link, t + 1 + k, ORIG,
                     gen.stun_message(gen.BINDING_REQUEST, txid, attrs))
            send_udp(cap, PEER, link, t + 1 + k + Fraction(2, 100), 1 - ORIG,
                     gen.stun_message(gen.BINDING_SUCCESS, txid, []))
    assert _one_host(tmp_path, build) == [("missed", "unknown", ())]


def test_media_one_way_is_one_way(tmp_path: Path) -> None:
    def build(cap: gen.Capture, rng: random.Random, t: Fraction) -> None:
        _bindings(cap, V4, HOST, t, rng)
        link = _link(HOST)
        for i in range(150):
            send_udp(cap, V4, link, t + 3 + Fraction(i, 50), ORIG,
                     gen.rtp(1000 + i, 960 * i, 0x22, 111, rng.randbytes(60)))
    ((outcome, _, media),) = _one_host(tmp_path, build)
    assert (outcome, media) == ("one-way", ("audio",))


def test_a_call_without_two_way_media_has_no_quality_figures() -> None:
    # The bundled blocked call: media went out, nothing came back. Its one outgoing leg
    # measures nothing a listener heard: no MOS, loss or jitter for the call.
    result = analyze_capture(ROOT / "captures" / "sample-blocked.pcap", workers=1,
                             hash_capture=False)
    (call,) = result.analysis.calls
    d = call.to_dict()
    assert (d["verdict"], d["outcome"]) == ("blocked", "one-way")
    assert call.legs and d["quality"] == {"mos": None, "loss_ratio": None, "jitter_s": None}


# -- one ICE session over paths that name no app ----------------------------------------------

UNKNOWN_STUN = Flow("udp", "2a02:a03f:c095:7d00::17", 50002, "2a0b:4e07:b8::9", 3478)
"""A STUN server at an address no table knows (an anonymised capture, a new range)."""
DIRECT = Flow("udp", "2a02:a03f:c095:7d00::17", 50002, "2a02:a03f:d000:11::44", 61000)
"""The same socket's path straight to the peer's own address."""


def _check(rng: random.Random, username: bytes) -> bytes:
    """An ICE connectivity check (RFC 8445 §7.1): USERNAME "RFRAG:LFRAG", PRIORITY."""
    attrs = [(gen.USERNAME, username), (gen.PRIORITY, struct.pack(">I", 0x6E001EFF))]
    return gen.stun_message(gen.BINDING_REQUEST, rng.randbytes(12), attrs)


def _unnamed_path(cap: gen.Capture, t: Fraction, rng: random.Random, username: bytes) -> None:
    _bindings(cap, UNKNOWN_STUN, HOST, t, rng)
    for k in range(3):
        send_udp(cap, DIRECT, _link(HOST), t + 1 + Fraction(k, 10), ORIG, _check(rng, username))
    _media(cap, DIRECT, HOST, t + 2, rng, 0x0D12EC7)


def _relay(cap: gen.Capture, t: Fraction, rng: random.Random, realm: bytes, port: int,
           server: str, ssrc: int, username: bytes) -> None:
    """An Allocate answered 401 with a REALM naming the app (RFC 8656 §7.2), the peer's
    checks relayed in ChannelData (§12), then media."""
    flow = Flow("udp", "192.168.1.8", port, server, 3478)
    link = _link(HOST)
    txid = rng.randbytes(12)
    send_udp(cap, flow, link, t, ORIG, gen.stun_message(gen.ALLOCATE_REQUEST, txid, []))
    send_udp(cap, flow, link, t + Fraction(4, 100), 1 - ORIG, gen.stun_message(
        gen.ALLOCATE_ERROR, txid, [(gen.ERROR_CODE, gen.error_code(401, "Unauthorized")),
                                   (gen.REALM, realm), (gen.NONCE, rng.randbytes(8))]))
    for k in range(2):
        send_udp(cap, flow, link, t + Fraction(5 + k, 10), 1 - ORIG,
                 gen.channel_data(gen.CHANNEL, _check(rng, username)))
    _media(cap, flow, HOST, t + 1, rng, ssrc)


def _with_direct_path(tmp_path: Path, direct_user: bytes
                      ) -> tuple[list[tuple[str | None, set[str]]], dict[int, str]]:
    rng = random.Random("unnamed")
    cap = gen.Capture()
    t = gen.at(8200)
    # The peer's checks through the relay name the session "peer:mine"; ours go direct.
    _relay(cap, t, rng, b"viber.com", 50000, "52.0.254.200", 0x0B1BE, b"mIne:pEEr")
    _unnamed_path(cap, t + Fraction(1, 2), rng, direct_user)
    gen.save(tmp_path, "u.pcap", cap)
    result = analyze_capture(tmp_path / "u.pcap", workers=1, hash_capture=False)
    uid: dict[int, str] = {}
    for f in result.flows:
        uid.setdefault(f.orig_p, f.uid)
        uid[f.resp_p] = f.uid
    return [(c.app, set(c.flow_uids)) for c in result.analysis.calls], uid


def test_a_path_of_the_same_ice_session_is_that_calls(tmp_path: Path) -> None:
    calls, uid = _with_direct_path(tmp_path, b"pEEr:mIne")
    ((app, flows),) = calls
    assert app == "viber"
    assert {uid[50000], uid[61000]} <= flows  # the relay's flow and the direct path


def test_a_path_of_another_ice_session_stays_its_own(tmp_path: Path) -> None:
    # Same machine, same seconds: but another session's fragments. Time alone joins nothing.
    calls, uid = _with_direct_path(tmp_path, b"oThr:sEss")
    mine = next(flows for _, flows in calls if uid[50000] in flows)
    assert uid[61000] not in mine


# -- a tap carrying two subscribers' calls ------------------------------------------------------


def test_each_subscribers_call_is_judged_from_beside_its_caller(tmp_path: Path) -> None:
    # An operator's tap: two hosts' calls at once. Each call's legs are sent ("out") and
    # received ("in") as its own caller sent and received them, whichever host the
    # capture's vote puts beside the tap.
    rng = random.Random("two subscribers")
    cap = gen.Capture()
    t = gen.at(8400)
    _bindings(cap, V4, HOST, t, rng)
    _media(cap, V4, HOST, t + 3, rng, 0x7E55E201)
    other = Flow("udp", "10.20.0.9", 40000, "52.0.254.200", 3478)
    link = _link(NEIGHBOUR)
    _bindings(cap, other, NEIGHBOUR, t + 1, rng)
    for i in range(150):  # sends every 20 ms, receives every 30 ms
        send_udp(cap, other, link, t + 4 + Fraction(i, 50), ORIG,
                 gen.rtp(500 + i, 160 * i, 0xA1, 0, rng.randbytes(160)))
        if i < 100:
            send_udp(cap, other, link, t + 4 + Fraction(3 * i, 100) + Fraction(1, 1000),
                     1 - ORIG, gen.rtp(900 + i, 240 * i, 0xB2, 0, rng.randbytes(160)))
    gen.save(tmp_path, "t.pcap", cap)
    result = analyze_capture(tmp_path / "t.pcap", workers=1, hash_capture=False)
    by_local = {c.local: c for c in result.analysis.calls}
    assert set(by_local) == {"192.168.1.8", "10.20.0.9"}
    legs = {leg.direction: leg.packets for leg in by_local["10.20.0.9"].legs}
    assert legs == {"out": 150, "in": 100}


def test_another_hosts_stream_to_the_same_relay_does_not_hold_a_call(tmp_path: Path) -> None:
    """One relay serves many subscribers: while another host's stream to it goes on, a
    call that has ended is written once it has settled, not held as if that stream were
    one of its own (a capture at an operator's tap sees every subscriber's)."""
    rng = random.Random("relay")
    cap = gen.Capture()
    t = gen.at(9000)
    _bindings(cap, V4, HOST, t, rng)
    _media(cap, V4, HOST, t + 3, rng, 0x7E55E201)
    other = Flow("udp", "192.168.1.9", 50100, META_V4, 3478)
    link = _link(NEIGHBOUR)
    for i in range(120):  # a minute of the neighbour's stream, two packets a second each way
        for direction, s in ((ORIG, 0x0BB0), (1 - ORIG, 0x0BB1)):
            send_udp(cap, other, link, t + Fraction(i, 2) + Fraction(direction, 1000),
                     direction, gen.rtp(i, 480 * i, s, 111, rng.randbytes(60)))
    gen.save(tmp_path, "r.pcap", cap)
    meter = MeterConfig(udp_idle_s=3, tcp_idle_s=3, tcp_close_s=1)
    reader = FlowReader(tmp_path / "r.pcap", meter, workers=1)
    pipeline = Pipeline(None, reader.config,
                        config=PipelineConfig(cut_s=1, call_settle_s=2, call_hold_s=3600))
    steps = list(run_capture(reader, pipeline))
    mine = [i for i, s in enumerate(steps) for c in s.calls if c.local == "192.168.1.8"]
    theirs = [i for i, s in enumerate(steps) for c in s.calls if c.local == "192.168.1.9"]
    assert mine and theirs
    assert mine[0] < len(steps) - 1  # written along the way, while the neighbour's goes on
    assert steps[mine[0]].calls[0].end_ts < steps[theirs[0]].calls[0].start_ts + 60


def test_a_group_settled_as_no_call_is_not_judged_again(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline judges its window again at every settle; a group of flows it wrote as
    no call (relay upkeep) is taken as such again, not judged once per settle."""
    rng = random.Random("outcomes")
    cap = gen.Capture()
    _bindings(cap, V4, HOST, gen.at(9000), rng)
    gen.save(tmp_path, "n.pcap", cap)
    r = analyze_capture(tmp_path / "n.pcap", workers=1, hash_capture=False)
    first = analyse_calls(r.flows, r.classes)
    assert not first.calls and [s.flow_uids for s in first.no_calls] == [
        tuple(f.uid for f in r.flows)]
    judged: list[object] = []
    real = policy.calls._judge
    monkeypatch.setattr(policy.calls, "_judge", lambda *a: judged.append(a) or real(*a))
    again = analyse_calls(r.flows, r.classes, settled={first.no_calls[0].flow_uids})
    assert judged == [] and not again.calls
    assert [s.flow_uids for s in again.no_calls] == [s.flow_uids for s in first.no_calls]
    assert again.flow_verdicts == first.flow_verdicts
    analyse_calls(r.flows, r.classes)
    assert len(judged) == 1  # without it, judged again


def test_unanswered_stun_is_judged_again_when_a_later_flow_is_answered(tmp_path: Path
                                                                        ) -> None:
    """A group the pipeline finds no call may become one as the window grows: STUN
    nobody answered is no block while nothing else in the capture was answered (a tap
    that holds one direction), and a block once something was. Only answered relay
    upkeep is settled for good; this group is judged again, as a whole capture judges
    it."""
    from tests.unit.policy.test_verdict_rules import _pcap, _udp

    me, server, resolver = "192.168.1.50", "203.0.113.9", "198.51.100.53"
    packets = [_udp(10.0 + t, me, 40100, server, 3478,
                    struct.pack("!HHI", 1, 0, 0x2112A442) + (i + 1).to_bytes(12, "big"))
               for i, t in enumerate((0.0, 0.5, 1.5, 3.5))]
    packets += [_udp(40.0, me, 40000, resolver, 53, b"\x12\x34" + bytes(10)),
                _udp(40.1, resolver, 53, me, 40000, b"\x12\x34\x80" + bytes(9))]
    path = tmp_path / "late.pcap"
    _pcap(path, sorted(packets))
    meter = MeterConfig(udp_idle_s=3, tcp_idle_s=3, tcp_close_s=1)
    reader = FlowReader(path, meter, workers=1)
    steps = list(run_capture(reader, Pipeline(None, reader.config,
                                              config=PipelineConfig(cut_s=1, call_settle_s=2))))
    calls = [c for s in steps for c in s.calls]
    assert [(str(c.verdict.kind), [e.rule for e in c.verdict.evidence]) for c in calls] == [
        ("blocked", ["blocked.stun"])]
    whole = analyze_capture(path, workers=1, hash_capture=False).analysis.calls
    assert [c.uid for c in whole] == [c.uid for c in calls]
