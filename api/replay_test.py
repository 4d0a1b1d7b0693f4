"""Run a replay test end to end: capture, replay, judge, keep the evidence.

:func:`run_replay_test` loads the app's trace, captures the test's own packets (a
tcpdump filtered on the replay server's address, when the process may capture), runs
the original, its two controls and the original again against the server, judges them
(:func:`policy.replay.judge_replay`) and writes ``<uid>.pcap`` and ``<uid>.json`` to the
output directory; given a ledger, :func:`api.active.record_test` appends the result to it.

Errors: :class:`probe.active.trace.TraceError` (no usable trace for the app),
:class:`probe.active.replay.ReplayError` / ``ReplayRefused`` (the test could not run).
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api.active import capturing, keep_capture, record_test, write_result
from policy.ledger import Ledger
from policy.records import TestResult
from policy.replay import judge_replay
from policy.rules import Policy
from probe.active.capture import peer_filter
from probe.active.replay import ALL_KINDS, ReplayError, ReplayLimits, run_replay
from probe.active.trace import Trace, TraceError, load_trace

__all__ = ["DEFAULT_TRACES", "ReplaySpec", "plan", "run_replay_test",
           "trace_for"]

def _default_traces() -> Path:
    """The project's traces: ``captures/traces`` of the source tree, or where an installed
    package put them (``share/marsad/traces`` under the environment's prefix)."""
    source = Path(__file__).resolve().parent.parent / "captures" / "traces"
    installed = Path(sys.prefix) / "share" / "marsad" / "traces"
    return source if source.is_dir() or not installed.is_dir() else installed


DEFAULT_TRACES = _default_traces()
"""The project's traces (``captures/traces``) in a source checkout."""
RUNS = len(ALL_KINDS)
"""The original, its two controls, and the original again."""


@dataclass(frozen=True, slots=True)
class ReplaySpec:
    """A replay test to run."""

    app: str
    server: str
    """The replay server the user runs (host name or address): the only target."""
    port: int
    token: str
    """The server's client token."""
    transport: str = "udp"
    """``udp``, or ``tcp`` for the app's TCP fallback trace (``<app>-tcp.pcap``)."""
    limits: ReplayLimits = field(default_factory=ReplayLimits)
    seconds: float | None = None
    """Replay only the trace's first seconds (``None``: all of it)."""
    traces: Path = DEFAULT_TRACES
    """Where the traces are."""
    capture: bool = True
    """Take the test's own capture (needs tcpdump and the right to capture)."""


def trace_for(spec: ReplaySpec) -> Trace:
    """The trace the spec names (``<app>.pcap``, or ``<app>-tcp.pcap`` for TCP)."""
    name = spec.app if spec.transport == "udp" else f"{spec.app}-{spec.transport}"
    path = spec.traces / f"{name}.pcap"
    if not path.exists():
        have = sorted(p.name.removesuffix(".pcap") for p in spec.traces.glob("*.pcap"))
        raise TraceError(f"{path}: no {spec.transport.upper()} trace for {spec.app!r}; "
                         f"the traces in {spec.traces}: {', '.join(have) or 'none'}")
    return load_trace(path)


def plan(spec: ReplaySpec, trace: Trace) -> dict[str, Any]:
    """What the test will send, for the user to see before it runs."""
    played = trace.cut(spec.seconds) if spec.seconds is not None else trace
    return {"trace": played.ident, "transport": played.transport,
            "duration_s": round(played.duration_s, 3), "bytes_per_run": played.bytes_in(),
            "rate_bps": round(played.rate_bps(), 1), "runs": RUNS,
            "total_bytes": played.bytes_in() * RUNS,
            "server": f"{spec.server}:{spec.port}", "limits": spec.limits.to_dict(),
            "refused": spec.limits.check(played, RUNS)}


def run_replay_test(spec: ReplaySpec, out_dir: Path, *, policy: Policy,
                    ledger: Ledger | None = None) -> TestResult:
    """Run, judge and write the test (see the module's docstring); with ``ledger``, also
    record it there."""
    trace = trace_for(spec)
    try:
        infos = socket.getaddrinfo(spec.server, spec.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ReplayError(f"cannot resolve the replay server {spec.server}: {exc}") from exc
    server_ip = str(infos[0][4][0])
    bpf = peer_filter([server_ip]) if spec.capture else None
    with capturing(out_dir, "replay", bpf) as cap:
        m = run_replay(trace, server_ip, spec.port, spec.token.encode(),
                       limits=spec.limits, seconds=spec.seconds)
    result = judge_replay(m, policy)
    capture, sha, kept = keep_capture(cap, out_dir, result.uid)
    keys = {**result.test_keys, "capture": kept, "server": f"{spec.server}:{spec.port}"}
    result = dataclasses.replace(result, test_keys=keys, capture=capture, capture_sha256=sha)
    write_result(result, out_dir)
    if ledger is not None:
        record_test(result, ledger=ledger)
    return result
