"""Writers for flow and call records: JSON, JSON Lines, CSV and Zeek's conn.log TSV.

CSV: one table per record type, each with a fixed header (:data:`CONN_CSV_FIELDS` for
``marsad flows``, :data:`FLOW_CSV_FIELDS` for ``marsad analyze``, :data:`CALL_CSV_FIELDS`
for calls), so every file of a type has the same columns whatever its first row holds.
A value that is absent is an empty cell; a list or an object is a JSON text in its cell.
A key outside the header is an error (:class:`ValueError`), never a silently lost column.

Zeek: :class:`ZeekConnWriter` writes the ``conn.log`` layout of Zeek's ASCII writer
(``#separator``, ``#set_separator``, ``#empty_field``, ``#unset_field``, ``#path``,
``#open``, ``#fields``, ``#types``, rows, ``#close``), so ``zeek-cut`` and Zeek log
readers take marsad's flows as they take Zeek's.
"""

from __future__ import annotations

import csv
import heapq
import io
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import orjson

from probe import ORIG, TcpFlag

if TYPE_CHECKING:
    from api.pipeline import AnalysisResult
    from classifier.records import Classification
    from policy.pipeline import Step
    from policy.records import Call, Verdict
    from probe import FlowRecord

__all__ = [
    "CALL_CSV_FIELDS",
    "CONN_CSV_FIELDS",
    "FLOW_CSV_FIELDS",
    "ZEEK_CONN_FIELDS",
    "ZEEK_CONN_TYPES",
    "CsvWriter",
    "ZeekConnWriter",
    "call_csv_row",
    "dumps",
    "write_analysis_csv",
    "write_analysis_zeek",
    "write_calls_csv",
    "write_jsonl",
    "zeek_history",
    "zeek_service",
]

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

CONN_CSV_FIELDS = (
    "uid", "proto", "ip_version", "orig_h", "orig_p", "resp_h", "resp_p", "first_ts",
    "last_ts", "duration_s", "orig_pkts", "orig_bytes", "orig_wire_bytes", "resp_pkts",
    "resp_bytes", "resp_wire_bytes", "conn_state", "orig_retrans", "resp_retrans",
    "orig_missed_bytes", "resp_missed_bytes", "first_frame", "last_frame", "end_reason",
    "vlan", "tunnel", "icmp", "weirds", "rtp_streams", "orig_l2_addr", "resp_l2_addr")
"""``marsad flows --csv``: the flow record's conn.log columns
(:meth:`~probe.records.FlowRecord.conn_dict`), in its order."""

FLOWS_SAMPLES_CSV_FIELDS = (*CONN_CSV_FIELDS, "payloads")
"""``marsad flows --samples --csv``: the same, ``rtp_streams`` holding the streams (JSON)
rather than their number, and the payload samples (JSON)."""

FLOW_CSV_FIELDS = (
    *CONN_CSV_FIELDS, "app", "category", "media", "method", "confidence", "reason",
    "detail", "l7", "sni", "ja4", "verdict", "reasons")
"""``marsad analyze --csv``: the conn.log columns, the classification (``detail``, ``l7``,
``sni``, ``ja4`` empty where the flow has none; ``ja4`` only with ``--ja4``) and the flow's
own verdict and reasons (empty for a flow without one: those in calls are judged with
their call)."""

CALL_CSV_FIELDS = (
    "uid", "app", "media", "start_ts", "end_ts", "duration_s", "local", "outcome", "verdict",
    "reasons", "mos", "loss_ratio", "jitter_s", "legs", "flows", "flow_uids",
    "sip_call_id", "evidence")
"""Calls (``marsad analyze --csv --calls-csv FILE``): the outcome, the verdict and its
reasons (JSON list), the worst leg's quality (lowest MOS, highest loss ratio and mean jitter), the
number of legs and flows, the flows' uids (JSON list), the SIP Call-ID when there is
one, and the evidence sentences (JSON list)."""


def dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Compact, deterministic JSON (NaN and infinities become null); ``default`` turns
    what JSON has no type for into something it has (else that raises TypeError)."""
    return orjson.dumps(obj, default=default, option=_OPTS).decode()


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: TextIO) -> None:
    """One JSON object per line; the caller decides when to flush."""
    for row in rows:
        out.write(dumps(row))
        out.write("\n")


def _cell(v: Any) -> Any:
    if isinstance(v, list | tuple | dict):
        return json.dumps(v, separators=(",", ":"))
    return v


class CsvWriter:
    """CSV with a fixed header (``fields``), written before the first row (or by
    :meth:`close` when there is none). A row may leave columns out (empty cells); a key
    outside ``fields`` raises :class:`ValueError`."""

    def __init__(self, out: TextIO, fields: Sequence[str]) -> None:
        self._out = out
        self._fields = tuple(fields)
        self._w = csv.DictWriter(out, fieldnames=list(self._fields), extrasaction="raise",
                                 lineterminator="\n")
        self._started = False
        self._line_buf = io.StringIO()
        self._line_w = csv.DictWriter(self._line_buf, fieldnames=list(self._fields),
                                      extrasaction="raise", lineterminator="\n")

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._w.writeheader()

    def write(self, row: Mapping[str, Any]) -> None:
        self._start()
        self._w.writerow({k: _cell(v) for k, v in row.items()})

    def line(self, row: Mapping[str, Any]) -> str:
        """The line :meth:`write` would write for ``row``, not written."""
        buf = self._line_buf
        buf.seek(0)
        buf.truncate()
        self._line_w.writerow({k: _cell(v) for k, v in row.items()})
        return buf.getvalue()

    def write_line(self, line: str) -> None:
        """Write a line made by :meth:`line` (the header first, as :meth:`write` does)."""
        self._start()
        self._out.write(line)

    def close(self) -> None:
        """Write the header if no row came (an empty table still says its columns)."""
        self._start()


def call_csv_row(call: Call) -> dict[str, Any]:
    """One call as a :data:`CALL_CSV_FIELDS` row."""
    d = call.to_dict()
    q = d["quality"]
    return {"uid": call.uid, "app": call.app, "media": list(call.media),
            "start_ts": round(call.start_ts, 6), "end_ts": round(call.end_ts, 6),
            "duration_s": d["duration_s"], "local": call.local, "outcome": d["outcome"],
            "verdict": d["verdict"],
            "reasons": d["reasons"], "mos": q["mos"], "loss_ratio": q["loss_ratio"],
            "jitter_s": q["jitter_s"], "legs": len(call.legs), "flows": len(call.flow_uids),
            "flow_uids": list(call.flow_uids), "sip_call_id": call.extra.get("sip_call_id"),
            "evidence": [e.text for e in call.verdict.evidence]}


def write_calls_csv(calls: Iterable[Call], out: TextIO) -> int:
    """The calls as a CSV table (header :data:`CALL_CSV_FIELDS`); returns how many."""
    w = CsvWriter(out, CALL_CSV_FIELDS)
    n = 0
    for call in calls:
        w.write(call_csv_row(call))
        n += 1
    w.close()
    return n


# -- Zeek conn.log ------------------------------------------------------------------

ZEEK_CONN_FIELDS = (
    "ts", "uid", "id.orig_h", "id.orig_p", "id.resp_h", "id.resp_p", "proto", "service",
    "duration", "orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp",
    "missed_bytes", "history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes",
    "tunnel_parents")
"""conn.log's columns, in Zeek's order."""
ZEEK_CONN_TYPES = (
    "time", "string", "addr", "port", "addr", "port", "enum", "string", "interval", "count",
    "count", "string", "bool", "bool", "count", "string", "count", "count", "count", "count",
    "set[string]")
"""Zeek's type of each of :data:`ZEEK_CONN_FIELDS`."""

_UNSET = "-"
_EMPTY = "(empty)"
_SERVICES = {"tls": "ssl", "dtls": "dtls", "quic": "quic", "gquic": "quic", "dns": "dns",
             "http": "http", "sip": "sip"}
"""The classifier's protocol names that have a Zeek analyzer, by Zeek's service name."""
_TRANSPORTS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "icmp"}
"""Zeek's ``transport_proto`` (anything else is ``unknown_transport``)."""

def zeek_service(protocol: str | None) -> str | None:
    """Zeek's ``service`` for the application protocol the classifier recognised (``tls``
    is Zeek's ``ssl``), or None where Zeek has no analyzer of that name."""
    return None if protocol is None else _SERVICES.get(protocol)


