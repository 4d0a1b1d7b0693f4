"""The one analysis pipeline: flows in as the probe ends them; classifications, calls and
verdicts out as they settle. Every entry point runs it — ``marsad analyze`` in every output
format, ``marsad report``, the service's jobs and the live probe — so a capture gives the
same labels, calls and verdicts whichever way it is read.

What is decided when depends on the capture's own clock, never on how the input was cut
into batches, on the wall clock or on the output format:

* the probe hands over each finished flow and, after each batch, a
  :class:`~probe.run.Watermark`: every flow whose timeout had run out by the watermark's
  time has been handed over before it;
* at points of a fixed grid of capture time (``cut_s``), the flows whose timeout ran out
  before the point are *settled*: they are classified together (the classifier's two
  passes, with what it learned from earlier flows) and join the *window*;
* the window is grouped into calls (:func:`policy.calls.analyse_window`); a call is
  written once the capture's clock has passed its end by ``call_settle_s`` and no UDP
  flow that may be another of its streams (between its local host and one of its remote
  hosts, on one of its local sockets, or of its local host and started during the call)
  and started before that is still going or waiting to settle (the watermark lists the
  flows still open), or at the latest ``call_hold_s`` after its end; its flows then
  leave the window. A flow's own verdict is written once the clock has passed its end
  by ``call_settle_s``;
* flows that are neither in a call nor still young leave the window after ``window_s``,
  so memory follows the traffic of the last minutes, not the capture;
* at the end of input everything left is settled, grouped and written.

A grid point is visited only when something can change there (a flow's timeout runs out,
a call or a flow verdict is due), so a jump in capture time costs nothing.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from classifier.engine import Classifier, Observation
from classifier.payloads import meter_config
from classifier.records import Classification
from policy.assembly import is_call_flow
from policy.calls import Analysis, CallSpan, analyse_window, lone_flow_verdicts
from policy.records import Call, Verdict
from policy.rules import CongestedPath, Policy, congested_paths, load_policy
from policy.settling import PipelineConfig
from policy.window import FlowWindow
from probe import FlowReader, FlowRecord, MeterConfig, ReadStatus, Weird
from probe.addresses import ends
from probe.meter import NO_OPEN_FLOWS, EndStarts, MeterStats, OpenFlows
from probe.run import Watermark

__all__ = ["AnalysisResult", "Pipeline", "PipelineConfig", "Step", "analyze_flows",
           "flow_row", "run_capture", "with_verdict"]

_EPSILON_S = 1e-3
"""Margin between a flow's timeout and a grid point (float rounding of ns timestamps)."""


@dataclass(slots=True)
class Step:
    """What one grid point (or the end of input) settled."""

    flows: list[tuple[FlowRecord, Classification]] = field(default_factory=list)
    """Flows classified, by first packet."""
    calls: list[Call] = field(default_factory=list)
    """Calls written, by start."""
    flow_verdicts: dict[str, Verdict] = field(default_factory=dict)
    """Flow verdicts written."""
    window: dict[str, tuple[FlowRecord, Classification]] = field(default_factory=dict)
    """The flows (and classifications) the calls and verdicts above rest on, by uid."""

    def __bool__(self) -> bool:
        return bool(self.flows or self.calls or self.flow_verdicts)


