"""``marsad analyze`` lets each flow's record go once it is written (``--jsonl``) or made
into its output's text (``--json``, ``--csv``, ``--zeek``) and the pipeline's window no
longer holds it, so a capture of any length is analysed in the memory of its window (plus
the rows' text of the formats written whole at the end); what it writes is what the whole
result, held to the end, gives."""

from __future__ import annotations

import gc
import io
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import api.cli
import policy.pipeline
from api.cli import main
from api.output import dumps, write_analysis_csv, write_analysis_zeek
from api.pipeline import analyze_capture
from probe import FlowRecord
from tests.conftest import timeless
from tests.pcapbytes import pcap, udp_frame

FLOWS = 1200
SPACING_S = 2.0
"""One short flow every 2 s: 2,400 s of capture, four times the pipeline's 600 s window;
more rows than ``--json`` writes in one piece (1,024)."""


SERVER = "192.0.2.53"


def _live_records() -> int:
    """This capture's records alive (not those other tests of the process left)."""
    return sum(1 for o in gc.get_objects()
               if isinstance(o, FlowRecord) and SERVER in (o.orig_h, o.resp_h))


@pytest.mark.parametrize("fmt", ["--jsonl", "--json", "--csv", "--zeek"])
def test_records_written_are_let_go(fmt: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    packets = []
    for i in range(FLOWS):
        t = 1_700_000_000 + i * SPACING_S
        client = f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        packets.append((t, udp_frame(client, 40000 + i, SERVER, 9999, b"q" * 40)))
        packets.append((t + 0.02, udp_frame(SERVER, 9999, client, 40000 + i, b"r" * 80)))
    cap = tmp_path / "long.pcap"
    cap.write_bytes(pcap(packets))

    gc.collect()  # an earlier run's records, unreachable, are not counted as held
    before = _live_records()  # any an earlier test left (the same server address)
    alive: list[int] = []
    run_capture = policy.pipeline.run_capture

    def counting(*args: Any) -> Iterator[Any]:
        for step in run_capture(*args):
            yield step
            del step
            alive.append(_live_records() - before)  # the step before: written or added

    monkeypatch.setattr(policy.pipeline, "run_capture", counting)
    meter_config = api.cli._meter_config
    # batches of 4 KiB (about 30 packets) instead of 8 MiB: the capture is read as a long
    # one is, flows ending batch after batch
    monkeypatch.setattr(api.cli, "_meter_config",
                        lambda args: replace(meter_config(args), chunk_size=4096))
    assert main(["analyze", str(cap), fmt, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert len(set(re.findall(r"\bC[0-9a-f]{17}\b", out))) == FLOWS
    if fmt != "--jsonl":  # what the whole result, held to the end, gives
        monkeypatch.undo()
        result = analyze_capture(cap, hash_capture=False)
        whole = io.StringIO()
        if fmt == "--json":
            whole.write(dumps(result.to_json()) + "\n")
        elif fmt == "--csv":
            write_analysis_csv(result, whole)
        else:
            write_analysis_zeek(result, whole)
        assert timeless(out) == timeless(whole.getvalue())
    assert len(alive) > 10
    # the window holds about 600 s of flows (300 of them; the UDP timeout and the JSON
    # object's lag add a few dozen); holding every flow written to the end (as both
    # formats once did) would reach all 1,200
    assert max(alive) < FLOWS // 2, alive
