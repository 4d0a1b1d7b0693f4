"""The policy stage's record schema: calls, their legs' quality, verdicts, evidence.

A :class:`Call` groups the flows of one call (by ``uid``); each
:class:`Leg` is one direction of one media stream with its measured quality.
A :class:`Verdict` says whether the network interfered, names the rule that
fired and the evidence a reader can check against the packets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Call", "CallOutcome", "CallSetup", "Evidence", "FlowVerdict", "Leg", "Reason",
           "ReportedStream", "SipEvent", "StunSetup", "TcpSetup", "TestKind", "TestResult",
           "TlsSetup", "Verdict", "VerdictKind"]


class VerdictKind(StrEnum):
    """What happened to a call or flow."""

    OK = "ok"
    DEGRADED = "degraded"
    THROTTLED = "throttled"
    BLOCKED = "blocked"
    FAILED = "failed"
    UNKNOWN = "unknown"


class CallOutcome(StrEnum):
    """What became of a call, as its packets show it (whatever the network did)."""

    ANSWERED = "answered"
    """Media flowed both ways: at least ``calls.answered_packets`` media packets each way
    (RTP packets of comfort noise, RFC 3389, are no media content and do not count)."""
    ONE_WAY = "one-way"
    """Media flowed one way only (the other sent fewer than ``calls.answered_packets``):
    a ringback heard while nobody answers, or one-way audio."""
    MISSED = "missed"
    """Set up, or ringing, and given up: no media, a SIP CANCEL or 487."""
    REJECTED = "rejected"
    """The callee or its proxy refused it (a SIP final 4xx-6xx)."""
    SETUP_FAILED = "setup-failed"
    """Set-up got no answer (SIP INVITEs unanswered, set-up blocked): it never rang."""


class Reason(StrEnum):
    """Closed set of reason codes (documented in docs/VERDICTS.md)."""

    STUN_UNANSWERED = "stun-unanswered"
    """STUN/TURN requests went out and no response came back, while other traffic flowed."""
    SYN_UNANSWERED = "syn-unanswered"
    """TCP SYNs to the app's servers were never answered, while other connections worked."""
    TCP_RESET = "tcp-reset"
    """A TCP SYN was answered by a RST instead of a SYN-ACK."""
    TLS_RESET_AFTER_HELLO = "tls-reset-after-hello"
    """The TLS ClientHello was answered by a RST (or nothing) instead of a ServerHello:
    the signature of SNI-based blocking."""
    ICMP_UNREACHABLE = "icmp-unreachable"
    """An ICMP destination-unreachable or administratively-prohibited error quoted the
    call's packets."""
    MEDIA_NO_RETURN = "media-no-return"
    """Media went out for seconds and nothing came back, though the call is two-way."""
    RATE_CAPPED = "rate-capped"
    """Received media lost packets while its one-way delay climbed and levelled off: a
    queue in front of a rate limit (a shaper)."""
    DELAYED_THROTTLE = "delayed-throttle"
    """Media was clean at first, then capped from some second on."""
    HIGH_LOSS = "high-loss"
    """Packet loss above the threshold, without a shaper's delay signature."""
    HIGH_JITTER = "high-jitter"
    """Interarrival jitter above the threshold."""
    LOW_MOS = "low-mos"
    """E-model MOS below the threshold."""
    SIP_UNANSWERED = "sip-unanswered"
    """SIP INVITEs (retransmitted) got no response at all, not even 100 Trying."""
    SIP_REJECTED = "sip-rejected"
    """The callee (or its proxy) answered the INVITE with a final 4xx/5xx/6xx."""
    SIP_NO_ANSWER = "sip-no-answer"
    """The call rang and was cancelled (487) before an answer."""
    TOO_SHORT = "too-short"
    """Too little of the call was captured to judge it."""
    NO_TWO_WAY_MEDIA = "no-two-way-media"
    """Nothing showed interference, but media did not flow both ways (comfort noise not
    counted) and no signalling said the call was answered: no conversation to judge (a
    call that rang out, or one whose other side sent nothing the capture shows)."""
    DNS_FAILURE = "dns-failure"
    """An active test: the app's names did not resolve (NXDOMAIN, no answer, timeout)
    while other names did."""
    DNS_INCONSISTENT = "dns-inconsistent"
    """An active test: resolvers gave different addresses for a name, and one resolver's
    addresses could not be reached while another's could."""
    TLS_CERTIFICATE = "tls-certificate"
    """An active test: the server behind the app's name showed a certificate that is not
    the name's (wrong name, unknown authority): interception, or a misconfigured server."""
    CONTROL_FAILED = "control-failed"
    """An active test: the control target failed as well as the app: the network, not the
    app, may be down; nothing is called blocked."""
    NO_CONTROL = "no-control"
    """An active test: nothing of the app's worked and no control target was named, so a
    block cannot be told from a network that is down."""
    REPLAY_BLOCKED = "replay-blocked"
    """A replay test: the app's trace got nothing through (or its STUN messages alone were
    lost) while both controls did, over the same path, in both runs of the trace."""
    REPLAY_SHAPED = "replay-shaped"
    """A replay test: the app's trace, and neither control, met a shaper's queue (loss
    while the delay climbed and levelled off), in both runs of the trace."""
    REPLAY_DIFFERENTIATED = "replay-differentiated"
    """A replay test: the app's trace was slower than both controls by Wehe's area and
    Kolmogorov-Smirnov tests, in both runs of the trace."""
    REPLAY_PATH_IMPAIRED = "replay-path-impaired"
    """A replay test: both runs of the trace and both controls lost packets alike: a lossy
    path, not differentiation."""
    REPLAY_INCONCLUSIVE = "replay-inconclusive"
    """A replay test that cannot be judged: a run missing or failed, too short, the
    original differing from one control only, or its two runs (before and after the
    controls) disagreeing."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """What a verdict rests on: checkable against the capture."""

    rule: str
    """Policy rule that fired (its name in the policy file)."""
    reason: Reason
    """Reason code."""
    flow_uids: tuple[str, ...]
    """Flows the rule looked at."""
    frames: tuple[int, ...]
    """Capture positions (1-based frame numbers) of the packets that show it."""
    first_ts: float
    """Earliest time concerned."""
    last_ts: float
    """Latest time concerned."""
    figures: dict[str, Any]
    """The measured values and the thresholds they crossed."""
    text: str
    """One sentence a person can check in the packets."""

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "reason": str(self.reason), "flow_uids": list(self.flow_uids),
                "frames": list(self.frames), "first_ts": self.first_ts,
                "last_ts": self.last_ts, "figures": self.figures, "text": self.text}


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict on a call or a flow."""

    kind: VerdictKind
    """ok, degraded, throttled, blocked, failed or unknown."""
    reasons: tuple[Reason, ...]
    """Reason codes, strongest first."""
    evidence: tuple[Evidence, ...]
    """One entry per rule that fired."""

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": str(self.kind), "reasons": [str(r) for r in self.reasons],
                "evidence": [e.to_dict() for e in self.evidence]}


