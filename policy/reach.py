"""Judging a reachability test (OONI's method) without calling a working app blocked.

The lessons OONI's instant-messaging tests learnt, applied:

- An endpoint is unreachable in a way (TCP, TLS, STUN) only if that way failed on every
  address and every port tried; a group of endpoints (OONI's ``endpoints``, ``web``...)
  is blocked only if every endpoint of the group failed that way.
- A DNS answer that differs between resolvers is not a block (CDNs answer by place):
  it is recorded, and degrades the verdict only when one resolver's addresses could not
  be reached while another's could.
- One server refusing, ignoring or unreachable is no evidence of a block: a server that
  is down, or a port that is closed, gives the same packets. A TCP or TLS failure makes
  a group ``blocked`` only when two or more distinct server addresses of the group all
  failed the same way; at one address it is ``degraded``, saying what was seen there.
- A TLS handshake reset right after the ClientHello while the TCP connect to the same
  address worked is the signature of blocking by server name (SNI): the server accepted
  the connection, so it is up and listening; that one is ``blocked`` even at one address.
  A ClientHello left unanswered at one address is ``degraded`` (an overloaded server, or
  one serving another protocol on the port, does the same).
- Nothing is blocked when the network itself is down: if a control target the user named
  failed too, the test ``failed``; if none was named and nothing of the app's worked, it
  is ``unknown``.
- STUN is UDP: all of an app's STUN servers unanswered is a block only if a STUN control
  answered (``reachability.stun_needs_control``), else UDP may be filtered everywhere.

Every blocked or degraded finding is an :class:`~policy.records.Evidence` whose figures
list the attempts, the failure strings and the benign explanations the measurement
excludes (and those it cannot).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from policy.records import Evidence, Reason, TestKind, TestResult, Verdict, VerdictKind
from policy.rules import Policy
from probe.active.records import (
    DnsQuery,
    Endpoint,
    ReachabilityMeasurement,
    StunBinding,
    TcpConnect,
    TlsHandshake,
)

__all__ = ["CONTROL_GROUP", "RULES", "judge_reachability"]

CONTROL_GROUP = "control"
"""The group of the control targets the user names: not the app's, tried the same way."""
SYSTEM = "system"
RULES = ("reachability.dns", "reachability.tcp", "reachability.tls", "reachability.stun",
         "reachability.control")
"""The rule names a reachability verdict's evidence carries (docs/VERDICTS.md)."""

_KINDS = ("tcp", "tls", "stun")
_RESET = frozenset({"connection_refused", "connection_reset"})
_ICMP = frozenset({"host_unreachable", "network_unreachable"})
_HELLO_RESET = frozenset({"connection_reset", "eof_error", "connection_aborted"})
"""A handshake cut right after the ClientHello (a RST surfaces as one of these)."""
_CERT = frozenset({"ssl_invalid_hostname", "ssl_unknown_authority",
                   "ssl_invalid_certificate"})
_ANSWERED = frozenset({None, "stun_error_response"})
"""A STUN error response is an answer: the request crossed the network both ways."""
_RANK = {"ok": 0, "unknown": 1, "degraded": 2, "blocked": 3}


@dataclass(frozen=True, slots=True)
class _Way:
    """One endpoint, one way of reaching it: how it went."""

    endpoint: Endpoint
    kind: str
    ok: bool
    cause: Reason | None
    """Why it failed (None if it worked)."""
    failures: dict[str, int]
    """Failure string -> attempts that ended with it."""
    attempts: int
    addresses: tuple[str, ...]
    ts: tuple[float, ...]


def _key(host: str) -> str:
    return host.lower().rstrip(".")


_Step = TypeVar("_Step", DnsQuery, TcpConnect, TlsHandshake, StunBinding)


def _by_host(items: Iterable[_Step]) -> dict[str, list[_Step]]:
    out: dict[str, list[_Step]] = {}
    for it in items:
        out.setdefault(_key(it.hostname), []).append(it)
    return out


