"""Run the inspectors over a flow's payload samples and collect :class:`Facts`.

Only the payloads the probe kept (the first few per direction, plus the RTP
state) are looked at; the dispatch is by transport, ports and the first bytes
(RFC 7983 demultiplexing for UDP). An inspector that finds broken bytes adds a
note and the others go on: inspection never raises.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from classifier.dpi import dns, dtls, framings, quic, rtp, sip, stun, telephony, tls
from classifier.dpi.stun import Kind, MessageClass, classify_first_byte
from classifier.owners import parse_address
from classifier.records import Facts, RtcpReport, RtcpSenderInfo, SipSummary, StunSummary
from probe.errors import ParseError, Truncated
from probe.meter import MeterConfig
from probe.records import ORIG, RESP, FlowRecord, PayloadSample, PayloadSamples

__all__ = ["inspect_flow"]

DNS_PORTS = frozenset({53, 5353, 5355})
SIP_PORTS = frozenset({5060, 5061, 5080})
ZOOM_PORTS = range(8801, 8811)
_ZOOM_PORT_SET = frozenset(ZOOM_PORTS)
_ZOOM_SFU_TYPES = frozenset(int(t) for t in framings.ZoomSfuType)
_ZOOM_TYPED_MIN = 4
"""Datagrams that must all open with an SFU type byte (nDPI's zoom.c waits for four)."""
H323_RAS_PORT = 1719
SCCP_PORT = 2000
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"CONNECT ", b"DELETE ")
_SIP_FIRST_BYTES = frozenset(start[:1] for start in sip.START_LINES)
CERT_SEGMENTS = MeterConfig().payload_full
"""The first payloads back that may carry the server's certificate: the probe keeps
these per direction at full length (a handshake's), the later ones cut short. The
default's figure: with fewer kept whole, the later ones read as a certificate cut short
(no names); with more, a longer certificate is not read."""


def _split(payloads: Sequence[PayloadSample]) -> tuple[list[PayloadSample], list[PayloadSample]]:
    orig = [p for p in payloads if p.direction == ORIG]
    resp = [p for p in payloads if p.direction == RESP]
    return orig, resp


def inspect_flow(flow: FlowRecord, fingerprints: bool = False) -> Facts:
    """Everything the inspectors can read from one flow (JA4 fingerprints on request)."""
    pay = flow.payloads
    if not pay:
        return Facts(flow.uid, protocol="rtp" if flow.rtp_streams else None)
    found: dict[str, object] = {}
    notes: list[str] = []
    # made once: the record keeps them as columns
    payloads = pay.items() if isinstance(pay, PayloadSamples) else tuple(pay)
    orig, resp = _split(payloads)
    ports = {flow.orig_p, flow.resp_p}
    if flow.proto == "udp":
        _udp(flow, payloads, orig, resp, ports, found, notes, fingerprints)
    elif flow.proto == "tcp":
        _tcp(flow, payloads, orig, resp, ports, found, notes, fingerprints)
    if "protocol" not in found and flow.rtp_streams:
        found["protocol"] = "rtp"
    if flow.proto == "udp":
        reports = _rtcp_reports(payloads)
        if reports:
            found["rtcp_reports"] = reports
        senders = _rtcp_sender_info(payloads, found.get("framing") == "zoom")
        if senders:
            found["rtcp_sender_info"] = senders
    return Facts(flow.uid, notes=tuple(notes), **found)  # type: ignore[arg-type]


