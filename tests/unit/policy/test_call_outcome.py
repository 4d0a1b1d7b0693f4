"""What became of a call, read from what its RTP carried: comfort noise (RFC 3389) is no
media content, so a caller whose client sent comfort noise while a ringback came back
was not answered, and a call with silence suppression on both sides still was. Small
captures built from RTP headers (RFC 3550 §5.1) and read through the whole pipeline."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from api.pipeline import analyze_capture
from api.report import build_report, render_text
from classifier.payloads import meter_config
from policy.pipeline import AnalysisResult
from policy.records import Call, CallOutcome, Reason, VerdictKind
from probe import MeterConfig
from tests.pcapbytes import pcap, udp_frame

ME, PEER = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
CN = 13
"""Comfort noise, static payload type (RFC 3551 table 4)."""


def _rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc) + payload


def _stream(src: tuple[str, int], dst: tuple[str, int], ssrc: int,
            spurts: list[tuple[float, float, int]], start: float = 1.0
            ) -> tuple[list[tuple[float, bytes]], int]:
    """A sender's RTP stream as captured: ``spurts`` are (from_s, to_s, payload type);
    speech sends a 160-byte frame every 20 ms, comfort noise (RFC 3389 §4: a noise level
    and reflection coefficients) an update every 200 ms. Sequence numbers run on across
    both, timestamps follow the 8 kHz clock. Returns the packets and how many were CN."""
    pkts, seq, cn = [], 0, 0
    for a, b, pt in spurts:
        step = 0.2 if pt == CN else 0.02
        n = round((b - a) / step)
        for k in range(n):
            t = a + k * step
            payload = b"\x3c\x52\x61\x70\x2e" if pt == CN else b"\x55" * 160
            pkts.append((start + t, udp_frame(*src, *dst,
                                              _rtp(pt, seq, round(t * 8000), ssrc, payload))))
            seq += 1
            cn += pt == CN
    return pkts, cn


def _binding_request(k: int) -> bytes:
    """A STUN Binding request (RFC 8489 §5): type, length 0, magic cookie, transaction."""
    return struct.pack("!HHI", 0x0001, 0, 0x2112A442) + k.to_bytes(12, "big")


def _analyse(tmp_path: Path, pkts: list[tuple[float, bytes]],
             config: MeterConfig | None = None) -> tuple[AnalysisResult, Call]:
    path = tmp_path / "call.pcap"
    path.write_bytes(pcap(sorted(pkts)))
    result = analyze_capture(path, workers=1, hash_capture=False, config=config)
    (call,) = result.analysis.calls
    return result, call


@pytest.mark.parametrize("spurts", [
    [(0.0, 20.0, CN)],
    # a click as the microphone opens: 7 G.722 frames, then comfort noise to the end
    [(0.0, 0.14, 9), (0.14, 20.0, CN)],
], ids=["noise-only", "click-then-noise"])
def test_comfort_noise_out_and_a_ringback_in_is_no_answered_call(
        tmp_path: Path, spurts: list[tuple[float, float, int]]) -> None:
    # The caller's client sends comfort noise for 20 s while the server plays G.722
    # (payload type 9) back: a ringback, nobody answered. STUN consent checks
    # (RFC 7675) go out beside the media, as they do on an ICE path.
    out, cn = _stream(ME, PEER, 0x7AC8_1F53, spurts)
    back, _ = _stream(PEER, ME, 1000, [(0.0, 20.0, 9)])
    stun = [(1.0 + k, udp_frame(*ME, *PEER, _binding_request(k))) for k in range(20)]
    result, call = _analyse(tmp_path, out + back + stun)
    (flow,) = [f for f in result.flows if f.rtp_streams]
    assert flow.orig_pkts >= 120 and cn >= 99  # the flow's packets alone read two-way
    assert call.outcome is CallOutcome.MISSED, call.outcome
    assert call.verdict.kind is VerdictKind.UNKNOWN, call.verdict
    assert call.verdict.reasons == (Reason.NO_TWO_WAY_MEDIA,)
    d = call.to_dict()
    assert d["quality"] == {"mos": None, "loss_ratio": None, "jitter_s": None}
    # The ringback is early media (RFC 3960), kept and measured, but no media of the call.
    assert call.media == () and call.legs == () and d["legs"] == []
    early = {(leg.direction, leg.ssrc): leg.packets for leg in call.early_media}
    assert early[("in", 1000)] == 1000 and [e["ssrc"] for e in d["early_media"]] == [
        leg.ssrc for leg in call.early_media]
    text = render_text(build_report(result, "call.pcap"))
    assert "outcome      missed" in text and "audio in, 1000 packets" in text, text


def test_media_received_longer_than_a_phone_rings_is_one_way(tmp_path: Path) -> None:
    # The same silence on the local side, but the far end's media ran for 90 s, longer
    # than calls.ringing_max_s (60 s): a listener whose own side stayed silent, no ringback.
    out, _ = _stream(ME, PEER, 0x7AC8_1F53, [(0.0, 90.0, CN)])
    back, _ = _stream(PEER, ME, 1000, [(0.0, 90.0, 9)])
    _, call = _analyse(tmp_path, out + back)
    assert call.outcome is CallOutcome.ONE_WAY, call.outcome
    assert call.media == ("audio",) and call.legs and not call.early_media


def test_a_call_cut_into_flows_shorter_than_a_ring_is_judged_over_its_whole_span(
        tmp_path: Path) -> None:
    # The listener of the 90 s call above, metered with a 30 s active timeout: three
    # flows of 30 s each, one call whose media spans 90 s. Still no ringback.
    out, _ = _stream(ME, PEER, 0x7AC8_1F53, [(0.0, 90.0, CN)])
    back, _ = _stream(PEER, ME, 1000, [(0.0, 90.0, 9)])
    result, call = _analyse(tmp_path, out + back, meter_config(active_s=30.0))
    assert len([f for f in result.flows if f.rtp_streams]) >= 3
    assert call.outcome is CallOutcome.ONE_WAY, call.outcome
    assert call.media == ("audio",) and not call.early_media


def test_a_missed_call_whose_verdict_rests_on_its_streams_keeps_them_as_legs(
        tmp_path: Path) -> None:
    # A ringback that lost a fifth of its packets: the verdict (degraded, from the
    # loss) names figures of the stream, which stay in the call's legs.
    out, _ = _stream(ME, PEER, 0x7AC8_1F53, [(0.0, 20.0, CN)])
    back, _ = _stream(PEER, ME, 1000, [(0.0, 20.0, 9)])
    back = [p for i, p in enumerate(back) if i % 5 != 2]
    _, call = _analyse(tmp_path, out + back)
    assert call.outcome is CallOutcome.MISSED, call.outcome
    assert call.verdict.kind is VerdictKind.DEGRADED, call.verdict
    assert call.legs and not call.early_media and call.media == ("audio",)


def test_a_capture_of_the_incoming_direction_alone_is_one_way(tmp_path: Path) -> None:
    # Only what the local host received: its own side is not in the capture, so nothing
    # shows it was silent, and the call is not taken for one that rang out.
    back, _ = _stream(PEER, ME, 1000, [(0.0, 20.0, 9)])
    _, call = _analyse(tmp_path, back)
    assert call.local == ME[0]
    assert call.outcome is CallOutcome.ONE_WAY, call.outcome
    assert call.media == ("audio",) and not call.early_media


def test_silence_suppression_both_ways_is_still_an_answered_call(tmp_path: Path) -> None:
    # Each side talks in turn and sends comfort noise while it listens; both streams
    # end on comfort noise, so the last payload type of each is 13.
    a, a_cn = _stream(ME, PEER, 0xAAAA, [(0.0, 3.0, 0), (3.0, 6.0, CN), (6.0, 9.0, 0),
                                          (9.0, 12.0, CN)])
    b, b_cn = _stream(PEER, ME, 0xBBBB, [(0.0, 3.0, CN), (3.0, 6.0, 0), (6.0, 9.0, CN),
                                          (9.0, 12.0, 0), (12.0, 14.0, CN)])
    result, call = _analyse(tmp_path, a + b)
    streams = {s.ssrc: s for f in result.flows for s in f.rtp_streams}
    assert streams[0xAAAA].pt == CN and streams[0xBBBB].pt == CN
    assert (streams[0xAAAA].cn_packets, streams[0xBBBB].cn_packets) == (a_cn, b_cn)
    assert call.outcome is CallOutcome.ANSWERED, call.outcome
    assert call.verdict.kind is VerdictKind.OK, call.verdict
    assert call.to_dict()["quality"]["mos"] is not None


def _sdp(host: str, port: int) -> str:
    return (f"v=0\r\no=- 1 1 IN IP4 {host}\r\ns=-\r\nc=IN IP4 {host}\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 13\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:13 CN/8000\r\n"
            "a=sendrecv\r\n")


def _sip(first: str, body: str = "", to_tag: str = "") -> bytes:
    return (f"{first}\r\nVia: SIP/2.0/UDP {ME[0]}:5060;branch=z9hG4bK776asdhds\r\n"
            f"To: <sip:bob@{PEER[0]}>{to_tag}\r\nFrom: <sip:alice@{ME[0]}>;tag=1928301774\r\n"
            f"Call-ID: a84b4c76e66710@{ME[0]}\r\nCSeq: 314159 INVITE\r\n"
            f"Contact: <sip:alice@{ME[0]}>\r\nContent-Type: application/sdp\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


def test_a_sip_call_answered_by_a_2xx_is_not_called_unanswered(tmp_path: Path) -> None:
    # The callee answered (200 OK) and the caller stayed silent: its phone sent comfort
    # noise only. The media went one way, but the signalling says the call was answered.
    sip = [(0.5, udp_frame(ME[0], 5060, PEER[0], 5060,
                           _sip(f"INVITE sip:bob@{PEER[0]} SIP/2.0", _sdp(*ME)))),
           (0.6, udp_frame(PEER[0], 5060, ME[0], 5060, _sip("SIP/2.0 180 Ringing", "",
                                                             ";tag=x"))),
           (0.9, udp_frame(PEER[0], 5060, ME[0], 5060, _sip("SIP/2.0 200 OK", _sdp(*PEER),
                                                             ";tag=x")))]
    out, _ = _stream(ME, PEER, 0x1111, [(0.0, 20.0, CN)])
    back, _ = _stream(PEER, ME, 0x2222, [(0.0, 20.0, 0)])
    _, call = _analyse(tmp_path, sip + out + back)
    assert call.extra["sip_call_id"] == f"a84b4c76e66710@{ME[0]}"
    assert call.outcome is CallOutcome.ONE_WAY, call.outcome
    assert call.verdict.kind is VerdictKind.OK, call.verdict
