"""Evidence: verdicts into the ledger, ledger checks, and evidence bundles.

Recording
    :func:`record_verdicts` appends every verdict other than ``ok`` of an
    :class:`~api.pipeline.AnalysisResult` (calls, and flows with their own
    verdict) to the hash-chained :class:`~policy.ledger.Ledger`. A subject whose
    latest entry for the same capture already holds the same verdict and
    reasons is skipped, so re-running a capture adds nothing; a changed verdict
    (another policy file) is appended, and the ledger keeps both.

Verification
    :func:`verify_ledger` walks the chain and, for the captures it is given
    (matched by SHA-256), re-derives each stored verdict from the packets; an active
    test's entry is re-judged from its stored measurement
    (:func:`api.active.deriver_with_tests`).

Bundles
    :func:`build_bundle` writes a zip holding the subject's packets cut from the
    capture (``packets.pcap``), ``report.json`` (the call and its flows' rows),
    the ledger entries about it (``ledger.json``, when given) and
    ``manifest.json`` (SHA-256 of every file and of the original capture, tool
    version, creation time, anonymisation). :func:`check_bundle` re-hashes it.
    Frame numbers in ``report.json`` are the bundle's own capture's, so that
    ``tshark -r packets.pcap -Y frame.number==N`` shows the packet cited; the
    original capture's numbers stand beside them (``original_frames``...), and each
    evidence entry carries the display filter that shows its packets. A bundle's
    file name comes from the capture's own name (:func:`bundle_name`).

Anonymisation
    Prefix-preserving, in the manner of Crypto-PAn (Xu, Fan, Ammar, Moon,
    ICNP 2002): bit *i* of the output is bit *i* of the input XOR one bit of a
    keyed PRF (HMAC-SHA256) of the *i* bits before it, so two addresses sharing
    a *k*-bit prefix map to two addresses sharing exactly a *k*-bit prefix. Only
    the local side is rewritten: the call's local host and every address of
    :data:`REWRITTEN_CLASSES`; the operator/remote side is left as it is. IPv4/IPv6
    headers are rewritten at every depth (tunnels, ICMP-quoted headers) and
    every checksum covering them is updated incrementally (RFC 1624), so a
    checksum that was right stays right. Application payloads (SIP/SDP bodies,
    STUN attributes) are not rewritten; the manifest says so.

Errors: :class:`EvidenceError` > :class:`UnknownSubject` | :class:`AnonymisationError`
| :class:`BundleError`.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import math
import os
import re
import secrets
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from api.anonymise import Pseudonyms, rewrite_payload
from api.pipeline import AnalysisResult, analyze_capture, capture_sha256, settings_configs
from api.version import marsad_version
from policy.ledger import (
    Anchor,
    Derivation,
    Ledger,
    LedgerEntry,
    NewEntry,
    VerifyReport,
    canonical_json,
)
from policy.records import Call, Verdict, VerdictKind
from policy.rules import Policy, load_policy
from probe import (
    LOCAL_CLASSES,
    AddressClass,
    CutPacket,
    FlowRecord,
    address_class,
    capture_bytes,
    cut_packets,
    link_address_offsets,
    pack_addr,
    packet_addresses,
)
from probe.ring import ring_origin, ring_stream

__all__ = [
    "BUNDLE_FORMAT",
    "PROBLEM_WORDS",
    "REPORT_LANGUAGES",
    "REWRITTEN_CLASSES",
    "SIGNATURE",
    "AnonymisationError",
    "BundleCheck",
    "BundleError",
    "EvidenceError",
    "LedgerItem",
    "PrefixAnonymiser",
    "RecordSummary",
    "UnknownSubject",
    "anonymise_frames",
    "build_bundle",
    "bundle_name",
    "check_bundle",
    "derivations",
    "iter_problem_lines",
    "json_finite",
    "ledger_items",
    "load_public_key",
    "load_signing_key",
    "policy_digest",
    "record_items",
    "record_verdicts",
    "recorded_settings",
    "ring_files",
    "ring_paths",
    "sign_manifest",
    "verdict_items",
    "verify_ledger",
]

BUNDLE_FORMAT = 1
"""``format`` in ``manifest.json``."""
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20
"""Largest ``manifest.json`` :func:`check_bundle` reads (ours are a few hundred bytes)."""
MAX_MEMBER_BYTES = 1 << 32
"""Most bytes :func:`check_bundle` inflates from one member: the manifest states each
file's size, and a member is never read past it, nor past this."""
_CHUNK = 1 << 20
PAYLOAD_SCOPE = ("IPv4/IPv6 header addresses at every depth (tunnels, ICMP-quoted headers) "
                 "and the local end's TCP/UDP ports; in payloads, STUN/TURN address "
                 "attributes (plain and XOR-ed; FINGERPRINT recomputed, MESSAGE-INTEGRITY "
                 "no longer verifies), DNS A/AAAA answers, SIP headers, SDP and ICE "
                 "candidates; every checksum, length and SIP Content-Length follows")
PSEUDONYMS = ("IPv4 in 240.0.0.0/4 (reserved, never routed; a private block keeps its "
              "place and its subnets), IPv6 in 2001:db8::/32 (documentation); ports "
              "below 1024 and the STUN/TURN/SIP service ports (3478, 3479, 5060, 5061, "
              "5349, 5350) kept, other ports permuted in even/odd pairs")


class EvidenceError(Exception):
    """Base of the evidence errors."""


class UnknownSubject(EvidenceError):
    """No call or flow of the capture has this uid."""


class AnonymisationError(EvidenceError):
    """A packet could not be rewritten faithfully."""


class BundleError(EvidenceError):
    """A bundle could not be read at all (not a zip, no manifest)."""


# -- recording ------------------------------------------------------------------------------------


def policy_digest(policy: Policy) -> str:
    """SHA-256 of the policy's values (canonical JSON): which thresholds gave a verdict."""
    return hashlib.sha256(canonical_json(policy.values).encode()).hexdigest()


def json_finite(value: Any) -> Any:
    """The value with NaN and infinities (not JSON) as None, at every depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_finite(v) for v in value]
    return value


def _verdict_evidence(kind: str, flow_uids: Sequence[str], verdict: Verdict,
                      policy_sha: str) -> dict[str, Any]:
    return {"subject": kind, "flow_uids": list(flow_uids), "policy_sha256": policy_sha,
            "evidence": [json_finite(e.to_dict()) for e in verdict.evidence]}


LedgerItem = tuple[str, Verdict, dict[str, Any]]
"""(subject uid, verdict, evidence dict): what a ledger entry is made of."""


def ledger_items(result: AnalysisResult, policy: Policy | None = None) -> list[LedgerItem]:
    """The items of every verdict of ``result`` other than ok, calls first."""
    return verdict_items(result.analysis.calls, result.analysis.flow_verdicts,
                         result.settings, policy)


def verdict_items(calls: Iterable[Call], flow_verdicts: Mapping[str, Verdict],
                  settings: Mapping[str, Any], policy: Policy | None = None
                  ) -> list[LedgerItem]:
    """The items of every verdict other than ok among these calls (in their order) and
    flows' own verdicts, calls first; ``settings``: the meter and pipeline settings other
    than the defaults they were derived with (``api.pipeline.analysis_settings``)."""
    sha = policy_digest(policy or load_policy())
    out: list[LedgerItem] = []
    for call in calls:
        if call.verdict.kind is not VerdictKind.OK:
            out.append((call.uid, call.verdict,
                        _verdict_evidence("call", call.flow_uids, call.verdict, sha)))
    for uid, v in flow_verdicts.items():
        if v.kind is not VerdictKind.OK:
            out.append((uid, v, _verdict_evidence("flow", (uid,), v, sha)))
    if settings:  # other than the defaults: needed to derive the verdicts again
        for _, _, ev in out:
            ev["settings"] = dict(settings)
    return out


def recorded_settings(ledger: Ledger, sha: str, subject: str | None = None
                      ) -> dict[str, Any]:
    """The settings the newest entry of a capture (of ``subject`` in it, when given) was
    derived with (``settings`` in its evidence; empty for the defaults)."""
    entries = [e for e in ledger.entries(capture_sha256=sha)
               if subject is None or e.subject_uid == subject]
    found = entries[-1].evidence.get("settings") if entries else None
    return found if isinstance(found, dict) else {}


@dataclass(frozen=True, slots=True)
class RecordSummary:
    """What :func:`record_verdicts` did."""

    appended: tuple[LedgerEntry, ...]
    """Entries added."""
    skipped: tuple[str, ...]
    """Subjects already recorded for this capture with the same verdict and reasons."""


def record_verdicts(ledger: Ledger, result: AnalysisResult,
                    policy: Policy | None = None) -> RecordSummary:
    """Append the result's verdicts (other than ok) that the ledger does not hold yet."""
    if result.sha256 is None:
        raise EvidenceError("the capture was not read from a file: no SHA-256 to record")
    return record_items(ledger, result.sha256, ledger_items(result, policy))


