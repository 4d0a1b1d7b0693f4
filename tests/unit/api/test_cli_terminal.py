"""The CLI in a terminal: the progress display on stderr never takes over stdout.

``marsad flows big.pcap --jsonl > out.jsonl`` typed in a terminal must leave every
record in ``out.jsonl``; the progress bar (shown for captures over 4 MiB when stderr is
a terminal) draws on stderr alone. Run through a pseudo-terminal, as a person would.
"""

from __future__ import annotations

import os
import pty
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MARSAD = [sys.executable, "-c",
          "import sys; from api.cli import run; sys.argv[0] = 'marsad'; run()"]


def _udp_capture(path: Path, flows: int, packets: int) -> None:
    """A pcap of ``flows`` UDP flows of ``packets`` 1000-byte datagrams each."""
    with path.open("wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        ts = 1_700_000_000
        payload = bytes(1000)
        for i in range(packets):
            for f in range(flows):
                sport = 20000 + f
                ip_len = 20 + 8 + len(payload)
                ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, ip_len, 0, 0, 64, 17, 0,
                                 bytes([10, 0, 0, 1]), bytes([192, 0, 2, 1]))
                udp = struct.pack("!HHHH", sport, 5000, 8 + len(payload), 0)
                eth = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
                frame = eth + ip + udp + payload
                usec = (i * 20_000 + f) % 1_000_000
                sec = ts + (i * 20_000 + f) // 1_000_000
                fh.write(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)


@pytest.mark.parametrize("command", ["flows", "analyze"])
def test_redirected_output_stays_in_the_file_when_stderr_is_a_terminal(
        tmp_path: Path, command: str) -> None:
    cap = tmp_path / "big.pcap"
    _udp_capture(cap, flows=20, packets=260)  # 5,200 packets, ~5.5 MB: the bar shows
    assert cap.stat().st_size > 4 << 20
    out = tmp_path / "out.jsonl"
    master, slave = pty.openpty()
    try:
        with out.open("wb") as fh:
            proc = subprocess.run([*MARSAD, command, str(cap), "--jsonl"], stdout=fh,
                                  stderr=slave, stdin=slave, cwd=ROOT, timeout=120,
                                  check=False)
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, screen.decode(errors="replace")
    lines = out.read_text().splitlines()
    flows = [ln for ln in lines if '"uid"' in ln]
    assert len(flows) >= 20
    assert b'"uid"' not in screen  # nothing of the records was drawn on the terminal


def test_batch_progress_on_a_terminal_only(tmp_path: Path) -> None:
    """``analyze CAPTURES --out DIR``: one progress display across the files (files done,
    bytes, rate, time left) when stderr is a terminal; none in a log file."""
    caps = []
    for i in range(3):
        cap = tmp_path / f"c{i}.pcap"
        _udp_capture(cap, flows=2 + i, packets=50)
        caps.append(str(cap))
    master, slave = pty.openpty()
    try:
        proc = subprocess.run([*MARSAD, "analyze", *caps, "--out", str(tmp_path / "a"),
                               "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=slave,
                              stdin=slave, cwd=ROOT, timeout=120, check=False)
        os.close(slave)
        screen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0, screen.decode(errors="replace")
    assert b"/3 files" in screen and b"kB" in screen, screen
    logged = subprocess.run([*MARSAD, "analyze", *caps, "--out", str(tmp_path / "b"),
                             "--jobs", "1"], capture_output=True, cwd=ROOT, timeout=120)
    assert logged.returncode == 0
    assert b"files" not in logged.stderr and b"3 capture(s)" in logged.stderr
