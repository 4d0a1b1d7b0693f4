"""The flows judged together, and what the verdict rules read from all of them at once.

Calls are assembled and judged over a *window* of classified flows (the whole capture for
a list of flows; the last minutes of traffic in :mod:`policy.pipeline`). Besides each
call's own flows, the rules look at the window as a whole: which host is local (a vote
over every flow), which link-layer address stands for one machine, whether anything was
answered both ways, which servers answered, each client's tries at each server, the
TCP flows of a host, the IP versions that reached past the link, the signalling flows
of an app or a remote host. :class:`FlowWindow` keeps each of these as counts and
indexes updated as flows join (:meth:`FlowWindow.add`) and leave
(:meth:`FlowWindow.remove`), so that judging a window costs what its calls touch, not
a walk over every flow in it each time: the pipeline judges its window at every point
where a call flow settles, and on a busy link that window holds many thousands of flows.

Where the order of flows matters (a tie in the vote, the flows a host carried), it is
the window's order: by first packet, then uid.
"""

from __future__ import annotations

import bisect
import heapq
import ipaddress
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, KeysView
from dataclasses import dataclass
from typing import Any

from classifier.records import CALL_CATEGORIES, Category, Classification
from probe.addresses import (
    AddressClass,
    MachineIndex,
    _rank,
    address_class,
    flow_votes,
    host_key,
    local_host,
)
from probe.records import FlowRecord, TcpFlag

__all__ = ["MEDIA_CATEGORIES", "SETUP_PROTOCOLS", "SIGNALLING_PROTOCOLS", "FlowWindow",
           "ServiceTries", "builds_calls", "is_call_flow", "one_prefix", "unanswered_syns"]

End = tuple[str, int]
TriesKey = tuple[str, str, int]

MEDIA_CATEGORIES = frozenset({Category.VOICE, Category.VIDEO, Category.SCREEN})
SETUP_PROTOCOLS = frozenset({"stun", "dtls", "rtcp", "rtp", "sip", "zoom", "discord",
                             "telegram", "mgcp", "h323", "sccp", "agora", "mumble"})
SIGNALLING_PROTOCOLS = frozenset({"tls", "quic", "gquic", "http", "whatsapp"})
"""Protocols a call's signalling goes by, besides any TCP connection."""


def builds_calls(f: FlowRecord, c: Classification) -> bool:
    """Whether calls are built on this flow: a call category, or a call set-up protocol
    over UDP."""
    if c.category in CALL_CATEGORIES:
        return True
    return f.proto == "udp" and c.facts.protocol in SETUP_PROTOCOLS


def is_call_flow(f: FlowRecord, c: Classification) -> bool:
    """Whether :func:`policy.assembly.assemble_calls` builds calls on this flow (a call
    category, or a call set-up protocol over UDP) or on the dialog it carries (SIP)."""
    return builds_calls(f, c) or bool(c.facts.sip)


@dataclass(frozen=True, slots=True)
class ServiceTries:
    """One client's TCP connections to one server address and port, among the flows
    judged together."""

    unanswered: tuple[tuple[float, float, int, int], ...]
    """Connections nothing answered whose client never set ACK: (first SYN, last SYN,
    SYNs, first frame), by first SYN."""
    answered: tuple[float, ...]
    """When each connection that got any reply (or whose client set ACK) began, sorted."""


def unanswered_syns(flow: FlowRecord) -> tuple[int, float, float] | None:
    """The SYNs of an unanswered TCP flow: how many, the first's and the last's times;
    None when the originator ever set ACK (it had a SYN-ACK the capture did not hold:
    an ACK, data, or an RST|ACK answering a segment) or something answered. A flow the
    originator reset (RSTOS0) counts as its first SYN alone: its record does not say
    when the SYNs before the RST were sent."""
    if flow.orig_flags & TcpFlag.ACK or flow.conn_state not in ("S0", "RSTOS0"):
        return None
    if flow.conn_state == "RSTOS0":
        return 1, flow.first_ts, flow.first_ts
    return flow.orig_pkts, flow.first_ts, flow.last_ts


