"""The classifier's record schema: what it says about each flow, and why.

``Facts`` is what the inspectors read from a flow's first payloads (names,
handshakes, STUN exchanges, SIP dialog messages...). ``Classification`` is
the verdict on the flow's app, category and media, with the evidence that
decided it. Both refer to the probe's flow by ``uid``; the policy stage reads
them without changing them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from probe.speed import pickled_by_position

__all__ = [
    "APPS",
    "CALL_CATEGORIES",
    "Category",
    "Classification",
    "Facts",
    "Method",
    "RtcpReport",
    "RtcpSenderInfo",
    "SipSummary",
    "StunSummary",
]

APPS = frozenset({
    "whatsapp", "messenger", "facebook", "teams", "zoom", "facetime", "viber", "signal",
    "telegram", "meet", "discord", "webex", "wechat", "line", "imo", "snapchat", "sip",
    "youtube", "netflix"})
"""App names of the output contract; these names never change."""


class Category(StrEnum):
    """What the flow is for."""

    VOICE = "voice"
    VIDEO = "video"
    SCREEN = "screen"
    CALL_SETUP = "call-setup"
    STREAMING = "streaming"
    MESSAGING = "messaging"
    WEB = "web"
    DNS = "dns"
    OTHER = "other"


CALL_CATEGORIES = frozenset({Category.VOICE, Category.VIDEO, Category.SCREEN,
                             Category.CALL_SETUP})


class Method(StrEnum):
    """Which evidence decided the app."""

    STUN_ATTR = "stun-attr"
    STUN_REALM = "stun-realm"
    STUN_TYPE = "stun-type"
    FRAMING = "framing"
    SNI = "sni"
    QUIC_SNI = "quic-sni"
    TLS_CERT = "tls-cert"
    DNS = "dns"
    DNS_QUERY = "dns-query"
    IP_OWNER = "ip-owner"
    SIP = "sip"
    SDP = "sdp"
    RTP = "rtp"
    CALL_PEER = "call-peer"
    STATS = "stats"
    PORT = "port"
    NONE = "none"


@pickled_by_position
@dataclass(frozen=True, slots=True)
class StunSummary:
    """The STUN/TURN exchange of a flow, as far as its payload samples show."""

    requests: int
    """Requests of a registered method sent, from either side (a vendor's own message
    types, such as WhatsApp's 0x08xx, are neither requests nor answers here: their
    meaning is not published)."""
    success: int
    """Success responses."""
    errors: int
    """Error responses."""
    indications: int
    """Indications (TURN Send/Data, keepalives)."""
    orig_requests: int
    """Messages sent by the originator that expect an answer: requests, and a vendor's
    own message types (an unanswered WhatsApp ping is as unanswered as a Binding)."""
    resp_responses: int
    """Responses (success or error) sent by the responder."""
    methods: tuple[int, ...]
    """STUN methods seen, sorted."""
    msg_types: tuple[int, ...]
    """Raw message types seen, sorted (non-standard ones identify apps)."""
    vendors: tuple[str, ...]
    """Vendors whose private attributes or message types appear."""
    realm: str | None
    """REALM attribute, if any."""
    software: str | None
    """SOFTWARE attribute, if any."""
    mapped: tuple[tuple[str, int], ...]
    """Addresses from (XOR-)MAPPED-ADDRESS: the client as the server saw it."""
    peers: tuple[tuple[str, int], ...]
    """XOR-PEER-ADDRESS values: the far end of a relayed call."""
    relayed: tuple[tuple[str, int], ...]
    """XOR-RELAYED-ADDRESS values: the relay's allocation."""
    turn: bool
    """TURN methods or ChannelData seen."""
    ms_version: int | None = None
    """Microsoft MS-VERSION / implementation version attribute."""
    orig_ice_checks: int = 0
    """Originator requests that are ICE connectivity checks (PRIORITY, USE-CANDIDATE,
    ICE-CONTROLLING/CONTROLLED, RFC 8445 §7.1): aimed at a peer's candidate, not a server."""
    ice_sessions: tuple[str, ...] = ()
    """The ICE sessions the flow's connectivity checks belong to: each check's USERNAME is
    "RFRAG:LFRAG" (RFC 8445 §7.2.2), the same on every candidate pair of one session; kept
    as the two fragments sorted and joined by a colon, so that both agents' checks give
    the same key."""
    orig_pings: int = 0
    """Messages of a vendor's own types the originator sent (WhatsApp's 0x08xx), counted
    in ``orig_requests`` but not in ``requests``: a set-up summary shows them apart."""
    orig_request_frames: tuple[int, ...] = ()
    """The frames of the originator's messages that expect an answer and are no ICE
    connectivity check (``orig_requests`` less ``orig_ice_checks``), in order: what a
    verdict on unanswered STUN cites."""

    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "success": self.success, "errors": self.errors,
                "indications": self.indications, "orig_requests": self.orig_requests,
                "resp_responses": self.resp_responses,
                "msg_types": [f"0x{t:04x}" for t in self.msg_types],
                "vendors": list(self.vendors), "realm": self.realm, "software": self.software,
                "turn": self.turn}


