"""The pcap header's link-type field carries more than the link type
(draft-ietf-opsawg-pcap §4): the low 16 bits are the type, the P bit says the top 4 bits
give the FCS length in 16-bit words, and the reserved bits between are ignored. A
declared FCS is taken off each packet."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest

from probe import read_capture

ROOT = Path(__file__).resolve().parents[3]
MARSAD = [sys.executable, "-c", "import sys; from api.cli import run; sys.exit(run())"]
FCS = b"\xde\xad\xbe\xef"


def _frame(i: int) -> bytes:
    udp = struct.pack(">HHHH", 40000, 50000, 38, 0) + b"\x11" * 30
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    return bytes(6) + b"\x02" * 6 + b"\x08\x00" + ip


def _pcap(network: int, trailer: bytes, snaplen: int = 65535) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, network)
    for i in range(3):
        f = _frame(i) + trailer
        cap = f[:snaplen]
        out += struct.pack("<IIII", 1_700_000_000, i * 1000, len(cap), len(f)) + cap
    return out


FRAME = len(_frame(0))  # 72


@pytest.mark.parametrize(("network", "trailer"), [
    (0x24000001, FCS),  # Ethernet with its 4-byte CRC-32
    (0x14000001, FCS[:2]),  # a 2-byte FCS
    (0x04000001, b""),  # FCS length stated as none
    (0x03FF0001, b""),  # reserved bits set: ignored
    (0x20000001, b""),  # an FCS length without the P bit means nothing
], ids=["fcs4", "fcs2", "fcs0", "reserved", "no-p-bit"])
def test_link_type_and_fcs(tmp_path: Path, network: int, trailer: bytes) -> None:
    path = tmp_path / "fcs.pcap"
    path.write_bytes(_pcap(network, trailer))
    run = read_capture(path)
    assert run.status.complete and run.status.linktypes == {1}
    [flow] = run.flows
    assert (flow.orig_pkts, flow.orig_bytes, flow.orig_wire_bytes) == (3, 90, 3 * FRAME)


def test_a_packet_cut_before_its_fcs_keeps_what_was_captured(tmp_path: Path) -> None:
    path = tmp_path / "snap.pcap"
    path.write_bytes(_pcap(0x24000001, FCS, snaplen=FRAME + 2))  # half the FCS captured
    [flow] = read_capture(path).flows
    assert flow.orig_wire_bytes == 3 * FRAME and flow.orig_bytes == 90


def test_cli_reads_a_header_that_declares_an_fcs(tmp_path: Path) -> None:
    """It was 'unsupported link type 67108865', exit 2."""
    path = tmp_path / "fcs.pcap"
    path.write_bytes(_pcap(0x14000001, FCS[:2]))
    out = subprocess.run([*MARSAD, "flows", str(path), "--jsonl"], capture_output=True,
                         cwd=ROOT, timeout=120, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.count(b'"uid"') == 1
