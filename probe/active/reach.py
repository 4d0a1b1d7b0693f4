"""The reachability test's measurements: DNS, TCP connect, TLS handshake, STUN binding.

OONI's method for instant-messaging apps, applied to an app's call endpoints: each name is
resolved (the system resolver, and every resolver the user names, A and AAAA), every
answer is connected to on each of the endpoint's TCP ports, a TLS handshake is made with
the endpoint's name as SNI, and a STUN binding request (RFC 8489) is sent to its STUN
ports. Every step is recorded with an OONI failure string, ``None`` on success; nothing
here decides whether anything was blocked (that is ``policy.reach``).

The test is bounded: each step has a timeout, at most ``max_addresses`` answers per name
are tried (the first of each resolver's answers first, so every resolver's view is
tried), and once ``total_s`` has passed the steps still to run are recorded as
``generic_timeout_error`` without being attempted.

The endpoints are data (``classifier/data/endpoints.json``, loaded by
``classifier.endpoints``); this module takes them as :class:`Endpoint` values so the
probe layer needs nothing above it.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver

from probe.active.records import (
    DnsQuery,
    Endpoint,
    ReachabilityMeasurement,
    StunBinding,
    TcpConnect,
    TlsHandshake,
)
from probe.active.trace import STUN_MAGIC_COOKIE, is_stun

__all__ = ["SYSTEM_RESOLVER", "Endpoint", "ReachLimits",
           "build_binding_request", "dns_failure", "merge_endpoints", "parse_binding_response",
           "run_reachability", "socket_failure", "ssl_failure"]

SYSTEM_RESOLVER = "system"
"""The ``resolver`` of a query the operating system's resolver answered."""

_STUN_BINDING_REQUEST = 0x0001
_STUN_BINDING_SUCCESS = 0x0101
_STUN_BINDING_ERROR = 0x0111
_ATTR_MAPPED_ADDRESS = 0x0001
_ATTR_XOR_MAPPED_ADDRESS = 0x0020
_ATTR_SOFTWARE = 0x8022
_STUN_SOFTWARE = b"marsad reachability"


@dataclass(frozen=True, slots=True)
class ReachLimits:
    """How long and how wide the test may go."""

    timeout_s: float = 5.0
    """Each DNS query, connect, handshake and STUN exchange."""
    max_addresses: int = 4
    """Answers tried per name (all resolvers together)."""
    total_s: float = 60.0
    """Cap on the whole test: steps not started by then are recorded as timed out."""
    stun_attempts: int = 2
    """Binding requests sent per address and port (RFC 8489 retransmits over UDP)."""
    ca_file: str | None = None
    """A CA bundle to verify servers with instead of the system store (a lab's CA)."""


# -- OONI failure strings --------------------------------------------------------------

def dns_failure(exc: BaseException) -> str:
    """OONI's failure string for a DNS error."""
    if isinstance(exc, dns.resolver.NXDOMAIN):
        return "dns_nxdomain_error"
    if isinstance(exc, dns.resolver.NoAnswer):
        return "dns_no_answer"
    if isinstance(exc, dns.exception.Timeout | dns.resolver.LifetimeTimeout):
        return "generic_timeout_error"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "dns_server_failure"
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return "dns_nxdomain_error"
        if exc.errno == socket.EAI_AGAIN:
            return "dns_temporary_failure"
        return "dns_lookup_error"
    if isinstance(exc, OSError):
        return socket_failure(exc)
    return "unknown_failure: " + type(exc).__name__


def socket_failure(exc: BaseException) -> str:
    """OONI's failure string for a socket error."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "generic_timeout_error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "connection_reset"
    if isinstance(exc, ConnectionAbortedError):
        return "connection_aborted"
    if isinstance(exc, OSError):
        named = {errno.ENETUNREACH: "network_unreachable", errno.EHOSTUNREACH: "host_unreachable",
                 errno.ECONNREFUSED: "connection_refused", errno.ECONNRESET: "connection_reset",
                 errno.ETIMEDOUT: "generic_timeout_error", errno.EADDRNOTAVAIL:
                 "address_not_available", errno.EACCES: "operation_not_permitted",
                 errno.EPERM: "operation_not_permitted"}
        if exc.errno in named:
            return named[exc.errno]
    return "unknown_failure: " + str(exc)


def ssl_failure(exc: BaseException) -> str:
    """OONI's failure string for a TLS handshake error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        # X509_V_ERR_HOSTNAME_MISMATCH (62), IP mismatch (64)
        if code in (62, 64):
            return "ssl_invalid_hostname"
        # expired, not yet valid
        if code in (9, 10):
            return "ssl_invalid_certificate"
        return "ssl_unknown_authority"
    if isinstance(exc, ssl.SSLEOFError):
        return "eof_error"
    if isinstance(exc, ssl.SSLZeroReturnError):
        return "eof_error"
    if isinstance(exc, ssl.SSLError):
        return "ssl_failed_handshake"
    return socket_failure(exc)


