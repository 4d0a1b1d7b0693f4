"""The replay test's wire side: a replay server, the client, and the series they measure.

Protocol (one TCP control connection per test; JSON objects, one per line):

1. server: ``{"op": "challenge", "nonce": HEX, "version": 1}``
2. client: ``{"op": "hello", "mac": HEX}`` with HMAC-SHA256(token, nonce): the token never
   crosses the wire; the server compares with :func:`hmac.compare_digest`.
3. server: ``{"op": "welcome", "limits": {...}, "traces": [...]}`` (or ``error``, and closes).
4. per run, client: ``{"op": "run", "trace": NAME, "sha256": HEX, "kind": KIND,
   "transport": "udp"|"tcp", "seconds": S, "client_port": P}``; server: ``ready`` with its
   data port, or ``refused`` with the reason (a limit, an unknown trace, ...).
   A test's runs are the original, the inverted and the random-ports controls, and the
   original again (:data:`ALL_KINDS`).
5. client: ``go``. Both ends now play their direction of the trace on its schedule, over
   UDP (or a TCP connection the client opened for a TCP trace), and log when each packet
   of the other direction arrived. The original and the inverted control run between the
   trace's own ports when they can be bound; the random-ports control between random
   high ports at both ends.
6. client: ``done`` once its schedule ended and late packets had time to arrive; server:
   ``result`` with what it sent and received (``[index, t_s]`` pairs, its own clock).

A receiver identifies each packet by its bytes (the trace's payloads are unique per
direction; for TCP, by the byte offsets of the stream): nothing is added to the wire, so
a middlebox sees exactly the app's bytes (or their inversion). Delays are one-way times
above the run's minimum, so the ends' clocks need not agree.

Safety: the client runs only against the server the user names, and both ends bound
what a test may send (:class:`ReplayLimits`); the server refuses, with a message, what
exceeds its limits, and answers malformed or unauthenticated control messages with an
error line before closing: a bad client never stops the server.

Errors: :class:`ReplayError` (the test could not run: unreachable server, protocol
error) and its subclass :class:`ReplayRefused` (the server or the client's own limits
said no).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import math
import secrets
import select
import socket
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from probe.active.records import Interval, ReplayKind, ReplayMeasurement, ReplayRun, Series
from probe.active.trace import DOWN, UP, Trace, random_port

__all__ = ["ALL_KINDS", "DEFAULT_INTERVAL_S", "Impair", "ReplayError", "ReplayLimits",
           "ReplayRefused", "ReplayServer", "build_series", "run_replay"]

PROTOCOL_VERSION = 1
DEFAULT_INTERVAL_S = 0.25
"""Wehe's throughput sampling interval (``xputInterval``)."""
_MAX_CLIENT_LINE = 64 * 1024
"""The longest control line a client may send the server."""
_MAX_SERVER_LINE = 16 * 1024 * 1024
"""The longest line the client accepts (a result: about 20 bytes per packet)."""
_CONTROL_TIMEOUT_S = 30.0
DRAIN_S = 1.0
"""How long after its last packet a run waits for late packets (a full shaper queue
holds some hundreds of milliseconds)."""
_MAX_DATAGRAM = 65535
ALL_KINDS = (ReplayKind.ORIGINAL, ReplayKind.INVERTED, ReplayKind.RANDOM_PORTS,
             ReplayKind.ORIGINAL)
"""A test's runs in order: the original, both controls, and the original again (a
sandwich): a change of the path that passes during one run of the original shows in that
run alone, so an interference verdict can ask both runs of the original to show it."""

Impair = Callable[[ReplayKind, str, int], float | None]
"""A test hook of the server, asked for each packet (run kind, direction, index): ``None``
loses the
packet; a number delays a down packet by that many seconds before it goes out (an up
packet can only be lost)."""


class ReplayError(Exception):
    """The replay test could not run (server unreachable, protocol error, failed run), or
    the replay server could not listen."""


class ReplayRefused(ReplayError):
    """A limit (the server's, or the client's own) refused the test."""


class _Closed(ReplayError):
    """The other end closed the control connection."""


