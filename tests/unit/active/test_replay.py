"""The replay server and client over loopback, on real datagrams: every packet found by
its bytes, induced loss and delay measured where they were induced, and the server's
token, limits and bad clients."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from policy.records import Reason, VerdictKind
from policy.replay import judge_replay
from policy.rules import load_policy
from probe.active.records import ReplayKind, ReplayMeasurement
from probe.active.replay import (
    ALL_KINDS,
    Impair,
    ReplayLimits,
    ReplayRefused,
    ReplayServer,
    build_series,
    run_replay,
)
from probe.active.trace import DOWN, UP, Trace, load_trace

from .tracebytes import write_trace

TOKEN = b"a-token-of-the-test"
FAST = {"drain_s": 0.3, "pause_s": 0.05}


@pytest.fixture(scope="module")
def trace(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    return load_trace(write_trace(tmp_path_factory.mktemp("t") / "whatsapp.pcap", 1.2))


def _replay(trace: Trace, impair: Impair | None = None,
            kinds: tuple[ReplayKind, ...] = ALL_KINDS) -> ReplayMeasurement:
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}, impair=impair) as srv:
        return run_replay(trace, *srv.address, TOKEN, kinds=kinds, **FAST)


def _sum(series: object, field: str) -> int:
    return sum(getattr(iv, field) for iv in series.intervals)  # type: ignore[attr-defined]


def test_a_clean_replay_delivers_every_packet_and_is_ok(trace: Trace) -> None:
    m = _replay(trace)
    # The original, both controls, and the original again.
    assert [r.kind for r in m.runs] == [ReplayKind.ORIGINAL, ReplayKind.INVERTED,
                                        ReplayKind.RANDOM_PORTS, ReplayKind.ORIGINAL]
    assert m.runs[0].started_ts < m.runs[1].started_ts < m.runs[2].started_ts \
        < m.runs[3].started_ts
    assert m.trace == trace.ident and m.app == "whatsapp"
    n_up, n_down = len(trace.payloads(UP, ReplayKind.ORIGINAL)), \
        len(trace.payloads(DOWN, ReplayKind.ORIGINAL))
    for r in m.runs:
        assert r.answered and r.failure is None
        assert (_sum(r.up, "sent_packets"), _sum(r.up, "received_packets")) == (n_up, n_up)
        assert (_sum(r.down, "sent_packets"), _sum(r.down, "received_packets")) == \
            (n_down, n_down)
        assert r.up.lost == r.down.lost == ()
        assert _sum(r.up, "received_bytes") == trace.bytes_in(UP)
        assert all(iv.delay_ms is None or iv.delay_ms < 20 for iv in r.down.intervals)
        assert r.up.stun == (0, 1)
    # The random-ports control ran between other ports than the trace's.
    rp = m.runs[2]
    assert rp.server[1] != trace.server_port and rp.client[1] != trace.client_port
    assert 20000 <= rp.server[1] <= 60999
    result = judge_replay(m, load_policy())
    assert result.verdict.kind is VerdictKind.OK, result.verdict


def test_every_tenth_packet_dropped_in_the_server_is_counted_lost(trace: Trace) -> None:
    m = _replay(trace, impair=lambda kind, d, i: None if i % 10 == 9 else 0.0)
    n_up = len(trace.payloads(UP, ReplayKind.ORIGINAL))
    n_down = len(trace.payloads(DOWN, ReplayKind.ORIGINAL))
    for r in m.runs:
        assert r.up.lost == tuple(range(9, n_up, 10))
        assert r.down.lost == tuple(range(9, n_down, 10))
        assert _sum(r.up, "lost_packets") == n_up // 10
        assert _sum(r.down, "received_packets") == n_down - n_down // 10
    # Loss on all four runs alike is the path, never differentiation.
    result = judge_replay(m, load_policy())
    assert result.verdict.kind is VerdictKind.DEGRADED
    assert result.verdict.reasons == (Reason.REPLAY_PATH_IMPAIRED,)


def test_a_delay_induced_in_the_server_shows_in_the_delay_series(trace: Trace) -> None:
    hold = 0.15
    m = _replay(trace, impair=lambda kind, d, i: hold if i >= 30 else 0.0,
                kinds=(ReplayKind.ORIGINAL,))
    down = m.runs[0].down
    early = [iv.delay_ms for iv in down.intervals[:2] if iv.delay_ms is not None]
    late = [iv.delay_ms for iv in down.intervals[4:5] if iv.delay_ms is not None]
    assert early and max(early) < 20
    assert late and abs(late[0] - hold * 1000) < 30, late
    assert down.lost == ()
    # The step in delay shows in the jitter estimate.
    jitter = [iv.jitter_ms for iv in down.intervals if iv.jitter_ms is not None]
    assert max(jitter) > 5


def test_loss_of_the_original_only_is_differentiation_in_its_direction(trace: Trace) -> None:
    def impair(kind: ReplayKind, d: str, i: int) -> float | None:
        return None if kind is ReplayKind.ORIGINAL and d == DOWN and i % 5 < 2 else 0.0
    result = judge_replay(_replay(trace, impair=impair), load_policy())
    assert result.verdict.kind is VerdictKind.THROTTLED
    assert result.verdict.reasons == (Reason.REPLAY_DIFFERENTIATED,)
    assert [e.figures["direction"] for e in result.verdict.evidence] == ["down"]
    text = result.verdict.evidence[0].text
    assert "path congestion" in text and "both original runs" in text
    loss = result.verdict.evidence[0].figures["loss"]
    assert loss["original"] > 0.3 and loss["original-after"] > 0.3


def _one_original(which: int) -> Impair:
    """Loses 2 in 5 of the server's packets in the ``which``-th run of the original only
    (counted as the server plays each run's first packet down): a passing event."""
    seen = [0]

    def impair(kind: ReplayKind, d: str, i: int) -> float | None:
        if kind is ReplayKind.ORIGINAL and d == DOWN:
            if i == 0:
                seen[0] += 1
            if seen[0] == which and i % 5 < 2:
                return None
        return 0.0
    return impair


@pytest.mark.parametrize("which", [1, 2], ids=["before-the-controls", "after-the-controls"])
def test_loss_in_one_run_of_the_original_alone_is_no_verdict(trace: Trace, which: int) -> None:
    m = _replay(trace, impair=_one_original(which))
    hit, spared = (m.runs[0], m.runs[3]) if which == 1 else (m.runs[3], m.runs[0])
    assert len(hit.down.lost) > 0.3 * _sum(hit.down, "sent_packets")
    assert spared.down.lost == ()
    result = judge_replay(m, load_policy())
    assert result.verdict.kind is VerdictKind.UNKNOWN, result.verdict
    (ev,) = result.verdict.evidence
    assert ev.rule == "unknown.replay_originals_disagree" and ev.figures["direction"] == "down"
    assert "the two runs of the original disagreed" in ev.text


def test_a_wrong_token_is_refused_and_the_server_goes_on(trace: Trace) -> None:
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}) as srv:
        with pytest.raises(ReplayRefused, match="authentication failed"):
            run_replay(trace, *srv.address, b"not-the-token", **FAST)
        assert srv.counts["auth_failed"] == 1 and srv.counts["runs"] == 0
        m = run_replay(trace, *srv.address, TOKEN, kinds=(ReplayKind.ORIGINAL,), **FAST)
        assert m.runs[0].answered