def _udp(flow: FlowRecord, payloads: Sequence[PayloadSample], orig: list[PayloadSample],
         resp: list[PayloadSample],
         ports: set[int], found: dict[str, object], notes: list[str],
         fingerprints: bool = False) -> None:
    if ports & DNS_PORTS:
        _dns(orig, resp, False, found, notes)
        if "protocol" in found:
            return
    first = (orig or resp)[0].data
    if not first:
        return
    kind = classify_first_byte(first[0])
    if _starts_sip(payloads):
        _sip(payloads, False, found, notes)
        return
    # STUN's first byte is below 0x40 (the two top bits are zero): a cheap first test
    late_stun = False
    if kind in (Kind.STUN, Kind.TURN_CHANNEL) or any(
            p.data[:1] < b"\x40" and stun.looks_like_stun(p.data) for p in payloads[:4]):
        _stun(payloads, False, found, notes)
    elif any(p.data[:1] < b"\x40" and stun.looks_like_stun(p.data) for p in payloads[4:]):
        # STUN kept later in the flow (a capture that starts mid-call): its attributes
        # count, but the flow is what its first packets are (RTP, RTCP...) unless
        # nothing else names it
        _stun(payloads, False, found, notes)
        late_stun = found.pop("protocol", None) == "stun"
    if ports & _ZOOM_PORT_SET:
        if len(payloads) >= _ZOOM_TYPED_MIN and all(
                p.data[:1] and p.data[0] in _ZOOM_SFU_TYPES for p in payloads):
            found["framing"] = "zoom"  # every datagram opens with an SFU type: nDPI's rule
        _zoom(payloads, framings.parse_zoom_sfu, found)
    elif any(framings.parse_zoom_p2p_hello(p.data) for p in payloads[:4]):
        # a peer-to-peer flow (any port): media headers without the SFU header
        found.update(framing="zoom", protocol="zoom")
        _zoom(payloads, framings.parse_zoom_media, found)
    if "protocol" not in found and any(0x14 <= p.data[0] <= 0x3F for p in payloads
                                       if p.data):
        _dtls(orig, resp, found, notes)
    if "protocol" not in found and orig and (first[0] & 0xC0 == 0xC0 or ports & {443, 80}):
        _quic(orig, found, notes, fingerprints)
        if (found.get("protocol") == "gquic" and not found.get("sni")
                and found.get("quic_version") == quic.QuicVersion.Q046):
            _rtp_beside_gquic(flow, payloads, found)
    if "protocol" not in found:
        _framings_udp(payloads, found)
    if "protocol" not in found:
        _telephony_udp(orig, resp, found, ports)
    if "protocol" not in found and H323_RAS_PORT in ports and min(
            len(p.data) for p in payloads) >= 8:
        # H.225.0 RAS is PER-encoded with no fixed bytes: its registered port is the evidence.
        found.update(protocol="h323", framing_detail="RAS (UDP 1719)")
    if late_stun and "protocol" not in found and not flow.rtp_streams:
        found["protocol"] = "stun"


