"""``FlowReader.observed``: flows with an order-free observation of each, part of which the
reader process computes. Whoever observes, the pairs and their order are the same."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from classifier.engine import Classifier
from probe import FlowReader, FlowRecord, MeterConfig
from probe.meter import FlowMeter, build_records
from probe.records import PayloadSamples
from probe.wire import Batch, Observed

ROOT = Path(__file__).resolve().parents[3]
CAPTURES = ROOT / "captures"
_EVERY_CAPTURE = sorted(p.name for p in CAPTURES.iterdir()
                        if p.suffix in (".pcap", ".pcapng", ".gz")
                        and not p.name.startswith("bad-"))


def _digest(rec: FlowRecord) -> tuple[str, int, str, int]:
    """What an observer sees of a flow: its payload bytes and timing series."""
    h = hashlib.sha256()
    for s in rec.payloads:
        h.update(s.data)
    return rec.uid, len(rec.payloads), h.hexdigest(), len(rec.pkt_ts)


def _where(rec: FlowRecord) -> tuple[tuple[str, int, str, int], int]:
    return _digest(rec), os.getpid()


@pytest.mark.parametrize("name", _EVERY_CAPTURE)
def test_same_pairs_in_the_same_order_with_one_or_two_processes(name: str) -> None:
    path = CAPTURES / name
    one = [(r.conn_dict(), ob) for r, ob in FlowReader(path, workers=1).observed(_digest)]
    two = [(r.conn_dict(), ob) for r, ob in FlowReader(path, workers=2).observed(_digest)]
    assert one == two
    assert [ob for _, ob in one] == [_digest(r) for r in FlowReader(path, workers=1)]


def test_the_reader_process_takes_a_share_and_order_holds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Small batches and chunks: many chunks end before and at the end of input; some are
    observed in the reader process, the rest here, and the flows still come out in order."""
    import probe.run as run
    monkeypatch.setattr(run, "EOF_CHUNK", 2)
    path = CAPTURES / "sample-call.pcap"
    cfg = MeterConfig(chunk_size=4096)
    want = [_digest(r) for r in FlowReader(path, cfg, workers=1)]
    pairs = list(FlowReader(path, cfg, workers=2).observed(_where))
    assert [ob for ob, _ in (p[1] for p in pairs)] == want
    assert [r.uid for r, _ in pairs] == [d[0] for d in want]
    pids = {pid for _, (_, pid) in pairs}
    assert pids - {os.getpid()}, "the reader process observed nothing"


def test_classifier_observations_are_equal_whoever_makes_them() -> None:
    path = CAPTURES / "sample-call.pcap"
    cl = Classifier()
    cfg = MeterConfig(chunk_size=4096)
    one = [ob for _, ob in FlowReader(path, cfg, workers=1).observed(cl.observe)]
    two = [ob for _, ob in FlowReader(path, cfg, workers=2).observed(cl.observe)]
    assert one == two and len(one) > 3


def test_a_truncated_capture_stops_at_the_same_byte() -> None:
    path = CAPTURES / "bad-truncated.pcap"
    a = FlowReader(path, workers=1)
    b = FlowReader(path, workers=2)
    assert [ob for _, ob in a.observed(_digest)] == [ob for _, ob in b.observed(_digest)]
    assert not b.status.complete and b.status.stopped_at == a.status.stopped_at
    assert b.stats.packets == a.stats.packets and b.stats.flows == a.stats.flows


def _fails(rec: FlowRecord) -> int:
    if rec.orig_pkts + rec.resp_pkts > 0:
        raise ValueError(f"cannot observe {rec.uid}")
    return 0


def test_an_observer_failing_in_the_reader_process_is_raised_here() -> None:
    path = CAPTURES / "sample-call.pcap"
    with pytest.raises((RuntimeError, ValueError), match="cannot observe"):
        list(FlowReader(path, MeterConfig(chunk_size=4096), workers=2).observed(_fails))


def test_a_stream_is_observed_here_only() -> None:
    """On a pipe the reader may wait on input for any time: it is never handed flows, so
    none waits on it."""
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from probe import FlowReader\n"
        "pids = {os.getpid() == pid for _, pid in\n"
        "        FlowReader('-', workers=2).observed(lambda r: os.getpid())}\n"
        "print(sorted(pids))\n")
    data = (CAPTURES / "sample-call.pcap").read_bytes()
    out = subprocess.run([sys.executable, "-c", script], input=data, capture_output=True,
                         timeout=60, check=True)
    assert out.stdout.decode().strip() == "[True]"


