#!/usr/bin/env python3
"""Baseline for the benchmark: a plain dpkt decode loop with a dict flow table.

Every packet goes through ``dpkt.ethernet.Ethernet`` (which also unwraps 802.1Q
tags) and is counted, with its bytes, per direction of its bidirectional
5-tuple flow. This is what a straightforward pure-Python flow meter costs; it
classifies nothing. Prints ``packets N`` and ``flows N``; ``--dump`` also
prints one line per flow.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dpkt

Endpoint = tuple[bytes, int]
FlowKey = tuple[int, Endpoint, Endpoint]


@dataclass(slots=True)
class Counters:
    """Packets and bytes of one flow, per direction."""

    orig: Endpoint
    """The endpoint that sent the first packet."""
    orig_pkts: int = 0
    """Packets sent by ``orig``."""
    orig_bytes: int = 0
    """Frame bytes sent by ``orig``."""
    resp_pkts: int = 0
    """Packets sent by the other endpoint."""
    resp_bytes: int = 0
    """Frame bytes sent by the other endpoint."""


def meter(path: Path) -> tuple[int, dict[FlowKey, Counters]]:
    """Read a classic pcap; return the packet count and the flow table."""
    flows: dict[FlowKey, Counters] = {}
    packets = 0
    with path.open("rb") as fh:
        for _ts, frame in dpkt.pcap.Reader(fh):
            packets += 1
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            l4 = ip.data
            if isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP):
                src: Endpoint = (ip.src, l4.sport)
                dst: Endpoint = (ip.dst, l4.dport)
            else:
                src, dst = (ip.src, 0), (ip.dst, 0)
            proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
            key: FlowKey = (proto, src, dst) if src <= dst else (proto, dst, src)
            c = flows.get(key)
            if c is None:
                c = flows[key] = Counters(src)
            if src == c.orig:
                c.orig_pkts += 1
                c.orig_bytes += len(frame)
            else:
                c.resp_pkts += 1
                c.resp_bytes += len(frame)
    return packets, flows


def show(ep: Endpoint) -> str:
    family = socket.AF_INET6 if len(ep[0]) == 16 else socket.AF_INET
    return f"{socket.inet_ntop(family, ep[0])}:{ep[1]}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="dpkt decode loop with a dict flow table")
    ap.add_argument("pcap", type=Path)
    ap.add_argument("--dump", action="store_true", help="print one line per flow")
    a = ap.parse_args(argv)
    packets, flows = meter(a.pcap)
    if a.dump:
        for (proto, x, y), c in flows.items():
            resp = y if c.orig == x else x
            print(f"{proto} {show(c.orig)} {show(resp)} {c.orig_pkts} {c.orig_bytes} "
                  f"{c.resp_pkts} {c.resp_bytes}")
    print(f"packets {packets}")
    print(f"flows {len(flows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
