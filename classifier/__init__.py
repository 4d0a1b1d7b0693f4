"""classifier: flow records -> app, category, media, method, confidence.

The names below load their module when first used, so that what needs only a part of
the classifier (``marsad flows`` its payload policy, :mod:`classifier.payloads`) does
not import the engine and every inspector with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from classifier.engine import Classifier, Observation, classify_flows
    from classifier.records import (
        APPS,
        CALL_CATEGORIES,
        Category,
        Classification,
        Facts,
        Method,
        RtcpReport,
        RtcpSenderInfo,
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
    "RtcpSenderInfo",
    "SipSummary",
    "StunSummary",
    "classify_flows",
]

_HOME = {"Classifier": "classifier.engine", "Observation": "classifier.engine",
         "classify_flows": "classifier.engine"}
"""Where each name of :data:`__all__` lives (:mod:`classifier.records` for the rest)."""


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'classifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME.get(name, "classifier.records")), name)
    globals()[name] = value
    return value