def _tcp_history(rec: FlowRecord) -> str | None:
    """Zeek's TCP history letters from the flow's timing series, or None when the series
    does not cover every packet or a retransmission happened (Zeek would have put a
    ``T`` somewhere the series cannot place)."""
    n = len(rec.pkt_flags)
    if n == 0 or n != rec.orig_pkts + rec.resp_pkts or rec.orig_retrans or rec.resp_retrans:
        return None
    out: list[str] = []
    seen: set[str] = set()

    def once(letter: str, orig: bool) -> None:
        letter = letter if orig else letter.lower()
        if letter not in seen:
            seen.add(letter)
            out.append(letter)

    for flags, direction, length in zip(rec.pkt_flags.tolist(), rec.pkt_dir.tolist(),
                                        rec.pkt_len.tolist(), strict=True):
        orig = direction == ORIG
        syn, fin = bool(flags & TcpFlag.SYN), bool(flags & TcpFlag.FIN)
        rst = bool(flags & TcpFlag.RST)
        if syn + fin + rst > 1:
            once("I" if fin and rst else "Q", orig)
        elif syn:
            once("H" if flags & TcpFlag.ACK else "S", orig)
        elif fin:
            once("F", orig)
        elif rst:
            once("R", orig)
        elif flags & TcpFlag.ACK and length == 0:
            once("A", orig)
        if length > 0:
            once("D", orig)
    return "".join(out)


def zeek_history(row: Mapping[str, Any], rec: FlowRecord | None = None) -> str | None:
    """Zeek's ``history`` where the probe has what it takes, else None (unset).

    UDP: ``D`` for the originator's packets, ``d`` for the responder's, in the order they
    first came (the originator sent first). TCP: from the flow's timing series
    (``rec``), when it holds every packet of a connection without retransmissions;
    Zeek records S (SYN), H (SYN-ACK), A (pure ACK), D (data), F (FIN), R (RST), Q/I
    (SYN with FIN or RST / FIN with RST), once each per side, upper case for the
    originator. Anything else: None.
    """
    if row["proto"] == "udp":
        return "D" + ("d" if row["resp_pkts"] else "")
    if row["proto"] == "tcp" and rec is not None:
        return _tcp_history(rec)
    return None


def _zeek_escape(text: str) -> str:
    """A string value as Zeek's ASCII writer writes it: backslash doubled, separators and
    non-printable characters as ``\\xHH``, and a value equal to a marker escaped whole."""
    if text in (_UNSET, _EMPTY):
        return "".join(f"\\x{b:02x}" for b in text.encode())
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == "\t" or not ch.isprintable():
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
        else:
            out.append(ch)
    return "".join(out)


def _zeek_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d-%H-%M-%S")


def _zeek_line(row: Mapping[str, Any], *, service: str | None,
               history: str | None) -> str:
    """One conn.log line of a flow's conn.log columns (:meth:`FlowRecord.conn_dict`)."""
    duration = float(row["duration_s"])
    has_span = duration > 0 and math.isfinite(duration)
    cells = (
        f"{float(row['first_ts']):.6f}", _zeek_escape(str(row["uid"])),
        str(row["orig_h"]), str(row["orig_p"]), str(row["resp_h"]), str(row["resp_p"]),
        _TRANSPORTS.get(str(row["proto"]), "unknown_transport"),
        _UNSET if service is None else _zeek_escape(service),
        f"{duration:.6f}" if has_span else _UNSET,
        str(row["orig_bytes"]) if has_span else _UNSET,
        str(row["resp_bytes"]) if has_span else _UNSET,
        _zeek_escape(str(row["conn_state"])) if row["conn_state"] else _UNSET,
        _UNSET, _UNSET,
        str(int(row.get("orig_missed_bytes", 0)) + int(row.get("resp_missed_bytes", 0))),
        _UNSET if history is None else (_zeek_escape(history) if history else _EMPTY),
        str(row["orig_pkts"]), _UNSET, str(row["resp_pkts"]), _UNSET, _UNSET)
    return "\t".join(cells) + "\n"


