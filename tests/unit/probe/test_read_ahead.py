"""A pipe is read ahead of the batches that take it: its writer is not held up while a batch
is decoded, what it wrote comes out whole and in order, and its end and errors come through."""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest

from probe.sources import PIPE_GAP_S, READ_AHEAD_BYTES, READ_AHEAD_PIECE, _ReadAhead


def _writer(fd: int, data: bytes, written: list[int]) -> threading.Thread:
    def run() -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(fd, view[:65536])
                written[0] += n
                view = view[n:]
        except BrokenPipeError:
            pass
        finally:
            os.close(fd)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_the_writer_runs_ahead_and_everything_comes_out_in_order() -> None:
    r, w = os.pipe()  # 64 KiB: without reading ahead, the writer stops there
    data = os.urandom(READ_AHEAD_BYTES - (1 << 20))
    written = [0]
    ahead = _ReadAhead(r)
    os.close(r)
    writer = _writer(w, data, written)
    deadline = time.monotonic() + 10
    while written[0] < len(data) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written[0] == len(data), "the pipe was not read while no batch took it"
    got = bytearray()
    while chunk := ahead.read(3 << 20):
        assert len(chunk) <= 3 << 20
        got += chunk
    assert bytes(got) == data
    assert ahead.read(100) == b""  # the end stays the end
    writer.join(5)


def test_reading_ahead_is_bounded() -> None:
    r, w = os.pipe()
    data = bytes(READ_AHEAD_BYTES + (8 << 20))
    written = [0]
    ahead = _ReadAhead(r)
    os.close(r)
    _writer(w, data, written)
    time.sleep(1.0)
    # what waits in the queue, what the thread holds and what the pipe holds: no more
    assert written[0] <= READ_AHEAD_BYTES + READ_AHEAD_PIECE + (1 << 20)
    ahead.close()
    got = 0
    while chunk := ahead.read(1 << 24):
        got += len(chunk)
    assert got <= written[0]


def test_a_pause_hands_on_what_arrived() -> None:
    r, w = os.pipe()
    ahead = _ReadAhead(r)
    os.close(r)
    os.write(w, b"x" * 1000)
    t0 = time.monotonic()
    assert ahead.read(1 << 20) == b"x" * 1000  # the writer paused: not held for more
    assert time.monotonic() - t0 < PIPE_GAP_S + 1.0
    os.close(w)
    assert ahead.read(1 << 20) == b""


def test_closed_it_lets_the_writer_go() -> None:
    r, w = os.pipe()
    written = [0]
    ahead = _ReadAhead(r)
    os.close(r)
    ahead.close()
    writer = _writer(w, bytes(64 << 20), written)
    writer.join(10)
    assert not writer.is_alive(), "the writer still waits on a pipe no one reads"
    assert written[0] < 64 << 20


def test_an_error_is_raised_by_the_read_that_reaches_it() -> None:
    with tempfile.TemporaryDirectory() as d:
        fd = os.open(d, os.O_RDONLY)  # reading a directory fails (EISDIR)
        try:
            ahead = _ReadAhead(fd)
        finally:
            os.close(fd)
        with pytest.raises(OSError):
            ahead.read(100)
