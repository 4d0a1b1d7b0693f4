"""The replay test's verdict: did the network treat the app's traffic differently?

A replay measurement holds the app's trace (the *original*) run twice, and two controls
run between those two runs over the same path in the same test (a sandwich: original,
inverted, random ports, original): the trace with inverted payload bits (same sizes and
timing, no signature) and the trace between random ports. Each direction is judged on
its own, since a network may throttle only what comes down. Each run of the original is
compared with both controls; in a direction:

- **blocked** (``replay-blocked``) when the original got nothing through while both
  controls did, or when the original's STUN messages, and they alone, were lost while
  both controls delivered theirs: the call's set-up gets no answer.
- **throttled** (``replay-shaped``) when the original, and neither control, shows a
  shaper's signature: loss while the one-way delay climbed and levelled off (a queue in
  front of a rate limit), the received rate held at a plateau below the offered one.
- **throttled** (``replay-differentiated``) by Wehe's decision: the original's
  throughput samples differ from *each* control's by the area test (relative difference
  of the means at least ``replay.area_threshold``) and the two-sample Kolmogorov-Smirnov
  test (p at most ``replay.ks_p_threshold``), the original being the slower, while the
  two controls agree with each other.

Each of these interference verdicts needs *both* runs of the original to show it, by the
same rule, in the same direction: a passing event on the path (another transfer, a radio
fade) that hits one run of the original alone would otherwise read as interference.
When one run shows it and the other does not, the verdict is unknown
(``replay-inconclusive``, rule ``unknown.replay_originals_disagree``) with the figures of
both runs. Otherwise:

- **degraded** (``replay-path-impaired``) when all four runs lost packets: the path is
  lossy for any traffic, which is not differentiation.
- **unknown** (``replay-inconclusive``) when a run is missing or failed, the runs are too
  short, an original differs from one control only, or the controls disagree.

Otherwise the verdict is ok. Every interference verdict's text names the benign
explanations the measurement rules out, a passing change of the path among them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import binom, ks_2samp

from policy.legs import delay_shape
from policy.records import Evidence, Reason, TestKind, TestResult
from policy.rules import Policy, verdict_from
from probe.active.records import ReplayKind, ReplayMeasurement, ReplayRun, Series

__all__ = ["judge_replay", "measurement_dict", "throughput_bps"]

EXCLUDED = ("path congestion lasting through the test: both controls crossed the same "
            "path in the same test and were not affected; the trace's own rate: the "
            "inverted control has the same packet sizes and timing; the server: it "
            "answered both controls")
"""The benign explanations a verdict against both controls rules out."""
RULED_OUT = (f"Ruled out: {EXCLUDED}; a passing change of the path (both original runs, "
             "before and after the controls, showed it).")
"""The sentence every interference verdict's text ends with."""
PER_RUN = ("sent", "loss", "mean_bps", "delay_rise_ms", "delay_plateau")
"""The figures of a direction given per run (the original, the original after the
controls, and the controls)."""
AFTER = "original-after"
"""The key of the second run of the original (after the controls) in per-run figures."""


def throughput_bps(series: Series, window: tuple[float, float]) -> list[float]:
    """Received bits per second of each interval that starts within ``window`` (Wehe's
    throughput samples)."""
    lo, hi = window
    return [8.0 * iv.received_bytes / series.interval_s for iv in series.intervals
            if lo - 1e-9 <= iv.start_s < hi - 1e-9]


@dataclass(frozen=True, slots=True)
class _Dir:
    """One direction of one run, summarised."""

    sent: int
    received: int
    lost: frozenset[int]
    stun: tuple[int, ...]
    xput: list[float]
    offered_bps: float
    delay_rise_ms: float | None
    plateau: bool

    @property
    def loss(self) -> float:
        return (self.sent - self.received) / self.sent if self.sent else 0.0

    @property
    def delivered(self) -> float:
        return self.received / self.sent if self.sent else 0.0


def _summary(s: Series, window: tuple[float, float]) -> _Dir:
    sent = sum(iv.sent_packets for iv in s.intervals)
    received = sum(iv.received_packets for iv in s.intervals)
    delays = np.array([np.nan if iv.delay_ms is None else iv.delay_ms
                       for iv in s.intervals], dtype=np.float64)
    rise, plateau, _ = delay_shape(delays)
    span = window[1] - window[0]
    offered = 8.0 * sum(iv.sent_bytes for iv in s.intervals
                        if window[0] - 1e-9 <= iv.start_s < window[1] - 1e-9) / max(
        span, s.interval_s)
    return _Dir(sent, received, frozenset(s.lost), s.stun, throughput_bps(s, window),
                offered, rise, plateau)


