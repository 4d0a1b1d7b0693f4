"""The collector pause around an analysis (probe.speed.gc_paused)."""

from __future__ import annotations

import gc
import weakref

from probe.speed import gc_paused


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle() -> weakref.ref[_Node]:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_the_collector_is_paused_inside_and_resumed_after() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_paused_collector_stays_paused() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_what_was_allocated_meanwhile_joins_the_oldest_generation() -> None:
    gc.collect()
    with gc_paused():
        ref = _cycle()
        young = [object() for _ in range(10)]  # untracked; the cycle is what counts
    del young
    assert gc.get_count()[0] < 50  # nothing left for the next young collection to walk
    gc.collect(0)
    gc.collect(1)
    assert ref() is not None  # not in the young generations
    gc.collect()
    assert ref() is None  # cyclic garbage is still found by a full collection
