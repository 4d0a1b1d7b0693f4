"""Flow and call uids: the same for the same capture, different for different calls.

A flow uid digests the capture's identity (its first packet), the flow's key and start and
what the flow came to; a call uid digests its flows' uids and, for SIP, its dialog's
Call-ID. Built on capture bytes written here and on the bundled samples.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

from api.pipeline import analyze_capture
from tests.conftest import ROOT
from tests.pcapbytes import pcap, split, udp_frame

PHONE, PROXY = "10.0.0.5", "198.51.100.10"


def _sip(method_or_status: str, call_id: str, cseq: int, *, request: bool) -> bytes:
    first = (f"{method_or_status} sip:bob@example.net SIP/2.0" if request
             else f"SIP/2.0 {method_or_status}")
    return (f"{first}\r\n"
            f"Via: SIP/2.0/UDP {PHONE}:5060;branch=z9hG4bK{call_id[:6]}{cseq}\r\n"
            f"From: <sip:alice@example.net>;tag=a{cseq}\r\n"
            f"To: <sip:bob@example.net>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: {cseq} INVITE\r\n"
            f"Contact: <sip:alice@{PHONE}:5060>\r\n"
            f"Content-Length: 0\r\n\r\n").encode()


def _two_dialogs() -> bytes:
    """Two INVITEs on one UDP flow (phone to proxy, port 5060 both ends), each answered
    486 Busy Here: two calls that share every flow."""
    t = 1_700_000_000.0
    pkts = []
    for i, call_id in enumerate(("first-dialog@10.0.0.5", "second-dialog@10.0.0.5")):
        base = t + 10 * i
        pkts.append((base, udp_frame(PHONE, 5060, PROXY, 5060,
                                     _sip("INVITE", call_id, i + 1, request=True))))
        pkts.append((base + 0.05, udp_frame(PROXY, 5060, PHONE, 5060,
                                            _sip("486 Busy Here", call_id, i + 1,
                                                 request=False))))
    return pcap(pkts)


def _same_flow(row: dict[str, Any]) -> dict[str, Any]:
    """A flow's conn.log row without where its packets sit in the file."""
    return {k: v for k, v in row.items() if k not in ("first_frame", "last_frame")}


def test_two_sip_dialogs_on_the_same_flows_are_two_calls_with_two_uids() -> None:
    result = analyze_capture(io.BytesIO(_two_dialogs()), hash_capture=False)
    calls = result.analysis.calls
    assert len(result.flows) == 1
    assert [c.extra.get("sip_call_id") for c in calls] == [
        "first-dialog@10.0.0.5", "second-dialog@10.0.0.5"]
    assert calls[0].flow_uids == calls[1].flow_uids
    assert calls[0].uid != calls[1].uid


def test_the_same_capture_gives_the_same_uids_every_time(tmp_path: Path) -> None:
    data = (ROOT / "captures" / "sample-call.pcap").read_bytes()
    copy = tmp_path / "renamed.pcap"
    copy.write_bytes(data)
    a = analyze_capture(ROOT / "captures" / "sample-call.pcap", hash_capture=False, workers=1)
    b = analyze_capture(copy, hash_capture=False, workers=2)
    c = analyze_capture(io.BytesIO(data), hash_capture=False)
    for other in (b, c):
        assert [f.uid for f in other.flows] == [f.uid for f in a.flows]
        assert [k.uid for k in other.analysis.calls] == [k.uid for k in a.analysis.calls]


def test_a_capture_that_begins_with_another_packet_gives_other_uids() -> None:
    # The same packets behind one more at the start: the capture's identity differs, so no
    # flow keeps its uid, although every flow after the first packet is the same.
    header, records = split((ROOT / "captures" / "sample-sip.pcap").read_bytes())
    first_ts = int.from_bytes(records[0][:4], "little") - 1.0
    extra = split(pcap([(first_ts, udp_frame("192.0.2.9", 9, "192.0.2.10", 9, b"x"))]))[1]
    longer = header + b"".join(extra + records)
    a = analyze_capture(io.BytesIO(header + b"".join(records)), hash_capture=False)
    b = analyze_capture(io.BytesIO(longer), hash_capture=False)
    assert len(b.flows) == len(a.flows) + 1
    assert not {f.uid for f in a.flows} & {f.uid for f in b.flows}
    assert not {c.uid for c in a.analysis.calls} & {c.uid for c in b.analysis.calls}


