"""Calls judged: the legs of each assembled call measured, the rules applied, a verdict
and an outcome given; and verdicts on flows whose own packets show interference.

:func:`analyse_calls` assembles the calls (:func:`policy.assembly.assemble_calls`: which
flows make a call, its SIP dialog and set-up), then judges each: its media legs
(:func:`policy.legs.flow_legs`, with the far side's RTCP reports), the rules
(:func:`policy.rules.call_rules`) with the capture's context, what became of the call
(answered, one-way, missed, rejected, set-up failed) and the flows the verdict rests on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from classifier.records import Classification, Method
from policy.assembly import (
    SETUP_PROTOCOLS,
    AssembledCall,
    Assembly,
    Sides,
    assemble_calls,
    vantage,
)
from policy.legs import flow_legs, reported_streams, with_rtcp
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
    CallCase,
    CallsPolicy,
    CongestedPath,
    HostTraffic,
    Policy,
    RuleContext,
    SipOutcome,
    call_rules,
    congested_paths,
    explained_by_congestion,
    flow_rules,
    icmp_prohibited,
    load_policy,
    sip_outcome,
    verdict_from,
)
from policy.window import FlowWindow
from probe import MeterConfig
from probe.addresses import local_host
from probe.records import ORIG, FlowRecord

__all__ = ["Analysis", "CallSpan", "analyse_calls", "analyse_window", "judge_calls",
           "lone_flow_verdicts"]


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
    waiting: list[CallSpan] = field(default_factory=list)
    """Calls assembled but not judged (:func:`judge_calls` with ``due``)."""
    no_calls: list[CallSpan] = field(default_factory=list)
    """Groups of flows judged to be no call that stay so whatever else the window holds
    (answered relay upkeep: :func:`_settles`), or given as ``settled`` (their local host,
    not asked for, None)."""

    def flow_verdict_list(self) -> list[FlowVerdict]:
        return [FlowVerdict(u, v) for u, v in self.flow_verdicts.items()]


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
                  congested: Sequence[CongestedPath] = (),
                  lone: Collection[str] | None = None,
                  due: Callable[[CallSpan], bool] | None = None,
                  settled: Collection[tuple[str, ...]] = ()) -> Analysis:
    """:func:`analyse_window` over a window of these flows (``classes``: one per flow)."""
    return analyse_window(FlowWindow.of(flows, classes), policy, congested, lone, due,
                          settled)


def analyse_window(window: FlowWindow, policy: Policy | None = None,
                   congested: Sequence[CongestedPath] = (),
                   lone: Collection[str] | None = None,
                   due: Callable[[CallSpan], bool] | None = None,
                   settled: Collection[tuple[str, ...]] = ()) -> Analysis:
    """Calls with legs, quality and verdicts; and verdicts on interfered flows (flows
    outside the calls also judged against ``congested``: paths calls judged earlier
    showed congested; only those of ``lone`` when given): the calls assembled
    (:func:`policy.assembly.assemble_calls`), then judged (:func:`judge_calls`; only
    those ``due`` asks for, and what they need, when given; groups of flows ``settled``
    as no call are not judged again)."""
    pol = policy or load_policy()
    return judge_calls(assemble_calls(window, pol.calls.same_call_gap_s), window, pol,
                       congested, lone, due, settled)


@dataclass(frozen=True, slots=True)
class CallSpan:
    """What an assembled call will be written with, known before it is judged: its flows,
    its span and its local host (the same as its :class:`Call`'s)."""

    flow_uids: tuple[str, ...]
    start_ts: float
    end_ts: float
    local: str | None


def judge_calls(assembly: Assembly, window: FlowWindow, pol: Policy,
                congested: Sequence[CongestedPath] = (),
                lone: Collection[str] | None = None,
                due: Callable[[CallSpan], bool] | None = None,
                settled: Collection[tuple[str, ...]] = ()) -> Analysis:
    """Each assembled call of the flows of ``window`` judged: legs, rules, verdict and
    outcome; calls that show no interference and are no call after all (relay upkeep, a
    transfer judged from packet statistics) dropped; and the verdicts of flows outside
    every call (those of ``lone`` when given: a caller that has settled the others'
    already), their unanswered requests explained by the paths these calls or
    ``congested`` showed congested.

    With ``due``, a caller that writes only some calls now (and the others later, from a
    window that has grown) has only those judged: the calls ``due`` says it writes, and
    any other whose judgement changes what it writes now: one that may turn out no call
    (its flows are then judged alone), one that shares a flow with a call written (the
    flow's verdict is the last call's to judge it, in the assembly's order), and all of
    them when a flow judged alone shows something their congestion may explain. The
    others come back in :attr:`Analysis.waiting`, unjudged; the result is otherwise the
    one judging every call gives.

    A group whose flows (by uid, in the assembly's order) are among ``settled`` was
    judged to be no call when a caller wrote it, and no other flow can change that
    (:func:`_settles`): it is taken as no call again without being judged (its flows
    stay in the window as context; a flow that joins it makes another group, judged
    afresh)."""
    by_uid = window.flows
    cls = window.classes
    local, sides = assembly.local, assembly.sides
    ctx = RuleContext(pol, cls, local, assembly.others_answered, assembly.capture_end,
                      window.services_up, HostTraffic(window), window.service_tries)
    single_ev: dict[str, list[Evidence]] = {}  # signalling flows sit in many calls: judge once

    def single(f: FlowRecord) -> list[Evidence]:
        ev = single_ev.get(f.uid)
        if ev is None:
            ev = single_ev[f.uid] = flow_rules(f, ctx)
        return ev

    done = {i for i, call in enumerate(assembly.calls)
            if _settles(call) and tuple(f.uid for f in call.flows) in settled}
    # a settled group's local host is not asked for: it is not judged, nor written
    spans = [_span(call, None if i in done else _call_local(call, local, sides))
             for i, call in enumerate(assembly.calls)]
    judged: dict[int, tuple[Call | None, dict[str, Verdict]]] = {i: (None, {}) for i in done}

    def judge(i: int) -> None:
        call, span = assembly.calls[i], spans[i]
        verdicts: dict[str, Verdict] = {}
        if span.local == local:
            got = _judge(call, ctx, sides, by_uid, single, verdicts)
        else:  # ``single`` stays valid: flow_rules does not read the local host
            got = _judge(call, replace(ctx, local=span.local), Sides(span.local, sides.who),
                         by_uid, single, verdicts)
        if got is not None:
            for uid in {u for e in got.verdict.evidence for u in e.flow_uids
                        if len(e.flow_uids) == 1 and not e.rule.startswith("failed.")}:
                verdicts[uid] = verdict_from([e for e in got.verdict.evidence
                                              if e.flow_uids == (uid,)])
        judged[i] = (got, verdicts)

    if due is None:
        wanted = set(range(len(spans)))
    else:
        wanted = {i for i, s in enumerate(spans) if i not in judged and due(s)}
        written = {u for i in wanted for u in spans[i].flow_uids}
        wanted.update(i for i, call in enumerate(assembly.calls)
                      if (call.dialog is None
                          and not _call_happened(call.flows, call.media_flows, cls))
                      or not written.isdisjoint(spans[i].flow_uids))
    for i in sorted(wanted - judged.keys()):
        judge(i)
    in_calls = {u for i, s in enumerate(spans)
                if i not in judged or judged[i][0] is not None for u in s.flow_uids}
    alone: dict[str, list[Evidence]] = {}
    for f in window.ordered(None if lone is None else (u for u in lone if u in window)):
        # a flow's own rules look at ICMP errors quoting it, and at TCP
        if f.uid in in_calls or not _own_rules_apply(f):
            continue
        alone[f.uid] = flow_rules(f, ctx, lone=True)
    if any(alone.values()):  # the congestion every call shows may explain them
        for i in range(len(spans)):
            if i not in judged:
                judge(i)
    calls: list[Call] = []
    flow_verdicts: dict[str, Verdict] = {}
    for i in sorted(judged):
        got, verdicts = judged[i]
        flow_verdicts.update(verdicts)
        if got is not None:
            calls.append(got)
    seen = congested_paths([e for c in calls for e in c.verdict.evidence], by_uid)
    for uid, own in alone.items():
        ev = explained_by_congestion(own, [*seen, *congested], by_uid)
        if ev:
            flow_verdicts[uid] = verdict_from(ev)
    calls.sort(key=lambda c: (c.start_ts, c.uid))
    return Analysis(calls, flow_verdicts, seen,
                    [s for i, s in enumerate(spans) if i not in judged],
                    [spans[i] for i in sorted(judged)
                     if judged[i][0] is None and _settles(assembly.calls[i])])


def _settles(call: AssembledCall) -> bool:
    """Whether a group judged to be no call stays no call however the rest of the window
    changes: every flow of it UDP, answered both ways, with no ICMP error quoting it (no
    SIP dialog). Nothing then for a rule that reads silence, a reset or an error, the
    rules whose reading depends on the other flows (whether anything else was answered,
    how long the capture went on, which IP versions reached past the link): unanswered
    STUN that a later answered flow shows to be a block is judged again at every settle."""
    return call.dialog is None and all(
        f.proto == "udp" and f.orig_pkts > 0 and f.resp_pkts > 0 and not f.icmp
        for f in call.flows)


def _span(call: AssembledCall, local: str | None) -> CallSpan:
    members = call.flows
    return CallSpan(tuple(f.uid for f in members), min(f.first_ts for f in members),
                    max(f.last_ts for f in members), local)


_SIP_KEPT = MeterConfig().payload_samples + MeterConfig().signal_samples
"""SIP messages the probe keeps per direction of a flow (its default settings)."""


def _call_local(call: AssembledCall, local: str | None, sides: Sides) -> str | None:
    """The local host of one call: the capture's (:func:`policy.assembly.vantage`) when
    its machine is an end of one of the call's flows, else the call's own by the same
    vote. A tap that carries many subscribers' calls is beside each caller in turn."""
    if local is None:
        return None
    mine = sides.machine(local)
    if any(sides.machine(f.orig_h) == mine or sides.machine(f.resp_h) == mine
           for f in call.flows):
        return local
    return local_host(call.flows) or local


def _judge(call: AssembledCall, ctx: RuleContext, sides: Sides,
           by_uid: dict[str, FlowRecord], single: Callable[[FlowRecord], list[Evidence]],
           flow_verdicts: dict[str, Verdict]) -> Call | None:
    """One assembled call judged; None when it shows no interference and is no call after
    all. The verdicts of its flows' failed side paths go into ``flow_verdicts``."""
    pol, cls, local = ctx.policy, ctx.classes, ctx.local
    members, media_flows, dialog = call.flows, call.media_flows, call.dialog
    legs: list[Leg] = []
    streams = go_live_streams(call.app, members, cls, sides)
    for f in media_flows:
        kind = "screen" if f.uid in streams and cls[f.uid].media == "video" else cls[f.uid].media
        legs.extend(flow_legs(f, local, kind, pol.quality.assumed_network_delay_ms))
    reports = [r for f in members for r in cls[f.uid].facts.rtcp_reports]
    if reports:
        clocks = {s.ssrc: s.clock_hz for f in media_flows for s in f.rtp_streams}
        legs = with_rtcp(legs, reports, clocks)
    seen = {s.ssrc for f in members for s in f.rtp_streams}
    seen.update(leg.ssrc for leg in legs if leg.ssrc is not None)
    reported = tuple(reported_streams([(f, cls[f.uid].facts.rtcp_sender_info) for f in members
                                       if cls[f.uid].facts.rtcp_sender_info], local, seen))
    sip = None if dialog is None else sip_outcome(
        dialog, ctx.capture_end, pol.blocked.sip_min_wait_s,
        resends_seen=all(by_uid[u].proto == "udp"
                         and max(by_uid[u].orig_pkts, by_uid[u].resp_pkts) <= _SIP_KEPT
                         for u in dialog.flow_uids if u in by_uid))
    extra: dict[str, Any] = {} if dialog is None else {
        "sip_call_id": dialog.call_id, "sdp_directions": dialog.directions}
    if streams:
        extra["go_live_flows"] = sorted(streams)
    evidence = call_rules(CallCase(members, media_flows, legs, sip,
                                   dialog is not None and dialog.one_way_by_design, call.app),
                          ctx, single)
    if _two_way_media(media_flows):
        # The call worked: a failed candidate path (ICMP, a refused side connection) is
        # the flow's story, not the call's. Unanswered connectivity checks and media
        # that got no return on a candidate pair to a host that carried no media both
        # ways are how ICE works (RFC 8445: most pairs fail by design) when another
        # path carried the media: no interference is shown, for the call or the flow.
        # On a host pair whose media did flow both ways, the same silence means those
        # messages alone were dropped, which a failed path does not explain.
        worked = {sides(f)[0][0] for f in media_flows
                  if f.orig_pkts >= 10 and f.resp_pkts >= 10}
        # A router's unreachable quoting a UDP check to such a host is the same failed
        # pair; a router's "administratively prohibited" says the network refused it.
        failed_pair = [e for e in evidence
                       if (e.reason in (Reason.STUN_UNANSWERED, Reason.MEDIA_NO_RETURN)
                           or _unreachable_pair(e, by_uid))
                       and not any(sides(by_uid[u])[0][0] in worked
                                   for u in e.flow_uids if u in by_uid)]
        call_level = [e for e in evidence if e not in failed_pair and e.reason not in (
            Reason.ICMP_UNREACHABLE, Reason.TCP_RESET, Reason.SYN_UNANSWERED,
            Reason.TLS_RESET_AFTER_HELLO)]
        side = [e for e in evidence if e not in call_level and e not in failed_pair]
        evidence = call_level
        if failed_pair:
            extra["failed_paths"] = _failed_paths(failed_pair, by_uid, sides, worked)
        for e in side:
            for uid in e.flow_uids:
                flow_verdicts[uid] = verdict_from([e])
    if not evidence and dialog is None and not _call_happened(members, media_flows, cls):
        return None
    media_s = max((f.duration_s for f in media_flows), default=0.0)
    unknown = not media_flows or media_s < pol.calls.min_media_s
    verdict = verdict_from(evidence, unknown=unknown and not sip)
    # A stream the local side says it sent is media it sent; one the far end says it
    # sent, with none of it seen arriving, is no media received (it may have been lost).
    media = tuple(sorted({leg.media for leg in legs if leg.media}
                         | {r.media for r in reported if r.direction == "out"}))
    # Media the classifier could not name still flows inside a call app's framing or
    # DTLS: their packets say whether the call was answered.
    carried = media_flows or tuple(f for f in members if cls[f.uid].facts.framing is not None
                                   or cls[f.uid].facts.protocol == "dtls")
    fate = _outcome(sip, carried, sides, verdict, pol.calls,
                    dialog is not None and dialog.answered)
    if (fate is not CallOutcome.ANSWERED and verdict.kind is VerdictKind.OK
            and not (dialog is not None and dialog.answered)):
        # Nothing shows interference, and nothing shows a conversation either: media
        # that did not flow both ways (a ringback, comfort noise) is no call to call ok.
        verdict = Verdict(VerdictKind.UNKNOWN, (Reason.NO_TWO_WAY_MEDIA,), ())
    early: tuple[Leg, ...] = ()
    if fate is CallOutcome.MISSED and legs and verdict.kind is VerdictKind.UNKNOWN:
        # Media heard while it rang (a ringback, an announcement: RFC 3960's early
        # media) is no media of the call: its legs are kept as early media. Legs a
        # verdict rests on (loss, delay) stay the call's legs, where its figures are.
        early, legs, media = tuple(legs), [], ()
    return Call(_call_uid([f.uid for f in members], None if dialog is None else dialog.call_id),
                call.app, media, tuple(f.uid for f in members),
                min(f.first_ts for f in members), max(f.last_ts for f in members), local,
                tuple(legs), call.setup, verdict, fate, extra, reported, early)


def go_live_streams(app: str | None, members: Sequence[FlowRecord],
                    cls: Mapping[str, Classification], sides: Sides) -> frozenset[str]:
    """The flows of a Discord call that carry a Go Live stream (a shared screen or
    window, with its sound).

    Discord's client sends the microphone and the camera over its voice connection, and
    a Go Live stream over a separate connection to another voice server (Discord's
    client protocol, "Voice Connections", as the Discord Userdoccers document it:
    docs.discord.food). So a Discord voice connection to another server that opened
    while an earlier one was still going carries a stream, whichever way (the
    streamer's, or a viewer's): its video is screen content. A move to another voice
    server (the first connection over before the next began) is no stream."""
    if app != "discord":
        return frozenset()
    conns = sorted((f for f in members if f.proto == "udp" and cls[f.uid].app == "discord"
                    and (cls[f.uid].media is not None or cls[f.uid].facts.framing == "discord")),
                   key=lambda f: (f.first_ts, f.uid))
    out = set()
    for i, f in enumerate(conns):
        server = sides(f)[0][0]
        if any(e.first_ts < f.first_ts < e.last_ts and sides(e)[0][0] != server
               for e in conns[:i]):
            out.add(f.uid)
    return frozenset(out)


def _own_rules_apply(f: FlowRecord) -> bool:
    """Whether a flow outside every call has rules of its own: those read ICMP errors that
    quote it and TCP handshakes."""
    return bool(f.icmp) or f.proto == "tcp"


def lone_flow_verdicts(window: FlowWindow, judge: Sequence[FlowRecord],
                       policy: Policy | None = None,
                       congested: Sequence[CongestedPath] = ()) -> dict[str, Verdict]:
    """Verdicts of the flows ``judge`` (flows of ``window``, none of them in a call) on
    their own packets, as :func:`analyse_calls` gives them to flows outside every call:
    ICMP errors quoting them and TCP handshakes, with the local side, "other flows were
    answered" and the capture's end taken from the window, and the ``congested`` paths
    calls judged earlier showed explaining unanswered requests."""
    pol = policy or load_policy()
    ctx = RuleContext(pol, window.classes, *vantage(window), window.services_up,
                      HostTraffic(window), window.service_tries)
    out: dict[str, Verdict] = {}
    for f in judge:
        if not _own_rules_apply(f):
            continue
        ev = explained_by_congestion(flow_rules(f, ctx, lone=True), congested, {f.uid: f})
        if ev:
            out[f.uid] = verdict_from(ev)
    return out


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
                   cls: Mapping[str, Classification]) -> bool:
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


