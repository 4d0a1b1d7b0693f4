"""Fuzz targets: each takes one input (bytes) and holds a public entry point to its contract.

A target returns normally when the code under test behaved: it returned, or raised one
of the errors its documentation names (the probe's error tree, :mod:`probe.errors`:
``ParseError`` > ``Truncated``/``Malformed`` for packet and payload parsers,
``CaptureError`` > ``NotACapture``/``UnsupportedLinkType`` for whole captures). Any other
exception escapes and is a crash; so is a broken invariant (:class:`ContractBroken`),
where a target also checks what the result says (a payload inside its packet, a damaged
capture that says where it stopped, a fast path that agrees with the full parser).

Input layouts (what ``fuzz/make_corpus.py`` writes):

- ``pcap``, ``pcapng``: a capture file as it is on disk (any format: the reader goes by
  the magic; the two corpora differ only in their seeds). ``gzip``: a capture the target
  gzip-compresses before reading, so that mutations act on the stream inside.
- ``decode``: one byte choosing the link type (:data:`LINKTYPES`), then packets, each a
  big-endian 16-bit length and the packet's bytes.
- DPI targets: one payload; where a parser reads several datagrams (DTLS, QUIC), they are
  separated by :data:`SEP`. ``quic`` input starting with ``P`` is the plaintext of an
  Initial that the target seals with the RFC 9001 client keys first, so mutations reach
  the frame and ClientHello parsers behind the AEAD.
- ``inspect``: byte 0 bit 0 TCP/UDP, bit 1 JA4 fingerprints; bytes 1 and 2 pick the
  ports (:data:`PORTS`); then payload samples separated by :data:`SEP`, the first byte
  of each giving its direction (even: originator).

:data:`KNOWN_ISSUES` lists crashes already reported and being fixed elsewhere; a target
counts them (``MARSAD_FUZZ_KNOWN`` names a file that gets one line per hit) instead of
stopping, unless ``MARSAD_FUZZ_STRICT=1``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from classifier.dpi import dns, dtls, framings, quic, rtp, sip, stun, telephony, tls
from classifier.inspect import inspect_flow
from probe.decode import KIND_FLOW, Decoded, Decoder
from probe.errors import CaptureError, ParseError
from probe.layers import SlowDecoder
from probe.records import FlowRecord, PayloadSample
from probe.run import read_capture
from probe.sources import LinkType, RawBatch, ReadStatus, open_source

__all__ = ["KNOWN_ISSUES", "LINKTYPES", "PORTS", "SEP", "TARGETS", "ContractBroken", "Target"]

SEP = b"\x00\x00MARSAD\x00\x00"
"""Separates datagrams (or payload samples) inside one fuzz input."""

LINKTYPES = (*(int(x) for x in LinkType), 147)
"""Link types the ``decode`` target picks from (byte 0 modulo the count); 147 is one the
probe does not decode."""

PORTS = (53, 5353, 443, 80, 5060, 5061, 3478, 19302, 8801, 8805, 1719, 1720, 2427, 2000,
         64738, 50000, 4500, 3480, 5004, 10000, 1234, 0)
"""Ports the ``inspect`` target gives its flow (they steer the inspector's dispatch)."""

SMALL_CHUNK = 61
"""Chunk size of the second read of a capture: smaller than most records, and odd, so
that records and blocks straddle chunk boundaries."""


class ContractBroken(AssertionError):
    """The code under test returned, but what it returned contradicts its contract."""


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ContractBroken(what)


# -- known issues ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KnownIssue:
    """A crash already reported and being fixed elsewhere, recognised by where it is raised."""

    name: str
    exc_types: tuple[type[BaseException], ...]
    module: str
    """Path suffix of the file the innermost project frame is in."""
    functions: frozenset[str]
    """Function the innermost project frame is in."""


KNOWN_ISSUES: tuple[KnownIssue, ...] = ()
"""Crashes reported and being fixed elsewhere, counted apart while they are (none now: the
pcapng timestamp overflow and the short interface block were fixed in probe/sources.py)."""


def _known(exc: BaseException) -> str | None:
    if os.environ.get("MARSAD_FUZZ_STRICT") == "1":
        return None
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/probe/" in f.filename or "/classifier/" in f.filename]
    if not frames:
        return None
    last = frames[-1]
    for issue in KNOWN_ISSUES:
        if (isinstance(exc, issue.exc_types) and last.filename.endswith(issue.module)
                and last.name in issue.functions):
            return issue.name
    return None


def _note_known(name: str, data: bytes) -> None:
    path = os.environ.get("MARSAD_FUZZ_KNOWN")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{name} {data[:64].hex()}\n")


# -- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """One fuzz target."""

    name: str
    run: Callable[[bytes], None]
    doc: str


TARGETS: dict[str, Target] = {}


def _target(name: str) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    def register(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        def guarded(data: bytes) -> None:
            try:
                fn(data)
            except (ContractBroken, RecursionError, MemoryError):
                raise
            except Exception as exc:
                issue = _known(exc)
                if issue is None:
                    raise
                _note_known(issue, data)
        TARGETS[name] = Target(name, guarded, (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return register


def _split(data: bytes) -> list[bytes]:
    return data.split(SEP)


# -- capture readers ---------------------------------------------------------------------------


def _status_ok(st: ReadStatus, size: int | None) -> None:
    if st.complete:
        _check(st.stopped_at is None and st.message is None, f"complete but stopped: {st}")
    else:
        _check(st.stopped_at is not None and bool(st.message), f"incomplete, no place: {st}")
        if size is not None and st.stopped_at is not None:
            _check(0 <= st.stopped_at <= size, f"stopped at {st.stopped_at} of {size} bytes")
    if size is not None:
        _check(0 <= st.bytes_read <= size, f"read {st.bytes_read} of {size} bytes")


def _batches_ok(batches: Iterator[RawBatch]) -> int:
    """Walk batches, checking each record lies inside its chunk; returns the packet count."""
    frame = 1
    for b in batches:
        n = len(b)
        _check(b.frame0 == frame, f"batch starts at frame {b.frame0}, expected {frame}")
        for col in (b.caplen, b.wirelen, b.ts_ns, b.linktype):
            _check(len(col) == n, "batch columns of different lengths")
        if n:
            _check(bool((b.caplen >= 0).all()), "negative captured length")
            _check(bool((b.wirelen >= b.caplen).all()), "wire length below captured length")
            _check(bool((b.data_off >= 0).all() and (b.data_off + b.caplen <= len(b.buf)).all()),
                   "record outside its chunk")
        frame += n
    return frame - 1


def _read(body: bytes, size: int | None) -> None:
    """The whole pipeline of the probe, then the reader alone with tiny chunks: both must
    agree on how far the capture could be read."""
    try:
        run = read_capture(io.BytesIO(body))
    except CaptureError:
        run = None
    if run is not None:
        st = run.status
        _status_ok(st, size)
        _check(run.stats.packets == st.packets, f"{run.stats.packets} metered of {st.packets}")
        for f in run.flows:
            _check(1 <= f.first_frame <= f.last_frame <= st.packets,
                   f"flow frames {f.first_frame}-{f.last_frame} of {st.packets}")
    try:
        src = open_source(io.BytesIO(body), SMALL_CHUNK)
        n = _batches_ok(src.batches())
    except CaptureError:
        _check(run is None, "small chunks refuse a capture that large chunks read")
        return
    small = src.status
    _status_ok(small, size)
    _check(n == small.packets, f"{n} packets in batches, status says {small.packets}")
    if run is not None and not small.compressed:
        big = run.status
        _check((big.packets, big.complete, big.stopped_at)
               == (small.packets, small.complete, small.stopped_at),
               f"chunk size changes the reading: {big} vs {small}")


def _size(data: bytes) -> int | None:
    """The size of the capture inside ``data`` (unknown for gzip data)."""
    return None if data[:2] == b"\x1f\x8b" else len(data)


@_target("pcap")
def fuzz_pcap(data: bytes) -> None:
    """Classic pcap (any capture by its magic): read_capture and open_source."""
    _read(data, _size(data))


@_target("pcapng")
def fuzz_pcapng(data: bytes) -> None:
    """pcapng (any capture by its magic): read_capture and open_source."""
    _read(data, _size(data))


@_target("gzip")
def fuzz_gzip(data: bytes) -> None:
    """A capture read through gzip (the target compresses the input)."""
    _read(gzip.compress(data, compresslevel=1, mtime=0), len(data))


# -- link layers and packet decoding -----------------------------------------------------------


def _packets(data: bytes) -> tuple[int, list[bytes]]:
    lt = LINKTYPES[data[0] % len(LINKTYPES)] if data else 1
    out: list[bytes] = []
    p = 1
    while p + 2 <= len(data):
        n = int.from_bytes(data[p:p + 2], "big")
        out.append(data[p + 2:p + 2 + n])
        p += 2 + n
    return lt, out


def _batch(lt: int, packets: list[bytes]) -> RawBatch:
    offs, pos = [], 0
    for pkt in packets:
        offs.append(pos)
        pos += len(pkt)
    n = len(packets)
    caplen = np.asarray([len(p) for p in packets], dtype=np.int64)
    return RawBatch(b"".join(packets), np.asarray(offs, dtype=np.int64), caplen, caplen.copy(),
                    np.arange(n, dtype=np.int64) * 1_000_000, np.full(n, lt, dtype=np.int32), 1)


_FIELDS = ("ipver", "proto", "sport", "dport", "flags", "seq", "ack", "pay_off", "pay_len",
           "pay_cap", "vlan")


def _decoded_ok(b: RawBatch, d: Decoded) -> None:
    n = len(b)
    for name in ("kind", "ipver", "src_hi", "src_lo", "dst_hi", "dst_lo", "proto", "sport",
                 "dport", "flags", "seq", "ack", "pay_off", "pay_len", "pay_cap", "vlan", "zone",
                 "tunnel"):
        _check(len(getattr(d, name)) == n, f"column {name} has {len(getattr(d, name))} of {n}")
    flow = np.flatnonzero(d.kind == KIND_FLOW)
    for i in flow.tolist():
        off, cap = int(b.data_off[i]), int(b.caplen[i])
        po, pl, pc = int(d.pay_off[i]), int(d.pay_len[i]), int(d.pay_cap[i])
        _check(int(d.ipver[i]) in (4, 6), f"packet {i}: IP version {d.ipver[i]}")
        _check(0 <= int(d.sport[i]) <= 0xFFFF and 0 <= int(d.dport[i]) <= 0xFFFF,
               f"packet {i}: ports {d.sport[i]}/{d.dport[i]}")
        _check(0 <= pc <= pl, f"packet {i}: {pc} payload bytes captured of {pl}")
        _check(pc == 0 or off <= po <= po + pc <= off + cap,
               f"packet {i}: payload {po}+{pc} outside the packet {off}+{cap}")
    for i, _ in d.weirds:
        _check(0 <= i < n, f"weird names packet {i} of {n}")


def _fast_agrees_with_slow(b: RawBatch, d: Decoded) -> None:
    """Where the columnar path decoded a whole batch alone, the per-packet decoder (which
    promises the same facts) must read each flow packet the same way."""
    if d.slow:
        return
    for i in np.flatnonzero(d.kind == KIND_FLOW).tolist():
        info, _ = SlowDecoder().decode(b.buf, int(b.data_off[i]), int(b.caplen[i]),
                                       int(b.wirelen[i]), int(b.linktype[i]), int(b.ts_ns[i]))
        _check(info is not None, f"packet {i}: fast path decoded what the slow path cannot")
        assert info is not None
        fast = tuple(int(getattr(d, f)[i]) for f in _FIELDS)
        slow = tuple(int(getattr(info, f)) for f in _FIELDS)
        _check(fast == slow, f"packet {i}: fast {dict(zip(_FIELDS, fast, strict=True))} "
                             f"slow {dict(zip(_FIELDS, slow, strict=True))}")


@_target("decode")
def fuzz_decode(data: bytes) -> None:
    """Decoder (columnar and per-packet paths) on a batch of one link type."""
    lt, packets = _packets(data)
    b = _batch(lt, packets)
    decoder = Decoder()
    d = decoder.decode(b)
    _decoded_ok(b, d)
    _fast_agrees_with_slow(b, d)
    d2 = decoder.decode(b)  # again, with the fragment table the first pass left
    _decoded_ok(b, d2)


# -- DPI inspectors ----------------------------------------------------------------------------


def _quietly(fn: Callable[[], object]) -> object:
    """Call ``fn``; a ParseError is an allowed outcome (returned, not raised)."""
    try:
        return fn()
    except ParseError as exc:
        return exc


@_target("dns")
def fuzz_dns(data: bytes) -> None:
    """DNS: parse_dns (full and answers only), parse_dns_tcp, dns_gist against the parser."""
    full = _quietly(lambda: dns.parse_dns(data))
    if isinstance(full, dns.DnsMessage):
        list(dns.address_names(full))
    _quietly(lambda: dns.parse_dns_tcp(data))
    gist = dns.dns_gist(data)
    if gist is not None:
        m = dns.parse_dns(data, answers_only=True)  # never raises where the gist answers
        slow = (m.is_response, int(m.rcode), m.questions[0].name if m.questions else None,
                tuple(dns.address_names(m)))
        _check((gist.is_response, gist.rcode, gist.question, gist.addresses) == slow,
               f"dns_gist {gist} disagrees with parse_dns {slow}")
    else:
        _quietly(lambda: dns.parse_dns(data, answers_only=True))


def _tls_names_agree(data: bytes, names: Callable[[bytes], tuple[str | None, tuple[str, ...]]],
                     full: Callable[[bytes], tls.ClientHello]) -> None:
    fast = _quietly(lambda: names(data))
    hello = _quietly(lambda: full(data))
    if isinstance(hello, tls.ClientHello):
        tls.ja4(hello)
        tls.ja4_raw(hello, tls.Transport.QUIC)
        _check(fast == (hello.sni, tuple(hello.alpn)),
               f"fast names {fast} disagree with the ClientHello ({hello.sni}, {hello.alpn})")


@_target("tls")
def fuzz_tls(data: bytes) -> None:
    """TLS: records, alerts, Client/ServerHello (records and bare), JA4, the names fast path."""
    _quietly(lambda: tls.parse_records(data))
    _quietly(lambda: tls.find_alert(data))
    _tls_names_agree(data, tls.tls_client_hello_names, tls.parse_tls_client_hello)
    _tls_names_agree(data, tls.client_hello_names, tls.parse_client_hello)
    _quietly(lambda: tls.parse_tls_server_hello(data))
    _quietly(lambda: tls.parse_server_hello(data))


_DCID = bytes.fromhex("8394c8f03e515708")
_KEYS = quic.initial_keys(quic.QuicVersion.V1, _DCID)


def _seal(plain: bytes, pn: int = 0) -> bytes:
    """A v1 client Initial carrying ``plain`` as its frames (RFC 9001 §5.3-5.4)."""
    length = 2 + len(plain) + 16
    if length >= 1 << 14:
        plain, length = plain[:(1 << 14) - 19], (1 << 14) - 1
    header = bytearray(b"\xc1" + (1).to_bytes(4, "big") + bytes([len(_DCID)]) + _DCID
                       + b"\x00\x00" + (0x4000 | length).to_bytes(2, "big")
                       + pn.to_bytes(2, "big"))
    nonce = (int.from_bytes(_KEYS.iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(_KEYS.key).encrypt(nonce, plain, bytes(header))
    encryptor = Cipher(algorithms.AES(_KEYS.hp), modes.ECB()).encryptor()
    mask = encryptor.update(sealed[2:18]) + encryptor.finalize()
    header[0] ^= mask[0] & 0x0F
    header[-2] ^= mask[1]
    header[-1] ^= mask[2]
    return bytes(header) + sealed


@_target("quic")
def fuzz_quic(data: bytes) -> None:
    """QUIC: long headers, Initial decryption, frames, ClientHello, gQUIC, names fast path."""
    if data[:1] == b"P":  # plaintext frames: sealed into Initials, one per separated part
        parts = _split(data[1:])
        _quietly(lambda: quic.parse_initial_frames(parts[0]))
        datagrams = [_seal(p + bytes(max(0, 20 - len(p))), pn) for pn, p in enumerate(parts[:8])]
    else:
        datagrams = _split(data)
        for d in datagrams[:4]:
            _quietly(lambda d=d: quic.split_datagram(d))  # type: ignore[misc]
            _quietly(lambda d=d: quic.parse_gquic_packet(d))  # type: ignore[misc]
            _quietly(lambda d=d: quic.parse_gquic_chlo(d))  # type: ignore[misc]
    full = _quietly(lambda: quic.inspect_client(datagrams))
    names = _quietly(lambda: quic.inspect_client(datagrams, names_only=True))
    if isinstance(full, quic.QuicClientInitial):
        _ = full.ja4
        _check(isinstance(names, quic.QuicNames)
               and (names.version, names.sni, names.alpn) == (full.version, full.sni,
                                                               tuple(full.alpn)),
               f"names only {names} disagree with the Initial ({full.sni}, {full.alpn})")


@_target("dtls")
def fuzz_dtls(data: bytes) -> None:
    """DTLS: records, handshake reassembly across datagrams, Client/ServerHello, alerts."""
    datagrams = _split(data)
    dtls.looks_like_dtls(data)
    _quietly(lambda: dtls.parse_dtls_records(data))
    _quietly(lambda: dtls.handshake_messages(datagrams))
    hello = _quietly(lambda: dtls.parse_dtls_client_hello(datagrams))
    if isinstance(hello, tls.ClientHello):
        tls.ja4(hello, tls.Transport.QUIC)
    _quietly(lambda: dtls.parse_dtls_server_hello(datagrams))
    _quietly(lambda: dtls.find_dtls_alert(datagrams))


@_target("stun")
def fuzz_stun(data: bytes) -> None:
    """STUN/TURN: messages, ChannelData, payloads over UDP and TCP, the gist fast path."""
    stun.looks_like_stun(data)
    stun.udp_stun_possible(data)
    if data:
        stun.classify_first_byte(data[0])
    for tcp in (False, True):
        _quietly(lambda tcp=tcp: stun.parse_stun(data, tcp=tcp))  # type: ignore[misc]
        _quietly(lambda tcp=tcp: stun.parse_channel_data(data, tcp=tcp))  # type: ignore[misc]
        _quietly(lambda tcp=tcp: stun.parse_stun_payload(data, tcp=tcp))  # type: ignore[misc]
    gist = stun.stun_gist(data)
    if gist is not None:
        items = stun.parse_stun_payload(data).items  # never raises where the gist answers
        _check(len(items) == 1 and isinstance(items[0], stun.StunMessage),
               f"stun_gist answered for {len(items)} items")
        m = items[0]
        assert isinstance(m, stun.StunMessage)
        slow = stun.StunGist(*(getattr(m, name) for name in stun.StunGist._fields))
        _check(gist == slow and gist.is_turn == m.is_turn,
               f"stun_gist {gist} disagrees with parse_stun {slow}")


@_target("rtp")
def fuzz_rtp(data: bytes) -> None:
    """RTP and RTCP: headers, compound RTCP, report blocks fast path against the parser."""
    rtp.is_rtp(data)
    rtp.is_rtcp(data)
    header = _quietly(lambda: rtp.parse_rtp(data))
    if isinstance(header, rtp.RtpHeader):
        _ = header.static_type
    compound = _quietly(lambda: rtp.parse_rtcp(data))
    if isinstance(compound, rtp.RtcpCompound):
        for p in compound.packets:
            _ = p.cnames
    blocks = rtp.rtcp_report_blocks(data)
    if blocks is not None:
        c = rtp.parse_rtcp(data)  # never raises where the fast path answers
        slow = tuple((p.ssrc, b.ssrc, b.fraction_lost, b.cumulative_lost, b.highest_sequence,
                      b.jitter) for p in c.packets for b in p.reports) if c.complete else None
        _check(blocks == slow, f"rtcp_report_blocks {blocks} disagree with parse_rtcp {slow}")


@_target("sip")
def fuzz_sip(data: bytes) -> None:
    """SIP over UDP and TCP (framing by Content-Length), SDP bodies and media endpoints."""
    for tcp in (False, True):
        msgs = _quietly(lambda tcp=tcp: sip.parse_sip(data, tcp=tcp))  # type: ignore[misc]
        if isinstance(msgs, tuple):
            for m in msgs:
                if m.sdp is not None:
                    sip.media_endpoints(m.sdp)
    sdp = _quietly(lambda: sip.parse_sdp(data))
    if isinstance(sdp, sip.Sdp):
        sip.media_endpoints(sdp)


@_target("framings")
def fuzz_framings(data: bytes) -> None:
    """Application framings: Zoom (SFU, media, P2P), Discord, Telegram, Viber, WhatsApp."""
    for parse in (framings.parse_zoom_sfu, framings.parse_zoom_media,
                  framings.parse_zoom_p2p_hello, framings.parse_discord,
                  framings.parse_telegram_relay, framings.parse_whatsapp_prologue):
        _quietly(lambda parse=parse: parse(data))  # type: ignore[misc]
    for tcp in (False, True):
        _quietly(lambda tcp=tcp: framings.parse_viber(data, tcp=tcp))  # type: ignore[misc]


@_target("telephony")
def fuzz_telephony(data: bytes) -> None:
    """MGCP, H.225.0 in TPKT, SCCP, Mumble ping, Agora: these never raise at all."""
    telephony.parse_mgcp(data)
    telephony.parse_tpkt(data)
    telephony.parse_h225_tpkt(data)
    telephony.parse_sccp(data)
    telephony.parse_agora(data)
    request, _, reply = data.partition(SEP)
    telephony.parse_mumble_ping(request, reply or None)


# -- the inspection of a whole flow ------------------------------------------------------------


def _flow(data: bytes) -> tuple[FlowRecord, bool]:
    head = data[:3].ljust(3, b"\x00")
    proto = "tcp" if head[0] & 1 else "udp"
    samples = []
    for k, part in enumerate(_split(data[3:])[:16]):
        direction = part[0] & 1 if part else 0
        samples.append(PayloadSample(k + 1, 1.0 + k / 100, direction, part[1:]))
    n_orig = sum(1 for s in samples if s.direction == 0)
    flow = FlowRecord(
        uid="Cfuzz", proto=proto, ip_version=4, orig_h="192.0.2.1",
        orig_p=PORTS[head[1] % len(PORTS)], resp_h="198.51.100.2",
        resp_p=PORTS[head[2] % len(PORTS)], first_ts=1.0, last_ts=1.0 + len(samples) / 100,
        orig_pkts=n_orig, orig_bytes=0, orig_wire_bytes=0, resp_pkts=len(samples) - n_orig,
        resp_bytes=0, resp_wire_bytes=0, orig_flags=0, resp_flags=0, orig_retrans=0,
        resp_retrans=0, first_frame=1, last_frame=max(1, len(samples)), end_reason="eof",
        payloads=tuple(samples))
    return flow, bool(head[0] & 2)


@_target("inspect")
def fuzz_inspect(data: bytes) -> None:
    """classifier.inspect.inspect_flow on a flow of fuzzed payload samples: never raises."""
    flow, fingerprints = _flow(data)
    facts = inspect_flow(flow, fingerprints=fingerprints)
    _check(facts.uid == flow.uid, "facts of another flow")


def run_one(name: str, data: bytes) -> None:
    """Run target ``name`` on one input (what the corpus replay does)."""
    TARGETS[name].run(data)


if __name__ == "__main__":  # python -m fuzz.targets TARGET FILE...: replay inputs
    for path in sys.argv[2:]:
        with open(path, "rb") as fh, contextlib.suppress(KeyboardInterrupt):
            run_one(sys.argv[1], fh.read())
        print(f"{path}: ok")
