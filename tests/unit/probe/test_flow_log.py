"""The meter's per-flow row log: rows come back grouped by flow, in arrival order,
whatever was taken before (taken rows stay behind marked dead until compacted)."""

from __future__ import annotations

import numpy as np

from probe.meter import _Log, _PayloadLog


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


def test_payload_samples_survive_dead_rows_compaction_and_repacking() -> None:
    """Samples of each flow come back whole and in order while other flows' rows die,
    chunks are compacted and pools (over 1 MiB) are repacked."""
    rng = np.random.default_rng(11)
    log = _PayloadLog()
    want: dict[int, list[bytes]] = {}
    alive: list[int] = []
    next_fid, frame = 0, 0
    repacked = 0
    for _batch in range(60):
        alive.extend(range(next_fid, next_fid + 30))
        next_fid += 30
        fids = np.sort(rng.choice(alive, size=200)).astype(np.int64)
        lengths = rng.integers(2000, 12000, size=200)
        datas = [bytes([int(f) % 251]) * int(n) + frame.to_bytes(4, "big")
                 for f, n, frame in zip(fids.tolist(), lengths.tolist(),
                                        range(frame, frame + 200), strict=True)]
        length = np.array([len(d) for d in datas], dtype=np.int64)
        frames = np.arange(frame, frame + 200, dtype=np.int64)
        frame += 200
        log.add(fids, np.cumsum(length) - length, length, frames, frames * 1000,
                np.zeros(200, dtype=np.uint8), b"".join(datas))
        for f, d in zip(fids.tolist(), datas, strict=True):
            want.setdefault(f, []).append(d)
        ending = sorted(rng.choice(alive, size=25, replace=False).tolist())
        if _batch == 59:
            ending = sorted(alive)
        pools = {id(c.pool) for c in log.chunks}
        cols = log.take(_lookup(ending, next_fid + 1), np.array(ending, dtype=np.int64))
        repacked += sum(1 for c in log.chunks if id(c.pool) not in pools)
        assert cols is not None
        for i, f in enumerate(ending):
            got = [cols.pool[o:o + n] for o, n in zip(cols.off[cols.a[i]:cols.z[i]].tolist(),
                                                       cols.length[cols.a[i]:cols.z[i]].tolist(),
                                                       strict=True)]
            assert got == want.pop(f, [])
        alive = [f for f in alive if f not in set(ending)]
        for c in log.chunks:
            live = ~c.dead if c.dead is not None else np.ones(len(c.fid), dtype=bool)
            assert c.live == int(c.length[live].sum())
    assert repacked and not want and not log.chunks
