"""``marsad probe`` on broken, hostile and odd input: what it reports is what it kept.

Each test builds its stream from the sample captures (a record stamped 2097, 4 KB
of garbage after 254 good packets, two captures end to end, a stream cut
mid-record), runs ``marsad probe -r - --data-dir`` on it, and checks that every
verdict other than ok it printed is in the ledger with its ring files, or that
the probe said loudly (exit status, status file, stderr) why not. The live tests
run ``marsad probe -i lo`` (root and tcpdump, else skipped): a finished call on a
quiet link is reported on the wall clock, tcpdump's statistics are not repeated,
and a capture that cannot start is explained in one line.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from policy.ledger import Ledger
from tests.pcapbytes import split

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "captures"
FAST = ["--udp-idle", "3", "--tcp-idle", "3", "--call-settle", "2", "--call-interval", "1",
        "--status-interval", "0.3"]
BAD = ("blocked", "throttled", "degraded", "failed")


def arp_record(sec: int) -> bytes:
    """An Ethernet ARP request stamped ``sec``: in no flow, it moves only the clock."""
    frame = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x06"
             + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + b"\x02\x00\x00\x00\x00\x01"
             + bytes([10, 0, 0, 1]) + b"\x00" * 6 + bytes([10, 0, 0, 2]))
    frame += b"\x00" * (60 - len(frame))
    return struct.pack("<IIII", sec, 0, len(frame), len(frame)) + frame


@dataclass
class Run:
    code: int
    lines: list[dict[str, Any]]
    stderr: str
    status: dict[str, Any]
    ledger_uids: set[str]
    ring_records: list[bytes]

    def reported(self) -> set[str]:
        """Uids of the calls and flow verdicts printed with a verdict other than ok."""
        return {o["uid"] for o in self.lines
                if o["record"] in ("call", "flow-verdict") and o.get("verdict") in BAD}

    def flows(self) -> list[tuple[Any, ...]]:
        return sorted((o["uid"], o["orig_pkts"], o["resp_pkts"]) for o in self.lines
                      if o["record"] == "flow")


def probe(tmp_path: Path, data: bytes, *extra: str, name: str = "run") -> Run:
    data_dir = tmp_path / name
    proc = subprocess.run(
        [sys.executable, "-m", "api.cli", "probe", "-r", "-", "--data-dir", str(data_dir),
         *FAST, *extra], cwd=ROOT, input=data, capture_output=True, timeout=120)
    lines = [json.loads(x) for x in proc.stdout.decode().splitlines() if x.strip()]
    status = json.loads((data_dir / "probe-status.json").read_text())
    uids: set[str] = set()
    if (data_dir / "ledger.db").exists():
        with Ledger(data_dir / "ledger.db", clock=time.time) as ledger:
            assert ledger.verify().ok
            ring = data_dir / "captures" / "ring"
            for e in ledger.entries():
                for f in e.evidence["ring"]:  # the packets behind it are still there
                    assert (ring / f["file"]).exists(), f
                uids.add(e.subject_uid)
    records: list[bytes] = []
    index = data_dir / "captures" / "ring" / "index.json"
    if index.exists():
        for f in json.loads(index.read_text())["files"]:
            records += split((index.parent / f["name"]).read_bytes())[1]
    return Run(proc.returncode, lines, proc.stderr.decode(), status, uids, records)


@pytest.fixture(scope="module")
def blocked() -> tuple[bytes, list[bytes]]:
    return split((CAPTURES / "sample-blocked.pcap").read_bytes())


# -- time is data -------------------------------------------------------------------------------


def test_a_record_stamped_2097_wipes_nothing(tmp_path: Path,
                                             blocked: tuple[bytes, list[bytes]]) -> None:
    head, recs = blocked
    k = len(recs) // 2
    stream = [*recs[:k], arp_record(4_010_000_000), *recs[k:]]  # January 2097
    run = probe(tmp_path, head + b"".join(stream))
    assert run.code == 0, run.stderr
    assert run.ring_records == stream  # every ring file is still there
    assert run.reported() and run.reported() <= run.ledger_uids, run.stderr
    assert run.status["time_jumps"] == 2 and run.status["unledgered"] == 0
    assert "timestamp jumps" in run.stderr


# -- evidence is never lost after it was reported ------------------------------------------------


def test_no_ring_means_verdicts_not_in_the_ledger_said_loudly(
        tmp_path: Path, blocked: tuple[bytes, list[bytes]]) -> None:
    head, recs = blocked
    run = probe(tmp_path, head + b"".join(recs), "--no-ring")
    reported = run.reported()
    assert reported and not run.ledger_uids
    assert run.code == 3
    assert run.status["unledgered"] == len(reported)
    assert "not in the ledger: no capture ring is kept" in run.status["message"]
    assert "not put in the evidence ledger" in run.stderr


# -- mid-stream damage --------------------------------------------------------------------------


def test_garbage_mid_stream_resynchronises_and_loses_no_verdict(
        tmp_path: Path, blocked: tuple[bytes, list[bytes]]) -> None:
    head, recs = blocked
    clean = probe(tmp_path, head + b"".join(recs), name="clean")
    junk = random.Random(14).randbytes(4096)
    run = probe(tmp_path, head + b"".join(recs[:254]) + junk + b"".join(recs[254:]))
    assert run.code == 0, run.stderr
    assert run.flows() == clean.flows()  # nothing after the damage was dropped
    assert run.reported() == clean.reported() and run.reported() <= run.ledger_uids
    assert run.ring_records == recs
    assert run.status["skipped_bytes"] == 4096 and run.status["unledgered"] == 0
    at = len(head) + sum(map(len, recs[:254]))
    assert f"skipped 4096 bytes of damage at byte {at}" in run.stderr


def test_two_captures_end_to_end_are_read_whole(
        tmp_path: Path, blocked: tuple[bytes, list[bytes]]) -> None:
    # cat part1.pcap part2.pcap | marsad probe -r -: the call, then the blocked capture
    # moved to begin a second after it (two files of one rotating capture).
    call = (CAPTURES / "sample-call.pcap").read_bytes()
    _, call_recs = split(call)
    head, recs = blocked
    shift = struct.unpack_from("<I", call_recs[-1])[0] + 1 - struct.unpack_from("<I", recs[0])[0]
    recs = [struct.pack("<I", struct.unpack_from("<I", r)[0] + shift) + r[4:] for r in recs]
    alone = probe(tmp_path, head + b"".join(recs), name="alone")
    run = probe(tmp_path, call + head + b"".join(recs))
    assert run.code == 0, run.stderr
    assert run.status["packets"] == len(call_recs) + len(recs)
    assert run.ring_records == call_recs + recs
    blocked_flows = {(o["proto"], o["orig_p"], o["resp_p"]) for o in alone.lines
                     if o["record"] == "flow"}
    seen = {(o["proto"], o["orig_p"], o["resp_p"]) for o in run.lines if o["record"] == "flow"}
    assert blocked_flows <= seen
    assert any(o.get("verdict") == "blocked" for o in run.lines)
    assert run.reported() <= run.ledger_uids
    assert "capture 2 begins at byte" in run.stderr


def test_a_stream_cut_mid_record_exits_3_and_says_where(
        tmp_path: Path, blocked: tuple[bytes, list[bytes]]) -> None:
    head, recs = blocked
    data = head + b"".join(recs)
    run = probe(tmp_path, data[:-10])
    cut = len(data) - len(recs[-1])
    assert run.code == 3
    assert f"capture truncated at byte {cut}" in run.stderr
    assert run.status["truncated_at"] == cut and run.status["state"] == "stopped"
    assert f"byte {cut}" in run.status["message"]
    assert run.ring_records == recs[:-1]
    assert any(o["record"] == "flow" for o in run.lines)


# -- lag is processing lag ----------------------------------------------------------------------


def test_replaying_an_old_capture_is_not_lag(tmp_path: Path) -> None:
    data = (CAPTURES / "sample-call.pcap").read_bytes()  # packets of November 2023
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "probe", "-r", "-", "--data-dir", str(data_dir),
         *FAST], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    lags: list[float] = []
    try:
        step = len(data) // 8 + 1
        for i in range(0, len(data), step):
            proc.stdin.write(data[i:i + step])
            proc.stdin.flush()
            time.sleep(0.4)
            status_file = data_dir / "probe-status.json"
            if status_file.exists():
                status = json.loads(status_file.read_text())
                said = re.search(r"lag ([0-9.]+) s", status["message"] or "")
                lags.append(float(said.group(1)) if said else status["lag_s"])
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read().decode()
    assert lags and max(lags) < 5.0, lags
    assert "falls behind" not in stderr
    status = json.loads((data_dir / "probe-status.json").read_text())
    assert status["lag_s"] < 5.0 and "lag 0.0 s" in status["message"]


# -- a live link --------------------------------------------------------------------------------


def _live_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root to capture on lo"
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed"
    return None


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rtp_both_ways(port_a: int, port_b: int, seconds: float) -> None:
    """PCMU over RTP between two local sockets, 20 ms packets, each side its own SSRC."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", port_a))
    b.bind(("127.0.0.1", port_b))
    try:
        t0 = time.monotonic()
        for i in range(int(seconds * 50)):
            for src, dst, ssrc in ((a, port_b, 0x1234ABCD), (b, port_a, 0x0BADCAFE)):
                hdr = struct.pack("!BBHII", 0x80, 0, (1000 + i) & 0xFFFF, 160000 + 160 * i,
                                  ssrc)
                src.sendto(hdr + b"\xff" * 160, ("127.0.0.1", dst))
            time.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
    finally:
        a.close()
        b.close()


