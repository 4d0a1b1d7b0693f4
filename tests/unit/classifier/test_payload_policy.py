"""The classifier's payload policy: what the probe keeps whole and where it finds RTP
agree with the classifier's own parsers, and every entry point hands it to the meter."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from classifier.dpi import framings, rtp, sip
from classifier.payloads import PAYLOAD_POLICY, meter_config
from probe.errors import ParseError
from probe.plugins import PayloadPolicy, PayloadView

SHARED = Path(__file__).resolve().parents[4] / "shared"
ZOOM_PCAP = SHARED / "captures/real-dev/pcap/zoom-menace31-microphone.pcapng"


def _first4(payloads: list[bytes]) -> np.ndarray:  # type: ignore[type-arg]
    return np.asarray([int.from_bytes(p[:4].ljust(4, b"\0"), "big") for p in payloads],
                      dtype=np.uint32)


def test_sip_start_lines_and_rtcp_reports_are_kept_whole() -> None:
    kept = [start + b"sip:x SIP/2.0\r\n" for start in sip.START_LINES]
    rtcp_reports = [bytes([0x81, t, 0, 7]) for t in (rtp.RtcpType.SR, rtp.RtcpType.RR)]
    others = [b"GET / HTTP/1.1", b"HTTP/1.1 200", bytes([0x81, rtp.RtcpType.SDES, 0, 1]),
              bytes([0x80, 0x00, 0x12, 0x34])]
    got = PAYLOAD_POLICY.keeps_whole(_first4(kept + rtcp_reports + others)).tolist()
    assert got == [True] * (len(kept) + 2) + [False] * len(others)


def _scalar_offset(p: bytes) -> int | None:
    """Where the classifier's parser puts the RTP packet of a Zoom SFU payload (-1: none),
    under the probe's own conditions (payload over 40 bytes, a whole RTP header); None
    when the parser gives up on a payload cut inside the header it reads (the probe,
    which reads no further than the RTP header's first two bytes, goes on)."""
    try:
        z = framings.parse_zoom_sfu(p)
    except ParseError:
        return None
    if (z is None or z.sfu_type != framings.ZoomSfuType.MEDIA or z.media is None
            or z.media.kind is framings.ZoomMediaKind.RTCP or len(p) <= 40):
        return -1
    off = z.media.rtp_offset
    if len(p) < off + 12 or 72 <= (p[off + 1] & 0x7F) <= 76:
        return -1
    return off


def _vector_offsets(payloads: list[bytes]) -> list[int]:
    buf = b"".join(payloads)
    starts = np.cumsum([0] + [len(p) for p in payloads[:-1]]).astype(np.int64)
    lengths = np.asarray([len(p) for p in payloads], dtype=np.int64)
    view = PayloadView(np.frombuffer(buf, dtype=np.uint8), starts, lengths, lengths)
    offsets = PayloadPolicy(rtp_framings=framings.ZOOM_SFU_RTP).rtp_offsets(view)
    return [int(x) for x in offsets.tolist()]


def _zoom_payloads() -> list[bytes]:
    from scapy.layers.inet import UDP  # type: ignore[attr-defined]
    from scapy.utils import rdpcap
    return [bytes(pkt[UDP].payload) for pkt in rdpcap(str(ZOOM_PCAP))
            if UDP in pkt and bytes(pkt[UDP].payload)[:1] == b"\x05"]


def _crafted(n: int, seed: int) -> list[bytes]:
    """Type-5 payloads whose media type, frame-info, sub-type and RTP version bytes take
    the values the layout gives meaning to, at the places either header length puts them."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p = bytearray(rng.randbytes(rng.randrange(30, 90)))
        p[0] = 0x05
        for base in (1, 8):
            p[base] = rng.choice([13, 15, 16, 30, 33, rng.randrange(256)])
            p[base + 7] = rng.choice([0x1E, rng.randrange(256)])
            p[base + 20] = rng.choice([0x02, rng.randrange(256)])
        for rel in rng.sample([16, 19, 20, 24, 27], 3):
            for base in (1, 8):
                if base + rel + 1 < len(p):
                    p[base + rel] = rng.choice([0x80, 0x90, 0xA0])
                    p[base + rel + 1] = rng.choice([0x00, 0x6F, 0xC8, rng.randrange(256)])
        out.append(bytes(p))
    return out


def test_zoom_rtp_offsets_are_the_parsers_on_crafted_headers() -> None:
    payloads = _crafted(20000, 5)
    want = [_scalar_offset(p) for p in payloads]
    assert sum(w is not None and w >= 0 for w in want) > 2000
    assert sum(w is None for w in want) < len(payloads) // 4
    got = _vector_offsets(payloads)
    assert [g for g, w in zip(got, want, strict=True) if w is not None] == [
        w for w in want if w is not None]


@pytest.mark.shared
@pytest.mark.skipif(not ZOOM_PCAP.exists(), reason="../shared captures are not available")
def test_zoom_rtp_offsets_are_the_parsers() -> None:
    real = _zoom_payloads()
    assert sum((_scalar_offset(p) or -1) >= 0 for p in real) > 100  # 150 audio packets
    rng = random.Random(12)
    mutated = []
    for p in real[:400]:
        q = bytearray(p)
        for _ in range(3):  # media type, frame-info and sub-type bytes, RTP version byte
            pos = rng.choice([1, 8, 15, 21, 28, 20, 27, 24, 32, 35, rng.randrange(len(q))])
            if pos < len(q):
                q[pos] = rng.choice([13, 15, 16, 30, 33, 0x02, 0x1E, 0x80, 0x90,
                                     rng.randrange(256)])
        mutated.append(bytes(q))
    payloads = real + mutated + [p[:n] for p in real[:50] for n in (9, 30, 41, 45)]
    want = [_scalar_offset(p) for p in payloads]
    got = _vector_offsets(payloads)
    assert [g for g, w in zip(got, want, strict=True) if w is not None] == [
        w for w in want if w is not None]


def test_entry_points_hand_the_policy_to_the_meter() -> None:
    from api.live import LiveConfig
    from policy.pipeline import Pipeline
    assert meter_config().payloads is PAYLOAD_POLICY
    assert Pipeline().meter.payloads is PAYLOAD_POLICY
    assert LiveConfig(source="-").meter.payloads is PAYLOAD_POLICY


def _ms_turn_share(tmp_path: Path, channel: int = 0xFF10, length_fix: int = 0) -> Path:
    """A screen share relayed in [MS-TURN] §2.2.3 Multiplexed TURN messages: channel ID,
    length, an 8-byte session ID, then RTP (PT 122, 90 kHz): a frame of 6-12 packets of
    about 1.1 KB every half second, the marker on each frame's last packet."""
    import struct

    from scapy.layers.inet import IP, UDP  # type: ignore[attr-defined]
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    rng = random.Random(3)
    session = bytes.fromhex("7a45cdf193f5cf62")
    frames, seq, t = [], 1000, 1_700_000_000.0
    for f in range(28):
        n = rng.randrange(6, 13)
        for j in range(n):
            rtp_pkt = struct.pack("!BBHII", 0x80, (0x80 if j == n - 1 else 0) | 122, seq,
                                  f * 45000, 0x9405) + rng.randbytes(1100)
            body = session + rtp_pkt
            msg = struct.pack("!HH", channel, len(body) + length_fix) + body
            p = (Ether() / IP(src="10.1.0.2", dst="52.112.0.9")
                 / UDP(sport=50046, dport=3481) / Raw(msg))
            p.time = t + f * 0.5 + j * 0.002
            frames.append(p)
            seq += 1
    path = tmp_path / "ms-turn-share.pcap"
    wrpcap(str(path), frames)
    return path


def test_rtp_inside_ms_turn_multiplexed_messages_is_measured(tmp_path: Path) -> None:
    from classifier.stats import MediaKind, media_guess
    from probe import read_capture

    (flow,) = read_capture(_ms_turn_share(tmp_path), meter_config()).flows
    assert [(s.ssrc, s.packets) for s in flow.rtp_streams] == [(0x9405, flow.orig_pkts)]
    g = media_guess(flow)
    assert (g.realtime, g.media) == (True, MediaKind.SCREEN), g.reason
    assert "PT 122 screen" in g.reason and "2.0 frames/s" in g.reason


@pytest.mark.parametrize(("channel", "length_fix"), [(0xFF11, 0), (0xFF10, 4)])
def test_ms_turn_framing_needs_its_channel_and_length(tmp_path: Path, channel: int,
                                                      length_fix: int) -> None:
    from probe import read_capture

    (flow,) = read_capture(_ms_turn_share(tmp_path, channel, length_fix),
                           meter_config()).flows
    assert not flow.rtp_streams
