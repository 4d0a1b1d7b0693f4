"""A real Prometheus scrapes ``marsad probe`` and ``marsad serve`` running on one data
directory, and every metric the Grafana dashboard and the alerting rules read is there
and moves with the traffic.

The probe reads a stream on stdin (``marsad probe -r -``): the sample blocked WhatsApp
call, then, once it is reported, SIP calls losing one RTP packet in 20 and a capture of
malformed packets (one stream of concatenated captures); the service gets an upload of
its own. The scrape config is the shipped ``deploy/prometheus/prometheus.yml`` with the
targets and intervals of the test (and its rules file, which Prometheus must load).

What cannot move here is said where it is checked: a stream has no kernel to drop
packets, and a probe that keeps up has no processing lag.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT, need_tool
from tests.integration.test_prometheus import free_port
from tests.pcapbytes import split
from tests.unit.api.test_metrics import dashboard_exprs, promql_metrics

DEPLOY = ROOT / "deploy"
CAPTURES = ROOT / "captures"
TOKEN = "prometheus-test-token"
FAST = ["--udp-idle", "3", "--tcp-idle", "3", "--call-settle", "2", "--call-interval", "1",
        "--status-interval", "0.3"]
NO_KERNEL = {"marsad_capture_dropped_packets_total"}
"""Counters a stream cannot move: there is no kernel to drop packets (exists, reads 0)."""
KEPT_UP = {"marsad_capture_processing_lag_seconds"}
"""Gauges that read 0 while the probe keeps up (they exist while it runs)."""
ACTIVE_TESTS = {"marsad_test_finished_total", "marsad_test_last_timestamp_seconds"}
"""Series only an active test creates (none runs here): exposed and checked end to end in
tests/integration/test_service_replay.py."""
WHILE_RUNNING = {"marsad_capture_processing_lag_seconds", "marsad_probe_active_flows",
                 "marsad_flow_rate_bytes_per_second"}
"""Gauges of what a probe sees now: the service drops them once the probe has ended."""


def lossy_sip() -> bytes:
    """sample-sip.pcap with every 20th RTP packet left out (IPv4/UDP frames whose payload
    is RTP version 2 with an audio payload type): calls whose legs lose packets."""
    header, records = split((CAPTURES / "sample-sip.pcap").read_bytes())
    kept, rtp = [], 0
    for rec in records:
        frame = rec[16:]
        ihl = (frame[14] & 0x0F) * 4 if len(frame) > 14 else 0
        payload = frame[14 + ihl + 8:]
        is_rtp = (len(frame) > 34 and frame[12:14] == b"\x08\x00" and frame[23] == 17
                  and len(payload) > 12 and payload[0] >> 6 == 2 and payload[1] & 0x7F < 35)
        if is_rtp:
            rtp += 1
            if rtp % 20 == 0:
                continue
        kept.append(rec)
    assert rtp > 100, "sample-sip.pcap should carry RTP"
    return header + b"".join(kept)


def _used_metrics() -> set[str]:
    used: set[str] = set()
    dash = json.loads((DEPLOY / "grafana" / "marsad.json").read_text())
    for _, expr in dashboard_exprs(dash):
        used |= promql_metrics(expr)
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= promql_metrics(rule["expr"])
    return used


def _config(tmp: Path, serve_port: int, probe_port: int) -> Path:
    """The shipped scrape config with the test's targets, scraped every second."""
    conf = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    conf["global"] = {"scrape_interval": "1s", "scrape_timeout": "1s",
                      "evaluation_interval": "1s"}
    targets = {"marsad": f"127.0.0.1:{serve_port}", "marsad-probe": f"127.0.0.1:{probe_port}"}
    for job in conf["scrape_configs"]:
        job["scrape_interval"] = "1s"
        for static in job["static_configs"]:
            static["targets"] = [targets[job["job_name"]]]
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", tmp / "rules.yml")
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


