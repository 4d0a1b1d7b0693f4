"""Process-level helpers for the commands that analyse a capture."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]


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
