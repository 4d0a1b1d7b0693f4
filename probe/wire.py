"""Messages between the reader process and its parent, with their large buffers out of
band.

With ``workers=2`` (:mod:`probe.run`) a forked reader process reads, decodes and
prepares batches while its parent keeps the flow table; it may also observe chunks of
finished flows for the parent. What crosses is one of a few message kinds, each a class
of its own:

* reader to parent (:data:`FromReader`): :class:`Batch`, :class:`End`,
  :class:`Observed`, :class:`CaptureFailed`, :class:`ReaderFailed`;
* parent to reader (:data:`ToReader`): :class:`SetObserver`, :class:`Observe`,
  :class:`NoMoreRequests`.

A message is pickled (protocol 5) with every NumPy array and every byte pool marked
``out_of_band`` (:func:`probe.speed.out_of_band`) handed over as a buffer of its own:
the pickle itself stays a few kilobytes, the buffers go to the pipe straight from the
arrays that hold them (no copy into a pickle), and on the other side the arrays are
made on the buffers as they were received (no copy out of it). Such arrays are
read-only, as the columns of a batch or of ended flows are meant to be.

Frames on the pipe: the pickle, preceded by the number of buffers as four bytes, then
each buffer.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from probe.errors import CaptureError, UnsupportedLinkType
from probe.meter import Ended
from probe.prepare import Prepared
from probe.records import FlowRecord
from probe.sources import ReadStatus
from probe.speed import pickled_by_position

__all__ = [
    "Batch",
    "CaptureFailed",
    "End",
    "FromReader",
    "NoMoreRequests",
    "Observe",
    "Observed",
    "ReaderFailed",
    "SetObserver",
    "ToReader",
    "frames",
    "recv_from_reader",
    "recv_message",
    "recv_request",
    "send_frames",
    "send_message",
]


# -- reader process to parent --------------------------------------------------------
@pickled_by_position
@dataclass(frozen=True, slots=True)
class Batch:
    """A prepared batch of packets, for the parent's flow table."""

    prepared: Prepared
    bytes_read: int
    """Bytes of input consumed once this batch was read (for progress)."""
    queued: int
    """Messages the reader process had queued, not yet written, in front of this one:
    how far it is ahead of the parent."""


@pickled_by_position
@dataclass(frozen=True, slots=True)
class End:
    """The end of input: no batch follows (answers to requests still may)."""

    status: ReadStatus
    """Whether the capture was read completely, and where it stopped if not."""


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Observed:
    """The answer to :class:`Observe`: the observer's value for each flow, in order."""

    seq: int
    observations: list[Any]


@pickled_by_position
@dataclass(frozen=True, slots=True)
class CaptureFailed:
    """The capture could not be read (a :class:`~probe.errors.CaptureError`)."""

    unsupported_link: bool
    """An :class:`~probe.errors.UnsupportedLinkType` rather than another capture error."""
    message: str

    @classmethod
    def of(cls, exc: CaptureError) -> CaptureFailed:
        return cls(isinstance(exc, UnsupportedLinkType), str(exc))

    def error(self) -> CaptureError:
        """The error to raise in the parent."""
        return (UnsupportedLinkType(self.message) if self.unsupported_link
                else CaptureError(self.message))


@pickled_by_position
@dataclass(frozen=True, slots=True)
class ReaderFailed:
    """The reader process failed otherwise (a bug): ``Type: message``."""

    description: str


FromReader = Batch | End | Observed | CaptureFailed | ReaderFailed
"""What the reader process sends its parent."""


# -- parent to reader process --------------------------------------------------------
@pickled_by_position
@dataclass(frozen=True, slots=True)
class SetObserver:
    """The observer of a reader process started before it was known."""

    observe: Callable[[FlowRecord], Any]


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Observe:
    """Observe these finished flows and answer with :class:`Observed` of the same ``seq``."""

    seq: int
    ended: Ended


@dataclass(frozen=True, slots=True)
class NoMoreRequests:
    """The parent sends nothing more (the reader process holds a copy of the pipe's
    write end, so it would not see the pipe close)."""


ToReader = SetObserver | Observe | NoMoreRequests
"""What the parent sends the reader process."""


# -- frames ----------------------------------------------------------------------------
def frames(msg: object) -> list[bytes | memoryview]:
    """The frames :func:`send_message` writes for ``msg``."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(msg, protocol=5, buffer_callback=buffers.append)
    return [len(buffers).to_bytes(4, "little") + head, *(b.raw() for b in buffers)]


def send_frames(conn: Connection, parts: list[bytes | memoryview]) -> None:
    for part in parts:
        conn.send_bytes(part)


def send_message(conn: Connection, msg: object) -> None:
    """Pickle ``msg`` and write it, its buffers out of band."""
    send_frames(conn, frames(msg))


def recv_message(conn: Connection) -> object:
    """Read one message written by :func:`send_message`. Raises :class:`EOFError` when
    the other end is closed."""
    head = conn.recv_bytes()
    n = int.from_bytes(head[:4], "little")
    buffers = [conn.recv_bytes() for _ in range(n)]
    msg: object = pickle.loads(memoryview(head)[4:], buffers=buffers)
    return msg


def recv_from_reader(conn: Connection) -> FromReader:
    """Read one message of the reader process."""
    msg = recv_message(conn)
    if not isinstance(msg, Batch | End | Observed | CaptureFailed | ReaderFailed):
        raise TypeError(f"not a message of the reader process: {type(msg).__name__}")
    return msg


def recv_request(conn: Connection) -> ToReader:
    """Read one message of the parent."""
    msg = recv_message(conn)
    if not isinstance(msg, SetObserver | Observe | NoMoreRequests):
        raise TypeError(f"not a request to the reader process: {type(msg).__name__}")
    return msg
