"""The one pipeline: what it settles depends on the capture's own clock only.

Labels, calls (their flows, app, media) and verdicts are compared; the RTP figures of a
stream (jitter, delay trend) may still differ in the last digits when the input comes in
very small pieces (the probe starts a stream once three of its packets are in one batch).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from api.output import dumps
from policy.pipeline import Pipeline, PipelineConfig, Step, analyze_flows, run_capture
from probe import FlowReader, MeterConfig
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
SAMPLES = ["sample-call.pcap", "sample-blocked.pcap", "sample-sip.pcap"]


def _run(path: Path, *, chunk: int, workers: int, meter: MeterConfig | None = None,
         cfg: PipelineConfig | None = None) -> tuple[str, list[Step]]:
    m = replace(meter or MeterConfig(), chunk_size=chunk)
    reader = FlowReader(path, m, workers=workers)
    steps = list(run_capture(reader, Pipeline(None, reader.config, config=cfg)))
    out = analyze_flows(steps, reader).to_json()
    flows = [{k: r.get(k) for k in ("uid", "app", "category", "media", "method", "verdict",
                                    "reasons", "orig_pkts", "resp_pkts")} for r in out["flows"]]
    calls = [{k: c.get(k) for k in ("uid", "app", "media", "flow_uids", "verdict", "reasons")}
             for c in out["calls"]]
    return dumps({"flows": flows, "calls": calls}), steps


@pytest.mark.parametrize("name", SAMPLES)
def test_the_output_does_not_depend_on_how_the_input_is_cut(name: str) -> None:
    fast = MeterConfig(udp_idle_s=3, tcp_idle_s=3, tcp_close_s=1)
    cfg = PipelineConfig(cut_s=1, call_settle_s=2)
    want, steps = _run(CAPTURES / name, chunk=8 << 20, workers=1, meter=fast, cfg=cfg)
    assert len(steps) > 1  # settled along the way, not only at the end
    for chunk, workers in ((4096, 1), (1 << 16, 1), (4096, 2), (8 << 20, 2)):
        got, _ = _run(CAPTURES / name, chunk=chunk, workers=workers, meter=fast, cfg=cfg)
        assert got == want, (chunk, workers)
    assert json.loads(want)["flows"]


def test_a_call_is_written_before_the_end_once_it_has_settled() -> None:
    fast = MeterConfig(udp_idle_s=3, tcp_idle_s=3, tcp_close_s=1)
    _, steps = _run(CAPTURES / "sample-blocked.pcap", chunk=4096, workers=1, meter=fast,
                    cfg=PipelineConfig(cut_s=1, call_settle_s=2))
    early = [c for s in steps[:-1] for c in s.calls]
    assert early and str(early[0].verdict.kind) == "blocked"
    assert not steps[-1].calls  # nothing left for the end of input


def test_a_call_waits_for_a_stream_still_going() -> None:
    """With a long hold, a call whose remote host still has an open UDP flow is written
    only at the end; with no hold, as soon as it settles."""
    fast = MeterConfig(udp_idle_s=3, tcp_idle_s=3, tcp_close_s=1)
    path = CAPTURES / "sample-call.pcap"
    _, held = _run(path, chunk=4096, workers=1, meter=fast,
                   cfg=PipelineConfig(cut_s=1, call_settle_s=0.5, call_hold_s=3600))
    _, eager = _run(path, chunk=4096, workers=1, meter=fast,
                    cfg=PipelineConfig(cut_s=1, call_settle_s=0.5, call_hold_s=0))
    n_early = lambda steps: sum(len(s.calls) for s in steps[:-1])  # noqa: E731
    assert n_early(eager) >= n_early(held)
