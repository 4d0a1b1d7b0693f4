"""The window of flows judged together keeps its counts and indexes as flows come and go:
whatever the order of joins and departures, it reads the same as a window built from the
flows it holds, on every bundled capture's flows together."""

from __future__ import annotations

import random
import shutil
import sys
import tempfile
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

from api.pipeline import analyze_capture
from classifier.records import Classification
from policy.window import FlowWindow, builds_calls
from probe.addresses import MachineIndex, is_group_l2, local_host, machines
from probe.meter import EndStarts
from probe.records import FlowRecord
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from gen_capture import PROFILES, generate


@cache
def _pool() -> tuple[list[FlowRecord], list[Classification]]:
    """The flows of every bundled capture that reads cleanly (calls, SIP, TCP tries, ICMP
    errors) and of a small capture of the benchmark's synthetic traffic (many clients,
    each with its own link-layer address, IPv4 and IPv6, calls among web flows)."""
    flows: list[FlowRecord] = []
    classes: list[Classification] = []
    synthetic = Path(tempfile.mkdtemp()) / "synth.pcap"
    generate(20_000, 500, 1, 3, synthetic, PROFILES["calls"])
    paths = sorted((ROOT / "captures").glob("*.pcap")) + sorted(
        (ROOT / "captures" / "apps").glob("*.pcap")) + [synthetic]
    seen: set[str] = set()
    for path in paths:
        if path.name.startswith("bad-"):
            continue
        r = analyze_capture(path, workers=1)
        for f, c in zip(r.flows, r.classes, strict=True):
            if f.uid not in seen:  # one flow in several encapsulations: the same uid
                seen.add(f.uid)
                flows.append(f)
                classes.append(c)
    shutil.rmtree(synthetic.parent)
    return flows, classes


def _reading(w: FlowWindow, flows: list[FlowRecord]) -> dict[str, Any]:
    """Everything the rules read from a window, asked about every host, app, end and
    client-server pair of ``flows``."""
    hosts = sorted({h for f in flows for h in (f.orig_h, f.resp_h)})
    apps = sorted({c.app for c in w.classes.values() if c.app is not None})
    ends = {(f.orig_h, f.orig_p) for f in flows} | {(f.resp_h, f.resp_p) for f in flows}
    tries = {(f.orig_h, f.resp_h, f.resp_p) for f in flows if f.proto == "tcp"}
    return {
        "flows": sorted(w.flows),
        "ordered": [f.uid for f in w.ordered()],
        "calls": [f.uid for f in w.call_flows()],
        "sip": [f.uid for f in w.sip_flows()],
        "udp_on": [f.uid for f in w.udp_on(ends)],
        "local": w.local_host(),
        "answered": w.others_answered,
        "end": w.capture_end,
        "services": sorted(w.services_up),
        "tries": {k: w.service_tries(k) for k in sorted(tries)},
        "families": w.internet_families(),
        "machines": w.machines.as_dict(),
        "machine_hosts": {l2: w.machines.hosts_of(l2) for l2 in set(w.machines.as_dict().values())},
        "signalling": {(kind, k): [f.uid for f in w.signalling(kind, k)]
                       for kind, keys in (("remote", hosts), ("app", apps)) for k in keys},
        "tcp": {h: [(f.uid, o) for f, o in w.tcp_flows_of(h)] for h in hosts},
    }


