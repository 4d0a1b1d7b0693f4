"""Running a reachability test: the app's endpoints and the user's, measured, captured,
judged, written and (optionally) entered in the ledger.

The endpoints are the app's entry of ``classifier/data/endpoints.json`` plus the targets
the user names (SIP, and an app's relays, have no public names) and the controls. A
target or control is written ``[tcp:|tls:|stun:]HOST[:PORT]``; without a scheme it is a
TLS handshake on 443 (a TCP connect on 5060 for SIP, a TLS handshake on 5061).

The test keeps its own capture: the names are resolved once first (not captured) to
learn the addresses, then tcpdump is started with a filter of port 53 and those
addresses, and the whole test (DNS included) runs inside it. An address the second
resolution gave that the first did not is tried but not captured; ``test_keys.capture``
lists any. Without tcpdump or the right to capture the test still runs and says why it
has no capture.

Writes ``<out>/<uid>.json`` (the :class:`~policy.records.TestResult`) and
``<out>/<uid>.pcap``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from api.active import capturing, keep_capture, write_result
from classifier.endpoints import app_endpoints
from classifier.hostnames import APPS
from policy.reach import CONTROL_GROUP, judge_reachability
from policy.records import TestResult
from policy.rules import Policy
from probe.active.reach import Endpoint, ReachLimits, merge_endpoints, run_reachability

__all__ = ["REACH_APPS", "ReachError", "ReachSpec", "parse_target", "run_reach_test"]

REACH_APPS = ("whatsapp", "messenger", "teams", "zoom", "signal", "telegram", "viber", "sip")
"""Apps the reachability test knows (each has an entry in the endpoint table)."""

TARGET_GROUP = "target"
_SCHEMES = ("tcp", "tls", "stun")


class ReachError(ValueError):
    """A reachability test that cannot be run as asked (unknown app, bad target, no
    endpoint at all)."""


@dataclass(frozen=True, slots=True)
class ReachSpec:
    """What to test: an app, how, and against what besides the app's own endpoints."""

    app: str
    resolvers: tuple[str, ...] = ()
    """Resolvers to ask besides the system's (``ip`` or ``ip:port``)."""
    timeout_s: float = 5.0
    """Per step."""
    targets: tuple[Endpoint, ...] = ()
    """Servers the user names for the app (group ``target``)."""
    controls: tuple[Endpoint, ...] = ()
    """Servers that should work whatever happens to the app (group ``control``)."""
    ca_file: str | None = None
    """CA bundle to verify servers with instead of the system store."""
    max_addresses: int = 4
    total_s: float = 60.0
    builtin: bool = True
    """Whether to try the app's endpoints from the table (off: only the targets)."""
    system_resolver: bool = True
    """Whether to ask the system's resolver (off: only ``resolvers``)."""


def parse_target(text: str, *, app: str, group: str = TARGET_GROUP) -> Endpoint:
    """``[tcp:|tls:|stun:]HOST[:PORT]`` (``[v6]:PORT`` for IPv6) as an endpoint."""
    scheme = None
    rest = text.strip()
    head, sep, tail = rest.partition(":")
    if sep and head.lower() in _SCHEMES:
        scheme, rest = head.lower(), tail
    host, port = _host_port(rest, text)
    if scheme is None:
        if app == "sip" and port in (None, 5060):
            scheme, port = "tcp", 5060
        else:
            scheme = "tls"
    if port is None:
        port = {"tcp": 5060 if app == "sip" else 443, "tls": 5061 if app == "sip" else 443,
                "stun": 3478}[scheme]
    if scheme == "tls" and _is_address(host):
        raise ReachError(f"{text}: a TLS target needs a server name (the SNI), not an "
                         f"address")
    ports = (port,)
    return Endpoint(host, group, tcp=ports if scheme == "tcp" else (),
                    tls=ports if scheme == "tls" else (),
                    stun=ports if scheme == "stun" else ())


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_port(rest: str, text: str) -> tuple[str, int | None]:
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    host = host.strip().lower().rstrip(".")
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ReachError(f"{text}: not HOST[:PORT]")
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ReachError(f"{text}: bad port {port_text!r}")
    return host, int(port_text)


