"""No uid names two different calls, over every capture the project reads.

Every bundled capture and, when ``../shared`` is there, every ``ndpi-dev`` and
``real-dev`` capture is analysed; a call uid must belong to one call of one capture, and
a flow uid found in two captures must name the same flow in both (the same packets at the
same times: files that hold the same capture, or captures that begin alike).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from api.pipeline import analyze_capture
from probe.errors import CaptureError
from tests.conftest import ROOT

SHARED = ROOT.parent / "shared" / "captures"
SUFFIXES = (".pcap", ".pcapng", ".cap", ".gz")


def _bundled() -> list[Path]:
    return [p for p in sorted((ROOT / "captures").rglob("*"))
            if p.is_file() and p.name.endswith(SUFFIXES) and not p.name.startswith("bad-")]


def _shared() -> list[Path]:
    out: list[Path] = []
    for sub in ("ndpi-dev/pcap", "ndpi-dev/pcap_other", "real-dev/pcap"):
        d = SHARED / sub
        if d.is_dir():
            out.extend(p for p in sorted(d.iterdir()) if p.is_file())
    return out


def _check(paths: list[Path]) -> tuple[int, int]:
    calls: dict[str, list[tuple[str, Any]]] = defaultdict(list)
    flows: dict[str, dict[str, Any]] = {}
    n_flows = 0
    for p in paths:
        try:
            result = analyze_capture(p, hash_capture=False)
        except CaptureError:
            continue
        for c in result.analysis.calls:
            calls[c.uid].append((p.name, c.to_dict()))
        for f in result.flows:
            n_flows += 1
            row = {k: v for k, v in f.conn_dict().items()
                   if k not in ("first_frame", "last_frame")}
            seen = flows.setdefault(f.uid, {"capture": p.name, "row": row})
            assert seen["row"] == row, (f"flow uid {f.uid} names two flows: in "
                                        f"{seen['capture']} and in {p.name}")
    shared = {u: [name for name, _ in v] for u, v in calls.items() if len(v) > 1}
    assert not shared, f"call uids held by more than one call: {shared}"
    return len(calls), n_flows


def test_no_call_uid_is_shared_in_the_bundled_captures() -> None:
    n_calls, n_flows = _check(_bundled())
    assert n_calls >= 10 and n_flows >= 100


@pytest.mark.shared
def test_no_call_uid_is_shared_in_any_capture() -> None:
    shared = _shared()
    if not shared:
        pytest.skip(f"{SHARED} is missing: the ndpi-dev and real-dev captures are not here")
    n_calls, _ = _check(_bundled() + shared)
    assert n_calls >= 75  # one record per call: 82 calls in 136 captures today
