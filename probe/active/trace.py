"""An app's call trace, as the replay test sends it, and its controls.

A trace is a pcap of one flow (one UDP 5-tuple, or one TCP connection for an app's TCP
fallback) between a client and a server (``captures/traces/``, see ``captures/README.md``).
The first packet comes from the client; that fixes which side is which. Each packet
keeps its time offset, its direction (``up``: client to server, ``down``) and its
payload bytes, which are what deep packet inspection keys on.

The controls (Wehe's method) are the same trace with every payload bit inverted (same
sizes and timing, no signature left) and the original trace sent between random high
ports. Payloads are unique within each direction, so a receiver tells which trace packet
arrived from its bytes alone (:meth:`Trace.index`): the replay adds nothing to the wire.

Errors: :class:`TraceError` for a file that is not a usable trace (unreadable, no
packets, not one flow, repeated payloads), with the reason.
"""

from __future__ import annotations

import hashlib
import io
import random
from dataclasses import dataclass, field
from pathlib import Path

import dpkt

from probe.active.records import ReplayKind

__all__ = ["DOWN", "STUN_MAGIC_COOKIE", "UP", "Trace", "TraceError", "TracePacket", "invert",
           "is_stun", "load_trace", "random_port"]

UP = "up"
"""Client to server."""
DOWN = "down"
"""Server to client."""

RANDOM_PORT_RANGE = (20000, 60999)
"""Where the random-ports control picks its ports: above the well-known and registered
ports apps use for media (3478-3497, 8801-8810, 19302-19309, ...) and below the usual
ephemeral range."""


class TraceError(Exception):
    """A file that is not a usable replay trace."""


@dataclass(frozen=True, slots=True)
class TracePacket:
    """One packet of a trace."""

    t_s: float
    """Offset from the trace's first packet."""
    direction: str
    """``up`` or ``down``."""
    payload: bytes
    """The transport payload, as recorded."""


def invert(payload: bytes) -> bytes:
    """Every bit of ``payload`` inverted (the inverted control's payload)."""
    return bytes(b ^ 0xFF for b in payload)


STUN_MAGIC_COOKIE = b"\x21\x12\xa4\x42"
"""RFC 8489 §5: the fixed second word of every STUN message."""


def is_stun(payload: bytes) -> bool:
    """Whether ``payload`` is a STUN message (RFC 8489 §5: two zero bits, a length that
    is a multiple of 4 and fits, the magic cookie at offset 4)."""
    return (len(payload) >= 20 and payload[0] < 0x40 and payload[4:8] == STUN_MAGIC_COOKIE
            and int.from_bytes(payload[2:4], "big") % 4 == 0
            and 20 + int.from_bytes(payload[2:4], "big") <= len(payload))


def random_port(rng: random.Random | None = None) -> int:
    """A port for the random-ports control, from :data:`RANDOM_PORT_RANGE`."""
    r = rng if rng is not None else random.SystemRandom()
    return r.randint(*RANDOM_PORT_RANGE)