def record_items(ledger: Ledger, capture_sha: str, items: Iterable[LedgerItem]
                 ) -> RecordSummary:
    """Append the items (:func:`verdict_items`) of the capture whose SHA-256 is
    ``capture_sha`` that the ledger does not hold yet: a subject already recorded for it
    with the same verdict and reasons is skipped."""
    latest: dict[str, LedgerEntry] = {}
    for e in ledger.entries(capture_sha256=capture_sha):
        latest[e.subject_uid] = e
    new: list[NewEntry] = []
    skipped: list[str] = []
    for uid, verdict, evidence in items:
        have = latest.get(uid)
        if have is not None and have.verdict == verdict.kind.name and \
                have.reasons == tuple(r.name for r in verdict.reasons):
            skipped.append(uid)
            continue
        new.append(NewEntry(capture_sha, uid, verdict.kind, verdict.reasons, evidence))
    return RecordSummary(tuple(ledger.append_many(new)), tuple(skipped))


# -- verification ---------------------------------------------------------------------------------


def derivations(result: AnalysisResult) -> list[Derivation]:
    """What the capture's packets say about every subject the ledger may hold."""
    return [Derivation(uid, v.kind, v.reasons) for uid, v, _ in ledger_items(result)]


def verify_ledger(ledger: Ledger, captures: Sequence[str | Path] = (), *,
                  policy: Policy | None = None, anchor: Anchor | None = None,
                  analyse: Callable[[Path], AnalysisResult] | None = None) -> VerifyReport:
    """Check the chain and re-derive the entries of the given captures (by SHA-256).

    A capture is analysed only if the ledger holds entries about it."""
    by_sha = {capture_sha256(p): Path(p) for p in captures}

    def derive(sha: str, context: Mapping[str, Any]) -> list[Derivation] | None:
        """The capture's verdicts as the entries of ``context`` were derived: with the
        settings they recorded, and, for a live probe's subject whose frames span several
        ring files, from those files joined. Settings that cannot be read, or ring files
        not beside the capture with the SHA-256 recorded, give no verdict: each such entry
        does not follow."""
        path = by_sha.get(sha)
        if path is None:
            return None
        if analyse is not None:
            return derivations(analyse(path))
        try:
            meter, pipeline = settings_configs(context.get("settings") or {})
        except ValueError:
            return []
        ring = context.get("ring")
        if isinstance(ring, list) and len(ring) > 1:
            files = ring_paths(path, ring)
            if files is None:
                return []
            return derivations(analyze_capture(
                ring_stream(files), policy=policy, workers=1, hash_capture=False,
                pipeline=pipeline, config=replace(meter, origin=ring_origin(path) or b"")))
        return derivations(analyze_capture(path, policy=policy, workers=1, config=meter,
                                           pipeline=pipeline))

    # Active tests' entries are re-judged from their measurement (api.active).
    from api.active import deriver_with_tests
    return ledger.verify(deriver_with_tests(ledger, policy or load_policy(),
                                            capture_path=by_sha.get, fallback=derive),
                         anchor=anchor)


def ring_paths(path: Path, ring: Sequence[Any]) -> list[Path] | None:
    """The files of ``ring`` (a ledger entry's ``ring``: the live capture's ring files its
    subject's frames span, each ``file``, ``sha256``, ``first_frame``) in stream order,
    found beside ``path`` (a file of the same ring) with the SHA-256 recorded; None when
    ``path`` is no ring's file, an item cannot be read, or a file is missing or changed."""
    if ring_origin(path) is None:
        return None
    items = [f for f in map(_ring_item, ring) if f is not None]
    if len(items) != len(ring):
        return None
    files = []
    for f in sorted(items, key=_stream_order):
        p = path.parent / Path(f["file"]).name
        if not p.is_file() or capture_sha256(p) != f["sha256"]:
            return None
        files.append(p)
    return files


def _ring_item(f: Any) -> dict[str, Any] | None:
    """One file of a ledger entry's ``ring``, its fields of the right kinds; None when it
    cannot be read."""
    try:
        return {"file": str(f["file"]), "sha256": str(f["sha256"]),
                "first_frame": int(f["first_frame"]), "packets": int(f.get("packets") or 0)}
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def _stream_order(f: dict[str, Any]) -> tuple[int, str]:
    return f["first_frame"], f["file"]


def ring_files(ledger: Ledger, sha: str, subject: str | None = None) -> list[dict[str, Any]]:
    """The ring files the entries recorded under ``sha`` (those of ``subject`` only, when
    given) list in their evidence's ``ring``, in stream order: ``file``, ``sha256``,
    ``first_frame``, ``packets``."""
    found: dict[str, dict[str, Any]] = {}
    for entry in ledger.entries(capture_sha256=sha):
        if subject is not None and entry.subject_uid != subject:
            continue
        ring = entry.evidence.get("ring")
        for item in ring if isinstance(ring, list) else []:
            f = _ring_item(item)
            if f is not None:
                found[f["file"]] = f
    return sorted(found.values(), key=_stream_order)


# -- anonymisation --------------------------------------------------------------------------------


class PrefixAnonymiser(Pseudonyms):
    """Keyed pseudonyms in never-routed space, prefix-preserving within a block
    (:class:`api.anonymise.Pseudonyms`); a key shorter than 16 bytes is an
    :class:`AnonymisationError`."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise AnonymisationError("the anonymisation key must be at least 16 bytes")
        super().__init__(key)


REWRITTEN_CLASSES = LOCAL_CLASSES | {AddressClass.LOOPBACK}
"""Address classes always rewritten: the local classes of :mod:`probe.addresses`
(RFC 1918, RFC 6598, RFC 7335, link-local, unique local) and loopback."""


@dataclass(slots=True)
class _Policy:
    """Which addresses get rewritten: the named local hosts (with the public addresses
    the local side learnt for itself, :func:`_learn`) and every private address."""

    anon: PrefixAnonymiser
    local: frozenset[str]
    mapped: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    """Local ports met and their pseudonyms."""
    payloads: dict[str, int] = field(default_factory=dict)
    """Payloads rewritten, by kind (stun, dns, sip)."""
    integrity_broken: int = 0
    macs: frozenset[bytes] = frozenset()
    """The unicast link-layer addresses the frames' headers carry: rewritten wherever
    else they are written too (an mDNS EDNS0 Owner option, a DHCP client address)."""

    def wants(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return str(ip) in self.local or address_class(str(ip)) in REWRITTEN_CLASSES

    def wants_packed(self, raw: bytes) -> bool:
        try:
            return self.wants(ipaddress.ip_address(raw))
        except ValueError:
            return False

    def packed(self, raw: bytes) -> bytes | None:
        ip = ipaddress.ip_address(raw)
        if not self.wants(ip):
            return None
        new = self.text(str(ip))
        return ipaddress.ip_address(new).packed

    def text(self, addr: str) -> str:
        got = self.mapped.get(addr)
        if got is None:
            try:
                got = self.mapped[addr] = self.anon.address(addr)
            except ValueError as exc:
                raise AnonymisationError(str(exc)) from None
        return got

    def port(self, port: int) -> int:
        got = self.ports.get(port)
        if got is None:
            got = self.ports[port] = self.anon.port(port)
        return got


class _Names:
    """The policy's mapping as the payload rewriters ask for it (recording what it maps)."""

    def __init__(self, pol: _Policy) -> None:
        self._pol = pol

    def address(self, text: str) -> str:
        return self._pol.text(text)

    def packed(self, raw: bytes) -> bytes:
        got = self._pol.packed(raw)
        return raw if got is None else got

    def port(self, port: int) -> int:
        return self._pol.port(port)


