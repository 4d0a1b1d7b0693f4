"""Reproducers of what the fuzz targets (fuzz/) found in the probe, rebuilt here from bytes."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import pytest

from probe.errors import NotACapture
from probe.run import read_capture
from probe.sources import LinkType, open_source


def _pcap(n: int) -> bytes:
    """A raw-IP pcap of ``n`` small UDP packets (compresses well: a long deflate stream)."""
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, int(LinkType.RAW))
    for i in range(n):
        ip = (bytes.fromhex("4500001c000000004011") + bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
              + struct.pack(">HHHH", 1000 + i, 53, 8, 0))
        out += struct.pack("<IIII", 1000 + i, 0, len(ip), len(ip)) + ip
    return out


GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
BAD_BLOCK = b"\x07"
"""A deflate block header of the reserved type 3 (RFC 1951 §3.2.3): zlib says "invalid
block type"."""


def _gzip_broken_after(data: bytes) -> bytes:
    """gzip whose deflate stream carries ``data``, then a block zlib refuses."""
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = z.compress(data) + z.flush(zlib.Z_FULL_FLUSH)  # byte-aligned: the next block
    return GZIP_HEADER + body + BAD_BLOCK + bytes(16)


def test_invalid_deflate_data_at_the_start_is_not_a_capture() -> None:
    data = _gzip_broken_after(b"")
    with pytest.raises(zlib.error):
        gzip.decompress(data)  # what escaped the reader as a traceback
    with pytest.raises(NotACapture, match="unreadable gzip data"):
        open_source(io.BytesIO(data))
    with pytest.raises(NotACapture):
        read_capture(io.BytesIO(data))


def test_invalid_deflate_data_mid_stream_keeps_what_came_before() -> None:
    data = _gzip_broken_after(_pcap(400))
    with pytest.raises(zlib.error):
        gzip.decompress(data)
    src = open_source(io.BytesIO(data), chunk_size=256)
    packets = sum(len(b) for b in src.batches())
    st = src.status
    # gzip hands out nothing of the read that failed: what zlib had inflated in it (up to
    # one buffer, 8 KiB in) is lost, the records before it are kept and the stop is exact.
    assert packets == st.packets and 300 < packets <= 400
    assert not st.complete and st.stopped_at == st.bytes_read == 24 + 44 * packets
    assert st.message is not None and "unreadable" in st.message