class _Steps:
    """The measurement's steps, by host."""

    def __init__(self, m: ReachabilityMeasurement) -> None:
        self.queries = _by_host(m.queries)
        self.tcp = _by_host(m.tcp_connect)
        self.tls = _by_host(m.tls_handshakes)
        self.stun = _by_host(m.stun)

    def addresses(self, ep: Endpoint) -> tuple[str, ...]:
        if ep.is_address:
            return (ep.host,)
        seen: dict[str, None] = {}
        for q in self.queries.get(_key(ep.host), []):
            for a in q.answers:
                seen.setdefault(a, None)
        return tuple(seen)

    def way(self, ep: Endpoint, kind: str) -> _Way:
        host = _key(ep.host)
        addrs = self.addresses(ep)
        if not addrs:
            qs = self.queries.get(host, [])
            fails = Counter(q.failure or "dns_no_answer" for q in qs)
            return _Way(ep, kind, False, Reason.DNS_FAILURE, dict(fails), len(qs), (),
                        tuple(q.t_s for q in qs))
        if kind == "stun":
            st = [s for s in self.stun.get(host, []) if s.port in ep.stun]
            ok = any(s.failure in _ANSWERED for s in st)
            fails = Counter(s.failure for s in st if s.failure is not None
                            and s.failure not in _ANSWERED)
            cause = None if ok else (Reason.ICMP_UNREACHABLE if fails.keys() & (
                _ICMP | _RESET) and not fails.keys() - (_ICMP | _RESET)
                else Reason.STUN_UNANSWERED)
            return _Way(ep, kind, ok, cause, dict(fails), len(st), addrs,
                        tuple(s.t_s for s in st))
        ports = ep.tcp if kind == "tcp" else ep.tls
        tcp = [c for c in self.tcp.get(host, []) if c.port in ports]
        if kind == "tcp":
            ok = any(c.failure is None for c in tcp)
            fails = Counter(c.failure for c in tcp if c.failure is not None)
            return _Way(ep, kind, ok, None if ok else _tcp_cause(fails), dict(fails),
                        len(tcp), addrs, tuple(c.t_s for c in tcp))
        hs = [h for h in self.tls.get(host, []) if h.port in ports]
        ok = any(h.failure is None for h in hs)
        hs_fails = Counter(h.failure for h in hs if h.failure is not None)
        tcp_fails = Counter(c.failure for c in tcp if c.failure is not None)
        ts = tuple(sorted({*(c.t_s for c in tcp), *(h.t_s for h in hs)}))
        if ok:
            return _Way(ep, kind, True, None, dict(hs_fails + tcp_fails), len(tcp), addrs, ts)
        if hs_fails:
            # TCP connected somewhere and the handshake failed there: the TLS cause.
            return _Way(ep, kind, False, _tls_cause(hs_fails), dict(hs_fails + tcp_fails),
                        len(tcp), addrs, ts)
        return _Way(ep, kind, False, _tcp_cause(tcp_fails), dict(tcp_fails), len(tcp), addrs,
                    ts)

    def seen_by_address(self, ways: Iterable[_Way], kind: str) -> dict[str, str]:
        """What each server address the ``ways`` (``tcp`` or ``tls``) tried showed, in one
        phrase of :data:`_SEEN`.

        Endpoints that share an address count once: it is one server. A handshake
        (recorded only once TCP connected) decides an address's phrase; else its connects.
        """
        tcp: dict[str, Counter[str]] = {}
        hs: dict[str, Counter[str]] = {}
        for w in ways:
            host = _key(w.endpoint.host)
            ports = w.endpoint.tcp if kind == "tcp" else w.endpoint.tls
            for c in self.tcp.get(host, []):
                if c.port in ports and c.failure is not None:
                    tcp.setdefault(c.ip, Counter())[c.failure] += 1
            if kind == "tls":
                for h in self.tls.get(host, []):
                    if h.port in ports and h.failure is not None:
                        hs.setdefault(h.ip, Counter())[h.failure] += 1
        return {ip: _tls_seen(hs[ip]) if ip in hs else _SEEN[_tcp_cause(tcp[ip])]
                for ip in sorted({*tcp, *hs})}