class ZeekConnWriter:
    """Zeek ``conn.log`` TSV: the header before the first row (or at :meth:`close` when
    there is none), one row per :meth:`write`, ``#close`` on :meth:`close`.

    Columns marsad cannot fill are unset (``-``), as Zeek leaves them when it lacks the
    data: ``local_orig``/``local_resp`` (no ``Site::local_nets``),
    ``orig_ip_bytes``/``resp_ip_bytes`` (the probe counts frame bytes, not IP bytes),
    ``tunnel_parents`` (the outer connection is not a flow of its
    own), ``service`` without a recognised protocol, and ``history`` where
    :func:`zeek_history` has no data. As Zeek does, ``duration``, ``orig_bytes`` and
    ``resp_bytes`` are unset for a connection of zero duration. ``missed_bytes`` is the sum
    of the record's two ``*_missed_bytes``: bytes acknowledged that the capture never
    showed (Zeek counts the gaps its reassembly meets; both say the capture lost data).
    """

    def __init__(self, out: TextIO, *, clock: Callable[[], float] = time.time) -> None:
        self._out = out
        self._clock = clock
        self._opened = False

    def _open(self) -> None:
        if self._opened:
            return
        self._opened = True
        out = self._out
        out.write("#separator \\x09\n")
        for key, value in (("set_separator", ","), ("empty_field", _EMPTY),
                           ("unset_field", _UNSET), ("path", "conn"),
                           ("open", _zeek_time(self._clock())),
                           ("fields", "\t".join(ZEEK_CONN_FIELDS)),
                           ("types", "\t".join(ZEEK_CONN_TYPES))):
            out.write(f"#{key}\t{value}\n")

    def write(self, row: Mapping[str, Any], *, service: str | None = None,
              history: str | None = None) -> None:
        """One flow, from its conn.log columns (:meth:`FlowRecord.conn_dict`)."""
        self.write_line(_zeek_line(row, service=service, history=history))

    def write_record(self, rec: FlowRecord, c: Classification | None = None) -> None:
        """One flow record, with its Zeek service from the classification when given."""
        self.write_line(self.record_line(rec, c))

    @staticmethod
    def record_line(rec: FlowRecord, c: Classification | None = None) -> str:
        """The line :meth:`write_record` writes for ``rec``, not written."""
        row = rec.conn_dict()
        return _zeek_line(row, service=None if c is None else zeek_service(c.facts.protocol),
                          history=zeek_history(row, rec))

    def write_line(self, line: str) -> None:
        """Write a line made by :meth:`record_line` (the header first)."""
        self._open()
        self._out.write(line)

    def close(self) -> None:
        """The closing ``#close`` line, as Zeek writes when it rotates or ends a log."""
        self._open()
        self._out.write(f"#close\t{_zeek_time(self._clock())}\n")


def write_analysis_csv(result: AnalysisResult, out: TextIO,
                       calls_out: TextIO | None = None) -> None:
    """``marsad analyze --csv``: the flows table (:data:`FLOW_CSV_FIELDS`) on ``out`` and,
    when ``calls_out`` is given, the calls table (:data:`CALL_CSV_FIELDS`) there."""
    w = CsvWriter(out, FLOW_CSV_FIELDS)
    for row in result.flow_rows():
        w.write(row)
    w.close()
    if calls_out is not None:
        write_calls_csv(result.analysis.calls, calls_out)


def write_analysis_zeek(result: AnalysisResult, out: TextIO, *,
                        clock: Callable[[], float] = time.time) -> None:
    """``marsad analyze --zeek``: every flow as a conn.log row, its ``service`` from the
    protocol the classifier recognised."""
    w = ZeekConnWriter(out, clock=clock)
    for rec, c in zip(result.flows, result.classes, strict=True):
        w.write_record(rec, c)
    w.close()


_VERDICT_CELLS = ("verdict", "reasons")
assert FLOW_CSV_FIELDS[-2:] == _VERDICT_CELLS, "with_verdict_cells fills them last"


def with_verdict_cells(line: str, cells: Iterable[Any]) -> str:
    """A :data:`FLOW_CSV_FIELDS` line made by :meth:`CsvWriter.line` for a row without a
    verdict (its last two cells empty) with those two cells, ``verdict`` and ``reasons``,
    filled: the line :meth:`CsvWriter.line` makes for the row with them. Each cell is
    quoted as the row's writer quotes it (the same dialect and line end)."""
    if not line.endswith(",,\n"):
        raise ValueError("not a line whose verdict cells are empty")
    tail = io.StringIO()
    csv.writer(tail, lineterminator="\n").writerow([_cell(x) for x in cells])
    return f"{line[:-3]},{tail.getvalue()}"