@dataclass(frozen=True, slots=True)
class Leg:
    """One direction of one media stream of a call, and how it went."""

    flow_uid: str
    """The flow that carried it."""
    direction: str
    """``out`` (sent by the local side) or ``in`` (received by it)."""
    media: str | None
    """audio, video, screen or None when unknown."""
    ssrc: int | None
    """RTP SSRC, when RTP headers were visible."""
    packets: int
    """Packets seen."""
    expected: int | None
    """Packets the sender sent (from RTP sequence numbers), when known."""
    loss_ratio: float | None
    """Lost / expected (RFC 3550), when known."""
    reordered: int | None
    """Packets out of order."""
    jitter_s: float | None
    """RFC 3550 interarrival jitter (end of the stream), seconds."""
    mean_jitter_s: float | None
    """Mean of the per-second jitter values, seconds."""
    delay_rise_ms: float | None
    """How much the one-way delay (minimum per second) rose over the leg."""
    delay_plateau: bool
    """True if the delay rose and then levelled off (a full shaper queue)."""
    mean_bps: float
    """Mean bit rate over the leg's active seconds (bits of payload per second)."""
    mos: float | None
    """E-model MOS estimate (audio legs)."""
    seconds: tuple[tuple[float, ...], ...] = ()
    """Per second: (second, packets, bits/s, lost, jitter_s, transit_min_ms)."""
    rtcp_reports: int = 0
    """RTCP receiver reports about this stream from the other side (RFC 3550 §6.4)."""
    rtcp_fraction_lost: float | None = None
    """Mean fraction lost those reports gave: the far side's view of this stream."""
    rtcp_jitter_s: float | None = None
    """Interarrival jitter in the latest such report, in seconds."""

    def to_dict(self) -> dict[str, Any]:
        def r(x: float | None, n: int = 4) -> float | None:
            return None if x is None else round(x, n)
        return {"flow_uid": self.flow_uid, "direction": self.direction, "media": self.media,
                "ssrc": self.ssrc, "packets": self.packets, "expected": self.expected,
                "loss_ratio": r(self.loss_ratio), "reordered": self.reordered,
                "jitter_s": r(self.jitter_s, 6), "mean_jitter_s": r(self.mean_jitter_s, 6),
                "delay_rise_ms": r(self.delay_rise_ms, 1), "delay_plateau": self.delay_plateau,
                "mean_bps": round(self.mean_bps, 1), "mos": r(self.mos, 2),
                "rtcp": None if not self.rtcp_reports else {
                    "reports": self.rtcp_reports,
                    "fraction_lost": r(self.rtcp_fraction_lost),
                    "jitter_s": r(self.rtcp_jitter_s, 6)}}


