"""SIP/SDP parser tests on messages cut from real captures (tests/vectors/sip/README.md)."""

from __future__ import annotations

import contextlib
import random
from pathlib import Path

import pytest

from classifier.dpi.sip import (
    Direction,
    MediaEndpoint,
    media_endpoints,
    parse_sdp,
    parse_sip,
    sip_start_line,
)
from probe.errors import Malformed, ParseError, Truncated

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "sip"


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


INVITE = vec("g711_invite.sip")
OK_200 = vec("g711_200_ok.sip")
TRYING = vec("phone_100_trying.sip")
RINGING = vec("phone_180_ringing.sip")
NULL_INVITE = vec("codec_null_invite.sip")


def test_invite_request_line_and_headers() -> None:
    (m,) = parse_sip(INVITE)
    assert m.is_request and m.method == "INVITE" and m.request_uri == "sip:test@10.0.2.15:5060"
    assert m.call_id == "1-1966@10.0.2.20"
    assert (m.cseq_number, m.cseq_method) == (1, "INVITE")
    assert m.from_ is not None and m.from_.uri == "sip:sipp@10.0.2.20:5060"
    assert m.from_.display_name == "PCMU/8000" and m.from_.tag == "1"
    assert m.to is not None and m.to.tag is None and m.to.display_name == "test"
    assert m.via == ("SIP/2.0/UDP 10.0.2.20:5060;branch=z9hG4bK-1966-1-0",)
    assert [c.uri for c in m.contact] == ["sip:sipp@10.0.2.20:5060"]
    assert m.content_type == "application/sdp" and m.content_length == 123
    assert len(m.body) == 123 and m.body.startswith(b"v=0\r\n")


def test_response_and_sdp() -> None:
    (m,) = parse_sip(OK_200)
    assert not m.is_request and (m.status_code, m.reason) == (200, "OK")
    assert m.to is not None and m.to.tag == "QvN92t713vSZK"
    assert m.user_agent == "FreeSWITCH-mod_sofia/1.6.12-20-b91a0a6~64bit"
    assert ("remote-party-id", '"test" <sip:test@10.0.2.15>;party=calling;privacy=off;'
            "screen=no") in m.headers
    sdp = m.sdp
    assert sdp is not None and sdp.origin is not None
    assert sdp.origin.username == "FreeSWITCH" and sdp.session_name == "FreeSWITCH"
    (audio,) = sdp.media
    assert (audio.media, audio.port, audio.proto, audio.formats) == (
        "audio", 27942, "RTP/AVP", ("0", "101"))
    assert [(r.payload_type, r.encoding, r.clock_rate) for r in audio.rtpmaps] == [
        (0, "PCMU", 8000), (101, "telephone-event", 8000)]
    assert audio.direction is Direction.SENDONLY
    assert ("ptime", "20") in audio.attributes


def test_media_endpoints_offer_and_answer() -> None:
    offer = parse_sip(INVITE)[0].sdp
    answer = parse_sip(OK_200)[0].sdp
    assert offer is not None and answer is not None
    assert media_endpoints(offer) == (
        MediaEndpoint("10.0.2.20", 6000, "audio", Direction.RECVONLY, "RTP/AVP", 6001),)
    # the capture's one-way G.711 stream runs 10.0.2.15:27942 -> 10.0.2.20:6000
    assert media_endpoints(answer) == (
        MediaEndpoint("10.0.2.15", 27942, "audio", Direction.SENDONLY, "RTP/AVP", 27943),)


def test_rejected_stream_and_session_level_lines() -> None:
    (m,) = parse_sip(NULL_INVITE)
    assert m.user_agent == "Linphonec/3.12.0 (belle-sip/1.6.3)"
    assert m.contact[0].uri == "sip:8801@192.168.8.183;transport=udp"
    sdp = m.sdp
    assert sdp is not None and sdp.connection is not None
    assert sdp.connection.address == "0.0.0.0" and sdp.connection.addr_type == "IP4"
    assert sdp.attributes[0][0] == "rtcp-xr"
    (audio,) = sdp.media
    assert audio.port == 0 and audio.direction is Direction.INACTIVE
    assert media_endpoints(sdp) == ()  # port 0: the stream is refused