def _ocsum(data: bytes | bytearray) -> int:
    """Ones'-complement sum of 16-bit big-endian words (odd length padded with zero)."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    s = int(np.frombuffer(bytes(data), dtype=">u2").sum(dtype=np.uint64))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _fix(old_ck: int, old: Sequence[bytes], new: Sequence[bytes]) -> int:
    """RFC 1624 eq. 3 over whole regions: HC' = ~(~HC + ~m + m'). Each region is summed on
    its own, so every region starts on a word boundary."""
    s = ~old_ck & 0xFFFF
    for region in old:
        s += ~_ocsum(region) & 0xFFFF
    for region in new:
        s += _ocsum(region)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _scapy() -> dict[str, Any]:
    """Scapy's dissectors, imported on first use (with the tunnel contribs bound)."""
    import scapy.layers.all  # noqa: F401  (binds every layer)
    from scapy.config import conf
    from scapy.contrib import erspan, gtp, mpls  # noqa: F401  (ERSPAN, GTP-U, MPLS bindings)
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import (
        ICMPv6NDOptDstLLAddr,
        ICMPv6NDOptSrcLLAddr,
        IPv6,
        _ICMPv6,
    )
    from scapy.layers.l2 import GRE, Ether
    from scapy.packet import NoPayload
    return {"conf": conf, "IP": IP, "IPv6": IPv6, "TCP": TCP, "UDP": UDP, "ICMP": ICMP,
            "ICMPv6": _ICMPv6, "GRE": GRE, "Ether": Ether,
            "NDOptLL": ICMPv6NDOptSrcLLAddr | ICMPv6NDOptDstLLAddr, "NoPayload": NoPayload}


_RAW_IP_LINKTYPES = frozenset({12, 14, 101})
"""Link types whose frames are a bare IPv4 or IPv6 packet (LINKTYPE_RAW and the DLT
values it has had)."""


def _layers(frame: bytes, linktype: int, sc: dict[str, Any]) -> list[tuple[Any, int]]:
    """Scapy's layers of a frame, each with its byte offset in the frame."""
    cls = sc["conf"].l2types.num2layer.get(linktype)
    if cls is None and linktype in _RAW_IP_LINKTYPES and frame:
        cls = sc["IP"] if frame[0] >> 4 == 4 else sc["IPv6"]
    if cls is None:
        raise AnonymisationError(f"link type {linktype} cannot be rewritten")
    pkt = cls(frame)
    if bytes(pkt) != frame:
        raise AnonymisationError("the packet does not rebuild to the same bytes")
    layers: list[tuple[Any, int]] = []
    layer = pkt
    while not isinstance(layer, sc["NoPayload"]):
        raw = bytes(layer)
        off = len(frame) - len(raw)
        if frame[off:] != raw:
            if layers and isinstance(layers[-1][0], sc["ICMP"] | sc["ICMPv6"]):
                break  # a quote scapy does not rebuild: read by _rewrite_quote
            raise AnonymisationError(f"cannot locate the {layer.name} layer")
        layers.append((layer, off))
        layer = layer.payload
    return layers


def _rewrite_quote(buf: bytearray, at: int, pol: _Policy) -> None:
    """The packet an ICMP error quotes, from byte ``at`` (when scapy's layers stop at the
    ICMP header): its IP addresses, IPv4 header checksum, and its TCP/UDP ports on the
    local side."""
    if at + 20 > len(buf):
        return
    version = buf[at] >> 4
    if version == 4:
        ihl, width, addr_at, proto = (buf[at] & 0x0F) * 4, 4, at + 12, buf[at + 9]
    elif version == 6 and at + 40 <= len(buf):
        ihl, width, addr_at, proto = 40, 16, at + 8, buf[at + 6]
    else:
        return
    header = bytes(buf[at:at + ihl])
    local = []
    for a in (addr_at, addr_at + width):
        new = pol.packed(bytes(buf[a:a + width])) if a + width <= len(buf) else None
        local.append(new is not None)
        if new is not None:
            buf[a:a + width] = new
    l4 = at + ihl
    if proto in (6, 17) and l4 + 4 <= len(buf):
        old_ports = bytes(buf[l4:l4 + 4])
        for is_local, p in zip(local, (l4, l4 + 2), strict=True):
            if is_local:
                buf[p:p + 2] = pol.port(int.from_bytes(buf[p:p + 2], "big")).to_bytes(2, "big")
        # A whole quoted datagram's payload (STUN, DNS: rewritten to the same length).
        stated = (int.from_bytes(header[2:4], "big") if version == 4
                  else 40 + int.from_bytes(header[4:6], "big"))
        start = l4 + (8 if proto == 17 else (buf[l4 + 12] >> 4) * 4 if l4 + 13 <= len(buf)
                      else len(buf))
        end = at + stated
        old_payload = bytes(buf[start:end]) if start < end <= len(buf) else b""
        if old_payload and _payload(bytes(buf), buf, l4, start, end, proto == 17, pol):
            raise AnonymisationError("a payload rewritten to another length in a quote "
                                     "cannot be re-framed")
        # The quoted segment's own checksum (a router may quote the whole datagram):
        # its pseudo-header addresses, its ports and its payload changed.
        ck = l4 + (6 if proto == 17 else 16)
        old_ck = int.from_bytes(buf[ck:ck + 2], "big") if ck + 2 <= len(buf) else 0
        if old_ck:
            span = addr_at - at, addr_at - at + 2 * width
            value = _fix(old_ck, [header[span[0]:span[1]], old_ports, old_payload],
                         [bytes(buf[addr_at:addr_at + 2 * width]), bytes(buf[l4:l4 + 4]),
                          bytes(buf[start:end]) if old_payload else b""])
            if proto == 17 and value == 0:
                value = 0xFFFF
            buf[ck:ck + 2] = value.to_bytes(2, "big")
    if version == 4 and at + ihl <= len(buf):
        ck = at + 10
        old_ck = int.from_bytes(header[10:12], "big")
        before, after = bytearray(header), bytearray(buf[at:at + ihl])
        before[10:12] = after[10:12] = b"\0\0"
        buf[ck:ck + 2] = _fix(old_ck, [bytes(before)], [bytes(after)]).to_bytes(2, "big")


def _ip_end(frame: bytes | bytearray, layer: Any, off: int, sc: dict[str, Any]) -> int:
    """Where an IP packet ends in the frame (its stated length, cut to the frame)."""
    if isinstance(layer, sc["IP"]):
        n = int.from_bytes(frame[off + 2:off + 4], "big")
    else:
        n = 40 + int.from_bytes(frame[off + 4:off + 6], "big")
    return min(off + n, len(frame))


