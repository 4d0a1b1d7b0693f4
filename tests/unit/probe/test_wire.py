"""Messages between the reader process and its parent (probe.wire)."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest

from probe import FlowReader
from probe.meter import FlowMeter, PayloadColumns
from probe.wire import frames, recv_message, send_message

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
    batch = next(iter(reader._inline()))
    parts = frames(("batch", batch, 7))
    pool_frames = [p for p in parts[1:] if bytes(p) == batch.pool]
    assert batch.pool and pool_frames  # the pool is a frame of its own, not in the pickle
    assert len(parts[0]) < len(batch.pool)
    kind, got, n = _roundtrip(("batch", batch, 7))  # type: ignore[misc]
    assert (kind, n) == ("batch", 7)
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
