"""The capture an active test keeps of its own packets.

A test's verdict is evidence only if a reader can check it against the packets, so every
test runs ``tcpdump`` on the interfaces for the length of the test, with a BPF filter that
keeps only the test's own traffic (its peers' addresses), and writes a pcap file beside
the result. Capturing needs ``CAP_NET_RAW``; without it (or without tcpdump) the test
still runs and says why it has no capture, rather than failing.
"""

from __future__ import annotations

import hashlib
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["KERNEL_BLOCK_TIMEOUT_S", "CaptureResult", "TestCapture", "peer_filter"]

_SNAPLEN = 65535
"""The largest IP packet: every payload kept whole."""
_BUFFER_KIB = 32768
"""libpcap's ring (32 MiB): room for seconds of a replay's packets."""
_READY_S = 10.0
"""How long tcpdump may take to open its socket."""
KERNEL_BLOCK_TIMEOUT_S = 1.2
"""How long a packet may wait in the kernel's capture ring before tcpdump gets it, so how
long to wait before stopping tcpdump: without ``--immediate-mode`` the kernel hands a
part-filled ring block over after tcpdump's 1 s packet buffer timeout (and a margin)."""


@dataclass(frozen=True, slots=True)
class CaptureResult:
    """The test's capture file, or why there is none."""

    path: Path | None
    sha256: str | None
    packets: int | None
    """Packets tcpdump reported captured (``None`` if it did not say)."""
    dropped: int | None
    """Packets the kernel dropped before tcpdump read them: the capture misses that many."""
    problem: str | None
    """Why there is no capture (no tcpdump, no permission, it exited early)."""


def peer_filter(addresses: list[str]) -> str:
    """A BPF filter keeping packets to or from any of ``addresses``."""
    if not addresses:
        raise ValueError("a test capture needs at least one peer address")
    return " or ".join(f"host {a}" for a in sorted(set(addresses)))


class TestCapture:
    """``with TestCapture(path, bpf) as cap: ...`` captures the test's packets to ``path``.

    After the block, :attr:`result` holds the file and its SHA-256 (or the problem).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, path: Path, bpf: str, *, iface: str = "any",
                 tcpdump: str = "tcpdump") -> None:
        self.path = path
        self.bpf = bpf
        self.iface = iface
        self.tcpdump = tcpdump
        self.result = CaptureResult(None, None, None, None, "capture not run")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> TestCapture:
        exe = shutil.which(self.tcpdump)
        if exe is None:
            self.result = CaptureResult(None, None, None, None, f"{self.tcpdump} not found")
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Not --immediate-mode: it gives each packet a ring frame of the whole snapshot
        # length, and on "any" or loopback a burst then overflows the ring.
        argv = [exe, "-i", self.iface, "-n", "-U", "-B", str(_BUFFER_KIB),
                "-s", str(_SNAPLEN), "-w", str(self.path), self.bpf]
        self._proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE)
        # tcpdump says "listening on ..." once its socket is open: nothing the test sends
        # after that line is missed.
        # Read the pipe's bytes as they come (os.read): a buffered readline could take
        # this line into its buffer together with an earlier one, and select would then
        # wait on a descriptor with nothing more to say.
        assert self._proc.stderr is not None
        fd = self._proc.stderr.fileno()
        said = b""
        deadline = time.monotonic() + _READY_S
        while b"listening on" not in said and time.monotonic() < deadline:
            if not select.select([fd], [], [], deadline - time.monotonic())[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            said += chunk
        if b"listening on" not in said:
            self._proc.kill()
            rest = self._proc.communicate()[1]
            err = (said + rest).decode(errors="replace").strip().splitlines()
            self.result = CaptureResult(
                None, None, None, None,
                f"tcpdump did not start: {err[-1] if err else 'no message'}")
            self._proc = None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        time.sleep(KERNEL_BLOCK_TIMEOUT_S)
        proc.send_signal(signal.SIGINT)
        try:
            _, err_bytes = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err_bytes = proc.communicate()
        counts: dict[str, int] = {}
        for line in err_bytes.decode(errors="replace").splitlines():
            words = line.split()
            if len(words) >= 3 and words[0].isdigit() and words[1] == "packets":
                counts[" ".join(words[2:])] = int(words[0])
        packets, dropped = counts.get("captured"), counts.get("dropped by kernel")
        if not self.path.exists():
            self.result = CaptureResult(None, None, packets, dropped, "tcpdump wrote no file")
            return
        digest = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.result = CaptureResult(self.path, digest, packets, dropped, None)
