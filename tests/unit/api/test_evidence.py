"""api.evidence on the sample captures: ledger recording, re-derivation, bundles, anonymisation."""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import json
import random
import subprocess
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api.evidence import (
    AnonymisationError,
    BundleError,
    EvidenceError,
    PrefixAnonymiser,
    UnknownSubject,
    anonymise_frames,
    build_bundle,
    check_bundle,
    derivations,
    ledger_items,
    record_verdicts,
    verify_ledger,
)
from api.pipeline import AnalysisResult, analyze_capture
from policy.ledger import Ledger, ProblemKind
from policy.records import Reason, VerdictKind
from probe import CutPacket, cut_packets, read_capture
from probe import capture_bytes as pcap_bytes
from tests.conftest import NDPI_DEV, ROOT, need_shared, need_tool

CAPTURES = ROOT / "captures"
BLOCKED = CAPTURES / "sample-blocked.pcap"
CALL = CAPTURES / "sample-call.pcap"
SIP = CAPTURES / "sample-sip.pcap"
ICMP = CAPTURES / "icmp-errors.pcap"
VXLAN = CAPTURES / "encap-vxlan.pcap"
SIP_488 = NDPI_DEV / "pcap_other" / "sip-488-Not-Acceptable-Here-codec-null.pcapng"
KEY = bytes(range(32))
REPORTS = {"report.en.html", "report.fr.html", "report.ar.html", "report.en.md"}
"""The report for people a call's bundle holds."""
T0 = 1_704_067_200.0


def clock() -> float:
    return T0


_cache: dict[Path, AnalysisResult] = {}


def analysed(path: Path) -> AnalysisResult:
    if path not in _cache:
        _cache[path] = analyze_capture(path, workers=1)
    return _cache[path]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "evidence.db", clock=clock) as led:
        yield led


def unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def tshark(pcap: Path, *args: str) -> list[str]:
    exe = need_tool("tshark")
    out = subprocess.run([exe, "-n", "-r", str(pcap), *args], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def raw_packets(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp in µs, bytes) of every packet, read by scapy's pcap reader."""
    from scapy.utils import RawPcapReader
    out = []
    with RawPcapReader(str(path)) as reader:
        for data, meta in reader:
            ts = (meta.sec * 10**9 + meta.usec * (1 if reader.nano else 1000)) // 1000
            out.append((ts, bytes(data)))
    return out


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def common_prefix(a: str, b: str) -> int:
    x, y = ipaddress.ip_address(a), ipaddress.ip_address(b)
    bits = 32 if x.version == 4 else 128
    diff = int(x) ^ int(y)
    return bits - diff.bit_length()


# -- recording and re-derivation ------------------------------------------------------------------


def test_blocked_call_is_recorded_once_with_its_evidence(ledger: Ledger) -> None:
    r = analysed(BLOCKED)
    call = r.analysis.calls[0]
    assert call.verdict.kind is VerdictKind.BLOCKED
    first = record_verdicts(ledger, r)
    subjects = [e.subject_uid for e in first.appended]
    # The call, and its media flow that has a verdict of its own.
    assert subjects[0] == call.uid and len(subjects) == 1 + len(r.analysis.flow_verdicts)
    e = first.appended[0]
    assert e.capture_sha256 == r.sha256
    assert e.verdict == "BLOCKED"
    assert e.reasons == ("STUN_UNANSWERED", "MEDIA_NO_RETURN")
    ev = e.evidence
    assert ev["subject"] == "call" and ev["flow_uids"] == list(call.flow_uids)
    assert [x["rule"] for x in ev["evidence"]] == ["blocked.stun", "blocked.media_no_return"]
    stun = ev["evidence"][0]
    assert stun["figures"] == {"stun_requests": 9, "stun_responses": 0}
    assert stun["frames"][0] == 29 and stun["first_ts"] <= stun["last_ts"]
    # Again: nothing new.
    again = record_verdicts(ledger, r)
    assert again.appended == () and set(again.skipped) == set(subjects)
    assert len(ledger) == len(subjects)
    assert ledger.verify().ok


def test_ok_call_records_nothing(ledger: Ledger) -> None:
    r = analysed(CALL)
    assert [c.verdict.kind for c in r.analysis.calls] == [VerdictKind.OK]
    assert record_verdicts(ledger, r).appended == ()
    assert len(ledger) == 0


def test_failed_sip_call_is_recorded(ledger: Ledger) -> None:
    need_shared()
    r = analysed(SIP_488)
    [call] = [c for c in r.analysis.calls if c.verdict.kind is VerdictKind.FAILED]
    assert call.verdict.reasons[0] is Reason.SIP_REJECTED
    done = record_verdicts(ledger, r)
    entry = next(e for e in done.appended if e.subject_uid == call.uid)
    assert entry.verdict == "FAILED" and entry.reasons[0] == "SIP_REJECTED"
    assert entry.evidence["evidence"][0]["figures"]["final"] == 488


def test_non_finite_figures_are_recorded_as_null(ledger: Ledger) -> None:
    r = analysed(BLOCKED)
    call = r.analysis.calls[0]
    ev = dataclasses.replace(call.verdict.evidence[0], figures={"loss_ratio": float("nan"),
                                                                 "rate": float("inf")})
    odd = dataclasses.replace(call, verdict=dataclasses.replace(call.verdict, evidence=(ev,)))
    result = dataclasses.replace(r, analysis=dataclasses.replace(r.analysis, calls=[odd],
                                                                 flow_verdicts={}))
    [entry] = record_verdicts(ledger, result).appended
    assert entry.evidence["evidence"][0]["figures"] == {"loss_ratio": None, "rate": None}


def test_verify_rederives_and_catches_a_verdict_the_packets_do_not_support(
        ledger: Ledger) -> None:
    r = analysed(BLOCKED)
    record_verdicts(ledger, r)
    n = len(ledger)
    report = verify_ledger(ledger, [BLOCKED, CALL], analyse=analysed)
    assert report.ok and report.captures_checked == (r.sha256,)
    call = r.analysis.calls[0]
    # Well-formed, correctly chained entries whose claims the capture does not back.
    ledger.append(capture_sha256=r.sha256 or "", subject_uid=call.uid,
                  verdict=VerdictKind.THROTTLED, reasons=[Reason.RATE_CAPPED], evidence={})
    ledger.append(capture_sha256=r.sha256 or "", subject_uid="Knot-a-call",
                  verdict=VerdictKind.BLOCKED, reasons=[Reason.TCP_RESET], evidence={})
    report = verify_ledger(ledger, [BLOCKED], analyse=analysed)
    assert [(p.kind, p.seq) for p in report.problems] == [
        (ProblemKind.DERIVATION_MISMATCH, n + 1), (ProblemKind.NOT_DERIVED, n + 2)]
    # Without the capture the chain alone is intact and the entries go unchecked.
    alone = verify_ledger(ledger)
    assert alone.ok and alone.captures_checked == ()


def test_derivations_match_ledger_items() -> None:
    r = analysed(BLOCKED)
    ds = derivations(r)
    items = ledger_items(r)
    assert [d.subject_uid for d in ds] == [uid for uid, _, _ in items]
    assert all(d.verdict is VerdictKind.BLOCKED for d in ds)


# -- cutting packets ------------------------------------------------------------------------------


def expected_frames(path: Path, uids: set[str]) -> list[int]:
    """The frames of the given flows, found by tshark filters built from the flow records."""
    r = analysed(path)
    parts = []
    for f in r.flows:
        if f.uid not in uids:
            continue
        ip = "ip" if f.ip_version == 4 else "ipv6"
        parts.append(f"({ip}.addr == {f.orig_h} && {ip}.addr == {f.resp_h} && "
                     f"{f.proto}.port == {f.orig_p} && {f.proto}.port == {f.resp_p} && "
                     f"frame.number >= {f.first_frame} && frame.number <= {f.last_frame})")
        parts += [f"frame.number == {n.frame}" for n in f.icmp]
    lines = tshark(path, "-Y", " || ".join(parts), "-T", "fields", "-e", "frame.number")
    return [int(x) for x in lines]


def test_bundle_holds_exactly_the_calls_packets(tmp_path: Path) -> None:
    r = analysed(BLOCKED)
    call = r.analysis.calls[0]
    files = unzip(build_bundle(r, call.uid, BLOCKED, False, None, clock=clock))
    assert set(files) == {"packets.pcap", "report.json", "manifest.json", *REPORTS}
    report = json.loads(files["report.json"])
    frames = report["packets"]["original_frames"]
    assert frames == expected_frames(BLOCKED, set(call.flow_uids))
    flows = {f.uid: f for f in r.flows if f.uid in call.flow_uids}
    assert len(frames) == sum(f.orig_pkts + f.resp_pkts for f in flows.values())
    pcap = write(tmp_path, "packets.pcap", files["packets.pcap"])
    assert len(tshark(pcap)) == len(frames)
    # Read back with the probe: the same flows, the same packet counts.
    again = read_capture(pcap)
    got = sorted((f.orig_h, f.orig_p, f.resp_h, f.resp_p, f.orig_pkts, f.resp_pkts)
                 for f in again.flows)
    assert got == sorted((f.orig_h, f.orig_p, f.resp_h, f.resp_p, f.orig_pkts, f.resp_pkts)
                         for f in flows.values())
    # Byte for byte the original packets with their timestamps (read by another reader).
    original = raw_packets(BLOCKED)
    assert raw_packets(pcap) == [original[n - 1] for n in frames]
    assert report["call"]["uid"] == call.uid and report["call"]["verdict"] == "blocked"
    assert {row["uid"] for row in report["flows"]} == set(call.flow_uids)


def test_a_flow_bundle_keeps_the_icmp_error_that_quotes_it(tmp_path: Path) -> None:
    r = analysed(ICMP)
    in_calls = {u for c in r.analysis.calls for u in c.flow_uids}
    [uid] = [u for u in r.analysis.flow_verdicts if u not in in_calls]
    files = unzip(build_bundle(r, uid, ICMP, False, None, clock=clock))
    report = json.loads(files["report.json"])
    assert report["packets"]["original_frames"] == expected_frames(ICMP, {uid})
    assert report["flow_verdict"]["reasons"] == ["icmp-unreachable"]
    lines = tshark(write(tmp_path, "p.pcap", files["packets.pcap"]), "-Y", "icmp.type == 3")
    assert len(lines) == 1


def test_multiple_link_types_give_a_pcapng(tmp_path: Path) -> None:
    sll = CAPTURES / "lt-sll2.pcap"
    a = cut_packets(BLOCKED, analysed(BLOCKED).flows[:1])
    b = cut_packets(sll, analysed(sll).flows[:1])
    name, data = pcap_bytes([*a, *b])
    assert name == "packets.pcapng"
    path = write(tmp_path, name, data)
    assert tshark(path, "-T", "fields", "-e", "frame.cap_len") == [str(len(p.data))
                                                                   for p in [*a, *b]]
    assert len(read_capture(path).flows) == 2


def test_unknown_subject_and_wrong_capture_are_refused() -> None:
    r = analysed(BLOCKED)
    with pytest.raises(UnknownSubject):
        build_bundle(r, "Knope", BLOCKED, False, None)
    with pytest.raises(EvidenceError, match="differs"):
        build_bundle(r, r.analysis.calls[0].uid, CALL, False, None)


# -- anonymisation --------------------------------------------------------------------------------


def test_mapping_preserves_prefixes_exactly() -> None:
    anon = PrefixAnonymiser(KEY)
    rng = random.Random(7)
    base4 = int(ipaddress.IPv4Address("192.168.1.0"))
    pairs = [("192.168.1.10", "192.168.1.20"), ("10.0.0.1", "10.0.0.2"),
             ("192.168.1.23", "192.168.200.1"), ("2001:db8:1::23", "2001:db8:1::1")]
    pairs += [(str(ipaddress.IPv4Address(base4 ^ rng.getrandbits(16))),
               str(ipaddress.IPv4Address(base4 ^ rng.getrandbits(16)))) for _ in range(50)]
    for a, b in pairs:
        assert common_prefix(anon.address(a), anon.address(b)) == common_prefix(a, b), (a, b)
    x, y = anon.address("192.168.1.10"), anon.address("192.168.1.20")
    assert ipaddress.ip_network(f"{x}/24", strict=False) == \
        ipaddress.ip_network(f"{y}/24", strict=False)
    assert x != "192.168.1.10"
    # Keyed and deterministic.
    assert PrefixAnonymiser(KEY).address("192.168.1.10") == x
    assert PrefixAnonymiser(bytes(32)).address("192.168.1.10") != x
    with pytest.raises(AnonymisationError):
        PrefixAnonymiser(b"short")


def checksum_status(pcap: Path) -> tuple[int, int]:
    """(bad, good) checksums as tshark sees them with validation on."""
    opts = ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
            "-o", "tcp.check_checksum:TRUE"]
    fields = ("ip.checksum.status", "udp.checksum.status", "tcp.checksum.status",
              "icmp.checksum.status", "icmpv6.checksum.status")
    bad = " || ".join(f"{f} == 0" for f in fields)  # 0 Bad, 1 Good, 2 Unverified
    good = " || ".join(f"{f} == 1" for f in fields)
    return len(tshark(pcap, *opts, "-Y", bad)), len(tshark(pcap, *opts, "-Y", good))


