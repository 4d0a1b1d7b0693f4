"""The service exports what the live probes on its data directory saw.

A probe writes its live series to ``<data_dir>/probes/<name>.json`` with every heartbeat;
``marsad serve`` on the same directory reads them when scraped and exposes them with a
``probe`` label beside the captures it analysed itself (``source="capture"``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from api.config import Settings
from api.main import create_app
from api.metrics import (
    PROBES_DIR,
    MarsadMetrics,
    probe_label,
    read_probe_reports,
    write_probe_report,
)
from api.pipeline import AnalysisResult, analyze_capture
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
Key = tuple[str, tuple[tuple[str, str], ...]]


@pytest.fixture(scope="module")
def blocked() -> AnalysisResult:
    return analyze_capture(CAPTURES / "sample-blocked.pcap", workers=0)


def live_metrics(result: AnalysisResult, active: int = 4) -> MarsadMetrics:
    """A probe's metrics after it saw ``result``'s traffic live."""
    m = MarsadMetrics(None, active_flows=lambda: active)
    m.observe_flows(result.flows, result.classes)
    m.observe_calls(result.analysis.calls)
    m.observe_flow_verdicts(result.analysis.flow_verdict_list(), result.flows, result.classes)
    m.observe_capture(received=result.stats.packets + 5, dropped=5)
    m.observe_meter(result.stats, lag_s=0.25)
    m.observe_probe(skipped_bytes=0, time_jumps=0, unledgered=0)
    return m


def scrape(data_dir: Path, now: list[float], preload: tuple[Path, ...] = ()) -> dict[Key, float]:
    settings = Settings(data_dir=data_dir, api_token=SecretStr("t"), preload=preload)
    app = create_app(settings, clock=lambda: now[0])
    with TestClient(app) as client:
        if preload:
            assert app.state.services.jobs.wait(60)
        r = client.get("/metrics")
        assert r.status_code == 200
        text = r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def live(probe: str, **labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**labels, "source": "live", "probe": probe}.items()))


def test_the_service_exports_a_probes_live_series(tmp_path: Path,
                                                  blocked: AnalysisResult) -> None:
    data = tmp_path / "data"
    now = [1_800_000_000.0]
    write_probe_report(data, "eth0", metrics=live_metrics(blocked), running=True,
                       interval_s=2.0, now=now[0] - 1)
    got = scrape(data, now, preload=(CAPTURES / "sample-call.pcap",))
    packets = blocked.stats.packets
    assert got[("marsad_capture_received_packets_total", live("eth0"))] == packets + 5
    assert got[("marsad_capture_dropped_packets_total", live("eth0"))] == 5
    assert got[("marsad_capture_weird_packets_total", live("eth0"))] == blocked.stats.weird
    flow_packets = sum(v for (name, labels), v in got.items()
                       if name == "marsad_flow_packets_total" and ("probe", "eth0") in labels)
    assert flow_packets == sum(f.orig_pkts + f.resp_pkts for f in blocked.flows)
    blocked_calls = sum(1 for c in blocked.analysis.calls if str(c.verdict.kind) == "blocked")
    assert blocked_calls and sum(
        v for (name, labels), v in got.items() if name == "marsad_call_ended_total"
        and ("probe", "eth0") in labels and ("verdict", "blocked") in labels) == blocked_calls
    assert got[("marsad_probe_active_flows", (("probe", "eth0"),))] == 4
    assert got[("marsad_capture_processing_lag_seconds", (("probe", "eth0"),))] == 0.25
    assert got[("marsad_probe_up", (("probe", "eth0"),))] == 1
    assert got[("marsad_probe_report_age_seconds", (("probe", "eth0"),))] == 1
    # The upload is counted apart, as a capture, with no probe label and no live gauge.
    assert got[("marsad_capture_received_packets_total", (("source", "capture"),))] == 1898
    assert got[("marsad_flow_packets_total", (("app", "whatsapp"), ("category", "voice"),
                                              ("source", "capture")))] == 1817
    assert not any(dict(labels).get("source") == "capture" and "probe" in dict(labels)
                   for _, labels in got)
    assert not any(name == "marsad_flow_rate_bytes_per_second" and "probe" not in dict(labels)
                   for name, labels in got)


def test_a_probe_that_stopped_keeps_its_counters_but_not_its_gauges(
        tmp_path: Path, blocked: AnalysisResult) -> None:
    data = tmp_path / "data"
    now = [1_800_000_000.0]
    write_probe_report(data, "lo", metrics=live_metrics(blocked), running=True,
                       interval_s=2.0, now=now[0] - 60)  # missed its heartbeats
    write_probe_report(data, "stdin", metrics=live_metrics(blocked), running=False,
                       interval_s=2.0, now=now[0])  # ended
    got = scrape(data, now)
    for probe in ("lo", "stdin"):
        assert got[("marsad_probe_up", (("probe", probe),))] == 0
        assert got[("marsad_capture_received_packets_total", live(probe))] == \
            blocked.stats.packets + 5
        assert ("marsad_probe_active_flows", (("probe", probe),)) not in got
        assert ("marsad_capture_processing_lag_seconds", (("probe", probe),)) not in got
        assert not any(name == "marsad_flow_rate_bytes_per_second" for name, _ in got)
    assert got[("marsad_probe_report_age_seconds", (("probe", "lo"),))] == 60


def test_a_bad_report_is_left_out(tmp_path: Path, blocked: AnalysisResult,
                                  caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    now = 1_800_000_000.0
    good = write_probe_report(data, "eth1", metrics=live_metrics(blocked), running=True,
                              interval_s=2.0, now=now)
    obj = json.loads(good.read_text())
    # a label value outside its closed set would make a new series: the report is refused
    samples = obj["metrics"]["marsad_flow_packets_total"]
    samples[0][1]["app"] = "evil<script>"
    (data / PROBES_DIR / "evil.json").write_text(json.dumps({**obj, "probe": "evil"}))
    (data / PROBES_DIR / "junk.json").write_bytes(b"\xff not json")
    unknown = {**obj, "probe": "other", "metrics": {"marsad_made_up_total": []}}
    (data / PROBES_DIR / "other.json").write_text(json.dumps(unknown))
    reports = read_probe_reports(data, now)
    assert [r.name for r in reports] == ["eth1"]
    assert "evil.json left out" in caplog.text and "junk.json left out" in caplog.text
    got = scrape(data, [now])
    assert {dict(labels)["probe"] for _, labels in got if "probe" in dict(labels)} == {"eth1"}


def test_probe_names_are_label_values() -> None:
    assert probe_label("eth0") == "eth0"
    assert probe_label("/tmp/x y.pcap") == "_tmp_x_y.pcap"
    assert probe_label("../../etc/passwd") == "_.._etc_passwd"
    assert probe_label("") == "probe"
    assert len(probe_label("x" * 200)) == 64


def test_serve_exports_what_marsad_probe_saw_on_its_data_directory(tmp_path: Path) -> None:
    """``marsad probe -r FILE --data-dir D``, then ``marsad serve`` on D: the probe's flows,
    calls and packets are on the service's /metrics as live traffic."""
    data = tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "api.cli", "probe", "-r", str(CAPTURES / "sample-call.pcap"),
         "--data-dir", str(data), "--name", "uplink"],
        cwd=ROOT, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    got = scrape(data, [time.time() + 60])  # a stopped probe's counters stay
    assert got[("marsad_capture_received_packets_total", live("uplink"))] == 1898
    assert got[("marsad_flow_packets_total", live("uplink", app="whatsapp",
                                                 category="voice"))] == 1817
    assert got[("marsad_call_ended_total", live("uplink", app="whatsapp", verdict="ok"))] == 1
    assert got[("marsad_probe_up", (("probe", "uplink"),))] == 0  # it has ended
    assert ("marsad_capture_received_packets_total", (("source", "capture"),)) not in got


def test_the_service_reads_no_report_of_a_probe_it_was_not_given(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    MarsadMetrics(registry)
    names = {fam.name for fam in registry.collect()}
    assert "marsad_probe_up" not in names and "marsad_analysis_jobs" not in names