@dataclass(frozen=True, slots=True)
class Trace:
    """One app's trace: its packets in time order, and what identifies it."""

    name: str
    """The file's stem (``whatsapp``, ``zoom-tcp``)."""
    app: str
    """The app (the name without a ``-tcp`` suffix)."""
    transport: str
    """``udp`` or ``tcp``."""
    sha256: str
    """SHA-256 of the trace file: client and server check they replay the same trace."""
    client_port: int
    server_port: int
    packets: tuple[TracePacket, ...]
    _index: dict[tuple[str, bool], dict[bytes, int]] = field(
        default_factory=dict, compare=False, repr=False)

    @property
    def ident(self) -> str:
        """``name@sha256``, as a measurement names its trace."""
        return f"{self.name}@{self.sha256}"

    @property
    def duration_s(self) -> float:
        return self.packets[-1].t_s if self.packets else 0.0

    def bytes_in(self, direction: str | None = None) -> int:
        """Payload bytes of one direction (or both)."""
        return sum(len(p.payload) for p in self.packets
                   if direction is None or p.direction == direction)

    def rate_bps(self) -> float:
        """Mean payload rate of both directions together, bits per second."""
        return 8.0 * self.bytes_in() / max(self.duration_s, 1e-3)

    def cut(self, seconds: float) -> Trace:
        """The trace's first ``seconds`` (a shorter test; same name and checksum, since
        both ends cut the same file the same way)."""
        kept = tuple(p for p in self.packets if p.t_s <= seconds)
        return Trace(self.name, self.app, self.transport, self.sha256, self.client_port,
                     self.server_port, kept)

    def payloads(self, direction: str, kind: ReplayKind) -> list[tuple[int, float, bytes]]:
        """``(index, t_s, payload)`` of one direction as ``kind`` sends it; the index
        counts packets of that direction from 0."""
        flip = kind is ReplayKind.INVERTED
        out: list[tuple[int, float, bytes]] = []
        for p in self.packets:
            if p.direction == direction:
                out.append((len(out), p.t_s, invert(p.payload) if flip else p.payload))
        return out

    def stun(self, direction: str) -> tuple[int, ...]:
        """Indices of the STUN messages among ``direction``'s packets."""
        return tuple(i for i, _, p in self.payloads(direction, ReplayKind.ORIGINAL)
                     if is_stun(p))

    def index(self, direction: str, kind: ReplayKind) -> dict[bytes, int]:
        """Payload -> index of the packets of ``direction`` as ``kind`` sends them."""
        key = (direction, kind is ReplayKind.INVERTED)
        got = self._index.get(key)
        if got is None:
            got = {payload: i for i, _, payload in self.payloads(direction, kind)}
            self._index[key] = got
        return got


def load_trace(path: str | Path) -> Trace:
    """Read a trace pcap (Ethernet, IPv4 or IPv6, one UDP flow or one TCP connection)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read the trace: {exc.strerror or exc}") from exc
    try:
        reader = dpkt.pcap.Reader(io.BytesIO(data))
        records = list(reader)
        linktype = reader.datalink()
    except (ValueError, dpkt.dpkt.Error) as exc:
        raise TraceError(f"{path}: not a pcap file: {exc}") from exc
    if linktype != dpkt.pcap.DLT_EN10MB:
        raise TraceError(f"{path}: link type {linktype}, a trace is Ethernet (1)")
    name = path.name.removesuffix(".pcap")
    packets: list[TracePacket] = []
    ends: tuple[tuple[bytes, int], tuple[bytes, int]] | None = None
    transport = ""
    t0 = 0.0
    for frame, (ts, buf) in enumerate(records, 1):
        try:
            eth = dpkt.ethernet.Ethernet(buf)
        except dpkt.dpkt.Error as exc:
            raise TraceError(f"{path}: frame {frame}: {exc}") from exc
        ip = eth.data
        if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
            raise TraceError(f"{path}: frame {frame} is not IP")
        l4 = ip.data
        if isinstance(l4, dpkt.udp.UDP):
            proto = "udp"
        elif isinstance(l4, dpkt.tcp.TCP):
            proto = "tcp"
        else:
            raise TraceError(f"{path}: frame {frame} is neither UDP nor TCP")
        src, dst = (bytes(ip.src), int(l4.sport)), (bytes(ip.dst), int(l4.dport))
        if ends is None:
            ends, transport, t0 = (src, dst), proto, float(ts)
        if proto != transport or {src, dst} != set(ends):
            raise TraceError(f"{path}: frame {frame} is not of the trace's one flow")
        payload = bytes(l4.data)
        if not payload:
            continue  # TCP handshakes and pure ACKs: the replay's own connection has them
        packets.append(TracePacket(float(ts) - t0, UP if src == ends[0] else DOWN, payload))
    if ends is None or not packets:
        raise TraceError(f"{path}: no packets with a payload")
    for direction in (UP, DOWN):
        mine = [p.payload for p in packets if p.direction == direction]
        if transport == "udp" and len(set(mine)) != len(mine):
            raise TraceError(f"{path}: repeated {direction} payloads: a receiver could not "
                             "tell those packets apart")
    if packets[0].direction != UP:
        raise TraceError(f"{path}: the first packet must come from the client")
    app = name.removesuffix("-tcp")
    return Trace(name, app, transport, hashlib.sha256(data).hexdigest(), ends[0][1],
                 ends[1][1], tuple(packets))