def test_direction_override_ipv6_and_rtcp_attribute() -> None:
    # session-level sendonly, overridden by the video section; IPv6 c= and a=rtcp
    # (the INVITE's SDP with lines edited: no capture at hand has IPv6 SDP)
    body = (b"v=0\r\no=- 42 42 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n"
            b"a=sendonly\r\nm=audio 6000 RTP/AVP 0\r\na=rtcp:6010 IN IP6 2001:db8::2\r\n"
            b"m=video 6002 RTP/AVP 96\r\nc=IN IP6 2001:db8::3\r\na=rtpmap:96 H264/90000\r\n"
            b"a=recvonly\r\n")
    sdp = parse_sdp(body)
    assert sdp.direction is Direction.SENDONLY
    assert media_endpoints(sdp) == (
        MediaEndpoint("2001:db8::1", 6000, "audio", Direction.SENDONLY, "RTP/AVP", 6010),
        MediaEndpoint("2001:db8::3", 6002, "video", Direction.RECVONLY, "RTP/AVP", 6003),
    )
    assert sdp.media[0].rtcp_address == "2001:db8::2"


def test_compact_header_forms() -> None:
    # the 180 Ringing with its headers rewritten in RFC 3261 §7.3.3 compact form
    compact = (RINGING.replace(b"\r\nVia:", b"\r\nv:").replace(b"\r\nCall-ID:", b"\r\ni:")
               .replace(b"\r\nFrom:", b"\r\nf:").replace(b"\r\nTo:", b"\r\nt:")
               .replace(b"\r\nContact:", b"\r\nm:").replace(b"\r\nContent-Length:", b"\r\nl:"))
    (full,) = parse_sip(RINGING)
    (short,) = parse_sip(compact)
    assert short.call_id == full.call_id == "dJpMERl3hb"
    assert short.to == full.to and short.to is not None
    assert short.to.tag == "2ALrvgnIqfZqo1h4Cs5PAG9HS3b4GQNz"
    assert short.via == full.via and short.contact == full.contact
    assert short.content_length == 0
    assert [k for k, _ in short.headers] == [k for k, _ in full.headers]
    c_type = INVITE.replace(b"\r\nContent-Type:", b"\r\nc:")
    assert parse_sip(c_type)[0].sdp is not None


def test_several_messages_and_content_length_on_tcp() -> None:
    # 100 Trying and 180 Ringing back to back, as one TCP segment would carry them
    both = parse_sip(TRYING + RINGING, tcp=True)
    assert [m.status_code for m in both] == [100, 180]
    assert both[1].offset == len(TRYING)
    three = parse_sip(TRYING + INVITE + RINGING, tcp=True)
    assert [m.method or m.status_code for m in three] == [100, "INVITE", 180]
    assert three[1].sdp is not None and len(three[1].body) == 123


def test_truncated() -> None:
    with pytest.raises(Truncated) as exc:
        parse_sip(INVITE[:-10], tcp=True)  # body short of Content-Length
    assert exc.value.offset == INVITE.index(b"\r\n\r\n") + 4
    with pytest.raises(Truncated) as exc:
        parse_sip(INVITE[:100])  # inside the headers
    assert exc.value.offset == INVITE.index(b"From:")


def test_junk() -> None:
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
                 b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                 b"INVITE sip:x SIP/2.0\r\nno colon here\r\n\r\n",
                 b"\r\n\r\n"):
        with pytest.raises(ParseError):
            parse_sip(junk)
    with pytest.raises(Malformed):
        parse_sdp(b"v=0\r\nm=audio x RTP/AVP 0\r\n")
    with pytest.raises(Malformed):
        parse_sdp(b"hello")


def test_fuzz_only_parse_errors_escape() -> None:
    rng = random.Random(3261)
    seeds = [INVITE, OK_200, TRYING, RINGING, NULL_INVITE]
    alphabet = b"\r\n :;=<>/\"0123456789vmacslit"
    for _ in range(1500):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            r = rng.random()
            if r < 0.5 and data:
                data[rng.randrange(len(data))] = rng.choice(alphabet)
            elif r < 0.8:
                del data[rng.randrange(len(data) + 1):]
            else:
                data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randint(1, 4))
        for tcp in (False, True):
            with contextlib.suppress(ParseError):
                parse_sip(bytes(data), tcp=tcp)


def test_a_damaged_message_is_still_sip_by_its_start_line() -> None:
    """A REGISTER whose header lines are mangled (a fuzzed capture) cannot be parsed,
    but its request line is whole: the flow is SIP all the same."""
    damaged = (b"REGISTER sip:sip.example.net SIP/2.0\r\nVi\x1d: SIP/2.0/UDP 10.0.0.1\r\n"
               b"\xff\xfe broken\r\n\r\n")
    with pytest.raises(ParseError):
        parse_sip(damaged)
    assert sip_start_line(damaged) == ("REGISTER", None)
    assert sip_start_line(b"SIP/2.0 401 Unauthorized\r\nx") == (None, 401)
    assert sip_start_line(b"CANCEL qip:123@host SIP/2.0\r\n") == ("CANCEL", None)
    assert sip_start_line(b"REGISTER sip:a SIP/3.0\r\n") is None
    assert sip_start_line(b"GET / HTTP/1.1\r\n") is None
