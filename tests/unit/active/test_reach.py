"""The reachability test on loopback: real DNS, TCP, TLS and STUN exchanges, then judged."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.cli import main
from api.reach_test import ReachError, ReachSpec, parse_target, run_reach_test
from classifier.dpi.stun import MessageClass, Method, parse_stun
from classifier.endpoints import EndpointTable, default_endpoints
from classifier.hostnames import RulesError
from policy.ledger import Ledger
from policy.reach import judge_reachability
from policy.records import Reason, VerdictKind
from policy.rules import load_policy
from probe.active.reach import (
    Endpoint,
    ReachLimits,
    build_binding_request,
    parse_binding_response,
    run_reachability,
)

from .loopback_servers import DnsServer, StunServer, TlsServer, make_ca

RFC5769_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96")
"""RFC 5769 §2.2: sample IPv4 Binding success response (192.0.2.1:32853)."""
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")

NAMES = ["ok.test", "second.test", "sni.test"]


class Lab:
    """Loopback servers: a good TLS server at .1 and .4, one resetting after the hello at
    .2, nothing at .3 and .8 (refused), a STUN server at .1; a DNS server naming them
    (``deadpair.test`` has both refusing addresses; ``mute.test``, .6, is where a test
    puts a listener that never answers)."""

    def __init__(self, tmp: Path) -> None:
        self.ca, cert, key = make_ca(tmp, NAMES)
        self.servers: list[TlsServer | StunServer | DnsServer] = []
        # One port on three addresses: the first server picks it; another process may
        # hold it on a wildcard address, then the next port is tried.
        for _ in range(20):
            first = TlsServer("127.0.0.1", 0, cert, key)
            self.port = first.port
            self.servers = [first]
            try:
                self.servers.append(TlsServer("127.0.0.4", self.port, cert, key))
                self.servers.append(TlsServer("127.0.0.2", self.port, reset_after_hello=True))
                break
            except OSError:
                for server in self.servers:
                    server.close()
        else:
            raise RuntimeError("no port free on 127.0.0.1, .2 and .4 at once")
        self.stun = StunServer("127.0.0.1")
        self.dns = DnsServer({"ok.test": ["127.0.0.1"], "second.test": ["127.0.0.4"],
                              "sni.test": ["127.0.0.2"], "dead.test": ["127.0.0.3"],
                              "dead2.test": ["127.0.0.8"],
                              "deadpair.test": ["127.0.0.3", "127.0.0.8"],
                              "mute.test": ["127.0.0.6"],
                              "stun.test": ["127.0.0.1"]})
        self.other_dns = DnsServer({"ok.test": ["127.0.0.4"], "second.test": ["127.0.0.3"]},
                                   ip="127.0.0.5")
        self.servers += [self.stun, self.dns, self.other_dns]

    def close(self) -> None:
        for s in self.servers:
            s.close()

    def measure(self, app: str, endpoints: list[Endpoint], *, resolvers: list[str] | None = None
                ) -> VerdictKind:
        m = run_reachability(app, endpoints, resolvers=resolvers or [self.dns.address],
                             timeout_s=1.0, system=False,
                             limits=ReachLimits(ca_file=str(self.ca)))
        self.last = judge_reachability(m, load_policy())
        return self.last.verdict.kind


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


# -- STUN bytes ------------------------------------------------------------------------

def test_binding_request_is_an_rfc8489_binding_request() -> None:
    req = build_binding_request(TXID)
    msg = parse_stun(req)
    assert msg.magic_cookie and msg.cls is MessageClass.REQUEST
    assert msg.method == Method.BINDING and msg.transaction_id == TXID
    assert len(req) == 20 + msg.length and msg.length % 4 == 0


def test_rfc5769_response_gives_the_mapped_address() -> None:
    vector = parse_stun(RFC5769_RESPONSE)
    assert vector.cls is MessageClass.SUCCESS_RESPONSE and vector.fingerprint_ok  # as typed
    assert parse_binding_response(RFC5769_RESPONSE, TXID) == (True, "192.0.2.1:32853")
    assert parse_binding_response(RFC5769_RESPONSE, bytes(12)) is None  # another txid
    assert parse_binding_response(RFC5769_RESPONSE[:40], TXID) is None  # cut


# -- the endpoint table ----------------------------------------------------------------

def test_every_app_has_an_entry_and_every_host_is_the_apps() -> None:
    table = default_endpoints()
    assert set(table.apps) == {"whatsapp", "messenger", "teams", "zoom", "signal",
                               "telegram", "viber", "sip"}
    wa = table.apps["whatsapp"].endpoints
    assert [e.host for e in wa if e.group == "endpoints"] == [
        f"e{i}.whatsapp.net" for i in range(1, 17)]
    assert all(e.tcp == (443, 5222) for e in wa if e.group == "endpoints")


def test_a_host_the_classifier_gives_another_app_is_refused() -> None:
    doc = {"version": 1, "updated": "x", "sources": {"s": {}}, "apps": {
        "signal": {"endpoints": [{"group": "web", "host": "web.whatsapp.com", "tls": [443],
                                  "source": "s"}]}}}
    with pytest.raises(RulesError, match="not classified as signal"):
        EndpointTable.from_dict(doc)


# -- measurement and verdicts ----------------------------------------------------------

def test_all_reachable_is_ok_and_every_step_is_recorded(lab: Lab) -> None:
    eps = [Endpoint("ok.test", "web", tls=(lab.port,)),
           Endpoint("stun.test", "relay", stun=(lab.stun.port,))]
    assert lab.measure("teams", eps) is VerdictKind.OK
    keys = lab.last.test_keys
    assert keys["teams_web_status"] == "ok" and keys["teams_relay_status"] == "ok"
    hs = keys["tls_handshakes"][0]
    assert hs["failure"] is None and hs["server_name"] == "ok.test"
    assert len(hs["certificate_sha256"]) == 64
    st = keys["stun"][0]
    assert st["failure"] is None and st["mapped"].startswith("127.0.0.1:")
    assert lab.stun.requests and parse_stun(lab.stun.requests[0]).method == Method.BINDING


def test_reset_after_the_hello_with_tcp_working_is_the_sni_signature(lab: Lab) -> None:
    # One server address (sni.test is 127.0.0.2 only): it accepted the TCP connection, so
    # the reset right after the ClientHello is no server that is down: still blocked.
    eps = [Endpoint("sni.test", "web", tls=(lab.port,)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("teams", eps) is VerdictKind.BLOCKED
    assert lab.last.verdict.reasons == (Reason.TLS_RESET_AFTER_HELLO,)
    keys = lab.last.test_keys
    assert keys["tcp_connect"][0]["failure"] is None
    assert keys["tls_handshakes"][0]["failure"] in ("connection_reset", "eof_error")
    assert keys["tls_blocking"] is True and keys["teams_web_status"] == "blocked"
    (ev,) = lab.last.verdict.evidence
    assert ev.figures["seen"] == {
        "127.0.0.2": "TCP connected, then a reset right after the ClientHello"}
    assert any("TCP connects to the same addresses worked" in e
               for e in ev.figures["excluded"])
    assert "127.0.0.2 accepted the TCP connection, so it is up and its port open" in ev.text
    assert not any("being down" in e for e in ev.figures["not_excluded"])


def test_one_address_silent_after_the_hello_is_degraded(lab: Lab) -> None:
    # TCP is accepted (by the kernel) but nobody ever answers the ClientHello: a server
    # that is overloaded or speaks another protocol on the port does the same.
    mute = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    mute.bind(("127.0.0.6", 0))
    mute.listen(4)
    try:
        eps = [Endpoint("mute.test", "web", tls=(mute.getsockname()[1],)),
               Endpoint("ok.test", "control", tls=(lab.port,))]
        assert lab.measure("teams", eps) is VerdictKind.DEGRADED
        assert lab.last.verdict.reasons == (Reason.TLS_RESET_AFTER_HELLO,)
        assert lab.last.test_keys["tls_handshakes"][0]["failure"] == "generic_timeout_error"
        assert lab.last.test_keys["tls_blocking"] is False
        (ev,) = lab.last.verdict.evidence
        assert "no answer to the ClientHello" in ev.text and "127.0.0.6" in ev.text
    finally:
        mute.close()


def test_one_endpoint_of_a_group_answering_is_not_blocked(lab: Lab) -> None:
    eps = [Endpoint("dead.test", "endpoints", tcp=(lab.port,)),
           Endpoint("ok.test", "endpoints", tcp=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.OK
    assert lab.last.test_keys["whatsapp_endpoints_status"] == "ok"
    assert lab.last.test_keys["tcp_connect"][0]["failure"] == "connection_refused"


def test_nothing_working_without_a_control_is_unknown_and_with_a_dead_one_failed(
        lab: Lab) -> None:
    eps = [Endpoint("dead.test", "endpoints", tcp=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.UNKNOWN
    assert lab.last.verdict.reasons == (Reason.NO_CONTROL,)
    eps.append(Endpoint("127.0.0.3", "control", tcp=(lab.port,)))
    assert lab.measure("whatsapp", eps) is VerdictKind.FAILED
    assert lab.last.verdict.reasons == (Reason.CONTROL_FAILED,)
    assert lab.last.test_keys["network"] == "down"


def test_one_address_refused_while_the_control_answers_is_degraded(lab: Lab) -> None:
    # A server that is down, or a wrong port, refuses the same way: no evidence of a block.
    eps = [Endpoint("dead.test", "endpoints", tcp=(lab.port, lab.port + 1)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.DEGRADED
    assert lab.last.verdict.reasons == (Reason.TCP_RESET,)
    keys = lab.last.test_keys
    assert keys["whatsapp_endpoints_status"] == "degraded" and keys["tcp_blocking"] is False
    (ev,) = lab.last.verdict.evidence
    assert ev.figures["attempts"] == 2
    assert ev.figures["seen"] == {"127.0.0.3": "TCP connects refused (RST)"}
    assert "cannot be told from that server being down or the port closed" in ev.text
    assert "TCP connects refused (RST)" in ev.text


def test_two_addresses_refused_while_the_control_answers_is_blocked(lab: Lab) -> None:
    eps = [Endpoint("deadpair.test", "endpoints", tcp=(lab.port, lab.port + 1)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.BLOCKED
    assert lab.last.verdict.reasons == (Reason.TCP_RESET,)
    assert lab.last.test_keys["tcp_blocking"] is True
    (ev,) = lab.last.verdict.evidence
    assert ev.figures["attempts"] == 4
    assert ev.figures["seen"] == {"127.0.0.3": "TCP connects refused (RST)",
                                  "127.0.0.8": "TCP connects refused (RST)"}
    assert any("2 server addresses" in e for e in ev.figures["excluded"])


def test_two_addresses_failing_in_different_ways_is_degraded(lab: Lab) -> None:
    mute = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    mute.bind(("127.0.0.6", 0))
    mute.listen(4)
    try:
        port = mute.getsockname()[1]
        eps = [Endpoint("mute.test", "web", tls=(port,)),
               Endpoint("dead.test", "web", tls=(port,)),
               Endpoint("ok.test", "control", tls=(lab.port,))]
        assert lab.measure("teams", eps) is VerdictKind.DEGRADED
        (ev,) = lab.last.verdict.evidence
        assert set(ev.figures["seen"]) == {"127.0.0.3", "127.0.0.6"}
        assert "not the same way" in ev.text
    finally:
        mute.close()


def test_nxdomain_for_the_apps_names_while_others_resolve_is_dns_blocking(lab: Lab) -> None:
    eps = [Endpoint("gone.test", "web", tls=(lab.port,)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("viber", eps) is VerdictKind.BLOCKED
    assert lab.last.verdict.reasons == (Reason.DNS_FAILURE,)
    assert lab.last.test_keys["queries"][0]["failure"] == "dns_nxdomain_error"
    assert lab.last.test_keys["dns_blocking"] is True


def test_a_different_answer_that_works_is_not_a_block(lab: Lab) -> None:
    eps = [Endpoint("ok.test", "web", tls=(lab.port,))]
    kind = lab.measure("zoom", eps, resolvers=[lab.dns.address, lab.other_dns.address])
    assert kind is VerdictKind.OK
    dns = lab.last.test_keys["dns_consistency"]
    assert dns["status"] == "inconsistent" and dns["inconsistent"] == ["ok.test"]


def test_a_different_answer_that_cannot_be_reached_is_degraded_not_blocked(lab: Lab) -> None:
    eps = [Endpoint("second.test", "web", tls=(lab.port,))]
    kind = lab.measure("zoom", eps, resolvers=[lab.dns.address, lab.other_dns.address])
    assert kind is VerdictKind.DEGRADED
    assert lab.last.verdict.reasons == (Reason.DNS_INCONSISTENT,)


def test_stun_unanswered_needs_a_stun_control_to_be_blocked(lab: Lab) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.6", 0))
    try:
        eps = [Endpoint("127.0.0.6", "relay", stun=(silent.getsockname()[1],)),
               Endpoint("ok.test", "web", tls=(lab.port,))]
        assert lab.measure("teams", eps) is VerdictKind.DEGRADED
        assert lab.last.verdict.reasons == (Reason.STUN_UNANSWERED,)
        eps.append(Endpoint("stun.test", "control", stun=(lab.stun.port,)))
        assert lab.measure("teams", eps) is VerdictKind.BLOCKED
        assert lab.last.test_keys["stun_blocking"] is True
    finally:
        silent.close()


def test_a_wrong_certificate_is_not_called_blocked(lab: Lab, tmp_path: Path) -> None:
    # Verified with another CA: every server's certificate is of an unknown authority.
    eps = [Endpoint("ok.test", "web", tls=(lab.port,)),
           Endpoint("second.test", "control", tls=(lab.port,), verify=False)]
    (tmp_path / "other").mkdir()
    other_ca, _, _ = make_ca(tmp_path / "other", ["x.test"])
    m = run_reachability("zoom", eps, resolvers=[lab.dns.address], timeout_s=1.0,
                         system=False, limits=ReachLimits(ca_file=str(other_ca)))
    r = judge_reachability(m, load_policy())
    assert r.verdict.kind is VerdictKind.DEGRADED
    assert r.verdict.reasons == (Reason.TLS_CERTIFICATE,)
    assert m.tls_handshakes[0].failure == "ssl_unknown_authority"
    assert m.tls_handshakes[1].failure is None  # the control, unverified


# -- the api and the CLI ---------------------------------------------------------------

def test_parse_target() -> None:
    assert parse_target("proxy.example:5061", app="sip").tls == (5061,)
    assert parse_target("proxy.example", app="sip").tcp == (5060,)
    assert parse_target("stun:10.0.0.1", app="zoom").stun == (3478,)
    assert parse_target("tcp:[2001:db8::1]:443", app="zoom").host == "2001:db8::1"
    with pytest.raises(ReachError):
        parse_target("tls:10.0.0.1", app="zoom")
    with pytest.raises(ReachError):
        parse_target("a.example:99999", app="zoom")


def test_sip_without_a_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReachError, match="--target"):
        run_reach_test(ReachSpec("sip"), tmp_path, policy=load_policy(), capture=False)


def test_cli_writes_the_result_and_a_ledger_entry(lab: Lab, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out, ledger = tmp_path / "out", tmp_path / "l.db"
    code = main(["test", "reachability", "sip", "--only-targets", "--no-system-resolver",
                 "--resolver", lab.dns.address, "--target", f"tls:ok.test:{lab.port}",
                 "--control", f"tcp:second.test:{lab.port}", "--ca-file", str(lab.ca),
                 "--timeout", "1", "--out", str(out), "--ledger", str(ledger),
                 "--no-capture", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"] == "ok" and doc["kind"] == "reachability"
    assert json.loads((out / f"{doc['uid']}.json").read_text())["uid"] == doc["uid"]
    with Ledger(ledger, clock=time.time) as led:
        entries = list(led.entries())
    assert [e.subject_uid for e in entries] == [doc["uid"]]
    assert entries[0].verdict == "OK"


def test_the_system_resolver_is_asked_by_default(lab: Lab) -> None:
    # localhost comes from the system's resolver (/etc/hosts), never from the lab's.
    m = run_reachability("sip", [Endpoint("localhost", "target", tls=(lab.port,))],
                         timeout_s=2.0)
    assert m.resolvers == ("system",)
    assert m.queries[0].resolver == "system" and "127.0.0.1" in m.queries[0].answers
    assert any(c.ip == "127.0.0.1" and c.failure is None for c in m.tcp_connect)


def test_the_total_cap_stops_the_test_and_says_so(lab: Lab) -> None:
    eps = [Endpoint("ok.test", "web", tls=(lab.port,)),
           Endpoint("second.test", "web", tls=(lab.port,))]
    m = run_reachability("zoom", eps, resolvers=[lab.dns.address], system=False,
                         limits=ReachLimits(total_s=0.0))
    assert [q.failure for q in m.queries] == ["generic_timeout_error"] * 2
    assert not m.tcp_connect and m.duration_s < 1
    assert judge_reachability(m, load_policy()).verdict.kind is VerdictKind.UNKNOWN


def test_a_way_failing_with_nothing_outside_its_group_answering_is_unknown(lab: Lab) -> None:
    # The endpoint's STUN answers but its TCP is refused; nothing else was tried: the
    # refusal may be the server's, so it is not called blocked (nor ok).
    eps = [Endpoint("stun.test", "relay", tcp=(lab.port + 1,), stun=(lab.stun.port,))]
    assert lab.measure("teams", eps) is VerdictKind.UNKNOWN
    assert lab.last.verdict.reasons == (Reason.TCP_RESET,)


def test_endpoints_on_one_address_are_one_server(lab: Lab) -> None:
    # A group of one failing is also its one server being down: the evidence says so
    # instead of listing "one server down" among what it excludes. Two endpoints on the
    # same address are still that one server; a second address refusing too is a block.
    eps = [Endpoint("dead.test", "endpoints", tcp=(lab.port,)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.DEGRADED
    figures = lab.last.verdict.evidence[0].figures
    assert not any("one server down" in e for e in figures["excluded"])
    assert any("127.0.0.3" in e and "being down" in e for e in figures["not_excluded"])
    eps.insert(1, Endpoint("127.0.0.3", "endpoints", tcp=(lab.port,)))
    assert lab.measure("whatsapp", eps) is VerdictKind.DEGRADED
    assert lab.last.verdict.evidence[0].figures["seen"] == {
        "127.0.0.3": "TCP connects refused (RST)"}
    eps.insert(1, Endpoint("dead2.test", "endpoints", tcp=(lab.port,)))
    assert lab.measure("whatsapp", eps) is VerdictKind.BLOCKED
    figures = lab.last.verdict.evidence[0].figures
    assert any("2 server addresses" in e and "127.0.0.3, 127.0.0.8" in e
               for e in figures["excluded"])
    assert not any("all 3 endpoints" in e for e in figures["excluded"])


def test_localhost_resolving_does_not_show_the_resolvers_are_up(lab: Lab) -> None:
    # localhost is answered from the hosts file, not by a resolver: an app's name failing
    # to resolve beside it is no DNS block.
    eps = [Endpoint("gone.test", "web", tls=(lab.port,)),
           Endpoint("localhost", "control", tcp=(lab.port,))]
    m = run_reachability("viber", eps, resolvers=[lab.dns.address], timeout_s=1.0,
                         limits=ReachLimits(ca_file=str(lab.ca)))
    assert not any(q.answers for q in m.queries if q.hostname == "gone.test")
    assert any(q.answers for q in m.queries if q.hostname == "localhost")
    result = judge_reachability(m, load_policy())
    assert result.verdict.kind is VerdictKind.UNKNOWN
    assert result.test_keys["dns_blocking"] is False


def test_a_control_on_a_host_of_the_apps_is_refused(tmp_path: Path) -> None:
    # Each host is measured once: such a control would join the target's group and vanish.
    spec = ReachSpec("signal", builtin=False,
                     targets=(parse_target("tls:a.test:4431", app="signal"),),
                     controls=(parse_target("tcp:A.test.:4432", app="signal",
                                            group="control"),))
    with pytest.raises(ReachError, match=r"--control a\.test"):
        run_reach_test(spec, tmp_path, policy=load_policy(), capture=False)


def test_a_reachability_entry_is_judged_again_by_verify(lab: Lab, tmp_path: Path) -> None:
    # The result keeps its measurement whole, so the ledger's re-judgement can rebuild it
    # (it used to find no measurement and call the capture "not given").
    from api.active import entry_capture_sha256, record_test, rejudge
    from api.evidence import verify_ledger
    from policy.records import TestKind

    eps = [Endpoint("deadpair.test", "endpoints", tcp=(lab.port,)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.BLOCKED
    result = lab.last
    assert rejudge(TestKind.REACHABILITY, result.test_keys, load_policy()) == result.verdict
    with Ledger(tmp_path / "ledger.db", clock=time.time) as ledger:
        record_test(result, ledger=ledger)
        report = verify_ledger(ledger)
    assert report.ok
    assert report.captures_checked == (entry_capture_sha256(result),)
    assert report.captures_unavailable == ()


def test_a_refused_connect_before_a_handshake_is_not_called_a_failed_handshake(
        lab: Lab) -> None:
    eps = [Endpoint("deadpair.test", "web", tls=(lab.port,)),
           Endpoint("ok.test", "control", tls=(lab.port,))]
    assert lab.measure("whatsapp", eps) is VerdictKind.BLOCKED
    (ev,) = lab.last.verdict.evidence
    assert ev.reason is Reason.TCP_RESET
    assert "No TCP connect for a TLS handshake" in ev.text and "no handshake" in ev.text
    assert "Every TLS handshake" not in ev.text
