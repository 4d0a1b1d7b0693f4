"""The live probe's input: the mended pcap stream, ring retention, tcpdump's words.

Every damaged stream here is made in the test from the sample captures: records
restamped into the future, garbage spliced between records, two captures of
different byte order and resolution put end to end, a stream cut mid-record.
"""

from __future__ import annotations

import json
import os
import random
import struct
from pathlib import Path

import pytest

from api.live import CaptureStats, parse_capture_stats
from probe import CaptureRing, PcapStream, RingConfig
from probe.pcapstream import TIME_JUMP_S
from tests.pcapbytes import split

ROOT = Path(__file__).resolve().parents[3]
CAPTURES = ROOT / "captures"


def restamp(rec: bytes, sec: int) -> bytes:
    return struct.pack("<I", sec) + rec[4:]


def run(stream: PcapStream, data: bytes, step: int) -> bytes:
    out = b"".join(stream.feed(data[i:i + step]) for i in range(0, len(data), step))
    return out + stream.finish()


@pytest.fixture(scope="module")
def call() -> tuple[bytes, list[bytes]]:
    return split((CAPTURES / "sample-call.pcap").read_bytes())


# -- the mended stream --------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 13, 777, 1 << 20])
def test_clean_stream_passes_unchanged(call: tuple[bytes, list[bytes]], step: int) -> None:
    head, recs = call
    data = head + b"".join(recs)
    stream = PcapStream()
    assert run(stream, data, step) == data
    assert (stream.frames, stream.skipped_bytes, stream.time_jumps, stream.stopped_at) == (
        len(recs), 0, 0, None)


@pytest.mark.parametrize("garbage", ["random", "zeros", "ones"])
@pytest.mark.parametrize("step", [1000, 1 << 20])
def test_garbage_mid_stream_is_skipped_and_reading_resumes(
        call: tuple[bytes, list[bytes]], garbage: str, step: int) -> None:
    head, recs = call
    junk = {"random": random.Random(7).randbytes(4096), "zeros": bytes(4096),
            "ones": b"\xff" * 4096}[garbage]
    data = head + b"".join(recs[:254]) + junk + b"".join(recs[254:])
    notes: list[str] = []
    stream = PcapStream(notes.append)
    assert run(stream, data, step) == head + b"".join(recs)
    assert stream.frames == len(recs)
    assert stream.skipped_bytes == 4096 and stream.damaged == 1
    assert stream.stopped_at is None
    at = len(head) + sum(map(len, recs[:254]))
    assert any(f"skipped 4096 bytes of damage at byte {at}" in n for n in notes), notes


def test_a_record_overwritten_by_garbage(call: tuple[bytes, list[bytes]]) -> None:
    # A record whose header is damaged is lost, and only it: the next one is found.
    head, recs = call
    bad = b"\xee" * 16 + recs[100][16:]
    stream = PcapStream()
    out = run(stream, head + b"".join(recs[:100]) + bad + b"".join(recs[101:]), 4096)
    assert out == head + b"".join(recs[:100] + recs[101:])
    assert stream.skipped_bytes == len(bad)


