"""Per-batch metering work that needs no flow-table state.

:func:`prepare` turns a decoded batch into a :class:`Prepared` batch: the
packets that belong to flows, grouped by their direction-free key and cut
where a flow must end whatever the table holds (an idle gap, a TCP SYN after a
close), plus the payload bytes and RTP header fields the flow records will
need. It never looks at the flow table, so it can run in another process than
:class:`~probe.meter.FlowMeter`; the capture buffer does not have to cross.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from probe.decode import KIND_FLOW, KIND_NONIP, Decoded
from probe.flowkey import KEY_WIDTH, canonical_key
from probe.layers import IcmpQuote, WeirdInfo
from probe.linklayer import LINK_ADDRESSES
from probe.plugins import PayloadPolicy, PayloadView
from probe.records import TcpFlag
from probe.sources import RawBatch
from probe.speed import out_of_band

__all__ = ["Prepared", "capture_origin", "clock_steps", "origin_digest", "prepare",
           "seg_rank"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
NS = 1_000_000_000
SPLIT_NONE, SPLIT_IDLE, SPLIT_REUSE, SPLIT_CLOCK = 0, 1, 2, 3
CLOCK_BACK_NS = NS
"""A packet stamped more than this before the packet read just before it is a clock step
back (a ``clock-backwards`` weird); smaller steps are ordinary reordering of capture queues."""
CLOCK_JUMP_NS = 86_400 * NS
"""A packet stamped more than a day after the packet read just before it is a clock jump
(a ``clock-jump`` weird): a clock set while capturing, or a corrupt timestamp."""
CLOCK_WEIRDS = 16
"""Clock steps per batch recorded as weirds; all are counted (``Prepared.clock_steps``), so
a capture whose every timestamp is wrong costs no more than one with none."""


@dataclass(slots=True)
class Prepared:
    """One batch, ready for the flow table. Packet arrays are in *sorted order*:
    grouped by flow key, file order within a group."""

    packets: int
    """Packet records in the batch."""
    frame0: int
    """Frame number of the batch's first packet."""
    ts_max: int
    """Newest timestamp in the batch (ns), or 0."""
    non_ip: int
    """Packets that were not IP."""
    slow: int
    """Packets decoded by the per-packet decoder."""
    weirds: list[tuple[int, int, WeirdInfo]]
    """(frame, ts ns, what) for each decoding problem."""
    weird_sorted: I64
    """For each weird, its packet's sorted position, or -1 if it belongs to no flow."""
    clock_steps: int
    """Packets whose timestamp stepped back or jumped ahead (the first ``CLOCK_WEIRDS`` of
    them are among ``weirds``)."""
    icmp: list[tuple[int, int, IcmpQuote]]
    """(frame, ts ns, quoted header) for each ICMP error."""
    frame: I64
    ts: I64
    proto: I64
    flags: I64
    side: I64
    """0 if the packet was sent by endpoint ``a`` of the key (the lower one)."""
    seq: I64
    ack: I64
    """TCP acknowledgement number (0 for other protocols)."""
    pay_len: I64
    wire: I64
    ipver: npt.NDArray[np.uint8]
    tunnel: npt.NDArray[np.uint8]
    group: I64
    """Key group of each packet (0..groups-1)."""
    gpos: I64
    """Sorted position of each group's first packet."""
    gkeys: U64
    """Key row of each group."""
    gl2: U64
    """Link-layer (MAC) addresses of each group's endpoints ``a`` and ``b`` as its first
    packet carried them (groups x 2; 0 where the link layer has none or does not say)."""
    split: npt.NDArray[np.bool_]
    """True where a new flow starts within the batch (group starts included)."""
    split_why: npt.NDArray[np.int8]
    """Why: ``SPLIT_IDLE`` or ``SPLIT_REUSE`` (0 at plain group starts)."""
    pay_pos: I64
    """Sorted positions of payload candidates (the first N per segment and side)."""
    pay_rank: I64
    """Rank of each candidate among its segment's payloads in that direction."""
    pay_off: I64
    """Offset of each candidate's bytes in ``pool``."""
    pay_n: I64
    """Length of each candidate's bytes."""
    pay_signal: npt.NDArray[np.bool_]
    """Candidates the payload policy keeps whole (``PayloadPolicy.keep_whole``)."""
    pool: bytes
    """Concatenated candidate payload bytes."""
    rtp_pos: I64
    """Sorted positions of packets that carry an RTP header."""
    rtp_off: npt.NDArray[np.uint8]
    rtp_seq: npt.NDArray[np.uint16]
    rtp_ts: npt.NDArray[np.uint32]
    rtp_ssrc: npt.NDArray[np.uint32]
    rtp_pt: npt.NDArray[np.uint8]
    rtp_mk: npt.NDArray[np.uint8]
    origin: bytes = b""
    """The capture's identity when this batch holds its first packet (frame 1), else
    empty: :func:`capture_origin` of that packet."""

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, tuple[Any, ...]]:
        return out_of_band(self, int(protocol), "pool")

    @property
    def metered(self) -> int:
        return int(self.ts.shape[0])