def test_an_answered_and_a_blocked_call_that_begin_alike_have_two_uids() -> None:
    # The two samples share their first packets (one identity) and part at the media.
    ok = analyze_capture(ROOT / "captures" / "sample-call.pcap", hash_capture=False)
    blocked = analyze_capture(ROOT / "captures" / "sample-blocked.pcap", hash_capture=False)
    (a,), (b,) = ok.analysis.calls, blocked.analysis.calls
    assert (str(a.verdict.kind), str(b.verdict.kind)) == ("ok", "blocked")
    assert a.uid != b.uid
    # Flows that are the same in both (the DNS look-ups, the signalling: the same packets
    # at the same times, at other places in the files) keep one uid; a uid the two share
    # always names the same flow.
    rows_a = {f.uid: _same_flow(f.conn_dict()) for f in ok.flows}
    rows_b = {f.uid: _same_flow(f.conn_dict()) for f in blocked.flows}
    shared = rows_a.keys() & rows_b.keys()
    assert shared and all(rows_a[u] == rows_b[u] for u in shared)


def test_a_live_captures_ring_file_names_its_flows_as_the_live_probe_did(
        tmp_path: Path) -> None:
    # The live probe names flows after the stream's first packet; a ring file analysed on
    # its own (marsad verify, evidence) starts elsewhere in the stream, and takes the
    # stream's identity from the ring's index.json, so its flows keep their live uids.
    import json

    from api.live import LiveConfig, LiveProbe
    from policy.rules import load_policy
    from probe.ring import RingConfig, ring_origin

    ring_dir = tmp_path / "ring"
    out = io.StringIO()
    cfg = LiveConfig(source="-", ring=RingConfig(ring_dir, file_bytes=30_000,
                                                  file_age_s=1e9))
    with (ROOT / "captures" / "sample-call.pcap").open("rb") as fh:
        LiveProbe(cfg, load_policy(), out, stdin=fh).run()
    live = {r["uid"]: r for r in map(json.loads, out.getvalue().splitlines())
            if r.get("record") == "flow"}
    files = sorted(ring_dir.glob("ring-*.pcap"))
    assert len(files) >= 3
    origin = ring_origin(files[-1])
    assert origin is not None and origin == ring_origin(files[0])
    later = [f for p in files[1:] for f in analyze_capture(p, hash_capture=False).flows]
    # Flows wholly inside a later file (same packets, same times) have their live uid.
    whole = [f for f in later if f.uid in live]
    assert whole and all(live[f.uid]["orig_pkts"] == f.orig_pkts for f in whole)
    # Every reader of the file names them so: conn.log rows (marsad flows) and the
    # one-record-per-line analysis (marsad analyze --jsonl) too.
    from probe import FlowReader
    rows = {r["uid"] for p in files[1:] for r in FlowReader(p, workers=1).conn_rows()}
    assert {f.uid for f in later} == rows
    cli = subprocess.run([sys.executable, "-m", "api.cli", "analyze", "--jsonl",
                          str(files[-1])], capture_output=True, text=True, check=True, cwd=ROOT)
    jsonl = {r["uid"] for r in map(json.loads, cli.stdout.splitlines())
             if r.get("record") == "flow"}
    assert jsonl and jsonl <= {f.uid for f in later}
    # Without the ring's index, the same file is a capture of its own.
    alone = tmp_path / "alone.pcap"
    alone.write_bytes(files[-1].read_bytes())
    assert ring_origin(alone) is None
    assert not {f.uid for f in analyze_capture(alone, hash_capture=False).flows} & set(live)