class Pipeline:
    """Classifies, groups and judges flows handed over as the probe ends them.

    Feed it with :meth:`push` (a flow and its :meth:`Classifier.observe` observation) and
    :meth:`advance` (each watermark), then :meth:`finish`; each returns the
    :class:`Step` objects it settled, in order.
    """

    def __init__(self, policy: Policy | None = None, meter: MeterConfig | None = None, *,
                 fingerprints: bool = False, config: PipelineConfig | None = None) -> None:
        self.policy = policy or load_policy()
        self.meter = meter or meter_config()
        self.cfg = config or PipelineConfig()
        self.classifier = Classifier(fingerprints=fingerprints)
        self._pending: dict[str, tuple[FlowRecord, Observation]] = {}
        self._window = FlowWindow()
        """The settled flows calls are assembled and judged from (see the module
        docstring)."""
        self._judged: set[str] = set()
        """Window flows whose own verdict is settled (written, or none)."""
        self._unjudged: dict[str, None] = {}
        """The other window flows, in the window's order."""
        self._judged_ends: list[tuple[float, str]] = []
        """Heap of (last packet time, uid) of judged flows: which leave the window next."""
        self._no_calls: set[tuple[str, ...]] = set()
        """Groups of window flows written as no call (their flows' uids): not judged
        again."""
        self._leaving: set[str] = set()
        """Judged flows older than the window kept while a call still to be written has
        them."""
        self._due_calls: list[float] = []
        """When each call found in the window but not yet written is next looked at."""
        self._in_due: set[str] = set()
        """Window flows of those calls (judged with them)."""
        self._clock = -math.inf
        self._first_ripe = math.inf
        """The earliest time at which a pending flow's timeout runs out."""
        self._first_due = math.inf
        """The earliest time at which a call or a window flow's verdict comes due."""
        self._open_udp: OpenFlows = NO_OPEN_FLOWS
        self._pending_udp: EndStarts | None = None
        """When the pending UDP flows started, by each end (built when first asked)."""
        self._congested: list[CongestedPath] = []
        """Paths written calls showed congested, kept for the window's length: they explain
        unanswered requests of flows judged after the call."""
        """The UDP flows the probe has not ended yet."""

    @property
    def clock(self) -> float:
        """The last grid point settled, in capture time (-inf before the first, inf after
        :meth:`finish`): the window holds flows whose last packet is up to ``window_s``
        before it, and those of calls still due."""
        return self._clock

    @property
    def observe(self) -> Callable[[FlowRecord], Observation]:
        """The order-free observation :meth:`push` wants with each flow."""
        return self.classifier.observe

    # -- input ----------------------------------------------------------------------------
    def push(self, flow: FlowRecord, observation: Observation) -> None:
        """A flow the probe ended (lightened or not), with its observation."""
        self._pending[flow.uid] = (flow, observation)
        self._pending_udp = None
        self._first_ripe = min(self._first_ripe, self._ripe_at(flow))

    def advance(self, watermark: Watermark) -> list[Step]:
        """The probe's clock reached ``watermark``: settle every grid point up to it."""
        self._open_udp = watermark.open_udp
        steps: list[Step] = []
        while True:
            point = self._next_point()
            if point is None or point > watermark.ts:
                break
            step = self._settle(point, final=False)
            if step:
                steps.append(step)
        return steps

    def finish(self) -> Step:
        """End of input: settle, group and write everything left. The pipeline takes no
        flow after it (its clock stands at infinity and its window is gone)."""
        return self._settle(math.inf, final=True)

    # -- settling -------------------------------------------------------------------------
    def _ripe_at(self, flow: FlowRecord) -> float:
        return flow.last_ts + self.meter.timeout_s(flow) + _EPSILON_S

    def _next_point(self) -> float | None:
        """The first grid point after the last one visited at which something settles."""
        first = min(self._first_ripe, self._first_due)
        if first == math.inf:
            return None
        g = self.cfg.cut_s
        point = (math.floor(first / g) + 1) * g  # the first grid point after it
        if self._clock > -math.inf:
            point = max(point, (math.floor(self._clock / g) + 1) * g)
        return point

    def _settle(self, point: float, final: bool) -> Step:
        step = self._settle_at(point, final)
        self._first_ripe = min((self._ripe_at(f) for f, _ in self._pending.values()),
                               default=math.inf)
        settle = self.cfg.call_settle_s
        flows = self._window.flows
        self._first_due = min([*self._due_calls,
                               *(flows[u].last_ts + settle for u in self._unjudged
                                 if u not in self._in_due)],
                              default=math.inf)
        return step

    def _settle_at(self, point: float, final: bool) -> Step:
        self._clock = point
        step = Step()
        ripe = [fo for fo in self._pending.values() if final or self._ripe_at(fo[0]) < point]
        if ripe:
            for f, _ in ripe:
                del self._pending[f.uid]
            self._pending_udp = None
            ripe.sort(key=lambda fo: (fo[0].first_frame, fo[0].uid))
            flows = [f for f, _ in ripe]
            classes = self.classifier.classify_all(flows, {f.uid: o for f, o in ripe})
            for f, c in zip(flows, classes, strict=True):
                self._window.add(f, c)
                if f.uid not in self._judged:
                    self._unjudged[f.uid] = None
                step.flows.append((f, c))
        if not self._window:
            return step
        settle = self.cfg.call_settle_s
        if not (final or any(is_call_flow(f, c) for f, c in step.flows)
                or any(t <= point for t in self._due_calls)):
            # No call can have changed or come due: only flows outside every call settle.
            self._judge_alone(point, step)
            return step
        # Only the flows whose own verdict may be written now need one.
        lone = {u for u in self._unjudged
                if final or self._window.flows[u].last_ts + settle <= point}
        by_uid = self._window.flows
        written: dict[tuple[str, ...], bool] = {}

        def due(span: CallSpan) -> bool:
            """Whether a call is written now (a call not written is judged again later,
            from the window it is written from: only those written need judging now)."""
            end = span.end_ts
            w = written[span.flow_uids] = (
                final or end + self.cfg.call_hold_s <= point
                or (end + settle <= point and self._going(span, by_uid) > end + settle))
            return w

        analysis = analyse_window(self._window, self.policy, self._congested, lone, due,
                                  self._no_calls)
        self._no_calls.update(s.flow_uids for s in analysis.no_calls
                              if written.get(s.flow_uids))
        done: set[str] = set()
        for call in analysis.calls:
            if written[call.flow_uids]:
                step.calls.append(call)
                done.update(call.flow_uids)
                self._congested.extend(congested_paths(call.verdict.evidence, by_uid))
        calls: list[Call | CallSpan] = [*analysis.calls, *analysis.waiting]
        # held (a stream may still be going), or not due yet
        self._due_calls = [c.end_ts + (self.cfg.call_hold_s if c.end_ts + settle <= point
                                       else settle)
                           for c in calls if not written[c.flow_uids]]
        self._in_due = {u for c in calls for u in c.flow_uids if u not in done}
        in_calls = {u for c in calls for u in c.flow_uids}
        for uid in list(self._unjudged):
            f, c = self._window[uid]
            if uid in self._in_due or not (final or f.last_ts + settle <= point):
                continue
            if not final and uid not in in_calls and self._held_alone(f, c, point):
                continue
            self._judge(uid)
            v = analysis.flow_verdicts.get(uid)
            if v is not None:
                step.flow_verdicts[uid] = v
        for uid in done:  # a written call's flows' verdicts go with it
            v = analysis.flow_verdicts.get(uid)
            if v is not None and uid not in self._judged:
                step.flow_verdicts[uid] = v
            self._judge(uid)
        step.window = {f.uid: (f, self._window.classes[f.uid]) for f in self._window.ordered(
            u for u in done | set(step.flow_verdicts) if u in self._window)}
        self._forget(point, done, final)
        return step

    def _judge(self, uid: str) -> None:
        """A window flow's own verdict is settled."""
        if uid not in self._judged:
            self._judged.add(uid)
            del self._unjudged[uid]
            heapq.heappush(self._judged_ends, (self._window.flows[uid].last_ts, uid))

    def _held_alone(self, f: FlowRecord, c: Classification, point: float) -> bool:
        """Whether a flow in no call is held at ``point``. A call flow: set-up alone is no
        call, but the call's other streams may still be going, and the call they make would
        judge it (held no longer than ``call_hold_s``). A TCP handshake nobody answered:
        a call to the same host that was going when it tried may show the path congested,
        which explains the silence; it waits until those streams have ended."""
        if is_call_flow(f, c):
            return (f.last_ts + self.cfg.call_hold_s > point
                    and self._earliest_related([f], ends(f)[0][0], f.first_ts)
                    <= f.last_ts + self.cfg.call_settle_s)
        return (f.proto == "tcp" and f.conn_state in ("S0", "RSTOS0")
                and self._earliest_related([f], ends(f)[0][0], math.inf) <= f.last_ts)

    def _going(self, call: Call | CallSpan, flows: dict[str, FlowRecord]) -> float:
        """Start of the earliest UDP flow, not settled yet, that may be another stream of
        ``call`` (:meth:`_earliest_related`); infinity when there is none."""
        return self._earliest_related([flows[u] for u in call.flow_uids], call.local,
                                      call.start_ts)

    def _earliest_related(self, members: list[FlowRecord], local_host: str | None,
                          since: float) -> float:
        """Start of the earliest UDP flow, not settled yet, that may be another stream of
        the call ``members`` make: one between its local host and a remote host of theirs,
        or on one of their local sockets (ICE uses one local port for every candidate
        pair), or one of the local host's that started since ``since`` (a stream to another
        relay); infinity when there is none. Another host's stream to the same relay or
        server is not this call's (a capture of many subscribers: one relay serves them
        all). A member with neither end at ``local_host``: any flow to either of its ends."""
        hosts: set[str] = set()
        pairs: set[tuple[str, str]] = set()
        sockets: set[tuple[str, int]] = set()
        for f in members:
            if f.orig_h == local_host:
                pairs.add((f.orig_h, f.resp_h))
                sockets.add((f.orig_h, f.orig_p))
            elif f.resp_h == local_host:
                pairs.add((f.resp_h, f.orig_h))
                sockets.add((f.resp_h, f.resp_p))
            else:
                hosts.update((f.orig_h, f.resp_h))
        local = {local_host} if local_host is not None else set()
        pending = self._pending_udp
        if pending is None:
            pending = self._pending_udp = EndStarts()
            pending.add_many((f.orig_h, f.orig_p, f.resp_h, f.resp_p, f.first_ts)
                             for f, _ in self._pending.values() if f.proto == "udp")
        return min(self._open_udp.earliest_touching(hosts, sockets, pairs=pairs),
                   self._open_udp.earliest_touching(local, (), since=since),
                   pending.earliest(hosts, sockets, pairs=pairs),
                   pending.earliest(local, (), since=since))

    def _judge_alone(self, point: float, step: Step) -> None:
        """Settle the verdicts of window flows outside every call whose time has come."""
        settle = self.cfg.call_settle_s
        window = self._window
        ripe = window.ordered(
            u for u in self._unjudged
            if u not in self._in_due and window.flows[u].last_ts + settle <= point
            and not self._held_alone(*window[u], point))
        if ripe:
            verdicts = lone_flow_verdicts(window, ripe, self.policy, self._congested)
            for f in ripe:
                self._judge(f.uid)
            step.flow_verdicts.update(verdicts)
            step.window = {u: self._window[u] for u in verdicts}
        self._forget(point, set(), final=False)

    def _forget(self, point: float, done: set[str], final: bool) -> None:
        """Drop the written calls' flows, and judged flows older than the window."""
        if final:  # everything is written: the window goes whole, not flow by flow
            self._window = FlowWindow()
            self._judged.clear()
            self._unjudged.clear()
            self._no_calls.clear()
            self._judged_ends.clear()
            self._leaving.clear()
            self._congested.clear()
            return
        keep_after = point - self.cfg.window_s
        self._congested = [p for p in self._congested if p.last_ts >= keep_after]
        ends = self._judged_ends
        while ends and ends[0][0] < keep_after:
            _, uid = heapq.heappop(ends)
            if uid in self._judged:  # not gone already
                self._leaving.add(uid)
        gone = [u for u in done if u in self._window]
        for uid in list(self._leaving):
            if uid not in self._judged:
                self._leaving.discard(uid)
            elif uid not in self._in_due:
                self._leaving.discard(uid)
                gone.append(uid)
        for uid in dict.fromkeys(gone):
            self._window.remove(uid)
            self._judged.discard(uid)
            self._unjudged.pop(uid, None)
        if gone:
            self._no_calls = {g for g in self._no_calls if all(u in self._window for u in g)}