# -- STUN (RFC 8489) -------------------------------------------------------------------

def build_binding_request(transaction_id: bytes) -> bytes:
    """A Binding request with a SOFTWARE attribute (RFC 8489 §5, §14.14)."""
    if len(transaction_id) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    value = _STUN_SOFTWARE
    pad = b"\0" * (-len(value) % 4)
    attrs = struct.pack("!HH", _ATTR_SOFTWARE, len(value)) + value + pad
    return struct.pack("!HH", _STUN_BINDING_REQUEST, len(attrs)) + STUN_MAGIC_COOKIE + \
        transaction_id + attrs


def parse_binding_response(data: bytes, transaction_id: bytes) -> tuple[bool, str | None] | None:
    """``(success, mapped)`` for the answer to ``transaction_id``'s request, or None if
    ``data`` is not one (another message, another transaction, or malformed).

    ``success`` is False for a Binding error response; ``mapped`` is the
    XOR-MAPPED-ADDRESS (or legacy MAPPED-ADDRESS) as ``ip:port`` when present.
    """
    if not is_stun(data) or data[8:20] != transaction_id:
        return None
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if msg_type not in (_STUN_BINDING_SUCCESS, _STUN_BINDING_ERROR):
        return None
    mapped: str | None = None
    pos, end = 20, 20 + length
    while pos + 4 <= end:
        atype, alen = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4:pos + 4 + alen]
        if len(value) < alen:
            return None
        if atype in (_ATTR_XOR_MAPPED_ADDRESS, _ATTR_MAPPED_ADDRESS) and len(value) >= 8:
            xor = atype == _ATTR_XOR_MAPPED_ADDRESS
            family, port = value[1], struct.unpack_from("!H", value, 2)[0]
            key = STUN_MAGIC_COOKIE + transaction_id
            if xor:
                port ^= int.from_bytes(STUN_MAGIC_COOKIE[:2], "big")
            raw = value[4:8] if family == 1 else value[4:20]
            if xor:
                raw = bytes(a ^ b for a, b in zip(raw, key, strict=False))
            if (family == 1 and len(raw) == 4) or (family == 2 and len(raw) == 16):
                ip = str(ipaddress.ip_address(raw))
                text = f"{ip}:{port}" if family == 1 else f"[{ip}]:{port}"
                if mapped is None or xor:
                    mapped = text
        pos += 4 + alen + (-alen % 4)
    return (msg_type == _STUN_BINDING_SUCCESS, mapped)


# -- the steps -------------------------------------------------------------------------

Clock = Callable[[], float]


