"""A call whose UDP was blocked on the way goes on over TCP: its app's relay over TLS 443
(TURN over TCP, RFC 6062; Teams' transport relays and Zoom document the fallback). The
call happened, so its unanswered STUN is a failed path, not a block; and a call app's
download or upload over TCP is no call."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP  # type: ignore[attr-defined]
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from api.pipeline import analyze_capture
from captures.make_captures import tls_client_hello
from classifier.records import CALL_CATEGORIES
from policy.records import VerdictKind
from tests.unit.policy.test_verdict_rules import _binding, _dns_answered, _pcap, _udp

ME, RELAY, STUN = "192.168.1.50", "52.112.10.10", "52.112.10.20"


def _tls_session(sni: str, up_bytes: int, down_bytes: int, server: str = RELAY,
                 seconds: float = 30.0) -> list[tuple[float, bytes]]:
    """A TLS connection from ME to ``server`` on 443 for ``sni``: handshake, then a record
    every 20 ms each way carrying ``up_bytes`` and ``down_bytes`` (0: an acknowledgement
    only)."""
    rng = random.Random(1)

    def seg(t: float, up: bool, flags: str, seq: int, ack: int, payload: bytes = b""
            ) -> tuple[float, bytes]:
        src, dst, sp, dp = (ME, server, 45000, 443) if up else (server, ME, 443, 45000)
        pkt = Ether() / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=flags, seq=seq,
                                                   ack=ack)
        return t, bytes(pkt / Raw(payload) if payload else pkt)

    hello = tls_client_hello(sni, rng)
    c, s = 101 + len(hello), 901
    out = [seg(9.0, True, "S", 100, 0), seg(9.02, False, "SA", 900, 101),
           seg(9.021, True, "A", 101, 901), seg(9.03, True, "PA", 101, 901, hello)]
    server_hello = b"\x16\x03\x03\x00\x50\x02" + b"s" * 79
    out.append(seg(9.06, False, "PA", s, c, server_hello))
    s += len(server_hello)
    t = 9.1
    for _ in range(int(seconds / 0.02)):
        up = b"\x17\x03\x03" + up_bytes.to_bytes(2, "big") + rng.randbytes(up_bytes)
        down = b"\x17\x03\x03" + down_bytes.to_bytes(2, "big") + rng.randbytes(down_bytes)
        out.append(seg(t, True, "PA" if up_bytes else "A", c, s, up if up_bytes else b""))
        c += len(up) if up_bytes else 0
        out.append(seg(t + 0.005, False, "PA" if down_bytes else "A", s, c,
                       down if down_bytes else b""))
        s += len(down) if down_bytes else 0
        t += 0.02
    return out


def _capture(tmp_path: Path, session: list[tuple[float, bytes]]) -> Path:
    """STUN requests to the app's server resent for 7.5 s and never answered, then the
    TCP session, in a capture where a lookup was answered."""
    pkts = [*_dns_answered(ME), *session]
    pkts += [_binding(1.0 + t, ME, STUN, 5) for t in (0.0, 0.5, 1.5, 3.5, 7.5)]
    pkts.append(_udp(60.0, ME, 40002, "192.168.1.1", 53, b"\x00" * 12))
    path = tmp_path / "fallback.pcap"
    _pcap(path, sorted(pkts))
    return path


def test_a_call_that_went_on_over_tcp_is_no_block(tmp_path: Path) -> None:
    result = analyze_capture(_capture(tmp_path, _tls_session(
        "worldaz.relay.teams.microsoft.com", 144, 144)), workers=1)
    (call,) = result.analysis.calls
    assert call.app == "teams" and call.media == ("audio",), call
    assert call.outcome == "answered" and call.verdict.kind is not VerdictKind.BLOCKED, call
    stun = next(f.uid for f in result.flows if f.resp_p == 3478)
    assert stun in call.flow_uids
    failed = call.to_dict()["failed_paths"]
    assert [p["reason"] for p in failed] == ["stun-unanswered"], failed
    assert stun not in result.analysis.flow_verdicts


@pytest.mark.parametrize(("sni", "up", "down", "server"), [
    ("mmg.whatsapp.net", 0, 1200, "198.51.100.80"),  # a call app's media download
    ("worldaz.relay.teams.microsoft.com", 1200, 0, RELAY),  # an upload to a call app
    ("www.example.org", 144, 144, "198.51.100.80"),  # two-way, no call app behind it
], ids=["download", "upload", "no-call-app"])
def test_tcp_that_is_no_call_media(tmp_path: Path, sni: str, up: int, down: int,
                                   server: str) -> None:
    result = analyze_capture(_capture(tmp_path, _tls_session(sni, up, down, server)),
                             workers=1)
    tcp = [c for f, c in zip(result.flows, result.classes, strict=True) if f.proto == "tcp"]
    assert tcp and all(c.category not in CALL_CATEGORIES for c in tcp), tcp
    assert all(not c.media for c in result.analysis.calls), result.analysis.calls
