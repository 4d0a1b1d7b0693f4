"""A pipe is read ahead of the batches that take it: its writer is not held up while a batch
is decoded, what it wrote comes out whole and in order, and its end and errors come through."""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import time

import pytest

from probe.sources import (
    PIPE_GAP_S,
    READ_AHEAD_BYTES,
    READ_AHEAD_PIECE,
    _ReadAhead,
    open_source,
)


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


def test_a_piece_longer_than_asked_is_given_in_order() -> None:
    r, w = os.pipe()
    data = os.urandom(60000)
    ahead = _ReadAhead(r)
    os.close(r)
    os.write(w, data)  # one piece, read at once
    os.close(w)
    got = b""
    while chunk := ahead.read(1000):
        assert len(chunk) <= 1000
        got += chunk
    assert got == data


def test_an_error_after_data_comes_after_the_data() -> None:
    class Failing(_ReadAhead):
        calls = 0

        def _read_piece(self) -> bytes:
            self.calls += 1
            if self.calls == 1:
                return b"abc"
            raise OSError(5, "Input/output error")

    r, w = os.pipe()
    ahead = Failing(r)
    os.close(r)
    try:
        assert ahead.read(100) == b"abc"
        with pytest.raises(OSError):
            ahead.read(100)
    finally:
        os.close(w)


def test_a_read_after_close_ends_however_quiet_the_writer() -> None:
    r, w = os.pipe()
    ahead = _ReadAhead(r)
    os.close(r)
    os.write(w, b"x" * 10)
    time.sleep(0.2)
    ahead.close()
    assert ahead.read(100) == b"x" * 10
    t0 = time.monotonic()
    assert ahead.read(100) == b""  # the writer is still there, writing nothing
    assert time.monotonic() - t0 < 1.0
    os.close(w)


def _pcap(n: int) -> bytes:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        frame = bytes(12) + b"\x08\x00" + bytes(28 + i % 50)  # Ethernet, an IPv4 type
        out.append(struct.pack("<IIII", 1000 + i, 0, len(frame), len(frame)) + frame)
    return b"".join(out)


@pytest.mark.parametrize("chunk_size", [1024, 4096, 1 << 20])
def test_a_capture_through_a_pipe_comes_whole_whatever_the_chunk(chunk_size: int) -> None:
    """The first chunk is read before the read ahead starts (the format is told from it),
    through the file object's buffer: nothing it held may be skipped."""
    data = _pcap(2000)
    r, w = os.pipe()
    written = [0]
    writer = _writer(w, data, written)
    src = open_source(os.fdopen(r, "rb"), chunk_size=chunk_size)
    packets = sum(len(b) for b in src.batches())
    writer.join(10)
    assert packets == 2000
    assert src.status.complete
