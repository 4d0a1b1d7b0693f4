"""Call quality measured from packets: loss, jitter, one-way delay trend and rate.

Two inputs, two results:

* a flow that carried RTP (``FlowRecord.rtp``, a :class:`probe.records.RtpSeries`)
  gives one :class:`StreamQuality` per (direction, SSRC) stream, following the
  receiver statistics of RFC 3550 (https://www.rfc-editor.org/rfc/rfc3550);
* every flow, RTP or not (encrypted media, TCP fallbacks), gives one
  :class:`LegQuality` per direction from its per-second rate series and its
  timing series.

Everything is vectorised over numpy arrays except the jitter recursion, which is
sequential by definition (see :func:`_jitter_series`).

Sequence numbers (RFC 3550 Appendix A.1), simplified on purpose:

* the 16-bit number is extended by taking, for every packet, the step from the
  previous packet in arrival order as a signed 16-bit value, so wrap-around and
  reordering of fewer than 32768 packets extend correctly;
* the probation of A.1 (``MIN_SEQUENTIAL`` packets before a source counts) is
  not applied: every packet of the stream counts from the first one;
* a jump of ``MAX_DROPOUT`` (3000) or more forward, or of more than
  ``MAX_MISORDER`` (100) backward, is a *stray* packet (A.1's ``bad_seq``) and
  is not counted, unless the packet after it continues from it, in which case
  the sender restarted: A.1 re-synchronises and forgets earlier counts, here the
  step is counted as +1 so expected/received keep summing over the restart
  (``restarts`` says how often this happened).

One-way delay trend: with no common clock, the relative transit time
``arrival − rtp_ts/clock`` (offset by the first packet) carries the queueing
delay plus a constant. Its per-second minimum strips jitter; the Theil–Sen slope
of those minima gives the trend in ms per second. The rise is the peak of the
3-second median of the minima over its first value; a *plateau* is declared when
the rise is at least ``PLATEAU_MIN_RISE_MS``, the minima then stay for at least
``PLATEAU_MIN_S`` past the point where they first reached
``PLATEAU_REACHED_RATIO`` of the rise, and the slope there is under
``PLATEAU_FLAT_RATIO`` of the slope before: a token-bucket queue filling up,
then dropping instead of growing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from policy.errors import QualityError
from probe.records import ORIG, RESP, FlowRecord, RtpSeries

__all__ = [
    "COMMON_CLOCK_RATES_HZ",
    "STATIC_CLOCK_RATE_HZ",
    "FlowQuality",
    "LegQuality",
    "SecondSeries",
    "StreamQuality",
    "extend_seq",
    "measure_flow",
    "measure_legs",
    "measure_rtp",
    "theil_sen_slope",
]

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

MAX_DROPOUT = 3000
"""RFC 3550 A.1: a forward jump at least this large is not ordinary loss."""
MAX_MISORDER = 100
"""RFC 3550 A.1: a backward step larger than this is not ordinary reordering."""

STATIC_CLOCK_RATE_HZ: dict[int, int] = {
    # RFC 3551 §6, tables 4 (audio) and 5 (video): static payload types.
    0: 8000,  # PCMU
    3: 8000,  # GSM
    4: 8000,  # G723
    5: 8000,  # DVI4
    6: 16000,  # DVI4
    7: 8000,  # LPC
    8: 8000,  # PCMA
    9: 8000,  # G722 (8000 by the RFC's historical error, although sampled at 16 kHz)
    10: 44100,  # L16 stereo
    11: 44100,  # L16 mono
    12: 8000,  # QCELP
    13: 8000,  # CN
    14: 90000,  # MPA
    15: 8000,  # G728
    16: 11025,  # DVI4
    17: 22050,  # DVI4
    18: 8000,  # G729
    25: 90000,  # CelB
    26: 90000,  # JPEG
    28: 90000,  # nv
    31: 90000,  # H261
    32: 90000,  # MPV
    33: 90000,  # MP2T
    34: 90000,  # H263
}
"""RTP timestamp clock rate of each static payload type."""

COMMON_CLOCK_RATES_HZ: tuple[int, ...] = (8000, 16000, 24000, 48000, 90000)
"""Rates an estimated clock is snapped to (dynamic payload types)."""

CLOCK_SNAP_TOLERANCE_RATIO = 0.2
"""An estimated clock further than this (relative) from every common rate is rejected."""
CLOCK_MIN_SPAN_S = 0.5
"""Arrival span needed before a clock rate is estimated."""

THEIL_SEN_MAX_POINTS = 400
"""Longer per-second series are subsampled evenly before the O(n²) slope."""
PLATEAU_MIN_RISE_MS = 10.0
"""A delay rise smaller than this is noise, not a queue."""
PLATEAU_REACHED_RATIO = 0.9
"""The plateau starts where the smoothed delay first reaches this share of its rise."""
PLATEAU_MIN_S = 3.0
"""The flat part must last at least this long."""
PLATEAU_FLAT_RATIO = 0.2
"""The flat part's slope must be under this share of the rising part's slope."""


@dataclass(frozen=True, slots=True, eq=False)
class SecondSeries:
    """Per-second counts over a stream's life; seconds without packets are zero rows."""

    second: I64
    """Whole seconds since the epoch, consecutive."""
    pkts: I64
    """Packets received in that second."""
    bps: F64
    """Bits received in that second (RTP: UDP payload; flows: frame bytes on the wire)."""

    def __len__(self) -> int:
        return int(self.second.shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {"second": self.second.tolist(), "pkts": self.pkts.tolist(),
                "bps": self.bps.tolist()}


@dataclass(frozen=True, slots=True, eq=False)
class StreamQuality:
    """Receiver statistics of one RTP stream: one direction, one SSRC."""

    uid: str
    """Flow the stream travelled in."""
    direction: int
    """``ORIG`` or ``RESP``: who sent the stream."""
    ssrc: int
    """Synchronisation source."""
    payload_type: int
    """The most frequent payload type of the stream."""
    clock_rate_hz: int | None
    """RTP timestamp clock; ``None`` if the payload type is dynamic and no rate fitted."""
    clock_rate_estimated: bool
    """True if the clock came from RTP-timestamp vs arrival progress, not RFC 3551."""
    first_ts: float
    """Arrival of the first packet, seconds since the epoch."""
    last_ts: float
    """Arrival of the last packet."""
    first_frame: int
    """1-based capture position of the first packet."""
    last_frame: int
    """1-based capture position of the last packet."""
    received_pkts: int
    """Packets counted (RFC 3550 ``received``, duplicates included, strays not)."""
    expected_pkts: int
    """Highest extended sequence number minus the first one, plus one."""
    lost_pkts: int
    """``expected - received``; negative when duplicates outnumber losses (RFC 3550 A.3)."""
    loss_ratio: float
    """``max(lost, 0) / expected``."""
    duplicate_pkts: int
    """Packets whose extended sequence number had already arrived."""
    reordered_pkts: int
    """First copies that arrived after a higher extended sequence number."""
    stray_pkts: int
    """Packets far outside the sequence (RFC 3550 A.1 ``bad_seq``), not counted."""
    restarts: int
    """Sequence re-synchronisations (large jump followed by a sequential packet)."""
    loss_bursts: int
    """Runs of consecutive missing sequence numbers."""
    burst_ratio: float
    """G.113 BurstR: mean loss-run length over the one expected from random loss (1.0 = random)."""
    jitter_s: float | None
    """RFC 3550 interarrival jitter after the last packet, in seconds."""
    jitter_mean_s: float | None
    """Mean of the running jitter over the stream."""
    jitter_max_s: float | None
    """Largest running jitter over the stream."""
    delay_slope_ms_per_s: float | None
    """Theil–Sen slope of the per-second minimum relative transit time."""
    delay_rise_ms: float | None
    """Rise of the (3-second median smoothed) per-second minimum transit over its start."""
    delay_plateau: bool
    """The delay rose, then stayed flat: a shaping queue (token bucket) filled up."""
    delay_plateau_after_s: float | None
    """Seconds from the first packet to where the plateau begins."""
    min_transit_ms: F64
    """Per-second minimum relative transit, ms, relative to the first packet (NaN if empty)."""
    per_second: SecondSeries
    """Packets and bits per second."""
    mean_bitrate_bps: float
    """Mean of ``per_second.bps``."""
    longest_gap_s: float
    """Longest time between consecutive arrivals."""
    longest_gap_start_ts: float
    """Arrival time of the packet before that gap."""

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last arrival."""
        return self.last_ts - self.first_ts

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (arrays as lists)."""
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, SecondSeries):
                value = value.to_dict()
            elif isinstance(value, np.ndarray):
                value = [None if math.isnan(v) else v for v in value.tolist()]
            out[name] = value
        out["duration_s"] = self.duration_s
        return out


