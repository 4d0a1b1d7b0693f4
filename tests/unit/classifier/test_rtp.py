"""RTP/RTCP parser tests on bytes cut from real captures.

Captures are in ../shared/captures/ndpi-dev/{pcap,pcap_other}/ (frame numbers 1-based).
The Zoom RTP header comes from a Zoom capture published by Princeton-Cabernet/zoom-analysis
(test/test_packets.h, zoom_p2p_audio_buf).
"""

from __future__ import annotations

import contextlib
import random

import pytest

from classifier.dpi.rtp import (
    RtcpType,
    is_rtcp,
    is_rtp,
    parse_rtcp,
    parse_rtp,
    rtcp_report_blocks,
)
from probe.errors import Malformed, ParseError, Truncated

# sip-rtp-g711.pcap frame 6: first 24 bytes of a 172-byte PCMU packet (marker set)
G711 = bytes.fromhex("808092db000000a0343da99bffffffffffffffffffffffff")
# stun_google_meet.pcapng frame 15: SRTP probe with padding bit and a one-byte extension
MEET_PROBE = bytes.fromhex(
    "b06300010000000000000000bede0001310001005efb386ccc38822c394004158d2d973c48")
# zoom_p2p_audio_buf (see module docstring): RTP header at offset 19 of the Zoom media header
ZOOM_RTP = bytes.fromhex("906368c40124ec2001000402bede00015064006800090c9d0600000000")
# rtcp_multiple_pkts_in_the_same_datagram.pcap frames 1 and 2: SR+SDES and RR+SDES
SR_SDES = bytes.fromhex(
    "81c8000c5d931534dd3ac1704d614df800007d00000000c800007d0000000000000000010000000000000000"
    "000000000000000081ca000e5d931534010835643933313533340725467265655357495443482e6f7267202d"
    "2d20436f6d6520746f20436c7565436f6e2e636f6d000000")
RR_SDES = bytes.fromhex(
    "81c9000701932db400000000010000010000bec200000001000000000000000081ca000e01932db401073139"
    "33326462340725467265655357495443482e6f7267202d2d20436f6d6520746f20436c7565436f6e2e636f6d"
    "00000000")
# sip.pcap frame 104: SR + SDES (CNAME, TOOL) + BYE with a reason
SR_SDES_BYE = bytes.fromhex(
    "80c800063796cb7142c907ca5efac603000024c3000000090000060c81ca000b3796cb71011d31313839343239"
    "372d3434333261396638403139322e3136382e312e3206055349505053000081cb00063796cb711073657373"
    "696f6e2073687574646f776e000000")
# line.pcap frame 27: RTPFB (FMT 11) in clear
RTPFB = bytes.fromhex(
    "8bcd00110000352200003522000001d5000100c809bda6480000000009bda6480000000009bda6a800000000"
    "09bda6a80000000009bda67800090002025b5048b038a05890000000")
# SRTCP (RFC 3711): clear header + SSRC, then ciphertext, index and tag
MEET_XR = bytes.fromhex(  # stun_google_meet.pcapng frame 52
    "80cf0004d2b3ec9fce65be7c390a06124a55f091d340f80aca7403d7b5a2132964bc878080000001")
MEET_APP = bytes.fromhex(  # stun_google_meet.pcapng frame 153
    "8dcc0004d2b3ec9f360e0dd519a8e700712f8d52b5365490d97b98067f71560f8b051903541489f736a9969"
    "48eddbc117a555e83a8f9032112a8d65a8000000a")
TEAMS_PSFB = bytes.fromhex(  # teams.pcap frame 1483
    "8fce00070000e65b4ac1a5d2b88a39c69d4c8f78e7c801383447b68bc4fbb1ff800000001a62791965fe0c16ad2c")
WA_SDES = bytes.fromhex(  # stun_wa_call.pcapng frame 21
    "81ca0007e17231aa512b915aca97a8b431125bce0e80ef38d5c67020b5a4271780000001f96a29a21cbacd9932"
    "1b")
# for the predicates
STUN = bytes.fromhex(  # telegram_videocall.pcapng frame 634
    "010800282112a4424441504c79645342427a4f2b802200044e6f6e6500080014d5aa5af8260bdaa27ca6e5f850"
    "cb874653462a1d80280004379d7cd9")
