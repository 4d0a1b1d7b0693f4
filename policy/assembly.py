"""Calls assembled from classified flows: which flows make one call, and its set-up.

How flows become one call:

* a SIP dialog (one Call-ID with an INVITE) is a call; the RTP/RTCP flows on
  the media endpoints its SDP announced belong to it;
* otherwise, call flows (STUN/TURN/DTLS set-up, media, relays: any flow the
  classifier put in a call category) are joined when they share the local
  socket (ICE uses one port for all candidate pairs) or the same local machine
  talks to the same remote host, or to the same organisation's servers (its
  app's, else the published owner of the address), within
  ``calls.same_call_gap_s`` of the call's other flows. The local machine is
  the set of addresses one link-layer address sent from
  (:func:`probe.addresses.machines`): a dual-stack host's IPv4 and IPv6
  candidates are one call's. One organisation runs several apps' relays
  (Messenger calls use WhatsApp's): a join by organisation never makes one
  call of media streams named by two different apps. The call is named by its
  call flows' apps, evidence that names one app (a REALM, a server name)
  outweighing evidence an organisation's apps share (STUN types, addresses);
* flows whose ICE connectivity checks carry the same username fragments
  (RFC 8445 §7.2.2: one session's, on every candidate pair) are one call's,
  whatever socket, address or relay they go by: a path straight to the peer's
  own address names no app, the relay it was found beside does;
* TCP/TLS/QUIC flows of the same app, or to the call's remote hosts, that
  start up to ``calls.same_call_gap_s`` before the call and before its first
  media (or its end, when no media flowed) are its signalling and are judged
  with it (a reset TLS connection to the app's servers is how SNI blocking
  shows); connections opened once media flows are the app's other business.

The local side is the host the capture was taken next to, chosen by vote over
the call flows (:func:`probe.addresses.local_host`: the end of a local address
class when only one end is, else the originator).

Nothing here judges: :func:`assemble_calls` gives the flows of each call, its SIP
dialog and its set-up; :func:`policy.calls.analyse_calls` measures the legs and
applies the rules.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from classifier.hostnames import app_owner
from classifier.owners import lookup as owner_of
from classifier.records import Classification, Method, SipSummary
from policy.records import CallSetup, SipEvent, StunSetup, TcpSetup, TlsSetup
from policy.window import (
    MEDIA_CATEGORIES,
    SETUP_PROTOCOLS,
    FlowWindow,
    builds_calls,
    is_call_flow,
)
from probe.addresses import MachineIndex, ends
from probe.records import FlowRecord

__all__ = ["MEDIA_CATEGORIES", "SETUP_PROTOCOLS", "AssembledCall", "Assembly", "Sides",
           "SipDialog", "assemble_calls", "is_call_flow", "vantage"]

ONE_WAY_DIRECTIONS = frozenset({"sendonly", "recvonly", "inactive"})
"""SDP directions of media that flows one way by design (RFC 3264 §5.1)."""

End = tuple[str, int]


@dataclass(frozen=True, slots=True)
class SipDialog:
    """One SIP dialog that carried an INVITE: its Call-ID, its messages (in the order
    its flows carried them), the flows they came on and the media its SDP announced."""

    call_id: str
    messages: tuple[SipSummary, ...]
    flow_uids: tuple[str, ...]
    """Flows that carried the dialog's messages, sorted."""
    media: frozenset[tuple[str, int, str]]
    """Media endpoints its SDP announced: (address, port, direction)."""

    @property
    def first_ts(self) -> float:
        return min(m.ts for m in self.messages)

    @property
    def directions(self) -> list[str]:
        """The SDP directions announced, sorted."""
        return sorted({d for _, _, d in self.media})

    @property
    def one_way_by_design(self) -> bool:
        """Whether its SDP made media one-way (send-only, receive-only or inactive)."""
        return any(d in ONE_WAY_DIRECTIONS for _, _, d in self.media)

    @property
    def media_endpoints(self) -> frozenset[End]:
        """RTP on the announced ports, RTCP on the next one up (RFC 3550 §11)."""
        return frozenset((a, p + k) for a, p, _ in self.media for k in (0, 1))

    @property
    def invites(self) -> list[SipSummary]:
        return [m for m in self.messages if m.method == "INVITE"]

    @property
    def responded(self) -> bool:
        """Whether any response at all came (even 100 Trying)."""
        return any(m.status is not None for m in self.messages)

    @property
    def answered(self) -> bool:
        """Whether the INVITE got a 2xx."""
        return any(m.status is not None and 200 <= m.status < 300
                   and m.cseq_method == "INVITE" for m in self.messages)

    @property
    def final(self) -> SipSummary | None:
        """The INVITE's last final failure response, not counting the authentication
        challenges a client retries after (401, 407); None when there was none."""
        real = [m for m in self.messages if m.status is not None and m.status >= 300
                and m.cseq_method == "INVITE" and m.status not in (401, 407)]
        return real[-1] if real else None


