"""The policy file read as typed sections: every threshold checked once, when the file is
loaded (type, unit, range), a bad file refused with the key it got wrong, and the policy's
identity (the digest the ledger records) that of the mapping as read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from api.cli import EXIT_UNREADABLE, main
from api.evidence import policy_digest
from api.pipeline import analyze_capture
from policy.errors import PolicyError
from policy.ledger import canonical_json
from policy.records import Reason, VerdictKind
from policy.rules import load_policy
from tests.conftest import ROOT
from tests.unit.policy.test_verdict_rules import unanswered_invite

DEFAULTS = ROOT / "policy" / "default_policy.yaml"


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_defaults_are_typed_sections_with_the_files_values() -> None:
    pol = load_policy()
    raw = yaml.safe_load(DEFAULTS.read_text())
    assert pol.blocked.stun_min_requests == raw["blocked"]["stun_min_requests"]
    assert type(pol.blocked.stun_min_requests) is int
    # Written as a whole number, read as the number of milliseconds it is.
    assert raw["throttled"]["min_delay_rise_ms"] == 80
    assert type(pol.throttled.min_delay_rise_ms) is float
    assert pol.throttled.min_delay_rise_ms == 80.0
    assert pol.blocked.require_other_traffic is True
    assert pol.calls.same_call_gap_s == float(raw["calls"]["same_call_gap_s"])
    assert pol.source == "policy/default_policy.yaml"


def test_the_digest_is_that_of_the_mapping_as_read(tmp_path: Path) -> None:
    raw = yaml.safe_load(DEFAULTS.read_text())
    want = hashlib.sha256(canonical_json(raw).encode()).hexdigest()
    assert policy_digest(load_policy()) == want
    # A user's file that changes nothing but how a number is written is a new identity
    # only where the mapping changes: 80 and 80 are one policy.
    same = _file(tmp_path, "throttled:\n  min_delay_rise_ms: 80\n")
    assert policy_digest(load_policy(same)) == want


@pytest.mark.parametrize(("text", "said"), [
    ("blocked:\n  syn_min_wait_s: three\n", "blocked.syn_min_wait_s must be a number (s)"),
    ("blocked:\n  stun_min_requests: 2.5\n", "blocked.stun_min_requests must be a whole number"),
    ("blocked:\n  stun_min_requests: true\n", "blocked.stun_min_requests must be a whole"),
    ("blocked:\n  require_other_traffic: 1\n", "blocked.require_other_traffic must be true"),
    ("degraded:\n  max_loss: 3\n", "degraded.max_loss must be from 0 to 1 (ratio)"),
    ("calls:\n  same_call_gap_s: -1\n", "calls.same_call_gap_s must be at least 0 (s)"),
    ("quality:\n  assumed_network_delay_ms: .nan\n", "quality.assumed_network_delay_ms"),
    ("calls:\n  gap: 3\n", "unknown key calls.gap"),
    ("shaping:\n  rate: 3\n", "unknown policy section 'shaping'"),
    ("calls: 3\n", "policy section 'calls' is a mapping of keys"),
])
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, said: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(PolicyError, match=r"^.*policy\.yaml: ") as exc:
        load_policy(path)
    assert said in str(exc.value)


def test_a_bad_file_stops_the_cli_before_any_capture_is_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _file(tmp_path, "throttled:\n  min_loss: lots\n")
    code = main(["analyze", str(ROOT / "captures" / "sample-call.pcap"), "--json",
                 "--policy", str(path)])
    assert code == EXIT_UNREADABLE
    err = capsys.readouterr().err
    assert "throttled.min_loss must be a number (ratio), not 'lots'" in err


def test_an_empty_section_keeps_its_defaults(tmp_path: Path) -> None:
    pol = load_policy(_file(tmp_path, "blocked:\ncalls:\n  min_media_s: 2\n"))
    assert pol.blocked == load_policy().blocked
    assert pol.calls.min_media_s == 2.0 and pol.source.endswith("policy.yaml")


def test_a_threshold_from_the_file_reaches_its_rule(tmp_path: Path) -> None:
    """An INVITE unanswered for 6 s is blocked under the default 4 s wait, and not judged
    under a 10 s one."""
    cap = unanswered_invite(tmp_path / "invite.pcap")
    (call,) = [c for c in analyze_capture(cap, workers=1).analysis.calls if c.app == "sip"]
    assert call.verdict.reasons[0] is Reason.SIP_UNANSWERED
    patient = load_policy(_file(tmp_path, "blocked:\n  sip_min_wait_s: 10\n"))
    (call,) = [c for c in analyze_capture(cap, workers=1, policy=patient).analysis.calls
               if c.app == "sip"]
    assert call.verdict.kind is not VerdictKind.BLOCKED


def test_a_section_with_no_class_yet_is_kept_not_refused(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A section added to the defaults before its typed class (another part of marsad
    reads it) loads, takes the user's values and stays in the policy's identity."""
    import policy.rules

    text = DEFAULTS.read_text() + "\nfuture:\n  min_runs: 3\n"

    class Packaged:
        def joinpath(self, name: str) -> Packaged:
            return self

        def read_text(self) -> str:
            return text

    monkeypatch.setattr(policy.rules.resources, "files", lambda package: Packaged())
    assert load_policy().values["future"] == {"min_runs": 3}
    assert load_policy(_file(tmp_path, "future:\n  min_runs: 5\n")).values["future"] == {
        "min_runs": 5}
    with pytest.raises(PolicyError, match=r"unknown key future\.bogus"):
        load_policy(_file(tmp_path, "future:\n  bogus: 5\n"))
