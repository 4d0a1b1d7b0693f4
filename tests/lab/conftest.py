"""Fixtures of the lab tests: every scenario runs once per test session.

``lab_captures`` maps each scenario name to ``(pcap_path, metadata)``.  Under
pytest-xdist the workers share one output directory and a file lock, so the
lab runs once however many workers ask for it.  Setting ``MARSAD_LAB_CAPTURES``
to a directory keeps the captures there and reuses the ones already present.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .netlab import LabError, delete_namespace
from .scenarios import SCENARIOS, missing_tools, run_scenario

LabCaptures = dict[str, tuple[Path, dict[str, Any]]]

_ATTEMPTS = 2
"""A scenario whose lab could not be driven (not an assertion) is tried once more."""


def lab_unavailable() -> str | None:
    """Why the lab cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, iptables, tc)"
    missing = missing_tools(["tshark"])
    if missing:
        return f"lab tools not installed: {', '.join(missing)} (see .ci/run)"
    probe = f"mlab{os.getpid()}-probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True,
                          timeout=20)
    if made.returncode != 0:
        return f"`ip netns add` is not usable here: {made.stderr.strip()}"
    delete_namespace(probe)
    return None


def _shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("MARSAD_LAB_CAPTURES")
    if configured:
        return Path(configured)
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # shared by all workers of this session
    return base / "lab-captures"


def _run_missing(outdir: Path) -> None:
    for name in SCENARIOS:
        if (outdir / f"{name}.json").exists() and (outdir / f"{name}.pcap").exists():
            continue
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                run_scenario(name, outdir)
                break
            except LabError:
                if attempt == _ATTEMPTS:
                    raise


def load_captures(outdir: Path) -> LabCaptures:
    """Read back what `run_scenario` wrote for every scenario."""
    out: LabCaptures = {}
    for name in SCENARIOS:
        meta = json.loads((outdir / f"{name}.json").read_text())
        out[name] = (outdir / f"{name}.pcap", meta)
    return out


@pytest.fixture(scope="session")
def lab_available() -> None:
    """Skip, with the reason, when the lab cannot run on this machine."""
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab_captures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCaptures]:
    """Every lab scenario's capture and metadata, run once per session."""
    reason = lab_unavailable()
    if reason is not None:
        pytest.skip(reason)
    outdir = _shared_dir(tmp_path_factory)
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir.parent / f"{outdir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _run_missing(outdir)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    yield load_captures(outdir)
