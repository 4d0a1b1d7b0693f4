"""Streams known from their senders' RTCP sender reports (RFC 3550 §6.4.1) when the probe
saw none of their RTP: a Zoom client that joined a meeting sends its microphone's sender
reports behind Zoom's media header while its media channel still carries Zoom's
bandwidth-probe filler. Small captures built from the packet layouts (Zoom's SFU and
media headers as :mod:`classifier.dpi.framings` reads them, RTCP as RFC 3550 §6.4.1
and §6.5 write it), read through the whole pipeline."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from api.pipeline import analyze_capture
from policy.pipeline import AnalysisResult
from tests.pcapbytes import pcap, udp_frame

ME, ZOOM = ("192.168.1.50", 61344), ("203.0.113.9", 8801)
PROBE = ("192.168.1.50", 61342)
"""The client's port of the channel that carries the bandwidth probe."""
T0 = 1_700_000_000.0
NTP_UNIX = 2_208_988_800
"""Seconds from 1900 (NTP's era 0) to 1970."""
SSRC = 0x0100_0402


def _ntp(t: float) -> int:
    secs = int(t) + NTP_UNIX
    return (secs << 32) | int((t % 1) * 2**32)


def _sr(t: float, rtp_ts: int, packets: int, octets: int, ssrc: int = SSRC) -> bytes:
    """A compound RTCP packet: a sender report without report blocks, then an SDES with
    one empty chunk (RFC 3550 §6.1: every compound starts with SR or RR and holds SDES)."""
    sr = struct.pack("!BBHIQIII", 0x80, 200, 6, ssrc, _ntp(t), rtp_ts & 0xFFFFFFFF,
                     packets, octets)
    sdes = struct.pack("!BBHI", 0x81, 202, 2, ssrc) + b"\x00" * 4
    return sr + sdes


def _sfu(seq: int, to_zoom: bool, media: bytes) -> bytes:
    """Zoom's SFU header (type 5, media): sequence, a session word, direction byte."""
    return struct.pack("!BHB", 5, seq & 0xFFFF, 0) + b"\xbc\xdd\xc5" + \
        (b"\x00" if to_zoom else b"\x04") + media


def _zoom_rtcp(seq: int, rtcp: bytes) -> bytes:
    """Media type 34 (RTCP) and the 15 further bytes of Zoom's media header before it."""
    return _sfu(seq, True, b"\x22\x01\x00\xfb\x90\x16\x10" + b"\x00" * 8 + b"\xff" + rtcp)


def _filler(seq: int, to_zoom: bool) -> bytes:
    """Media type 21: no RTP behind it, a fixed-size train of filler bytes."""
    return _sfu(seq, to_zoom, b"\x15\x01" + b"\x00" * 22 + b"\x01" * 1004)


def _hello(me: tuple[str, int]) -> list[tuple[float, bytes]]:
    """Zoom's channel hello (SFU types 1 and 2) that opens each media channel."""
    hello = b"\x01\x00\x03" + b"\x41" * 120
    answer = b"\x02\x00\x03" + b"\x41" * 41
    return [(T0, udp_frame(*me, *ZOOM, hello)), (T0 + 0.05, udp_frame(*ZOOM, *me, answer))]


def _join(clock_hz: int, sent_per_s: int, seconds: int = 10) -> list[tuple[float, bytes]]:
    """A client joining: on one channel filler both ways at 100 packets/s, on the audio
    channel once a second a sender report of the microphone's stream (``sent_per_s``
    packets a second, at ``clock_hz``)."""
    pkts = _hello(PROBE) + _hello(ME)
    for k in range(seconds * 100):
        t = T0 + 0.1 + k / 100
        pkts.append((t, udp_frame(*PROBE, *ZOOM, _filler(k, True))))
        pkts.append((t + 0.004, udp_frame(*ZOOM, *PROBE, _filler(k, False))))
    for s in range(seconds):
        t = T0 + 0.5 + s
        rtcp = _sr(t, 960 + s * clock_hz, s * sent_per_s, s * sent_per_s * 18)
        pkts.append((t + 0.001, udp_frame(*ME, *ZOOM, _zoom_rtcp(10_000 + s, rtcp))))
    return pkts


def _analyse(tmp_path: Path, pkts: list[tuple[float, bytes]]) -> AnalysisResult:
    path = tmp_path / "join.pcap"
    path.write_bytes(pcap(sorted(pkts)))
    return analyze_capture(path, workers=1, hash_capture=False)


@pytest.mark.parametrize(("clock_hz", "media"), [(48000, "audio"), (8000, "audio"),
                                                 (90000, "video")])
def test_a_stream_only_its_sender_reports_tell_of_is_the_calls_media(
        tmp_path: Path, clock_hz: int, media: str) -> None:
    result = _analyse(tmp_path, _join(clock_hz, sent_per_s=10))
    (call,) = result.analysis.calls
    assert call.app == "zoom"
    assert call.media == (media,)
    assert call.legs == ()  # no RTP was seen: nothing to measure loss or delay on
    (rep,) = call.reported
    # the probe keeps a channel's first payloads: the hello and seven reports
    assert (rep.direction, rep.media, rep.ssrc, rep.reports) == ("out", media, SSRC, 7)
    assert rep.packets == 60 and rep.octets == 1080  # between the first and last kept
    assert abs(rep.clock_hz - clock_hz) < 0.001 * clock_hz
    assert call.to_dict()["reported_streams"][0]["media"] == media


def test_reports_of_a_stream_that_sent_nothing_name_no_media(tmp_path: Path) -> None:
    result = _analyse(tmp_path, _join(48000, sent_per_s=0))
    assert all(not c.reported and not c.media for c in result.analysis.calls)
    assert all("reported_streams" not in c.to_dict() for c in result.analysis.calls)


def test_a_clock_no_media_runs_at_names_nothing(tmp_path: Path) -> None:
    # 70 kHz is no audio sampling rate and not the video clock: not a media clock
    result = _analyse(tmp_path, _join(70000, sent_per_s=10))
    assert all(not c.reported for c in result.analysis.calls)


def test_sender_information_of_srtcp_is_not_read(tmp_path: Path) -> None:
    # SRTCP (RFC 3711 §3.4) leaves the first 8 bytes in clear and appends the E flag and
    # index and the authentication tag: the compound does not walk to its end, so the
    # sender information (encrypted) is not taken for counts.
    peer = ("198.51.100.4", 5005)
    pkts = []
    for s in range(5):
        t = T0 + s
        srtcp = _sr(t, s * 48000, s * 50, s * 50 * 80) + struct.pack("!I", 0x8000_0000 | s) \
            + b"\xa5" * 10
        pkts.append((t, udp_frame("192.168.1.50", 5005, *peer, srtcp)))
    result = _analyse(tmp_path, pkts)
    assert all(not c.facts.rtcp_senders for c in result.classes)
    plain = [(T0 + s, udp_frame("192.168.1.50", 5005, *peer, _sr(T0 + s, s * 48000, s * 50,
                                                                  s * 4000)))
             for s in range(5)]
    result = _analyse(tmp_path, plain)
    (senders,) = [c.facts.rtcp_senders for c in result.classes if c.facts.rtcp_senders]
    assert [s.packets for s in senders] == [0, 50, 100, 150, 200]
