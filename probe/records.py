"""The probe's record schema: what a finished flow looks like downstream.

``FlowRecord`` is the one schema for a finished flow, in the spirit of Zeek's
conn.log: field names state direction and unit. Every later stage refers to a
flow by ``uid``. Per-packet detail the later stages need (first payloads, a
timing series, a per-second rate series, RTP header samples) travels with the
record as compact arrays so nobody has to keep every packet.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final, NamedTuple, overload

import numpy as np
import numpy.typing as npt

from probe.speed import slots_maker

__all__ = [
    "NO_TIMING",
    "ORIG",
    "RESP",
    "FlowRecord",
    "IcmpNotice",
    "PayloadSample",
    "PayloadSamples",
    "RtpSeries",
    "RtpStream",
    "TcpFlag",
    "Weird",
    "conn_row",
    "conn_state",
]

ORIG = 0
"""Direction code: packet sent by the originator."""
RESP = 1
"""Direction code: packet sent by the responder."""


class TcpFlag:
    """TCP header flag bits (RFC 9293 section 3.1; ECE and CWR: RFC 3168 section 6.1), as
    ``FlowRecord.orig_flags``/``resp_flags`` and the timing series hold them. Plain ints,
    not an ``IntFlag``: they are tested per packet, where an ``IntFlag`` operation costs
    seventy times an ``int`` one."""

    FIN: Final = 0x01
    SYN: Final = 0x02
    RST: Final = 0x04
    PSH: Final = 0x08
    ACK: Final = 0x10
    URG: Final = 0x20
    ECE: Final = 0x40
    CWR: Final = 0x80


@dataclass(frozen=True, slots=True)
class Weird:
    """A packet (or part of one) the probe could not decode; counted, never fatal."""

    frame: int
    """1-based position of the packet in the capture (0 for file-level problems)."""
    ts: float
    """Capture timestamp of the packet, seconds since the epoch."""
    layer: str
    """Protocol layer that failed (``"ipv4"``, ``"tcp"``, ``"pcapng"``...)."""
    offset: int
    """Byte offset inside the packet (or file) where decoding failed."""
    reason: str
    """Short machine-friendly name, e.g. ``"truncated"``, ``"bad-ihl"``."""
    uid: str | None = None
    """Flow the packet belonged to, when the outer layers were enough to tell."""

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "ts": self.ts, "layer": self.layer,
                "offset": self.offset, "reason": self.reason, "uid": self.uid}


@dataclass(frozen=True, slots=True)
class IcmpNotice:
    """An ICMP/ICMPv6 error that quoted one of this flow's packets."""

    frame: int
    """1-based position of the ICMP packet in the capture."""
    ts: float
    """When it arrived, seconds since the epoch."""
    family: int
    """4 for ICMP, 6 for ICMPv6."""
    type: int
    """ICMP type (3 unreachable, 11 time exceeded; v6: 1, 3...)."""
    code: int
    """ICMP code (e.g. 3 port unreachable, 13 administratively prohibited)."""
    reporter: str
    """Address of the host that sent the error."""

    def to_dict(self) -> dict[str, Any]:
        return {"frame": self.frame, "ts": self.ts, "family": self.family, "type": self.type,
                "code": self.code, "reporter": self.reporter}


class PayloadSample(NamedTuple):
    """One of the first transport payloads of a flow, kept for inspection."""

    frame: int
    """1-based position of the packet in the capture."""
    ts: float
    """Capture timestamp, seconds since the epoch."""
    direction: int
    """``ORIG`` or ``RESP``."""
    data: bytes
    """The transport payload as captured (may be shorter than on the wire)."""


Column = Sequence[int] | npt.NDArray[Any]
"""A column of integers: a sequence or a numpy array."""

_new_tuple = tuple.__new__


def _as_list(column: Column) -> list[Any]:
    """A column's values as Python objects (``tolist`` converts a numpy array in one go)."""
    return column.tolist() if isinstance(column, np.ndarray) else list(column)


@functools.lru_cache(maxsize=256)
def no_offsets(n: int) -> npt.NDArray[np.int64]:
    """``n`` zeros, read-only and shared: the offsets and lengths of ``n`` samples whose
    bytes were dropped (one array for every light flow with as many samples, not one
    each)."""
    zeros = np.zeros(n, np.int64)
    zeros.flags.writeable = False
    return zeros


