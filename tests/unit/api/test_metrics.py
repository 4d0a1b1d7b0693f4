"""api.metrics on the sample captures: series, label sets, names, promtool, dashboard."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import subprocess
from collections import Counter
from collections.abc import Iterator, MutableMapping
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from api.metrics import (
    JOB_STATES,
    SOURCES,
    SPECS,
    Kind,
    MarsadMetrics,
    ProbeReport,
    add_process_collectors,
    app_label,
    category_label,
    metrics_app,
    reason_label,
    state_label,
    verdict_label,
)
from api.pipeline import AnalysisResult, analyze_capture
from classifier.records import APPS, Category
from policy import records
from policy.records import Reason, Verdict, VerdictKind
from probe.meter import MeterStats
from tests.conftest import ROOT, need_tool

CAPTURES = ROOT / "captures"
DASHBOARD = ROOT / "deploy" / "grafana" / "marsad.json"
NAME = re.compile(r"marsad_[a-z]+_[a-z_]+")
CLOSED: dict[str, frozenset[str]] = {
    "app": frozenset(APPS) | {"unknown"},
    "category": frozenset(str(c) for c in Category),
    "verdict": frozenset(str(v) for v in VerdictKind),
    "reason": frozenset(str(r) for r in Reason) | {"other"},
    "state": frozenset(JOB_STATES) | {"other"},
    "source": frozenset(SOURCES),
    "kind": frozenset(str(k) for k in records.TestKind),
}


@pytest.fixture(scope="module")
def call() -> AnalysisResult:
    return analyze_capture(CAPTURES / "sample-call.pcap", workers=0)


@pytest.fixture(scope="module")
def blocked() -> AnalysisResult:
    return analyze_capture(CAPTURES / "sample-blocked.pcap", workers=0)


def fresh(**kw: object) -> tuple[CollectorRegistry, MarsadMetrics]:
    reg = CollectorRegistry()
    return reg, MarsadMetrics(reg, **kw)  # type: ignore[arg-type]


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def cap(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    """A series of whole captures analysed after the fact (``source="capture"``)."""
    return reg.get_sample_value(name, {**labels, "source": "capture"})


def live(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    """A series of live traffic (``source="live"``)."""
    return reg.get_sample_value(name, {**labels, "source": "live"})


def samples(reg: CollectorRegistry) -> Iterator[tuple[str, dict[str, str], float]]:
    for fam in reg.collect():
        for s in fam.samples:
            yield s.name, s.labels, s.value


def app_bytes(result: AnalysisResult) -> Counter[str]:
    out: Counter[str] = Counter()
    for f, c in zip(result.flows, result.classes, strict=True):
        out[app_label(c.app)] += f.orig_wire_bytes + f.resp_wire_bytes
    return out


def test_sample_call_series(call: AnalysisResult) -> None:
    reg, m = fresh()
    m.observe_result(call)
    # The WhatsApp voice flow of sample-call.pcap: 1817 packets, 232931 frame bytes.
    assert cap(reg, "marsad_flow_packets_total", app="whatsapp", category="voice") == 1817
    assert cap(reg, "marsad_flow_bytes_total", app="whatsapp", category="voice") == 232931
    assert cap(reg, "marsad_flow_ended_total", app="whatsapp", category="dns") == 4
    # Flows of no known app: DNS and web of unrelated hosts.
    assert cap(reg, "marsad_flow_packets_total", app="unknown", category="web") == 29
    total = sum(v for n, _, v in samples(reg) if n == "marsad_flow_packets_total")
    assert total == call.stats.metered == 1898
    assert cap(reg, "marsad_capture_received_packets_total") == 1898
    assert cap(reg, "marsad_capture_weird_packets_total") == 0
    # Call-seconds: the call's own duration (their rate is the calls in progress).
    (only,) = call.analysis.calls
    assert cap(reg, "marsad_call_duration_seconds_total", app="whatsapp") == pytest.approx(
        only.end_ts - only.start_ts)
    assert cap(reg, "marsad_capture_dropped_packets_total") is None  # a file drops none
    assert cap(reg, "marsad_call_started_total", app="whatsapp") == 1
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="ok") == 1
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="blocked") is None
    # Two audio legs, no loss, MOS about 4.19 (between the 4.0 and 4.2 bounds).
    assert cap(reg, "marsad_call_mos_count", app="whatsapp") == 2
    assert cap(reg, "marsad_call_mos_bucket", app="whatsapp", le="4.0") == 0
    assert cap(reg, "marsad_call_mos_bucket", app="whatsapp", le="4.2") == 2
    legs = call.analysis.calls[0].legs
    mos_sum = cap(reg, "marsad_call_mos_sum", app="whatsapp")
    assert mos_sum == pytest.approx(sum(leg.mos or 0 for leg in legs))
    assert cap(reg, "marsad_call_loss_ratio_count", app="whatsapp") == 2
    assert cap(reg, "marsad_call_loss_ratio_sum", app="whatsapp") == 0
    assert cap(reg, "marsad_call_loss_ratio_bucket", app="whatsapp", le="0.001") == 2
    jitter = [leg.mean_jitter_s for leg in legs]
    assert cap(reg, "marsad_call_jitter_seconds_sum", app="whatsapp") == pytest.approx(
        sum(j or 0 for j in jitter))
    # The received leg's jitter (about 2 ms) lies past the 2 ms bound, the sent one's
    # (0.1 ms) under the first.
    assert cap(reg, "marsad_call_jitter_seconds_bucket", app="whatsapp", le="0.001") == 1
    assert cap(reg, "marsad_call_jitter_seconds_bucket", app="whatsapp", le="0.005") == 2
    assert cap(reg, "marsad_call_jitter_seconds_bucket", app="whatsapp", le="+Inf") == 2
    # Not live: no processing lag, no active flows.
    assert value(reg, "marsad_capture_processing_lag_seconds") is None
    assert value(reg, "marsad_probe_active_flows") is None


def test_sample_blocked_series(blocked: AnalysisResult) -> None:
    reg, m = fresh()
    m.observe_result(blocked)
    assert cap(reg, "marsad_flow_packets_total", app="whatsapp", category="voice") == 306
    assert cap(reg, "marsad_capture_received_packets_total") == 382
    assert cap(reg, "marsad_call_started_total", app="whatsapp") == 1
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="blocked") == 1
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="ok") is None
    for reason in ("stun-unanswered", "media-no-return"):
        assert cap(reg, "marsad_call_reasons_total", app="whatsapp", reason=reason) == 1
    # Only the sent leg exists, of a call whose media never came back: no conversation,
    # so no quality sample (as the call's own record says).
    assert blocked.analysis.calls[0].legs
    assert cap(reg, "marsad_call_mos_count", app="whatsapp") is None
    apps = {f.uid: app_label(c.app) for f, c in zip(blocked.flows, blocked.classes,
                                                    strict=True)}
    expected = Counter((apps[u], str(v.kind)) for u, v in
                       blocked.analysis.flow_verdicts.items())
    got = {(labels["app"], labels["verdict"]): v for n, labels, v in samples(reg)
           if n == "marsad_flow_verdicts_total"}
    assert got == expected


def test_two_captures_add_up(call: AnalysisResult, blocked: AnalysisResult) -> None:
    reg, m = fresh()
    m.observe_result(call)
    m.observe_result(blocked)
    assert cap(reg, "marsad_flow_packets_total", app="whatsapp", category="voice") == 2123
    assert cap(reg, "marsad_capture_received_packets_total") == 1898 + 382
    # Both captures hold the same call uids: each analysis still counts its call.
    assert cap(reg, "marsad_call_started_total", app="whatsapp") == 2
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="ok") == 1
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="blocked") == 1
    assert cap(reg, "marsad_call_mos_count", app="whatsapp") == 2  # the answered call's


def test_rate_whole_capture(call: AnalysisResult) -> None:
    # A window longer than the capture: rate x window is every frame byte of the app.
    window = 3600
    reg, m = fresh(rate_window_s=window)
    m.observe_flows(call.flows, call.classes)
    for app, nbytes in app_bytes(call).items():
        rate = value(reg, "marsad_flow_rate_bytes_per_second", app=app)
        assert rate is not None
        assert rate * window == pytest.approx(nbytes)


def test_rate_last_seconds(call: AnalysisResult, blocked: AnalysisResult) -> None:
    reg, m = fresh(rate_window_s=10)
    m.observe_flows(call.flows, call.classes)
    # sample-call.pcap ends at 1700001029.018: the window is seconds 1020..1029, where
    # only the voice flow's last second (1020), the chat connection (1022) and a DNS
    # exchange (1029) of WhatsApp fall.
    end = int(call.stats.last_ts)
    assert end == 1700001029
    want: Counter[str] = Counter()
    for f, c in zip(call.flows, call.classes, strict=True):
        for second, _, ob, _, rb in f.rate.tolist():
            if second > end - 10:
                want[app_label(c.app)] += ob + rb
    assert set(want) == {"whatsapp"}
    assert value(reg, "marsad_flow_rate_bytes_per_second", app="whatsapp") == (
        want["whatsapp"] / 10)
    assert 0 < want["whatsapp"] < app_bytes(call)["whatsapp"] / 10
    # Apps seen before stay exposed at 0 when they fall silent.
    assert value(reg, "marsad_flow_rate_bytes_per_second", app="unknown") == 0
    # An uploaded capture is not current traffic: the live rate does not move.
    m.observe_result(blocked)
    assert value(reg, "marsad_flow_rate_bytes_per_second", app="whatsapp") == (
        want["whatsapp"] / 10)


def test_an_uploaded_capture_is_never_current_traffic(call: AnalysisResult,
                                                      blocked: AnalysisResult) -> None:
    """A capture analysed after the fact counts under source="capture" only: no live
    series, no byte rate, no lag, whatever its timestamps."""
    now = [blocked.stats.last_ts + 1]
    reg, m = fresh(clock=lambda: now[0])
    m.observe_result(call)
    m.observe_result(blocked)
    assert value(reg, "marsad_flow_rate_bytes_per_second", app="whatsapp") is None
    assert value(reg, "marsad_capture_processing_lag_seconds") is None
    sources = {labels.get("source") for n, labels, _ in samples(reg)
               if n.startswith(("marsad_flow_", "marsad_call_", "marsad_capture_"))}
    assert sources == {"capture"}
    # live traffic moves its own series; the capture's stay as they were
    m.observe_flows(call.flows[:3], call.classes[:3])
    assert cap(reg, "marsad_flow_packets_total", app="whatsapp", category="voice") == 2123
    assert sum(v for n, lb, v in samples(reg) if n == "marsad_flow_packets_total"
               and lb["source"] == "live") == sum(f.orig_pkts + f.resp_pkts
                                                  for f in call.flows[:3])


def test_streaming_matches_whole(call: AnalysisResult) -> None:
    reg_a, whole = fresh()
    whole.observe_result(call)
    reg_b, stream = fresh()
    for i in range(0, len(call.flows), 3):
        stream.observe_flows(call.flows[i:i + 3], call.classes[i:i + 3])
    def by_labels(reg: CollectorRegistry, name: str) -> dict[tuple[str, str], float]:
        return {(lb["app"], lb["category"]): v for n, lb, v in samples(reg) if n == name}

    for name in ("marsad_flow_packets_total", "marsad_flow_bytes_total",
                 "marsad_flow_ended_total"):
        a, b = by_labels(reg_a, name), by_labels(reg_b, name)
        assert a == b and a
    assert (value(reg_b, "marsad_flow_rate_bytes_per_second", app="whatsapp") or 0) > 0
    with pytest.raises(ValueError, match="2 flows but 1 classifications"):
        stream.observe_flows(call.flows[:2], call.classes[:1])


def test_streaming_calls_counted_once(call: AnalysisResult) -> None:
    reg, m = fresh()
    calls = call.analysis.calls
    m.observe_calls(calls, finished=False)
    m.observe_calls(calls, finished=False)
    assert live(reg, "marsad_call_started_total", app="whatsapp") == 1
    assert live(reg, "marsad_call_ended_total", app="whatsapp", verdict="ok") is None
    assert live(reg, "marsad_call_mos_count", app="whatsapp") is None
    m.observe_calls(calls)
    m.observe_calls(calls)
    assert live(reg, "marsad_call_started_total", app="whatsapp") == 1
    assert live(reg, "marsad_call_ended_total", app="whatsapp", verdict="ok") == 1
    assert live(reg, "marsad_call_mos_count", app="whatsapp") == 2


def test_labels_outside_the_sets_are_folded(call: AnalysisResult) -> None:
    reg, m = fresh()
    flows = call.flows[:1]
    odd = [dataclasses.replace(call.classes[0], app="198.51.100.7")]
    m.observe_flows(flows, odd)
    odd_call = dataclasses.replace(call.analysis.calls[0], app="some-new-app")
    m.observe_calls([odd_call])
    f = flows[0]
    cat = str(call.classes[0].category)
    assert live(reg, "marsad_flow_packets_total", app="unknown", category=cat) == (
        f.orig_pkts + f.resp_pkts)
    assert live(reg, "marsad_call_started_total", app="unknown") == 1
    assert app_label(None) == "unknown"
    assert app_label("zoom") == "zoom"
    assert category_label("nonsense") == "other"
    assert category_label(Category.VOICE) == "voice"
    assert verdict_label("exploded") == "unknown"
    assert verdict_label(VerdictKind.THROTTLED) == "throttled"
    assert reason_label("made-up") == "other"
    assert reason_label(Reason.RATE_CAPPED) == "rate-capped"
    assert state_label("paused") == "other"


def test_every_label_value_is_closed(call: AnalysisResult, blocked: AnalysisResult) -> None:
    reg, m = fresh(active_flows=lambda: 5, jobs=lambda: {"done": 1, "lost": 2})
    m.observe_result(call)
    m.observe_result(blocked)
    seen = 0
    for name, labels, _ in samples(reg):
        for key, val in labels.items():
            if key == "le":
                assert name.endswith("_bucket")
                continue
            assert val in CLOSED[key], (name, key, val)
            seen += 1
    assert seen > 50


def test_capture_statistics_survive_restarts() -> None:
    reg, m = fresh()
    m.observe_capture(received=100, dropped=2)
    m.observe_capture(received=150, dropped=3)
    assert live(reg, "marsad_capture_received_packets_total") == 150
    assert live(reg, "marsad_capture_dropped_packets_total") == 3
    # The capture tool restarted: its counts began again from zero.
    m.observe_capture(received=10, dropped=0)
    assert live(reg, "marsad_capture_received_packets_total") == 160
    assert live(reg, "marsad_capture_dropped_packets_total") == 3
    m.observe_capture(received=25, dropped=4)
    assert live(reg, "marsad_capture_received_packets_total") == 175
    assert live(reg, "marsad_capture_dropped_packets_total") == 7


def test_meter_lag_and_weird(call: AnalysisResult) -> None:
    now = [1700001030.5]
    reg, m = fresh(clock=lambda: now[0])
    assert value(reg, "marsad_capture_processing_lag_seconds") is None
    m.observe_meter(MeterStats(packets=40, weird=3, last_ts=1700001029.25))
    assert value(reg, "marsad_capture_processing_lag_seconds") == pytest.approx(1.25)
    assert live(reg, "marsad_capture_weird_packets_total") == 3
    now[0] = 1700001100.5
    m.observe_meter(MeterStats(packets=90, weird=5, last_ts=1700001100.25))
    assert value(reg, "marsad_capture_processing_lag_seconds") == pytest.approx(0.25)
    assert live(reg, "marsad_capture_weird_packets_total") == 5
    # The meter's capture time moves the byte-rate window on: flows whose last second
    # is more than ten seconds old fall out of it.
    m.observe_flows(call.flows, call.classes)
    assert value(reg, "marsad_flow_rate_bytes_per_second", app="whatsapp") == 0
    m2_reg, m2 = fresh()
    m2.observe_flows(call.flows, call.classes)
    assert (value(m2_reg, "marsad_flow_rate_bytes_per_second", app="whatsapp") or 0) > 0
    m2.observe_meter(MeterStats(last_ts=1700001029.0 + 60))
    assert value(m2_reg, "marsad_flow_rate_bytes_per_second", app="whatsapp") == 0


def test_active_flows_and_jobs() -> None:
    active = [12]
    reg, _ = fresh(active_flows=lambda: active[0],
                   jobs=lambda: {"running": 1, "done": 4, "paused": 2, "stalled": 1})
    assert value(reg, "marsad_probe_active_flows") == 12
    active[0] = 3
    assert value(reg, "marsad_probe_active_flows") == 3
    assert value(reg, "marsad_analysis_jobs", state="running") == 1
    assert value(reg, "marsad_analysis_jobs", state="done") == 4
    assert value(reg, "marsad_analysis_jobs", state="queued") == 0
    assert value(reg, "marsad_analysis_jobs", state="failed") == 0
    assert value(reg, "marsad_analysis_jobs", state="other") == 3


def test_job_states_are_the_stores() -> None:
    store = pytest.importorskip("api.store", reason="the service's job store is absent")
    assert set(JOB_STATES) == {str(s) for s in store.JobState}


def test_bad_window_and_double_registration() -> None:
    with pytest.raises(ValueError, match="rate_window_s"):
        MarsadMetrics(None, rate_window_s=0)
    reg, _ = fresh()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        MarsadMetrics(reg)


def exposed_names(reg: CollectorRegistry) -> set[str]:
    return {n for n, _, _ in samples(reg)}


def spec_series() -> set[str]:
    """Every sample name the collector can expose (test_metric_names checks it does)."""
    out: set[str] = set()
    for spec in SPECS.values():
        if spec.kind is Kind.HISTOGRAM:
            out |= {spec.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            out.add(spec.name)
    return out


def test_metric_names(call: AnalysisResult, blocked: AnalysisResult) -> None:
    report = ProbeReport("eth0", True, 1.0, {})
    reg, m = fresh(active_flows=lambda: 1, jobs=lambda: {}, probes=lambda: [report],
                   tests=lambda: {("replay", "whatsapp"): 1_700_000_000.0})
    m.observe_test(records.TestResult(uid="T1", kind=records.TestKind.REPLAY, app="whatsapp",
                              started_ts=1_700_000_000.0, duration_s=8.0,
                              verdict=Verdict(VerdictKind.OK, (), ()), test_keys={}))
    m.observe_result(call)
    m.observe_result(blocked)
    m.observe_meter(call.stats)
    m.observe_flows(call.flows, call.classes)
    m.observe_capture(received=2000, dropped=1)
    m.observe_probe(skipped_bytes=0, time_jumps=0, unledgered=0)
    assert blocked.analysis.flow_verdicts, "sample-blocked.pcap should judge a flow"
    families = {fam.name: fam.type for fam in reg.collect()}
    described = {fam.name for fam in m.describe()}
    assert set(families) == described
    assert len(families) == len(SPECS)
    for spec in SPECS.values():
        assert NAME.fullmatch(spec.name), spec.name
        assert families[spec.family] == str(spec.kind)
        # every label but the probe's configured name comes from a closed set
        assert all(label in CLOSED or label == "probe" for label in spec.labels)
        base = spec.name
        if spec.kind is Kind.COUNTER:
            assert base.endswith("_total"), base
            base = base.removesuffix("_total")
        else:
            assert not base.endswith("_total"), base
        if spec.unit:
            assert base.endswith("_" + spec.unit), (base, spec.unit)
        else:
            assert spec.kind is Kind.COUNTER or base.endswith("_up"), (
                f"{base}: only event counters and 0/1 up gauges go without a unit")
        for bad in ("milliseconds", "bits", "kilobytes", "percent"):
            assert bad not in base.split("_"), base
    assert exposed_names(reg) == spec_series()


def test_promtool_check_metrics(call: AnalysisResult, blocked: AnalysisResult) -> None:
    promtool = need_tool("promtool")
    reg, m = fresh(active_flows=lambda: 2, jobs=lambda: {"done": 1})
    m.observe_result(call)
    m.observe_result(blocked)
    m.observe_meter(blocked.stats)
    m.observe_capture(received=500, dropped=1)
    text = generate_latest(reg)
    assert b"marsad_call_mos_bucket" in text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.strip() == b"", proc.stdout.decode()


def test_promtool_check_config() -> None:
    promtool = need_tool("promtool")
    proc = subprocess.run([promtool, "check", "config", "--syntax-only",
                           str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
                          capture_output=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


def test_asgi_app(call: AnalysisResult) -> None:
    reg, m = fresh()
    m.observe_result(call)
    app = metrics_app(reg)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            return await client.get("/metrics")

    resp = asyncio.run(get())
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    line = 'marsad_flow_packets_total{app="whatsapp",category="voice",source="capture"} 1817.0'
    assert line in resp.text.splitlines()


def test_asgi_app_lifespan() -> None:
    reg, _ = fresh()
    app = metrics_app(reg)
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, str]:
        return incoming.pop(0)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message["type"])

    async def run() -> None:
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(run())
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert incoming == []


# -- the Grafana dashboard -----------------------------------------------------------
PROMQL_WORDS = frozenset({
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "increase", "irate",
    "histogram_quantile", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "label_values", "topk", "bottomk", "clamp_min", "clamp_max", "offset",
    "max_over_time", "quantile_over_time"})


def promql_metrics(expr: str) -> set[str]:
    """Metric names an expression reads: identifiers left once strings, label
    matchers, range selectors, grouping clauses, numbers and functions are gone."""
    expr = re.sub(r"label_values\(\s*([^,)]+)(?:,[^)]*)?\)", r"\1", expr)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\boffset\s+-?\w+", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "",
                  expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set(re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return names - PROMQL_WORDS


def test_promql_metrics_parser() -> None:
    expr = ('histogram_quantile(0.9, sum by (app, le) (rate(marsad_call_mos_bucket'
            '{app=~"$app",verdict="ok"}[$__rate_interval]))) / on (app) '
            'sum(other_metric)')
    assert promql_metrics(expr) == {"marsad_call_mos_bucket", "other_metric"}
    assert promql_metrics("label_values(marsad_flow_bytes_total, app)") == {
        "marsad_flow_bytes_total"}
    assert promql_metrics("increase(a_total[1h] offset 15m) * on (x) group_left (v) b") == {
        "a_total", "b"}


def dashboard_exprs(dash: dict[str, object]) -> Iterator[tuple[str, str]]:
    def walk(panels: object) -> Iterator[tuple[str, str]]:
        assert isinstance(panels, list)
        for p in panels:
            yield from walk(p.get("panels", []))
            for t in p.get("targets", []):
                yield p["title"], t["expr"]
    yield from walk(dash["panels"])
    templating = dash["templating"]
    assert isinstance(templating, dict)
    for var in templating["list"]:
        if var["type"] == "query":
            yield var["name"], var["query"]["query"]


def test_dashboard_uses_only_exposed_series() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    process = CollectorRegistry()
    add_process_collectors(process, "1.0")
    names = spec_series() | exposed_names(process)
    used: set[str] = set()
    for title, expr in dashboard_exprs(dash):
        metrics = promql_metrics(expr)
        assert metrics, (title, expr)
        assert metrics <= names, (title, metrics - names)
        used |= metrics
        # every traffic series is picked by the $probe variable (the probe label the
        # service gives each probe's series), and those with an app by $app; the service's
        # jobs and active tests and the processes' own series (by instance) are not a probe's
        for selector in re.findall(r"(marsad_\w+|process_\w+)(\{[^}]*\})?",
                                   "" if title == "probe" else expr):
            if selector[0].startswith("process_") or selector[0] in (
                    "marsad_analysis_jobs", "marsad_build_info",
                    "marsad_test_finished_total", "marsad_test_last_timestamp_seconds"):
                assert "$probe" not in selector[1], (title, selector)
                continue
            assert 'probe=~"$probe"' in selector[1], (title, selector)
            if title != "app" and selector[0] in ("marsad_flow_bytes_total",
                                                  "marsad_call_ended_total"):
                assert 'app=~"$app"' in selector[1], (title, selector)
    assert {"probe", "app"} <= set(variables)
    assert variables["probe"]["query"]["query"] == "label_values(marsad_probe_up, probe)"
    # Every panel reads through the data source variable; titles are unique.
    titles = [p["title"] for p in dash["panels"]]
    assert len(set(titles)) == len(titles)
    for p in dash["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
    # Capacity, verdicts, quality and probe health all have panels.
    for needed in ("marsad_flow_rate_bytes_per_second", "marsad_flow_bytes_total",
                   "marsad_call_ended_total", "marsad_call_mos_bucket",
                   "marsad_call_loss_ratio_bucket", "marsad_call_jitter_seconds_bucket",
                   "marsad_capture_received_packets_total",
                   "marsad_capture_dropped_packets_total",
                   "marsad_capture_weird_packets_total",
                   "marsad_capture_processing_lag_seconds", "marsad_probe_active_flows",
                   "process_cpu_seconds_total", "process_resident_memory_bytes",
                   "marsad_build_info"):
        assert needed in used, needed


def test_a_call_not_answered_adds_no_quality(call: AnalysisResult) -> None:
    from dataclasses import replace

    from policy.calls import Analysis
    from policy.records import CallOutcome

    (only,) = call.analysis.calls
    one_way = replace(call, analysis=Analysis([replace(only, outcome=CallOutcome.ONE_WAY)],
                                              call.analysis.flow_verdicts))
    reg, m = fresh()
    m.observe_result(one_way)
    assert cap(reg, "marsad_call_ended_total", app="whatsapp", verdict="ok") == 1
    for name in ("marsad_call_mos_count", "marsad_call_loss_ratio_count",
                 "marsad_call_jitter_seconds_count"):
        assert cap(reg, name, app="whatsapp") is None