def endpoints(pcap: Path) -> set[str]:
    out: set[str] = set()
    for line in tshark(pcap, "-T", "fields", "-E", "separator=,", "-e", "ip.src", "-e",
                       "ip.dst", "-e", "ipv6.src", "-e", "ipv6.dst"):
        out.update(a for a in line.split(",") if a)
    return out


def test_anonymised_bundle_rewrites_the_local_side_only(tmp_path: Path) -> None:
    r = analysed(BLOCKED)
    call = r.analysis.calls[0]
    plain = unzip(build_bundle(r, call.uid, BLOCKED, False, None, clock=clock))
    anon = unzip(build_bundle(r, call.uid, BLOCKED, True, KEY, clock=clock))
    p0 = write(tmp_path, "plain.pcap", plain["packets.pcap"])
    p1 = write(tmp_path, "anon.pcap", anon["packets.pcap"])
    before, after = endpoints(p0), endpoints(p1)
    local = call.local
    assert local == "192.168.1.23"
    mapped = PrefixAnonymiser(KEY).address(local)
    assert before - after == {local} and after - before == {mapped}
    # Checksums: tshark validates every one and finds none bad, before or after.
    bad, good = checksum_status(p1)
    assert bad == 0 and good > 0
    assert checksum_status(p0) == (0, good)
    # Same packets, same sizes: only addresses and checksums differ.
    assert len(p0.read_bytes()) == len(p1.read_bytes())
    # report.json: the local address is gone from every string, the remote side stays.
    text = anon["report.json"].decode()
    assert local not in text and mapped in text
    report = json.loads(text)
    assert report["call"]["local"] == mapped
    assert {row["resp_h"] for row in report["flows"]} == \
        {row["resp_h"] for row in json.loads(plain["report.json"])["flows"]}
    assert "157.240.27.54" in report["call"]["evidence"][0]["text"]
    manifest = json.loads(anon["manifest.json"])
    assert manifest["anonymised"] is True and "STUN" in manifest["anonymisation"]["scope"]
    assert "240.0.0.0/4" in manifest["anonymisation"]["pseudonyms"]
    assert KEY.hex() not in anon["manifest.json"].decode()


