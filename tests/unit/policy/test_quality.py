"""Call quality: RFC 3550 receiver statistics, delay trend and rate, on synthetic and real RTP."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from policy.errors import QualityError
from policy.quality import (
    StreamQuality,
    extend_seq,
    measure_flow,
    measure_legs,
    measure_rtp,
    theil_sen_slope,
)
from probe.records import ORIG, RESP, FlowRecord, RtpSeries

T0 = 1_700_000_000.0
SHARED = Path(__file__).resolve().parents[4] / "shared"
G711_PCAP = SHARED / "captures/ndpi-dev/pcap_other/sip-rtp-g711.pcap"


def series(ts: npt.ArrayLike, seq: npt.ArrayLike, rtp_ts: npt.ArrayLike, *, pt: int = 0,
           ssrc: int = 0x1234, direction: int = ORIG, size: int = 172) -> RtpSeries:
    arrival = np.asarray(ts, dtype=np.float64)
    n = arrival.shape[0]
    return RtpSeries(
        ts=arrival,
        direction=np.full(n, direction, dtype=np.uint8),
        seq=(np.asarray(seq, dtype=np.int64) % 65536).astype(np.uint16),
        rtp_ts=(np.asarray(rtp_ts, dtype=np.int64) % 2**32).astype(np.uint32),
        ssrc=np.full(n, ssrc, dtype=np.uint32),
        pt=np.full(n, pt, dtype=np.uint8),
        marker=np.zeros(n, dtype=np.uint8),
        size=np.full(n, size, dtype=np.uint16),
        offset=np.zeros(n, dtype=np.uint8),
        frame=np.arange(1, n + 1, dtype=np.int64),
    )


FIELDS = ("ts", "direction", "seq", "rtp_ts", "ssrc", "pt", "marker", "size", "offset", "frame")


def concat(*parts: RtpSeries) -> RtpSeries:
    """Merge series in arrival order, renumbering frames as one capture would."""
    arrays = {f: np.concatenate([getattr(p, f) for p in parts]) for f in FIELDS}
    order = np.argsort(arrays["ts"], kind="stable")
    merged: dict[str, Any] = {f: a[order] for f, a in arrays.items()}
    merged["frame"] = np.arange(1, order.shape[0] + 1, dtype=np.int64)
    return RtpSeries(**merged)


def take(s: RtpSeries, keep: npt.NDArray[np.bool_]) -> RtpSeries:
    fields: dict[str, Any] = {f: getattr(s, f)[keep] for f in FIELDS}
    return RtpSeries(**fields)


def pcmu(n: int, *, first_seq: int = 1000, delay_s: npt.ArrayLike | None = None,
         keep: npt.NDArray[np.bool_] | None = None) -> RtpSeries:
    """n packets of 20 ms PCMU (160 timestamp units), optional extra delay per packet."""
    i = np.arange(n)
    ts = T0 + 0.25 + i * 0.020 + (np.zeros(n) if delay_s is None else np.asarray(delay_s))
    s = series(ts, first_seq + i, 5000 + 160 * i)
    return s if keep is None else take(s, keep)


def one(s: RtpSeries) -> StreamQuality:
    (q,) = measure_rtp(s, "Cabc")
    return q


# -- sequence numbers --------------------------------------------------------------------------


def test_every_tenth_dropped() -> None:
    keep = np.arange(1000) % 10 != 5
    q = one(pcmu(1000, keep=keep))
    assert (q.received_pkts, q.expected_pkts, q.lost_pkts) == (900, 1000, 100)
    assert q.loss_ratio == pytest.approx(0.1)
    assert q.loss_bursts == 100
    # Isolated single losses are more spread out than random loss: BurstR = 1 * (1 - 0.1).
    assert q.burst_ratio == pytest.approx(0.9)
    assert q.duplicate_pkts == q.reordered_pkts == 0


def test_reordering_and_duplicates() -> None:
    order = list(range(100))
    order[10], order[11] = 11, 10
    order[50], order[51] = 51, 50
    order.insert(30, 20)  # a late duplicate of packet 20
    ts = [T0 + k * 0.02 for k in range(len(order))]
    q = one(series(ts, [7 + o for o in order], [160 * o for o in order]))
    assert q.received_pkts == 101
    assert q.expected_pkts == 100
    assert q.lost_pkts == -1  # RFC 3550 A.3: duplicates make the loss negative
    assert q.loss_ratio == 0.0
    assert q.duplicate_pkts == 1
    assert q.reordered_pkts == 2  # packets 10 and 50; the duplicate is not counted twice
    assert q.loss_bursts == 0


def test_sequence_wrap_with_loss_across_it() -> None:
    seqs = [s for s in range(65525, 65545) if s not in (65535, 65536)]
    q = one(series([T0 + k * 0.02 for k in range(len(seqs))], seqs,
                   [160 * s for s in range(len(seqs))]))
    assert (q.expected_pkts, q.received_pkts, q.lost_pkts) == (20, 18, 2)
    assert q.loss_bursts == 1
    assert q.burst_ratio == pytest.approx(2 * (1 - 0.1))
    ext, kept, restarts = extend_seq((np.asarray(seqs) % 65536).astype(np.uint16))
    assert ext[-1] == 65544 and kept.all() and restarts == 0


def test_stray_packet_is_not_counted_and_restart_is() -> None:
    seqs = [1, 2, 3, 40000, 4, 5]  # a lone far packet (RFC 3550 A.1 bad_seq)
    ext, kept, restarts = extend_seq(np.asarray(seqs, dtype=np.uint16))
    assert kept.tolist() == [True, True, True, False, True, True]
    assert ext[kept].tolist() == [1, 2, 3, 4, 5]
    assert restarts == 0
    seqs = [1, 2, 3, 40000, 40001, 40002]  # the sender restarted its sequence
    ext, kept, restarts = extend_seq(np.asarray(seqs, dtype=np.uint16))
    assert kept.all() and restarts == 1
    assert ext.tolist() == [1, 2, 3, 4, 5, 6]
    q = one(series([T0 + k * 0.02 for k in range(6)], seqs, [160 * k for k in range(6)]))
    assert (q.expected_pkts, q.lost_pkts, q.restarts, q.stray_pkts) == (6, 0, 1, 0)


# -- jitter ------------------------------------------------------------------------------------


def test_jitter_hand_computed() -> None:
    # Every other packet 5 ms late: |D| = 0.005 s * 8000 = 40 timestamp units each time.
    # J1 = 40/16 = 2.5; J2 = 2.5 + 37.5/16 = 4.84375; J3 = 7.041015625; J4 = 9.1009521484375.
    ts = [1000.0 + k * 0.020 + (0.005 if k % 2 else 0.0) for k in range(5)]
    q = one(series(ts, range(5), [160 * k for k in range(5)]))
    assert q.clock_rate_hz == 8000 and not q.clock_rate_estimated
    assert q.jitter_s == pytest.approx(9.1009521484375 / 8000, rel=1e-9)
    assert q.jitter_max_s == q.jitter_s
    assert q.jitter_mean_s == pytest.approx(
        (0 + 2.5 + 4.84375 + 7.041015625 + 9.1009521484375) / 5 / 8000, rel=1e-9)


def test_jitter_converges_to_constant_deviation_and_zero_when_regular() -> None:
    n = 500
    late = np.where(np.arange(n) % 2 == 1, 0.005, 0.0)
    # (epoch-sized float arrival times carry ~0.1 µs of rounding)
    assert one(pcmu(n, delay_s=late)).jitter_s == pytest.approx(0.005, rel=1e-4)
    assert one(pcmu(n)).jitter_s == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize(("clock", "per_frame", "step"), [(48000, 1, 960), (90000, 3, 3000),
                                                         (16000, 1, 320)])
def test_dynamic_payload_clock_is_estimated(clock: int, per_frame: int, step: int) -> None:
    frames = 150
    n = frames * per_frame
    k = np.arange(n)
    frame_no = k // per_frame
    ts = T0 + frame_no * (step / clock) + (k % per_frame) * 0.001
    q = one(series(ts, k, 77 + step * frame_no, pt=111))
    assert q.clock_rate_hz == clock and q.clock_rate_estimated


def test_dynamic_payload_clock_rejected_when_nothing_fits() -> None:
    k = np.arange(100)
    q = one(series(T0 + k * 0.02, k, 620 * k, pt=100))  # 31 kHz: no common rate
    assert q.clock_rate_hz is None and q.jitter_s is None and q.delay_slope_ms_per_s is None


# -- delay trend -------------------------------------------------------------------------------


def test_queue_growing_then_plateau() -> None:
    # A token bucket filling: +20 ms of queue per second for 20 s, then flat at 400 ms.
    n = 60 * 50
    t = np.arange(n) * 0.020
    queue = np.minimum(0.020 * t, 0.400)
    wobble = np.where(np.arange(n) % 3 == 0, 0.002, 0.0)
    q = one(pcmu(n, delay_s=queue + wobble))
    assert q.delay_plateau
    assert q.delay_rise_ms == pytest.approx(400, abs=25)
    assert q.delay_plateau_after_s is not None
    assert 16.0 <= q.delay_plateau_after_s <= 20.0  # 90 % of the rise is reached at 18 s
    assert q.min_transit_ms.shape[0] >= 60


def test_queue_growing_without_plateau() -> None:
    n = 30 * 50
    t = np.arange(n) * 0.020
    q = one(pcmu(n, delay_s=0.010 * t))
    assert q.delay_slope_ms_per_s == pytest.approx(10.0, rel=0.05)
    assert q.delay_rise_ms == pytest.approx(280, abs=25)
    assert not q.delay_plateau


def test_constant_delay_has_no_trend() -> None:
    q = one(pcmu(1500, delay_s=np.full(1500, 0.080)))
    assert q.delay_slope_ms_per_s == pytest.approx(0.0, abs=0.01)
    assert q.delay_rise_ms == pytest.approx(0.0, abs=0.01)
    assert not q.delay_plateau


def test_theil_sen_ignores_outliers() -> None:
    x = np.arange(20, dtype=np.float64)
    y = 3.0 * x + 1.0
    y[[4, 11]] = 500.0
    assert theil_sen_slope(x, y) == pytest.approx(3.0)
    assert theil_sen_slope(np.zeros(3), np.ones(3)) is None


# -- rate and gaps -----------------------------------------------------------------------------


def test_per_second_rate_and_longest_gap() -> None:
    n = 500  # 10 s from T0 + 0.25, with a hole from 4.75 s to 6.75 s
    keep = ~((np.arange(n) >= 225) & (np.arange(n) < 325))
    q = one(pcmu(n, keep=keep))
    assert q.longest_gap_s == pytest.approx(2.02, abs=1e-6)
    assert q.longest_gap_start_ts == pytest.approx(T0 + 0.25 + 224 * 0.02)
    ps = q.per_second
    assert ps.second.tolist() == list(range(int(T0), int(T0) + 11))
    arrivals = [0.25 + 0.02 * i for i in range(n) if keep[i]]
    counted = [sum(1 for a in arrivals if int(a) == sec) for sec in range(11)]
    assert counted[5] == 0 and sum(counted) == 400
    assert ps.pkts.tolist() == counted
    assert ps.bps.tolist() == [p * 172 * 8 for p in counted]
    assert q.mean_bitrate_bps == pytest.approx(400 * 172 * 8 / 11)


def test_streams_split_by_direction_and_ssrc() -> None:
    a = pcmu(100)
    b = series(a.ts + 0.003, np.arange(100) + 9, np.arange(100) * 160, pt=8, ssrc=0xBEEF,
               direction=RESP)
    c = series(a.ts[50:] + 0.001, np.arange(50), np.arange(50) * 160, pt=0, ssrc=0xCAFE)
    got = measure_rtp(concat(a, b, c), "Cx")
    assert [(q.direction, q.ssrc, q.received_pkts) for q in got] == [
        (ORIG, 0x1234, 100), (ORIG, 0xCAFE, 50), (RESP, 0xBEEF, 100)]
    assert all(q.lost_pkts == 0 and q.uid == "Cx" for q in got)
    # a0 b0 ... a49 b49 a50 c0 b50 ... a99 c49 b99: 0xCAFE spans frames 102..249.
    assert got[1].first_frame == 102 and got[1].last_frame == 249
    d = got[0].to_dict()
    assert d["ssrc"] == 0x1234 and len(d["per_second"]["pkts"]) == 3


def test_mismatched_series_is_refused() -> None:
    s = pcmu(10)
    bad = RtpSeries(s.ts, s.direction, s.seq[:5], s.rtp_ts, s.ssrc, s.pt, s.marker, s.size,
                    s.offset, s.frame)
    with pytest.raises(QualityError, match="seq"):
        measure_rtp(bad, "C")


def test_hundred_thousand_packets() -> None:
    n = 100_000
    keep = np.arange(n) % 50 != 0
    q = one(pcmu(n, keep=keep))
    assert q.lost_pkts == 2000 - 1  # the first packet is the base, so it is not "lost"
    assert q.expected_pkts == n - 1


# -- flows without RTP -------------------------------------------------------------------------


def flow(pkt_ts: npt.NDArray[Any], pkt_dir: npt.NDArray[Any], rate: npt.NDArray[Any], *,
         orig_pkts: int, resp_pkts: int, rtp: RtpSeries | None = None) -> FlowRecord:
    return FlowRecord(
        uid="Fq1", proto="udp", ip_version=4, orig_h="10.0.0.1", orig_p=40000,
        resp_h="192.0.2.7", resp_p=3478, first_ts=float(pkt_ts.min()),
        last_ts=float(pkt_ts.max()), orig_pkts=orig_pkts, orig_bytes=0, orig_wire_bytes=0,
        resp_pkts=resp_pkts, resp_bytes=0, resp_wire_bytes=0, orig_flags=0, resp_flags=0,
        orig_retrans=0, resp_retrans=0, first_frame=1, last_frame=orig_pkts + resp_pkts,
        end_reason="eof", pkt_ts=pkt_ts, pkt_len=np.full(pkt_ts.shape, 100, np.int32),
        pkt_dir=pkt_dir, rate=rate, rtp=rtp)


def rate_rows(ts: npt.NDArray[Any], direction: npt.NDArray[Any],
              wire: int = 142) -> npt.NDArray[np.int64]:
    sec = np.floor(ts).astype(np.int64)
    rows = []
    for s in np.unique(sec):
        o = int(((sec == s) & (direction == ORIG)).sum())
        r = int(((sec == s) & (direction == RESP)).sum())
        rows.append((s, o, o * wire, r, r * wire))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 5)


def test_legs_rate_regularity_and_gap() -> None:
    rng = np.random.default_rng(7)
    o_ts = T0 + 0.1 + np.arange(500) * 0.020  # regular 50 pps, 10 s
    r_ts = T0 + 0.1 + np.cumsum(rng.exponential(0.05, 200))  # Poisson arrivals
    ts = np.concatenate((o_ts, r_ts))
    d = np.concatenate((np.full(500, ORIG), np.full(200, RESP))).astype(np.uint8)
    order = np.argsort(ts)
    ts, d = ts[order], d[order]
    orig, resp = measure_legs(flow(ts, d, rate_rows(ts, d), orig_pkts=500, resp_pkts=200))
    assert orig.iat_cv_ratio is not None and orig.iat_cv_ratio < 1e-3
    assert resp.iat_cv_ratio is not None and 0.8 < resp.iat_cv_ratio < 1.2
    assert orig.longest_gap_s == pytest.approx(0.02, abs=1e-6) and orig.longest_gap_exact
    assert resp.longest_gap_s == pytest.approx(float(np.diff(r_ts).max()))
    assert orig.per_second.pkts.tolist() == [45, 50, 50, 50, 50, 50, 50, 50, 50, 50, 5]
    assert orig.mean_pkt_rate_pps == pytest.approx(500 / 11)
    assert orig.mean_bitrate_bps == pytest.approx(500 * 142 * 8 / 11)


def test_leg_gap_lower_bound_from_rate_when_timing_series_is_cut() -> None:
    full = T0 + np.concatenate((np.arange(100) * 0.02, 10 + np.arange(100) * 0.02))
    d = np.zeros(200, np.uint8)
    rows = rate_rows(full, d)
    # The probe kept only the first 50 packets in the timing series.
    orig, _ = measure_legs(flow(full[:50], d[:50], rows, orig_pkts=200, resp_pkts=0))
    assert not orig.longest_gap_exact
    assert orig.longest_gap_s == 8.0  # seconds 2..9 hold no packet: at least 8 s of silence
    assert orig.per_second.pkts.tolist() == [50, 50, 0, 0, 0, 0, 0, 0, 0, 0, 50, 50]


def test_measure_flow_combines_legs_and_streams() -> None:
    s = pcmu(200)
    d = np.zeros(200, np.uint8)
    fq = measure_flow(flow(s.ts, d, rate_rows(s.ts, d), orig_pkts=200, resp_pkts=0, rtp=s))
    assert fq.uid == "Fq1" and len(fq.streams) == 1 and fq.streams[0].received_pkts == 200
    assert fq.legs[1].pkts == 0 and fq.legs[1].iat_cv_ratio is None
    with pytest.raises(QualityError, match="rate"):
        measure_legs(flow(s.ts, d, np.zeros((3, 4), np.int64), orig_pkts=200, resp_pkts=0))


# -- a real call -------------------------------------------------------------------------------


def _rtp_from_pcap(path: Path) -> RtpSeries:
    dpkt = pytest.importorskip("dpkt")
    rows = []
    with path.open("rb") as f:
        for frame, (ts, buf) in enumerate(dpkt.pcap.Reader(f), 1):
            ip = dpkt.ethernet.Ethernet(buf).data
            udp = ip.data
            if not isinstance(udp, dpkt.udp.UDP):
                continue
            p = bytes(udp.data)
            # RTP version 2, not RTCP (payload types 72-76 with the marker bit), media port.
            if len(p) < 12 or p[0] >> 6 != 2 or 72 <= (p[1] & 0x7F) <= 76 or udp.dport != 6000:
                continue
            rows.append((ts, int.from_bytes(p[2:4], "big"), int.from_bytes(p[4:8], "big"),
                         int.from_bytes(p[8:12], "big"), p[1] & 0x7F, p[1] >> 7, len(p), frame))
    cols = list(zip(*rows, strict=True))
    n = len(rows)
    return RtpSeries(ts=np.asarray(cols[0], np.float64), direction=np.zeros(n, np.uint8),
                     seq=np.asarray(cols[1], np.uint16), rtp_ts=np.asarray(cols[2], np.uint32),
                     ssrc=np.asarray(cols[3], np.uint32), pt=np.asarray(cols[4], np.uint8),
                     marker=np.asarray(cols[5], np.uint8), size=np.asarray(cols[6], np.uint16),
                     offset=np.zeros(n, np.uint8), frame=np.asarray(cols[7], np.int64))


@pytest.mark.shared
@pytest.mark.skipif(not G711_PCAP.exists(), reason="../shared captures are not available")
def test_real_g711_call_matches_tshark() -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    out = subprocess.run(
        ["tshark", "-r", str(G711_PCAP), "-q", "-o", "rtp.heuristic_rtp:TRUE", "-z",
         "rtp,streams"], capture_output=True, text=True, check=True, timeout=60).stdout
    # Columns: start end src sport dst dport SSRC payload pkts lost (pct) min/mean/max delta,
    # min/mean/max jitter (ms).
    ref = {}
    for m in re.finditer(r"0x([0-9A-Fa-f]{8})\s+\S+\s+(\d+)\s+(-?\d+) \(.*?\)\s+"
                         r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", out):
        ref[int(m[1], 16)] = (int(m[2]), int(m[3]), float(m[8]), float(m[9]))
    assert len(ref) == 2
    got = {q.ssrc: q for q in measure_rtp(_rtp_from_pcap(G711_PCAP), "Creal")}
    assert set(got) == set(ref)
    for ssrc, (pkts, lost, mean_jitter_ms, max_jitter_ms) in ref.items():
        q = got[ssrc]
        assert q.received_pkts == pkts
        assert q.lost_pkts == lost
        assert q.clock_rate_hz == 8000
        # tshark prints jitter rounded to 1 µs; both follow RFC 3550 with the same clock, so
        # only that rounding separates the figures.
        assert q.jitter_max_s is not None and q.jitter_mean_s is not None
        assert q.jitter_max_s * 1000 == pytest.approx(max_jitter_ms, abs=0.0006)
        assert q.jitter_mean_s * 1000 == pytest.approx(mean_jitter_ms, abs=0.0006)
        assert q.longest_gap_s < 0.021 and not q.delay_plateau


def test_delay_shape_smoothing_is_the_median_of_three() -> None:
    from policy.legs import delay_shape
    rng = np.random.default_rng(7)
    for n in (3, 4, 9, 40):
        y = np.round(rng.normal(50, 40, size=n), 1)
        y[rng.random(n) < 0.3] = 60.0  # ties
        # a rise of 200 ms from the middle on: the smoothing decides where it starts
        y[n // 2:] += 200.0
        rise, _, start = delay_shape(y)
        smooth = np.empty(n)
        smooth[1:-1] = [np.median(y[i - 1:i + 2]) for i in range(1, n - 1)]
        smooth[0], smooth[-1] = np.median(y[:2]), np.median(y[-2:])
        base = float(np.min(smooth[:min(3, n)]))
        assert rise == pytest.approx(float(smooth.max()) - base)
        above = np.flatnonzero(y > base + max(0.1 * (smooth.max() - base), 30.0))
        assert start == (int(above[0]) if len(above) else None)
