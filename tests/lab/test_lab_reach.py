"""The reachability test in the lab: real DNS, TLS and STUN servers across a censoring ISP.

The relay namespace holds a DNS server answering every name of the endpoint table with
lab addresses (and a second one that answers Zoom's name with another lab address), TLS
servers with a lab CA (passed with ``--ca-file``) and STUN servers. ``marsad test
reachability`` runs in the caller namespace, its own capture included; the ISP namespace
is clean, resets TLS by SNI, drops the app's STUN, or drops everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from classifier.endpoints import default_endpoints
from tests.unit.active.loopback_servers import make_ca

from .netlab import RELAY_IF, NetLab

pytestmark = [pytest.mark.lab, pytest.mark.usefixtures("lab_available")]

ROOT = Path(__file__).resolve().parents[2]
DNS_IP, DNS2_IP = "10.77.2.2", "10.77.2.3"
APP_IP, ALT_IP, RELAY_IP, CONTROL_IP, STUN_CONTROL_IP = (
    "10.77.2.10", "10.77.2.11", "10.77.2.12", "10.77.2.20", "10.77.2.21")
RELAY_NAMES = {"worldaz.tr.teams.microsoft.com", "stun.fbsbx.com"}
EXTRA = {"control.lab": CONTROL_IP, "stun-control.lab": STUN_CONTROL_IP, "sip.lab": APP_IP}


def _table() -> dict[str, list[str]]:
    names: dict[str, list[str]] = {}
    for entry in default_endpoints().apps.values():
        for ep in entry.endpoints:
            if not ep.is_address:
                names[ep.host] = [RELAY_IP if ep.host in RELAY_NAMES else APP_IP]
    names.update({k: [v] for k, v in EXTRA.items()})
    return names


class ReachLab:
    def __init__(self, lab: NetLab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.ca, cert, key = make_ca(tmp, [*_table(), "x.lab"])
        for ip in (APP_IP, ALT_IP, RELAY_IP, CONTROL_IP, STUN_CONTROL_IP):
            lab.run(lab.relay, ["ip", "addr", "add", f"{ip}/24", "dev", RELAY_IF])
        table = _table()
        # The second resolver sends Zoom to another working server (a CDN's answer) and
        # Viber to an address where nothing listens (a resolver's lie).
        rewritten = dict(table, **{"zoom.us": [ALT_IP], "viber.com": [DNS2_IP]})
        cfg = {"cert": str(cert), "key": str(key),
               "dns": [{"ip": DNS_IP, "port": 53, "table": table},
                       {"ip": DNS2_IP, "port": 53, "table": rewritten}],
               "tls": [{"ip": APP_IP, "port": p} for p in (443, 5222, 5060)]
               + [{"ip": ip, "port": 443} for ip in (ALT_IP, RELAY_IP, CONTROL_IP)],
               "stun": [{"ip": RELAY_IP, "port": 3478}, {"ip": STUN_CONTROL_IP, "port": 3478}]}
        (tmp / "servers.json").write_text(json.dumps(cfg))
        lab.spawn(lab.relay, [sys.executable, "-m", "tests.lab.reach_servers",
                              str(tmp / "servers.json")], name="reach-servers", cwd=ROOT)
        lab.wait_for_udp_listener(lab.relay, 53)
        lab.wait_for_udp_listener(lab.relay, 3478)
        lab.wait_for_tcp_listener(lab.relay, 443)
        lab.wait_for_tcp_listener(lab.relay, 5060)
        self.ledger = tmp / "ledger.db"

    def test(self, app: str, *args: str, resolvers: tuple[str, ...] = (DNS_IP,)
             ) -> dict[str, Any]:
        out = self.tmp / "out"
        argv = [sys.executable, "-m", "api.cli", "test", "reachability", app,
                "--no-system-resolver", "--ca-file", str(self.ca), "--timeout", "1",
                "--out", str(out), "--ledger", str(self.ledger), "--json", *args]
        for r in resolvers:
            argv += ["--resolver", r]
        res = self.lab.run(self.lab.caller, argv, timeout=90, cwd=ROOT)
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc


@pytest.fixture(scope="module")
def reach(lab_available: None, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[ReachLab]:
    """One lab for the module's scenarios (the servers stay; each test sets its rules and
    flushes them)."""
    if shutil.which("tcpdump") is None:
        pytest.skip("tcpdump is not installed")
    tmp = tmp_path_factory.mktemp("reach-lab")
    with NetLab(tmp / "lab", prefix=f"mlab{os.getpid()}-reach-") as lab:
        yield ReachLab(lab, tmp)


CONTROL = ("--control", "tls:control.lab")
ARGS: dict[str, tuple[str, ...]] = {
    "whatsapp": CONTROL, "messenger": CONTROL, "teams": CONTROL, "zoom": CONTROL,
    "signal": CONTROL, "viber": CONTROL,
    # Telegram's data centres are addresses outside the lab: its lab target is one.
    "telegram": ("--only-targets", "--target", f"tcp:{APP_IP}:443", "--target",
                 "tls:web.telegram.org", *CONTROL),
    "sip": ("--target", "tcp:sip.lab:5060", *CONTROL),
}


def test_clean_path_every_app_ok_and_evidence_kept(reach: ReachLab) -> None:
    start = time.monotonic()
    for app, args in ARGS.items():
        doc = reach.test(app, *args)
        assert doc["verdict"] == "ok", (app, doc["reasons"], doc["evidence"])
        assert doc["test_keys"]["network"] == "up"
        assert all(v == "ok" for k, v in doc["test_keys"].items()
                   if k.startswith(f"{app}_") and k.endswith("_status")), app
        assert doc["capture"] and Path(doc["capture"]).stat().st_size > 24, (
            app, doc["test_keys"]["capture"])
    assert time.monotonic() - start < 60


def test_tls_reset_by_sni_is_blocked_with_the_signature(reach: ReachLab) -> None:
    reach.lab.iptables("-A", "FORWARD", "-p", "tcp", "--dport", "443", "-m", "string",
                       "--algo", "bm", "--string", "teams.microsoft.com", "-j", "REJECT",
                       "--reject-with", "tcp-reset")
    try:
        doc = reach.test("teams", *CONTROL)
    finally:
        reach.lab.iptables("-F", "FORWARD")
    keys = doc["test_keys"]
    assert doc["verdict"] == "blocked" and doc["reasons"] == ["tls-reset-after-hello"]
    assert keys["teams_web_status"] == "blocked" and keys["tls_blocking"] is True
    assert all(c["failure"] is None for c in keys["tcp_connect"])  # TCP itself worked
    assert {h["failure"] for h in keys["tls_handshakes"] if h["hostname"] != "control.lab"} \
        <= {"connection_reset", "eof_error"}
    assert keys["stun_blocking"] is False  # the relay's STUN still answered
    # The test's own capture, read by marsad's passive analysis, shows the same reset.
    analysed = subprocess.run([sys.executable, "-m", "api.cli", "analyze", "--json",
                               doc["capture"]], cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=True)
    calls = json.loads(analysed.stdout)["calls"]
    assert any(c["verdict"] == "blocked" and "tls-reset-after-hello" in c["reasons"]
               for c in calls), calls


def test_app_stun_dropped_is_blocked_when_a_stun_control_answers(reach: ReachLab) -> None:
    reach.lab.iptables("-A", "FORWARD", "-p", "udp", "-d", RELAY_IP, "-m", "u32", "--u32",
                       "0>>22&0x3C@8>>16=0x0001&&0>>22&0x3C@12=0x2112A442", "-j", "DROP")
    try:
        doc = reach.test("messenger", *CONTROL, "--control", "stun:stun-control.lab")
    finally:
        reach.lab.iptables("-F", "FORWARD")
    keys = doc["test_keys"]
    assert doc["verdict"] == "blocked" and doc["reasons"] == ["stun-unanswered"]
    assert keys["messenger_stun_status"] == "blocked"
    assert keys["messenger_endpoints_status"] == "ok"


def test_rewritten_dns_answer_is_recorded_not_blocked(reach: ReachLab) -> None:
    doc = reach.test("zoom", *CONTROL, resolvers=(DNS_IP, DNS2_IP))
    keys = doc["test_keys"]
    assert doc["verdict"] == "ok", doc["evidence"]
    assert keys["dns_consistency"]["status"] == "inconsistent"
    assert keys["dns_consistency"]["answers"]["zoom.us"] == {
        DNS_IP: [APP_IP], DNS2_IP: [ALT_IP]}


def test_dns_answer_leading_nowhere_is_degraded_not_blocked(reach: ReachLab) -> None:
    doc = reach.test("viber", *CONTROL, resolvers=(DNS_IP, DNS2_IP))
    assert doc["verdict"] == "degraded" and doc["reasons"] == ["dns-inconsistent"]
    assert doc["test_keys"]["viber_web_status"] == "ok"
    figures = doc["evidence"][0]["figures"]
    assert figures["unreachable_from"] == [DNS2_IP] and figures["reachable_from"] == [DNS_IP]


def test_everything_down_is_failed_not_blocked(reach: ReachLab) -> None:
    reach.lab.iptables("-A", "FORWARD", "-j", "DROP")
    try:
        doc = reach.test("viber", *CONTROL)
    finally:
        reach.lab.iptables("-F", "FORWARD")
    assert doc["verdict"] == "failed" and doc["reasons"] == ["control-failed"]
    assert doc["test_keys"]["network"] == "down"
