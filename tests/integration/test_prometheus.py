"""A real Prometheus server scrapes marsad's /metrics over HTTP on the loopback.

The registry is served at ``/metrics`` the way the service serves it (a route, through
:func:`api.metrics.metrics_payload`) by uvicorn; Prometheus (Debian's ``prometheus``
package) scrapes it every second, and its HTTP query API must return the values of
sample-call.pcap.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api.metrics import MarsadMetrics, metrics_payload
from api.pipeline import analyze_capture
from tests.conftest import ROOT, need_tool

DEADLINE_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def marsad_target() -> Iterator[int]:
    """uvicorn serving a registry fed with sample-call.pcap; yields its port."""
    reg = CollectorRegistry()
    metrics = MarsadMetrics(reg, active_flows=lambda: 7, jobs=lambda: {"done": 1})
    metrics.observe_result(analyze_capture(ROOT / "captures" / "sample-call.pcap", workers=0))

    def scrape(request: Request) -> Response:
        body, content_type = metrics_payload(reg, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    app = Starlette(routes=[Route("/metrics", scrape)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def query(base: str, promql: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar(base: str, promql: str) -> float | None:
    try:
        result = query(base, promql)
    except OSError:
        return None  # not listening yet
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_marsad(marsad_target: int, tmp_path: Path) -> None:
    prometheus = need_tool("prometheus")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: marsad\n"
        "    metrics_path: /metrics\n"
        "    static_configs:\n"
        f"      - targets: ['127.0.0.1:{marsad_target}']\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + DEADLINE_S
        voice = 'marsad_flow_packets_total{app="whatsapp",category="voice",source="capture"}'
        got = None
        while time.monotonic() < deadline and proc.poll() is None:
            got = scalar(base, voice)
            if got is not None:
                break
            time.sleep(0.25)
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert got == 1817, f"{voice} = {got} after {DEADLINE_S} s"
        # The same scrape holds everything else.
        assert scalar(base, "sum(marsad_flow_packets_total)") == 1898
        assert scalar(base, 'marsad_capture_received_packets_total{source="capture"}') == 1898
        ok = 'marsad_call_ended_total{app="whatsapp",verdict="ok",source="capture"}'
        assert scalar(base, ok) == 1
        assert scalar(base, "marsad_probe_active_flows") == 7
        assert scalar(base, 'marsad_analysis_jobs{state="done"}') == 1
        median = scalar(base, "histogram_quantile(0.5, sum by (le) (marsad_call_mos_bucket))")
        assert median is not None and 4.0 < median <= 4.2
        up = query(base, 'up{job="marsad"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