def endpoints_of(spec: ReachSpec) -> tuple[Endpoint, ...]:
    """The app's table endpoints (unless ``builtin`` is off), then targets, then controls."""
    if spec.app not in APPS or spec.app not in REACH_APPS:
        raise ReachError(f"unknown app {spec.app!r} (one of {', '.join(REACH_APPS)})")
    table = app_endpoints(spec.app).endpoints if spec.builtin else ()
    # A host is measured once (merge_endpoints): a control on a host of the app's would
    # be folded into the app's group and vanish, and a working control port would make
    # the app's host look reachable.
    app_hosts = {_host_key(ep.host) for ep in (*table, *spec.targets)}
    for ep in spec.controls:
        if _host_key(ep.host) in app_hosts:
            raise ReachError(f"--control {ep.host}: the same host as one of the app's "
                             f"servers or --target; a control must be another server")
    eps = merge_endpoints((*table, *spec.targets, *spec.controls))
    if not any(ep.group != CONTROL_GROUP for ep in eps):
        raise ReachError(f"{spec.app} has no public endpoints to test: name its server with "
                         f"--target HOST[:PORT]")
    return eps


def _host_key(host: str) -> str:
    return host.lower().rstrip(".")


def _pre_resolve(endpoints: tuple[Endpoint, ...], resolvers: tuple[str, ...],
                 timeout_s: float, system: bool) -> set[str]:
    """The addresses the test will (most likely) try: what the names resolve to now."""
    names = [ep for ep in endpoints if not ep.is_address]
    m = run_reachability("pre-resolve", [Endpoint(ep.host, ep.group) for ep in names],
                         resolvers=resolvers, timeout_s=timeout_s, system=system)
    found = {a for q in m.queries for a in q.answers}
    return found | {ep.host for ep in endpoints if ep.is_address}


def _resolver_ip(server: str) -> str:
    if server.startswith("["):
        return server[1:].partition("]")[0]
    return server.partition(":")[0] if server.count(":") == 1 else server


def _capture_filter(addresses: set[str], resolvers: tuple[str, ...]) -> str:
    hosts = sorted(addresses | {_resolver_ip(r) for r in resolvers})
    terms = ["port 53", *(f"host {h}" for h in hosts)]
    return " or ".join(terms)


def run_reach_test(spec: ReachSpec, out_dir: Path, *, policy: Policy,
                   capture: bool = True, iface: str = "any") -> TestResult:
    """Measure, capture, judge and write ``out_dir/<uid>.json`` (and ``.pcap``)."""
    endpoints = endpoints_of(spec)
    if not spec.system_resolver and not spec.resolvers and any(
            not ep.is_address for ep in endpoints):
        raise ReachError("no resolver to ask: name one with --resolver, or keep the "
                         "system's")
    limits = ReachLimits(spec.timeout_s, spec.max_addresses, spec.total_s, 2, spec.ca_file)
    expected: set[str] = set()
    bpf = None
    if capture:
        expected = _pre_resolve(endpoints, spec.resolvers, spec.timeout_s,
                                spec.system_resolver)
        bpf = _capture_filter(expected, spec.resolvers)
    with capturing(out_dir, "reach", bpf, iface=iface) as cap:
        m = run_reachability(spec.app, endpoints, resolvers=spec.resolvers,
                             timeout_s=spec.timeout_s, limits=limits,
                             system=spec.system_resolver)
    judged = judge_reachability(m, policy)
    pcap, sha, capture_keys = keep_capture(cap, out_dir, judged.uid)
    if cap is not None:
        tried = {c.ip for c in m.tcp_connect} | {s.ip for s in m.stun}
        capture_keys |= {"filter": cap.bpf, "not_captured": sorted(tried - expected)}
    keys = dict(judged.test_keys)
    keys["capture"] = capture_keys
    keys["limits"] = {"timeout_s": spec.timeout_s, "max_addresses": spec.max_addresses,
                      "total_s": spec.total_s, "ca_file": spec.ca_file}
    keys["probe"] = {"hostname": socket.gethostname()}
    result = TestResult(judged.uid, judged.kind, judged.app, judged.started_ts,
                        judged.duration_s, judged.verdict, keys,
                        pcap, sha)
    write_result(result, out_dir)
    return result
