"""Reproducers of what the fuzz targets (fuzz/) found in the probe, rebuilt here from bytes."""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np
import pytest

from probe.decode import KIND_FLOW, KIND_NONIP, Decoder
from probe.errors import NotACapture
from probe.layers import SlowDecoder
from probe.run import read_capture
from probe.sources import LinkType, RawBatch, open_source


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


def _loopback(family: bytes) -> bytes:
    ip6 = (b"\x60\x00\x00\x00" + struct.pack(">HBB", 8, 17, 64) + bytes(15) + b"\x01"
           + bytes(15) + b"\x02" + struct.pack(">HHHH", 5000, 53, 8, 0))
    return family + ip6


def _batch(lt: int, pkt: bytes, after: int = 0) -> RawBatch:
    """A batch of one packet, followed in the buffer by ``after`` bytes of the next record."""
    one = np.ones(1, dtype=np.int64)
    return RawBatch(pkt + bytes(after), np.zeros(1, dtype=np.int64), one * len(pkt),
                    one * len(pkt),
                    np.zeros(1, dtype=np.int64), np.full(1, lt, dtype=np.int32), 1)


@pytest.mark.parametrize(("lt", "family", "kind"), [
    (LinkType.NULL, struct.pack("<I", 14), KIND_NONIP),   # no IP family: not an IP packet
    (LinkType.NULL, struct.pack("<I", 2), None),          # IPv4 family, IPv6 bytes: as slow
    (LinkType.LOOP, struct.pack(">I", 14), KIND_NONIP),
    (LinkType.NULL, struct.pack("<I", 10), KIND_FLOW),    # Linux AF_INET6
    (LinkType.NULL, struct.pack("<I", 30), KIND_FLOW),    # Darwin AF_INET6
    (LinkType.LOOP, struct.pack(">I", 24), KIND_FLOW),    # OpenBSD AF_INET6
])
def test_loopback_family_decides_as_in_the_slow_path(lt: LinkType, family: bytes,
                                                     kind: int | None) -> None:
    pkt = _loopback(family)
    b = _batch(int(lt), pkt, after=16)
    d = Decoder().decode(b)
    info, _weird = SlowDecoder().decode(b.buf, 0, len(pkt), len(pkt), int(lt), 0)
    if kind is not None:
        assert int(d.kind[0]) == kind
    assert (int(d.kind[0]) == KIND_FLOW) == (info is not None)
    if info is not None:
        assert (int(d.ipver[0]), int(d.sport[0]), int(d.dport[0])) == (info.ipver, info.sport,
                                                                      info.dport)


def _tcp(flags: int, ack: int) -> bytes:
    ip = bytes.fromhex("45000028000040004006") + bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    return ip + struct.pack(">HHIIBBHHH", 1234, 80, 0x11223344, ack, 0x50, flags, 65535, 0, 0)


def test_last_packet_of_a_buffer_is_read_where_it_is() -> None:
    # A pure ACK (no options, no payload) ending the buffer, as the last packet of a chunk
    # or of a pipe read is: its flags byte lies 7 bytes before the end. It was read from 2
    # bytes earlier (the acknowledgement number's low byte, 0x54 = ECE|ACK|RST here), so
    # a plain ACK looked like a reset.
    pkt = _tcp(0x10, 0x00000054)
    d = Decoder().decode(_batch(int(LinkType.RAW), pkt))
    assert int(d.kind[0]) == KIND_FLOW
    assert int(d.flags[0]) == 0x10
    assert (int(d.sport[0]), int(d.dport[0]), int(d.seq[0])) == (1234, 80, 0x11223344)
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, int(LinkType.RAW))
    recs = b"".join(struct.pack("<IIII", 1000 + i, 0, len(p), len(p)) + p
                    for i, p in enumerate((_tcp(0x02, 0), pkt)))
    (flow,) = read_capture(io.BytesIO(head + recs)).flows
    assert flow.orig_flags == 0x12  # SYN, ACK: no RST