@dataclass(frozen=True, slots=True)
class ReplayLimits:
    """Bounds on what a replay may send; both ends enforce them."""

    max_duration_s: float = 30.0
    """Longest run (the trace's length)."""
    max_rate_bps: float = 4_000_000.0
    """Highest mean rate of a trace, both directions together."""
    max_bytes: int = 50_000_000
    """Client: all runs of one test together. Server: what one client address may have
    replayed within an hour."""
    max_concurrent: int = 2
    """Server: runs one client address may have going at once."""

    def check(self, trace: Trace, runs: int = 1) -> str | None:
        """Why ``runs`` replays of ``trace`` exceed these limits, or ``None``."""
        if trace.duration_s > self.max_duration_s:
            return (f"the trace lasts {trace.duration_s:.1f} s, the limit is "
                    f"{self.max_duration_s:g} s")
        if trace.rate_bps() > self.max_rate_bps:
            return (f"the trace's rate is {trace.rate_bps() / 1000:.0f} kbit/s, the limit is "
                    f"{self.max_rate_bps / 1000:.0f} kbit/s")
        total = trace.bytes_in() * runs
        if total > self.max_bytes:
            return f"{runs} runs send {total} bytes, the limit is {self.max_bytes}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- control channel ----------------------------------------------------------------------


