"""The process-level and interpreter-level tricks that keep marsad fast and its memory
lean, in one place so that the domain modules (decoding, metering, classifying, judging)
read as what they compute.

None of these changes what is computed; each only changes what it costs:

* :func:`slots_maker`: build a frozen slotted dataclass from its field values by
  position through the slot descriptors, not through the generated ``__init__``
  (which sets each field with ``object.__setattr__``). Used for :class:`FlowRecord`,
  built once per flow.
* :func:`pickled_by_position`: pickle a dataclass as its field values in order (one
  C call to take them, the constructor to unpickle) instead of the slot state
  ``dataclass(slots=True)`` pickles field by field in Python. For what crosses
  between processes by the ten thousand (observations of finished flows).
* :func:`out_of_band`: let a dataclass's large ``bytes`` fields cross a pipe as
  buffers of their own (pickle protocol 5), not copied into the pickle
  (:mod:`probe.wire`).
* :func:`widen_pipe`: a pipe buffer of a few MiB, so a batch crosses in few system calls.
* :func:`trim_heap`: give the heap's free pages back to the system (glibc); metering
  frees many mid-sized arrays, and a fragmented heap otherwise only grows.
* :func:`end_with_parent`: a forked reader process ends with the process that forked
  it, however that one ends.
* :func:`gc_paused`: no cyclic garbage collection while a capture is analysed.
* :class:`GcTimetable`: in a process that runs as long as a live capture, cyclic garbage
  collected by the clock rather than every few hundred allocations.
* :func:`keep_until_exit` and :func:`exit_at_once`: a batch command ends its process
  as soon as its output is written, without the interpreter freeing every object first.

What each of them was measured to buy is in ``bench/README.md``.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn, TypeVar

__all__ = [
    "TRIM_EVERY",
    "GcTimetable",
    "end_with_parent",
    "exit_at_once",
    "exit_follows",
    "gc_paused",
    "keep_until_exit",
    "out_of_band",
    "pickled_by_position",
    "slots_maker",
    "trim_heap",
    "widen_pipe",
]

_D = TypeVar("_D", bound=type)


def slots_maker(cls: type[Any]) -> Callable[..., Any]:
    """A function taking every field of the frozen slotted dataclass ``cls`` by position
    and returning the instance its ``__init__`` would make: the slots filled through
    their descriptors, one straight line of calls. Refuses a class with a
    ``__post_init__``, which it would skip."""
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__: use its constructor")
    names = [f.name for f in fields(cls)]
    scope: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    lines = [f"def make({', '.join(names)}):", "    o = _new(_cls)"]
    for i, name in enumerate(names):
        scope[f"_set{i}"] = getattr(cls, name).__set__
        lines.append(f"    _set{i}(o, {name})")
    lines.append("    return o")
    exec("\n".join(lines), scope)  # generated from the field names only
    make: Callable[..., Any] = scope["make"]
    return make


def pickled_by_position(cls: _D) -> _D:
    """Class decorator: pickle a dataclass's instances as its field values in order,
    taken in one C call (unpickling calls the constructor), instead of the slot state
    ``dataclass(slots=True)`` pickles, which walks the fields in Python on both sides."""
    names = [f.name for f in fields(cls)]
    get = operator.attrgetter(*names)
    single = len(names) == 1

    def __reduce__(self: Any) -> tuple[type, tuple[Any, ...]]:
        values = get(self)
        return cls, ((values,) if single else values)

    cls.__reduce__ = __reduce__  # type: ignore[assignment]
    return cls


def out_of_band(obj: Any, protocol: int, *names: str) -> tuple[Any, tuple[Any, ...]]:
    """``__reduce_ex__`` of a dataclass whose ``bytes`` fields ``names`` are to cross
    as buffers of their own (protocol 5 and later; in the pickle otherwise)."""
    marked = names if protocol >= 5 else ()
    return type(obj), tuple(pickle.PickleBuffer(getattr(obj, f.name)) if f.name in marked
                            else getattr(obj, f.name) for f in fields(obj))


def widen_pipe(fd: int) -> None:
    """Give the pipe a few MiB of buffer (Linux) so a batch crosses in few system calls."""
    try:
        import fcntl
        limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(fd, 1031, min(limit, 8 << 20))  # F_SETPIPE_SZ
    except (OSError, ValueError, ImportError):
        pass


def _heap_trimmer() -> Callable[[], object]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is no glibc.

    glibc keeps freed mid-sized blocks in the heap for reuse; with the heap fragmented,
    the process's resident size only ever grows. Giving the free pages back keeps it
    nearer to what is really in use. Pages given back are faulted in again when next
    used, so callers trim every :data:`TRIM_EVERY` batches, not after each.
    """
    if not sys.platform.startswith("linux"):
        return lambda: None
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


