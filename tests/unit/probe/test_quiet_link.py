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


@pytest.mark.parametrize("start", [False, True])
def test_the_reader_process_is_gone_before_the_table_is_emptied(start: bool) -> None:
    """Iterated without observing, the reader process has nothing left to do at the end of
    input: it is joined then, not held (with its memory) while the end of input empties
    the table."""
    import multiprocessing

    path = CAPTURES / "sample-call.pcap"
    reader = FlowReader(path, workers=2)
    if start:
        reader.start()  # a process started early also waits for requests
    marks = flows_after = 0
    for item in reader._records_and_clock():
        if isinstance(item, Watermark):
            marks += 1
        elif marks:
            flows_after += 1
            assert not multiprocessing.active_children()
    assert marks == 1 and flows_after > 1
