"""The human-readable report of ``marsad report``: one table per call, one line per
interfered flow outside calls.

:func:`build_report` turns an :class:`~api.pipeline.AnalysisResult` into a
:class:`Report` (strings only); :func:`render_text` writes it as plain text
(for pipes and files) and :func:`render_rich` as rich tables (for terminals).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.pipeline import AnalysisResult
from policy.records import Call, CallSetup, Leg, Verdict, VerdictKind
from probe import FlowRecord

__all__ = ["INTERFERED", "LEG_COLUMNS", "ONLY", "CallSection", "FlowLine", "Report",
           "build_report", "render_rich", "render_text", "report_json"]

LEG_COLUMNS = ("flow", "dir", "media", "ssrc", "packets", "loss", "jitter", "MOS")
"""Columns of a call's leg table."""

INTERFERED = frozenset({str(VerdictKind.BLOCKED), str(VerdictKind.THROTTLED)})
"""Verdicts that say the network interfered (``--only interfered``)."""
ONLY: dict[str, frozenset[str]] = {
    "interfered": INTERFERED,
    "not-ok": frozenset(str(k) for k in VerdictKind if k is not VerdictKind.OK),
}
"""``marsad report --only`` choices: the verdicts of the calls they keep."""


@dataclass(frozen=True, slots=True)
class CallSection:
    """One call, ready to print."""

    uid: str
    """The call's uid."""
    facts: tuple[tuple[str, str], ...]
    """(label, value): app, media, start, duration, verdict, reasons, set-up."""
    legs: tuple[tuple[str, ...], ...]
    """One row per leg, in :data:`LEG_COLUMNS` order."""
    evidence: tuple[str, ...]
    """The evidence sentences, strongest verdict first."""
    verdict: str
    """The verdict, for colouring."""


@dataclass(frozen=True, slots=True)
class FlowLine:
    """An interfered flow that belongs to no call."""

    uid: str
    """The flow's uid."""
    text: str
    """One line: endpoints, verdict, reasons, evidence."""
    verdict: str
    """The verdict, for colouring."""


@dataclass(frozen=True, slots=True)
class Report:
    """Everything ``marsad report`` prints."""

    header: tuple[tuple[str, str], ...]
    """(label, value) about the capture."""
    calls: tuple[CallSection, ...]
    """Calls by start time."""
    flows: tuple[FlowLine, ...]
    """Interfered flows outside calls, by first packet."""
    notes: tuple[str, ...] = ()
    """Warnings about the reading (damaged capture, malformed packets)."""


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _num(x: float | None, fmt: str, scale: float = 1.0) -> str:
    return "-" if x is None else format(x * scale, fmt)


def _leg_row(leg: Leg) -> tuple[str, ...]:
    return (leg.flow_uid, leg.direction, leg.media or "?",
            "-" if leg.ssrc is None else f"0x{leg.ssrc:08x}", str(leg.packets),
            _num(leg.loss_ratio, ".1%"),
            _num(leg.mean_jitter_s if leg.mean_jitter_s is not None else leg.jitter_s,
                 ".1f", 1000.0) + ("" if leg.jitter_s is None and leg.mean_jitter_s is None
                                   else " ms"),
            _num(leg.mos, ".2f"))


def _reasons(v: Verdict) -> str:
    return ", ".join(str(r) for r in v.reasons) or "-"


def _setup(setup: CallSetup) -> str:
    parts = []
    stun, tcp, tls, sip = setup.stun, setup.tcp, setup.tls, setup.sip
    if stun.requests or stun.pings:
        pings = f", {stun.pings} pings" if stun.pings else ""
        parts.append(f"STUN {stun.requests} requests{pings} / {stun.success} answered")
    if tcp.connections:
        parts.append(f"TCP {tcp.connections} ({tcp.established} established, "
                     f"{tcp.refused} refused, {tcp.unanswered} unanswered)")
    if tls.client_hellos:
        parts.append(f"TLS {tls.client_hellos} ClientHello / {tls.server_hellos} ServerHello")
    if sip:
        parts.append("SIP " + " ".join(m.message for m in sip[:12])
                     + (" ..." if len(sip) > 12 else ""))
    return "; ".join(parts) or "-"


def _call_section(call: Call) -> CallSection:
    facts: tuple[tuple[str, str], ...] = (
        ("app", call.app or "unknown"), ("media", ", ".join(call.media) or "-"),
        ("local host", call.local or "?"), ("start", _utc(call.start_ts)),
        ("duration", f"{call.end_ts - call.start_ts:.1f} s"), ("outcome", str(call.outcome)),
        ("verdict", str(call.verdict.kind)), ("reasons", _reasons(call.verdict)),
        ("set-up", _setup(call.setup)), ("flows", str(len(call.flow_uids))))
    if call.early_media:
        facts += (("early media", "; ".join(
            f"{leg.media or 'unnamed'} {leg.direction}, {leg.packets} packets"
            for leg in call.early_media) + " (while it rang)"),)
    return CallSection(call.uid, facts, tuple(_leg_row(leg) for leg in call.legs),
                       tuple(e.text for e in call.verdict.evidence), str(call.verdict.kind))


def _flow_line(f: FlowRecord, v: Verdict) -> FlowLine:
    ev = "; ".join(e.text for e in v.evidence)
    text = (f"{f.uid} {f.proto} {f.orig_h}:{f.orig_p} -> {f.resp_h}:{f.resp_p} "
            f"{_utc(f.first_ts)}: {v.kind} ({_reasons(v)})" + (f": {ev}" if ev else ""))
    return FlowLine(f.uid, text, str(v.kind))


