"""Prometheus metrics: running totals folded in per analysed batch, read at scrape time.

The pipeline (or the live service) hands :class:`MarsadMetrics` whole batches
of finished flows, their classifications and the calls judged from them; the
object keeps running totals, and its ``collect`` turns them into metric
families only when Prometheus scrapes. Nothing is pushed per packet.

Names follow ``marsad_<subsystem>_<name>_<unit>`` in base units, with
``_total`` on counters. Label values come only from closed sets: ``app`` is
one of :data:`classifier.records.APPS` or ``unknown``; ``category`` one of
:class:`~classifier.records.Category`; ``verdict`` one of
:class:`~policy.records.VerdictKind`; ``reason`` one of
:class:`~policy.records.Reason` (or ``other``); ``state`` one of
:data:`JOB_STATES` (or ``other``); ``source`` one of :data:`SOURCES`. Anything
outside a set is folded into its fallback value, so a bad record can never
create a new series.

``source`` tells current traffic from stored captures: ``live`` is what a live
probe is seeing now (the ``observe_flows``/``observe_calls``/... methods), and
``capture`` is a whole capture file analysed after the fact (``observe_result``:
an upload or a preload of the service). A capture of last year's traffic thus
never shows as a spike of current traffic: it moves only ``source="capture"``
series, and never the byte-rate gauge, the processing lag or the active flows.

Series (see :data:`SPECS` for the full list with help texts):

* ``marsad_flow_bytes_total`` / ``marsad_flow_packets_total``
  {app, category, source}: frame bytes and packets of finished flows, both
  directions.
* ``marsad_flow_ended_total`` {app, category, source}: finished flows.
* ``marsad_flow_rate_bytes_per_second`` {app}: wire bytes per second of live
  traffic over the last ``rate_window_s`` seconds of capture time (the capacity
  view).
* ``marsad_probe_active_flows``: flows in the meter's table, from a callable.
* ``marsad_flow_verdicts_total`` {app, verdict, source}: flows whose own packets
  show interference.
* ``marsad_call_started_total`` {app, source}, ``marsad_call_ended_total``
  {app, verdict, source}, ``marsad_call_reasons_total`` {app, reason, source}.
* ``marsad_call_duration_seconds_total`` {app, source}: seconds of finished calls; its
  rate is the mean number of calls in progress (the traffic in erlangs), counted as
  each call ends.
* ``marsad_call_loss_ratio``, ``marsad_call_jitter_seconds``,
  ``marsad_call_mos`` {app, source}: histograms of the quality of answered calls' legs.
* ``marsad_capture_received_packets_total``,
  ``marsad_capture_dropped_packets_total``,
  ``marsad_capture_weird_packets_total`` {source}: what the capture delivered.
* ``marsad_capture_processing_lag_seconds``: how long the oldest packet received
  but not yet processed has waited (the live probe).
* ``marsad_capture_skipped_bytes_total``, ``marsad_capture_time_jumps_total``:
  damaged input skipped to resynchronise, and packets whose time jumps (the live
  probe).
* ``marsad_ledger_unrecorded_verdicts_total``: verdicts the live probe reported
  but could not put in the evidence ledger.
* ``marsad_analysis_jobs`` {state}: analysis jobs by state, from a callable.
* ``marsad_probe_up``, ``marsad_probe_report_age_seconds`` {probe}: whether each live
  probe on the service's data directory reports on time (the service only).
* ``marsad_test_finished_total`` {kind, app, verdict}: active tests the service ran and
  recorded (``observe_test``), ``kind`` one of :class:`~policy.records.TestKind`.
* ``marsad_test_last_timestamp_seconds`` {kind, app}: start time of the latest stored
  active test of each kind and app, read from a callable at scrape time (the service's
  store: it survives a restart).

Live probes and the service: one metrics story
----------------------------------------------
A live probe (``marsad probe --data-dir D``) keeps a :class:`MarsadMetrics` of what it
sees and, with every status heartbeat, writes its live series to
``D/probes/<name>.json`` (:func:`write_probe_report`: the samples of
:meth:`MarsadMetrics.snapshot`, its state and the time). The service on the same data
directory reads those reports when Prometheus scrapes it (:func:`read_probe_reports`)
and exposes their series beside its own, each with a ``probe`` label naming the probe:
one scrape of ``marsad serve`` holds the live traffic, calls, verdicts and health of
every probe on its data directory (``source="live"``, ``probe=...``) and the captures
it analysed itself (``source="capture"``, no ``probe`` label). A report is checked
against :data:`SPECS` and the closed label sets before anything of it is exposed; a
report of another shape is left out and logged. A probe that stopped or missed its
heartbeats keeps its counters (their last values) but loses its gauges (rate, active
flows, lag) and reads ``marsad_probe_up 0``. A probe's own ``--metrics-port`` serves
the same live series without the ``probe`` label, for a probe with no service beside
it; ``deploy/prometheus/prometheus.yml`` keeps only its process series, so nothing
is counted twice.

:func:`add_process_collectors` adds prometheus_client's ``process_*`` and
``python_info`` series and ``marsad_build_info`` {version} to a registry.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    make_asgi_app,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from api.probe_status import write_json_atomic
from classifier.records import APPS, Category, Classification
from policy.records import (
    Call,
    CallOutcome,
    FlowVerdict,
    Reason,
    TestKind,
    TestResult,
    VerdictKind,
)
from probe import FlowRecord, MeterStats

if TYPE_CHECKING:
    from api.pipeline import AnalysisResult

__all__ = [
    "BUILD_INFO",
    "JITTER_BUCKETS",
    "JOB_STATES",
    "LOSS_BUCKETS",
    "MOS_BUCKETS",
    "PROBES_DIR",
    "SOURCES",
    "SPECS",
    "BuildInfo",
    "Kind",
    "MarsadMetrics",
    "MetricSpec",
    "ProbeReport",
    "add_process_collectors",
    "app_label",
    "category_label",
    "kind_label",
    "metrics_app",
    "metrics_payload",
    "probe_label",
    "probe_metrics",
    "read_probe_reports",
    "reason_label",
    "state_label",
    "verdict_label",
    "write_probe_report",
]

log = logging.getLogger(__name__)

UNKNOWN_APP = "unknown"
"""Label value for flows and calls of no known app."""
OTHER = "other"
"""Label value for a reason or job state outside its closed set."""

LIVE = "live"
"""``source`` of what a live probe sees."""
CAPTURE = "capture"
"""``source`` of a whole capture file analysed after the fact (upload, preload)."""
SOURCES = (LIVE, CAPTURE)
"""Values of the ``source`` label."""

JOB_STATES = ("queued", "running", "done", "failed", "interrupted")
"""States of an analysis job (those of the service's job store), always exposed."""

LOSS_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0)
"""Upper bounds for leg loss ratios (1 % and 3 % are where calls audibly suffer)."""
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
"""Upper bounds for leg jitter, seconds (ITU-T G.114 puts trouble past ~30 ms)."""
MOS_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 3.8, 4.0, 4.2, 4.4, 4.5)
"""Upper bounds for E-model MOS (ITU-T G.107: 4.3+ very satisfied, below 3.1 many
dissatisfied)."""

