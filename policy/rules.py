"""The verdict rules and their thresholds (the policy file).

Each rule looks at a call's flows and legs (or at one flow) and, when it
fires, returns :class:`~policy.records.Evidence`: the rule's name, the reason
code, the flows and packet positions it rests on, and the figures that crossed
the thresholds. Verdict precedence: failed (the endpoints said no) > blocked >
throttled > degraded > ok.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, fields, is_dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import numpy as np
import numpy.typing as npt
import yaml

from classifier.records import Classification
from policy.assembly import SipDialog
from policy.errors import PolicyError
from policy.legs import delay_shape
from policy.records import Evidence, Leg, Reason, Verdict, VerdictKind
from policy.window import FlowWindow, ServiceTries, one_prefix, unanswered_syns
from probe.addresses import (
    AddressClass,
    address_class,
    ends,
    is_group_l2,
    is_local_class,
    local_is_orig,
)
from probe.records import FlowRecord, TcpFlag

__all__ = ["CONGESTION_RULES", "BlockedPolicy", "CallCase", "CallsPolicy",
           "CaptureLoss", "CongestedPath", "DegradedPolicy", "HostTraffic", "Policy",
           "QualityPolicy", "ReachabilityPolicy", "ReplayPolicy", "RuleContext",
           "ServiceTries", "SipOutcome", "SynTries", "TcpFallback", "ThrottledPolicy",
           "call_rules", "congested_paths",
           "explained_by_congestion", "explained_by_shaper", "flow_rules",
           "icmp_prohibited", "load_policy",
           "sip_outcome", "tcp_fallback", "unseen_answers", "verdict_from"]

ICMP_BLOCKING = {(4, 3): "unreachable", (6, 1): "unreachable"}
FRAGMENTATION_NEEDED = 4
"""IPv4 destination unreachable code 4 (RFC 792, RFC 1191): path MTU discovery."""

STUN_SERVER_PORTS = frozenset({3478, 3479, 3480, 3481, 3482, 3483, 3484, 3485, 3486, 3487, 5349,
                               5350, *range(19302, 19310)})
"""Ports STUN/TURN servers listen on (RFC 8489 §9 3478/5349, and the published app ranges);
requests to other ports are checks against a peer's candidates, which fail by design
behind NATs and say nothing about the network."""


def icmp_prohibited(family: int, code: int) -> bool:
    """Whether a destination-unreachable code says "administratively prohibited": IPv4
    codes 9, 10 and 13 (RFC 1812 §5.2.7.1), ICMPv6 code 1 (RFC 4443 §3.1)."""
    return (family == 4 and code in (9, 10, 13)) or (family == 6 and code == 1)


def _threshold(unit: str, low: float = 0.0, high: float | None = None) -> Any:
    """A policy field: its unit (for the error a bad value gets) and its allowed range."""
    return field(metadata={"unit": unit, "low": low, "high": high})


@dataclass(frozen=True, slots=True)
class BlockedPolicy:
    """``blocked``: when silence or refusal on the path is a block."""

    stun_min_requests: int = _threshold("requests")
    """Unanswered STUN/TURN requests to the app's servers needed."""
    stun_min_resend_s: float = _threshold("s")
    """How long the unanswered requests to one server must span: a client resends a
    request that got no response after its retransmission timeout (RFC 8489 §6.2.1), or
    asks again from a new socket."""
    syn_min_attempts: int = _threshold("SYNs")
    """Unanswered SYNs needed (an S0 connection): the first and the client's resends."""
    syn_retry_window_s: float = _threshold("s")
    """How long after an unanswered connection's first SYN a new connection to the same
    server address and port is its client trying again."""
    syn_min_resend_s: float = _threshold("s")
    """How long after the first SYN the last must come to be a resend (RFC 6298 §2.1:
    the first retransmission timeout is 1 s), not a mirror port's copy of the first."""
    syn_min_wait_s: float = _threshold("s")
    """How long the capture must go on after the first SYN."""
    sip_min_wait_s: float = _threshold("s")
    """How long an INVITE must go without any response at all (RFC 3261 T1 retransmits
    at 0.5, 1 and 2 s)."""
    media_no_return_min_s: float = _threshold("s")
    """Seconds of outgoing media with nothing back."""
    media_no_return_min_pkts: int = _threshold("packets")
    """Packets of outgoing media with nothing back."""
    require_other_traffic: bool = _threshold("yes/no")
    """Call silence a block only when other flows of the capture got answers."""
    max_capture_loss: float = _threshold("ratio", high=1.0)
    """Silence toward a host is a block only while the capture missed at most this share
    of the TCP bytes that host acknowledged receiving (:meth:`HostTraffic.received`):
    beyond it, the answers may have gone by unseen."""
    tcp_fallback_min_s: int = _threshold("s")
    """Seconds in which a TCP connection of the call's app carried payload both ways
    (:func:`tcp_fallback`) that make it the call's path: the app fell back to TCP."""
    tcp_fallback_min_bytes_s: int = _threshold("bytes/s")
    """Payload each way that makes such a second: a voice stream's, not a transfer's
    acknowledgements or window updates."""


@dataclass(frozen=True, slots=True)
class ThrottledPolicy:
    """``throttled``: a shaper's signature on received media."""

    min_loss: float = _threshold("ratio", high=1.0)
    """Loss ratio of the leg."""
    min_delay_rise_ms: float = _threshold("ms")
    """How far the one-way delay (per-second minimum) must climb."""
    delayed_min_clean_s: float = _threshold("s")
    """Clean seconds a delayed throttle shows before it bites."""
    max_other_load_ratio: float = _threshold("ratio")
    """Other traffic of the host on the stream's side of the path (to it, for a stream it
    received; from it, for one it sent), over the seconds the queue stood, may carry at
    most this many times the stream's own bytes: more, and that traffic may have filled
    the queue (a busy access link), which no rate cap on the call need explain."""


@dataclass(frozen=True, slots=True)
class DegradedPolicy:
    """``degraded``: poor quality without a shaper's signature."""

    min_packets: int = _threshold("packets")
    """Expected packets a leg needs to be judged at all."""
    max_loss: float = _threshold("ratio", high=1.0)
    """More loss than this is degraded."""
    max_jitter_s: float = _threshold("s")
    """Mean RFC 3550 jitter above this is degraded."""
    min_mos: float = _threshold("MOS", high=5.0)
    """An E-model MOS below this is degraded."""


@dataclass(frozen=True, slots=True)
class QualityPolicy:
    """``quality``: what the E-model assumes of what a passive probe cannot see."""

    assumed_network_delay_ms: float = _threshold("ms")
    """One-way network delay."""


@dataclass(frozen=True, slots=True)
class CallsPolicy:
    """``calls``: how flows make a call and when it counts as answered."""

    min_media_s: float = _threshold("s")
    """Shorter media is judged unknown (too short)."""
    answered_packets: int = _threshold("packets")
    """Media packets each way that make a call answered."""
    ringing_max_s: float = _threshold("s")
    """Media received while the local end sent almost none (fewer than
    ``answered_packets`` of content), its media flows spanning no longer than this, is a
    call that rang out (a ringback), not a one-way call."""
    same_call_gap_s: float = _threshold("s")
    """Flows of one app from one host closer than this join one call."""