def _answered_service(f: FlowRecord) -> bool:
    """Whether the flow's server answered it: a SYN with a SYN-ACK (TCP), a datagram with
    a datagram back (UDP)."""
    return f.resp_pkts > 0 and (
        (f.proto == "tcp" and f.conn_state not in ("S0", "REJ", "RSTOS0", "SH", "OTH"))
        or f.proto == "udp")


def _past_the_link(f: FlowRecord) -> bool:
    """Whether a TCP or UDP flow seen both ways has a global end (RFC 6890: no local
    class) and went past the link its other end is on (not one IPv4 /24 or IPv6 /64,
    neither end link-local). Neighbour discovery and the router's own services on the
    link show nothing of the route beyond."""
    ca, cb = address_class(f.orig_h), address_class(f.resp_h)
    if AddressClass.GLOBAL not in (ca, cb) or AddressClass.LINK_LOCAL in (ca, cb):
        return False
    return not one_prefix(f.orig_h, f.resp_h)


def one_prefix(a: str, b: str) -> bool:
    """Both addresses in one IPv4 /24 or one IPv6 /64 (the usual size of a link)."""
    x, y = ipaddress.ip_address(a.partition("%")[0]), ipaddress.ip_address(b.partition("%")[0])
    if x.version != y.version:
        return False
    bits = 24 if x.version == 4 else 64
    return y in ipaddress.ip_network(f"{x}/{bits}", strict=False)


def _order(f: FlowRecord) -> tuple[int, str]:
    return f.first_frame, f.uid


def _add(index: dict[Any, set[str]], key: Any, uid: str) -> None:
    index.setdefault(key, set()).add(uid)


def _drop(index: dict[Any, set[str]], key: Any, uid: str) -> None:
    got = index.get(key)
    if got is not None:
        got.discard(uid)
        if not got:
            del index[key]


