"""Calls assembled, then judged: the assembly's typed SIP dialog and set-up, the SIP
outcome judged from the dialog, and each flow's ends worked out once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import policy.assembly
from api.pipeline import analyze_capture
from policy.assembly import assemble_calls
from policy.calls import analyse_calls
from policy.records import CallOutcome, Reason, SipEvent, VerdictKind
from policy.rules import load_policy, sip_outcome
from policy.window import FlowWindow
from probe.records import FlowRecord
from tests.conftest import ROOT
from tests.unit.policy.test_verdict_rules import INVITE, _pcap, _udp

CAPTURES = ROOT / "captures"
CALL_ID = "a84b4c76e66710@192.168.1.50"


def _response(status: int, phrase: str) -> bytes:
    return (f"SIP/2.0 {status} {phrase}\r\n"
            "Via: SIP/2.0/UDP 192.168.1.50:5060;branch=z9hG4bK776asdhds\r\n"
            "To: <sip:bob@198.51.100.7>;tag=a6c85cf\r\n"
            "From: <sip:alice@192.168.1.50>;tag=1928301774\r\n"
            f"Call-ID: {CALL_ID}\r\nCSeq: 314159 INVITE\r\n"
            "Content-Length: 0\r\n\r\n").encode()


def test_a_sip_call_is_assembled_with_its_dialog_and_typed_set_up() -> None:
    r = analyze_capture(CAPTURES / "sample-sip.pcap", workers=1)
    gap = load_policy().calls.same_call_gap_s
    (call,) = assemble_calls(FlowWindow.of(r.flows, r.classes), gap).calls
    d = call.dialog
    assert d is not None and d.call_id == CALL_ID
    assert [m.method or m.status for m in d.messages] == [
        "INVITE", 100, 180, 200, "ACK", "BYE", 200]
    assert d.answered and d.final is None and d.directions == ["sendrecv"]
    assert not d.one_way_by_design
    assert call.app == "sip" and len(call.media_flows) == 1
    assert call.setup.sip[0] == SipEvent(d.messages[0].ts, 3, "INVITE", CALL_ID)
    assert call.setup.first_media_ts == call.media_flows[0].first_ts
    # The judged call keeps the set-up, and writes it as it always has.
    (judged,) = r.analysis.calls
    assert judged.setup == call.setup
    out = judged.to_dict()["setup"]
    assert list(out) == ["stun", "sip", "tcp", "tls", "first_media_ts", "setup_s"]
    assert out["sip"][3] == {"ts": d.messages[3].ts, "frame": 6, "message": "200",
                             "call_id": CALL_ID}
    assert out["tcp"] == {"connections": 0, "established": 0, "refused": 0, "unanswered": 0}
    assert out["setup_s"] == round(call.media_flows[0].first_ts - call.flows[0].first_ts, 6)


@pytest.mark.parametrize(("status", "phrase", "reason", "outcome"), [
    (486, "Busy Here", Reason.SIP_REJECTED, CallOutcome.REJECTED),
    (487, "Request Terminated", Reason.SIP_NO_ANSWER, CallOutcome.MISSED),
])
def test_the_final_answer_of_the_dialog_is_judged(tmp_path: Path, status: int, phrase: str,
                                                 reason: Reason, outcome: CallOutcome
                                                 ) -> None:
    """A 407 challenge is retried, not the end; the final answer after it says whether
    the callee refused or the caller gave up."""
    a, b = "192.168.1.50", "198.51.100.7"
    pkts = [_udp(10.0, a, 5060, b, 5060, INVITE),
            _udp(10.1, b, 5060, a, 5060, _response(407, "Proxy Authentication Required")),
            _udp(10.3, a, 5060, b, 5060, INVITE),
            _udp(10.4, b, 5060, a, 5060, _response(180, "Ringing")),
            _udp(14.0, b, 5060, a, 5060, _response(status, phrase))]
    path = tmp_path / "final.pcap"
    _pcap(path, pkts)
    r = analyze_capture(path, workers=1)
    (call,) = assemble_calls(FlowWindow.of(r.flows, r.classes), 60.0).calls
    assert call.dialog is not None and call.dialog.final is not None
    assert call.dialog.final.status == status and not call.dialog.answered
    found = sip_outcome(call.dialog, 14.0, 4.0)
    assert found is not None and found.reason is reason
    assert found.figures() == {"final": status, "rang": True, "reason_phrase":
                               "rejected" if status == 486 else "cancelled before answer"}
    (judged,) = r.analysis.calls
    assert judged.verdict.kind is VerdictKind.FAILED and judged.outcome is outcome
    assert judged.verdict.evidence[0].figures == found.figures()
    assert judged.verdict.evidence[0].frames == (1, 2, 3, 4, 5)


def test_each_flows_ends_are_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grouping by socket, by host and organisation, signalling, failed paths and the
    outcome all ask which end of a flow is local: the answer is kept per flow."""
    r = analyze_capture(CAPTURES / "sample-call.pcap", workers=1)
    asked: Counter[str] = Counter()
    real = policy.assembly.ends

    def counted(f: FlowRecord, local: str | None = None) -> Any:
        asked[f.uid] += 1
        return real(f, local)

    monkeypatch.setattr(policy.assembly, "ends", counted)
    again = analyse_calls(r.flows, r.classes)
    assert [c.to_dict() for c in again.calls] == [c.to_dict() for c in r.analysis.calls]
    assert asked and max(asked.values()) == 1
