"""The flow meter: decoded packet columns in, finished :class:`FlowRecord` out.

The flow table is a structure of numpy arrays indexed by slot, plus one dict
from the canonical flow key to its slot. A batch of packets is metered in a
handful of vectorised steps:

1. every packet gets a direction-free key (:func:`canonical_key`: the lower
   endpoint first) and a side bit (did the lower endpoint send it?);
2. packets are grouped by key and cut into *segments*, one per flow instance:
   an idle gap longer than the protocol's timeout, a flow older than the
   active timeout, or a TCP SYN that reuses a closed connection's ports starts
   a new flow (the last two are checked packet by packet, only for the few
   groups where they can apply);
3. per segment and side, counters are summed with ``bincount`` and added to
   the table rows; the first packets of each flow (payload samples, timing
   series), per-second rate rows and RTP header fields are appended to logs
   keyed by flow serial number, and gathered when the flow ends.

Only the first ``payload_samples`` payloads per direction are copied out of the
capture buffer; the packet loop never builds an object per packet.

Timeouts (defaults follow common practice: Zeek/nfstream orders of magnitude):
UDP idle 120 s, TCP idle 300 s, other protocols 60 s, active 1800 s, and a TCP
connection closed by FIN in both directions or by RST is ended after
``tcp_close_s`` (10 s) of silence or when a new SYN reuses its ports.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, SupportsIndex

import numpy as np
import numpy.typing as npt

from probe.decode import Decoded, join_addr, split_addr
from probe.flowkey import (
    KEY_BYTES,
    KEY_WIDTH,
    PROTO_NAMES,
    key_ports,
    key_proto,
    key_row,
    pack_addr,
    ports_word_fields,
)
from probe.layers import TUNNEL_NAMES, IcmpQuote, WeirdInfo
from probe.plugins import NEUTRAL, PayloadPolicy
from probe.prepare import SPLIT_CLOCK, SPLIT_IDLE, Prepared, prepare, seg_rank
from probe.records import (
    NO_TIMING,
    FlowRecord,
    IcmpNotice,
    PayloadSamples,
    RtpSeries,
    RtpStream,
    TcpFlag,
    Weird,
    conn_row,
    new_record,
    no_offsets,
)
from probe.rtpstate import RtpStreams, StreamState
from probe.sources import MAX_DECOMPRESSED, RawBatch
from probe.speed import out_of_band

__all__ = ["NO_OPEN_FLOWS", "EndStarts", "Ended", "FlowMeter", "MeterConfig", "MeterStats",
           "OpenFlows", "build_records", "conn_rows"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """Flow metering settings."""

    udp_idle_s: float = 120.0
    """A UDP flow ends after this long without packets."""
    tcp_idle_s: float = 300.0
    """A TCP flow ends after this long without packets."""
    other_idle_s: float = 60.0
    """ICMP and other protocols end after this long without packets."""
    tcp_close_s: float = 10.0
    """A TCP flow closed by FIN both ways or by RST ends after this long without packets."""
    active_s: float = 1800.0
    """A flow older than this is ended and continued as a new flow."""
    max_flows: int = 2_000_000
    """Table size bound; beyond it the least recently active flows are evicted."""
    payload_samples: int = 8
    """Payload-carrying packets kept per direction for inspection."""
    payload_snap: int = 2048
    """Bytes kept of each of the first ``payload_full`` samples per direction (handshakes)."""
    signal_samples: int = 64
    """Further payloads the payload policy keeps whole (``payloads.keep_whole``: the
    classifier's SIP messages, RTCP reports and STUN other than media indications) kept
    per direction beyond ``payload_samples``: what they say may come late in a flow."""
    payload_full: int = 3
    """Samples per direction kept up to ``payload_snap`` bytes; later ones are cut shorter."""
    payload_tail_snap: int = 256
    """Bytes kept of the later samples (headers of STUN, RTP, SIP start lines...)."""
    timing_packets: int = 64
    """Packets per flow kept in the (timestamp, size, direction) timing series."""
    rtp_detail_packets: int = 2000
    """RTP packets per flow kept one by one (``FlowRecord.rtp``, 20 s of a two-way 50 pps
    call); every packet still counts in the whole-life ``FlowRecord.rtp_streams``."""
    rtp_quality: bool = True
    """Whether the whole-life streams carry their timing figures (clock, jitter, transit,
    per-second rows: what the classifier and the calls read). Without, a stream says only
    that it is one, its packets, bytes and sequence figures: what the conn.log columns
    count, all that ``marsad flows`` prints unless asked for samples."""
    max_decompressed_bytes: int = MAX_DECOMPRESSED
    """Most bytes a gzip-compressed capture is read to once decompressed (64 GiB); beyond,
    reading stops as at damage (what came before is kept, the offset is named)."""
    payloads: PayloadPolicy = NEUTRAL
    """Which payloads are kept whole beyond ``payload_samples`` and where RTP headers sit
    inside framings: declared by the classifier (:mod:`probe.plugins`); the default knows
    no application (plain RTP only, nothing kept whole)."""
    origin: bytes = b""
    """The identity of the capture this input belongs to, when it is not the input's own
    first packet: a file of a live capture's ring continues the stream the probe read,
    whose first packet named its flows (:func:`probe.ring.ring_origin`). Empty: the first
    packet metered."""
    chunk_size: int = 8 << 20
    """Bytes of capture read per batch: larger batches spread the per-batch work over more
    packets, smaller ones hold less in the reader process (one chunk, its columns and the
    batch in flight)."""

    def timeout_s(self, rec: FlowRecord) -> float:
        """How long the table keeps a flow like ``rec`` after its last packet: the idle
        timeout of its protocol, or ``tcp_close_s`` once a TCP flow was closed."""
        if rec.end_reason == "tcp-close":
            return self.tcp_close_s
        if rec.proto == "udp":
            return self.udp_idle_s
        if rec.proto == "tcp":
            return self.tcp_idle_s
        return self.other_idle_s


@dataclass(slots=True)
class MeterStats:
    """Counters over a whole run."""

    packets: int = 0
    """Packet records read."""
    metered: int = 0
    """Packets counted into a flow."""
    non_ip: int = 0
    """Packets that were not IP (ARP, LLDP...)."""
    weird: int = 0
    """Weirds recorded: packets with a decoding problem (some still counted in a flow) or a
    clock step."""
    clock_steps: int = 0
    """Packets stamped more than a second before the packet read just before them, or more
    than a day after it (the first few of each batch are recorded as weirds)."""
    slow_path: int = 0
    """Packets decoded by the per-packet decoder."""
    flows: int = 0
    """Flows emitted."""
    evicted: int = 0
    """Flows ended early because the table was full."""
    icmp_unmatched: int = 0
    """ICMP errors quoting a flow that was not in the table."""
    last_ts: float = 0.0
    """Timestamp of the newest packet seen."""


class _Log:
    """Rows appended per batch, keyed by flow serial, gathered when flows end.

    ``take`` touches each stored chunk once (a boolean lookup by serial) and copies out
    the rows asked for. The rows taken stay in their chunk, marked dead, until they are
    half of it: serials are never reused, so no later take asks for them, and copying
    every chunk's survivors at every take (most chunks lose a few flows each batch)
    would cost more than the dead rows weigh. Small chunks are merged now and then so
    their number stays bounded.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = (*names, "fid")
        self.chunks: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
        self.dead: list[npt.NDArray[np.bool_] | None] = []
        """Per chunk: its rows already taken (None: none)."""

    def add(self, fid: I64, **cols: np.ndarray) -> None:  # type: ignore[type-arg]
        if len(fid):
            cols["fid"] = fid
            self.chunks.append(cols)
            self.dead.append(None)
            if len(self.chunks) > 48:
                self.chunks = [{n: np.concatenate([self._live(i, n)
                                                   for i in range(len(self.chunks))])
                                for n in self.names}]
                self.dead = [None]

    def _live(self, i: int, name: str) -> np.ndarray:  # type: ignore[type-arg]
        d = self.dead[i]
        col = self.chunks[i][name]
        return col if d is None else col[~d]

    def take(self, fids: I64, lookup: npt.NDArray[np.bool_]
             ) -> tuple[dict[str, np.ndarray], I64, I64]:  # type: ignore[type-arg]
        """Remove and return the rows of ``fids`` (sorted; ``lookup[fid]`` is True for
        them), grouped by flow: (columns, start of each flow's rows, end)."""
        parts: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
        chunks: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
        deads: list[npt.NDArray[np.bool_] | None] = []
        for c, dead in zip(self.chunks, self.dead, strict=True):
            mask = lookup[c["fid"]]
            if not mask.any():
                chunks.append(c)
                deads.append(dead)
                continue
            parts.append({n: c[n][mask] for n in self.names})
            dead = mask if dead is None else dead | mask
            n_dead = int(np.count_nonzero(dead))
            if n_dead == len(dead):
                continue
            if 2 * n_dead > len(dead):
                keep = ~dead
                c, dead = {n: c[n][keep] for n in self.names}, None
            chunks.append(c)
            deads.append(dead)
        self.chunks, self.dead = chunks, deads
        if not parts:
            z = np.zeros(len(fids), dtype=np.int64)
            return {n: np.zeros(0, dtype=np.int64) for n in self.names}, z, z
        out = parts[0] if len(parts) == 1 else {
            n: np.concatenate([p[n] for p in parts]) for n in self.names}
        order = np.argsort(out["fid"], kind="stable")
        out = {n: v[order] for n, v in out.items()}
        starts = np.searchsorted(out["fid"], fids, side="left")
        ends = np.searchsorted(out["fid"], fids, side="right")
        return out, starts, ends

    def rows(self) -> int:
        """Rows not taken yet."""
        return sum(len(c["fid"]) - (0 if d is None else int(np.count_nonzero(d)))
                   for c, d in zip(self.chunks, self.dead, strict=True))


def _by_flow_side(sel: I64, seg_s: I64, seg_slot: I64, side_s: I64
                  ) -> tuple[I64, I64, I64, npt.NDArray[np.bool_]]:
    """The packets ``sel`` (sorted positions) grouped by flow and side, in batch order
    within each: their positions, table slots and sides, and which opens its group."""
    ss = seg_s[sel] * 2 + side_s[sel]
    o = np.argsort(ss, kind="stable")
    sel, ss = sel[o], ss[o]
    return sel, seg_slot[seg_s[sel]], side_s[sel], seg_rank(ss) == 0


MAX_ACKED_PER_PACKET = 2 * 65535
"""The most one segment can acknowledge that is new: delayed acknowledgements cover two
full segments (RFC 9293 §3.8.6.3), and a receive offload hands the stack segments of up
to 64 KiB."""

_UNSET_IS_MINUS_ONE = frozenset({"seq_base", "ack_base", "fid"})
"""Table columns whose empty value is -1 (a sequence or acknowledgement number not seen yet,
a free slot), not 0."""


@dataclass(slots=True)
class _Table:
    """Structure-of-arrays flow table; row = slot."""

    cap: int
    key: U64 = field(init=False)
    ipver: npt.NDArray[np.uint8] = field(init=False)
    orig_is_a: npt.NDArray[np.bool_] = field(init=False)
    first_ns: I64 = field(init=False)
    last_ns: I64 = field(init=False)
    first_frame: I64 = field(init=False)
    last_frame: I64 = field(init=False)
    pkts: I64 = field(init=False)
    pay: I64 = field(init=False)
    wire: I64 = field(init=False)
    flags: I64 = field(init=False)
    retrans: I64 = field(init=False)
    seq_base: I64 = field(init=False)
    seq_max: I64 = field(init=False)
    ack_base: I64 = field(init=False)
    ack_max: I64 = field(init=False)
    n_pay: I64 = field(init=False)
    n_timing: I64 = field(init=False)
    n_rtp: I64 = field(init=False)
    tunnel: npt.NDArray[np.uint8] = field(init=False)
    l2: U64 = field(init=False)
    fid: I64 = field(init=False)
    alive: npt.NDArray[np.bool_] = field(init=False)

    def __post_init__(self) -> None:
        c = self.cap
        self.key = np.zeros((c, KEY_WIDTH), dtype=np.uint64)
        self.ipver = np.zeros(c, dtype=np.uint8)
        self.orig_is_a = np.zeros(c, dtype=bool)
        self.first_ns = np.zeros(c, dtype=np.int64)
        self.last_ns = np.zeros(c, dtype=np.int64)
        self.first_frame = np.zeros(c, dtype=np.int64)
        self.last_frame = np.zeros(c, dtype=np.int64)
        self.pkts = np.zeros((c, 2), dtype=np.int64)
        self.pay = np.zeros((c, 2), dtype=np.int64)
        self.wire = np.zeros((c, 2), dtype=np.int64)
        self.flags = np.zeros((c, 2), dtype=np.int64)
        self.retrans = np.zeros((c, 2), dtype=np.int64)
        self.seq_base = np.full((c, 2), -1, dtype=np.int64)
        self.seq_max = np.zeros((c, 2), dtype=np.int64)
        self.ack_base = np.full((c, 2), -1, dtype=np.int64)
        self.ack_max = np.zeros((c, 2), dtype=np.int64)
        self.n_pay = np.zeros((c, 2), dtype=np.int64)
        self.n_timing = np.zeros(c, dtype=np.int64)
        self.n_rtp = np.zeros(c, dtype=np.int64)
        self.tunnel = np.zeros(c, dtype=np.uint8)
        self.l2 = np.zeros((c, 2), dtype=np.uint64)
        self.fid = np.full(c, -1, dtype=np.int64)
        self.alive = np.zeros(c, dtype=bool)

    def grow(self, need: int) -> None:
        new = max(self.cap * 2, need, 1024)
        for name in self.__dataclass_fields__:
            if name == "cap":
                continue
            old = getattr(self, name)
            shape = (new, *old.shape[1:])
            arr = np.zeros(shape, dtype=old.dtype)
            if name in _UNSET_IS_MINUS_ONE:
                arr[:] = -1
            arr[: self.cap] = old
            setattr(self, name, arr)
        self.cap = new

    def reset(self, slots: I64) -> None:
        for name in self.__dataclass_fields__:
            if name == "cap":
                continue
            arr = getattr(self, name)
            arr[slots] = -1 if name in _UNSET_IS_MINUS_ONE else 0


@functools.lru_cache(maxsize=65536)
def _addr_str(hi: int, lo: int) -> tuple[int, str]:
    ver, a = join_addr(hi, lo)
    if ver == 4:
        return 4, socket.inet_ntop(socket.AF_INET, a.to_bytes(4, "big"))
    return 6, socket.inet_ntop(socket.AF_INET6, a.to_bytes(16, "big"))


def _uid(parts: str) -> str:
    """``C`` + 17 hex digits of a BLAKE2b digest of ``parts`` (see :func:`_flow_ident`)."""
    return "C" + hashlib.blake2b(parts.encode(), digest_size=9).hexdigest()[:17]


class FlowMeter:
    """Meters batches of decoded packets into bidirectional flows.

    ``emit`` is called with each finished flow as soon as it ends (by timeout
    in capture time, TCP close, port reuse or eviction); :meth:`finish` ends
    the rest. Weirds that belong to no flow are kept in :attr:`weirds`.
    """

    def __init__(self, config: MeterConfig | None = None,
                 emit: Callable[[FlowRecord], None] | None = None) -> None:
        self.cfg = config or MeterConfig()
        self._emit = emit
        self.stats = MeterStats()
        self.weirds: list[Weird] = []
        self._t = _Table(1024)
        self._free: list[int] = list(range(1023, -1, -1))
        self._index: dict[bytes, int] = {}
        self._slot_key: dict[int, bytes] = {}
        self._next_fid = 0
        self._closed = np.zeros(1024, dtype=bool)
        self._timing = _Log(("ts", "len", "side", "flags"))
        self._rate = _Log(("sec", "pa", "wa", "pb", "wb"))
        self._rtp = _Log(("ts", "side", "seq", "rts", "ssrc", "pt", "mk", "size", "off",
                          "frame"))
        self._pay_log = _PayloadLog()
        self._streams = RtpStreams(quality=self.cfg.rtp_quality)
        self._icmp: dict[int, list[IcmpNotice]] = {}
        self._flow_weirds: dict[int, list[tuple[int, int, WeirdInfo]]] = {}
        self.idle_ns = np.full(256, int(self.cfg.other_idle_s * NS), dtype=np.int64)
        """Idle timeout per IP protocol number, in nanoseconds."""
        self.idle_ns[6] = int(self.cfg.tcp_idle_s * NS)
        self.idle_ns[17] = int(self.cfg.udp_idle_s * NS)
        self._idle_ns = self.idle_ns
        self.snaps = (self.cfg.payload_snap, self.cfg.payload_full, self.cfg.payload_tail_snap)
        """Payload sample sizes: (first samples, how many, later samples)."""
        self._active_ns = int(self.cfg.active_s * NS)
        self._close_ns = int(self.cfg.tcp_close_s * NS)
        self._ended: list[Ended] = []
        self._now = 0
        self._ts_last: int | None = None
        self.origin = self.cfg.origin
        """The capture's identity (:func:`~probe.prepare.capture_origin` of its first
        packet), part of every flow uid; empty until the first packet is metered."""

    # -- public ------------------------------------------------------------------
    def prepare(self, b: RawBatch, cols: Decoded) -> Prepared:
        """The table-independent part of metering a batch (may run in another process)."""
        p = prepare(b, cols, self._idle_ns, self.cfg.payload_samples, self.snaps,
                    self.cfg.payloads, self._ts_last)
        if len(b):
            self._ts_last = int(b.ts_ns[-1])
        return p

    def feed(self, b: RawBatch, cols: Decoded) -> list[FlowRecord]:
        """Meter one decoded batch; return the flows that ended during it."""
        return self.apply(self.prepare(b, cols))

    def apply(self, p: Prepared) -> list[FlowRecord]:
        """Meter one prepared batch; return the flows that ended during it."""
        return self._records(self.apply_gathered(p))

    def apply_gathered(self, p: Prepared) -> list[Ended]:
        """:meth:`apply`, with the flows that ended as columns (:func:`build_records` makes
        their records, :func:`conn_rows` their conn.log rows alone)."""
        self._ended = []
        if p.origin and not self.origin:
            self.origin = p.origin
        st = self.stats
        st.packets += p.packets
        st.slow_path += p.slow
        st.non_ip += p.non_ip
        st.weird += len(p.weirds)
        st.clock_steps += p.clock_steps
        if p.metered:
            st.metered += p.metered
            self._meter(p)
        else:
            self._attach_weirds(p, np.zeros(0, dtype=np.int64))
        for frame, ts, q in p.icmp:
            self._attach_icmp(frame, ts, q)
        if p.packets:
            self._now = max(self._now, p.ts_max)
            st.last_ts = self._now / NS
        self._expire(self._now)
        out, self._ended = self._ended, []
        return out

    def expire_until(self, now_s: float) -> list[FlowRecord]:
        """End the flows that are idle (or closed) as of ``now_s``, a clock that ran on past
        the newest packet (the wall clock on a quiet live link), and return them. The
        meter's own clock, the newest packet's time, is left as it is."""
        now = int(now_s * NS)
        if now <= self._now:
            return []
        self._ended = []
        self._expire(now)
        out, self._ended = self._ended, []
        return self._records(out)

    def finish(self) -> Iterator[FlowRecord]:
        """End every flow still in the table (end reason ``eof``), a few thousand at a time
        so the records need not all be in memory at once."""
        for e in self.finish_gathered():
            yield from self._records([e])

    def finish_gathered(self, chunk: int = 2048) -> Iterator[Ended]:
        """:meth:`finish`, with the flows as columns, ``chunk`` flows at a time."""
        slots = np.flatnonzero(self._t.alive)
        slots = slots[np.argsort(self._t.first_frame[slots], kind="stable")]
        for a in range(0, len(slots), chunk):
            part = slots[a:a + chunk]
            yield self._gather(part, ["eof"] * len(part))

    def _records(self, ended: list[Ended]) -> list[FlowRecord]:
        """The records of gathered flows, each handed to ``emit`` too."""
        recs = [r for e in ended for r in build_records(e)]
        if self._emit is not None:
            for rec in recs:
                self._emit(rec)
        return recs

    @property
    def now(self) -> float:
        """Capture time of the newest packet metered (seconds; 0 before any): flows quiet
        for longer than their timeout at this time have ended."""
        return self._now / NS

    def open_udp(self) -> OpenFlows:
        """The UDP flows still in the table: their endpoints and starts (a snapshot)."""
        t = self._t
        rows = np.flatnonzero(t.alive & (key_proto(t.key) == 17))
        k = t.key[rows]
        a_port, b_port = key_ports(k)
        return OpenFlows(k[:, 0].copy(), k[:, 1].copy(), a_port, k[:, 2].copy(), k[:, 3].copy(),
                         b_port, t.first_ns[rows] / NS)

    def active_flows(self) -> int:
        """Flows currently in the table."""
        return len(self._index)

    # -- metering ----------------------------------------------------------------
    def _meter(self, p: Prepared) -> I64:
        """Apply a prepared batch to the table (its weirds too); return each packet's flow
        serial."""
        cfg = self.cfg
        t = self._t
        n = p.metered
        ts_s, proto_s, flags_s, side_s = p.ts, p.proto, p.flags, p.side
        gpos = p.gpos
        n_groups = len(gpos)
        kb = p.gkeys.tobytes()
        index = self._index
        slot_g = np.fromiter(
            (index.get(kb[i * KEY_BYTES:(i + 1) * KEY_BYTES], -1) for i in range(n_groups)),
            dtype=np.int64, count=n_groups)
        split = p.split.copy()
        reasons: dict[int, str] = {
            int(i): ("idle" if w == SPLIT_IDLE else "clock-step" if w == SPLIT_CLOCK
                     else "port-reuse")
            for i, w in zip(np.flatnonzero(p.split_why).tolist(),
                            p.split_why[p.split_why != 0].tolist(), strict=True)}
        idle = self._idle_ns[proto_s[gpos]]
        # Existing flows that went idle before this batch's first packet end first, and so
        # do those whose newest packet is further after it than that (a clock step back:
        # see probe.prepare._backward_splits).
        has = slot_g >= 0
        ex = np.where(has, slot_g, 0)
        first_ts = ts_s[gpos]
        late = (first_ts > t.last_ns[ex]) & (first_ts - idle > t.last_ns[ex])
        early = (first_ts < t.last_ns[ex]) & (t.last_ns[ex] - idle > first_ts)
        stale = has & (late | early)
        if stale.any():
            st_slots = slot_g[stale]
            self._end(st_slots, ["clock-step" if e else "idle" for e in early[stale].tolist()])
            slot_g = np.where(stale, -1, slot_g)
            has = slot_g >= 0
            ex = np.where(has, slot_g, 0)
        # Groups that need a packet-by-packet look: a SYN reusing a flow closed in an
        # earlier batch, or a flow reaching the active timeout.
        pure_syn = (proto_s == 6) & ((flags_s & (TcpFlag.SYN | TcpFlag.ACK)) == TcpFlag.SYN)
        g_has_syn = np.bincount(p.group, weights=pure_syn, minlength=n_groups) > 0
        g_last_ts = np.maximum.reduceat(ts_s, gpos)
        start_ts = np.where(has, t.first_ns[ex], ts_s[gpos])
        care = (g_has_syn & has & self._closed[ex]) | ((g_last_ts - start_ts) > self._active_ns)
        if care.any():
            self._careful(np.flatnonzero(care), gpos, n, ts_s, flags_s, proto_s, side_s, split,
                          slot_g, reasons)
        # An existing flow superseded at this batch's first packet ends now.
        first_new = has & np.isin(gpos, np.fromiter(reasons.keys(), dtype=np.int64,
                                                     count=len(reasons)))
        if first_new.any():
            old = slot_g[first_new]
            why = [reasons[int(q)] for q in gpos[first_new]]
            self._end(old, ["tcp-close" if self._closed[s] else w
                            for s, w in zip(old.tolist(), why, strict=True)])
            slot_g = np.where(first_new, -1, slot_g)

        seg_s = np.cumsum(split) - 1
        spos = np.flatnonzero(split)
        n_seg = len(spos)
        seg_group = p.group[spos]
        seg_last_in_group = np.ones(n_seg, dtype=bool)
        seg_last_in_group[:-1] = seg_group[1:] != seg_group[:-1]
        cont = (spos == gpos[seg_group]) & (slot_g[seg_group] >= 0)
        seg_slot = np.where(cont, slot_g[seg_group], -1)
        new_seg = np.flatnonzero(~cont)
        new_slots = self._alloc(len(new_seg))
        seg_slot[new_seg] = new_slots
        t = self._t
        if len(new_seg):
            fp = spos[new_seg]  # first packet of each new flow
            fl = flags_s[fp]
            synack_bits = TcpFlag.SYN | TcpFlag.ACK
            synack = (proto_s[fp] == 6) & ((fl & synack_bits) == synack_bits)
            orig_side = np.where(synack, 1 - side_s[fp], side_s[fp])
            ns = new_slots
            t.key[ns] = p.gkeys[seg_group[new_seg]]
            t.ipver[ns] = p.ipver[fp]
            t.tunnel[ns] = p.tunnel[fp]
            t.l2[ns] = p.gl2[seg_group[new_seg]]
            t.orig_is_a[ns] = orig_side == 0
            t.first_ns[ns] = ts_s[fp]
            t.first_frame[ns] = p.frame[fp]
            t.fid[ns] = np.arange(self._next_fid, self._next_fid + len(ns), dtype=np.int64)
            self._next_fid += len(ns)
            t.alive[ns] = True
            kg = p.gkeys[seg_group[new_seg]].tobytes()
            for j in np.flatnonzero(seg_last_in_group[new_seg]).tolist():
                s = int(ns[j])
                kbytes = kg[j * KEY_BYTES:(j + 1) * KEY_BYTES]
                index[kbytes] = s
                self._slot_key[s] = kbytes
        # Sums per (segment, side).
        seg_side = seg_s * 2 + side_s
        m2 = 2 * n_seg
        pay_s, wire_s = p.pay_len, p.wire
        cnt = np.bincount(seg_side, minlength=m2).reshape(n_seg, 2)
        pay_sum = np.bincount(seg_side, weights=pay_s, minlength=m2).reshape(n_seg, 2)
        wire_sum = np.bincount(seg_side, weights=wire_s, minlength=m2).reshape(n_seg, 2)
        fl_or = np.zeros(m2, dtype=np.int64)
        np.bitwise_or.at(fl_or, seg_side, flags_s)
        t.pkts[seg_slot] += cnt
        t.pay[seg_slot] += pay_sum.astype(np.int64)
        t.wire[seg_slot] += wire_sum.astype(np.int64)
        t.flags[seg_slot] |= fl_or.reshape(n_seg, 2)
        seg_end = np.append(spos[1:], n)
        t.last_ns[seg_slot] = np.maximum(t.last_ns[seg_slot], np.maximum.reduceat(ts_s, spos))
        t.last_frame[seg_slot] = np.maximum(t.last_frame[seg_slot], p.frame[seg_end - 1])
        fl2 = t.flags[seg_slot]
        self._closed_grow()
        self._closed[seg_slot] = ((fl2[:, 0] & fl2[:, 1] & TcpFlag.FIN) != 0) | (
            ((fl2[:, 0] | fl2[:, 1]) & TcpFlag.RST) != 0)
        slot_s = seg_slot[seg_s]
        fid_s: I64 = t.fid[slot_s]
        dir_s = (side_s != np.where(t.orig_is_a[slot_s], 0, 1)).astype(np.uint8)

        # A later fragment of a segment carries no TCP header (flags 0): no sequence number
        tcp_data = (proto_s == 6) & (pay_s > 0) & (flags_s != 0)
        if tcp_data.any():
            self._retrans(np.flatnonzero(tcp_data), p, seg_s, seg_slot, side_s, pay_s)
        tcp_ack = (proto_s == 6) & ((flags_s & (TcpFlag.ACK | TcpFlag.RST)) == TcpFlag.ACK)
        if tcp_ack.any():
            self._acks(np.flatnonzero(tcp_ack), p, seg_s, seg_slot, side_s)
        # Timing series: the first packets of each flow.
        rank = np.arange(n, dtype=np.int64) - spos[seg_s]
        keep = rank + t.n_timing[slot_s] < cfg.timing_packets
        if keep.any():
            k = np.flatnonzero(keep)
            self._timing.add(fid_s[k], ts=ts_s[k], len=pay_s[k], side=dir_s[k],
                             flags=flags_s[k].astype(np.uint8))
            np.add.at(t.n_timing, slot_s[k], 1)
        # Per-second rate rows.
        sec = ts_s // NS
        run_start = split.copy()
        run_start[1:] |= sec[1:] != sec[:-1]
        run = np.cumsum(run_start) - 1
        rpos = np.flatnonzero(run_start)
        nr = len(rpos)
        rs = run * 2 + side_s
        rc = np.bincount(rs, minlength=2 * nr).reshape(nr, 2)
        rw = np.bincount(rs, weights=wire_s, minlength=2 * nr).reshape(nr, 2).astype(np.int64)
        self._rate.add(fid_s[rpos], sec=sec[rpos], pa=rc[:, 0], wa=rw[:, 0], pb=rc[:, 1],
                       wb=rw[:, 1])
        # Payload samples: candidates the flow still has room for.
        if len(p.pay_pos):
            pp = p.pay_pos
            ps, pside = slot_s[pp], side_s[pp]
            had = t.n_pay[ps, pside]
            flow_rank = p.pay_rank + had
            keep = flow_rank < cfg.payload_samples
            extra = np.flatnonzero(p.pay_signal & ~keep)
            if len(extra):
                # Signalling beyond a flow's first samples, while it has room: every one of
                # its first samples comes before them in the batch, and so does each of
                # them kept already, in its flow's and direction's order.
                g = ps[extra] * 2 + pside[extra]
                o = np.argsort(g, kind="stable")
                nth = np.empty(len(extra), np.int64)
                nth[o] = seg_rank(g[o])
                room = cfg.payload_samples + cfg.signal_samples - np.maximum(
                    had[extra], cfg.payload_samples)
                keep[extra] = nth < room
            if keep.any():
                kk = np.flatnonzero(keep)
                np.add.at(t.n_pay, (ps[kk], pside[kk]), 1)
                later = (flow_rank[kk] >= cfg.payload_full) & ~p.pay_signal[kk]
                kept_n = np.where(later, np.minimum(p.pay_n[kk], cfg.payload_tail_snap),
                                  p.pay_n[kk])
                self._pay_log.add(fid_s[pp[kk]], p.pay_off[kk], kept_n, p.frame[pp[kk]],
                                  ts_s[pp[kk]], dir_s[pp[kk]], p.pool)
        # RTP: whole-life stream state, and the first packets one by one.
        if len(p.rtp_pos):
            rp = p.rtp_pos
            size = np.minimum(pay_s[rp], 65535)
            ok = self._streams.update(fid_s[rp], dir_s[rp].astype(np.int64),
                                      p.rtp_ssrc.astype(np.int64), p.rtp_seq.astype(np.int64),
                                      p.rtp_ts.astype(np.int64), p.rtp_pt.astype(np.int64),
                                      ts_s[rp], size)
            acc = np.flatnonzero(ok)
            rp = rp[acc]
            rslot = slot_s[rp]
            keep = seg_rank(rslot) + t.n_rtp[rslot] < cfg.rtp_detail_packets
            np.add.at(t.n_rtp, rslot, 1)
            if keep.any():
                kk = acc[np.flatnonzero(keep)]
                u = p.rtp_pos[kk]
                self._rtp.add(fid_s[u], ts=ts_s[u], side=dir_s[u], seq=p.rtp_seq[kk],
                              rts=p.rtp_ts[kk], ssrc=p.rtp_ssrc[kk], pt=p.rtp_pt[kk],
                              mk=p.rtp_mk[kk],
                              size=np.minimum(pay_s[u], 65535).astype(np.uint16),
                              off=p.rtp_off[kk], frame=p.frame[u])
        # Weirds join their flows before any of them ends (below).
        self._attach_weirds(p, fid_s)
        # Segments that are not the last of their group are finished flows.
        done = np.flatnonzero(~seg_last_in_group)
        if len(done):
            why_done = []
            for j in done.tolist():
                s = int(seg_slot[j])
                why_done.append("tcp-close" if self._closed[s]
                                else reasons.get(int(spos[j + 1]), "idle"))
            self._end(seg_slot[done], why_done)
        return fid_s

    def _attach_weirds(self, p: Prepared, fid_s: I64) -> None:
        """Keep each weird with its packet's flow (``fid_s``: each packet's flow serial), or
        with the run when it belongs to none."""
        for (frame, ts, w), pos in zip(p.weirds, p.weird_sorted.tolist(), strict=True):
            if pos >= 0:
                self._flow_weirds.setdefault(int(fid_s[pos]), []).append((frame, ts, w))
            else:
                self.weirds.append(Weird(frame, ts / NS, w.layer, w.offset, w.reason))

    def _careful(self, groups: I64, gpos: I64, n: int, ts_s: I64, flags_s: I64, proto_s: I64,
                 side_s: I64, split: npt.NDArray[np.bool_], slot_g: I64,
                 reasons: dict[int, str]) -> None:
        """Packet-by-packet segmentation where the table's state matters."""
        t = self._t
        ends = np.append(gpos[1:], n)
        for g in groups.tolist():
            a, z = int(gpos[g]), int(ends[g])
            s = int(slot_g[g])
            if s >= 0:
                seg_first = int(t.first_ns[s])
                fin_a = bool(t.flags[s, 0] & TcpFlag.FIN)
                fin_b = bool(t.flags[s, 1] & TcpFlag.FIN)
                rst = bool((t.flags[s, 0] | t.flags[s, 1]) & TcpFlag.RST)
                has_pkts = True
            else:
                seg_first = int(ts_s[a])
                fin_a = fin_b = rst = False
                has_pkts = False
            is_tcp = proto_s[a] == 6
            for q in range(a, z):
                tp = int(ts_s[q])
                f = int(flags_s[q])
                if q != a and split[q]:  # a split the batch already knew about
                    seg_first = tp
                    fin_a = fin_b = rst = False
                else:
                    why = None
                    if has_pkts and tp - seg_first > self._active_ns:
                        why = "active"
                    elif (is_tcp and has_pkts and (f & (TcpFlag.SYN | TcpFlag.ACK)) == TcpFlag.SYN
                          and ((fin_a and fin_b) or rst)):
                        why = "port-reuse"
                    if why is not None:
                        split[q] = True
                        reasons[q] = why
                        seg_first = tp
                        fin_a = fin_b = rst = False
                has_pkts = True
                if is_tcp:
                    if f & TcpFlag.FIN:
                        if side_s[q] == 0:
                            fin_a = True
                        else:
                            fin_b = True
                    if f & TcpFlag.RST:
                        rst = True

    def _retrans(self, sel: I64, p: Prepared, seg_s: I64, seg_slot: I64, side_s: I64,
                 pay_s: I64) -> None:
        """Count TCP segments whose data was already covered in the same direction."""
        t = self._t
        sel, slot, side, firsts = _by_flow_side(sel, seg_s, seg_slot, side_s)
        seq = p.seq[sel]
        ln = pay_s[sel]
        unknown = firsts & (t.seq_base[slot, side] < 0)
        t.seq_base[slot[unknown], side[unknown]] = seq[unknown]
        base = t.seq_base[slot, side]
        rel_end = (seq + ln - base) & 0xFFFFFFFF
        run = np.cumsum(firsts) - 1
        offset = run.astype(np.int64) << 33
        carried = t.seq_max[slot, side]
        val = rel_end + offset
        cm = np.maximum.accumulate(val)
        prev = np.empty_like(cm)
        prev[1:] = cm[:-1]
        prev[firsts] = carried[firsts] + offset[firsts]
        prev = np.maximum(prev, carried + offset)
        m = np.flatnonzero(val <= prev)
        if len(m):
            np.add.at(t.retrans, (slot[m], side[m]), 1)
        lastpos = np.append(np.flatnonzero(firsts)[1:], len(sel)) - 1
        t.seq_max[slot[lastpos], side[lastpos]] = np.maximum(cm[lastpos] - offset[lastpos],
                                                             carried[lastpos])

    def _acks(self, sel: I64, p: Prepared, seg_s: I64, seg_slot: I64, side_s: I64) -> None:
        """The furthest each side acknowledged: its first acknowledgement number, and how
        far past it the others went (RFC 9293 §3.4, modulo 2**32; one that went back, a
        reordered segment, counts as none). Resets are left out: a reset another box
        forged may carry any number."""
        t = self._t
        sel, slot, side, firsts = _by_flow_side(sel, seg_s, seg_slot, side_s)
        ack = p.ack[sel]
        unknown = firsts & (t.ack_base[slot, side] < 0)
        t.ack_base[slot[unknown], side[unknown]] = ack[unknown]
        rel = (ack - t.ack_base[slot, side]) & 0xFFFFFFFF
        rel[rel >= 1 << 31] = 0
        starts = np.flatnonzero(firsts)
        top = np.maximum.reduceat(rel, starts)
        gs, gd = slot[starts], side[starts]
        t.ack_max[gs, gd] = np.maximum(t.ack_max[gs, gd], top)

    def _missed(self, slots: I64) -> I64:
        """Per flow and side, payload bytes that side sent which the capture never showed
        though the other side acknowledged them (Zeek's ``missed_bytes``, by direction):
        the capture lost them, or sees one direction only. Where some of this side's data
        was seen, what the other side acknowledged past its first byte seen, less the bytes
        seen (resent ones and later IP fragments included, so it errs low) and a FIN;
        where none was, all it acknowledged while the capture watched, but a FIN. Never
        more than :data:`MAX_ACKED_PER_PACKET` per packet of the acknowledging side: an
        acknowledgement number that jumped (a new connection on the same ports that the
        capture missed the start of) is no count of bytes."""
        t = self._t
        base, top = t.ack_base[slots][:, ::-1], t.ack_max[slots][:, ::-1]  # the other side's
        limit = t.pkts[slots][:, ::-1] * MAX_ACKED_PER_PACKET
        first = t.seq_base[slots]
        acked = (base + top - first) & 0xFFFFFFFF
        acked = np.where(acked < 1 << 31, np.minimum(acked, limit), 0)
        past = acked - t.pay[slots] - 1
        span = np.minimum(top, limit) - 1
        out: I64 = np.maximum(np.where(base >= 0, np.where(first >= 0, past, span), 0), 0)
        return out

    def _attach_icmp(self, frame: int, ts: int, q: IcmpQuote) -> None:
        five, _ = key_row((*split_addr(q.src, q.ipver), q.sport),
                          (*split_addr(q.dst, q.ipver), q.dport), q.proto)
        row = np.array([*five, 0], dtype=np.uint64)
        slot = self._index.get(row.tobytes())
        if slot is None:
            # The quoted flow may be on a VLAN or in a tunnel: any flow with these endpoints.
            slot = self._find_any_vlan(row)
        if slot is None:
            self.stats.icmp_unmatched += 1
            return
        fid = int(self._t.fid[slot])
        fam = socket.AF_INET if q.family == 4 else socket.AF_INET6
        rep_str = socket.inet_ntop(fam, q.reporter.to_bytes(4 if q.family == 4 else 16, "big"))
        self._icmp.setdefault(fid, []).append(
            IcmpNotice(frame, ts / NS, q.family, q.type, q.code, rep_str))

    def _find_any_vlan(self, row: U64) -> int | None:
        t = self._t
        alive = np.flatnonzero(t.alive)
        if not len(alive):
            return None
        k = t.key[alive]
        m = ((k[:, 0] == row[0]) & (k[:, 1] == row[1]) & (k[:, 2] == row[2]) & (k[:, 3] == row[3])
             & ((k[:, 4] >> np.uint64(16)) == (row[4] >> np.uint64(16))))
        hit = np.flatnonzero(m)
        return int(alive[hit[-1]]) if len(hit) else None

    # -- table management ---------------------------------------------------------
    def _closed_grow(self) -> None:
        if len(self._closed) < self._t.cap:
            c = np.zeros(self._t.cap, dtype=bool)
            c[: len(self._closed)] = self._closed
            self._closed = c

    def _alloc(self, k: int) -> I64:
        if k > len(self._free):
            old = self._t.cap
            self._t.grow(old + k)
            self._free.extend(range(self._t.cap - 1, old - 1, -1))
            self._closed_grow()
        out = [self._free.pop() for _ in range(k)]
        return np.asarray(out, dtype=np.int64)

    def _expire(self, now: int) -> None:
        t = self._t
        alive = np.flatnonzero(t.alive)
        if not len(alive):
            return
        idle = self._idle_ns[key_proto(t.key[alive])]
        quiet = now - t.last_ns[alive]
        closed = self._closed[alive]
        gone = (quiet > idle) | (closed & (quiet > self._close_ns))
        if gone.any():
            s = alive[gone]
            self._end(s, ["tcp-close" if c else "idle" for c in closed[gone].tolist()])
        over = len(self._index) - self.cfg.max_flows
        if over > 0:
            alive = np.flatnonzero(t.alive)
            victims = alive[np.argsort(t.last_ns[alive], kind="stable")[:over]]
            self.stats.evicted += len(victims)
            self._end(victims, ["evicted"] * len(victims))

    def _end(self, slots: I64, reasons: list[str]) -> None:
        """End table rows: gather their columns and free the rows."""
        if len(slots):
            self._ended.append(self._gather(slots, reasons))

    def _gather(self, slots: I64, reasons: list[str]) -> Ended:
        """Take the finished flows' rows out of the table and the logs, as columns."""
        t = self._t
        slots = np.asarray(slots, dtype=np.int64)
        order = np.argsort(t.first_frame[slots], kind="stable")
        slots = slots[order]
        reasons = [reasons[i] for i in order.tolist()]
        fids = t.fid[slots]
        fsort = np.argsort(fids)
        fids_sorted = fids[fsort]
        lookup = np.zeros(self._next_fid + 1, dtype=bool)
        lookup[fids] = True
        pos_of = np.empty(len(slots), dtype=np.int64)
        pos_of[fsort] = np.arange(len(slots))

        def grouped(log: _Log) -> tuple[dict[str, np.ndarray], I64, I64]:  # type: ignore[type-arg]
            cols, st, en = log.take(fids_sorted, lookup)
            return cols, st[pos_of], en[pos_of]

        tim, tim_a, tim_z = grouped(self._timing)
        rate_rows, rate_fid = _merge_rate(self._rate.take(fids_sorted, lookup)[0])
        n_rtp = t.n_rtp[slots]
        rtp: dict[str, np.ndarray] | None = None  # type: ignore[type-arg]
        rtp_a = rtp_z = np.zeros(0, dtype=np.int64)
        streams: dict[int, list[StreamState]] = {}
        if bool((n_rtp > 0).any()):
            rtp, rtp_a, rtp_z = grouped(self._rtp)
            streams = self._streams.take(fids.tolist())
        fid_l = fids.tolist()
        icmp = {f: self._icmp.pop(f) for f in fid_l if f in self._icmp}
        weirds = {f: self._flow_weirds.pop(f) for f in fid_l if f in self._flow_weirds}
        e = Ended(
            reasons=reasons, fid=fids, key=t.key[slots], orig_is_a=t.orig_is_a[slots],
            first_ns=t.first_ns[slots], last_ns=t.last_ns[slots],
            first_frame=t.first_frame[slots], last_frame=t.last_frame[slots],
            pkts=t.pkts[slots], pay=t.pay[slots], wire=t.wire[slots], flags=t.flags[slots],
            retrans=t.retrans[slots], missed=self._missed(slots), tunnel=t.tunnel[slots],
            l2=t.l2[slots], n_rtp=n_rtp,
            tim_ts=tim["ts"], tim_len=tim["len"], tim_dir=tim["side"], tim_flags=tim["flags"],
            tim_a=tim_a, tim_z=tim_z, rate=rate_rows,
            rate_a=np.searchsorted(rate_fid, fids, side="left"),
            rate_z=np.searchsorted(rate_fid, fids, side="right"),
            rtp=rtp, rtp_a=rtp_a, rtp_z=rtp_z, streams=streams,
            payloads=self._pay_log.take(lookup, fids), icmp=icmp, weirds=weirds,
            rtp_cap=self.cfg.rtp_detail_packets, origin=self.origin)
        self.stats.flows += len(slots)
        for s in slots.tolist():
            kb = self._slot_key.pop(s, None)
            if kb is not None and self._index.get(kb) == s:
                del self._index[kb]
        t.reset(slots)
        self._closed[slots] = False
        self._free.extend(slots.tolist())
        return e


@dataclass(frozen=True, slots=True)
class OpenFlows:
    """Endpoints and starts of flows still in the table (one row per flow, endpoints in
    the table's order, addresses as :func:`pack_addr` halves)."""

    a_hi: U64
    a_lo: U64
    a_port: U64
    b_hi: U64
    b_lo: U64
    b_port: U64
    first_ts: npt.NDArray[np.float64]

    _ends: EndStarts = field(default_factory=lambda: EndStarts(), compare=False, repr=False)
    """Their starts by endpoint, indexed on the first question."""

    def earliest_touching(self, hosts: Iterable[str], sockets: Iterable[tuple[str, int]],
                          since: float = float("-inf"),
                          pairs: Iterable[tuple[str, str]] = ()) -> float:
        """Start of the earliest of these flows with an endpoint at one of ``hosts`` or on
        one of ``sockets`` (address, port), or between the two hosts of one of ``pairs``,
        among those that started at ``since`` or later; infinity when none does."""
        ends = self._ends
        if not ends and len(self.first_ts):
            ends.add_many(zip(
                zip(self.a_hi.tolist(), self.a_lo.tolist(), strict=True), self.a_port.tolist(),
                zip(self.b_hi.tolist(), self.b_lo.tolist(), strict=True), self.b_port.tolist(),
                self.first_ts.tolist(), strict=True))
        if not ends:
            return float("inf")
        return ends.earliest([_packed(h) for h in hosts],
                             [(_packed(h), port) for h, port in sockets], since,
                             [(_packed(a), _packed(b)) for a, b in pairs])


class EndStarts:
    """When flows started, by each of their ends (a host, and a host with a port) and by
    the pair of hosts they join (hosts as keys of any one form), so that the earliest flow
    touching some ends is found without looking at every flow."""

    __slots__ = ("_ready", "_starts")

    def __init__(self) -> None:
        self._starts: dict[Any, list[float]] = {}
        self._ready = True

    def __bool__(self) -> bool:
        return bool(self._starts)

    def add_many(self, flows: Iterable[tuple[Any, int, Any, int, float]]) -> None:
        """Flows, each as (host, port, other host, other port, start)."""
        starts = self._starts
        for a, ap, b, bp, ts in flows:
            for key in (a, (a, ap), b, (b, bp), _pair(a, b)):
                got = starts.get(key)
                if got is None:
                    starts[key] = [ts]
                else:
                    got.append(ts)
        self._ready = False

    def earliest(self, hosts: Iterable[Any], sockets: Iterable[tuple[Any, int]],
                 since: float = float("-inf"), pairs: Iterable[tuple[Any, Any]] = ()
                 ) -> float:
        """The earliest start, at ``since`` or later, of a flow with an end at one of
        ``hosts`` or on one of ``sockets``, or between the hosts of one of ``pairs``;
        infinity when there is none."""
        if not self._ready:
            for starts in self._starts.values():
                starts.sort()
            self._ready = True
        best = float("inf")
        for key in [*hosts, *sockets, *(_pair(a, b) for a, b in pairs)]:
            starts = self._starts.get(key, [])
            if starts:
                i = bisect.bisect_left(starts, since)
                if i < len(starts) and starts[i] < best:
                    best = starts[i]
        return best


def _pair(a: Any, b: Any) -> tuple[str, Any, Any]:
    return ("pair", a, b) if a <= b else ("pair", b, a)


_packed = functools.lru_cache(maxsize=1 << 16)(pack_addr)
"""An address in the key's form, each address parsed once (the same hosts are asked
about at every settle)."""


_NONE = np.zeros(0, dtype=np.uint64)
NO_OPEN_FLOWS = OpenFlows(_NONE, _NONE, _NONE, _NONE, _NONE, _NONE,
                          np.zeros(0, dtype=np.float64))
"""An empty :class:`OpenFlows`."""


@dataclass(slots=True)
class PayloadColumns:
    """Payload samples of several flows over one byte pool, rows grouped by flow:
    flow ``i`` (in the order asked for) owns rows ``a[i]:z[i]``."""

    pool: bytes
    frame: I64
    ts: I64
    direction: npt.NDArray[np.uint8]
    off: I64
    length: I64
    a: I64
    z: I64

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, tuple[Any, ...]]:
        return out_of_band(self, int(protocol), "pool")


