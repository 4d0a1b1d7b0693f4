"""Running RTP state per stream, over a flow's whole life, in constant memory.

A stream is one (flow, direction, SSRC). For every batch the meter hands over
the RTP header fields of its packets; this module keeps, per stream, what RFC
3550 needs to judge the stream over all of its life — extended sequence
numbers (§A.1), the interarrival jitter estimate (§6.4.1 / §A.8), packets,
bytes, reordering, the packets that carried comfort noise — and appends one
row per stream and second: received packets and bytes, highest extended
sequence number, reordered packets, the jitter estimate at the end of the
second, and the minimum and maximum relative transit time (arrival − RTP
timestamp / clock, taken relative to the stream's first packet), whose trend
shows a queue building up.

Everything is vectorised over the batch; the only per-stream Python work is
one dict lookup per stream and batch. A stream is created only once three of
its packets are seen in one batch, two of them a forward sequence step after the
one before (a looser form of RFC 3550 §A.1's probation,
which wants consecutive numbers): random UDP payloads that merely look like
RTP never repeat an SSRC, and fixed fields that sit where RTP's would repeat the
sequence number too, so neither fills the table.

The clock rate comes from the static payload-type table (RFC 3551,
:mod:`probe.payload_types`) or, for dynamic types, from the ratio of timestamp
to arrival-time progress snapped to the common rates; until it is known, jitter
and transit are not computed.

Comfort noise is counted per packet, over the stream's whole life: static payload
type 13 (RFC 3551 table 4, format RFC 3389). A sender with silence suppression
interleaves it with its speech under one SSRC, so a stream's last payload type
says nothing about what the stream carried; the count does. Type 19, reserved
by RFC 3551 after drafts gave it to an earlier comfort-noise format, carries no
assigned meaning and is not counted; comfort noise on a dynamic type (RFC 3389
§4, other clock rates) is named only by SDP, which this module does not see.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from probe.payload_types import COMFORT_NOISE, RTP_CLOCKS, static_clock

__all__ = ["RtpStreams", "StreamState"]

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
NS = 1_000_000_000
ALPHA = 15.0 / 16.0
"""RFC 3550 §6.4.1 jitter smoothing: J += (|D| - J) / 16."""
BLOCK = 512
COMMON_CLOCKS = np.array(sorted(RTP_CLOCKS), dtype=np.float64)
MIN_NEW_STREAM = 3
MIN_SEQUENTIAL = 2
"""RFC 3550 §A.1: a source is valid once this many packets came in sequence."""
MAX_DROPOUT = 3000
"""RFC 3550 §A.1: the largest forward sequence step taken as loss, not a restart."""


def _forward_steps(seq: I64, starts: npt.NDArray[np.bool_], pos: I64) -> I64:
    """Per group of rows (``starts`` marks each group's first, ``pos`` where each starts;
    ``seq`` in arrival order within a group), how many packets came a forward step of at
    most MAX_DROPOUT after the one before: RFC 3550 §A.1's probation, looser (a step over
    lost packets counts; a repeated or wild number does not). Fields that merely sit where
    RTP's would (a NetBIOS transaction's flags, a QUIC connection ID) repeat the same
    "sequence number" in every packet."""
    step = (seq[1:] - seq[:-1]) & 0xFFFF
    fwd = np.zeros(len(seq), dtype=np.int64)
    fwd[1:] = (step >= 1) & (step <= MAX_DROPOUT) & ~starts[1:]
    out: I64 = np.add.reduceat(fwd, pos)
    return out


def _seg_start_pos(starts: npt.NDArray[np.bool_]) -> tuple[I64, I64]:
    pos = np.flatnonzero(starts)
    run = np.cumsum(starts) - 1
    return pos, run


def _seg_cumsum(x: I64, starts: npt.NDArray[np.bool_]) -> I64:
    c = np.cumsum(x)
    pos, run = _seg_start_pos(starts)
    out: I64 = c - (c - x)[pos][run]
    return out


def _iir(x: F64, starts: npt.NDArray[np.bool_], y0: F64) -> F64:
    """y[n] = ALPHA*y[n-1] + (1-ALPHA)*x[n] per segment, y[-1] = y0[segment]. Exact, blocked.

    Within a block of at most BLOCK elements the recursion has the closed form
    y[k] = a^(k+1) y[-1] + (1-a) a^k sum_{j<=k} a^(-j) x[j]; blocks of one
    segment are chained in order.
    """
    n = len(x)
    if n == 0:
        return np.zeros(0)
    pos, run = _seg_start_pos(starts)
    rank = np.arange(n) - pos[run]
    blk_starts = starts | (rank % BLOCK == 0)
    bpos, brun = _seg_start_pos(blk_starts)
    k = np.arange(n) - bpos[brun]
    w = ALPHA ** (-k.astype(np.float64)) * x
    nb = len(bpos)
    grid = np.zeros((nb, BLOCK))
    grid[brun, k] = w
    cs = np.cumsum(grid, axis=1)[brun, k]
    scale = ALPHA ** k.astype(np.float64)
    part = (1 - ALPHA) * scale * cs  # contribution of the block's own inputs
    y = np.empty(n)
    # Chain blocks: y_start of each block is the last y of the previous block of its segment.
    blk_is_seg_start = starts[bpos]
    blk_len = np.diff(np.append(bpos, n))
    y_prev = np.empty(nb)
    seg_of_blk = run[bpos]
    prev = 0.0
    for b in range(nb):
        if blk_is_seg_start[b]:
            prev = float(y0[seg_of_blk[b]])
        y_prev[b] = prev
        last = bpos[b] + blk_len[b] - 1
        prev = ALPHA ** float(k[last] + 1) * prev + float(part[last])
    y[:] = ALPHA ** (k + 1).astype(np.float64) * y_prev[brun] + part
    return y


class StreamState(NamedTuple):
    """A finished stream's state, handed to the flow record."""

    direction: int
    ssrc: int
    pt: int
    clock: int
    packets: int
    bytes: int
    cn_packets: int
    """Packets of payload type 13, comfort noise (RFC 3389)."""
    first_ext: int
    max_ext: int
    reordered: int
    jitter_s: float
    first_ts: float
    last_ts: float
    seconds: npt.NDArray[np.float64]
    """Rows (second, packets, bytes, max_ext_seq, reordered, jitter_s, transit_min_s,
    transit_max_s)."""


