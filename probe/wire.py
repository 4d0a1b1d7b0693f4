"""Messages between the reader process and its parent, with their large buffers out of
band.

A message is pickled (protocol 5) with every NumPy array and every byte pool marked
``out_of_band`` handed over as a buffer of its own: the pickle itself stays a few
kilobytes, the buffers go to the pipe straight from the arrays that hold them (no
copy into a pickle), and on the other side the arrays are made on the buffers as they
were received (no copy out of it). Such arrays are read-only, as the columns of a
batch or of ended flows are meant to be.

Frames on the pipe: the pickle, preceded by the number of buffers as four bytes, then
each buffer.
"""

from __future__ import annotations

import pickle
from dataclasses import fields
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["out_of_band", "recv_message", "send_message"]


def out_of_band(obj: Any, protocol: int, *names: str) -> tuple[Any, tuple[Any, ...]]:
    """``__reduce_ex__`` of a dataclass whose ``bytes`` fields ``names`` are to cross
    as buffers of their own (protocol 5 and later; in the pickle otherwise)."""
    marked = names if protocol >= 5 else ()
    return type(obj), tuple(pickle.PickleBuffer(getattr(obj, f.name)) if f.name in marked
                            else getattr(obj, f.name) for f in fields(obj))


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


def recv_message(conn: Connection) -> Any:
    """Read one message written by :func:`send_message`. Raises :class:`EOFError` when
    the other end is closed."""
    head = conn.recv_bytes()
    n = int.from_bytes(head[:4], "little")
    buffers = [conn.recv_bytes() for _ in range(n)]
    return pickle.loads(memoryview(head)[4:], buffers=buffers)
