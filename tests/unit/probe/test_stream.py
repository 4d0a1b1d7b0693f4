"""`marsad flows -` reads a pcap stream and prints flows as they end, before the input does."""

from __future__ import annotations

import json
import select
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

MARSAD = shutil.which("marsad") or str(Path(__file__).resolve().parents[3] / ".venv/bin/marsad")


def _rec(ts: float, sport: int) -> bytes:
    pkt = bytes(Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / UDP(sport=sport, dport=9) /
                Raw(b"q" * 30))
    sec = int(ts)
    return struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(pkt), len(pkt)) + pkt


@pytest.mark.parametrize("workers", ["1", "2"])
def test_flows_are_emitted_while_the_stream_is_open(workers: str) -> None:
    proc = subprocess.Popen([MARSAD, "flows", "-", "--jsonl", "--udp-idle", "5",
                             "--workers", workers],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        proc.stdin.write(_rec(1000.0, 1111) + _rec(1000.5, 1111))
        proc.stdin.flush()
        time.sleep(0.3)
        # Capture time moves 60 s on: the first flow is idle past its timeout.
        proc.stdin.write(_rec(1060.0, 2222))
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready, "no flow printed while the stream was still open"
        first = json.loads(proc.stdout.readline())
        assert first["orig_p"] == 1111 and first["orig_pkts"] == 2
        assert first["end_reason"] == "idle"
        assert proc.poll() is None, "marsad must still be reading the stream"
    finally:
        proc.stdin.close()
    rest = proc.stdout.read().decode().splitlines()
    assert proc.wait(timeout=15) == 0
    assert [json.loads(r)["orig_p"] for r in rest] == [2222]