def _innermost_l4(layers: list[tuple[Any, int]], sc: dict[str, Any]
                  ) -> tuple[int | None, bool]:
    """(index of the innermost TCP/UDP layer, whether it lies in an ICMP error's quote)."""
    found, quoted, in_icmp = None, False, False
    for i, (layer, _) in enumerate(layers):
        if isinstance(layer, sc["ICMP"] | sc["ICMPv6"]):
            in_icmp = True
        if isinstance(layer, sc["TCP"] | sc["UDP"]):
            found, quoted = i, in_icmp
    return found, quoted


def _payload(frame: bytes, buf: bytearray, off: int, start: int, end: int, is_udp: bool,
             pol: _Policy) -> int:
    """Rewrite the TCP/UDP payload ``frame[start:end]`` (its header at ``off``) in ``buf``;
    the change of length."""
    ports = (int.from_bytes(frame[off:off + 2], "big"),
             int.from_bytes(frame[off + 2:off + 4], "big"))
    got = rewrite_payload(frame[start:end], "udp" if is_udp else "tcp", ports,
                          pol.wants_packed, _Names(pol))
    if got.kind is None or got.data == frame[start:end]:
        return 0
    pol.payloads[got.kind] = pol.payloads.get(got.kind, 0) + 1
    pol.integrity_broken += got.integrity_broken
    buf[start:end] = got.data
    return len(got.data) - (end - start)


def _link_spans(buf: bytearray, linktype: int, layers: list[tuple[Any, int]],
                sc: dict[str, Any]) -> list[int]:
    """Where a frame writes link-layer addresses: its link header's, where the probe reads
    them (:func:`probe.linklayer.link_address_offsets`: Ethernet's destination and
    source, a Linux cooked capture's sender); Ethernet headers inside it (a VXLAN or
    ERSPAN tunnel carries the inner frame's); IPv6 neighbour discovery's link-layer
    address options."""
    spans = [at for layer, off in layers if isinstance(layer, sc["Ether"])
             and off + 12 <= len(buf) for at in (off, off + 6)]
    # IPv6 neighbour discovery's source/target link-layer address options (RFC 4861
    # §4.6.1): type, length, then the address; the ICMPv6 checksum follows the change.
    spans += [off + 2 for layer, off in layers if isinstance(layer, sc["NDOptLL"])
              and off + 8 <= len(buf) and buf[off + 1] == 1]
    spans += [at for at in link_address_offsets(buf, linktype) if at not in spans]
    return spans


def _rewrite_link(buf: bytearray, linktype: int, layers: list[tuple[Any, int]],
                  pol: _Policy, sc: dict[str, Any]) -> None:
    """Every unicast link-layer address of a frame as its pseudonym: a device's MAC
    address names it (and its owner) as surely as its IP address. Where the headers
    write them (:func:`_link_spans`), and wherever else a frame carries one of the
    addresses the bundle's headers do (``pol.macs``); the checksums that cover a
    changed payload follow (:func:`_fix_checksums`)."""
    spans = _link_spans(buf, linktype, layers, sc)
    for at in spans:
        buf[at:at + 6] = pol.anon.link(bytes(buf[at:at + 6]))
    for mac in pol.macs:
        at = buf.find(mac)
        while at >= 0:
            buf[at:at + 6] = pol.anon.link(mac)
            at = buf.find(mac, at + 6)


def _rewrite(frame: bytes, linktype: int, pol: _Policy, sc: dict[str, Any]) -> bytes:
    """The frame with the local side rewritten: addresses in every IP header, the local
    end's ports in every TCP/UDP header, and the payload of its own innermost TCP/UDP
    layer (:func:`api.anonymise.rewrite_payload`). A payload rewritten to another length
    (SIP text) is allowed in a UDP datagram that is not tunnelled: its IP and UDP
    lengths follow. Every checksum that was right stays right (RFC 1624 over the
    changed regions)."""
    layers = _layers(frame, linktype, sc)
    buf = bytearray(frame)
    _rewrite_link(buf, linktype, layers, pol, sc)
    ips: list[tuple[int, int, int]] = []  # (layer index, address offset, address width)
    local_ends: dict[int, tuple[bool, bool]] = {}  # IP layer index: (src local, dst local)
    for i, (layer, off) in enumerate(layers):
        if isinstance(layer, sc["IP"]):
            ips.append((i, off + 12, 4))
        elif isinstance(layer, sc["IPv6"]):
            ips.append((i, off + 8, 16))
        else:
            continue
        at, width = ips[-1][1], ips[-1][2]
        ends = []
        for a in (at, at + width):
            if a + width > len(buf):
                ends.append(False)
                continue
            new = pol.packed(bytes(buf[a:a + width]))
            ends.append(new is not None)
            if new is not None:
                buf[a:a + width] = new
        local_ends[i] = (ends[0], ends[1])
    last, last_off = layers[-1]
    if isinstance(last, sc["ICMP"] | sc["ICMPv6"]) and len(bytes(last)) > 8:
        _rewrite_quote(buf, last_off + 8, pol)
    # Ports of the local end, in every TCP/UDP header (quoted ones too).
    for i, (layer, off) in enumerate(layers):
        if not isinstance(layer, sc["TCP"] | sc["UDP"]) or off + 4 > len(buf):
            continue
        parent = [x[0] for x in ips if x[0] < i]
        if not parent:
            continue
        src_local, dst_local = local_ends[parent[-1]]
        for local, at in ((src_local, off), (dst_local, off + 2)):
            if local:
                old_port = int.from_bytes(buf[at:at + 2], "big")
                buf[at:at + 2] = pol.port(old_port).to_bytes(2, "big")
    # The payload of the innermost TCP/UDP layer (in an ICMP error's quote too).
    delta = 0
    l4, quoted = _innermost_l4(layers, sc)
    if l4 is not None and ips and ips[-1][0] < l4:
        ip_i = ips[-1][0]
        ip_layer, ip_off = layers[ip_i]
        layer, off = layers[l4]
        end = _ip_end(frame, ip_layer, ip_off, sc)
        is_udp = isinstance(layer, sc["UDP"])
        start = off + (8 if is_udp else (frame[off + 12] >> 4) * 4 if off + 13 <= len(frame)
                       else len(frame))
        whole = end == (ip_off + (int.from_bytes(frame[ip_off + 2:ip_off + 4], "big")
                                  if isinstance(ip_layer, sc["IP"]) else
                                  40 + int.from_bytes(frame[ip_off + 4:ip_off + 6], "big")))
        if whole and start < end:
            delta = _payload(frame, buf, off, start, end, is_udp, pol)
            if delta and (not is_udp or len(ips) > 1):
                where = "over TCP" if not is_udp else "in a quote" if quoted else "in a tunnel"
                raise AnonymisationError(f"a payload rewritten to another length {where} "
                                         f"cannot be re-framed")
            if delta:
                _shift_lengths(buf, ip_layer, ip_off, off, delta, sc)
    if buf == bytearray(frame):
        return frame
    _fix_checksums(frame, buf, layers, ips, l4, delta, sc)
    return bytes(buf)


def _shift_lengths(buf: bytearray, ip_layer: Any, ip_off: int, udp_off: int, delta: int,
                   sc: dict[str, Any]) -> None:
    """A datagram's payload grew (or shrank) by ``delta``: its IP and UDP lengths follow."""
    at = ip_off + 2 if isinstance(ip_layer, sc["IP"]) else ip_off + 4
    buf[at:at + 2] = (int.from_bytes(buf[at:at + 2], "big") + delta).to_bytes(2, "big")
    at = udp_off + 4
    buf[at:at + 2] = (int.from_bytes(buf[at:at + 2], "big") + delta).to_bytes(2, "big")