@dataclass(frozen=True, slots=True)
class ReachabilityPolicy:
    """``reachability``: how the reachability test (:mod:`policy.reach`) reads failures."""

    stun_needs_control: bool = _threshold("yes/no")
    """All of an app's STUN servers unanswered is blocked only if a STUN control answered
    (else degraded: UDP may be filtered for every destination)."""
    partial_reset_degraded: bool = _threshold("yes/no")
    """Some (not all) endpoints reset after the TLS hello, or showing a certificate not
    theirs: degraded (blocked needs every way failing)."""


@dataclass(frozen=True, slots=True)
class ReplayPolicy:
    """``replay``: how a replay test (:mod:`policy.replay`) compares the app's trace with
    its controls (Wehe's area and KS tests, the shaper's queue, blocking)."""

    area_threshold: float = _threshold("ratio", high=1.0)
    """Wehe's area test: the original's mean throughput this much below a control's
    (relative to the larger) ..."""
    ks_p_threshold: float = _threshold("p", high=1.0)
    """... and the two-sample KS test's p at most this, against both controls."""
    controls_max_area: float = _threshold("ratio", high=1.0)
    """The two controls must agree this closely, else inconclusive."""
    min_intervals: int = _threshold("intervals", low=1)
    """Throughput samples (0.25 s intervals) each run needs."""
    control_min_delivered: float = _threshold("ratio", high=1.0)
    """A control "got through" when it delivered this share."""
    blocked_max_delivered: float = _threshold("ratio", high=1.0)
    """The original "got nothing through" at or below this share."""
    stun_min_lost: int = _threshold("messages", low=1)
    """STUN messages of the original lost (the controls delivered theirs) ..."""
    stun_max_p: float = _threshold("p", high=1.0)
    """... with at most this chance at the original's other loss rate."""
    stun_min_base_loss: float = _threshold("ratio", high=1.0)
    """The smallest loss rate that chance is computed with."""
    shaper_min_loss: float = _threshold("ratio", high=1.0)
    """A shaper: the original lost this share ..."""
    shaper_min_delay_rise_ms: float = _threshold("ms")
    """... while its delay rose this much and levelled off."""
    path_max_loss: float = _threshold("ratio", high=1.0)
    """All four runs lost more than this: a lossy path (degraded)."""


_KINDS: dict[type, str] = {bool: "true or false", int: "a whole number", float: "a number"}


@dataclass(frozen=True, slots=True)
class Policy:
    """The thresholds of the policy file, one typed section per section of
    ``policy/default_policy.yaml``. A section is a frozen dataclass whose fields are its
    keys (type, unit and range in the field); adding a section is adding one such class
    and a field here. A section of the file with no class yet is kept in :attr:`values`
    (and so in the policy's identity) but read by nothing."""

    blocked: BlockedPolicy
    throttled: ThrottledPolicy
    degraded: DegradedPolicy
    quality: QualityPolicy
    calls: CallsPolicy
    reachability: ReachabilityPolicy
    replay: ReplayPolicy
    values: dict[str, Any]
    """Section -> key -> value as read, defaults merged with the user's file: the policy's
    identity (:func:`api.evidence.policy_digest` hashes it)."""
    source: str
    """Where the values came from."""


def _sections() -> dict[str, type]:
    """The typed sections of :class:`Policy`: field name -> section class."""
    hints = get_type_hints(Policy)
    return {f.name: hints[f.name] for f in fields(Policy) if is_dataclass(hints[f.name])}


