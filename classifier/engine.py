"""The classification engine: facts and statistics in, one Classification per flow out.

Evidence is weighed in a fixed order, strongest first, and the first rule that
names an app wins; its ``method`` and ``reason`` say which one it was:

1. the flow's own bytes: app-specific STUN message types and attributes,
   STUN REALM/SOFTWARE, app framings (Zoom, Discord, WhatsApp, Telegram,
   Viber), SIP;
2. names: TLS SNI, QUIC SNI, plain-HTTP Host, DNS questions (for DNS flows)
   and, for other flows, the DNS answers seen earlier for the server address;
3. cross-flow (``call-peer``): endpoints learned from STUN mapped/peer/relayed
   addresses and SDP, and the local socket of a call flow, label later flows
   of the same call;
4. the address owner (published IP ranges of the app's operator);
5. statistics: packet sizes and timing say whether a flow is real-time media
   (voice/video/screen) or buffered streaming.

Category and media are settled after the app: media flows of a call app are
voice/video/screen (statistics or RTP decide which), its STUN/TURN/DTLS and
relay flows are call-setup, and so on.

The engine keeps state across flows (the DNS map, call endpoints), so it is
fed flows in capture order: :meth:`Classifier.classify_all` sorts them first
and makes two passes so that a later flow's evidence can still name an
earlier one of the same call.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from classifier.dpi.framings import ZoomMediaKind
from classifier.hostnames import HostMatch, Service, match_host
from classifier.inspect import inspect_flow
from classifier.owners import Owner
from classifier.owners import lookup as _owner_lookup
from classifier.records import (
    CALL_CATEGORIES,
    Category,
    Classification,
    Facts,
    Method,
)
from classifier.stats import MediaGuess, media_guess
from probe.addresses import host_key, is_local_class, nat64_embedded, orig_is_local
from probe.records import FlowRecord
from probe.speed import pickled_by_position

__all__ = ["MESSENGER_TURN_REALM", "REALM_APPS", "Classifier", "Observation", "classify_flows"]

CALL_APPS = frozenset({"whatsapp", "messenger", "teams", "zoom", "facetime", "viber", "signal",
                       "telegram", "meet", "discord", "webex", "wechat", "line", "imo",
                       "snapchat", "sip"})
STREAMING_APPS = frozenset({"youtube", "netflix"})
REALM_APPS = (("whatsapp", "whatsapp"), ("facebook", "messenger"), ("messenger", "messenger"),
              ("fbcdn", "messenger"), ("telegram", "telegram"), ("viber", "viber"),
              ("signal.org", "signal"), ("whispersystems", "signal"), ("google.com", "meet"),
              ("discord", "discord"), ("zoom", "zoom"), ("webex", "webex"),
              ("line.me", "line"), ("naver", "line"), ("imo.im", "imo"), ("snapchat", "snapchat"),
              ("apple.com", "facetime"), ("icloud.com", "facetime"))
_ZOOM_PICTURES = {str(ZoomMediaKind.VIDEO): Category.VIDEO,
                  str(ZoomMediaKind.SCREEN_SHARE): Category.SCREEN}
"""What a Zoom media header that carries pictures makes a real-time flow."""
_ZOOM_MEDIA = frozenset({str(ZoomMediaKind.AUDIO), *_ZOOM_PICTURES})
"""The media a Zoom framing detail can name (else it is ``rtcp``)."""
MESSENGER_TURN_REALM = "turner.facebook"
"""What the STUN REALM of Messenger's TURN relays contains (real Messenger calls): the
signalling of Messenger, not of WhatsApp, whose calls share Meta's STUN types."""
VENDOR_APPS = {"whatsapp": "whatsapp", "microsoft": "teams", "zoom": "zoom", "google": "meet"}
SERVICE_CATEGORY = {Service.RELAY: Category.CALL_SETUP, Service.CALL_SETUP: Category.CALL_SETUP,
                    Service.MESSAGING: Category.MESSAGING, Service.MEDIA: Category.WEB,
                    Service.STREAMING: Category.STREAMING, Service.WEB: Category.WEB,
                    Service.PUSH: Category.MESSAGING, Service.ANY: Category.WEB}