class _Control:
    """JSON lines over a TCP socket, each line bounded."""

    def __init__(self, sock: socket.socket, max_line: int) -> None:
        self.sock = sock
        self.max_line = max_line
        self._buf = b""

    def send(self, **msg: Any) -> None:
        self.sock.sendall(json.dumps(msg, separators=(",", ":")).encode() + b"\n")

    def recv(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            if len(self._buf) > self.max_line:
                raise ReplayError(f"control line longer than {self.max_line} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise _Closed("the control connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        if len(line) > self.max_line:
            raise ReplayError(f"control line longer than {self.max_line} bytes")
        try:
            msg = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReplayError(f"malformed control message: {exc}") from exc
        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
            raise ReplayError("malformed control message: not an object with an 'op'")
        return msg


def _mac(token: bytes, nonce: str) -> str:
    return hmac.new(token, bytes.fromhex(nonce), hashlib.sha256).hexdigest()


# -- the two halves of a run: play one direction, log the other ---------------------------


@dataclass(slots=True)
class _Log:
    """What one end of a run sent and received (times on its own clock, from ``go``)."""

    sent: list[tuple[int, float]] = field(default_factory=list)
    received: dict[int, float] = field(default_factory=dict)
    unidentified: int = 0


def _play(schedule: Sequence[tuple[int, float, bytes]], send: Callable[[bytes], object],
          t0: float, log: _Log, stop: threading.Event,
          impair: Callable[[int], float | None] | None = None) -> None:
    """Send ``schedule`` (index, offset, payload) at ``t0 + offset`` (plus the hook's
    delay), logging each scheduled time as the packet's send time."""
    queue: list[tuple[float, int, bytes]] = []
    for i, t_s, payload in schedule:
        extra = impair(i) if impair is not None else 0.0
        log.sent.append((i, t_s))
        if extra is not None:
            queue.append((t_s + extra, i, payload))
    queue.sort()
    for due, _, payload in queue:
        wait = t0 + due - time.monotonic()
        if wait > 0 and stop.wait(wait):
            return
        if stop.is_set():
            return
        try:
            send(payload)
        except OSError:
            # A refused or unreachable destination (ICMP) loses this packet, as the
            # network would; the receiver's log shows it.
            continue


def _listen_udp(sock: socket.socket, index: dict[bytes, int], t0: float, log: _Log,
                stop: threading.Event, peer_ip: str | None = None,
                on_peer: Callable[[tuple[str, int]], None] | None = None,
                drop: Callable[[int], bool] | None = None) -> None:
    while not stop.is_set():
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        try:
            data, addr = sock.recvfrom(_MAX_DATAGRAM)
        except OSError:
            continue
        now = time.monotonic() - t0
        if peer_ip is not None and addr[0] != peer_ip:
            continue
        i = index.get(data)
        if i is None:
            log.unidentified += 1
            continue
        if on_peer is not None:
            on_peer(addr)
        if drop is not None and drop(i):
            continue
        log.received.setdefault(i, now)


def _listen_tcp(sock: socket.socket, expected: bytes, ends: Sequence[int], t0: float,
                log: _Log, stop: threading.Event,
                drop: Callable[[int], bool] | None = None) -> None:
    """Log packet ``i`` as arrived when the stream's bytes reach ``ends[i]`` and match
    the trace's (a mismatch counts as unidentified and ends the identification)."""
    got = 0
    nxt = 0
    ok = True
    while not stop.is_set() and nxt < len(ends):
        if not select.select([sock], [], [], 0.05)[0]:
            continue
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        now = time.monotonic() - t0
        if ok and expected[got:got + len(data)] != data:
            ok = False
            log.unidentified += 1
        got += len(data)
        while ok and nxt < len(ends) and got >= ends[nxt]:
            if drop is None or not drop(nxt):
                log.received.setdefault(nxt, now)
            nxt += 1


def _stream(schedule: Sequence[tuple[int, float, bytes]]) -> tuple[bytes, list[int]]:
    data = b"".join(p for _, _, p in schedule)
    ends, total = [], 0
    for _, _, p in schedule:
        total += len(p)
        ends.append(total)
    return data, ends


# -- the series ---------------------------------------------------------------------------


def build_series(direction: str, sent: Iterable[tuple[int, float]],
                 received: dict[int, float], sizes: Sequence[int], *,
                 interval_s: float = DEFAULT_INTERVAL_S, span_s: float,
                 stun: tuple[int, ...] = ()) -> Series:
    """Cut one direction of a run into intervals.

    ``sent`` holds (index, send time) on the sender's clock, ``received`` index -> arrival
    time on the receiver's, ``sizes`` each index's payload size. The difference of the
    two clocks is a constant, so the one-way delay of a packet is taken as its arrival
    minus its send time, less the run's smallest such difference; a packet's arrival on
    the sender's time line is its send time plus that delay. Sent and lost packets
    count in the interval they were sent, received ones in the interval they arrived;
    jitter is RFC 3550's estimate (§6.4.1, smoothing 1/16) over the arrivals in order.
    """
    sent_at = dict(sent)
    pairs = sorted((received[i] - sent_at[i], i) for i in received if i in sent_at)
    base = pairs[0][0] if pairs else 0.0
    delay = {i: d - base for d, i in pairs}
    arrive = {i: sent_at[i] + delay[i] for i in delay}
    last = max([*arrive.values(), *sent_at.values()], default=0.0)
    n = max(1, math.ceil(span_s / interval_s - 1e-9), int(last / interval_s) + 1)

    def slot(t: float) -> int:
        return min(n - 1, max(0, int(t / interval_s)))

    s_pk, s_by, r_pk, r_by, lost = ([0] * n for _ in range(5))
    delays: list[list[float]] = [[] for _ in range(n)]
    jitter: list[float | None] = [None] * n
    for i, t in sent_at.items():
        k = slot(t)
        s_pk[k] += 1
        s_by[k] += sizes[i]
        if i not in arrive:
            lost[k] += 1
    j, prev = 0.0, None
    for i in sorted(arrive, key=lambda i: (received[i], i)):
        k = slot(arrive[i])
        r_pk[k] += 1
        r_by[k] += sizes[i]
        delays[k].append(delay[i] * 1000.0)
        if prev is not None:
            d = (received[i] - received[prev]) - (sent_at[i] - sent_at[prev])
            j += (abs(d) - j) / 16.0
        prev = i
        jitter[k] = j * 1000.0
    intervals = tuple(
        Interval(round(k * interval_s, 6), s_pk[k], s_by[k], r_pk[k], r_by[k], lost[k],
                 round(statistics.median(delays[k]), 3) if delays[k] else None,
                 None if jitter[k] is None or not r_pk[k] else round(jitter[k] or 0.0, 3))
        for k in range(n))
    return Series(direction, interval_s, intervals,
                  tuple(sorted(i for i in sent_at if i not in arrive)), stun)


# -- server ---------------------------------------------------------------------------------


def _bind_data(family: int, kind: ReplayKind, transport: str, host: str,
               wanted: int, *, listen: bool = True) -> socket.socket:
    """A data socket: on the trace's port for the original and inverted runs when it can
    be bound (else any), on a random high port for the random-ports control; a TCP one
    listens unless ``listen`` is false (the client's, which connects)."""
    stype = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    tries = [random_port() for _ in range(8)] if kind is ReplayKind.RANDOM_PORTS \
        else [wanted, 0]
    last: OSError | None = None
    for port in tries:
        sock = socket.socket(family, stype)
        try:
            if stype == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if stype == socket.SOCK_STREAM and listen:
                sock.listen(1)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise ReplayError(f"cannot bind a {transport} port: {last}")


def _accept_from(listener: socket.socket, peer: str, timeout_s: float) -> socket.socket | None:
    """The first connection from ``peer`` within ``timeout_s`` (others are closed)."""
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        listener.settimeout(left)
        try:
            conn, addr = listener.accept()
        except OSError:
            return None
        if str(addr[0]) == peer:
            conn.settimeout(None)
            return conn
        conn.close()
    return None


class ReplayServer:
    """Serves replays to clients that hold the token, within per-client limits.

    ``with ReplayServer(...) as srv:`` listens in a background thread until the block
    ends; :meth:`serve_forever` serves in the caller's thread. ``impair`` is a test hook
    (see :data:`Impair`) that loses or delays the server's packets on purpose.
    """

    def __init__(self, host: str, port: int, token: bytes, traces: dict[str, Trace], *,
                 limits: ReplayLimits | None = None, max_sessions: int = 16,
                 impair: Impair | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if not token:
            raise ValueError("a replay server needs a non-empty token")
        self.token = token
        self.traces = dict(traces)
        self.limits = limits if limits is not None else ReplayLimits()
        self.max_sessions = max_sessions
        self.impair = impair
        self._log = log
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError as exc:
            raise ReplayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                              ) from exc
        self._family = info[0]
        self._sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind(info[4])
            self._sock.listen(16)
        except OSError as exc:
            self._sock.close()
            raise ReplayError(f"cannot listen on {host}:{port}: {exc.strerror or exc}"
                              ) from exc
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sessions = 0
        self._active: dict[str, int] = {}
        self._spent: dict[str, list[tuple[float, int]]] = {}
        self._thread: threading.Thread | None = None
        self.counts: dict[str, int] = {"sessions": 0, "runs": 0, "refused": 0,
                                       "auth_failed": 0, "malformed": 0}
        """What the server has seen: sessions, runs, refusals, failed authentications,
        malformed control messages."""

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def __enter__(self) -> ReplayServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True,
                                        name="replay-server")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._sock.close()

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)

    def _count(self, key: str) -> None:
        with self._lock:
            self.counts[key] += 1

    def serve_forever(self) -> None:
        """Accept clients until :meth:`close` (each session in its own thread)."""
        while not self._stop.is_set():
            if not select.select([self._sock], [], [], 0.2)[0]:
                continue
            try:
                conn, addr = self._sock.accept()
            except OSError:
                continue
            with self._lock:
                busy = self._sessions >= self.max_sessions
                if not busy:
                    self._sessions += 1
            if busy:
                with contextlib.suppress(OSError):
                    _Control(conn, _MAX_CLIENT_LINE).send(
                        op="error", error=f"the server is busy ({self.max_sessions} sessions)")
                conn.close()
                continue
            threading.Thread(target=self._session, args=(conn, str(addr[0])),
                             daemon=True, name=f"replay-{addr[0]}").start()

    def _session(self, conn: socket.socket, peer: str) -> None:
        self._count("sessions")
        conn.settimeout(_CONTROL_TIMEOUT_S)
        ctl = _Control(conn, _MAX_CLIENT_LINE)
        try:
            nonce = secrets.token_hex(16)
            ctl.send(op="challenge", nonce=nonce, version=PROTOCOL_VERSION)
            hello = ctl.recv()
            mac = hello.get("mac")
            if hello["op"] != "hello" or not isinstance(mac, str) or not hmac.compare_digest(
                    mac.encode(), _mac(self.token, nonce).encode()):
                self._count("auth_failed")
                ctl.send(op="error", error="authentication failed: wrong token")
                self._say(f"{peer}: authentication failed")
                return
            ctl.send(op="welcome", limits=self.limits.to_dict(),
                     traces=sorted(self.traces))
            while not self._stop.is_set():
                msg = ctl.recv()
                if msg["op"] == "bye":
                    return
                if msg["op"] != "run":
                    raise ReplayError(f"unexpected control message {msg['op']!r}")
                self._run(ctl, peer, msg)
        except _Closed:
            pass
        except ReplayError as exc:
            self._count("malformed")
            self._say(f"{peer}: {exc}")
            with contextlib.suppress(OSError):
                ctl.send(op="error", error=str(exc))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self._count("malformed")
            self._say(f"{peer}: session ended: {exc}")
            with contextlib.suppress(OSError):
                ctl.send(op="error", error=f"bad request: {exc}")
        finally:
            conn.close()
            with self._lock:
                self._sessions -= 1

    def _admit(self, peer: str, trace: Trace) -> str | None:
        """Why this client may not start a run of ``trace`` now; books it otherwise."""
        why = self.limits.check(trace)
        if why is not None:
            return why
        now = time.time()
        with self._lock:
            spent = [(t, b) for t, b in self._spent.get(peer, []) if now - t < 3600]
            used = sum(b for _, b in spent)
            if used + trace.bytes_in() > self.limits.max_bytes:
                return (f"this client replayed {used} bytes within the hour; the limit is "
                        f"{self.limits.max_bytes}")
            if self._active.get(peer, 0) >= self.limits.max_concurrent:
                return (f"this client already has {self.limits.max_concurrent} runs going "
                        "(the limit)")
            self._spent[peer] = [*spent, (now, trace.bytes_in())]
            self._active[peer] = self._active.get(peer, 0) + 1
        return None

    def _run(self, ctl: _Control, peer: str, msg: dict[str, Any]) -> None:
        name, digest = msg.get("trace"), msg.get("sha256")
        trace = self.traces.get(name) if isinstance(name, str) else None
        if trace is None or trace.sha256 != digest:
            self._count("refused")
            ctl.send(op="refused", reason=f"this server has no trace {name!r} with that "
                     "SHA-256")
            return
        try:
            kind = ReplayKind(str(msg.get("kind")))
        except ValueError:
            raise ReplayError(f"unknown run kind {msg.get('kind')!r}") from None
        seconds, cport = msg.get("seconds"), msg.get("client_port")
        if seconds is not None:
            if not isinstance(seconds, int | float) or seconds <= 0:
                raise ReplayError("'seconds' must be a positive number")
            trace = trace.cut(float(seconds))
        if not isinstance(cport, int) or not 0 < cport < 65536:
            raise ReplayError("'client_port' must be a port number")
        if msg.get("transport") != trace.transport:
            raise ReplayError(f"the trace is replayed over {trace.transport}")
        why = self._admit(peer, trace)
        if why is not None:
            self._count("refused")
            ctl.send(op="refused", reason=why)
            self._say(f"{peer}: refused: {why}")
            return
        self._count("runs")
        try:
            self._replay(ctl, peer, trace, kind, cport)
        finally:
            with self._lock:
                self._active[peer] -= 1

    def _replay(self, ctl: _Control, peer: str, trace: Trace, kind: ReplayKind,
                cport: int) -> None:
        # The data socket takes the address the client reached the control socket on.
        host = str(ctl.sock.getsockname()[0])
        data = _bind_data(ctl.sock.family, kind, trace.transport, host, trace.server_port)
        conn: socket.socket | None = None
        log, stop = _Log(), threading.Event()
        down = trace.payloads(DOWN, kind)
        impair = self.impair

        def drop(i: int) -> bool:
            return impair is not None and impair(kind, UP, i) is None

        def hold(i: int) -> float | None:
            return impair(kind, DOWN, i) if impair is not None else 0.0
        try:
            ctl.send(op="ready", port=data.getsockname()[1])
            if trace.transport == "tcp":
                conn = _accept_from(data, peer, 10.0)
            go = ctl.recv()
            if go["op"] != "go":
                return  # the client gave up (it could not connect): nothing to replay
            t0 = time.monotonic()
            if trace.transport == "udp":
                dest = [(peer, cport)]

                def seen(addr: tuple[str, int]) -> None:
                    dest[0] = addr  # a NAT may have changed the client's port

                def send_udp(b: bytes) -> object:
                    return data.sendto(b, dest[0])
                rx = threading.Thread(target=_listen_udp, args=(
                    data, trace.index(UP, kind), t0, log, stop, peer, seen, drop))
                send: Callable[[bytes], object] = send_udp
            else:
                if conn is None:
                    raise ReplayError("the client's TCP connection did not arrive")
                expected, ends = _stream(trace.payloads(UP, kind))
                rx = threading.Thread(target=_listen_tcp, args=(
                    conn, expected, ends, t0, log, stop, drop))
                send = conn.sendall
            rx.start()
            tx = threading.Thread(target=_play, args=(down, send, t0, log, stop, hold))
            tx.start()
            # The client says "done" after its whole schedule and the drain.
            ctl.sock.settimeout(trace.duration_s + _CONTROL_TIMEOUT_S)
            try:
                done = ctl.recv()
            finally:
                ctl.sock.settimeout(_CONTROL_TIMEOUT_S)
                stop.set()
                tx.join()
                rx.join()
            if done["op"] != "done":
                raise ReplayError(f"expected 'done', got {done['op']!r}")
            ctl.send(op="result", sent=[[i, round(t, 6)] for i, t in log.sent],
                     received=[[i, round(t, 6)] for i, t in sorted(log.received.items())],
                     unidentified=log.unidentified)
        finally:
            if conn is not None:
                conn.close()
            data.close()


