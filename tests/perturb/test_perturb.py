"""A bounded run of the damage check (``make perturb`` runs every capture): real
captures that each showed a benign flaw judged as interference before it was excluded —
a SYN-ACK 9.6 s late (cut off: ``head``), a lost SYN-ACK or ServerHello (``loss-*``), a
one-sided tap on SIP (``sent-only``, ``received-only``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.perturb.perturb import PERTURBATIONS, SHARED_CAPTURES, Report, check

SMOKE = ("real-dev/pcap/messenger-hughlindien-call.pcapng",
         "real-dev/pcap/signal-diegrock-audio-samewifi.pcapng",
         "real-dev/pcap/viber-matousp-android.pcapng",
         "ndpi-dev/pcap/sip.pcap",
         "ndpi-dev/pcap_other/sip-phone-to-phone.pcapng")


@pytest.mark.parametrize("name", SMOKE)
def test_benign_damage_adds_no_interference(name: str, tmp_path: Path) -> None:
    path = SHARED_CAPTURES / name
    if not path.is_file():
        pytest.skip(f"reference capture not found at {path} (../shared is absent)")
    report = Report()
    check(path, tmp_path, report)
    assert report.captures == 1 and report.versions >= len(PERTURBATIONS) - 2
    assert not report.new, report.new


def test_the_check_sees_interference_damage_would_add(tmp_path: Path) -> None:
    """The check itself: a censor's damage (every media packet from the peer dropped,
    the rest of the capture answered) makes the media one-way with nothing back, which
    the check must report as new; the benign damage of the same call adds nothing."""
    from tests.perturb.perturb import Perturbation
    from tests.unit.policy.test_verdict_rules import _dns_answered, _pcap, _voice

    me, peer = ("192.168.1.50", 40000), ("203.0.113.9", 50000)
    path = tmp_path / "call.pcap"
    _pcap(path, sorted([*_dns_answered(me[0]), *_voice(me, peer, 0xAAAA),
                        *_voice(peer, me, 0xBBBB)]))
    peer_ip = bytes(int(x) for x in peer[0].split("."))

    def censor(p: list[tuple[float, bytes, int]], rnd: object) -> list[tuple[float, bytes, int]]:
        return [x for x in p if x[1][26:30] != peer_ip]  # IPv4 source address

    report = Report()
    check(path, tmp_path, report, (Perturbation("censor", "a censor", censor),))
    assert report.versions == 1
    assert [(n["scope"], n["verdict"], n["reasons"]) for n in report.new][:1] == [
        ("call", "blocked", ["media-no-return"])], report.new
    benign = Report()
    check(path, tmp_path, benign)
    # (one-sided versions need distinct link-layer addresses: these frames share one)
    assert benign.versions >= len(PERTURBATIONS) - 1 and not benign.new, benign.new