def _selected(result: AnalysisResult, only: str | None
              ) -> tuple[list[Call], list[tuple[FlowRecord, Verdict]]]:
    """The calls, and the flows outside calls with a verdict of their own, that the report
    shows: all of them, or those whose verdict is in ``ONLY[only]``."""
    keep = None if only is None else ONLY[only]
    in_calls = {u for c in result.analysis.calls for u in c.flow_uids}
    by_uid = {f.uid: f for f in result.flows}
    flows = sorted(((by_uid[u], v) for u, v in result.analysis.flow_verdicts.items()
                    if u not in in_calls and u in by_uid
                    and (keep is None or str(v.kind) in keep)),
                   key=lambda fv: (fv[0].first_frame, fv[0].uid))
    calls = [c for c in result.analysis.calls if keep is None or str(c.verdict.kind) in keep]
    return calls, flows


def build_report(result: AnalysisResult, capture: str, only: str | None = None) -> Report:
    """The report of one analysed capture (``capture`` names it in the header); with
    ``only`` (a key of :data:`ONLY`), just the calls and flows with those verdicts (the
    header still counts every call)."""
    calls, flows = _selected(result, only)
    verdicts: dict[str, int] = {}
    for c in result.analysis.calls:
        verdicts[str(c.verdict.kind)] = verdicts.get(str(c.verdict.kind), 0) + 1
    header = [("capture", capture)]
    if result.sha256:
        header.append(("sha256", result.sha256))
    header += [("flows", str(len(result.flows))),
               ("calls", str(len(result.analysis.calls)) + (
                   " (" + ", ".join(f"{n} {k}" for k, n in sorted(verdicts.items())) + ")"
                   if verdicts else "")),
               ("interfered flows outside calls", str(len(flows)))]
    if only is not None:
        header.append(("shown", f"only {only}: {len(calls)} call(s)"))
    notes = []
    if result.stats.weird:
        notes.append(f"{result.stats.weird} malformed packet(s) recorded as weird")
    if not result.status.complete:
        notes.append(f"{result.status.message}: only packets before byte "
                     f"{result.status.stopped_at} were read")
    return Report(tuple(header), tuple(_call_section(c) for c in calls),
                  tuple(_flow_line(f, v) for f, v in flows), tuple(notes))


def report_json(result: AnalysisResult, capture: str, only: str | None = None
                ) -> dict[str, Any]:
    """``marsad report --json`` for one capture: what the text report shows, as data
    (calls as ``marsad analyze --json`` writes them, interfered flows outside calls with
    their conn.log columns and verdict)."""
    calls, flows = _selected(result, only)
    verdicts: dict[str, int] = {}
    for c in result.analysis.calls:
        verdicts[str(c.verdict.kind)] = verdicts.get(str(c.verdict.kind), 0) + 1
    st = result.status
    return {
        "capture": capture, "sha256": result.sha256, "flows": len(result.flows),
        "calls_total": len(result.analysis.calls), "verdicts": dict(sorted(verdicts.items())),
        "only": only, "complete": st.complete,
        "stopped_at": None if st.complete else st.stopped_at,
        "weird": result.stats.weird,
        "calls": [c.to_dict() for c in calls],
        "interfered_flows": [{**f.conn_dict(), **v.to_dict()} for f, v in flows]}


def _table(head: tuple[str, ...], rows: tuple[tuple[str, ...], ...]) -> list[str]:
    widths = [max(len(head[i]), *(len(r[i]) for r in rows)) for i in range(len(head))]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip()
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return out


def render_text(report: Report) -> str:
    """Plain text, for pipes and files."""
    label = max(len(k) for k, _ in report.header)
    out = [f"{k.ljust(label)}  {v}" for k, v in report.header]
    out += [f"warning: {n}" for n in report.notes]
    for sec in report.calls:
        out += ["", f"Call {sec.uid}"]
        width = max(len(k) for k, _ in sec.facts)
        out += [f"  {k.ljust(width)}  {v}" for k, v in sec.facts]
        if sec.legs:
            out += ["  " + line for line in _table(LEG_COLUMNS, sec.legs)]
        out += [f"  evidence: {t}" for t in sec.evidence]
    if report.flows:
        out += ["", "Interfered flows outside calls"]
        out += [f"  {fl.text}" for fl in report.flows]
    return "\n".join(out) + "\n"


_STYLE = {"ok": "green", "degraded": "yellow", "throttled": "dark_orange", "blocked": "red",
          "failed": "magenta", "unknown": "dim"}


def render_rich(report: Report, console: Any) -> None:
    """Rich tables on a terminal (``console`` is a :class:`rich.console.Console`)."""
    from rich.table import Table
    from rich.text import Text

    for k, v in report.header:
        console.print(Text.assemble((k, "bold"), ": ", v))
    for n in report.notes:
        console.print(Text.assemble(("warning: ", "yellow"), n))
    for sec in report.calls:
        style = _STYLE.get(sec.verdict, "")
        t = Table(title=Text.assemble(f"Call {sec.uid}  ", (sec.verdict, style)),
                  title_justify="left", show_header=False, box=None, pad_edge=False)
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        for k, v in sec.facts:
            t.add_row(k, Text(v, style=style if k == "verdict" else ""))
        console.print()
        console.print(t)
        if sec.legs:
            legs = Table(*LEG_COLUMNS)
            for row in sec.legs:
                legs.add_row(*(Text(c) for c in row))
            console.print(legs)
        for text in sec.evidence:
            console.print(Text(f"  evidence: {text}"))
    if report.flows:
        console.print()
        console.print(Text("Interfered flows outside calls", style="bold"))
        for fl in report.flows:
            console.print(Text(f"  {fl.text}", style=_STYLE.get(fl.verdict, "")))