@dataclass(frozen=True, slots=True)
class AssembledCall:
    """One call as assembled, before any judgement."""

    flows: tuple[FlowRecord, ...]
    """Every flow of the call (signalling, set-up, media), by first packet then uid."""
    media_flows: tuple[FlowRecord, ...]
    """Its flows that carry media: a media category, or RTP the probe followed."""
    dialog: SipDialog | None
    """A SIP call's dialog."""
    app: str | None
    setup: CallSetup


class Sides:
    """(remote end, local end) of each flow, worked out once per flow: the ends of
    :func:`probe.addresses.ends`, except that an end held by the local host's machine
    (:func:`probe.addresses.machines`) is the local one (a peer that opened a flow to
    the host's other address)."""

    __slots__ = ("_any", "_machine", "_memo", "local", "who")

    def __init__(self, local: str | None, who: MachineIndex) -> None:
        self.local = local
        self.who = who
        self._any = bool(who)
        self._memo: dict[str, tuple[End, End]] = {}
        self._machine: dict[str, str] = {}

    def __call__(self, f: FlowRecord) -> tuple[End, End]:
        got = self._memo.get(f.uid)
        if got is None:
            near, far = ends(f, self.local)
            local = self.local
            if self._any and local is not None:
                mine = self.machine(local)
                if (mine != local and self.machine(far[0]) == mine
                        and self.machine(near[0]) != mine):
                    near, far = far, near
            got = self._memo[f.uid] = (far, near)
        return got

    def machine(self, host: str) -> str:
        """The machine an address belongs to (the address itself when unknown)."""
        got = self._machine.get(host)
        if got is None:
            got = self._machine[host] = self.who.get(host) or host
        return got


@dataclass(frozen=True, slots=True)
class Assembly:
    """The calls of a set of flows, and what was learnt of the capture on the way."""

    calls: list[AssembledCall]
    """SIP calls by their dialog's first message, then the others."""
    local: str | None
    """The local host (:func:`vantage`)."""
    others_answered: bool
    capture_end: float
    sides: Sides


def vantage(window: FlowWindow) -> tuple[str | None, bool, float]:
    """What the verdict rules take from all the flows judged together: the local host (by
    vote over the call flows, ties told apart by a vote over all; else over all), whether
    any flow was answered both ways, and the newest packet's time."""
    return window.local_host(), window.others_answered, window.capture_end


class _Union:
    """Union-find over call flows; each set knows the apps its media flows are named
    by, so that a join by organisation alone (:meth:`join_if_same_app`) never makes one
    call of two media streams that name different apps."""

    def __init__(self, n: int, media_apps: Sequence[str | None] = ()) -> None:
        self.parent = list(range(n))
        self.apps: list[frozenset[str]] = [
            frozenset() if a is None else frozenset({a}) for a in media_apps] or [
            frozenset()] * n

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo
            self.apps[lo] = self.apps[lo] | self.apps[hi]

    def join_if_same_app(self, a: int, b: int) -> bool:
        """Join unless both sets carry media named by apps and none in common."""
        pa, pb = self.apps[self.find(a)], self.apps[self.find(b)]
        if pa and pb and not pa & pb:
            return False
        self.join(a, b)
        return True


def _org(app: str | None, remote: str) -> str | None:
    """Whose servers a call flow reaches: its app's organisation (WhatsApp, Messenger and
    Facebook calls share Meta's relays), else the published owner of its remote address."""
    if app is not None:
        return app_owner(app) or app
    owner = owner_of(remote)
    return owner.owner if owner is not None else None


def _sip_dialogs(flows: Sequence[FlowRecord], classes: Mapping[str, Classification]
                 ) -> list[SipDialog]:
    """The SIP dialogs that carried an INVITE, by their first message."""
    uids: dict[str, set[str]] = {}
    messages: dict[str, list[SipSummary]] = {}
    media: dict[str, set[tuple[str, int, str]]] = {}
    for f in flows:
        for m in classes[f.uid].facts.sip:
            if not m.call_id:
                continue
            uids.setdefault(m.call_id, set()).add(f.uid)
            messages.setdefault(m.call_id, []).append(m)
            announced = media.setdefault(m.call_id, set())
            for addr, port, _media, direction in m.media:
                announced.add((addr, port, direction))
    dialogs = [SipDialog(k, tuple(ms), tuple(sorted(uids[k])), frozenset(media[k]))
               for k, ms in messages.items() if any(m.method == "INVITE" for m in ms)]
    dialogs.sort(key=lambda d: d.first_ts)
    return dialogs