@dataclass(slots=True)
class Ended:
    """Finished flows as columns, one row per flow (ordered by first packet): everything
    their records are made from, in a few large arrays, so that a batch of them crosses
    to another process cheaply (:func:`build_records` makes the records there)."""

    reasons: list[str]
    fid: I64
    key: U64
    orig_is_a: npt.NDArray[np.bool_]
    first_ns: I64
    last_ns: I64
    first_frame: I64
    last_frame: I64
    pkts: I64
    pay: I64
    wire: I64
    flags: I64
    retrans: I64
    missed: I64
    """Per flow and side, the bytes that side sent which the capture missed
    (:meth:`FlowMeter._missed`)."""
    tunnel: npt.NDArray[np.uint8]
    l2: U64
    n_rtp: I64
    tim_ts: I64
    tim_len: I64
    tim_dir: npt.NDArray[np.uint8]
    tim_flags: npt.NDArray[np.uint8]
    tim_a: I64
    tim_z: I64
    rate: I64
    rate_a: I64
    rate_z: I64
    rtp: dict[str, np.ndarray] | None  # type: ignore[type-arg]
    rtp_a: I64
    rtp_z: I64
    streams: dict[int, list[StreamState]]
    payloads: PayloadColumns | None
    icmp: dict[int, list[IcmpNotice]]
    weirds: dict[int, list[tuple[int, int, WeirdInfo]]]
    rtp_cap: int
    origin: bytes = b""
    """The capture's identity (:attr:`FlowMeter.origin`), part of the flows' uids."""

    def __len__(self) -> int:
        return len(self.reasons)

    def plain(self) -> tuple[list[Any], ...]:
        """The per-flow columns as Python lists (converted in one go each): the key's
        address halves, ports word and zone, then orig_is_a, first/last ns and frame,
        pkts, pay, wire, flags, retrans (pairs per side), tunnel, n_rtp, fid, the
        link-layer addresses (a pair per flow, as text or None) and the missed bytes
        (pairs per side)."""
        key = self.key
        return (*(key[:, i].tolist() for i in range(6)), self.orig_is_a.tolist(),
                self.first_ns.tolist(), self.last_ns.tolist(), self.first_frame.tolist(),
                self.last_frame.tolist(), self.pkts.tolist(), self.pay.tolist(),
                self.wire.tolist(), self.flags.tolist(), self.retrans.tolist(),
                self.tunnel.tolist(), self.n_rtp.tolist(), self.fid.tolist(), _macs(self.l2),
                self.missed.tolist())