def _is_localhost(name: str) -> bool:
    name = _key(name)
    return name == "localhost" or name.endswith(".localhost")


def _tcp_cause(fails: Counter[str]) -> Reason:
    if fails.keys() & _RESET:
        return Reason.TCP_RESET
    if fails.keys() & _ICMP:
        return Reason.ICMP_UNREACHABLE
    return Reason.SYN_UNANSWERED


def _tls_cause(fails: Counter[str]) -> Reason:
    """The cause of handshakes failing after TCP connected: a certificate not valid for
    the name, else the ClientHello answered by a reset, an EOF, nothing or an error."""
    if fails.keys() <= _CERT:
        return Reason.TLS_CERTIFICATE
    return Reason.TLS_RESET_AFTER_HELLO


_SEEN = {
    Reason.TCP_RESET: "TCP connects refused (RST)",
    Reason.SYN_UNANSWERED: "TCP connects unanswered (timeout)",
    Reason.ICMP_UNREACHABLE: "TCP connects answered by an ICMP unreachable error",
}
"""How one address's failed connects looked, by cause."""
_SEEN_HELLO_RESET = "TCP connected, then a reset right after the ClientHello"
_SEEN_HELLO_SILENT = "TCP connected, then no answer to the ClientHello (timeout)"
_SEEN_CERT = "TCP connected, then a certificate not valid for the name"
_DOWN = "that server being down or the port closed"
_SERVER_SIDE = {
    _SEEN[Reason.TCP_RESET]: (_DOWN, "a host with nothing listening on the port refuses "
                                     "connects the same way"),
    _SEEN[Reason.SYN_UNANSWERED]: (_DOWN, "a host that is off, or a firewall in front of "
                                          "it, leaves SYNs unanswered the same way"),
    _SEEN[Reason.ICMP_UNREACHABLE]: (_DOWN, "the server's own network answers unreachable "
                                            "for a host that is off"),
    _SEEN_HELLO_SILENT: ("that server being overloaded or not serving TLS on the port",
                         "either leaves a ClientHello unanswered the same way"),
}
"""For a way failed at one server address: the benign explanation it cannot exclude, and
why."""
_NOT_TLS = ("that server not serving TLS on the port",
            "a server speaking another protocol fails the handshake the same way")


def _tls_seen(fails: Counter[str]) -> str:
    """How one address's failed handshakes looked (TCP to it connected)."""
    if fails.keys() <= _CERT:
        return _SEEN_CERT
    if fails.keys() & _HELLO_RESET:
        return _SEEN_HELLO_RESET
    if fails.keys() == {"generic_timeout_error"}:
        return _SEEN_HELLO_SILENT
    return "TCP connected, then the handshake failed (" + ", ".join(sorted(fails)) + ")"


def _kinds(ep: Endpoint) -> tuple[str, ...]:
    return tuple(k for k, ports in zip(_KINDS, (ep.tcp, ep.tls, ep.stun), strict=True) if ports)


@dataclass(slots=True)
class _Finding:
    status: str
    """blocked, degraded or unknown."""
    evidence: Evidence


