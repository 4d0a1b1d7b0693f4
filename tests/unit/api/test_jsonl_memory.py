"""``marsad analyze --jsonl`` and ``--json`` let each flow's record go once it is written
(or made into the JSON object's text) and the pipeline's window no longer holds it, so a
capture of any length is analysed in the memory of its window (plus, for ``--json``, the
rows' text)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import api.cli
import policy.pipeline
from api.cli import main
from api.output import dumps
from api.pipeline import analyze_capture
from probe import FlowRecord
from tests.pcapbytes import pcap, udp_frame

FLOWS = 1200
SPACING_S = 2.0
"""One short flow every 2 s: 2,400 s of capture, four times the pipeline's 600 s window;
more rows than ``--json`` writes in one piece (1,024)."""


def _live_records() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, FlowRecord))


@pytest.mark.parametrize("fmt", ["--jsonl", "--json"])
def test_records_written_are_let_go(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    packets = []
    for i in range(FLOWS):
        t = 1_700_000_000 + i * SPACING_S
        client = f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        packets.append((t, udp_frame(client, 40000 + i, "192.0.2.53", 9999, b"q" * 40)))
        packets.append((t + 0.02, udp_frame("192.0.2.53", 9999, client, 40000 + i, b"r" * 80)))
    cap = tmp_path / "long.pcap"
    cap.write_bytes(pcap(packets))

    alive: list[int] = []
    run_capture = policy.pipeline.run_capture

    def counting(*args: Any) -> Iterator[Any]:
        for step in run_capture(*args):
            yield step
            del step
            alive.append(_live_records())  # the step before has been written or added

    monkeypatch.setattr(policy.pipeline, "run_capture", counting)
    meter_config = api.cli._meter_config
    # batches of 4 KiB (about 30 packets) instead of 8 MiB: the capture is read as a long
    # one is, flows ending batch after batch
    monkeypatch.setattr(api.cli, "_meter_config",
                        lambda args: replace(meter_config(args), chunk_size=4096))
    assert main(["analyze", str(cap), fmt, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count('"uid":"C') == FLOWS
    if fmt == "--json":  # what the whole result, held to the end, gives
        monkeypatch.undo()
        assert out == dumps(analyze_capture(cap, hash_capture=False).to_json()) + "\n"
    assert len(alive) > 10
    # the window holds about 600 s of flows (300 of them; the UDP timeout and the JSON
    # object's lag add a few dozen); holding every flow written to the end (as both
    # formats once did) would reach all 1,200
    assert max(alive) < FLOWS // 2, alive