# -- client ---------------------------------------------------------------------------------


def _failure(exc: BaseException) -> str:
    """An OONI-style failure string for a socket error."""
    if isinstance(exc, TimeoutError | socket.timeout):
        return "generic_timeout_error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused"
    if isinstance(exc, ConnectionResetError):
        return "connection_reset"
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "host_unreachable"
    return "unknown_failure: " + (str(exc) or type(exc).__name__)


def run_replay(trace: Trace, host: str, port: int, token: bytes, *,
               limits: ReplayLimits | None = None,
               kinds: Sequence[ReplayKind] = ALL_KINDS, seconds: float | None = None,
               interval_s: float = DEFAULT_INTERVAL_S, drain_s: float = DRAIN_S,
               pause_s: float = 0.5) -> ReplayMeasurement:
    """Replay ``trace`` and its controls against the replay server at ``host:port``.

    The runs go back-to-back in the order of ``kinds`` (by default :data:`ALL_KINDS`: the
    original, both controls, the original again) over one control connection.
    ``seconds`` cuts the trace (both ends cut it the same way); ``drain_s`` is how long
    each run waits for late packets after its last one. Raises
    :class:`ReplayRefused` when the client's own ``limits`` or the server refuse, and
    :class:`ReplayError` when the server cannot be reached or breaks the protocol; a run
    whose data path failed is kept, with its failure string.
    """
    limits = limits if limits is not None else ReplayLimits()
    played = trace.cut(seconds) if seconds is not None else trace
    why = limits.check(played, len(kinds))
    if why is not None:
        raise ReplayRefused(f"the client's limits refuse this test: {why}")
    started = time.time()
    try:
        sock = socket.create_connection((host, port), timeout=_CONTROL_TIMEOUT_S)
    except OSError as exc:
        raise ReplayError(f"cannot reach the replay server {host}:{port}: "
                          f"{_failure(exc)}") from exc
    runs: list[ReplayRun] = []
    with sock:
        ctl = _Control(sock, _MAX_SERVER_LINE)
        try:
            hi = ctl.recv()
            if hi["op"] == "error":
                raise ReplayRefused(f"the replay server said: {hi.get('error')}")
            if hi["op"] != "challenge" or not isinstance(hi.get("nonce"), str):
                raise ReplayError(f"not a replay server (it said {hi['op']!r})")
            ctl.send(op="hello", mac=_mac(token, hi["nonce"]))
            welcome = ctl.recv()
            if welcome["op"] == "error":
                raise ReplayRefused(f"the replay server said: {welcome.get('error')}")
            for n, kind in enumerate(kinds):
                if n:
                    time.sleep(pause_s)
                runs.append(_client_run(ctl, sock, played, kind, seconds, interval_s,
                                        drain_s))
            ctl.send(op="bye")
        except (OSError, ValueError) as exc:
            raise ReplayError(f"the replay server's control connection failed: "
                              f"{_failure(exc)}") from exc
    return ReplayMeasurement(trace.app, trace.ident, started, tuple(runs))


