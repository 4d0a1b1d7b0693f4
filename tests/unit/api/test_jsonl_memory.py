"""``marsad analyze --jsonl`` streams: once a flow's line is written, nothing of the
command holds its record any more (only the pipeline's window does, as context for the
calls to come), so a capture of any length is analysed in the memory of its window."""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path

import pytest

import api.cli
from api.cli import main
from probe import FlowRecord
from tests.pcapbytes import pcap, udp_frame

FLOWS = 400
SPACING_S = 6.0
"""One short flow every 6 s: 2,400 s of capture, four times the pipeline's 600 s window."""


def _live_records() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, FlowRecord))


def test_records_written_are_let_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    packets = []
    for i in range(FLOWS):
        t = 1_700_000_000 + i * SPACING_S
        client = f"10.0.{i // 250}.{i % 250 + 1}"
        packets.append((t, udp_frame(client, 40000 + i, "192.0.2.53", 9999, b"q" * 40)))
        packets.append((t + 0.02, udp_frame("192.0.2.53", 9999, client, 40000 + i, b"r" * 80)))
    cap = tmp_path / "long.pcap"
    cap.write_bytes(pcap(packets))

    alive: list[int] = []
    write_step = api.cli._write_step

    def counting(step: object, out: object) -> None:
        write_step(step, out)  # type: ignore[arg-type]
        alive.append(_live_records())

    monkeypatch.setattr(api.cli, "_write_step", counting)
    meter_config = api.cli._meter_config
    # batches of 4 KiB (about 30 packets) instead of 8 MiB: the capture is read as a long
    # one is, flows ending batch after batch
    monkeypatch.setattr(api.cli, "_meter_config",
                        lambda args: replace(meter_config(args), chunk_size=4096))
    assert main(["analyze", str(cap), "--jsonl", "--workers", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum('"record":"flow"' in line for line in lines) == FLOWS
    assert len(alive) > 10
    # the window holds about 600 s of flows (100 of them); before the fix every flow
    # written stayed alive to the end
    assert max(alive) < FLOWS // 2, alive
