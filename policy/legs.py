"""Quality of each call leg, judged over the whole flow.

Where RTP headers are visible, the probe's whole-life stream state gives loss
and reordering (RFC 3550 §A.1/§A.3), the §6.4.1 jitter estimate and, per
second, received packets, bytes and the minimum relative transit time — whose
rise and plateau is the signature of a queue in front of a rate limiter. Where
they are not, the per-second rate series gives the bit rate and its gaps. The
MOS estimate is ITU-T G.107's E-model (``policy.emodel``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from classifier.records import RtcpReport, RtcpSenderInfo
from policy.emodel import Codec, codec_for_payload_type, score
from policy.records import Leg, ReportedStream
from probe.addresses import local_is_orig
from probe.payload_types import RTP_CLOCKS
from probe.records import ORIG, FlowRecord, RtpStream

__all__ = ["delay_shape", "flow_legs", "reported_streams", "theil_sen_slope", "with_rtcp"]

F64 = npt.NDArray[np.float64]

THEIL_SEN_MAX_POINTS = 400
"""Longer per-second series are subsampled evenly before the O(n²) slope."""
PLATEAU_REACHED_RATIO = 0.9
"""The plateau starts where the smoothed delay first reaches this share of its rise."""
PLATEAU_MIN_S = 3.0
"""The flat part must last at least this long."""
PLATEAU_FLAT_RATIO = 0.2
"""The flat part's slope must be under this share of the rising part's slope."""
PLATEAU_HELD_RATIO = 0.5
"""The flat part's median delay must stay at least this share of the rise above the base."""


def theil_sen_slope(x: F64, y: F64) -> float | None:
    """Median of pairwise slopes (Theil–Sen); ``None`` with fewer than two distinct x.

    Robust to outlying seconds (a burst of late packets moves one point, not the slope).
    """
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


def delay_shape(tmin_ms: F64) -> tuple[float | None, bool, int | None]:
    """Rise of the per-second minimum one-way delay, whether it levelled off, and the
    index of the second where it started to rise (None if it did not).

    ``tmin_ms`` holds one value per second, NaN for seconds without a measurement.
    The minima are smoothed by the median of each second and its neighbours; the rise
    is the peak of the smoothed series over its lowest of the first three. A *plateau*
    is declared when the smoothed minima first reach ``PLATEAU_REACHED_RATIO`` of the
    rise at a later second, at least three measured seconds spanning ``PLATEAU_MIN_S``
    follow, the Theil–Sen slope from there is under ``PLATEAU_FLAT_RATIO`` of the slope
    before, and the delay stays up there (the median from that second on is at least
    ``PLATEAU_HELD_RATIO`` of the rise): a token-bucket queue filled up, then dropped
    instead of growing. A spike that recedes — a radio link retransmitting through a
    handover — has a flat median slope too (most seconds are back at the base), but its
    delay does not stay up: no standing queue.
    """
    y = tmin_ms[np.isfinite(tmin_ms)]
    x = np.flatnonzero(np.isfinite(tmin_ms)).astype(np.float64)
    if len(y) < 3:
        return None, False, None
    # Median of each second and its neighbours (of the two at either end).
    smooth = np.empty(len(y))
    a, b, c = y[:-2], y[1:-1], y[2:]  # the median of three, without sorting each window
    smooth[1:-1] = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    smooth[0], smooth[-1] = (y[0] + y[1]) / 2, (y[-2] + y[-1]) / 2  # medians of two
    base = float(np.min(smooth[: max(1, min(3, len(smooth)))]))
    rise = float(smooth.max()) - base
    start = None
    # The rise starts at the first second clearly above the base (10 % of the rise, 30 ms).
    above = np.flatnonzero(y > base + max(0.1 * rise, 30.0)) if rise > 0 else \
        np.zeros(0, np.int64)
    if len(above):
        start = int(x[above[0]])
    plateau = False
    if rise > 0:
        k = int(np.argmax(smooth >= base + PLATEAU_REACHED_RATIO * rise))
        if k >= 1 and len(x) - k >= 3 and x[-1] - x[k] >= PLATEAU_MIN_S:
            head = theil_sen_slope(x[: k + 1], y[: k + 1])
            tail = theil_sen_slope(x[k:], y[k:])
            held = float(np.median(smooth[k:])) >= base + PLATEAU_HELD_RATIO * rise
            if head is not None and tail is not None and head > 0 and held:
                plateau = abs(tail) <= PLATEAU_FLAT_RATIO * head
    return rise, plateau, start