def _tcp(flow: FlowRecord, payloads: Sequence[PayloadSample], orig: list[PayloadSample],
         resp: list[PayloadSample],
         ports: set[int], found: dict[str, object], notes: list[str],
         fingerprints: bool = False) -> None:
    if not orig and not resp:
        return
    # A ClientHello spans at most a few segments; the ServerHello or an alert comes first back.
    o = b"".join(p.data for p in orig[:4])
    # only the first seven bytes back are looked at (record header, ServerHello or alert)
    r = resp[0].data if resp and len(resp[0].data) >= 7 else b"".join(p.data for p in resp[:3])
    if ports & DNS_PORTS:
        _dns(orig, resp, True, found, notes)
        if "protocol" in found:
            return
    if o[:1] == b"\x16":
        try:
            if fingerprints:
                ch = tls.parse_tls_client_hello(o)
                found.update(protocol="tls", sni=ch.sni, alpn=tuple(ch.alpn), client_hello=True,
                             ja4=tls.ja4(ch, tls.Transport.TCP))
            else:  # the names are all the classifier needs
                sni, alpn = tls.tls_client_hello_names(o)
                found.update(protocol="tls", sni=sni, alpn=alpn, client_hello=True)
        except ParseError as exc:
            notes.append(f"tls client hello: {exc}")
            found["protocol"] = "tls"
        # RFC 8446 §5.1: the first record back is a plaintext handshake (ServerHello, type 2)
        # or a plaintext alert (content type 21: level, description).
        if len(r) >= 6 and r[0] == 0x16 and r[5] == 0x02:
            found["server_hello"] = True
            # only where the ClientHello was read whole and names no server
            if found.get("client_hello") and not _names_host(found.get("sni")):
                _server_certificate(resp, found, notes)
        elif len(r) >= 7 and r[0] == 0x15 and r[1] == 0x03:
            found["tls_alert"] = (r[5], r[6])
        return
    if not o and len(r) >= 6 and r[0] == 0x16 and r[5] == 0x02 and r[1] == 0x03:
        # Only the server's side was captured (an asymmetric route, a tap on one
        # direction): its ServerHello still says TLS, and its certificate whose it is.
        found.update(protocol="tls", server_hello=True)
        _server_certificate(resp, found, notes)
        return
    if o.startswith(HTTP_METHODS):
        found["protocol"] = "http"
        head = o.split(b"\r\n\r\n", 1)[0]
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"host":
                found["http_host"] = value.strip().decode("latin-1").split(":")[0]
                break
        return
    if _starts_sip(payloads):
        _sip(payloads, True, found, notes)
        return
    if stun.looks_like_stun(o[:64]) or (len(o) > 2 and stun.looks_like_stun(o[2:66])) or \
            o[:2] == b"\xff\x10":
        _stun(payloads, True, found, notes)
        if "protocol" in found:
            return
    try:
        wa = framings.parse_whatsapp_prologue(o)
    except Truncated:
        # The prologue is there; only the frame after it was cut (samples are kept short).
        wa = framings.parse_whatsapp_prologue(orig[0].data[:4]) if orig else None
    except ParseError:
        wa = None
    if wa is not None:
        found.update(protocol="whatsapp", framing="whatsapp")
        return
    try:
        # Viber's length prefix covers one message: read the first segment alone
        vb = framings.parse_viber(orig[0].data if orig else b"", tcp=True)
    except ParseError:
        vb = None
    if vb is not None and flow.resp_p not in (80, 443):
        found.update(framing="viber", framing_detail=str(vb))
        return
    for data in (orig[0].data if orig else b"", resp[0].data if resp else b""):
        t = telephony.parse_megaco(data) or telephony.parse_h225_tpkt(data)
        if t is None and SCCP_PORT in ports:
            # Skinny's header has no magic: like nDPI, only on Cisco's registered port.
            t = telephony.parse_sccp(data)
        t = t or telephony.parse_teamspeak(data, udp=False)
        if t is not None:
            found.update(protocol=t.protocol, framing_detail=t.what)
            return
    t = telephony.parse_bfcp([p.data for p in payloads[:4]], tcp=True)
    if t is not None:
        found.update(protocol=t.protocol, framing_detail=t.what)


def _names_host(name: object) -> bool:
    """Whether a TLS server name names a host: not empty, and not an address, which RFC
    6066 §3 forbids there and some clients send all the same."""
    return isinstance(name, str) and bool(name) and parse_address(name.strip("[]")) is None


def _server_certificate(resp: list[PayloadSample], found: dict[str, object],
                        notes: list[str]) -> None:
    """The names of the server's certificate, when the first payloads back carry it
    whole (before TLS 1.3 it is sent in the clear). Read only where the client named no
    server: a certificate lists the server's other services too, and the name a client
    asks for is the one it reached."""
    try:
        der = tls.server_certificate(b"".join(p.data for p in resp[:CERT_SEGMENTS]))
        if der is not None:
            found["cert_names"] = tls.certificate_names(der)
    except Truncated:
        pass  # the certificate goes on past the samples kept whole: nothing to say
    except ParseError as exc:
        notes.append(f"tls server certificate: {exc}")


def _starts_sip(payloads: Sequence[PayloadSample]) -> bool:
    # the first byte rules out most payloads before the fifteen prefixes are tried
    return any(p.data[:1] in _SIP_FIRST_BYTES and p.data.startswith(sip.START_LINES)
               for p in payloads[:6])


