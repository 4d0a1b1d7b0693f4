"""Evidence a capture shows late or on ports no rule knows.

A capture that starts mid-call misses a media flow's first STUN exchange; what names the
app then is the STUN the call keeps sending (ICE consent checks every few seconds, RFC
7675 §5.1; TURN refreshes, RFC 8656 §7.3), which the probe keeps whatever its rank in the
flow. Zoom's peer-to-peer flows use any port: their first packet (the peer-to-peer hello)
and the media headers behind it name them, as nDPI's zoom.c reads them; media headers of
type 13 or 30 are a screen share.
"""

from __future__ import annotations

import random
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from api.pipeline import analyze_capture
from classifier.dpi.framings import parse_zoom_p2p_hello
from classifier.payloads import meter_config
from classifier.records import Category
from policy.pipeline import AnalysisResult
from probe import read_capture
from tests.conftest import ROOT, need_shared

sys.path.insert(0, str(ROOT / "captures"))

import make_app_captures as gen
from make_captures import ORIG, RESP, Flow, eth, send_udp, write_pcap

PHONE, PEER = gen.PHONE, gen.PEER
REAL_DEV = ROOT.parent / "shared" / "captures" / "real-dev" / "pcap"


def _analyze(tmp_path: Path, cap: gen.Capture) -> AnalysisResult:
    path = tmp_path / "c.pcap"
    path.write_bytes(write_pcap(cap.records(), 1))
    return analyze_capture(path, workers=1, hash_capture=False)


def _mid_call(realm: str | None) -> gen.Capture:
    """Media already flowing when the capture starts (no STUN among the first packets of
    either direction), then at 5 s an ICE consent check, answered; with ``realm``, the
    relay's TURN Refresh carries it."""
    rng = random.Random("mid-call")
    cap = gen.Capture()
    flow = Flow("udp", PHONE, 52000, PEER, 3478)
    t = gen.at(12000)
    gen.voice(cap, flow, t, Fraction(5), rng, gen.Voice(0x2222, 111, 960),
              gen.Voice(0x3333, 111, 960))
    txid = rng.randbytes(12)
    attrs = [(gen.REALM, realm.encode())] if realm else [(gen.PRIORITY, b"\x6e\x00\x1e\xff")]
    send_udp(cap, flow, eth, t + 5, ORIG, gen.stun_message(
        0x0004 if realm else gen.BINDING_REQUEST, txid, attrs, fingerprint=True))
    send_udp(cap, flow, eth, t + Fraction(5030, 1000), RESP, gen.stun_message(
        0x0104 if realm else gen.BINDING_SUCCESS, txid,
        [(gen.XOR_MAPPED_ADDRESS, gen.xor_mapped(gen.PUBLIC, flow.orig_p))], fingerprint=True))
    gen.voice(cap, flow, t + Fraction(51, 10), Fraction(2), rng, gen.Voice(0x2222, 111, 960),
              gen.Voice(0x3333, 111, 960))
    return cap


def test_stun_late_in_a_flow_is_read(tmp_path: Path) -> None:
    result = _analyze(tmp_path, _mid_call("turner.facebook.com"))
    ((rec, c),) = zip(result.flows, result.classes, strict=True)
    assert rec.orig_pkts > 300  # more than the first samples of each direction
    assert c.facts.stun is not None and c.facts.stun.realm == "turner.facebook.com"
    assert (c.app, c.category, str(c.method)) == ("messenger", Category.VOICE, "stun-realm")


def test_a_late_consent_check_makes_the_flow_stun(tmp_path: Path) -> None:
    result = _analyze(tmp_path, _mid_call(None))
    ((_, c),) = zip(result.flows, result.classes, strict=True)
    assert c.facts.stun is not None
    assert c.app is None and c.category is Category.VOICE  # no app named by a plain check


def test_every_allocate_is_read_whole_however_late(tmp_path: Path) -> None:
    """A client asks a TURN relay for an allocation six times (the 401 challenge, then a
    retry on each refresh of its credentials, as WhatsApp's clients do on every relay they
    try), each request longer than the bytes the probe keeps of a flow's later payloads,
    each answered: all six requests and answers are counted (RFC 8656 §7.2)."""
    rng = random.Random("allocate")
    cap = gen.Capture()
    flow = Flow("udp", PHONE, 52010, PEER, 3478)
    t = gen.at(12000)
    attrs = [(gen.USERNAME, b"u" * 120), (gen.REALM, b"relay.example"),
             (gen.SOFTWARE, b"s" * 100)]
    for i in range(6):
        txid = rng.randbytes(12)
        req = gen.stun_message(0x0003, txid, attrs, fingerprint=True)
        assert len(req) > meter_config().payload_tail_snap
        send_udp(cap, flow, eth, t + i, ORIG, req)
        send_udp(cap, flow, eth, t + i + Fraction(3, 100), RESP, gen.stun_message(
            0x0103, txid, [(gen.XOR_MAPPED_ADDRESS, gen.xor_mapped(gen.PUBLIC, flow.orig_p))],
            fingerprint=True))
    result = _analyze(tmp_path, cap)
    ((_, c),) = zip(result.flows, result.classes, strict=True)
    st = c.facts.stun
    assert st is not None and st.turn
    assert (st.requests, st.success, st.orig_requests) == (6, 6, 6)


