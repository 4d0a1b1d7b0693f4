"""Which flows join a call: signalling from the same local host, before the media.

The capture is built with the generators of ``captures/`` (real TLS, TURN and RTP
bytes): a Messenger call from the phone through a relay in Meta's address space,
with TLS connections to Meta around it from the phone and from a second host of the
same network (an operator's vantage point sees many subscribers).
"""

from __future__ import annotations

import random
import sys
from fractions import Fraction
from pathlib import Path

from api.pipeline import analyze_capture
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "captures"))

import make_app_captures as gen
from make_captures import Flow, Tcp, eth, tls_client_hello, tls_server_flight

NEIGHBOUR = "192.168.1.77"
"""Another subscriber behind the same vantage point."""
RELAY = "157.240.22.60"
"""Meta's TURN relay of the call, also a web front end."""


def _tls(cap: gen.Capture, t: Fraction, rng: random.Random, host: str, sport: int,
         server: str, sni: str) -> Fraction:
    rtt = Fraction(30, 1000)
    c = Tcp(cap, Flow("tcp", host, sport, server, 443), eth,
            (rng.getrandbits(32), rng.getrandbits(32)))
    t = c.handshake(t, rtt)
    t = c.exchange(t, rtt, tls_client_hello(sni, rng), tls_server_flight(rng, 240))
    return c.close(t + Fraction(1, 10), rtt)


def test_signalling_is_the_callers_own_and_comes_before_the_media(tmp_path: Path) -> None:
    rng = random.Random("grouping")
    cap = gen.Capture()
    t = gen.at(7000)
    _tls(cap, t, rng, gen.PHONE, 40001, "157.240.22.11", "edge-mqtt.facebook.com")
    _tls(cap, t + Fraction(1, 2), rng, NEIGHBOUR, 40002, RELAY, "edge-mqtt.facebook.com")
    call = Flow("udp", gen.PHONE, 40003, RELAY, 3478)
    tm = gen.turn_allocation(cap, call, t + 1, rng, Fraction(28, 1000), realm="facebook.com",
                             username="1730000000:m8u1", password="pw",
                             relayed=(RELAY, 41800), peer=(gen.PEER, 39001))
    end = gen.voice(cap, call, tm, Fraction(4, 1), rng, gen.Voice(0x7E55E201, 111, 960),
                    gen.Voice(0x7E55E202, 111, 960), wrap=gen.on_channel)
    _tls(cap, tm + 2, rng, gen.PHONE, 40004, "157.240.22.12", "scontent.xx.fbcdn.net")
    assert end > tm + 2
    path = tmp_path / "grouping.pcap"
    gen.save(tmp_path, path.name, cap)

    result = analyze_capture(path, workers=1, hash_capture=False)
    by_port = {f.orig_p: f.uid for f in result.flows}
    calls = [c for c in result.analysis.calls if by_port[40003] in c.flow_uids]
    assert len(calls) == 1
    members = set(calls[0].flow_uids)
    assert by_port[40001] in members  # the caller's own connection just before: set-up
    assert by_port[40002] not in members  # the neighbour's, even to the relay's address
    assert by_port[40004] not in members  # opened once media flowed: other business
    assert calls[0].app == "messenger"
