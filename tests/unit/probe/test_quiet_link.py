"""FlowReader.advance: the wall clock ends the flows of a quiet live link, but never those
the end of input is emptying from the table, whichever process reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from probe import FlowReader, Watermark

CAPTURES = Path(__file__).resolve().parents[3] / "captures"


@pytest.mark.parametrize("workers", [1, 2])
def test_nothing_advances_while_the_end_of_input_empties_the_table(workers: int) -> None:
    path = CAPTURES / "sample-call.pcap"  # one batch: what follows its watermark is the end
    want = sorted(r.uid for r in FlowReader(path, workers=1))
    reader = FlowReader(path, workers=workers)
    uids: list[str] = []
    marks = 0
    for item in reader.observed_with_clock(lambda f: f.uid):
        if isinstance(item, Watermark):
            marks += 1
            continue
        rec, uid = item
        assert rec.uid == uid
        uids.append(uid)
        if marks:  # the end of input is emptying the table
            assert reader.advance(reader.meter.now + 1e6) == ([], None)
    assert marks == 1 and len(want) > 1
    assert sorted(uids) == want  # each flow once, all of them from the iteration