def _macs(l2: U64) -> list[list[str | None]]:
    """Each flow's (a, b) link-layer addresses as colon-separated hex, None for unknown."""
    names: dict[int, str | None] = {0: None}
    out = []
    for a, b in l2.tolist():
        for v in (a, b):
            if v not in names:
                names[v] = v.to_bytes(6, "big").hex(":")
        out.append([names[a], names[b]])
    return out


def _flow_ident(a_hi: int, a_lo: int, b_hi: int, b_lo: int, kk: int, zone: int,
                orig_is_a: bool, first_ns: int, origin: bytes, last_ns: int,
                pkts: list[int], wire: list[int]
                ) -> tuple[int, int, str, int, str, int, str, int, int | None, str]:
    """(orig side, resp side, proto name, IP version, orig_h, orig_p, resp_h, resp_p, vlan,
    uid) of a table key; the sides index the per-side (a, b) counter pairs.

    The uid digests the capture's identity (``origin``, its first packet), the flow's key
    and first timestamp, and what it came to (last timestamp, packets and wire bytes each
    way): reproducible for the same capture by every entry point (all of it is capture
    content, none of it how the input was cut or read), different for flows of captures
    that begin differently, and different for two flows that share key and start but not
    packets (two captures that begin alike and part later: an answered call and the same
    call blocked)."""
    a_ver, a_str = _addr_str(a_hi, a_lo)
    _, b_str = _addr_str(b_hi, b_lo)
    a_port, b_port, proto, vlan = ports_word_fields(kk)
    if orig_is_a:
        oh, op, rh, rp = a_str, a_port, b_str, b_port
    else:
        oh, op, rh, rp = b_str, b_port, a_str, a_port
    pname = PROTO_NAMES.get(proto, str(proto))
    o = 0 if orig_is_a else 1
    r = 1 - o
    uid = _uid(f"{origin.hex()}|{pname}|{oh}|{op}|{rh}|{rp}|{vlan}|{zone}|{first_ns}|"
               f"{last_ns}|{pkts[o]}|{pkts[r]}|{wire[o]}|{wire[r]}")
    return o, r, pname, a_ver, oh, op, rh, rp, (vlan if vlan >= 0 else None), uid