def _fix_checksums(frame: bytes, buf: bytearray, layers: list[tuple[Any, int]],
                   ips: list[tuple[int, int, int]], l4: int | None, delta: int,
                   sc: dict[str, Any]) -> None:
    """Update every checksum of ``buf`` (the rewritten ``frame``) incrementally,
    innermost first, so outer ones cover the inner ones' new values."""
    for i in range(len(layers) - 1, -1, -1):
        layer, off = layers[i]
        pseudo = True
        parent = [x for x in ips if x[0] < i]
        end = len(frame)
        if parent:
            p_layer, p_off = layers[parent[-1][0]]
            end = _ip_end(frame, p_layer, p_off, sc)
        if isinstance(layer, sc["IP"]):
            ck, end, pseudo = off + 10, off + (frame[off] & 0x0F) * 4, False
        elif isinstance(layer, sc["TCP"]):
            ck = off + 16
        elif isinstance(layer, sc["UDP"]):
            ck = off + 6
        elif isinstance(layer, sc["ICMPv6"]):
            ck = off + 2
        elif isinstance(layer, sc["ICMP"]):
            ck, pseudo = off + 2, False
        elif isinstance(layer, sc["GRE"]) and layer.chksum_present:
            ck, pseudo = off + 4, False
        else:
            continue
        if ck + 2 > len(frame):
            continue
        grows = delta if (l4 is not None and i <= l4
                          and not isinstance(layer, sc["IP"])) else 0
        old_ck = int.from_bytes(frame[ck:ck + 2], "big")
        if isinstance(layer, sc["UDP"]) and old_ck == 0:
            continue  # no checksum (RFC 768)
        before = bytearray(frame[off:end])
        after = bytearray(buf[off:end + grows])
        before[ck - off:ck - off + 2] = after[ck - off:ck - off + 2] = b"\0\0"
        old_regions, new_regions = [bytes(before)], [bytes(after)]
        if pseudo and parent:  # the enclosing IP header (RFC 768, RFC 9293 §3.1, RFC 8200 §8.1)
            _, at, width = parent[-1]
            old_regions.append(frame[at:at + 2 * width])
            new_regions.append(bytes(buf[at:at + 2 * width]))
            if grows:  # the upper-layer length in the pseudo-header
                fmt = "!H" if width == 4 else "!I"
                old_regions.append(struct.pack(fmt, end - off))
                new_regions.append(struct.pack(fmt, end - off + grows))
        value = _fix(old_ck, old_regions, new_regions)
        if isinstance(layer, sc["UDP"]) and value == 0:
            value = 0xFFFF
        buf[ck:ck + 2] = value.to_bytes(2, "big")


def anonymise_frames(packets: Sequence[CutPacket], anon: PrefixAnonymiser,
                     local: Iterable[str]) -> tuple[list[CutPacket], dict[str, str]]:
    """Rewrite the local side in every packet: addresses in every IP header, its ports
    in every TCP/UDP header, and both wherever the payloads marsad parses carry them
    (:mod:`api.anonymise`).

    Returns the rewritten packets and the address mapping used. Raises
    :class:`AnonymisationError` if a packet cannot be rewritten faithfully or if,
    read back by the probe's decoder, any flow endpoint still shows a local address.
    """
    out, pol = _anonymise(packets, anon, local)
    return out, dict(pol.mapped)


def _header_macs(packets: Sequence[CutPacket], sc: dict[str, Any]) -> Iterator[bytes]:
    """The unicast link-layer addresses the packets' headers write (a frame that cannot
    be dissected is left to the rewrite, which names it)."""
    for p in packets:
        try:
            layers = _layers(p.data, p.linktype, sc)
        except AnonymisationError:
            continue
        for at in _link_spans(bytearray(p.data), p.linktype, layers, sc):
            if not p.data[at] & 1:
                yield bytes(p.data[at:at + 6])


def _anonymise(packets: Sequence[CutPacket], anon: PrefixAnonymiser,
               local: Iterable[str]) -> tuple[list[CutPacket], _Policy]:
    sc = _scapy()
    named = frozenset(local)
    pol = _Policy(anon, named | _learn(packets, _Policy(anon, named), sc))
    pol.macs = frozenset(_header_macs(packets, sc))
    out: list[CutPacket] = []
    for p in packets:
        try:
            data = _rewrite(p.data, p.linktype, pol, sc)
        except AnonymisationError as exc:
            raise AnonymisationError(f"frame {p.frame}: {exc}") from None
        out.append(CutPacket(p.frame, p.ts_ns, p.wirelen + len(data) - len(p.data),
                             p.linktype, data))
    _check_gone(out, pol)
    return out, pol


_STUN_COOKIE = b"\x21\x12\xa4\x42"
_SDP_ADDRESS = re.compile(rb"^(?:c=IN IP[46] |o=\S+ \S+ \S+ IN IP[46] )(\S+)", re.M)
_CONTACT = re.compile(rb"^(?:Contact|m)[ \t]*:[^\r\n]*?@\[?([0-9A-Fa-f.:]+?)\]?[:;>\s]",
                      re.M | re.I)


def _learn(packets: Sequence[CutPacket], pol: _Policy, sc: dict[str, Any]) -> frozenset[str]:
    """Public addresses the local side learnt or stated for itself, to be rewritten with
    it: the reflexive address a STUN or TURN server (or an ICE peer) tells a local host
    in a success response (XOR-MAPPED-ADDRESS, MAPPED-ADDRESS), and the addresses a local
    host's own SIP messages give as its own (SDP ``c=`` and ``o=``, ``Contact``)."""
    found: set[str] = set()
    for p in packets:
        d = p.data
        stun = _STUN_COOKIE in d
        if not stun and b"SIP/2.0" not in d:
            continue
        try:
            layers = _layers(d, p.linktype, sc)
        except AnonymisationError:
            continue
        l4, quoted = _innermost_l4(layers, sc)
        ip = [i for i, (layer, _) in enumerate(layers)
              if isinstance(layer, sc["IP"] | sc["IPv6"]) and (l4 is None or i < l4)]
        if l4 is None or quoted or not ip:
            continue
        ip_layer, ip_off = layers[ip[-1]]
        width = 4 if isinstance(ip_layer, sc["IP"]) else 16
        at = ip_off + (12 if width == 4 else 8)
        src, dst = d[at:at + width], d[at + width:at + 2 * width]
        layer, off = layers[l4]
        start = off + (8 if isinstance(layer, sc["UDP"]) else (d[off + 12] >> 4) * 4)
        payload = d[start:_ip_end(d, ip_layer, ip_off, sc)]
        if stun and pol.wants_packed(dst) and payload[:2] == b"\x01\x01":
            found.update(_mapped_addresses(payload))
        elif pol.wants_packed(src) and b"SIP/2.0" in payload[:64]:
            for m in (*_SDP_ADDRESS.finditer(payload), *_CONTACT.finditer(payload)):
                try:
                    found.add(str(ipaddress.ip_address(m.group(1).decode("ascii"))))
                except ValueError:
                    continue
    return frozenset(found)


def _mapped_addresses(msg: bytes) -> list[str]:
    """The addresses of a STUN Binding success response's (XOR-)MAPPED-ADDRESS."""
    out: list[str] = []
    if len(msg) < 20 or msg[4:8] != _STUN_COOKIE:
        return out
    mask = msg[4:20]
    pos = 20
    while pos + 4 <= len(msg):
        atype, alen = struct.unpack_from("!HH", msg, pos)
        v = msg[pos + 4:pos + 4 + alen]
        if atype in (0x0001, 0x0020, 0x8020) and len(v) >= 8:
            width = 4 if v[1] == 1 else 16 if v[1] == 2 else 0
            raw = v[4:4 + width]
            if width and len(raw) == width:
                if atype != 0x0001:
                    raw = bytes(a ^ b for a, b in zip(raw, mask, strict=False))
                out.append(str(ipaddress.ip_address(raw)))
        pos += 4 + alen + (-alen % 4)
    return out


