"""Cutting a flow's packets out of a capture, and writing packets as a capture file.

:func:`cut_packets` re-reads a capture and keeps the packets the probe's decoder
puts in the given flows (the same key, :mod:`probe.flowkey`, and frames between
the flow's first and last); :func:`capture_bytes` writes packets as a pcap (one
link type) or pcapng (several) with nanosecond timestamps; :func:`packet_addresses`
reads packets back and lists every address the decoder sees in them (flow
endpoints at the innermost layer and the addresses ICMP errors quote).

References: pcap (draft-ietf-opsawg-pcap section 4 file header, 5 record),
pcapng (draft-ietf-opsawg-pcapng sections 4.1 SHB, 4.2 IDB with ``if_tsresol``,
4.3 EPB).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe.decode import KIND_FLOW, Decoder, split_addr
from probe.flowkey import canonical_key, record_key
from probe.records import FlowRecord
from probe.sources import PCAP_MAGIC_NS, PCAPNG_BOM, PCAPNG_SHB, open_source

__all__ = ["CutPacket", "capture_bytes", "cut_packets", "packet_addresses"]

_SNAPLEN = 262144
_EPB, _IDB = 6, 1


@dataclass(frozen=True, slots=True)
class CutPacket:
    """One packet cut out of a capture."""

    frame: int
    """1-based position in the original capture."""
    ts_ns: int
    """Timestamp, nanoseconds since the epoch."""
    wirelen: int
    """Length on the wire."""
    linktype: int
    """Link type of the packet."""
    data: bytes
    """The captured bytes."""


@dataclass(slots=True)
class _Target:
    flow: FlowRecord
    row: tuple[int, int, int, int, int]
    """The flow's key, all but the zone."""
    zone: int | None = None
    """The zone of the packet at its first frame, once seen."""


def cut_packets(source: str | Path, flows: Sequence[FlowRecord],
                extra_frames: Iterable[int] = ()) -> list[CutPacket]:
    """The packets of ``flows``, re-read from the capture, in capture order.

    A packet belongs to a flow when the probe's decoder gives it the flow's key
    (both endpoints, protocol, VLAN; for tunnels the inner header) and its frame
    lies between the flow's first and last frame. ``extra_frames`` (ICMP errors
    quoting the flows) are kept too.
    """
    targets = [_Target(f, record_key(f)) for f in flows]
    extra = set(extra_frames)
    last = max([f.last_frame for f in flows] + list(extra), default=0)
    out: list[CutPacket] = []
    decoder = Decoder()
    with open_source(source) as src:
        for b in src.batches():
            n = len(b)
            if n == 0:
                continue
            if b.frame0 > last:
                break
            cols = decoder.decode(b)
            frames = b.frame0 + np.arange(n, dtype=np.int64)
            keep = np.isin(frames, np.fromiter(extra, dtype=np.int64, count=len(extra)))
            idx = np.flatnonzero(cols.kind == KIND_FLOW)
            if len(idx):
                keys, _ = canonical_key(cols, idx)
                fr = frames[idx]
                for t in targets:
                    m = ((keys[:, 0] == np.uint64(t.row[0])) & (keys[:, 1] == np.uint64(t.row[1]))
                         & (keys[:, 2] == np.uint64(t.row[2]))
                         & (keys[:, 3] == np.uint64(t.row[3]))
                         & (keys[:, 4] == np.uint64(t.row[4]))
                         & (fr >= t.flow.first_frame) & (fr <= t.flow.last_frame))
                    hit = np.flatnonzero(m)
                    if not len(hit):
                        continue
                    zones = keys[hit, 5]
                    if t.zone is None:
                        first = np.flatnonzero(fr[hit] == t.flow.first_frame)
                        t.zone = int(zones[first[0]] if len(first) else zones[0])
                    keep[idx[hit[zones == np.uint64(t.zone)]]] = True
            for i in np.flatnonzero(keep).tolist():
                off = int(b.data_off[i])
                out.append(CutPacket(int(frames[i]), int(b.ts_ns[i]), int(b.wirelen[i]),
                                     int(b.linktype[i]), bytes(b.buf[off:off + int(b.caplen[i])])))
    return out


def capture_bytes(packets: Sequence[CutPacket]) -> tuple[str, bytes]:
    """The packets as a capture file: (name, bytes).

    One link type gives a nanosecond pcap (``packets.pcap``); several give a
    pcapng with one interface per link type (``packets.pcapng``).
    """
    linktypes = sorted({p.linktype for p in packets}) or [1]
    if len(linktypes) == 1:
        out = io.BytesIO()
        out.write(struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, _SNAPLEN, linktypes[0]))
        for p in packets:
            sec, ns = divmod(p.ts_ns, 1_000_000_000)
            out.write(struct.pack("<IIII", sec, ns, len(p.data), p.wirelen))
            out.write(p.data)
        return "packets.pcap", out.getvalue()
    return "packets.pcapng", _pcapng(packets, linktypes)


def _block(kind: int, body: bytes) -> bytes:
    pad = b"\0" * (-len(body) % 4)
    total = 12 + len(body) + len(pad)
    return struct.pack("<II", kind, total) + body + pad + struct.pack("<I", total)


def _pcapng(packets: Sequence[CutPacket], linktypes: list[int]) -> bytes:
    # Section header, one interface per link type with if_tsresol = 10^-9 (option 9).
    out = [_block(PCAPNG_SHB, struct.pack("<IHHq", PCAPNG_BOM, 1, 0, -1))]
    tsresol = struct.pack("<HHB3x", 9, 1, 9) + struct.pack("<HH", 0, 0)
    iface = {}
    for i, lt in enumerate(linktypes):
        iface[lt] = i
        out.append(_block(_IDB, struct.pack("<HHI", lt, 0, _SNAPLEN) + tsresol))
    for p in packets:
        body = struct.pack("<IIIII", iface[p.linktype], p.ts_ns >> 32, p.ts_ns & 0xFFFFFFFF,
                           len(p.data), p.wirelen) + p.data
        out.append(_block(_EPB, body))
    return b"".join(out)


def packet_addresses(packets: Sequence[CutPacket]) -> Iterator[tuple[int, tuple[int, int]]]:
    """(index in ``packets``, address as :func:`~probe.flowkey.pack_addr` halves) of every
    address the probe's decoder finds in the packets: both ends of each packet's flow
    (its innermost header) and the ends of every header an ICMP error quotes."""
    if not packets:
        return
    _, data = capture_bytes(packets)
    decoder = Decoder()
    with open_source(io.BytesIO(data)) as src:
        for b in src.batches():
            cols = decoder.decode(b)
            base = b.frame0 - 1
            for j in np.flatnonzero(cols.kind == KIND_FLOW).tolist():
                yield base + j, (int(cols.src_hi[j]), int(cols.src_lo[j]))
                yield base + j, (int(cols.dst_hi[j]), int(cols.dst_lo[j]))
            for j, q in cols.icmp:
                yield base + j, split_addr(q.src, q.ipver)
                yield base + j, split_addr(q.dst, q.ipver)