def _be48(arr: npt.NDArray[np.uint8], idx: I64) -> U64:
    b = arr[np.clip(idx[:, None] + np.arange(6), 0, max(len(arr) - 1, 0))].astype(np.uint64)
    out: U64 = np.zeros(len(idx), dtype=np.uint64)
    for k in range(6):
        out = (out << np.uint64(8)) | b[:, k]
    return out


def group_l2(b: RawBatch, bi: I64, side: I64) -> U64:
    """The link-layer addresses of endpoints ``a`` and ``b`` (one row per packet ``bi``
    of batch ``b``, sent by endpoint ``side``), where the link header writes them
    (:data:`probe.linklayer.LINK_ADDRESSES`): Ethernet gives both, Linux cooked captures
    the sender's only. 0 stands for unknown."""
    out = np.zeros((len(bi), 2), dtype=np.uint64)
    if not len(bi) or not len(b.buf):
        return out
    arr = np.frombuffer(b.buf, dtype=np.uint8)
    off, cap, lt = b.data_off[bi], b.caplen[bi], b.linktype[bi]
    src = np.zeros(len(bi), dtype=np.uint64)
    dst = np.zeros(len(bi), dtype=np.uint64)
    top = max(len(arr) - 1, 0)
    for linktype, layout in LINK_ADDRESSES.items():
        rows = (lt == linktype) & (cap >= layout.header_len)
        if not rows.any():
            continue
        if layout.length_at is not None:
            length = np.zeros(len(bi), dtype=np.int64)
            for k in range(layout.length_width):
                length = (length << 8) | arr[np.minimum(off + layout.length_at + k, top)]
            rows &= length == 6
        src = np.where(rows, _be48(arr, off + layout.src_at), src)
        if layout.dst_at is not None:
            dst = np.where(rows, _be48(arr, off + layout.dst_at), dst)
    from_a = side == 0
    out[:, 0] = np.where(from_a, src, dst)
    out[:, 1] = np.where(from_a, dst, src)
    return out


def capture_origin(b: RawBatch) -> bytes:
    """The identity of the capture a batch starts (frame 1; empty for any other batch): a
    BLAKE2b digest of its first packet, link type, timestamp, lengths and captured
    bytes. Every entry point sees this packet first and whole (a file read in batches,
    a stream through :class:`~probe.pcapstream.PcapStream`, the ring it is kept in), so
    flow uids made with it are the same whichever way the capture is read, and differ
    between captures that do not begin with the same packet at the same time."""
    if b.frame0 != 1 or not len(b):
        return b""
    off, n = int(b.data_off[0]), int(b.caplen[0])
    return origin_digest(int(b.linktype[0]), int(b.ts_ns[0]), int(b.wirelen[0]),
                         memoryview(b.buf)[off:off + n])


def origin_digest(linktype: int, ts_ns: int, wirelen: int, data: bytes | memoryview) -> bytes:
    """The capture identity a first packet gives (:func:`capture_origin`); the capture ring
    computes it too, from the first record it keeps."""
    h = hashlib.blake2b(digest_size=8, person=b"marsad-origin")
    h.update(struct.pack(">iqqq", linktype, ts_ns, wirelen, len(data)))
    h.update(data)
    return h.digest()


