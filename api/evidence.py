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
    (matched by SHA-256), re-derives each stored verdict from the packets.

Bundles
    :func:`build_bundle` writes a zip holding the subject's packets cut from the
    capture (``packets.pcap``), ``report.json`` (the call and its flows' rows),
    the ledger entries about it (``ledger.json``, when given) and
    ``manifest.json`` (SHA-256 of every file and of the original capture, tool
    version, creation time, anonymisation). :func:`check_bundle` re-hashes it.

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
import hmac
import io
import ipaddress
import json
import math
import os
import re
import secrets
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from api.pipeline import AnalysisResult, analyze_capture, capture_sha256
from policy.ledger import (
    Anchor,
    Derivation,
    Ledger,
    LedgerEntry,
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
    pack_addr,
    packet_addresses,
)

__all__ = [
    "BUNDLE_FORMAT",
    "PROBLEM_WORDS",
    "REWRITTEN_CLASSES",
    "AnonymisationError",
    "BundleCheck",
    "BundleError",
    "EvidenceError",
    "PrefixAnonymiser",
    "RecordSummary",
    "UnknownSubject",
    "anonymise_frames",
    "build_bundle",
    "check_bundle",
    "derivations",
    "iter_problem_lines",
    "ledger_items",
    "policy_digest",
    "record_verdicts",
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
PAYLOAD_SCOPE = ("IPv4/IPv6 header addresses at every depth (tunnels, ICMP-quoted headers), "
                 "with their checksums; application payloads (SIP/SDP bodies, STUN "
                 "attributes) are not rewritten")


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


def _finite(value: Any) -> Any:
    """The value with NaN and infinities (not JSON) as None, at every depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _verdict_evidence(kind: str, flow_uids: Sequence[str], verdict: Verdict,
                      policy_sha: str) -> dict[str, Any]:
    return {"subject": kind, "flow_uids": list(flow_uids), "policy_sha256": policy_sha,
            "evidence": [_finite(e.to_dict()) for e in verdict.evidence]}


def ledger_items(result: AnalysisResult, policy: Policy | None = None
                 ) -> list[tuple[str, Verdict, dict[str, Any]]]:
    """(subject uid, verdict, evidence dict) for every verdict other than ok, calls first."""
    sha = policy_digest(policy or load_policy())
    out: list[tuple[str, Verdict, dict[str, Any]]] = []
    for call in result.analysis.calls:
        if call.verdict.kind is not VerdictKind.OK:
            out.append((call.uid, call.verdict,
                        _verdict_evidence("call", call.flow_uids, call.verdict, sha)))
    for uid, v in result.analysis.flow_verdicts.items():
        if v.kind is not VerdictKind.OK:
            out.append((uid, v, _verdict_evidence("flow", (uid,), v, sha)))
    return out


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
    latest: dict[str, LedgerEntry] = {}
    for e in ledger.entries(capture_sha256=result.sha256):
        latest[e.subject_uid] = e
    appended: list[LedgerEntry] = []
    skipped: list[str] = []
    for uid, verdict, evidence in ledger_items(result, policy):
        have = latest.get(uid)
        if have is not None and have.verdict == verdict.kind.name and \
                have.reasons == tuple(r.name for r in verdict.reasons):
            skipped.append(uid)
            continue
        appended.append(ledger.append(capture_sha256=result.sha256, subject_uid=uid,
                                      verdict=verdict.kind, reasons=verdict.reasons,
                                      evidence=evidence))
    return RecordSummary(tuple(appended), tuple(skipped))


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

    def run(path: Path) -> AnalysisResult:
        if analyse is not None:
            return analyse(path)
        return analyze_capture(path, policy=policy, workers=1)

    def derive(sha: str) -> list[Derivation] | None:
        path = by_sha.get(sha)
        return None if path is None else derivations(run(path))

    return ledger.verify(derive, anchor=anchor)


# -- anonymisation --------------------------------------------------------------------------------


class PrefixAnonymiser:
    """Keyed prefix-preserving address mapping (Crypto-PAn construction, HMAC-SHA256 PRF)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise AnonymisationError("the anonymisation key must be at least 16 bytes")
        self._key = key
        self._cache: dict[tuple[int, int], int] = {}

    def map_int(self, value: int, bits: int) -> int:
        """Map a ``bits``-wide address (32 or 128)."""
        got = self._cache.get((value, bits))
        if got is not None:
            return got
        out = 0
        family = b"6" if bits == 128 else b"4"
        for i in range(bits):
            prefix = value >> (bits - i)  # the i leading bits
            msg = family + bytes([i]) + prefix.to_bytes(16, "big")
            flip = hmac.new(self._key, msg, hashlib.sha256).digest()[0] & 1
            out = (out << 1) | (((value >> (bits - 1 - i)) & 1) ^ flip)
        self._cache[(value, bits)] = out
        return out

    def address(self, text: str) -> str:
        """Map an address written as text; the result is written the same way."""
        ip = ipaddress.ip_address(text)
        if ip.version == 4:
            return str(ipaddress.IPv4Address(self.map_int(int(ip), 32)))
        return str(ipaddress.IPv6Address(self.map_int(int(ip), 128)))


REWRITTEN_CLASSES = LOCAL_CLASSES | {AddressClass.LOOPBACK}
"""Address classes always rewritten: the local classes of :mod:`probe.addresses`
(RFC 1918, RFC 6598, link-local, unique local) and loopback."""


@dataclass(slots=True)
class _Policy:
    """Which addresses get rewritten: the named local hosts and every private address."""

    anon: PrefixAnonymiser
    local: frozenset[str]
    mapped: dict[str, str] = field(default_factory=dict)

    def wants(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return str(ip) in self.local or address_class(str(ip)) in REWRITTEN_CLASSES

    def packed(self, raw: bytes) -> bytes | None:
        ip = ipaddress.ip_address(raw)
        if not self.wants(ip):
            return None
        new = self.text(str(ip))
        return ipaddress.ip_address(new).packed

    def text(self, addr: str) -> str:
        got = self.mapped.get(addr)
        if got is None:
            got = self.mapped[addr] = self.anon.address(addr)
        return got


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
    from scapy.layers.inet6 import IPv6, _ICMPv6
    from scapy.layers.l2 import GRE
    from scapy.packet import NoPayload
    return {"conf": conf, "IP": IP, "IPv6": IPv6, "TCP": TCP, "UDP": UDP, "ICMP": ICMP,
            "ICMPv6": _ICMPv6, "GRE": GRE, "NoPayload": NoPayload}


def _rewrite(frame: bytes, linktype: int, pol: _Policy, sc: dict[str, Any]) -> bytes:
    cls = sc["conf"].l2types.num2layer.get(linktype)
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
            raise AnonymisationError(f"cannot locate the {layer.name} layer")
        layers.append((layer, off))
        layer = layer.payload
    buf = bytearray(frame)
    ips: list[tuple[int, int, int]] = []  # (layer index, address offset, address width)
    for i, (layer, off) in enumerate(layers):
        if isinstance(layer, sc["IP"]):
            ips.append((i, off + 12, 4))
        elif isinstance(layer, sc["IPv6"]):
            ips.append((i, off + 8, 16))
        else:
            continue
        at, width = ips[-1][1], ips[-1][2]
        for a in (at, at + width):
            if a + width > len(buf):
                continue
            new = pol.packed(bytes(buf[a:a + width]))
            if new is not None:
                buf[a:a + width] = new
    if buf == bytearray(frame):
        return frame
    # Checksums, innermost first, so outer ones cover the inner ones' new values.
    for i in range(len(layers) - 1, -1, -1):
        layer, off = layers[i]
        pseudo = True
        if isinstance(layer, sc["IP"]):
            ck, end, pseudo = off + 10, off + (frame[off] & 0x0F) * 4, False
        elif isinstance(layer, sc["TCP"]):
            ck, end = off + 16, len(frame)
        elif isinstance(layer, sc["UDP"]):
            ck, end = off + 6, len(frame)
        elif isinstance(layer, sc["ICMPv6"]):
            ck, end = off + 2, len(frame)
        elif isinstance(layer, sc["ICMP"]):
            ck, end, pseudo = off + 2, len(frame), False
        elif isinstance(layer, sc["GRE"]) and layer.chksum_present:
            ck, end, pseudo = off + 4, len(frame), False
        else:
            continue
        if ck + 2 > len(frame):
            continue
        old_ck = int.from_bytes(frame[ck:ck + 2], "big")
        if isinstance(layer, sc["UDP"]) and old_ck == 0:
            continue  # no checksum (RFC 768)
        before = bytearray(frame[off:end])
        after = bytearray(buf[off:end])
        before[ck - off:ck - off + 2] = after[ck - off:ck - off + 2] = b"\0\0"
        old_regions, new_regions = [bytes(before)], [bytes(after)]
        if pseudo:  # the enclosing IP header's addresses (RFC 768, RFC 9293 §3.1, RFC 8200 §8.1)
            parent = [x for x in ips if x[0] < i]
            if parent:
                _, at, width = parent[-1]
                old_regions.append(frame[at:at + 2 * width])
                new_regions.append(bytes(buf[at:at + 2 * width]))
        value = _fix(old_ck, old_regions, new_regions)
        if isinstance(layer, sc["UDP"]) and value == 0:
            value = 0xFFFF
        buf[ck:ck + 2] = value.to_bytes(2, "big")
    return bytes(buf)


def anonymise_frames(packets: Sequence[CutPacket], anon: PrefixAnonymiser,
                     local: Iterable[str]) -> tuple[list[CutPacket], dict[str, str]]:
    """Rewrite the local side's addresses in every IP header of every packet.

    Returns the rewritten packets and the address mapping used. Raises
    :class:`AnonymisationError` if a packet cannot be rewritten faithfully or if,
    read back by the probe's decoder, any flow endpoint still shows a local address.
    """
    pol = _Policy(anon, frozenset(local))
    sc = _scapy()
    out: list[CutPacket] = []
    for p in packets:
        try:
            data = _rewrite(p.data, p.linktype, pol, sc)
        except AnonymisationError as exc:
            raise AnonymisationError(f"frame {p.frame}: {exc}") from None
        out.append(CutPacket(p.frame, p.ts_ns, p.wirelen, p.linktype, data))
    _check_gone(out, pol)
    return out, dict(pol.mapped)


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


def _anon_text(text: str, pol: _Policy) -> str:
    def sub(m: re.Match[str]) -> str:
        word = m.group(0)
        try:
            ip = ipaddress.ip_address(word)
        except ValueError:
            return word
        return pol.text(str(ip)) if pol.wants(ip) else word
    return _IPV6_TEXT.sub(sub, _IPV4_TEXT.sub(sub, text))


def _anon_json(value: Any, pol: _Policy) -> Any:
    if isinstance(value, str):
        return _anon_text(value, pol)
    if isinstance(value, dict):
        return {k: _anon_json(v, pol) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_anon_json(v, pol) for v in value]
    return value


# -- bundles --------------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version() -> str:
    try:
        return metadata.version("marsad")
    except metadata.PackageNotFoundError:
        return "unknown"


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


def build_bundle(result: AnalysisResult, call_uid: str, capture_path: str | Path,
                 anonymize: bool, key: bytes | None, *,
                 ledger_entries: Sequence[LedgerEntry] | None = None,
                 clock: Callable[[], float] = time.time) -> bytes:
    """A zip of the evidence about one call (or one flow) of an analysed capture.

    ``result`` must come from ``capture_path`` (checked by SHA-256). With
    ``anonymize``, ``key`` (random when None) keys the address mapping; the key
    is not stored in the bundle. ``ledger_entries`` are filtered to the subject.
    """
    sha = capture_sha256(capture_path)
    if result.sha256 is not None and result.sha256 != sha:
        raise EvidenceError(f"{capture_path}: SHA-256 {sha} differs from the analysed "
                            f"capture's {result.sha256}")
    call, flows = _subject(result, call_uid)
    flow_uids = {f.uid for f in flows}
    rows = [r for r in result.flow_rows() if r["uid"] in flow_uids]
    icmp_frames = [n.frame for f in flows for n in f.icmp]
    packets = cut_packets(capture_path, flows, icmp_frames)
    report: dict[str, Any] = {
        "subject_uid": call_uid, "capture_sha256": sha, "flows": rows,
        # Packet i of the bundle's capture is frame original_frames[i - 1] of the original.
        "packets": {"count": len(packets), "original_frames": [p.frame for p in packets]}}
    if call is not None:
        report["call"] = call.to_dict()
    else:
        v = result.analysis.flow_verdicts.get(call_uid)
        report["flow_verdict"] = None if v is None else v.to_dict()
    ledger_doc: list[dict[str, Any]] | None = None
    if ledger_entries is not None:
        subjects = flow_uids | {call_uid}
        ledger_doc = [e.to_dict() for e in ledger_entries
                      if e.capture_sha256 == sha and e.subject_uid in subjects]
    anonymisation: dict[str, Any] | None = None
    if anonymize:
        local = {call.local} if call is not None and call.local else set()
        anon = PrefixAnonymiser(key if key is not None else secrets.token_bytes(32))
        packets, mapped = anonymise_frames(packets, anon, local)
        pol = _Policy(anon, frozenset(local), dict(mapped))
        for f in flows:
            for a in (f.orig_h, f.resp_h):
                if pol.wants(ipaddress.ip_address(a)):
                    pol.text(a)
        report = _anon_json(report, pol)
        if ledger_doc is not None:
            ledger_doc = _anon_json(ledger_doc, pol)
        anonymisation = {
            "method": "prefix-preserving (Crypto-PAn construction, HMAC-SHA256 per prefix bit)",
            "rewritten": "the call's local host and every RFC 1918, RFC 6598, link-local, "
                         "loopback and unique-local address; the remote side is unchanged",
            "scope": PAYLOAD_SCOPE,
            "addresses_rewritten": len(pol.mapped),
            "ledger_note": None if ledger_doc is None else
            "ledger.json entries are anonymised copies: their entry_hash values refer to the "
            "original entries and do not verify against these copies"}
    pcap_name, pcap = capture_bytes(packets)
    files: dict[str, bytes] = {pcap_name: pcap, "report.json": _json_bytes(report)}
    if ledger_doc is not None:
        files["ledger.json"] = _json_bytes(ledger_doc)
    created = clock()
    manifest = {
        "format": BUNDLE_FORMAT, "tool": "marsad", "tool_version": _version(),
        "created_at": _iso(created), "subject_uid": call_uid,
        "capture": {"sha256": sha, "name": os.path.basename(str(capture_path))},
        "packets": len(packets), "anonymised": anonymize, "anonymisation": anonymisation,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()}}
    out = io.BytesIO()
    stamp = datetime.fromtimestamp(created, tz=UTC).timetuple()[:6]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in [*files.items(), (MANIFEST, _json_bytes(manifest))]:
            info = zipfile.ZipInfo(name, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return out.getvalue()


@dataclass(frozen=True, slots=True)
class BundleCheck:
    """Result of :func:`check_bundle`."""

    manifest: dict[str, Any]
    """The bundle's manifest."""
    problems: tuple[str, ...]
    """Every mismatch found (empty when the bundle is intact)."""
    checked: tuple[str, ...]
    """Files whose hash matched."""

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


def check_bundle(source: str | Path | bytes) -> BundleCheck:
    """Re-hash every file of a bundle against its manifest.

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
        for name in sorted(set(names) - set(listed) - {MANIFEST}):
            problems.append(f"{name}: in the zip but not in the manifest")
    return BundleCheck(manifest, tuple(problems), tuple(checked))


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