_APP_SET = frozenset(APPS)
_CATEGORIES = frozenset(str(c) for c in Category)
_VERDICTS = frozenset(str(v) for v in VerdictKind)
_REASONS = frozenset(str(r) for r in Reason)
_TEST_KINDS = frozenset(str(k) for k in TestKind)
_SEEN_CALLS = 100_000
"""How many call uids are remembered to count each call once."""


class Kind(StrEnum):
    """Prometheus metric type."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One exposed metric family."""

    name: str
    """Full name as scraped (counters include ``_total``)."""
    kind: Kind
    """Metric type."""
    unit: str
    """Base unit the name ends with (before ``_total``), or ``""`` for event counts."""
    labels: tuple[str, ...]
    """Label names; every one takes values from a closed set."""
    doc: str
    """HELP text."""

    @property
    def family(self) -> str:
        """Family name as prometheus_client wants it (counters without ``_total``)."""
        return self.name.removesuffix("_total") if self.kind is Kind.COUNTER else self.name


def _spec(name: str, kind: Kind, unit: str, labels: tuple[str, ...], doc: str) -> MetricSpec:
    return MetricSpec(name, kind, unit, labels, doc)


_ACS = ("app", "category", "source")
_SRC = ("source",)
SPECS: dict[str, MetricSpec] = {s.name: s for s in (
    _spec("marsad_flow_bytes_total", Kind.COUNTER, "bytes", _ACS,
          "Frame bytes on the wire of finished flows, both directions."),
    _spec("marsad_flow_packets_total", Kind.COUNTER, "packets", _ACS,
          "Packets of finished flows, both directions."),
    _spec("marsad_flow_ended_total", Kind.COUNTER, "", _ACS,
          "Flows finished and classified."),
    _spec("marsad_flow_rate_bytes_per_second", Kind.GAUGE, "bytes_per_second", ("app",),
          "Frame bytes per second of live traffic over the last seconds of capture time."),
    _spec("marsad_probe_active_flows", Kind.GAUGE, "flows", (),
          "Flows currently in the live meter's table."),
    _spec("marsad_flow_verdicts_total", Kind.COUNTER, "", ("app", "verdict", "source"),
          "Flows whose own packets show interference, by verdict."),
    _spec("marsad_call_started_total", Kind.COUNTER, "", ("app", "source"),
          "Calls seen for the first time."),
    _spec("marsad_call_ended_total", Kind.COUNTER, "", ("app", "verdict", "source"),
          "Calls finished, by verdict."),
    _spec("marsad_call_reasons_total", Kind.COUNTER, "", ("app", "reason", "source"),
          "Reason codes given by finished calls' verdicts."),
    _spec("marsad_call_duration_seconds_total", Kind.COUNTER, "seconds", ("app", "source"),
          "Seconds of finished calls (its rate is the mean number of calls in progress)."),
    _spec("marsad_call_loss_ratio", Kind.HISTOGRAM, "ratio", ("app", "source"),
          "Packet loss ratio of call legs (RFC 3550 lost / expected)."),
    _spec("marsad_call_jitter_seconds", Kind.HISTOGRAM, "seconds", ("app", "source"),
          "Mean interarrival jitter of call legs (RFC 3550)."),
    _spec("marsad_call_mos", Kind.HISTOGRAM, "mos", ("app", "source"),
          "E-model mean opinion score of call legs (ITU-T G.107 scale)."),
    _spec("marsad_capture_received_packets_total", Kind.COUNTER, "packets", _SRC,
          "Packets the capture delivered (the capture tool's count when live)."),
    _spec("marsad_capture_dropped_packets_total", Kind.COUNTER, "packets", _SRC,
          "Packets the capture tool reported dropped (live capture only)."),
    _spec("marsad_capture_weird_packets_total", Kind.COUNTER, "packets", _SRC,
          "Packets with a decoding problem."),
    _spec("marsad_capture_processing_lag_seconds", Kind.GAUGE, "seconds", (),
          "How long the oldest packet received but not yet processed has waited."),
    _spec("marsad_capture_skipped_bytes_total", Kind.COUNTER, "bytes", (),
          "Damaged input bytes skipped to resynchronise on the next good record."),
    _spec("marsad_capture_time_jumps_total", Kind.COUNTER, "", (),
          "Packets whose time is more than an hour from the packet before."),
    _spec("marsad_ledger_unrecorded_verdicts_total", Kind.COUNTER, "", (),
          "Verdicts reported but not put in the evidence ledger."),
    _spec("marsad_analysis_jobs", Kind.GAUGE, "jobs", ("state",),
          "Analysis jobs by state."),
    _spec("marsad_probe_up", Kind.GAUGE, "", ("probe",),
          "1 while a live probe on the service's data directory reports on time, else 0."),
    _spec("marsad_probe_report_age_seconds", Kind.GAUGE, "seconds", ("probe",),
          "Wall-clock seconds since a live probe on the data directory last reported."),
    _spec("marsad_test_finished_total", Kind.COUNTER, "", ("kind", "app", "verdict"),
          "Active tests (replay, reachability) run and recorded, by verdict."),
    _spec("marsad_test_last_timestamp_seconds", Kind.GAUGE, "seconds", ("kind", "app"),
          "Start time (seconds since the epoch) of the latest stored active test."),
)}
"""Every metric family the collector exposes, by name."""

