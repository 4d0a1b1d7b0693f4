"""Hostname rules: label-boundary matching, precedence, the packaged table, real names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from classifier import hostnames
from classifier.dpi import dns, quic, tls
from classifier.hostnames import APPS, HostRules, RulesError, Service, match_host
from classifier.owners import parse_address

VECTORS = Path(__file__).resolve().parents[2] / "vectors" / "dpi"


def vec(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def table(*rules: tuple[str, str, str | None, str]) -> HostRules:
    doc = {"version": 1, "updated": "2026-01-01", "sources": {"t": {"title": "test"}},
           "rules": [{"host": h, "match": m, "app": a, "owner": "o", "service": s, "source": "t"}
                     for h, m, a, s in rules]}
    return HostRules.from_dict(doc)


PRECEDENCE = table(
    ("example.com", "suffix", "zoom", "web"),
    ("relay.example.com", "suffix", "zoom", "relay"),
    ("relay.example.com", "exact", "zoom", "call-setup"),
    ("zoom*zc.example.com", "exact", "zoom", "call-setup"),
    ("*.*.example.com", "exact", "zoom", "media"),
)


@pytest.mark.parametrize(("name", "service", "rule"), [
    ("example.com", Service.WEB, "suffix:example.com"),
    ("www.example.com", Service.WEB, "suffix:example.com"),
    ("relay.example.com", Service.CALL_SETUP, "exact:relay.example.com"),  # exact beats suffix
    ("eu1.relay.example.com", Service.RELAY, "suffix:relay.example.com"),  # more labels win
    ("a.eu1.relay.example.com", Service.RELAY, "suffix:relay.example.com"),
    ("zoomfr84zc.example.com", Service.CALL_SETUP, "exact:zoom*zc.example.com"),
    ("zoomzc.example.com", Service.CALL_SETUP, "exact:zoom*zc.example.com"),
    ("a.b.example.com", Service.MEDIA, "exact:*.*.example.com"),
    ("a.b.c.example.com", Service.WEB, "suffix:example.com"),  # '*' never spans a dot
    ("zoomfr.84zc.example.com", Service.MEDIA, "exact:*.*.example.com"),
])
def test_precedence(name: str, service: Service, rule: str) -> None:
    found = PRECEDENCE.match(name)
    assert found is not None
    assert (found.service, found.rule) == (service, rule)


@pytest.mark.parametrize("name", [
    "notexample.com", "example.com.evil.net", "example.co", "com", "xexample.com", "",
    "exa mple.com", "a..example.com", ".", "x" * 64 + ".example.com",
])
def test_label_boundaries_and_junk(name: str) -> None:
    assert PRECEDENCE.match(name) is None


def test_case_and_trailing_dot() -> None:
    for name in ("RELAY.Example.COM", "relay.example.com.", "Relay.Example.Com."):
        found = PRECEDENCE.match(name)
        assert found is not None and found.rule == "exact:relay.example.com"
    assert hostnames.normalize_name("A.B.") == "a.b"
    assert hostnames.normalize_name("a.b..") is None


def test_candidates_are_ordered_most_specific_first() -> None:
    got = [r.text for r in PRECEDENCE.candidates("relay.example.com")]
    assert got == ["exact:relay.example.com", "suffix:relay.example.com", "suffix:example.com"]


@pytest.mark.parametrize(("bad", "message"), [
    ({"host": "a.com", "match": "prefix", "app": None, "owner": "o", "service": "web",
      "source": "t"}, "prefix"),
    ({"host": "a.com", "match": "exact", "app": "skype", "owner": "o", "service": "web",
      "source": "t"}, "unknown app"),
    ({"host": "a.com", "match": "exact", "app": None, "owner": "o", "service": "any",
      "source": "t"}, "address blocks"),
    ({"host": "a..com", "match": "exact", "app": None, "owner": "o", "service": "web",
      "source": "t"}, "bad host"),
    ({"host": "*.*", "match": "exact", "app": None, "owner": "o", "service": "web",
      "source": "t"}, "no literal"),
    ({"host": "a.com", "match": "exact", "app": None, "owner": "o", "service": "web",
      "source": "nope"}, "sources table"),
    ({"host": "a.com", "match": "exact", "owner": "o", "service": "web", "source": "t"}, "'app'"),
])
def test_bad_rules_are_rejected(bad: dict[str, Any], message: str) -> None:
    doc = {"version": 1, "updated": "2026-01-01", "sources": {"t": {}}, "rules": [bad]}
    with pytest.raises(RulesError, match=message):
        HostRules.from_dict(doc)


def test_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text("{not json")
    with pytest.raises(RulesError, match="not JSON"):
        HostRules.from_file(path)
    path.write_text("[]")
    with pytest.raises(RulesError, match="object"):
        HostRules.from_file(path)
    path.write_text(json.dumps({"version": 1, "rules": []}))
    with pytest.raises(RulesError, match="updated"):
        HostRules.from_file(path)


# --- the packaged table ---------------------------------------------------------------------

def test_packaged_table_is_versioned_and_sourced() -> None:
    rules = hostnames.default_rules()
    assert rules.version >= 1 and len(rules.updated) == 10
    for key, src in rules.sources.items():
        assert src.get("title") and src.get("url") and src.get("retrieved"), key
    used = {r.source for r in rules.rules}
    assert used == set(rules.sources)  # no dead source entries
    covered = {r.app for r in rules.rules if r.app is not None}
    assert covered == APPS - {"sip"}  # SIP is a protocol: no vendor host names


@pytest.mark.parametrize(("name", "app", "service"), [
    ("g.whatsapp.net", "whatsapp", Service.MESSAGING),
    ("mmg.whatsapp.net", "whatsapp", Service.MEDIA),
    ("media-frt3-1.cdn.whatsapp.net", "whatsapp", Service.MEDIA),
    ("web.whatsapp.com", "whatsapp", Service.WEB),
    ("notwhatsapp.net", None, None),
    ("whatsapp.net.example.org", None, None),
    ("edge-mqtt.facebook.com", "messenger", Service.MESSAGING),
    ("www.messenger.com", "messenger", Service.WEB),
    ("m.me", "messenger", Service.WEB),
    ("scontent.xx.fbcdn.net", "facebook", Service.MEDIA),
    ("cdn.fbsbx.com", "facebook", Service.MEDIA),
    ("www.facebook.com", "facebook", Service.WEB),
    ("teams.microsoft.com", "teams", Service.WEB),
    ("eu1.relay.teams.microsoft.com", "teams", Service.RELAY),
    ("go.trouter.skype.com", "teams", Service.PUSH),
    ("abc.teams.cloudapp.net", "teams", Service.CALL_SETUP),
    ("webdir.online.lync.com", "teams", Service.CALL_SETUP),
    ("statics.teams.cdn.office.net", None, None),
    ("x.mstea.ms", "teams", Service.WEB),
    ("zoomsjc144mmr.zoom.us", "zoom", Service.RELAY),
    ("zoomam104zc.zoom.us", "zoom", Service.CALL_SETUP),
    ("us04web.zoom.us", "zoom", Service.WEB),
    ("rr1---sn-4g5e6nzz.googlevideo.com", "youtube", Service.STREAMING),
    ("ipv4-c001-fra001-ix.1.oca.nflxvideo.net", "netflix", Service.STREAMING),
    ("meet.google.com", "meet", Service.WEB),
    ("rotterdam1234.discord.media", "discord", Service.RELAY),
    ("sfu.voip.signal.org", "signal", Service.RELAY),
    ("turn3.voip.signal.org", "signal", Service.RELAY),
    ("chat.signal.org", "signal", Service.MESSAGING),
    ("identity.ess.apple.com", "facetime", Service.CALL_SETUP),
    ("1-courier.push.apple.com", None, Service.PUSH),
    ("stun.l.google.com", None, Service.RELAY),
    ("feelinsonice-hrd.appspot.com", "snapchat", Service.MESSAGING),  # Snapchat's API host
    ("other-app.appspot.com", None, None),  # Google App Engine hosts everyone
    ("relay1.addlive.io", "snapchat", Service.RELAY),
    ("dl-obs.official.line.naver.jp", "line", Service.MESSAGING),
    ("www.naver.jp", None, None),
])
def test_packaged_names(name: str, app: str | None, service: Service | None) -> None:
    found = match_host(name)
    if service is None:
        assert found is None
        return
    assert found is not None
    assert (found.app, found.service) == (app, service)


# --- names taken from real bytes -----------------------------------------------------------

def test_dns_question_from_capture() -> None:
    msg = dns.parse_dns(vec("dns_f4.bin"))  # dns.pcap frame 4: A? e7.whatsapp.net
    found = match_host(msg.questions[0].name)
    assert found is not None
    assert (found.app, found.owner, found.service) == ("whatsapp", "meta", Service.MESSAGING)


def test_dns_cname_chain_from_capture() -> None:
    msg = dns.parse_dns(vec("teams_f333.bin"))  # teams.pcap frame 333
    names = {name for name, _ in dns.address_names(msg)}
    assert "config.teams.microsoft.com" in names
    teams = [n for n in names if (m := match_host(n)) is not None and m.app == "teams"]
    assert "config.teams.microsoft.com" in teams


def test_quic_sni_from_capture() -> None:
    initial = quic.inspect_client_initials([vec("quic-mvfst-22_f1.bin")])
    sni = initial.client_hello.sni
    assert sni == "graph.facebook.com"
    found = match_host(sni)
    assert found is not None and (found.app, found.owner) == ("facebook", "meta")


def test_gquic_sni_from_capture() -> None:
    hello = quic.parse_gquic_packet(vec("youtube_quic_f11.bin"))
    assert hello.sni is not None
    found = match_host(hello.sni)  # yt3.ggpht.com
    assert found is not None and (found.app, found.service) == ("youtube", Service.MEDIA)


def test_tls_sni_of_unrelated_site() -> None:
    hello = tls.parse_tls_client_hello(vec("443-curl_f4.bin"))
    assert hello.sni == "www.ntop.org"
    assert match_host(hello.sni) is None


# nDPI app label -> marsad app, for the reference captures' host names.
NDPI_APPS = {"Zoom": "zoom", "Teams": "teams", "Skype_Teams": "teams", "WhatsApp": "whatsapp",
             "WhatsAppFiles": "whatsapp", "Signal": "signal", "Line": "line", "NetFlix": "netflix",
             "YouTube": "youtube", "Facebook": "facebook", "Webex": "webex",
             "Discord": "discord", "GoogleCall": "meet"}
# Names nDPI attributes to Teams by its own host list that marsad leaves out on purpose:
# Microsoft Stream and HockeyApp (app telemetry) are not Teams services.
NOT_APP_NAMES = {"api.microsoftstream.com", "euno-1.api.microsoftstream.com", "gate.hockeyapp.net"}


def test_reference_capture_names(groundtruth: dict[str, Any]) -> None:
    checked = 0
    for capture, entry in groundtruth.items():
        if capture == "_meta":
            continue
        for flow in entry["flows"]:
            app = NDPI_APPS.get(flow.get("app", ""))
            for key, name in flow.items():
                if (not key.startswith("hostname") or app is None or name in NOT_APP_NAMES
                        or parse_address(name) is not None):  # an address, not a name
                    continue
                found = match_host(name)
                assert found is not None, (capture, name)
                assert found.app == app, (capture, name, found)
                checked += 1
    assert checked >= 30