CALL_CONTROL = frozenset({"sip", "rtcp", "mgcp", "h323", "sccp", "mumble", "agora", "iax2",
                          "megaco", "bfcp", "teamspeak"})
"""Telephony protocols that set up or control calls whatever app runs them (RTCP as
validated over several packets). STUN and DTLS are not among them: games, remote
desktops, cloud gaming and VPNs use them too, so they make a flow call setup only when
a call app is behind them."""
CALL_FRAMINGS = frozenset({"zoom", "discord", "telegram", "whatsapp", "viber", "imo",
                           "rtp-in-gquic"})
"""App framings that carry call media or its relay control."""
FACETIME_UDP = (range(3478, 3498), range(16384, 16388), range(16393, 16403))


@functools.lru_cache(maxsize=65536)
def _match(name: str) -> HostMatch | None:
    return match_host(name)


@functools.lru_cache(maxsize=65536)
def owner_lookup(addr: str) -> Owner | None:
    return _owner_lookup(addr)


def _as_owned(addr: str) -> str:
    """An address as a reason names it when it was looked up among the owners: with the
    IPv4 address it stands for when it is one of NAT64's (RFC 6052)."""
    v4 = nat64_embedded(addr)
    return addr if v4 is None else f"{addr} (NAT64 for {v4})"


@dataclass(slots=True)
class _Verdict:
    app: str | None
    method: Method
    confidence: float
    reason: str
    service: Service | None = None
    detail: str | None = None


@pickled_by_position
@dataclass(frozen=True, slots=True)
class Observation:
    """What one flow says on its own: the inspectors' facts and the media statistics."""

    facts: Facts
    guess: MediaGuess


def _remote(flow: FlowRecord) -> tuple[str, int]:
    """The far end of a flow (:func:`probe.addresses.orig_is_local`)."""
    if orig_is_local(flow.orig_h, flow.resp_h, flow.orig_p, flow.resp_p):
        return flow.resp_h, flow.resp_p
    return flow.orig_h, flow.orig_p


def _local(flow: FlowRecord) -> tuple[str, int]:
    """The near end of a flow: the other end than :func:`_remote`."""
    if orig_is_local(flow.orig_h, flow.resp_h, flow.orig_p, flow.resp_p):
        return flow.orig_h, flow.orig_p
    return flow.resp_h, flow.resp_p


def _local_end(flow: FlowRecord) -> tuple[str, int]:
    """:func:`_local` as learned endpoints are keyed (:func:`probe.addresses.host_key`):
    between two ends of one rank the near end may be a server reached through NAT64."""
    h, p = _local(flow)
    return host_key(h), p