class RtpStreams:
    """Per-stream running state, structure of arrays indexed by stream id."""

    FIELDS_I = ("fid", "direction", "ssrc", "pt", "clock", "last_seq", "last_ext", "max_ext",
                "first_ext", "last_rts", "last_rts_ext", "r0", "s0", "packets", "bytes",
                "cn_packets", "reordered", "first_ns", "last_ns")
    FIELDS_F = ("jitter", "last_transit")

    def __init__(self) -> None:
        self.cap = 0
        self.n = 0
        self.index: dict[tuple[int, int, int], int] = {}
        self.by_flow: dict[int, list[int]] = {}
        self.free: list[int] = []
        self.i: dict[str, I64] = {f: np.zeros(0, dtype=np.int64) for f in self.FIELDS_I}
        self.f: dict[str, F64] = {f: np.zeros(0) for f in self.FIELDS_F}
        self.sec_chunks: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]

    def _alloc(self, k: int) -> I64:
        while len(self.free) < k:
            old = self.cap
            new = max(64, old * 2)
            for name in self.FIELDS_I:
                a = np.zeros(new, dtype=np.int64)
                a[:old] = self.i[name]
                self.i[name] = a
            for name in self.FIELDS_F:
                b = np.zeros(new)
                b[:old] = self.f[name]
                self.f[name] = b
            self.free.extend(range(new - 1, old - 1, -1))
            self.cap = new
        return np.asarray([self.free.pop() for _ in range(k)], dtype=np.int64)

    def update(self, fid: I64, direction: I64, ssrc: I64, seq: I64, rts: I64, pt: I64,
               ts: I64, size: I64) -> npt.NDArray[np.bool_]:
        """Fold one batch of RTP packets (in arrival order per flow) into the state.

        Returns which rows belong to a tracked stream.
        """
        n = len(fid)
        accepted = np.zeros(n, dtype=bool)
        if n == 0:
            return accepted
        skey = (fid * 2 + direction) * (1 << 32) + ssrc
        order = np.argsort(skey, kind="stable")
        sk = skey[order]
        starts = np.ones(n, dtype=bool)
        starts[1:] = sk[1:] != sk[:-1]
        pos, run = _seg_start_pos(starts)
        counts = np.diff(np.append(pos, n))
        g_fid = fid[order][pos].tolist()
        g_dir = direction[order][pos].tolist()
        g_ssrc = ssrc[order][pos].tolist()
        sid = np.full(len(pos), -1, dtype=np.int64)
        new_groups = []
        for g, key in enumerate(zip(g_fid, g_dir, g_ssrc, strict=True)):
            s = self.index.get(key)
            if s is not None:
                sid[g] = s
            elif counts[g] >= MIN_NEW_STREAM:
                new_groups.append(g)
        ng = np.asarray(new_groups, dtype=np.int64)
        if len(ng):  # new sources only: known streams need no probation
            ng = ng[_forward_steps(seq[order], starts, pos)[ng] >= MIN_SEQUENTIAL]
        if len(ng):
            ids = self._alloc(len(ng))
            sid[ng] = ids
            first_rows = order[pos[ng]]
            i = self.i
            i["fid"][ids] = fid[first_rows]
            i["direction"][ids] = direction[first_rows]
            i["ssrc"][ids] = ssrc[first_rows]
            i["last_seq"][ids] = (seq[first_rows] - 1) & 0xFFFF  # the first packet steps by 1
            base = (1 << 20) + seq[first_rows]
            i["last_ext"][ids] = base - 1
            i["max_ext"][ids] = base - 1
            i["first_ext"][ids] = base
            i["last_rts"][ids] = rts[first_rows]
            i["last_rts_ext"][ids] = (1 << 33) + rts[first_rows]
            i["r0"][ids] = ts[first_rows]
            i["s0"][ids] = (1 << 33) + rts[first_rows]
            i["first_ns"][ids] = ts[first_rows]
            i["clock"][ids] = static_clock(pt[first_rows])
            for g, s in zip(ng.tolist(), ids.tolist(), strict=True):
                key = (g_fid[g], g_dir[g], g_ssrc[g])
                self.index[key] = s
                self.by_flow.setdefault(g_fid[g], []).append(s)
            self.f["jitter"][ids] = 0.0
            self.f["last_transit"][ids] = np.nan
        keep_g = sid >= 0
        if not keep_g.any():
            return accepted
        keep_rows = keep_g[run]
        o = order[keep_rows]
        accepted[o] = True
        sid_r = sid[run][keep_rows]
        st = np.ones(len(o), dtype=bool)
        st[1:] = sid_r[1:] != sid_r[:-1]
        spos, srun = _seg_start_pos(st)
        s_ids = sid_r[spos]
        self._fold(s_ids, st, spos, srun, seq[o], rts[o], pt[o], ts[o], size[o], fid[o])
        return accepted

    def _fold(self, s_ids: I64, st: npt.NDArray[np.bool_], spos: I64, srun: I64, seq: I64,
              rts: I64, pt: I64, ts: I64, size: I64, fid: I64) -> None:
        i, f = self.i, self.f
        n = len(seq)
        # Extended sequence numbers (RFC 3550 A.1): unwrap 16-bit steps.
        prev_seq = np.empty(n, dtype=np.int64)
        prev_seq[1:] = seq[:-1]
        prev_seq[spos] = i["last_seq"][s_ids]
        step = ((seq - prev_seq + 32768) & 0xFFFF) - 32768
        base = i["last_ext"][s_ids]
        ext = base[srun] + _seg_cumsum(step, st)
        # Reordered: arrived with a sequence number below one already seen.
        carried = i["max_ext"][s_ids][srun]
        off = srun.astype(np.int64) << 42
        cm = np.maximum.accumulate(ext + off)
        prev_max = np.empty(n, dtype=np.int64)
        prev_max[1:] = cm[:-1]
        prev_max[spos] = carried[spos] + off[spos]
        prev_max = np.maximum(prev_max, carried + off)
        reord = (ext + off) < prev_max
        # RTP timestamps unwrapped (32-bit).
        prev_rts = np.empty(n, dtype=np.int64)
        prev_rts[1:] = rts[:-1]
        prev_rts[spos] = i["last_rts"][s_ids]
        rstep = ((rts - prev_rts + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        rts_ext = i["last_rts_ext"][s_ids][srun] + _seg_cumsum(rstep, st)
        # Clock rate: static table, else estimated from this batch's progress.
        clock = i["clock"][s_ids].copy()
        unknown = np.flatnonzero(clock == 0)
        if len(unknown):
            ends = np.append(spos[1:], n) - 1
            d_t = (ts[ends] - i["r0"][s_ids]) / NS
            d_r = (rts_ext[ends] - i["s0"][s_ids]).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(d_t > 0.5, d_r / d_t, 0.0)
            near = np.abs(COMMON_CLOCKS[None, :] - ratio[:, None]) / COMMON_CLOCKS[None, :]
            best = np.argmin(near, axis=1)
            good = near[np.arange(len(ratio)), best] < 0.15
            est = np.where(good, COMMON_CLOCKS[best], 0).astype(np.int64)
            clock[unknown] = est[unknown]
            i["clock"][s_ids[unknown]] = est[unknown]
        clk = clock[srun].astype(np.float64)
        have = clk > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            transit = np.where(have, (ts - i["r0"][s_ids][srun]) / NS
                               - (rts_ext - i["s0"][s_ids][srun]) / np.where(have, clk, 1.0),
                               np.nan)
        prev_tr = np.empty(n)
        prev_tr[1:] = transit[:-1]
        prev_tr[spos] = f["last_transit"][s_ids]
        d = np.abs(transit - prev_tr)
        d = np.where(np.isfinite(d), d, 0.0)
        jit = _iir(d, st, f["jitter"][s_ids])
        # Per-second rows.
        sec = ts // NS
        rs = st.copy()
        rs[1:] |= sec[1:] != sec[:-1]
        rpos = np.flatnonzero(rs)
        rend = np.append(rpos[1:], n) - 1
        seconds = {
            "fid": fid[rpos], "sid": s_ids[srun[rpos]], "sec": sec[rpos],
            "pkts": np.diff(np.append(rpos, n)), "bytes": np.add.reduceat(size, rpos),
            "max_ext": np.maximum.reduceat(ext, rpos), "reord": np.add.reduceat(reord, rpos),
            "jitter": jit[rend],
            "tmin": np.fmin.reduceat(transit, rpos), "tmax": np.fmax.reduceat(transit, rpos)}
        self.sec_chunks.append(seconds)
        if len(self.sec_chunks) > 64:
            self.sec_chunks = [{k: np.concatenate([c[k] for c in self.sec_chunks])
                                for k in self.sec_chunks[0]}]
        # Fold the batch into the state.
        ends = np.append(spos[1:], n) - 1
        i["last_seq"][s_ids] = seq[ends]
        i["last_ext"][s_ids] = ext[ends]
        i["max_ext"][s_ids] = np.maximum(carried[spos], np.maximum.reduceat(ext, spos))
        i["last_rts"][s_ids] = rts[ends]
        i["last_rts_ext"][s_ids] = rts_ext[ends]
        i["pt"][s_ids] = pt[ends]
        i["packets"][s_ids] += np.diff(np.append(spos, n))
        i["bytes"][s_ids] += np.add.reduceat(size, spos)
        i["cn_packets"][s_ids] += np.add.reduceat((pt == COMFORT_NOISE).astype(np.int64), spos)
        i["reordered"][s_ids] += np.add.reduceat(reord.astype(np.int64), spos)
        i["last_ns"][s_ids] = ts[ends]
        f["jitter"][s_ids] = jit[ends]
        last_tr = transit[ends]
        f["last_transit"][s_ids] = np.where(np.isfinite(last_tr), last_tr,
                                            f["last_transit"][s_ids])

    def take(self, fids: list[int]) -> dict[int, list[StreamState]]:
        """Remove the streams of finished flows and return them, per flow serial."""
        sids: list[int] = []
        for fid in fids:
            sids.extend(self.by_flow.pop(fid, ()))
        if not sids:
            return {}
        sid_arr = np.asarray(sids, dtype=np.int64)
        lookup = np.zeros(self.cap, dtype=bool)
        lookup[sid_arr] = True
        parts = []
        kept = []
        for c in self.sec_chunks:
            m = lookup[c["sid"]]
            if m.any():
                parts.append({k: v[m] for k, v in c.items()})
                if not m.all():
                    kept.append({k: v[~m] for k, v in c.items()})
            else:
                kept.append(c)
        self.sec_chunks = kept
        rows = ({k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts
                else None)
        i, f = self.i, self.f
        out: dict[int, list[StreamState]] = {}
        by_sid: dict[int, npt.NDArray[np.float64]] = {}
        if rows is not None:
            order = np.lexsort((rows["sec"], rows["sid"]))
            sid_sorted = rows["sid"][order]
            table = np.stack([rows[k][order].astype(np.float64) for k in
                              ("sec", "pkts", "bytes", "max_ext", "reord", "jitter", "tmin",
                               "tmax")], axis=1)
            bounds = np.flatnonzero(np.diff(sid_sorted)) + 1
            for chunk in np.split(np.arange(len(sid_sorted)), bounds):
                by_sid[int(sid_sorted[chunk[0]])] = _merge_seconds(table[chunk])
        for s in sids:
            fid = int(i["fid"][s])
            direction, ssrc = int(i["direction"][s]), int(i["ssrc"][s])
            out.setdefault(fid, []).append(StreamState(
                direction, ssrc, int(i["pt"][s]), int(i["clock"][s]), int(i["packets"][s]),
                int(i["bytes"][s]), int(i["cn_packets"][s]), int(i["first_ext"][s]),
                int(i["max_ext"][s]), int(i["reordered"][s]), float(f["jitter"][s]),
                int(i["first_ns"][s]) / NS, int(i["last_ns"][s]) / NS,
                by_sid.get(s, np.zeros((0, 8)))))
            del self.index[(fid, direction, ssrc)]
        for name in self.FIELDS_I:
            self.i[name][sid_arr] = 0
        self.free.extend(sids)
        return out


def _merge_seconds(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Rows of the same second (split across batches) merged; rows sorted by second."""
    if len(t) < 2 or not (t[1:, 0] == t[:-1, 0]).any():
        return t
    sec, inv = np.unique(t[:, 0], return_inverse=True)
    out = np.zeros((len(sec), t.shape[1]))
    out[:, 0] = sec
    for c in (1, 2, 4):
        out[:, c] = np.bincount(inv, weights=t[:, c], minlength=len(sec))
    out[:, 3] = -np.inf
    np.maximum.at(out[:, 3], inv, t[:, 3])
    last = np.zeros(len(sec), dtype=np.int64)
    last[inv] = np.arange(len(t))  # the later row of a second holds its final jitter
    out[:, 5] = t[last, 5]
    out[:, 6] = np.inf
    out[:, 7] = -np.inf
    np.fmin.at(out[:, 6], inv, t[:, 6])
    np.fmax.at(out[:, 7], inv, t[:, 7])
    out[:, 6] = np.where(np.isinf(out[:, 6]), np.nan, out[:, 6])
    out[:, 7] = np.where(np.isinf(out[:, 7]), np.nan, out[:, 7])
    return out