class PayloadSamples(Sequence[PayloadSample]):
    """A flow's payload samples: columns over one byte pool, items made on demand.

    Behaves as a read-only sequence of :class:`PayloadSample`; keeping the
    samples as columns costs the probe one object per flow instead of one per
    sample.
    """

    __slots__ = ("_dir", "_frame", "_len", "_off", "_pool", "_ts")

    def __init__(self, pool: bytes = b"", frame: Column = (), ts_ns: Column = (),
                 direction: Column = (), off: Column = (), length: Column = ()) -> None:
        self._pool = pool
        self._frame = frame
        self._ts = ts_ns
        self._dir = direction
        self._off = off
        self._len = length

    def __len__(self) -> int:
        return len(self._frame)

    @property
    def has_data(self) -> bool:
        """False once the payload bytes have been dropped (:meth:`without_data`)."""
        return bool(self._pool)

    def without_data(self) -> PayloadSamples:
        """The same samples (frames, times, directions) with empty payload bytes."""
        zeros = no_offsets(len(self._frame))
        return PayloadSamples(b"", self._frame, self._ts, self._dir, zeros, zeros)

    def _item(self, i: int) -> PayloadSample:
        o = int(self._off[i])
        return PayloadSample(int(self._frame[i]), int(self._ts[i]) / 1e9, int(self._dir[i]),
                             bytes(self._pool[o:o + int(self._len[i])]))

    @overload
    def __getitem__(self, i: int) -> PayloadSample: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[PayloadSample, ...]: ...

    def __getitem__(self, i: int | slice) -> PayloadSample | tuple[PayloadSample, ...]:
        if isinstance(i, slice):
            return tuple(self._item(k) for k in range(*i.indices(len(self))))
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("payload sample index out of range")
        return self._item(i)

    def __iter__(self) -> Iterator[PayloadSample]:
        return iter(self.items())

    def items(self) -> tuple[PayloadSample, ...]:
        """Every sample at once (columns converted in one go: what an inspector wants)."""
        if not len(self._frame):
            return ()
        pool = self._pool
        rows = zip(_as_list(self._frame), _as_list(self._ts), _as_list(self._dir),
                   _as_list(self._off), _as_list(self._len), strict=True)
        # tuple.__new__ is what the NamedTuple's constructor calls, minus a Python-level
        # call; the pool is bytes, so a slice is bytes already
        return tuple([_new_tuple(PayloadSample, (f, t / 1e9, d, pool[o:o + n]))
                      for f, t, d, o, n in rows])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence):
            return NotImplemented
        return tuple(self) == tuple(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PayloadSamples({list(self)!r})"


@dataclass(frozen=True, slots=True)
class RtpSeries:
    """RTP header fields, packet by packet, of the first RTP packets of a flow.

    All arrays have one entry per RTP packet in arrival order. ``offset`` is
    where the RTP header began inside the UDP payload (0 plain, more inside a
    framing the payload policy declares, :mod:`probe.plugins`).
    """

    ts: npt.NDArray[np.float64]
    """Arrival time, seconds since the epoch."""
    direction: npt.NDArray[np.uint8]
    """``ORIG`` or ``RESP`` per packet."""
    seq: npt.NDArray[np.uint16]
    """RTP sequence number."""
    rtp_ts: npt.NDArray[np.uint32]
    """RTP media timestamp."""
    ssrc: npt.NDArray[np.uint32]
    """Synchronisation source."""
    pt: npt.NDArray[np.uint8]
    """Payload type (7 bits)."""
    marker: npt.NDArray[np.uint8]
    """Marker bit."""
    size: npt.NDArray[np.uint16]
    """UDP payload length."""
    offset: npt.NDArray[np.uint8]
    """Where the RTP header began in the UDP payload."""
    frame: npt.NDArray[np.int64]
    """1-based capture position of each packet."""
    truncated: bool = False
    """True if the flow had more RTP packets than were kept here (see ``rtp_streams``)."""

    def __len__(self) -> int:
        return int(self.ts.shape[0])


@dataclass(frozen=True, slots=True, eq=False)
class RtpStream:
    """One RTP stream (direction and SSRC) of a flow, judged over the flow's whole life.

    Kept as running state by the probe (RFC 3550 §A.1 extended sequence numbers,
    §6.4.1 jitter), so its size does not grow with the number of packets.
    """

    direction: int
    """``ORIG`` or ``RESP``."""
    ssrc: int
    """Synchronisation source."""
    pt: int
    """Payload type of the last packet (with silence suppression, speech and comfort noise
    alternate under one SSRC: ``cn_packets`` says how much of the stream was noise)."""
    clock_hz: int
    """RTP clock rate (static payload type or estimated); 0 if unknown."""
    packets: int
    """Packets received."""
    bytes: int
    """UDP payload bytes received."""
    cn_packets: int
    """Packets received that carried comfort noise (static payload type 13, RFC 3389):
    the noise a sender with silence suppression sends instead of speech. Counted per
    packet over the whole life, since such a sender interleaves it with its speech."""
    first_ext_seq: int
    """Extended sequence number of the first packet."""
    max_ext_seq: int
    """Highest extended sequence number seen."""
    reordered: int
    """Packets that arrived after one with a higher sequence number."""
    jitter_s: float
    """RFC 3550 interarrival jitter estimate at the end, in seconds."""
    first_ts: float
    """Arrival of the first packet."""
    last_ts: float
    """Arrival of the last packet."""
    seconds: npt.NDArray[np.float64]
    """One row per second with packets: ``(second, packets, bytes, max_ext_seq, reordered,
    jitter_s, transit_min_s, transit_max_s)``; transit = arrival − RTP time, relative to the
    first packet (NaN while the clock rate is unknown)."""

    @property
    def expected(self) -> int:
        """Packets the sequence numbers say were sent (RFC 3550 §A.3)."""
        return self.max_ext_seq - self.first_ext_seq + 1

    @property
    def lost(self) -> int:
        """Expected minus received (negative with duplicates)."""
        return self.expected - self.packets

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "ssrc": self.ssrc, "pt": self.pt,
                "clock_hz": self.clock_hz, "packets": self.packets, "bytes": self.bytes,
                "cn_packets": self.cn_packets, "expected": self.expected, "lost": self.lost,
                "reordered": self.reordered, "jitter_s": round(self.jitter_s, 6),
                "first_ts": self.first_ts, "last_ts": self.last_ts}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """A finished bidirectional flow."""

    uid: str
    """Deterministic id: the same capture gives the same uids on every run and by every
    entry point; the capture's identity (its first packet) is part of it
    (docs/ARCHITECTURE.md)."""
    proto: str
    """Transport protocol, lowercase: ``tcp``, ``udp``, ``icmp``, ``icmpv6``, ``sctp``..."""
    ip_version: int
    """4 or 6."""
    orig_h: str
    """Originator address (the side that sent the first packet; the SYN sender for TCP)."""
    orig_p: int
    """Originator port (0 where the protocol has none)."""
    resp_h: str
    """Responder address."""
    resp_p: int
    """Responder port."""
    first_ts: float
    """Timestamp of the first packet, seconds since the epoch."""
    last_ts: float
    """Timestamp of the last packet."""
    orig_pkts: int
    """Packets sent by the originator."""
    orig_bytes: int
    """Transport payload bytes sent by the originator (Zeek's meaning)."""
    orig_wire_bytes: int
    """Frame bytes on the wire sent by the originator (what tshark counts)."""
    resp_pkts: int
    """Packets sent by the responder."""
    resp_bytes: int
    """Transport payload bytes sent by the responder."""
    resp_wire_bytes: int
    """Frame bytes on the wire sent by the responder."""
    orig_flags: int
    """TCP flags seen from the originator, OR-ed (0 for non-TCP)."""
    resp_flags: int
    """TCP flags seen from the responder, OR-ed."""
    orig_retrans: int
    """Originator TCP segments whose data had been seen before."""
    resp_retrans: int
    """Responder TCP segments whose data had been seen before."""
    first_frame: int
    """1-based capture position of the first packet."""
    last_frame: int
    """1-based capture position of the last packet."""
    end_reason: str
    """Why the flow ended: ``idle``, ``active``, ``tcp-close``, ``port-reuse``, ``evicted``,
    ``eof``, or ``clock-step`` (the next packet of its key was stamped more than the idle
    timeout before its newest packet)."""
    vlan: int | None = None
    """Outermost 802.1Q VLAN id, when tagged."""
    tunnel: str | None = None
    """Innermost encapsulation crossed (``gre``, ``vxlan``, ``gtpu``, ``mpls``...)."""
    orig_l2_addr: str | None = None
    """Link-layer (MAC) address the originator's side carried in the flow's first packet
    (Zeek's ``orig_l2_addr``); None when the link layer has none or does not say."""
    resp_l2_addr: str | None = None
    """Link-layer address of the responder's side in the flow's first packet."""
    orig_missed_bytes: int = 0
    """TCP payload bytes the originator sent that the capture never showed, though the
    responder acknowledged them (Zeek's ``missed_bytes``, this direction's share): lost by
    the capture, or a tap that sees one direction only. A lower bound; 0 for other
    protocols."""
    resp_missed_bytes: int = 0
    """TCP payload bytes the responder sent that the capture never showed, though the
    originator acknowledged them."""
    icmp: tuple[IcmpNotice, ...] = ()
    """ICMP errors that quoted this flow's packets."""
    weirds: tuple[Weird, ...] = ()
    """Decoding problems in this flow's packets."""
    payloads: Sequence[PayloadSample] = ()
    """The first N payload-carrying packets per direction (later ones cut short)."""
    pkt_ts: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0))
    """Timing series: arrival time of the first M packets."""
    pkt_len: npt.NDArray[np.int32] = field(default_factory=lambda: np.zeros(0, np.int32))
    """Timing series: transport payload length of the first M packets."""
    pkt_dir: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))
    """Timing series: direction of the first M packets."""
    pkt_flags: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, np.uint8))
    """Timing series: TCP flags of the first M packets (0 for non-TCP)."""
    rate: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 5), np.int64))
    """Per-second series for the whole life: rows ``(second, orig_pkts, orig_wire_bytes,
    resp_pkts, resp_wire_bytes)``; ``second`` is whole seconds since the epoch; seconds
    without packets are absent."""
    rtp: RtpSeries | None = None
    """Per-packet RTP header fields of the first packets (``MeterConfig.rtp_detail_packets``)
    of a flow that carries RTP (None in a light record, :meth:`lightened`)."""
    rtp_streams: tuple[RtpStream, ...] = ()
    """Every RTP stream of the flow, judged over its whole life."""

    @property
    def duration_s(self) -> float:
        """Seconds between the first and the last packet."""
        return self.last_ts - self.first_ts

    @property
    def conn_state(self) -> str:
        """Zeek's summary of the connection's fate (S0, SF, REJ...); see
        :func:`conn_state`."""
        return conn_state(self.proto, self.orig_flags, self.resp_flags, self.resp_pkts,
                          self.resp_bytes)

    def lightened(self) -> FlowRecord:
        """This record as later stages keep it once the classifier has observed it: payload
        samples without their bytes (frames, times and directions stay citable), no
        per-packet timing series and no per-packet RTP series (:attr:`rtp`, which only the
        classifier's media guess reads); counters, the rate series and the RTP streams
        (:attr:`rtp_streams`, what call quality is measured from) are kept. A record that
        is light already is returned as it is."""
        pay = self.payloads
        light: Sequence[PayloadSample]
        if isinstance(pay, PayloadSamples):
            if not pay.has_data and self.rtp is None and not (
                    len(self.pkt_ts) or len(self.pkt_len) or len(self.pkt_dir)
                    or len(self.pkt_flags)):
                return self
            light = pay.without_data()
        else:
            light = tuple(p._replace(data=b"") for p in pay)
        # a positional copy through new_record, not dataclasses.replace: done per flow
        values = list(_record_values(self))
        values[_PAYLOADS_AT] = light
        values[_RTP_AT] = None
        for at, empty in _TIMING_EMPTY:
            values[at] = empty
        return new_record(*values)

    def conn_dict(self) -> dict[str, Any]:
        """The conn.log columns as plain JSON-ready values (:func:`conn_row`)."""
        return conn_row(
            self.uid, self.proto, self.ip_version, self.orig_h, self.orig_p, self.resp_h,
            self.resp_p, self.first_ts, self.last_ts, self.orig_pkts, self.orig_bytes,
            self.orig_wire_bytes, self.resp_pkts, self.resp_bytes, self.resp_wire_bytes,
            self.orig_flags, self.resp_flags, self.orig_retrans, self.resp_retrans,
            self.first_frame, self.last_frame, self.end_reason, self.vlan, self.tunnel,
            self.icmp, len(self.weirds), len(self.rtp_streams), self.orig_l2_addr,
            self.resp_l2_addr, self.orig_missed_bytes, self.resp_missed_bytes)


