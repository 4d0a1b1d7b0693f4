"""The flow table's snapshot of its open UDP flows, which the pipeline asks whether a
stream of a call may still come."""

from __future__ import annotations

import ipaddress

import numpy as np

from probe.decode import join_addr
from probe.flowkey import pack_addr
from probe.meter import OpenFlows
from tests.conftest import ROOT


def test_pack_addr_is_the_inverse_of_join_addr() -> None:
    for text in ("192.0.2.7", "10.0.0.1", "2001:db8::1", "::1", "fe80::abcd:1"):
        ip = ipaddress.ip_address(text)
        ver, n = join_addr(*pack_addr(text))
        assert (ver, n) == (ip.version, int(ip))


def _open(*rows: tuple[str, int, str, int, float]) -> OpenFlows:
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    a = [pack_addr(x) for x in cols[0]]
    b = [pack_addr(x) for x in cols[2]]
    u = np.uint64
    return OpenFlows(np.array([h for h, _ in a], dtype=u), np.array([lo for _, lo in a], dtype=u),
                     np.array(cols[1], dtype=u), np.array([h for h, _ in b], dtype=u),
                     np.array([lo for _, lo in b], dtype=u), np.array(cols[3], dtype=u),
                     np.array(cols[4], dtype=np.float64))


def test_earliest_touching_a_host_or_a_socket() -> None:
    flows = _open(("10.0.0.2", 5000, "198.51.100.9", 3478, 50.0),
                  ("10.0.0.2", 6000, "203.0.113.4", 443, 20.0),
                  ("10.0.0.3", 7000, "203.0.113.4", 443, 10.0))
    assert flows.earliest_touching({"198.51.100.9"}, set()) == 50.0
    assert flows.earliest_touching({"203.0.113.4"}, set()) == 10.0
    assert flows.earliest_touching(set(), {("10.0.0.2", 6000)}) == 20.0
    assert flows.earliest_touching(set(), {("10.0.0.2", 6001)}) == float("inf")
    assert flows.earliest_touching({"192.0.2.1"}, set()) == float("inf")
    assert _open().earliest_touching({"192.0.2.1"}, set()) == float("inf")


def test_a_capture_read_whole_leaves_no_open_flows() -> None:
    from probe import FlowReader
    from probe.run import Watermark
    reader = FlowReader(ROOT / "captures" / "sample-call.pcap", workers=1)
    marks = [x for x in reader.observed_with_clock(lambda f: None) if isinstance(x, Watermark)]
    assert marks and len(marks[-1].open_udp.first_ts) > 0  # the call's streams were open
    assert reader.meter.open_udp().first_ts.size == 0  # the end of input ended them
