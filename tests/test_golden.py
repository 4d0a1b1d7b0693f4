"""Every capture still gives what its golden baseline says.

Each capture in ``captures/`` (and, when ``../shared`` is there, each ``ndpi-dev`` and
``real-dev`` capture) is analysed again through :func:`api.pipeline.analyze_capture` and
rendered the way ``tests/regen_golden.py`` renders it; the text must equal the committed
``tests/golden/<set>/<capture>.jsonl``. A mismatch prints a unified diff. When the change
is intended, ``make baseline`` rewrites the files and the diff goes into review.
"""

from __future__ import annotations

import difflib
from typing import Any

import pytest

from tests.regen_golden import (
    GOLDEN,
    SHARED,
    SHARED_SETS,
    Capture,
    all_captures,
    bundled_captures,
    render,
    shared_captures,
)

FIX = "run `make baseline` if the change is intended, and commit the baseline diff"


def _params() -> list[Any]:
    out: list[Any] = [pytest.param(c, id=c.id, marks=[pytest.mark.shared] if c.shared else [])
                      for c in all_captures()]
    for s in SHARED_SETS:
        if not shared_captures(s):  # one visible skip per missing set
            out.append(pytest.param(None, id=f"{s}/(absent)", marks=[
                pytest.mark.shared,
                pytest.mark.skip(reason=f"{s} captures not found under {SHARED / s} "
                                        "(../shared is absent)")]))
    return out


@pytest.mark.parametrize("cap", _params())
def test_capture_matches_its_golden_baseline(cap: Capture) -> None:
    got = render(cap)
    if not cap.golden.is_file():
        pytest.fail(f"{cap.id}: no baseline at {cap.golden.relative_to(GOLDEN.parent.parent)}; "
                    f"{FIX}")
    want = cap.golden.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(
            want.splitlines(keepends=True), got.splitlines(keepends=True),
            fromfile=f"golden/{cap.id}.jsonl", tofile=f"now/{cap.id}.jsonl", n=1))
        pytest.fail(f"{cap.id} no longer matches its baseline; {FIX}\n{diff}", pytrace=False)


@pytest.mark.parametrize("set_name", ["captures", *(pytest.param(s, marks=pytest.mark.shared)
                                                    for s in SHARED_SETS)])
def test_every_baseline_has_its_capture(set_name: str) -> None:
    """A baseline whose capture is gone (renamed or deleted) is stale, not silently kept."""
    caps = bundled_captures() if set_name == "captures" else shared_captures(set_name)
    if not caps:
        pytest.skip(f"{set_name} captures not found under {SHARED / set_name} "
                    "(../shared is absent)")
    kept = {c.golden for c in caps}
    stale = sorted(p.relative_to(GOLDEN).as_posix()
                   for p in (GOLDEN / set_name).rglob("*") if p.is_file() and p not in kept)
    assert not stale, f"baselines without a capture: {stale}; {FIX}"