class GatheredResult:
    """``marsad analyze``'s output of a whole capture (``--json``, ``--csv`` or ``--zeek``,
    the ``fmt``), gathered from the pipeline's steps as they settle rather than from an
    :class:`~policy.pipeline.AnalysisResult` held whole: each flow's record is made into
    its output's text (its ``--json`` row, CSV line or conn.log line) and let go once the
    pipeline's clock is ``window_s`` past its last packet (when the window lets most flows
    go; a call's flows may stay there longer). A flow's own verdict, which may settle
    later, is added to its row or line at the end. What it writes is, byte for byte, what
    the writers of a whole result write (:meth:`AnalysisResult.to_json`,
    :func:`write_analysis_csv`, :func:`write_analysis_zeek`). The rows' text (about a
    kilobyte a flow), the calls and the verdicts still grow with the capture."""

    def __init__(self, fmt: str, window_s: float) -> None:
        if fmt not in ("json", "csv", "zeek"):
            raise ValueError(f"no whole-capture output {fmt!r}")
        self.fmt = fmt
        self._window_s = window_s
        self._held: list[tuple[float, int, FlowRecord, Classification]] = []
        """The flows not made into text yet, a heap by last packet."""
        self._rows: list[tuple[int, str, str]] = []
        """(first frame, uid, the text) of each flow made into its text."""
        self._calls: list[Call] = []
        self._verdicts: dict[str, Verdict] = {}
        self._csv = CsvWriter(io.StringIO(), FLOW_CSV_FIELDS)
        self._finished = False

    def add(self, step: Step, clock: float) -> None:
        """A step the pipeline settled; ``clock``: the pipeline's clock after it
        (:attr:`Pipeline.clock <policy.pipeline.Pipeline.clock>`)."""
        held = self._held
        for f, c in step.flows:
            heapq.heappush(held, (f.last_ts, len(self._rows) + len(held), f, c))
        self._calls.extend(step.calls)
        self._verdicts.update(step.flow_verdicts)
        horizon = clock - self._window_s
        while held and held[0][0] < horizon:
            self._make_row()

    def _make_row(self) -> None:
        from policy.pipeline import flow_row
        _, _, f, c = heapq.heappop(self._held)
        if self.fmt == "json":
            text = dumps(flow_row(f, c))
        elif self.fmt == "csv":
            text = self._csv.line(flow_row(f, c))
        else:
            text = ZeekConnWriter.record_line(f, c)
        self._rows.append((f.first_frame, f.uid, text))

    def _finish(self) -> None:
        """Every flow made into its text; the rows and the calls in their order."""
        if not self._finished:
            self._finished = True
            while self._held:
                self._make_row()
            self._rows.sort(key=lambda r: (r[0], r[1]))
            self._calls.sort(key=lambda c: (c.start_ts, c.uid))

    @property
    def calls(self) -> list[Call]:
        """The calls, by start (every step added)."""
        self._finish()
        return self._calls

    def write_json(self, out: TextIO) -> None:
        """The ``--json`` object: ``dumps(result.to_json())`` and a newline."""
        from policy.pipeline import with_verdict
        self._finish()
        verdicts = self._verdicts
        out.write('{"flows":[')
        rows = self._rows
        for at in range(0, len(rows), 1024):  # a text of 1,024 rows at a time
            if at:
                out.write(",")
            out.write(",".join(text if uid not in verdicts else
                               dumps(with_verdict(orjson.loads(text), verdicts[uid]))
                               for _, uid, text in rows[at:at + 1024]))
        out.write('],"calls":')
        out.write(dumps([call.to_dict() for call in self._calls]))
        out.write("}\n")

    def write_csv(self, out: TextIO, calls_out: TextIO | None = None) -> None:
        """The ``--csv`` tables, as :func:`write_analysis_csv` writes them."""
        from policy.pipeline import with_verdict
        self._finish()
        w = CsvWriter(out, FLOW_CSV_FIELDS)
        verdicts = self._verdicts
        for _, uid, line in self._rows:
            v = verdicts.get(uid)
            w.write_line(line if v is None else
                         with_verdict_cells(line, with_verdict({}, v).values()))
        w.close()
        if calls_out is not None:
            write_calls_csv(self._calls, calls_out)

    def write_zeek(self, out: TextIO, *, clock: Callable[[], float] = time.time) -> None:
        """The ``--zeek`` conn.log, as :func:`write_analysis_zeek` writes it."""
        self._finish()
        w = ZeekConnWriter(out, clock=clock)
        for _, _, line in self._rows:
            w.write_line(line)
        w.close()