# stun_zoom.pcapng frame 5 (DTLS ClientHello) and quic-27.pcap frame 1 (QUIC Initial)
DTLS = bytes.fromhex("16feff000000000000000000b0010000a400000000000000a4fefdfc338fd99f")
QUIC = bytes.fromhex("c5ff00001b087ba7750a8f3bf556000045204135bf2bc44c")


def test_rtp_g711() -> None:
    h = parse_rtp(G711)
    assert (h.version, h.marker, h.payload_type, h.sequence, h.timestamp, h.ssrc) == (
        2, True, 0, 0x92DB, 0xA0, 0x343DA99B)
    assert h.header_length == 12 and h.payload_length == len(G711) - 12
    assert h.static_type is not None and h.static_type.name == "PCMU"
    assert not h.extension and h.csrcs == ()


def test_rtp_extension_and_padding() -> None:
    h = parse_rtp(MEET_PROBE)
    assert h.padding and h.extension and h.payload_type == 99
    assert h.extension_profile == 0xBEDE and h.extension_data == bytes.fromhex("31000100")
    assert h.header_length == 20 and h.payload_length == 17
    z = parse_rtp(ZOOM_RTP)
    assert (z.payload_type, z.sequence, z.ssrc) == (99, 26820, 0x01000402)
    assert z.timestamp == 19196960 and z.header_length == 20


def test_rtp_csrc_list() -> None:
    # G711 header with CC=2 and two CSRCs spliced in (no real capture here mixes sources)
    mixed = bytes([G711[0] | 0x02]) + G711[1:12] + bytes.fromhex("0000000a0000000b") + G711[12:]
    h = parse_rtp(mixed)
    assert h.csrcs == (10, 11) and h.header_length == 20


def test_rtcp_sr_rr_sdes() -> None:
    c = parse_rtcp(SR_SDES)
    assert c.complete and c.trailer == b""
    sr, sdes = c.packets
    assert sr.packet_type == RtcpType.SR and sr.ssrc == 0x5D931534
    assert sr.sender_info is not None and sr.sender_info.ntp_timestamp == 0xDD3AC1704D614DF8
    assert sr.sender_info.rtp_timestamp == 0x7D00 and sr.sender_info.packet_count == 200
    assert len(sr.reports) == 1
    assert sdes.cnames == ("5d931534",)
    assert sdes.sdes[0].items[1].value == b"FreeSWITCH.org -- Come to ClueCon.com"
    rr, _ = parse_rtcp(RR_SDES).packets
    (block,) = rr.reports
    assert (block.fraction_lost, block.cumulative_lost, block.highest_sequence) == (1, 1, 48834)
    assert (block.jitter, block.last_sr, block.delay_since_last_sr) == (1, 0, 0)


def test_rtcp_bye_with_reason() -> None:
    c = parse_rtcp(SR_SDES_BYE)
    assert [p.packet_type for p in c.packets] == [RtcpType.SR, RtcpType.SDES, RtcpType.BYE]
    assert c.packets[1].cnames == ("11894297-4432a9f8@192.168.1.2",)
    assert c.packets[2].bye_sources == (0x3796CB71,)
    assert c.packets[2].bye_reason == "session shutdown"
    assert c.complete


def test_rtcp_transport_feedback() -> None:
    (fb,) = parse_rtcp(RTPFB).packets
    assert fb.packet_type == RtcpType.RTPFB and fb.count == 11
    assert fb.ssrc == fb.media_ssrc == 0x3522
    assert len(fb.body) == 17 * 4 - 8


def test_srtcp_keeps_header_and_ssrc() -> None:
    for data, ptype, ssrc in ((MEET_XR, RtcpType.XR, 0xD2B3EC9F),
                              (MEET_APP, RtcpType.APP, 0xD2B3EC9F),
                              (TEAMS_PSFB, RtcpType.PSFB, 0xE65B),
                              (WA_SDES, RtcpType.SDES, 0xE17231AA)):
        c = parse_rtcp(data)
        assert not c.complete and c.trailer
        assert c.packets[0].packet_type == ptype and c.packets[0].ssrc == ssrc
    assert parse_rtcp(MEET_APP).packets[0].count == 13  # APP subtype
    assert parse_rtcp(TEAMS_PSFB).packets[0].count == 15  # PSFB FMT 15: application layer FB
    assert not parse_rtcp(WA_SDES).packets[0].decoded  # items are ciphertext


