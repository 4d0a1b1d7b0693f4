"""Every packet cut short, and junk, becomes a counted weird or a flow — never a crash.

Real packets come from the project's generated captures (every link type and
encapsulation); each is cut at every length and also flipped at random bytes.
The fast columnar path and the per-packet path must agree on whole packets.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np

from probe.decode import KIND_FLOW, Decoder
from probe.layers import SlowDecoder
from probe.sources import RawBatch, open_source

CAPTURES = Path(__file__).resolve().parents[3] / "captures"
SOURCES = ["sample-call.pcap", "encap-vlan.pcap", "encap-gre.pcap", "encap-vxlan.pcap",
           "encap-gtpu.pcap", "encap-mpls.pcap", "ipv6-ext.pcap", "lt-sll2.pcap",
           "lt-null.pcap", "icmp-errors.pcap", "encap-erspan.pcap"]


def _packets(name: str) -> list[tuple[bytes, int]]:
    out = []
    for b in open_source(CAPTURES / name).batches():
        for off, cap, lt in zip(b.data_off.tolist(), b.caplen.tolist(), b.linktype.tolist(),
                                strict=True):
            out.append((bytes(b.buf[off:off + cap]), lt))
    return out


def _batch(pkts: list[tuple[bytes, int, int]]) -> RawBatch:
    buf = b"".join(p for p, _, _ in pkts)
    offs = np.cumsum([0] + [len(p) for p, _, _ in pkts[:-1]]).astype(np.int64)
    return RawBatch(buf, offs, np.asarray([len(p) for p, _, _ in pkts], np.int64),
                    np.asarray([w for _, w, _ in pkts], np.int64),
                    np.arange(len(pkts), dtype=np.int64) * 1000,
                    np.asarray([lt for _, _, lt in pkts], np.int32), 1)


def test_fast_and_slow_paths_agree_on_whole_packets() -> None:
    slow = SlowDecoder()
    for name in SOURCES:
        pkts = _packets(name)
        cols = Decoder().decode(_batch([(p, len(p), lt) for p, lt in pkts]))
        for i, (p, lt) in enumerate(pkts):
            info, _ = slow.decode(p, 0, len(p), len(p), lt, 0)
            if info is None:
                assert cols.kind[i] != KIND_FLOW, (name, i)
                continue
            assert cols.kind[i] == KIND_FLOW, (name, i)
            assert (int(cols.proto[i]), int(cols.sport[i]), int(cols.dport[i])) == (
                info.proto, info.sport, info.dport), (name, i)
            assert int(cols.pay_len[i]) == info.pay_len, (name, i)


def test_every_truncation_and_junk_is_handled() -> None:
    rnd = random.Random(1234)
    cut: list[tuple[bytes, int, int]] = []
    for name in SOURCES:
        for p, lt in _packets(name)[:6]:
            for n in range(len(p)):
                cut.append((p[:n], len(p), lt))  # snaplen cut: wire length is the original
                cut.append((p[:n], n, lt))  # the packet itself is short
            for _ in range(20):
                q = bytearray(p)
                for _ in range(3):
                    q[rnd.randrange(len(q))] = rnd.getrandbits(8)
                cut.append((bytes(q), len(q), lt))
    cut.append((bytes(rnd.getrandbits(8) for _ in range(200)), 200, 1))
    cut.append((struct.pack("!H", 0x0800), 2, 1))
    cols = Decoder().decode(_batch(cut))
    assert len(cols.kind) == len(cut)
    assert cols.weirds, "junk must produce weird records"
    for i, w in cols.weirds:
        assert 0 <= w.offset <= len(cut[i][0]) + 64
        assert w.layer and w.reason