class _Judge:
    def __init__(self, m: ReachabilityMeasurement, policy: Policy) -> None:
        self.m = m
        self.policy = policy
        self.steps = _Steps(m)
        self.ways: list[_Way] = [self.steps.way(ep, k) for ep in m.endpoints
                                 for k in _kinds(ep)]
        self.app_ways = [w for w in self.ways if w.endpoint.group != CONTROL_GROUP]
        self.control_ways = [w for w in self.ways if w.endpoint.group == CONTROL_GROUP]
        self.findings: list[_Finding] = []

    # -- helpers -----------------------------------------------------------------------

    def _ts(self, ways: Iterable[_Way]) -> tuple[float, float]:
        ts = [t for w in ways for t in w.ts] or [0.0]
        return (round(self.m.started_ts + min(ts), 6), round(self.m.started_ts + max(ts), 6))

    def _find(self, status: str, kind: str, reason: Reason, ways: list[_Way],
              figures: dict[str, Any], text: str) -> None:
        first, last = self._ts(ways)
        figures = {"endpoints": [w.endpoint.host for w in ways],
                   "attempts": sum(w.attempts for w in ways),
                   "addresses": sorted({a for w in ways for a in w.addresses}),
                   "failures": dict(sum((Counter(w.failures) for w in ways), Counter())),
                   **figures}
        self.findings.append(_Finding(status, Evidence(
            f"reachability.{kind}", reason, (), (), first, last, figures, text)))

    def _worked_elsewhere(self, kind: str, group: str) -> list[str]:
        """Hosts, outside ``group``, that were reached (any way; ``stun`` only by STUN)."""
        ways = [w for w in self.ways if w.ok and w.endpoint.group != group
                and (kind != "stun" or w.kind == "stun")]
        return sorted({w.endpoint.host for w in ways})

    # -- the rules ---------------------------------------------------------------------

    def groups(self) -> dict[str, str]:
        status: dict[str, str] = {}
        for group in dict.fromkeys(w.endpoint.group for w in self.app_ways):
            status[group] = "ok"
            for kind in _KINDS:
                ways = [w for w in self.app_ways if w.endpoint.group == group and w.kind == kind]
                if not ways:
                    continue
                s = self._group_kind(group, kind, ways)
                if _RANK[s] > _RANK[status[group]]:
                    status[group] = s
        return status

    def _group_kind(self, group: str, kind: str, ways: list[_Way]) -> str:
        failed = [w for w in ways if not w.ok]
        if not failed:
            return "ok"
        causes = Counter(w.cause for w in failed if w.cause is not None)
        main = causes.most_common(1)[0][0]
        n = len(ways)
        if len(failed) < n:
            # A refused connect is also what a server that is down answers; a reset after
            # the ClientHello, or another certificate, is what a filter on the name does.
            interfering = [w for w in failed if w.cause in (
                Reason.TLS_RESET_AFTER_HELLO, Reason.TLS_CERTIFICATE)]
            if interfering and self.policy.reachability.partial_reset_degraded:
                reason = Counter(w.cause for w in interfering).most_common(1)[0][0]
                assert reason is not None
                self._find("degraded", kind, reason, interfering, {
                    "group": group, "kind": kind, "failed": len(interfering), "of": n,
                    "excluded": [f"the network being down: {n - len(failed)} endpoint(s) of "
                                 f"the same group answered"]},
                    f"{len(interfering)} of {n} {group} endpoints failed {kind} with "
                    f"{reason} while the others answered.")
                return "degraded"
            return "ok"
        # Every endpoint of the group failed this way.
        elsewhere = self._worked_elsewhere(kind, group)
        if n > 1:
            excluded = [f"one server down: all {n} endpoints of '{group}' failed on every "
                        f"address and port tried"]
            not_excluded = ["the app's servers all down at once (one vantage point)"]
        else:
            # A group of one endpoint failing is also what that one server being down
            # (or not serving that port) looks like.
            excluded = []
            not_excluded = [f"the one server of '{group}' ({failed[0].endpoint.host}) "
                            f"being down or not serving the port tried"]
        if elsewhere:
            excluded.append("the network being down: reached " + ", ".join(elsewhere[:8]))
        if main is Reason.DNS_FAILURE:
            # localhost names (RFC 6761) are answered by the host itself, never by a
            # resolver: they show nothing about the resolvers being up.
            resolved = sorted({q.hostname for qs in self.steps.queries.values() for q in qs
                               if q.answers and not _is_localhost(q.hostname)})
            if not resolved:
                self._find("unknown", "dns", main, failed, {
                    "group": group, "kind": "dns", "excluded": [], "not_excluded": [
                        "the resolvers being unreachable: no name resolved at all"]},
                    f"No {group} name resolved, and no other name did either: the "
                    f"resolvers may be down.")
                return "unknown"
            excluded.append("the resolvers being down: resolved " + ", ".join(resolved[:8]))
            kind = "dns"
        if kind == "stun" and not elsewhere and self.policy.reachability.stun_needs_control:
            not_excluded.append("UDP filtered towards every destination: no STUN control "
                                "answered (name one with --control stun:HOST)")
            self._find("degraded", kind, main, failed, {
                "group": group, "kind": kind, "excluded": excluded,
                "not_excluded": not_excluded},
                f"No {group} STUN server answered a binding request, and no other STUN "
                f"server answered either.")
            return "degraded"
        if set(causes) == {Reason.TLS_CERTIFICATE}:
            not_excluded.append("a misconfigured server certificate")
            self._find("degraded", kind, main, failed, {
                "group": group, "kind": kind, "excluded": excluded,
                "not_excluded": not_excluded},
                f"Every {group} endpoint showed a certificate not valid for its name.")
            return "degraded"
        if main is Reason.TLS_RESET_AFTER_HELLO:
            # TCP connects to the same addresses worked: the path and the server are up.
            excluded.append("the server down or not listening: TCP connects to the same "
                            "addresses worked")
        elif not elsewhere:
            # Nothing outside the group (nor a control) worked: no proof the network is up.
            self._find("unknown", kind, main, failed, {
                "group": group, "kind": kind, "excluded": excluded[:1], "not_excluded": [
                    *not_excluded, "the network being down: nothing outside the group "
                    "answered (name a --control)"]},
                f"Every {group} endpoint failed {kind} ({main}) and nothing else answered "
                f"to compare with.")
            return "unknown"
        seen: dict[str, str] = {}
        servers = ""
        if kind in ("tcp", "tls"):
            # One server refusing, silent or unreachable looks the same as that server
            # being down or its port closed: a block needs two or more server addresses
            # failing the same way. A reset right after the ClientHello on a connection
            # the server accepted is the exception: the server is up and listening.
            seen = self.steps.seen_by_address(failed, kind)
            phrases = sorted(set(seen.values()))
            addrs = ", ".join(seen)
            excluded = [e for e in excluded if not e.startswith("one server down:")]
            if len(phrases) == 1 and len(seen) >= 2:
                excluded.insert(0, f"one server down or its port closed: {len(seen)} server "
                                   f"addresses of '{group}' ({addrs}) all failed the same "
                                   f"way ({phrases[0]})")
                not_excluded = ["the app's servers all down at once (one vantage point)"]
                servers = f" All {len(seen)} server addresses ({addrs}) failed the same " \
                          f"way: {phrases[0]}."
            elif phrases == [_SEEN_HELLO_RESET]:
                not_excluded = [f"the server at {addrs} itself resetting TLS for that name "
                                f"(one server address, seen from one vantage point)"]
                servers = f" The server at {addrs} accepted the TCP connection, so it is " \
                          f"up and its port open; the handshake was reset right after the " \
                          f"ClientHello, which carries the name (SNI)."
            else:
                return self._one_server(group, kind, main, failed, seen, excluded, causes)
        text = {
            "dns": f"No {group} name resolved with any resolver, while other names did.",
            "tcp": f"Every TCP connect to the {group} endpoints failed ({main}), on every "
                   f"address and port, while other hosts answered.",
            "tls": (f"Every TLS handshake with the {group} endpoints failed ({main}) while "
                    f"other hosts answered." if main is Reason.TLS_RESET_AFTER_HELLO else
                    f"No TCP connect for a TLS handshake with the {group} endpoints "
                    f"succeeded ({main}), on every address and port, while other hosts "
                    f"answered: no handshake was made."),
            "stun": f"No {group} STUN server answered a binding request while another STUN "
                    f"server did.",
        }[kind] + servers
        self._find("blocked", kind, main, failed, {
            "group": group, "kind": kind, "causes": {str(c): k for c, k in causes.items()},
            **({"seen": seen} if seen else {}),
            "excluded": excluded, "not_excluded": not_excluded}, text)
        return "blocked"

    def _one_server(self, group: str, kind: str, main: Reason, failed: list[_Way],
                    seen: dict[str, str], excluded: list[str],
                    causes: Counter[Reason]) -> str:
        """A TCP or TLS way failed at every endpoint of ``group``, but not on two server
        addresses the same way: ``degraded``, saying what was seen and what it cannot be
        told from."""
        if len(seen) == 1:
            ((ip, phrase),) = seen.items()
            benign, why = _SERVER_SIDE.get(phrase, _NOT_TLS)
            not_excluded = [f"{benign} ({ip}, the group's one server address): {why}"]
            text = (f"Every {kind.upper()} attempt to group '{group}' failed, all at one "
                    f"server address ({ip}): {phrase}. That cannot be told from {benign}: "
                    f"{why}.")
        elif seen:
            listed = "; ".join(f"{ip}: {phrase}" for ip, phrase in seen.items())
            not_excluded = ["each server being down or its port closed, each in its own "
                            f"way: {listed}"]
            text = (f"Every {kind.upper()} attempt to group '{group}' failed, at "
                    f"{len(seen)} server addresses but not the same way ({listed}): no one "
                    f"pattern to tell a block from servers that are down.")
        else:
            not_excluded = ["the servers being down: no connect to them was recorded"]
            text = (f"Every {kind.upper()} way to group '{group}' failed, but no connect "
                    f"was recorded to tell how.")
        self._find("degraded", kind, main, failed, {
            "group": group, "kind": kind, "causes": {str(c): k for c, k in causes.items()},
            "seen": seen, "excluded": excluded, "not_excluded": not_excluded}, text)
        return "degraded"

    def dns(self) -> dict[str, Any]:
        """Consistency across resolvers; a degraded finding when it mattered."""
        names: dict[str, dict[str, list[str]]] = {}
        reached = {c.ip for cs in self.steps.tcp.values() for c in cs if c.failure is None}
        reached |= {h.ip for hs in self.steps.tls.values() for h in hs if h.failure is None}
        reached |= {s.ip for ss in self.steps.stun.values() for s in ss
                    if s.failure in _ANSWERED}
        tried = {c.ip for cs in self.steps.tcp.values() for c in cs}
        tried |= {s.ip for ss in self.steps.stun.values() for s in ss}
        inconsistent: list[str] = []
        for ep in self.m.endpoints:
            if ep.is_address or ep.group == CONTROL_GROUP:
                continue
            qs = self.steps.queries.get(_key(ep.host), [])
            views = {q.resolver: sorted(q.answers) for q in qs}
            names[ep.host] = views
            answered = {r: set(a) for r, a in views.items() if a}
            if len({frozenset(a) for a in answered.values()}) > 1:
                inconsistent.append(ep.host)
                dead = [r for r, a in answered.items() if a & tried and not a & reached]
                live = [r for r, a in answered.items() if a & reached]
                if dead and live:
                    ways = [w for w in self.app_ways if w.endpoint.host == ep.host]
                    self._find("degraded", "dns", Reason.DNS_INCONSISTENT, ways, {
                        "name": ep.host, "answers": views, "unreachable_from": dead,
                        "reachable_from": live, "excluded": [
                            "a CDN's answers by place: only the difference in what could "
                            "be reached counts"]},
                        f"{ep.host}: the addresses {', '.join(dead)} gave could not be "
                        f"reached, those {', '.join(live)} gave could.")
            failed_system = [q for q in qs if q.resolver == SYSTEM and not q.answers]
            if failed_system and any(q.answers for q in qs if q.resolver != SYSTEM):
                ways = [w for w in self.app_ways if w.endpoint.host == ep.host]
                self._find("degraded", "dns", Reason.DNS_FAILURE, ways, {
                    "name": ep.host, "answers": views,
                    "system_failure": failed_system[0].failure, "excluded": [
                        "the name not existing: another resolver answered it"]},
                    f"{ep.host}: the system resolver failed "
                    f"({failed_system[0].failure}) while another resolver answered.")
        several = sum(1 for r in self.m.resolvers) > 1
        return {"status": ("inconsistent" if inconsistent else
                           "consistent" if several else "single-resolver"),
                "inconsistent": inconsistent, "answers": names}