def _window(s: Series) -> tuple[float, float]:
    """The stretch of whole intervals of sending in a direction, ``(start, end)``: the
    throughput samples. Intervals the schedule starts or ends within are partly empty in
    every run (and after the last come only late packets), so they are left out at both
    ends; in between every interval counts, however much the trace sent in it."""
    sending = [iv for iv in s.intervals if iv.sent_packets]
    if not sending:
        return 0.0, 0.0
    typical = float(np.median([iv.sent_bytes for iv in sending]))
    whole = [iv for iv in sending if iv.sent_bytes >= 0.9 * typical]
    first, last = whole[0], whole[-1]
    return first.start_s, last.start_s + s.interval_s


def _area(orig: list[float], ctrl: list[float]) -> float:
    """Wehe's area test: (mean control - mean original) / the larger mean; positive when
    the original was slower."""
    a, b = float(np.mean(orig)), float(np.mean(ctrl))
    top = max(a, b)
    return (b - a) / top if top > 0 else 0.0


# With ties (throughput samples often repeat) scipy's exact two-sample KS calculation may
# fail; it then uses the asymptotic p-value and warns on stderr, in the middle of the
# test's output. The p-value is the one recorded either way: the warning is dropped.
warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful",
                        category=RuntimeWarning)


def _ks_p(a: list[float], b: list[float]) -> float:
    """The two-sample Kolmogorov-Smirnov p-value of ``a`` against ``b``."""
    if a == b or (len(set(a)) == 1 and set(a) == set(b)):
        return 1.0
    return float(ks_2samp(a, b).pvalue)


def _r(x: float | None, n: int = 4) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, n)


def _ev(rule: str, reason: Reason, run: ReplayRun, figures: dict[str, Any],
        text: str) -> Evidence:
    return Evidence(rule, reason, (), (), run.started_ts, run.started_ts + run.duration_s,
                    figures, text)


