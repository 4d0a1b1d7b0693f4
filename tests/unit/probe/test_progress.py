"""A long capture shows a progress bar on a terminal, and none when stderr is piped."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MARSAD = shutil.which("marsad") or str(ROOT / ".venv/bin/marsad")


@pytest.fixture(scope="module")
def long_capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("long") / "long.pcap"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), "--packets", "20000",
                    "--out", str(out)], check=True, capture_output=True, timeout=300)
    assert out.stat().st_size > 4 << 20
    return out


def test_progress_bar_on_a_terminal(long_capture: Path) -> None:
    master, slave = pty.openpty()
    chunks = []
    try:
        proc = subprocess.Popen([MARSAD, "flows", str(long_capture), "--jsonl", "--workers", "1"],
                                stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    assert code == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "long.pcap" in shown and ("MB" in shown or "kB" in shown), shown[-500:]


def test_no_progress_bar_when_piped(long_capture: Path) -> None:
    proc = subprocess.run([MARSAD, "flows", str(long_capture), "--jsonl"], capture_output=True,
                          timeout=120, check=False)
    assert proc.returncode == 0
    assert proc.stderr == b""
    assert proc.stdout.count(b"\n") > 100