trim_heap = _heap_trimmer()
"""Return the heap's free pages to the system (no-op without glibc)."""

TRIM_EVERY = 8
"""Batches between two :func:`trim_heap` calls."""


def end_with_parent(parent: int) -> None:
    """Have the kernel end this process when the process ``parent`` that forked it ends,
    however it ends (``kill -9`` included): a reader left behind would hold its memory and
    its input for nothing. Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent and os.getppid() != parent:  # it ended before the request took effect
        os._exit(1)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a capture is read and judged.

    Analysis allocates millions of objects that all stay alive to the end (records,
    observations, classifications); the collector would walk them again and again and
    find nothing, since records hold no reference cycles. Reference counting still frees
    everything that dies.

    On the way out, what was allocated meanwhile joins the oldest generation at once
    (``gc.freeze`` then ``gc.unfreeze``: two list splices) instead of staying in the
    youngest, whose first collection after ``gc.enable`` would walk every object of the
    analysis. Cyclic garbage among them is still found, by the next full collection.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.freeze()
            gc.unfreeze()
            gc.enable()


class GcTimetable:
    """Cyclic garbage collection by the clock, for a process that runs as long as a live
    capture does (the live probe and its reader process).

    With the collector's own schedule, every 700 net allocations start a collection of
    the young objects, and every so often one of all of them; metering and judging a
    stream of packets allocates millions, and the collector mostly walks objects that
    are still in use. Here the automatic collector is off and :meth:`tick`, called from
    the process's loop, collects the objects allocated since the last collection every
    ``young_s`` seconds and every object every ``full_s`` seconds: cyclic garbage is
    still found, a few seconds (or, once old, minutes) after it became garbage.
    Reference counting frees everything else at once, as always. A full collection
    walks the whole heap with every thread stopped (about 0.3 s for two million
    objects), hence its long period.

    :meth:`start` also moves what exists by then (modules, classes, settings) out of
    the collector's sight (``gc.freeze``): it lives as long as the run. :meth:`stop`
    gives the collector back everything frozen in the process, for the process
    that goes on after the run.
    """

    def __init__(self, young_s: float = 2.0, full_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.young_s = young_s
        self.full_s = full_s
        self._clock = clock
        self._next_young = self._next_full = 0.0
        self._was = False

    def start(self) -> None:
        """Freeze what exists, turn the automatic collector off, start the clock."""
        self._was = gc.isenabled()
        gc.freeze()
        gc.disable()
        now = self._clock()
        self._next_young, self._next_full = now + self.young_s, now + self.full_s

    def tick(self) -> None:
        """Collect if a collection is due."""
        now = self._clock()
        if now >= self._next_full:
            gc.collect()
            self._next_young, self._next_full = now + self.young_s, now + self.full_s
        elif now >= self._next_young:
            gc.collect(1)
            self._next_young = now + self.young_s

    def stop(self) -> None:
        """The automatic collector back as it was, what was frozen in its sight again."""
        gc.unfreeze()
        if self._was:
            gc.enable()


_exit_follows = False
_kept: list[object] = []


def exit_follows(yes: bool = True) -> None:
    """Say whether the process ends (:func:`exit_at_once`) as soon as the command
    running returns: only then does :func:`keep_until_exit` keep anything."""
    global _exit_follows
    _exit_follows = yes
    if not yes:
        _kept.clear()


def keep_until_exit(*objs: object) -> None:
    """Hold a batch command's results until :func:`exit_at_once` ends the process:
    returning would otherwise free them one by one just before the process goes. Called
    where no exit follows (tests, the service), it keeps nothing."""
    if _exit_follows:
        _kept.extend(objs)


def exit_at_once(code: int) -> NoReturn:
    """Flush standard output and error, then end the process (``os._exit``) without the
    interpreter's teardown, which would free every record, classification and call one
    by one for nothing. Child processes must have been joined and files closed before."""
    for stream in (sys.stdout, sys.stderr):
        # a closed pipe: nothing more can be written
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)