def _outcome(sip: SipOutcome | None, media_flows: Sequence[FlowRecord], sides: Sides,
             verdict: Verdict, pol: CallsPolicy, sip_answered: bool) -> CallOutcome:
    """What became of a call: a SIP final answer says it; else media packets each way
    (sent by the local end, received by it) over the flows that carry its media
    (:func:`_content_packets`).

    Media received while the local end, whose RTP the probe read, sent almost none
    (fewer than ``calls.answered_packets`` packets of content: comfort noise does not
    count), over a span of the media flows no longer than a phone rings
    (``calls.ringing_max_s``), is a call that rang out: the caller heard a ringback or
    an announcement (early media, RFC 3960) and nobody spoke on its side; unless a SIP
    2xx answered it (a silent caller). A local end whose packets the capture does not
    hold (a capture of one direction) shows nothing of the kind: one-way."""
    if sip is not None:
        return {Reason.SIP_REJECTED: CallOutcome.REJECTED,
                Reason.SIP_NO_ANSWER: CallOutcome.MISSED}.get(sip.reason,
                                                               CallOutcome.SETUP_FAILED)
    sent = received = 0
    local_rtp_read = False
    for f in media_flows:
        mine = sides(f)[1][0] == f.orig_h
        orig, resp = _content_packets(f)
        sent += orig if mine else resp
        received += resp if mine else orig
        local_rtp_read |= any((s.direction == ORIG) == mine for s in f.rtp_streams)
    answered_packets = pol.answered_packets
    if sent >= answered_packets and received >= answered_packets:
        return CallOutcome.ANSWERED
    if (received >= answered_packets and local_rtp_read and not sip_answered
            and (max(f.last_ts for f in media_flows) - min(f.first_ts for f in media_flows)
                 <= pol.ringing_max_s)):
        return CallOutcome.MISSED
    if max(sent, received) >= answered_packets:
        return CallOutcome.ONE_WAY
    if verdict.kind in (VerdictKind.BLOCKED, VerdictKind.FAILED):
        return CallOutcome.SETUP_FAILED
    return CallOutcome.MISSED