def test_a_window_kept_current_reads_as_one_built_from_its_flows() -> None:
    flows, classes = _pool()
    by_uid = {c.uid: c for c in classes}
    rng = random.Random(5)
    w = FlowWindow()
    for f in rng.sample(flows, len(flows)):  # any order of joining
        w.add(f, by_uid[f.uid])
    assert _reading(w, flows) == _reading(FlowWindow.of(flows, classes), flows)
    gone = rng.sample(flows, len(flows) // 2)
    for f in gone:
        w.remove(f.uid)
    left = [f for f in flows if f.uid in w]
    assert len(left) == len(flows) - len(gone)
    assert _reading(w, flows) == _reading(FlowWindow.of(left, classes), flows)
    for f in gone:  # back again, and one flow replaced by itself
        w.add(f, by_uid[f.uid])
    w.add(flows[0], by_uid[flows[0].uid])
    assert _reading(w, flows) == _reading(FlowWindow.of(flows, classes), flows)
    for f in flows:
        w.remove(f.uid)
    assert _reading(w, flows) == _reading(FlowWindow(), flows)
    assert w.local_host() is None and w.capture_end == 0.0 and not w.machines


def test_the_window_reads_what_its_flows_show() -> None:
    flows, classes = _pool()
    w = FlowWindow.of(flows, classes)
    assert w.capture_end == max(f.last_ts for f in flows)
    assert w.others_answered == any(f.orig_pkts and f.resp_pkts for f in flows)
    assert set(w.services_up) == {(f.resp_h, f.resp_p) for f in flows if f.resp_pkts and (
        f.proto == "udp" or (f.proto == "tcp" and f.conn_state not in (
            "S0", "REJ", "RSTOS0", "SH", "OTH")))}
    assert w.internet_families() == {4, 6}
    assert w.machines.as_dict() == machines(flows)


def test_machine_index_follows_flows_leaving() -> None:
    flows, _ = _pool()
    index = MachineIndex()
    for f in flows:
        index.add(f)
    half = flows[::2]
    for f in flows[1::2]:
        index.remove(f)
    assert index.as_dict() == machines(half)
    assert index.as_dict()  # the bundled captures carry hosts' own link-layer addresses


def test_machine_index_answers_stay_current_while_asked_between_changes() -> None:
    """``get`` keeps its answers between changes; every join and departure that can alter
    one (an address's own link-layer addresses, or one of them coming to stand, or no
    longer standing, for one machine) must drop it: asked after each step, the index
    answers as one built afresh from the flows it holds."""
    flows, _ = _pool()
    order = list(flows)
    random.Random(7).shuffle(order)
    hosts = sorted({h for f in flows for h in (f.orig_h, f.resp_h)})
    index = MachineIndex()
    held: list[FlowRecord] = []
    steps = [order[i:i + max(1, len(order) // 12)] for i in range(0, len(order),
                                                                  max(1, len(order) // 12))]
    for step in steps:
        for f in step:
            index.add(f)
        held += step
        assert {h: g for h in hosts if (g := index.get(h)) is not None} == machines(held)
    for step in steps[::2]:
        for f in step:
            index.remove(f)
        gone = {f.uid for f in step}
        held = [f for f in held if f.uid not in gone]
        assert {h: g for h in hosts if (g := index.get(h)) is not None} == machines(held)


def test_machine_index_forgets_an_answer_when_a_link_layer_address_stops_being_one_machine(
        ) -> None:
    """A link-layer address that sends from a second IPv4 address is a router, no longer
    one machine: an address already answered by it is answered afresh (and again once the
    second address has gone)."""
    base = _pool()[0][0]
    mac = "02:00:5e:10:00:01"

    def flow(uid: str, host: str) -> FlowRecord:
        return replace(base, uid=uid, orig_h=host, resp_h="198.51.100.7", orig_l2_addr=mac,
                       resp_l2_addr="02:00:5e:10:00:02")

    index = MachineIndex()
    a, b = flow("a", "192.0.2.10"), flow("b", "192.0.2.11")
    index.add(a)
    assert index.get("192.0.2.10") == mac
    index.add(b)
    assert index.get("192.0.2.10") is None and index.get("192.0.2.11") is None
    index.remove(b)
    assert index.get("192.0.2.10") == mac
    index.remove(a)
    assert index.get("192.0.2.10") is None


def test_group_link_layer_addresses() -> None:
    assert is_group_l2("01:00:5e:00:00:fb") and is_group_l2("ff:ff:ff:ff:ff:ff")
    assert is_group_l2("33:33:00:00:00:01")
    assert not is_group_l2("5c:e4:2a:f6:5e:46") and not is_group_l2("f0:4d:d4:46:58:1b")


def test_end_starts_finds_the_earliest_flow_touching_some_ends() -> None:
    ends = EndStarts()
    ends.add_many([("10.0.0.2", 6000, "203.0.113.4", 3478, 20.0),
                   ("10.0.0.2", 6002, "198.51.100.9", 3478, 50.0),
                   ("10.0.0.3", 7000, "203.0.113.4", 3478, 10.0)])
    assert ends.earliest(["203.0.113.4"], []) == 10.0
    assert ends.earliest([], [("10.0.0.2", 6002)]) == 50.0
    assert ends.earliest(["10.0.0.2"], [], since=30.0) == 50.0
    assert ends.earliest(["10.0.0.2"], [], since=60.0) == float("inf")
    assert ends.earliest(["192.0.2.1"], [("10.0.0.2", 6001)]) == float("inf")


def test_the_local_host_is_the_vote_over_every_flow_when_no_call_flow_is_in_it() -> None:
    """With no call flow, the window's local host is :func:`local_host` over its flows in
    the window's order: the most votes, and of hosts that tie, the one seen first."""
    flows, classes = _pool()
    by_uid = {c.uid: c for c in classes}
    plain = [f for f in flows if not builds_calls(f, by_uid[f.uid])]
    ordered = sorted(plain, key=lambda f: (f.first_frame, f.uid))
    assert FlowWindow.of(plain, classes).local_host() == local_host(ordered, ordered)
    # Four hosts of one rank, one flow each way round: a tie, the first flow's originator.
    base = [f for f in plain if f.proto == "tcp"][:3]
    ends = [("203.0.113.7", "198.51.100.2"), ("198.51.100.2", "203.0.113.9"),
            ("203.0.113.9", "203.0.113.7")]
    tie = [replace(f, uid=f"Ctie{i}", first_frame=100 - i, orig_h=a, resp_h=b,
                   orig_l2_addr=None, resp_l2_addr=None)
           for i, (f, (a, b)) in enumerate(zip(base, ends, strict=True))]
    want = local_host(sorted(tie, key=lambda f: (f.first_frame, f.uid)), tie)
    assert want == "203.0.113.9"  # the originator of the flow seen first (frame 98)
    assert FlowWindow.of(tie, [replace(by_uid[f.uid], uid=t.uid)
                               for f, t in zip(base, tie, strict=True)]).local_host() == want


def test_what_the_window_keeps_follows_the_flows_in_it() -> None:
    """A window that flows pass through (the pipeline's) keeps no trace of the flows
    that left: its heap of ends is rebuilt once it mostly holds departed flows."""
    flows, classes = _pool()
    by_uid = {c.uid: c for c in classes}
    w = FlowWindow()
    for i, f in enumerate(flows * 20):
        if f.uid in w:
            w.remove(f.uid)
        w.add(f, by_uid[f.uid])
        if i >= 100:
            old = flows[(i - 100) % len(flows)]
            if old.uid in w:
                w.remove(old.uid)
    assert len(w) <= 100
    assert len(w._ends) <= 2 * (len(w) + 1) + 65  # not one entry per flow ever added
    assert w.capture_end == max(f.last_ts for f in w.flows.values())