def _rtp_leg(flow: FlowRecord, s: RtpStream, out: bool, media: str | None,
             assumed_delay_ms: float) -> Leg:
    rows = s.seconds
    secs: list[tuple[float, ...]] = []
    mean_jitter = None
    rise = None
    plateau = False
    if len(rows):
        # Row by row over one conversion of the table: the series are a few seconds long
        # as often as an hour, and per-row numpy calls cost more than the arithmetic.
        # max_ext (from the packets' sequence numbers) is never NaN, unlike jitter and transit
        prev = s.first_ext_seq - 1.0  # the highest extended sequence number before it
        top = -math.inf
        for sec, pkts, nbytes, max_ext, _reord, jitter, tmin, _tmax in rows.tolist():
            lost = max(max(max_ext - prev, 0.0) - pkts, 0.0)
            top = max(top, max_ext)
            prev = top
            secs.append((sec, pkts, nbytes * 8.0, lost, jitter, tmin * 1000.0))
        if len(rows) >= 3:  # fewer seconds show no rise
            rise, plateau, _ = delay_shape(rows[:, 6] * 1000.0)
        jit = rows[:, 5]
        if np.isfinite(jit).any():  # the mean of the measured seconds (np.nanmean's sum)
            missing = np.isnan(jit)
            mean_jitter = float(np.where(missing, 0.0, jit).sum() / (jit.size - missing.sum()))
        mean_bps = float(rows[:, 2].mean()) * 8.0
    else:
        span = max(s.last_ts - s.first_ts, 1e-9)
        mean_bps = s.bytes * 8 / span
    lost_total = max(s.lost, 0)
    expected_all = s.expected
    loss = lost_total / expected_all if expected_all > 0 else None
    mos = None
    kind = media or ("audio" if s.clock_hz in (8000, 16000, 48000) else None)
    if kind == "audio" and loss is not None:
        codec = codec_for_payload_type(s.pt) or Codec.OPUS
        mos = score(codec, loss_ratio=loss, jitter_s=mean_jitter or s.jitter_s,
                    network_delay_ms=assumed_delay_ms).mos
    return Leg(flow.uid, "out" if out else "in", kind, s.ssrc, s.packets, expected_all, loss,
               s.reordered, s.jitter_s, mean_jitter, rise, plateau, mean_bps, mos,
               tuple(secs))


def _rate_leg(flow: FlowRecord, out_dir: int, out: bool, media: str | None) -> Leg:
    rate = flow.rate
    col_p, col_b = (1, 2) if out_dir == ORIG else (3, 4)
    pkts = int(rate[:, col_p].sum()) if len(rate) else 0
    active = rate[rate[:, col_p] > 0] if len(rate) else rate
    bps = float(active[:, col_b].mean() * 8) if len(active) else 0.0
    nan = float("nan")
    secs = tuple((t, p, b, 0.0, nan, nan) for t, p, b in zip(
        rate[:, 0].astype(np.float64).tolist(), rate[:, col_p].astype(np.float64).tolist(),
        (rate[:, col_b] * 8).astype(np.float64).tolist(), strict=True)) if len(rate) else ()
    return Leg(flow.uid, "out" if out else "in", media, None, pkts, None, None, None, None,
               None, None, False, bps, None, secs)


def with_rtcp(legs: list[Leg], reports: Sequence[RtcpReport],
              clocks: dict[int, int]) -> list[Leg]:
    """Attach what RTCP receiver reports said about each leg's stream (by SSRC)."""
    by_source: dict[int, list[RtcpReport]] = {}
    for rep in reports:
        by_source.setdefault(rep.source, []).append(rep)
    out = []
    for leg in legs:
        reps = by_source.get(leg.ssrc or -1, [])
        if not reps:
            out.append(leg)
            continue
        latest = max(reps, key=lambda r: r.ts)
        clock = clocks.get(leg.ssrc or -1, 0)
        out.append(replace(leg, rtcp_reports=len(reps),
                           rtcp_fraction_lost=sum(r.fraction_lost for r in reps) / len(reps),
                           rtcp_jitter_s=latest.jitter / clock if clock else None))
    return out


