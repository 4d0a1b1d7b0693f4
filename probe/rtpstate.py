"""Running RTP state per stream, over a flow's whole life, in constant memory (but for
the packets of a dynamic payload type that wait, a few seconds of them, for its clock).

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

Everything is vectorised over the batch; the per-stream Python work is one dict
lookup per stream and batch, and reading the clock of a dynamic payload type. A stream
counts once three of its packets have been seen, two of them a forward sequence step
after the one before (a looser form of RFC 3550 §A.1's probation, which wants
consecutive numbers): random UDP payloads that merely look like RTP never repeat an
SSRC, and fixed fields that sit where RTP's would repeat the sequence number too. Until
then the source is a *candidate*, followed from its first packet like a stream, so that
what a stream comes to does not depend on where the batches were cut (a live stream's
batches end where the pipe ran dry). A candidate still one when its flow ends is not
reported, and the meter drops its packets from the flow's RTP series; one that has sent
nothing for ``CANDIDATE_IDLE_S`` of capture time is forgotten at the end of a batch, so
that look-alike payloads leave bounded state behind. Only there do batches still
matter: a source silent that long before its third packet may keep or lose its first
packets depending on where a batch ended (no call's stream pauses that long as it
starts).

The clock rate comes from the static payload-type table (RFC 3551,
:mod:`probe.payload_types`) or, for dynamic types, from the stream's own timestamp
progress per second of arrival, snapped to the common rates: the median over its
first ``CLOCK_SECONDS`` seconds (one timestamp jump at a stream's start must not turn
48 kHz into 90 kHz), or over what a shorter stream had. The packets that arrive before
it is known wait; their transit and jitter are worked out once it is, as if it had been
known from the first packet. Everything here is thus the same however the packets were
cut into batches (floating-point sums aside, in the last bits).

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
COMMON_CLOCKS = tuple(sorted(RTP_CLOCKS))
CLOCK_SECONDS = 6
"""A dynamic payload type's clock is read once a stream has had packets in this many
seconds (of arrival time): the median of the RTP timestamp progress per second of arrival
between the first packets of consecutive seconds, read again at each further second
while it fits no common rate (up to ``MAX_CLOCK_SECONDS``). Read from the stream's first
packet over a shorter span, one jump of its timestamps at the start (a sender that
resumed, a burst of buffered audio) makes 48 kHz read as 90 kHz; the median of five
seconds lets two of them go astray."""
MIN_CLOCK_SPAN_S = 0.5
"""A stream that ends before its clock was read gets the median of the seconds it had
when it had three readings or more, else the progress over its whole life if that
lasted this long (else no clock)."""
MAX_CLOCK_SECONDS = 12
"""A stream whose progress fits no common clock by its this-many-th second is given none
(no transit or jitter)."""
CLOCK_MATCH = 0.15
"""How near (relative) the timestamp progress must be to a common clock rate."""
_NO_CLOCK = -1
"""``clock`` of a stream whose progress fit no common clock."""
CANDIDATE_IDLE_S = 10.0
"""A source still on probation that sent nothing for this long is forgotten (its next
packet, if any, starts it again): what random payloads leave behind stays bounded."""
MIN_NEW_STREAM = 3
"""Packets a source must have sent to count as a stream (``MIN_SEQUENTIAL`` too)."""
MIN_SEQUENTIAL = 2
"""Forward sequence steps (each at most ``MAX_DROPOUT``) its packets must have made: RFC
3550 §A.1's probation, which wants this many packets in sequence, made looser."""
MAX_DROPOUT = 3000
"""RFC 3550 §A.1: the largest forward sequence step taken as loss, not a restart."""


