"""Parse ``tshark -q -z conv,udp -z conv,tcp`` into comparable rows."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

__all__ = ["Conv", "tshark_conversations"]

_UNITS = {"bytes": 1, "kB": 1000, "MB": 1000_000, "GB": 1000_000_000}
_ROW = re.compile(
    r"^(?P<a>\S+)\s+<->\s+(?P<b>\S+)\s+"
    r"(?P<f1>\d+)\s+(?P<b1>[\d,]+)\s(?P<u1>bytes|kB|MB|GB)\s+"
    r"(?P<f2>\d+)\s+(?P<b2>[\d,]+)\s(?P<u2>bytes|kB|MB|GB)\s+"
    r"(?P<ft>\d+)\s+(?P<bt>[\d,]+)\s(?P<ut>bytes|kB|MB|GB)")


@dataclass(frozen=True)
class Conv:
    """One conversation row. ``a_to_b`` counts frames sent by endpoint ``a``."""

    proto: str
    a: tuple[str, int]
    b: tuple[str, int]
    a_frames: int
    b_frames: int
    a_bytes: tuple[int, int]
    """(low, high) bounds: tshark prints large byte counts as whole kB/MB (SI, truncated)."""
    b_bytes: tuple[int, int]


def _bounds(num: str, unit: str) -> tuple[int, int]:
    v = int(num.replace(",", ""))
    scale = _UNITS[unit]
    if scale == 1:
        return v, v
    return v * scale, (v + 1) * scale - 1


def _endpoint(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def tshark_conversations(path: str) -> list[Conv]:
    out = subprocess.run(
        ["tshark", "-n", "-r", path, "-q", "-z", "conv,udp", "-z", "conv,tcp"],
        capture_output=True, text=True, check=True, timeout=300).stdout
    rows: list[Conv] = []
    proto = ""
    for line in out.splitlines():
        if line.startswith("UDP Conversations"):
            proto = "udp"
        elif line.startswith("TCP Conversations"):
            proto = "tcp"
        m = _ROW.match(line)
        if m and proto:
            # tshark's "<-" column counts frames towards the left endpoint (sent by b),
            # "->" frames from the left endpoint (sent by a).
            rows.append(Conv(proto, _endpoint(m["a"]), _endpoint(m["b"]),
                             a_frames=int(m["f2"]), b_frames=int(m["f1"]),
                             a_bytes=_bounds(m["b2"], m["u2"]),
                             b_bytes=_bounds(m["b1"], m["u1"])))
    return rows
