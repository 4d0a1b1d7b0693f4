"""Three network namespaces that play caller, censoring ISP and callee/relay.

Topology (no link to the host network, IPv6 disabled everywhere)::

    caller ns            isp ns (forwards)               relay ns
    10.77.1.2 [c0] <-veth-> [ic] 10.77.1.1 | 10.77.2.1 [ir] <-veth-> [r0] 10.77.2.2

The ISP namespace forwards between its two legs; censorship rules (iptables
FORWARD chain, tc qdiscs on its egress interfaces) are applied there, also in
the middle of a run.  The caller's interface is what the probe would see, so
captures are taken there with tcpdump.

Namespace names are global on a host, so every run uses its own prefix
(``mlab<pid>-``).  Stale namespaces with the same prefix, or left behind by a
run whose process is gone, are deleted before setup.  `NetLab` is a context
manager: everything it created (namespaces, processes started in them) is
removed on exit, also after an exception or KeyboardInterrupt.

Errors: `LabError` for anything that failed while building or driving the lab.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

CALLER_IP: Final = "10.77.1.2"
ISP_CALLER_IP: Final = "10.77.1.1"
ISP_RELAY_IP: Final = "10.77.2.1"
RELAY_IP: Final = "10.77.2.2"
PEER_IP: Final = "10.77.2.3"
"""A second address of the far namespace: the callee's own (host) candidate, as against
the relay's, so a scenario can block the direct path while the relay works."""
PREFIX_LEN: Final = 24

CALLER_IF: Final = "c0"
ISP_CALLER_IF: Final = "ic"
ISP_RELAY_IF: Final = "ir"
RELAY_IF: Final = "r0"

_PEER: Final = Path(__file__).resolve().parent / "peer.py"
_BASE_PREFIX: Final = "mlab"
_STALE_RE: Final = re.compile(rf"^{_BASE_PREFIX}(\d+)-")


class LabError(RuntimeError):
    """A lab command failed or the lab could not be built."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Outcome of a foreground command run inside a namespace."""

    argv: tuple[str, ...]
    """The command as run inside the namespace."""
    returncode: int
    """Exit status; -9 when it was killed at its timeout."""
    stdout: str
    """Everything the command wrote to stdout."""
    stderr: str
    """Everything the command wrote to stderr."""
    timed_out: bool
    """True when the command was killed because it exceeded its timeout."""


@dataclass(slots=True)
class Background:
    """A process started in a namespace that runs while the scenario goes on."""

    name: str
    """Short label, also the stem of its log file."""
    ns: str
    """Namespace the process runs in."""
    proc: subprocess.Popen[bytes]
    """The process; it leads its own process group."""
    log_path: Path
    """File that receives its stdout and stderr."""
    started_epoch: float
    """Wall-clock time (time.time()) when it was started."""

    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int | None:
        """Wait up to `timeout` seconds for a clean exit; None if still running."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 3.0) -> int:
        """Signal the process group, then kill it if it does not exit in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=grace_s)
        return self.proc.returncode

    def log(self) -> str:
        """The text the process logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass(frozen=True, slots=True)
class CaptureStats:
    """What tcpdump reported when it was stopped."""

    pcap_path: Path
    """The finished pcap file."""
    interface: str
    """Interface the capture listened on."""
    start_epoch: float
    """Wall-clock time when tcpdump reported it was listening."""
    stop_epoch: float
    """Wall-clock time when tcpdump was asked to stop."""
    packets_captured: int
    """Packets written to the file, as tcpdump counted them."""
    packets_dropped: int
    """Packets the kernel dropped before tcpdump could read them."""


@dataclass(slots=True)
class Capture:
    """A running tcpdump; `stop()` ends it cleanly so the pcap is complete."""

    bg: Background
    """The tcpdump process."""
    pcap_path: Path
    """Where it writes."""
    interface: str
    """Interface it listens on."""
    start_epoch: float
    """Wall-clock time when it reported it was listening."""
    drain: threading.Thread
    """Thread copying tcpdump's stderr (its final counters) into the log file."""
    stats: CaptureStats | None = field(default=None)
    """Set once stopped."""

    def stop(self) -> CaptureStats:
        """Send SIGINT (tcpdump flushes and prints its counters) and wait."""
        if self.stats is not None:
            return self.stats
        stop_epoch = time.time()
        self.bg.stop(signal.SIGINT, grace_s=5.0)
        self.drain.join(timeout=5.0)
        text = self.bg.log()
        captured = re.search(r"(\d+) packets? captured", text)
        dropped = re.search(r"(\d+) packets? dropped by kernel", text)
        if captured is None:
            raise LabError(f"tcpdump did not report its counters: {text!r}")
        self.stats = CaptureStats(
            pcap_path=self.pcap_path,
            interface=self.interface,
            start_epoch=self.start_epoch,
            stop_epoch=stop_epoch,
            packets_captured=int(captured.group(1)),
            packets_dropped=int(dropped.group(1)) if dropped else 0,
        )
        return self.stats


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def list_namespaces() -> list[str]:
    """Names of all network namespaces on the host."""
    out = _ip("netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_ns_processes(ns: str) -> None:
    """Kill what still runs inside one of our namespaces (only we start processes there)."""
    out = _ip("netns", "pids", ns, check=False).stdout
    for token in out.split():
        if token.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(token), signal.SIGKILL)