class _Run:
    """One test run: its clock, its budget and what it recorded."""

    def __init__(self, limits: ReachLimits) -> None:
        self.limits = limits
        self.started_ts = time.time()
        self._t0 = time.monotonic()
        self.queries: list[DnsQuery] = []
        self.tcp: list[TcpConnect] = []
        self.tls: list[TlsHandshake] = []
        self.stun: list[StunBinding] = []
        self._context = _tls_context(limits.ca_file, verify=True)
        self._context_noverify = _tls_context(limits.ca_file, verify=False)

    def t(self) -> float:
        return round(time.monotonic() - self._t0, 6)

    def out_of_time(self) -> bool:
        return time.monotonic() - self._t0 >= self.limits.total_s

    def timeout(self) -> float:
        """The step timeout, cut to what is left of the total."""
        left = self.limits.total_s - (time.monotonic() - self._t0)
        return max(0.05, min(self.limits.timeout_s, left))

    # DNS ------------------------------------------------------------------------------

    def resolve(self, host: str, resolver: str) -> tuple[str, ...]:
        t = self.t()
        if self.out_of_time():
            self.queries.append(DnsQuery(host, resolver, (), "generic_timeout_error", t))
            return ()
        try:
            answers = (_system_lookup(host, self.timeout()) if resolver == SYSTEM_RESOLVER
                       else _server_lookup(host, resolver, self.timeout()))
        except _DnsFailed as exc:
            self.queries.append(DnsQuery(host, resolver, (), exc.failure, t))
            return ()
        except (dns.exception.DNSException, OSError, ValueError) as exc:
            self.queries.append(DnsQuery(host, resolver, (), dns_failure(exc), t))
            return ()
        failure = None if answers else "dns_no_answer"
        self.queries.append(DnsQuery(host, resolver, answers, failure, t))
        return answers

    # TCP and TLS ----------------------------------------------------------------------

    def connect(self, host: str, ip: str, port: int) -> socket.socket | None:
        """A TCP connect, recorded; the connected socket (caller closes) or None."""
        t = self.t()
        if self.out_of_time():
            self.tcp.append(TcpConnect(host, ip, port, "generic_timeout_error", t, None))
            return None
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout())
        start = time.monotonic()
        try:
            sock.connect((ip, port))
        except OSError as exc:
            sock.close()
            self.tcp.append(TcpConnect(host, ip, port, socket_failure(exc), t, None))
            return None
        ms = round((time.monotonic() - start) * 1000, 3)
        self.tcp.append(TcpConnect(host, ip, port, None, t, ms))
        return sock

    def handshake(self, ep: Endpoint, ip: str, port: int) -> None:
        """TCP connect then a TLS handshake with SNI = the endpoint's name, recorded."""
        sock = self.connect(ep.host, ip, port)
        server_name = "" if ep.is_address else ep.host
        t = self.t()
        if sock is None:
            return  # the TCP step recorded why; no handshake was attempted
        ctx = self._context if ep.verify else self._context_noverify
        start = time.monotonic()
        sock.settimeout(self.timeout())
        try:
            with ctx.wrap_socket(sock, server_hostname=server_name or None) as tls:
                ms = round((time.monotonic() - start) * 1000, 3)
                der = tls.getpeercert(binary_form=True)
                digest = hashlib.sha256(der).hexdigest() if der else None
                self.tls.append(TlsHandshake(ep.host, ip, port, server_name, None, t, ms,
                                             digest))
        except (ssl.SSLError, OSError) as exc:
            sock.close()
            self.tls.append(TlsHandshake(ep.host, ip, port, server_name, ssl_failure(exc), t,
                                         None, None))

    # STUN -----------------------------------------------------------------------------

    def binding(self, host: str, ip: str, port: int) -> None:
        t = self.t()
        if self.out_of_time():
            self.stun.append(StunBinding(host, ip, port, "generic_timeout_error", t, None, None))
            return
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        txid = os.urandom(12)
        request = build_binding_request(txid)
        attempts = max(1, self.limits.stun_attempts)
        wait = self.timeout() / attempts
        failure: str | None = "generic_timeout_error"
        rtt: float | None = None
        mapped: str | None = None
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((ip, port))
                for _ in range(attempts):
                    sent = time.monotonic()
                    sock.send(request)
                    deadline = sent + wait
                    answer = _await_response(sock, txid, deadline)
                    if answer is not None:
                        ok, mapped = answer
                        rtt = round((time.monotonic() - sent) * 1000, 3)
                        failure = None if ok else "stun_error_response"
                        break
            except OSError as exc:
                failure = socket_failure(exc)
        self.stun.append(StunBinding(host, ip, port, failure, t, rtt, mapped))


