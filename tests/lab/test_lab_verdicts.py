"""Verdicts on real traffic through a network that really blocks, throttles and drops.

Every scenario of the lab (tests/lab/scenarios.py) is analysed with the whole
pipeline; each asserts its verdict and main reason, and the clean run must
produce no blocked, throttled or degraded verdict anywhere.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

from api.pipeline import AnalysisResult, analyze_capture
from policy.records import Reason, VerdictKind

LabCaptures = dict[str, tuple[Path, dict[str, Any]]]
INTERFERENCE = {VerdictKind.BLOCKED, VerdictKind.THROTTLED, VerdictKind.DEGRADED}


@cache
def _analyse(path: str) -> AnalysisResult:
    return analyze_capture(path, workers=1)


def _verdicts(result: AnalysisResult) -> list[tuple[VerdictKind, tuple[Reason, ...]]]:
    out = [(c.verdict.kind, c.verdict.reasons) for c in result.analysis.calls]
    out += [(v.kind, v.reasons) for v in result.analysis.flow_verdicts.values()]
    return out


def _main_call(result: AnalysisResult) -> Any:
    """The scenario's call: the one with the most media packets."""
    calls = result.analysis.calls
    assert calls, "no call found"
    return max(calls, key=lambda c: sum(leg.packets for leg in c.legs))


def test_clean_run_has_no_interference(lab_captures: LabCaptures) -> None:
    result = _analyse(str(lab_captures["clean"][0]))
    assert result.analysis.calls
    bad = [v for v in _verdicts(result) if v[0] in INTERFERENCE]
    assert not bad, bad
    for call in result.analysis.calls:
        for leg in call.legs:
            if leg.loss_ratio is not None:
                assert leg.loss_ratio < 0.01


@pytest.mark.parametrize(("scenario", "kind", "reason"), [
    ("block_udp", VerdictKind.BLOCKED, Reason.STUN_UNANSWERED),
    ("block_stun", VerdictKind.BLOCKED, Reason.STUN_UNANSWERED),
    ("throttle_voice_64k", VerdictKind.THROTTLED, Reason.RATE_CAPPED),
    ("throttle_voice_32k", VerdictKind.THROTTLED, Reason.RATE_CAPPED),
    ("throttle_video_500k", VerdictKind.THROTTLED, Reason.RATE_CAPPED),
    ("delayed_throttle", VerdictKind.THROTTLED, Reason.DELAYED_THROTTLE),
    ("loss_5", VerdictKind.DEGRADED, Reason.HIGH_LOSS),
    ("loss_15", VerdictKind.DEGRADED, Reason.HIGH_LOSS),
])
def test_call_verdict(lab_captures: LabCaptures, scenario: str, kind: VerdictKind,
                      reason: Reason) -> None:
    result = _analyse(str(lab_captures[scenario][0]))
    call = _main_call(result)
    assert call.verdict.kind is kind, (call.verdict.kind, call.verdict.reasons)
    assert call.verdict.reasons[0] is reason, call.verdict.reasons
    ev = call.verdict.evidence[0]
    assert ev.flow_uids and ev.text and ev.frames


def test_block_udp_also_shows_media_never_returned(lab_captures: LabCaptures) -> None:
    call = _main_call(_analyse(str(lab_captures["block_udp"][0])))
    assert Reason.MEDIA_NO_RETURN in call.verdict.reasons


def test_throttled_rate_matches_the_shaper(lab_captures: LabCaptures) -> None:
    path, meta = lab_captures["throttle_voice_32k"]
    call = _main_call(_analyse(str(path)))
    received = [leg for leg in call.legs if leg.direction == "in" and leg.loss_ratio]
    assert received
    leg = received[0]
    assert leg.delay_plateau
    assert (leg.delay_rise_ms or 0) > 200
    # The wire rate that got through is the shaper's, within 20 %: packets per second
    # received times the frame size on the wire.
    nominal = meta["media"][0]["nominal"]
    got_pps = sum(s[1] for s in leg.seconds[1:-1]) / max(len(leg.seconds) - 2, 1)
    wire_kbit = got_pps * nominal["frame_bytes"] * 8 / 1000
    assert abs(wire_kbit - meta["impairment"]["rate_kbit"]) <= 0.2 * meta["impairment"][
        "rate_kbit"], wire_kbit


def test_loss_without_a_shaper_is_not_throttling(lab_captures: LabCaptures) -> None:
    for name in ("loss_5", "loss_15"):
        kinds = {k for k, _ in _verdicts(_analyse(str(lab_captures[name][0])))}
        assert VerdictKind.THROTTLED not in kinds and VerdictKind.BLOCKED not in kinds, name


@pytest.mark.parametrize(("scenario", "reason"), [
    ("tcp_reset_443", Reason.TCP_RESET),
    ("sni_reset", Reason.TLS_RESET_AFTER_HELLO),
])
def test_tcp_interference_is_blocked(lab_captures: LabCaptures, scenario: str,
                                     reason: Reason) -> None:
    verdicts = _verdicts(_analyse(str(lab_captures[scenario][0])))
    assert any(k is VerdictKind.BLOCKED and reason in r for k, r in verdicts), verdicts


@pytest.mark.parametrize(("scenario", "reason"), [
    ("sip_rejected", Reason.SIP_REJECTED),
    ("sip_no_answer", Reason.SIP_NO_ANSWER),
])
def test_sip_failures_are_failed_not_blocked(lab_captures: LabCaptures, scenario: str,
                                            reason: Reason) -> None:
    result = _analyse(str(lab_captures[scenario][0]))
    sip_calls = [c for c in result.analysis.calls if c.app == "sip" and "sip_call_id" in c.extra]
    assert sip_calls
    for call in sip_calls:
        assert call.verdict.kind is VerdictKind.FAILED, call.verdict
        assert call.verdict.reasons[0] is reason
    assert all(k is not VerdictKind.BLOCKED for k, _ in _verdicts(result))


def test_evidence_bundle_for_a_lab_call(lab_captures: LabCaptures, tmp_path: Path) -> None:
    """A blocked lab call's evidence bundle: its own packets, a manifest that checks, an
    anonymised copy that hides the caller and keeps the operator side."""
    import io
    import zipfile

    from api.evidence import build_bundle, check_bundle
    from probe import read_capture

    path, meta = lab_captures["block_udp"]
    result = _analyse(str(path))
    call = _main_call(result)
    assert call.verdict.kind is VerdictKind.BLOCKED
    for anonymize in (False, True):
        blob = build_bundle(result, call.uid, path, anonymize, b"k" * 16)
        check = check_bundle(blob)
        assert check.ok, check
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            name = next(n for n in z.namelist() if n.startswith("packets."))
            cut = tmp_path / f"{anonymize}-{name}"
            cut.write_bytes(z.read(name))
        flows = read_capture(cut).flows
        total = sum(f.orig_pkts + f.resp_pkts for f in flows)
        by_uid = {f.uid: f for f in result.flows}
        assert total == sum(by_uid[u].orig_pkts + by_uid[u].resp_pkts for u in call.flow_uids)
        hosts = {h for f in flows for h in (f.orig_h, f.resp_h)}
        assert call.local == meta["local"]["ip"]
        if anonymize:
            assert call.local not in hosts
        else:
            assert call.local in hosts