def delete_namespace(ns: str) -> None:
    """Kill the processes inside a namespace and delete it; its veth ends go with it."""
    _kill_ns_processes(ns)
    _ip("netns", "delete", ns, check=False)


def purge_stale(prefix: str) -> list[str]:
    """Delete namespaces with `prefix`, and lab namespaces whose creating process is gone."""
    removed: list[str] = []
    for ns in list_namespaces():
        m = _STALE_RE.match(ns)
        if ns.startswith(prefix) or (m is not None and not _pid_alive(int(m.group(1)))):
            delete_namespace(ns)
            removed.append(ns)
    return removed


class NetLab:
    """Caller, ISP and relay namespaces joined by veth pairs; a context manager."""

    def __init__(self, workdir: Path, prefix: str | None = None) -> None:
        self.workdir = workdir
        """Directory for logs and scratch files of this run."""
        self.prefix = prefix if prefix is not None else f"{_BASE_PREFIX}{os.getpid()}-"
        """Per-run prefix of the namespace names."""
        self.caller = f"{self.prefix}caller"
        """Namespace of the caller (the side the probe watches)."""
        self.isp = f"{self.prefix}isp"
        """Namespace of the ISP router where censorship rules live."""
        self.relay = f"{self.prefix}relay"
        """Namespace of the callee / media relay / servers."""
        self._background: list[Background] = []
        self._created: list[str] = []

    # -- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> NetLab:
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()

    def _build(self) -> None:
        purge_stale(self.prefix)
        for ns in (self.caller, self.isp, self.relay):
            _ip("netns", "add", ns)
            self._created.append(ns)
            for key in ("all", "default"):
                self.sysctl(ns, f"net/ipv6/conf/{key}/disable_ipv6", "1")
            self.run(ns, ["ip", "link", "set", "lo", "up"])
        # The veth ends are created directly inside their namespaces, so no
        # interface name is ever taken in the host namespace.
        _ip("link", "add", CALLER_IF, "netns", self.caller, "type", "veth",
            "peer", "name", ISP_CALLER_IF, "netns", self.isp)
        _ip("link", "add", RELAY_IF, "netns", self.relay, "type", "veth",
            "peer", "name", ISP_RELAY_IF, "netns", self.isp)
        links = (
            (self.caller, CALLER_IF, CALLER_IP),
            (self.isp, ISP_CALLER_IF, ISP_CALLER_IP),
            (self.isp, ISP_RELAY_IF, ISP_RELAY_IP),
            (self.relay, RELAY_IF, RELAY_IP),
        )
        for ns, ifname, addr in links:
            self.run(ns, ["ip", "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", ifname])
            # Real checksums in the captures (see peer.py tx-csum-off).
            self.run(ns, [sys.executable, str(_PEER), "tx-csum-off", ifname])
            self.run(ns, ["ip", "link", "set", ifname, "up"])
        # Only the far lab subnet is routed: nothing else is reachable from anywhere.
        self.run(self.relay, ["ip", "addr", "add", f"{PEER_IP}/{PREFIX_LEN}", "dev", RELAY_IF])
        for ns, far_ip, gateway in ((self.caller, RELAY_IP, ISP_CALLER_IP),
                                    (self.relay, CALLER_IP, ISP_RELAY_IP)):
            net = ipaddress.ip_interface(f"{far_ip}/{PREFIX_LEN}").network
            self.run(ns, ["ip", "route", "add", str(net), "via", gateway])
        self.sysctl(self.isp, "net/ipv4/ip_forward", "1")
        # Permanent neighbour entries: no ARP in the captures and none racing
        # the first packets of a scenario.
        macs = {(ns, ifname): self._mac(ns, ifname) for ns, ifname, _ in links}
        pairs = ((links[0], links[1]), (links[2], links[3]))
        for a, b in pairs:
            for (ns, ifname, _), (peer_ns, peer_if, peer_ip) in ((a, b), (b, a)):
                self.run(ns, ["ip", "neigh", "replace", peer_ip, "lladdr",
                              macs[(peer_ns, peer_if)], "dev", ifname, "nud", "permanent"])

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Write /proc/sys/KEY inside `ns` (a no-op when the kernel lacks the key)."""
        path = f"/proc/sys/{key}"
        self.run(ns, ["sh", "-c", f'[ ! -e {path} ] || echo {value} > {path}'])

    def _mac(self, ns: str, ifname: str) -> str:
        info = json.loads(self.run(ns, ["ip", "-j", "link", "show", "dev", ifname]).stdout)
        return str(info[0]["address"])

    def teardown(self) -> None:
        """Stop every background process and delete the namespaces; idempotent."""
        for bg in reversed(self._background):
            with contextlib.suppress(Exception):
                bg.stop(grace_s=2.0)
        self._background.clear()
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created.clear()

    # -- commands ------------------------------------------------------------------

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        timeout: float = 15.0,
        check: bool = True,
        cwd: Path | None = None,
        stdin_data: str | None = None,
    ) -> CommandResult:
        """Run a command inside `ns` in the foreground, killing its group at `timeout`."""
        full = ["ip", "netns", "exec", ns, *argv]
        proc = subprocess.Popen(
            full,
            stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            start_new_session=True,
        )
        timed_out = False
        try:
            out, err = proc.communicate(input=stdin_data, timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        result = CommandResult(tuple(argv), proc.returncode, out, err, timed_out)
        if check and (timed_out or proc.returncode != 0):
            raise LabError(
                f"in {ns}: {' '.join(argv)} -> rc={proc.returncode}"
                f"{' (timeout)' if timed_out else ''}: {err.strip() or out.strip()}"
            )
        return result

    def spawn(
        self,
        ns: str,
        argv: Sequence[str],
        name: str,
        cwd: Path | None = None,
        stderr_pipe: bool = False,
    ) -> Background:
        """Start a background process in `ns`; it is stopped at teardown at the latest."""
        log_path = self.workdir / f"{name}.log"
        log: IO[bytes] = open(log_path, "wb")  # noqa: SIM115 - owned by the child
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.PIPE if stderr_pipe else log,
                cwd=cwd,
                start_new_session=True,
            )
        finally:
            log.close()
        bg = Background(name, ns, proc, log_path, time.time())
        self._background.append(bg)
        return bg

    def wait_for_udp_listener(self, ns: str, port: int, timeout: float = 5.0) -> None:
        """Block until something in `ns` has a UDP socket bound to `port`."""
        self._wait_listener(ns, ["ss", "-Hlun", f"sport = :{port}"], port, timeout)

    def wait_for_tcp_listener(self, ns: str, port: int, timeout: float = 5.0) -> None:
        """Block until something in `ns` listens on TCP `port`."""
        self._wait_listener(ns, ["ss", "-Hltn", f"sport = :{port}"], port, timeout)

    def _wait_listener(self, ns: str, argv: list[str], port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run(ns, argv, check=False).stdout.strip():
                return
            time.sleep(0.05)
        raise LabError(f"nothing listens on port {port} in {ns} after {timeout} s")

    # -- the censor ----------------------------------------------------------------

    def isp_run(self, argv: Sequence[str]) -> CommandResult:
        """Run a rule-changing command (iptables, tc, nft) in the ISP namespace."""
        return self.run(self.isp, argv)

    def iptables(self, *args: str) -> CommandResult:
        """`iptables ARGS` in the ISP namespace."""
        return self.isp_run(["iptables", *args])

    def tc(self, *args: str) -> CommandResult:
        """`tc ARGS` in the ISP namespace."""
        return self.isp_run(["tc", *args])

    # -- capture -------------------------------------------------------------------

    def capture(self, pcap_path: Path, timeout: float = 5.0, ns: str | None = None,
                interface: str = CALLER_IF, direction: str | None = None) -> Capture:
        """Start tcpdump on `interface` of `ns` (the caller's by default); returns once it
        is listening.  `direction` ``in`` or ``out`` records only packets received or
        sent by that interface (tcpdump ``-Q``): a one-sided capture."""
        where = self.caller if ns is None else ns
        argv = ["tcpdump", "-i", interface, "-n", "-s", "0", "-U", "--immediate-mode",
                "-B", "16384", "-Z", "root", "-w", str(pcap_path)]
        if direction is not None:
            if direction not in ("in", "out"):
                raise LabError(f"capture direction must be in or out, not {direction!r}")
            argv[3:3] = ["-Q", direction]
        bg = self.spawn(
            where,
            # -U and --immediate-mode: every packet reaches the file at once, so
            # SIGINT loses nothing; -B 16 MiB: no kernel drops at video rates;
            # -Z root: keep the right to write where the caller asked.
            argv,
            name=f"tcpdump-{pcap_path.stem}",
            stderr_pipe=True,
        )
        assert bg.proc.stderr is not None
        err = bg.proc.stderr
        seen = b""
        deadline = time.monotonic() + timeout
        while b"listening on" not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or bg.proc.poll() is not None:
                bg.stop()
                raise LabError(f"tcpdump did not start: {seen.decode(errors='replace')}")
            ready, _, _ = select.select([err], [], [], left)
            if ready:
                chunk = os.read(err.fileno(), 4096)
                if not chunk:
                    continue
                seen += chunk
        start = time.time()
        # From here on stderr only carries the final counters; hand it to the log file.
        drain = _drain_to_file(bg, seen)
        return Capture(bg, pcap_path, interface, start, drain)


def _drain_to_file(bg: Background, already: bytes) -> threading.Thread:
    """Copy the rest of a process's piped stderr into its log file on a thread."""

    def pump() -> None:
        assert bg.proc.stderr is not None
        with open(bg.log_path, "ab") as log:
            log.write(already)
            log.flush()
            while True:
                chunk = os.read(bg.proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
        bg.proc.stderr.close()

    thread = threading.Thread(target=pump, name=f"drain-{bg.name}", daemon=True)
    thread.start()
    return thread