def flow_row(rec: FlowRecord, c: Classification) -> dict[str, Any]:
    """A flow's conn.log columns plus its classification, JSON-ready."""
    row = rec.conn_dict()
    row.update(c.to_dict())
    if c.detail:
        row["detail"] = c.detail
    f = c.facts
    if f.protocol:
        row["l7"] = f.protocol
    if f.sni:
        row["sni"] = f.sni
    if f.ja4:
        row["ja4"] = f.ja4
    return row


def with_verdict(row: dict[str, Any], verdict: Verdict | None) -> dict[str, Any]:
    """A flow's row (:func:`flow_row`) with its own verdict, if it has one: the stored
    and ``--json`` form."""
    if verdict is not None:
        row["verdict"] = str(verdict.kind)
        row["reasons"] = [str(x) for x in verdict.reasons]
    return row


@dataclass(slots=True)
class AnalysisResult:
    """Everything derived from one capture."""

    flows: list[FlowRecord]
    """Flow records, by first packet; light (:meth:`FlowRecord.lightened`): observed
    already, they are not to be classified again (:attr:`classes` holds what they are)."""
    classes: list[Classification]
    """One classification per flow, same order."""
    analysis: Analysis
    """Calls and flow verdicts."""
    status: ReadStatus
    """How reading the capture went."""
    stats: MeterStats
    """Packet and flow counters."""
    weirds: list[Weird] = field(default_factory=list)
    """Decoding problems that belong to no flow."""
    sha256: str | None = None
    """SHA-256 of the capture file, when it was read from a file."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The meter and pipeline settings it was made with that are not the defaults
    (``api.pipeline.analysis_settings``): recorded with its verdicts, so that they can be
    derived again."""

    def flow_rows(self) -> list[dict[str, Any]]:
        verdicts = self.analysis.flow_verdicts
        return [with_verdict(flow_row(f, c), verdicts.get(f.uid))
                for f, c in zip(self.flows, self.classes, strict=True)]

    def to_json(self) -> dict[str, Any]:
        """The ``marsad analyze --json`` object."""
        return {"flows": self.flow_rows(),
                "calls": [call.to_dict() for call in self.analysis.calls]}


def run_capture(reader: FlowReader, pipeline: Pipeline) -> Iterator[Step]:
    """Drive ``pipeline`` with ``reader``'s flows and watermarks; yield each settled step."""
    for item in reader.observed_with_clock(pipeline.observe):
        if isinstance(item, Watermark):
            yield from pipeline.advance(item)
        else:
            pipeline.push(*item)
    yield pipeline.finish()


def analyze_flows(steps: Iterable[Step], reader: FlowReader) -> AnalysisResult:
    """Collect every step of a capture into one :class:`AnalysisResult`."""
    flows: list[tuple[FlowRecord, Classification]] = []
    calls: list[Call] = []
    verdicts: dict[str, Verdict] = {}
    for step in steps:
        flows.extend(step.flows)
        calls.extend(step.calls)
        verdicts.update(step.flow_verdicts)
    flows.sort(key=lambda fc: (fc[0].first_frame, fc[0].uid))
    calls.sort(key=lambda c: (c.start_ts, c.uid))
    return AnalysisResult([f for f, _ in flows], [c for _, c in flows],
                          Analysis(calls, verdicts), reader.status, reader.stats,
                          reader.weirds)