def _judge_direction(d: str, o: _Dir, i: _Dir, r: _Dir, run: ReplayRun, pol: Policy
                     ) -> tuple[list[Evidence], dict[str, Any]]:
    """Evidence for one direction, and its figures."""
    ctrls = {"inverted": i, "random-ports": r}
    figures: dict[str, Any] = {
        "direction": d,
        "sent": {"original": o.sent, "inverted": i.sent, "random-ports": r.sent},
        "loss": {k: _r(v.loss) for k, v in (("original", o), *ctrls.items())},
        "mean_bps": {k: _r(float(np.mean(v.xput)) if v.xput else 0.0, 1)
                     for k, v in (("original", o), *ctrls.items())},
        "offered_bps": _r(o.offered_bps, 1),
        "delay_rise_ms": {k: _r(v.delay_rise_ms, 1) for k, v in (("original", o),
                                                                 *ctrls.items())},
        "delay_plateau": {k: v.plateau for k, v in (("original", o), *ctrls.items())}}
    area = {k: _area(o.xput, v.xput) for k, v in ctrls.items()}
    ks = {k: _ks_p(o.xput, v.xput) for k, v in ctrls.items()}
    figures["area"] = {k: _r(v) for k, v in area.items()}
    figures["ks_p"] = {k: _r(v, 6) for k, v in ks.items()}
    figures["area_controls"] = _r(_area(i.xput, r.xput))
    figures["thresholds"] = {"area": pol.replay.area_threshold,
                             "ks_p": pol.replay.ks_p_threshold}
    out: list[Evidence] = []
    ok_ctrl = min(i.delivered, r.delivered) >= pol.replay.control_min_delivered
    where = "from the server" if d == "down" else "to the server"

    # Blocked: nothing of the original got through.
    if o.sent and o.delivered <= pol.replay.blocked_max_delivered and ok_ctrl:
        out.append(_ev("blocked.replay_no_answer", Reason.REPLAY_BLOCKED, run, figures,
                       f"{o.received} of the original's {o.sent} packets {where} arrived, "
                       f"while the inverted control delivered {i.delivered:.0%} and the "
                       f"random-ports control {r.delivered:.0%}."))
        return out, figures

    # Blocked: the original's STUN messages, and they alone, were lost.
    stun_lost = sorted(set(o.stun) & o.lost)
    other_sent = o.sent - len(o.stun)
    other_loss = len(o.lost - set(o.stun)) / other_sent if other_sent else 0.0
    figures["stun"] = {"sent": len(o.stun), "lost_original": len(stun_lost),
                       "lost_controls": [len(set(c.stun) & c.lost) for c in (i, r)]}
    if stun_lost and ok_ctrl:
        p = float(binom.sf(len(stun_lost) - 1, len(o.stun),
                           max(other_loss, pol.replay.stun_min_base_loss)))
        figures["stun"]["p"] = _r(p, 9)
        delivered_by_ctrls = all(not (set(c.stun) & c.lost & set(stun_lost)) for c in (i, r))
        if (len(stun_lost) >= pol.replay.stun_min_lost and delivered_by_ctrls
                and p <= pol.replay.stun_max_p):
            out.append(_ev(
                "blocked.replay_stun", Reason.REPLAY_BLOCKED, run, figures,
                f"{len(stun_lost)} of the original's {len(o.stun)} STUN messages {where} "
                f"were lost (packets {', '.join(map(str, stun_lost[:16]))}) against "
                f"{other_loss:.1%} of its other packets (chance p={p:.1e}), while both "
                f"controls delivered the same messages: the call's set-up gets no answer."))

    # Throttled: a shaper's queue on the original only.
    def shaped(x: _Dir) -> bool:
        return (x.loss >= pol.replay.shaper_min_loss and x.plateau
                and (x.delay_rise_ms or 0.0) >= pol.replay.shaper_min_delay_rise_ms)
    if shaped(o) and not shaped(i) and not shaped(r) and ok_ctrl:
        half = o.xput[len(o.xput) // 2:]
        plateau_bps = float(np.median(half)) if half else 0.0
        figures["plateau_bps"] = _r(plateau_bps, 1)
        out.append(_ev(
            "throttled.replay_shaper", Reason.REPLAY_SHAPED, run, figures,
            f"The original {where} lost {o.loss:.1%} of its packets while its one-way delay "
            f"rose {o.delay_rise_ms:.0f} ms and levelled off (a queue in front of a rate "
            f"limit); it was received at about {plateau_bps / 1000:.0f} kbit/s of "
            f"{o.offered_bps / 1000:.0f} kbit/s offered. The controls lost "
            f"{i.loss:.1%} (inverted) and {r.loss:.1%} (random ports)."))

    # Wehe's decision against each control.
    n_min = pol.replay.min_intervals
    if min(len(o.xput), len(i.xput), len(r.xput)) < n_min:
        out.append(_ev("unknown.replay_inconclusive", Reason.REPLAY_INCONCLUSIVE, run,
                       figures, f"Too few throughput samples {where} to compare (fewer "
                       f"than {n_min} intervals)."))
        return out, figures
    a_t, p_t = pol.replay.area_threshold, pol.replay.ks_p_threshold
    slower = {k: area[k] >= a_t and ks[k] <= p_t for k in ctrls}
    faster = {k: area[k] <= -a_t and ks[k] <= p_t for k in ctrls}
    controls_agree = abs(_area(i.xput, r.xput)) < pol.replay.controls_max_area
    if all(slower.values()) and controls_agree:
        out.append(_ev(
            "throttled.replay_differentiation", Reason.REPLAY_DIFFERENTIATED, run, figures,
            f"The original's throughput {where} was {area['inverted']:.0%} below the "
            f"inverted control's (KS p={ks['inverted']:.1e}) and {area['random-ports']:.0%} "
            f"below the random-ports control's (KS p={ks['random-ports']:.1e}), while the "
            f"controls agreed."))
    elif (any(slower.values()) or any(faster.values()) or not controls_agree) and not any(
            e.rule.startswith(("throttled.", "blocked.")) for e in out):
        which = [k for k in ctrls if slower[k] or faster[k]]
        if len(which) == 1:
            why = (f"the original differs from the {which[0]} control only, so the "
                   "difference cannot be told from a change of the path")
        elif not controls_agree:
            why = "the two controls disagree with each other (the path changed during the test)"
        else:
            why = "the original was faster than both controls"
        out.append(_ev("unknown.replay_inconclusive", Reason.REPLAY_INCONCLUSIVE, run,
                       figures, f"No verdict {where}: {why}."))

    return out, figures


_INTERFERENCE = ("throttled.", "blocked.")


def _interference(evidence: list[Evidence]) -> dict[str, Evidence]:
    """The interference verdicts among one run's evidence, by rule."""
    return {e.rule: e for e in evidence if e.rule.startswith(_INTERFERENCE)}


def _both_figures(f1: dict[str, Any], f2: dict[str, Any]) -> dict[str, Any]:
    """A direction's figures for both runs of the original: the first run's as they are
    (``original`` in the per-run figures), the second's beside them (``original-after``)
    and its comparison with the controls under ``original_after``."""
    out = dict(f1)
    for k in PER_RUN:
        first = dict(f1[k])
        out[k] = {"original": first.pop("original"), AFTER: f2[k]["original"], **first}
    out["original_after"] = {k: f2[k] for k in ("area", "ks_p", "stun", "plateau_bps")
                             if k in f2}
    return out


def _combine(d: str, judged: tuple[tuple[list[Evidence], dict[str, Any]], ...],
             o: tuple[_Dir, _Dir], i: _Dir, r: _Dir, span: tuple[float, float],
             pol: Policy) -> tuple[list[Evidence], dict[str, Any]]:
    """One direction's evidence from the judgements of the two runs of the original:
    an interference rule holds only when both runs show it."""
    (ev1, f1), (ev2, f2) = judged
    figures = _both_figures(f1, f2)
    where = "from the server" if d == "down" else "to the server"
    first, second = _interference(ev1), _interference(ev2)

    def ev(rule: str, reason: Reason, text: str) -> Evidence:
        return Evidence(rule, reason, (), (), span[0], span[1], figures, text)
    agreed = [rule for rule in first if rule in second]
    if agreed:
        return [ev(rule, first[rule].reason,
                   f"Both runs of the original, before and after the controls, showed it. "
                   f"Before: {first[rule].text} After: {second[rule].text} {RULED_OUT}")
                for rule in agreed], figures
    if first or second:
        def told(found: dict[str, Evidence], x: _Dir, mean: Any) -> str:
            seen = (", ".join(sorted({str(e.reason) for e in found.values()}))
                    if found else "no interference")
            return (f"{seen} (loss {x.loss:.1%}, {float(mean or 0.0) / 1000:.0f} kbit/s "
                    "received)")
        mean = figures["mean_bps"]
        text = (f"No verdict {where}: the two runs of the original disagreed: the run "
                f"before the controls showed {told(first, o[0], mean['original'])}, the "
                f"run after them showed {told(second, o[1], mean[AFTER])}, against the controls' "
                f"loss of {i.loss:.1%} (inverted) and {r.loss:.1%} (random ports). A "
                "passing change of the path during one run (another transfer, a radio "
                "fade) does that; the network's treatment of the app would show in both. "
                + " ".join(f"{when}: {e.text}" for when, found in
                           (("Before", first), ("After", second)) for e in found.values()))
        return [ev("unknown.replay_originals_disagree", Reason.REPLAY_INCONCLUSIVE,
                   text.strip())], figures
    out: list[Evidence] = []
    for when, found in (("", ev1), ("The run of the original after the controls: ", ev2)):
        unsure = [e for e in found if e.rule == "unknown.replay_inconclusive"]
        if unsure and not out:
            out.append(ev(unsure[0].rule, unsure[0].reason, when + unsure[0].text))
    # Every run lost packets: the path, not the app.
    if not out and min(o[0].loss, o[1].loss, i.loss, r.loss) > pol.replay.path_max_loss:
        out.append(ev(
            "degraded.replay_path", Reason.REPLAY_PATH_IMPAIRED,
            f"All four runs lost packets {where} (the original {o[0].loss:.1%} before and "
            f"{o[1].loss:.1%} after the controls, inverted {i.loss:.1%}, random ports "
            f"{r.loss:.1%}): the path is lossy for any traffic; that is not "
            "differentiation."))
    return out, figures


def measurement_dict(m: ReplayMeasurement) -> dict[str, Any]:
    """The measurement as plain JSON, field by field (``test_keys["measurement"]``): the
    record rebuilds from it, so the test can be judged again."""
    value: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(m)))
    return value


