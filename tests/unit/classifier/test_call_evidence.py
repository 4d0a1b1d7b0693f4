"""What makes a flow a call flow when no app is named: a telephony protocol (SIP, RTCP
valid by RFC 3550 A.2, MGCP, H.323, Skinny on its port...) or RTP structure. STUN and
DTLS alone are used by games, remote desktops, cloud gaming and VPNs, and packet sizes
and timing alone fit telemetry and tunnels: neither makes a call on its own."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from classifier.dpi.rtp import is_rtcp_compound_start
from classifier.engine import classify_flows
from classifier.records import CALL_CATEGORIES, Category
from probe import read_capture
from tests.pcapbytes import pcap, tcp_frame, udp_frame

A, B = "10.0.0.1", "192.0.2.7"


def _classify(tmp_path: Path, packets: list[tuple[float, bytes]]) -> list[tuple[str | None, str,
                                                                             str]]:
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap(sorted(packets, key=lambda p: p[0])))
    flows = read_capture(path, workers=1).flows
    return [(c.app, str(c.category), c.reason) for c in classify_flows(flows)]


def _media(payload: bytes, i: int, rtp: bool) -> bytes:
    if rtp:  # RTP v2, PT 0, sequence and timestamp advancing, one SSRC
        return struct.pack(">BBHII", 0x80, 0, i, 160 * i, 0x1234) + payload
    return b"\x47" + payload


def _voice_like(rtp: bool) -> list[tuple[float, bytes]]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(500):  # 10 s of 20 ms packets each way
        for way, (src, sp, dst, dp) in enumerate(((A, 40000, B, 40002), (B, 40002, A, 40000))):
            body = bytes(rng.integers(0, 256, int(rng.integers(60, 140)), dtype=np.uint8))
            out.append((1_700_000_000 + i * 0.02 + way * 0.007,
                        udp_frame(src, sp, dst, dp, _media(body, i, rtp))))
    return out


def test_timing_alone_is_not_call_media(tmp_path: Path) -> None:
    [(app, cat, reason)] = _classify(tmp_path, _voice_like(rtp=False))
    assert app is None and cat not in CALL_CATEGORIES
    assert "no RTP structure and no call app" in reason


def test_the_same_timing_with_rtp_structure_is_voice(tmp_path: Path) -> None:
    [(app, cat, _)] = _classify(tmp_path, _voice_like(rtp=True))
    assert app is None and cat == Category.VOICE


def _stun(kind: int, i: int) -> bytes:
    return struct.pack(">HHI", kind, 0, 0x2112A442) + bytes([i]) * 12


def test_stun_with_no_app_behind_it_is_not_call_setup(tmp_path: Path) -> None:
    pkts = []
    for i in range(4):
        pkts.append((1_700_000_000 + i, udp_frame(A, 50000, B, 3478, _stun(0x0001, i))))
        pkts.append((1_700_000_000 + i + 0.05, udp_frame(B, 3478, A, 50000, _stun(0x0101, i))))
    [(app, cat, _)] = _classify(tmp_path, pkts)
    assert app is None and cat == Category.OTHER


def _rr(ssrc: int, blocks: int = 1, first: int = 0x80) -> bytes:
    body = struct.pack(">I", ssrc) + bytes(24 * blocks)
    return struct.pack(">BBH", first | blocks, 201, len(body) // 4) + body


def test_rtcp_header_validity() -> None:
    assert is_rtcp_compound_start(_rr(7))
    assert is_rtcp_compound_start(_rr(7, blocks=0) + _rr(8)[:8])  # more packets after
    assert not is_rtcp_compound_start(_rr(7, first=0xA0))  # padding in the first packet
    bad_count = bytearray(_rr(7))
    bad_count[0] = 0x80 | 27  # 27 report blocks cannot fit in 7 words
    assert not is_rtcp_compound_start(bytes(bad_count))
    app_first = bytearray(_rr(7))
    app_first[1] = 204  # a compound packet starts with SR or RR
    assert not is_rtcp_compound_start(bytes(app_first))


def test_valid_rtcp_is_call_control_and_lookalikes_are_not(tmp_path: Path) -> None:
    good = [(1_700_000_000 + i, udp_frame(A, 40001, B, 40003, _rr(9))) for i in range(4)]
    [(app, cat, _)] = _classify(tmp_path, good)
    assert app is None and cat == Category.CALL_SETUP
    # Game traffic whose first byte reads version 2 with padding and a type byte of 200
    look = [(1_700_000_000 + i, udp_frame(A, 40001, B, 5055, b"\xbb\xc8\x00\x02" + bytes(40)))
            for i in range(4)]
    [(app, cat, _)] = _classify(tmp_path, look)
    assert app is None and cat not in CALL_CATEGORIES


def _skinny(msg: int) -> bytes:
    return struct.pack("<III", 4, 0, msg)


def test_skinny_only_on_its_port(tmp_path: Path) -> None:
    def tcp_flow(dport: int) -> list[tuple[float, bytes]]:
        # a keepalive (0x0000) out, its acknowledgement (0x0100) back
        return [(1_700_000_000.0, tcp_frame(A, 51000, B, dport, _skinny(0x0000))),
                (1_700_000_000.1, tcp_frame(B, dport, A, 51000, _skinny(0x0100)))]
    [(_, cat, _)] = _classify(tmp_path, tcp_flow(2000))
    assert cat == Category.CALL_SETUP
    [(_, cat, _)] = _classify(tmp_path, tcp_flow(988))
    assert cat not in CALL_CATEGORIES


def test_a_sip_flow_makes_neither_end_a_call_peer(tmp_path: Path) -> None:
    # A PBX sends a phone an INVITE (5060 to 5060: both ends of a private network, either
    # may be the local one); minutes later another host of the network talks to the
    # phone on an unrelated port. The phone's SIP makes that traffic no call: a SIP flow's
    # ends serve every call and anything else, and its media come from its SDP.
    pbx, phone, other = "10.99.0.5", "10.20.0.10", "10.20.0.30"
    invite = (f"INVITE sip:100@{phone} SIP/2.0\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bK1\r\n"
              f"From: <sip:200@{pbx}>;tag=1\r\nTo: <sip:100@{phone}>\r\nCall-ID: c1@{pbx}\r\n"
              "CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    ringing = (f"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {pbx}:5060;branch=z9hG4bK1\r\n"
               f"From: <sip:200@{pbx}>;tag=1\r\nTo: <sip:100@{phone}>;tag=2\r\n"
               f"Call-ID: c1@{pbx}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").encode()
    t0 = 1_700_000_000.0
    packets = [(t0, udp_frame(pbx, 5060, phone, 5060, invite)),
               (t0 + 0.01, udp_frame(phone, 5060, pbx, 5060, ringing))]
    for i in range(6):  # a peer-to-peer ping between two hosts of the network
        packets += [(t0 + 120 + i, udp_frame(other, 45000, phone, 51413, b"d1:ad2:id20:" * 4)),
                    (t0 + 120.05 + i, udp_frame(phone, 51413, other, 45000, b"d1:rd2:id20:" * 4))]
    sip, ping = _classify(tmp_path, packets)
    assert sip[0] == "sip"
    assert ping[0] is None and ping[1] not in CALL_CATEGORIES, ping
