"""``marsad serve`` and ``marsad probe`` keep what they write to their owner: the data
directory 0700, the databases (and their WAL), the ring captures and its index 0600,
whatever umask they were started with (the stores hold captured traffic)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

MARSAD = [sys.executable, "-c", "import sys; from api.cli import run; sys.exit(run())"]


def _modes(top: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(top.stat().st_mode)}
    for p in top.rglob("*"):
        out[str(p.relative_to(top))] = stat.S_IMODE(p.stat().st_mode)
    return out


def _open_umask() -> None:
    os.umask(0o022)


def _assert_private(modes: dict[str, int]) -> None:
    shared = {name: oct(m) for name, m in modes.items() if m & 0o077}
    assert not shared, shared


def test_probe_data_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    capture = (ROOT / "captures" / "sample-blocked.pcap").read_bytes()
    out = subprocess.run([*MARSAD, "probe", "-r", "-", "--data-dir", str(data)],
                         input=capture, capture_output=True, cwd=ROOT, timeout=120,
                         check=False, preexec_fn=_open_umask)
    assert out.returncode == 0, out.stderr.decode()
    modes = _modes(data)
    assert modes["."] == 0o700
    for name in ("marsad.db", "ledger.db", "captures/ring/index.json"):
        assert modes[name] == 0o600, (name, oct(modes[name]))
    ring = [n for n in modes if n.startswith("captures/ring/ring-")]
    assert ring and all(modes[n] == 0o600 for n in ring)
    _assert_private(modes)


def test_serve_data_is_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as probe_port:  # a free port for the service
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
    proc = subprocess.Popen([*MARSAD, "serve", "--data-dir", str(data), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
                            preexec_fn=_open_umask)
    try:
        deadline = time.monotonic() + 60
        while not (data / "ledger.db").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        time.sleep(0.5)
        modes = _modes(data)
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert modes["."] == 0o700
    for name in ("marsad.db", "ledger.db", "api-token", "captures"):
        assert modes[name] == (0o700 if name == "captures" else 0o600), (name, oct(modes[name]))
    _assert_private(modes)
