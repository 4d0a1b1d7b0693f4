"""policy: classified flows -> calls, call quality, verdicts and a tamper-evident ledger.

The names below are the policy's public surface. They are loaded on first use
(PEP 562): importing the pipeline imports the classifier, which a command that
only needs the policy's errors or settings should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from policy.calls import Analysis, analyse_calls
    from policy.errors import LedgerError, PolicyError
    from policy.ledger import Ledger, LedgerEntry, VerifyReport
    from policy.pipeline import AnalysisResult, Pipeline, Step, analyze_flows, run_capture
    from policy.records import (
        Call,
        CallOutcome,
        Evidence,
        FlowVerdict,
        Leg,
        Reason,
        Verdict,
        VerdictKind,
    )
    from policy.rules import Policy, load_policy
    from policy.settling import PipelineConfig

_EXPORTS = {
    "Analysis": "policy.calls",
    "AnalysisResult": "policy.pipeline",
    "Call": "policy.records",
    "CallOutcome": "policy.records",
    "Evidence": "policy.records",
    "FlowVerdict": "policy.records",
    "Leg": "policy.records",
    "Ledger": "policy.ledger",
    "LedgerEntry": "policy.ledger",
    "LedgerError": "policy.errors",
    "Pipeline": "policy.pipeline",
    "PipelineConfig": "policy.settling",
    "Policy": "policy.rules",
    "PolicyError": "policy.errors",
    "Reason": "policy.records",
    "Step": "policy.pipeline",
    "Verdict": "policy.records",
    "VerdictKind": "policy.records",
    "VerifyReport": "policy.ledger",
    "analyse_calls": "policy.calls",
    "analyze_flows": "policy.pipeline",
    "load_policy": "policy.rules",
    "run_capture": "policy.pipeline",
}

__all__ = [
    "Analysis",
    "AnalysisResult",
    "Call",
    "CallOutcome",
    "Evidence",
    "FlowVerdict",
    "Ledger",
    "LedgerEntry",
    "LedgerError",
    "Leg",
    "Pipeline",
    "PipelineConfig",
    "Policy",
    "PolicyError",
    "Reason",
    "Step",
    "Verdict",
    "VerdictKind",
    "VerifyReport",
    "analyse_calls",
    "analyze_flows",
    "load_policy",
    "run_capture",
]


def __getattr__(name: str) -> Any:  # PEP 562: an export is imported on first use
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