def _flow_rtp(rtp: dict[str, np.ndarray] | None, rtp_a: list[int], rtp_z: list[int],  # type: ignore[type-arg]
              j: int, n_rtp: int, pkts: list[int], cap: int, states: list[StreamState] | None,
              series: bool = True) -> tuple[RtpSeries | None, list[StreamState]]:
    """Gathered flow ``j``'s RTP series and the states of its whole-life streams, kept only
    when the flow looks like RTP (:func:`_looks_like_rtp`); ``pkts`` is its (a, b) packet
    counts. Without ``series``, only whether it looks so is worked out (the series comes
    back None): all a conn.log row needs, which counts the streams."""
    if rtp is None or n_rtp < 4 or not states:
        return None, []
    a, z = rtp_a[j], rtp_z[j]
    side, ssrc = rtp["side"][a:z], rtp["ssrc"][a:z]
    real: npt.NDArray[np.bool_] | None = None
    if n_rtp > sum(st.packets for st in states):
        # the packets of sources still on probation when the flow ended are no RTP series'
        real = np.zeros(z - a, dtype=bool)
        for st in states:
            real |= (side == st.direction) & (ssrc == st.ssrc)
        side, ssrc = side[real], ssrc[real]
    if not _looks_like_rtp(ssrc, side, min(pkts[0] + pkts[1], cap)):
        return None, []
    if not series:
        return None, states
    rows = {k: v[a:z] if real is None else v[a:z][real] for k, v in rtp.items()}
    return _rtp_series(rows, n_rtp > cap), states