class Classifier:
    """Classifies flows, learning names and call endpoints as it goes."""

    def __init__(self, fingerprints: bool = False) -> None:
        self.fingerprints = fingerprints
        """Also compute JA4 fingerprints of ClientHellos (costs time on every TLS/QUIC flow)."""
        self._dns: dict[str, str] = {}
        """Address -> the name a DNS answer gave for it."""
        self._call_endpoints: dict[tuple[str, int], tuple[str, str]] = {}
        """(address, port) -> (app, how it was learned), from STUN and SDP."""
        self._call_hosts: dict[str, tuple[str, str]] = {}
        """Relay/server address -> (app, how), from flows already named as calls."""
        self._sip_seen = False
        self._h323_pairs: set[frozenset[str]] = set()
        """Host pairs with H.225.0 call signalling (their TPKT flows are H.245)."""
        self._meta_apps: dict[str, set[str]] = {}
        """Local address -> which of Meta's call apps its own signalling names
        (``messenger``, ``whatsapp``): both run their calls on Meta's shared call stack."""

    # -- public -----------------------------------------------------------------------
    def observe(self, flow: FlowRecord) -> Observation:
        """What the flow's own bytes and timing say, independent of every other flow.

        The expensive part of classification; it needs the payload samples, timing and
        RTP series, so a caller that streams flows observes each one as it ends and can
        then drop them (:meth:`FlowRecord.lightened`) before :meth:`classify_all`, which
        must then be given the observations (a light record observed again says less).
        """
        return Observation(inspect_flow(flow, self.fingerprints), _media(flow))

    def classify_all(self, flows: Iterable[FlowRecord],
                     observed: Mapping[str, Observation] | None = None) -> list[Classification]:
        """Classify a whole capture's flows (returned in the order given), using
        ``observed[uid]`` where given instead of observing a flow again."""
        flows = list(flows)
        order = sorted(range(len(flows)), key=lambda i: (flows[i].first_ts, flows[i].uid))
        obs = {f.uid: (observed[f.uid] if observed is not None and f.uid in observed
                       else self.observe(f)) for f in flows}
        facts = {u: o.facts for u, o in obs.items()}
        guesses = {u: o.guess for u, o in obs.items()}
        for i in order:  # learn: names, endpoints, SIP
            self._learn(flows[i], facts[flows[i].uid])
        first = {flows[i].uid: self._decide(flows[i], facts[flows[i].uid],
                                            guesses[flows[i].uid]) for i in order}
        for i in order:  # what the first pass named teaches the second
            c = first[flows[i].uid]
            if c.app in CALL_APPS and c.category in CALL_CATEGORIES:
                self._learn_call(flows[i], c)
        out = []
        for f in flows:
            c = first[f.uid]
            if f.proto == "udp" and (c.app is None or c.method in (
                    Method.IP_OWNER, Method.STATS, Method.PORT)) and self._call_peer_known(f):
                c2 = self._decide(f, facts[f.uid], guesses[f.uid])
                # a call peer names the flow only where its own evidence did not already
                # name that app (else the flow would cite itself, or a flow that cited it)
                if c2.app is not None and c2.method is Method.CALL_PEER and c2.app != c.app:
                    c = c2
            out.append(c)
        return out

    def classify(self, flow: FlowRecord, observed: Observation | None = None) -> Classification:
        """Classify one flow with what has been learned so far (streaming use)."""
        ob = observed if observed is not None else self.observe(flow)
        facts = ob.facts
        self._learn(flow, facts)
        c = self._decide(flow, facts, ob.guess)
        if c.app in CALL_APPS and c.category in CALL_CATEGORIES:
            self._learn_call(flow, c)
        return c

    def _call_peer_known(self, flow: FlowRecord) -> bool:
        """Whether a call flow taught an end of ``flow`` (the only way a second
        :meth:`_decide` can name it by :attr:`Method.CALL_PEER`)."""
        rh, rp = _remote(flow)
        rh = host_key(rh)
        return ((rh, rp) in self._call_endpoints or _local_end(flow) in self._call_endpoints
                or rh in self._call_hosts)

    # -- learning -----------------------------------------------------------------------
    def _learn(self, flow: FlowRecord, facts: Facts) -> None:
        for name, addr in facts.dns_answers:
            self._dns[host_key(addr)] = name
        if facts.sni:
            self._dns.setdefault(host_key(_remote(flow)[0]), facts.sni.lower())
        if facts.sip:
            self._sip_seen = True
            for m in facts.sip:
                for addr, port, _media, _dir in m.media:
                    self._call_endpoints[(host_key(addr), port)] = ("sip", "SDP")
        if facts.protocol == "h323":
            self._h323_pairs.add(frozenset((flow.orig_h, flow.resp_h)))
        meta = _meta_signalling(facts)
        if meta is not None:
            self._meta_apps.setdefault(_local(flow)[0], set()).add(meta)
        st = facts.stun
        if st is not None:
            app = self._stun_app(facts)
            if app is not None:
                for addr, port in (*st.mapped, *st.peers, *st.relayed):
                    self._call_endpoints.setdefault((host_key(addr), port),
                                                    (app[0], "STUN address"))

    def _learn_call(self, flow: FlowRecord, c: Classification) -> None:
        # A SIP flow's far end is a proxy or trunk that serves every call; which end is far
        # shows only where the address classes say it (a phone behind a NAT and its
        # provider): between two phones and a PBX of one network, or two public hosts,
        # marking either end would name all its other traffic sip. Its media endpoints
        # come from its SDP (:meth:`_learn`).
        if c.app is None or (c.facts.sip and is_local_class(flow.orig_h)
                             == is_local_class(flow.resp_h)):
            return
        rh = host_key(_remote(flow)[0])
        if flow.proto == "udp":
            self._call_hosts.setdefault(rh, (c.app, f"{c.app} call flow {flow.uid}"))
            self._call_endpoints.setdefault(_local_end(flow), (c.app, f"call flow {flow.uid}"))

    # -- deciding -------------------------------------------------------------------------
    def _stun_app(self, facts: Facts) -> tuple[str, Method, str] | None:
        st = facts.stun
        if st is None:
            return None
        if "whatsapp" in st.vendors:
            wa_types = [t for t in st.msg_types if 0x0800 <= t <= 0x08FF]
            if wa_types:
                return ("whatsapp", Method.STUN_TYPE, "STUN message types " +
                        ", ".join(f"0x{t:04x}" for t in wa_types) + " are WhatsApp's")
            return "whatsapp", Method.STUN_ATTR, "STUN attributes 0x4000-0x4007 are WhatsApp's"
        realm = (st.realm or "").lower()
        software = (st.software or "").lower()
        for needle, app in REALM_APPS:
            if needle in realm:
                return app, Method.STUN_REALM, f"STUN REALM {st.realm!r}"
        for needle, app in REALM_APPS:
            if needle in software:
                return app, Method.STUN_REALM, f"STUN SOFTWARE {st.software!r}"
        for vendor in st.vendors:
            vendor_app = VENDOR_APPS.get(vendor)
            if vendor_app is not None:
                return vendor_app, Method.STUN_ATTR, f"STUN attributes private to {vendor}"
        return None

    def _name_verdict(self, name: str, method: Method, what: str,
                      shown: str | None = None) -> _Verdict | None:
        """The app a host name matches; the reason names it as ``shown`` if given."""
        m: HostMatch | None = _match(name)
        if m is None:
            return None
        if m.app is None:
            return _Verdict(None, method, 0.5, f"{what} {shown or name} ({m.owner})",
                            m.service, detail=m.owner)
        detail = None
        if m.app == "teams":
            # nDPI cannot tell them apart; the name often can.
            detail = "skype" if ("skype" in name or "lync" in name) else "microsoft-teams"
        return _Verdict(m.app, method, 0.9 if method not in (Method.DNS, Method.TLS_CERT)
                        else 0.8,
                        f"{what} {shown or name} matches {m.rule}"
                        + (f" ({detail})" if detail else ""), m.service, detail=detail)

    def _cert_verdict(self, names: tuple[str, ...]) -> _Verdict | None:
        """The app a server's certificate names (nDPI reads it too): its first name (the
        subject's common name), else its other names when every one of them names the
        same app. A certificate shared by services (Meta's lists messenger.com beside
        facebook.com, a Google front end's youtube.com beside google.com and gstatic.com,
        a CDN's its customers' beside its own) names none by its other names."""
        def verdict(name: str) -> _Verdict | None:
            # A wildcard covers the names below it (RFC 6125 §6.4.3): match its base.
            v = self._name_verdict(name.removeprefix("*."), Method.TLS_CERT,
                                   "server certificate for", shown=name)
            return v if v is not None and v.app is not None else None

        first = verdict(names[0])
        if first is not None or len(names) < 2:
            return first
        others = [verdict(name) for name in names[1:]]
        apps = {v.app if v is not None else None for v in others}
        if len(apps) != 1 or None in apps:
            return None
        v = others[0]
        assert v is not None
        v.reason += (f" (every other name of its {len(names)} names, all but the first "
                     f"{names[0]}, names {v.app})")
        return v

    def _meta_call_app(self, flow: FlowRecord) -> str | None:
        """The one Meta call app the local host's own signalling names, if just one."""
        apps = self._meta_apps.get(_local(flow)[0])
        return next(iter(apps)) if apps is not None and len(apps) == 1 else None

    def _app_verdict(self, flow: FlowRecord, facts: Facts) -> _Verdict | None:
        stun_app = self._stun_app(facts)
        if stun_app is not None:
            if stun_app[0] == "whatsapp" and self._meta_call_app(flow) == "messenger":
                # WhatsApp's STUN message types and attributes are those of Meta's call
                # stack, which Messenger's calls use too: the host's signalling decides.
                return _Verdict("messenger", stun_app[1], 0.85,
                                f"{stun_app[2]} (Meta's call stack), on a host whose "
                                "signalling is Messenger's and not WhatsApp's",
                                Service.CALL_SETUP)
            return _Verdict(stun_app[0], stun_app[1], 0.95, stun_app[2], Service.CALL_SETUP)
        if facts.framing == "zoom":
            carries = (f" ({facts.framing_detail} media headers)"
                       if facts.framing_detail in _ZOOM_MEDIA else "")
            return _Verdict("zoom", Method.FRAMING, 0.9,
                            f"Zoom media encapsulation on UDP {flow.resp_p}{carries}",
                            Service.RELAY)
        if facts.framing == "rtp-in-gquic":  # Q046 only (classifier.inspect)
            return _Verdict("snapchat", Method.FRAMING, 0.8,
                            "RTP/RTCP multiplexed on a gQUIC Q046 connection whose CHLO names "
                            "no server (Snapchat's calls, as nDPI's quic.c reads them)",
                            Service.RELAY)
        if facts.framing == "discord":
            return _Verdict("discord", Method.FRAMING, 0.95, "Discord voice IP discovery",
                            Service.RELAY)
        if facts.framing == "telegram":
            return _Verdict("telegram", Method.FRAMING, 0.8, "Telegram relay packet framing",
                            Service.RELAY)
        if facts.framing == "viber":  # a short marker: only with a Viber address behind it
            own = owner_lookup(_remote(flow)[0])
            if own is not None and own.app == "viber":
                return _Verdict("viber", Method.FRAMING, 0.9,
                                f"Viber framing {facts.framing_detail} to {own.prefix} "
                                f"({own.owner})", Service.MESSAGING)
        if facts.framing == "whatsapp":
            return _Verdict("whatsapp", Method.FRAMING, 0.95,
                            "WhatsApp chat protocol prologue", Service.MESSAGING)
        if facts.framing == "imo":
            return _Verdict("imo", Method.FRAMING, 0.85, "IMO call packets (ping 09 02, "
                            "relay reply 00 09 03)", Service.RELAY)
        if facts.sip:
            return _Verdict("sip", Method.SIP, 0.95,
                            f"SIP {facts.sip[0].method or facts.sip[0].status}",
                            Service.CALL_SETUP)
        if facts.sni:
            v = self._name_verdict(facts.sni, Method.QUIC_SNI if facts.protocol in (
                "quic", "gquic") else Method.SNI, "server name")
            if v is not None and v.app is not None:
                return v
        if facts.http_host:
            v = self._name_verdict(facts.http_host, Method.SNI, "HTTP Host")
            if v is not None and v.app is not None:
                return v
        if facts.cert_names:  # read only where the client named no server
            v = self._cert_verdict(facts.cert_names)
            if v is not None:
                return v
        if facts.protocol == "dns" and facts.dns_query:
            v = self._name_verdict(facts.dns_query, Method.DNS_QUERY, "DNS question")
            if v is not None:
                return v
        rh, rp = _remote(flow)
        ep = (self._call_endpoints.get((host_key(rh), rp))
              or self._call_endpoints.get(_local_end(flow)))
        if ep is not None and flow.proto == "udp":
            return _Verdict(ep[0], Method.CALL_PEER, 0.8,
                            f"endpoint {rh}:{rp} learned from {ep[1]}", Service.RELAY)
        if flow.proto == "udp" and (facts.protocol in ("stun", "rtp") or flow.rtp_streams):
            own = owner_lookup(rh)
            meta_app = self._meta_call_app(flow)
            if own is not None and own.owner == "meta" and meta_app is not None:
                # Meta's STUN servers and relays serve both its call apps.
                return _Verdict(meta_app, Method.IP_OWNER, 0.7,
                                f"STUN/RTP to {_as_owned(rh)} in {own.prefix} (Meta's call "
                                f"servers) from a host whose signalling is {meta_app}'s only",
                                Service.RELAY)
        name = self._dns.get(host_key(rh))
        if name is not None:
            v = self._name_verdict(name, Method.DNS, f"DNS answer named {rh}")
            if v is not None and v.app is not None:
                return v
        if flow.proto == "udp":
            host = self._call_hosts.get(host_key(rh))
            if host is not None:
                return _Verdict(host[0], Method.CALL_PEER, 0.7,
                                f"{rh} carried a {host[1]}", Service.RELAY)
        own = owner_lookup(rh)
        if own is not None and own.app is not None:
            if own.app == "facetime" and not _facetime_shape(flow, facts):
                return None
            return _Verdict(own.app, Method.IP_OWNER, 0.6,
                            f"{_as_owned(rh)} is in {own.prefix} ({own.owner}, "
                            f"{own.source})",
                            Service(str(own.service)) if str(own.service) in Service.__members__
                            .values() else None)
        return None

    def _decide(self, flow: FlowRecord, facts: Facts, guess: MediaGuess) -> Classification:
        if facts.protocol == "tpkt" and frozenset((flow.orig_h, flow.resp_h)) in \
                self._h323_pairs:
            facts = replace(facts, protocol="h323",
                            framing_detail="H.245 in TPKT between hosts with H.225.0 signalling")
        v = self._app_verdict(flow, facts)
        app = v.app if v is not None else None
        demoted = None
        if guess.realtime and not _media_evidence(facts, app, guess):
            # Packet sizes and timing alone also fit game, telemetry and VPN traffic.
            demoted = (f"{guess.reason}, but no RTP structure and no call app: not taken "
                       "as call media")
            guess = replace(guess, realtime=False, media=None, reason=demoted)
        category, media = self._category(flow, facts, v, guess)
        if v is None:
            method = Method.STATS if guess.realtime or guess.streaming else Method.NONE
            reason: str = guess.reason if (guess.realtime or guess.streaming) else _plain(facts)
            if demoted is not None:
                reason = f"{reason}; {demoted}"
            conf = guess.confidence if (guess.realtime or guess.streaming) else 0.3
            if app is None and self._sip_seen and guess.realtime and facts.protocol == "rtp":
                app, method = "sip", Method.RTP
                reason = f"RTP in a capture with SIP signalling; {guess.reason}"
            return Classification(flow.uid, app, category, media, method, conf, reason, facts)
        reason = v.reason
        if media is not None and guess.reason:
            reason = f"{v.reason}; {guess.reason}"
        return Classification(flow.uid, app, category, media, v.method, v.confidence, reason,
                              facts, v.detail)

    def _category(self, flow: FlowRecord, facts: Facts, v: _Verdict | None,
                  guess: MediaGuess) -> tuple[Category, str | None]:
        proto = facts.protocol
        if proto == "dns":
            return Category.DNS, None
        app = v.app if v is not None else None
        # QUIC carries HTTP/3 and the apps' APIs, not their call media (SRTP over UDP):
        # its request/response bursts must not pass for a screen share.
        if guess.realtime and flow.proto == "udp" and proto not in ("quic", "gquic"):
            media = str(guess.media) if guess.media is not None else "audio"
            cat = {"audio": Category.VOICE, "video": Category.VIDEO,
                   "screen": Category.SCREEN}.get(media, Category.VOICE)
            if facts.framing == "zoom" and facts.framing_detail in _ZOOM_PICTURES:
                cat = _ZOOM_PICTURES[facts.framing_detail]
                media = facts.framing_detail
            return cat, media
        if guess.streaming or (app in STREAMING_APPS and v is not None
                               and v.service is Service.STREAMING):
            return Category.STREAMING, None
        if proto in CALL_CONTROL or facts.framing in ("zoom", "discord", "telegram",
                                                      "rtp-in-gquic"):
            return Category.CALL_SETUP, None
        if proto in ("stun", "dtls") and app in CALL_APPS:  # a call app's STUN/TURN, any transport
            return Category.CALL_SETUP, None
        if flow.proto == "udp" and app in CALL_APPS and proto not in ("quic", "gquic"):
            return Category.CALL_SETUP, None
        if v is not None and v.service is not None:
            cat = SERVICE_CATEGORY.get(v.service, Category.WEB)
            if cat is Category.CALL_SETUP and flow.proto != "udp":
                cat = Category.MESSAGING
            return cat, None
        if proto in ("tls", "quic", "gquic", "http"):
            return Category.WEB, None
        return Category.OTHER, None


