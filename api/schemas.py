"""Response models of the REST API, kept apart from the internal records.

They document the JSON the API returns (``/docs`` shows them) and are built from
the store's rows. Flow and call objects allow extra keys: the pipeline may add
columns (``sni``, ``ja4``, a SIP ``call_id``...) before this file names them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from api.probe_status import ProbeStatus
from api.store import CaptureRow, JobState, TestRow
from policy.ledger import Anchor, VerifyReport

__all__ = [
    "CallOut",
    "CallPage",
    "CaptureOut",
    "CapturePage",
    "CaptureSummary",
    "ErrorOut",
    "EvidenceOut",
    "FlowOut",
    "FlowPage",
    "HealthOut",
    "LedgerAnchorOut",
    "LedgerProblemOut",
    "LedgerVerifyOut",
    "LegOut",
    "ProbeOut",
    "ProbeStatusOut",
    "QualityOut",
    "TestIn",
    "TestJobOut",
    "TestOut",
    "TestPage",
    "active_test_out",
    "capture_out",
    "ledger_out",
    "probe_out",
    "utc",
]


def utc(ts: float | None) -> datetime | None:
    """Seconds since the epoch as an aware UTC datetime."""
    return None if ts is None else datetime.fromtimestamp(ts, tz=UTC)


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer of the service's own making."""

    detail: str = Field(description="What was wrong with the request.")


class CaptureSummary(BaseModel):
    """What the analysis of a capture found."""

    model_config = ConfigDict(extra="allow")

    format: str = Field(description="pcap or pcapng")
    compressed: bool = Field(description="The file was gzip-compressed.")
    packets: int = Field(description="Packets read.")
    flows: int = Field(description="Flows found.")
    calls: int = Field(description="Calls found.")
    weirds: int = Field(description="Malformed packets recorded as weird.")
    complete: bool = Field(description="False if the capture was damaged and read only up to "
                                       "stopped_at.")
    stopped_at: int | None = Field(description="Byte offset where reading stopped.")
    message: str | None = Field(description="What was wrong with the capture, if anything.")
    first_ts: float | None = Field(description="Earliest packet time of any flow.")
    last_ts: float | None = Field(description="Latest packet time of any flow.")
    verdicts: dict[str, int] = Field(description="Calls per verdict.")
    flow_verdicts: dict[str, int] = Field(description="Flows with a verdict of their own, "
                                                      "per verdict.")
    ledger_entries: int = Field(description="Verdicts appended to the evidence ledger.")
    warnings: list[str] = Field(description="Problems that did not stop the analysis.")