def mix(k: U64) -> U64:
    """A 64-bit hash of each key row (splitmix-style finaliser over the columns)."""
    h = np.zeros(k.shape[0], dtype=np.uint64)
    for j in range(k.shape[1]):
        h ^= k[:, j] + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


def seg_rank(seg: I64) -> I64:
    """Position of each element within its run of equal values (input grouped)."""
    n = len(seg)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.ones(n, dtype=bool)
    start[1:] = seg[1:] != seg[:-1]
    first = np.flatnonzero(start)
    run = np.cumsum(start) - 1
    out: I64 = np.arange(n, dtype=np.int64) - first[run]
    return out


def _segmented_any_before(flag: npt.NDArray[np.bool_], seg_start: npt.NDArray[np.bool_]
                          ) -> npt.NDArray[np.bool_]:
    """For each element: was ``flag`` set on an earlier element of the same segment?"""
    c: I64 = np.cumsum(flag, dtype=np.int64)
    before = c - flag  # set flags strictly before each element
    start_pos = np.flatnonzero(seg_start)
    run = np.cumsum(seg_start) - 1
    out: npt.NDArray[np.bool_] = np.greater(before - before[start_pos][run], 0)
    return out


def clock_steps(ts: I64, before: int | None) -> tuple[list[tuple[int, WeirdInfo]], int]:
    """Packets of a batch (file order) whose timestamp went back more than ``CLOCK_BACK_NS``
    or ahead more than ``CLOCK_JUMP_NS`` from the packet before (``before``: the previous
    batch's last, if any): the first ``CLOCK_WEIRDS`` as (index, weird), and how many."""
    if not len(ts):
        return [], 0
    prev = np.empty_like(ts)
    prev[1:] = ts[:-1]
    prev[0] = ts[0] if before is None else before
    # Compared without subtracting: timestamps may sit anywhere in the int64 range.
    back = ts < prev
    back[back] = (prev[back] - CLOCK_BACK_NS) > ts[back]
    jump = ts > prev
    jump[jump] = (ts[jump] - CLOCK_JUMP_NS) > prev[jump]
    hit = np.flatnonzero(back | jump)
    kept = [(i, WeirdInfo("clock", 0, "clock-backwards" if back[i] else "clock-jump"))
            for i in hit[:CLOCK_WEIRDS].tolist()]
    return kept, len(hit)


def _backward_splits(ts_s: I64, proto_s: I64, gpos: I64, groups: I64, idle_ns: I64,
                     split: npt.NDArray[np.bool_], why: npt.NDArray[np.int8]) -> None:
    """Start a new flow where a packet is stamped more than its idle timeout before the
    newest packet of its flow so far (``groups``: the key groups where that may happen).

    A forward gap that long already starts a new flow; doing the same backwards keeps every
    flow's packets within its idle timeout of the flow's time, however wrong a timestamp is,
    so what a flow's per-second series cost is bounded by its active timeout."""
    ends = np.append(gpos[1:], len(ts_s))
    for g in groups.tolist():
        a, z = int(gpos[g]), int(ends[g])
        lim = int(idle_ns[proto_s[a]])
        newest = int(ts_s[a])
        for q, t in enumerate(ts_s[a + 1:z].tolist(), a + 1):
            if split[q] or t < newest - lim:
                if not split[q]:
                    split[q] = True
                    why[q] = SPLIT_CLOCK
                newest = t
            elif t > newest:
                newest = t