def test_icmp_quotes_and_two_local_hosts_keep_their_shared_prefix(tmp_path: Path) -> None:
    r = analysed(ICMP)
    in_calls = {u for c in r.analysis.calls for u in c.flow_uids}
    [uid] = [u for u in r.analysis.flow_verdicts if u not in in_calls]
    files = unzip(build_bundle(r, uid, ICMP, True, KEY, clock=clock))
    pcap = write(tmp_path, "p.pcap", files["packets.pcap"])
    anon = PrefixAnonymiser(KEY)
    host, router = anon.address("192.168.1.23"), anon.address("192.168.1.1")
    # The ICMP error from the router to the host, quoting the host's SYN to the server.
    [line] = tshark(pcap, "-Y", "icmp.type == 3", "-T", "fields", "-E", "separator=,",
                    "-e", "ip.src", "-e", "ip.dst")
    assert line.split(",") == [router, host, host, "203.0.113.80"]
    assert common_prefix(host, router) == common_prefix("192.168.1.23", "192.168.1.1") == 27
    assert ipaddress.ip_network(f"{host}/24", strict=False) == \
        ipaddress.ip_network(f"{router}/24", strict=False)
    bad, good = checksum_status(pcap)
    assert bad == 0 and good > 0
    assert "192.168.1." not in files["report.json"].decode()


