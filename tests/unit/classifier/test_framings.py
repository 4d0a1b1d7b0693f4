"""Tests for the app framings (Zoom, Discord, Telegram, Viber, WhatsApp).

Real bytes come from ../shared/captures/ndpi-dev/pcap/ (frame numbers 1-based) and, for
Zoom media, from the Zoom packets published by Princeton-Cabernet/zoom-analysis in
test/test_packets.h (UDP payloads cut out of the Ethernet frames there; several were
captured with a 128-byte snap length, so they end early but after the RTP header).
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from classifier.dpi.framings import (
    DiscordIpDiscovery,
    DiscordKeepalive,
    TelegramRelay,
    ViberFraming,
    ZoomMediaKind,
    ZoomSfuType,
    parse_discord,
    parse_telegram_relay,
    parse_viber,
    parse_whatsapp_prologue,
    parse_zoom_media,
    parse_zoom_p2p_hello,
    parse_zoom_sfu,
)
from probe.errors import Malformed, ParseError, Truncated

# -- Zoom (Princeton-Cabernet/zoom-analysis test/test_packets.h) -------------------------------
ZOOM_SRV_VIDEO = bytes.fromhex(  # zoom_srv_video_buf: SFU + video, frame-info block
    "05000700fe513204100100fb9016180c030005696592aa00000000000233180590621e23f3e79e3001000801"
    "bede000412500000358a903318331650007000001c8000000fe40c1933000000000000000000000097d5")
ZOOM_SRV_VIDEO_SHORT = bytes.fromhex(  # zoom_srv_video_short_buf: video without frame info
    "05ea0f00b6c49d04100100fb901a140c84885761bfc3dc000000000090e206332c1d442001000802bede0004"
    "124000003586506994699250007000001c40c89b60b5315cb134536d3c7d17ab0462a78ca7d911fa53f0")
ZOOM_SRV_SCREEN = bytes.fromhex(  # zoom_srv_screenshare_buf
    "050688000483 1f000d72420622 00001e0100fb90171448 0105f81c96724200 00fb9019 90631c042cab22"
    "1c01000403bede0005125000004702 00004e004d000063078004b070011c002363d22948cdca94dfe9a0220e"
    "2b02b49de5f285e3d941e433fb4217ad".replace(" ", ""))
ZOOM_SRV_RTCP = bytes.fromhex(  # zoom_srv_rtcp_buf: SFU + RTCP SR + SDES
    "0500b300fe50950022 0100fb901010 0000000000000000 ff80c800060100 0402e4f613639788bc8800acfb20"
    "00000d6e0003885281ca0002010004020100 0000".replace(" ", ""))
ZOOM_P2P_AUDIO = bytes.fromhex(  # zoom_p2p_audio_buf: media header only, audio
    "0f0100fb901011040102b60565ee580001003d906368c40124ec2001000402bede00015064006800090c9d06"
    "000000000000000000000018b4f5ebea84970bdbae3d67ed284d67ec07793d90fabf9588")
ZOOM_P2P_SCREEN = bytes.fromhex(  # zoom_p2p_screenshare_buf: media header only, type 30
    "1e0100fb9013140801117306 82a8b00200fb90179063 e1617e93c9f401000803bede00051250 0000479a80"
    "0622062100006306 90041a70011c8000000f2a 0c2306 0000000000 000000000000 25f0d6546159a24c39a4"
    "a806c23182a1e17b54d39c30390a1481".replace(" ", ""))
# zoom.pcap: hellos, keep-alives, and a newer-client RTCP packet (type byte + media header)
ZOOM_CLIENT_HELLO = bytes.fromhex(  # frame 386 (first 40 of 107 bytes)
    "0100027d464d35fffda234495d0d6d3b51e8960000000000000002007a002a007a002a000000400e17")
ZOOM_SERVER_HELLO = bytes.fromhex(  # frame 395
    "0200017d464d35fffda234495d0d6d3b51e896005a0e3e007a002a0000000000000000")
ZOOM_KEEPALIVE = bytes.fromhex("0300000001762a8d74005a0e3e")  # frame 396
ZOOM_NEW_RTCP = bytes.fromhex(  # frame 689
    "05220100fb90091000000000000000000080c8000601000402e13779d7e7ec12da0000091000000005000000"
    "b581ca00020100040201000000")

# -- Discord (discord.pcap) ---------------------------------------------------------------
DISCORD_REQ = bytes.fromhex("000100460000ace3" + "00" * 64 + "6f74")  # frame 20
DISCORD_RSP = bytes.fromhex(  # frame 21
    "000200460000ace338342e35392e3133322e313030" + "00" * 51 + "e263")
DISCORD_KEEPALIVE = bytes.fromhex("1337cafe0e000000")  # frame 8

# -- WhatsApp (whatsapp.pcap, whatsapp_voice_and_message.pcap) -----------------------------
WA_EDGE = bytes.fromhex("45440001")  # whatsapp.pcap frame 3: the edge header on its own
WA_HELLO = bytes.fromhex(  # whatsapp.pcap frame 4 (284 bytes)
    "000004080908025741050200010e128b020a2038fbfa95e5bc0826562c2952514662f3bbff26266b67a89bf1b6"
    "393352b81f421230c35fe02b668952d0f427b81db8edf9db98246c6eb7e032b30654928c104d2ddbf2513fc59e"
    "6f775b3bb5e654885200c51ab4018300a231388842b52f79fb59ea289cab482d8f9b25e2878aa17492498a8e22"
    "4b7cb613b4ed7200cab87c99fd4bd83163357cdf7363bdf28c04326b34c4c76185ee8daab11661fa28b8749042"
    "d63a5f1087c1464ba880d68bc670973ec6e57d5d55a2d0a7d4f7b9d668d85e793b7273ccc95ac613d11ccf18d0"
    "7debc969c69a620a3c1dc6cefe5f4a2ea1a090ccc841ee7ceb4ab47aef33ca0bc1f829eb1a26bd0265e1c701bd"
    "0d731a30a2613d5c1106cc2b9b3d")
WA_OLD = bytes.fromhex(  # whatsapp_voice_and_message.pcap frame 4, first 30 of 177 bytes
    "57410105000017f80501a59189fc0f416e64726f69642d322e31322e3834")

# -- negatives from other apps -------------------------------------------------------------
SKINNY_RTP = bytes.fromhex(  # skinny.pcap frame 61: RTP whose payload is a run of 34 x 0xFF
    "8080059b0002e0c0f6bf57e2" + "ff" * 34 + "7f7efefd7c7dfcfefdff7efe7d7b")
TG_STUN = bytes.fromhex(  # telegram_videocall.pcapng frame 634
    "010800282112a4424441504c79645342427a4f2b802200044e6f6e6500080014d5aa5af8260bdaa27ca6e5f850"
    "cb874653462a1d80280004379d7cd9")
REAL = [ZOOM_SRV_VIDEO, ZOOM_SRV_VIDEO_SHORT, ZOOM_SRV_SCREEN, ZOOM_SRV_RTCP, ZOOM_P2P_AUDIO,
        ZOOM_P2P_SCREEN, ZOOM_CLIENT_HELLO, ZOOM_SERVER_HELLO, ZOOM_KEEPALIVE, ZOOM_NEW_RTCP,
        DISCORD_REQ, DISCORD_RSP, DISCORD_KEEPALIVE, WA_EDGE, WA_HELLO, WA_OLD, SKINNY_RTP,
        TG_STUN]


def test_zoom_sfu_media_offsets() -> None:
    cases = [(ZOOM_SRV_VIDEO, ZoomMediaKind.VIDEO, 16, 32, 98, 0x01000801),
             (ZOOM_SRV_VIDEO_SHORT, ZoomMediaKind.VIDEO, 16, 28, 98, 0x01000802),
             (ZOOM_SRV_SCREEN, ZoomMediaKind.SCREEN_SHARE, 13, 35, 99, 0x01000403),
             (ZOOM_SRV_RTCP, ZoomMediaKind.RTCP, 34, 24, 200, 0x01000402)]
    for data, kind, mtype, offset, pt, ssrc in cases:
        sfu = parse_zoom_sfu(data)
        assert sfu is not None and sfu.sfu_type == ZoomSfuType.MEDIA and sfu.header_length == 8
        m = sfu.media
        assert m is not None
        assert (m.kind, m.media_type, m.rtp_offset, m.payload_type, m.ssrc) == (
            kind, mtype, offset, pt, ssrc)
        assert data[m.rtp_offset] >> 6 == 2
    assert parse_zoom_sfu(ZOOM_SRV_VIDEO).direction == 4  # type: ignore[union-attr]
    assert parse_zoom_sfu(ZOOM_SRV_RTCP).direction == 0  # type: ignore[union-attr]


def test_zoom_newer_client_layout() -> None:
    sfu = parse_zoom_sfu(ZOOM_NEW_RTCP)
    assert sfu is not None and sfu.header_length == 1 and sfu.media is not None
    assert (sfu.media.kind, sfu.media.rtp_offset, sfu.media.ssrc) == (
        ZoomMediaKind.RTCP, 17, 0x01000402)


def test_zoom_hellos_and_keepalive() -> None:
    c = parse_zoom_sfu(ZOOM_CLIENT_HELLO)
    s = parse_zoom_sfu(ZOOM_SERVER_HELLO)
    k = parse_zoom_sfu(ZOOM_KEEPALIVE)
    assert c is not None
    assert (c.sfu_type, c.sequence, c.media) == (ZoomSfuType.CLIENT_HELLO, 2, None)
    assert s is not None and (s.sfu_type, s.sequence) == (ZoomSfuType.SERVER_HELLO, 1)
    assert k is not None and k.sfu_type == ZoomSfuType.KEEPALIVE_REQ


def test_zoom_p2p_media() -> None:
    a = parse_zoom_media(ZOOM_P2P_AUDIO)
    assert a is not None and (a.kind, a.rtp_offset, a.payload_type, a.ssrc) == (
        ZoomMediaKind.AUDIO, 19, 99, 0x01000402)
    s = parse_zoom_media(ZOOM_P2P_SCREEN)
    assert s is not None and (s.kind, s.media_type, s.rtp_offset, s.ssrc) == (
        ZoomMediaKind.SCREEN_SHARE, 30, 20, 0x01000803)


def test_zoom_p2p_hello() -> None:
    # the layout nDPI's zoom.c checks: 24-byte header, length-value address and
    # identifier, four zero bytes (tests/unit/classifier/test_late_evidence.py has more)
    address, ident = b"192.168.1.7", b"0123456789abcdef"
    hello = (bytes.fromhex("1f0201") + bytes(21) + len(address).to_bytes(4, "big") + address
             + len(ident).to_bytes(4, "big") + ident + b"\x00" * 4)
    h = parse_zoom_p2p_hello(hello)
    assert h is not None and h.address == "192.168.1.7"
    # the first three bytes and the trailing zeros alone are not a hello
    assert parse_zoom_p2p_hello(bytes.fromhex("1f0201") + b"\x0b192.168.1.7" + bytes(28)) is None
    for other in REAL:
        assert parse_zoom_p2p_hello(other) is None


def test_discord() -> None:
    req = parse_discord(DISCORD_REQ)
    rsp = parse_discord(DISCORD_RSP)
    assert isinstance(req, DiscordIpDiscovery) and not req.is_response and req.address == ""
    assert isinstance(rsp, DiscordIpDiscovery) and rsp.is_response
    # the client 192.168.2.100:57955 learns its public address and port
    assert (rsp.ssrc, rsp.address, rsp.port) == (44259, "84.59.132.100", 57955)
    ka = parse_discord(DISCORD_KEEPALIVE)
    assert isinstance(ka, DiscordKeepalive) and ka.counter == 14


def test_telegram_relay() -> None:
    # libtgvoip layout: 16-byte peer tag, 12 x 0xFF, TL id (0xc01572c7 = reflector self info)
    # then date, query id, address; built by hand, no relay capture at hand
    pkt = bytes(range(16)) + b"\xff" * 12 + bytes.fromhex("c77215c0") + bytes(32)
    r = parse_telegram_relay(pkt)
    assert r == TelegramRelay(16, bytes(range(16)), 0xC01572C7)
    # a run of 34 x 0xFF (silence in an RTP payload) is not the marker
    assert parse_telegram_relay(SKINNY_RTP) is None
    # Telegram's own call flows in telegram_videocall.pcapng are STUN/TURN, not relay packets
    assert parse_telegram_relay(TG_STUN) is None
    assert parse_telegram_relay(pkt[:39]) is None  # under 40 bytes


def test_viber() -> None:
    # no Viber capture at hand: the markers below are built from the documented positions
    assert parse_viber(b"\x00\x00\x03\x00" + bytes(20), tcp=False) is ViberFraming.UDP_0300
    assert parse_viber(b"\x01\x00\x05\x00" + bytes(10), tcp=False) is ViberFraming.UDP_01000500
    assert parse_viber(b"\xaa\xbb\x09\x00" + bytes(16), tcp=False) is ViberFraming.UDP_0900
    assert parse_viber(b"\xaa\xbb\x1b\x00" + bytes(30), tcp=False) is ViberFraming.UDP_1900
    tcp = (16).to_bytes(2, "little") + b"\0\0\0\0\xfc\xff\0\x80" + bytes(6)
    assert parse_viber(tcp, tcp=True) is ViberFraming.TCP_FCFF
    tcp = (16).to_bytes(2, "little") + b"\0\0\x03\x80\0\0\0\0\x0a" + bytes(5)
    assert parse_viber(tcp, tcp=True) is ViberFraming.TCP_0380
    for other in REAL:
        assert parse_viber(other, tcp=True) is None
    for other in (ZOOM_SRV_VIDEO, DISCORD_RSP, TG_STUN, SKINNY_RTP, WA_HELLO):
        assert parse_viber(other, tcp=False) is None


def test_whatsapp_prologue() -> None:
    p = parse_whatsapp_prologue(WA_EDGE)
    assert p is not None and p.edge_routing and p.wa_version is None
    # the routing header then continues in the next segment
    p = parse_whatsapp_prologue(WA_EDGE + WA_HELLO)
    assert p is not None and p.routing_info == bytes.fromhex("08090802")
    assert p.wa_version == (5, 2) and p.first_frame_length == 270
    p = parse_whatsapp_prologue(WA_OLD)
    assert p is not None and not p.edge_routing and p.wa_version == (1, 5)
    assert p.first_frame_length == 23
    for other in (ZOOM_SRV_VIDEO, DISCORD_RSP, TG_STUN, WA_HELLO):
        assert parse_whatsapp_prologue(other) is None


def test_not_the_framing_gives_none() -> None:
    for data in (TG_STUN, SKINNY_RTP, WA_HELLO):
        assert parse_zoom_sfu(data) is None or data[0] in (1, 2, 3, 4, 5)
        assert parse_discord(data) is None
    assert parse_zoom_media(DISCORD_RSP) is None
    assert parse_zoom_sfu(b"\x06" + bytes(30)) is None


def test_truncated() -> None:
    with pytest.raises(Truncated) as exc:
        parse_zoom_sfu(ZOOM_SRV_VIDEO[:30])  # media header names video, RTP would start at 32
    assert exc.value.offset == 32
    with pytest.raises(Truncated) as exc:
        parse_discord(DISCORD_RSP[:40])
    assert exc.value.offset == 4
    with pytest.raises(Truncated) as exc:
        parse_whatsapp_prologue(WA_EDGE + WA_HELLO[:24])
    assert exc.value.offset == 15  # the 3-byte frame length after "WA" 5 2


def test_broken_framing_is_malformed() -> None:
    with pytest.raises(Malformed):
        parse_discord(DISCORD_RSP + b"\x00")
    with pytest.raises(Malformed):
        parse_discord(DISCORD_RSP[:30] + b"\x01" + DISCORD_RSP[31:])  # bytes after the NUL
    with pytest.raises(Malformed):
        parse_whatsapp_prologue(WA_EDGE + WA_HELLO[:7] + b"XX" + WA_HELLO[9:])


def test_fuzz_only_parse_errors_escape() -> None:
    rng = random.Random(8801)
    parsers = (parse_zoom_sfu, parse_zoom_media, parse_zoom_p2p_hello, parse_discord,
               parse_telegram_relay, parse_whatsapp_prologue)
    for _ in range(3000):
        data = bytearray(rng.choice(REAL))
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.6 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                del data[rng.randrange(len(data) + 1):]
        raw = bytes(data)
        for parse in parsers:
            with contextlib.suppress(ParseError):
                parse(raw)
        for tcp in (False, True):
            with contextlib.suppress(ParseError):
                parse_viber(raw, tcp=tcp)


SHARED = Path(__file__).resolve().parents[4] / "shared" / "captures" / "ndpi-dev" / "pcap"


@pytest.mark.shared
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared captures not present")
def test_telegram_videocall_has_no_relay_marker() -> None:
    """The 12 x 0xFF marker belongs to libtgvoip relays; this 2023 video call uses STUN/TURN."""
    dpkt = pytest.importorskip("dpkt")
    seen = 0
    with (SHARED / "telegram_videocall.pcapng").open("rb") as fh:
        for _ts, frame in dpkt.pcapng.Reader(fh):
            udp = getattr(dpkt.ethernet.Ethernet(frame).data, "data", None)
            if isinstance(udp, dpkt.udp.UDP) and udp.data:
                seen += 1
                assert parse_telegram_relay(bytes(udp.data)) is None
    assert seen > 200
