"""Classic pcap files from patched libpcaps carry longer record headers with nothing in
the file header to say so (ss990417 and Nokia with the standard magic, ss991029 and
ss990915 with the modified magic 0xA1B2CD34). The reader tells the variant as
Wireshark does, from how the first records read, and reads every packet."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from probe import read_capture
from probe.pcapstream import PcapStream
from probe.sources import PCAP_VARIANTS, pcap_variant
from tests.pcapbytes import udp_frame

STANDARD, MODIFIED = 0xA1B2C3D4, 0xA1B2CD34


def _tail(variant: str, order: str) -> bytes:
    """The bytes a variant's record header adds: interface 2, Ethertype IPv4, packet
    type 0 (outgoing) and padding; for Nokia a value of the form its files hold."""
    if variant == "nokia":
        return struct.pack(order + "I", 0x9FBFB601)
    if variant in ("ss990417", "ss991029"):
        return struct.pack(order + "IHBB", 2, 0x0800, 4, 0)
    if variant == "ss990915":
        return struct.pack(order + "IHBBB3s", 2, 0x0800, 0, 1, 0, b"\xaa\xbb\xcc")
    return b""


def _capture(variant: str, order: str = "<", n: int = 5) -> bytes:
    magic = MODIFIED if variant.startswith("ss99") and variant != "ss990417" else STANDARD
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1)
    for i in range(n):
        f = udp_frame("10.0.0.1", 40000, "10.0.0.2", 50000, bytes([i]) * (40 + i))
        out += struct.pack(order + "IIII", 1_700_000_000 + i, 999_999, len(f), len(f))
        out += _tail(variant, order) + f
    return out


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("variant", sorted(PCAP_VARIANTS))
def test_every_variant_is_told_and_read_whole(tmp_path: Path, variant: str, order: str) -> None:
    data = _capture(variant, order)
    assert pcap_variant(data) == variant
    path = tmp_path / f"{variant}.pcap"
    path.write_bytes(data)
    run = read_capture(path, workers=1)
    assert run.status.complete and run.status.variant == variant
    [flow] = run.flows
    assert (flow.orig_pkts, flow.orig_bytes) == (5, sum(40 + i for i in range(5)))
    assert run.weirds == []


def test_a_single_record_file_stays_standard() -> None:
    """One record and nothing after it: the standard reading has nothing wrong."""
    assert pcap_variant(_capture("pcap", n=1)) == "pcap"


def test_a_variant_file_cut_inside_a_record_is_read_to_the_cut(tmp_path: Path) -> None:
    data = _capture("ss990417")
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-10])
    run = read_capture(path, workers=1)
    assert not run.status.complete and run.status.variant == "ss990417"
    assert run.status.stopped_at == len(data) - (16 + 8 + 86)  # the last record, 86-byte frame
    assert sum(f.orig_pkts for f in run.flows) == 4


def _old_capture(minor: int, swap: list[bool], major: int = 2) -> bytes:
    out = struct.pack("<IHHiIII", STANDARD, major, minor, 0, 0, 65535, 1)
    for i, sw in enumerate(swap):
        f = udp_frame("10.0.0.1", 40000, "10.0.0.2", 50000, bytes([i]) * 40)
        wire = len(f) + 100  # the frame was cut to what was captured
        lengths = (wire, len(f)) if sw else (len(f), wire)
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, *lengths) + f
    return out


@pytest.mark.parametrize(("major", "minor", "swap"), [
    (2, 2, [True, True, True]),  # before 2.3 the two lengths were written the other way
    (543, 0, [True, True, True]),  # DG/UX's tcpdump
    (2, 3, [False, True, False]),  # 2.3 either way: the smaller is what was captured
], ids=["2.2", "543", "2.3"])
def test_old_versions_with_lengths_the_other_way(tmp_path: Path, major: int, minor: int,
                                                 swap: list[bool]) -> None:
    path = tmp_path / "old.pcap"
    path.write_bytes(_old_capture(minor, swap, major))
    run = read_capture(path, workers=1)
    assert run.status.complete
    [flow] = run.flows
    assert (flow.orig_pkts, flow.orig_bytes, flow.orig_wire_bytes) == (3, 120, 3 * 182)


@pytest.mark.parametrize("variant", ["pcap", "ss990417", "nokia"])
def test_a_stream_passes_variant_records_on_as_standard_ones(variant: str) -> None:
    """The live probe's stream mender gives the same packets as the file reader: the
    records of a standard-magic variant come out with standard 16-byte headers."""
    data = _capture(variant)
    stream = PcapStream()
    out = b"".join(stream.feed(data[i:i + 37]) for i in range(0, len(data), 37))
    out += stream.finish()
    assert stream.variant == variant and stream.stopped_at is None
    assert out == _capture("pcap")


def test_a_stream_of_an_old_version_is_walked_with_its_lengths() -> None:
    data = _old_capture(2, [True, True, True])
    stream = PcapStream()
    out = stream.feed(data) + stream.finish()
    assert out == data and stream.frames == 3 and stream.damaged == 0