_BUCKETS: dict[str, tuple[float, ...]] = {
    "marsad_call_loss_ratio": LOSS_BUCKETS,
    "marsad_call_jitter_seconds": JITTER_BUCKETS,
    "marsad_call_mos": MOS_BUCKETS,
}


def app_label(app: str | None) -> str:
    """The ``app`` label for a classifier app name: one of APPS, else ``unknown``."""
    return app if app in _APP_SET else UNKNOWN_APP


def category_label(category: object) -> str:
    """The ``category`` label: one of :class:`Category`, else ``other``."""
    value = str(category)
    return value if value in _CATEGORIES else str(Category.OTHER)


def verdict_label(kind: object) -> str:
    """The ``verdict`` label: one of :class:`VerdictKind`, else ``unknown``."""
    value = str(kind)
    return value if value in _VERDICTS else str(VerdictKind.UNKNOWN)


def reason_label(reason: object) -> str:
    """The ``reason`` label: one of :class:`Reason`, else ``other``."""
    value = str(reason)
    return value if value in _REASONS else OTHER


def kind_label(kind: object) -> str | None:
    """The ``kind`` label: one of :class:`TestKind`, else None (the sample is dropped:
    a test kind has no fallback value)."""
    value = str(kind)
    return value if value in _TEST_KINDS else None


def state_label(state: object) -> str:
    """The ``state`` label: one of :data:`JOB_STATES`, else ``other``."""
    value = str(state)
    return value if value in JOB_STATES else OTHER


PROBES_DIR = "probes"
"""Directory of the data directory where live probes write their reports."""
REPORT_VERSION = 1
"""Format of a probe's report."""
STALE_AFTER_S = 10.0
"""A probe is down when its report is older than this, or three heartbeats if longer."""
FORGET_AFTER_S = 86400.0
"""A report older than this is no longer exposed at all (a probe long gone)."""
_PROBE_NAME_BAD = re.compile(r"[^A-Za-z0-9_.:@-]")
_LIVE_GAUGES = frozenset({"marsad_flow_rate_bytes_per_second", "marsad_probe_active_flows",
                          "marsad_capture_processing_lag_seconds"})