def _dns(orig: list[PayloadSample], resp: list[PayloadSample], tcp: bool,
         found: dict[str, object], notes: list[str]) -> None:
    answers: list[tuple[str, str]] = []
    responses = 0
    # Answers first: they repeat the question, so a query needs parsing only when unanswered.
    for p in resp + orig:
        if responses >= 2 or ("dns_query" in found and p.direction == ORIG):
            break  # and so for every sample after this one
        gist = None if tcp else dns.dns_gist(p.data)
        if gist is not None:  # the plain case, read fast; anything else takes the full parser
            found["protocol"] = "dns"
            if gist.question is not None and "dns_query" not in found:
                found["dns_query"] = gist.question.rstrip(".")
            if gist.is_response:
                responses += 1
                found.setdefault("dns_rcode", gist.rcode)
                answers.extend((n.rstrip("."), a) for n, a in gist.addresses)
            continue
        try:
            msgs = dns.parse_dns_tcp(p.data) if tcp else (dns.parse_dns(p.data,
                                                                         answers_only=True),)
        except ParseError as exc:
            notes.append(f"dns: {exc}")
            continue
        for m in msgs:
            found["protocol"] = "dns"
            if m.questions and "dns_query" not in found:
                found["dns_query"] = m.questions[0].name.lower().rstrip(".")
            if m.is_response:
                responses += 1
                found.setdefault("dns_rcode", int(m.rcode))
                answers.extend((n.lower().rstrip("."), a) for n, a in dns.address_names(m))
    if answers:
        found["dns_answers"] = tuple(dict.fromkeys(answers))


def _stun(payloads: Sequence[PayloadSample], tcp: bool, found: dict[str, object],
          notes: list[str]) -> None:
    req = ok = err = ind = orig_req = resp_resp = pings = 0
    methods: set[int] = set()
    types: set[int] = set()
    vendors: set[str] = set()
    realm = software = None
    mapped: list[tuple[str, int]] = []
    peers: list[tuple[str, int]] = []
    relayed: list[tuple[str, int]] = []
    turn = False
    ms_version = None
    ice = 0
    asked: list[int] = []  # frames of the originator's requests that are no ICE check
    sessions: set[str] = set()
    seen = False
    for p in payloads:
        msgs: list[stun.StunMessage | stun.StunGist]
        gist = None if tcp else stun.stun_gist(p.data)
        if gist is not None:  # the plain case, read fast; anything else takes the full parser
            msgs = [gist]
        elif not tcp and not stun.udp_stun_possible(p.data):
            continue  # media: the parser could only fail
        else:
            try:
                pay = stun.parse_stun_payload(p.data, tcp=tcp)
            except ParseError:
                continue
            msgs = []
            for item in pay.items:
                if not isinstance(item, stun.StunMessage):
                    turn = True
                    seen = True
                    # A connectivity check relayed in ChannelData names its ICE session
                    # too; it is the peers' message, not one to count as the relay's.
                    session = None if item.inner_stun is None else _ice_session(item.inner_stun)
                    if session is not None:
                        sessions.add(session)
                    continue
                msgs.append(item)
                if item.inner is not None:
                    msgs.append(item.inner)
        for m in msgs:
            seen = True
            types.add(m.msg_type)
            methods.add(m.method)
            if m.vendors:
                vendors.update(str(v) for v in m.vendors)
            cls = m.cls
            if m.msg_type in stun.VENDOR_MESSAGE_TYPES:
                if p.direction == ORIG:
                    orig_req += 1
                    pings += 1
                    asked.append(p.frame)
            elif cls is MessageClass.REQUEST:
                req += 1
                if p.direction == ORIG:
                    orig_req += 1
                    if _is_ice_check(m):
                        ice += 1
                    else:
                        asked.append(p.frame)
                session = _ice_session(m)
                if session is not None:
                    sessions.add(session)
            elif cls is MessageClass.SUCCESS_RESPONSE:
                ok += 1
                resp_resp += p.direction == RESP
            elif cls is MessageClass.ERROR_RESPONSE:
                err += 1
                resp_resp += p.direction == RESP
            else:
                ind += 1
            if m.is_turn:
                turn = True
            realm = realm or m.realm
            software = software or m.software
            ms_version = ms_version or m.ms_version or m.ms_implementation_version
            for a in (m.xor_mapped_address, m.mapped_address):
                if a is not None:
                    mapped.append((a.address, a.port))
            if m.xor_peer_addresses:
                peers.extend((a.address, a.port) for a in m.xor_peer_addresses)
            if m.xor_relayed_address is not None:
                relayed.append((m.xor_relayed_address.address, m.xor_relayed_address.port))
    if not seen:
        return
    found["protocol"] = "stun"
    found["stun"] = StunSummary(
        requests=req, success=ok, errors=err, indications=ind, orig_requests=orig_req,
        resp_responses=resp_resp, methods=tuple(sorted(methods)), msg_types=tuple(sorted(types)),
        vendors=tuple(sorted(vendors)), realm=realm, software=software,
        mapped=tuple(dict.fromkeys(mapped)), peers=tuple(dict.fromkeys(peers)),
        relayed=tuple(dict.fromkeys(relayed)), turn=turn, ms_version=ms_version,
        orig_ice_checks=ice, ice_sessions=tuple(sorted(sessions)),
        orig_pings=pings, orig_request_frames=tuple(dict.fromkeys(asked)))


