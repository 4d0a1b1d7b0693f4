"""What an active test measured: the schema the policy stage judges.

Two kinds of test, after the two field methods they follow:

- **Replay** (Wehe's method): a trace of an app's call traffic is sent both ways between
  the client and a replay server the user runs, then the same trace with its payload bits
  inverted and with random ports (the controls). Each run yields one :class:`Series` per
  direction, cut into fixed intervals.
- **Reachability** (OONI's method): DNS answers, TCP connects, TLS handshakes and STUN
  bindings towards the app's endpoints, each step with an OONI-style failure string
  (``None`` on success; e.g. ``generic_timeout_error``, ``connection_refused``,
  ``connection_reset``, ``dns_nxdomain_error``, ``ssl_invalid_hostname``, ``eof_error``).

All times are seconds; ``*_ts`` are Unix times, ``t_s`` offsets from the test's start.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["DnsQuery", "Endpoint", "Interval", "ReachabilityMeasurement", "ReplayKind",
           "ReplayMeasurement", "ReplayRun", "Series", "StunBinding", "TcpConnect",
           "TlsHandshake"]


@dataclass(frozen=True, slots=True)
class Interval:
    """One interval of one direction of a replay, as the receiving end counted it."""

    start_s: float
    """Offset of the interval from the run's start."""
    sent_packets: int
    sent_bytes: int
    received_packets: int
    received_bytes: int
    lost_packets: int
    """Packets sent in this interval that never arrived (by the replay's sequence numbers)."""
    delay_ms: float | None
    """Median one-way delay of the interval's packets above the run's minimum (the clock
    offset between the ends cancels); ``None`` when nothing arrived."""
    jitter_ms: float | None
    """RFC 3550 interarrival jitter at the interval's end; ``None`` when nothing arrived."""


@dataclass(frozen=True, slots=True)
class Series:
    """One direction of one replay run."""

    direction: str
    """``up`` (client to server) or ``down`` (server to client)."""
    interval_s: float
    intervals: tuple[Interval, ...]
    lost: tuple[int, ...] = ()
    """Indices (within this direction of the trace) of the packets that never arrived."""
    stun: tuple[int, ...] = ()
    """Indices of this direction's STUN messages (RFC 8489 magic cookie): the exchanges a
    call is set up with, which a censor may drop while letting the media through."""


class ReplayKind(StrEnum):
    """The trace as recorded, or one of its controls."""

    ORIGINAL = "original"
    INVERTED = "inverted"
    """Every payload bit inverted: the same sizes and timing, nothing DPI can match."""
    RANDOM_PORTS = "random-ports"
    """The original payloads from and to ports no rule would key on."""


@dataclass(frozen=True, slots=True)
class ReplayRun:
    """One replay of a trace (or a control) both ways."""

    kind: ReplayKind
    transport: str
    """``udp`` or ``tcp``."""
    client: tuple[str, int]
    server: tuple[str, int]
    started_ts: float
    duration_s: float
    up: Series
    down: Series
    answered: bool
    """Whether anything of the server's reached the client."""
    failure: str | None
    """OONI-style failure string of the run, ``None`` if it ran to its end."""


@dataclass(frozen=True, slots=True)
class ReplayMeasurement:
    """A replay test: one app's trace and its controls over the same path."""

    app: str
    trace: str
    """The trace's name and the SHA-256 of its file (``name@sha256``)."""
    started_ts: float
    runs: tuple[ReplayRun, ...]


@dataclass(frozen=True, slots=True)
class DnsQuery:
    """One name asked of one resolver."""

    hostname: str
    resolver: str
    """``system`` or the address the user named."""
    answers: tuple[str, ...]
    """A and AAAA addresses, in answer order."""
    failure: str | None
    t_s: float


@dataclass(frozen=True, slots=True)
class TcpConnect:
    """One TCP connect to one address."""

    hostname: str
    ip: str
    port: int
    failure: str | None
    t_s: float
    connect_ms: float | None


@dataclass(frozen=True, slots=True)
class TlsHandshake:
    """One TLS handshake with one server name at one address."""

    hostname: str
    ip: str
    port: int
    server_name: str
    failure: str | None
    t_s: float
    handshake_ms: float | None
    certificate_sha256: str | None
    """SHA-256 of the leaf certificate the server sent, if one came."""


@dataclass(frozen=True, slots=True)
class StunBinding:
    """One STUN binding request (RFC 8489) to one address."""

    hostname: str
    ip: str
    port: int
    failure: str | None
    t_s: float
    rtt_ms: float | None
    mapped: str | None
    """The XOR-MAPPED-ADDRESS the server answered, ``ip:port``."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server a reachability test tries, and the ways to reach it."""

    host: str
    """A DNS name, or an address literal (then no DNS step and no SNI)."""
    group: str
    """The app's endpoint group it belongs to (OONI's ``endpoints``, ``registration``,
    ``web``...; ``target`` for a server the user named, ``control`` for a control)."""
    tcp: tuple[int, ...] = ()
    """Ports to TCP-connect to."""
    tls: tuple[int, ...] = ()
    """Ports to make a TLS handshake on, with ``host`` as SNI."""
    stun: tuple[int, ...] = ()
    """UDP ports to send a STUN binding request to."""
    verify: bool = True
    """Verify the server's certificate chain and name (off for servers whose CA the app
    pins and the system store does not hold)."""

    @property
    def is_address(self) -> bool:
        """Whether ``host`` is an IP address literal."""
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class ReachabilityMeasurement:
    """A reachability test of one app's endpoints."""

    app: str
    started_ts: float
    duration_s: float
    queries: tuple[DnsQuery, ...]
    tcp_connect: tuple[TcpConnect, ...]
    tls_handshakes: tuple[TlsHandshake, ...]
    stun: tuple[StunBinding, ...]
    endpoints: tuple[Endpoint, ...] = ()
    """What was to be tried: the app's endpoints, the user's targets and controls."""
    resolvers: tuple[str, ...] = ()
    """The resolvers asked (``system`` first, then those the user named)."""
