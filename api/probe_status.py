"""The live probe's status file: its JSON shape, an atomic writer and a checked reader.

The probe keeps ``<data_dir>/probe-status.json`` up to date (at least every few
seconds while it runs) and the service reads it for ``GET /v1/probe``. The file
holds one JSON object (version 1)::

    {
      "version": 1,               # format of this object
      "state": "running",         # starting | running | stopping | stopped | error
      "interface": "eth0",        # interface (or capture file) being read
      "pid": 4242,                # process id of the probe
      "started_at": 1700000000.0, # when the probe started (seconds since the epoch)
      "updated_at": 1700000042.5, # when this file was written (the heartbeat)
      "packets": 123456,          # packets read since start
      "bytes": 98765432,          # bytes read since start
      "dropped": 0,               # packets the kernel or the ring dropped
      "flows_active": 17,         # flows in the flow table now
      "flows_finished": 2048,     # flows expired since start
      "calls": 3,                 # calls seen since start
      "verdicts": {"ok": 2, "blocked": 1},  # call verdicts since start
      "message": null,            # one human line (why it stopped, the error...)
      "lag_s": 0.0,               # processing lag: how long the oldest packet received
                                  # but not yet processed has waited (wall clock)
      "skipped_bytes": 0,         # damaged input bytes skipped to the next good record
      "time_jumps": 0,            # packets more than an hour from the one before
      "truncated_at": null,       # input byte offset where reading stopped early
      "ledgered": 1,              # verdicts put in the evidence ledger
      "unledgered": 0             # verdicts reported but NOT in the ledger (see message)
    }

The fields after ``message`` were added later; a reader takes them as 0 (null)
when absent.

Writers replace the file atomically (write a temporary file, then rename), so a
reader never sees half an object.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "STATUS_FILE",
    "STATUS_VERSION",
    "ProbeState",
    "ProbeStatus",
    "ProbeStatusError",
    "read_probe_status",
    "write_json_atomic",
    "write_probe_status",
]

STATUS_FILE = "probe-status.json"
"""Name of the status file in the data directory."""
STATUS_VERSION = 1
"""Format version written in the file."""


class ProbeStatusError(Exception):
    """The status file exists but does not hold a status of a known shape."""


class ProbeState(StrEnum):
    """What the probe says it is doing."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    """The live probe's last report on itself."""

    state: ProbeState
    """What the probe is doing."""
    interface: str
    """Interface (or capture file) being read."""
    pid: int
    """Process id of the probe."""
    started_at: float
    """When the probe started (seconds since the epoch)."""
    updated_at: float
    """When the status was written: the heartbeat."""
    packets: int = 0
    """Packets read since start."""
    bytes: int = 0
    """Bytes read since start."""
    dropped: int = 0
    """Packets dropped before the probe saw them (kernel or ring buffer)."""
    flows_active: int = 0
    """Flows in the flow table now."""
    flows_finished: int = 0
    """Flows expired since start."""
    calls: int = 0
    """Calls seen since start."""
    verdicts: dict[str, int] = field(default_factory=dict)
    """Call verdicts since start, by verdict name."""
    message: str | None = None
    """One human line: why it stopped, the error, ..."""
    lag_s: float = 0.0
    """Processing lag: wall-clock seconds the oldest packet received but not yet
    processed has waited (0 when the probe keeps up)."""
    skipped_bytes: int = 0
    """Damaged input bytes skipped to resynchronise on the next good record."""
    time_jumps: int = 0
    """Packets whose time is more than an hour from the packet before."""
    truncated_at: int | None = None
    """Byte offset of the input where reading stopped early (truncated input), or None."""
    ledgered: int = 0
    """Verdicts put in the evidence ledger."""
    unledgered: int = 0
    """Verdicts reported but not put in the ledger (the message says why)."""

    def to_json(self) -> dict[str, Any]:
        """The file's object."""
        d = asdict(self)
        d["state"] = str(self.state)
        return {"version": STATUS_VERSION, **d}

    @classmethod
    def from_json(cls, obj: Any) -> ProbeStatus:
        """Check and read the file's object; raises :class:`ProbeStatusError`."""
        if not isinstance(obj, dict):
            raise ProbeStatusError("the status is not a JSON object")
        if obj.get("version") != STATUS_VERSION:
            raise ProbeStatusError(f"status version {obj.get('version')!r}, this code reads "
                                   f"{STATUS_VERSION}")
        try:
            state = ProbeState(obj["state"])
        except (KeyError, ValueError) as exc:
            raise ProbeStatusError(f"bad or missing state {obj.get('state')!r}") from exc
        interface = _typed(obj, "interface", str)
        counts = {k: _count(obj, k) for k in
                  ("packets", "bytes", "dropped", "flows_active", "flows_finished", "calls",
                   "skipped_bytes", "time_jumps", "ledgered", "unledgered")}
        truncated_at = obj.get("truncated_at")
        if truncated_at is not None and not _is_count(truncated_at):
            raise ProbeStatusError(f"truncated_at must be a byte offset or null, got "
                                   f"{truncated_at!r}")
        lag = obj.get("lag_s", 0.0)
        if isinstance(lag, bool) or not isinstance(lag, int | float) or not lag >= 0:
            raise ProbeStatusError(f"lag_s must be non-negative seconds, got {lag!r}")
        verdicts = obj.get("verdicts", {})
        if not isinstance(verdicts, dict) or not all(
                isinstance(k, str) and _is_count(v) for k, v in verdicts.items()):
            raise ProbeStatusError("verdicts must map names to counts")
        message = obj.get("message")
        if message is not None and not isinstance(message, str):
            raise ProbeStatusError("message must be a string or null")
        return cls(state=state, interface=interface, pid=_count(obj, "pid", required=True),
                   started_at=_time(obj, "started_at"), updated_at=_time(obj, "updated_at"),
                   verdicts=dict(verdicts), message=message, lag_s=float(lag),
                   truncated_at=truncated_at, **counts)


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _count(obj: dict[str, Any], key: str, required: bool = False) -> int:
    if key not in obj and not required:
        return 0
    v = obj.get(key)
    if not isinstance(v, int) or not _is_count(v):
        raise ProbeStatusError(f"{key} must be a non-negative integer, got {v!r}")
    return v


def _time(obj: dict[str, Any], key: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e11:
        raise ProbeStatusError(f"{key} must be seconds since the epoch, got {v!r}")
    return float(v)


def _typed(obj: dict[str, Any], key: str, kind: type[str]) -> str:
    v = obj.get(key)
    if not isinstance(v, kind):
        raise ProbeStatusError(f"{key} must be a string, got {v!r}")
    return v


def write_probe_status(data_dir: str | Path, status: ProbeStatus) -> Path:
    """Replace the status file atomically; return its path."""
    path = Path(data_dir) / STATUS_FILE
    write_json_atomic(path, status.to_json())
    return path


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as JSON atomically (a temporary file in the same
    directory, then a rename), creating the directory: a reader sees the old object or
    the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_probe_status(data_dir: str | Path) -> ProbeStatus | None:
    """The probe's last status, None if it never wrote one; raises
    :class:`ProbeStatusError` if the file is unreadable or of another shape."""
    path = Path(data_dir) / STATUS_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ProbeStatusError(f"{path}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProbeStatusError(f"{path}: not JSON ({exc})") from exc
    return ProbeStatus.from_json(obj)
