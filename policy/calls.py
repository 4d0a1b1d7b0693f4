"""Join classified flows into calls, measure their legs and give each a verdict.

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
* TCP/TLS/QUIC flows of the same app, or to the call's remote hosts, that
  start up to ``calls.same_call_gap_s`` before the call and before its first
  media (or its end, when no media flowed) are its signalling and are judged
  with it (a reset TLS connection to the app's servers is how SNI blocking
  shows); connections opened once media flows are the app's other business.

The local side is the host the capture was taken next to, chosen by vote over
the call flows (:func:`probe.addresses.local_host`: the end of a local address
class when only one end is, else the originator).
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from classifier.hostnames import app_owner
from classifier.owners import lookup as owner_of
from classifier.records import CALL_CATEGORIES, Category, Classification, Method
from policy.legs import flow_legs, with_rtcp
from policy.records import (
    Call,
    CallOutcome,
    Evidence,
    FlowVerdict,
    Leg,
    Reason,
    Verdict,
    VerdictKind,
)
from policy.rules import (
    CongestedPath,
    Policy,
    call_rules,
    congested_paths,
    explained_by_congestion,
    flow_rules,
    load_policy,
    verdict_from,
)
from probe.addresses import ends, local_host, machines
from probe.records import FlowRecord

__all__ = ["Analysis", "analyse_calls", "is_call_flow", "lone_flow_verdicts"]

MEDIA_CATEGORIES = frozenset({Category.VOICE, Category.VIDEO, Category.SCREEN})
SETUP_PROTOCOLS = frozenset({"stun", "dtls", "rtcp", "rtp", "sip", "zoom", "discord",
                             "telegram", "mgcp", "h323", "sccp", "agora", "mumble"})
SIGNALLING_PROTOCOLS = frozenset({"tls", "quic", "gquic", "http", "whatsapp"})


@dataclass(slots=True)
class Analysis:
    """Calls and the flows that show interference."""

    calls: list[Call]
    """Every call found, by start time."""
    flow_verdicts: dict[str, Verdict]
    """Flows (in or out of calls) whose own packets show interference."""
    congested: list[CongestedPath] = field(default_factory=list)
    """Paths the calls showed congested (a shaper's queue, heavy loss): they explain the
    unanswered requests of flows outside the calls, also ones judged later."""

    def flow_verdict_list(self) -> list[FlowVerdict]:
        return [FlowVerdict(u, v) for u, v in self.flow_verdicts.items()]


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


def _is_call_flow(f: FlowRecord, c: Classification) -> bool:
    if c.category in CALL_CATEGORIES:
        return True
    return f.proto == "udp" and c.facts.protocol in SETUP_PROTOCOLS


def _remote_local(f: FlowRecord, local: str | None, who: dict[str, str] | None = None
                  ) -> tuple[tuple[str, int], tuple[str, int]]:
    """(remote end, local end) of a flow: :func:`probe.addresses.ends`, except that an end
    held by the local host's machine (``who``, :func:`probe.addresses.machines`) is the
    local one (a peer that opened a flow to the host's other address)."""
    near, far = ends(f, local)
    if who and local is not None:
        mine = who.get(local)
        if mine is not None and who.get(far[0]) == mine and who.get(near[0]) != mine:
            near, far = far, near
    return far, near


def _org(app: str | None, remote: str) -> str | None:
    """Whose servers a call flow reaches: its app's organisation (WhatsApp, Messenger and
    Facebook calls share Meta's relays), else the published owner of its remote address."""
    if app is not None:
        return app_owner(app) or app
    owner = owner_of(remote)
    return owner.owner if owner is not None else None


def _sip_dialogs(flows: Sequence[FlowRecord], classes: dict[str, Classification]
                 ) -> dict[str, dict[str, Any]]:
    dialogs: dict[str, dict[str, Any]] = {}
    for f in flows:
        for m in classes[f.uid].facts.sip:
            if not m.call_id:
                continue
            d = dialogs.setdefault(m.call_id, {"flows": set(), "messages": [], "media": set(),
                                               "invite": False})
            d["flows"].add(f.uid)
            d["messages"].append(m)
            if m.method == "INVITE":
                d["invite"] = True
            for addr, port, _media, direction in m.media:
                d["media"].add((addr, port, direction))
    return {k: v for k, v in dialogs.items() if v["invite"]}


def _sip_outcome(messages: list[Any], capture_end: float, wait_s: float
                 ) -> tuple[Reason, dict[str, Any], list[int]] | None:
    """failed when the INVITE's final answer says the endpoints ended it; blocked when the
    INVITE got no response at all although the capture went on long enough."""
    invites = [m for m in messages if m.method == "INVITE"]
    if invites and not any(m.status is not None for m in messages):
        if capture_end - invites[0].ts >= wait_s:
            return Reason.SIP_UNANSWERED, {"invites": len(invites), "responses": 0,
                                           "waited_s": round(capture_end - invites[0].ts, 3)}, \
                [m.frame for m in invites]
        return None
    finals = [m for m in messages if m.status is not None and m.cseq_method == "INVITE"
              and m.status >= 300]
    answered = any(m.status is not None and 200 <= m.status < 300 and m.cseq_method == "INVITE"
                   for m in messages)
    if answered:
        return None
    real = [m for m in finals if m.status not in (401, 407)]  # auth challenges get retried
    if not real:
        return None
    last = real[-1]
    cancelled = any(m.method == "CANCEL" for m in messages) or last.status == 487
    reason = Reason.SIP_NO_ANSWER if cancelled else Reason.SIP_REJECTED
    rang = any(m.status in (180, 183) for m in messages)
    return reason, {"final": last.status, "rang": rang,
                    "reason_phrase": "cancelled before answer" if cancelled else "rejected"}, \
        [m.frame for m in messages]


def _call_uid(flow_uids: Sequence[str], dialog: str | None = None) -> str:
    """``K`` + 17 hex digits of a BLAKE2b digest of the call's flow uids and, for a SIP
    call, its dialog's Call-ID. Flow uids carry the capture's identity (see
    :mod:`probe.meter`), so a call uid names one call of one capture; the Call-ID tells
    apart the dialogs one pair of signalling flows carries (a retried or second call on
    the same SIP connection), which share every flow."""
    parts = sorted(flow_uids)
    if dialog is not None:
        parts.append("sip:" + dialog)
    return "K" + hashlib.blake2b("|".join(parts).encode(), digest_size=9).hexdigest()[:17]


def analyse_calls(flows: Sequence[FlowRecord], classes: Sequence[Classification],
                  policy: Policy | None = None,
                  congested: Sequence[CongestedPath] = ()) -> Analysis:
    """Calls with legs, quality and verdicts; and verdicts on interfered flows (flows
    outside the calls also judged against ``congested``: paths calls judged earlier
    showed congested)."""
    pol = policy or load_policy()
    by_uid = {f.uid: f for f in flows}
    cls = {c.uid: c for c in classes}
    call_flows = [f for f in flows if _is_call_flow(f, cls[f.uid])]
    local, others_answered, capture_end = _context(flows, call_flows)
    who = machines(flows)
    gap = pol.calls.same_call_gap_s
    delay_ms = pol.quality.assumed_network_delay_ms

    groups: list[list[FlowRecord]] = []
    extras: list[dict[str, Any]] = []
    outcomes: list[tuple[Reason, dict[str, Any], list[int]] | None] = []
    taken: set[str] = set()
    # SIP dialogs and the media their SDP announced.
    for call_id, d in sorted(_sip_dialogs(flows, cls).items(),
                             key=lambda kv: min(m.ts for m in kv[1]["messages"])):
        members = [by_uid[u] for u in sorted(d["flows"])]
        # RTP on the announced ports, RTCP on the next one up (RFC 3550 §11).
        endpoints = {(a, p + k) for a, p, _ in d["media"] for k in (0, 1)}
        for f in flows:
            if f.uid in d["flows"] or f.proto != "udp":
                continue
            if (f.orig_h, f.orig_p) in endpoints or (f.resp_h, f.resp_p) in endpoints:
                members.append(f)
        groups.append(members)
        directions = sorted({dr for _, _, dr in d["media"]})
        extras.append({"sip_call_id": call_id, "sdp_directions": directions})
        outcomes.append(_sip_outcome(d["messages"], capture_end,
                                     pol.blocked.sip_min_wait_s))
        taken.update(f.uid for f in members)
    n_sip = len(groups)
    # Everything else: union of call flows.
    cand = [f for f in call_flows if f.uid not in taken and not cls[f.uid].facts.sip]
    cand.sort(key=lambda f: (f.first_ts, f.uid))
    u = _Union(len(cand), [cls[f.uid].app if cls[f.uid].category in MEDIA_CATEGORIES
                           else None for f in cand])
    by_socket: dict[tuple[str, int], int] = {}
    for i, f in enumerate(cand):
        _, sock = _remote_local(f, local, who)
        if sock in by_socket:
            u.join(i, by_socket[sock])
        else:
            by_socket[sock] = i
    # Same local host talking to the same remote host, or to the same app, within the gap:
    # per key, flows sorted by start join while they overlap (with the gap) the run so far.
    # The local host is its machine: a dual-stack host's IPv4 and IPv6 candidates are one
    # call's; the app is its organisation (one relay network serves several apps).
    keyed: dict[tuple[str, str, str], list[int]] = {}
    for i, f in enumerate(cand):
        (rh, _), (lh, _) = _remote_local(f, local, who)
        lm = who.get(lh, lh)
        keyed.setdefault(("host", lm, rh), []).append(i)
        org = _org(cls[f.uid].app, rh)
        if org is not None:
            keyed.setdefault(("org", lm, org), []).append(i)
    for key, members_idx in keyed.items():
        run_end = -1.0
        prev = -1
        for i in members_idx:  # already in start order
            f = cand[i]
            if prev >= 0 and f.first_ts <= run_end + gap:
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
        extras.append({})
        outcomes.append(None)
    # Signalling flows of the same app or to the same remote hosts, just before or during.
    sig = [f for f in flows if f.uid not in taken and (
        cls[f.uid].facts.protocol in SIGNALLING_PROTOCOLS or f.proto == "tcp")]
    sig.sort(key=lambda f: f.first_ts)
    # Keyed by the local host too: in a capture of many hosts (an operator's vantage point)
    # another subscriber's connections are not this call's signalling.
    by_remote: dict[tuple[str, str], list[FlowRecord]] = {}
    by_app: dict[tuple[str, str], list[FlowRecord]] = {}
    for f in sig:
        (rh, _), (lh, _) = _remote_local(f, local, who)
        lm = who.get(lh, lh)
        by_remote.setdefault((lm, rh), []).append(f)
        if cls[f.uid].app is not None:
            by_app.setdefault((lm, str(cls[f.uid].app)), []).append(f)
    for members in groups[n_sip:]:
        ends = [_remote_local(f, local, who) for f in members]
        hosts = {who.get(lh, lh) for _, (lh, _) in ends}
        apps = {(lh, str(cls[f.uid].app)) for f in members if cls[f.uid].app is not None
                for lh in hosts}
        remotes = {(who.get(lh, lh), rh) for (rh, _), (lh, _) in ends}
        start = min(f.first_ts for f in members) - gap
        end = max(f.last_ts for f in members)
        have = {m.uid for m in members}
        # Signalling sets a call up: connections that start once media flows are the app's
        # other business (chat, downloads), not this call's (a call without media: its end).
        until = min((f.first_ts for f in members
                     if cls[f.uid].category in MEDIA_CATEGORIES), default=end)
        pools = [by_remote.get(r, []) for r in remotes] + [by_app.get(a, []) for a in apps]
        for pool in pools:
            lo = bisect.bisect_left(pool, start, key=lambda f: f.first_ts)
            for f in pool[lo:]:
                if f.first_ts > until:
                    break
                if f.uid not in have:
                    have.add(f.uid)
                    members.append(f)
    calls: list[Call] = []
    flow_verdicts: dict[str, Verdict] = {}
    single_ev: dict[str, list[Evidence]] = {}  # signalling flows sit in many calls: judge once

    def single(f: FlowRecord) -> list[Evidence]:
        ev = single_ev.get(f.uid)
        if ev is None:
            ev = single_ev[f.uid] = flow_rules(f, cls[f.uid], local, others_answered, pol,
                                               capture_end)
        return ev

    for members, extra, outcome in zip(groups, extras, outcomes, strict=True):
        members = sorted({f.uid: f for f in members}.values(), key=lambda f: (f.first_ts, f.uid))
        media_flows = [f for f in members if cls[f.uid].category in MEDIA_CATEGORIES
                       or (f.rtp_streams and cls[f.uid].facts.protocol == "rtp")]
        legs: list[Leg] = []
        for f in media_flows:
            legs.extend(flow_legs(f, local, cls[f.uid].media, delay_ms))
        reports = [r for f in members for r in cls[f.uid].facts.rtcp_reports]
        if reports:
            clocks = {s.ssrc: s.clock_hz for f in media_flows for s in f.rtp_streams}
            legs = with_rtcp(legs, reports, clocks)
        # "Other traffic flows": some flow besides the unanswered ones got answers.
        one_way = any(d in ("sendonly", "recvonly", "inactive")
                      for d in extra.get("sdp_directions", []))
        evidence = call_rules(members, cls, legs, media_flows, local, others_answered, outcome,
                              pol, one_way_by_design=one_way, capture_end=capture_end,
                              single=single)
        if _two_way_media(media_flows):
            # The call worked: a failed candidate path (ICMP, a refused side connection) is
            # the flow's story, not the call's. Unanswered connectivity checks and media
            # that got no return on a candidate pair to a host that carried no media both
            # ways are how ICE works (RFC 8445: most pairs fail by design) when another
            # path carried the media: no interference is shown, for the call or the flow.
            # On a host pair whose media did flow both ways, the same silence means those
            # messages alone were dropped, which a failed path does not explain.
            worked = {_remote_local(f, local, who)[0][0] for f in media_flows
                      if f.orig_pkts >= 10 and f.resp_pkts >= 10}
            failed_pair = [e for e in evidence
                           if e.reason in (Reason.STUN_UNANSWERED, Reason.MEDIA_NO_RETURN)
                           and not any(_remote_local(by_uid[u], local, who)[0][0] in worked
                                       for u in e.flow_uids if u in by_uid)]
            call_level = [e for e in evidence if e not in failed_pair and e.reason not in (
                Reason.ICMP_UNREACHABLE, Reason.TCP_RESET, Reason.SYN_UNANSWERED,
                Reason.TLS_RESET_AFTER_HELLO)]
            side = [e for e in evidence if e not in call_level and e not in failed_pair]
            evidence = call_level
            if failed_pair:
                extra = {**extra, "failed_paths": _failed_paths(failed_pair, by_uid, local,
                                                                who, worked)}
            for e in side:
                for uid in e.flow_uids:
                    flow_verdicts[uid] = verdict_from([e])
        if not evidence and "sip_call_id" not in extra and not _call_happened(
                members, media_flows, cls):
            continue
        media_s = max((f.duration_s for f in media_flows), default=0.0)
        unknown = not media_flows or media_s < pol.calls.min_media_s
        verdict = verdict_from(evidence, unknown=unknown and not outcome)
        app = _call_app(members, cls)
        media = tuple(sorted({leg.media for leg in legs if leg.media}))
        setup = _setup(members, cls, extra.get("sip_call_id"))
        # Media the classifier could not name still flows inside a call app's framing or
        # DTLS: their packets say whether the call was answered.
        carried = media_flows or [f for f in members if cls[f.uid].facts.framing is not None
                                  or cls[f.uid].facts.protocol == "dtls"]
        fate = _outcome(outcome, carried, local, who, verdict,
                        pol.calls.answered_packets)
        calls.append(Call(_call_uid([f.uid for f in members], extra.get("sip_call_id")),
                          app, media,
                          tuple(f.uid for f in members), min(f.first_ts for f in members),
                          max(f.last_ts for f in members), local, tuple(legs), setup, verdict,
                          fate, extra))
        for uid in {u for e in verdict.evidence for u in e.flow_uids
                    if len(e.flow_uids) == 1 and not e.rule.startswith("failed.")}:
            flow_verdicts[uid] = verdict_from([e for e in verdict.evidence
                                               if e.flow_uids == (uid,)])
    in_calls = {u for c in calls for u in c.flow_uids}
    seen = congested_paths([e for c in calls for e in c.verdict.evidence], by_uid)
    for f in flows:
        # a flow's own rules look at ICMP errors quoting it, and at TCP
        if f.uid in in_calls or not _own_rules_apply(f):
            continue
        ev = explained_by_congestion(single(f), [*seen, *congested], by_uid)
        if ev:
            flow_verdicts[f.uid] = verdict_from(ev)
    calls.sort(key=lambda c: (c.start_ts, c.uid))
    return Analysis(calls, flow_verdicts, seen)


def _context(flows: Sequence[FlowRecord], call_flows: Sequence[FlowRecord]
             ) -> tuple[str | None, bool, float]:
    """What the verdict rules take from all the flows judged together: the local host (by
    vote over the call flows, else over all), whether any flow was answered both ways, and
    the newest packet's time."""
    return (local_host(call_flows or list(flows)),
            any(f.resp_pkts > 0 and f.orig_pkts > 0 for f in flows),
            max((f.last_ts for f in flows), default=0.0))


def _own_rules_apply(f: FlowRecord) -> bool:
    """Whether a flow outside every call has rules of its own: those read ICMP errors that
    quote it and TCP handshakes."""
    return bool(f.icmp) or f.proto == "tcp"


def lone_flow_verdicts(flows: Sequence[FlowRecord], classes: Sequence[Classification],
                       judge: Sequence[FlowRecord], policy: Policy | None = None,
                       congested: Sequence[CongestedPath] = ()) -> dict[str, Verdict]:
    """Verdicts of the flows ``judge`` (a subset of ``flows``, none of them in a call) on
    their own packets, as :func:`analyse_calls` gives them to flows outside every call:
    ICMP errors quoting them and TCP handshakes, with the local side, "other flows were
    answered" and the capture's end taken from ``flows``, and the ``congested`` paths calls
    judged earlier showed explaining unanswered requests."""
    pol = policy or load_policy()
    cls = {c.uid: c for c in classes}
    local, others_answered, capture_end = _context(
        flows, [f for f in flows if _is_call_flow(f, cls[f.uid])])
    out: dict[str, Verdict] = {}
    for f in judge:
        if not _own_rules_apply(f):
            continue
        ev = explained_by_congestion(
            flow_rules(f, cls[f.uid], local, others_answered, pol, capture_end), congested,
            {f.uid: f})
        if ev:
            out[f.uid] = verdict_from(ev)
    return out


def is_call_flow(f: FlowRecord, c: Classification) -> bool:
    """Whether :func:`analyse_calls` builds calls on this flow (a call category, or a call
    set-up protocol over UDP) or on the dialog it carries (SIP)."""
    return _is_call_flow(f, c) or bool(c.facts.sip)


NAMED_BY_APP = frozenset({Method.STUN_REALM, Method.STUN_ATTR, Method.SNI, Method.QUIC_SNI,
                          Method.DNS, Method.DNS_QUERY, Method.SIP, Method.SDP})
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
            if c.app is not None and (not only_call or _is_call_flow(f, c)):
                votes[c.app] += 3 if c.method in NAMED_BY_APP else 1
        if votes:
            break
    if not votes:
        return None
    best = max(votes.values())
    return min(a for a, v in votes.items() if v == best)


TURN_PEER_METHODS = frozenset({0x006, 0x007, 0x008, 0x009})
"""TURN Send, Data, CreatePermission and ChannelBind (RFC 8656 §18): a relay is told
about, or carries traffic of, a peer."""


CALL_SIGNALLING = SETUP_PROTOCOLS - {"stun", "dtls", "rtcp"}
"""Protocols that exist to set up, carry or control calls (SIP, MGCP, H.323, Skinny, call
apps' own protocols): a flow of one is a call attempt. STUN and DTLS also serve relay
upkeep and data channels, so they count only once they reach a peer."""


def _real_time(f: FlowRecord, c: Classification) -> bool:
    """Whether a flow's own packets show real-time set-up or media structure (STUN, DTLS,
    RTP/RTCP, SIP, a call app's framing), not only packet statistics."""
    return (bool(f.rtp_streams) or c.facts.framing is not None or bool(c.facts.sip)
            or c.facts.protocol in SETUP_PROTOCOLS)


def _call_happened(members: Sequence[FlowRecord], media_flows: Sequence[FlowRecord],
                   cls: dict[str, Classification]) -> bool:
    """Whether a group of flows with no interference shown is a call. Media judged from
    packet statistics alone, in a group where no flow shows real-time structure, is no
    call (a QUIC transfer whose handshake the capture missed is bursty too); nor is
    set-up that never reached a peer: relay allocations, refreshes and keep-alives with
    the app's servers, which clients keep up between calls."""
    if any(_real_time(f, cls[f.uid]) for f in media_flows):
        return True
    if media_flows and not any(_real_time(f, cls[f.uid]) for f in members):
        return False
    if media_flows:
        return True
    for f in members:
        c = cls[f.uid]
        st = c.facts.stun
        if (c.facts.framing is not None or c.facts.sip or c.method is Method.CALL_PEER
                or c.facts.protocol in CALL_SIGNALLING):
            return True
        if st is not None and (st.orig_ice_checks or st.peers
                               or TURN_PEER_METHODS.intersection(st.methods)):
            return True
    return False


def _outcome(sip: tuple[Reason, dict[str, Any], list[int]] | None,
             media_flows: Sequence[FlowRecord], local: str | None, who: dict[str, str],
             verdict: Verdict, answered_packets: int) -> CallOutcome:
    """What became of a call: a SIP final answer says it; else packets each way (sent by
    the local end, received by it) over the flows that carry its media."""
    if sip is not None:
        return {Reason.SIP_REJECTED: CallOutcome.REJECTED,
                Reason.SIP_NO_ANSWER: CallOutcome.MISSED}.get(sip[0], CallOutcome.SETUP_FAILED)
    sent = received = 0
    for f in media_flows:
        mine = _remote_local(f, local, who)[1][0] == f.orig_h
        sent += f.orig_pkts if mine else f.resp_pkts
        received += f.resp_pkts if mine else f.orig_pkts
    if sent >= answered_packets and received >= answered_packets:
        return CallOutcome.ANSWERED
    if max(sent, received) >= answered_packets:
        return CallOutcome.ONE_WAY
    if verdict.kind in (VerdictKind.BLOCKED, VerdictKind.FAILED):
        return CallOutcome.SETUP_FAILED
    return CallOutcome.MISSED


def _failed_paths(failed: list[Evidence], by_uid: dict[str, FlowRecord], local: str | None,
                  who: dict[str, str], worked: set[str]) -> list[dict[str, Any]]:
    """What a call says of its candidate paths that never worked while another carried its
    media both ways: the rule that saw the silence, its flows, figures and frames, and the
    hosts that did answer. Listed so that the failed pair can be checked in the packets;
    no verdict rests on it (RFC 8445: most candidate pairs fail by design)."""
    out = []
    for e in failed:
        remotes = sorted({_remote_local(by_uid[u], local, who)[0][0] for u in e.flow_uids
                          if u in by_uid})
        out.append({"rule": e.rule, "reason": str(e.reason), "flow_uids": list(e.flow_uids),
                    "frames": list(e.frames), "figures": dict(e.figures),
                    "remote_hosts": remotes, "worked_via": sorted(worked),
                    "text": f"{e.text}; the call's media flowed both ways via "
                            f"{', '.join(sorted(worked))}: a candidate pair that failed, "
                            "not interference"})
    return out


def _two_way_media(media_flows: list[FlowRecord]) -> bool:
    return any(f.orig_pkts >= 10 and f.resp_pkts >= 10 for f in media_flows)


def _setup(members: list[FlowRecord], cls: dict[str, Classification],
           call_id: str | None = None) -> dict[str, Any]:
    stun_req = stun_ok = stun_err = 0
    sip: list[dict[str, Any]] = []
    tcp = {"connections": 0, "established": 0, "refused": 0, "unanswered": 0}
    tls = {"client_hellos": 0, "server_hellos": 0}
    for f in members:
        facts = cls[f.uid].facts
        if facts.stun is not None:
            stun_req += facts.stun.requests
            stun_ok += facts.stun.success
            stun_err += facts.stun.errors
        for m in facts.sip:
            if call_id is not None and m.call_id != call_id:
                continue
            sip.append({"ts": m.ts, "frame": m.frame,
                        "message": m.method or str(m.status), "call_id": m.call_id})
        if f.proto == "tcp":
            tcp["connections"] += 1
            state = f.conn_state
            if state in ("REJ",):
                tcp["refused"] += 1
            elif state in ("S0", "RSTOS0"):
                tcp["unanswered"] += 1
            elif state not in ("OTH",):
                tcp["established"] += 1
        if facts.client_hello:
            tls["client_hellos"] += 1
        if facts.server_hello:
            tls["server_hellos"] += 1
    first = min(f.first_ts for f in members)
    return {"stun": {"requests": stun_req, "success": stun_ok, "errors": stun_err},
            "sip": sorted(sip, key=lambda m: m["ts"]), "tcp": tcp, "tls": tls,
            "first_media_ts": min((f.first_ts for f in members
                                   if cls[f.uid].category in MEDIA_CATEGORIES), default=None),
            "setup_s": None if not any(cls[f.uid].category in MEDIA_CATEGORIES
                                       for f in members)
            else round(min(f.first_ts for f in members
                           if cls[f.uid].category in MEDIA_CATEGORIES) - first, 6)}
