"""Messages between the reader process and its parent (probe.wire)."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from probe import FlowReader
from probe.errors import CaptureError, UnsupportedLinkType
from probe.meter import FlowMeter, PayloadColumns
from probe.sources import ReadStatus
from probe.wire import (
    Batch,
    CaptureFailed,
    End,
    NoMoreRequests,
    Observe,
    Observed,
    ReaderFailed,
    SetObserver,
    frames,
    recv_from_reader,
    recv_message,
    recv_request,
    send_message,
)

CAPTURES = Path(__file__).resolve().parents[3] / "captures"


def _roundtrip(msg: object) -> object:
    recv, send = multiprocessing.Pipe(duplex=False)
    t = threading.Thread(target=send_message, args=(send, msg))
    t.start()  # a message may be larger than the pipe holds
    got = recv_message(recv)
    t.join()
    return got


def test_a_batch_crosses_with_its_arrays_and_pool_out_of_band() -> None:
    reader = FlowReader(CAPTURES / "sample-call.pcap", workers=1)
    first = next(iter(reader._inline()))
    assert isinstance(first, Batch)
    batch = first.prepared
    parts = frames(Batch(batch, 7, 2))
    pool_frames = [p for p in parts[1:] if bytes(p) == batch.pool]
    assert batch.pool and pool_frames  # the pool is a frame of its own, not in the pickle
    assert len(parts[0]) < len(batch.pool)
    msg = _roundtrip(Batch(batch, 7, 2))
    assert isinstance(msg, Batch) and (msg.bytes_read, msg.queued) == (7, 2)
    got = msg.prepared
    assert got.pool == batch.pool and isinstance(got.pool, bytes)
    for name in ("frame", "ts", "gkeys", "pay_off", "rtp_ssrc"):
        assert np.array_equal(getattr(got, name), getattr(batch, name))
        assert getattr(got, name).dtype == getattr(batch, name).dtype
    # the flows metered from the batch that crossed are those of the original
    a, b = FlowMeter(reader.config), FlowMeter(reader.config)
    a.apply_gathered(batch)
    b.apply_gathered(got)
    ra = [r.conn_dict() for r in a.finish()]
    rb = [r.conn_dict() for r in b.finish()]
    assert ra == rb and ra


def test_payload_columns_pool_crosses_out_of_band_and_pickles_in_band_too() -> None:
    cols = PayloadColumns(b"\x01\x02\x03payload", *(np.arange(3, dtype=np.int64),) * 2,
                          np.zeros(3, dtype=np.uint8), *(np.arange(3, dtype=np.int64),) * 4)
    got = _roundtrip(cols)
    assert isinstance(got, PayloadColumns) and got.pool == cols.pool
    assert np.array_equal(got.a, cols.a)
    again = pickle.loads(pickle.dumps(cols))  # the default protocol: in band
    assert again.pool == cols.pool and np.array_equal(again.off, cols.off)


def test_a_closed_pipe_is_end_of_file() -> None:
    recv, send = multiprocessing.Pipe(duplex=False)
    send.close()
    with pytest.raises(EOFError):
        recv_message(recv)


def _typed_roundtrip(msg: object, recv_typed: object) -> object:
    recv, send = multiprocessing.Pipe(duplex=False)
    t = threading.Thread(target=send_message, args=(send, msg))
    t.start()
    try:
        return recv_typed(recv)  # type: ignore[operator]
    finally:
        t.join()


def test_every_message_kind_crosses_as_itself() -> None:
    status = ReadStatus("x.pcap", complete=False, stopped_at=40, message="cut")
    meter = FlowMeter()
    for m in FlowReader(CAPTURES / "sample-call.pcap", workers=1)._inline():
        if isinstance(m, Batch):
            meter.apply_gathered(m.prepared)
    ended = next(meter.finish_gathered())
    assert len(ended)
    for msg in (End(status), Observed(3, [("a", 1), None]), CaptureFailed(True, "lt 147"),
                ReaderFailed("ValueError: x")):
        assert _typed_roundtrip(msg, recv_from_reader) == msg
    for req in (SetObserver(len), NoMoreRequests()):
        assert _typed_roundtrip(req, recv_request) == req
    got = _typed_roundtrip(Observe(9, ended), recv_request)
    assert isinstance(got, Observe) and got.seq == 9 and len(got.ended) == len(ended)


def test_a_message_of_the_wrong_direction_is_refused() -> None:
    with pytest.raises(TypeError, match="not a message of the reader process"):
        _typed_roundtrip(NoMoreRequests(), recv_from_reader)
    with pytest.raises(TypeError, match="not a request"):
        _typed_roundtrip(("batch", 1, 2), recv_request)


def test_a_capture_failure_is_raised_as_the_error_it_was() -> None:
    unsupported = CaptureFailed.of(UnsupportedLinkType("x: unsupported link type 147"))
    other = CaptureFailed.of(CaptureError("x: not a capture"))
    assert type(unsupported.error()) is UnsupportedLinkType
    assert str(unsupported.error()) == "x: unsupported link type 147"
    assert type(other.error()) is CaptureError and str(other.error()) == "x: not a capture"