def _read_clock(t: I64, r: I64, r0: int, at_end: bool = False) -> int:
    """The clock a stream's packets (arrival ns ``t``, extended RTP timestamps ``r``, in
    arrival order; ``r0`` its first arrival) run at: 0 while it cannot be told yet, -1
    once it fits none (:data:`MAX_CLOCK_SECONDS`). ``at_end``: the stream ended, read what it
    had: the per-second median over three seconds or more, else the progress over its
    whole life if that lasted :data:`MIN_CLOCK_SPAN_S`."""
    seconds = (int(t[-1]) - r0) // NS + 1
    if seconds >= (4 if at_end else CLOCK_SECONDS):  # enough seconds to read
        sec = (t - r0) // NS
        first = np.flatnonzero(np.r_[True, sec[1:] != sec[:-1]])  # each second's first packet
        dt = np.diff(t[first]) / NS
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = np.diff(r[first]) / dt
        for k in range(CLOCK_SECONDS - 1, min(len(rate), MAX_CLOCK_SECONDS - 1) + 1):
            c = _nearest_clock(float(np.median(rate[:k])))
            if c:
                return c
        if len(rate) >= MAX_CLOCK_SECONDS - 1:
            return _NO_CLOCK
        if at_end and len(rate) >= 3:
            return _nearest_clock(float(np.median(rate)))
    if not at_end:
        return 0
    span = (int(t[-1]) - r0) / NS
    if span < MIN_CLOCK_SPAN_S:
        return 0
    return _nearest_clock((int(r[-1]) - int(r[0])) / span)


def _nearest_clock(rate: float) -> int:
    """The common clock within :data:`CLOCK_MATCH` of ``rate``, or 0."""
    c = min(COMMON_CLOCKS, key=lambda c: abs(c - rate) / c)
    return c if abs(c - rate) / c < CLOCK_MATCH else 0


def _jitter(transit: F64, st: npt.NDArray[np.bool_], spos: I64, last_transit: F64,
            jitter: F64) -> F64:
    """The RFC 3550 §6.4.1 jitter estimate after each packet of streams laid end to end
    (``st`` marks each stream's first packet, at ``spos``), from each stream's last
    transit and jitter before them; a packet without a transit (NaN) moves nothing."""
    prev = np.empty(len(transit))
    prev[1:] = transit[:-1]
    prev[spos] = last_transit
    d = np.abs(transit - prev)
    return _iir(np.where(np.isfinite(d), d, 0.0), st, jitter)


