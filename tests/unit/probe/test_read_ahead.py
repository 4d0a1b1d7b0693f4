"""A pipe is read ahead of the batches that take it: its writer is not held up while a batch
is decoded, what it wrote comes out whole and in order, and its end and errors come through."""

from __future__ import annotations

import os
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

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


def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """``fn()``, failing the test if it does not return in time (rather than hanging)."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(("value", fn()))
        except BaseException as exc:  # raised again in the test's thread
            box.append(("error", exc))
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"no answer in {seconds} s"
    kind, what = box[0]
    if kind == "error":
        raise what
    return what


class _Scripted(_ReadAhead):
    """Reads b"abc", then fails with ``error``."""

    error: BaseException = OSError(5, "Input/output error")
    calls = 0

    def _read_piece(self) -> bytes:
        self.calls += 1
        if self.calls == 1:
            return b"abc"
        raise self.error


@pytest.mark.parametrize("error", [OSError(5, "Input/output error"),
                                   RuntimeError("not an I/O error")])
def test_an_error_after_data_comes_after_the_data(error: BaseException) -> None:
    r, w = os.pipe()
    ahead = type("Failing", (_Scripted,), {"error": error})(r)
    os.close(r)
    try:
        assert _within(5, lambda: ahead.read(100)) == b"abc"
        with pytest.raises(type(error)):
            _within(5, lambda: ahead.read(100))
    finally:
        os.close(w)


def test_a_read_after_close_ends_however_quiet_the_writer() -> None:
    r, w = os.pipe()
    ahead = _ReadAhead(r)
    os.close(r)
    os.write(w, b"x" * 10)
    deadline = time.monotonic() + 10
    while ahead._held < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    ahead.close()
    assert _within(5, lambda: ahead.read(100)) == b"x" * 10
    # the writer is still there, writing nothing
    assert _within(1.0, lambda: ahead.read(100)) == b""
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


def test_a_file_object_holding_more_than_a_piece_loses_none_of_it() -> None:
    """A socket read through a 4 MiB buffer: the peek that tells the format fills it with
    all that has arrived, more than one read of the descriptor takes."""
    data = _pcap(40000)  # about 3 MiB
    assert len(data) > 2 * READ_AHEAD_PIECE
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    written = [0]
    writer = _writer(os.dup(a.fileno()), data, written)
    a.close()
    deadline = time.monotonic() + 10
    while written[0] < len(data) and time.monotonic() < deadline:
        time.sleep(0.01)
    fh = b.makefile("rb", buffering=4 << 20)
    src = open_source(fh, chunk_size=1024)
    packets = _within(30, lambda: sum(len(x) for x in src.batches()))
    writer.join(10)
    b.close()
    assert packets == 40000
    assert src.status.complete
