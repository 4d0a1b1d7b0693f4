"""TURN ChannelData as a framing that carries RTP (RFC 8656 §12.4).

The probe reads RTP behind a ChannelData header only where the header's length field
agrees with the payload's length on the wire. A QUIC short header (RFC 9000 §17.3: first
bits 01) starts with a byte in the same range as a channel number; what follows it is a
connection ID, the same in every packet, which can look like a fixed RTP header: a QUIC
connection whose Initial is not in the capture (lost, or cut by a short snap length) must
not become relayed "media". A capture cut to a short snap length still measures relayed
RTP, the length on the wire being the IP header's.
"""

from __future__ import annotations

import random
import sys
from fractions import Fraction
from pathlib import Path

from api.pipeline import analyze_capture
from classifier.records import Category
from policy.pipeline import AnalysisResult
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "captures"))

import make_app_captures as gen
from make_captures import ORIG, RESP, Flow, eth, rtp, send_udp, write_pcap

MEDIA = {Category.VOICE, Category.VIDEO, Category.SCREEN}
# A connection ID whose bytes 3-14 read as an RTP header: V=2, PT 87, a fixed SSRC.
DCID = bytes.fromhex("01fd9284d7cd979886fddc84e7cd84d9")


def _analyze(tmp_path: Path, cap: gen.Capture, snaplen: int = 262144) -> AnalysisResult:
    path = tmp_path / "c.pcap"
    path.write_bytes(write_pcap(cap.records(), 1, snaplen=snaplen))
    return analyze_capture(path, workers=1, hash_capture=False)


def test_quic_short_headers_are_not_relayed_rtp(tmp_path: Path) -> None:
    rng = random.Random("quic-short")
    cap = gen.Capture()
    flow = Flow("udp", "192.168.0.240", 50609, "162.159.136.232", 443)
    t = gen.at(7000)
    for i in range(400):  # a download: the server sends, the client acknowledges
        ts = t + Fraction(i, 40)
        send_udp(cap, flow, eth, ts, RESP,
                 bytes([0x40 | rng.randrange(16)]) + rng.randbytes(1199))
        if i % 3 == 0:
            send_udp(cap, flow, eth, ts + Fraction(1, 1000), ORIG,
                     bytes([0x40 | rng.randrange(16)]) + DCID + rng.randbytes(36))
    result = _analyze(tmp_path, cap)
    ((rec, c),) = zip(result.flows, result.classes, strict=True)
    assert rec.rtp_streams == ()
    assert c.category not in MEDIA


def _relayed(snaplen: int, tmp_path: Path) -> int:
    rng = random.Random("relayed")
    cap = gen.Capture()
    flow = Flow("udp", "192.168.0.240", 50610, "52.0.254.200", 3478)
    t = gen.at(7100)
    for i in range(150):
        for d, ssrc in ((ORIG, 0x0B1BE401), (RESP, 0x0B1BE402)):
            send_udp(cap, flow, eth, t + Fraction(i, 50) + Fraction(d, 1000), d,
                     gen.channel_data(0x4000, rtp(100 + i, 320 * i, ssrc, 106, rng.randbytes(80))))
    (rec,) = _analyze(tmp_path, cap, snaplen).flows
    return len(rec.rtp_streams)


def test_relayed_rtp_is_measured_whole_and_cut_short(tmp_path: Path) -> None:
    assert _relayed(262144, tmp_path) == 2
    # 60 bytes: Ethernet, IPv4 and UDP headers, the ChannelData header, the RTP header, 2 more
    assert _relayed(60, tmp_path) == 2
