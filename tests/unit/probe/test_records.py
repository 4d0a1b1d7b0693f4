"""PayloadSamples: the columns read back as PayloadSample items, all at once or one by one;
the fast FlowRecord maker."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from probe.records import ORIG, RESP, PayloadSample, PayloadSamples

POOL = b"hello" + b"\x16\x03\x01" + bytes(range(40))


def _samples(arrays: bool) -> PayloadSamples:
    columns = ([3, 4, 9], [1_700_000_000_123_456_789, 1_700_000_000_223_456_789,
                           1_700_000_001_000_000_001], [ORIG, RESP, ORIG], [0, 5, 8], [5, 3, 40])
    if arrays:
        dtypes = (np.int64, np.int64, np.uint8, np.int64, np.int64)
        return PayloadSamples(POOL, *(np.array(c, d) for c, d in zip(columns, dtypes,
                                                                       strict=True)))
    return PayloadSamples(POOL, *columns)


def test_items_match_one_by_one_access() -> None:
    for arrays in (True, False):
        samples = _samples(arrays)
        items = samples.items()
        assert items == tuple(samples[i] for i in range(len(samples))) == tuple(samples)
        assert items[1] == PayloadSample(4, 1_700_000_000_223_456_789 / 1e9, RESP, b"\x16\x03\x01")
        assert items[2].data == bytes(range(40))
        for item in items:
            assert type(item) is PayloadSample
            assert (type(item.frame), type(item.ts), type(item.direction), type(item.data)) == (
                int, float, int, bytes)
    assert PayloadSamples().items() == ()
    light = _samples(True).without_data()
    assert [p.data for p in light.items()] == [b"", b"", b""]


def test_new_record_makes_what_the_constructor_makes() -> None:
    from probe.records import FlowRecord, new_record
    names = [f.name for f in dataclasses.fields(FlowRecord)]
    values: list[object] = [f"v{i}" for i in range(len(names))]
    made = new_record(*values)
    assert type(made) is FlowRecord
    assert made == FlowRecord(*values)  # type: ignore[arg-type]
    assert [getattr(made, n) for n in names] == values
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.uid = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        new_record(*values[:-1])  # every field, none defaulted


def test_the_fast_maker_refuses_a_class_with_post_init() -> None:
    from probe.speed import slots_maker

    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="__post_init__"):
        slots_maker(Checked)
