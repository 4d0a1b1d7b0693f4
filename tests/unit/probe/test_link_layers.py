"""Link types beyond Ethernet and cooked Linux: PPP (9, 50; RFC 1661/1662), Cisco HDLC
(104; RFC 1547 §4.3.1) which PPP link types may also carry, PPPoE session frames
with no Ethernet header (51), PPI (192) and Apple's PKTAP (258, and 149 as macOS 10.9
wrote it), whose headers name the link type of the packet they wrap. Each capture
holds one UDP flow; its packets are counted whole."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from probe import read_capture


def _ip_udp(i: int, v6: bool = False) -> bytes:
    udp = struct.pack(">HHHH", 40000, 50000, 38, 0) + b"\x11" * 30
    if v6:
        return (struct.pack(">IHBB", 0x60000000, len(udp), 17, 64)
                + b"\xfe\x80" + bytes(13) + b"\x01" + b"\xfe\x80" + bytes(13) + b"\x02" + udp)
    return struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                       bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp


def _pcap(linktype: int, frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for i, f in enumerate(frames):
        out += struct.pack("<IIII", 1_700_000_000, i * 1000, len(f), len(f)) + f
    return out


def _ppi(inner_dlt: int, frame: bytes) -> bytes:
    field = struct.pack("<HH", 2, 4) + b"\x00" * 4  # one PPI field, skipped whole
    return struct.pack("<BBHI", 0, 0, 8 + len(field), inner_dlt) + field + frame


def _pktap(inner_dlt: int, frame: bytes, record: int = 1) -> bytes:
    """Apple's PKTAP header (Wireshark packet-pktap.c): length, record type, DLT, the
    interface name (24 bytes), flags, protocol family, link-layer header and trailer
    lengths, pid, command (20), service class, interface type and unit, effective pid and
    command (20): 108 bytes, little-endian."""
    head = struct.pack("<III24sIIIII20sIHHI20s", 108, record, inner_dlt, b"en0", 0, 2, 14, 0,
                       501, b"FaceTime", 0, 6, 0, 501, b"FaceTime")
    return head + frame


ETH = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
CASES: dict[str, tuple[int, Callable[[int], bytes]]] = {
    "ppp-hdlc-framing": (9, lambda i: b"\xff\x03\x00\x21" + _ip_udp(i)),
    "ppp-no-framing": (9, lambda i: b"\x00\x21" + _ip_udp(i)),
    "ppp-compressed-protocol": (9, lambda i: b"\x21" + _ip_udp(i)),
    "ppp-ipv6": (9, lambda i: b"\xff\x03\x00\x57" + _ip_udp(i, v6=True)),
    "ppp-carrying-cisco-hdlc": (9, lambda i: b"\x0f\x00\x08\x00" + _ip_udp(i)),
    "ppp-hdlc-linktype": (50, lambda i: b"\xff\x03\x00\x21" + _ip_udp(i)),
    "cisco-hdlc": (104, lambda i: b"\x0f\x00\x08\x00" + _ip_udp(i)),
    "cisco-hdlc-broadcast-ipv6": (104, lambda i: b"\x8f\x00\x86\xdd" + _ip_udp(i, v6=True)),
    "pppoe-session": (51, lambda i: b"\x11\x00\x00\x01\x00\x42\x00\x21" + _ip_udp(i)),
    "ppi-ethernet": (192, lambda i: _ppi(1, ETH + _ip_udp(i))),
    "ppi-raw-ip": (192, lambda i: _ppi(101, _ip_udp(i))),
    "pktap-ethernet": (258, lambda i: _pktap(1, ETH + _ip_udp(i))),
    "pktap-raw-ip-utun": (258, lambda i: _pktap(12, _ip_udp(i))),
    "pktap-null-loopback": (258, lambda i: _pktap(0, struct.pack("<I", 30) + _ip_udp(i, True))),
    "pktap-as-user2": (149, lambda i: _pktap(1, ETH + _ip_udp(i))),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_flow_read_through_the_link_layer(tmp_path: Path, case: str) -> None:
    linktype, frame = CASES[case]
    path = tmp_path / f"{case}.pcap"
    path.write_bytes(_pcap(linktype, [frame(i) for i in range(3)]))
    run = read_capture(path, workers=1)
    assert run.status.complete and run.status.linktypes == {linktype}
    [flow] = run.flows
    assert (flow.proto, flow.orig_p, flow.resp_p, flow.orig_pkts, flow.orig_bytes) == (
        "udp", 40000, 50000, 3, 90)


def test_control_frames_carry_no_flow(tmp_path: Path) -> None:
    """LCP over PPP and SLARP keepalives over Cisco HDLC are link chatter, not flows."""
    lcp = b"\xff\x03\xc0\x21\x09\x01\x00\x08\x00\x00\x00\x00"
    slarp = b"\x8f\x00\x80\x35" + bytes(18)
    for lt, frame in ((9, lcp), (104, slarp)):
        path = tmp_path / f"ctl{lt}.pcap"
        path.write_bytes(_pcap(lt, [frame, frame]))
        run = read_capture(path, workers=1)
        assert run.status.complete and run.flows == [] and run.weirds == []


def test_pktap_records_other_than_packets_carry_no_flow(tmp_path: Path) -> None:
    path = tmp_path / "pktap.pcap"
    path.write_bytes(_pcap(258, [_pktap(1, ETH + _ip_udp(0), record=2),
                                 _pktap(1, ETH + _ip_udp(1))]))
    run = read_capture(path, workers=1)
    assert [f.orig_pkts for f in run.flows] == [1] and run.weirds == []


def test_pktap_header_shorter_than_its_fields_is_weird(tmp_path: Path) -> None:
    path = tmp_path / "pktap-short.pcap"
    frame = _pktap(1, ETH + _ip_udp(0))
    path.write_bytes(_pcap(258, [struct.pack("<I", 40) + frame[4:]]))
    run = read_capture(path, workers=1)
    assert run.flows == [] and len(run.weirds) == 1


def test_ppi_wrapping_ppi_is_weird(tmp_path: Path) -> None:
    path = tmp_path / "ppi2.pcap"
    path.write_bytes(_pcap(192, [_ppi(192, _ppi(1, ETH + _ip_udp(0)))]))
    run = read_capture(path, workers=1)
    assert run.flows == [] and len(run.weirds) == 1