def _client_run(ctl: _Control, control: socket.socket, trace: Trace, kind: ReplayKind,
                seconds: float | None, interval_s: float, drain_s: float) -> ReplayRun:
    family = control.family
    server_ip = str(control.getpeername()[0])
    local_ip = str(control.getsockname()[0])
    data = _bind_data(family, kind, trace.transport, local_ip, trace.client_port,
                      listen=False)
    cport = data.getsockname()[1]
    ctl.send(op="run", trace=trace.name, sha256=trace.sha256, kind=str(kind),
             transport=trace.transport, seconds=seconds, client_port=cport)
    log, stop = _Log(), threading.Event()
    failure: str | None = None
    started = time.time()
    try:
        ready = ctl.recv()
        if ready["op"] == "refused":
            raise ReplayRefused(f"the replay server refused the {kind} run: "
                                f"{ready.get('reason')}")
        if ready["op"] != "ready" or not isinstance(ready.get("port"), int):
            raise ReplayError(f"the replay server answered {ready['op']!r}: "
                              f"{ready.get('error', '')}")
        sport = int(ready["port"])
        up = trace.payloads(UP, kind)
        if trace.transport == "udp":
            data.connect((server_ip, sport))
            send: Callable[[bytes], object] = data.send
        else:
            data.settimeout(5.0)
            try:
                try:
                    data.connect((server_ip, sport))
                except OSError as exc:
                    if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                        raise
                    # The last run's connection on the same ports is still closing:
                    # connect from any port (the server takes what arrives).
                    data.close()
                    data = socket.socket(family, socket.SOCK_STREAM)
                    data.settimeout(5.0)
                    data.connect((server_ip, sport))
            except OSError as exc:
                failure = _failure(exc)
                ctl.send(op="abort")
                return _run_record(kind, trace, data, (server_ip, sport), started, log,
                                   None, interval_s, failure)
            send = data.sendall
        ctl.send(op="go")
        t0 = time.monotonic()
        if trace.transport == "udp":
            rx = threading.Thread(target=_listen_udp, args=(
                data, trace.index(DOWN, kind), t0, log, stop))
        else:
            expected, ends = _stream(trace.payloads(DOWN, kind))
            rx = threading.Thread(target=_listen_tcp, args=(data, expected, ends, t0, log,
                                                            stop))
        rx.start()
        try:
            _play(up, send, t0, log, stop)
            time.sleep(max(0.0, t0 + trace.duration_s + drain_s - time.monotonic()))
        finally:
            stop.set()
            rx.join()
        ctl.send(op="done")
        result = ctl.recv()
        if result["op"] != "result":
            raise ReplayError(f"the replay server answered {result['op']!r}: "
                              f"{result.get('error', '')}")
        return _run_record(kind, trace, data, (server_ip, sport), started, log, result,
                           interval_s, None)
    finally:
        data.close()