def _is_ice_check(m: stun.StunMessage | stun.StunGist) -> bool:
    """Whether a request is an ICE connectivity check: it carries PRIORITY, USE-CANDIDATE
    or ICE-CONTROLLING/CONTROLLED (RFC 8445 §7.1), aimed at a peer's candidate."""
    return (m.priority is not None or m.use_candidate
            or m.ice_controlling is not None or m.ice_controlled is not None)


def _ice_session(m: stun.StunMessage | stun.StunGist) -> str | None:
    """The ICE session a connectivity check belongs to: its USERNAME "RFRAG:LFRAG"
    (RFC 8445 §7.2.2) as the two fragments sorted, so that both agents' checks give one
    key; None for any other message."""
    if m.cls is not MessageClass.REQUEST or not _is_ice_check(m) or not m.username \
            or m.username.count(":") != 1:
        return None
    return ":".join(sorted(m.username.split(":")))


def _sip(payloads: Sequence[PayloadSample], tcp: bool, found: dict[str, object],
         notes: list[str]) -> None:
    out: list[SipSummary] = []
    for p in payloads:
        if not p.data.startswith(sip.START_LINES):
            continue
        try:
            msgs = sip.parse_sip(p.data, tcp=tcp)
        except ParseError as exc:
            notes.append(f"sip: {exc}")
            # Headers too damaged to read: a whole start line still says it is SIP.
            start = sip.sip_start_line(p.data)
            if start is not None:
                out.append(SipSummary(p.frame, p.ts, p.direction, start[0], start[1], None,
                                      None, ()))
            continue
        for m in msgs:
            media: tuple[tuple[str, int, str, str], ...] = ()
            if m.sdp is not None:
                media = tuple((e.address, e.port, str(e.media), str(e.direction))
                              for e in sip.media_endpoints(m.sdp))
            out.append(SipSummary(p.frame, p.ts, p.direction, m.method if m.is_request else None,
                                  m.status_code, m.call_id, m.cseq_method, media))
    if out:
        found["protocol"] = "sip"
        found["sip"] = tuple(out)


def _dtls(orig: list[PayloadSample], resp: list[PayloadSample], found: dict[str, object],
          notes: list[str]) -> None:
    try:
        ch = dtls.parse_dtls_client_hello([p.data for p in orig])
        found.update(protocol="dtls", client_hello=True, sni=ch.sni,
                     ja4=tls.ja4(ch, tls.Transport.DTLS), alpn=tuple(ch.alpn))
    except ParseError:
        pass
    try:
        dtls.parse_dtls_server_hello([p.data for p in resp])
        found.update(protocol="dtls", server_hello=True)
    except ParseError:
        pass
    if "protocol" not in found:
        try:
            if any(dtls.parse_dtls_records(p.data) for p in (orig + resp)[:2]
                   if dtls.looks_like_dtls(p.data)):
                found["protocol"] = "dtls"
        except ParseError as exc:
            notes.append(f"dtls: {exc}")


