"""The collector pause around an analysis (probe.speed.gc_paused) and the collector on
a timetable of a live capture (probe.speed.GcTimetable)."""

from __future__ import annotations

import gc
import weakref

from probe.speed import GcTimetable, gc_paused


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


def test_a_timetable_collects_young_garbage_when_due_and_all_of_it_on_the_full_beat() -> None:
    now = [100.0]
    table = GcTimetable(young_s=2.0, full_s=60.0, clock=lambda: now[0])
    table.start()
    try:
        assert not gc.isenabled()
        young = _cycle()
        now[0] += 1.0
        table.tick()
        assert young() is not None  # not due yet, and no collection by allocation counts
        now[0] += 1.0
        table.tick()
        assert young() is None  # the young collection found it
        survivor = _Node()
        survivor.other = _Node()
        survivor.other.other = survivor
        now[0] += 2.0
        table.tick()  # the cycle is still in use: promoted to the oldest generation
        old = weakref.ref(survivor)
        del survivor
        for _ in range(10):
            now[0] += 2.0
            table.tick()
        assert old() is not None  # young collections leave the oldest generation alone
        now[0] = 100.0 + 60.0
        table.tick()
        assert old() is None  # the full collection, once a minute
    finally:
        table.stop()
    assert gc.isenabled() and gc.get_freeze_count() == 0
