"""Observations cross between processes by pickle: they must come back equal."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from classifier.engine import Classifier, Observation
from classifier.records import Facts, RtcpReport, SipSummary, StunSummary
from classifier.stats import MediaGuess
from probe import FlowReader

CAPTURES = Path(__file__).resolve().parents[3] / "captures"


@pytest.mark.parametrize("name", ["sample-call.pcap", "sample-sip.pcap", "sample-blocked.pcap"])
def test_observations_of_real_flows_round_trip(name: str) -> None:
    cl = Classifier()
    obs = [cl.observe(r) for r in FlowReader(CAPTURES / name, workers=1)]
    assert obs
    for protocol in (5, pickle.DEFAULT_PROTOCOL, 2):
        back = pickle.loads(pickle.dumps(obs, protocol=protocol))
        assert back == obs
        assert all(type(a.facts) is Facts and type(a.guess) is MediaGuess for a in back)


def test_nested_summaries_round_trip() -> None:
    cl = Classifier()
    obs = [cl.observe(r) for name in ("sample-call.pcap", "sample-sip.pcap")
           for r in FlowReader(CAPTURES / name, workers=1)]
    stun = [o.facts.stun for o in obs if o.facts.stun is not None]
    sip = [s for o in obs for s in o.facts.sip]
    assert stun and sip  # the nested summaries are exercised
    assert pickle.loads(pickle.dumps((stun, sip), protocol=5)) == (stun, sip)
    facts = Facts("Cabc", protocol="sip", sni="a.example", alpn=("h2", "http/1.1"),
                  dns_answers=(("a.example", "192.0.2.1"),), notes=("n",))
    ob = Observation(facts, MediaGuess(True, None, False, 0.5, "because"))
    assert pickle.loads(pickle.dumps(ob, protocol=5)) == ob
    for cls in (Observation, Facts, MediaGuess, StunSummary, SipSummary, RtcpReport):
        assert "__reduce__" in vars(cls)