def _way_dict(w: _Way) -> dict[str, Any]:
    return {"host": w.endpoint.host, "group": w.endpoint.group, "kind": w.kind,
            "status": "ok" if w.ok else "failed", "cause": None if w.cause is None
            else str(w.cause), "failures": w.failures, "attempts": w.attempts,
            "addresses": list(w.addresses)}


def judge_reachability(m: ReachabilityMeasurement, policy: Policy) -> TestResult:
    """The verdict on a reachability measurement, with OONI-style ``test_keys``."""
    j = _Judge(m, policy)
    app_ok = any(w.ok for w in j.app_ways)
    control_ok = any(w.ok for w in j.control_ways)
    network: str
    if not app_ok and not control_ok:
        network = "down" if j.control_ways else "unknown"
        groups = {g: "unknown" for g in dict.fromkeys(w.endpoint.group for w in j.app_ways)}
        dns_keys = j.dns()
        j.findings = [f for f in j.findings if f.status == "unknown"]
        reason = Reason.CONTROL_FAILED if j.control_ways else Reason.NO_CONTROL
        hosts = sorted({w.endpoint.host for w in j.control_ways})
        ev = Evidence(
            "reachability.control", reason, (), (), *j._ts(j.ways),
            {"app_attempts": sum(w.attempts for w in j.app_ways),
             "control": hosts, "control_failures": dict(sum(
                 (Counter(w.failures) for w in j.control_ways), Counter()))},
            ("The control target " + ", ".join(hosts) + " failed too: the network, not "
             "the app, may be down." if j.control_ways else
             "Nothing of the app's answered and no control target was named: a block "
             "cannot be told from a network that is down."))
        kind = VerdictKind.FAILED if j.control_ways else VerdictKind.UNKNOWN
        verdict = Verdict(kind, (reason,), (ev,))
    else:
        network = "up"
        groups = j.groups()
        dns_keys = j.dns()
        blocked = [f for f in j.findings if f.status == "blocked"]
        degraded = [f for f in j.findings if f.status == "degraded"]
        unknown = [f for f in j.findings if f.status == "unknown"]
        ordered = blocked + degraded + unknown
        kind = (VerdictKind.BLOCKED if blocked else VerdictKind.DEGRADED if degraded
                else VerdictKind.UNKNOWN if unknown else VerdictKind.OK)
        verdict = Verdict(kind, tuple(dict.fromkeys(f.evidence.reason for f in ordered)),
                          tuple(f.evidence for f in ordered))
    blocking = {k: any(f.status == "blocked" and f.evidence.rule == f"reachability.{k}"
                       for f in j.findings) for k in ("dns", "tcp", "tls", "stun")}
    test_keys: dict[str, Any] = {
        "app": m.app,
        "resolvers": list(m.resolvers),
        "network": network,
        "control": ("none" if not j.control_ways else "ok" if control_ok else "failed"),
        **{f"{m.app}_{g}_status": s for g, s in groups.items()},
        **{f"{k}_blocking": v for k, v in blocking.items()},
        "dns_consistency": dns_keys,
        "endpoints": [_way_dict(w) for w in j.ways],
        "queries": [asdict(q) | {"answers": list(q.answers)} for q in m.queries],
        "tcp_connect": [asdict(c) for c in m.tcp_connect],
        "tls_handshakes": [asdict(h) for h in m.tls_handshakes],
        "stun": [asdict(s) for s in m.stun],
        # The measurement whole, field by field: the record rebuilds from it, so the
        # test can be judged again (marsad verify, api.active.rejudge).
        "measurement": json.loads(json.dumps(asdict(m))),
    }
    uid = hashlib.sha256(json.dumps(
        [m.app, str(TestKind.REACHABILITY), m.started_ts, test_keys], sort_keys=True,
        default=str).encode()).hexdigest()[:24]
    return TestResult(uid, TestKind.REACHABILITY, m.app, m.started_ts, m.duration_s, verdict,
                      test_keys)