def _typed(where: str, section: str, cls: type, entries: dict[str, Any]) -> Any:
    """``entries`` as an instance of the section class ``cls``; a missing key, a value of
    the wrong type or out of range is a :class:`PolicyError` naming the key."""
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        key, kind, meta = f"{section}.{f.name}", hints[f.name], f.metadata
        if f.name not in entries:
            raise PolicyError(f"{where}: {key} is missing")
        value = entries[f.name]
        unit = "" if meta["unit"] == "yes/no" else f" ({meta['unit']})"
        ok = isinstance(value, kind) if kind is bool else (
            isinstance(value, int | float) and not isinstance(value, bool)
            and (kind is float or isinstance(value, int)) and math.isfinite(value))
        if not ok:
            raise PolicyError(f"{where}: {key} must be {_KINDS[kind]}{unit}, not {value!r}")
        if kind is not bool:
            low, high = meta["low"], meta["high"]
            if value < low or (high is not None and value > high):
                span = f"at least {low:g}" if high is None else f"from {low:g} to {high:g}"
                raise PolicyError(f"{where}: {key} must be {span}{unit}, not {value!r}")
            value = kind(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def load_policy(path: str | Path | None = None) -> Policy:
    """The packaged defaults, overridden by ``path`` if given; every threshold checked
    once here (type and range), so that a bad file is refused with the key it got wrong
    before any capture is read."""
    text = resources.files("policy").joinpath("default_policy.yaml").read_text()
    values: dict[str, Any] = yaml.safe_load(text)
    source = "policy/default_policy.yaml"
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise PolicyError(f"{path}: cannot read the policy file: {exc}") from exc
        if not isinstance(user, dict):
            raise PolicyError(f"{path}: a policy file is a mapping of sections")
        for section, entries in user.items():
            if section == "version":
                continue
            if section not in values or not isinstance(values[section], dict):
                raise PolicyError(f"{path}: unknown policy section {section!r}")
            if entries is None:
                continue  # a section written with no keys keeps its defaults
            if not isinstance(entries, dict):
                raise PolicyError(f"{path}: policy section {section!r} is a mapping of keys")
            for k, v in entries.items():
                if k not in values[section]:
                    raise PolicyError(f"{path}: unknown key {section}.{k}")
                values[section][k] = v
        source = str(path)
    typed = {name: _typed(source, name, cls, values.get(name) or {})
             for name, cls in _sections().items()}
    return Policy(**typed, values=values, source=source)


@dataclass(frozen=True, slots=True)
class RuleContext:
    """What the rules take from the whole capture: the same for every call and flow
    judged in it."""

    policy: Policy
    classes: Mapping[str, Classification]
    """Each flow's classification, by flow uid."""
    local: str | None
    """The local host (:func:`policy.assembly.vantage`)."""
    others_answered: bool
    """Whether any flow of the capture was answered both ways: silence elsewhere is then
    no artefact of a one-sided tap."""
    capture_end: float = math.inf
    """The newest packet's time: how long the capture went on after a request."""
    services_up: AbstractSet[tuple[str, int]] = frozenset()
    """Server addresses and ports that answered a flow among those judged together
    (:attr:`policy.window.FlowWindow.services_up`)."""
    traffic: HostTraffic | None = None
    """The flows judged together, by host: the load a queue on a host's link also held,
    what the capture missed of what each host received, the IP versions that worked past
    the link. None: not known (those checks are skipped)."""
    syn_tries: Callable[[tuple[str, str, int]], ServiceTries | None] | None = None
    """A client's connections to a server address and port among the flows judged
    together, by (client, server address, server port)
    (:meth:`policy.window.FlowWindow.service_tries`); None: each flow's own SYNs alone."""


@dataclass(frozen=True, slots=True)
class CaptureLoss:
    """Of the TCP payload a host acknowledged receiving, what the capture showed and what
    it missed (:attr:`FlowRecord.orig_missed_bytes`): packets the capture lost, or a tap
    that records one direction only."""

    host: str
    seen_bytes: int
    missed_bytes: int

    @property
    def share(self) -> float:
        """The share of the acknowledged bytes the capture missed (0 when there were none)."""
        total = self.seen_bytes + self.missed_bytes
        return self.missed_bytes / total if total else 0.0

    def figures(self) -> dict[str, Any]:
        return {"host": self.host, "tcp_bytes_seen": self.seen_bytes,
                "tcp_bytes_missed": self.missed_bytes, "missed_share": round(self.share, 4)}


class HostTraffic:
    """What the TCP flows of a window (:class:`policy.window.FlowWindow`) carried to and
    from each host, second by second (their per-second rate series)."""

    __slots__ = ("_by_host", "_window")

    def __init__(self, window: FlowWindow) -> None:
        self._window = window
        self._by_host: dict[str, list[tuple[FlowRecord, bool]]] = {}

    def internet_families(self) -> frozenset[int]:
        """The IP versions the window's flows show working past the host's own network
        (:meth:`policy.window.FlowWindow.internet_families`)."""
        return self._window.internet_families()

    def lossy_bytes(self, host: str, inbound: bool, first_s: float, last_s: float,
                    skip: Collection[str]) -> int:
        """Bytes on the wire that TCP flows whose sender on that side resent data (a queue
        that filled with them dropped some), other than those of ``skip`` (uids), carried
        to ``host`` (``inbound``) or from it, in the seconds from ``first_s`` to
        ``last_s``."""
        total = 0
        for f, is_orig in self.flows_of(host):
            if f.uid in skip:
                continue
            sender_is_orig = is_orig != inbound  # bytes to the host come from the other end
            if not (f.orig_retrans if sender_is_orig else f.resp_retrans):
                continue
            col = 2 if sender_is_orig else 4
            rate = f.rate
            when = (rate[:, 0] >= first_s) & (rate[:, 0] <= last_s)
            total += int(rate[when, col].sum())
        return total

    def received(self, host: str, first_s: float = -math.inf, last_s: float = math.inf
                 ) -> CaptureLoss:
        """The TCP payload sent to ``host`` that the capture showed, and what ``host``
        acknowledged beyond it (RFC 9293 §3.4: an acknowledgement says the bytes before it
        arrived), over its TCP flows alive at some time from ``first_s`` to ``last_s``."""
        seen = missed = 0
        for f, is_orig in self.flows_of(host):
            if f.last_ts < first_s or f.first_ts > last_s:
                continue
            seen += f.resp_bytes if is_orig else f.orig_bytes
            missed += f.resp_missed_bytes if is_orig else f.orig_missed_bytes
        return CaptureLoss(host, seen, missed)

    def received_near(self, host: str, first_s: float, last_s: float) -> CaptureLoss:
        """:meth:`received` over the TCP flows alive within :data:`LOSS_WINDOW_S` of the
        time from ``first_s`` to ``last_s``; over all of them when none was (a capture
        that holds one direction shows it in every flow, whenever)."""
        got = self.received(host, first_s - LOSS_WINDOW_S, last_s + LOSS_WINDOW_S)
        return got if got.seen_bytes + got.missed_bytes else self.received(host)

    def same_machine(self, hosts: Iterable[str]) -> list[str]:
        """``hosts`` and every other address of the same machines (one link-layer
        address: :func:`probe.addresses.machines`), ``hosts`` first."""
        who = self._window.machines
        out = list(dict.fromkeys(hosts))
        l2s = sorted({l2 for h in out if (l2 := who.get(h)) is not None})
        out += [h for l2 in l2s for h in who.hosts_of(l2) if h not in out]
        return out

    def flows_of(self, host: str) -> list[tuple[FlowRecord, bool]]:
        """The TCP flows with ``host`` at one end, each with whether it is the originator."""
        got = self._by_host.get(host)
        if got is None:
            got = self._by_host[host] = self._window.tcp_flows_of(host)
        return got


LOSS_WINDOW_S = 60.0
"""How far around a silence :func:`unseen_answers` looks at what the capture missed: a
capture loses packets in bursts (a busy disk, a CPU spike), so what it lost an hour before
says little about the minute that matters."""


def unseen_answers(host: str | None, ctx: RuleContext, first_s: float = -math.inf,
                   last_s: float = math.inf) -> CaptureLoss | None:
    """What the capture missed of what ``host`` received over the TCP flows alive within
    :data:`LOSS_WINDOW_S` of the time from ``first_s`` to ``last_s`` (of all its TCP flows
    when none was), when it is more than ``blocked.max_capture_loss``: silence toward
    ``host`` then proves nothing (the answers may be among what the capture lost). None
    when within bounds or unknown."""
    if host is None or ctx.traffic is None:
        return None
    got = ctx.traffic.received_near(host, first_s, last_s)
    if got.missed_bytes and got.share > ctx.policy.blocked.max_capture_loss:
        return got
    return None


TCP_OPTIONS_SLACK = 40
"""Bytes of TCP options one packet may carry beyond its connection's average (SACK blocks
on the acknowledgements of a lossy transfer: up to 40, RFC 9293 §3.1, RFC 2018)."""

TCP_FALLBACK_FILL = 0.8
"""The share of the seconds from the first to the last two-way second of a connection that
must be two-way for it to be a stream (:func:`tcp_fallback`), not a few bursts."""


@dataclass(frozen=True, slots=True)
class TcpFallback:
    """A TCP connection of a call's app that carried payload both ways, second after
    second, from the time of a silence of the call's UDP (:func:`tcp_fallback`)."""

    flow: FlowRecord
    seconds: int
    """Seconds in which it carried ``blocked.tcp_fallback_min_bytes_s`` each way."""
    first_s: int
    last_s: int

    @property
    def server(self) -> str:
        """The connection's far end, ``host:port`` (:func:`probe.addresses.ends`)."""
        host, port = ends(self.flow)[1]
        return f"{host}:{port}"

    def figures(self) -> dict[str, Any]:
        f = self.flow
        return {"tcp_flow": f.uid, "tcp_server": self.server,
                "tcp_two_way_s": self.seconds, "tcp_from_s": self.first_s,
                "tcp_to_s": self.last_s}


def _payload_per_second(f: FlowRecord, orig: bool) -> npt.NDArray[np.int64]:
    """Payload bytes at least, per second of ``f.rate``, one way: the second's frame bytes
    less, per packet, the connection's own average headers that way (link layer, any
    tunnel, IP, TCP) and :data:`TCP_OPTIONS_SLACK`."""
    pkts, wire, payload = ((f.orig_pkts, f.orig_wire_bytes, f.orig_bytes) if orig
                           else (f.resp_pkts, f.resp_wire_bytes, f.resp_bytes))
    head = (wire - payload) / pkts if pkts else 0.0
    col = 1 if orig else 3
    return (f.rate[:, col + 1] - (head + TCP_OPTIONS_SLACK) * f.rate[:, col]).astype(np.int64)


def tcp_fallback(app: str | None, hosts: Iterable[str], first_s: float, last_s: float,
                 ctx: RuleContext) -> TcpFallback | None:
    """A TCP connection of ``hosts`` (any address of the same machine) to a server of
    ``app`` that carried a call's worth of payload both ways, second after second, from
    the start of a silence from ``first_s`` to ``last_s`` until :data:`LOSS_WINDOW_S`
    after it: the app carried the call over TCP.

    Call apps fall back to TCP when UDP gets nowhere (TURN over TCP or TLS, RFC 8656
    §3.1 and RFC 6062; ICE-TCP, RFC 6544; Teams and Zoom document TCP 443 as their
    fallback): then the UDP silence is the path the app gave up, not the call's fate. A
    second counts when each way carried at least ``blocked.tcp_fallback_min_bytes_s``
    of payload (:func:`_payload_per_second`): a download's acknowledgements, an upload's
    window updates and a chat's occasional messages do not. Its seconds must number
    ``blocked.tcp_fallback_min_s`` and fill :data:`TCP_FALLBACK_FILL` of the span from
    the first to the last. Only the call's own app counts, not its organisation's other
    services (Meta's Facebook beside WhatsApp, Google's YouTube beside Meet)."""
    if app is None or ctx.traffic is None:
        return None
    pol = ctx.policy.blocked
    floor = pol.tcp_fallback_min_bytes_s
    best: TcpFallback | None = None
    seen: set[str] = set()
    for host in ctx.traffic.same_machine(hosts):
        for f, _ in ctx.traffic.flows_of(host):
            if f.uid in seen or ctx.classes[f.uid].app != app:
                continue
            seen.add(f.uid)
            if f.last_ts < first_s or f.first_ts > last_s + LOSS_WINDOW_S:
                continue
            two_way = (_payload_per_second(f, True) >= floor) & (
                _payload_per_second(f, False) >= floor)
            both = f.rate[two_way, 0]
            both = both[(both >= math.floor(first_s)) & (both <= last_s + LOSS_WINDOW_S)]
            if len(both) < pol.tcp_fallback_min_s:
                continue
            if len(both) < TCP_FALLBACK_FILL * (int(both[-1] - both[0]) + 1):
                continue
            got = TcpFallback(f, len(both), int(both[0]), int(both[-1]))
            if best is None or got.seconds > best.seconds:
                best = got
    return best


def _heard_nothing(ev: Evidence, hosts: Iterable[str], ip_version: int,
                   ctx: RuleContext, app: str | None = None) -> Evidence:
    """``ev``, a block read from silence toward ``hosts`` over IP ``ip_version``, as it
    stands; or ``unknown`` when the capture cannot show that silence: the silence was over
    IPv6 and nothing of the capture over IPv6 went past the host's link and came back
    (:meth:`policy.window.FlowWindow.internet_families`; a network that announces IPv6
    with no working route behind it fails every IPv6 attempt: rule
    ``unknown.family_unanswered``), or the capture missed too much of what the host
    received (:func:`unseen_answers`: ``unknown.capture_loss``). ``degraded`` when
    ``app``, the call's, carried the call over TCP from then on (:func:`tcp_fallback`:
    rule ``degraded.tcp_fallback``)."""
    hosts = list(hosts)
    carried = tcp_fallback(app, hosts, ev.first_ts, ev.last_ts, ctx)
    if carried is not None:
        return replace(ev, rule="degraded.tcp_fallback",
                       figures={**ev.figures, **carried.figures()},
                       text=f"{ev.text}; but the call's app carried payload both ways over "
                            f"TCP to {carried.server} in {carried.seconds} seconds "
                            "from then on: the app fell back to TCP and the call went through "
                            "(a firewall of the host's own network blocks UDP as well as an "
                            "operator does)")
    if ip_version == 6 and ctx.traffic is not None and \
            6 not in ctx.traffic.internet_families():
        return replace(ev, rule="unknown.family_unanswered",
                       figures={**ev.figures, "ip_version": ip_version},
                       text=f"{ev.text}; but nothing of the capture over IPv{ip_version} went "
                            f"past the host's own network and came back: IPv{ip_version} may "
                            "not work there at all, for any destination")
    for host in hosts:
        lost = unseen_answers(host, ctx, ev.first_ts, ev.last_ts)
        if lost is not None:
            return _unseen(ev, lost)
    return ev


def _unseen(ev: Evidence, lost: CaptureLoss) -> Evidence:
    """``ev``, a block read from silence, made ``unknown.capture_loss``: the capture
    missed too much of what its host received for the silence to mean anything."""
    return replace(ev, rule="unknown.capture_loss", figures={**ev.figures, **lost.figures()},
                   text=f"{ev.text}; but the capture missed {lost.share:.0%} of the TCP bytes "
                        f"{lost.host} acknowledged receiving ({lost.missed_bytes} of "
                        f"{lost.seen_bytes + lost.missed_bytes}): the answers may have gone "
                        "by unseen (capture loss, or a tap that records one direction)")


@dataclass(frozen=True, slots=True)
class SipOutcome:
    """What a SIP dialog's INVITE came to, when the network or the endpoints ended it:
    the reason, the figures its evidence shows and the frames they rest on."""

    reason: Reason
    """``sip-unanswered``, ``sip-rejected`` or ``sip-no-answer``."""
    frames: tuple[int, ...]
    invites: int = 0
    """Unanswered: the INVITEs sent (retransmissions included)."""
    waited_s: float = 0.0
    """Unanswered: seconds from the first INVITE to the capture's end (3 decimals)."""
    final: int | None = None
    """Ended: the final response's status."""
    rang: bool = False
    """Ended: whether the callee's phone rang (180/183) first."""
    cancelled: bool = False
    """Ended: whether the caller cancelled (CANCEL, 487) rather than the callee refused."""

    def figures(self) -> dict[str, Any]:
        if self.reason is Reason.SIP_UNANSWERED:
            return {"invites": self.invites, "responses": 0, "waited_s": self.waited_s}
        return {"final": self.final, "rang": self.rang,
                "reason_phrase": "cancelled before answer" if self.cancelled else "rejected"}


SIP_T1_S = 0.5
"""RFC 3261 §17.1.1.1: T1, the first INVITE retransmission interval over UDP."""
SIP_TIMER_B_S = 64 * SIP_T1_S
"""RFC 3261 §17.1.1.2: Timer B, when a client with no response gives the INVITE up."""


def sip_outcome(dialog: SipDialog, capture_end: float, wait_s: float,
                resends_seen: bool = False) -> SipOutcome | None:
    """failed when the INVITE's final answer says the endpoints ended it; blocked when the
    INVITE got no response at all although the capture went on ``wait_s``
    (``blocked.sip_min_wait_s``) — unless the client stopped sending it again while the
    capture went on: over UDP a client without a response resends its INVITE at
    intervals that double from T1 until Timer B gives it up (RFC 3261 §17.1.1.2, Timer
    A); one that stopped sooner had its response, which the capture did not hold.
    ``resends_seen`` says the dialog holds every resend there was: it went over UDP (TCP
    does not resend) and the probe kept every SIP message of its flows.
    Copies of one message closer than 10 ms (a mirror port's duplicates) count once."""
    invites = dialog.invites
    if invites and not dialog.responded:
        waited = capture_end - invites[0].ts
        times: list[float] = []
        for t in sorted(m.ts for m in invites):
            if not times or t - times[-1] > 0.01:
                times.append(t)
        gap = times[-1] - times[-2] if len(times) > 1 else SIP_T1_S / 2
        next_due = times[-1] + 2 * max(gap, SIP_T1_S / 2)
        # (the last resend comes 31.5 s after the first; T1 of slack before Timer B)
        if resends_seen and times[-1] - times[0] < SIP_TIMER_B_S - 2 * SIP_T1_S and \
                capture_end > next_due + SIP_T1_S:
            return None  # it stopped resending: answered, out of the capture's sight
        if waited >= wait_s:
            return SipOutcome(Reason.SIP_UNANSWERED, tuple(m.frame for m in invites),
                              invites=len(invites), waited_s=round(waited, 3))
        return None
    last = None if dialog.answered else dialog.final
    if last is None:
        return None
    cancelled = any(m.method == "CANCEL" for m in dialog.messages) or last.status == 487
    return SipOutcome(Reason.SIP_NO_ANSWER if cancelled else Reason.SIP_REJECTED,
                      tuple(m.frame for m in dialog.messages), final=last.status,
                      rang=any(m.status in (180, 183) for m in dialog.messages),
                      cancelled=cancelled)


@dataclass(frozen=True, slots=True)
class CallCase:
    """One call as the rules judge it: its flows, media and legs, and what its SIP
    dialog came to."""

    flows: Sequence[FlowRecord]
    media_flows: Sequence[FlowRecord]
    legs: Sequence[Leg]
    sip: SipOutcome | None = None
    one_way_by_design: bool = False
    """Its SDP made the media one-way (no return is then no block)."""
    app: str | None = None
    """The call's app (:func:`tcp_fallback` looks for its TCP connections)."""


def _ev(rule: str, reason: Reason, flows: Sequence[FlowRecord], frames: Sequence[int],
        figures: dict[str, Any], text: str) -> Evidence:
    return Evidence(rule, reason, tuple(f.uid for f in flows), tuple(sorted(set(frames)))[:64],
                    min(f.first_ts for f in flows), max(f.last_ts for f in flows), figures, text)


@dataclass(frozen=True, slots=True)
class SynTries:
    """The SYNs a client sent to one server address and port from an unanswered
    connection's first SYN on: that connection's own resends, and the new connections it
    opened to try again before anything answered it."""

    syns: int
    """SYNs sent."""
    frames: tuple[int, ...]
    """First frame of each connection they belong to."""
    first_ts: float
    """The connection's first SYN."""
    last_ts: float
    """The last SYN counted."""


def _tries_of(flow: FlowRecord, ctx: RuleContext) -> SynTries | None:
    """The SYNs ``flow``'s client sent to its server address and port from its first SYN
    on: its own, and those of the unanswered connections it opened to try again within
    ``blocked.syn_retry_window_s``, up to its first connection there that got a reply.
    None when ``flow`` was answered."""
    own = unanswered_syns(flow)
    if own is None:
        return None
    key = (flow.orig_h, flow.resp_h, flow.resp_p)
    tries = ctx.syn_tries(key) if ctx.syn_tries is not None else None
    t0 = own[1]
    limit = t0 + ctx.policy.blocked.syn_retry_window_s
    mine: list[tuple[float, float, int, int]] = []
    if tries is not None:
        limit = min(limit, next((a for a in tries.answered if a > t0), limit))
        mine = [u for u in tries.unanswered if t0 <= u[0] <= limit]
    mine = mine or [(t0, own[2], own[0], flow.first_frame)]  # its own SYNs alone
    return SynTries(sum(u[2] for u in mine), tuple(u[3] for u in mine), t0,
                    max(u[1] for u in mine))


def flow_rules(flow: FlowRecord, ctx: RuleContext, *, lone: bool = False) -> list[Evidence]:
    """Interference visible on a single flow (TCP/TLS/ICMP).

    ``lone``: the flow is in no call. A SYN nobody answered, answered by a RST, or a
    router's host or network unreachable then shows a block only when something shows the
    service was there to answer: its app's server (the classifier named the app), or
    another connection to the same address and port that was answered. Otherwise a host
    that is offline (a peer that left, a port scan's target) or a port that is closed or
    filtered explains it, and the verdict is ``unknown`` with the same reason (rules
    ``unknown.syn``, ``unknown.tcp_reset``, ``unknown.icmp``); so is a prohibition the
    destination itself sent (its own firewall). A router's "administratively prohibited"
    stays a block."""
    pol = ctx.policy
    out: list[Evidence] = []
    service_up = (not lone or ctx.classes[flow.uid].app is not None
                  or (flow.resp_h, flow.resp_p) in ctx.services_up)
    for n in flow.icmp:
        if n.family == 4 and n.type == 3 and n.code == FRAGMENTATION_NEEDED:
            continue  # path MTU discovery (RFC 1191): the path works, with smaller packets
        # A router's unreachable, or anyone's "administratively prohibited", is the network
        # refusing; a port unreachable from the endpoints themselves is just a closed port.
        prohibited = icmp_prohibited(n.family, n.code)
        from_endpoint = n.reporter in (flow.orig_h, flow.resp_h)
        if ((n.family, n.type) in ICMP_BLOCKING or (n.family == 4 and n.type == 3)) and (
                prohibited or not from_endpoint):
            # In no call: a host or network unreachable is an offline host's too, and a
            # prohibition from the destination itself is its own firewall's.
            from_network = not from_endpoint and (prohibited or service_up)
            blocked = not lone or from_network
            why = "" if blocked else ("; the destination's own firewall or an offline host "
                                      "explains it")
            out.append(_ev("blocked.icmp" if blocked else "unknown.icmp",
                           Reason.ICMP_UNREACHABLE, [flow], [n.frame],
                           {"icmp_type": n.type, "icmp_code": n.code, "reporter": n.reporter},
                           f"ICMP type {n.type} code {n.code} from {n.reporter} quoted this "
                           f"flow's packet (frame {n.frame}){why}"))
            break
    if flow.proto != "tcp":
        return out
    state = flow.conn_state
    why = ("" if service_up else "; nothing in the capture shows that service up: an "
           "offline host or a closed or filtered port explains it")
    if state == "REJ":
        rule = "blocked.tcp_reset" if service_up else "unknown.tcp_reset"
        out.append(_ev(rule, Reason.TCP_RESET, [flow], [flow.first_frame],
                       {"conn_state": state, "resp_flags": flow.resp_flags},
                       f"SYN to {flow.resp_h}:{flow.resp_p} answered by RST, no SYN-ACK "
                       f"(frames {flow.first_frame}-{flow.last_frame}){why}"))
    elif state in ("S0", "RSTOS0") and ctx.others_answered and \
            ctx.capture_end - flow.first_ts >= pol.blocked.syn_min_wait_s and \
            (tries := _tries_of(flow, ctx)) is not None and \
            tries.syns >= pol.blocked.syn_min_attempts and \
            tries.last_ts - tries.first_ts >= pol.blocked.syn_min_resend_s:
        rule = "blocked.syn" if service_up else "unknown.syn"
        n_conn = len(tries.frames)
        over = "" if n_conn == 1 else f" over {n_conn} connections"
        ev = _ev(rule, Reason.SYN_UNANSWERED, [flow], list(tries.frames[:16]),
                 {"syn_sent": tries.syns, "connections": n_conn,
                  "resend_s": round(tries.last_ts - tries.first_ts, 3), "answers": 0},
                 f"{tries.syns} SYN(s) to {flow.resp_h}:{flow.resp_p}{over}, sent again"
                 f" for {tries.last_ts - tries.first_ts:.1f} s, never answered while"
                 f" other connections were{why}")
        out.append(_heard_nothing(ev, [flow.orig_h], flow.ip_version, ctx) if service_up
                   else ev)
    f = ctx.classes[flow.uid].facts
    # A client that sent its own FIN had given up before any reset: a client whose
    # handshake was cut by a RST has no connection left to close. (Through a shaper's
    # full queue the ServerHello never comes, the client times out and closes, and the
    # server resets the late segments of a connection it has closed: no interference.)
    # A server that sent any payload answered the hello: its ServerHello is in a packet
    # the capture missed (capture loss), not one a reset replaced.
    if f.client_hello and not f.server_hello and flow.resp_flags & TcpFlag.RST and \
            flow.resp_flags & TcpFlag.SYN and not flow.orig_flags & TcpFlag.FIN and \
            flow.resp_bytes == 0:
        hello = next((p for p in flow.payloads if p.direction == 0), None)
        frames = [hello.frame] if hello is not None else [flow.first_frame]
        out.append(_ev("blocked.tls_reset", Reason.TLS_RESET_AFTER_HELLO, [flow],
                       [*frames, flow.last_frame],
                       {"sni": f.sni, "server_hello": False, "reset": True},
                       f"TLS ClientHello for {f.sni or '?'} (frame {frames[0]}) answered by a "
                       f"RST instead of a ServerHello"))
    return out


def _stun_rule(flows: Sequence[FlowRecord], ctx: RuleContext, app: str | None = None
               ) -> Evidence | None:
    # Unanswered: nothing at all came back on the STUN 5-tuple (any reply, even a TCP ACK
    # or a vendor's odd message type, shows the server is reachable), and the capture went
    # on long enough for an answer to have arrived.
    classes, pol = ctx.classes, ctx.policy
    server = [f for f in flows if (st := classes[f.uid].facts.stun) is not None
              and (f.resp_p in STUN_SERVER_PORTS or st.turn)]
    # A STUN/TURN server of the call answered: the path is open (loss happens). Its
    # address and port count wherever they sent from, also on a flow whose first packet
    # the capture saw going the other way.
    servers = {(f.resp_h, f.resp_p) for f in server}
    if any(f.resp_pkts > 0 for f in server) or any(
            (f.orig_h, f.orig_p) in servers and f.orig_pkts > 0 for f in flows):
        return None
    stun_flows = [f for f in server
                  if f.duration_s >= 1.0 or ctx.capture_end - f.last_ts >= 2.0]
    if not stun_flows:
        return None
    stuns = [s for f in stun_flows if (s := classes[f.uid].facts.stun) is not None]
    # ICE connectivity checks to a peer's candidates fail by design behind NATs; only
    # requests to STUN/TURN servers say whether the app's infrastructure is reachable.
    req = sum(s.orig_requests - s.orig_ice_checks for s in stuns)
    ans = sum(s.resp_responses for s in stuns)
    # The client tried again: a resend of a request on its socket, or a new request to the
    # same server (some clients open a new socket for each try).
    tries: dict[str, list[FlowRecord]] = {}
    for f in stun_flows:
        tries.setdefault(f.resp_h, []).append(f)
    resent = any(max(f.last_ts for f in fs) - min(f.first_ts for f in fs)
                 >= pol.blocked.stun_min_resend_s for fs in tries.values())
    if req >= pol.blocked.stun_min_requests and ans == 0 and resent and (
            ctx.others_answered or not pol.blocked.require_other_traffic):
        # the requests counted, not the media the same socket sent
        frames = sorted(n for s in stuns for n in s.orig_request_frames)[:16]
        ev = _ev("blocked.stun", Reason.STUN_UNANSWERED, stun_flows, frames,
                 {"stun_requests": req, "stun_responses": ans},
                 f"{req} STUN requests or pings to "
                 f"{', '.join(sorted({f.resp_h for f in stun_flows}))} got no response while "
                 "other traffic was answered")
        return _heard_nothing(ev, sorted({f.orig_h for f in stun_flows}),
                              min(f.ip_version for f in stun_flows), ctx, app)
    return None


def _to_a_group(f: FlowRecord) -> bool:
    """Whether a flow went to a group rather than one host: a multicast or broadcast
    address, or a group link-layer address (the I/G bit, IEEE 802 §8.2; a directed
    broadcast such as 10.0.5.255 shows only there). A group owes its sender no answer."""
    if {address_class(f.orig_h), address_class(f.resp_h)} & {AddressClass.MULTICAST,
                                                             AddressClass.BROADCAST}:
        return True
    return f.resp_l2_addr is not None and is_group_l2(f.resp_l2_addr)


def _same_network(a: str, b: str) -> bool:
    """Both ends of a local address class (:func:`probe.addresses.is_local_class`) on one
    network (same IPv4 /24 or IPv6 /64): no operator between."""
    return is_local_class(a) and is_local_class(b) and one_prefix(a, b)


def call_rules(call: CallCase, ctx: RuleContext,
               single: Callable[[FlowRecord], list[Evidence]] | None = None) -> list[Evidence]:
    """Every rule that fires for one call. ``single(flow)``, where given, returns
    :func:`flow_rules` of a flow (a caller judging many calls keeps them once per flow)."""
    flows, pol, local, classes = call.flows, ctx.policy, ctx.local, ctx.classes
    out: list[Evidence] = []
    sip = call.sip
    if sip is not None:
        figures = sip.figures()
        if sip.reason is Reason.SIP_UNANSWERED:
            # A capture in which nothing was answered both ways may hold one direction
            # only (a one-sided tap, asymmetric routing): the responses may have gone by
            # unseen (as for STUN, blocked.require_other_traffic).
            two_way = ctx.others_answered or not pol.blocked.require_other_traffic
            sip_ev = _ev("blocked.sip" if two_way else "unknown.sip", sip.reason, flows,
                         sip.frames, figures,
                         f"{sip.invites} SIP INVITE(s) got no response at all in "
                         f"{sip.waited_s:.0f} s, not even 100 Trying"
                         + ("" if two_way else "; nothing in this capture was answered "
                            "both ways: it may hold one direction only"))
            sip_flows = [f for f in flows if classes[f.uid].facts.sip] or list(flows)
            out.append(_heard_nothing(sip_ev, sorted({f.orig_h for f in sip_flows}),
                                      min(f.ip_version for f in sip_flows), ctx)
                       if two_way else sip_ev)
        else:
            rule = ("failed.sip_rejected" if sip.reason is Reason.SIP_REJECTED
                    else "failed.sip_no_answer")
            out.append(_ev(rule, sip.reason, flows, sip.frames, figures,
                           f"SIP INVITE answered {sip.final} "
                           f"({figures['reason_phrase']}): the callee's side ended it"))
    ev = _stun_rule(flows, ctx, call.app)
    if ev is not None:
        out.append(ev)
    for f in flows:
        out.extend(single(f) if single is not None else flow_rules(f, ctx))
    # Media that went out and never came back (unless one-way by design, or no operator
    # network lies between the two ends).
    for f in call.media_flows:
        if call.one_way_by_design or _same_network(f.orig_h, f.resp_h) or _to_a_group(f):
            continue
        out_local = local_is_orig(f, local)
        sent, got = (f.orig_pkts, f.resp_pkts) if out_local else (f.resp_pkts, f.orig_pkts)
        # Nothing answered anywhere in the capture: a tap that records one direction
        # only looks the same as a path that returned nothing, so the packets cannot
        # show a block (as for STUN, blocked.require_other_traffic).
        if got == 0 and sent >= pol.blocked.media_no_return_min_pkts and \
                f.duration_s >= pol.blocked.media_no_return_min_s and \
                classes[f.uid].facts.protocol not in ("rtcp",) and (
                    ctx.others_answered or not pol.blocked.require_other_traffic):
            ev = _ev("blocked.media_no_return", Reason.MEDIA_NO_RETURN, [f],
                     [f.first_frame, f.last_frame],
                     {"sent_pkts": sent, "received_pkts": 0,
                      "duration_s": round(f.duration_s, 3)},
                     f"{sent} media packets sent to {f.resp_h}:{f.resp_p} over "
                     f"{f.duration_s:.1f} s, none came back")
            out.append(_heard_nothing(ev, [f.orig_h if out_local else f.resp_h],
                                      f.ip_version, ctx, call.app))
    # Shaping and quality, on every stream whose loss and delay this capture can see:
    # those the local side received, and those it sent that arrived here with sequence
    # gaps or a delay build-up — the capture then lies past the network they crossed
    # (taken mid-path or at the far end), so what it saw is the network's doing. A
    # stream captured beside its sender shows neither: its pacing is no measure of the
    # network, so it is not judged.
    paths_of: dict[int | None, set[str]] = {}
    for leg in call.legs:
        paths_of.setdefault(leg.ssrc, set()).add(leg.flow_uid)
    for leg in call.legs:
        if leg.loss_ratio is None or (leg.expected or 0) < pol.degraded.min_packets:
            continue  # a handful of packets says nothing about loss or jitter
        rise = leg.delay_rise_ms or 0.0
        if leg.direction != "in" and (
                (leg.loss_ratio == 0 and rise < pol.throttled.min_delay_rise_ms)
                or len(paths_of[leg.ssrc]) > 1):
            # Nothing the network did shows here; or the local side sent this stream
            # over several paths of the call (ICE moves it between candidate pairs), so
            # the sequence numbers missing on one path went along another.
            continue
        flow = next(f for f in flows if f.uid == leg.flow_uid)
        sender, receiver = (flow.orig_h, flow.resp_h) if local_is_orig(flow, local) == (
            leg.direction == "out") else (flow.resp_h, flow.orig_h)
        seen = ("received by the local side" if leg.direction == "in" else
                "captured after crossing the network toward its receiver")
        fig = {"loss_ratio": round(leg.loss_ratio, 4), "expected": leg.expected,
               "received": leg.packets, "delay_rise_ms": None if leg.delay_rise_ms is None
               else round(leg.delay_rise_ms, 1), "delay_plateau": leg.delay_plateau,
               "mean_bps": round(leg.mean_bps), "ssrc": leg.ssrc,
               "direction": leg.direction, "sender": sender, "receiver": receiver}
        what = f"stream {leg.ssrc} from {sender} to {receiver} ({seen})"
        # A shaper's signature is a standing queue: loss while the delay climbed and then
        # held at the top. Loss with a delay spike that receded (a radio link's
        # retransmissions, a handover) is poor quality, not a rate limit.
        shaped = (leg.loss_ratio >= pol.throttled.min_loss
                  and rise >= pol.throttled.min_delay_rise_ms and leg.delay_plateau)
        start = _rise_start(leg) if shaped else None
        busy = None if not shaped else _busy_link(
            leg, start, flow, receiver if leg.direction == "in" else sender,
            {f.uid for f in flows}, ctx)
        if busy is not None:
            fig.update(busy)
            out.append(_ev("degraded.loss", Reason.HIGH_LOSS, [flow], [flow.first_frame], fig,
                           f"{what} lost {leg.loss_ratio:.1%} while its one-way delay rose "
                           f"{rise:.0f} ms and levelled off, but other traffic "
                           f"{'to' if leg.direction == 'in' else 'from'} {busy['busy_host']}, "
                           f"itself losing packets (TCP retransmissions), carried "
                           f"{busy['other_bytes']} bytes meanwhile against the stream's "
                           f"{busy['stream_bytes']}: a queue that traffic fills too (a busy "
                           "link), not shown to be a rate cap"))
            continue
        # Sequence numbers missing where the capture itself lost packets (its host
        # acknowledged TCP data it never showed) may be the capture's loss, not the path's.
        lost = unseen_answers(receiver, ctx, flow.first_ts, flow.last_ts) if shaped else None
        if lost is not None:
            fig.update(lost.figures())
            out.append(_ev("degraded.capture_loss", Reason.HIGH_LOSS, [flow],
                           [flow.first_frame], fig,
                           f"{what} lost {leg.loss_ratio:.1%} while its one-way delay rose "
                           f"{rise:.0f} ms and levelled off, but the capture itself missed "
                           f"{lost.share:.0%} of the TCP bytes {receiver} acknowledged "
                           "receiving: the loss may be the capture's, not shown to be a "
                           "rate cap"))
            continue
        if shaped:
            delayed = _delayed_start(leg, start, pol)
            reason = Reason.DELAYED_THROTTLE if delayed is not None else Reason.RATE_CAPPED
            if delayed is not None:
                fig["clean_until_s"] = delayed
            out.append(_ev("throttled.rate_cap", reason, [flow], [flow.first_frame],
                           fig, f"{what} lost {leg.loss_ratio:.1%} while its one-way delay "
                                f"rose {rise:.0f} ms and levelled off"
                                + (f", clean for the first {delayed:.0f} s" if delayed else "")
                                + ": a shaper's queue"))
            continue
        if leg.loss_ratio > pol.degraded.max_loss:
            build_up = (f"a delay rise of {rise:.0f} ms that did not hold (no standing queue)"
                        if rise >= pol.throttled.min_delay_rise_ms
                        else f"no delay build-up ({rise:.0f} ms)")
            out.append(_ev("degraded.loss", Reason.HIGH_LOSS, [flow], [flow.first_frame], fig,
                           f"{what} lost {leg.loss_ratio:.1%} with {build_up}: loss, not a "
                           "rate cap"))
        if leg.direction != "in":
            # Sequence gaps place this capture past the network; its timing of a stream
            # sent by the local side may still be the sender's own pacing (a capture on
            # the local host sees nothing else), so jitter and MOS are judged only on
            # streams the local side received.
            continue
        if leg.mean_jitter_s is not None and \
                leg.mean_jitter_s > pol.degraded.max_jitter_s:
            out.append(_ev("degraded.jitter", Reason.HIGH_JITTER, [flow], [flow.first_frame],
                           {**fig, "mean_jitter_s": round(leg.mean_jitter_s, 4)},
                           f"mean jitter {leg.mean_jitter_s * 1000:.0f} ms on {what}"))
        if leg.mos is not None and leg.mos < pol.degraded.min_mos:
            out.append(_ev("degraded.mos", Reason.LOW_MOS, [flow], [flow.first_frame],
                           {**fig, "mos": round(leg.mos, 2)},
                           f"E-model MOS {leg.mos:.2f} on {what}"))
    return explained_by_shaper(out, flows)


CONGESTION_RULES = frozenset({"throttled.rate_cap", "degraded.loss"})
"""Rules whose evidence shows a path losing packets for reasons of its own: a shaper's full
queue, or loss heavy enough to lose a few SYNs or STUN requests too."""


@dataclass(frozen=True, slots=True)
class CongestedPath:
    """Hosts whose packets a congested path was losing, and when: from a call's evidence."""

    hosts: frozenset[str]
    first_ts: float
    last_ts: float
    rule: str


def congested_paths(evidence: Sequence[Evidence], by_uid: Mapping[str, FlowRecord]
                    ) -> list[CongestedPath]:
    """The paths the congestion evidence among ``evidence`` shows, one per piece."""
    return [CongestedPath(frozenset(h for u in e.flow_uids if u in by_uid
                                    for h in (by_uid[u].orig_h, by_uid[u].resp_h)),
                          e.first_ts, e.last_ts, e.rule)
            for e in evidence if e.rule in CONGESTION_RULES]


def explained_by_congestion(evidence: list[Evidence], paths: Sequence[CongestedPath],
                            by_uid: Mapping[str, FlowRecord], *, overlap: bool = True
                            ) -> list[Evidence]:
    """Drop unanswered-request evidence on paths a call showed congested: a full token
    bucket queue, or a path losing a call's media, drops SYNs and STUN requests too, which
    is the throttle (or the loss), not a block. With ``overlap``, only requests sent while
    the congestion was seen are explained."""
    if not paths:
        return evidence
    keep = []
    for e in evidence:
        if e.reason in (Reason.SYN_UNANSWERED, Reason.STUN_UNANSWERED) and any(
                all(u in by_uid and {by_uid[u].orig_h, by_uid[u].resp_h} <= p.hosts
                    for u in e.flow_uids)
                and (not overlap or (e.first_ts <= p.last_ts and e.last_ts >= p.first_ts))
                for p in paths):
            continue
        keep.append(e)
    return keep


def explained_by_shaper(evidence: list[Evidence], flows: Sequence[FlowRecord]
                        ) -> list[Evidence]:
    """A call's evidence without the unanswered requests its own congestion explains."""
    by_uid = {f.uid: f for f in flows}
    return explained_by_congestion(evidence, congested_paths(evidence, by_uid), by_uid,
                                   overlap=False)


def _rise_start(leg: Leg) -> int | None:
    """The second (index into ``leg.seconds``) where the leg's one-way delay began to
    climb (:func:`policy.legs.delay_shape`); None when it did not."""
    if not leg.seconds:
        return None
    _, _, start = delay_shape(np.array([row[5] for row in leg.seconds], dtype=np.float64))
    return start


def _busy_link(leg: Leg, start: int | None, flow: FlowRecord, host: str,
               call_uids: Collection[str], ctx: RuleContext) -> dict[str, Any] | None:
    """The figures of a busy link, when other traffic of ``host`` (the stream's end on the
    local side: its receiver for a stream received, its sender for one sent) on the
    stream's side of the path, from the second the delay began to climb (``start``) to
    the last second of the stream's figures, carried more than ``throttled.max_other_load_ratio``
    times the bytes the stream's flow carried that way, and lost packets itself (TCP
    flows whose sender resent data: the queue dropped them too); else None. The call's
    own flows do not count (a shaper on the call holds them all), nor flows that lost
    nothing (a queue they did not share, like a download past a shaper on the call's
    packets alone); bytes are wire bytes on both sides."""
    if ctx.traffic is None or not leg.seconds:
        return None
    rows = leg.seconds[start or 0:]
    first_s, last_s = rows[0][0], rows[-1][0]
    to_host = leg.direction == "in"
    col = 2 if (flow.orig_h == host) != to_host else 4  # the stream's sender's bytes
    when = (flow.rate[:, 0] >= first_s) & (flow.rate[:, 0] <= last_s)
    own = int(flow.rate[when, col].sum()) if len(flow.rate) else 0
    other = ctx.traffic.lossy_bytes(host, to_host, first_s, last_s, call_uids)
    if other <= ctx.policy.throttled.max_other_load_ratio * own:
        return None
    return {"busy_host": host, "other_bytes": other, "stream_bytes": own,
            "busy_from_s": first_s, "busy_until_s": last_s}


def _delayed_start(leg: Leg, start: int | None, pol: Policy) -> float | None:
    """Seconds of clean media before the shaper bit, if there were enough of them
    (``start``: :func:`_rise_start` of the leg).

    A throttle in place from the start makes the one-way delay climb from the first
    seconds (the queue fills); a delayed one leaves a stretch of flat delay and no loss.
    """
    if not leg.seconds:
        return None
    t0 = leg.seconds[0][0]
    first_loss = next((row[0] - t0 for row in leg.seconds if row[3] > 0), None)
    if start is None or first_loss is None:
        return None
    clean = min(float(start), first_loss)
    return clean if clean >= pol.throttled.delayed_min_clean_s else None


ORDER = {VerdictKind.FAILED: 0, VerdictKind.BLOCKED: 1, VerdictKind.THROTTLED: 2,
         VerdictKind.DEGRADED: 3, VerdictKind.UNKNOWN: 4, VerdictKind.OK: 5}


def verdict_from(evidence: list[Evidence], unknown: bool = False) -> Verdict:
    """Strongest verdict the evidence supports."""
    if not evidence:
        if unknown:
            return Verdict(VerdictKind.UNKNOWN, (Reason.TOO_SHORT,), ())
        return Verdict(VerdictKind.OK, (), ())
    kinds = [VerdictKind(e.rule.split(".", 1)[0]) for e in evidence]
    best = min(kinds, key=lambda k: ORDER[k])
    ranked = sorted(zip(kinds, evidence, strict=True), key=lambda ke: ORDER[ke[0]])
    reasons = tuple(dict.fromkeys(e.reason for _, e in ranked))
    return Verdict(best, reasons, tuple(e for _, e in ranked))
