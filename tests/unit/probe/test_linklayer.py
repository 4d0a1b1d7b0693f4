"""Where link headers write link-layer addresses: one table, read by the flow table and
by the evidence bundles' anonymiser."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from probe import LINK_ADDRESSES, MeterConfig, link_address_offsets, read_capture
from probe.sources import LinkType
from tests.pcapbytes import udp_frame

SENDER = bytes.fromhex("0a1b2c3d4e5f")
RECEIVER = bytes.fromhex("02aabbccddee")
IP_UDP = udp_frame("192.168.1.20", 40000, "198.51.100.9", 3478, b"\x00\x01" + b"\x00" * 18)[14:]


def _ethernet(ip: bytes) -> bytes:
    return RECEIVER + SENDER + b"\x08\x00" + ip


def _sll(ip: bytes, alen: int = 6) -> bytes:
    # packet type 4 (sent by us), ARPHRD_ETHER, address length, 8 address bytes, protocol
    return struct.pack("!HHH", 4, 1, alen) + SENDER + b"\x00\x00" + b"\x08\x00" + ip


def _sll2(ip: bytes, alen: int = 6) -> bytes:
    # protocol, reserved, interface index, ARPHRD_ETHER, packet type, address length, address
    return (struct.pack("!HHIHBB", 0x0800, 0, 2, 1, 4, alen) + SENDER + b"\x00\x00" + ip)


FRAMES = {LinkType.ETHERNET: _ethernet, LinkType.LINUX_SLL: _sll, LinkType.LINUX_SLL2: _sll2}


@pytest.mark.parametrize(("linktype", "want"), [
    (LinkType.ETHERNET, [RECEIVER, SENDER]),
    (LinkType.LINUX_SLL, [SENDER]),
    (LinkType.LINUX_SLL2, [SENDER]),
])
def test_the_header_says_where_its_addresses_are(linktype: LinkType, want: list[bytes]
                                                 ) -> None:
    frame = FRAMES[linktype](IP_UDP)
    assert [frame[at:at + 6] for at in link_address_offsets(frame, linktype)] == want
    # A header cut short writes none.
    short = frame[:LINK_ADDRESSES[linktype].header_len - 1]
    assert link_address_offsets(short, linktype) == ()


def test_a_cooked_address_that_is_not_six_bytes_is_no_ethernet_address() -> None:
    assert link_address_offsets(_sll(IP_UDP, alen=8), LinkType.LINUX_SLL) == ()
    assert link_address_offsets(_sll2(IP_UDP, alen=0), LinkType.LINUX_SLL2) == ()
    assert link_address_offsets(IP_UDP, LinkType.RAW) == ()


@pytest.mark.parametrize("linktype", list(FRAMES))
def test_the_flow_table_reads_the_same_addresses(tmp_path: Path, linktype: LinkType) -> None:
    frame = FRAMES[linktype](IP_UDP)
    path = tmp_path / "one.pcap"
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, int(linktype))
                     + struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame)
    (flow,) = read_capture(path, MeterConfig()).flows
    offsets = link_address_offsets(frame, linktype)
    assert flow.orig_l2_addr == frame[offsets[-1]:offsets[-1] + 6].hex(":")
    if len(offsets) == 2:
        assert flow.resp_l2_addr == frame[offsets[0]:offsets[0] + 6].hex(":")
    else:
        assert flow.resp_l2_addr is None