def _raw(address: tuple[str, int], lines: list[bytes]) -> list[dict[str, object]]:
    with socket.create_connection(address, timeout=5) as s:
        f = s.makefile("rb")
        got = [json.loads(f.readline())]
        for line in lines:
            try:
                s.sendall(line)
            except OSError:
                break
        got += [json.loads(x) for x in f.readlines()]
    return got


def test_malformed_control_messages_get_an_error_never_a_crash(trace: Trace) -> None:
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}) as srv:
        assert _raw(srv.address, [b"this is not json\n"])[-1]["op"] == "error"
        assert _raw(srv.address, [b"[1, 2, 3]\n"])[-1]["op"] == "error"
        assert _raw(srv.address, [b"x" * 70000])[-1]["op"] == "error"
        # Authenticated, then a run with a bad kind.
        import hashlib
        import hmac
        with socket.create_connection(srv.address, timeout=5) as s:
            f = s.makefile("rb")
            nonce = json.loads(f.readline())["nonce"]
            mac = hmac.new(TOKEN, bytes.fromhex(nonce), hashlib.sha256).hexdigest()
            s.sendall(json.dumps({"op": "hello", "mac": mac}).encode() + b"\n")
            assert json.loads(f.readline())["op"] == "welcome"
            s.sendall(json.dumps({"op": "run", "trace": trace.name, "sha256": trace.sha256,
                                  "kind": "bogus", "transport": "udp",
                                  "client_port": 40000}).encode() + b"\n")
            err = json.loads(f.readline())
            assert err["op"] == "error" and "bogus" in err["error"]
        assert srv.counts["malformed"] >= 4
        m = run_replay(trace, *srv.address, TOKEN, kinds=(ReplayKind.ORIGINAL,), **FAST)
        assert m.runs[0].answered


def test_the_server_refuses_what_exceeds_its_limits(trace: Trace) -> None:
    small = ReplayLimits(max_bytes=trace.bytes_in() + 10)
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}, limits=small) as srv:
        m = run_replay(trace, *srv.address, TOKEN, kinds=(ReplayKind.ORIGINAL,), **FAST)
        assert m.runs[0].answered
        with pytest.raises(ReplayRefused, match="within the hour; the limit is"):
            run_replay(trace, *srv.address, TOKEN, kinds=(ReplayKind.ORIGINAL,), **FAST)
    short = ReplayLimits(max_duration_s=0.5)
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}, limits=short) as srv:
        with pytest.raises(ReplayRefused, match=r"the limit is 0\.5 s"):
            run_replay(trace, *srv.address, TOKEN, kinds=(ReplayKind.ORIGINAL,), **FAST)
        assert srv.counts["refused"] == 1 and srv.counts["runs"] == 0