def test_zoom_p2p_hello_follows_ndpi_layout() -> None:
    rng = random.Random("hello")
    hello = gen.zoom_p2p_hello(rng, ("192.168.1.7", 51234))
    got = parse_zoom_p2p_hello(hello)
    assert got is not None
    assert (got.length, got.address, got.port) == (len(hello), "192.168.1.7", 51234)
    # the lengths must add up to the payload: one byte more or less is not a hello
    assert parse_zoom_p2p_hello(hello[:-5] + b"\0\0\0\0") is None
    assert parse_zoom_p2p_hello(hello[:-4] + b"\0" + b"\0\0\0\0") is None
    # an address length that runs past the payload, or leaves no room for the next length
    huge = hello[:24] + (1 << 31).to_bytes(4, "big") + hello[28:]
    assert parse_zoom_p2p_hello(huge) is None
    tight = hello[:24] + (len(hello) - 32).to_bytes(4, "big") + hello[28:]
    assert parse_zoom_p2p_hello(tight) is None
    # the three leading bytes and trailing zeros alone (any UDP payload may have them)
    assert parse_zoom_p2p_hello(b"\x1f\x02\x01" + bytes(range(40)) + b"\0\0\0\0") is None


def test_zoom_p2p_hello_of_a_real_client() -> None:
    """In a real capture the hello names the address and port it is sent to."""
    need_shared()
    path = REAL_DEV / "zoom-menace31-stop-video.pcapng"
    run = read_capture(path, meter_config())
    hellos = [(f, h) for f in run.flows if f.proto == "udp" for p in f.payloads
              if (h := parse_zoom_p2p_hello(p.data)) is not None]
    assert hellos
    for f, h in hellos:
        assert (h.address, h.port) == (f.resp_h, f.resp_p)  # sent by the originator here
@pytest.fixture(scope="module")
def zoom(tmp_path_factory: pytest.TempPathFactory) -> AnalysisResult:
    out = tmp_path_factory.mktemp("zoom")
    gen.make_zoom(out)
    return analyze_capture(out / "zoom.pcap", workers=1, hash_capture=False)


@pytest.mark.parametrize(("port", "category", "media"), [
    (46757, Category.VOICE, "audio"),  # peer to peer, media header 15
    (8801, Category.SCREEN, "screen"),  # through a Zoom server, media header 13
])
def test_zoom_media_headers(zoom: AnalysisResult, port: int, category: Category,
                            media: str) -> None:
    (c,) = [c for f, c in zip(zoom.flows, zoom.classes, strict=True) if f.resp_p == port]
    assert (c.app, c.category, c.media, str(c.method)) == ("zoom", category, media, "framing")
    assert f"({media} media headers)" in c.reason


def test_a_one_way_zoom_share_too_sparse_for_media_is_call_setup(zoom: AnalysisResult) -> None:
    """Media headers name what a flow carries; whether it is real-time media is still its
    packets' to show: a one-way stream of a few packets a second is call set-up."""
    (c,) = [c for f, c in zip(zoom.flows, zoom.classes, strict=True) if f.resp_p == 46759]
    assert (c.app, c.category, c.facts.framing_detail) == ("zoom", Category.CALL_SETUP,
                                                           "screen")


def test_zoom_call_of_both_kinds(zoom: AnalysisResult) -> None:
    (call,) = zoom.analysis.calls
    assert call.app == "zoom" and set(call.media) == {"audio", "screen"}
    assert str(call.verdict.kind) == "ok"


@pytest.mark.parametrize("header", [False, True])
def test_stray_zoom_like_packets_on_a_zoom_port_make_no_media(tmp_path: Path,
                                                              header: bool) -> None:
    """A one-way flow on a Zoom port, 50 random datagrams a second for 6 s (its packets
    alone look like voice), one of them starting with the SFU's media type 5 (and with
    ``header``, a media header behind it: type byte, RTP version bits): one such packet
    is no Zoom framing, so nothing vouches for the flow being media, and there is no
    call to judge blocked."""
    rng = random.Random("stray")
    cap = gen.Capture()
    flow = Flow("udp", PHONE, 8805, PEER, 40000)
    t = gen.at(13000)
    for i in range(300):
        data = bytearray(rng.randbytes(rng.randrange(60, 200)))
        data[0] = 5 if i == 3 else rng.choice([0x6A, 0x9B, 0xE4, 0x17])
        if i == 3 and header:
            data[8], data[8 + 19] = 15, 0x80
        send_udp(cap, flow, eth, t + Fraction(i, 50), ORIG, bytes(data))
    other = Flow("udp", PHONE, 53001, "203.0.113.9", 53)
    send_udp(cap, other, eth, t, ORIG, rng.randbytes(40))
    send_udp(cap, other, eth, t + Fraction(1, 50), RESP, rng.randbytes(80))
    result = _analyze(tmp_path, cap)
    c = next(c for f, c in zip(result.flows, result.classes, strict=True) if f.orig_p == 8805)
    assert c.category not in (Category.VOICE, Category.VIDEO, Category.SCREEN)
    assert c.facts.framing is None and c.app is None
    for call in result.analysis.calls:
        assert str(call.verdict.kind) not in ("blocked", "throttled")


def test_p2p_hello_and_media_headers_on_random_udp_are_not_zoom(tmp_path: Path) -> None:
    """Random payloads that start with a media header's type byte, on a flow with no
    hello, are nobody's Zoom."""
    rng = random.Random("not-zoom")
    cap = gen.Capture()
    flow = Flow("udp", PHONE, 53000, PEER, 40000)
    t = gen.at(13000)
    for i in range(200):
        send_udp(cap, flow, eth, t + Fraction(i, 50), ORIG if i % 2 else RESP,
                 bytes([15]) + rng.randbytes(rng.randrange(60, 200)))
    result = _analyze(tmp_path, cap)
    ((_, c),) = zip(result.flows, result.classes, strict=True)
    assert c.app is None and c.facts.framing is None