def _quic(orig: list[PayloadSample], found: dict[str, object], notes: list[str],
          fingerprints: bool = False) -> None:
    try:
        hello = quic.inspect_client([p.data for p in orig[:4]], names_only=not fingerprints)
    except ParseError as exc:
        notes.append(f"quic: {exc}")
        return
    if isinstance(hello, quic.GquicHello):
        found.update(protocol="gquic", sni=hello.sni, quic_version=hello.version,
                     client_hello=True)
    elif isinstance(hello, quic.QuicNames):  # the names are all the classifier needs
        found.update(protocol="quic", sni=hello.sni, alpn=hello.alpn,
                     quic_version=hello.version, client_hello=True)
    else:
        found.update(protocol="quic", sni=hello.sni, alpn=tuple(hello.alpn),
                     quic_version=hello.version, client_hello=True)
        if fingerprints:
            found["ja4"] = hello.ja4


def _rtp_beside_gquic(flow: FlowRecord, payloads: Sequence[PayloadSample],
                      found: dict[str, object]) -> None:
    """RTP or RTCP multiplexed on a gQUIC Q046 connection after a CHLO that names no
    server, as nDPI's quic.c looks for it (Snapchat's calls): RTCP compound packets (RFC 3550 A.2
    validity, kept whole by the probe) on at least two datagrams, or RTP streams the
    probe validated. No gQUIC packet starts with a byte of 0x80-0xBF."""
    rtcp = sum(1 for p in payloads if rtp.is_rtcp_compound_start(p.data))
    if rtcp >= 2 or flow.rtp_streams:
        found["framing"] = "rtp-in-gquic"


def _rtcp_reports(payloads: Sequence[PayloadSample]) -> tuple[RtcpReport, ...]:
    out: list[RtcpReport] = []
    for p in payloads:
        d = p.data
        if len(d) < 8 or d[0] & 0xC0 != 0x80 or d[1] not in (200, 201):
            continue
        blocks: Sequence[tuple[int | None, int, int, int, int, int]] | None
        blocks = rtp.rtcp_report_blocks(d)  # the plain case, read fast
        if blocks is None:
            try:
                compound = rtp.parse_rtcp(d)
            except ParseError:
                continue
            if not compound.complete:
                continue  # SRTCP: the reports are encrypted
            blocks = tuple((pkt.ssrc, rb.ssrc, rb.fraction_lost, rb.cumulative_lost,
                            rb.highest_sequence, rb.jitter)
                           for pkt in compound.packets for rb in pkt.reports)
        for reporter, source, fraction, lost, highest, jitter in blocks:
            out.append(RtcpReport(p.frame, p.ts, p.direction, reporter, source,
                                  fraction / 256.0, lost, highest, jitter))
    return tuple(out)


def _rtcp_sender_info(payloads: Sequence[PayloadSample], zoom: bool
                      ) -> tuple[RtcpSenderInfo, ...]:
    """Sender information of every RTCP sender report in clear: plain RTCP datagrams, and
    on a Zoom flow the RTCP behind Zoom's media header. A compound that does not walk to
    its end is SRTCP (RFC 3711 §3.4 encrypts all but the first eight bytes) or damage:
    its sender information means nothing."""
    out: list[RtcpSenderInfo] = []
    for p in payloads:
        d = p.data
        at = 0
        if zoom and d and d[0] & 0xC0 != 0x80:
            try:
                z = framings.parse_zoom_sfu(d)
            except ParseError:
                continue
            if z is None or z.media is None or z.media.kind is not framings.ZoomMediaKind.RTCP:
                continue
            at = z.media.rtp_offset
        if len(d) < at + 28 or d[at] & 0xC0 != 0x80 or d[at + 1] != rtp.RtcpType.SR:
            continue
        try:
            compound = rtp.parse_rtcp(d[at:])
        except ParseError:
            continue
        if not compound.complete:
            continue
        for pkt in compound.packets:
            si = pkt.sender_info
            if si is not None and pkt.ssrc is not None:
                out.append(RtcpSenderInfo(p.frame, p.ts, p.direction, pkt.ssrc, si.ntp_timestamp,
                                      si.rtp_timestamp, si.packet_count, si.octet_count))
    return tuple(out)


