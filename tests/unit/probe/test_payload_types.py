"""The RFC 3551 static payload-type table and the clock lookup the RTP state uses."""

from __future__ import annotations

import numpy as np

from probe.payload_types import STATIC_PAYLOAD_TYPES, Media, static_clock


def test_static_payload_types() -> None:
    assert STATIC_PAYLOAD_TYPES[8].name == "PCMA"
    assert STATIC_PAYLOAD_TYPES[9].clock_rate == 8000  # G.722's historical 8 kHz clock
    assert STATIC_PAYLOAD_TYPES[14].clock_rate == 90000  # MPA
    assert STATIC_PAYLOAD_TYPES[34].media is Media.VIDEO
    assert all(pt < 96 for pt in STATIC_PAYLOAD_TYPES)


def test_static_clock_reads_the_table() -> None:
    pts = np.arange(256)
    clocks = static_clock(pts)
    for pt in range(256):
        info = STATIC_PAYLOAD_TYPES.get(pt & 0x7F)
        assert clocks[pt] == (info.clock_rate if info else 0)
    assert static_clock(np.asarray([0x80 | 8]))[0] == 8000  # marker bit ignored