def conn_row(uid: str, proto: str, ip_version: int, orig_h: str, orig_p: int, resp_h: str,
             resp_p: int, first_ts: float, last_ts: float, orig_pkts: int, orig_bytes: int,
             orig_wire_bytes: int, resp_pkts: int, resp_bytes: int, resp_wire_bytes: int,
             orig_flags: int, resp_flags: int, orig_retrans: int, resp_retrans: int,
             first_frame: int, last_frame: int, end_reason: str, vlan: int | None,
             tunnel: str | None, icmp: Sequence[IcmpNotice], weirds: int,
             rtp_streams: int, orig_l2_addr: str | None = None,
             resp_l2_addr: str | None = None, orig_missed_bytes: int = 0,
             resp_missed_bytes: int = 0) -> dict[str, Any]:
    """A flow's conn.log row (what ``marsad flows`` prints), from its
    :class:`FlowRecord` fields; ``weirds`` and ``rtp_streams`` are counts. The one place
    the row's keys, order and rounding are written: a record's :meth:`FlowRecord.conn_dict`
    and the meter's rows made straight from its columns both come here."""
    return {
        "uid": uid, "proto": proto, "ip_version": ip_version,
        "orig_h": orig_h, "orig_p": orig_p, "resp_h": resp_h, "resp_p": resp_p,
        "first_ts": round(first_ts, 6), "last_ts": round(last_ts, 6),
        "duration_s": round(last_ts - first_ts, 6),
        "orig_pkts": orig_pkts, "orig_bytes": orig_bytes, "orig_wire_bytes": orig_wire_bytes,
        "resp_pkts": resp_pkts, "resp_bytes": resp_bytes, "resp_wire_bytes": resp_wire_bytes,
        "conn_state": conn_state(proto, orig_flags, resp_flags, resp_pkts, resp_bytes),
        "orig_retrans": orig_retrans, "resp_retrans": resp_retrans,
        "orig_missed_bytes": orig_missed_bytes, "resp_missed_bytes": resp_missed_bytes,
        "first_frame": first_frame, "last_frame": last_frame, "end_reason": end_reason,
        "vlan": vlan, "tunnel": tunnel, "icmp": [n.to_dict() for n in icmp],
        "weirds": weirds, "rtp_streams": rtp_streams,
        "orig_l2_addr": orig_l2_addr, "resp_l2_addr": resp_l2_addr,
    }