def _seconds(ts: I64, st: npt.NDArray[np.bool_]) -> tuple[I64, I64, I64]:
    """Each packet's second, and the first and last packet of each stream's seconds
    (streams laid end to end, ``st`` marking each one's first packet)."""
    n = len(ts)
    sec = ts // NS
    rs = st.copy()
    rs[1:] |= sec[1:] != sec[:-1]
    rpos = np.flatnonzero(rs)
    return sec, rpos, np.append(rpos[1:], n) - 1


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
                "cn_packets", "reordered", "first_ns", "last_ns", "forward", "valid")
    FIELDS_F = ("jitter", "last_transit")

    def __init__(self, quality: bool = True) -> None:
        self.quality = quality
        """Whether each stream's clock, transit, jitter and per-second rows are worked
        out (what the classifier and the calls read). Without, a stream's state says only
        that it is one, its packets, bytes and sequence figures: what a flow's conn.log
        columns count (``marsad flows``), at a fraction of the cost."""
        self.cap = 0
        self.n = 0
        self.index: dict[tuple[int, int, int], int] = {}
        self.by_flow: dict[int, list[int]] = {}
        self.free: list[int] = []
        self.i: dict[str, I64] = {f: np.zeros(0, dtype=np.int64) for f in self.FIELDS_I}
        self.f: dict[str, F64] = {f: np.zeros(0) for f in self.FIELDS_F}
        self.sec_chunks: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
        self.stale: list[int] = []
        """Slots of forgotten candidates whose per-second rows are still in
        :attr:`sec_chunks`."""
        self.unclocked: dict[int, list[tuple[I64, I64]]] = {}
        """(arrival ns, extended RTP timestamps) of the packets of each stream whose clock
        is not known yet, in arrival order: their transit and jitter are worked out once
        it is."""

    def _alloc(self, k: int) -> I64:
        if len(self.free) < k:
            self._purge()
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

        Returns which rows belong to a stream or a candidate (:meth:`take` says which
        sources became streams).
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
        g_fid = fid[order][pos].tolist()
        g_dir = direction[order][pos].tolist()
        g_ssrc = ssrc[order][pos].tolist()
        sid = np.full(len(pos), -1, dtype=np.int64)
        new_groups = []
        for g, key in enumerate(zip(g_fid, g_dir, g_ssrc, strict=True)):
            s = self.index.get(key)
            if s is not None:
                sid[g] = s
            else:
                new_groups.append(g)
        ng = np.asarray(new_groups, dtype=np.int64)
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
        o = order
        accepted[o] = True
        sid_r = sid[run]
        st = np.ones(len(o), dtype=bool)
        st[1:] = sid_r[1:] != sid_r[:-1]
        spos, srun = _seg_start_pos(st)
        s_ids = sid_r[spos]
        self._fold(s_ids, st, spos, srun, seq[o], rts[o], pt[o], ts[o], size[o], fid[o])
        self._forget_idle(int(ts.max()) - int(CANDIDATE_IDLE_S * NS))
        return accepted

    def _fold(self, s_ids: I64, st: npt.NDArray[np.bool_], spos: I64, srun: I64, seq: I64,
              rts: I64, pt: I64, ts: I64, size: I64, fid: I64) -> None:
        i = self.i
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
        if self.quality:
            self._quality(s_ids, st, spos, srun, rts, ts, size, fid, ext, reord)
        # Probation: forward steps, not counting a source's first packet (no step before it).
        fwd = (step >= 1) & (step <= MAX_DROPOUT)
        fwd[spos[i["packets"][s_ids] == 0]] = False
        i["forward"][s_ids] += np.add.reduceat(fwd.astype(np.int64), spos)
        # Fold the batch into the state.
        ends = np.append(spos[1:], n) - 1
        i["last_seq"][s_ids] = seq[ends]
        i["last_ext"][s_ids] = ext[ends]
        i["max_ext"][s_ids] = np.maximum(carried[spos], np.maximum.reduceat(ext, spos))
        i["pt"][s_ids] = pt[ends]
        i["packets"][s_ids] += np.diff(np.append(spos, n))
        i["bytes"][s_ids] += np.add.reduceat(size, spos)
        i["cn_packets"][s_ids] += np.add.reduceat((pt == COMFORT_NOISE).astype(np.int64), spos)
        i["reordered"][s_ids] += np.add.reduceat(reord.astype(np.int64), spos)
        i["last_ns"][s_ids] = ts[ends]
        i["valid"][s_ids] |= ((i["packets"][s_ids] >= MIN_NEW_STREAM)
                              & (i["forward"][s_ids] >= MIN_SEQUENTIAL))

    def _quality(self, s_ids: I64, st: npt.NDArray[np.bool_], spos: I64, srun: I64,
                 rts: I64, ts: I64, size: I64, fid: I64, ext: I64,
                 reord: npt.NDArray[np.bool_]) -> None:
        """The batch's timing figures: RTP timestamps unwrapped, each stream's clock,
        transit and jitter, and its per-second rows."""
        i, f = self.i, self.f
        n = len(ts)
        # RTP timestamps unwrapped (32-bit).
        prev_rts = np.empty(n, dtype=np.int64)
        prev_rts[1:] = rts[:-1]
        prev_rts[spos] = i["last_rts"][s_ids]
        rstep = ((rts - prev_rts + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        rts_ext = i["last_rts_ext"][s_ids][srun] + _seg_cumsum(rstep, st)
        # Clock rate: static table, else estimated (:meth:`_learn_clocks`).
        clk = self._learn_clocks(s_ids, srun, ts, rts_ext)[srun].astype(np.float64)
        have = clk > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            transit = np.where(have, (ts - i["r0"][s_ids][srun]) / NS
                               - (rts_ext - i["s0"][s_ids][srun]) / np.where(have, clk, 1.0),
                               np.nan)
        jit = _jitter(transit, st, spos, f["last_transit"][s_ids], f["jitter"][s_ids])
        # Per-second rows.
        sec, rpos, rend = _seconds(ts, st)
        seconds = {
            "fid": fid[rpos], "sid": s_ids[srun[rpos]], "sec": sec[rpos],
            "pkts": np.diff(np.append(rpos, n)), "bytes": np.add.reduceat(size, rpos),
            "max_ext": np.maximum.reduceat(ext, rpos), "reord": np.add.reduceat(reord, rpos),
            "jitter": jit[rend],
            "tmin": np.fmin.reduceat(transit, rpos), "tmax": np.fmax.reduceat(transit, rpos)}
        self.sec_chunks.append(seconds)
        if len(self.sec_chunks) > 64:
            self._purge()
            self.sec_chunks = [{k: np.concatenate([c[k] for c in self.sec_chunks])
                                for k in self.sec_chunks[0]}]
        ends = np.append(spos[1:], n) - 1
        i["last_rts"][s_ids] = rts[ends]
        i["last_rts_ext"][s_ids] = rts_ext[ends]
        f["jitter"][s_ids] = jit[ends]
        last_tr = transit[ends]
        f["last_transit"][s_ids] = np.where(np.isfinite(last_tr), last_tr,
                                            f["last_transit"][s_ids])

    def _learn_clocks(self, s_ids: I64, srun: I64, ts: I64, rts_ext: I64) -> I64:
        """The clock of each stream of the batch (0: not known yet, -1: none).

        A dynamic payload type's clock is read from the stream's own progress
        (:func:`_read_clock`) at the first packet of its :data:`CLOCK_SECONDS`-th second
        of arrivals, or at the next second where that reading fits a common rate; at the
        end of a shorter stream, over what it had (:meth:`_clock_at_end`). It holds from
        the stream's first packet on: until it is known the packets wait in
        :attr:`unclocked`, and once it is their transit and jitter are worked out as if
        it had been known from the start. What a stream comes to is therefore the same
        however its packets were cut into batches."""
        i = self.i
        clock = i["clock"][s_ids].copy()
        todo = np.flatnonzero(clock == 0)
        if not len(todo):
            return clock
        bounds = np.searchsorted(srun, np.stack((todo, todo + 1)))
        learnt: list[tuple[int, int]] = []
        for g, a, z in zip(todo.tolist(), bounds[0].tolist(), bounds[1].tolist(), strict=True):
            s = int(s_ids[g])
            waiting = self.unclocked.setdefault(s, [])  # earlier batches' packets
            if (int(ts[z - 1]) - int(i["r0"][s])) // NS < CLOCK_SECONDS - 1:
                waiting.append((ts[a:z], rts_ext[a:z]))
                continue  # cannot have reached its CLOCK_SECONDS-th second yet
            t_all = np.concatenate([*(t for t, _ in waiting), ts[a:z]])
            r_all = np.concatenate([*(r for _, r in waiting), rts_ext[a:z]])
            clock[g] = got = _read_clock(t_all, r_all, int(i["r0"][s]))
            if got == 0:
                waiting[:] = [(t_all, r_all)]  # one piece from now on
            elif got > 0 and waiting:  # this batch's packets are worked out with the rest
                learnt.append((s, got))
            else:
                del self.unclocked[s]
        i["clock"][s_ids] = clock
        if learnt:
            self._catch_up(learnt)
        return clock

    def _clock_at_end(self, sids: list[int]) -> None:
        """Streams ending before their clock was read: read it over what they had."""
        learnt: list[tuple[int, int]] = []
        i = self.i
        for s in sids:
            waiting = self.unclocked.get(s)
            if not waiting or i["clock"][s] != 0:
                continue
            got = _read_clock(np.concatenate([t for t, _ in waiting]),
                              np.concatenate([r for _, r in waiting]), int(i["r0"][s]),
                              at_end=True)
            if got > 0:
                i["clock"][s] = got
                learnt.append((s, got))
        if learnt:
            self._catch_up(learnt)

    def _catch_up(self, learnt: list[tuple[int, int]]) -> None:
        """Work out the transit and jitter of the packets that waited for their streams'
        clocks: into the per-second rows written without them, and the running jitter and
        last transit."""
        parts = [(s, clk, self.unclocked.pop(s)) for s, clk in learnt if s in self.unclocked]
        if not parts:
            return
        i, f = self.i, self.f
        lengths = [sum(len(t) for t, _ in w) for _, _, w in parts]
        sid = np.repeat(np.asarray([s for s, _, _ in parts], dtype=np.int64), lengths)
        clk = np.repeat(np.asarray([float(c) for _, c, _ in parts]), lengths)
        ts = np.concatenate([t for _, _, w in parts for t, _ in w])
        rts_ext = np.concatenate([r for _, _, w in parts for _, r in w])
        n = len(ts)
        st = np.ones(n, dtype=bool)
        st[1:] = sid[1:] != sid[:-1]
        spos = np.flatnonzero(st)
        transit = (ts - i["r0"][sid]) / NS - (rts_ext - i["s0"][sid]) / clk
        jit = _jitter(transit, st, spos, np.full(len(spos), np.nan), np.zeros(len(spos)))
        sec, rpos, rend = _seconds(ts, st)
        # the seconds' rows, written while the clock was not known, get what they lacked
        key = sid[rpos] << 32 | sec[rpos]
        order = np.argsort(key)
        key = key[order]
        jitter, tmin, tmax = (jit[rend][order], np.fmin.reduceat(transit, rpos)[order],
                              np.fmax.reduceat(transit, rpos)[order])
        lookup = np.zeros(self.cap, dtype=bool)
        lookup[sid[spos]] = True
        for c in self.sec_chunks:
            rows = np.flatnonzero(lookup[c["sid"]])
            if not len(rows):
                continue
            want = c["sid"][rows] << 32 | c["sec"][rows]
            at = np.minimum(np.searchsorted(key, want), len(key) - 1)
            found = key[at] == want  # every one: all the stream's rows so far waited
            rows, at = rows[found], at[found]
            c["jitter"][rows] = jitter[at]
            c["tmin"][rows] = tmin[at]
            c["tmax"][rows] = tmax[at]
        ends = np.append(spos[1:], n) - 1
        f["jitter"][sid[spos]] = jit[ends]
        f["last_transit"][sid[spos]] = transit[ends]

    def _forget_idle(self, before_ns: int) -> None:
        """Drop the candidates whose last packet came before ``before_ns``."""
        i = self.i
        idle = np.flatnonzero((i["packets"] > 0) & (i["valid"] == 0) & (i["last_ns"] < before_ns))
        if not len(idle):
            return
        for s in idle.tolist():
            fid = int(i["fid"][s])
            del self.index[(fid, int(i["direction"][s]), int(i["ssrc"][s]))]
            left = self.by_flow[fid]
            left.remove(s)
            if not left:
                del self.by_flow[fid]
        self._release(idle)

    def _release(self, sids: I64) -> None:
        """Free these slots; their per-second rows go at the next purge (:meth:`_purge`),
        and the slots are not used again before it."""
        for name in self.FIELDS_I:
            self.i[name][sids] = 0
        for s in sids.tolist():
            self.unclocked.pop(s, None)
        self.stale.extend(sids.tolist())

    def _purge(self) -> None:
        """Drop the per-second rows of released slots, which are free again."""
        if not self.stale:
            return
        lookup = np.zeros(self.cap, dtype=bool)
        lookup[self.stale] = True
        chunks = []
        for c in self.sec_chunks:
            m = lookup[c["sid"]]
            chunks.append({k: v[~m] for k, v in c.items()} if m.any() else c)
        self.sec_chunks = chunks
        self.free.extend(self.stale)
        self.stale = []

    def take(self, fids: list[int]) -> dict[int, list[StreamState]]:
        """Remove the sources of finished flows; return those that became streams, per flow
        serial."""
        sids: list[int] = []
        for fid in fids:
            sids.extend(self.by_flow.pop(fid, ()))
        if not sids:
            return {}
        if self.quality:
            self._clock_at_end(sids)
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
        valid = i["valid"][sid_arr] != 0
        if rows is not None and not valid.all():  # a candidate's seconds go with it
            keep = i["valid"][rows["sid"]] != 0
            rows = {k: v[keep] for k, v in rows.items()} if keep.any() else None
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
        for s, real_stream in zip(sids, valid.tolist(), strict=True):
            fid = int(i["fid"][s])
            direction, ssrc = int(i["direction"][s]), int(i["ssrc"][s])
            del self.index[(fid, direction, ssrc)]
            if not real_stream:
                continue
            out.setdefault(fid, []).append(StreamState(
                direction, ssrc, int(i["pt"][s]), max(int(i["clock"][s]), 0),
                int(i["packets"][s]),
                int(i["bytes"][s]), int(i["cn_packets"][s]), int(i["first_ext"][s]),
                int(i["max_ext"][s]), int(i["reordered"][s]), float(f["jitter"][s]),
                int(i["first_ns"][s]) / NS, int(i["last_ns"][s]) / NS,
                by_sid.get(s, np.zeros((0, 8)))))
        for name in self.FIELDS_I:
            self.i[name][sid_arr] = 0
        for s in sids:
            self.unclocked.pop(s, None)
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
