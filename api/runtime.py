"""Process-level helpers for the commands: the garbage collector while a capture is
analysed, and the file mode of what the long-running commands write."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["PRIVATE_UMASK", "gc_paused", "private_files"]

PRIVATE_UMASK = 0o077
"""What ``marsad serve`` and ``marsad probe`` create is the owner's alone: directories
0700, files (databases and their WAL, ring captures, status) 0600."""


def private_files() -> int:
    """Make every file and directory this process creates from now on private to its
    owner (umask 077): the store, the ledger and the capture ring hold captured traffic.
    Returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


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
    analysis (0.1 s after a 2M-packet capture). Cyclic garbage among them is still
    found, by the next full collection.
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