def assemble_calls(window: FlowWindow, gap_s: float) -> Assembly:
    """The calls of the flows of ``window``: the flows of each (``gap_s`` is
    ``calls.same_call_gap_s``), its SIP dialog, the app it is named by and its set-up."""
    by_uid = window.flows
    cls = window.classes
    call_flows = window.call_flows()
    local, others_answered, capture_end = vantage(window)
    sides = Sides(local, window.machines)

    groups: list[list[FlowRecord]] = []
    dialogs: list[SipDialog | None] = []
    taken: set[str] = set()
    # SIP dialogs and the media their SDP announced.
    for d in _sip_dialogs(window.sip_flows(), cls):
        members = [by_uid[u] for u in d.flow_uids]
        have = set(d.flow_uids)
        members += [f for f in window.udp_on(d.media_endpoints) if f.uid not in have]
        groups.append(members)
        dialogs.append(d)
        taken.update(f.uid for f in members)
    n_sip = len(groups)
    # Everything else: union of call flows.
    cand = [f for f in call_flows if f.uid not in taken and not cls[f.uid].facts.sip]
    cand.sort(key=lambda f: (f.first_ts, f.uid))
    u = _Union(len(cand), [cls[f.uid].app if cls[f.uid].category in MEDIA_CATEGORIES
                           else None for f in cand])
    by_socket: dict[End, int] = {}
    for i, f in enumerate(cand):
        _, sock = sides(f)
        if sock in by_socket:
            u.join(i, by_socket[sock])
        else:
            by_socket[sock] = i
    # One ICE session's checks carry the same username fragments on every candidate pair
    # (RFC 8445 §7.2.2), whatever local socket, address family or relay they go by.
    by_session: dict[str, int] = {}
    for i, f in enumerate(cand):
        facts = cls[f.uid].facts.stun
        for session in () if facts is None else facts.ice_sessions:
            if session in by_session:
                u.join(i, by_session[session])
            else:
                by_session[session] = i
    # Same local host talking to the same remote host, or to the same app, within the gap:
    # per key, flows sorted by start join while they overlap (with the gap) the run so far.
    # The local host is its machine: a dual-stack host's IPv4 and IPv6 candidates are one
    # call's; the app is its organisation (one relay network serves several apps).
    keyed: dict[tuple[str, str, str], list[int]] = {}
    for i, f in enumerate(cand):
        (rh, _), (lh, _) = sides(f)
        lm = sides.machine(lh)
        keyed.setdefault(("host", lm, rh), []).append(i)
        org = _org(cls[f.uid].app, rh)
        if org is not None:
            keyed.setdefault(("org", lm, org), []).append(i)
    for key, members_idx in keyed.items():
        run_end = -1.0
        prev = -1
        for i in members_idx:  # already in start order
            f = cand[i]
            if prev >= 0 and f.first_ts <= run_end + gap_s:
                if key[0] == "org" and not u.join_if_same_app(i, prev):
                    # two calls of two apps of one organisation: a new run
                    run_end = f.last_ts
                else:
                    if key[0] != "org":
                        u.join(i, prev)
                    run_end = max(run_end, f.last_ts)
            else:
                run_end = f.last_ts
            prev = i
    comps: dict[int, list[FlowRecord]] = {}
    for i, f in enumerate(cand):
        comps.setdefault(u.find(i), []).append(f)
    for members in comps.values():
        groups.append(members)
        dialogs.append(None)
    _add_signalling(groups[n_sip:], window, taken, sides, gap_s)
    calls = []
    for members, dialog in zip(groups, dialogs, strict=True):
        ordered = tuple(sorted({f.uid: f for f in members}.values(),
                               key=lambda f: (f.first_ts, f.uid)))
        media_flows = tuple(f for f in ordered if cls[f.uid].category in MEDIA_CATEGORIES
                            or (f.rtp_streams and cls[f.uid].facts.protocol == "rtp"))
        calls.append(AssembledCall(ordered, media_flows, dialog, _call_app(ordered, cls),
                                   _setup(ordered, cls, None if dialog is None
                                          else dialog.call_id)))
    return Assembly(calls, local, others_answered, capture_end, sides)