@dataclass(frozen=True, slots=True)
class ReportedStream:
    """A media stream the probe saw no RTP of, known from its sender's own RTCP sender
    reports (RFC 3550 §6.4.1): how many packets it says it sent while the capture ran,
    and what its RTP clock says it carries."""

    flow_uid: str
    """The flow that carried the last of the reports."""
    direction: str
    """``out`` (the local side sent the stream) or ``in``."""
    media: str
    """audio (an audio sampling clock) or video (the 90 kHz clock)."""
    ssrc: int
    """The stream's SSRC."""
    clock_hz: float
    """RTP timestamp units per second of the sender's wallclock, between its reports."""
    packets: int
    """RTP packets the sender says it sent between its first and last report seen."""
    octets: int
    """RTP payload octets the sender says it sent between those reports."""
    reports: int
    """Sender reports seen."""
    first_frame: int
    """The first of them."""
    last_frame: int
    """The last of them."""

    def to_dict(self) -> dict[str, Any]:
        return {"flow_uid": self.flow_uid, "direction": self.direction, "media": self.media,
                "ssrc": self.ssrc, "clock_hz": round(self.clock_hz), "packets": self.packets,
                "octets": self.octets, "reports": self.reports,
                "frames": [self.first_frame, self.last_frame]}


@dataclass(frozen=True, slots=True)
class StunSetup:
    """STUN/TURN over a call's flows: requests sent, success and error responses, and the
    pings of an app's own message types its caller sent (WhatsApp's 0x08xx; what answers
    them is not published, so they are neither requests nor answered here)."""

    requests: int = 0
    success: int = 0
    errors: int = 0
    pings: int = 0


@dataclass(frozen=True, slots=True)
class TcpSetup:
    """A call's TCP connections by how their handshake went (Zeek's ``conn_state``)."""

    connections: int = 0
    established: int = 0
    """Any state but refused, unanswered or mid-stream (``OTH``)."""
    refused: int = 0
    """``REJ``: the SYN answered by a reset."""
    unanswered: int = 0
    """``S0``/``RSTOS0``: no answer to the SYN."""


@dataclass(frozen=True, slots=True)
class TlsSetup:
    """TLS handshakes over a call's flows."""

    client_hellos: int = 0
    server_hellos: int = 0


@dataclass(frozen=True, slots=True)
class SipEvent:
    """One SIP message of a call's dialog, as the set-up lists it."""

    ts: float
    frame: int
    message: str
    """The request method, or the response's status code."""
    call_id: str | None


@dataclass(frozen=True, slots=True)
class CallSetup:
    """What happened while a call was set up: STUN, the SIP dialog, TCP and TLS, and how
    long until its first media."""

    stun: StunSetup
    sip: tuple[SipEvent, ...]
    """The dialog's messages by time."""
    tcp: TcpSetup
    tls: TlsSetup
    first_media_ts: float | None
    """First packet of the first media flow; None when no media flowed."""
    setup_s: float | None
    """Seconds from the call's first packet to its first media (6 decimals)."""

    def to_dict(self) -> dict[str, Any]:
        return {"stun": {"requests": self.stun.requests, "success": self.stun.success,
                         "errors": self.stun.errors, "pings": self.stun.pings},
                "sip": [{"ts": m.ts, "frame": m.frame, "message": m.message,
                         "call_id": m.call_id} for m in self.sip],
                "tcp": {"connections": self.tcp.connections,
                        "established": self.tcp.established, "refused": self.tcp.refused,
                        "unanswered": self.tcp.unanswered},
                "tls": {"client_hellos": self.tls.client_hellos,
                        "server_hellos": self.tls.server_hellos},
                "first_media_ts": self.first_media_ts, "setup_s": self.setup_s}


