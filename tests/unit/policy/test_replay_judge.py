"""The replay verdict on constructed series: Wehe's thresholds, both controls, the
shaper's queue, blocking, and loss on every run."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from policy.records import Reason, VerdictKind
from policy.replay import judge_replay
from policy.rules import Policy, load_policy
from probe.active.records import Interval, ReplayKind, ReplayMeasurement, ReplayRun, Series

IV = 0.25
N = 16          # 4 s of intervals
PKTS = 12       # packets per interval, 200 bytes each
SIZE = 200


def series(direction: str, received: Sequence[int], *, delays: Sequence[float] | None = None,
           lost: Sequence[int] = (), stun: Sequence[int] = ()) -> Series:
    """A direction whose every interval sent PKTS packets and received ``received[k]``."""
    ivs = []
    for k, got in enumerate(received):
        d = None if not got else (delays[k] if delays is not None else 1.0)
        ivs.append(Interval(k * IV, PKTS, PKTS * SIZE, got, got * SIZE, PKTS - got, d,
                            None if not got else 0.5))
    if not lost:
        lost = tuple(k * PKTS + j for k, got in enumerate(received) for j in range(PKTS - got))
    return Series(direction, IV, tuple(ivs), tuple(lost), tuple(stun))


def run(kind: ReplayKind, up: Series, down: Series, t: float = 1000.0) -> ReplayRun:
    return ReplayRun(kind, "udp", ("10.0.0.1", 40000), ("10.0.0.2", 3478), t, 5.0, up, down,
                     answered=any(iv.received_packets for iv in down.intervals), failure=None)


def clean(direction: str, rng: random.Random | None = None) -> Series:
    if rng is None:
        return series(direction, [PKTS] * N)
    return series(direction, [PKTS - (1 if rng.random() < 0.1 else 0) for _ in range(N)])


SANDWICH = (ReplayKind.ORIGINAL, ReplayKind.INVERTED, ReplayKind.RANDOM_PORTS,
            ReplayKind.ORIGINAL)
"""The test's runs: the original before and after the two controls."""
SAME = object()
"""``after_down``'s default: the second run of the original as the first."""


def measurement(orig_down: Series | None = None, inv_down: Series | None = None,
                rp_down: Series | None = None, orig_up: Series | None = None,
                kinds: Sequence[ReplayKind] = SANDWICH,
                after_down: Series | object | None = SAME) -> ReplayMeasurement:
    """Runs 6 s apart in the order of ``kinds``; both runs of the original carry
    ``orig_down`` unless ``after_down`` (the second's) says otherwise."""
    runs = []
    originals = 0
    for n, k in enumerate(kinds):
        if k is ReplayKind.ORIGINAL:
            down = orig_down if originals == 0 or after_down is SAME else after_down
            originals += 1
        else:
            down = inv_down if k is ReplayKind.INVERTED else rp_down
        up = orig_up if (k is ReplayKind.ORIGINAL and orig_up is not None) else clean("up")
        assert down is None or isinstance(down, Series)
        runs.append(run(k, up, down or clean("down"), 1000.0 + 6 * n))
    return ReplayMeasurement("whatsapp", "whatsapp@" + "0" * 64, 1000.0, tuple(runs))


POLICY: Policy = load_policy()


def test_identical_runs_are_ok() -> None:
    r = judge_replay(measurement(), POLICY)
    assert r.verdict.kind is VerdictKind.OK and r.verdict.reasons == ()
    assert r.test_keys["analysis"]["down"]["area"] == {"inverted": 0.0, "random-ports": 0.0}


def test_small_random_differences_are_ok() -> None:
    rng = random.Random(7)
    for _ in range(50):
        m = measurement(clean("down", rng), clean("down", rng), clean("down", rng))
        assert judge_replay(m, POLICY).verdict.kind is VerdictKind.OK


def test_original_slower_than_both_controls_down_only_is_differentiation() -> None:
    m = measurement(orig_down=series("down", [7] * N))
    r = judge_replay(m, POLICY)
    assert r.verdict.kind is VerdictKind.THROTTLED
    assert r.verdict.reasons == (Reason.REPLAY_DIFFERENTIATED,)
    (ev,) = r.verdict.evidence
    assert ev.figures["direction"] == "down" and ev.rule == "throttled.replay_differentiation"
    assert ev.figures["area"]["inverted"] >= 0.4 and ev.figures["ks_p"]["inverted"] < 0.05
    for benign in ("path congestion", "the trace's own rate", "the server"):
        assert benign in ev.text
    # Both runs of the original, before and after the controls, showed it: a passing
    # change of the path is ruled out, and the text says so.
    assert ("a passing change of the path (both original runs, before and after the "
            "controls, showed it)") in ev.text
    assert "Not ruled out" not in ev.text
    assert ev.figures["loss"]["original"] == ev.figures["loss"]["original-after"] > 0.4
    assert ev.figures["original_after"]["area"]["inverted"] >= 0.4
    assert r.test_keys["analysis"]["up"]["area"]["inverted"] == 0.0


