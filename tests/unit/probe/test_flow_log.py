"""The meter's per-flow row log: rows come back grouped by flow, in arrival order,
whatever was taken before (taken rows stay behind marked dead until compacted)."""

from __future__ import annotations

import numpy as np

from probe.meter import _Log


def _lookup(fids: list[int], size: int) -> np.ndarray:  # type: ignore[type-arg]
    m = np.zeros(size, dtype=bool)
    m[fids] = True
    return m


def test_takes_across_batches_merges_and_compaction() -> None:
    rng = np.random.default_rng(7)
    log = _Log(("v",))
    want: dict[int, list[int]] = {}
    alive: set[int] = set()
    next_fid, serial = 0, 0
    for _batch in range(120):  # more than the 48 chunks that trigger a merge
        new = list(range(next_fid, next_fid + 10))
        next_fid += 10
        alive.update(new)
        fids = rng.choice(sorted(alive), size=40)
        vals = np.arange(serial, serial + 40)
        serial += 40
        log.add(fids.astype(np.int64), v=vals)
        for f, v in zip(fids.tolist(), vals.tolist(), strict=True):
            want.setdefault(f, []).append(v)
        ending = sorted(rng.choice(sorted(alive), size=min(6, len(alive)), replace=False).tolist())
        cols, a, z = log.take(np.array(ending, dtype=np.int64), _lookup(ending, next_fid + 1))
        for f, s, e in zip(ending, a.tolist(), z.tolist(), strict=True):
            assert cols["v"][s:e].tolist() == want.pop(f, [])
            assert (cols["fid"][s:e] == f).all()
        alive.difference_update(ending)
    assert log.rows() == sum(len(v) for v in want.values())
    rest = sorted(alive)
    cols, a, z = log.take(np.array(rest, dtype=np.int64), _lookup(rest, next_fid + 1))
    for f, s, e in zip(rest, a.tolist(), z.tolist(), strict=True):
        assert cols["v"][s:e].tolist() == want.pop(f, [])
    assert log.rows() == 0 and not log.chunks


def test_taking_flows_with_no_rows() -> None:
    log = _Log(("v",))
    log.add(np.array([1, 1, 2], dtype=np.int64), v=np.array([10, 11, 20]))
    cols, a, z = log.take(np.array([3], dtype=np.int64), _lookup([3], 4))
    assert a.tolist() == z.tolist() == [0]
    cols, a, z = log.take(np.array([1, 3], dtype=np.int64), _lookup([1, 3], 4))
    assert cols["v"][a[0]:z[0]].tolist() == [10, 11] and a[1] == z[1]
    assert log.rows() == 1
