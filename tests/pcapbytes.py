"""Small capture files written by tests: classic pcap bytes and plain Ethernet/IPv4/UDP
frames, so a test states its packets and reads them back through the probe."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable


def pcap(packets: Iterable[tuple[float, bytes]]) -> bytes:
    """A little-endian microsecond pcap of Ethernet ``(arrival, frame)`` records."""
    out = io.BytesIO()
    out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for ts, data in packets:
        sec = int(ts)
        out.write(struct.pack("<IIII", sec, round((ts - sec) * 1e6), len(data), len(data)))
        out.write(data)
    return out.getvalue()


def udp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An Ethernet frame of one IPv4 UDP datagram (checksums left at zero)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def split(data: bytes) -> tuple[bytes, list[bytes]]:
    """(file header, packet records with their headers) of a little-endian microsecond
    pcap, which must hold whole records only."""
    assert data[:4] == b"\xd4\xc3\xb2\xa1"
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from("<I", data, pos + 8)[0]
        out.append(data[pos:pos + 16 + incl])
        pos += 16 + incl
    assert pos == len(data)
    return data[:24], out


def tcp_frame(src: str, sport: int, dst: str, dport: int, payload: bytes, seq: int = 1,
              flags: int = 0x18) -> bytes:
    """An Ethernet frame of one IPv4 TCP segment (PSH+ACK unless told; checksums zero)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, 6, 0,
                     bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + tcp