"""Gauges that say what a probe sees now: left out once it stops reporting."""
_REPORTED = frozenset(SPECS) - {"marsad_analysis_jobs", "marsad_probe_up",
                                "marsad_probe_report_age_seconds", "marsad_test_finished_total",
                                "marsad_test_last_timestamp_seconds"}
"""What a probe's report may hold: every series but the service's own."""
_SUFFIXES = {Kind.COUNTER: ("_total",), Kind.GAUGE: ("",),
             Kind.HISTOGRAM: ("_bucket", "_count", "_sum")}


def probe_label(name: str) -> str:
    """The ``probe`` label (and report file name) for a probe's name: at most 64 of
    ``A-Za-z0-9_.:@-``, anything else replaced by ``_``; ``probe`` when empty."""
    cleaned = _PROBE_NAME_BAD.sub("_", name)[:64].lstrip(".")
    return cleaned or "probe"


def _label_ok(key: str, value: str) -> bool:
    """Whether ``value`` is in the closed set of label ``key`` (a probe's report)."""
    if key == "app":
        return app_label(value) == value
    if key == "category":
        return category_label(value) == value
    if key == "verdict":
        return verdict_label(value) == value
    if key == "reason":
        return reason_label(value) == value
    if key == "state":
        return state_label(value) == value
    if key == "source":
        return value == LIVE
    if key == "le":
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


Sample = tuple[str, dict[str, str], float]
"""One exposed sample: its name, labels and value."""


def _checked(name: str, samples: Any) -> list[Sample]:
    """A report's samples of family ``name``, checked against its spec; raises
    ValueError for anything else."""
    spec = SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown metric {name!r}")
    if not isinstance(samples, list):
        raise ValueError(f"{name}: samples must be a list")
    out: list[Sample] = []
    suffixes = _SUFFIXES[spec.kind]
    for item in samples:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                and isinstance(item[1], dict)):
            raise ValueError(f"{name}: a sample must be [name, labels, value]")
        sample_name, labels, value = item
        if sample_name not in {spec.family + sfx for sfx in suffixes}:
            raise ValueError(f"{name}: sample {sample_name!r} is not of this family")
        want = set(spec.labels) | ({"le"} if sample_name.endswith("_bucket") else set())
        if set(labels) != want or not all(
                isinstance(v, str) and _label_ok(k, v) for k, v in labels.items()):
            raise ValueError(f"{name}: labels {labels!r} outside their closed sets")
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: value {value!r} is not a non-negative number")
        out.append((sample_name, dict(labels), float(value)))
    return out


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """A live probe's report, as the service read it from the data directory."""

    name: str
    """The probe's name (the ``probe`` label)."""
    up: bool
    """The probe runs and its report is fresh."""
    age_s: float
    """Wall-clock seconds since the probe wrote the report."""
    families: dict[str, list[Sample]]
    """Checked samples by metric name (a name of :data:`SPECS`)."""


def write_probe_report(data_dir: Path, name: str, *, metrics: MarsadMetrics, running: bool,
                       interval_s: float, now: float) -> Path:
    """Write a probe's report (its live series, whether it runs, when, and how often it
    reports) to ``data_dir/probes/<name>.json`` atomically; return the path."""
    path = Path(data_dir) / PROBES_DIR / f"{probe_label(name)}.json"
    write_json_atomic(path, {"version": REPORT_VERSION, "probe": probe_label(name),
                             "running": running, "updated_at": now,
                             "interval_s": interval_s, "metrics": metrics.snapshot()})
    return path


def read_probe_report(path: Path, now: float) -> ProbeReport | None:
    """One report file checked (None when older than :data:`FORGET_AFTER_S`); raises
    ValueError or OSError for a file of another shape or an unreadable one."""
    obj = json.loads(path.read_bytes())
    if not isinstance(obj, dict) or obj.get("version") != REPORT_VERSION:
        raise ValueError("not a probe report of version 1")
    name, updated, interval = obj.get("probe"), obj.get("updated_at"), obj.get("interval_s")
    if not isinstance(name, str) or probe_label(name) != name:
        raise ValueError(f"bad probe name {name!r}")
    if isinstance(updated, bool) or not isinstance(updated, int | float) \
            or isinstance(interval, bool) or not isinstance(interval, int | float) \
            or not math.isfinite(updated) or not math.isfinite(interval) or interval <= 0:
        raise ValueError("updated_at and interval_s must be numbers")
    families = obj.get("metrics")
    if not isinstance(families, dict):
        raise ValueError("metrics must be an object")
    age = max(0.0, now - float(updated))
    if age > FORGET_AFTER_S:
        return None
    checked = {key: _checked(key, samples) for key, samples in families.items()}
    up = obj.get("running") is True and age <= max(STALE_AFTER_S, 3 * float(interval))
    return ProbeReport(name, up, age, checked)


