"""Evidence ledger under SIGKILL and concurrent writer processes."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from policy.ledger import Ledger

REPO = Path(__file__).resolve().parents[3]

WRITER = """
import sys, time
from policy.ledger import Ledger

path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
led = Ledger(path, clock=time.time)
print("ready", flush=True)
i = 0
while count < 0 or i < count:
    led.append(capture_sha256="ab" * 32, subject_uid=f"{name}-{i}", verdict="BLOCKED",
               reasons=["NO_MEDIA"], evidence={"i": i, "pad": "x" * 300, "frames": [i, i + 1]})
    i += 1
"""

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")


def start_writer(path: Path, name: str, count: int = -1) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(count)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def fixed_clock() -> float:
    return 1_704_067_200.0


def test_sigkill_at_random_moments_never_breaks_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "evidence.db"
    rng = random.Random(20240101)
    counts = [0]
    for _ in range(6):
        proc = start_writer(path, f"w{len(counts)}")
        # Let it append for a random while, waiting at least until it has written once more.
        deadline = time.monotonic() + 20
        while True:
            with Ledger(path, clock=fixed_clock) as led:
                if len(led) > counts[-1] or time.monotonic() > deadline:
                    break
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        with Ledger(path, clock=fixed_clock) as led:
            report = led.verify()
            assert report.ok, report.problems
            n = len(led)
            assert [e.seq for e in led.entries()] == list(range(1, n + 1))
        counts.append(n)
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
    print("entries after each kill:", counts)
    assert all(a < b for a, b in pairwise(counts)), counts


def test_concurrent_writer_processes_do_not_fork(tmp_path: Path) -> None:
    path = tmp_path / "evidence.db"
    with Ledger(path, clock=fixed_clock):
        pass  # create the file first so both writers find a ledger
    procs = [start_writer(path, name, 60) for name in ("a", "b", "c")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    with Ledger(path, clock=fixed_clock) as led:
        assert len(led) == 180
        assert led.verify().ok
        names = {e.subject_uid.split("-")[0] for e in led.entries()}
        assert names == {"a", "b", "c"}