class CaptureOut(BaseModel):
    """An uploaded capture and its analysis job."""

    id: str
    filename: str
    sha256: str
    size_bytes: int
    state: JobState = Field(description="queued, running, done, failed or interrupted")
    progress: float = Field(ge=0, le=1, description="Fraction of the input analysed.")
    error: str | None = Field(description="Why the analysis failed or was interrupted.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    summary: CaptureSummary | None = Field(description="Present once the state is done.")


def capture_out(row: CaptureRow) -> CaptureOut:
    """The response for a stored capture."""
    created = utc(row.created_at)
    assert created is not None
    return CaptureOut(
        id=row.id, filename=row.filename, sha256=row.sha256, size_bytes=row.size_bytes,
        state=row.state, progress=row.progress, error=row.error, created_at=created,
        started_at=utc(row.started_at), finished_at=utc(row.finished_at),
        summary=_summary(row.summary) if row.state is JobState.DONE else None)


_SUMMARY_UNKNOWN: dict[str, object] = {
    "format": "pcap", "compressed": False, "packets": 0, "flows": 0, "calls": 0, "weirds": 0,
    "complete": True, "stopped_at": None, "message": None, "first_ts": None, "last_ts": None,
    "verdicts": {}, "flow_verdicts": {}, "ledger_entries": 0, "warnings": []}
"""What a summary written by an older live probe (a few fields only) leaves unsaid."""


def _summary(stored: dict[str, Any]) -> CaptureSummary:
    return CaptureSummary.model_validate({**_SUMMARY_UNKNOWN, **stored})


class CapturePage(BaseModel):
    """A page of captures, newest first."""

    items: list[CaptureOut]
    total: int
    limit: int
    offset: int


class FlowOut(BaseModel):
    """A flow: its conn.log columns, its classification and any verdict."""

    model_config = ConfigDict(extra="allow")

    capture_id: str = Field(description="Capture the flow was found in.")
    uid: str = Field(description="Flow id (from the packets; the same in every capture "
                                 "holding the same traffic).")
    proto: str
    ip_version: int
    orig_h: str
    orig_p: int
    resp_h: str
    resp_p: int
    first_ts: float
    last_ts: float
    duration_s: float
    orig_pkts: int
    orig_bytes: int
    resp_pkts: int
    resp_bytes: int
    conn_state: str
    first_frame: int
    last_frame: int
    app: str | None
    category: str
    media: str | None
    method: str
    confidence: float
    reason: str
    verdict: str | None = Field(default=None, description="The flow's own verdict, when its "
                                                          "packets show interference.")
    reasons: list[str] | None = None
    call_uid: str | None = Field(default=None, description="The call the flow belongs to.")
    call_verdict: str | None = None


class FlowPage(BaseModel):
    """A page of flows."""

    items: list[FlowOut]
    total: int
    limit: int
    offset: int


class LegOut(BaseModel):
    """One direction of one media stream of a call."""

    model_config = ConfigDict(extra="allow")

    flow_uid: str
    direction: str
    media: str | None
    ssrc: int | None
    packets: int
    expected: int | None
    loss_ratio: float | None
    reordered: int | None
    jitter_s: float | None
    mean_jitter_s: float | None
    delay_rise_ms: float | None
    delay_plateau: bool
    mean_bps: float
    mos: float | None


class EvidenceOut(BaseModel):
    """What a verdict rests on, checkable in the capture."""

    rule: str
    reason: str
    flow_uids: list[str]
    frames: list[int]
    first_ts: float
    last_ts: float
    figures: dict[str, Any]
    text: str


class QualityOut(BaseModel):
    """The call's worst quality figures."""

    mos: float | None
    loss_ratio: float | None
    jitter_s: float | None


class CallOut(BaseModel):
    """A call with its legs, set-up and verdict."""

    model_config = ConfigDict(extra="allow")

    capture_id: str
    uid: str
    app: str | None
    media: list[str]
    flow_uids: list[str]
    start_ts: float
    end_ts: float
    duration_s: float
    local: str | None
    legs: list[LegOut]
    setup: dict[str, Any]
    verdict: str = Field(description="ok, degraded, throttled, blocked, failed or unknown")
    reasons: list[str]
    evidence: list[EvidenceOut]
    quality: QualityOut


class CallPage(BaseModel):
    """A page of calls."""

    items: list[CallOut]
    total: int
    limit: int
    offset: int


class LedgerProblemOut(BaseModel):
    """One problem found in the ledger."""

    kind: str = Field(description="content-mismatch, seq-gap, broken-link, ...")
    seq: int
    detail: str


class LedgerAnchorOut(BaseModel):
    """A checkpoint to publish outside the ledger."""

    seq: int
    entry_hash: str


class LedgerVerifyOut(BaseModel):
    """The result of walking the evidence ledger."""

    ok: bool
    entries: int
    problems: list[LedgerProblemOut]
    captures_checked: list[str] = Field(description="Captures (SHA-256) re-derived.")
    captures_unavailable: list[str] = Field(description="Captures no longer stored.")
    anchor: LedgerAnchorOut | None = Field(description="The current tail.")


def ledger_out(report: VerifyReport, anchor: Anchor | None) -> LedgerVerifyOut:
    """The response for a verification."""
    return LedgerVerifyOut(
        ok=report.ok, entries=report.entries,
        problems=[LedgerProblemOut(kind=p.kind.name.lower().replace("_", "-"), seq=p.seq,
                                   detail=p.detail) for p in report.problems],
        captures_checked=list(report.captures_checked),
        captures_unavailable=list(report.captures_unavailable),
        anchor=None if anchor is None else LedgerAnchorOut(seq=anchor.seq,
                                                           entry_hash=anchor.entry_hash))


class ProbeStatusOut(BaseModel):
    """The live probe's own report (see :mod:`api.probe_status`)."""

    state: str
    interface: str
    pid: int
    started_at: datetime
    updated_at: datetime
    packets: int
    bytes: int
    dropped: int
    flows_active: int
    flows_finished: int
    calls: int
    verdicts: dict[str, int]
    message: str | None
    lag_s: float = 0.0
    skipped_bytes: int = 0
    time_jumps: int = 0
    truncated_at: int | None = None
    ledgered: int = 0
    unledgered: int = 0


class ProbeOut(BaseModel):
    """Whether a live probe is running, and its last status."""

    running: bool = Field(description="A probe reported running within the staleness limit.")
    state: str = Field(description="The probe's state, or absent (no status file), stale (no "
                                   "heartbeat lately) or unreadable (bad status file).")
    age_s: float | None = Field(description="Seconds since the last heartbeat.")
    detail: str | None = None
    status: ProbeStatusOut | None = None


def probe_out(status: ProbeStatus, now: float, stale_after_s: float) -> ProbeOut:
    """The response for a status the probe wrote."""
    started = utc(status.started_at)
    updated = utc(status.updated_at)
    assert started is not None and updated is not None
    age = max(now - status.updated_at, 0.0)
    out = ProbeStatusOut(
        state=str(status.state), interface=status.interface, pid=status.pid,
        started_at=started, updated_at=updated, packets=status.packets, bytes=status.bytes,
        dropped=status.dropped, flows_active=status.flows_active,
        flows_finished=status.flows_finished, calls=status.calls,
        verdicts=dict(status.verdicts), message=status.message, lag_s=status.lag_s,
        skipped_bytes=status.skipped_bytes, time_jumps=status.time_jumps,
        truncated_at=status.truncated_at, ledgered=status.ledgered,
        unledgered=status.unledgered)
    live = status.state in ("starting", "running", "stopping")
    if live and age > stale_after_s:
        return ProbeOut(running=False, state="stale", age_s=age, status=out,
                        detail=f"the probe said {status.state} but has not reported for "
                               f"{age:.0f} s")
    return ProbeOut(running=status.state == "running", state=str(status.state), age_s=age,
                    detail=status.message, status=out)


class HealthOut(BaseModel):
    """Liveness of the service."""

    status: str = Field(description="ok")
    version: str
    jobs: dict[str, int] = Field(description="Captures per job state.")


class TestIn(BaseModel):
    """An active test to run (``POST /v1/tests``)."""

    __test__ = False
    model_config = ConfigDict(extra="forbid")

    kind: Literal["replay", "reachability"] = Field(
        description="replay: the app's call trace and its controls against a replay server; "
                    "reachability: DNS, TCP, TLS and STUN towards the app's endpoints.")
    app: str = Field(max_length=64, description="The app (whatsapp, teams, zoom, sip...).")
    server: str | None = Field(default=None, max_length=320, description=(
        "replay: a replay server of the service's configuration, by its name or host:port "
        "(the service tests against no other)."))
    transport: Literal["udp", "tcp"] = Field(default="udp", description=(
        "replay: the trace's transport (tcp where the app falls back to it)."))
    resolvers: list[str] = Field(default_factory=list, max_length=8, description=(
        "reachability: DNS resolvers to ask and compare, from the service's configured "
        "ones (none: the system resolver)."))
    timeout_s: float = Field(default=5.0, gt=0, le=30, description=(
        "reachability: how long each step may take."))


class TestJobOut(BaseModel):
    """A requested test's job: follow it until ``done`` (then ``test_uid`` names the
    result) or ``failed`` (``error`` says why)."""

    __test__ = False

    id: str
    request: dict[str, Any]
    state: str = Field(description="queued, running, done, failed or interrupted")
    error: str | None
    test_uid: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class TestOut(BaseModel):
    """A judged active test: verdict, reasons and evidence, the measurement
    (``test_keys``), its own capture and its evidence-ledger entry."""

    __test__ = False
    model_config = ConfigDict(extra="allow")

    uid: str
    kind: str = Field(description="replay or reachability")
    app: str
    started_ts: float
    duration_s: float
    verdict: str = Field(description="ok, degraded, throttled, blocked, failed or unknown")
    reasons: list[str]
    evidence: list[EvidenceOut]
    test_keys: dict[str, Any]
    capture_sha256: str | None
    capture_kept: bool = Field(description="Whether the test's capture is still stored.")
    ledger_seq: int | None = Field(description="Its entry in the evidence ledger.")
    created_at: datetime


class TestPage(BaseModel):
    """A page of active tests."""

    __test__ = False

    items: list[TestOut]
    total: int
    limit: int
    offset: int


def active_test_out(row: TestRow) -> TestOut:
    """A stored test as the API shows it (the capture's path on the server is not shown)."""
    d = {k: v for k, v in row.result.items() if k != "capture"}
    kept = row.capture_path is not None and Path(row.capture_path).is_file()
    return TestOut(**{**d, "capture_kept": kept, "ledger_seq": row.ledger_seq,
                      "created_at": utc(row.created_at)})