def test_concatenated_captures_are_read_whole() -> None:
    # `cat a.pcap b.pcap`: the second file header starts a section whose records are
    # rewritten into the first's byte order and resolution.
    le_us = (CAPTURES / "pcap-le-usec.pcap").read_bytes()
    be_ns = (CAPTURES / "pcap-be-nsec.pcap").read_bytes()
    le_ns = (CAPTURES / "pcap-le-nsec.pcap").read_bytes()
    _, a = split(le_us)
    _, b = split((CAPTURES / "sample-call.pcap").read_bytes())
    notes: list[str] = []
    stream = PcapStream(notes.append)
    out = run(stream, le_us + be_ns + (CAPTURES / "sample-call.pcap").read_bytes(), 999)
    assert stream.sections == 3 and stream.stopped_at is None
    _, merged = split(out)
    pos, be = 24, []  # the big-endian nanosecond records, as little-endian microseconds
    while pos < len(be_ns):
        sec, frac, incl, orig = struct.unpack_from(">IIII", be_ns, pos)
        be.append(struct.pack("<IIII", sec, frac // 1000, incl, orig)
                  + be_ns[pos + 16:pos + 16 + incl])
        pos += 16 + incl
    assert merged == a + be + b
    assert stream.converted == len(be)
    assert any("capture 2 begins at byte" in n for n in notes)
    # The other way round the microseconds become nanoseconds.
    stream2 = PcapStream()
    out2 = run(stream2, le_ns + le_us, 100)
    assert out2[:24] == le_ns[:24] and stream2.sections == 2
    as_ns = b"".join(r[:4] + struct.pack("<I", struct.unpack_from("<I", r, 4)[0] * 1000) + r[8:]
                     for r in a)
    assert out2 == le_ns + as_ns


def test_concatenated_capture_of_another_link_type_stops_the_stream() -> None:
    first = (CAPTURES / "pcap-le-usec.pcap").read_bytes()
    other = (CAPTURES / "lt-raw101.pcap").read_bytes()
    assert struct.unpack_from("<I", other, 20)[0] != struct.unpack_from("<I", first, 20)[0]
    stream = PcapStream()
    assert run(stream, first + other, 4096) == first
    assert stream.stopped_at == len(first)
    assert "link type" in (stream.stop_message or "")


def test_truncated_stream_says_where(call: tuple[bytes, list[bytes]]) -> None:
    head, recs = call
    data = head + b"".join(recs)
    stream = PcapStream()
    out = run(stream, data[:-10], 4096)
    assert out == head + b"".join(recs[:-1])
    cut = len(data) - len(recs[-1])
    assert stream.stopped_at == cut
    assert stream.stop_message == (f"capture truncated at byte {cut}: last record has "
                                   f"{len(recs[-1]) - 10} of {len(recs[-1])} bytes")
    # A second capture whose file header is cut short.
    head_cut = PcapStream()
    assert run(head_cut, data + head[:10], 4096) == data
    assert head_cut.stop_message == (f"capture truncated at byte {len(data)}: a pcap file "
                                     f"header with 10 of 24 bytes")
    # Garbage with no good record after it is a truncation where the damage began.
    tail = PcapStream()
    run(tail, head + b"".join(recs[:5]) + b"\xee" * 500, 64)
    assert tail.stopped_at == len(head) + sum(map(len, recs[:5]))
    assert tail.skipped_bytes == 500


def test_a_future_timestamp_is_counted_not_dropped(call: tuple[bytes, list[bytes]]) -> None:
    head, recs = call
    future = restamp(recs[300], 4_000_000_000)  # 2096
    data = head + b"".join(recs[:300]) + future + b"".join(recs[301:])
    notes: list[str] = []
    stream = PcapStream(notes.append)
    assert run(stream, data, 4096) == data
    assert stream.time_jumps == 2  # there and back
    assert stream.skipped_bytes == 0
    assert any(n.startswith("frame 301: timestamp jumps +") for n in notes), notes
    assert TIME_JUMP_S <= 3600


def test_pcapng_and_short_input_pass_through() -> None:
    ng = next(CAPTURES.glob("*.pcapng")).read_bytes()
    stream = PcapStream()
    assert run(stream, ng, 1000) == ng and stream.kind == "other" and stream.frames == 0
    short = PcapStream()
    assert run(short, b"\xd4\xc3", 1) == b"\xd4\xc3"


# -- the ring keeps by the wall clock and by size, never by packet time -------------------------


def _ring(tmp_path: Path, now: list[float], **kw: float) -> CaptureRing:
    return CaptureRing(RingConfig(tmp_path, file_bytes=20_000, file_age_s=1e9, **kw),
                       clock=lambda: now[0])


def test_one_future_timestamp_deletes_nothing(tmp_path: Path,
                                              call: tuple[bytes, list[bytes]]) -> None:
    head, recs = call
    now = [1_700_000_000.0]
    ring = _ring(tmp_path, now, keep_s=3600.0)
    recs = list(recs)
    recs[300] = restamp(recs[300], 4_000_000_000)  # stamped 2096
    ring.feed(head + b"".join(recs))
    ring.close()
    assert ring.deleted == 0
    kept = sorted(tmp_path.glob("ring-*.pcap"))
    assert len(kept) == len(ring.files) >= 3
    held = [r for f in ring.files for r in split((tmp_path / f.name).read_bytes())[1]]
    assert held == recs
    # Retention is by the wall clock: an hour later (and not before) the files go.
    now[0] += 3599.0
    ring.tick()
    assert ring.deleted == 0
    now[0] += 2.0
    ring.tick()
    assert ring.deleted == len(kept) and not list(tmp_path.glob("ring-*.pcap"))
    assert json.loads((tmp_path / "index.json").read_text())["files"] == []


def test_a_clock_step_beyond_retention_deletes_nothing(
        tmp_path: Path, call: tuple[bytes, list[bytes]]) -> None:
    head, recs = call
    step = 3 * 86400  # the capture's clock steps three days ahead halfway through
    half = len(recs) // 2
    stepped = recs[:half] + [restamp(r, struct.unpack_from("<I", r)[0] + step)
                             for r in recs[half:]]
    ring = _ring(tmp_path, [1_700_000_000.0], keep_s=86400.0)
    ring.feed(head + b"".join(stepped))
    ring.close()
    assert ring.deleted == 0 and sum(f.packets for f in ring.files) == len(recs)
    assert all(f.closed_at == 1_700_000_000.0 for f in ring.files)


def test_size_budget_still_applies(tmp_path: Path, call: tuple[bytes, list[bytes]]) -> None:
    head, recs = call
    ring = _ring(tmp_path, [1_700_000_000.0], total_bytes=40_000)
    ring.feed(head + b"".join(recs))
    ring.close()
    assert ring.deleted >= 1 and sum(f.size for f in ring.files) <= 40_000


# -- tcpdump's words ----------------------------------------------------------------------------


def test_statistics_on_one_line_are_parsed_not_shown() -> None:
    # tcpdump 4.99 on SIGUSR1 prints its counts on one line (at exit, one a line).
    line = ("tcpdump: 412 packets captured, 415 packets received by filter, "
            "3 packets dropped by kernel")
    assert parse_capture_stats([line]) == CaptureStats(captured=412, received=415, dropped=3)
    assert parse_capture_stats(["tcpdump: listening on lo, 3 packets captured soon"]) == \
        CaptureStats()


def test_tcpdump_failures_are_explained() -> None:
    from api.live import _diagnose_tcpdump
    perm = _diagnose_tcpdump("eth0", "tcpdump", [
        "tcpdump: eth0: You don't have permission to perform this capture on that device",
        "(socket: Operation not permitted)"], 1, "empty input")
    assert "root" in perm and "CAP_NET_RAW" in perm and "CAP_NET_ADMIN" in perm
    assert "setcap cap_net_raw,cap_net_admin=eip $(which tcpdump)" in perm
    nodev = _diagnose_tcpdump("eth9", "tcpdump", [
        "tcpdump: eth9: No such device exists", "(No such device exists)"], 1, "empty input")
    assert nodev == "no interface named 'eth9' (ip link lists them)"
    other = _diagnose_tcpdump("eth0", "tcpdump", ["tcpdump: syntax error in filter expression"],
                              1, "empty input")
    assert other == "tcpdump could not capture on eth0: syntax error in filter expression"


# -- what the probe says about itself -----------------------------------------------------------


def test_processing_lag_and_probe_counters_as_metrics() -> None:
    from prometheus_client import CollectorRegistry

    from api.metrics import MarsadMetrics
    from probe.meter import MeterStats
    reg = CollectorRegistry()
    m = MarsadMetrics(reg, clock=lambda: 1_790_000_000.0)
    # A capture of 2023 replayed in 2026 with nothing waiting: no lag.
    m.observe_meter(MeterStats(packets=40, last_ts=1_700_001_029.0), lag_s=0.0)
    assert reg.get_sample_value("marsad_capture_processing_lag_seconds") == 0.0
    m.observe_probe(skipped_bytes=4096, time_jumps=2, unledgered=3)
    m.observe_probe(skipped_bytes=4096, time_jumps=2, unledgered=3)  # cumulative
    assert reg.get_sample_value("marsad_capture_skipped_bytes_total") == 4096
    assert reg.get_sample_value("marsad_capture_time_jumps_total") == 2
    assert reg.get_sample_value("marsad_ledger_unrecorded_verdicts_total") == 3


def test_status_file_carries_the_evidence_fields(tmp_path: Path) -> None:
    from api.probe_status import (
        STATUS_FILE,
        ProbeState,
        ProbeStatus,
        ProbeStatusError,
        read_probe_status,
        write_probe_status,
    )
    status = ProbeStatus(state=ProbeState.STOPPED, interface="-", pid=1, started_at=1.0,
                         updated_at=2.0, lag_s=0.25, skipped_bytes=4096, time_jumps=2,
                         truncated_at=61879, ledgered=2, unledgered=1)
    write_probe_status(tmp_path, status)
    assert read_probe_status(tmp_path) == status
    # A file written before these fields existed still reads (as zero and null).
    obj = json.loads((tmp_path / STATUS_FILE).read_text())
    for key in ("lag_s", "skipped_bytes", "time_jumps", "truncated_at", "ledgered",
                "unledgered"):
        del obj[key]
    (tmp_path / STATUS_FILE).write_text(json.dumps(obj))
    old = read_probe_status(tmp_path)
    assert old is not None and (old.truncated_at, old.unledgered, old.lag_s) == (None, 0, 0.0)
    obj["truncated_at"] = -1
    (tmp_path / STATUS_FILE).write_text(json.dumps(obj))
    with pytest.raises(ProbeStatusError, match="truncated_at"):
        read_probe_status(tmp_path)


def test_flows_end_on_a_later_clock_when_no_packet_comes() -> None:
    from probe.decode import Decoder
    from probe.meter import FlowMeter, MeterConfig
    from probe.sources import open_source
    meter = FlowMeter(MeterConfig(udp_idle_s=3.0, tcp_idle_s=3.0, other_idle_s=3.0,
                                  tcp_close_s=1.0))
    decoder = Decoder()
    ended = []
    with open_source(CAPTURES / "sample-call.pcap") as src:
        for batch in src.batches():
            ended += meter.feed(batch, decoder.decode(batch))
    active = meter.active_flows()
    last = meter.stats.last_ts
    assert active > 0
    assert meter.expire_until(last) == [] and meter.expire_until(last + 0.5) == []
    later = meter.expire_until(last + 3.5)  # the wall clock ran on past every idle timeout
    assert len(later) == active and meter.active_flows() == 0
    assert all(r.end_reason in ("idle", "tcp-close") for r in later)
    assert meter.stats.last_ts == last  # the capture clock is the packets' own


@pytest.mark.parametrize("chunk", [7, 1000, 1 << 20])
def test_ring_stops_at_a_corrupt_record_header_and_keeps_what_came_before(
        tmp_path: Path, call: tuple[bytes, list[bytes]], chunk: int) -> None:
    head, recs = call
    order = "<" if head[:4] == b"\xd4\xc3\xb2\xa1" else ">"
    bad = struct.pack(order + "IIII", 1, 0, 1 << 25, 1 << 25)  # 32 MiB: not believed
    data = head + b"".join(recs[:50]) + bad + b"".join(recs[50:60])
    ring = _ring(tmp_path, [1_700_000_000.0])
    for at in range(0, len(data), chunk):
        ring.feed(data[at:at + chunk])
    ring.close()
    assert ring.disabled is not None and "corrupt record header after frame 50" in ring.disabled
    assert ring.frames == 50
    held = [r for f in ring.files for r in split((tmp_path / f.name).read_bytes())[1]]
    assert held == recs[:50]


def test_the_probes_pipes_are_widened(tmp_path: Path) -> None:
    import fcntl

    from api.live import PIPE_BYTES, widen_pipe

    r, w = os.pipe()
    try:
        assert fcntl.fcntl(w, fcntl.F_GETPIPE_SZ) < PIPE_BYTES
        widen_pipe(w)
        assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == PIPE_BYTES  # one buffer, both ends
    finally:
        os.close(r)
        os.close(w)
    f = tmp_path / "capture.pcap"
    f.write_bytes(b"\0" * 24)
    with f.open("rb") as fh:
        widen_pipe(fh.fileno())  # a file is left as it is


@pytest.mark.parametrize("gz", [False, True])
def test_a_cut_input_is_an_error_however_it_is_framed(tmp_path: Path, gz: bool) -> None:
    """A classic pcap is checked by the stream mender, a compressed one by the reader:
    either way the cut is logged as an error (the exit status is 3)."""
    import gzip
    import subprocess
    import sys

    from tests.conftest import ROOT
    data = (ROOT / "captures" / "sample-call.pcap").read_bytes()[:100_000]
    cap = tmp_path / ("cut.pcap.gz" if gz else "cut.pcap")
    cap.write_bytes(gzip.compress(data) if gz else data)
    # Run in tmp_path: the probe keeps its ring in ./captures/ring by default, which in the
    # project's root would add a capture beside the bundled ones other tests read.
    out = subprocess.run([sys.executable, "-m", "api.cli", "probe", "-r", str(cap)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 3
    assert "ERROR input: capture truncated at byte" in out.stderr
    assert "WARNING input: capture truncated" not in out.stderr