_Ident = tuple[int, int, str, int, str, int, str, int, int | None, str]


def _each_flow(e: Ended, plain: tuple[list[Any], ...], series: bool = True) -> Iterator[
        tuple[int, _Ident, tuple[RtpSeries | None, list[StreamState]],
              list[IcmpNotice] | None, list[tuple[int, int, WeirdInfo]] | None]]:
    """What a gathered flow's record and its conn.log row are both made from, flow by
    flow: its row ``j``, identity (:func:`_flow_ident`), RTP series and streams' states
    (:func:`_flow_rtp`, no series without ``series``), ICMP notices and weirds. ``plain``
    is :meth:`Ended.plain`."""
    a_hi, a_lo, b_hi, b_lo, k4, zone, o_is_a, first_ns, last_ns = plain[:9]
    pkts, wire, n_rtp, fid_l = plain[11], plain[13], plain[17], plain[18]
    rtp, rtp_a, rtp_z, cap = e.rtp, e.rtp_a.tolist(), e.rtp_z.tolist(), e.rtp_cap
    streams, icmp, weird_log = e.streams, e.icmp, e.weirds
    for j in range(len(e)):
        fid = fid_l[j]
        yield (j, _flow_ident(a_hi[j], a_lo[j], b_hi[j], b_lo[j], k4[j], zone[j], o_is_a[j],
                              first_ns[j], e.origin, last_ns[j], pkts[j], wire[j]),
               _flow_rtp(rtp, rtp_a, rtp_z, j, n_rtp[j], pkts[j], cap, streams.get(fid),
                         series),
               icmp.get(fid), weird_log.get(fid))