CLOCK_TOLERANCE = 0.02
"""How far a clock measured between two sender reports may stray from a known rate
(:data:`probe.payload_types.RTP_CLOCKS`): the sender's wallclock and its media clock
are different oscillators."""
REPORTED_MIN_SPAN_S = 0.5
"""Sender reports must span at least this much of the sender's wallclock to read a clock."""


def reported_streams(members: Sequence[tuple[FlowRecord, Sequence[RtcpSenderInfo]]],
                     local: str | None, seen: set[int]) -> list[ReportedStream]:
    """Streams that a call's RTCP sender reports speak of and the probe saw no RTP of
    (their SSRC is not in ``seen``): a sender keeps counting the RTP packets it sends
    (RFC 3550 §6.4.1) wherever they went. ``members`` are the call's flows with the
    sender information each carried; the reports of one stream (its direction and SSRC)
    are read together, whichever flows carried them. A stream counts when its sender
    says it sent packets between its first and last report seen, and the RTP timestamp
    advanced against the sender's wallclock at one of the clocks calls' streams run at,
    which names the media (screen content is sent as video: not told apart here)."""
    by_stream: dict[tuple[str, int], list[tuple[RtcpSenderInfo, FlowRecord]]] = {}
    for flow, senders in members:
        orig_local = local_is_orig(flow, local)
        for s in senders:
            if s.ssrc not in seen:
                way = "out" if (s.direction == ORIG) == orig_local else "in"
                by_stream.setdefault((way, s.ssrc), []).append((s, flow))
    out = []
    for (way, ssrc), seen_twice in sorted(by_stream.items()):
        # one report seen on two flows (a mirror port's copy, a path switch) counts once
        reps = list({r[0].ntp_timestamp: r for r in seen_twice}.values())
        first = min(reps, key=lambda r: r[0].ts)[0]
        last, flow = max(reps, key=lambda r: r[0].ts)
        span_s = ((last.ntp_timestamp - first.ntp_timestamp) % (1 << 64)) / 2.0 ** 32
        sent = (last.packets - first.packets) % (1 << 32)
        if not REPORTED_MIN_SPAN_S <= span_s < 1 << 31 or not 0 < sent < 1 << 31:
            continue  # too short to read a clock, the wallclock went back, a count reset
        hz = ((last.rtp_timestamp - first.rtp_timestamp) % (1 << 32)) / span_s
        media = next((str(m) for c, m in RTP_CLOCKS.items()
                      if abs(hz - c) <= CLOCK_TOLERANCE * c), None)
        if media is None:
            continue
        out.append(ReportedStream(flow.uid, way, media, ssrc, hz, sent,
                                  (last.octets - first.octets) % (1 << 32), len(reps),
                                  first.frame, last.frame))
    return out


def flow_legs(flow: FlowRecord, local: str | None, media: str | None,
              assumed_delay_ms: float) -> list[Leg]:
    """The legs of one media flow: one per RTP stream, or one per direction."""
    orig_local = local_is_orig(flow, local)
    legs: list[Leg] = []
    if flow.rtp_streams:
        seen_dirs = set()
        for s in flow.rtp_streams:
            if s.packets < 3:
                continue
            out = (s.direction == ORIG) == orig_local
            seen_dirs.add(s.direction)
            legs.append(_rtp_leg(flow, s, out, media, assumed_delay_ms))
        for d in (0, 1):
            if d not in seen_dirs and (flow.orig_pkts if d == 0 else flow.resp_pkts) > 0:
                legs.append(_rate_leg(flow, d, (d == ORIG) == orig_local, media))
        return legs
    for d in (0, 1):
        if (flow.orig_pkts if d == 0 else flow.resp_pkts) > 0:
            legs.append(_rate_leg(flow, d, (d == ORIG) == orig_local, media))
    return legs
