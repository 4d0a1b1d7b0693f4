"""Shared fixtures: where the reference captures live, and skips when they are absent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
NDPI_DEV = SHARED / "captures" / "ndpi-dev"


def timeless(conn_log: str) -> str:
    """A conn.log (or any output holding one) without the times it says it was opened and
    closed, which differ from run to run."""
    return "\n".join(line.split("\t")[0] if line.startswith(("#open", "#close")) else line
                     for line in conn_log.split("\n"))


def shared_captures() -> list[Path]:
    """Every capture of the reference set (empty when ../shared is absent)."""
    if not NDPI_DEV.is_dir():
        return []
    return sorted(p for d in ("pcap", "pcap_other") for p in (NDPI_DEV / d).glob("*")
                  if p.is_file())


def capture_ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


@pytest.fixture(scope="session")
def groundtruth() -> dict[str, Any]:
    gt = NDPI_DEV / "groundtruth.json"
    if not gt.is_file():
        pytest.skip(f"reference ground truth not found at {gt} (../shared is absent)")
    data: dict[str, Any] = json.loads(gt.read_text())
    return data


def need_shared() -> None:
    if not NDPI_DEV.is_dir():
        pytest.skip(f"reference captures not found at {NDPI_DEV} (../shared is absent)")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path
