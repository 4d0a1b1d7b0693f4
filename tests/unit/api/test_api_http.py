"""``marsad serve`` over real HTTP: uvicorn on 127.0.0.1 and a free port, bounded in time."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.cli import build_parser
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
START_S = 30.0
JOB_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _until(what: str, timeout_s: float, probe: Any) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")


class Server:
    """``marsad serve`` in a child process."""

    def __init__(self, data_dir: Path, *extra: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARSAD_")}
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log = data_dir.parent / f"serve-{self.port}.log"
        with open(self.log, "wb") as out:  # a file, not a pipe nobody drains
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port",
                 str(self.port), "--data-dir", str(data_dir), "--log-level", "info", *extra],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"marsad serve exited with {self.proc.returncode}: "
                                 f"{self.stop()}")
        try:
            return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return self.log.read_text(errors="replace")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "data", "--preload", str(CAPTURES / "sample-blocked.pcap"))
    try:
        _until("the server to answer /healthz", START_S, srv.up)
        yield srv
    finally:
        srv.stop()


def test_serve_preloads_and_answers_over_http(server: Server, tmp_path: Path) -> None:
    token = (tmp_path / "data" / "api-token").read_text().strip()
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.base, timeout=10) as c:
        # The preloaded capture is analysed in the background.
        _until("the preloaded capture", JOB_S, lambda: [
            x for x in c.get("/v1/captures").json()["items"] if x["state"] == "done"])
        calls = c.get("/v1/calls", params={"verdict": "blocked"}).json()
        assert calls["total"] == 1 and calls["items"][0]["app"] == "whatsapp"
        assert c.get("/openapi.json").json()["info"]["title"] == "marsad"

        # A streamed upload (chunked, no Content-Length).
        data = (CAPTURES / "sample-sip.pcap").read_bytes()

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(data), 8192):
                yield data[i:i + 8192]

        assert c.post("/v1/captures", content=chunks()).status_code == 401
        r = c.post("/v1/captures", params={"name": "sip.pcap"}, content=chunks(), headers=auth)
        assert r.status_code == 202, r.text
        url = r.headers["location"]
        done = _until("the uploaded capture", JOB_S,
                      lambda: (lambda j: j if j["state"] == "done" else None)(c.get(url).json()))
        assert done["filename"] == "sip.pcap" and done["summary"]["calls"] == 1
        assert c.get("/v1/calls").json()["total"] == 2

        # Bad input over the wire is a 4xx with a JSON body.
        r = c.post("/v1/captures", content=b"GET / HTTP/1.0\r\n\r\n", headers=auth)
        assert r.status_code == 400 and r.json()["detail"]
        assert c.get("/v1/flows", params={"limit": "many"}).status_code == 422

        # The evidence bundle of the blocked call.
        uid = calls["items"][0]["uid"]
        r = c.get(f"/v1/calls/{uid}/evidence", headers=auth)
        assert r.status_code == 200, r.text
        with zipfile.ZipFile(io.BytesIO(r.content)) as z:
            assert "report.json" in z.namelist()
    log = server.stop()
    assert server.proc.returncode == 0, log
    assert "api-token" in log and token not in log
    assert "POST /v1/captures" in log


def test_restart_keeps_results(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = Server(data_dir, "--preload", str(CAPTURES / "sample-sip.pcap"))
    try:
        _until("the first server", START_S, first.up)
        with httpx.Client(base_url=first.base, timeout=10) as c:
            _until("the preloaded capture", JOB_S, lambda: c.get("/v1/calls").json()["total"])
    finally:
        first.stop()
    second = Server(data_dir)
    try:
        _until("the second server", START_S, second.up)
        with httpx.Client(base_url=second.base, timeout=10) as c:
            assert c.get("/v1/calls").json()["total"] == 1
            assert c.get("/healthz").json()["jobs"]["done"] == 1
    finally:
        second.stop()


def test_serve_refuses_a_bad_preload(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARSAD_")}
    for bad, message in ((CAPTURES / "bad-text.pcap", "cannot preload"),
                         (tmp_path / "missing.pcap", "no such file")):
        r = subprocess.run([sys.executable, "-m", "api.cli", "serve", "--data-dir",
                            str(tmp_path / "d"), "--port", str(_free_port()), "--preload",
                            str(bad)], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_serve_options() -> None:
    args = build_parser().parse_args(["serve", "--data-dir", "d", "--preload", "a.pcap",
                                      "b.pcap"])
    assert (args.host, args.port, args.data_dir, args.preload) == \
        (None, None, "d", ["a.pcap", "b.pcap"])
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port, args.preload) == ("0.0.0.0", 9000, None)
