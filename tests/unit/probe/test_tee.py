"""The tee process: the stream passed on unchanged, kept in the ring, and what it says of
both — on the sample call capture, whole, cut short, and a stream that never ends."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from probe import CaptureRing, RingConfig, TeeProcess
from tests.pcapbytes import split

CAPTURES = Path(__file__).resolve().parents[3] / "captures"


@pytest.fixture(scope="module")
def call() -> bytes:
    return (CAPTURES / "sample-call.pcap").read_bytes()


def _drain(fd: int, into: bytearray) -> threading.Thread:
    def run() -> None:
        while chunk := os.read(fd, 1 << 16):
            into.extend(chunk)
        os.close(fd)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _start(data: bytes | None, ring: CaptureRing | None) -> tuple[TeeProcess, bytearray,
                                                                 threading.Thread, int]:
    """A tee reading a pipe fed ``data`` (and left open when ``data`` is None), its output
    collected; returns the tee, the output, the collecting thread and the input's write
    end (closed already when ``data`` was given)."""
    src_r, src_w = os.pipe()
    sink_r, sink_w = os.pipe()
    tee = TeeProcess(src_r, sink_w, ring, not_ours=(src_w, sink_r))
    os.close(src_r)
    os.close(sink_w)
    out = bytearray()
    drain = _drain(sink_r, out)
    if data is not None:
        view = memoryview(data)
        while view:
            view = view[os.write(src_w, view):]
        os.close(src_w)
    return tee, out, drain, src_w


def test_stream_passed_on_and_kept_whole(call: bytes, tmp_path: Path) -> None:
    _, records = split(call)
    tee, out, drain, _ = _start(call, CaptureRing(RingConfig(tmp_path)))
    drain.join(timeout=30)
    state = tee.finish(done=len(records))
    assert bytes(out) == call
    assert state.ended and state.frames == len(records) == tee.frames
    assert state.bytes_read == len(call) == tee.bytes_read
    assert state.stopped_at is None and state.skipped_bytes == 0
    assert state.oldest_waiting is None  # everything metered
    # the ring holds the stream in closed files whose SHA-256 the state gives
    assert state.ring_closed_through == len(records)
    [kept] = state.ring_files
    data = (tmp_path / kept.name).read_bytes()
    assert data == call and kept.sha256 == hashlib.sha256(data).hexdigest()
    assert state.spanning(1, 1) == [kept] and state.spanning(len(records) + 1, 10**6) == []


def test_cut_short_says_where(call: bytes) -> None:
    cut = len(call) - 7
    tee, out, drain, _ = _start(call[:cut], None)
    drain.join(timeout=30)
    state = tee.finish(done=0)
    assert state.ended and state.stopped_at is not None and state.stopped_at < cut
    assert state.stop_message and str(state.stopped_at) in state.stop_message
    assert call.startswith(bytes(out)) and len(out) == state.stopped_at
    assert state.oldest_waiting is not None  # nothing was metered: the lag has a start


def test_seal_and_stop_on_a_stream_that_goes_on(call: bytes, tmp_path: Path) -> None:
    """A file is closed for the ledger while the input is still open; stopping ends the
    tee where it is, the ring closed, and the reader sees the end of the stream."""
    head, records = split(call)
    tee, out, drain, src_w = _start(None, CaptureRing(RingConfig(tmp_path)))
    try:
        os.write(src_w, head + b"".join(records[:10]))
        deadline = time.monotonic() + 30
        while tee.frames < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert tee.frames == 10 and tee.last_arrival > 0
        assert tee.report(done=4).oldest_waiting is not None
        state = tee.seal(7, done=10)
        assert not state.ended and state.ring_closed_through == 10
        assert len(state.ring_files) == 1 and state.ring_files[0].packets == 10
        final = tee.stop(done=10)
        assert final.ended and final.frames == 10
        drain.join(timeout=30)
        assert not drain.is_alive() and bytes(out) == head + b"".join(records[:10])
        assert tee.report(done=10) == final  # nothing changes any more
    finally:
        os.close(src_w)


def test_stopped_mid_stream_the_reader_gets_whole_records(call: bytes) -> None:
    """Stopped while it copies a stream that keeps coming to a reader that keeps reading:
    what was passed on ends at a record's end, and the frames it says it passed on are
    the records the reader got."""
    head, records = split(call)
    body = b"".join(records)
    tee, out, drain, src_w = _start(None, None)
    done = threading.Event()

    def feed() -> None:
        with open(src_w, "wb", closefd=False) as fh:
            fh.write(head)
            while not done.is_set():
                try:
                    fh.write(body)
                    fh.flush()
                except (BrokenPipeError, ValueError):
                    return

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 30
        while tee.frames < 3 * len(records) and time.monotonic() < deadline:
            time.sleep(0.01)
        final = tee.stop(done=0)
        drain.join(timeout=30)
        assert final.ended and not drain.is_alive()
        got_head, got = split(bytes(out))  # whole records only (split asserts it)
        assert got_head == head and len(got) == final.frames >= 3 * len(records)
    finally:
        done.set()
        os.close(src_w)
        feeder.join(timeout=10)


def test_finish_on_an_input_that_does_not_end_stops_it(call: bytes) -> None:
    head, records = split(call)
    tee, out, drain, src_w = _start(None, None)
    try:
        os.write(src_w, head + b"".join(records[:5]))
        started = time.monotonic()
        final = tee.finish(done=1, wait_s=0.5)
        assert final.ended and 1 <= final.frames <= 5 and time.monotonic() - started < 10
        drain.join(timeout=30)
        assert bytes(out) == head + b"".join(records[:final.frames])
    finally:
        os.close(src_w)