def _await_response(sock: socket.socket, txid: bytes, deadline: float
                    ) -> tuple[bool, str | None] | None:
    """The answer to ``txid`` received before ``deadline`` (others are ignored)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(2048)
        except TimeoutError:
            return None
        answer = parse_binding_response(data, txid)
        if answer is not None:
            return answer


def _tls_context(ca_file: str | None, *, verify: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file) if ca_file else \
        ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _system_lookup(host: str, timeout: float) -> tuple[str, ...]:
    """A and AAAA from the operating system's resolver (getaddrinfo), in its order.

    getaddrinfo has no timeout of its own: it runs in a daemon thread, and a lookup that
    has not returned after ``timeout`` is a ``TimeoutError`` (the thread is left to end
    on its own; it holds nothing of the test's).
    """
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["infos"] = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as exc:
            box["error"] = exc

    worker = threading.Thread(target=work, name=f"getaddrinfo {host}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise TimeoutError(f"the system resolver did not answer {host} in {timeout} s")
    if "error" in box:
        raise box["error"]
    seen: dict[str, None] = {}
    for family, _, _, _, addr in box["infos"]:
        if family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(addr[0]), None)
    return tuple(seen)


class _DnsFailed(Exception):
    """A resolver's answer that is a failure (NXDOMAIN, no answer, SERVFAIL...)."""

    def __init__(self, failure: str) -> None:
        super().__init__(failure)
        self.failure = failure


def _server_lookup(host: str, server: str, timeout: float) -> tuple[str, ...]:
    """A and AAAA asked of ``server`` (``ip`` or ``ip:port``) over UDP (TCP if truncated).

    The addresses either question got; if neither got any, the first question's failure
    (a timeout or error of one question does not discard the other's answers)."""
    ip, port = _split_server(server)
    answers: list[str] = []
    failures: list[BaseException] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        query = dns.message.make_query(dns.name.from_text(host), rdtype)
        try:
            response, _ = dns.query.udp_with_fallback(query, ip, timeout=timeout, port=port)
        except (dns.exception.DNSException, OSError) as exc:
            failures.append(exc)
            continue
        rcode = response.rcode()
        if rcode == dns.rcode.NXDOMAIN:
            failures.append(_DnsFailed("dns_nxdomain_error"))
            continue
        if rcode != dns.rcode.NOERROR:
            failures.append(_DnsFailed("dns_server_failure"))
            continue
        found = [rd.to_text() for rrset in response.answer if rrset.rdtype == rdtype
                 for rd in rrset]
        if not found:
            failures.append(_DnsFailed("dns_no_answer"))
        answers.extend(found)
    if answers:
        return tuple(answers)
    # NXDOMAIN for either question says the name does not exist; else the first failure.
    for failure in failures:
        if isinstance(failure, _DnsFailed) and failure.failure == "dns_nxdomain_error":
            raise failure
    raise failures[0]


def _split_server(server: str) -> tuple[str, int]:
    """``ip``, ``ip:port``, ``[v6]:port`` -> (ip, port)."""
    if server.startswith("["):
        ip, _, rest = server[1:].partition("]")
        return ip, int(rest[1:]) if rest.startswith(":") else 53
    if server.count(":") == 1:
        ip, _, port = server.partition(":")
        return ip, int(port)
    return server, 53


def _pick_addresses(per_resolver: Sequence[tuple[str, ...]], limit: int) -> list[str]:
    """Up to ``limit`` distinct addresses, taking each resolver's answers in turn so that
    every resolver's view is tried before any one's tail."""
    out: list[str] = []
    depth = max((len(a) for a in per_resolver), default=0)
    for i in range(depth):
        for answers in per_resolver:
            if i < len(answers) and answers[i] not in out:
                out.append(answers[i])
                if len(out) >= limit:
                    return out
    return out


def merge_endpoints(endpoints: Sequence[Endpoint]) -> tuple[Endpoint, ...]:
    """One endpoint per host, in first-seen order: the group and ``verify`` of its first
    listing, the ports of every listing (each step's record names only the host, so a host
    is measured once)."""
    out: dict[str, Endpoint] = {}
    for ep in endpoints:
        key = ep.host.lower().rstrip(".")
        seen = out.get(key)
        if seen is None:
            out[key] = ep
            continue
        out[key] = Endpoint(seen.host, seen.group,
                            tuple(dict.fromkeys((*seen.tcp, *ep.tcp))),
                            tuple(dict.fromkeys((*seen.tls, *ep.tls))),
                            tuple(dict.fromkeys((*seen.stun, *ep.stun))), seen.verify)
    return tuple(out.values())


def run_reachability(app: str, endpoints: Sequence[Endpoint], *,
                     resolvers: Sequence[str] = (), timeout_s: float = 5.0,
                     limits: ReachLimits | None = None,
                     system: bool = True) -> ReachabilityMeasurement:
    """Measure ``endpoints`` of ``app``: each name asked of the system resolver (unless
    ``system`` is off) and of every resolver in ``resolvers`` (``ip`` or ``ip:port``),
    then TCP connects, TLS handshakes and STUN bindings to the answers (at most
    ``max_addresses`` per name).

    ``timeout_s`` is the per-step timeout (it overrides ``limits.timeout_s``). Endpoints
    are tried in the order given; a name listed twice is tried once, with the ports of
    both (:func:`merge_endpoints`).
    """
    base = limits or ReachLimits()
    lim = ReachLimits(timeout_s, base.max_addresses, base.total_s, base.stun_attempts,
                      base.ca_file)
    run = _Run(lim)
    names = (SYSTEM_RESOLVER, *resolvers) if system else tuple(resolvers)
    if not names and any(not ep.is_address for ep in endpoints):
        raise ValueError("names to resolve and no resolver to ask")
    merged = merge_endpoints(endpoints)
    for ep in merged:
        if ep.is_address:
            addresses = [ep.host]
        else:
            views = [run.resolve(ep.host, r) for r in names]
            addresses = _pick_addresses(views, lim.max_addresses)
        for ip in addresses:
            for port in ep.tcp:
                sock = run.connect(ep.host, ip, port)
                if sock is not None:
                    sock.close()
            for port in ep.tls:
                run.handshake(ep, ip, port)
            for port in ep.stun:
                run.binding(ep.host, ip, port)
    return ReachabilityMeasurement(app, run.started_ts, round(time.monotonic() - run._t0, 6),
                                   tuple(run.queries), tuple(run.tcp), tuple(run.tls),
                                   tuple(run.stun), merged, names)