def _uid(m: ReplayMeasurement, keys: dict[str, Any]) -> str:
    """``T`` + 17 hex digits of a BLAKE2b digest of the app, the test kind, its start
    time and its measurement."""
    text = json.dumps([m.app, "replay", m.started_ts, keys], sort_keys=True)
    return "T" + hashlib.blake2b(text.encode(), digest_size=9).hexdigest()[:17]


def _sandwich(m: ReplayMeasurement) -> tuple[list[str], list[ReplayRun]]:
    """The runs the test lacks, and the two runs of the original that bracket the
    controls (the first and the last run of the original)."""
    kinds = {r.kind: r for r in m.runs}
    missing = [str(k) for k in (ReplayKind.INVERTED, ReplayKind.RANDOM_PORTS)
               if k not in kinds]
    originals = [r for r in m.runs if r.kind is ReplayKind.ORIGINAL]
    controls = [r for r in m.runs if r.kind is not ReplayKind.ORIGINAL]
    if not originals:
        missing.insert(0, "original")
    elif controls:
        if originals[0].started_ts > min(c.started_ts for c in controls):
            missing.insert(0, "original (before the controls)")
        if len(originals) < 2 or originals[-1].started_ts < max(c.started_ts
                                                                for c in controls):
            missing.append("original (after the controls)")
    return missing, [originals[0], originals[-1]] if originals else []