def test_stopping_early_leaves_no_reader_process() -> None:
    path = CAPTURES / "sample-call.pcap"
    it = FlowReader(path, MeterConfig(chunk_size=4096), workers=2).observed(_digest)
    next(it)
    t = time.monotonic()
    it.close()
    assert not multiprocessing.active_children()
    assert time.monotonic() - t < 4, "closing waited on a join timeout"


def _same(x: object, y: object) -> bool:
    """Deep equality of record values (numpy arrays by dtype and content)."""
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                and x.dtype == y.dtype and np.array_equal(x, y))
    if isinstance(x, PayloadSamples) or isinstance(y, PayloadSamples):
        return [tuple(s) for s in x] == [tuple(s) for s in y]  # type: ignore[attr-defined]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return type(x) is type(y) and all(
            _same(getattr(x, f.name), getattr(y, f.name)) for f in dataclasses.fields(x))
    if isinstance(x, tuple | list) and isinstance(y, tuple | list):
        return len(x) == len(y) and all(_same(a, b) for a, b in zip(x, y, strict=True))
    return x == y


def _same_record(a: FlowRecord, b: FlowRecord) -> bool:
    return _same(a, b)


@pytest.mark.parametrize("name", ["sample-call.pcap", "sample-sip.pcap", "icmp-errors.pcap",
                                  "malformed-packets.pcap", "encap-gre.pcap"])
def test_light_records_built_from_columns_equal_lightened_ones(name: str) -> None:
    meter = FlowMeter()
    reader = FlowReader(CAPTURES / name, workers=1)
    ended = [e for m in reader._inline() if isinstance(m, Batch)
             for e in meter.apply_gathered(m.prepared)]
    ended += list(meter.finish_gathered(chunk=3))
    n = 0
    for e in ended:
        for whole, light in zip(build_records(e), build_records(e, light=True), strict=True):
            assert _same_record(whole.lightened(), light)
            assert light.lightened() is light
            assert isinstance(light.payloads, PayloadSamples)
            assert not light.payloads.has_data
            n += 1
    assert n > 3


@pytest.mark.parametrize("workers", [1, 2])
def test_observed_flows_come_out_light(workers: int) -> None:
    path = CAPTURES / "sample-call.pcap"
    cfg = MeterConfig(chunk_size=4096)
    whole = {r.uid: r for r in FlowReader(path, cfg, workers=1)}
    for rec, _ in FlowReader(path, cfg, workers=workers).observed(_digest):
        assert len(rec.pkt_ts) == 0 and all(s.data == b"" for s in rec.payloads)
        assert _same_record(rec, whole[rec.uid].lightened())


def test_the_reader_outbox_keeps_order_and_stops_on_a_closed_pipe() -> None:
    from probe.run import _Outbox
    from probe.wire import recv_from_reader
    recv, send = multiprocessing.Pipe(duplex=False)
    out = _Outbox(send)
    msgs = [Observed(n, [np.arange(n)]) for n in (0, 5, 100_000)]
    for m in msgs:
        out.send(m)
    for m in msgs:
        got = recv_from_reader(recv)
        assert isinstance(got, Observed) and got.seq == m.seq
        body, = got.observations
        assert np.array_equal(body, m.observations[0])
        assert not body.flags.writeable or m.seq == 0  # made on the received buffer
    recv.close()  # the parent went away: sending fails instead of blocking
    big = np.zeros(1 << 22, dtype=np.uint8)
    with pytest.raises(BrokenPipeError):
        for _ in range(8):
            out.send(Observed(0, [big]))
            time.sleep(0.05)
    out.close()