class FlowWindow:
    """Classified flows judged together, with the counts and indexes the rules read.

    :meth:`of` builds one from lists; :meth:`add` and :meth:`remove` keep one current.
    """

    __slots__ = ("_both_ways", "_by_end", "_calls", "_ends", "_families", "_services", "_sig",
                 "_sip", "_tcp", "_tries", "_votes", "classes", "flows", "machines")

    def __init__(self) -> None:
        self.flows: dict[str, FlowRecord] = {}
        self.classes: dict[str, Classification] = {}
        self.machines = MachineIndex()
        """Which addresses are one machine's (:func:`probe.addresses.machines`)."""
        self._tcp: dict[str, set[str]] = {}
        """TCP flows with a rate series, by each end."""
        self._by_end: dict[End, set[str]] = {}
        """UDP flows by each of their ends."""
        self._calls: set[str] = set()
        """Flows calls are built on (:func:`builds_calls`)."""
        self._sip: set[str] = set()
        self._sig: dict[tuple[str, str], list[tuple[float, int, str]]] = {}
        """Signalling flows (a signalling protocol, or TCP) by ("remote", each end) and by
        ("app", app): (first packet time, first frame, uid), sorted."""
        self._votes: Counter[str] = Counter()
        self._both_ways = 0
        self._ends: list[tuple[float, str]] = []
        """Heap of (-last packet time, uid); entries of flows gone are skipped."""
        self._services: Counter[End] = Counter()
        self._tries: dict[TriesKey, dict[str, tuple[bool, tuple[float, ...]]]] = {}
        self._families: dict[int, dict[str, bool | None]] = {}
        """Per IP version, the TCP and UDP flows seen both ways: whether each went past the
        link (:func:`_past_the_link`), None until asked."""

    @classmethod
    def of(cls, flows: Iterable[FlowRecord], classes: Iterable[Classification]
           ) -> FlowWindow:
        """A window of these flows (``classes``: one per flow, any order)."""
        by_uid = {c.uid: c for c in classes}
        w = cls()
        for f in flows:
            w.add(f, by_uid[f.uid])
        return w

    def __len__(self) -> int:
        return len(self.flows)

    def __contains__(self, uid: object) -> bool:
        return uid in self.flows

    def __iter__(self) -> Iterator[str]:
        """The uids of its flows."""
        return iter(self.flows)

    def __getitem__(self, uid: str) -> tuple[FlowRecord, Classification]:
        """A flow and its classification."""
        return self.flows[uid], self.classes[uid]

    # -- keeping it current ----------------------------------------------------------------
    def add(self, f: FlowRecord, c: Classification) -> None:
        """A flow joins (one already in under its uid is replaced)."""
        if f.uid in self.flows:
            self.remove(f.uid)
        uid = f.uid
        self.flows[uid] = f
        self.classes[uid] = c
        self._count(f, c, 1)
        ends = self._ends
        if len(ends) > 2 * len(self.flows) + 64:  # mostly flows gone: start afresh
            ends[:] = [(-g.last_ts, u) for u, g in self.flows.items()]
            heapq.heapify(ends)
        else:
            heapq.heappush(ends, (-f.last_ts, uid))

    def remove(self, uid: str) -> None:
        """A flow leaves."""
        f = self.flows.pop(uid)
        c = self.classes.pop(uid)
        self._count(f, c, -1)

    def _count(self, f: FlowRecord, c: Classification, n: int) -> None:
        uid = f.uid
        put = _add if n > 0 else _drop
        if f.proto == "tcp" and len(f.rate):
            put(self._tcp, f.orig_h, uid)
            put(self._tcp, f.resp_h, uid)
        elif f.proto == "udp":  # by the host an SDP may name (NAT64: its IPv4 address)
            put(self._by_end, (host_key(f.orig_h), f.orig_p), uid)
            put(self._by_end, (host_key(f.resp_h), f.resp_p), uid)
        if builds_calls(f, c):
            self._calls.add(uid) if n > 0 else self._calls.discard(uid)
        if c.facts.sip:
            self._sip.add(uid) if n > 0 else self._sip.discard(uid)
        if f.proto == "tcp" or c.facts.protocol in SIGNALLING_PROTOCOLS:
            entry = (f.first_ts, f.first_frame, uid)
            keys = [("remote", f.orig_h)]
            if f.resp_h != f.orig_h:
                keys.append(("remote", f.resp_h))
            if c.app is not None:
                keys.append(("app", c.app))
            for key in keys:
                if n > 0:
                    bisect.insort(self._sig.setdefault(key, []), entry)
                else:
                    got = self._sig[key]
                    del got[bisect.bisect_left(got, entry)]
                    if not got:
                        del self._sig[key]
        if n > 0:
            self.machines.add(f)
        else:
            self.machines.remove(f)
        for host, v in flow_votes(f):
            _bump(self._votes, host, n * v)
        if f.resp_pkts > 0 and f.orig_pkts > 0:
            self._both_ways += n
            if f.proto in ("tcp", "udp"):  # may show a route past the link
                family = self._families.setdefault(f.ip_version, {})
                if n > 0:
                    family[uid] = None
                else:
                    family.pop(uid, None)
        if _answered_service(f):
            _bump(self._services, (f.resp_h, f.resp_p), n)
        if f.proto == "tcp":
            self._count_try(f, n)

    def _count_try(self, f: FlowRecord, n: int) -> None:
        key = (f.orig_h, f.resp_h, f.resp_p)
        if n < 0:
            tries = self._tries.get(key)
            if tries is not None:
                tries.pop(f.uid, None)
                if not tries:
                    del self._tries[key]
            return
        got = unanswered_syns(f)
        if got is not None:
            entry: tuple[bool, tuple[float, ...]] = (False, (got[1], got[2], got[0],
                                                             f.first_frame))
        elif f.resp_pkts > 0 or f.orig_flags & TcpFlag.ACK:
            entry = (True, (f.first_ts,))
        else:
            return
        self._tries.setdefault(key, {})[f.uid] = entry

    # -- reading it ------------------------------------------------------------------------
    def ordered(self, uids: Iterable[str] | None = None) -> list[FlowRecord]:
        """The flows of ``uids`` (every flow when None) in the window's order."""
        flows = self.flows.values() if uids is None else (self.flows[u] for u in uids)
        return sorted(flows, key=_order)

    def call_flows(self) -> list[FlowRecord]:
        """The flows calls are built on (:func:`builds_calls`), in order."""
        return self.ordered(self._calls)

    def sip_flows(self) -> list[FlowRecord]:
        """The flows that carried SIP messages, in order."""
        return self.ordered(self._sip)

    def udp_on(self, ends: Collection[End]) -> list[FlowRecord]:
        """The UDP flows with an end among ``ends``, in order (an end reached through
        NAT64 as the IPv4 address it stands for, :func:`probe.addresses.host_key`)."""
        uids: set[str] = set()
        for host, port in ends:
            uids.update(self._by_end.get((host_key(host), port), ()))
        return self.ordered(uids)

    def signalling(self, kind: str, key: str) -> list[FlowRecord]:
        """The TCP flows and flows of a signalling protocol with ``key`` at one end (kind
        "remote") or named app ``key`` (kind "app"), by start (then in order)."""
        return [self.flows[uid] for _, _, uid in self._sig.get((kind, key), ())]

    def local_host(self) -> str | None:
        """The local host: by vote over the call flows, hosts that tie told apart by the
        vote over every flow; with no call flow, by the vote over every flow, the host seen
        first among those that tie (:func:`probe.addresses.local_host`)."""
        calls = self.call_flows()
        if calls:
            return local_host(calls, self._votes)
        if not self._votes:
            return None
        top = max(self._votes.values())
        tied = [h for h, n in self._votes.items() if n == top]
        if len(tied) == 1:
            return tied[0]
        first = self._first_votes(set(tied))
        return min(tied, key=first.__getitem__)

    def _first_votes(self, hosts: set[str]) -> dict[str, tuple[int, str, int]]:
        """Where each of ``hosts`` first got a vote, in the window's order (an originator's
        before its responder's). A walk over the window: asked only on a tie with no call
        flow."""
        best = dict.fromkeys(hosts, (1 << 62, "", 0))
        for uid, f in self.flows.items():
            if f.orig_h not in hosts and f.resp_h not in hosts:
                continue
            ro, rr = _rank(f.orig_h), _rank(f.resp_h)
            if f.orig_h in hosts and ro >= rr:
                best[f.orig_h] = min(best[f.orig_h], (f.first_frame, uid, 0))
            if f.resp_h in hosts and rr >= ro and f.resp_h != f.orig_h:
                best[f.resp_h] = min(best[f.resp_h], (f.first_frame, uid, 1))
        return best

    @property
    def others_answered(self) -> bool:
        """Whether any flow was answered both ways."""
        return self._both_ways > 0

    @property
    def capture_end(self) -> float:
        """The newest packet's time (0 for no flows)."""
        ends = self._ends
        while ends:
            neg, uid = ends[0]
            f = self.flows.get(uid)
            if f is not None and f.last_ts == -neg:
                return -neg
            heapq.heappop(ends)  # a flow gone, or replaced
        return 0.0

    @property
    def services_up(self) -> KeysView[End]:
        """The (server address, port) pairs that answered some flow: a SYN with a SYN-ACK
        (TCP), a datagram with a datagram back (UDP)."""
        return self._services.keys()

    def service_tries(self, key: TriesKey) -> ServiceTries | None:
        """A client's TCP connections to a server address and port: key (client, server
        address, server port)."""
        tries = self._tries.get(key)
        if tries is None:
            return None
        return ServiceTries(tuple(sorted(e for ok, e in tries.values() if not ok)),  # type: ignore[misc]
                            tuple(sorted(e[0] for ok, e in tries.values() if ok)))

    def internet_families(self) -> frozenset[int]:
        """The IP versions in which some flow went past the link (:func:`_past_the_link`):
        the versions the capture shows working past the host's own network. Each flow is
        looked at once, and only until one of its version is found."""
        out = set()
        for version, flows in self._families.items():
            for uid, past in flows.items():
                if past is None:
                    past = flows[uid] = _past_the_link(self.flows[uid])
                if past:
                    out.add(version)
                    break
        return frozenset(out)

    def tcp_flows_of(self, host: str) -> list[tuple[FlowRecord, bool]]:
        """The TCP flows with a rate series and ``host`` at one end, in order, each with
        whether ``host`` is its originator."""
        out: list[tuple[FlowRecord, bool]] = []
        for f in self.ordered(self._tcp.get(host, ())):
            if f.orig_h == host:
                out.append((f, True))
            if f.resp_h == host:
                out.append((f, False))
        return out


def _bump(counter: Counter[Any], key: Any, n: int) -> None:
    left = counter[key] + n
    if left > 0:
        counter[key] = left
    else:
        del counter[key]