def _check_gone(packets: Sequence[CutPacket], pol: _Policy) -> None:
    """Read the rewritten packets with the probe: no flow endpoint may still be local."""
    originals = {pack_addr(a) for a in pol.mapped} | {pack_addr(a) for a in pol.local}
    for i, halves in packet_addresses(packets):
        if halves in originals:
            raise AnonymisationError(
                f"frame {packets[i].frame}: an address in a layer the rewriter does not know "
                f"was left as it was")


_IPV4_TEXT = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])")
_IPV6_TEXT = re.compile(r"(?<![0-9A-Fa-f:.])[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*[0-9A-Fa-f]"
                        r"(?![0-9A-Fa-f:])")


_IPV4_PORT_TEXT = re.compile(_IPV4_TEXT.pattern + r"(?::\d{1,5}(?!\d))?")


def _anon_text(text: str, pol: _Policy) -> str:
    """Local addresses in a sentence as their pseudonyms, and a port written right after
    one (``addr:port``) as its own."""
    def sub(m: re.Match[str]) -> str:
        word = m.group(0)
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            return word
        return pol.text(str(ip)) if pol.wants(ip) else word

    def sub_v4(m: re.Match[str]) -> str:
        word, _, port = m.group(0).partition(":")
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            return m.group(0)
        if not pol.wants(ip):
            return m.group(0)
        new = pol.text(str(ip))
        return f"{new}:{pol.port(int(port))}" if port and int(port) < 65536 else new
    return _IPV6_TEXT.sub(sub, _IPV4_PORT_TEXT.sub(sub_v4, text))


_ENDPOINTS = (("orig_h", "orig_p"), ("resp_h", "resp_p"))
_L2_KEYS = ("orig_l2_addr", "resp_l2_addr")


def _anon_json(value: Any, pol: _Policy) -> Any:
    """Report JSON with the local side's addresses (in every string) and its ports (a
    flow row's ``orig_p``/``resp_p`` beside a local host) as their pseudonyms."""
    if isinstance(value, str):
        return _anon_text(value, pol)
    if isinstance(value, dict):
        out = {k: _anon_json(v, pol) for k, v in value.items()}
        for k in _L2_KEYS:
            mac = value.get(k)
            if isinstance(mac, str) and len(mac) == 17:
                out[k] = ":".join(f"{b:02x}" for b in pol.anon.link(bytes.fromhex(
                    mac.replace(":", ""))))
        for h, p in _ENDPOINTS:
            host, port = value.get(h), value.get(p)
            if isinstance(host, str) and isinstance(port, int) and not isinstance(port, bool):
                try:
                    local = pol.wants(ipaddress.ip_address(host))
                except ValueError:
                    local = False
                if local:
                    out[p] = pol.port(port)
        return out
    if isinstance(value, list | tuple):
        return [_anon_json(v, pol) for v in value]
    return value


# -- bundles --------------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
                        | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def _subject(result: AnalysisResult, uid: str) -> tuple[Call | None, list[FlowRecord]]:
    by_uid = {f.uid: f for f in result.flows}
    for call in result.analysis.calls:
        if call.uid == uid:
            return call, [by_uid[u] for u in call.flow_uids if u in by_uid]
    if uid in by_uid:
        return None, [by_uid[uid]]
    raise UnknownSubject(f"no call or flow {uid} in this capture")


SIGNATURE = "manifest.sig"
"""The Ed25519 signature of ``manifest.json``'s exact bytes, when the bundle is signed:
a JSON object of ``algorithm``, ``public_key`` (raw, hex) and ``signature`` (hex)."""


def load_signing_key(path: str | Path) -> Any:
    """An Ed25519 private key from a PEM file (PKCS#8, unencrypted), as made by
    ``openssl genpkey -algorithm ed25519``; :class:`EvidenceError` if it is not one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    try:
        key = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise EvidenceError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise EvidenceError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> bytes:
    """The raw 32 bytes of an Ed25519 public key from a PEM file (or of the public half
    of a private key file)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_pem_private_key,
        load_pem_public_key,
    )
    data = Path(path).read_bytes()
    key: Any
    try:
        key = load_pem_public_key(data)
    except ValueError:
        try:
            key = load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise EvidenceError(f"{path}: not a PEM key ({exc})") from None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise EvidenceError(f"{path}: not an Ed25519 key")
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def sign_manifest(manifest: bytes, key: Any) -> bytes:
    """The signature file of a bundle: ``manifest`` signed with the Ed25519 private
    ``key``, with the public key and its SHA-256 to check it by."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return _json_bytes({"algorithm": "Ed25519", "signed_file": MANIFEST,
                        "public_key": public.hex(),
                        "public_key_sha256": hashlib.sha256(public).hexdigest(),
                        "signature": key.sign(manifest).hex()})


def _check_signature(manifest: bytes, sig_doc: bytes, trusted: bytes | None
                     ) -> tuple[str, str | None]:
    """(status, problem): ``valid``, or ``invalid``/``untrusted`` with what is wrong."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    try:
        doc = json.loads(sig_doc)
        public = bytes.fromhex(doc["public_key"])
        signature = bytes.fromhex(doc["signature"])
        if doc.get("algorithm") != "Ed25519" or len(public) != 32:
            raise ValueError("not an Ed25519 signature")
        Ed25519PublicKey.from_public_bytes(public).verify(signature, manifest)
    except InvalidSignature:
        return "invalid", f"{SIGNATURE}: the signature does not match manifest.json"
    except (ValueError, KeyError, TypeError) as exc:
        return "invalid", f"{SIGNATURE}: unreadable ({exc})"
    if trusted is not None and public != trusted:
        return "untrusted", (f"{SIGNATURE}: signed by key {hashlib.sha256(public).hexdigest()}, "
                             f"not by the key given ({hashlib.sha256(trusted).hexdigest()})")
    return "valid", None


_FRAME_WORDS = re.compile(r"\b(frames?) (\d+)(?:-(\d+))?")
_FRAME_KEYS = ("frame", "frames", "first_frame", "last_frame")


@dataclass(frozen=True, slots=True)
class _Renumber:
    """Frame numbers of the original capture to those of the bundle's own capture, where
    packet ``i`` (1-based) is the ``i``-th packet cut (:func:`~probe.cut_packets` keeps
    file order)."""

    to_bundle: dict[int, int]

    def frame(self, original: int) -> int | None:
        return self.to_bundle.get(original)

    def text(self, sentence: str) -> str:
        """``frame 29`` becomes ``frame 3 (frame 29 of the original capture)``; a frame not
        in the bundle is said to be so."""
        def sub(m: re.Match[str]) -> str:
            word, a, b = m.group(1), int(m.group(2)), m.group(3)
            olds = [a] if b is None else [a, int(b)]
            news = [self.frame(x) for x in olds]
            orig = "-".join(str(x) for x in olds)
            if any(x is None for x in news):
                return f"{word} {orig} of the original capture (not in this bundle)"
            here = "-".join(str(x) for x in news)
            return f"{word} {here} ({word} {orig} of the original capture)"
        return _FRAME_WORDS.sub(sub, sentence)

    def doc(self, value: Any) -> Any:
        """``value`` (report JSON) with every frame number the bundle's, the original's
        beside it as ``original_<key>``, and sentences renumbered likewise; an evidence
        entry gains ``tshark_filter``, the display filter that shows its packets."""
        if isinstance(value, list):
            return [self.doc(v) for v in value]
        if not isinstance(value, dict):
            return value
        out: dict[str, Any] = {}
        for k, v in value.items():
            if k in _FRAME_KEYS and isinstance(v, int) and not isinstance(v, bool):
                out[k] = self.frame(v)
                out[f"original_{k}"] = v
            elif k in _FRAME_KEYS and isinstance(v, list) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                out[k] = [n for n in (self.frame(x) for x in v) if n is not None]
                out[f"original_{k}"] = v
                missing = [x for x in v if self.frame(x) is None]
                if missing:
                    out[f"original_{k}_not_in_bundle"] = missing
            elif k == "text" and isinstance(v, str):
                out[k] = self.text(v)
            else:
                out[k] = self.doc(v)
        if "rule" in out and isinstance(out.get("frames"), list) and out["frames"]:
            out["tshark_filter"] = "frame.number in {" + ",".join(
                str(n) for n in out["frames"]) + "}"
        return out


