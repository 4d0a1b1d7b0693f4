"""RTP and RTCP multiplexed on a gQUIC connection (nDPI's quic.c: Snapchat's calls).

Snapchat's calls open a Google QUIC Q046 connection whose CHLO names no server, then
send RTCP (and RTP) on the same 5-tuple; no gQUIC packet starts with a byte of
0x80-0xBF, so RTCP compound packets on two datagrams or more tell them apart from the
QUIC ones. A gQUIC connection with a server name, or with no RTCP, is web as before.
"""

from __future__ import annotations

import random
import struct
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from api.pipeline import analyze_capture
from classifier.records import Category, Classification
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "captures"))

import make_app_captures as gen
from make_captures import ORIG, RESP, Flow, eth, send_udp, write_pcap

CID = bytes.fromhex("c38046e77aa306ea")


def _chlo(sni: str | None) -> bytes:
    """A Q046 long-header packet carrying a CHLO (tag/offset table, then the values), as
    Chromium writes it in clear on stream 1."""
    tags = [(b"PAD\x00", bytes(64)), (b"VER\x00", b"Q046")]
    if sni is not None:
        tags.insert(0, (b"SNI\x00", sni.encode()))
    body = b"CHLO" + struct.pack("<HH", len(tags), 0)
    end = 0
    for tag, value in tags:
        end += len(value)
        body += tag + struct.pack("<I", end)
    body += b"".join(v for _, v in tags)
    frame = b"\xa4\x01" + struct.pack(">HH", 0, len(body)) + body
    return b"\xc3Q046\x50" + CID + b"\x00\x00\x00\x01" + bytes(12) + frame + bytes(40)


def _rr(ssrc: int, rng: random.Random) -> bytes:
    """A compound RTCP packet starting with a receiver report with no blocks (RFC 3550
    §6.4.2), then SRTCP's encrypted rest."""
    return struct.pack(">BBHI", 0x80, 201, 1, ssrc) + rng.randbytes(36)


def _classify(tmp_path: Path, sni: str | None, reports: int) -> Classification:
    rng = random.Random(f"gquic-{sni}-{reports}")
    cap = gen.Capture()
    flow = Flow("udp", gen.PHONE, 42083, "203.0.113.90", 443)
    t = gen.at(14000)
    send_udp(cap, flow, eth, t, ORIG, _chlo(sni))
    send_udp(cap, flow, eth, t + Fraction(17, 1000), RESP, b"\xc3Q046\x05" + CID
             + rng.randbytes(1334))
    for i in range(6):  # short-header packets of the connection both ways
        send_udp(cap, flow, eth, t + Fraction(50 + 10 * i, 1000), ORIG if i % 2 else RESP,
                 bytes([0x40 | rng.randrange(16)]) + rng.randbytes(rng.randrange(20, 300)))
    for i in range(reports):
        send_udp(cap, flow, eth, t + Fraction(600 + 500 * i, 1000), ORIG if i % 2 else RESP,
                 _rr(0x8728A61E if i % 2 else 0x72973DB0, rng))
    path = tmp_path / "c.pcap"
    path.write_bytes(write_pcap(cap.records(), 1))
    result = analyze_capture(path, workers=1, hash_capture=False)
    ((_, c),) = zip(result.flows, result.classes, strict=True)
    return c


def test_rtcp_on_a_gquic_connection_with_no_server_name(tmp_path: Path) -> None:
    c = _classify(tmp_path, None, 6)
    assert c.facts.protocol == "gquic" and c.facts.framing == "rtp-in-gquic"
    assert (c.app, c.category, str(c.method)) == ("snapchat", Category.CALL_SETUP, "framing")
    assert "gQUIC Q046" in c.reason


@pytest.mark.parametrize(("sni", "reports"), [
    (None, 0),  # gQUIC alone
    (None, 1),  # one RTCP-looking datagram is not a stream of reports
    ("www.youtube.com", 6),  # a named server: nDPI's rule is for CHLOs with no name
])
def test_other_gquic_connections_are_not_calls(tmp_path: Path, sni: str | None,
                                               reports: int) -> None:
    c = _classify(tmp_path, sni, reports)
    assert c.facts.framing is None
    assert c.app != "snapchat"
    assert c.category not in (Category.CALL_SETUP, Category.VOICE, Category.VIDEO)