@dataclass(frozen=True, slots=True, eq=False)
class LegQuality:
    """Rate and regularity of one direction of a flow, without looking inside packets."""

    uid: str
    """The flow."""
    direction: int
    """``ORIG`` or ``RESP``."""
    pkts: int
    """Packets sent in this direction over the flow's life."""
    per_second: SecondSeries
    """Packets and wire bits per second (from ``FlowRecord.rate``)."""
    mean_bitrate_bps: float
    """Mean of ``per_second.bps`` between the direction's first and last second."""
    mean_pkt_rate_pps: float
    """Mean of ``per_second.pkts`` over the same seconds."""
    iat_cv_ratio: float | None
    """Coefficient of variation of inter-arrival times in the timing series (``None`` < 3 pkts)."""
    longest_gap_s: float
    """Longest silence between two packets of this direction."""
    longest_gap_exact: bool
    """True if the timing series held every packet; otherwise a lower bound that
    also uses the empty seconds of the rate series."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.__slots__:
            value = getattr(self, name)
            out[name] = value.to_dict() if isinstance(value, SecondSeries) else value
        return out


@dataclass(frozen=True, slots=True, eq=False)
class FlowQuality:
    """Everything measured on one flow."""

    uid: str
    """The flow."""
    legs: tuple[LegQuality, LegQuality]
    """Originator then responder direction."""
    streams: tuple[StreamQuality, ...]
    """RTP streams, ordered by (direction, first arrival)."""


def extend_seq(seq: npt.NDArray[np.integer[Any]]) -> tuple[I64, npt.NDArray[np.bool_], int]:
    """Extend 16-bit RTP sequence numbers (arrival order) to 64-bit ones.

    Returns ``(extended, kept, restarts)``: ``kept`` is False for stray packets,
    whose extended value is meaningless. See the module docstring for the rules.
    """
    s = seq.astype(np.int64)
    n = s.shape[0]
    kept = np.ones(n, dtype=bool)
    if n == 0:
        return s, kept, 0
    # A stray is reached by a big jump and left by a big jump back.
    step = _signed16(np.diff(s))
    big = (step >= MAX_DROPOUT) | (step < -MAX_MISORDER)
    into = np.concatenate(([False], big))
    continues = np.concatenate((step == 1, [False]))
    kept = ~(into & ~continues)
    ks = s[kept]
    step = _signed16(np.diff(ks))
    big = (step >= MAX_DROPOUT) | (step < -MAX_MISORDER)
    nxt = np.concatenate((step[1:] == 1, [False]))
    restart = big & nxt
    step[restart] = 1
    ext = np.empty(n, dtype=np.int64)
    ext[kept] = ks[0] + np.concatenate(([0], np.cumsum(step)))
    ext[~kept] = -1
    return ext, kept, int(restart.sum())


def _signed16(d: I64) -> I64:
    return (d + 32768) % 65536 - 32768


def _unwrap32(ts: npt.NDArray[np.integer[Any]]) -> I64:
    r = ts.astype(np.int64)
    if r.shape[0] == 0:
        return r
    d: I64 = (np.diff(r) + 2**31) % 2**32 - 2**31
    out: I64 = r[0] + np.concatenate(([0], np.cumsum(d)))
    return out


def _jitter_series(abs_d: F64) -> F64:
    """Running RFC 3550 jitter J_i = J_{i-1} + (|D_i| - J_{i-1})/16, J_0 = 0.

    The recursion is sequential; a plain loop over Python floats runs at about
    0.4 µs per packet (2·10^5 values in ~75 ms on the reference machine), does
    the exact floating-point operations of RFC 3550 A.8 and needs no extra
    dependency, so it is preferred over an IIR filter or a blocked closed form.
    """
    out = [0.0] * (abs_d.shape[0] + 1)
    j = 0.0
    for i, d in enumerate(abs_d.tolist(), 1):
        j += (d - j) / 16.0
        out[i] = j
    return np.asarray(out, dtype=np.float64)


def theil_sen_slope(x: F64, y: F64) -> float | None:
    """Median of pairwise slopes (Theil–Sen); ``None`` with fewer than two distinct x."""
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    n = x.shape[0]
    if n > THEIL_SEN_MAX_POINTS:
        pick = np.linspace(0, n - 1, THEIL_SEN_MAX_POINTS).round().astype(np.int64)
        x, y = x[pick], y[pick]
        n = THEIL_SEN_MAX_POINTS
    i, j = np.triu_indices(n, k=1)
    dx = x[j] - x[i]
    ok = dx != 0
    if not ok.any():
        return None
    return float(np.median((y[j] - y[i])[ok] / dx[ok]))


def _estimate_clock(t: F64, rtp_u: I64, ext: I64) -> int | None:
    """Snap RTP-timestamp progress per arrival second to a common clock rate."""
    first, last = int(np.argmin(ext)), int(np.argmax(ext))
    span_t = float(t[last] - t[first])
    span_r = float(rtp_u[last] - rtp_u[first])
    if span_t < CLOCK_MIN_SPAN_S or span_r <= 0:
        return None
    rate = span_r / span_t
    best = min(COMMON_CLOCK_RATES_HZ, key=lambda c: abs(math.log(rate / c)))
    if abs(rate / best - 1.0) > CLOCK_SNAP_TOLERANCE_RATIO:
        return None
    return best


def _per_second(abs_ts: F64, bits: F64) -> SecondSeries:
    sec = np.floor(abs_ts).astype(np.int64)
    first = int(sec.min())
    idx = sec - first
    length = int(idx.max()) + 1
    return SecondSeries(
        second=np.arange(first, first + length, dtype=np.int64),
        pkts=np.bincount(idx, minlength=length).astype(np.int64),
        bps=np.bincount(idx, weights=bits, minlength=length).astype(np.float64),
    )


def _rolling_median3(y: F64) -> F64:
    if y.shape[0] < 3:
        return y.copy()
    mid = np.median(np.lib.stride_tricks.sliding_window_view(y, 3), axis=1)
    return np.concatenate(([y[0]], mid, [y[-1]]))


def _delay_trend(
    abs_ts: F64, transit_s: F64
) -> tuple[F64, float | None, float | None, bool, float | None]:
    """Per-second minimum transit (ms), slope, rise, plateau flag and plateau start."""
    sec = np.floor(abs_ts).astype(np.int64)
    idx = sec - sec.min()
    mins = np.full(int(idx.max()) + 1, np.inf)
    np.minimum.at(mins, idx, transit_s * 1000.0)
    mins[np.isinf(mins)] = np.nan
    present = np.isfinite(mins)
    x = np.flatnonzero(present).astype(np.float64)
    y = mins[present]
    if x.shape[0] < 2:
        return mins, None, None, False, None
    slope = theil_sen_slope(x, y)
    smooth = _rolling_median3(y)
    base = float(smooth[0])
    rise = float(smooth.max()) - base
    plateau, after = False, None
    if rise >= PLATEAU_MIN_RISE_MS:
        k = int(np.argmax(smooth >= base + PLATEAU_REACHED_RATIO * rise))
        tail_x, tail_y = x[k:], y[k:]
        if k >= 1 and tail_x.shape[0] >= 3 and tail_x[-1] - tail_x[0] >= PLATEAU_MIN_S:
            head = theil_sen_slope(x[: k + 1], y[: k + 1])
            tail = theil_sen_slope(tail_x, tail_y)
            if head is not None and tail is not None and head > 0:
                plateau = abs(tail) <= PLATEAU_FLAT_RATIO * head
                if plateau:
                    # Seconds from the first packet to the start of the plateau second.
                    after = max(0.0, float(sec.min() + x[k]) - float(abs_ts[0]))
    return mins, slope, rise, plateau, after


def _check_rtp(series: RtpSeries) -> None:
    n = len(series)
    for name in ("direction", "seq", "rtp_ts", "ssrc", "pt", "marker", "size", "offset",
                 "frame"):
        if getattr(series, name).shape != (n,):
            raise QualityError(f"RtpSeries.{name} has shape {getattr(series, name).shape}, "
                               f"expected ({n},)")


def measure_rtp(series: RtpSeries, uid: str) -> tuple[StreamQuality, ...]:
    """One :class:`StreamQuality` per (direction, SSRC), ordered by direction then first arrival."""
    _check_rtp(series)
    if len(series) == 0:
        return ()
    key = series.direction.astype(np.int64) << 32 | series.ssrc.astype(np.int64)
    # Group by stream, arrival order inside each (lexsort is stable: capture order breaks
    # timestamp ties).
    by_stream = np.lexsort((series.ts, key))
    starts = np.flatnonzero(np.concatenate(([True], np.diff(key[by_stream]) != 0)))
    groups = np.split(by_stream, starts[1:])
    groups.sort(key=lambda g: (int(series.direction[g[0]]), float(series.ts[g[0]]), int(g[0])))
    return tuple(_measure_stream(series, g, uid) for g in groups)


def _measure_stream(series: RtpSeries, members: I64, uid: str) -> StreamQuality:
    ext_all, kept, restarts = extend_seq(series.seq[members])
    idx = members[kept]
    ext = ext_all[kept]
    abs_ts = series.ts[idx].astype(np.float64)
    t0 = float(abs_ts[0])
    t = abs_ts - t0
    n = int(idx.shape[0])

    # RFC 3550 A.3: expected from the first packet's extended number; received counts
    # every counted arrival, so duplicates can make `lost` negative.
    base = int(ext[0])
    expected = int(ext.max()) - base + 1
    lost = expected - n
    uniq, first_pos = np.unique(ext, return_index=True)
    duplicates = n - int(uniq.shape[0])
    is_first = np.zeros(n, dtype=bool)
    is_first[first_pos] = True
    prior_max = np.concatenate(([np.iinfo(np.int64).min], np.maximum.accumulate(ext)[:-1]))
    reordered = int((is_first & (ext < prior_max)).sum())
    # Loss runs: holes between consecutive distinct numbers at or above the base.
    above = uniq[uniq >= base]
    holes = np.diff(above) - 1
    bursts = int((holes > 0).sum())
    missing = int(holes.sum())
    loss_ratio = max(lost, 0) / expected if expected > 0 else 0.0
    if bursts and expected > 0:
        p = missing / expected
        burst_ratio = (missing / bursts) * (1.0 - p)
    else:
        burst_ratio = 1.0

    pts, counts = np.unique(series.pt[idx], return_counts=True)
    pt = int(pts[np.argmax(counts)])
    rtp_u = _unwrap32(series.rtp_ts[idx])
    clock: int | None = STATIC_CLOCK_RATE_HZ.get(pt)
    estimated = False
    if clock is None:
        clock = _estimate_clock(t, rtp_u, ext)
        estimated = clock is not None

    jitter_s = jitter_mean_s = jitter_max_s = None
    slope = rise = after = None
    plateau = False
    mins = np.zeros(0)
    if clock is not None:
        # Relative transit in timestamp units (RFC 3550 §6.4.1), origin at the first packet
        # so float64 keeps sub-unit precision.
        transit = t * clock - (rtp_u - rtp_u[0]).astype(np.float64)
        j = _jitter_series(np.abs(np.diff(transit)))
        jitter_s = float(j[-1]) / clock
        jitter_mean_s = float(j.mean()) / clock
        jitter_max_s = float(j.max()) / clock
        mins, slope, rise, plateau, after = _delay_trend(abs_ts, transit / clock)

    per_second = _per_second(abs_ts, series.size[idx].astype(np.float64) * 8.0)
    if n >= 2:
        gaps = np.diff(t)
        g = int(np.argmax(gaps))
        gap, gap_start = float(gaps[g]), float(abs_ts[g])
    else:
        gap, gap_start = 0.0, t0
    return StreamQuality(
        uid=uid,
        direction=int(series.direction[idx[0]]),
        ssrc=int(series.ssrc[idx[0]]),
        payload_type=pt,
        clock_rate_hz=clock,
        clock_rate_estimated=estimated,
        first_ts=t0,
        last_ts=float(abs_ts[-1]),
        first_frame=int(series.frame[idx].min()),
        last_frame=int(series.frame[idx].max()),
        received_pkts=n,
        expected_pkts=expected,
        lost_pkts=lost,
        loss_ratio=loss_ratio,
        duplicate_pkts=duplicates,
        reordered_pkts=reordered,
        stray_pkts=int((~kept).sum()),
        restarts=restarts,
        loss_bursts=bursts,
        burst_ratio=burst_ratio,
        jitter_s=jitter_s,
        jitter_mean_s=jitter_mean_s,
        jitter_max_s=jitter_max_s,
        delay_slope_ms_per_s=slope,
        delay_rise_ms=rise,
        delay_plateau=plateau,
        delay_plateau_after_s=after,
        min_transit_ms=mins,
        per_second=per_second,
        mean_bitrate_bps=float(per_second.bps.mean()),
        longest_gap_s=gap,
        longest_gap_start_ts=gap_start,
    )


def measure_legs(flow: FlowRecord) -> tuple[LegQuality, LegQuality]:
    """Rate, regularity and gaps of both directions, from the rate and timing series."""
    rate = flow.rate
    if rate.ndim != 2 or rate.shape[1] != 5:
        raise QualityError(f"FlowRecord.rate has shape {rate.shape}, expected (n, 5)")
    if not flow.pkt_ts.shape == flow.pkt_dir.shape:
        raise QualityError("FlowRecord.pkt_ts and pkt_dir differ in length")
    legs = []
    for direction, pkts_total, col in ((ORIG, flow.orig_pkts, 1), (RESP, flow.resp_pkts, 3)):
        rows = rate[rate[:, col] > 0]
        ts = np.sort(flow.pkt_ts[flow.pkt_dir == direction].astype(np.float64))
        if rows.shape[0]:
            first = int(rows[:, 0].min())
            length = int(rows[:, 0].max()) - first + 1
            idx = (rows[:, 0] - first).astype(np.int64)
            pkts = np.zeros(length, dtype=np.int64)
            bps = np.zeros(length, dtype=np.float64)
            pkts[idx] = rows[:, col]
            bps[idx] = rows[:, col + 1].astype(np.float64) * 8.0
            series = SecondSeries(np.arange(first, first + length, dtype=np.int64), pkts, bps)
        else:
            series = SecondSeries(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        iat = np.diff(ts)
        cv = None
        if iat.shape[0] >= 2 and iat.mean() > 0:
            cv = float(iat.std() / iat.mean())
        gap = float(iat.max()) if iat.shape[0] else 0.0
        exact = ts.shape[0] >= pkts_total
        if not exact and rows.shape[0] >= 2:
            # Whole empty seconds between two busy seconds: at least that much silence.
            gap = max(gap, float(np.diff(np.sort(rows[:, 0])).max() - 1))
        legs.append(LegQuality(
            uid=flow.uid,
            direction=direction,
            pkts=int(pkts_total),
            per_second=series,
            mean_bitrate_bps=float(series.bps.mean()) if len(series) else 0.0,
            mean_pkt_rate_pps=float(series.pkts.mean()) if len(series) else 0.0,
            iat_cv_ratio=cv,
            longest_gap_s=gap,
            longest_gap_exact=exact,
        ))
    return legs[0], legs[1]


def measure_flow(flow: FlowRecord) -> FlowQuality:
    """Legs always; RTP streams when the probe kept an RTP series for the flow."""
    streams = measure_rtp(flow.rtp, flow.uid) if flow.rtp is not None else ()
    return FlowQuality(uid=flow.uid, legs=measure_legs(flow), streams=streams)