def read_probe_reports(data_dir: Path, now: float) -> list[ProbeReport]:
    """Every live probe's report in ``data_dir/probes``, by name. A file that cannot be
    read or is of another shape is logged and left out: a bad report never reaches
    Prometheus."""
    directory = Path(data_dir) / PROBES_DIR
    try:
        paths = sorted(p for p in directory.iterdir()
                       if p.suffix == ".json" and not p.name.startswith("."))
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.warning("probe reports in %s: %s", directory, exc.strerror or exc)
        return []
    reports: list[ProbeReport] = []
    for path in paths:
        try:
            report = read_probe_report(path, now)
        except (OSError, ValueError) as exc:
            log.warning("probe report %s left out: %s", path, exc)
            continue
        if report is not None:
            reports.append(report)
    return reports


@dataclass(slots=True)
class _Histogram:
    """Bucket counts (not cumulative) and sum of one labelled histogram."""

    bounds: tuple[float, ...]
    """Finite upper bounds, ascending."""
    counts: list[int] = field(default_factory=list)
    """Observations per bucket; one more than ``bounds`` (the +Inf bucket)."""
    total: float = 0.0
    """Sum of the observations."""

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        i = 0
        while i < len(self.bounds) and value > self.bounds[i]:
            i += 1
        self.counts[i] += 1
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass(slots=True)
class _Running:
    """A monotonic total fed either by increments or by a source's cumulative count."""

    total: int = 0
    """The counter's value."""
    last: int | None = None
    """Last cumulative count reported by the source."""

    def report(self, cumulative: int) -> None:
        """Take a cumulative count; a smaller one than before means the source restarted."""
        if self.last is None or cumulative < self.last:
            self.total += cumulative
        else:
            self.total += cumulative - self.last
        self.last = cumulative


