"""`marsad refresh-data` rebuilds the IP-owner table from a local copy of a public list."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARSAD = shutil.which("marsad") or str(ROOT / ".venv/bin/marsad")


def test_refresh_owners_from_a_cidr_list(tmp_path: Path) -> None:
    src = tmp_path / "cidr.txt"
    src.write_text("# a published list\n91.108.4.0/22\n149.154.160.0/20\nnot-a-prefix\n")
    out = tmp_path / "owners.json"
    proc = subprocess.run([MARSAD, "refresh-data", "owners", "--format", "cidr", "--owner",
                           "telegram", "--app", "telegram", str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "not-a-prefix" in proc.stderr  # bad lines are reported, not fatal
    table = json.loads(out.read_text())
    text = json.dumps(table)
    assert "91.108.4.0/22" in text and "149.154.160.0/20" in text
    assert "cidr.txt" in text  # the source file is recorded


def test_refresh_help() -> None:
    proc = subprocess.run([MARSAD, "refresh-data", "--help"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0
    assert "owners" in proc.stdout