def conn_state(proto: str, orig_flags: int, resp_flags: int, resp_pkts: int,
               resp_bytes: int = 0) -> str:
    """Zeek's ``conn_state`` of a flow, as Zeek's ``Conn::conn_state`` gives it.

    TCP: S0 SYN without reply; REJ SYN answered by RST (and nothing else: a responder
    that sent payload, ``resp_bytes``, or an originator that acknowledged something had
    the connection set up, and the capture missed the SYN-ACK; Zeek too says REJ only
    while the originator is still at its SYN or neither side sent data); S1
    established, not closed;
    SF normal close; RSTO/RSTR reset by originator/responder after set-up;
    SH originator SYN+FIN without responder; OTH no SYN seen.
    UDP: SF both sides sent, S0 only the originator did. (Zeek also has SHR, only the
    responder sent, and OTH, neither: the originator here is the sender of the first
    packet, so it has always sent.) Any other protocol: OTH.
    """
    if proto == "udp":
        return "SF" if resp_pkts else "S0"
    if proto != "tcp":
        return "OTH"
    o, r = orig_flags, resp_flags
    syn, fin, rst, ack = TcpFlag.SYN, TcpFlag.FIN, TcpFlag.RST, TcpFlag.ACK
    if not o & syn:
        return "OTH"
    if resp_pkts == 0:
        return "SH" if o & fin else ("RSTOS0" if o & rst else "S0")
    if r & rst and not r & syn:
        return "REJ" if resp_bytes == 0 and not o & ack else "RSTR"
    established = bool(r & syn and r & ack)
    if not established:
        return "OTH"
    if o & rst:
        return "RSTO"
    if r & rst:
        return "RSTR"
    if o & fin and r & fin:
        return "SF"
    if o & fin or r & fin:
        return "S3" if r & fin else "S2"
    return "S1"


_FIELD_NAMES = tuple(f.name for f in fields(FlowRecord))
_record_values = operator.attrgetter(*_FIELD_NAMES)

_PAYLOADS_AT = _FIELD_NAMES.index("payloads")
_RTP_AT = _FIELD_NAMES.index("rtp")
NO_TIMING = (np.zeros(0, np.float64), np.zeros(0, np.int32), np.zeros(0, np.uint8),
             np.zeros(0, np.uint8))
"""A light record's ``pkt_ts``, ``pkt_len``, ``pkt_dir`` and ``pkt_flags`` (shared, read-only)."""
for _empty in NO_TIMING:
    _empty.flags.writeable = False
_TIMING_EMPTY = tuple(zip((_FIELD_NAMES.index(name)
                           for name in ("pkt_ts", "pkt_len", "pkt_dir", "pkt_flags")),
                          NO_TIMING, strict=True))


new_record: Callable[..., FlowRecord] = slots_maker(FlowRecord)
"""``FlowRecord(*values)``, values in field order, without the generated ``__init__``
(:func:`probe.speed.slots_maker`): the probe builds one for every flow."""
