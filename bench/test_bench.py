"""Tests of the benchmark harness: the capture generator, the dpkt baseline and the runner.

Run with ``.venv/bin/pytest bench/test_bench.py`` (the bench is outside ``tests/``).
The QUIC vectors are from RFC 9001 Appendix A.
"""

from __future__ import annotations

import itertools
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dpkt
import dpkt_loop
import gen_capture as gc
import pytest
import run_bench as rb
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

RFC9001_DCID = bytes.fromhex("8394c8f03e515708")
# RFC 9001 A.2: the CRYPTO frame of the client Initial (the rest of its 1162 bytes is PADDING).
RFC9001_CRYPTO = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff")


# ---- QUIC Initial protection ---------------------------------------------------------

def test_initial_keys_match_rfc9001_a1() -> None:
    c = gc.quic_initial_keys(RFC9001_DCID, server=False)
    s = gc.quic_initial_keys(RFC9001_DCID, server=True)
    assert (c.key.hex(), c.iv.hex(), c.hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2")
    assert (s.key.hex(), s.iv.hex(), s.hp.hex()) == (
        "cf3a5331653c364c88f0f379b6067e37", "0ac1493ca1905853b0bba03e",
        "c206b8d9b9f0f37644430b490eeaa314")


def test_protected_initial_matches_rfc9001_a2() -> None:
    keys = gc.quic_initial_keys(RFC9001_DCID, server=False)
    pkt = gc.quic_protect_initial(keys, RFC9001_DCID, b"", 2, RFC9001_CRYPTO, 1200, pn_len=4)
    assert len(pkt) == 1200
    # Protected header and the header-protection sample given in A.2.
    assert pkt[:22].hex() == "c000000001088394c8f03e5157080000449e7b9aec34"
    assert pkt[22:38].hex() == "d1b1c98dd7689fb8ec11d242b123dc9b"


def unprotect_initial(pkt: bytes, server: bool, odcid: bytes) -> tuple[int, bytes]:
    """Independent reading of a client or server Initial: (packet number, plaintext)."""
    dlen = pkt[5]
    slen = pkt[6 + dlen]
    pos = 7 + dlen + slen
    assert pkt[pos] == 0  # token length
    pos += 1
    length = int.from_bytes(pkt[pos:pos + 2], "big") & 0x3FFF
    pos += 2
    keys = gc.quic_initial_keys(odcid, server)
    enc = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()
    mask = enc.update(pkt[pos + 4:pos + 20]) + enc.finalize()
    first = pkt[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(b ^ m for b, m in zip(pkt[pos:pos + pn_len], mask[1:], strict=False))
    pn = int.from_bytes(pn_bytes, "big")
    header = bytes([first]) + pkt[1:pos] + pn_bytes
    nonce = (int.from_bytes(keys.iv, "big") ^ pn).to_bytes(12, "big")
    body = pkt[pos + pn_len:pos + length]
    return pn, AESGCM(keys.key).decrypt(nonce, body, header)


def sni_of(client_hello: bytes) -> str:
    """The host name in the server_name extension of a ClientHello handshake message."""
    assert client_hello[0] == 1
    pos = 4 + 2 + 32
    pos += 1 + client_hello[pos]
    pos += 2 + int.from_bytes(client_hello[pos:pos + 2], "big")
    pos += 1 + client_hello[pos]
    end = pos + 2 + int.from_bytes(client_hello[pos:pos + 2], "big")
    pos += 2
    while pos < end:
        etype = int.from_bytes(client_hello[pos:pos + 2], "big")
        elen = int.from_bytes(client_hello[pos + 2:pos + 4], "big")
        if etype == 0:
            nlen = int.from_bytes(client_hello[pos + 7:pos + 9], "big")
            return client_hello[pos + 9:pos + 9 + nlen].decode()
        pos += 4 + elen
    raise AssertionError("no server_name")


def test_initial_round_trip_carries_sni() -> None:
    ch = gc.tls_client_hello(bytes(32), b"", "meet.google.com", bytes(32), (b"h3",),
                             gc.quic_transport_parameters(b"\x01" * 8))
    odcid = bytes(range(8))
    keys = gc.quic_initial_keys(odcid, server=False)
    pkt = gc.quic_protect_initial(keys, odcid, b"\x01" * 8, 0, gc.quic_crypto_frame(ch), 1250)
    assert len(pkt) == 1250
    pn, plain = unprotect_initial(pkt, False, odcid)
    assert pn == 0
    assert plain[0] == 0x06 and plain[1] == 0  # CRYPTO at offset 0
    n = int.from_bytes(plain[2:4], "big") & 0x3FFF
    assert plain[4:4 + n] == ch
    assert sni_of(ch) == "meet.google.com"
    assert set(plain[4 + n:]) == {0}  # PADDING


def test_quic_varint_forms() -> None:
    # RFC 9000 A.1 examples.
    assert gc.quic_varint(37).hex() == "25"
    assert gc.quic_varint(15293).hex() == "7bbd"
    assert gc.quic_varint(494878333).hex() == "9d7f3e7d"
    assert gc.quic_varint(151288809941952652).hex() == "c2197c5eff14e88c"


# ---- the generated capture -----------------------------------------------------------

Frame = tuple[float, bytes]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[Frame]]:
    out = tmp_path_factory.mktemp("cap") / "small.pcap"
    assert gc.main(["--packets", "20000", "--out", str(out)]) == 0
    info = json.loads(Path(str(out) + ".json").read_text())
    with out.open("rb") as fh:
        frames = [(ts, bytes(buf)) for ts, buf in dpkt.pcap.Reader(fh)]
    return out, info, frames


def layers(frames: list[Frame]) -> Iterator[tuple[float, bytes, Any, Any]]:
    for ts, buf in frames:
        eth = dpkt.ethernet.Ethernet(buf)
        yield ts, buf, eth.data, eth.data.data


def ones_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_counts_timestamps_and_sidecar(small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    path, info, frames = small
    assert info["packets"] == len(frames)
    assert info["bytes"] == path.stat().st_size
    assert 17_000 < len(frames) < 23_000
    assert info["flows"] == 500
    ts = [t for t, _ in frames]
    assert all(b > a for a, b in itertools.pairwise(ts))
    assert 120 < ts[-1] - ts[0] < 181
    kinds = info["by_kind"]
    assert all(kinds[k]["flows"] > 0 for k in ("dns", "stun", "voice", "video", "tls", "quic"))
    assert info["ipv6_flows"] > 0 and info["vlan_flows"] > 0
    assert rb.count_packets(path) == len(frames)


def test_every_checksum_is_right(small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    vlan = v6 = 0
    for _ts, buf, ip, l4 in layers(small[2]):
        tagged = buf[12:14] == b"\x81\x00"
        vlan += tagged
        off = 18 if tagged else 14
        if isinstance(ip, dpkt.ip.IP):
            raw = buf[off:off + ip.len]
            assert len(raw) == len(buf) - off
            assert ones_sum(raw[:20]) == 0xFFFF
            pseudo = ip.src + ip.dst + struct.pack("!HH", ip.p, len(raw) - 20)
            seg = raw[20:]
        else:
            v6 += 1
            seg = buf[off + 40:]
            assert len(seg) == ip.plen
            pseudo = ip.src + ip.dst + struct.pack("!IxxxB", len(seg), ip.nxt)
        assert isinstance(l4, dpkt.tcp.TCP | dpkt.udp.UDP)
        assert ones_sum(pseudo + seg) == 0xFFFF
    assert vlan > 0 and v6 > 0


def test_tls_handshakes_and_tcp_numbers(small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    snis = []
    nxt: dict[tuple[bytes, int, bytes, int], int] = {}
    for _ts, _buf, ip, tcp in layers(small[2]):
        if not isinstance(tcp, dpkt.tcp.TCP):
            continue
        key = (ip.src, tcp.sport, ip.dst, tcp.dport)
        if tcp.flags & dpkt.tcp.TH_SYN:
            assert key not in nxt
        else:
            assert tcp.seq == nxt[key], "sequence numbers must follow the bytes sent"
            rev = (ip.dst, tcp.dport, ip.src, tcp.sport)
            assert tcp.ack == nxt[rev]
        nxt[key] = (tcp.seq + len(tcp.data) + bool(tcp.flags & (dpkt.tcp.TH_SYN | dpkt.tcp.TH_FIN))
                    ) & 0xFFFFFFFF
        if tcp.data[:3] == b"\x16\x03\x01":
            rec = dpkt.ssl.TLSRecord(tcp.data)
            snis.append(sni_of(rec.data))
    assert len(snis) == small[1]["by_kind"]["tls"]["flows"]
    assert set(snis) <= set(gc.TLS_NAMES)


def test_quic_initials_decrypt_to_client_hellos(
        small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    names = []
    for _ts, _buf, _ip, udp in layers(small[2]):
        if isinstance(udp, dpkt.udp.UDP) and udp.dport == 443 and udp.data[0] & 0xF0 == 0xC0:
            pkt = bytes(udp.data)
            odcid = pkt[6:6 + pkt[5]]
            if len(pkt) != 1250:  # the client's second Initial uses the server's CID
                continue
            _pn, plain = unprotect_initial(pkt, False, odcid)
            n = int.from_bytes(plain[2:4], "big") & 0x3FFF
            names.append(sni_of(plain[4:4 + n]))
    assert len(names) == small[1]["by_kind"]["quic"]["flows"]
    assert set(names) <= set(gc.QUIC_NAMES)


def test_rtp_streams_and_dns_and_stun(small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    streams: dict[int, list[tuple[int, int, bool, int]]] = defaultdict(list)
    queries: dict[tuple[bytes, int], int] = {}
    answered = stun_req = stun_resp = 0
    for _ts, _buf, ip, udp in layers(small[2]):
        if not isinstance(udp, dpkt.udp.UDP):
            continue
        data = bytes(udp.data)
        if 53 in (udp.sport, udp.dport):
            msg_id, flags, qd, an = struct.unpack("!HHHH", data[:8])
            assert qd == 1
            if udp.dport == 53:
                assert flags == 0x0100 and an == 0
                if data[-15:-13] == b"\x00\x01":  # A queries: dpkt reads the whole message
                    assert dpkt.dns.DNS(data).qd[0].type == dpkt.dns.DNS_A
                queries[(ip.src, udp.sport)] = msg_id
            else:
                assert flags == 0x8180 and an >= 1
                assert queries[(ip.dst, udp.dport)] == msg_id
                answered += 1
        elif data[4:8] == b"\x21\x12\xa4\x42" and data[0] < 2:
            stun_req += data[:2] == b"\x00\x01"
            stun_resp += data[:2] == b"\x01\x01"
        elif data[0] == 0x80 and data[1] & 0x7F in (0, 96, 98, 102, 111):
            seq, rts, ssrc = struct.unpack("!HII", data[2:12])
            streams[ssrc].append((seq, rts, bool(data[1] & 0x80), len(data) - 12))
    assert answered >= len(queries) > 0
    assert stun_req == stun_resp > 0
    voice = video = 0
    for pkts in streams.values():
        seqs = [s for s, _, _, _ in pkts]
        assert all((b - a) % 65536 == 1 for a, b in itertools.pairwise(seqs))
        steps = {(b[1] - a[1]) % 2**32 for a, b in itertools.pairwise(pkts)}
        if steps <= {160, 960}:  # voice: one packet per 20 ms
            voice += 1
            assert all(60 <= p[3] <= 200 for p in pkts)
        else:  # video: frames of several packets share a timestamp; the last is marked
            video += 1
            assert steps <= {0, 3000, 6000}
            for a, b in itertools.pairwise(pkts):
                assert a[2] == (a[1] != b[1])
            assert all(1000 <= p[3] <= 1160 for p in pkts)
    assert voice == 2 * small[1]["by_kind"]["voice"]["flows"]
    assert video == small[1]["by_kind"]["video"]["flows"]


@pytest.fixture(scope="module")
def calls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("calls") / "calls.pcap"
    assert gc.main(["--profile", "calls", "--packets", "20000", "--out", str(out)]) == 0
    return out, json.loads(Path(str(out) + ".json").read_text())


def test_call_heavy_profile_is_many_short_calls(calls: tuple[Path, dict[str, Any]]) -> None:
    path, info = calls
    kinds = info["by_kind"]
    assert info["profile"] == "calls" and info["flows"] == 500
    assert 18_000 < info["packets"] < 22_000  # the web part gets what the calls leave
    # about one call per 250 packets (2,000 calls in 500,000), each call one media flow
    assert info["calls"] == kinds["voice"]["flows"] + kinds["video"]["flows"]
    assert 60 <= info["calls"] <= 100
    media = kinds["voice"]["packets"] + kinds["video"]["packets"]
    assert 0.7 < media / info["packets"] < 0.8
    assert all(kinds[k]["flows"] > 0 for k in ("dns", "stun", "tls", "quic"))
    span: dict[tuple[bytes, int, bytes, int], list[float]] = {}
    with path.open("rb") as fh:
        for ts, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            udp = ip.data
            if (isinstance(udp, dpkt.udp.UDP) and 443 not in (udp.sport, udp.dport)
                    and udp.data[0] == 0x80 and udp.data[1] & 0x7F in (0, 96, 98, 102, 111)):
                key = min((ip.src, udp.sport, ip.dst, udp.dport),
                          (ip.dst, udp.dport, ip.src, udp.sport))
                span.setdefault(key, []).append(ts)
    assert len(span) == info["calls"]
    lengths = sorted(max(t) - min(t) for t in span.values())
    assert lengths[-1] < 3.05 and lengths[len(lengths) // 2] > 1.0
    assert sum(x < 0.45 for x in lengths) <= 2  # at most the last voice and video call is cut


def test_call_heavy_capture_gives_marsad_its_calls(calls: tuple[Path, dict[str, Any]]) -> None:
    """Every voice and video flow of the call-heavy capture is a call with media to marsad:
    the benchmark's call-heavy figures time the call assembly they are meant to."""
    from api.pipeline import analyze_capture

    path, info = calls
    result = analyze_capture(path, workers=1, hash_capture=False)
    with_media = [c for c in result.analysis.calls if c.media]
    assert len(with_media) == info["calls"]
    assert {m for c in with_media for m in c.media} == {"audio", "video"}


def test_profiles_same_bytes_and_own_default_names(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pcap", tmp_path / "b.pcap"
    for out in (a, b):
        assert gc.main(["--profile", "calls", "--packets", "3000", "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    assert gc.default_path(2_000_000, 1).name == "synth-2000000-s1.pcap"
    assert gc.default_path(2_000_000, 1, "web") == gc.default_path(2_000_000, 1)
    assert gc.default_path(500_000, 1, "calls").name == "synth-calls-500000-s1.pcap"
    assert set(rb.DEFAULT_PACKETS) == set(gc.PROFILES)


def test_same_seed_same_bytes_and_scale_keeps_flows(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "c.pcap"
    for out, scale in ((a, 1), (b, 1), (c, 3)):
        assert gc.main(["--packets", "5000", "--scale", str(scale), "--out", str(out)]) == 0
    assert a.read_bytes() == b.read_bytes()
    pa, fa = dpkt_loop.meter(a)
    pc, fc = dpkt_loop.meter(c)
    assert set(fa) == set(fc)
    assert {k: v.orig for k, v in fa.items()} == {k: v.orig for k, v in fc.items()}
    assert pc > 2.2 * pa
    span = json.loads(Path(str(c) + ".json").read_text())["span_s"]
    assert span == 540


# ---- the dpkt baseline and the runner ------------------------------------------------

def test_dpkt_loop_counts_both_directions(small: tuple[Path, dict[str, Any], list[Frame]],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path, info, frames = small
    packets, flows = dpkt_loop.meter(path)
    assert packets == len(frames)
    assert len(flows) == info["flows"]
    assert sum(c.orig_pkts + c.resp_pkts for c in flows.values()) == packets
    assert sum(c.orig_bytes + c.resp_bytes for c in flows.values()) == sum(
        len(buf) for _, buf in frames)
    assert sum(1 for c in flows.values() if c.resp_pkts) == len(flows)  # every flow is two-way
    dpkt_loop.main([str(path)])
    assert capsys.readouterr().out.splitlines()[-1] == f"flows {info['flows']}"


def test_count_packets_without_sidecar(tmp_path: Path) -> None:
    out = tmp_path / "x.pcap"
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    recs = b"".join(struct.pack("<IIII", 1, i, n, n) + bytes(n) for i, n in enumerate((60, 0, 7)))
    out.write_bytes(head + recs)
    assert rb.count_packets(out) == 3


def test_timed_run_reads_flows_and_tree_memory() -> None:
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', "
            "'b = bytearray(150 << 20); import time; time.sleep(0.6)'])\n"
            "child.wait(); print('flows 7')\n")
    run = rb.timed_run([sys.executable, "-c", code], keep_stdout=True, timeout_s=60)
    assert run.returncode == 0
    assert run.flows == 7
    assert run.procs == 2
    assert run.peak_rss > 150 << 20
    assert run.peak_pss > 140 << 20


def test_process_tree_from_children_lists_equals_the_full_scan() -> None:
    # grandchildren too, and a child forked by a thread other than the main one
    code = ("import subprocess, threading, time\n"
            "subprocess.Popen(['sh', '-c', 'sleep 2 & sleep 2; wait'])\n"
            "threading.Thread(target=lambda: subprocess.run(['sleep', '2'])).start()\n"
            "time.sleep(2)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(0.7)
        tree = rb.process_tree(proc.pid)
        assert sorted(tree) == sorted(rb.process_tree_scan(proc.pid))
        assert tree[0] == proc.pid and len(tree) == 5  # python, sh, 2 sleeps, thread's sleep
    finally:
        proc.wait()
    assert rb.process_tree(proc.pid) == [proc.pid]  # gone: the root alone (sampled as 0)


def test_pss_splits_what_forked_processes_share() -> None:
    # A parent fills 150 MiB, then forks a child that only waits: RSS counts the pages in
    # both processes, PSS once between them.
    code = ("import os, time\n"
            "b = b'\\x01' * (150 << 20)\n"
            "pid = os.fork()\n"
            "time.sleep(0.8)\n"
            "if pid == 0: os._exit(0)\n"
            "os.waitpid(pid, 0)\n")
    run = rb.timed_run([sys.executable, "-c", code], keep_stdout=False, timeout_s=60)
    assert run.returncode == 0 and run.procs == 2
    assert run.peak_rss > 290 << 20
    assert 145 << 20 < run.peak_pss < 210 << 20


def test_missing_marsad_is_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(rb, "VENV_BIN", tmp_path)
    tool = rb.marsad_tool("flows")
    assert tool.skip is not None and "not found" in tool.skip
    fake = tmp_path / "marsad"
    fake.write_text("#!/bin/sh\n[ \"$1\" = flows ] && exit 0\necho 'invalid choice' >&2\nexit 2\n")
    fake.chmod(0o755)
    assert rb.marsad_tool("flows").skip is None
    skip = rb.marsad_tool("analyze").skip
    assert skip is not None and "invalid choice" in skip
    skip = rb.marsad_probe_tool().skip
    assert skip is not None and "`marsad probe` not available" in skip


def test_marsad_is_timed_as_users_run_it() -> None:
    assert rb.marsad_tool("flows").argv[1:] == ["flows", "{pcap}", "--jsonl"]
    assert rb.marsad_tool("analyze").argv[1:] == ["analyze", "{pcap}", "--json"]


def test_probe_tool_reads_the_stream_with_ring_and_store(
        calls: tuple[Path, dict[str, Any]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    tool = rb.marsad_probe_tool()
    if tool.skip:
        pytest.skip(tool.skip)
    path, _info = calls
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(prefix: str) -> str:
        made.append(Path(real_mkdtemp(prefix=prefix, dir=tmp_path)))
        return str(made[-1])

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    # What the run leaves in its data directory: the store, the ledger and the ring.
    monkeypatch.setattr(shutil, "rmtree", lambda d, ignore_errors=False: None)
    run = rb.run_tool(tool, path, timeout_s=120)
    assert run.returncode == 0, run.stderr_tail
    assert len(made) == 1
    data = made[0]
    assert (data / "marsad.db").is_file() and (data / "ledger.db").is_file()
    ring = list((data / "captures" / "ring").glob("*.pcap"))
    assert ring and sum(p.stat().st_size for p in ring) > path.stat().st_size // 2
    # The tree is the shell, cat, the probe and its reader: all counted.
    assert run.procs >= 3
    assert run.peak_rss > 40 << 20
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    run = rb.run_tool(tool, path, timeout_s=120)
    assert run.returncode == 0 and len(made) == 2 and not made[1].exists()  # removed after


def test_a_failing_stream_fails_the_run(tmp_path: Path) -> None:
    tool = rb.marsad_probe_tool()
    if tool.skip:
        pytest.skip(tool.skip)
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all" * 10)
    run = rb.run_tool(tool, bad, timeout_s=120)
    assert run.returncode == 2  # the probe's exit status, through the shell's pipeline


def test_ratios_and_markdown() -> None:
    rows: dict[str, dict[str, Any]] = {
            "marsad flows": {"pps": 300.0, "peak_rss_mib": 50.0},
            "nfstream no-DPI": {"pps": 100.0, "peak_rss_mib": 100.0},
            "dpkt loop": {"skip": "dpkt is not installed"}}
    assert rb.ratio(rows, "marsad flows", "nfstream no-DPI", "pps") == "3.00"
    assert rb.ratio(rows, "marsad flows", "nfstream no-DPI", "peak_rss_mib") == "0.50"
    assert rb.ratio(rows, "marsad flows", "dpkt loop", "pps") == "n/a (dpkt loop skipped)"
    rows["dpkt loop"]["skip"] = "failed (exit 1): boom"
    assert rb.ratio(rows, "dpkt loop", "marsad flows", "pps") == "n/a (dpkt loop failed)"


def test_runner_end_to_end_on_dpkt(small: tuple[Path, dict[str, Any], list[Frame]],
                                   tmp_path: Path) -> None:
    path, info, _ = small
    r = subprocess.run([sys.executable, str(rb.BENCH / "run_bench.py"), "--pcap", str(path),
                        "--reps", "1", "--only", "dpkt loop", "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads((tmp_path / "bench-latest.json").read_text())
    assert list(res["captures"]) == [path.stem]
    cap = res["captures"][path.stem]
    row = next(t for t in cap["tools"] if t["tool"] == "dpkt loop")
    assert row["flows"] == info["flows"]
    assert row["pps"] > 0 and row["peak_rss_mib"] > 5
    assert cap["packets"] == info["packets"]
    assert res["machine"]["versions"]["dpkt"]
    assert "| dpkt loop |" in (tmp_path / "bench-latest.md").read_text()


def test_runner_times_both_captures_interleaved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    made: list[tuple[int, str]] = []

    def default_path(packets: int, scale: int, profile: str = "web") -> Path:
        made.append((packets, profile))
        return tmp_path / f"{profile}-{packets}-s{scale}.pcap"

    monkeypatch.setattr(rb, "default_path", default_path)
    assert rb.main(["--packets", "3000", "--reps", "2", "--only", "dpkt loop",
                    "--out-dir", str(tmp_path / "out")]) == 0
    assert made == [(3000, "web"), (3000, "calls")]
    order = [line.split()[1] for line in capsys.readouterr().out.splitlines()
             if line.startswith("  [")]
    assert order == ["web", "calls", "web", "calls"]
    res = json.loads((tmp_path / "out" / "bench-latest.json").read_text())
    assert list(res["captures"]) == ["web", "calls"]
    for name, cap in res["captures"].items():
        side = json.loads((tmp_path / f"{name}-3000-s1.pcap.json").read_text())
        assert cap["profile"] == name and cap["calls"] == side["calls"]
        row = next(t for t in cap["tools"] if t["tool"] == "dpkt loop")
        assert row["flows"] == side["flows"] and len(row["runs"]) == 2
        assert [(r["a"], r["b"]) for r in cap["ratios"]] == list(rb.RATIOS)
        probe = next(r for r in cap["ratios"] if r["a"] == "marsad probe (stream)")
        assert probe["b"] == "marsad analyze" and probe["throughput"].startswith("n/a")
    md = (tmp_path / "out" / "bench-latest.md").read_text()
    assert md.index("## web") < md.index("## calls")
    assert md.count("| marsad analyze / nfstream DPI |") == 2
    assert md.count("| marsad probe (stream) / marsad analyze |") == 2


def test_captures_option() -> None:
    assert rb.profile_list("calls") == ["calls"]
    assert rb.profile_list("web, calls,web") == ["web", "calls"]
    with pytest.raises(Exception, match="unknown capture voip"):
        rb.profile_list("web,voip")
    with pytest.raises(SystemExit):
        rb.main(["--captures", "bogus"])


def test_nfstream_runner_sees_every_flow(small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    pytest.importorskip("nfstream", reason="nfstream is the optional bench dependency")
    import nfstream_run

    path, info, _ = small
    n, apps = nfstream_run.run(path, dpi=False)
    assert n == info["flows"] and not apps
    n, apps = nfstream_run.run(path, dpi=True)
    assert n == info["flows"]
    seen = {name.split(".")[0] for name in apps}
    assert {"DNS", "QUIC", "TLS", "STUN"} <= seen


def test_quic_request_bursts_are_not_call_media(tmp_path: Path) -> None:
    """HTTP/3 over QUIC in bursts of full-size packets with idle seconds between can pass
    the statistical screen-share rule; a flow the inspectors know as QUIC is web traffic,
    never voice, video or screen (the apps carry call media in SRTP over UDP)."""
    from api.pipeline import analyze_capture
    from classifier.engine import Classifier
    from probe import FlowReader

    out = tmp_path / "quic.pcap"
    assert gc.main(["--packets", "40000", "--out", str(out)]) == 0
    classifier = Classifier()
    looks_live = [f.uid for f in FlowReader(out) if (o := classifier.observe(f)).guess.realtime
                  and o.facts.protocol == "quic"]
    assert looks_live  # the statistics alone would call these call media
    result = analyze_capture(out, workers=1, hash_capture=False)
    by_uid = {c.uid: c for c in result.classes}
    for uid in looks_live:
        assert str(by_uid[uid].category) not in ("voice", "video", "screen"), by_uid[uid]
        assert by_uid[uid].media is None


def test_project_is_byte_compiled_before_the_runs() -> None:
    import importlib.util
    rb.compile_project()
    for pkg in rb.PACKAGES:
        for src in (rb.ROOT / pkg).rglob("*.py"):
            pyc = Path(importlib.util.cache_from_source(str(src)))
            assert pyc.exists() and pyc.stat().st_mtime >= src.stat().st_mtime, src


def test_replay_rate_counts_what_the_probe_received(
        small: tuple[Path, dict[str, Any], list[Frame]]) -> None:
    # tcpreplay out of a veth end in its own namespace, marsad probe -i on the other end.
    import os

    import replay_rate

    if os.geteuid() != 0 or shutil.which("tcpreplay") is None:
        pytest.skip("needs root (network namespaces, veth, capture) and tcpreplay")
    out = subprocess.run([sys.executable, str(Path(replay_rate.__file__)), "--capture",
                          str(small[0]), "--rates", "4000", "--limit", "4000"],
                         capture_output=True, text=True, timeout=300, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert rows[0]["pps"] == 4000 and rows[0]["tcpreplay_rc"] == 0
    assert rows[0]["received"] >= 4000 and rows[0]["dropped"] == 0 and rows[0]["flows"] > 0
    assert rows[-1] == {"highest_rate_without_drops_pps": 4000}


def test_batch_bench_runs_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The batch benchmark on a tiny folder, local modes only: a row per mode with the
    workers' peak memory, and the same folder reused on a second call."""
    import batch_bench as bb
    monkeypatch.setattr(bb, "DATA", tmp_path / "data")
    monkeypatch.setattr(bb, "OUT", tmp_path / "out")
    assert bb.main(["--files", "12", "--packets-per-file", "300", "--base-packets", "2000",
                    "--reps", "1", "--no-dask"]) == 0
    result = json.loads(next((tmp_path / "out").glob("batch-*.json")).read_text())
    assert result["files"] >= 12
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"1 job", "2 jobs"}
    assert rows["1 job"]["workers"] == 1 and rows["2 jobs"]["workers"] == 2
    assert all(r["peak_rss_mib_per_worker"] > 20 for r in rows.values())
    assert all(run["returncode"] == 2 for rs in result["runs"].values() for run in rs)
    folder = bb.folder_of(12, 300, 2000)
    assert (folder / "kinds.json").is_file()


def test_a_long_capture_is_periods_one_after_the_other(tmp_path: Path) -> None:
    """``long_capture.py``: each period is its own traffic (another seed), moved a span
    later; the whole reads as one capture in time order."""
    import long_capture

    out = tmp_path / "long.pcap"
    info = long_capture.write_long(4000, 3, 11, "calls", out)
    with out.open("rb") as fh:
        stamps = [ts for ts, _ in dpkt.pcap.Reader(fh)]
    assert len(stamps) == info["packets"] and info["periods"] == 3
    assert stamps == sorted(stamps)
    span = gc.BASE_SPAN_US / 1e6
    first = stamps[0]
    per_period = [sum(1 for t in stamps if first + k * span <= t < first + (k + 1) * span + 1)
                  for k in range(3)]
    assert all(n > 3000 for n in per_period)  # every period carries its own traffic
    assert stamps[-1] - first > 2 * span and info["span_s"] == 3 * span