def build_records(e: Ended, light: bool = False) -> list[FlowRecord]:
    """The flow records of gathered flows, in the order gathered; with ``light``, as
    :meth:`FlowRecord.lightened` would make them (no payload bytes, no timing or RTP
    series), without building them whole first."""
    plain = e.plain()
    (_, _, _, _, _, _, _, first_ns, last_ns, first_fr, last_fr, pkts, pay, wire, flags, retr,
     tunnels, _, _, l2, missed) = plain
    reasons = e.reasons
    tim = NO_TIMING  # a light record's timing series: the shared empty ones
    if not light:
        tim_ts = e.tim_ts.astype(np.float64) / NS
        tim_len = e.tim_len.astype(np.int32)
        tim_dir = e.tim_dir.astype(np.uint8)
        tim_fl = e.tim_flags.astype(np.uint8)
        tim_a, tim_z = e.tim_a.tolist(), e.tim_z.tolist()
    rate_rows = e.rate
    rate_a, rate_z = e.rate_a.tolist(), e.rate_z.tolist()
    pc = e.payloads
    n = len(e)
    pay_a, pay_z = (pc.a.tolist(), pc.z.tolist()) if pc is not None else ([0] * n, [0] * n)
    pool = b"" if light or pc is None else pc.pool
    out = []
    for j, ident, (rtp_series, states), ic, w in _each_flow(e, plain, series=not light):
        o, r, pname, ver, oh, op, rh, rp, vlan, uid = ident
        if not light:
            tim = (tim_ts[tim_a[j]:tim_z[j]], tim_len[tim_a[j]:tim_z[j]],
                   tim_dir[tim_a[j]:tim_z[j]], tim_fl[tim_a[j]:tim_z[j]])
        rr = rate_rows[rate_a[j]:rate_z[j]]
        if o == 1:
            rr = rr[:, [0, 3, 4, 1, 2]]
        weirds = () if w is None else tuple(
            Weird(fr, ts / NS, x.layer, x.offset, x.reason, uid) for fr, ts, x in w)
        pa, pz = pay_a[j], pay_z[j]
        if pc is None or pa == pz:
            payloads = _NO_PAYLOADS
        else:
            if light:  # no bytes: every light flow with as many samples shares its zeros
                off = length = no_offsets(pz - pa)
            else:
                off, length = pc.off[pa:pz], pc.length[pa:pz]
            payloads = PayloadSamples(pool, pc.frame[pa:pz], pc.ts[pa:pz], pc.direction[pa:pz],
                                      off, length)
        n_pk, n_pay, n_wire, fl, rt, ms = pkts[j], pay[j], wire[j], flags[j], retr[j], missed[j]
        out.append(new_record(  # FlowRecord's fields, in order
            uid, pname, ver, oh, op, rh, rp, first_ns[j] / NS, last_ns[j] / NS,
            n_pk[o], n_pay[o], n_wire[o], n_pk[r], n_pay[r], n_wire[r], fl[o], fl[r], rt[o],
            rt[r], first_fr[j], last_fr[j], reasons[j], vlan, TUNNEL_NAMES.get(tunnels[j]),
            l2[j][o], l2[j][r], ms[o], ms[r], () if ic is None else tuple(ic), weirds,
            payloads, *tim, rr, rtp_series, _streams_of(states)))
    return out