def _pairs(value: object) -> list[tuple[int, float]]:
    if not isinstance(value, list):
        raise ReplayError("malformed result from the replay server")
    out = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], int)
                or not isinstance(item[1], int | float)):
            raise ReplayError("malformed result from the replay server")
        out.append((item[0], float(item[1])))
    return out


def _run_record(kind: ReplayKind, trace: Trace, data: socket.socket,
                server: tuple[str, int], started: float, log: _Log,
                result: dict[str, Any] | None, interval_s: float,
                failure: str | None) -> ReplayRun:
    up_sizes = [len(p) for _, _, p in trace.payloads(UP, kind)]
    down_sizes = [len(p) for _, _, p in trace.payloads(DOWN, kind)]
    server_sent = _pairs(result.get("sent")) if result else []
    server_rx = dict(_pairs(result.get("received"))) if result else {}
    if any(not 0 <= i < len(up_sizes) for i in server_rx) or any(
            not 0 <= i < len(down_sizes) for i, _ in server_sent):
        raise ReplayError("the replay server's result names packets the trace lacks")
    span = trace.duration_s
    up = build_series(UP, log.sent, server_rx, up_sizes, interval_s=interval_s, span_s=span,
                      stun=trace.stun(UP))
    down = build_series(DOWN, server_sent, log.received, down_sizes, interval_s=interval_s,
                        span_s=span, stun=trace.stun(DOWN))
    try:
        client = data.getsockname()[:2]
    except OSError:
        client = ("", 0)
    return ReplayRun(kind, trace.transport, (str(client[0]), int(client[1])), server,
                     started, round(time.time() - started, 3), up, down,
                     answered=bool(log.received), failure=failure)