@pytest.mark.skipif(_live_unavailable() is not None, reason=_live_unavailable() or "")
def test_a_call_on_a_quiet_link_is_reported_on_the_wall_clock(tmp_path: Path) -> None:
    pa, pb = _free_udp_port(), _free_udp_port()
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "probe", "-i", "lo", "--filter",
         f"udp and port {pa} and port {pb}", "--data-dir", str(data_dir),
         "--udp-idle", "2", "--call-settle", "1", "--call-interval", "1",
         "--status-interval", "0.3"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    assert proc.stdout is not None
    seen: list[tuple[float, dict[str, Any]]] = []

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            if raw.strip():
                seen.append((time.monotonic(), json.loads(raw)))

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 15
        status_file = data_dir / "probe-status.json"
        while time.monotonic() < deadline and not (
                status_file.exists() and json.loads(status_file.read_text())["state"]
                == "running"):
            time.sleep(0.1)
        time.sleep(1.0)  # tcpdump opens the interface
        _rtp_both_ways(pa, pb, 3.0)
        ended = time.monotonic()
        deadline = ended + 15
        while time.monotonic() < deadline and not any(o["record"] == "call"
                                                      for _, o in seen):
            time.sleep(0.1)
        time.sleep(3.0)  # a quiet while: tcpdump's statistics must not repeat meanwhile
        status = json.loads(status_file.read_text())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    t.join(timeout=5)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    calls = [(at, o) for at, o in seen if o["record"] == "call"]
    flows = [(at, o) for at, o in seen if o["record"] == "flow"]
    assert flows and calls, (seen, stderr)
    # Idle 2 s + settle 1 s + a pass a second: well before the traffic resumes (never).
    assert flows[0][0] - ended < 6.0, flows[0][0] - ended
    assert calls[0][0] - ended < 8.0, calls[0][0] - ended
    assert calls[0][1]["app"] != "" and "audio" in calls[0][1].get("media", [])
    assert status["lag_s"] < 2.0 and status["packets"] >= 290
    assert stderr.count("packets captured") <= 1, stderr  # once, at the end
    assert proc.returncode == 0, stderr