def test_a_reader_started_early_takes_its_observer_later(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """start() forks the reader process before the observer exists (the CLI loads the
    classifier meanwhile); observed() then sends it the observer, pickled."""
    import probe.run as run
    monkeypatch.setattr(run, "EOF_CHUNK", 2)
    path = CAPTURES / "sample-call.pcap"
    cfg = MeterConfig(chunk_size=4096)
    want = [_digest(r) for r in FlowReader(path, cfg, workers=1)]
    reader = FlowReader(path, cfg, workers=2)
    reader.start()
    time.sleep(0.2)  # the process reads ahead meanwhile
    pairs = list(reader.observed(_where))
    assert [ob for ob, _ in (p[1] for p in pairs)] == want
    assert {pid for _, (_, pid) in pairs} - {os.getpid()}, "the reader process observed nothing"
    assert reader.status.complete


def test_a_reader_started_early_iterates_without_an_observer() -> None:
    path = CAPTURES / "sample-call.pcap"
    want = list(FlowReader(path, workers=1).conn_rows())
    reader = FlowReader(path, workers=2)
    reader.start()
    assert list(reader.conn_rows()) == want


def test_starting_a_reader_on_a_stream_does_nothing() -> None:
    cap = CAPTURES / "encap-gtpu.pcap"
    data = cap.read_bytes()
    r, w = os.pipe()
    try:
        assert os.write(w, data) == len(data)  # it fits in the pipe: no writer thread
    finally:
        os.close(w)
    with os.fdopen(r, "rb") as src:
        reader = FlowReader(src, workers=2)
        reader.start()
        assert reader._started is None  # a pipe is read in this process only
        got = [rec.uid for rec, _ in reader.observed(_digest)]
    assert got and got == [rec.uid for rec in FlowReader(cap, workers=1)]


@pytest.fixture(scope="module")
def many_flows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few hundred flows, most of them still open at the end of input."""
    out = tmp_path_factory.mktemp("eof") / "calls.pcap"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_capture.py"), "--profile", "calls",
                    "--packets", "20000", "--out", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


def test_at_the_end_of_input_the_reader_holds_no_more_than_is_left_here(
        many_flows: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Emptying the table, this process hands a chunk to the reader process only while the
    flows waiting there, the chunk's with them, are no more than those still in the table,
    so that it does not end up waiting for them: the last chunks are observed here.

    One batch (nothing is shared before the end of input) and a reader process that answers
    nothing until every chunk has been taken make the share exact: each chunk goes to it
    exactly when the flows already sent, plus its own, fit in what is left after it."""
    import probe.run as run
    chunk = 16
    monkeypatch.setattr(run, "EOF_CHUNK", chunk)
    monkeypatch.setattr(run, "SHARE_AHEAD", 10_000)
    taken = multiprocessing.get_context("fork").Event()
    here = os.getpid()
    sizes: list[tuple[int, int]] = []  # (flows of each chunk, flows still in the table after it)
    gathered = run.FlowMeter.finish_gathered

    def counting(meter: FlowMeter, n: int):  # type: ignore[no-untyped-def]
        for e in gathered(meter, n):
            sizes.append((len(e), meter.active_flows()))
            yield e
        taken.set()

    def observe(rec: FlowRecord) -> tuple[tuple[str, int, str, int], int]:
        if os.getpid() != here and rec.end_reason == "eof":
            assert taken.wait(60)
        return _where(rec)

    cfg = MeterConfig(chunk_size=64 << 20)
    want = [_digest(r) for r in FlowReader(many_flows, cfg, workers=1)]
    monkeypatch.setattr(run.FlowMeter, "finish_gathered", counting)
    pairs = list(FlowReader(many_flows, cfg, workers=2).observed(observe))
    assert [ob for _, (ob, _) in pairs] == want
    eof = [pid != here for r, (_, pid) in pairs if r.end_reason == "eof"]
    assert len(eof) > 100 and len(sizes) > 8
    expect, sent = [], 0
    for n, still in sizes:
        share = sent + n <= still
        sent += n if share else 0
        expect += [share] * n
    assert eof == expect
    assert any(eof) and not any(eof[-2 * chunk:])


@pytest.mark.parametrize("light", [False, True])
def test_light_samples_share_one_read_only_column_of_zeros(light: bool) -> None:
    """A light flow's samples keep their frames, times and directions; their offsets and
    lengths (all zero) are one shared array per number of samples, not one per flow."""
    from probe.records import no_offsets
    path = CAPTURES / "sample-call.pcap"
    if light:
        meter = FlowMeter()
        reader = FlowReader(path, workers=1)
        ended = [e for m in reader._inline() if isinstance(m, Batch)
                 for e in meter.apply_gathered(m.prepared)]
        ended += list(meter.finish_gathered())
        recs = [r for e in ended for r in build_records(e, light=True)]
    else:
        recs = [r.lightened() for r in FlowReader(path, workers=1)]
    sampled = [r for r in recs if len(r.payloads)]
    assert len(sampled) > 3
    for r in sampled:
        pay = r.payloads
        assert isinstance(pay, PayloadSamples) and not pay.has_data
        zeros = no_offsets(len(pay))
        assert pay._off is zeros and pay._len is zeros and not zeros.flags.writeable
        assert not zeros.any()