def test_ipv6_icmp_error_checksum_stays_valid(tmp_path: Path) -> None:
    r = analysed(ICMP)
    [call] = r.analysis.calls
    files = unzip(build_bundle(r, call.uid, ICMP, True, KEY, clock=clock))
    pcap = write(tmp_path, "p.pcap", files["packets.pcap"])
    mapped = PrefixAnonymiser(KEY).address("2001:db8:1::23")
    assert mapped in endpoints(pcap) and "2001:db8:1::23" not in endpoints(pcap)
    assert "2001:db8:2::7" in endpoints(pcap)  # remote: unchanged
    good = tshark(pcap, "-Y", "icmpv6.checksum.status == 1")
    assert len(good) == 1 and checksum_status(pcap)[0] == 0


def test_tunnel_headers_are_rewritten_inside_and_out(tmp_path: Path) -> None:
    r = analysed(VXLAN)
    f = r.flows[0]
    files = unzip(build_bundle(r, f.uid, VXLAN, True, KEY, clock=clock))
    pcap = write(tmp_path, "p.pcap", files["packets.pcap"])
    assert not {a for a in endpoints(pcap) if a.startswith("10.")}
    assert checksum_status(pcap)[0] == 0
    # The probe still reads the same flow, under its new addresses.
    [again] = read_capture(pcap).flows
    anon = PrefixAnonymiser(KEY)
    assert (again.orig_h, again.resp_h) == (anon.address(f.orig_h), anon.address(f.resp_h))
    assert (again.orig_pkts, again.resp_pkts, again.tunnel) == (f.orig_pkts, f.resp_pkts,
                                                                f.tunnel)


def test_sip_call_bundle_from_the_reference_set(tmp_path: Path) -> None:
    need_shared()
    r = analysed(SIP_488)
    [call] = [c for c in r.analysis.calls if c.verdict.kind is VerdictKind.FAILED]
    files = unzip(build_bundle(r, call.uid, SIP_488, True, KEY, clock=clock))
    pcap = write(tmp_path, "p.pcap", files["packets.pcap"])
    anon = PrefixAnonymiser(KEY)
    assert anon.address("192.168.8.13") in endpoints(pcap)
    assert not {a for a in endpoints(pcap) if a.startswith("192.168.")}
    assert checksum_status(pcap)[0] == 0
    assert json.loads(files["report.json"])["call"]["verdict"] == "failed"


def test_unknown_link_type_cannot_be_anonymised() -> None:
    pkt = CutPacket(1, 0, 20, 147, b"\x45" + bytes(19))
    with pytest.raises(AnonymisationError, match="frame 1"):
        anonymise_frames([pkt], PrefixAnonymiser(KEY), ["192.168.1.23"])


# -- checking bundles -----------------------------------------------------------------------------


