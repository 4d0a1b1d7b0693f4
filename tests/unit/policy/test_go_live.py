"""Discord's Go Live: a shared screen goes over a second voice connection, to another
voice server, opened while the first (microphone, camera) is going (Discord's client
protocol, "Voice Connections", docs.discord.food). Small captures built from Discord's
IP discovery (74-byte request and response) and RTP (RFC 3550 §5.1), read through the
whole pipeline."""

from __future__ import annotations

import struct
from pathlib import Path

from api.pipeline import analyze_capture
from policy.records import Call
from tests.pcapbytes import pcap, udp_frame

ME = "192.168.9.8"
VOICE, STREAM = "66.22.196.91", "66.22.199.187"


def _discovery(me: tuple[str, int], server: tuple[str, int], ssrc: int, t: float
               ) -> list[tuple[float, bytes]]:
    """Discord's IP discovery: type 1 request, type 2 response with the address seen,
    length 70, the SSRC, then the address and port fields (74 bytes in all)."""
    req = struct.pack("!HHI", 1, 70, ssrc) + bytes(64) + struct.pack("!H", me[1])
    addr = b"203.0.113.7".ljust(64, b"\0")
    rsp = struct.pack("!HHI", 2, 70, ssrc) + addr + struct.pack("!H", me[1])
    return [(t, udp_frame(*me, *server, req)), (t + 0.02, udp_frame(*server, *me, rsp))]


def _rtp(pt: int, seq: int, ts: int, ssrc: int, marker: bool, size: int) -> bytes:
    head = struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                       ts & 0xFFFFFFFF, ssrc)
    return head + bytes([0x5A]) * size


def _audio(src: tuple[str, int], dst: tuple[str, int], ssrc: int, a: float, b: float
           ) -> list[tuple[float, bytes]]:
    """Opus (dynamic PT 120, 48 kHz) every 20 ms."""
    n = round((b - a) / 0.02)
    return [(a + k * 0.02, udp_frame(*src, *dst, _rtp(120, k, k * 960, ssrc, False, 80)))
            for k in range(n)]


def _video(src: tuple[str, int], dst: tuple[str, int], ssrc: int, a: float, b: float
           ) -> list[tuple[float, bytes]]:
    """30 frames a second (PT 105, 90 kHz), four packets a frame, the marker on the last."""
    out, seq = [], 0
    for f in range(round((b - a) * 30)):
        for j in range(4):
            t = a + f / 30 + j * 0.001
            out.append((t, udp_frame(*src, *dst, _rtp(105, seq, f * 3000, ssrc, j == 3, 1000))))
            seq += 1
    return out


def _call(tmp_path: Path, pkts: list[tuple[float, bytes]]) -> Call:
    path = tmp_path / "discord.pcap"
    path.write_bytes(pcap(sorted(pkts)))
    result = analyze_capture(path, workers=1, hash_capture=False)
    (call,) = [c for c in result.analysis.calls if c.app == "discord"]
    return call


def test_a_stream_on_a_second_connection_opened_during_the_call_is_screen(
        tmp_path: Path) -> None:
    me_voice, voice = (ME, 59230), (VOICE, 50003)
    me_stream, stream = (ME, 60382), (STREAM, 50007)
    pkts = _discovery(me_voice, voice, 0x191F8, 1.0)
    pkts += _audio(me_voice, voice, 0x191F8, 1.1, 30.0) + _audio(voice, me_voice, 7, 1.1, 30.0)
    pkts += _discovery(me_stream, stream, 0x20764, 10.0)
    pkts += _video(me_stream, stream, 0x20764, 10.1, 28.0)
    call = _call(tmp_path, pkts)
    assert set(call.media) == {"audio", "screen"}, call.media
    assert len(call.extra["go_live_flows"]) == 1


def test_a_camera_after_a_move_to_another_voice_server_stays_video(tmp_path: Path) -> None:
    # The first connection ended before the second began: a move, not a stream.
    me_a, server_a = (ME, 59230), (VOICE, 50003)
    me_b, server_b = (ME, 59240), (STREAM, 50007)
    pkts = _discovery(me_a, server_a, 0x191F8, 1.0)
    pkts += _audio(me_a, server_a, 0x191F8, 1.1, 9.0) + _audio(server_a, me_a, 7, 1.1, 9.0)
    pkts += _discovery(me_b, server_b, 0x191F9, 9.5)
    pkts += _audio(me_b, server_b, 0x191F9, 9.6, 30.0) + _audio(server_b, me_b, 8, 9.6, 30.0)
    pkts += _video(me_b, server_b, 0x191FA, 9.6, 30.0)
    call = _call(tmp_path, pkts)
    assert "video" in call.media and "screen" not in call.media, call.media
    assert "go_live_flows" not in call.extra