_TOO_SHORT = MediaGuess(False, None, False, 0.5, "shorter than 2 s: too short to judge media")


def _media(flow: FlowRecord) -> MediaGuess:
    """The statistical media guess, skipped for flows too short for any of its rules
    (sustained media needs 3 s of activity, streaming two bursts 2 s apart)."""
    if flow.duration_s < 2.0 and not flow.rtp_streams and flow.rtp is None:
        return _TOO_SHORT
    return media_guess(flow)


def _meta_signalling(facts: Facts) -> str | None:
    """Which of Meta's call apps a flow's own signalling names: WhatsApp's chat protocol
    prologue or a WhatsApp name; a Messenger name (its MQTT edges, messenger.com) or
    the TURN realm of Messenger's relays. STUN message types are no evidence here:
    both apps' calls use the same ones."""
    if facts.framing == "whatsapp":
        return "whatsapp"
    st = facts.stun
    if st is not None and MESSENGER_TURN_REALM in (st.realm or "").lower():
        return "messenger"
    for name in (facts.sni, facts.http_host, facts.dns_query):
        if name:
            m = _match(name.lower())
            if m is not None and m.app in ("messenger", "whatsapp"):
                return m.app
    return None


def _media_evidence(facts: Facts, app: str | None, guess: MediaGuess) -> bool:
    """Whether a real-time media guess rests on more than packet sizes and timing: RTP
    structure validated over several packets, a telephony protocol or a call app's
    framing in the flow, or a call app behind it."""
    return (guess.from_rtp or app in CALL_APPS or facts.protocol in CALL_CONTROL
            or facts.protocol in ("rtp", "srtp") or facts.framing in CALL_FRAMINGS)


def _facetime_shape(flow: FlowRecord, facts: Facts) -> bool:
    """Apple's address space serves everything; only call-shaped UDP is FaceTime."""
    if flow.proto != "udp":
        return False
    ports = (flow.orig_p, flow.resp_p)
    in_range = any(p in r for p in ports for r in FACETIME_UDP)
    return in_range or facts.protocol in ("stun", "rtp")


def _plain(facts: Facts) -> str:
    if facts.protocol:
        return f"{facts.protocol} with no app evidence"
    return "no app evidence"


def classify_flows(flows: Iterable[FlowRecord]) -> list[Classification]:
    """Classify a capture's flows with a fresh :class:`Classifier`."""
    return Classifier().classify_all(flows)


def reclassify(c: Classification, **changes: object) -> Classification:
    """A copy of ``c`` with some fields changed."""
    return replace(c, **changes)  # type: ignore[arg-type]
