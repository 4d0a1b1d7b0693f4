"""A small call trace written the way captures/traces/ are (one UDP flow between the
documentation addresses, the client first, unique payloads per direction): STUN binding
requests and responses, then RTP both ways at 50 packets a second."""

from __future__ import annotations

import struct
from pathlib import Path

from tests.pcapbytes import pcap, udp_frame

CLIENT = ("192.0.2.10", 50004)
SERVER = ("198.51.100.20", 3478)
MAGIC = 0x2112A442
RTP_BYTES = 160


def stun(kind: int, txid: int) -> bytes:
    """A STUN message with no attributes (RFC 8489 header: type, length, cookie, id)."""
    return struct.pack("!HHI", kind, 0, MAGIC) + txid.to_bytes(12, "big")


def rtp(seq: int, ssrc: int, payload_byte: int) -> bytes:
    """An RTP packet (PCMU, 20 ms) with a 160-byte payload."""
    return struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160, ssrc) + \
        bytes([payload_byte]) * RTP_BYTES


def trace_packets(seconds: float = 3.0, pps: int = 50) -> list[tuple[float, str, bytes]]:
    """(offset, direction, payload) of the trace."""
    out: list[tuple[float, str, bytes]] = []
    for k in range(2):
        out.append((0.05 * k, "up", stun(0x0001, 1000 + k)))
        out.append((0.05 * k + 0.02, "down", stun(0x0101, 1000 + k)))
    n = int(seconds * pps)
    for k in range(n):
        t = 0.12 + k / pps
        out.append((t, "up", rtp(k, 0x11111111, 0x55)))
        out.append((t + 0.003, "down", rtp(k, 0x22222222, 0x66)))
    return sorted(out, key=lambda p: p[0])


def write_trace(path: Path, seconds: float = 3.0, pps: int = 50) -> Path:
    frames = []
    for t, d, payload in trace_packets(seconds, pps):
        src, dst = (CLIENT, SERVER) if d == "up" else (SERVER, CLIENT)
        frames.append((1_700_000_000.0 + t, udp_frame(src[0], src[1], dst[0], dst[1],
                                                      payload)))
    path.write_bytes(pcap(frames))
    return path