def judge_replay(m: ReplayMeasurement, policy: Policy) -> TestResult:
    """The verdict on a replay test (see the module's docstring)."""
    keys: dict[str, Any] = {"measurement": measurement_dict(m)}
    runs = {r.kind: r for r in m.runs}
    duration = max((r.started_ts + r.duration_s for r in m.runs), default=m.started_ts) \
        - m.started_ts
    uid = _uid(m, keys)
    missing, originals = _sandwich(m)
    failed = [f"{r.kind}: {r.failure}" for r in m.runs if r.failure is not None
              and r.kind is not ReplayKind.ORIGINAL]
    if missing or failed:
        text = ("the test lacks the " + ", ".join(missing) + " run(s)" if missing else
                "a control run failed (" + "; ".join(failed) + ")")
        ev = Evidence("unknown.replay_inconclusive", Reason.REPLAY_INCONCLUSIVE, (), (),
                      m.started_ts, m.started_ts + duration, {"missing": missing,
                                                              "failed": failed},
                      f"No verdict: {text}; differentiation needs both controls over the "
                      "same path, and a run of the original before and after them.")
        return TestResult(uid, TestKind.REPLAY, m.app, m.started_ts, round(duration, 3),
                          verdict_from([ev]), keys)
    first, last = originals
    span = (first.started_ts, last.started_ts + last.duration_s)
    evidence: list[Evidence] = []
    analysis: dict[str, Any] = {}
    down = [o.failure for o in originals if o.failure is not None and not o.answered]
    if down:
        # A run of the original whose data path failed outright (its TCP connection).
        analysis["original_failure"] = [o.failure for o in originals]
        controls_up = all(runs[k].answered for k in (ReplayKind.INVERTED,
                                                     ReplayKind.RANDOM_PORTS))
        fig = {"original_failure": [o.failure for o in originals]}
        if len(down) == 2 and controls_up:
            evidence.append(Evidence(
                "blocked.replay_no_answer", Reason.REPLAY_BLOCKED, (), (), *span, fig,
                f"Both runs of the original, before and after the controls, failed to "
                f"connect over {first.transport} ({down[0]}; {down[1]}) while both "
                f"controls' connections to the same server worked. {RULED_OUT}"))
        elif len(down) == 1 and controls_up:
            which = "before" if first.failure is not None and not first.answered \
                else "after"
            evidence.append(Evidence(
                "unknown.replay_originals_disagree", Reason.REPLAY_INCONCLUSIVE, (), (),
                *span, fig,
                f"No verdict: the two runs of the original disagreed: the run {which} the "
                f"controls failed to connect over {first.transport} ({down[0]}), the other "
                "connected, as both controls did. A passing change of the path during one "
                "run does that; the network's treatment of the app would show in both."))
    for d in ("up", "down"):
        window = _window(getattr(first, d))
        if window[1] <= window[0]:
            window = _window(getattr(last, d))
        o1, o2 = (_summary(getattr(o, d), window) for o in originals)
        i, r = (_summary(getattr(runs[k], d), window) for k in
                (ReplayKind.INVERTED, ReplayKind.RANDOM_PORTS))
        judged = (_judge_direction(d, o1, i, r, first, policy),
                  _judge_direction(d, o2, i, r, last, policy))
        found, figures = _combine(d, judged, (o1, o2), i, r, span, policy)
        evidence += found
        analysis[d] = figures
    keys["analysis"] = analysis
    return TestResult(uid, TestKind.REPLAY, m.app, m.started_ts, round(duration, 3),
                      verdict_from(evidence), keys)