@dataclass(frozen=True, slots=True)
class Call:
    """One call: its flows, legs, set-up and verdict."""

    uid: str
    """Deterministic id (from the flows' uids, which carry the capture's identity, and a
    SIP call's Call-ID)."""
    app: str | None
    """App of the call (sip for plain SIP, None for unnamed RTP)."""
    media: tuple[str, ...]
    """Media carried (audio, video, screen)."""
    flow_uids: tuple[str, ...]
    """Every flow of the call: signalling, set-up and media."""
    start_ts: float
    """First packet of the call."""
    end_ts: float
    """Last packet of the call."""
    local: str | None
    """Address of the local side (the caller's host as seen by the probe)."""
    legs: tuple[Leg, ...]
    """One per direction and media stream."""
    setup: CallSetup
    """What happened during set-up: STUN requests/responses, SIP messages, TCP/TLS."""
    verdict: Verdict
    """Whether the network interfered."""
    outcome: CallOutcome = CallOutcome.ANSWERED
    """What became of the call (answered, one-way, missed, rejected, set-up failed)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else worth showing (e.g. the SIP Call-ID)."""
    reported_streams: tuple[ReportedStream, ...] = ()
    """Streams the probe saw no RTP of, known from their senders' RTCP reports; those the
    local side sent count in :attr:`media`."""
    early_media: tuple[Leg, ...] = ()
    """Of a call that rang out (``missed``): the streams heard while it rang, a ringback or
    an announcement (RFC 3960's early media), which are no media of the call."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "uid": self.uid, "app": self.app, "media": list(self.media),
            "flow_uids": list(self.flow_uids), "start_ts": self.start_ts, "end_ts": self.end_ts,
            "duration_s": round(self.end_ts - self.start_ts, 6), "local": self.local,
            "outcome": str(self.outcome), "legs": [leg.to_dict() for leg in self.legs],
            "setup": self.setup.to_dict()}
        if self.early_media:
            d["early_media"] = [leg.to_dict() for leg in self.early_media]
        if self.reported_streams:
            d["reported_streams"] = [r.to_dict() for r in self.reported_streams]
        d.update(self.verdict.to_dict())
        # How a conversation sounded: a call whose media did not flow both ways (blocked,
        # one-way, missed) had none, whatever its one-way legs measure.
        legs = self.legs if self.outcome is CallOutcome.ANSWERED else ()
        mos = [leg.mos for leg in legs if leg.mos is not None]
        d["quality"] = {"mos": round(min(mos), 2) if mos else None,
                        "loss_ratio": _worst([leg.loss_ratio for leg in legs]),
                        "jitter_s": _worst([leg.mean_jitter_s for leg in legs])}
        d.update(self.extra)
        return d


@dataclass(frozen=True, slots=True)
class FlowVerdict:
    """A verdict on a single flow that shows interference outside any call."""

    uid: str
    """The flow."""
    verdict: Verdict
    """What happened to it."""


class TestKind(StrEnum):
    """The active tests marsad runs."""

    REPLAY = "replay"
    """An app's call trace and its controls replayed over the path (Wehe's method)."""
    REACHABILITY = "reachability"
    """DNS, TCP, TLS and STUN towards an app's endpoints (OONI's method)."""


@dataclass(frozen=True, slots=True)
class TestResult:
    """An active test, judged: what was measured, the verdict, and its own capture."""

    __test__ = False  # not a pytest test class

    uid: str
    """Deterministic id (from the app, the kind, the start time and the measurement)."""
    kind: TestKind
    app: str
    started_ts: float
    duration_s: float
    verdict: Verdict
    """ok, throttled, blocked, degraded or unknown; an interference verdict's evidence
    names the benign explanations the measurement excludes."""
    test_keys: dict[str, Any]
    """The measurement, in the spirit of OONI's ``test_keys``: every step and figure."""
    capture: str | None = None
    """Path of the test's own capture of its packets, if one was taken."""
    capture_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "uid": self.uid, "kind": str(self.kind), "app": self.app,
            "started_ts": self.started_ts, "duration_s": self.duration_s,
            "capture": self.capture, "capture_sha256": self.capture_sha256}
        d.update(self.verdict.to_dict())
        d["test_keys"] = self.test_keys
        return d


def _worst(values: list[float | None]) -> float | None:
    vs = [v for v in values if v is not None]
    return round(max(vs), 6) if vs else None