class MarsadMetrics:
    """Running totals of marsad's analyses, exposed to Prometheus by ``collect``.

    ``registry``: where to register (tests pass a fresh ``CollectorRegistry``).
    ``active_flows``: returns the number of flows in the live meter's table
    (e.g. ``FlowMeter.active_flows``); without it the gauge reads 0.
    ``jobs``: returns the number of analysis jobs per state.
    ``probes``: returns the reports of the live probes whose series are exposed too,
    each labelled ``probe`` (the service: :func:`read_probe_reports` of its data
    directory).
    ``tests``: returns the start time of the latest stored active test per (kind, app)
    (the service: :meth:`api.store.Store.test_latest`).
    ``clock``: wall clock, for the processing lag.
    ``rate_window_s``: how many seconds of capture time the byte rate covers.

    The ``observe_*`` methods may be called from any thread; each takes a lock
    for the time it takes to add a batch.
    """

    def __init__(self, registry: CollectorRegistry | None, *,
                 active_flows: Callable[[], int] | None = None,
                 jobs: Callable[[], Mapping[str, int]] | None = None,
                 probes: Callable[[], Sequence[ProbeReport]] | None = None,
                 tests: Callable[[], Mapping[tuple[str, str], float]] | None = None,
                 clock: Callable[[], float] = time.time,
                 rate_window_s: int = 10) -> None:
        if rate_window_s < 1:
            raise ValueError(f"rate_window_s must be at least 1, not {rate_window_s}")
        self._active_flows = active_flows
        self._jobs = jobs
        self._probes = probes
        self._tests = tests
        self._clock = clock
        self._window = rate_window_s
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[str, ...], float]] = {
            s.name: {} for s in SPECS.values() if s.kind is Kind.COUNTER}
        self._hists: dict[str, dict[tuple[str, str], _Histogram]] = {
            name: {} for name in _BUCKETS}
        # the live capture tool's and meter's cumulative counts (a whole capture adds its
        # own totals straight to the counters)
        self._received = _Running()
        self._dropped = _Running()
        self._weird = _Running()
        self._skipped = _Running()
        self._jumps = _Running()
        self._unrecorded = _Running()
        self._lag: float | None = None
        self._rate_apps: set[str] = set()
        self._rate: dict[str, dict[int, int]] = {}
        self._now_s: int | None = None
        self._calls: OrderedDict[str, bool] = OrderedDict()
        if registry is not None:
            registry.register(self)

    # -- folding in ----------------------------------------------------------------
    def observe_result(self, result: AnalysisResult) -> None:
        """Fold in a whole analysed capture (an upload, a preload): flows, calls, flow
        verdicts and packet counts, all under ``source="capture"``. It is not current
        traffic: the live byte rate, lag and active flows are left as they are."""
        with self._lock:
            self._add_flows(result.flows, result.classes, CAPTURE)
            self._add_calls(result.analysis.calls, CAPTURE, finished=True, dedupe=False)
            self._add_flow_verdicts(result.analysis.flow_verdict_list(),
                                    result.flows, result.classes, CAPTURE)
            self._inc("marsad_capture_received_packets_total", (CAPTURE,),
                      result.stats.packets)
            self._inc("marsad_capture_weird_packets_total", (CAPTURE,), result.stats.weird)

    def observe_test(self, result: TestResult) -> None:
        """Count a recorded active test by kind, app and verdict."""
        kind = kind_label(result.kind)
        if kind is None:
            return
        with self._lock:
            self._inc("marsad_test_finished_total",
                      (kind, app_label(result.app), verdict_label(result.verdict.kind)))

    def observe_flows(self, flows: Sequence[FlowRecord],
                      classes: Sequence[Classification]) -> None:
        """Fold in a batch of live flows, finished, and their classifications (same
        order)."""
        with self._lock:
            self._add_flows(flows, classes, LIVE)

    def observe_calls(self, calls: Iterable[Call], *, finished: bool = True) -> None:
        """Fold in a batch of live calls. Each call uid is counted once as started, and
        once as ended when it is passed with ``finished=True``."""
        with self._lock:
            self._add_calls(calls, LIVE, finished=finished, dedupe=True)

    def observe_flow_verdicts(self, verdicts: Iterable[FlowVerdict],
                              flows: Sequence[FlowRecord],
                              classes: Sequence[Classification]) -> None:
        """Fold in verdicts on single live flows; ``flows``/``classes`` give their
        apps."""
        with self._lock:
            self._add_flow_verdicts(verdicts, flows, classes, LIVE)

    def observe_capture(self, *, received: int, dropped: int) -> None:
        """Take the live capture tool's cumulative statistics (libpcap's ``ps_recv``
        and ``ps_drop``, or a pcapng Interface Statistics Block's ``isb_ifrecv`` and
        ``isb_ifdrop``). A count smaller than the previous one means a new capture
        session; the exposed counters keep growing across it."""
        with self._lock:
            self._received.report(received)
            self._dropped.report(dropped)

    def observe_meter(self, stats: MeterStats, *, lag_s: float | None = None) -> None:
        """Take a running meter's cumulative statistics: weird packets, and the
        capture time of the newest packet (byte-rate window). ``lag_s`` is the
        processing lag when the caller measures it (the live probe: how long received
        packets wait); without it, the wall clock minus the newest packet's time."""
        with self._lock:
            self._weird.report(stats.weird)
            if lag_s is not None:
                self._lag = max(0.0, lag_s)
            if stats.last_ts > 0:
                if lag_s is None:
                    self._lag = max(0.0, self._clock() - stats.last_ts)
                self._advance(stats.last_ts)

    def observe_probe(self, *, skipped_bytes: int, time_jumps: int, unledgered: int) -> None:
        """Take the live probe's cumulative input and evidence counters."""
        with self._lock:
            self._skipped.report(skipped_bytes)
            self._jumps.report(time_jumps)
            self._unrecorded.report(unledgered)

    # -- under the lock ------------------------------------------------------------
    def _inc(self, name: str, labels: tuple[str, ...], by: float = 1) -> None:
        series = self._counters[name]
        series[labels] = series.get(labels, 0) + by

    def _advance(self, ts: float) -> None:
        second = int(ts)
        if self._now_s is None or second > self._now_s:
            self._now_s = second
            oldest = second - self._window
            for per_second in self._rate.values():
                for s in [s for s in per_second if s <= oldest]:
                    del per_second[s]

    def _add_flows(self, flows: Sequence[FlowRecord],
                   classes: Sequence[Classification], source: str) -> None:
        if len(flows) != len(classes):
            raise ValueError(f"{len(flows)} flows but {len(classes)} classifications")
        newest = self._now_s
        for f, c in zip(flows, classes, strict=True):
            labels = (app_label(c.app), category_label(c.category), source)
            self._inc("marsad_flow_bytes_total", labels, f.orig_wire_bytes + f.resp_wire_bytes)
            self._inc("marsad_flow_packets_total", labels, f.orig_pkts + f.resp_pkts)
            self._inc("marsad_flow_ended_total", labels)
            if source == LIVE and len(f.rate):
                last = int(f.rate[-1, 0])
                newest = last if newest is None else max(newest, last)
        if source != LIVE:
            return
        if newest is not None:
            self._advance(newest)
        oldest = (self._now_s or 0) - self._window
        for f, c in zip(flows, classes, strict=True):
            app = app_label(c.app)
            self._rate_apps.add(app)
            per_second = self._rate.setdefault(app, {})
            for second, _op, ob, _rp, rb in f.rate.tolist():
                if second > oldest:
                    per_second[second] = per_second.get(second, 0) + ob + rb

    def _add_calls(self, calls: Iterable[Call], source: str, *, finished: bool,
                   dedupe: bool) -> None:
        for call in calls:
            app = app_label(call.app)
            ended = self._calls.get(call.uid) if dedupe else None
            if ended is None:
                self._inc("marsad_call_started_total", (app, source))
            if ended:
                continue
            if dedupe:
                self._calls[call.uid] = finished
                self._calls.move_to_end(call.uid)
                while len(self._calls) > _SEEN_CALLS:
                    self._calls.popitem(last=False)
            if not finished:
                continue
            self._inc("marsad_call_ended_total",
                      (app, verdict_label(call.verdict.kind), source))
            self._inc("marsad_call_duration_seconds_total", (app, source),
                      max(0.0, call.end_ts - call.start_ts))
            for reason in call.verdict.reasons:
                self._inc("marsad_call_reasons_total", (app, reason_label(reason), source))
            # How a conversation sounded: a call whose media did not flow both ways had
            # none, whatever its one-way legs measure (as its record says).
            for leg in call.legs if call.outcome is CallOutcome.ANSWERED else ():
                jitter = leg.mean_jitter_s if leg.mean_jitter_s is not None else leg.jitter_s
                for name, value in (("marsad_call_loss_ratio", leg.loss_ratio),
                                    ("marsad_call_jitter_seconds", jitter),
                                    ("marsad_call_mos", leg.mos)):
                    if value is not None:
                        hist = self._hists[name].get((app, source))
                        if hist is None:
                            hist = self._hists[name][app, source] = _Histogram(
                                _BUCKETS[name])
                        hist.observe(value)

    def _add_flow_verdicts(self, verdicts: Iterable[FlowVerdict],
                           flows: Sequence[FlowRecord],
                           classes: Sequence[Classification], source: str) -> None:
        apps = {f.uid: c.app for f, c in zip(flows, classes, strict=True)}
        for v in verdicts:
            self._inc("marsad_flow_verdicts_total",
                      (app_label(apps.get(v.uid)), verdict_label(v.verdict.kind), source))

    # -- scrape --------------------------------------------------------------------
    def describe(self) -> Iterator[Metric]:
        """Every family, without samples (the registry checks names with it)."""
        for spec in SPECS.values():
            yield _family(spec)

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """The live series as JSON-ready ``[sample name, labels, value]`` lists by metric
        name (what a probe writes in its report; :func:`read_probe_report` reads it)."""
        out: dict[str, list[list[Any]]] = {}
        for spec, samples in self._families():
            live = [[name, labels, value] for name, labels, value in samples
                    if labels.get("source", LIVE) == LIVE and spec.name in _REPORTED]
            if live:
                out[spec.name] = live
        return out

    def collect(self) -> Iterator[Metric]:
        """The current values, as metric families: this object's own series, and those
        of the live probes ``probes`` reports (each with its ``probe`` label)."""
        extra: dict[str, list[Sample]] = {}
        if self._probes is not None:
            for report in self._probes():
                probe = {"probe": report.name}
                extra.setdefault("marsad_probe_up", []).append(
                    ("marsad_probe_up", probe, 1.0 if report.up else 0.0))
                extra.setdefault("marsad_probe_report_age_seconds", []).append(
                    ("marsad_probe_report_age_seconds", probe, round(report.age_s, 3)))
                for name, samples in report.families.items():
                    if name in _LIVE_GAUGES and not report.up:
                        continue
                    extra.setdefault(name, []).extend(
                        (sample, {**labels, **probe}, value) for sample, labels, value in samples)
        for spec, samples in self._families():
            more = extra.get(spec.name, [])
            if spec.kind is Kind.GAUGE and not samples and not more:
                continue
            family = _family(spec)
            for name, labels, value in (*samples, *more):
                family.add_sample(name, labels, value)
            yield family

    def _families(self) -> list[tuple[MetricSpec, list[Sample]]]:
        """This object's own samples, per spec, in the order of :data:`SPECS`."""
        active = self._active_flows() if self._active_flows is not None else None
        jobs = dict(self._jobs()) if self._jobs is not None else None
        latest: dict[tuple[str, str], float] = {}
        for (kind, app), ts in (self._tests() if self._tests is not None else {}).items():
            kind_value = kind_label(kind)
            if kind_value is not None and math.isfinite(ts):
                series = (kind_value, app_label(app))
                latest[series] = max(ts, latest.get(series, ts))
        with self._lock:
            counters = {name: dict(series) for name, series in self._counters.items()}
            for name, running in (("marsad_capture_received_packets_total", self._received),
                                  ("marsad_capture_dropped_packets_total", self._dropped),
                                  ("marsad_capture_weird_packets_total", self._weird)):
                # live totals, shown from the first report on (0 before: nothing seen)
                if running.last is not None:
                    counters[name][(LIVE,)] = running.total
            hists = {name: sorted((key, h.cumulative(), h.total) for key, h in per_key.items())
                     for name, per_key in self._hists.items()}
            for name, running in (("marsad_capture_skipped_bytes_total", self._skipped),
                                  ("marsad_capture_time_jumps_total", self._jumps),
                                  ("marsad_ledger_unrecorded_verdicts_total", self._unrecorded)):
                if running.last is not None:  # live probe only, from its first report on
                    counters[name] = {(): running.total}
            rates = sorted((app, sum(self._rate.get(app, {}).values()) / self._window)
                           for app in self._rate_apps)
            lag = self._lag
        gauges: dict[str, list[tuple[tuple[str, ...], float]]] = {
            "marsad_flow_rate_bytes_per_second": [((app,), rate) for app, rate in rates],
            "marsad_probe_active_flows": [] if active is None else [((), active)],
            "marsad_capture_processing_lag_seconds": [] if lag is None else [((), lag)],
            "marsad_test_last_timestamp_seconds": sorted(latest.items()),
        }
        if jobs is not None:
            by_state = dict.fromkeys(JOB_STATES, 0)
            for state, n in jobs.items():
                key = state_label(state)
                by_state[key] = by_state.get(key, 0) + n
            gauges["marsad_analysis_jobs"] = [((state,), n) for state, n in by_state.items()]
        out: list[tuple[MetricSpec, list[Sample]]] = []
        for spec in SPECS.values():
            samples: list[Sample] = []
            if spec.kind is Kind.COUNTER:
                for values, value in sorted(counters.get(spec.name, {}).items()):
                    samples.append((spec.name, dict(zip(spec.labels, values, strict=True)),
                                    float(value)))
            elif spec.kind is Kind.GAUGE:
                for gauge_values, gauge_value in gauges.get(spec.name, []):
                    samples.append((spec.name, dict(zip(spec.labels, gauge_values,
                                                        strict=True)), float(gauge_value)))
            else:
                for hist_key, buckets, total in hists[spec.name]:
                    labels = dict(zip(spec.labels, hist_key, strict=True))
                    for bound, below in buckets:
                        samples.append((f"{spec.name}_bucket", {**labels, "le": bound},
                                        float(below)))
                    samples.append((f"{spec.name}_count", labels, float(buckets[-1][1])))
                    samples.append((f"{spec.name}_sum", labels, total))
            out.append((spec, samples))
        return out


