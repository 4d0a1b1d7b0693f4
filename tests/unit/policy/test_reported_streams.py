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
from classifier.records import RtcpSenderInfo
from policy.legs import reported_streams
from policy.pipeline import AnalysisResult
from probe import FlowRecord
from probe.records import ORIG, RESP
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
    (rep,) = call.reported_streams
    # the probe keeps a channel's first payloads: the hello and seven reports
    assert (rep.direction, rep.media, rep.ssrc, rep.reports) == ("out", media, SSRC, 7)
    assert rep.packets == 60 and rep.octets == 1080  # between the first and last kept
    assert abs(rep.clock_hz - clock_hz) < 0.001 * clock_hz
    assert call.to_dict()["reported_streams"][0]["media"] == media


def test_reports_of_a_stream_that_sent_nothing_name_no_media(tmp_path: Path) -> None:
    result = _analyse(tmp_path, _join(48000, sent_per_s=0))
    assert all(not c.reported_streams and not c.media for c in result.analysis.calls)
    assert all("reported_streams" not in c.to_dict() for c in result.analysis.calls)


def test_a_clock_no_media_runs_at_names_nothing(tmp_path: Path) -> None:
    # 70 kHz is no audio sampling rate and not the video clock: not a media clock
    result = _analyse(tmp_path, _join(70000, sent_per_s=10))
    assert all(not c.reported_streams for c in result.analysis.calls)


def test_sender_information_of_srtcp_is_not_read(tmp_path: Path) -> None:
    # SRTCP (RFC 3711 §3.4) encrypts all but the first 8 bytes and appends the E flag and
    # index and the authentication tag: the compound does not walk to its end, so its
    # sender information is not taken for counts. (Here the report itself is left in
    # clear: the trailer alone must keep it out.)
    peer = ("198.51.100.4", 5005)
    pkts = []
    for s in range(5):
        t = T0 + s
        srtcp = _sr(t, s * 48000, s * 50, s * 50 * 80) + struct.pack("!I", 0x8000_0000 | s) \
            + b"\xa5" * 10
        pkts.append((t, udp_frame("192.168.1.50", 5005, *peer, srtcp)))
    result = _analyse(tmp_path, pkts)
    assert all(not c.facts.rtcp_sender_info for c in result.classes)
    plain = [(T0 + s, udp_frame("192.168.1.50", 5005, *peer, _sr(T0 + s, s * 48000, s * 50,
                                                                  s * 4000)))
             for s in range(5)]
    result = _analyse(tmp_path, plain)
    (senders,) = [c.facts.rtcp_sender_info for c in result.classes if c.facts.rtcp_sender_info]
    assert [s.packets for s in senders] == [0, 50, 100, 150, 200]


def test_the_far_ends_reports_alone_are_no_media_received(tmp_path: Path) -> None:
    # The same reports sent by the server: it says it sent packets none of which the probe
    # saw arrive. They may have been lost on the way: listed, not counted as media.
    pkts = _hello(PROBE) + _hello(ME)
    for k in range(1000):
        t = T0 + 0.1 + k / 100
        pkts.append((t, udp_frame(*PROBE, *ZOOM, _filler(k, True))))
        pkts.append((t + 0.004, udp_frame(*ZOOM, *PROBE, _filler(k, False))))
    for s in range(10):
        t = T0 + 0.5 + s
        rtcp = _sr(t, 960 + s * 48000, s * 10, s * 180)
        pkts.append((t + 0.001, udp_frame(*ZOOM, *ME, _sfu(10_000 + s, False, b"\x22\x01\x00"
                                                            b"\xfb\x90\x16\x10" + b"\x00" * 8
                                                            + b"\xff" + rtcp))))
    (call,) = _analyse(tmp_path, pkts).analysis.calls
    (rep,) = call.reported_streams
    assert (rep.direction, rep.media) == ("in", "audio")
    assert call.media == ()


def _flow(tmp_path: Path) -> FlowRecord:
    path = tmp_path / "one.pcap"
    path.write_bytes(pcap([(T0, udp_frame(*ME, *ZOOM, b"\x01\x00\x03" + b"\x41" * 120))]))
    (flow,) = analyze_capture(path, workers=1, hash_capture=False).flows
    return flow


def _info(ts: float, ntp_s: float, rtp_ts: int, packets: int, *, ssrc: int = SSRC,
          direction: int = ORIG, frame: int = 1) -> RtcpSenderInfo:
    ntp = round(ntp_s * 2**32) % (1 << 64)
    return RtcpSenderInfo(frame, ts, direction, ssrc, ntp, rtp_ts % (1 << 32),
                          packets % (1 << 32), (packets * 20) % (1 << 32))


@pytest.mark.parametrize(("reports", "want"), [
    # NTP's era rolls over (2036) between the two reports
    ([(0.0, 2**32 - 0.5, 0, 10), (1.0, 2**32 + 0.5, 48000, 60)], ("audio", 50)),
    # the RTP timestamp and the packet count wrap around 2**32
    ([(0.0, 100.0, 2**32 - 24000, 2**32 - 5), (1.0, 101.0, 24000, 45)], ("audio", 50)),
    # the video clock
    ([(0.0, 100.0, 0, 0), (2.0, 102.0, 180000, 60)], ("video", 60)),
    # a count that went back: the sender restarted, no count to read
    ([(0.0, 100.0, 0, 500), (1.0, 101.0, 48000, 20)], None),
    # a wallclock that went back
    ([(0.0, 101.0, 0, 0), (1.0, 100.0, 48000, 50)], None),
    # too short a span to read a clock
    ([(0.0, 100.0, 0, 0), (0.2, 100.2, 9600, 10)], None),
    # a clock 5 % off any known rate
    ([(0.0, 100.0, 0, 0), (1.0, 101.0, 50400, 50)], None),
], ids=["ntp-era", "wraps", "video", "count-reset", "clock-back", "short", "odd-clock"])
def test_reported_streams_read_wraps_and_refuse_what_is_no_count(
        tmp_path: Path, reports: list[tuple[float, float, int, int]],
        want: tuple[str, int] | None) -> None:
    flow = _flow(tmp_path)
    infos = [_info(T0 + t, ntp, rtp_ts, n, frame=k + 1)
             for k, (t, ntp, rtp_ts, n) in enumerate(reports)]
    got = reported_streams([(flow, infos)], ME[0], set())
    if want is None:
        assert got == []
    else:
        (rep,) = got
        assert (rep.media, rep.packets, rep.direction) == (*want, "out")
        assert (rep.first_frame, rep.last_frame) == (1, len(reports))


def test_reported_streams_skip_seen_streams_and_join_a_streams_flows(tmp_path: Path) -> None:
    flow = _flow(tmp_path)
    one = [_info(T0, 100.0, 0, 0), _info(T0 + 1, 101.0, 48000, 50)]
    assert reported_streams([(flow, one)], ME[0], {SSRC}) == []  # its RTP was seen
    # a stream whose reports went over two flows (an ICE path switch) is one stream
    later = [_info(T0 + 2, 102.0, 96000, 100, frame=9)]
    (rep,) = reported_streams([(flow, one), (flow, later)], ME[0], set())
    assert (rep.packets, rep.reports, rep.first_frame, rep.last_frame) == (100, 3, 1, 9)
    # sent by the far end: the other direction
    back = [_info(T0, 100.0, 0, 0, direction=RESP), _info(T0 + 1, 101.0, 48000, 50,
                                                          direction=RESP)]
    (rep,) = reported_streams([(flow, back)], ME[0], set())
    assert rep.direction == "in"