class Prom:
    """Prometheus's HTTP query API."""

    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def total(self, promql: str) -> float | None:
        """``sum(promql)``, None when nothing matches (or Prometheus is not up yet)."""
        try:
            result = self.query(f"sum({promql})")
        except OSError:
            return None
        return float(result[0]["value"][1]) if result else None

    def wait(self, what: str, pred: Callable[[], bool], timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Prom, subprocess.Popen[bytes], int]]:
    """``marsad serve`` and ``marsad probe -r -`` on one data directory, and Prometheus
    scraping both; yields (Prometheus, the probe, the service's port)."""
    prometheus = need_tool("prometheus")
    data = tmp_path / "data"
    serve_port, probe_port, prom_port = free_port(), free_port(), free_port()
    env = {**os.environ, "MARSAD_API_TOKEN": TOKEN}
    procs: list[subprocess.Popen[bytes]] = []
    logs = {name: (tmp_path / f"{name}.log").open("wb") for name in ("serve", "probe", "prom")}
    try:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port",
             str(serve_port), "--data-dir", str(data), "--log-level", "warning"],
            cwd=ROOT, env=env, stdout=logs["serve"], stderr=subprocess.STDOUT))
        probe = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "probe", "-r", "-", "--data-dir", str(data),
             "--name", "lab", "--metrics-port", str(probe_port), *FAST],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=logs["probe"])
        procs.append(probe)
        config = _config(tmp_path, serve_port, probe_port)
        procs.append(subprocess.Popen(
            [prometheus, f"--config.file={config}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=logs["prom"], stderr=subprocess.STDOUT))
        prom = Prom(f"http://127.0.0.1:{prom_port}")
        try:
            prom.wait("both targets up", lambda: prom.total('up{job=~"marsad|marsad-probe"}')
                      == 2)
        except AssertionError:
            for f in logs.values():
                f.flush()
            raise AssertionError({name: (tmp_path / f"{name}.log").read_text()[-1500:]
                                  for name in logs}) from None
        yield prom, probe, serve_port
    finally:
        for proc in reversed(procs):
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
            _stop(proc)
        for f in logs.values():
            f.close()


def _upload(port: int, path: Path) -> None:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/captures?name={path.name}", data=path.read_bytes(),
        headers={"Authorization": f"Bearer {TOKEN}",
                 "Content-Type": "application/octet-stream"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 202


def test_prometheus_sees_probe_and_service_on_one_data_directory(
        stack: tuple[Prom, subprocess.Popen[bytes], int]) -> None:
    prom, probe, serve_port = stack
    used = _used_metrics()
    assert {"up", "marsad_probe_up", "marsad_flow_bytes_total", "marsad_call_mos_bucket",
            "marsad_capture_processing_lag_seconds", "process_cpu_seconds_total"} <= used
    # Before any traffic: the probe reports, nothing has been counted.
    prom.wait("the probe reporting", lambda: prom.total('marsad_probe_up{probe="lab"}') == 1)
    before = {name: prom.total(name) or 0.0 for name in used}
    assert before["marsad_flow_bytes_total"] == 0 and before["marsad_call_ended_total"] == 0
    assert probe.stdin is not None
    live = 'source="live",probe="lab",job="marsad"'

    # 1. A blocked WhatsApp call, the stream left open: live traffic while the probe runs.
    probe.stdin.write((CAPTURES / "sample-blocked.pcap").read_bytes())
    probe.stdin.flush()
    prom.wait("the blocked call", lambda: prom.total(
        f'marsad_call_ended_total{{{live},app="whatsapp",verdict="blocked"}}') == 1)
    prom.wait("the capture's packets", lambda: prom.total(
        f"marsad_capture_received_packets_total{{{live}}}") == 382)
    running = {name: prom.total(name) for name in WHILE_RUNNING}
    assert running["marsad_probe_active_flows"] is not None
    assert running["marsad_probe_active_flows"] > 0  # its flows still in the table
    assert running["marsad_flow_rate_bytes_per_second"] is not None
    assert running["marsad_capture_processing_lag_seconds"] is not None
    # Live traffic is counted once: by the service, labelled with the probe; the probe's
    # own port gives its process series only.
    assert prom.total('marsad_flow_packets_total{job="marsad-probe"}') is None
    assert (prom.total('process_resident_memory_bytes{job="marsad-probe"}') or 0) > 0

    # 2. SIP calls losing packets and malformed packets on the same stream, an upload to
    #    the service; then the stream ends.
    probe.stdin.write(lossy_sip())
    probe.stdin.write((CAPTURES / "malformed-packets.pcap").read_bytes())
    probe.stdin.close()
    _upload(serve_port, CAPTURES / "sample-call.pcap")
    assert probe.wait(60) == 0
    prom.wait("the SIP calls", lambda: (prom.total(
        f'marsad_call_ended_total{{{live},app="sip"}}') or 0) >= 1)
    prom.wait("the probe's end", lambda: prom.total('marsad_probe_up{probe="lab"}') == 0)
    prom.wait("the upload's packets", lambda: prom.total(
        'marsad_capture_received_packets_total{source="capture"}') == 1898)
    after = {name: prom.total(name) for name in used}
    # The Grafana rate panels see the second part of the stream (a series already there).
    assert (prom.total(f"rate(marsad_capture_received_packets_total{{{live}}}[1m])") or 0) > 0

    missing = sorted(n for n in used - WHILE_RUNNING - ACTIVE_TESTS - {"up"}
                     if after[n] is None)
    assert not missing, f"not exposed: {missing}"
    # Every metric the dashboard and the rules read moved with the traffic, but for what
    # a stream cannot move.
    still = sorted(n for n in used - WHILE_RUNNING - NO_KERNEL - ACTIVE_TESTS
                   - {"up", "marsad_build_info"} if after[n] == before[n])
    assert not still, f"did not move: {still}"
    assert all(after[n] == 0 for n in NO_KERNEL)
    assert before["marsad_probe_up"] == 1 and after["marsad_probe_up"] == 0
    assert all(running[n] is not None for n in KEPT_UP)
    # Both processes were scraped with their version; the probe's port has gone with it
    # (what MarsadProbeDown watches), the service still answers.
    assert before["up"] == 2 and before["marsad_build_info"] == 2
    prom.wait("the probe's port gone", lambda: prom.total('up{job="marsad-probe"}') == 0)
    assert prom.total('up{job="marsad"}') == 1
    # Uploads are their own series, never live traffic.
    assert prom.total('marsad_flow_packets_total{source="capture",probe!=""}') is None
    # Every panel's and rule's expression evaluates in Prometheus.
    values = {"$probe": ".*", "$app": ".*", "$source": "live|capture",
              "$__rate_interval": "1m", "$__range": "1h", "${datasource}": ""}
    dash = json.loads((DEPLOY / "grafana" / "marsad.json").read_text())
    for title, expr in dashboard_exprs(dash):
        if expr.startswith("label_values("):
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", expr)
            assert m is not None, expr
            expr = f"count by ({m.group(2)}) ({m.group(1)})"
        for var, value in values.items():
            expr = expr.replace(var, value)
        try:
            result = prom.query(expr)
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{title}: {expr}: {exc.read().decode()}") from exc
        assert isinstance(result, list), title
    with urllib.request.urlopen(f"{prom.base}/api/v1/rules", timeout=5) as resp:
        groups = json.load(resp)["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    ours = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    written = [r["alert"] for g in ours["groups"] for r in g["rules"] if "alert" in r]
    assert sorted(r["name"] for r in rules) == sorted(written), rules
    assert all(r["health"] == "ok" for r in rules), rules
    probes = prom.query("count by (probe) (marsad_probe_up)")
    assert [r["metric"]["probe"] for r in probes] == ["lab"]