@pytest.mark.skipif(_live_unavailable() is not None, reason=_live_unavailable() or "")
def test_a_wrong_interface_is_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "api.cli", "probe", "-i", "nosuchif0",
                           "--data-dir", str(tmp_path / "d")], cwd=ROOT, capture_output=True,
                          timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert "no interface named 'nosuchif0'" in err
    assert "empty input" not in err and "not a capture" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.skipif(_live_unavailable() is not None or shutil.which("capsh") is None,
                    reason=_live_unavailable() or "capsh is not installed")
def test_no_capture_permission_names_the_fix(tmp_path: Path) -> None:
    # Root without CAP_NET_RAW/CAP_NET_ADMIN: tcpdump cannot open the interface.
    cmd = " ".join([sys.executable, "-m", "api.cli", "probe", "-i", "lo", "--data-dir",
                    str(tmp_path / "d")])
    proc = subprocess.run(["capsh", "--drop=cap_net_raw,cap_net_admin", "--", "-c", cmd],
                          cwd=ROOT, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "root" in err and "CAP_NET_RAW" in err and "CAP_NET_ADMIN" in err
    assert "setcap cap_net_raw,cap_net_admin=eip $(which tcpdump)" in err
    assert "empty input" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_a_capture_tool_that_dies_mid_capture_is_not_a_clean_end(
        tmp_path: Path, blocked: tuple[bytes, list[bytes]]) -> None:
    # A stand-in for tcpdump that delivers part of a capture, then fails (the interface
    # went away): the probe keeps what came and says the capture ended early.
    head, recs = blocked
    (tmp_path / "part.pcap").write_bytes(head + b"".join(recs[:100]))
    fake = tmp_path / "tcpdump"
    fake.write_text("#!/bin/sh\n"
                    f"cat {tmp_path / 'part.pcap'}\n"
                    "echo 'tcpdump: pcap_loop: The interface disappeared' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "api.cli", "probe", "-i", "eth7",
                           "--tcpdump", str(fake), "--data-dir", str(tmp_path / "d"), *FAST],
                          cwd=ROOT, capture_output=True, timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 3, err
    assert f"{fake} ended with status 1 while capturing on eth7" in err
    assert "The interface disappeared" in err
    status = json.loads((tmp_path / "d" / "probe-status.json").read_text())
    assert status["packets"] == 100 and "ended with status 1" in status["message"]
