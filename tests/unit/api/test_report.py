"""api.report on the sample captures, and docs/VERDICTS.md against the policy."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from api.pipeline import AnalysisResult, analyze_capture
from api.report import LEG_COLUMNS, build_report, render_rich, render_text
from policy import reach
from policy.records import Reason, VerdictKind
from tests.conftest import NDPI_DEV, ROOT, need_shared

CAPTURES = ROOT / "captures"
VERDICTS_MD = ROOT / "docs" / "VERDICTS.md"
POLICY_YAML = ROOT / "policy" / "default_policy.yaml"

_cache: dict[Path, AnalysisResult] = {}


def analysed(path: Path) -> AnalysisResult:
    if path not in _cache:
        _cache[path] = analyze_capture(path, workers=1)
    return _cache[path]


def test_blocked_call_report() -> None:
    r = analysed(CAPTURES / "sample-blocked.pcap")
    rep = build_report(r, "sample-blocked.pcap")
    [sec] = rep.calls
    facts = dict(sec.facts)
    assert facts["app"] == "whatsapp" and facts["media"] == "audio"
    assert facts["verdict"] == "blocked"
    assert facts["reasons"] == "stun-unanswered, media-no-return"
    assert facts["start"] == "2023-11-14 22:30:00.030 UTC"
    assert facts["duration"] == f"{r.analysis.calls[0].end_ts - r.analysis.calls[0].start_ts:.1f} s"
    # the registered requests; WhatsApp's own 0x08xx pings are not counted as requests
    assert facts["set-up"].startswith("STUN 6 requests, 3 pings / 0 answered")
    # The outgoing media leg: packets counted, no loss, an E-model MOS.
    [leg] = sec.legs
    row = dict(zip(LEG_COLUMNS, leg, strict=True))
    assert row["dir"] == "out" and row["packets"] == "300" and row["loss"] == "0.0%"
    assert re.fullmatch(r"\d\.\d\d", row["MOS"])
    assert sec.evidence[0].startswith("9 STUN requests or pings to 157.240.27.54")
    assert "none came back" in sec.evidence[1]
    text = render_text(rep)
    assert f"Call {sec.uid}" in text and "evidence: 306 media packets" in text
    assert "\x1b" not in text  # plain text: no terminal escapes
    assert re.search(r"^calls\s+1 \(1 blocked\)$", text, re.M)


def test_ok_sip_call_has_both_legs() -> None:
    rep = build_report(analysed(CAPTURES / "sample-sip.pcap"), "sample-sip.pcap")
    [sec] = rep.calls
    facts = dict(sec.facts)
    assert facts["verdict"] == "ok" and facts["reasons"] == "-"
    assert facts["set-up"] == "SIP INVITE 100 180 200 ACK BYE 200"
    assert sorted(row[1] for row in sec.legs) == ["in", "out"]
    assert sec.evidence == () and rep.flows == ()


def test_interfered_flow_outside_calls_gets_one_line() -> None:
    r = analysed(CAPTURES / "icmp-errors.pcap")
    rep = build_report(r, "icmp-errors.pcap")
    [line] = rep.flows
    assert line.verdict == "blocked"
    assert line.text.startswith(f"{line.uid} tcp 192.168.1.23:45004 -> 203.0.113.80:443 ")
    assert "blocked (icmp-unreachable): ICMP type 3 code 13 from 192.168.1.1" in line.text
    text = render_text(rep)
    assert "Interfered flows outside calls\n  " + line.text in text
    assert dict(rep.header)["interfered flows outside calls"] == "1"


def test_failed_sip_call_report() -> None:
    need_shared()
    path = NDPI_DEV / "pcap_other" / "sip-488-Not-Acceptable-Here-codec-null.pcapng"
    rep = build_report(analysed(path), path.name)
    failed = [s for s in rep.calls if s.verdict == "failed"]
    assert len(failed) == 1
    assert dict(failed[0].facts)["reasons"].startswith("sip-rejected")
    assert "488" in failed[0].evidence[0]


def test_rich_rendering_shows_the_same_content() -> None:
    rep = build_report(analysed(CAPTURES / "sample-blocked.pcap"), "sample-blocked.pcap")
    console = Console(record=True, width=200, force_terminal=True)
    render_rich(rep, console)
    out = console.export_text()
    sec = rep.calls[0]
    assert f"Call {sec.uid}" in out and "stun-unanswered, media-no-return" in out
    assert all(col in out for col in LEG_COLUMNS)
    assert sec.evidence[1] in out


# -- docs/VERDICTS.md -----------------------------------------------------------------------------


def test_every_reason_and_verdict_is_documented() -> None:
    doc = VERDICTS_MD.read_text()
    sections = set(re.findall(r"^### `([a-z-]+)`$", doc, re.M))
    assert sections == {r.value for r in Reason}
    table = set(re.findall(r"^\| `([a-z]+)` \|", doc, re.M))
    assert table == {k.value for k in VerdictKind}


def test_documented_rules_and_thresholds_match_the_code() -> None:
    doc = VERDICTS_MD.read_text()
    rules_py = "".join((ROOT / "policy" / name).read_text() for name in ("rules.py",
                                                                          "replay.py"))
    fired = set(re.findall(r'"((?:blocked|throttled|degraded|failed|unknown)\.[a-z_]+)"',
                           rules_py))
    documented = set(re.findall(r"\*\*Rule\*\*: `([a-z_.]+)`", doc))
    assert documented == fired | set(reach.RULES)
    policy = yaml.safe_load(POLICY_YAML.read_text())
    keys = {f"{s}.{k}" for s, v in policy.items() if isinstance(v, dict) for k in v}
    mentioned = dict(re.findall(r"`([a-z_]+\.[a-z_]+)`\s+\(default ([^)]+)\)", doc))
    assert keys <= set(mentioned), f"undocumented thresholds: {keys - set(mentioned)}"
    for key, shown in mentioned.items():
        section, name = key.split(".")
        assert str(policy[section][name]).lower() == shown, key


@pytest.mark.parametrize("reason", list(Reason))
def test_each_reason_section_says_how_to_check_it(reason: Reason) -> None:
    doc = VERDICTS_MD.read_text()
    body = doc.split(f"### `{reason.value}`", 1)[1].split("\n### ", 1)[0]
    assert "**Verdict**" in body and "**Evidence**" in body and "**Check**" in body
