"""A new RTP source is tracked once three of its packets are seen in one batch, two of
them a forward sequence step (at most RFC 3550 §A.1's MAX_DROPOUT) after the one before:
a looser form of §A.1's probation that lets loss through."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from probe.rtpstate import MAX_DROPOUT, RtpStreams


def _accepted(groups: list[tuple[int, list[int]]]) -> list[bool]:
    """Feed one batch: per (ssrc, sequence numbers), packets 20 ms apart in one flow;
    return, per group, whether its packets were taken as a stream."""
    rows = [(ssrc, s, i) for ssrc, seqs in groups for i, s in enumerate(seqs)]

    def col(k: int) -> npt.NDArray[np.int64]:
        return np.asarray([r[k] for r in rows], dtype=np.int64)

    n = len(rows)
    ts = col(2) * 20_000_000 + 1_000_000_000
    got = RtpStreams().update(np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64), col(0),
                              col(1), col(2) * 160, np.zeros(n, dtype=np.int64), ts,
                              np.full(n, 172, dtype=np.int64))
    out, at = [], 0
    for _, seqs in groups:
        out.append(bool(got[at:at + len(seqs)].all()))
        at += len(seqs)
    return out


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
    assert _feed(streams, first, 0) == [True] * 3 + [False] * 5 + [True] * 3 + [False] * 3
    # The next batch: the sources go on, the lookalike still repeats itself.
    later = [(5, [18, 19, 20]), (1, [0x0110] * 5)]
    assert _feed(streams, later, 10) == [True] * 3 + [False] * 5
    taken = streams.take([0])[0]
    assert sorted((s.ssrc, s.packets) for s in taken) == [(2, 3), (5, 6)]
