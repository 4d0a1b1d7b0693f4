"""classifier: flow records -> app, category, media, method, confidence."""

from classifier.engine import Classifier, Observation, classify_flows
from classifier.records import (
    APPS,
    CALL_CATEGORIES,
    Category,
    Classification,
    Facts,
    Method,
    RtcpReport,
    SipSummary,
    StunSummary,
)

__all__ = [
    "APPS",
    "CALL_CATEGORIES",
    "Category",
    "Classification",
    "Classifier",
    "Facts",
    "Method",
    "Observation",
    "RtcpReport",
    "SipSummary",
    "StunSummary",
    "classify_flows",
]
