"""Active-test results for the api tests, from values measured on this machine.

:func:`measure` makes real TCP connects on loopback (one to a listening socket, one to
a port nobody listens on), keeps them as a :class:`ReachabilityMeasurement`, writes
the capture of those exchanges (SYN / SYN-ACK, SYN / RST) as a pcap, and judges the
measurement with :func:`judge_connects`: a small judgement standing in for the
reachability judgement in tests (an endpoint is blocked when every connect to it
failed with a reset). :func:`judge_module` is that judgement as an importable module
(``policy.reach``), so ledger verification can re-judge what was recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import time
import types
from pathlib import Path
from typing import Any

from policy.records import Evidence, Reason, TestKind, TestResult, Verdict, VerdictKind
from probe.active.records import ReachabilityMeasurement, TcpConnect
from tests.pcapbytes import pcap, tcp_frame

SYN, SYN_ACK, RST_ACK = 0x02, 0x12, 0x14


def _connect(port: int) -> tuple[str | None, float]:
    t0 = time.perf_counter()
    with socket.socket() as s:
        s.settimeout(2.0)
        try:
            s.connect(("127.0.0.1", port))
            failure = None
        except ConnectionRefusedError:
            failure = "connection_refused"
    return failure, (time.perf_counter() - t0) * 1000


def judge_connects(m: ReachabilityMeasurement, policy: Any = None) -> TestResult:
    """blocked (tcp-reset) when every connect to a host was refused, else ok."""
    hosts: dict[str, list[TcpConnect]] = {}
    for c in m.tcp_connect:
        hosts.setdefault(c.hostname, []).append(c)
    refused = sorted(h for h, cs in hosts.items()
                     if all(c.failure == "connection_refused" for c in cs))
    if refused:
        figures = {"refused": refused, "connects": len(m.tcp_connect)}
        verdict = Verdict(VerdictKind.BLOCKED, (Reason.TCP_RESET,), (Evidence(
            rule="tcp_refused", reason=Reason.TCP_RESET, flow_uids=(), frames=(),
            first_ts=m.started_ts, last_ts=m.started_ts + m.duration_s, figures=figures,
            text=f"every TCP connect to {', '.join(refused)} was answered by a reset"),))
    else:
        verdict = Verdict(VerdictKind.OK, (), ())
    keys = {"measurement": json.loads(json.dumps(dataclasses.asdict(m)))}
    uid = "T" + hashlib.sha256(f"{m.app}|{m.started_ts}|{keys}".encode()).hexdigest()[:20]
    return TestResult(uid=uid, kind=TestKind.REACHABILITY, app=m.app,
                      started_ts=m.started_ts, duration_s=m.duration_s, verdict=verdict,
                      test_keys=keys)


def judge_module() -> types.ModuleType:
    """:func:`judge_connects` as module ``policy.reach`` (``judge_reachability``)."""
    mod = types.ModuleType("policy.reach")
    mod.judge_reachability = judge_connects  # type: ignore[attr-defined]
    return mod


def measure(out_dir: Path, app: str = "whatsapp", *, refuse: bool = True,
            capture: bool = True) -> TestResult:
    """A reachability result measured on loopback, its capture in ``out_dir``."""
    started = time.time()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        open_port = listener.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]  # bound, never listening: refused
            ok_failure, ok_ms = _connect(open_port)
            bad_failure, bad_ms = _connect(closed_port) if refuse else _connect(open_port)
    connects = (
        TcpConnect("g.whatsapp.net", "127.0.0.1", open_port, ok_failure, 0.0,
                   None if ok_failure else round(ok_ms, 3)),
        TcpConnect("mmg.whatsapp.net", "127.0.0.1", closed_port if refuse else open_port,
                   bad_failure, 0.01, None if bad_failure else round(bad_ms, 3)))
    m = ReachabilityMeasurement(app=app, started_ts=started,
                                duration_s=round(time.time() - started, 6), queries=(),
                                tcp_connect=connects, tls_handshakes=(), stun=())
    result = judge_connects(m)
    if not capture:
        return result
    frames = []
    t = started
    for c in connects:
        frames.append((t, tcp_frame("127.0.0.1", 40000, c.ip, c.port, b"", flags=SYN)))
        reply = RST_ACK if c.failure else SYN_ACK
        frames.append((t + 0.0001, tcp_frame(c.ip, c.port, "127.0.0.1", 40000, b"",
                                             flags=reply)))
        t += 0.01
    data = pcap(frames)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.uid}.pcap"
    path.write_bytes(data)
    return dataclasses.replace(result, capture=str(path),
                               capture_sha256=hashlib.sha256(data).hexdigest())