def _add_signalling(groups: list[list[FlowRecord]], window: FlowWindow, taken: set[str],
                    sides: Sides, gap_s: float) -> None:
    """Signalling flows of the same app or to the same remote hosts, just before or
    during each call of ``groups``, added to it."""
    cls = window.classes
    # Keyed by the local host too: in a capture of many hosts (an operator's vantage point)
    # another subscriber's connections are not this call's signalling. Only the flows of
    # the calls' remote hosts and apps are looked at, each key's once.
    pools: dict[tuple[str, str], dict[str, list[FlowRecord]]] = {}

    def pool(kind: str, machine: str, key: str, start: float, until: float
             ) -> list[FlowRecord]:
        """The signalling flows (:meth:`FlowWindow.signalling`) of one local machine to a
        remote host, or of an app, that started from ``start`` to ``until``."""
        by_machine = pools.get((kind, key))
        if by_machine is None:  # sorted by start: stable, the window's order within a time
            by_machine = pools[(kind, key)] = {}
            for f in window.signalling(kind, key):
                if f.uid in taken:
                    continue
                (rh, _), (lh, _) = sides(f)
                if kind == "app" or rh == key:
                    by_machine.setdefault(sides.machine(lh), []).append(f)
        got = by_machine.get(machine, [])
        lo = bisect.bisect_left(got, start, key=lambda f: f.first_ts)
        hi = bisect.bisect_right(got, until, lo=lo, key=lambda f: f.first_ts)
        return got[lo:hi]

    for members in groups:
        ends_ = [sides(f) for f in members]
        hosts = {sides.machine(lh) for _, (lh, _) in ends_}
        apps = sorted({(lh, str(cls[f.uid].app)) for f in members
                       if cls[f.uid].app is not None for lh in hosts})
        remotes = sorted({(sides.machine(lh), rh) for (rh, _), (lh, _) in ends_})
        start = min(f.first_ts for f in members) - gap_s
        end = max(f.last_ts for f in members)
        have = {m.uid for m in members}
        # Signalling sets a call up: connections that start once media flows are the app's
        # other business (chat, downloads), not this call's (a call without media: its end).
        until = min((f.first_ts for f in members
                     if cls[f.uid].category in MEDIA_CATEGORIES), default=end)
        for got in [pool("remote", m, rh, start, until) for m, rh in remotes] + [
                pool("app", m, a, start, until) for m, a in apps]:
            for f in got:
                if f.uid not in have:
                    have.add(f.uid)
                    members.append(f)


NAMED_BY_APP = frozenset({Method.STUN_REALM, Method.STUN_ATTR, Method.SNI, Method.QUIC_SNI,
                          Method.TLS_CERT, Method.DNS, Method.DNS_QUERY, Method.SIP,
                          Method.SDP})
"""Methods that name one app from its own servers' names and attributes; the others (STUN
message types, framings, address owners, call peers) may be shared by the apps of one
organisation: Messenger calls use WhatsApp's relays and STUN types."""


def _call_app(members: Sequence[FlowRecord], cls: dict[str, Classification]) -> str | None:
    """The app a call is named by: votes of its own call flows (its signalling may be the
    app's other business) weighted three to one for evidence that names one app."""
    votes: Counter[str] = Counter()
    for only_call in (True, False):
        for f in members:
            c = cls[f.uid]
            if c.app is not None and (not only_call or builds_calls(f, c)):
                votes[c.app] += 3 if c.method in NAMED_BY_APP else 1
        if votes:
            break
    if not votes:
        return None
    best = max(votes.values())
    return min(a for a, v in votes.items() if v == best)


def _setup(members: Sequence[FlowRecord], cls: dict[str, Classification],
           call_id: str | None) -> CallSetup:
    """STUN, TCP and TLS counts over a call's flows, its dialog's SIP messages (those of
    ``call_id`` for a SIP call) and the time to its first media."""
    stun_req = stun_ok = stun_err = pings = 0
    sip: list[SipEvent] = []
    connections = established = refused = unanswered = 0
    hellos = server_hellos = 0
    for f in members:
        facts = cls[f.uid].facts
        if facts.stun is not None:
            stun_req += facts.stun.requests
            stun_ok += facts.stun.success
            stun_err += facts.stun.errors
            pings += facts.stun.orig_pings
        for m in facts.sip:
            if call_id is not None and m.call_id != call_id:
                continue
            sip.append(SipEvent(m.ts, m.frame, m.method or str(m.status), m.call_id))
        if f.proto == "tcp":
            connections += 1
            state = f.conn_state
            if state == "REJ":
                refused += 1
            elif state in ("S0", "RSTOS0"):
                unanswered += 1
            elif state != "OTH":
                established += 1
        if facts.client_hello:
            hellos += 1
        if facts.server_hello:
            server_hellos += 1
    first = min(f.first_ts for f in members)
    first_media = min((f.first_ts for f in members
                       if cls[f.uid].category in MEDIA_CATEGORIES), default=None)
    return CallSetup(StunSetup(stun_req, stun_ok, stun_err, pings),
                     tuple(sorted(sip, key=lambda m: m.ts)),
                     TcpSetup(connections, established, refused, unanswered),
                     TlsSetup(hellos, server_hellos), first_media,
                     None if first_media is None else round(first_media - first, 6))