def test_negative_cumulative_loss() -> None:
    rr = bytearray(RR_SDES)
    rr[13:16] = b"\xff\xff\xfe"  # the report block's 24-bit cumulative loss
    assert parse_rtcp(bytes(rr)).packets[0].reports[0].cumulative_lost == -2


def test_predicates() -> None:
    for rtp in (G711, MEET_PROBE, ZOOM_RTP):
        assert is_rtp(rtp) and not is_rtcp(rtp)
    for rtcp in (SR_SDES, RR_SDES, SR_SDES_BYE, RTPFB, MEET_XR, MEET_APP, TEAMS_PSFB, WA_SDES):
        assert is_rtcp(rtcp) and not is_rtp(rtcp)
    for other in (STUN, DTLS, QUIC, b"", b"\x80"):
        assert not is_rtp(other) and not is_rtcp(other)


def test_truncated() -> None:
    with pytest.raises(Truncated) as exc:
        parse_rtp(MEET_PROBE[:16])
    assert exc.value.offset == 16  # extension header read, its 4-byte body missing
    with pytest.raises(Truncated) as exc:
        parse_rtp(G711[:10])
    assert exc.value.offset == 8
    with pytest.raises(Truncated) as exc:
        parse_rtcp(SR_SDES[:50])
    assert exc.value.offset == 4  # the SR body is 48 bytes, 46 left


def test_junk() -> None:
    for junk in (STUN, DTLS, QUIC, b"\x40\x00\x00\x00" + bytes(12)):
        with pytest.raises(ParseError):
            parse_rtp(junk)
        with pytest.raises(ParseError):
            parse_rtcp(junk)
    with pytest.raises(Malformed):
        parse_rtp(bytes([0x80, 0xC8]) + bytes(10))  # PT 72 = RTCP SR on an RTP parser


def test_fuzz_only_parse_errors_escape() -> None:
    rng = random.Random(7)
    seeds = [G711, MEET_PROBE, ZOOM_RTP, SR_SDES, RR_SDES, SR_SDES_BYE, RTPFB, MEET_APP, WA_SDES]
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                del data[rng.randrange(len(data) + 1):]
        raw = bytes(data)
        is_rtp(raw)
        is_rtcp(raw)
        with contextlib.suppress(ParseError):
            parse_rtp(raw)
        with contextlib.suppress(ParseError):
            parse_rtcp(raw)


# -- the classifier's fast read of report blocks ------------------------------------------------

def _slow_blocks(data: bytes) -> tuple[tuple[int | None, int, int, int, int, int], ...] | None:
    c = parse_rtcp(data)
    if not c.complete:
        return None
    return tuple((p.ssrc, b.ssrc, b.fraction_lost, b.cumulative_lost, b.highest_sequence, b.jitter)
                 for p in c.packets for b in p.reports)


def test_report_blocks_read_what_the_full_parser_reads() -> None:
    for data in (SR_SDES, RR_SDES):
        blocks = rtcp_report_blocks(data)
        assert blocks is not None and blocks == _slow_blocks(data)
    assert rtcp_report_blocks(RR_SDES) == ((0x01932DB4, 0, 1, 1, 48834, 1),)
    rr = bytearray(RR_SDES)
    rr[13:16] = b"\xff\xff\xfe"  # negative cumulative loss, as in the full parser
    assert rtcp_report_blocks(bytes(rr)) == _slow_blocks(bytes(rr))


def test_report_blocks_leave_anything_else_to_the_full_parser() -> None:
    # BYE and feedback packets, SRTCP, cut short, junk: no answer
    for data in (SR_SDES_BYE, RTPFB, MEET_XR, MEET_APP, TEAMS_PSFB, WA_SDES, SR_SDES[:50],
                 RR_SDES[:-4], G711, STUN, DTLS, QUIC, b""):
        assert rtcp_report_blocks(data) is None


def test_report_blocks_fuzz_agree_with_the_full_parser() -> None:
    rng = random.Random(17)
    answered = 0
    for _ in range(4000):
        data = bytearray(rng.choice([SR_SDES, RR_SDES, SR_SDES + RR_SDES, RR_SDES[:32]]))
        for _ in range(rng.randint(0, 3)):
            if rng.random() < 0.7 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                del data[rng.randrange(len(data) + 1):]
        raw = bytes(data)
        blocks = rtcp_report_blocks(raw)
        if blocks is None:
            continue
        answered += 1
        assert blocks == _slow_blocks(raw)  # parse_rtcp does not raise where this answers
    assert answered > 300