def conn_rows(e: Ended) -> list[dict[str, Any]]:
    """:meth:`FlowRecord.conn_dict` of every gathered flow, made straight from the columns
    (no record, no payload samples, timing or rate series): what ``marsad flows`` prints.
    The same values, keys and key order as building the records and asking each."""
    plain = e.plain()
    (_, _, _, _, _, _, _, first_ns, last_ns, first_fr, last_fr, pkts, pay, wire, flags, retr,
     tunnels, _, _, l2, missed) = plain
    reasons = e.reasons
    out = []
    for j, ident, (_, streams), ic, w in _each_flow(e, plain, series=False):
        o, r, pname, ver, oh, op, rh, rp, vlan, uid = ident
        out.append(conn_row(
            uid, pname, ver, oh, op, rh, rp, first_ns[j] / NS, last_ns[j] / NS,
            pkts[j][o], pay[j][o], wire[j][o], pkts[j][r], pay[j][r], wire[j][r],
            flags[j][o], flags[j][r], retr[j][o], retr[j][r], first_fr[j], last_fr[j],
            reasons[j], vlan, TUNNEL_NAMES.get(tunnels[j]), () if ic is None else ic,
            0 if w is None else len(w), len(streams), l2[j][o], l2[j][r], missed[j][o],
            missed[j][r]))
    return out