def _family(spec: MetricSpec) -> Metric:
    """An empty metric family for a spec."""
    labels = list(spec.labels)
    if spec.kind is Kind.COUNTER:
        return CounterMetricFamily(spec.family, spec.doc, labels=labels)
    if spec.kind is Kind.GAUGE:
        return GaugeMetricFamily(spec.family, spec.doc, labels=labels)
    return HistogramMetricFamily(spec.family, spec.doc, labels=labels)


BUILD_INFO = "marsad_build_info"
"""Gauge, always 1, whose ``version`` label is the running marsad's version."""


class BuildInfo:
    """The ``marsad_build_info`` {version} gauge (the usual ``*_build_info`` pattern: join
    on it to tell which version a series came from)."""

    def __init__(self, version: str) -> None:
        self.version = version

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(BUILD_INFO, "marsad's version; always 1.", labels=["version"])

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(BUILD_INFO, "marsad's version; always 1.", labels=["version"])
        g.add_metric([self.version], 1)
        yield g


def add_process_collectors(registry: CollectorRegistry, version: str) -> None:
    """Add the process's own series to ``registry``: prometheus_client's ``process_*``
    (CPU, memory, open files, start time), ``python_info``, ``python_gc_*`` and
    ``marsad_build_info``."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        # the library's default collectors, shared: a second registry may hold them too
        registry.register(collector)
    registry.register(BuildInfo(version))


def probe_metrics(version: str, *, active_flows: Callable[[], int] | None = None
                  ) -> tuple[CollectorRegistry, MarsadMetrics]:
    """The registry ``marsad probe --metrics-port`` serves: live traffic (``active_flows``
    gives the flows in the probe's table), the process's series and the build info."""
    registry = CollectorRegistry()
    metrics = MarsadMetrics(registry, active_flows=active_flows)
    add_process_collectors(registry, version)
    return registry, metrics


def metrics_payload(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The exposition of ``registry`` in the format ``accept`` asks for (OpenMetrics or
    the Prometheus text format), and its content type."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_app(registry: CollectorRegistry) -> ASGIApp:
    """An ASGI app serving ``registry`` in the Prometheus text format, to mount at
    ``/metrics``. It also answers ASGI lifespan messages, so it can be served on
    its own (``uvicorn``) as well as mounted."""
    inner: ASGIApp = make_asgi_app(registry=registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await inner(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app