def test_an_area_under_the_threshold_is_no_differentiation() -> None:
    # 1 packet in 12 fewer in every interval: KS is certain, the area (8 %) is not enough.
    r = judge_replay(measurement(orig_down=series("down", [11] * N)), POLICY)
    assert r.test_keys["analysis"]["down"]["ks_p"]["inverted"] < 0.05
    assert r.test_keys["analysis"]["down"]["area"]["inverted"] < 0.1
    assert r.verdict.kind is VerdictKind.OK


def test_a_large_area_without_a_significant_ks_is_no_differentiation() -> None:
    # Half the intervals empty, half full, against steady controls of the same mean:
    # the means agree (area 0) although the distributions differ.
    bursty = series("down", [PKTS if k % 2 else 0 for k in range(N)])
    steady = series("down", [PKTS // 2] * N)
    r = judge_replay(measurement(bursty, steady, steady), POLICY)
    assert r.verdict.kind is not VerdictKind.THROTTLED


def test_differing_from_one_control_only_is_inconclusive() -> None:
    slow = series("down", [7] * N)
    r = judge_replay(measurement(orig_down=slow, rp_down=slow), POLICY)
    assert r.verdict.kind is VerdictKind.UNKNOWN
    assert r.verdict.reasons == (Reason.REPLAY_INCONCLUSIVE,)
    assert "inverted control only" in r.verdict.evidence[0].text


def test_controls_that_disagree_are_inconclusive() -> None:
    r = judge_replay(measurement(orig_down=series("down", [6] * N),
                                 rp_down=series("down", [9] * N)), POLICY)
    assert r.verdict.kind is VerdictKind.UNKNOWN
    assert "disagree" in r.verdict.evidence[0].text


def test_random_loss_on_every_run_is_a_lossy_path_not_differentiation() -> None:
    rng = random.Random(3)

    def lossy() -> Series:
        return series("down", [PKTS - sum(rng.random() < 0.1 for _ in range(PKTS))
                               for _ in range(N)])
    for _ in range(20):
        r = judge_replay(measurement(lossy(), lossy(), lossy()), POLICY)
        assert r.verdict.kind in (VerdictKind.DEGRADED, VerdictKind.OK), r.verdict
        assert r.verdict.kind is not VerdictKind.THROTTLED
    assert Reason.REPLAY_PATH_IMPAIRED in r.verdict.reasons or r.verdict.kind is VerdictKind.OK


def test_a_queue_on_the_original_only_is_a_shaper() -> None:
    delays = [0, 30, 60, 90, 120, 150, 170, 175, 178, 180, 179, 181, 180, 180, 179, 180]
    got = [12, 12, 11, 10, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    m = measurement(orig_down=series("down", got, delays=[float(d) for d in delays]))
    r = judge_replay(m, POLICY)
    assert r.verdict.kind is VerdictKind.THROTTLED
    assert r.verdict.reasons[0] is Reason.REPLAY_SHAPED
    ev = r.verdict.evidence[0]
    assert ev.figures["delay_plateau"]["original"] is True
    assert ev.figures["delay_rise_ms"]["original"] >= 150
    assert "levelled off" in ev.text and "path congestion" in ev.text


def test_the_same_queue_on_a_control_too_is_no_shaper() -> None:
    delays = [float(d) for d in
              [0, 30, 60, 90, 120, 150, 170, 175, 178, 180, 179, 181, 180, 180, 179, 180]]
    got = [12, 12, 11, 10, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
    q = series("down", got, delays=delays)
    r = judge_replay(measurement(q, q, q), POLICY)
    assert Reason.REPLAY_SHAPED not in r.verdict.reasons
    assert r.verdict.kind is not VerdictKind.THROTTLED


def test_nothing_through_for_the_original_while_the_controls_work_is_blocked() -> None:
    r = judge_replay(measurement(orig_down=series("down", [0] * N)), POLICY)
    assert r.verdict.kind is VerdictKind.BLOCKED
    assert r.verdict.evidence[0].rule == "blocked.replay_no_answer"


def test_nothing_through_for_every_run_is_not_blocked() -> None:
    dead = series("down", [0] * N)
    r = judge_replay(measurement(dead, dead, dead), POLICY)
    assert r.verdict.kind is not VerdictKind.BLOCKED


def test_the_originals_stun_alone_lost_is_blocked() -> None:
    stun = (0, 1, 40, 90)
    orig = series("down", [PKTS] * N, lost=stun, stun=stun)
    ctrl = series("down", [PKTS] * N, stun=stun)
    r = judge_replay(measurement(orig, ctrl, ctrl), POLICY)
    assert r.verdict.kind is VerdictKind.BLOCKED
    assert r.verdict.evidence[0].rule == "blocked.replay_stun"
    assert r.test_keys["analysis"]["down"]["stun"]["lost_original"] == 4


def test_stun_lost_by_a_control_too_is_not_blocked() -> None:
    stun = (0, 1, 40, 90)
    orig = series("down", [PKTS] * N, lost=stun, stun=stun)
    r = judge_replay(measurement(orig, orig, series("down", [PKTS] * N, stun=stun)), POLICY)
    assert r.verdict.kind is not VerdictKind.BLOCKED


def test_stun_lost_at_the_originals_general_loss_rate_is_not_blocked() -> None:
    # 30 % loss everywhere on the original: losing 2 of its 4 STUN messages is chance.
    stun = (0, 1, 40, 90)
    lost = (0, 40, *range(100, 158))
    orig = series("down", [PKTS] * N, lost=lost, stun=stun)
    ctrl = series("down", [PKTS] * N, stun=stun)
    r = judge_replay(measurement(orig, ctrl, ctrl), POLICY)
    assert "blocked.replay_stun" not in [e.rule for e in r.verdict.evidence]


def test_a_missing_control_is_inconclusive() -> None:
    m = measurement(kinds=(ReplayKind.ORIGINAL, ReplayKind.INVERTED, ReplayKind.ORIGINAL))
    r = judge_replay(m, POLICY)
    assert r.verdict.kind is VerdictKind.UNKNOWN
    assert "random-ports" in r.verdict.evidence[0].text


def test_a_test_without_the_original_after_the_controls_is_inconclusive() -> None:
    # Three runs, the original first only (the order before the sandwich): even a
    # clear slowdown of that one run is no verdict.
    m = measurement(orig_down=series("down", [7] * N), kinds=tuple(ReplayKind))
    r = judge_replay(m, POLICY)
    assert r.verdict.kind is VerdictKind.UNKNOWN
    assert r.verdict.evidence[0].figures["missing"] == ["original (after the controls)"]
    # Both runs of the original before the controls bracket nothing either.
    m = measurement(orig_down=series("down", [7] * N),
                    kinds=(ReplayKind.ORIGINAL, ReplayKind.ORIGINAL, ReplayKind.INVERTED,
                           ReplayKind.RANDOM_PORTS))
    assert judge_replay(m, POLICY).verdict.kind is VerdictKind.UNKNOWN


def test_too_few_samples_are_inconclusive() -> None:
    short = series("down", [5, 5])
    full = series("down", [PKTS, PKTS])
    r = judge_replay(measurement(short, full, full), POLICY)
    assert r.verdict.kind is VerdictKind.UNKNOWN
    assert Reason.REPLAY_INCONCLUSIVE in r.verdict.reasons


def test_the_result_keeps_the_whole_measurement() -> None:
    m = measurement(orig_down=series("down", [7] * N))
    r = judge_replay(m, POLICY)
    kept = r.test_keys["measurement"]
    assert kept["trace"] == m.trace and len(kept["runs"]) == 4
    assert [x["kind"] for x in kept["runs"]] == ["original", "inverted", "random-ports",
                                                 "original"]
    assert kept["runs"][0]["down"]["intervals"][0]["received_packets"] == 7
    assert r.uid.startswith("T") and judge_replay(m, POLICY).uid == r.uid


def test_a_ks_test_with_ties_writes_nothing_on_stderr() -> None:
    # These samples make scipy's exact KS calculation fail; it used to warn on stderr in
    # the middle of `marsad test replay`'s output.
    code = ("from policy.replay import _ks_p; "
            "print(_ks_p([1000.0, 2000.0, 0.0, 2000.0, 3000.0], "
            "[1000.0, 2000.0, 2000.0, 3000.0, 3000.0]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=Path(__file__).resolve().parents[3])
    assert done.stderr == ""
    assert 0.0 < float(done.stdout) <= 1.0


SHAPER_DELAYS = [0.0, 30, 60, 90, 120, 150, 170, 175, 178, 180, 179, 181, 180, 180, 179, 180]
SHAPER_GOT = [12, 12, 11, 10, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]
STUN = (0, 1, 40, 90)
IMPAIRED = {
    "differentiated": series("down", [7] * N),
    "shaped": series("down", SHAPER_GOT, delays=SHAPER_DELAYS),
    "nothing through": series("down", [0] * N),
    "STUN lost": series("down", [PKTS] * N, lost=STUN, stun=STUN),
}
"""What one run of the original meets, each an interference verdict when both runs do."""


def _one_run_only(impaired: Series, which: str) -> ReplayMeasurement:
    ctrl = series("down", [PKTS] * N, stun=impaired.stun)
    if which == "before":
        return measurement(impaired, ctrl, ctrl, after_down=ctrl)
    return measurement(ctrl, ctrl, ctrl, after_down=impaired)


def test_interference_on_both_runs_of_the_original_is_a_verdict() -> None:
    expect = {"differentiated": VerdictKind.THROTTLED, "shaped": VerdictKind.THROTTLED,
              "nothing through": VerdictKind.BLOCKED, "STUN lost": VerdictKind.BLOCKED}
    for name, impaired in IMPAIRED.items():
        ctrl = series("down", [PKTS] * N, stun=impaired.stun)
        r = judge_replay(measurement(impaired, ctrl, ctrl), POLICY)
        assert r.verdict.kind is expect[name], (name, r.verdict)
        for ev in r.verdict.evidence:
            assert ev.text.startswith("Both runs of the original, before and after the "
                                      "controls, showed it."), ev.text
            assert ev.text.count("Before: ") == 1 and ev.text.count(" After: ") == 1
            assert ev.figures["loss"]["original"] == ev.figures["loss"]["original-after"]


def test_interference_on_one_run_of_the_original_alone_is_no_verdict() -> None:
    # A passing event on the path (another download, a radio fade) that hits one run of
    # the original, before or after the controls, is not the network's treatment of
    # the app: no throttled, no blocked; the figures of both runs are kept.
    for name, impaired in IMPAIRED.items():
        for which in ("before", "after"):
            r = judge_replay(_one_run_only(impaired, which), POLICY)
            assert r.verdict.kind is VerdictKind.UNKNOWN, (name, which, r.verdict)
            assert r.verdict.reasons == (Reason.REPLAY_INCONCLUSIVE,)
            (ev,) = r.verdict.evidence
            assert ev.rule == "unknown.replay_originals_disagree"
            assert ev.figures["direction"] == "down"
            assert "the two runs of the original disagreed" in ev.text
            shown = ("the run before the controls showed replay-" if which == "before"
                     else "the run after them showed replay-")
            assert shown in ev.text, ev.text
            clean_key, hit_key = ("original-after", "original") if which == "before" \
                else ("original", "original-after")
            assert ev.figures["loss"][clean_key] == 0.0
            assert ev.figures["loss"][hit_key] > 0.0 or name == "STUN lost"
            assert "area" in ev.figures["original_after"]
            assert "Ruled out" not in ev.text


def test_the_two_runs_of_the_original_by_different_rules_are_no_verdict() -> None:
    # Nothing through before the controls, a shaper's queue after them: neither rule is
    # shown by both runs.
    ctrl = series("down", [PKTS] * N)
    r = judge_replay(measurement(IMPAIRED["nothing through"], ctrl, ctrl,
                                 after_down=series("down", [12] * N)), POLICY)
    assert r.verdict.kind is VerdictKind.UNKNOWN
    assert r.verdict.evidence[0].rule == "unknown.replay_originals_disagree"


def test_loss_on_the_four_runs_is_a_lossy_path_and_names_them() -> None:
    lossy = series("down", [10] * N)
    r = judge_replay(measurement(lossy, lossy, lossy), POLICY)
    assert r.verdict.reasons == (Reason.REPLAY_PATH_IMPAIRED,)
    assert "All four runs lost packets" in r.verdict.evidence[0].text
    # Not when the original after the controls lost nothing.
    r = judge_replay(measurement(lossy, lossy, lossy, after_down=clean("down")), POLICY)
    assert Reason.REPLAY_PATH_IMPAIRED not in r.verdict.reasons
