"""Leg quality on RTP the probe metered: RFC 3550 loss, reordering and jitter, the delay
rise and plateau, per-second rows, rate legs, and a real G.711 call against tshark.

Every RTP test writes its packets into a pcap, reads it with the probe and judges the
flow with :func:`policy.legs.flow_legs`: what runs in production, end to end.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from policy.legs import delay_shape, flow_legs, theil_sen_slope
from policy.records import Leg
from probe import FlowRecord, MeterConfig, read_capture
from tests.pcapbytes import pcap, udp_frame

T0 = 1_700_000_000.0
SHARED = Path(__file__).resolve().parents[4] / "shared"
G711_PCAP = SHARED / "captures/ndpi-dev/pcap_other/sip-rtp-g711.pcap"
LOCAL, REMOTE = "10.0.0.1", "192.0.2.7"


def _rtp(seq: int, rtp_ts: int, *, pt: int = 0, ssrc: int = 0x1234, size: int = 172) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, rtp_ts & 0xFFFFFFFF, ssrc) + \
        b"\xd5" * (size - 12)


def _meter(tmp_path: Path, packets: Sequence[tuple[float, bool, bytes]]) -> FlowRecord:
    """The one flow of ``packets`` (arrival, sent by the local side, payload)."""
    frames = sorted(
        ((t, udp_frame(LOCAL, 40000, REMOTE, 6000, p) if out else
          udp_frame(REMOTE, 6000, LOCAL, 40000, p)) for t, out, p in packets),
        key=lambda x: x[0])
    path = tmp_path / "legs.pcap"
    path.write_bytes(pcap(frames))
    (flow,) = read_capture(path, MeterConfig()).flows
    return flow


def _stream(tmp_path: Path, arrivals: npt.ArrayLike, seqs: npt.ArrayLike,
            stamps: npt.ArrayLike, *, pt: int = 0) -> tuple[FlowRecord, Leg]:
    """One stream sent by the local side: its flow and its leg."""
    flow = _meter(tmp_path, [(float(t), True, _rtp(int(s), int(r), pt=pt)) for t, s, r in zip(
        np.asarray(arrivals).tolist(), np.asarray(seqs).tolist(), np.asarray(stamps).tolist(),
        strict=True)])
    legs = flow_legs(flow, LOCAL, None, 40.0)
    rtp = [leg for leg in legs if leg.ssrc is not None]
    assert len(rtp) == 1
    return flow, rtp[0]


def _pcmu(tmp_path: Path, n: int, *, first_seq: int = 1000,
          delay_s: npt.ArrayLike | None = None,
          keep: npt.NDArray[np.bool_] | None = None) -> tuple[FlowRecord, Leg]:
    """n packets of 20 ms PCMU (160 timestamp units), optional extra delay per packet."""
    i = np.arange(n)
    ts = T0 + 0.25 + i * 0.020 + (np.zeros(n) if delay_s is None else np.asarray(delay_s))
    if keep is None:
        keep = np.ones(n, dtype=bool)
    return _stream(tmp_path, ts[keep], (first_seq + i)[keep], (5000 + 160 * i)[keep])


# -- loss and reordering (RFC 3550 A.1, A.3) ---------------------------------------------------


def test_every_tenth_dropped(tmp_path: Path) -> None:
    _, leg = _pcmu(tmp_path, 1000, keep=np.arange(1000) % 10 != 5)
    assert (leg.packets, leg.expected, leg.reordered) == (900, 1000, 0)
    assert leg.loss_ratio == pytest.approx(0.1)
    assert leg.media == "audio" and leg.direction == "out"
    lost_per_second = [row[3] for row in leg.seconds]
    assert sum(lost_per_second) == 100
    _, clean = _pcmu(tmp_path, 1000)
    assert clean.loss_ratio == 0.0
    assert leg.mos is not None and clean.mos is not None and leg.mos < clean.mos - 1.0


def test_reordering_and_duplicates(tmp_path: Path) -> None:
    order = list(range(100))
    order[10], order[11] = 11, 10
    order[50], order[51] = 51, 50
    order.insert(30, 20)  # a late duplicate of packet 20
    ts = [T0 + k * 0.02 for k in range(len(order))]
    flow, leg = _stream(tmp_path, ts, [7 + o for o in order], [160 * o for o in order])
    assert (leg.packets, leg.expected) == (101, 100)
    (s,) = flow.rtp_streams
    assert s.lost == -1  # RFC 3550 A.3: duplicates make the loss negative
    assert leg.loss_ratio == 0.0  # ...and the leg counts no loss
    # Packets 10 and 50 came after a higher number; so did the duplicate of 20.
    assert leg.reordered == 3


def test_sequence_wrap_with_loss_across_it(tmp_path: Path) -> None:
    seqs = [s for s in range(65525, 65545) if s not in (65535, 65536)]
    flow, leg = _stream(tmp_path, [T0 + k * 0.02 for k in range(len(seqs))], seqs,
                        [160 * k for k in range(len(seqs))])
    assert (leg.expected, leg.packets) == (20, 18)
    assert leg.loss_ratio == pytest.approx(0.1)
    (s,) = flow.rtp_streams
    assert s.max_ext_seq - s.first_ext_seq == 19  # extended past 65535, not wrapped back


def test_loss_is_counted_in_the_second_the_stream_resumes(tmp_path: Path) -> None:
    n = 500  # 10 s from T0 + 0.25, with a hole from 4.75 s to 6.75 s
    keep = ~((np.arange(n) >= 225) & (np.arange(n) < 325))
    _, leg = _pcmu(tmp_path, n, keep=keep)
    arrivals = [0.25 + 0.02 * i for i in range(n) if keep[i]]
    counted = [sum(1 for a in arrivals if int(a) == sec) for sec in range(11)]
    rows = {int(r[0]) - int(T0): r for r in leg.seconds}
    assert 5 not in rows  # a second without packets has no row
    assert [int(rows[s][1]) for s in sorted(rows)] == [c for c in counted if c]
    assert [rows[s][2] for s in sorted(rows)] == [c * 172 * 8 for c in counted if c]
    assert rows[6][3] == 100 and sum(r[3] for r in leg.seconds) == 100
    assert leg.mean_bps == pytest.approx(400 * 172 * 8 / 10)


# -- jitter (RFC 3550 §6.4.1, A.8) and clock rates ---------------------------------------------


def test_jitter_hand_computed(tmp_path: Path) -> None:
    # Every other packet 5 ms late: |D| = 0.005 s each time.
    # J1 = 5/16 ms = 0.3125 ms; J2 = J1 + (5 - J1)/16; ...; J4 = 9.1009521484375/8000 s.
    ts = [1000.0 + k * 0.020 + (0.005 if k % 2 else 0.0) for k in range(5)]
    flow, leg = _stream(tmp_path, ts, range(5), [160 * k for k in range(5)])
    assert flow.rtp_streams[0].clock_hz == 8000
    assert leg.jitter_s == pytest.approx(9.1009521484375 / 8000, rel=1e-6)


def test_jitter_converges_to_constant_deviation_and_zero_when_regular(tmp_path: Path) -> None:
    n = 500
    late = np.where(np.arange(n) % 2 == 1, 0.005, 0.0)
    _, leg = _pcmu(tmp_path, n, delay_s=late)
    assert leg.jitter_s == pytest.approx(0.005, rel=1e-3)
    assert leg.mean_jitter_s is not None and leg.mean_jitter_s == pytest.approx(0.005, rel=0.05)
    _, regular = _pcmu(tmp_path, n)
    assert regular.jitter_s == pytest.approx(0.0, abs=2e-6)


@pytest.mark.parametrize(("clock", "per_frame", "step"), [(48000, 1, 960), (90000, 3, 3000),
                                                         (16000, 1, 320)])
def test_dynamic_payload_clock_is_estimated(tmp_path: Path, clock: int, per_frame: int,
                                            step: int) -> None:
    frames = 150
    k = np.arange(frames * per_frame)
    frame_no = k // per_frame
    ts = T0 + frame_no * (step / clock) + (k % per_frame) * 0.001
    flow, leg = _stream(tmp_path, ts, k, 77 + step * frame_no, pt=111)
    assert flow.rtp_streams[0].clock_hz == clock
    assert leg.media == ("audio" if clock in (16000, 48000) else None)
    assert leg.delay_rise_ms is not None  # transit is measured once the clock is known


def test_dynamic_payload_clock_rejected_when_nothing_fits(tmp_path: Path) -> None:
    k = np.arange(100)
    flow, leg = _stream(tmp_path, T0 + k * 0.02, k, 1240 * k, pt=100)  # 62 kHz: no rate fits
    assert flow.rtp_streams[0].clock_hz == 0
    assert leg.jitter_s == 0.0 and leg.delay_rise_ms is None and not leg.delay_plateau
    assert leg.media is None and leg.mos is None


# -- delay rise and plateau --------------------------------------------------------------------


def test_queue_growing_then_plateau(tmp_path: Path) -> None:
    # A token bucket filling: +20 ms of queue per second for 20 s, then flat at 400 ms.
    n = 60 * 50
    t = np.arange(n) * 0.020
    wobble = np.where(np.arange(n) % 3 == 0, 0.002, 0.0)
    _, leg = _pcmu(tmp_path, n, delay_s=np.minimum(0.020 * t, 0.400) + wobble)
    assert leg.delay_plateau
    assert leg.delay_rise_ms == pytest.approx(400, abs=25)
    tmin = np.asarray([r[5] for r in leg.seconds])
    assert len(tmin) >= 60
    _, _, start = delay_shape(tmin)
    assert start is not None and 1 <= start <= 3  # 30 ms above the base after 1.5 s


def test_queue_growing_without_plateau(tmp_path: Path) -> None:
    t = np.arange(30 * 50) * 0.020
    _, leg = _pcmu(tmp_path, len(t), delay_s=0.010 * t)
    assert leg.delay_rise_ms == pytest.approx(280, abs=25)
    assert not leg.delay_plateau
    tmin = np.asarray([r[5] for r in leg.seconds])
    x = np.arange(len(tmin), dtype=np.float64)
    assert theil_sen_slope(x, tmin) == pytest.approx(10.0, rel=0.05)


def test_constant_delay_has_no_trend(tmp_path: Path) -> None:
    _, leg = _pcmu(tmp_path, 1500, delay_s=np.full(1500, 0.080))
    assert leg.delay_rise_ms == pytest.approx(0.0, abs=0.01)
    assert not leg.delay_plateau


def test_theil_sen_ignores_outliers() -> None:
    x = np.arange(20, dtype=np.float64)
    y = 3.0 * x + 1.0
    y[[4, 11]] = 500.0
    assert theil_sen_slope(x, y) == pytest.approx(3.0)
    assert theil_sen_slope(np.zeros(3), np.ones(3)) is None
    y[7] = np.nan  # seconds without a measurement are left out
    assert theil_sen_slope(x, y) == pytest.approx(3.0)


def test_delay_shape_smoothing_is_the_median_of_three() -> None:
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


# -- legs of a flow ----------------------------------------------------------------------------


def test_streams_split_by_direction_and_ssrc_and_rate_legs(tmp_path: Path) -> None:
    k = np.arange(100)
    packets = [(T0 + 0.02 * i, True, _rtp(i, 160 * i)) for i in k.tolist()]
    packets += [(T0 + 0.003 + 0.02 * i, False, _rtp(9 + i, 160 * i, pt=8, ssrc=0xBEEF))
                for i in k.tolist()]
    packets += [(T0 + 1.001 + 0.02 * i, True, _rtp(i, 160 * i, ssrc=0xCAFE))
                for i in range(50)]
    flow = _meter(tmp_path, packets)
    legs = flow_legs(flow, LOCAL, "audio", 40.0)
    assert sorted((leg.direction, leg.ssrc, leg.packets) for leg in legs) == [
        ("in", 0xBEEF, 100), ("out", 0x1234, 100), ("out", 0xCAFE, 50)]
    assert all(leg.loss_ratio == 0.0 for leg in legs)
    # Seen from the other end, the same streams go the other way.
    assert {leg.direction for leg in flow_legs(flow, REMOTE, "audio", 40.0)
            if leg.ssrc == 0xBEEF} == {"out"}
    # Without RTP on one side, that side is judged by its rate.
    one_way = _meter(tmp_path, [p for p in packets if p[1]] + [
        (T0 + 0.1 + 0.02 * i, False, b"\x00" * 100) for i in range(40)])
    legs = flow_legs(one_way, LOCAL, None, 40.0)
    rate = [leg for leg in legs if leg.ssrc is None]
    assert len(rate) == 1 and rate[0].direction == "in" and rate[0].packets == 40
    assert rate[0].expected is None and rate[0].loss_ratio is None
    assert rate[0].mean_bps == pytest.approx(40 * 142 * 8)  # wire bytes, all in one second


# -- a real call -------------------------------------------------------------------------------


def _reference_jitter(path: Path) -> dict[int, tuple[int, float]]:
    """Packets and final RFC 3550 A.8 jitter (seconds) of each G.711 stream (PCMU, PCMA:
    8 kHz clock), packet by packet."""
    dpkt = pytest.importorskip("dpkt")
    state: dict[int, tuple[int, float, float | None]] = {}
    with path.open("rb") as f:
        for ts, buf in dpkt.pcap.Reader(f):
            udp = dpkt.ethernet.Ethernet(buf).data.data
            if not isinstance(udp, dpkt.udp.UDP):
                continue
            p = bytes(udp.data)
            if len(p) < 12 or p[0] >> 6 != 2 or p[1] & 0x7F not in (0, 8):
                continue
            ssrc = int.from_bytes(p[8:12], "big")
            transit = ts - int.from_bytes(p[4:8], "big") / 8000
            n, j, prev = state.get(ssrc, (0, 0.0, None))
            if prev is not None:
                j += (abs(transit - prev) - j) / 16
            state[ssrc] = (n + 1, j, transit)
    return {ssrc: (n, j) for ssrc, (n, j, _) in state.items()}


@pytest.mark.shared
@pytest.mark.skipif(not G711_PCAP.exists(), reason="../shared captures are not available")
def test_real_g711_call_matches_tshark_and_rfc3550() -> None:
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
        ref[int(m[1], 16)] = (int(m[2]), int(m[3]), float(m[9]))
    assert len(ref) == 2
    jitter = _reference_jitter(G711_PCAP)
    legs = {leg.ssrc: leg for flow in read_capture(G711_PCAP, MeterConfig()).flows
            for leg in flow_legs(flow, None, None, 40.0) if leg.ssrc in ref}
    assert set(legs) == set(ref)
    for ssrc, (pkts, lost, max_jitter_ms) in ref.items():
        leg = legs[ssrc]
        assert leg.packets == pkts == jitter[ssrc][0]
        assert leg.expected is not None and leg.expected - leg.packets == lost
        assert leg.media == "audio" and leg.mos is not None
        assert leg.jitter_s == pytest.approx(jitter[ssrc][1], abs=1e-7)
        assert leg.jitter_s is not None and leg.jitter_s * 1000 <= max_jitter_ms + 0.0006
        assert leg.delay_rise_ms is not None and leg.delay_rise_ms < 1.0  # no queue built up


def test_delay_spike_that_recedes_is_no_plateau() -> None:
    # A handover: the delay climbs over two seconds, holds four, then falls back for
    # eight. Most seconds after the peak are back at the base, so the slope from the
    # peak is flat by the median; but the queue did not stand.
    tmin = np.array([20, 20, 20, 100, 180, 180, 180, 180] + [20] * 8, dtype=np.float64)
    rise, plateau, start = delay_shape(tmin)
    assert rise == pytest.approx(160)
    assert start == 3
    assert not plateau
    # The same climb that stays up is one.
    held = np.array([20, 20, 20, 100, 180, 180, 180, 180] + [182] * 8, dtype=np.float64)
    assert delay_shape(held)[1]
