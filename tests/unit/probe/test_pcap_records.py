"""The classic pcap header and record walk that the capture reader, the live stream's
mender and the capture ring share (probe.sources.pcap_header, record_offsets)."""

from __future__ import annotations

import struct

import pytest

from probe.sources import MIN_SNAP, PCAP_HEADER, pcap_header, record_offsets


def _capture(order: str, magic: int, records: list[bytes], snaplen: int = 65535,
             linktype: int = 1) -> bytes:
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)
    for i, data in enumerate(records):
        out += struct.pack(order + "IIII", 100 + i, 7, len(data), len(data)) + data
    return out


@pytest.mark.parametrize(("order", "magic", "frac_ns"), [
    ("<", 0xA1B2C3D4, 1000), (">", 0xA1B2C3D4, 1000), ("<", 0xA1B23C4D, 1),
    (">", 0xA1B23C4D, 1)])
def test_header_of_each_byte_order_and_resolution(order: str, magic: int, frac_ns: int) -> None:
    data = _capture(order, magic, [b"a" * 60], snaplen=96, linktype=0x1000_0071)
    h = pcap_header(data)
    assert h is not None
    assert (h.order, h.frac_ns, h.major, h.snaplen) == (order, frac_ns, 2, 96)
    assert h.linktype == 113  # FCS bits masked off
    assert h.max_incl == MIN_SNAP  # a small declared snaplen is not believed
    assert h.record.unpack_from(data, PCAP_HEADER) == (100, 7, 60, 60)


def test_not_a_pcap_header() -> None:
    assert pcap_header(b"\x0a\x0d\x0d\x0a" + bytes(20)) is None  # pcapng
    assert pcap_header(b"\xd4\xc3\xb2\xa1" + bytes(10)) is None  # cut short


def test_walk_stops_at_the_first_incomplete_record() -> None:
    recs = [b"x" * 40, b"y" * 10, b"z" * 30]
    data = _capture("<", 0xA1B2C3D4, recs)
    h = pcap_header(data)
    assert h is not None
    starts = [PCAP_HEADER, PCAP_HEADER + 56, PCAP_HEADER + 56 + 26]
    assert record_offsets(data, PCAP_HEADER, h) == (starts, len(data))
    # cut inside the last record's data, then inside its header
    assert record_offsets(data[:-5], PCAP_HEADER, h) == (starts[:2], starts[2])
    assert record_offsets(data[:starts[2] + 9], PCAP_HEADER, h) == (starts[:2], starts[2])
    # from the middle: the walk starts where it is told
    assert record_offsets(data, starts[1], h) == (starts[1:], len(data))
