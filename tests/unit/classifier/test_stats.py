"""The statistical media detector (classifier.stats).

Part (a) builds flows packet by packet, either straight into a ``FlowRecord`` or as a
tiny pcap written with scapy and read back through the probe, and checks exact
decisions. Part (b) runs the detector over the reference captures and checks, flow by
flow, the decision the bytes call for (table ``REFERENCE`` below, one reason per row),
then that no other flow of the set is called call media.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from classifier.stats import DEFAULT_RULES, MediaGuess, MediaKind, MediaRules, media_guess
from probe import read_capture
from probe.records import FlowRecord, RtpSeries
from tests.conftest import NDPI_DEV, need_shared

T0 = 1_700_000_000.0
HEADERS = 42  # Ethernet + IPv4 + UDP


# -- building flows --------------------------------------------------------------------------

Pkt = tuple[float, int, int]
"""(seconds since T0, direction, transport payload bytes)"""

RtpPkt = tuple[float, int, int, int, int, int, int, int]
"""(seconds since T0, direction, seq, RTP timestamp, SSRC, PT, marker, UDP payload bytes)"""


def make_flow(pkts: Iterable[Pkt], *, proto: str = "udp", orig_p: int = 50000,
              resp_p: int = 3478, rtp: Sequence[RtpPkt] = ()) -> FlowRecord:
    """A FlowRecord with the counters, timing series and rate rows the probe would fill."""
    rows = sorted(pkts)
    t = np.array([T0 + r[0] for r in rows], dtype=np.float64)
    d = np.array([r[1] for r in rows], dtype=np.uint8)
    n = np.array([r[2] for r in rows], dtype=np.int32)
    wire = n.astype(np.int64) + HEADERS
    sec = np.floor(t).astype(np.int64)
    rate = [(s, int(((sec == s) & (d == 0)).sum()), int(wire[(sec == s) & (d == 0)].sum()),
             int(((sec == s) & (d == 1)).sum()), int(wire[(sec == s) & (d == 1)].sum()))
            for s in np.unique(sec)]
    series = None
    if rtp:
        r = sorted(rtp)
        col = list(zip(*r, strict=True))
        series = RtpSeries(
            ts=np.array(col[0], np.float64) + T0, direction=np.array(col[1], np.uint8),
            seq=np.array(col[2], np.uint16), rtp_ts=np.array(col[3], np.uint32),
            ssrc=np.array(col[4], np.uint32), pt=np.array(col[5], np.uint8),
            marker=np.array(col[6], np.uint8), size=np.array(col[7], np.uint16),
            offset=np.zeros(len(r), np.uint8), frame=np.arange(1, len(r) + 1, dtype=np.int64))
    o, s_ = d == 0, d == 1
    return FlowRecord(
        uid="Ctest", proto=proto, ip_version=4, orig_h="10.0.0.1", orig_p=orig_p,
        resp_h="10.0.0.2", resp_p=resp_p, first_ts=float(t[0]) if t.size else T0,
        last_ts=float(t[-1]) if t.size else T0,
        orig_pkts=int(o.sum()), orig_bytes=int(n[o].sum()), orig_wire_bytes=int(wire[o].sum()),
        resp_pkts=int(s_.sum()), resp_bytes=int(n[s_].sum()),
        resp_wire_bytes=int(wire[s_].sum()), orig_flags=0, resp_flags=0, orig_retrans=0,
        resp_retrans=0, first_frame=1, last_frame=len(rows), end_reason="eof",
        pkt_ts=t[:64], pkt_len=n[:64], pkt_dir=d[:64], pkt_flags=np.zeros(min(64, len(rows)),
                                                                          np.uint8),
        rate=np.array(rate, dtype=np.int64).reshape(-1, 5), rtp=series)


def voice(seconds: float, *, ways: tuple[int, ...] = (0, 1), ptime: float = 0.02,
          seed: int = 1, start: float = 0.0) -> list[Pkt]:
    """Opus-like packets every ``ptime`` with a few ms of jitter and 60-140 B payloads."""
    rng = np.random.default_rng(seed)
    out: list[Pkt] = []
    for way in ways:
        for i in range(int(seconds / ptime)):
            jitter = float(rng.uniform(-0.003, 0.003))
            out.append((start + i * ptime + 0.007 * way + jitter, way, int(rng.integers(60, 141))))
    return out


def video_frames(seconds: float, *, fps: float = 30.0, way: int = 0, seed: int = 2
                 ) -> list[Pkt]:
    """Frames of 3-5 back-to-back packets (900-1200 B, smaller last one) every 1/fps."""
    rng = np.random.default_rng(seed)
    out: list[Pkt] = []
    for f in range(int(seconds * fps)):
        t = f / fps
        k = int(rng.integers(3, 6))
        for j in range(k):
            size = int(rng.integers(900, 1201)) if j < k - 1 else int(rng.integers(300, 900))
            out.append((t + j * 0.0004, way, size))
    return out


def rtcp(seconds: float, *, way: int, every: float = 1.0) -> list[Pkt]:
    return [(0.5 + i * every, way, 60) for i in range(int(seconds / every))]


# -- (a) synthetic flows, statistics only ----------------------------------------------------


def test_two_way_voice() -> None:
    g = media_guess(make_flow(voice(10)))
    assert (g.realtime, g.media, g.streaming) == (True, MediaKind.AUDIO, False)
    assert g.media == "audio"  # the kind compares equal to its string
    assert g.reason.startswith("UDP, 50/50 pkt/s orig/resp over 10 s (both ways)")
    assert "100% of packets <= 350 B" in g.reason and g.reason.endswith(": voice")
    assert 0.85 <= g.confidence <= 0.9


def test_one_way_voice_of_a_muted_leg() -> None:
    g = media_guess(make_flow(voice(8, ways=(1,), ptime=0.04)))
    assert (g.realtime, g.media) == (True, MediaKind.AUDIO)
    assert "0/25 pkt/s" in g.reason and "(one way)" in g.reason
    assert "median gap 40 ms" in g.reason


def test_voice_after_a_setup_pause_still_counts() -> None:
    setup = [(0.0, 0, 120), (0.01, 1, 120), (0.3, 0, 1100), (0.31, 1, 1100)]
    g = media_guess(make_flow(setup + voice(10, start=4.0)))
    assert (g.realtime, g.media) == (True, MediaKind.AUDIO)


def test_video_call_with_audio_in_the_same_flow() -> None:
    pkts = video_frames(6) + voice(6, ways=(0,), seed=3) + voice(6, ways=(1,), seed=4)
    g = media_guess(make_flow(pkts))
    assert (g.realtime, g.media, g.streaming) == (True, MediaKind.VIDEO, False)
    assert "kbit/s orig over 6 s" in g.reason and "every 33 ms: video" in g.reason


def test_video_needs_frames_not_a_constant_bit_rate_probe() -> None:
    # 1029-B packets every 10 ms, all the same size, one direction (a bandwidth probe).
    probe_pkts = [(i * 0.01, 1, 1029) for i in range(300)] + rtcp(3, way=0)
    g = media_guess(make_flow(probe_pkts))
    assert not g.realtime and g.media is None
    assert g.reason.endswith("neither voice nor video")


def test_screen_share_bursty_with_idle_gaps() -> None:
    # RTCP both ways once a second for 40 s; a burst of large packets every 8 s.
    bursts: list[Pkt] = []
    for b in range(5):
        t = 2.0 + 8.0 * b
        bursts += [(t + j * 0.0005, 0, 1100 + (j % 5) * 37) for j in range(25)]
    g = media_guess(make_flow(bursts + rtcp(40, way=0) + rtcp(40, way=1)))
    assert (g.realtime, g.media, g.streaming) == (True, MediaKind.SCREEN, False)
    assert g.media == "screen"
    assert "average over 40 s" in g.reason and g.reason.endswith("screen share")


def test_game_like_tick_traffic_is_not_media() -> None:
    # 30 Hz client inputs (small) and 30 Hz server state (wildly varying, single packets).
    rng = np.random.default_rng(7)
    pkts: list[Pkt] = []
    for i in range(300):
        pkts.append((i / 30, 0, int(rng.integers(40, 90))))
        pkts.append((i / 30 + 0.012, 1, int(rng.integers(100, 1300))))
    g = media_guess(make_flow(pkts, resp_p=7777))
    assert not g.realtime and not g.streaming


def test_periodic_lan_beacons_are_not_voice() -> None:
    # Every ~110 ms both ways (a LAN sync chatter), 9 pkt/s.
    pkts = [(i * 0.11, 0, 96) for i in range(100)] + [(i * 0.11 + 0.001, 1, 19)
                                                       for i in range(100)]
    g = media_guess(make_flow(pkts, resp_p=17500))
    assert not g.realtime
    assert "below 12 pkt/s" in g.reason


def test_short_burst_of_small_packets_is_not_sustained() -> None:
    g = media_guess(make_flow(voice(1.5)))
    assert not g.realtime
    assert "longest run of seconds" in g.reason and "not sustained media" in g.reason


def test_buffered_streaming_over_tcp() -> None:
    # Three 2-s bursts of 1448-B segments at ~2 Mbit/s, 8 s apart; pure acks back.
    pkts: list[Pkt] = [(0.0, 0, 0), (0.01, 1, 0), (0.02, 0, 0), (0.03, 0, 400)]
    for b in range(3):
        start = 0.1 + 10.0 * b
        for i in range(360):
            t = start + i * 0.0055
            pkts.append((t, 1, 1448))
            if i % 2:
                pkts.append((t + 0.0001, 0, 0))
    g = media_guess(make_flow(pkts, proto="tcp", resp_p=443))
    assert (g.realtime, g.media, g.streaming) == (False, None, True)
    assert g.reason.startswith("TCP, 100% of bytes one way in 1448 B packets")
    assert "3 bulk bursts" in g.reason and g.reason.endswith("buffered streaming")


def test_one_bulk_download_is_not_streaming() -> None:
    pkts: list[Pkt] = [(0.0, 0, 300)] + [(0.1 + i * 0.005, 1, 1448) for i in range(400)]
    pkts += [(0.1 + i * 0.01, 0, 0) for i in range(200)]
    g = media_guess(make_flow(pkts, proto="tcp", resp_p=443))
    assert not g.streaming and not g.realtime


def test_streaming_needs_a_web_port() -> None:
    pkts: list[Pkt] = []
    for b in range(3):
        pkts += [(10.0 * b + i * 0.005, 1, 1448) for i in range(300)]
        pkts += [(10.0 * b + i * 0.01, 0, 0) for i in range(150)]
    assert media_guess(make_flow(pkts, proto="tcp", resp_p=443)).streaming
    assert not media_guess(make_flow(pkts, proto="tcp", resp_p=51413)).streaming


def test_too_few_packets_and_empty_records() -> None:
    g = media_guess(make_flow([(0.0, 0, 40), (0.01, 1, 120)], resp_p=53))
    assert (g.realtime, g.streaming, g.confidence) == (False, False, 0.5)
    assert g.reason == "UDP, 2 packets: too few to judge"
    empty = dataclasses.replace(make_flow([(0.0, 0, 40)]), orig_pkts=0, orig_bytes=0,
                                orig_wire_bytes=0, pkt_ts=np.zeros(0), rate=np.zeros((0, 5),
                                                                                     np.int64))
    assert media_guess(empty).reason == "UDP, 0 packets: too few to judge"


def test_only_udp_and_tcp_carry_media() -> None:
    g = media_guess(dataclasses.replace(make_flow(voice(10)), proto="icmp"))
    assert not g.realtime and g.reason == "ICMP: only UDP and TCP carry call media"


def test_tcp_media_is_less_certain() -> None:
    udp = media_guess(make_flow(voice(10)))
    tcp = media_guess(make_flow(voice(10), proto="tcp", resp_p=3478))
    assert tcp.media == MediaKind.AUDIO and tcp.reason.startswith("TCP, ")
    assert tcp.confidence == pytest.approx(udp.confidence - 0.15)


def test_rules_are_parameters() -> None:
    flow = make_flow(voice(10))
    strict = MediaRules(voice_pps=(60.0, 70.0))
    assert media_guess(flow, DEFAULT_RULES).realtime
    g = media_guess(flow, strict)
    assert not g.realtime and "below 60 pkt/s" in g.reason


def test_guess_is_frozen() -> None:
    g = media_guess(make_flow(voice(10)))
    assert isinstance(g, MediaGuess)
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.realtime = False  # type: ignore[misc]


# -- (a) synthetic flows with RTP headers ----------------------------------------------------


def rtp_audio(seconds: float, *, way: int, ssrc: int, pt: int, step: int, size: int,
              ptime: float = 0.02, start: float = 0.0) -> list[RtpPkt]:
    return [(start + i * ptime, way, (100 + i) % 65536, 5000 + i * step, ssrc, pt, 0, size)
            for i in range(int(seconds / ptime))]


def as_pkts(rtp: Iterable[RtpPkt]) -> list[Pkt]:
    return [(r[0], r[1], r[7]) for r in rtp]


def test_rtp_static_audio_type() -> None:
    rtp = rtp_audio(3, way=0, ssrc=0x1234, pt=0, step=160, size=172)
    g = media_guess(make_flow(as_pkts(rtp), rtp=rtp))
    assert (g.realtime, g.media, g.streaming) == (True, MediaKind.AUDIO, False)
    assert g.reason == ("RTP, 1 media stream(s): PT 0 audio (150 pkts, +160/pkt, "
                        "median 172 B): voice")
    assert g.confidence == 0.99


def test_rtp_dynamic_opus_with_dtx_gaps() -> None:
    rtp = rtp_audio(2, way=1, ssrc=7, pt=111, step=960, size=70)
    rtp += rtp_audio(2, way=1, ssrc=7, pt=111, step=960, size=70, start=3.0)
    # The second talkspurt continues the sequence; its timestamps jump by the silence.
    rtp = [(r[0], r[1], (100 + i) % 65536, r[3] + (144_000 if r[0] >= 3.0 else 0), *r[4:])
           for i, r in enumerate(rtp)]
    g = media_guess(make_flow(as_pkts(rtp), rtp=rtp))
    assert g.media == MediaKind.AUDIO and "PT 111 audio (200 pkts, +960/pkt" in g.reason


def video_rtp(seconds: float, *, fps: float, way: int = 0, ssrc: int = 0xBEEF, pt: int = 96,
              per_frame: int = 3) -> list[RtpPkt]:
    out: list[RtpPkt] = []
    seq = 1
    for f in range(int(seconds * fps)):
        for j in range(per_frame):
            out.append((f / fps + j * 0.0004, way, seq, int(f * 90000 / fps), ssrc, pt,
                        int(j == per_frame - 1), 1000 + 10 * j))
            seq += 1
    return out


def test_rtp_video_call_with_audio() -> None:
    rtp = video_rtp(4, fps=25) + rtp_audio(4, way=0, ssrc=9, pt=111, step=960, size=80)
    g = media_guess(make_flow(as_pkts(rtp), rtp=rtp))
    assert (g.realtime, g.media) == (True, MediaKind.VIDEO)
    assert g.reason.startswith("RTP, 2 media stream(s): PT 96 video (300 pkts, 25.0 frames/s, "
                               "67% share a timestamp, 100 markers)")
    assert g.reason.endswith("video call with audio")


def test_rtp_low_frame_rate_video_is_screen_share() -> None:
    rtp = video_rtp(12, fps=1.5, per_frame=6)
    g = media_guess(make_flow(as_pkts(rtp), rtp=rtp))
    assert (g.realtime, g.media) == (True, MediaKind.SCREEN)
    assert "1.5 frames/s" in g.reason and g.reason.endswith(": screen share")


def test_rtp_static_video_type_and_duplicated_packets() -> None:
    once = video_rtp(2, fps=30, pt=34, per_frame=1)  # H263, one packet per frame
    twice = once + [(r[0] + 0.0001, *r[1:]) for r in once]  # every packet captured twice
    g = media_guess(make_flow(as_pkts(twice), rtp=twice))
    assert g.media == MediaKind.VIDEO and "PT 34 video (60 pkts" in g.reason


def test_rtp_lookalikes_fall_back_to_statistics() -> None:
    # RTCP read as RTP (PT 72-80), a padding stream (no markers, one timestamp) and a
    # stream whose sequence numbers jump: none is media, so the statistics decide.
    junk: list[RtpPkt] = [(i * 0.5, 0, i, 0, 1, 72, 0, 60) for i in range(10)]
    junk += [(3 + i * 0.001, 1, i, 77, 0, 97, 0, 260) for i in range(20)]
    junk += [(6 + i * 0.02, 1, i * 1000, i * 960, 5, 111, 0, 80) for i in range(10)]
    g = media_guess(make_flow(as_pkts(junk), rtp=junk))
    assert not g.realtime and not g.reason.startswith("RTP")


# -- (a) tiny pcaps through the probe --------------------------------------------------------


def write_pcap(path: Path, packets: Iterable[tuple[float, int, bytes]]) -> None:
    from scapy.layers.inet import IP, UDP  # type: ignore[attr-defined]
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    frames = []
    for t, way, payload in packets:
        src, dst, sport, dport = (("10.0.0.1", "10.0.0.2", 40000, 50000) if way == 0
                                  else ("10.0.0.2", "10.0.0.1", 50000, 40000))
        p = Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)
        p.time = T0 + t
        frames.append(p)
    wrpcap(str(path), frames)


def _guess_of_pcap(path: Path, packets: list[tuple[float, int, bytes]]) -> MediaGuess:
    """The media guess of the one flow of a capture of ``packets`` written at ``path``."""
    write_pcap(path, packets)
    (flow,) = read_capture(path).flows
    return media_guess(flow)


def test_pcap_with_rtp_headers(tmp_path: Path) -> None:
    pkts = []
    for i in range(150):
        for way in (0, 1):
            hdr = struct.pack("!BBHII", 0x80, 8, i, i * 160, 0xA000 + way)
            pkts.append((i * 0.02 + way * 0.004, way, hdr + bytes(160)))
    g = _guess_of_pcap(tmp_path / "pcma.pcap", pkts)
    assert (g.realtime, g.media) == (True, MediaKind.AUDIO)
    assert g.reason.startswith("RTP, 2 media stream(s): PT 8 audio (150 pkts, +160/pkt")


def test_pcap_with_long_opus_packets(tmp_path: Path) -> None:
    # Opus packs up to 120 ms in one packet (RFC 6716 §3.2.5) on a 48 kHz RTP clock
    # (RFC 7587 §4.1): 100 ms packets, a talkspurt of 20 ms ones between, one way.
    pkts, ts, t = [], 0, 0.0
    for i in range(150):
        step = 960 if 60 <= i < 100 else 4800
        hdr = struct.pack("!BBHII", 0x80, 113, 2000 + i, ts, 0x1000402)
        pkts.append((t, 0, hdr + bytes(86)))
        ts += step
        t += step / 48000
    g = _guess_of_pcap(tmp_path / "opus-100ms.pcap", pkts)
    assert (g.realtime, g.media) == (True, MediaKind.AUDIO)
    assert g.reason.startswith("RTP, 1 media stream(s): PT 113 audio (150 pkts, +4800/pkt")


def test_pcap_with_encrypted_voice(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    pkts = [(t, way, rng.bytes(n)) for t, way, n in voice(8)]
    path = tmp_path / "opaque.pcap"
    write_pcap(path, sorted(pkts))
    (flow,) = read_capture(path).flows
    assert flow.rtp is None
    g = media_guess(flow)
    assert (g.realtime, g.media) == (True, MediaKind.AUDIO)
    assert "median gap 20 ms: voice" in g.reason


# -- (b) the reference captures ----------------------------------------------------------------

A, V = MediaKind.AUDIO, MediaKind.VIDEO



class Ref(NamedTuple):
    """One reference flow and the decision its bytes call for."""

    name: str
    proto: str
    a: int
    b: int  # the two ports, in either order
    realtime: bool
    media: MediaKind | None
    streaming: bool
    why: str
    peer: str | None = None  # the far host, where the ports alone are ambiguous


REFERENCE: list[Ref] = [
    # Call media found from RTP headers.
    Ref("KakaoTalk_talk.pcap", "udp", 11320, 23044, True, A, False,
     "two PT 108 streams, +960 per packet, 45 s both ways"),
    Ref("KakaoTalk_talk.pcap", "udp", 10268, 23046, True, A, False, "same, second leg"),
    Ref("sip-rtp-g711.pcap", "udp", 27942, 6000, True, A, False,
     "one-way PCMU (PT 0) announced by SIP, 425 packets every 20 ms"),
    Ref("sip-rtp-g711.pcap", "udp", 28102, 6000, True, A, False, "one-way PCMA (PT 8)"),
    Ref("sip-phone-to-phone.pcapng", "udp", 4006, 7078, True, A, False, "17 PCMU packets"),
    Ref("sip.pcap", "udp", 30000, 40392, True, A, False, "9 PCMA packets"),
    Ref("skinny.pcap", "udp", 32144, 17718, True, A, False,
     "G.711 both ways; every packet captured twice (same seq), de-duplicated"),
    Ref("skinny.pcap", "udp", 32150, 9395, True, A, False, "one-way G.711"),
    Ref("skinny.pcap", "udp", 17726, 9399, True, A, False, "one-way G.711"),
    Ref("skinny.pcap", "udp", 32152, 9396, True, A, False, "one-way G.711"),
    Ref("skinny.pcap", "udp", 17732, 9400, True, A, False, "one-way G.711"),
    Ref("stun_classic.pcap", "udp", 55050, 13958, True, A, False, "G.729 (PT 18) both ways"),
    Ref("stun_google_meet.pcapng", "udp", 38152, 19305, True, A, False,
     "Opus PT 111 +960; the SSRC-0 260-B padding bursts are ignored"),
    Ref("stun_google_meet.pcapng", "udp", 45572, 19305, True, A, False, "Opus PT 111 (IPv6)"),
    Ref("stun_wa_call.pcapng", "udp", 46652, 3478, True, A, False,
     "WhatsApp relay: two PT 120 streams, +960 per packet", "93.57.123.227"),
    Ref("stun_wa_call.pcapng", "udp", 49526, 41107, True, V, False,
     "nDPI says Audio, but the headers show 3-packet frames of ~830 B sharing one "
     "timestamp, closed by the marker, 6120 ticks (68 ms at 90 kHz) apart"),
    Ref("wa_video.pcap", "udp", 53688, 3478, True, V, False,
     "PT 102 video at 14 frames/s with PT 120 Opus alongside", "31.13.86.48"),
    Ref("wa_video.pcap", "udp", 53688, 32641, True, V, False, "same call after going P2P"),
    Ref("teams.pcap", "udp", 16332, 50016, True, A, False, "PT 104 +320 (16 kHz, 20 ms)"),
    Ref("line.pcap", "udp", 51161, 29070, True, A, False, "PT 96 +960 both ways"),
    Ref("discord.pcap", "udp", 64837, 50001, True, V, False,
     "PT 103: 1025-B and 929-B packets sharing timestamps, marker-closed"),
    Ref("discord.pcap", "udp", 57955, 50004, True, A, False, "PT 120 +960 both ways"),
    Ref("discord.pcap", "udp", 63893, 50004, True, A, False, "PT 120 +960"),
    # Call media found from sizes and timing alone.
    Ref("telegram_videocall.pcapng", "udp", 42405, 35393, True, A, False,
     "no RTP; 26/13 pkt/s, 82% <= 350 B, 21 ms spacing: the first 2 s of the call carry "
     "audio-sized packets only"),
    # Call flows without media in the capture.
    Ref("stun_wa_call.pcapng", "udp", 49526, 3478, True, V, False,
     "WhatsApp relay: after the STUN bandwidth probe (0x0804/0x0805), 28 RTP packets of one "
     "SSRC, PT 97, frames sharing a timestamp closed by the marker", "157.240.203.62"),
    Ref("stun_zoom.pcapng", "udp", 48854, 8801, False, None, False, "STUN + DTLS handshake only"),
    Ref("stun_zoom.pcapng", "udp", 53065, 8801, False, None, False, "STUN + DTLS handshake only"),
    Ref("zoom.pcap", "udp", 58327, 8801, False, None, False,
     "1029-B packets exactly 10 ms apart, all one size: a rate probe, no frames"),
    Ref("zoom.pcap", "udp", 45634, 8801, False, None, False, "81-B keep-alives every 3.5 s"),
    Ref("stun_google_meet.pcapng", "udp", 45400, 3478, False, None, False,
     "STUN keep-alives, 33 packets in 55 s"),
    Ref("teams.pcap", "udp", 51681, 3478, False, None, False, "TURN allocation, 1-4 pkt/s"),
    Ref("snapchat_call.pcapng", "udp", 42083, 443, False, None, False,
     "QUIC signalling at 2 pkt/s"),
    # Known misses: call media too short to judge without RTP evidence.
    Ref("line.pcap", "udp", 50835, 20610, False, None, False,
     "1.9 s; PT 101 with a millisecond clock and a marker on every packet is not read as "
     "audio, and a 2-s run is below the 3 s needed"),
    Ref("imo.pcap", "udp", 49207, 57604, False, None, False, "3 s, a 2-s run: too short"),
    Ref("imo.pcap", "udp", 49207, 36535, False, None, False, "3 s, bursts then 1 pkt/s"),
    Ref("stun_google_meet.pcapng", "udp", 38152, 3478, True, A, False,
     "Opus PT 111 +960 with DTX: 30 RTP packets of one SSRC among STUN, DTLS and RTCP",
     "142.250.82.76"),
    # Not calls.
    Ref("youtube_quic.pcap", "udp", 56074, 443, False, None, True,
     "QUIC, 93% of bytes down in 1350-B packets, acks back, 99 KB and 63 KB bursts 2 s apart"),
    Ref("quic046.pcap", "udp", 50587, 443, False, None, False, "one 0.05-s download burst"),
    Ref("quic-mvfst-22.pcap", "udp", 35601, 443, False, None, False,
     "web QUIC: active 27 of 116 s"),
    Ref("dropbox.pcap", "udp", 50311, 17500, False, None, False,
     "LAN sync: 9 pkt/s each way, 110 ms apart"),
    Ref("openvpn.pcap", "udp", 41507, 13680, False, None, False, "tunnel, 3 active s of 10"),
    Ref("openvpn.pcap", "udp", 13680, 13680, False, None, False, "tunnel, bursty"),
    Ref("openvpn.pcap", "udp", 51146, 1194, False, None, False, "tunnel keep-alives"),
    Ref("openvpn.pcap", "tcp", 39772, 1194, False, None, False, "tunnel over TCP"),
    Ref("bittorrent.pcap", "tcp", 52915, 60163, False, None, False,
     "one 200-KB piece burst on a peer port"),
    Ref("whatsappfiles.pcap", "tcp", 49698, 443, False, None, False,
     "one 230-KB download; the next second carries 7 KB only"),
    Ref("telegram_videocall.pcapng", "tcp", 40830, 443, False, None, True,
     "a media download in an 86-KB and a 35-KB burst 2 s apart, acks back: the buffered "
     "one-way bulk pattern (the flag names the pattern, not the service)"),
    Ref("netflix.pcap", "tcp", 53163, 80, False, None, False,
     "one 41-KB segment per connection: no buffering pause inside the flow"),
    Ref("ssh.pcap", "tcp", 58395, 22, False, None, False, "interactive, 1 pkt/s"),
]

# Captures with no call at all: nothing in them may be called call media.
NON_CALL = ["443-chrome.pcap", "443-curl.pcap", "android.pcap", "bittorrent.pcap", "dns.pcap",
            "dns_dot.pcap", "dropbox.pcap", "facebook.pcap", "google_ssl.pcap", "gquic.pcap",
            "hls.pcapng", "http.pcapng", "iphone.pcap", "lol_wild_rift_udp.pcap",
            "netflix.pcap", "openvpn.pcap", "quic-27.pcap", "quic-mvfst-22.pcap",
            "quic046.pcap", "quic_0RTT.pcap", "quic_t51.pcap", "spotify_tcp.pcap", "ssh.pcap",
            "steam.pcapng", "youtube_quic.pcap"]


def _capture(name: str) -> Path:
    for sub in ("pcap", "pcap_other"):
        p = NDPI_DEV / sub / name
        if p.is_file():
            return p
    raise FileNotFoundError(name)


_RUNS: dict[str, list[FlowRecord]] = {}


def _flows(name: str) -> list[FlowRecord]:
    if name not in _RUNS:
        _RUNS[name] = read_capture(_capture(name)).flows
    return _RUNS[name]


def _matches(ref: Ref, f: FlowRecord) -> bool:
    return (f.proto == ref.proto and {f.orig_p, f.resp_p} == {ref.a, ref.b}
            and (ref.peer is None or ref.peer in (f.orig_h, f.resp_h)))


@pytest.mark.shared
@pytest.mark.parametrize("ref", REFERENCE, ids=[f"{r.name}:{r.a}-{r.b}" for r in REFERENCE])
def test_reference_flow(ref: Ref) -> None:
    need_shared()
    hits = [f for f in _flows(ref.name) if _matches(ref, f)]
    assert len(hits) == 1, f"{len(hits)} flows match"
    g = media_guess(hits[0])
    assert (g.realtime, g.media, g.streaming) == (ref.realtime, ref.media, ref.streaming), (
        ref.why, g.reason)
    assert 0.0 <= g.confidence <= 1.0 and g.reason


@pytest.mark.shared
def test_every_discord_voice_flow_is_media() -> None:
    need_shared()
    legs = [f for f in _flows("discord.pcap") if f.proto == "udp" and f.resp_p == 50004
            and f.orig_pkts + f.resp_pkts >= 15]
    assert len(legs) >= 20
    kinds = {media_guess(f).media for f in legs}
    assert kinds == {MediaKind.AUDIO}


@pytest.mark.shared
def test_no_call_media_outside_the_calls() -> None:
    """Across every flow of every reference capture, only the listed flows are media."""
    need_shared()
    names = sorted(p.name for sub in ("pcap", "pcap_other") for p in (NDPI_DEV / sub).iterdir()
                   if p.is_file())
    for name in names:
        refs = [r for r in REFERENCE if r.name == name]
        for f in _flows(name):
            g = media_guess(f)
            if name in NON_CALL:
                assert not g.realtime, (name, f.uid, g.reason)
            if name == "discord.pcap" and f.proto == "udp" and f.resp_p in (50001, 50004):
                continue  # every voice leg there is media (test above)
            listed = [r for r in refs if _matches(r, f)]
            if g.realtime or g.streaming:
                assert listed, (name, f.uid, g.reason)
                assert (listed[0].realtime, listed[0].streaming) == (g.realtime, g.streaming)


def test_a_packet_stamped_years_early_costs_no_memory() -> None:
    """The per-second figures follow the rows that carry packets, not the span between the
    first and the last: one packet stamped in 1970 once asked for a 25 GiB array."""
    import tracemalloc

    pkts = [(-T0 + 1 if i == 0 else p[0], p[1], p[2]) for i, p in enumerate(voice(10))]
    flow = make_flow(pkts)
    assert int(flow.rate[-1, 0] - flow.rate[0, 0]) > 1_000_000_000
    tracemalloc.start()
    try:
        g = media_guess(flow)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5 << 20
    # One lost second of sustained voice among ten: still voice.
    assert (g.realtime, g.media) == (True, MediaKind.AUDIO), g.reason


def test_stream_shortcuts_agree_with_the_general_computation() -> None:
    # The shortcuts for clean streams (sequence always forward, timestamps never back)
    # give what np.unique / np.median give, on clean and on messy streams alike.
    from classifier.stats import _distinct_ts, _first_copies, _median_int, _signed32

    rng = np.random.default_rng(7)
    for case in range(400):
        n = int(rng.integers(2, 300))
        start = int(rng.integers(0, 65536))
        steps = rng.integers(1, 3, n) if case % 2 else rng.integers(-2, 4, n)
        seq = (start + np.cumsum(steps)) % 65536  # crosses 65535 -> 0 in some cases
        idx = np.arange(n, dtype=np.int64) * 2
        _, first = np.unique(seq, return_index=True)
        assert (_first_copies(idx, seq) == idx[np.sort(first)]).all()
        ts = (int(rng.integers(0, 1 << 32)) + np.cumsum(
            rng.choice([0, 0, 3000, 960] if case % 3 else [0, 960, -960], n))) % (1 << 32)
        dts = _signed32(np.diff(ts))
        assert _distinct_ts(ts, dts) == np.unique(ts).size
        sizes = rng.integers(40, 1400, n).astype(np.uint16)
        assert _median_int(sizes) == int(np.median(sizes))
