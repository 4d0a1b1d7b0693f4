"""A Dask cluster on this machine from Dask's own command line: one ``dask scheduler``
and N ``dask worker`` processes (one thread each, no nanny: the worker is the process
started), as an operator starts
them on real machines. Used by the suite's cluster test and the batch benchmark."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(slots=True)
class Cluster:
    address: str
    """The scheduler's ``tcp://127.0.0.1:PORT``."""
    scheduler_file: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """The worker processes (their pids: ``p.pid``)."""


def dask_command() -> str:
    """The ``dask`` program of this environment."""
    return str(Path(sys.executable).with_name("dask"))


@contextlib.contextmanager
def local_cluster(work: Path, workers: int = 2, timeout_s: float = 60.0,
                  own_sessions: bool = True) -> Iterator[Cluster]:
    """Start a scheduler on a free localhost port and ``workers`` workers; stop them all
    on the way out. The workers import marsad from this source tree (``PYTHONPATH``).

    ``own_sessions=False`` keeps them in the caller's session: where Linux shares the CPU
    between sessions (``sched_autogroup``), they then get the same share as a local
    process pool started from the caller, which a benchmark comparing the two wants."""
    work.mkdir(parents=True, exist_ok=True)
    sched_file = work / "scheduler.json"
    sched_file.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               DASK_DISTRIBUTED__WORKER__DAEMON="False")
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        log = open(work / "scheduler.log", "wb")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(subprocess.Popen(
            [dask_command(), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=own_sessions))
        deadline = time.monotonic() + timeout_s
        while not sched_file.is_file() or not sched_file.read_text().strip():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError("the dask scheduler did not start: "
                                   + (work / "scheduler.log").read_text()[-2000:])
            time.sleep(0.1)
        import json
        address = json.loads(sched_file.read_text())["address"]
        cluster = Cluster(address, sched_file)
        for i in range(workers):
            log = open(work / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            p = subprocess.Popen(
                [dask_command(), "worker", address, "--no-nanny", "--nthreads", "1",
                 "--no-dashboard", "--memory-limit", "0", "--name", f"w{i}",
                 "--local-directory", str(work / f"worker-{i}")],
                cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=own_sessions)
            procs.append(p)
            cluster.workers.append(p)
        from distributed import Client
        with Client(address, timeout=timeout_s) as client:
            client.wait_for_workers(workers, timeout=timeout_s)
        yield cluster
    finally:
        def signal_to(p: subprocess.Popen[bytes], sig: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                if own_sessions:
                    os.killpg(p.pid, sig)
                else:
                    p.send_signal(sig)

        for p in reversed(procs):
            signal_to(p, signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                signal_to(p, signal.SIGKILL)
                p.wait()
        for log in logs:
            log.close()