def bundle_name(capture_name: str, uid: str) -> str:
    """The file name of a bundle about ``uid`` of the capture named ``capture_name``:
    ``<capture stem>-<uid>.zip``, the stem cut to safe characters (the same capture name
    and uid always give the same name)."""
    base = os.path.basename(capture_name.replace("\\", "/"))
    for suffix in (".gz", ".pcapng", ".pcap", ".cap"):
        if base.lower().endswith(suffix):
            base = base[:-len(suffix)]
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")[:80] or "capture"
    return f"{stem}-{uid}.zip"


def build_bundle(result: AnalysisResult, call_uid: str, capture_path: str | Path,
                 anonymize: bool, key: bytes | None, *,
                 ledger_entries: Sequence[LedgerEntry] | None = None,
                 clock: Callable[[], float] = time.time,
                 capture_name: str | None = None, signing_key: Any = None,
                 policy: Policy | None = None,
                 ring: Sequence[Mapping[str, Any]] | None = None,
                 ledger_name: str = "evidence.db") -> bytes:
    """A zip of the evidence about one call (or one flow) of an analysed capture.

    ``result`` must come from ``capture_path`` (checked by SHA-256). With
    ``anonymize``, ``key`` (random when None) keys the address mapping; the key
    is not stored in the bundle. ``ledger_entries`` are filtered to the subject.
    ``capture_name`` is the capture's own name (an upload's file name) when
    ``capture_path`` is a copy under another name. With ``signing_key`` (an Ed25519
    private key, :func:`load_signing_key`) the bundle carries :data:`SIGNATURE`, the
    signature of ``manifest.json``, which lists every other file's SHA-256.
    A call's bundle holds its report for people (:mod:`api.document`) in every
    language as HTML (``report.<lang>.html``) and in English as Markdown, made with
    ``policy`` (the one the analysis used; the default policy when None), its frame
    numbers the bundle's, anonymised with the rest.

    Frame numbers in ``report.json`` are those of the bundle's own capture
    (``packets.pcap``), each with the original capture's beside it
    (``original_frames``...); ``ledger.json`` holds the ledger's entries as recorded,
    in the original capture's numbers.

    ``ledger_name`` is the ledger's file name, for the reports' command that verifies
    it. ``ring`` lists the ring files ``capture_path`` joins (:func:`probe.ring.ring_stream`:
    a live probe's subject whose frames span several, :func:`ring_files`); the manifest
    lists them with the capture, and the ledger's entries are those recorded under the
    last one (the file holding the subject's last frame).
    """
    sha = capture_sha256(capture_path)
    ledger_sha = str(ring[-1]["sha256"]) if ring else sha
    if result.sha256 is not None and result.sha256 != sha:
        raise EvidenceError(f"{capture_path}: SHA-256 {sha} differs from the analysed "
                            f"capture's {result.sha256}")
    call, flows = _subject(result, call_uid)
    flow_uids = {f.uid for f in flows}
    rows = [r for r in result.flow_rows() if r["uid"] in flow_uids]
    icmp_frames = [n.frame for f in flows for n in f.icmp]
    packets = cut_packets(capture_path, flows, icmp_frames)
    renumber = _Renumber({p.frame: i for i, p in enumerate(packets, 1)})
    # capture_bytes' choice: a pcap for one link type, a pcapng for several.
    pcap_name = "packets.pcap" if len({p.linktype for p in packets}) <= 1 else "packets.pcapng"
    body: dict[str, Any] = {"flows": rows}
    if call is not None:
        body["call"] = call.to_dict()
    else:
        v = result.analysis.flow_verdicts.get(call_uid)
        body["flow_verdict"] = None if v is None else v.to_dict()
    report: dict[str, Any] = {
        "subject_uid": call_uid, "capture_sha256": sha, **renumber.doc(body),
        # Packet i of the bundle's capture is frame original_frames[i - 1] of the original.
        "packets": {"count": len(packets), "file": pcap_name,
                    "frame_numbers": f"frame numbers in this report are those of {pcap_name}; "
                                     "original_* beside them are the original capture's",
                    "original_frames": [p.frame for p in packets]}}
    ledger_doc: list[dict[str, Any]] | None = None
    if ledger_entries is not None:
        subjects = flow_uids | {call_uid}
        ledger_doc = [e.to_dict() for e in ledger_entries
                      if e.capture_sha256 == ledger_sha and e.subject_uid in subjects]
    anonymisation: dict[str, Any] | None = None
    pol: _Policy | None = None
    if anonymize:
        local = {call.local} if call is not None and call.local else set()
        anon = PrefixAnonymiser(key if key is not None else secrets.token_bytes(32))
        packets, pol = _anonymise(packets, anon, local)
        for f in flows:
            for a in (f.orig_h, f.resp_h):
                if pol.wants(ipaddress.ip_address(a)):
                    pol.text(a)
        report = _anon_json(report, pol)
        if ledger_doc is not None:
            ledger_doc = _anon_json(ledger_doc, pol)
        anonymisation = {
            "method": "prefix-preserving (Crypto-PAn construction, HMAC-SHA256 per prefix bit)",
            "rewritten": "the call's local host, the public addresses it learnt or stated "
                         "for itself (STUN mapped addresses, its SIP/SDP addresses) and every "
                         "RFC 1918, RFC 6598, link-local, loopback and unique-local address, "
                         "with their ports; the remote side is unchanged",
            "pseudonyms": PSEUDONYMS,
            "scope": PAYLOAD_SCOPE,
            "addresses_rewritten": len(pol.mapped),
            "ports_rewritten": sum(1 for a, b in pol.ports.items() if a != b),
            "ports_kept": sorted({a for a, b in pol.ports.items() if a == b}),
            "payloads_rewritten": dict(sorted(pol.payloads.items())),
            "stun_integrity_broken": pol.integrity_broken,
            "ledger_note": None if ledger_doc is None else
            "ledger.json entries are anonymised copies: their entry_hash values refer to the "
            "original entries and do not verify against these copies"}
    written_name, pcap = capture_bytes(packets)
    if written_name != pcap_name:
        raise EvidenceError(f"the bundle's capture came out as {written_name}, "
                            f"not {pcap_name}")
    files: dict[str, bytes] = {pcap_name: pcap, "report.json": _json_bytes(report)}
    if ledger_doc is not None:
        files["ledger.json"] = _json_bytes(ledger_doc)
    if call is not None:
        files.update(_documents(result, call_uid, files, renumber, pcap_name,
                                capture_name or os.path.basename(str(capture_path)),
                                policy or load_policy(), pol, ledger_name))
    created = clock()
    manifest = {
        "format": BUNDLE_FORMAT, "tool": "marsad", "tool_version": marsad_version(),
        "created_at": _iso(created), "subject_uid": call_uid,
        "capture": {"sha256": sha,
                    "name": os.path.basename(capture_name or str(capture_path)),
                    **({"ring": [dict(f) for f in ring],
                        "joined": "the ring files listed, in order: the first whole, then "
                                  "each next one without its 24-byte pcap header"}
                       if ring else {})},
        "packets": len(packets), "anonymised": anonymize, "anonymisation": anonymisation,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()}}
    return zip_bundle(files, manifest, created, signing_key)


