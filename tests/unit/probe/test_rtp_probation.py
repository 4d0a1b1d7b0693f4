"""A new RTP source is a stream once three of its packets are seen, two of them a forward
sequence step (at most RFC 3550 §A.1's MAX_DROPOUT) after the one before: a looser form
of §A.1's probation that lets loss through. What a stream comes to does not depend on
where the batches were cut."""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt
import pytest

from probe.rtpstate import CANDIDATE_IDLE_S, MAX_DROPOUT, RtpStreams


def _accepted(groups: list[tuple[int, list[int]]]) -> list[bool]:
    """Feed one batch: per (ssrc, sequence numbers), packets 20 ms apart in one flow;
    return, per group, whether its source became a stream (with all its packets)."""
    rows = [(ssrc, s, i) for ssrc, seqs in groups for i, s in enumerate(seqs)]

    def col(k: int) -> npt.NDArray[np.int64]:
        return np.asarray([r[k] for r in rows], dtype=np.int64)

    n = len(rows)
    ts = col(2) * 20_000_000 + 1_000_000_000
    streams = RtpStreams()
    streams.update(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), col(0), col(1),
                   col(2) * 160, np.zeros(n, dtype=np.int64), ts, np.full(n, 172, dtype=np.int64))
    taken = {s.ssrc: s.packets for s in streams.take([0]).get(0, [])}
    return [taken.get(ssrc) == len(seqs) for ssrc, seqs in groups]


def test_in_sequence_and_over_loss_and_a_wrap_are_sources() -> None:
    assert _accepted([(1, [100, 101, 102]), (2, [10, 13, 17]), (3, [65534, 65535, 0])]) == [
        True, True, True]


def test_repeated_or_wild_numbers_are_no_source() -> None:
    # A NetBIOS query's flags or a QUIC connection ID where the sequence number would be;
    # random bytes; a step back.
    assert _accepted([(4, [0x0110] * 5), (5, [7, 40000, 20000]), (6, [50, 49, 48]),
                      (7, [1, 2 + MAX_DROPOUT, 3 + 2 * MAX_DROPOUT])]) == [
        False, False, False, False]


def test_one_step_forward_is_not_enough() -> None:
    assert _accepted([(8, [5, 6, 6])]) == [False]


def _feed(streams: RtpStreams, groups: list[tuple[int, list[int]]], t0: int) -> list[bool]:
    """Feed one batch (packets 20 ms apart from ``t0`` * 20 ms on); return which rows are
    followed (a stream's, or a candidate's)."""
    rows = [(ssrc, s, t0 + i) for ssrc, seqs in groups for i, s in enumerate(seqs)]
    n = len(rows)
    col = [np.asarray([r[k] for r in rows], dtype=np.int64) for k in range(3)]
    got = streams.update(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), col[0],
                         col[1], col[2] * 160, np.zeros(n, dtype=np.int64),
                         col[2] * 20_000_000 + 1_000_000_000, np.full(n, 172, dtype=np.int64))
    return [bool(x) for x in got.tolist()]


def test_a_batch_of_sources_and_lookalikes_keeps_each_source_under_its_own_ssrc() -> None:
    streams = RtpStreams()
    # SSRC 1 sorts first: the lookalike comes before the sources in the batch's groups.
    first = [(2, [100, 101, 102]), (1, [0x0110] * 5), (5, [10, 13, 17]), (6, [50, 49, 48])]
    _feed(streams, first, 0)
    # The next batch: the sources go on, the lookalike still repeats itself.
    later = [(5, [18, 19, 20]), (1, [0x0110] * 5)]
    _feed(streams, later, 10)
    taken = streams.take([0])[0]
    assert sorted((s.ssrc, s.packets) for s in taken) == [(2, 3), (5, 6)]
    assert not streams.index and not streams.by_flow  # the lookalikes went with the flow


def test_a_source_whose_first_packets_fall_in_two_batches_is_one_stream() -> None:
    """Two packets at the end of one batch, the rest in the next: the stream counts from
    its first packet, as it does read in one batch."""
    whole = RtpStreams()
    _feed(whole, [(9, [500, 501, 502, 503, 504])], 0)
    split = RtpStreams()
    _feed(split, [(9, [500, 501])], 0)
    _feed(split, [(9, [502, 503, 504])], 2)
    [a] = whole.take([0])[0]
    [b] = split.take([0])[0]
    assert (a.packets, a.first_ext, a.max_ext, a.bytes) == (b.packets, b.first_ext,
                                                             b.max_ext, b.bytes) == (
        5, a.first_ext, a.first_ext + 4, 5 * 172)


def test_an_idle_candidate_is_forgotten_and_its_next_packets_start_again() -> None:
    streams = RtpStreams()
    _feed(streams, [(3, [7, 8])], 0)  # two packets: still on probation
    assert len(streams.index) == 1
    quiet = int(CANDIDATE_IDLE_S / 0.02) + 10  # in 20 ms steps
    _feed(streams, [(4, [1, 2, 3])], quiet)  # another source, much later
    assert list(streams.index) == [(0, 0, 4)]  # the idle candidate is gone
    _feed(streams, [(3, [9, 10])], quiet + 3)
    assert sorted((s.ssrc, s.packets) for s in streams.take([0])[0]) == [(4, 3)]


