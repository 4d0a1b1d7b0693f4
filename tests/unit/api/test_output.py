"""Output that other tools read: CSV with a fixed header per record type, Zeek's conn.log
(read back with parsezeeklogs, an independent Zeek log reader), Zeek's conn_state for UDP."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.cli import main
from api.output import (
    CALL_CSV_FIELDS,
    CONN_CSV_FIELDS,
    FLOW_CSV_FIELDS,
    FLOWS_SAMPLES_CSV_FIELDS,
    ZEEK_CONN_FIELDS,
    ZEEK_CONN_TYPES,
    CsvWriter,
    ZeekConnWriter,
    with_verdict_cells,
)
from api.pipeline import analyze_capture
from probe import FlowReader
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"
SIGNAL = CAPTURES / "apps" / "signal.pcap"
"""A DNS flow first, then TLS flows with a server name: the first row has no sni."""


def _csv(text: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def test_analyze_csv_keeps_keys_the_first_row_lacks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(SIGNAL), "--csv", "--ja4", "--workers", "1"]) == 0
    header, rows = _csv(capsys.readouterr().out)
    assert header == list(FLOW_CSV_FIELDS)
    assert rows[0]["sni"] == "" and rows[0]["l7"] == "dns"
    tls = [r for r in rows if r["l7"] == "tls"]
    assert tls and all(r["sni"] and r["ja4"].startswith("t13") for r in tls)
    assert rows[0]["conn_state"] == "SF"  # a UDP question answered


def test_every_key_a_flow_row_can_have_has_a_column() -> None:
    """The header is fixed: a key outside it would be an error, so every key the rows of
    real captures have must be in it (and the conn.log part in the record's order)."""
    for name in ("sample-call.pcap", "sample-blocked.pcap", "sample-sip.pcap",
                 "apps/signal.pcap", "apps/facetime.pcap", "icmp-errors.pcap"):
        r = analyze_capture(CAPTURES / name, workers=1, fingerprints=True)
        for rec, row in zip(r.flows, r.flow_rows(), strict=True):
            assert list(rec.conn_dict()) == list(CONN_CSV_FIELDS)
            assert set(row) <= set(FLOW_CSV_FIELDS), set(row) - set(FLOW_CSV_FIELDS)


def test_csv_writer_refuses_a_key_outside_its_header() -> None:
    out = io.StringIO()
    w = CsvWriter(out, ("a", "b"))
    w.write({"a": 1, "b": [1, 2]})
    w.write({"a": 2})
    with pytest.raises(ValueError, match="c"):
        w.write({"a": 3, "c": 1})
    assert out.getvalue().splitlines()[:3] == ["a,b", '1,"[1,2]"', "2,"]


def test_an_empty_table_still_has_its_header() -> None:
    out = io.StringIO()
    CsvWriter(out, CALL_CSV_FIELDS).close()
    assert out.getvalue() == ",".join(CALL_CSV_FIELDS) + "\n"


def test_flows_csv_header_is_the_conn_columns(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flows", str(CAPTURES / "icmp-errors.pcap"), "--csv"]) == 0
    header, rows = _csv(capsys.readouterr().out)
    assert header == list(CONN_CSV_FIELDS)
    assert main(["flows", str(SIGNAL), "--csv", "--samples"]) == 0
    header, rows = _csv(capsys.readouterr().out)
    assert header == list(FLOWS_SAMPLES_CSV_FIELDS)
    assert all(json.loads(r["payloads"]) for r in rows)


def test_analyze_csv_writes_calls_with_their_verdicts(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    calls = tmp_path / "calls.csv"
    cap = str(CAPTURES / "sample-blocked.pcap")
    assert main(["analyze", cap, "--csv", "--calls-csv", str(calls), "--workers", "1"]) == 0
    header, flows = _csv(capsys.readouterr().out)
    assert header == list(FLOW_CSV_FIELDS)
    header, rows = _csv(calls.read_text())
    assert header == list(CALL_CSV_FIELDS)
    [call] = rows
    assert call["app"] == "whatsapp" and call["verdict"] == "blocked"
    assert json.loads(call["reasons"]) == ["stun-unanswered", "media-no-return"]
    assert set(json.loads(call["flow_uids"])) <= {f["uid"] for f in flows}
    assert len(json.loads(call["evidence"])) == 2
    # without --calls-csv the calls are not silently lost: stderr says how to get them
    assert main(["analyze", cap, "--csv", "--workers", "1"]) == 0
    assert "1 call(s) not written: --calls-csv FILE" in capsys.readouterr().err


def test_calls_csv_without_csv_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(SIGNAL), "--json", "--calls-csv", "x.csv"])
    assert exc.value.code == 2
    assert "--calls-csv goes with --csv" in capsys.readouterr().err


def test_udp_conn_state_is_zeeks() -> None:
    flows = {f.uid: f for f in FlowReader(CAPTURES / "icmp-errors.pcap", workers=1)}
    by = {(f.proto, f.resp_pkts > 0): f.conn_state for f in flows.values()}
    assert by[("udp", False)] == "S0"  # a datagram without answer
    assert by[("icmp", False)] == "OTH"
    answered = [f for f in FlowReader(SIGNAL, workers=1) if f.proto == "udp"]
    assert answered and all(f.conn_state == "SF" for f in answered)


# -- Zeek conn.log ----------------------------------------------------------------------

def _read_zeek(text: str) -> tuple[object, list[dict[str, object]]]:
    from parsezeeklogs import ZeekLog
    log = ZeekLog(io.StringIO(text))
    rows = list(log)
    return log.header, rows


def test_flows_zeek_reads_back_with_a_zeek_log_reader(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    pytest.importorskip("parsezeeklogs", reason="parsezeeklogs (dev extra) not installed")
    cap = CAPTURES / "sample-call.pcap"
    assert main(["flows", str(cap), "--zeek", "--workers", "1"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "#separator \\x09"
    assert [ln.split("\t")[0] for ln in lines[1:8]] == [
        "#set_separator", "#empty_field", "#unset_field", "#path", "#open", "#fields",
        "#types"]
    assert lines[-1].startswith("#close\t")
    header, rows = _read_zeek(text)
    assert header.path == "conn"  # type: ignore[attr-defined]
    assert header.fields == list(ZEEK_CONN_FIELDS)  # type: ignore[attr-defined]
    assert header.types == list(ZEEK_CONN_TYPES)  # type: ignore[attr-defined]
    want = {f.uid: f for f in FlowReader(cap, workers=1)}
    assert sorted(r["uid"] for r in rows) == sorted(want)  # type: ignore[type-var]
    for r in rows:
        f = want[str(r["uid"])]
        assert r["ts"] == pytest.approx(f.first_ts, abs=1e-6)
        assert (r["id.orig_h"], r["id.orig_p"], r["id.resp_h"], r["id.resp_p"]) == (
            f.orig_h, f.orig_p, f.resp_h, f.resp_p)
        assert r["proto"] == f.proto and r["conn_state"] == f.conn_state
        assert (r["orig_pkts"], r["resp_pkts"]) == (f.orig_pkts, f.resp_pkts)
        if f.duration_s > 0:
            assert r["duration"] == pytest.approx(f.duration_s, abs=1e-6)
            assert (r["orig_bytes"], r["resp_bytes"]) == (f.orig_bytes, f.resp_bytes)
        else:  # as Zeek: no duration, no byte counts
            assert r["duration"] is None and r["orig_bytes"] is None
        assert r["local_orig"] is None and r["tunnel_parents"] is None
        if f.proto == "udp":
            assert r["history"] == ("Dd" if f.resp_pkts else "D")
    tcp = [r for r in rows if r["proto"] == "tcp"]
    # a whole handshake, data both ways and FINs both ways, each once per side; a
    # connection still open at the end of the capture without the FINs
    histories = {r["conn_state"]: r["history"] for r in tcp}
    assert histories == {"SF": "ShADdFaf", "S1": "ShADd"}, histories


def test_analyze_zeek_names_the_service(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("parsezeeklogs", reason="parsezeeklogs (dev extra) not installed")
    assert main(["analyze", str(SIGNAL), "--zeek", "--workers", "1"]) == 0
    _, rows = _read_zeek(capsys.readouterr().out)
    services = {(r["proto"], r["id.resp_p"]): r["service"] for r in rows}
    assert services[("udp", 53)] == "dns" and services[("tcp", 443)] == "ssl"


def test_zeek_strings_are_escaped_as_zeek_escapes_them() -> None:
    pytest.importorskip("parsezeeklogs", reason="parsezeeklogs (dev extra) not installed")
    out = io.StringIO()
    w = ZeekConnWriter(out, clock=lambda: 0.0)
    row = {"uid": "C\tx\\", "orig_h": "10.0.0.1", "orig_p": 1, "resp_h": "10.0.0.2",
           "resp_p": 2, "proto": "sctp", "first_ts": 1.5, "duration_s": 0.0, "orig_bytes": 0,
           "resp_bytes": 0, "conn_state": "OTH", "orig_pkts": 1, "resp_pkts": 0}
    w.write(row, service="-", history="")
    w.close()
    assert "#open\t1970-01-01-00-00-00" in out.getvalue()
    _, [r] = _read_zeek(out.getvalue())
    assert r["uid"] == "C\tx\\" and r["service"] == "-" and r["history"] == ""
    assert r["proto"] == "unknown_transport"


@pytest.mark.parametrize("fmt", ["--zeek", "--csv"])
def test_an_unreadable_capture_prints_nothing(fmt: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["flows", str(CAPTURES / "bad-text.pcap"), fmt]) == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("marsad: ")


def test_an_empty_zeek_log_still_has_its_header_and_close() -> None:
    out = io.StringIO()
    ZeekConnWriter(out, clock=lambda: 0.0).close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "#separator \\x09" and lines[-1] == "#close\t1970-01-01-00-00-00"
    assert len(lines) == 9


def test_a_reset_after_payload_is_no_rejected_attempt(tmp_path: Path) -> None:
    """Zeek's REJ is a SYN answered by a RST; a responder that sent payload, or an
    originator that acknowledged, had the connection set up (the capture missed its
    SYN-ACK): RSTR, reset after set-up."""
    from scapy.layers.inet import IP, TCP  # type: ignore[attr-defined]
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    me, server = "192.168.1.50", "203.0.113.5"

    def seg(t: float, out: bool, port: int, flags: str, payload: bytes = b"") -> Ether:
        src, dst, sport, dport = (me, server, port, 443) if out else (server, me, 443, port)
        pkt = Ether() / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags)
        if payload:
            pkt = pkt / Raw(payload)
        pkt.time = t
        return pkt

    pkts = [seg(1.0, True, 50001, "S"), seg(1.02, False, 50001, "RA"),  # refused
            seg(2.0, True, 50002, "S"), seg(2.05, True, 50002, "A"),  # SYN-ACK not captured
            seg(2.06, True, 50002, "PA", b"q" * 40), seg(2.1, False, 50002, "PA", b"r" * 80),
            seg(3.0, False, 50002, "R"),
            seg(4.0, True, 50003, "S"), seg(4.05, True, 50003, "A"),  # SYN-ACK not captured
            seg(4.06, True, 50003, "PA", b"q" * 40), seg(5.0, False, 50003, "RA")]
    path = tmp_path / "rej.pcap"
    wrpcap(str(path), pkts)
    states = {f.orig_p: f.conn_state for f in FlowReader(path, workers=1)}
    assert states == {50001: "REJ", 50002: "RSTR", 50003: "RSTR"}


_CELL_TEXT = st.text(alphabet=st.sampled_from('ab,"\n\r; \t'), max_size=8)


@given(ja4=_CELL_TEXT, kind=_CELL_TEXT, reasons=st.lists(_CELL_TEXT, max_size=3))
def test_verdict_cells_filled_in_a_line_as_the_writer_writes_them(ja4: str, kind: str,
                                                                 reasons: list[str]) -> None:
    """``analyze --csv`` makes a flow's line before its verdict settles and fills the last
    two cells at the end: the same bytes as the line of the row with its verdict, whatever
    the cells hold (commas, quotes, line ends)."""
    w = CsvWriter(io.StringIO(), FLOW_CSV_FIELDS)
    row = {"uid": "C1", "app": "sip", "ja4": ja4}
    assert with_verdict_cells(w.line(row), [kind, reasons]) == \
        w.line({**row, "verdict": kind, "reasons": reasons})
    with pytest.raises(ValueError):
        with_verdict_cells(w.line({**row, "verdict": kind or "x"}), [kind, reasons])
