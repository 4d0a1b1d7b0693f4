"""Soak: the service and the live probe together, with uploads, restarts and kill -9.

    python -m tests.soak.soak [--seconds 900] [--seed 1] [--data-dir DIR] [--json FILE]

One data directory ``D`` is shared by ``marsad serve --data-dir D`` and
``marsad probe -r - --data-dir D`` (same store, same evidence ledger). For the given
wall-clock time:

- a feeder writes the bundled Ethernet captures into the probe's stdin, one pcap stream
  per probe process, record by record with their timestamps moved onto one advancing
  capture clock (time compressed: a capture a fraction of a second apart, idle gaps of
  capture time between them so flows end and verdicts settle);
- an uploader posts the bundled captures to ``POST /v1/captures`` with the token from
  ``D/api-token``, each made distinct (timestamps shifted) so each is a new analysis;
- a chaos loop, at random points, restarts the service (SIGTERM) or kills it (SIGKILL),
  and stops the probe (end of its input, or SIGTERM) or kills it (SIGKILL), starting a
  new one each time;
- a sampler reads the resident memory of both process trees.

At the end both are stopped cleanly and the run is judged (:class:`SoakResult`):
``marsad verify`` on the ledger; every non-ok verdict each probe process printed (its
JSON lines) is in the ledger, or that process exited non-zero saying why on stderr;
each accepted upload ended ``done`` (or ``interrupted``, when the service was killed
while analysing it, and then it is counted); peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "captures"
PROBE_ARGS = ["--udp-idle", "3", "--tcp-idle", "3", "--call-settle", "2", "--call-interval", "1",
              "--status-interval", "0.5", "--ring-age-s", "20", "--ring-file-mb", "4",
              "--ring-total-mb", "256", "--ring-keep-s", "100000000", "--workers", "1"]
GAP_S = 15.0
"""Capture time between two captures fed to the probe (more than the idle timeouts and the
settle time, so each capture's flows end and its verdicts are written)."""


def _marsad(*args: str) -> list[str]:
    return [sys.executable, "-m", "api.cli", *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARSAD_")}
    return env | {"PYTHONPATH": str(ROOT)}


# -- captures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capture:
    name: str
    raw: bytes
    records: list[tuple[float, bytes]]
    """(timestamp, record bytes after the 16-byte header... kept whole: header + data)."""


def load_captures() -> list[Capture]:
    """The bundled little-endian microsecond Ethernet captures, as records."""
    out = []
    paths = sorted(CAPTURES.glob("sample-*.pcap")) + sorted((CAPTURES / "apps").glob("*.pcap"))
    for path in paths:
        raw = path.read_bytes()
        if len(raw) < 24 or raw[:4] != b"\xd4\xc3\xb2\xa1":
            continue
        if struct.unpack_from("<I", raw, 20)[0] != 1:
            continue
        recs, pos = [], 24
        while pos + 16 <= len(raw):
            sec, usec, incl, _ = struct.unpack_from("<IIII", raw, pos)
            recs.append((sec + usec / 1e6, raw[pos:pos + 16 + incl]))
            pos += 16 + incl
        out.append(Capture(path.name, raw, recs))
    return out


PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def retimed(cap: Capture, start: float) -> tuple[bytes, float]:
    """The capture's records moved to begin at ``start``; returns them and the last time."""
    t0 = cap.records[0][0]
    out = bytearray()
    last = start
    for ts, rec in cap.records:
        t = start + (ts - t0)
        sec = int(t)
        usec = min(999_999, round((t - sec) * 1e6))
        out += struct.pack("<II", sec, usec) + rec[8:]
        last = max(last, t)
    return bytes(out), last


# -- processes ---------------------------------------------------------------------------------


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB (0 when gone)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(kids.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


@dataclass(slots=True)
class ProbeRun:
    """One probe process: what it printed, how it ended."""

    index: int
    started: float
    ended: str = ""
    """``eof``, ``sigterm``, ``kill9`` or ``final``: how the soak stopped it."""
    exit_code: int | None = None
    stderr_tail: str = ""
    lines: int = 0
    packets_fed: int = 0
    verdicts: dict[str, str] = field(default_factory=dict)
    """Subject uid -> verdict of every non-ok verdict printed (calls and flow verdicts)."""
    peak_rss_mb: float = 0.0


class Probe:
    """A running ``marsad probe -r -`` with a reader of its stdout."""

    def __init__(self, data_dir: Path, index: int) -> None:
        self.run = ProbeRun(index, time.monotonic())
        self.proc = subprocess.Popen(_marsad("probe", "-r", "-", "--data-dir", str(data_dir),
                                             *PROBE_ARGS),
                                     cwd=ROOT, env=_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._err: list[bytes] = []
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()
        assert self.proc.stdin is not None
        self.stdin: IO[bytes] = self.proc.stdin
        self.header_sent = False

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.run.lines += 1
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("record") in ("call", "flow-verdict") and obj.get("verdict") != "ok":
                self.run.verdicts[str(obj["uid"])] = str(obj.get("verdict"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)
            del self._err[:-40]

    def feed(self, data: bytes, packets: int) -> bool:
        try:
            if not self.header_sent:
                self.stdin.write(PCAP_HEADER)
                self.header_sent = True
            self.stdin.write(data)
            self.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            return False
        self.run.packets_fed += packets
        return True

    def stop(self, how: str, timeout: float = 60) -> ProbeRun:
        self.run.ended = how
        if how == "kill9":
            self.proc.kill()
        elif how == "sigterm":
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(OSError, ValueError):
            self.stdin.close()
        try:
            self.run.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.run.exit_code = self.proc.wait()
            self.run.ended += "+timeout"
        for t in self._threads:
            t.join(timeout=10)
        self.run.stderr_tail = b"".join(self._err).decode(errors="replace")[-2000:]
        return self.run


class Server:
    """A running ``marsad serve``."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.port = port
        self.proc = subprocess.Popen(_marsad("serve", "--data-dir", str(data_dir), "--port",
                                             str(port), "--log-level", "warning"),
                                     cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self._err: list[bytes] = []
        threading.Thread(target=self._read_err, daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"marsad serve exited {self.proc.returncode}: {self.errors}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
            time.sleep(0.2)
        raise RuntimeError("marsad serve did not come up in 60 s")

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line)
            del self._err[:-200]

    @property
    def errors(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def stop(self, kill: bool) -> int:
        if kill:
            self.proc.kill()
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the soak ----------------------------------------------------------------------------------


@dataclass(slots=True)
class SoakResult:
    """What a soak did and found."""

    seconds: float = 0.0
    packets_fed: int = 0
    captures_fed: int = 0
    uploads_sent: int = 0
    uploads_accepted: int = 0
    uploads_refused_while_down: int = 0
    upload_http_errors: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    """Final state of every accepted upload."""
    server_restarts: int = 0
    server_kills: int = 0
    probe_restarts: int = 0
    probe_kills: int = 0
    server_5xx: int = 0
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    rss_growth_mb: dict[str, float] = field(default_factory=dict)
    """Longest-lived process of each kind: peak over its last quarter minus peak over its
    second quarter (after start-up)."""
    ledger_entries: int = 0
    verify_exit: int | None = None
    verify_output: str = ""
    verdicts_printed: int = 0
    verdicts_ledgered: int = 0
    missing_clean: list[str] = field(default_factory=list)
    """Verdicts printed by a probe that exited 0 (or said nothing) but not in the ledger."""
    missing_explained: list[str] = field(default_factory=list)
    """Verdicts not in the ledger, printed by a probe that exited non-zero saying why."""
    missing_after_kill: list[str] = field(default_factory=list)
    """Verdicts not in the ledger, printed by a probe the soak killed (SIGKILL)."""
    probe_runs: list[dict[str, Any]] = field(default_factory=list)
    server_errors: str = ""


class Soak:
    def __init__(self, data_dir: Path, seconds: float, seed: int,
                 chaos_every: tuple[float, float]) -> None:
        self.dir = data_dir
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.chaos_every = chaos_every
        self.captures = load_captures()
        self.result = SoakResult()
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.port = _free_port()
        self.server: Server | None = None
        self.probe: Probe | None = None
        self.probe_runs: list[ProbeRun] = []
        self.accepted: list[str] = []
        self.clock = 1_750_000_000.0
        self.rss: dict[str, list[tuple[int, float, float]]] = {"serve": [], "probe": []}
        self.incarnation = {"serve": 0, "probe": 0}
        self.actions: list[str] = []

    # -- workers ------------------------------------------------------------------------------
    def _feeder(self) -> None:
        k = 0
        while not self.stop_event.is_set():
            cap = self.captures[k % len(self.captures)]
            k += 1
            with self.lock:
                data, last = retimed(cap, self.clock)
                self.clock = last + GAP_S
                probe = self.probe
                if probe is not None and probe.feed(data, len(cap.records)):
                    self.result.packets_fed += len(cap.records)
                    self.result.captures_fed += 1
            self.stop_event.wait(self.rng.uniform(0.1, 0.4))

    def _token(self) -> str | None:
        try:
            return (self.dir / "api-token").read_text().strip()
        except OSError:
            return None

    def _uploader(self) -> None:
        k = 0
        while not self.stop_event.is_set():
            cap = self.captures[k % len(self.captures)]
            k += 1
            body = PCAP_HEADER + retimed(cap, 1_600_000_000.0 + 3600.0 * k)[0]
            token = self._token()
            req = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v1/captures?name=soak-{k}-{cap.name}",
                data=body, method="POST",
                headers={"Authorization": f"Bearer {token}",
                         "Content-Type": "application/octet-stream"})
            self.result.uploads_sent += 1
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    row = json.loads(resp.read())
                    if resp.status in (200, 202):
                        self.result.uploads_accepted += 1
                        self.accepted.append(row["id"])
            except urllib.error.HTTPError as exc:
                key = str(exc.code)
                self.result.upload_http_errors[key] = self.result.upload_http_errors.get(key, 0) + 1
                if exc.code >= 500:
                    self.result.server_5xx += 1
            except (OSError, ValueError):
                self.result.uploads_refused_while_down += 1
            self.stop_event.wait(self.rng.uniform(0.3, 1.0))

    def _sampler(self) -> None:
        while not self.stop_event.is_set():
            now = time.monotonic()
            for kind, proc in (("serve", self.server.proc if self.server else None),
                               ("probe", self.probe.proc if self.probe else None)):
                if proc is not None and proc.poll() is None:
                    mb = _tree_rss_mb(proc.pid)
                    if mb:
                        self.rss[kind].append((self.incarnation[kind], now, mb))
            self.stop_event.wait(0.5)

    # -- chaos --------------------------------------------------------------------------------
    def _new_probe(self) -> None:
        self.incarnation["probe"] += 1
        self.probe = Probe(self.dir, self.incarnation["probe"])

    def _new_server(self) -> None:
        self.incarnation["serve"] += 1
        self.server = Server(self.dir, self.port)

    def _chaos(self) -> None:
        if not self.actions:  # every kind of event once per round, in a random order
            self.actions = ["serve-restart", "serve-kill", "probe-eof", "probe-sigterm",
                            "probe-kill"]
            self.rng.shuffle(self.actions)
        action = self.actions.pop()
        if action.startswith("serve"):
            assert self.server is not None
            kill = action == "serve-kill"
            self.server.stop(kill)
            self.result.server_kills += kill
            self.result.server_restarts += not kill
            self._new_server()
            return
        with self.lock:  # the feeder waits: no record is cut by the stop
            assert self.probe is not None
            how = {"probe-eof": "eof", "probe-sigterm": "sigterm", "probe-kill": "kill9"}[action]
            self.probe_runs.append(self.probe.stop(how))
            self.result.probe_kills += how == "kill9"
            self.result.probe_restarts += how != "kill9"
            self._new_probe()

    # -- the run ------------------------------------------------------------------------------
    def run(self) -> SoakResult:
        t0 = time.monotonic()
        self._new_server()
        self._new_probe()
        workers = [threading.Thread(target=f, daemon=True)
                   for f in (self._feeder, self._uploader, self._sampler)]
        for w in workers:
            w.start()
        try:
            end = t0 + self.seconds
            while time.monotonic() < end:
                time.sleep(min(self.rng.uniform(*self.chaos_every),
                               max(0.0, end - time.monotonic())))
                if time.monotonic() < end:
                    self._chaos()
        finally:
            self.stop_event.set()
            for w in workers:
                w.join(timeout=60)
            if self.probe is not None:
                self.probe_runs.append(self.probe.stop("final"))
            self._wait_jobs()
            if self.server is not None:
                self.result.server_errors = self.server.errors[-3000:]
                self.server.stop(kill=False)
        self.result.seconds = round(time.monotonic() - t0, 1)
        self._judge()
        return self.result

    def _wait_jobs(self, timeout: float = 300) -> None:
        """Poll every accepted upload until none is queued or running."""
        token = self._token()
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            states = {}
            for cid in self.accepted:
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/captures/{cid}",
                                             headers={"Authorization": f"Bearer {token}"})
                try:
                    with urllib.request.urlopen(req, timeout=30) as resp:
                        states[cid] = json.loads(resp.read())["state"]
                except (OSError, ValueError) as exc:
                    states[cid] = f"error: {exc}"
            if not any(s in ("queued", "running") for s in states.values()):
                break
            time.sleep(1)
        counts: dict[str, int] = {}
        for s in states.values():
            counts[s] = counts.get(s, 0) + 1
        self.result.jobs = counts

    def _judge(self) -> None:
        r = self.result
        for kind, rows in self.rss.items():
            r.peak_rss_mb[kind] = round(max((mb for _, _, mb in rows), default=0.0), 1)
            by: dict[int, list[tuple[float, float]]] = {}
            for inc, t, mb in rows:
                by.setdefault(inc, []).append((t, mb))
            if by:
                longest = max(by.values(), key=lambda s: s[-1][0] - s[0][0])
                q = len(longest) // 4
                if q >= 2:
                    second = max(mb for _, mb in longest[q:2 * q])
                    last = max(mb for _, mb in longest[3 * q:])
                    r.rss_growth_mb[kind] = round(last - second, 1)
        ledger = self.dir / "ledger.db"
        proc = subprocess.run(_marsad("verify", str(ledger), "--json"), cwd=ROOT, env=_env(),
                              capture_output=True, text=True, timeout=600, check=False)
        r.verify_exit = proc.returncode
        r.verify_output = (proc.stdout + proc.stderr)[-2000:]
        sys.path.insert(0, str(ROOT))
        from policy.ledger import Ledger

        with Ledger(ledger, clock=time.time) as led:
            entries = led.entries()
        r.ledger_entries = len(entries)
        ledgered = {e.subject_uid for e in entries if e.evidence.get("ring")}  # the probe's
        for run in self.probe_runs:
            r.verdicts_printed += len(run.verdicts)
            for uid in run.verdicts:
                if uid in ledgered:
                    r.verdicts_ledgered += 1
                    continue
                tag = f"{uid} (probe #{run.index}, {run.ended}, exit {run.exit_code})"
                if run.ended == "kill9":
                    r.missing_after_kill.append(tag)
                elif run.exit_code not in (0, None) and run.stderr_tail.strip():
                    r.missing_explained.append(tag)
                else:
                    r.missing_clean.append(tag)
            r.probe_runs.append({k: v for k, v in asdict(run).items() if k != "verdicts"}
                                | {"verdicts": len(run.verdicts)})
            mine = [mb for inc, _, mb in self.rss["probe"] if inc == run.index]
            r.probe_runs[-1]["peak_rss_mb"] = round(max(mine, default=0.0), 1)


def run_soak(seconds: float, seed: int = 1, data_dir: Path | None = None,
             chaos_every: tuple[float, float] = (8.0, 20.0)) -> SoakResult:
    """Run a soak for ``seconds`` of wall-clock time in ``data_dir`` (a new temporary
    directory if None) and judge it."""
    if data_dir is None:
        data_dir = Path(tempfile.mkdtemp(prefix="marsad-soak-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    return Soak(data_dir, seconds, seed, chaos_every).run()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=900)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--data-dir", type=Path)
    ap.add_argument("--chaos-min", type=float, default=15.0)
    ap.add_argument("--chaos-max", type=float, default=45.0)
    ap.add_argument("--json", type=Path, help="write the result here")
    args = ap.parse_args()
    r = run_soak(args.seconds, args.seed, args.data_dir, (args.chaos_min, args.chaos_max))
    out = asdict(r)
    text = json.dumps(out, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    summary = {k: v for k, v in out.items() if k not in ("probe_runs", "server_errors",
                                                         "verify_output")}
    print(json.dumps(summary, indent=2))
    ok = (r.verify_exit == 0 and not r.missing_clean and r.server_5xx == 0
          and not r.jobs.get("failed"))
    if r.missing_after_kill:
        print(f"EVIDENCE LOSS: {len(r.missing_after_kill)} printed verdict(s) of killed probes "
              "are not in the ledger", file=sys.stderr)
    return 0 if ok and not r.missing_after_kill else 1


if __name__ == "__main__":
    raise SystemExit(main())