def _stream(seed: int, n: int = 400, jump_at: int | None = None
            ) -> dict[str, npt.NDArray[np.int64]]:
    """One Opus stream (dynamic payload type 111, 48 kHz): a packet every 20 ms with
    arrival jitter of a few milliseconds; ``jump_at``: from that packet on, the RTP
    timestamps are 0.44 s further on (a sender that resumed after holding its audio)."""
    rng = np.random.default_rng(seed)
    k = np.arange(n, dtype=np.int64)
    arrive = 1_700_000_000 * 10**9 + k * 20_000_000 + rng.integers(0, 6_000_000, n)
    rts = 5000 + k * 960
    if jump_at is not None:
        rts[jump_at:] += 21_000
    return {"fid": np.zeros(n, dtype=np.int64), "direction": np.zeros(n, dtype=np.int64),
            "ssrc": np.full(n, 0x1234, dtype=np.int64), "seq": (1000 + k) & 0xFFFF,
            "rts": rts & 0xFFFFFFFF, "pt": np.full(n, 111, dtype=np.int64),
            "ts": arrive, "size": np.full(n, 120, dtype=np.int64)}


def _state_in_batches(cols: dict[str, npt.NDArray[np.int64]], cuts: list[int]
                      ) -> tuple[int, int, float, npt.NDArray[np.float64]]:
    streams = RtpStreams()
    bounds = [0, *cuts, len(cols["ts"])]
    for a, z in itertools.pairwise(bounds):
        streams.update(*(cols[c][a:z] for c in ("fid", "direction", "ssrc", "seq", "rts",
                                                  "pt", "ts", "size")))
    [state] = streams.take([0])[0]
    return state.clock, state.packets, state.jitter_s, state.seconds


@pytest.mark.parametrize("n", [400, 120, 30])
def test_a_dynamic_clock_and_the_jitter_do_not_depend_on_where_batches_are_cut(n: int) -> None:
    """The clock of a dynamic payload type is read at the stream's sixth second (8 s
    stream), or at its end (2.4 s, 0.6 s); the jitter counts from its first packet
    either way. Read whole, or in batches cut anywhere (a live stream's batches end
    where the pipe ran dry), the stream's figures are the same."""
    cols = _stream(7, n)
    clock, packets, jitter, seconds = _state_in_batches(cols, [])
    assert clock == 48000 and packets == n and 0 < jitter < 0.01
    assert np.isfinite(seconds[:, 6]).all()  # a transit time in every second
    for cuts in ([10], [24, 25, 26], [30], [40, 41, 90], list(range(5, n, 5)),
                 [249, 250, 251, 300], list(range(1, n, 37))):
        cuts = [c for c in cuts if c < n]
        c, p, j, s = _state_in_batches(cols, cuts)
        # the same up to the last bits of a float (the smoothing is summed in other blocks)
        assert (c, p) == (clock, packets) and j == pytest.approx(jitter, rel=1e-12), cuts
        np.testing.assert_allclose(s, seconds, rtol=1e-12, equal_nan=True, err_msg=str(cuts))


def test_a_timestamp_jump_at_the_start_does_not_change_the_clock() -> None:
    """0.44 s of timestamps skipped after the first 10 packets: progress read over the
    first half second says nearly twice 48 kHz, nearest 90 kHz (a false burst of jitter on
    every packet after); the per-second median says 48 kHz."""
    cols = _stream(3, 400, jump_at=10)
    first = cols["ts"][0]
    half = int(np.argmax(cols["ts"] - first >= 500_000_000))
    early = (cols["rts"][half] - cols["rts"][0]) / ((cols["ts"][half] - first) / 1e9)
    assert abs(early - 90000) / 90000 < 0.15  # what an early reading would take
    for cuts in ([], [26], list(range(3, 400, 11))):
        clock, _, jitter, _ = _state_in_batches(cols, cuts)
        assert clock == 48000 and jitter < 0.01, cuts


def test_without_timing_figures_the_same_sources_become_the_same_streams() -> None:
    """``RtpStreams(quality=False)`` (what ``marsad flows`` counts streams with) finds the
    streams the full state finds, with the same packets, bytes and sequence figures, on
    the bundled call's packets; it works out no clock, jitter or per-second rows."""
    from pathlib import Path

    from probe import read_capture
    from probe.meter import MeterConfig

    path = Path(__file__).resolve().parents[3] / "captures" / "sample-call.pcap"
    full = read_capture(path, MeterConfig())
    counts = read_capture(path, MeterConfig(rtp_quality=False))

    def streams(run: object, timing: bool) -> list[tuple[object, ...]]:
        out = []
        for f in run.flows:  # type: ignore[attr-defined]
            for s in f.rtp_streams:
                out.append((f.uid, s.direction, s.ssrc, s.pt, s.packets, s.bytes,
                            s.cn_packets, s.first_ext_seq, s.max_ext_seq, s.reordered)
                           + ((s.clock_hz, s.jitter_s) if timing else ()))
        return out

    assert streams(full, False) == streams(counts, False)
    assert len(streams(full, False)) >= 2  # the call's two directions at least
    assert all(s.jitter_s > 0 for f in full.flows for s in f.rtp_streams)
    assert all(s.jitter_s == 0 and len(s.seconds) == 0
               for f in counts.flows for s in f.rtp_streams)
    assert [f.conn_dict() for f in full.flows] == [f.conn_dict() for f in counts.flows]