def _telephony_udp(orig: list[PayloadSample], resp: list[PayloadSample],
                   found: dict[str, object], ports: set[int]) -> None:
    payloads = orig + resp
    iax_port = telephony.IAX2_PORT in ports
    for p in payloads[:4]:
        t = (telephony.parse_mgcp(p.data) or telephony.parse_agora(p.data)
             or telephony.parse_megaco(p.data) or telephony.parse_teamspeak(p.data, udp=True)
             or telephony.parse_iax2(p.data, iax_port))
        if t is not None:
            found.update(protocol=t.protocol, framing_detail=t.what)
            return
    t = telephony.parse_bfcp([p.data for p in payloads[:4]], tcp=False)
    if t is not None:
        found.update(protocol=t.protocol, framing_detail=t.what)
        return
    if orig:
        t = telephony.parse_mumble_ping(orig[0].data, resp[0].data if resp else None)
        if t is not None:
            found.update(protocol=t.protocol, framing_detail=t.what)
            return
    # RTCP by RFC 3550's validity test on each compound packet, and on more than one
    # packet where the flow has more: a version-2 byte and a type in 200-207 alone also
    # occur in game and telemetry traffic.
    rtcp_ok = sum(rtp.is_rtcp_compound_start(p.data) for p in payloads[:6])
    if rtcp_ok >= min(2, len(payloads)) and rtcp_ok * 2 >= min(len(payloads), 6):
        found["protocol"] = "rtcp"


def _zoom(payloads: Sequence[PayloadSample],
          parse: Callable[[bytes], framings.ZoomSfu | framings.ZoomMedia | None],
          found: dict[str, object]) -> None:
    """Zoom's framing (``parse``: the SFU's, or the bare media header of peer-to-peer
    flows, whose hello has named them already). On the SFU's ports the framing takes a
    checked structure, as nDPI's zoom.c takes it: a hello or keep-alive of the SFU,
    media headers on two packets or more, or (nDPI's rule for types 3 and 4, whose
    bodies vary; :func:`_udp` checks it) an SFU type byte opening every one of four
    datagrams or more; one type-5 byte is any datagram's first byte once in 256. The
    detail is the media
    (audio, video or screen) of the first media headers that two packets or more show
    with one SSRC and an RTP payload type of RFC 3551's ranges (0-34, 96-127), else
    ``rtcp`` when RTCP headers are there."""
    seen: dict[tuple[framings.ZoomMediaKind, int], int] = {}
    detail = None
    headers = 0
    for p in payloads:
        try:
            z = parse(p.data)
        except ParseError:
            continue
        if z is None:
            continue
        if isinstance(z, framings.ZoomSfu) and z.sfu_type != framings.ZoomSfuType.MEDIA:
            found.setdefault("framing", "zoom")  # a hello or keep-alive
            continue
        media = z.media if isinstance(z, framings.ZoomSfu) else z
        if media is None:
            continue
        headers += 1
        if headers >= 2:
            found.setdefault("framing", "zoom")
        if detail is not None and detail != str(framings.ZoomMediaKind.RTCP):
            continue
        if media.kind is framings.ZoomMediaKind.RTCP:
            detail = detail or str(media.kind)
            continue
        if not (media.payload_type <= 34 or 96 <= media.payload_type <= 127):
            continue
        key = (media.kind, media.ssrc)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] >= 2:
            detail = str(media.kind)
    if found.get("framing") != "zoom":
        return
    if detail is not None:
        found["framing_detail"] = detail
    found.setdefault("protocol", "zoom")


def _framings_udp(payloads: Sequence[PayloadSample], found: dict[str, object]) -> None:
    for p in payloads[:6]:
        try:
            d = framings.parse_discord(p.data)
        except ParseError:
            d = None
        if d is not None:
            found.update(protocol="discord", framing="discord",
                         framing_detail=type(d).__name__)
            return
    for p in payloads[:8]:
        try:
            t = framings.parse_telegram_relay(p.data)
        except ParseError:
            t = None
        if t is not None:
            found.update(protocol="telegram", framing="telegram")
            return
    # IMO's packet shapes are short markers: two of them in one flow, not one.
    if framings.imo_packets([p.data for p in payloads[:16]]) >= 2:
        found.update(protocol="imo", framing="imo")