@dataclass(slots=True)
class _PayloadChunk:
    fid: I64
    off: I64
    length: I64
    frame: I64
    ts: I64
    direction: npt.NDArray[np.uint8]
    pool: bytes
    live: int
    """Bytes of the pool still referred to by rows not taken."""
    dead: npt.NDArray[np.bool_] | None = None
    """Rows already taken (None: none)."""

    def compact(self, repack: bool) -> None:
        """Drop the rows already taken; with ``repack``, their bytes from the pool too."""
        if self.dead is not None:
            keep = ~self.dead
            self.fid, self.off, self.length, self.frame, self.ts = (
                x[keep] for x in (self.fid, self.off, self.length, self.frame, self.ts))
            self.direction = self.direction[keep]
            self.dead = None
        if repack:
            mv = memoryview(self.pool)
            self.pool = b"".join(mv[o:o + k] for o, k in zip(self.off.tolist(),
                                                             self.length.tolist(),
                                                             strict=True))
            self.off = np.cumsum(self.length) - self.length


_NO_PAYLOADS = PayloadSamples()


class _PayloadLog:
    """Payload samples of one batch share one byte pool; rows point into it.

    As in :class:`_Log`, rows taken stay marked dead until they are half of their chunk.
    A pool is repacked once less than half of it, and 64 KiB or more less, is still
    referred to: pools arrive about half dead already (the batch keeps every candidate
    whole, the table only the first samples of each flow and the later ones cut short),
    and most are under a MiB, so a rule for large pools alone left half the bytes dead.
    """

    def __init__(self) -> None:
        self.chunks: list[_PayloadChunk] = []

    def add(self, fid: I64, off: I64, length: I64, frame: I64, ts: I64,
            direction: npt.NDArray[np.uint8], pool: bytes) -> None:
        if len(fid):
            self.chunks.append(_PayloadChunk(fid, off, length, frame, ts, direction, pool,
                                             int(length.sum())))

    def take(self, lookup: npt.NDArray[np.bool_], fids: I64) -> PayloadColumns | None:
        """Remove the samples of the flows marked in ``lookup``, as columns grouped in the
        order of ``fids`` (None when none of them has samples).

        The selected rows of every chunk are gathered column-wise into one new pool
        (samples of a flow kept over several batches come out joined, in order)."""
        cols: list[tuple[I64, I64, I64, npt.NDArray[np.uint8], I64]] = []
        views: list[memoryview] = []
        kept: list[_PayloadChunk] = []
        for c in self.chunks:
            mask = lookup[c.fid]
            if not mask.any():
                kept.append(c)
                continue
            sel = np.flatnonzero(mask)
            mv = memoryview(c.pool)
            taken = c.length[sel]
            views.extend(mv[o:o + k] for o, k in zip(c.off[sel].tolist(), taken.tolist(),
                                                     strict=True))
            cols.append((c.fid[sel], c.frame[sel], c.ts[sel], c.direction[sel], taken))
            c.dead = mask if c.dead is None else c.dead | mask
            n_dead = int(np.count_nonzero(c.dead))
            if n_dead == len(c.dead):
                continue
            c.live -= int(taken.sum())
            repack = len(c.pool) - c.live >= (64 << 10) and c.live * 2 < len(c.pool)
            if repack or 2 * n_dead > len(c.dead):
                c.compact(repack)
            kept.append(c)
        self.chunks = kept
        if not cols:
            return None
        fid, frame, ts, d, length = (np.concatenate([c[i] for c in cols]) for i in range(5))
        pool = b"".join(views)
        off = np.cumsum(length) - length
        order = np.argsort(fid, kind="stable")  # stable: batch order, then arrival order
        fid, frame, ts, d, off, length = (x[order] for x in (fid, frame, ts, d, off, length))
        return PayloadColumns(pool, frame, ts, d, off, length,
                              np.searchsorted(fid, fids, side="left"),
                              np.searchsorted(fid, fids, side="right"))


def _merge_rate(rate: dict[str, np.ndarray]) -> tuple[I64, I64]:  # type: ignore[type-arg]
    """Rate rows of several flows, one row per (flow, second): rows of the same second
    (a second that straddled two batches) are added up.

    Returns rows ``(second, a_pkts, a_wire, b_pkts, b_wire)`` sorted by flow then
    second, and the flow serial of each row.
    """
    fid = rate["fid"].astype(np.int64)
    if len(fid) == 0:
        return np.zeros((0, 5), dtype=np.int64), fid
    sec = rate["sec"].astype(np.int64)
    order = np.lexsort((sec, fid))
    fid, sec = fid[order], sec[order]
    vals = np.stack([rate[c][order].astype(np.int64) for c in ("pa", "wa", "pb", "wb")], 1)
    start = np.ones(len(fid), dtype=bool)
    start[1:] = (fid[1:] != fid[:-1]) | (sec[1:] != sec[:-1])
    pos = np.flatnonzero(start)
    out = np.empty((len(pos), 5), dtype=np.int64)
    out[:, 0] = sec[pos]
    out[:, 1:] = np.add.reduceat(vals, pos, axis=0)
    return out, fid[pos]


def _streams_of(states: list[StreamState]) -> tuple[RtpStream, ...]:
    """Stream records of one flow, originator's streams first, biggest first."""
    out = [RtpStream(direction=st.direction, ssrc=st.ssrc, pt=st.pt, clock_hz=st.clock,
                     packets=st.packets, bytes=st.bytes, cn_packets=st.cn_packets,
                     first_ext_seq=st.first_ext,
                     max_ext_seq=st.max_ext, reordered=st.reordered, jitter_s=st.jitter_s,
                     first_ts=st.first_ts, last_ts=st.last_ts, seconds=st.seconds)
           for st in states]
    return tuple(sorted(out, key=lambda s: (s.direction, -s.packets, s.ssrc)))


def _looks_like_rtp(ssrc: np.ndarray, side: np.ndarray,  # type: ignore[type-arg]
                    flow_pkts: int) -> bool:
    """Whether a flow's RTP samples (their SSRCs and sides) are kept: many packets of few
    SSRCs.

    ICE flows mix STUN, DTLS and RTCP with the media, so 20 RTP packets are enough
    even when they are not half of the flow.
    """
    n = len(ssrc)
    if n < 4 or (n < flow_pkts // 2 and n < 20):
        return False
    # A media stream keeps its SSRC: the top two SSRCs per direction cover nearly everything.
    covered = 0
    for d in (0, 1):
        s = ssrc[side == d]
        if len(s):
            _, counts = np.unique(s, return_counts=True)
            covered += int(np.sort(counts)[-2:].sum())
    return covered >= 0.8 * n


def _rtp_series(rows: dict[str, np.ndarray], truncated: bool  # type: ignore[type-arg]
                ) -> RtpSeries:
    """A flow's RTP samples (``rows``: its rows of each column, :func:`_looks_like_rtp`)
    as its series."""
    return RtpSeries(
        ts=rows["ts"].astype(np.float64) / NS, direction=rows["side"].astype(np.uint8),
        seq=rows["seq"].astype(np.uint16), rtp_ts=rows["rts"].astype(np.uint32),
        ssrc=rows["ssrc"].astype(np.uint32), pt=rows["pt"].astype(np.uint8),
        marker=rows["mk"].astype(np.uint8), size=rows["size"].astype(np.uint16),
        offset=rows["off"].astype(np.uint8), frame=rows["frame"].astype(np.int64),
        truncated=truncated)
