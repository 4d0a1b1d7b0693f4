"""A capture source reads its first chunk when opened (to tell the format); once closed it
keeps none of it. When a reader process takes the capture over, the process that opened it
closes its source: that chunk (8 MiB by default) is not held there for the whole run."""

from __future__ import annotations

import multiprocessing
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from probe import FlowReader, MeterConfig
from probe.sources import open_source
from tests.pcapbytes import pcap, udp_frame

CHUNK = 1 << 20


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    """About 2 MiB of UDP packets: the first chunk read is a whole ``CHUNK``."""
    frame = udp_frame("192.0.2.1", 5000, "198.51.100.2", 6000, bytes(1000))
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap((1.0 + i / 1000, frame) for i in range(2200)))
    return path


@pytest.fixture
def traced() -> Iterator[None]:
    """Allocations traced for the test (left on if something else traces them)."""
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    try:
        yield
    finally:
        if not was:
            tracemalloc.stop()


def _now() -> int:
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.usefixtures("traced")
def test_a_closed_source_lets_its_first_chunk_go(capture: Path) -> None:
    before = _now()
    src = open_source(capture, chunk_size=CHUNK)
    assert _now() - before >= CHUNK  # read when opened
    src.close()
    assert _now() - before < CHUNK // 4


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                    reason="no fork here: the capture is read in this process")
@pytest.mark.usefixtures("traced")
def test_the_parent_keeps_no_chunk_once_the_reader_process_reads(capture: Path) -> None:
    before = _now()
    reader = FlowReader(capture, MeterConfig(chunk_size=CHUNK), workers=2)
    opened = _now() - before
    assert opened >= CHUNK
    reader.start()
    try:
        assert opened - (_now() - before) >= CHUNK * 3 // 4
        assert sum(r.orig_pkts for r in reader) == 2200  # the process read it all
    finally:
        reader.close()