def rezip(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return out.getvalue()


def test_check_bundle_finds_modified_missing_and_extra_files(ledger: Ledger) -> None:
    r = analysed(BLOCKED)
    record_verdicts(ledger, r)
    call = r.analysis.calls[0]
    data = build_bundle(r, call.uid, BLOCKED, False, None, ledger_entries=ledger.entries(),
                        clock=clock)
    good = check_bundle(data)
    assert good.ok and set(good.checked) == {"packets.pcap", "report.json", "ledger.json",
                                             *REPORTS}
    m: dict[str, Any] = good.manifest
    assert m["capture"]["sha256"] == r.sha256 and m["anonymised"] is False
    assert m["created_at"] == "2024-01-01T00:00:00.000000Z" and m["tool_version"]
    entries = json.loads(unzip(data)["ledger.json"])
    assert [e["subject_uid"] for e in entries] == [e.subject_uid for e in ledger.entries()]

    files = unzip(data)
    tampered = dict(files)
    tampered["report.json"] = files["report.json"].replace(b'"blocked"', b'"ok"     ')
    bad = check_bundle(rezip(tampered))
    assert not bad.ok and [p.split(":")[0] for p in bad.problems] == ["report.json"]
    flipped = dict(files)
    pcap = bytearray(files["packets.pcap"])
    pcap[100] ^= 1
    flipped["packets.pcap"] = bytes(pcap)
    assert [p.split(":")[0] for p in check_bundle(rezip(flipped)).problems] == ["packets.pcap"]
    missing = {k: v for k, v in files.items() if k != "ledger.json"}
    assert "missing" in check_bundle(rezip(missing)).problems[0]
    extra = {**files, "note.txt": b"added later"}
    assert check_bundle(rezip(extra)).problems == ("note.txt: in the zip but not in the "
                                                   "manifest",)
    with pytest.raises(BundleError):
        check_bundle(b"not a zip")
    with pytest.raises(BundleError):
        check_bundle(rezip({"report.json": b"{}"}))


def _bomb(size: int, manifest_files: dict[str, Any], *, extra_manifest: bytes = b"") -> bytes:
    """A bundle whose packets.pcap is ``size`` zero bytes (a few hundred KiB compressed)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("packets.pcap")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as fh:
            block = bytes(1 << 20)
            for _ in range(size >> 20):
                fh.write(block)
        z.writestr("manifest.json", json.dumps({"files": manifest_files}).encode()
                   + extra_manifest)
    return out.getvalue()


def _peak(fn: Any) -> tuple[Any, int]:
    import tracemalloc

    tracemalloc.start()
    try:
        got = fn()
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_check_bundle_streams_members_and_stops_at_the_stated_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb costs a chunk of memory, not its inflated size (a 2 MB zip holding 2 GiB
    took 4.3 GB to check)."""
    import hashlib

    size = 64 << 20
    sha = hashlib.sha256(bytes(size)).hexdigest()
    bomb = _bomb(size, {"packets.pcap": {"sha256": sha, "bytes": 100}})
    assert len(bomb) < 1 << 20
    got, peak = _peak(lambda: check_bundle(bomb))
    assert got.problems == ("packets.pcap: the zip says 67108864 bytes, the manifest 100; "
                            "not decompressed",)
    assert peak < 4 << 20
    honest = _bomb(size, {"packets.pcap": {"sha256": sha, "bytes": size}})
    got, peak = _peak(lambda: check_bundle(honest))
    assert got.ok and got.checked == ("packets.pcap",)
    assert peak < 8 << 20  # hashed a chunk at a time, never held whole
    import api.evidence as evidence

    monkeypatch.setattr(evidence, "MAX_MEMBER_BYTES", 4 << 20)
    unsized = _bomb(size, {"packets.pcap": {"sha256": sha}})
    got, peak = _peak(lambda: check_bundle(unsized))
    assert got.problems == ("packets.pcap: more than 4194304 bytes once decompressed",)
    assert peak < 8 << 20
    with pytest.raises(BundleError, match=r"manifest\.json: more than 1048576 bytes"):
        check_bundle(_bomb(1 << 20, {}, extra_manifest=b" " * (2 << 20)))
