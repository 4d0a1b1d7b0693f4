"""A probe killed with SIGKILL leaves no reader process behind (it would hold its memory
and its input for nothing): the kernel ends the reader with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(x) for x in text)
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc and prctl")
def test_a_killed_probe_takes_its_reader_process_with_it(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "api.cli", "probe", "-r", "-", "--data-dir",
                             str(tmp_path / "d")], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    try:
        proc.stdin.write((ROOT / "captures" / "sample-call.pcap").read_bytes())
        proc.stdin.flush()  # and the stream stays open: the reader waits for more
        deadline = time.monotonic() + 30
        readers: list[int] = []
        while time.monotonic() < deadline and not readers:
            time.sleep(0.2)
            readers = _children(proc.pid)
        if not readers:
            pytest.skip("no reader process (one core: the probe reads in one process)")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(r) for r in readers):
            time.sleep(0.1)
        assert not any(_alive(r) for r in readers), readers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