def _content_packets(f: FlowRecord) -> tuple[int, int]:
    """Packets that carried media content, sent by the originator and by the responder.

    A direction the probe read RTP streams from is judged by its RTP: its packets less
    those that carried comfort noise (RFC 3389), which a client with silence
    suppression sends while nobody speaks. A direction whose streams are all comfort
    noise sent no media, and its other packets (RTCP, STUN checks, DTLS) are control
    around the media, not media. A direction without any RTP stream keeps its packet
    count: its media, if any, travels in a framing the probe cannot read."""
    out = [f.orig_pkts, f.resp_pkts]
    seen = [False, False]
    for s in f.rtp_streams:
        d = 0 if s.direction == ORIG else 1
        if not seen[d]:
            seen[d], out[d] = True, 0
        out[d] += s.packets - s.cn_packets
    return out[0], out[1]


def _failed_paths(failed: list[Evidence], by_uid: dict[str, FlowRecord], sides: Sides,
                  worked: set[str]) -> list[dict[str, Any]]:
    """What a call says of its candidate paths that never worked while another carried its
    media both ways: the rule that saw the silence, its flows, figures and frames, and the
    hosts that did answer. Listed so that the failed pair can be checked in the packets;
    no verdict rests on it (RFC 8445: most candidate pairs fail by design)."""
    out = []
    for e in failed:
        remotes = sorted({sides(by_uid[u])[0][0] for u in e.flow_uids
                          if u in by_uid})
        out.append({"rule": e.rule, "reason": str(e.reason), "flow_uids": list(e.flow_uids),
                    "frames": list(e.frames), "figures": dict(e.figures),
                    "remote_hosts": remotes, "worked_via": sorted(worked),
                    "text": f"{e.text}; the call's media flowed both ways via "
                            f"{', '.join(sorted(worked))}: a candidate pair that failed, "
                            "not interference"})
    return out


def _unreachable_pair(e: Evidence, by_uid: dict[str, FlowRecord]) -> bool:
    """Whether ``e`` is an ICMP unreachable quoting UDP flows only, and not a router's
    "administratively prohibited" (the network refusing the path). A prohibition the
    destination sent itself is its own firewall's: a pair that failed, like any other."""
    flows = [by_uid[u] for u in e.flow_uids if u in by_uid]
    if e.reason is not Reason.ICMP_UNREACHABLE or not flows or any(
            f.proto != "udp" for f in flows):
        return False
    return not any(icmp_prohibited(n.family, n.code) and n.reporter not in (f.orig_h, f.resp_h)
                   for f in flows for n in f.icmp if n.frame in e.frames)


def _two_way_media(media_flows: Sequence[FlowRecord]) -> bool:
    return any(f.orig_pkts >= 10 and f.resp_pkts >= 10 for f in media_flows)
