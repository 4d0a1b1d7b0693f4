"""One process or two (the reader process observing part of the flows): the same analysis,
flow for flow, call for call, verdict for verdict."""

from __future__ import annotations

from pathlib import Path

import pytest

from api.pipeline import analyze_capture
from probe import MeterConfig
from tests.conftest import ROOT, need_shared, shared_captures

CAPTURES = ROOT / "captures"
_BUNDLED = sorted(p.name for p in CAPTURES.iterdir()
                  if p.suffix in (".pcap", ".pcapng", ".gz") and not p.name.startswith("bad-"))
_SMALL_BATCHES = MeterConfig(chunk_size=4096)  # many batches: flows handed over before the end


def _same(path: Path, config: MeterConfig | None) -> None:
    one = analyze_capture(path, workers=1, config=config, hash_capture=False)
    two = analyze_capture(path, workers=2, config=config, hash_capture=False)
    assert one.to_json() == two.to_json()
    assert one.status.complete == two.status.complete
    assert one.stats.packets == two.stats.packets and one.stats.flows == two.stats.flows


@pytest.mark.parametrize("name", _BUNDLED)
def test_bundled_capture(name: str) -> None:
    _same(CAPTURES / name, None)
    _same(CAPTURES / name, _SMALL_BATCHES)


def test_reference_captures() -> None:
    need_shared()
    for path in shared_captures():
        _same(path, _SMALL_BATCHES)