def prepare(b: RawBatch, cols: Decoded, idle_ns: I64, payload_samples: int,
            snaps: tuple[int, int, int], payloads: PayloadPolicy,
            ts_before: int | None = None) -> Prepared:
    """Group a decoded batch by flow key and extract what the records need: payloads
    and RTP headers as ``payloads`` declares (:mod:`probe.plugins`).

    ``ts_before`` is the timestamp of the packet read just before the batch, if any (a
    clock step between two batches is found as one within a batch)."""
    n_all = len(b)
    idx = np.flatnonzero(cols.kind == KIND_FLOW)
    n = len(idx)
    keys, src_is_a = canonical_key(cols, idx)
    if n:
        h = mix(keys)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        if not np.array_equal(keys, keys[first][inv.reshape(-1)]):  # 64-bit hash collision
            _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        order = np.argsort(inv, kind="stable")
    else:
        first = np.zeros(0, dtype=np.int64)
        inv = np.zeros(0, dtype=np.int64)
        order = np.zeros(0, dtype=np.int64)
    pidx = idx[order]
    g_s = inv[order]
    ts_s = b.ts_ns[pidx]
    proto_s = cols.proto[pidx].astype(np.int64)
    flags_s = cols.flags[pidx].astype(np.int64)
    side_s = (~src_is_a[order]).astype(np.int64)
    pay_s = cols.pay_len[pidx]
    gstart = np.ones(n, dtype=bool)
    if n:
        gstart[1:] = g_s[1:] != g_s[:-1]
    gpos = np.flatnonzero(gstart)

    # Splits that hold whatever the table says: idle gaps, a SYN after FIN both ways or RST.
    gap = np.zeros(n, dtype=np.int64)
    if n:
        gap[1:] = ts_s[1:] - ts_s[:-1]
    idle_split = ~gstart & (gap > idle_ns[proto_s])
    split = gstart | idle_split
    why = np.where(idle_split, SPLIT_IDLE, SPLIT_NONE).astype(np.int8)
    if n_all:
        # Only a packet more than the shortest idle timeout behind the newest one of the
        # whole batch can be that far behind the newest of its flow: most batches stop here.
        ts_all = b.ts_ns
        behind = ts_all[idx] < np.maximum.accumulate(ts_all)[idx] - int(idle_ns.min())
        if behind.any():
            sorted_pos = np.empty(n, dtype=np.int64)
            sorted_pos[order] = np.arange(n)
            _backward_splits(ts_s, proto_s, gpos, np.unique(g_s[sorted_pos[behind]]), idle_ns,
                             split, why)
    tcp = proto_s == 6
    pure_syn = tcp & ((flags_s & (TcpFlag.SYN | TcpFlag.ACK)) == TcpFlag.SYN)
    if pure_syn.any():
        rst = tcp & ((flags_s & TcpFlag.RST) != 0)
        fin_a = tcp & ((flags_s & TcpFlag.FIN) != 0) & (side_s == 0)
        fin_b = tcp & ((flags_s & TcpFlag.FIN) != 0) & (side_s == 1)
        # Each round splits at the first SYN after a close in each flow; the SYNs after it
        # (its retransmissions, a mirror port's copies) belong to the flow it starts,
        # which the next round looks at afresh. A connection reused more often than the
        # rounds allow stays one flow past the last of them.
        for _ in range(64):
            closed = (_segmented_any_before(rst, split)
                      | (_segmented_any_before(fin_a, split)
                         & _segmented_any_before(fin_b, split)))
            new = pure_syn & closed & ~split
            new &= ~_segmented_any_before(new, split)
            if not new.any():
                break
            split |= new
            why[new] = SPLIT_REUSE

    # Payload candidates: the first N payloads per segment and direction.
    pay_cap_s = cols.pay_cap[pidx]
    seg = np.cumsum(split) - 1
    has_pay = np.flatnonzero(pay_cap_s > 0)
    ss = seg[has_pay] * 2 + side_s[has_pay]
    o = np.argsort(ss, kind="stable")
    cand = has_pay[o]
    rank = seg_rank(ss[o])
    # Payloads the policy keeps whole are candidates whatever their rank (a SIP dialog's
    # outcome, RTCP reports may come late).
    arr = np.frombuffer(b.buf, dtype=np.uint8)
    if payloads.keep_whole:
        cpo = cols.pay_off[pidx][cand]
        chead = arr[np.minimum(cpo[:, None] + np.arange(4), max(len(b.buf) - 1, 0))].astype(
            np.uint32)
        cfirst4 = (chead[:, 0] << 24) | (chead[:, 1] << 16) | (chead[:, 2] << 8) | chead[:, 3]
        csig = payloads.keeps_whole(cfirst4) & (pay_cap_s[cand] >= 4)
    else:
        csig = np.zeros(len(cand), dtype=bool)
    keep = (rank < payload_samples) | csig
    pay_pos = cand[keep]
    pay_rank = rank[keep]
    o2 = np.argsort(pay_pos, kind="stable")
    pay_pos, pay_rank = pay_pos[o2], pay_rank[o2]
    po = cols.pay_off[pidx][pay_pos]
    snap = snaps[0]
    # Whether a sample is one of its flow's first few is known only to the flow table, which
    # cuts the later ones down to ``tail`` bytes; signalling messages stay whole.
    signalling = csig[keep][o2]
    pn = np.minimum(pay_cap_s[pay_pos], snap)
    # A candidate that is not among the first few of its flow in this batch is not among
    # the first few of the flow either: it can be cut down here already (most of the
    # bytes a batch carries are otherwise of long flows whose first samples are long kept).
    later = (pay_rank >= snaps[1]) & ~signalling
    pn[later] = np.minimum(pn[later], snaps[2])
    pstart = np.cumsum(pn) - pn
    mv = memoryview(b.buf)
    pool = b"".join([mv[a:a + ln] for a, ln in zip(po.tolist(), pn.tolist(), strict=True)])

    # RTP header fields of UDP payloads, plain or behind a framing the policy declares.
    udp = np.flatnonzero((proto_s == 17) & (pay_cap_s >= 12))
    rtp_pos = np.zeros(0, dtype=np.int64)
    rtp_off = np.zeros(0, dtype=np.int64)
    rb = np.zeros((0, 12), dtype=np.int64)
    if len(udp):
        top = len(b.buf) - 1
        upo = cols.pay_off[pidx][udp]
        off = payloads.rtp_offsets(PayloadView(arr, upo, pay_cap_s[udp],
                                                  cols.pay_len[pidx][udp]))
        ok = off >= 0
        rtp_pos = udp[ok]
        rtp_off = off[ok]
        base = upo[ok] + rtp_off
        rb = arr[np.minimum(base[:, None] + np.arange(12), top)].astype(np.int64)

    clock, n_clock = clock_steps(b.ts_ns, ts_before)
    weirds = sorted([*cols.weirds, *clock], key=lambda w: w[0]) if clock else cols.weirds
    weird_sorted = np.full(len(weirds), -1, dtype=np.int64)
    if weirds:
        where = np.full(n_all, -1, dtype=np.int64)
        where[pidx] = np.arange(n)
        weird_sorted = where[np.asarray([i for i, _ in weirds], dtype=np.int64)]
    ts_list = b.ts_ns
    return Prepared(
        packets=n_all, frame0=b.frame0, ts_max=int(ts_list.max()) if n_all else 0,
        non_ip=int(np.count_nonzero(cols.kind == KIND_NONIP)), slow=cols.slow,
        weirds=[(b.frame0 + i, int(ts_list[i]), w) for i, w in weirds],
        weird_sorted=weird_sorted, clock_steps=n_clock,
        icmp=[(b.frame0 + i, int(ts_list[i]), q) for i, q in cols.icmp],
        frame=b.frame0 + pidx, ts=ts_s, proto=proto_s, flags=flags_s, side=side_s,
        seq=cols.seq[pidx], ack=cols.ack[pidx], pay_len=pay_s, wire=b.wirelen[pidx],
        ipver=cols.ipver[pidx], tunnel=cols.tunnel[pidx], group=g_s, gpos=gpos,
        gkeys=np.ascontiguousarray(keys[first]) if n else np.zeros((0, KEY_WIDTH), np.uint64),
        gl2=group_l2(b, pidx[gpos], side_s[gpos]),
        split=split, split_why=why,
        pay_pos=pay_pos, pay_rank=pay_rank, pay_off=pstart, pay_n=pn, pay_signal=signalling,
        pool=pool,
        rtp_pos=rtp_pos, rtp_off=rtp_off.astype(np.uint8),
        rtp_seq=((rb[:, 2] << 8) | rb[:, 3]).astype(np.uint16),
        rtp_ts=((rb[:, 4] << 24) | (rb[:, 5] << 16) | (rb[:, 6] << 8) | rb[:, 7]).astype(
            np.uint32),
        rtp_ssrc=((rb[:, 8] << 24) | (rb[:, 9] << 16) | (rb[:, 10] << 8) | rb[:, 11]).astype(
            np.uint32),
        rtp_pt=(rb[:, 1] & 0x7F).astype(np.uint8), rtp_mk=(rb[:, 1] >> 7).astype(np.uint8),
        origin=capture_origin(b))
