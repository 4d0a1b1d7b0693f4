"""A capture read from a pipe that delivers it in pieces says what the file says.

A pipe's batches end where its data ran dry (the live probe on a quiet link, a capture
copied over a slow network), so the RTP streams of a call are cut at places no file read
would cut them. Every figure of every flow and call — the streams' packets, clocks,
jitter and per-second transit, the legs, the quality, the verdicts — must come out the
same as from the file, down to the last digit written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHUNKS = 12
PAUSE_S = 0.35
"""Longer than the pipe reader's batch window: each piece is a batch of its own."""


_FEEDER = """
import sys, time
data = open(sys.argv[1], "rb").read()
step = -(-len(data) // int(sys.argv[2]))
for i in range(0, len(data), step):
    sys.stdout.buffer.write(data[i:i + step])
    sys.stdout.buffer.flush()
    time.sleep(float(sys.argv[3]))
"""


def _analyze(path: Path, in_pieces: bool) -> dict[str, Any]:
    feeder = None
    if in_pieces:
        feeder = subprocess.Popen([sys.executable, "-c", _FEEDER, str(path), str(CHUNKS),
                                   str(PAUSE_S)], stdout=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "analyze",
                             "-" if in_pieces else str(path), "--json"],
                            stdin=feeder.stdout if feeder is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    if feeder is not None:
        assert feeder.stdout is not None
        feeder.stdout.close()  # the analysis holds the pipe's read end now
    out, err = proc.communicate(timeout=300)
    if feeder is not None:
        assert feeder.wait(timeout=60) == 0
    assert proc.returncode == 0, err.decode()
    doc: dict[str, Any] = json.loads(out)
    return doc


@pytest.mark.parametrize("name", ["sample-call.pcap", "apps/messenger.pcap"])
def test_a_capture_fed_in_pieces_gives_every_figure_the_file_gives(name: str) -> None:
    path = ROOT / "captures" / name
    whole = _analyze(path, in_pieces=False)
    pieces = _analyze(path, in_pieces=True)
    assert [c for c in whole["calls"] if c.get("legs")], "a call with measured legs"
    assert pieces["flows"] == whole["flows"]
    assert pieces["calls"] == whole["calls"]