def test_the_server_limits_concurrent_runs_of_one_client(trace: Trace) -> None:
    one = ReplayLimits(max_concurrent=1)
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}, limits=one) as srv:
        first = threading.Thread(target=run_replay, args=(trace, *srv.address, TOKEN),
                                 kwargs={"kinds": (ReplayKind.ORIGINAL,), **FAST})
        first.start()
        time.sleep(0.4)
        with pytest.raises(ReplayRefused, match="already has 1 runs going"):
            run_replay(trace, *srv.address, TOKEN, kinds=(ReplayKind.ORIGINAL,), **FAST)
        first.join()


def test_the_client_refuses_beyond_its_own_limits_before_connecting(trace: Trace) -> None:
    with pytest.raises(ReplayRefused, match=r"client's limits.*4 runs send"):
        run_replay(trace, "127.0.0.1", 9, TOKEN, limits=ReplayLimits(max_bytes=1000))


def test_a_trace_the_server_lacks_is_refused(trace: Trace, tmp_path: Path) -> None:
    other = load_trace(write_trace(tmp_path / "whatsapp.pcap", 1.0))  # same name, other file
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}) as srv, \
            pytest.raises(ReplayRefused, match="no trace 'whatsapp' with that SHA-256"):
        run_replay(other, *srv.address, TOKEN, **FAST)


def test_series_take_delay_above_the_minimum_and_rfc3550_jitter() -> None:
    # Receiver clock 1000 s ahead; packets every 0.1 s; delays 10, 10, 30, 10 ms; #4 lost.
    sent = [(0, 0.0), (1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    received = {0: 1000.010, 1: 1000.110, 2: 1000.230, 3: 1000.310}
    s = build_series(DOWN, sent, received, [100] * 5, interval_s=0.25, span_s=0.5)
    assert [iv.sent_packets for iv in s.intervals] == [3, 2]
    assert [iv.received_packets for iv in s.intervals] == [3, 1]
    assert [iv.lost_packets for iv in s.intervals] == [0, 1]
    assert s.lost == (4,)
    assert s.intervals[0].delay_ms == pytest.approx(0.0, abs=1e-6)
    assert s.intervals[1].delay_ms == pytest.approx(0.0, abs=1e-6)
    assert s.intervals[0].delay_ms == 0.0  # the median of 0, 0 and 20 ms
    # Packet 2 arrives 20 ms late: D = +20 ms, then -20 ms for packet 3 (RFC 3550 §6.4.1).
    j1 = 20 / 16
    assert s.intervals[0].jitter_ms == pytest.approx(j1, abs=1e-3)
    assert s.intervals[1].jitter_ms == pytest.approx(j1 + (20 - j1) / 16, abs=1e-3)


def test_a_tcp_trace_is_replayed_over_tcp_and_found_by_its_byte_offsets() -> None:
    root = Path(__file__).resolve().parents[3]
    trace = load_trace(root / "captures" / "traces" / "teams-tcp.pcap").cut(1.2)
    assert trace.transport == "tcp"
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}) as srv:
        m = run_replay(trace, *srv.address, TOKEN, seconds=1.2, **FAST)
    for r in m.runs:
        assert r.transport == "tcp" and r.failure is None and r.answered
        for d, s in ((UP, r.up), (DOWN, r.down)):
            n = len(trace.payloads(d, ReplayKind.ORIGINAL))
            assert _sum(s, "sent_packets") == n and _sum(s, "received_packets") == n
    # 1.2 s of this trace is mostly its set-up: too few whole intervals to compare.
    assert judge_replay(m, load_policy()).verdict.kind in (VerdictKind.OK,
                                                           VerdictKind.UNKNOWN)


def test_a_busy_server_says_so(trace: Trace) -> None:
    with ReplayServer("127.0.0.1", 0, TOKEN, {trace.name: trace}, max_sessions=0) as srv, \
            pytest.raises(ReplayRefused, match=r"busy \(0 sessions\)"):
        run_replay(trace, *srv.address, TOKEN, **FAST)


def test_a_run_longer_than_the_control_timeout_still_ends_cleanly(
        trace: Trace, monkeypatch: pytest.MonkeyPatch) -> None:
    import probe.active.replay as replay
    monkeypatch.setattr(replay, "_CONTROL_TIMEOUT_S", 0.5)  # shorter than the 1.2 s trace
    m = _replay(trace, kinds=(ReplayKind.ORIGINAL,))
    assert m.runs[0].answered and m.runs[0].up.lost == ()