@pickled_by_position
@dataclass(frozen=True, slots=True)
class SipSummary:
    """One SIP message of a flow."""

    frame: int
    """Capture position of the packet that carried it."""
    ts: float
    """When it was seen."""
    direction: int
    """``ORIG`` or ``RESP`` of the flow."""
    method: str | None
    """Request method, or None for a response."""
    status: int | None
    """Response status code, or None for a request."""
    call_id: str | None
    """Call-ID header."""
    cseq_method: str | None
    """Method named in CSeq."""
    media: tuple[tuple[str, int, str, str], ...]
    """SDP media endpoints announced: (address, port, media, direction)."""

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "ts": self.ts, "direction": self.direction,
                "method": self.method, "status": self.status, "call_id": self.call_id,
                "cseq_method": self.cseq_method,
                "media": [list(m) for m in self.media]}


@pickled_by_position
@dataclass(frozen=True, slots=True)
class RtcpReport:
    """One RTCP report block: the reporter's view of one source's stream."""

    frame: int
    """Capture position of the RTCP packet."""
    ts: float
    """When it was seen."""
    direction: int
    """``ORIG`` or ``RESP``: which side of the flow sent the report."""
    reporter: int | None
    """SSRC of the reporter."""
    source: int
    """SSRC of the stream reported on."""
    fraction_lost: float
    """Fraction lost since the previous report (0..1)."""
    cumulative_lost: int
    """Packets lost since the start (may be negative with duplicates)."""
    highest_seq: int
    """Extended highest sequence number received."""
    jitter: int
    """Interarrival jitter, in RTP timestamp units."""


@pickled_by_position
@dataclass(frozen=True, slots=True)
class RtcpSenderInfo:
    """The sender information of one RTCP sender report (RFC 3550 §6.4.1): what the
    stream's own sender says it had sent by then, whether or not the probe saw it."""

    frame: int
    """Capture position of the RTCP packet."""
    ts: float
    """When it was seen."""
    direction: int
    """``ORIG`` or ``RESP``: which side of the flow sent the report."""
    ssrc: int
    """SSRC of the sender's stream."""
    ntp_timestamp: int
    """The sender's wallclock when it wrote the report (64-bit NTP format)."""
    rtp_timestamp: int
    """The stream's RTP timestamp at that same instant."""
    packets: int
    """RTP data packets the sender had sent since it started."""
    octets: int
    """RTP payload octets the sender had sent since it started."""


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Facts:
    """What the inspectors found in a flow's payload samples."""

    uid: str
    """The probe's flow."""
    protocol: str | None = None
    """Application protocol recognised: tls, quic, gquic, dtls, stun, rtp, rtcp, sip, dns,
    http, zoom, discord, whatsapp, telegram, viber..."""
    sni: str | None = None
    """Server name from a TLS or QUIC ClientHello."""
    alpn: tuple[str, ...] = ()
    """ALPN protocols offered."""
    ja4: str | None = None
    """JA4 fingerprint of the ClientHello."""
    quic_version: int | None = None
    """QUIC version of the client Initial."""
    client_hello: bool = False
    """A TLS/QUIC/DTLS ClientHello was seen from the originator."""
    server_hello: bool = False
    """A ServerHello came back."""
    tls_alert: tuple[int, int] | None = None
    """(level, description) of a TLS alert from the responder."""
    cert_names: tuple[str, ...] = ()
    """DNS names of the server's certificate (subject common name first, then the
    subjectAltName entries), read where it is sent in the clear (before TLS 1.3) and the
    client named no server: a ClientHello read whole with no server name, or none seen."""
    dns_query: str | None = None
    """First DNS question name."""
    dns_answers: tuple[tuple[str, str], ...] = ()
    """(name, address) pairs from DNS answers, CNAME chains followed."""
    dns_rcode: int | None = None
    """Response code of the first DNS answer."""
    stun: StunSummary | None = None
    """STUN/TURN exchange, if any."""
    sip: tuple[SipSummary, ...] = ()
    """SIP messages, in order."""
    framing: str | None = None
    """App framing recognised (zoom, discord, whatsapp, telegram, viber)."""
    rtcp_reports: tuple[RtcpReport, ...] = ()
    """RTCP report blocks seen (RFC 3550 §6.4): how a receiver saw a source's stream."""
    rtcp_sender_info: tuple[RtcpSenderInfo, ...] = ()
    """RTCP sender reports seen, in clear RTCP or behind an app's media header: what
    each stream's sender says it sent."""
    framing_detail: str | None = None
    """What exactly the framing said (e.g. Zoom media kind)."""
    http_host: str | None = None
    """Host header of a plain HTTP request."""
    notes: tuple[str, ...] = ()
    """Inspector problems worth keeping (malformed handshakes...)."""


@dataclass(frozen=True, slots=True)
class Classification:
    """The classifier's verdict on one flow."""

    uid: str
    """The probe's flow."""
    app: str | None
    """One of :data:`APPS`, or None."""
    category: Category
    """What the flow is for."""
    media: str | None
    """``audio``, ``video``, ``screen`` or None."""
    method: Method
    """Which evidence decided the app (or the category when there is no app)."""
    confidence: float
    """How sure, in [0, 1]."""
    reason: str
    """One human-readable sentence naming the evidence."""
    facts: Facts = field(default_factory=lambda: Facts(""))
    """What the inspectors saw (for the policy stage and for explanations)."""
    detail: str | None = None
    """A finer name where the evidence allows it (e.g. ``skype`` vs ``teams``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"app": self.app, "category": str(self.category), "media": self.media,
                "method": str(self.method), "confidence": round(self.confidence, 3),
                "reason": self.reason}
