"""``marsad probe``: the live probe on a pcap stream (stdin) and on a real interface.

The stdin tests feed a sample capture slowly through ``marsad probe -r -`` and
check that flows, calls and verdicts come out before the input ends, and that
the capture ring holds exactly the stream's packets. The interface test builds
the lab's namespaces (tests/lab/netlab.py), runs ``marsad probe -i`` on the
caller's veth and sends RTP, unanswered STUN and a TCP connect to a closed port
across it; it needs root, ``ip netns`` and tcpdump, and skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from api.live import CaptureStats, parse_capture_stats, tcpdump_command
from policy.ledger import Ledger
from probe import CaptureRing, RingConfig
from tests.pcapbytes import split

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "captures"
FAST = ["--udp-idle", "3", "--tcp-idle", "3", "--call-settle", "2", "--call-interval", "1",
        "--status-interval", "0.3"]


def _ring_records(ring: Path) -> list[bytes]:
    out: list[bytes] = []
    for f in sorted(ring.glob("ring-*.pcap")):
        out.extend(split(f.read_bytes())[1])
    return out


# -- pieces -------------------------------------------------------------------------------------


def test_tcpdump_statistics_lines() -> None:
    # What tcpdump 4.99 prints on stderr at exit and on SIGUSR1.
    text = ("tcpdump: listening on c0, link-type EN10MB (Ethernet), snapshot length 262144 "
            "bytes\n412 packets captured\n415 packets received by filter\n"
            "3 packets dropped by kernel\n")
    st = parse_capture_stats(text.splitlines())
    assert st == CaptureStats(captured=412, received=415, dropped=3, if_dropped=0)
    later = parse_capture_stats(["1 packet dropped by interface", "900 packets received by "
                                 "filter"], st)
    assert (later.received, later.dropped, later.if_dropped) == (900, 3, 1)
    assert parse_capture_stats(["garbage 12 packets"], st) == st


def test_tcpdump_command() -> None:
    argv = tcpdump_command("eth0", "udp or tcp", user="marsad")
    assert argv[:3] == ["tcpdump", "-i", "eth0"]
    assert "-U" in argv and "--immediate-mode" not in argv
    assert argv[argv.index("-w") + 1] == "-"
    assert argv[argv.index("-Z") + 1] == "marsad"
    assert argv[-1] == "udp or tcp"


def test_ring_rotates_by_size_and_prunes_by_total(tmp_path: Path) -> None:
    data = (CAPTURES / "sample-call.pcap").read_bytes()
    recs = split(data)[1]
    closed: list[str] = []
    ring = CaptureRing(RingConfig(tmp_path, file_bytes=20_000, file_age_s=1e9,
                                  total_bytes=1 << 30),
                       on_close=lambda f: closed.append(f.name))
    for i in range(0, len(data), 777):  # chunks cut through record headers
        ring.feed(data[i:i + 777])
    ring.close()
    files = sorted(tmp_path.glob("ring-*.pcap"))
    assert len(files) >= 3 and [f.name for f in files] == sorted(closed)
    assert all(f.stat().st_size <= 20_000 for f in files)
    assert _ring_records(tmp_path) == recs
    assert ring.frames == len(recs)
    index = json.loads((tmp_path / "index.json").read_text())["files"]
    assert sum(f["packets"] for f in index) == len(recs)
    assert index[1]["first_frame"] == index[0]["first_frame"] + index[0]["packets"]
    assert ring.spanning(1, 1) == ring.files[:1]
    # A total budget of two files' worth keeps only the newest files.
    small = tmp_path / "small"
    ring2 = CaptureRing(RingConfig(small, file_bytes=20_000, file_age_s=1e9, total_bytes=40_000))
    ring2.feed(data)
    ring2.close()
    kept = _ring_records(small)
    assert ring2.deleted >= 1 and 0 < len(kept) < len(recs)
    assert kept == recs[-len(kept):]


def test_ring_rotates_by_capture_time_and_refuses_pcapng(tmp_path: Path) -> None:
    data = (CAPTURES / "sample-blocked.pcap").read_bytes()
    ring = CaptureRing(RingConfig(tmp_path / "a", file_age_s=5.0))
    ring.feed(data)
    ring.close()
    assert all(f.last_ts - f.first_ts < 5.0 for f in ring.files)
    assert len(ring.files) >= 5  # the capture spans about 29 s
    ng = next(CAPTURES.glob("*.pcapng"))
    ring_ng = CaptureRing(RingConfig(tmp_path / "b"))
    ring_ng.feed(ng.read_bytes())
    ring_ng.close()
    assert ring_ng.disabled is not None and not list((tmp_path / "b").glob("*.pcap"))


# -- stdin mode ---------------------------------------------------------------------------------


class _Lines:
    """Collects a process's stdout lines with the time each arrived."""

    def __init__(self, fh: Any) -> None:
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._t = threading.Thread(target=self._pump, args=(fh,), daemon=True)
        self._t.start()

    def _pump(self, fh: Any) -> None:
        for raw in fh:
            if raw.strip():
                self.lines.append((time.monotonic(), json.loads(raw)))

    def wait_for(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(pred(obj) for _, obj in list(self.lines)):
                return True
            time.sleep(0.05)
        return False

    def join(self) -> None:
        self._t.join(timeout=10)


def _probe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", "probe", *args]


def _blocked(obj: dict[str, Any]) -> bool:
    return obj.get("record") in ("flow-verdict", "call") and obj.get("verdict") == "blocked"


@pytest.mark.parametrize(("capture", "want"), [
    ("sample-blocked.pcap", _blocked),
    ("sample-call.pcap", lambda o: o.get("record") == "call" and o.get("app") == "whatsapp"
     and "audio" in o.get("media", [])),
])
def test_stdin_stream_reports_before_the_end(tmp_path: Path, capture: str,
                                             want: Callable[[dict[str, Any]], bool]) -> None:
    data = (CAPTURES / capture).read_bytes()
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(_probe_cmd("-r", "-", "--data-dir", str(data_dir), *FAST),
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=False)
    assert proc.stdin is not None and proc.stdout is not None
    lines = _Lines(proc.stdout)
    try:
        step = len(data) // 10 + 1
        for i in range(0, len(data), step):  # a slow writer
            proc.stdin.write(data[i:i + step])
            proc.stdin.flush()
            time.sleep(0.2)
        # Everything is written but stdin stays open: the results must come anyway.
        assert lines.wait_for(want, 20), [o for _, o in lines.lines]
        assert lines.wait_for(lambda o: o.get("record") == "flow", 1)
        closed_at = time.monotonic()
        deadline = time.monotonic() + 5
        while True:  # the heartbeat catches up with every packet while stdin is open
            status = json.loads((data_dir / "probe-status.json").read_text())
            if status["packets"] == len(split(data)[1]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status["state"] == "running" and status["packets"] == len(split(data)[1])
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines.join()
    assert any(t < closed_at and want(o) for t, o in lines.lines)
    assert any(t < closed_at and o["record"] == "flow" for t, o in lines.lines)
    # The ring holds every packet of the stream, byte for byte.
    ring = data_dir / "captures" / "ring"
    assert _ring_records(ring) == split(data)[1]
    status = json.loads((data_dir / "probe-status.json").read_text())
    assert status["state"] == "stopped" and status["flows_finished"] == sum(
        1 for _, o in lines.lines if o["record"] == "flow")
    if capture == "sample-blocked.pcap":
        # The verdicts went to the ledger, pointing at the ring file holding their packets.
        index = json.loads((ring / "index.json").read_text())["files"]
        shas = {f["sha256"] for f in index}
        with Ledger(data_dir / "ledger.db", clock=time.time) as ledger:
            entries = ledger.entries()
            assert entries and ledger.verify().ok
        assert all(e.capture_sha256 in shas for e in entries)
        assert {e.verdict for e in entries} == {"BLOCKED"}
        assert all(e.evidence["ring"] for e in entries)


# -- a real interface ---------------------------------------------------------------------------


def _lab_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux network namespaces"
    if os.geteuid() != 0:
        return "needs root for network namespaces and capturing"
    for tool in ("ip", "tcpdump", "iptables"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


_RELAY = r"""
import select, socket, sys, time
socks = []
for port in (40000, 40002):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    socks.append(s)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    ready, _, _ = select.select(socks, [], [], 0.2)
    for s in ready:
        data, peer = s.recvfrom(2048)
        if len(data) >= 12:  # answer RTP with our own stream (another SSRC)
            data = data[:8] + b"\x0b\xad\xca\xfe" + data[12:]
        s.sendto(data, peer)
"""

_CALLER = r"""
import os, socket, struct, sys, time
relay = sys.argv[1]
stun = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
stun.bind(("0.0.0.0", 45000))
tid = os.urandom(12)
req = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + tid  # RFC 5389 binding request
for _ in range(4):
    stun.sendto(req, (relay, 3478))
    time.sleep(0.25)
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.settimeout(2)
try:
    tcp.connect((relay, 443))  # nothing listens: the relay answers with a RST
except OSError:
    pass
tcp.close()
rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rtp.bind(("0.0.0.0", 40000))
rtp.setblocking(False)
seq, ts, t0 = 1000, 160000, time.monotonic()
for i in range(int(float(sys.argv[2]) * 50)):  # PCMU, 20 ms packets, stable SSRC
    hdr = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, ts & 0xFFFFFFFF, 0x1234ABCD)
    rtp.sendto(hdr + bytes([0xFF]) * 160, (relay, 40000))
    seq += 1
    ts += 160
    try:
        while True:
            rtp.recv(2048)
    except BlockingIOError:
        pass
    time.sleep(max(0.0, t0 + (i + 1) * 0.02 - time.monotonic()))
# A new UDP flow that starts within --call-settle of the call's end may be one of its
# streams, and the probe waits for it to end: the ticks start once that margin is past.
time.sleep(3)
tick = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.time() + float(sys.argv[3])
while time.time() < end:  # keeps capture time moving so idle flows expire
    tick.sendto(b"tick", (relay, 40002))
    time.sleep(0.1)
"""


@pytest.mark.skipif(_lab_unavailable() is not None, reason=_lab_unavailable() or "")
def test_live_probe_on_a_veth(tmp_path: Path) -> None:
    from tests.lab.netlab import CALLER_IF, RELAY_IP, NetLab

    data_dir = tmp_path / "data"
    ring = tmp_path / "ring"
    (tmp_path / "relay.py").write_text(_RELAY)
    (tmp_path / "caller.py").write_text(_CALLER)
    with NetLab(tmp_path / "lab", prefix=f"mlp{os.getpid()}-") as lab:
        # STUN is censored at the ISP: the requests cross the probe, no answer comes back.
        lab.iptables("-A", "FORWARD", "-p", "udp", "--dport", "3478", "-j", "DROP")
        lab.spawn(lab.relay, [sys.executable, str(tmp_path / "relay.py"), "40"], "relay")
        lab.wait_for_udp_listener(lab.relay, 40000)
        probe = lab.spawn(lab.caller, _probe_cmd(
            "-i", CALLER_IF, "--filter", "udp or tcp", "--data-dir", str(data_dir),
            "--ring-dir", str(ring), "--ring-age-s", "3", "--udp-idle", "2", "--tcp-idle", "2",
            "--call-settle", "2", "--call-interval", "1", "--status-interval", "0.5"),
            "probe", cwd=ROOT)
        status_file = data_dir / "probe-status.json"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
                status_file.exists() and json.loads(status_file.read_text())["state"]
                == "running"):
            time.sleep(0.1)
        time.sleep(1.0)  # tcpdump opens the interface
        assert probe.running(), probe.log()
        lab.spawn(lab.caller, [sys.executable, str(tmp_path / "caller.py"), RELAY_IP, "4",
                               "25"], "caller")

        def lines() -> list[dict[str, Any]]:
            out = []
            for raw in probe.log().splitlines():
                if raw.startswith("{"):
                    out.append(json.loads(raw))
            return out

        def seen(pred: Callable[[dict[str, Any]], bool], timeout: float) -> bool:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                if any(pred(o) for o in lines()):
                    return True
                time.sleep(0.2)
            return False

        voice = seen(lambda o: o.get("record") == "flow" and o.get("category") == "voice"
                     and o.get("resp_p") == 40000, 25)
        stun = seen(lambda o: o.get("record") == "flow-verdict" and o.get("verdict") ==
                    "blocked" and "stun-unanswered" in o.get("reasons", []), 10)
        # A connection reset ends 10 s (tcp_close_s) of capture time after its RST, then
        # settles: about t+13 s, while the ticks keep capture time moving to t+33 s.
        reset = seen(lambda o: o.get("record") == "flow" and o.get("resp_p") == 443
                     and o.get("proto") == "tcp", 15)
        status = json.loads(status_file.read_text())
        still_running = probe.running()
        ring_files = sorted(ring.glob("ring-*.pcap"))
        probe.stop(signal.SIGTERM, grace_s=10)
        log = probe.log()
    assert still_running, log
    assert voice, log
    assert stun, log
    assert reset, log
    assert status["state"] == "running" and status["packets"] > 250
    assert "dropped" in status and status["dropped"] == 0
    assert "kernel received" in (status["message"] or "")
    assert ring_files and sum(len(split(f.read_bytes())[1]) for f in ring_files
                              if f.exists()) > 0
    final = json.loads((data_dir / "probe-status.json").read_text())
    assert final["state"] == "stopped"
    total = sum(len(split(f.read_bytes())[1]) for f in sorted(ring.glob("ring-*.pcap")))
    assert total == final["packets"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                    reason="needs root and tcpdump to capture")
@pytest.mark.parametrize("iface", ["lo", "any"])
def test_a_burst_on_a_large_mtu_interface_is_captured_whole(tmp_path: Path, iface: str) -> None:
    """Loopback (MTU 64 KiB) and "any" (no MTU) give libpcap's per-packet ring frames of the
    whole snapshot length: a ring of a few dozen frames, which a burst overflows unless the
    kernel packs packets into blocks. Every packet of a burst, and the last ones before the
    probe stops, reach the ring files."""
    data_dir, ring = tmp_path / "data", tmp_path / "ring"
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.9", 0))
    port = rx.getsockname()[1]
    probe = subprocess.Popen(
        _probe_cmd("-i", iface, "--filter", f"udp and host 127.0.0.9 and port {port}",
                   "--data-dir", str(data_dir), "--ring-dir", str(ring),
                   "--status-interval", "0.5"),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status_file = data_dir / "probe-status.json"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (
                status_file.exists() and json.loads(status_file.read_text())["state"]
                == "running"):
            time.sleep(0.1)
        time.sleep(1.0)  # tcpdump opens the interface
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(3000):
            tx.sendto(i.to_bytes(4, "big") * 50, ("127.0.0.9", port))
    finally:
        probe.send_signal(signal.SIGTERM)
        _, err = probe.communicate(timeout=30)
    final = json.loads((data_dir / "probe-status.json").read_text())
    assert final["state"] == "stopped", err.decode(errors="replace")
    got = {bytes(p[-200:])[:4] for f in sorted(ring.glob("ring-*.pcap"))
           for p in split(f.read_bytes())[1]}
    assert len(got) == 3000, (len(got), final)
    assert final["dropped"] == 0, final
