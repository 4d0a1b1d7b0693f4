"""The shipped monitoring: prometheus.yml scrapes the service and the probe's metrics port,
the alerting rules pass ``promtool check rules`` and their unit tests (``promtool test
rules``), and every metric the rules and the Grafana dashboard read is exposed by the
service or by a probe as they really build their registries."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.config import Settings
from api.main import create_app
from api.metrics import probe_metrics, write_probe_report
from api.pipeline import analyze_capture
from tests.activetests import measure
from tests.conftest import ROOT, need_tool
from tests.unit.api.test_metrics import dashboard_exprs, promql_metrics

DEPLOY = ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "marsad.json"
PROBE_UNIT = DEPLOY / "systemd" / "marsad-probe.service"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = need_tool("promtool")
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_promtool_check_rules() -> None:
    got = _promtool("check", "rules", str(RULES))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "SUCCESS: 7 rules found" in got.stdout


def test_promtool_test_rules() -> None:
    got = _promtool("test", "rules", str(RULES_TEST))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "SUCCESS" in got.stdout


def test_promtool_check_config_with_its_rules() -> None:
    got = _promtool("check", "config", str(PROMETHEUS_YML))
    assert got.returncode == 0, got.stdout + got.stderr
    assert "1 rule files found" in got.stdout


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_the_rules_cover_what_operators_need() -> None:
    alerts = {r["alert"]: r for r in _rules()}
    assert {"MarsadProbeDown", "MarsadProbeNotReporting", "MarsadKernelDrops",
            "MarsadProcessingLag", "MarsadInterferedCallsRising",
            "MarsadActiveTestInterfered"} <= set(alerts)
    # probe health is per probe (the service exports every probe on its data directory)
    for name in ("MarsadKernelDrops", "MarsadProcessingLag"):
        assert "by (probe)" in alerts[name]["expr"], name
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    # calls: live traffic only, per app, blocked or throttled
    rising = alerts["MarsadInterferedCallsRising"]["expr"]
    assert "by (app, verdict)" in rising and 'verdict=~"blocked|throttled"' in rising
    assert rising.count('source="live"') == rising.count("marsad_call_ended_total") == 3
    tested = yaml.safe_load(RULES_TEST.read_text())
    tested_alerts = {t["alertname"] for case in tested["tests"]
                     for t in case["alert_rule_test"] if any(
                         a for a in t.get("exp_alerts") or [])}
    assert tested_alerts >= set(alerts) - {"MarsadServiceDown"}


def test_prometheus_scrapes_the_service_and_the_probe_metrics_port() -> None:
    conf = yaml.safe_load(PROMETHEUS_YML.read_text())
    assert conf["rule_files"] == ["rules.yml"]
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
            for j in conf["scrape_configs"]}
    unit = PROBE_UNIT.read_text()
    port = re.search(r"--metrics-port (\d+)", unit)
    assert port is not None, "the probe's unit serves metrics"
    assert any(t.endswith(f":{port.group(1)}") for t in jobs["marsad-probe"])
    assert any(t.endswith(":8000") for t in jobs["marsad"])
    # the rules name the jobs that exist
    for rule in _rules():
        for job in re.findall(r'job="([^"]+)"', rule["expr"]):
            assert job in jobs, (rule["alert"], job)


def _names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a scrape of the service returns, after an upload and with a live
    probe reporting to its data directory, and of a probe's own metrics port."""
    version = "9.9.9"
    registry, live = probe_metrics(version, active_flows=lambda: 2)
    result = analyze_capture(ROOT / "captures" / "sample-blocked.pcap", workers=1)
    live.observe_flows(result.flows, result.classes)
    live.observe_calls(result.analysis.calls)
    live.observe_flow_verdicts(result.analysis.flow_verdict_list(), result.flows,
                               result.classes)
    live.observe_capture(received=result.stats.packets + 3, dropped=3)
    live.observe_meter(result.stats, lag_s=0.5)
    probe_names = _names(generate_latest(registry).decode())
    tmp: Path = tmp_path_factory.mktemp("serve")
    write_probe_report(tmp / "data", "eth0", metrics=live, running=True, interval_s=2.0,
                       now=time.time())
    settings = Settings(data_dir=tmp / "data", api_token=SecretStr("t"),
                        preload=(ROOT / "captures" / "sample-call.pcap",))
    # and one active test, measured on loopback, requested through the API
    app = create_app(settings, test_runner=lambda request, out, _policy: measure(out))
    with TestClient(app) as client:
        assert app.state.services.jobs.wait(60)
        assert client.post("/v1/tests", headers={"Authorization": "Bearer t"}, json={
            "kind": "reachability", "app": "whatsapp"}).status_code == 202
        assert app.state.services.tests.wait(60)
        r = client.get("/metrics", follow_redirects=False)
        assert r.status_code == 200
        serve_names = _names(r.text)
    assert "marsad_build_info" in probe_names and "marsad_build_info" in serve_names
    # the service alone holds every live series (the probe job keeps only its process's)
    assert {n for n in probe_names if n.startswith("marsad_")} - {"marsad_build_info"} \
        <= serve_names
    return serve_names | {n for n in probe_names if not n.startswith("marsad_")}


def test_every_metric_of_the_rules_is_exposed(exposed: set[str]) -> None:
    for rule in _rules():
        used = promql_metrics(rule["expr"]) - {"up"}
        assert used <= exposed, (rule["alert"], used - exposed)


def test_every_metric_of_the_dashboard_is_exposed(exposed: set[str]) -> None:
    dash = json.loads(DASHBOARD.read_text())
    seen = set()
    for title, expr in dashboard_exprs(dash):
        used = promql_metrics(expr)
        assert used <= exposed, (title, used - exposed)
        seen |= used
    assert "marsad_capture_processing_lag_seconds" in seen  # the probe exports it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_the_probe_metrics_port_shows_live_traffic() -> None:
    """``marsad probe -r - --metrics-port``: while the stream is open, its scrape holds the
    live packets, flows and the flows still in the table, beside the process series."""
    port = _free_port()
    cmd = [sys.executable, "-c",
           "import sys; from api.cli import run; sys.argv[0] = 'marsad'; run()",
           "probe", "-r", "-", "--no-ring", "--metrics-port", str(port),
           "--status-interval", "0.2"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        proc.stdin.write((ROOT / "captures" / "sample-call.pcap").read_bytes())
        proc.stdin.flush()
        values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics",
                                            timeout=2) as resp:
                    text = resp.read().decode()
            except OSError:
                continue  # not listening yet
            values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for fam in text_string_to_metric_families(text) for s in fam.samples}
            if values.get(("marsad_capture_received_packets_total", (("source", "live"),))) \
                    and any(name == "marsad_flow_packets_total" for name, _ in values):
                break
        assert values.get(("marsad_capture_received_packets_total",
                           (("source", "live"),))) == 1898
        # the stream is still open: its UDP flows have not timed out
        assert values[("marsad_probe_active_flows", ())] > 0
        # flows are counted as the pipeline settles them (their timeout run out in capture
        # time): some of the capture's 29 packets of unnamed web flows by now, not all
        web = values.get(("marsad_flow_packets_total", (("app", "unknown"), ("category", "web"),
                                                         ("source", "live"))), 0)
        assert 0 < web < 29
        assert ("process_start_time_seconds", ()) in values
        assert any(name == "marsad_build_info" for name, _ in values)
        assert not any(dict(labels).get("source") == "capture" for _, labels in values)
    finally:
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stderr.close()