def zip_bundle(files: dict[str, bytes], manifest: dict[str, Any], created: float,
               signing_key: Any) -> bytes:
    """A bundle's zip: its files, the manifest (and its Ed25519 signature with
    ``signing_key``), every member stamped with the creation time so the same bundle
    zips to the same bytes."""
    out = io.BytesIO()
    stamp = datetime.fromtimestamp(created, tz=UTC).timetuple()[:6]
    manifest_bytes = _json_bytes(manifest)
    members = [*files.items(), (MANIFEST, manifest_bytes)]
    if signing_key is not None:
        members.append((SIGNATURE, sign_manifest(manifest_bytes, signing_key)))
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out.getvalue()


REPORT_LANGUAGES = ("en", "fr", "ar")
"""The languages of the reports in a call's bundle."""


def _documents(result: AnalysisResult, call_uid: str, files: dict[str, bytes],
               renumber: _Renumber, pcap_name: str, capture_name: str, policy: Policy,
               pol: _Policy | None, ledger_name: str) -> dict[str, bytes]:
    """``report.<lang>.html`` for each of :data:`REPORT_LANGUAGES` and ``report.en.md``:
    the call's report, citing the bundle's own frames and the other files' SHA-256; with
    ``pol``, its addresses and ports anonymised as the packets are."""
    from api.document import build_document, render_html, render_markdown
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    out: dict[str, bytes] = {}
    for lang in REPORT_LANGUAGES:
        doc = build_document(result, lang=lang, capture_name=capture_name, call_uid=call_uid,
                             policy=policy, files=digests, renumber=renumber.frame,
                             capture_file=pcap_name,
                             bundle_name=bundle_name(capture_name, call_uid),
                             ledger_name=ledger_name, version=marsad_version(),
                             policy_sha256=policy_digest(policy))
        texts = {f"report.{lang}.html": render_html(doc)}
        if lang == "en":
            texts["report.en.md"] = render_markdown(doc)
        for name, text in texts.items():
            out[name] = (text if pol is None else _anon_text(text, pol)).encode()
    return out


@dataclass(frozen=True, slots=True)
class BundleCheck:
    """Result of :func:`check_bundle`."""

    manifest: dict[str, Any]
    """The bundle's manifest."""
    problems: tuple[str, ...]
    """Every mismatch found (empty when the bundle is intact)."""
    checked: tuple[str, ...]
    """Files whose hash matched."""
    signature: str = "none"
    """``none`` (not signed), ``valid``, ``invalid`` (it does not verify) or ``untrusted``
    (valid, but by another key than the one the caller trusts)."""
    signer: str | None = None
    """SHA-256 of the signing public key, when signed."""

    @property
    def ok(self) -> bool:
        return not self.problems


def _inflate(z: zipfile.ZipFile, name: str, limit: int) -> Iterator[bytes]:
    """A member's bytes, a chunk at a time; :class:`BundleError` as soon as it gives more
    than ``limit`` (a zip bomb is found by reading one chunk past the limit, not by holding
    the member)."""
    seen = 0
    with z.open(name) as fh:
        while chunk := fh.read(_CHUNK):
            seen += len(chunk)
            if seen > limit:
                raise BundleError(f"{name}: more than {limit} bytes once decompressed")
            yield chunk


def _member_digest(z: zipfile.ZipFile, name: str, meta: Any) -> tuple[str | None, str | None]:
    """(SHA-256, None) of a member, or (None, the problem) when it cannot be hashed within
    the size its manifest entry states (``MAX_MEMBER_BYTES`` when it states none)."""
    declared = meta.get("bytes") if isinstance(meta, dict) else None
    limit = MAX_MEMBER_BYTES
    if isinstance(declared, int) and not isinstance(declared, bool) and declared >= 0:
        limit = min(declared, MAX_MEMBER_BYTES)
        size = z.getinfo(name).file_size
        if size != declared:
            return None, (f"{name}: the zip says {size} bytes, the manifest {declared}; "
                          "not decompressed")
    h = hashlib.sha256()
    try:
        for chunk in _inflate(z, name, limit):
            h.update(chunk)
    except BundleError as exc:
        return None, str(exc)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        return None, f"{name}: unreadable ({exc})"
    return h.hexdigest(), None


def check_bundle(source: str | Path | bytes, trusted_key: bytes | None = None) -> BundleCheck:
    """Re-hash every file of a bundle against its manifest, and verify the manifest's
    signature when the bundle is signed (against ``trusted_key``, raw Ed25519 public key
    bytes, when given: a bundle signed by another key, or not signed, is then a problem).

    Members are decompressed a chunk at a time and never past the size the manifest
    states (nor ``MAX_MEMBER_BYTES``), so a small zip that inflates to gigabytes costs
    one chunk of memory. Raises :class:`BundleError` when it is not a zip or has no
    readable manifest.
    """
    try:
        z = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(f"not a readable zip: {exc}") from exc
    with z:
        names = z.namelist()
        if MANIFEST not in names:
            raise BundleError("no manifest.json in the bundle")
        try:
            manifest = json.loads(b"".join(_inflate(z, MANIFEST, MAX_MANIFEST_BYTES)))
            listed: dict[str, Any] = manifest["files"]
            if not isinstance(listed, dict):
                raise TypeError("files is not a mapping")
        except (ValueError, KeyError, TypeError, zipfile.BadZipFile, OSError, EOFError,
                zlib.error) as exc:
            raise BundleError(f"manifest.json is unreadable: {exc}") from exc
        problems: list[str] = []
        checked: list[str] = []
        if len(names) != len(set(names)):
            problems.append("the zip holds the same name more than once")
        for name, meta in sorted(listed.items()):
            if name not in names:
                problems.append(f"{name}: listed in the manifest but missing")
                continue
            digest, problem = _member_digest(z, name, meta)
            if problem is not None:
                problems.append(problem)
                continue
            if not isinstance(meta, dict) or digest != meta.get("sha256"):
                want = meta.get("sha256") if isinstance(meta, dict) else meta
                problems.append(f"{name}: SHA-256 {digest} differs from the manifest's {want}")
            else:
                checked.append(name)
        for name in sorted(set(names) - set(listed) - {MANIFEST, SIGNATURE}):
            problems.append(f"{name}: in the zip but not in the manifest")
        signature, signer = "none", None
        if SIGNATURE in names:
            raw = b"".join(_inflate(z, MANIFEST, MAX_MANIFEST_BYTES))
            sig_doc = b"".join(_inflate(z, SIGNATURE, MAX_MANIFEST_BYTES))
            signature, problem = _check_signature(raw, sig_doc, trusted_key)
            if problem is not None:
                problems.append(problem)
            try:
                signer = hashlib.sha256(bytes.fromhex(json.loads(sig_doc)["public_key"])
                                        ).hexdigest()
            except (ValueError, KeyError, TypeError):
                signer = None
        elif trusted_key is not None:
            problems.append(f"{SIGNATURE}: missing, and a signing key is expected")
    return BundleCheck(manifest, tuple(problems), tuple(checked), signature, signer)


def iter_problem_lines(report: VerifyReport) -> Iterator[str]:
    """One line per problem of a ledger check (used by the CLI)."""
    for p in report.problems:
        yield f"entry {p.seq}: {PROBLEM_WORDS.get(p.kind.name, p.kind.name.lower())}: {p.detail}"


PROBLEM_WORDS = {
    "CONTENT_MISMATCH": "edited",
    "SEQ_GAP": "deleted",
    "BROKEN_LINK": "broken link (predecessor deleted or rewritten)",
    "OUT_OF_ORDER": "reordered",
    "FORK": "inserted",
    "BAD_GENESIS": "bad start of chain",
    "UNREADABLE": "unreadable",
    "ANCHOR_MISMATCH": "tail cut or rewritten",
    "DERIVATION_MISMATCH": "does not follow from the packets",
    "NOT_DERIVED": "not found in the packets",
}
"""Plain words for each :class:`~policy.ledger.ProblemKind`."""
