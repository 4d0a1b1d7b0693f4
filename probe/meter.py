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

import base64
import hashlib
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from probe.decode import KIND_FLOW, V4_MAPPED, Decoded, join_addr
from probe.layers import TUNNEL_NAMES, IcmpQuote, WeirdInfo
from probe.records import (
    FlowRecord,
    IcmpNotice,
    PayloadSample,
    RtpSeries,
    Weird,
)
from probe.sources import RawBatch

__all__ = ["FlowMeter", "MeterConfig", "MeterStats", "canonical_key"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
NS = 1_000_000_000
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah",
               58: "icmpv6", 89: "ospf", 103: "pim", 112: "vrrp", 132: "sctp"}
KEY_WIDTH = 6
KEY_BYTES = KEY_WIDTH * 8


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
    """Bytes kept of each payload sample."""
    timing_packets: int = 64
    """Packets per flow kept in the (timestamp, size, direction) timing series."""
    rtp_max_packets: int = 500_000
    """RTP header samples kept per flow (about 80 minutes of a two-way 50 pps call)."""
    chunk_size: int = 16 << 20
    """Bytes of capture read per batch."""


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
    """Packets with a decoding problem (some still counted in a flow)."""
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


def _mix(k: U64) -> U64:
    """A 64-bit hash of each key row (splitmix-style finaliser over the columns)."""
    h = np.zeros(k.shape[0], dtype=np.uint64)
    for j in range(k.shape[1]):
        h ^= k[:, j] + np.uint64(0x9E3779B97F4A7C15) + (h << np.uint64(6)) + (h >> np.uint64(2))
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
    return h


def canonical_key(cols: Decoded, idx: I64) -> tuple[U64, npt.NDArray[np.bool_]]:
    """The direction-free key of each packet and whether its sender is the lower endpoint.

    This is the one place the probe decides how the two ends of a flow are
    ordered. Rows: ``a_hi, a_lo, b_hi, b_lo, ports|proto|vlan, zone`` where ``a``
    is the lower (address, port) endpoint.
    """
    s_hi, s_lo, d_hi, d_lo = cols.src_hi[idx], cols.src_lo[idx], cols.dst_hi[idx], cols.dst_lo[idx]
    sp, dp = cols.sport[idx], cols.dport[idx]
    src_is_a = (s_hi < d_hi) | ((s_hi == d_hi) & ((s_lo < d_lo) | ((s_lo == d_lo) & (sp <= dp))))
    k = np.empty((len(idx), KEY_WIDTH), dtype=np.uint64)
    k[:, 0] = np.where(src_is_a, s_hi, d_hi)
    k[:, 1] = np.where(src_is_a, s_lo, d_lo)
    k[:, 2] = np.where(src_is_a, d_hi, s_hi)
    k[:, 3] = np.where(src_is_a, d_lo, s_lo)
    a_p = np.where(src_is_a, sp, dp).astype(np.uint64)
    b_p = np.where(src_is_a, dp, sp).astype(np.uint64)
    k[:, 4] = ((a_p << np.uint64(48)) | (b_p << np.uint64(32))
               | (cols.proto[idx].astype(np.uint64) << np.uint64(16))
               | (cols.vlan[idx] + 1).astype(np.uint64))
    k[:, 5] = cols.zone[idx].astype(np.uint64)
    return k, src_is_a


class _Log:
    """Rows appended per batch, keyed by flow serial, gathered when flows end.

    ``take`` touches each stored chunk once (a boolean lookup by serial), keeps
    the chunks that hold none of the requested flows as they are, and merges
    small chunks now and then so their number stays bounded.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = (*names, "fid")
        self.chunks: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]

    def add(self, fid: I64, **cols: np.ndarray) -> None:  # type: ignore[type-arg]
        if len(fid):
            cols["fid"] = fid
            self.chunks.append(cols)
            if len(self.chunks) > 48:
                self.chunks = [{n: np.concatenate([c[n] for c in self.chunks])
                                for n in self.names}]

    def take(self, fids: I64, lookup: npt.NDArray[np.bool_]
             ) -> tuple[dict[str, np.ndarray], I64, I64]:  # type: ignore[type-arg]
        """Remove and return the rows of ``fids`` (sorted; ``lookup[fid]`` is True for
        them), grouped by flow: (columns, start of each flow's rows, end)."""
        parts: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
        kept: list[dict[str, np.ndarray]] = []  # type: ignore[type-arg]
        for c in self.chunks:
            f = c["fid"]
            mask = lookup[f]
            if not mask.any():
                kept.append(c)
                continue
            parts.append({n: c[n][mask] for n in self.names})
            if not mask.all():
                keep = ~mask
                kept.append({n: c[n][keep] for n in self.names})
        self.chunks = kept
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
        return sum(len(c["fid"]) for c in self.chunks)


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
    n_pay: I64 = field(init=False)
    n_timing: I64 = field(init=False)
    n_rtp: I64 = field(init=False)
    tunnel: npt.NDArray[np.uint8] = field(init=False)
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
        self.n_pay = np.zeros((c, 2), dtype=np.int64)
        self.n_timing = np.zeros(c, dtype=np.int64)
        self.n_rtp = np.zeros(c, dtype=np.int64)
        self.tunnel = np.zeros(c, dtype=np.uint8)
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
            if name in ("seq_base", "fid"):
                arr[:] = -1
            arr[: self.cap] = old
            setattr(self, name, arr)
        self.cap = new

    def reset(self, slots: I64) -> None:
        for name in self.__dataclass_fields__:
            if name == "cap":
                continue
            arr = getattr(self, name)
            arr[slots] = -1 if name in ("seq_base", "fid") else 0


def _seg_rank(seg: I64) -> I64:
    """Position of each element within its run of equal values (input grouped)."""
    n = len(seg)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    start = np.ones(n, dtype=bool)
    start[1:] = seg[1:] != seg[:-1]
    first = np.flatnonzero(start)
    run = np.cumsum(start) - 1
    out: I64 = np.arange(n, dtype=np.int64) - first[run]
    return out


def _addr_str(hi: int, lo: int) -> tuple[int, str]:
    ver, a = join_addr(hi, lo)
    if ver == 4:
        return 4, socket.inet_ntop(socket.AF_INET, a.to_bytes(4, "big"))
    return 6, socket.inet_ntop(socket.AF_INET6, a.to_bytes(16, "big"))


def _uid(parts: str) -> str:
    digest = hashlib.blake2b(parts.encode(), digest_size=10).digest()
    return "C" + base64.b32encode(digest).decode().rstrip("=").lower()[:16]


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
        self._icmp: dict[int, list[IcmpNotice]] = {}
        self._flow_weirds: dict[int, list[tuple[int, int, WeirdInfo]]] = {}
        self._idle_ns = np.full(256, int(self.cfg.other_idle_s * NS), dtype=np.int64)
        self._idle_ns[6] = int(self.cfg.tcp_idle_s * NS)
        self._idle_ns[17] = int(self.cfg.udp_idle_s * NS)
        self._active_ns = int(self.cfg.active_s * NS)
        self._close_ns = int(self.cfg.tcp_close_s * NS)
        self._out: list[FlowRecord] = []
        self._now = 0

    # -- public ------------------------------------------------------------------
    def feed(self, b: RawBatch, cols: Decoded) -> list[FlowRecord]:
        """Meter one batch; return the flows that ended during it."""
        self._out = []
        st = self.stats
        st.packets += len(b)
        st.slow_path += cols.slow
        st.non_ip += int(np.count_nonzero(cols.kind == 1))
        st.weird += len(cols.weirds)
        idx = np.flatnonzero(cols.kind == KIND_FLOW)
        fid_of_pkt = np.full(len(b), -1, dtype=np.int64)
        if len(idx):
            self._meter(b, cols, idx, fid_of_pkt)
        for i, w in cols.weirds:
            frame = b.frame0 + i
            ts = int(b.ts_ns[i])
            f = int(fid_of_pkt[i])
            if f >= 0:
                self._flow_weirds.setdefault(f, []).append((frame, ts, w))
            else:
                self.weirds.append(Weird(frame, ts / NS, w.layer, w.offset, w.reason))
        for i, q in cols.icmp:
            self._attach_icmp(b.frame0 + i, int(b.ts_ns[i]), q)
        if len(b):
            self._now = max(self._now, int(b.ts_ns.max()))
            st.last_ts = self._now / NS
        self._expire(self._now)
        return self._out

    def finish(self) -> list[FlowRecord]:
        """End every flow still in the table (end reason ``eof``)."""
        self._out = []
        slots = np.flatnonzero(self._t.alive)
        self._end(slots, ["eof"] * len(slots))
        return self._out

    def active_flows(self) -> int:
        """Flows currently in the table."""
        return len(self._index)

    # -- metering ----------------------------------------------------------------
    def _meter(self, b: RawBatch, cols: Decoded, idx: I64, fid_of_pkt: I64) -> None:
        cfg = self.cfg
        t = self._t
        n = len(idx)
        self.stats.metered += n
        keys, src_is_a = canonical_key(cols, idx)
        h = _mix(keys)
        _, first, inv = np.unique(h, return_index=True, return_inverse=True)
        if not np.array_equal(keys, keys[first][inv]):  # 64-bit hash collision: exact grouping
            _, first, inv = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inv = inv.reshape(-1)
        order = np.argsort(inv, kind="stable")
        g_s = inv[order]
        ts_s = b.ts_ns[idx][order]
        proto_s = cols.proto[idx][order].astype(np.int64)
        flags_s = cols.flags[idx][order].astype(np.int64)
        side_s = (~src_is_a[order]).astype(np.int64)  # 0: endpoint a sent it
        n_groups = len(first)

        gkeys = keys[first]
        kb = gkeys.tobytes()
        index = self._index
        slot_g = np.fromiter(
            (index.get(kb[i * KEY_BYTES:(i + 1) * KEY_BYTES], -1) for i in range(n_groups)),
            dtype=np.int64, count=n_groups)

        gstart = np.ones(n, dtype=bool)
        gstart[1:] = g_s[1:] != g_s[:-1]
        gpos = np.flatnonzero(gstart)
        idle = self._idle_ns[proto_s]
        gap = np.zeros(n, dtype=np.int64)
        gap[1:] = ts_s[1:] - ts_s[:-1]
        split = gstart.copy()
        split |= gap > idle
        # Existing flows that went idle before this batch's first packet end first.
        has = slot_g >= 0
        ex_slot = np.where(has, slot_g, 0)
        stale = has & ((ts_s[gpos] - t.last_ns[ex_slot]) > idle[gpos])
        if stale.any():
            st_slots = slot_g[stale]
            self._end(st_slots, ["idle"] * len(st_slots))
            slot_g = np.where(stale, -1, slot_g)
            has = slot_g >= 0
        # Groups that need a packet-by-packet look: TCP SYN after close, active timeout.
        pure_syn = (proto_s == 6) & ((flags_s & (TCP_SYN | TCP_ACK)) == TCP_SYN)
        closing = (proto_s == 6) & ((flags_s & (TCP_FIN | TCP_RST)) != 0)
        g_has_syn = np.bincount(g_s, weights=pure_syn, minlength=n_groups) > 0
        g_has_close = np.bincount(g_s, weights=closing, minlength=n_groups) > 0
        g_first_ts = ts_s[gpos]
        g_last_ts = np.maximum.reduceat(ts_s, gpos)
        start_ts = np.where(has, t.first_ns[np.where(has, slot_g, 0)], g_first_ts)
        ex_closed = has & self._closed[np.where(has, slot_g, 0)]
        care = (g_has_syn & (g_has_close | ex_closed | has)) | (
            (g_last_ts - start_ts) > self._active_ns)
        reasons: dict[int, str] = {}  # sorted position of a segment's first packet -> why
        if care.any():
            self._careful(np.flatnonzero(care), gpos, n, ts_s, flags_s, proto_s, side_s, split,
                          slot_g, reasons)
        first_seg_new = has & np.isin(gpos, np.fromiter(reasons.keys(), dtype=np.int64,
                                                         count=len(reasons)))
        if first_seg_new.any():
            old = slot_g[first_seg_new]
            why = [reasons[int(p)] for p in gpos[first_seg_new]]
            self._end(old, ["tcp-close" if self._closed[s] else w for s, w in zip(old.tolist(),
                                                                                     why,
                                                                                     strict=True)])
            slot_g = np.where(first_seg_new, -1, slot_g)
            has = slot_g >= 0

        seg_s = np.cumsum(split) - 1
        spos = np.flatnonzero(split)
        n_seg = len(spos)
        seg_group = g_s[spos]
        seg_first_in_group = gstart[spos]
        seg_last_in_group = np.ones(n_seg, dtype=bool)
        seg_last_in_group[:-1] = seg_group[1:] != seg_group[:-1]
        cont = seg_first_in_group & (slot_g[seg_group] >= 0)
        seg_slot = np.where(cont, slot_g[seg_group], -1)
        new_seg = np.flatnonzero(~cont)
        new_slots = self._alloc(len(new_seg))
        seg_slot[new_seg] = new_slots
        t = self._t
        # Initialise new flows.
        if len(new_seg):
            fp = spos[new_seg]  # first packet (sorted position)
            fl = flags_s[fp]
            first_side = side_s[fp]
            synack = (proto_s[fp] == 6) & ((fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK))
            orig_side = np.where(synack, 1 - first_side, first_side)
            ns = new_slots
            t.key[ns] = keys[order[fp]]
            o_idx = idx[order[fp]]
            t.ipver[ns] = cols.ipver[o_idx]
            t.tunnel[ns] = cols.tunnel[o_idx]
            t.orig_is_a[ns] = orig_side == 0
            t.first_ns[ns] = ts_s[fp]
            t.first_frame[ns] = b.frame0 + o_idx
            fids = np.arange(self._next_fid, self._next_fid + len(ns), dtype=np.int64)
            self._next_fid += len(ns)
            t.fid[ns] = fids
            t.alive[ns] = True
            kg = gkeys[seg_group[new_seg]].tobytes()
            last_new = seg_last_in_group[new_seg]
            for j, s in enumerate(ns.tolist()):
                if last_new[j]:
                    kbytes = kg[j * KEY_BYTES:(j + 1) * KEY_BYTES]
                    index[kbytes] = s
                    self._slot_key[s] = kbytes
        # Sums per (segment, side).
        pkt_o = order  # sorted position -> index into idx
        seg_side = seg_s * 2 + side_s
        m2 = 2 * n_seg
        pay_s = cols.pay_len[idx][pkt_o]
        wire_s = b.wirelen[idx][pkt_o]
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
        last_ts = np.maximum.reduceat(ts_s, spos)
        t.last_ns[seg_slot] = np.maximum(t.last_ns[seg_slot], last_ts)
        frame_s = b.frame0 + idx[pkt_o]
        t.last_frame[seg_slot] = np.maximum(t.last_frame[seg_slot], frame_s[seg_end - 1])
        fl2 = t.flags[seg_slot]
        self._closed_grow()
        self._closed[seg_slot] = ((fl2[:, 0] & TCP_FIN) & (fl2[:, 1] & TCP_FIN)).astype(bool) | (
            ((fl2[:, 0] | fl2[:, 1]) & TCP_RST) != 0)
        slot_s = seg_slot[seg_s]
        fid_s = t.fid[slot_s]
        fid_of_pkt[idx[pkt_o]] = fid_s
        orig_side_s = np.where(t.orig_is_a[slot_s], 0, 1)
        dir_s = (side_s != orig_side_s).astype(np.uint8)

        # TCP retransmissions: data already covered in the same direction.
        tcp_data = (proto_s == 6) & (pay_s > 0)
        if tcp_data.any():
            self._retrans(np.flatnonzero(tcp_data), cols, idx, pkt_o, seg_slot, seg_s, side_s,
                          pay_s)
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
        # Payload samples and RTP headers.
        has_pay = cols.pay_cap[idx][pkt_o] > 0
        if has_pay.any():
            self._samples(b, cols, idx, pkt_o, np.flatnonzero(has_pay), seg_slot, seg_s, side_s,
                          dir_s, ts_s, proto_s, fid_s, slot_s)
        # Segments that are not the last of their group are finished flows.
        done = np.flatnonzero(~seg_last_in_group)
        if len(done):
            why = []
            for j in done.tolist():
                p = int(spos[j + 1])
                s = int(seg_slot[j])
                why.append("tcp-close" if self._closed[s] else reasons.get(p, "idle"))
            self._end(seg_slot[done], why)

    def _careful(self, groups: I64, gpos: I64, n: int, ts_s: I64, flags_s: I64, proto_s: I64,
                 side_s: I64, split: npt.NDArray[np.bool_], slot_g: I64,
                 reasons: dict[int, str]) -> None:
        """Packet-by-packet segmentation for groups where TCP reuse or the active timeout apply."""
        t = self._t
        ends = np.append(gpos[1:], n)
        idle_all = self._idle_ns
        for g in groups.tolist():
            a, z = int(gpos[g]), int(ends[g])
            s = int(slot_g[g])
            if s >= 0:
                seg_first = int(t.first_ns[s])
                fin_a = bool(t.flags[s, 0] & TCP_FIN)
                fin_b = bool(t.flags[s, 1] & TCP_FIN)
                rst = bool((t.flags[s, 0] | t.flags[s, 1]) & TCP_RST)
                has_pkts = True
                last = int(t.last_ns[s])
            else:
                seg_first = int(ts_s[a])
                fin_a = fin_b = rst = False
                has_pkts = False
                last = seg_first
            idle = int(idle_all[proto_s[a]])
            is_tcp = proto_s[a] == 6
            for p in range(a, z):
                tp = int(ts_s[p])
                f = int(flags_s[p])
                why = None
                if has_pkts and tp - last > idle:
                    why = "idle"
                elif has_pkts and tp - seg_first > self._active_ns:
                    why = "active"
                elif (is_tcp and has_pkts and (f & (TCP_SYN | TCP_ACK)) == TCP_SYN
                      and ((fin_a and fin_b) or rst)):
                    why = "port-reuse"
                if why is not None:
                    split[p] = True
                    reasons[p] = why
                    seg_first = tp
                    fin_a = fin_b = rst = False
                has_pkts = True
                last = tp
                if is_tcp:
                    if f & TCP_FIN:
                        if side_s[p] == 0:
                            fin_a = True
                        else:
                            fin_b = True
                    if f & TCP_RST:
                        rst = True

    def _retrans(self, sel: I64, cols: Decoded, idx: I64, pkt_o: I64, seg_slot: I64, seg_s: I64,
                 side_s: I64, pay_s: I64) -> None:
        t = self._t
        ss = seg_s[sel] * 2 + side_s[sel]
        o = np.argsort(ss, kind="stable")
        sel = sel[o]
        ss = ss[o]
        slot = seg_slot[seg_s[sel]]
        side = side_s[sel]
        seq = cols.seq[idx][pkt_o][sel]
        ln = pay_s[sel]
        base = t.seq_base[slot, side]
        rank = _seg_rank(ss)
        firsts = rank == 0
        unknown = firsts & (base < 0)
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
        is_re = val <= prev
        m = np.flatnonzero(is_re)
        if len(m):
            np.add.at(t.retrans, (slot[m], side[m]), 1)
        lastpos = np.append(np.flatnonzero(firsts)[1:], len(sel)) - 1
        new_max = np.maximum(cm[lastpos] - offset[lastpos], carried[lastpos])
        t.seq_max[slot[lastpos], side[lastpos]] = new_max

    def _samples(self, b: RawBatch, cols: Decoded, idx: I64, pkt_o: I64, sel: I64,
                 seg_slot: I64, seg_s: I64, side_s: I64, dir_s: npt.NDArray[np.uint8],
                 ts_s: I64, proto_s: I64, fid_s: I64, slot_s: I64) -> None:
        cfg = self.cfg
        t = self._t
        ss = seg_s[sel] * 2 + side_s[sel]
        o = np.argsort(ss, kind="stable")
        sel_o = sel[o]
        rank = _seg_rank(ss[o])
        slot = slot_s[sel_o]
        side = side_s[sel_o]
        keep = rank + t.n_pay[slot, side] < cfg.payload_samples
        if keep.any():
            k = sel_o[keep]
            np.add.at(t.n_pay, (slot[keep], side[keep]), 1)
            po = cols.pay_off[idx][pkt_o][k]
            pc = np.minimum(cols.pay_cap[idx][pkt_o][k], cfg.payload_snap)
            starts = np.cumsum(pc) - pc
            arr = np.frombuffer(b.buf, dtype=np.uint8)
            pool = arr[np.repeat(po - starts, pc) + np.arange(int(pc.sum()))].tobytes()
            self._pay_log.add(fid_s[k], starts, pc, b.frame0 + idx[pkt_o][k], ts_s[k],
                              dir_s[k], pool)
        # RTP header fields of UDP payloads, plain or behind a known framing.
        udp = proto_s[sel] == 17
        if not udp.any():
            return
        u = sel[udp]
        po = cols.pay_off[idx][pkt_o][u]
        pc = cols.pay_cap[idx][pkt_o][u]
        arr = np.frombuffer(b.buf, dtype=np.uint8)
        top = len(b.buf) - 1
        b0 = arr[np.minimum(po, top)].astype(np.int64)
        rtp_off = np.full(len(u), -1, dtype=np.int64)
        for cand, cond in _rtp_framings(arr, po, pc, b0, top):
            rtp_off = np.where((rtp_off < 0) & cond, cand, rtp_off)
        ok = rtp_off >= 0
        if not ok.any():
            return
        u = u[ok]
        base = po[ok] + rtp_off[ok]
        slot = slot_s[u]
        rank = _seg_rank(slot)  # packets are grouped by segment, so by slot
        keep = rank + t.n_rtp[slot] < cfg.rtp_max_packets
        np.add.at(t.n_rtp, slot, 1)
        if not keep.any():
            return
        u = u[keep]
        base = base[keep]
        rb = arr[np.minimum(base[:, None] + np.arange(12), top)].astype(np.int64)
        self._rtp.add(
            fid_s[u], ts=ts_s[u], side=dir_s[u],
            seq=((rb[:, 2] << 8) | rb[:, 3]).astype(np.uint16),
            rts=((rb[:, 4] << 24) | (rb[:, 5] << 16) | (rb[:, 6] << 8) | rb[:, 7]).astype(
                np.uint32),
            ssrc=((rb[:, 8] << 24) | (rb[:, 9] << 16) | (rb[:, 10] << 8) | rb[:, 11]).astype(
                np.uint32),
            pt=(rb[:, 1] & 0x7F).astype(np.uint8), mk=(rb[:, 1] >> 7).astype(np.uint8),
            size=np.minimum(cols.pay_len[idx][pkt_o][u], 65535).astype(np.uint16),
            off=rtp_off[ok][keep].astype(np.uint8),
            frame=b.frame0 + idx[pkt_o][u])

    def _attach_icmp(self, frame: int, ts: int, q: IcmpQuote) -> None:
        v4 = q.ipver == 4

        def halves(a: int) -> tuple[int, int]:
            return (0, V4_MAPPED | a) if v4 else (a >> 64, a & 0xFFFFFFFFFFFFFFFF)

        s = (*halves(q.src), q.sport)
        d = (*halves(q.dst), q.dport)
        a, bb = (s, d) if s <= d else (d, s)
        row = np.array([a[0], a[1], bb[0], bb[1], (a[2] << 48) | (bb[2] << 32) | (q.proto << 16),
                        0], dtype=np.uint64)
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
        proto = (t.key[alive, 4] >> np.uint64(16)).astype(np.int64) & 0xFF
        idle = self._idle_ns[proto]
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
        """Turn table rows into records, hand them out, free the rows."""
        if len(slots) == 0:
            return
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

        def grouped(log: _Log) -> tuple[dict[str, np.ndarray], list[int], list[int]]:  # type: ignore[type-arg]
            cols, st, en = log.take(fids_sorted, lookup)
            return cols, st[pos_of].tolist(), en[pos_of].tolist()

        tim, tim_a, tim_z = grouped(self._timing)
        tim_ts = tim["ts"].astype(np.float64) / NS
        tim_len = tim["len"].astype(np.int32)
        tim_dir = tim["side"].astype(np.uint8)
        tim_fl = tim["flags"].astype(np.uint8)
        rate_rows, rate_fid = _merge_rate(self._rate.take(fids_sorted, lookup)[0])
        rate_a = np.searchsorted(rate_fid, fids, side="left").tolist()
        rate_z = np.searchsorted(rate_fid, fids, side="right").tolist()
        need_rtp = bool((t.n_rtp[slots] > 0).any())
        if need_rtp:
            rtp, rtp_a, rtp_z = grouped(self._rtp)
        payloads = self._pay_log.take(lookup)
        # Plain Python values for every column at once.
        key = t.key[slots]
        a_hi, a_lo, b_hi, b_lo = (key[:, i].tolist() for i in range(4))
        k4 = key[:, 4].tolist()
        zone = key[:, 5].tolist()
        o_is_a = t.orig_is_a[slots].tolist()
        first_ns = t.first_ns[slots].tolist()
        last_ns = t.last_ns[slots].tolist()
        first_fr = t.first_frame[slots].tolist()
        last_fr = t.last_frame[slots].tolist()
        pkts, pay, wire = t.pkts[slots].tolist(), t.pay[slots].tolist(), t.wire[slots].tolist()
        flags, retr = t.flags[slots].tolist(), t.retrans[slots].tolist()
        tunnels = t.tunnel[slots].tolist()
        n_rtp = t.n_rtp[slots].tolist()
        fid_l = fids.tolist()
        cap = self.cfg.rtp_max_packets
        for j in range(len(slots)):
            fid = fid_l[j]
            o = 0 if o_is_a[j] else 1
            r = 1 - o
            a_ver, a_str = _addr_str(a_hi[j], a_lo[j])
            _, b_str = _addr_str(b_hi[j], b_lo[j])
            kk = k4[j]
            a_port, b_port = kk >> 48, (kk >> 32) & 0xFFFF
            proto = (kk >> 16) & 0xFF
            vlan = (kk & 0xFFFF) - 1
            if o == 0:
                oh, op, rh, rp = a_str, a_port, b_str, b_port
            else:
                oh, op, rh, rp = b_str, b_port, a_str, a_port
            pname = PROTO_NAMES.get(proto, str(proto))
            uid = _uid(f"{pname}|{oh}|{op}|{rh}|{rp}|{vlan}|{zone[j]}|{first_ns[j]}")
            ta, tz = tim_a[j], tim_z[j]
            rr = rate_rows[rate_a[j]:rate_z[j]]
            if o == 1:
                rr = rr[:, [0, 3, 4, 1, 2]]
            rtp_series = None
            if need_rtp and n_rtp[j] >= 4:
                rtp_series = _rtp_series(rtp, rtp_a[j], rtp_z[j], pkts[j][0] + pkts[j][1],
                                         n_rtp[j] > cap)
            weirds = tuple(Weird(fr, ts / NS, w.layer, w.offset, w.reason, uid)
                           for fr, ts, w in self._flow_weirds.pop(fid, ()))
            rec = FlowRecord(
                uid=uid, proto=pname, ip_version=a_ver, orig_h=oh, orig_p=op, resp_h=rh,
                resp_p=rp, first_ts=first_ns[j] / NS, last_ts=last_ns[j] / NS,
                orig_pkts=pkts[j][o], orig_bytes=pay[j][o], orig_wire_bytes=wire[j][o],
                resp_pkts=pkts[j][r], resp_bytes=pay[j][r], resp_wire_bytes=wire[j][r],
                orig_flags=flags[j][o], resp_flags=flags[j][r], orig_retrans=retr[j][o],
                resp_retrans=retr[j][r], first_frame=first_fr[j], last_frame=last_fr[j],
                end_reason=reasons[j], vlan=vlan if vlan >= 0 else None,
                tunnel=TUNNEL_NAMES.get(tunnels[j]), icmp=tuple(self._icmp.pop(fid, ())),
                weirds=weirds, payloads=payloads.get(fid, ()),
                pkt_ts=tim_ts[ta:tz], pkt_len=tim_len[ta:tz], pkt_dir=tim_dir[ta:tz],
                pkt_flags=tim_fl[ta:tz], rate=rr, rtp=rtp_series)
            self.stats.flows += 1
            if self._emit is not None:
                self._emit(rec)
            self._out.append(rec)
        for s in slots.tolist():
            kb = self._slot_key.pop(s, None)
            if kb is not None and self._index.get(kb) == s:
                del self._index[kb]
        t.reset(slots)
        self._closed[slots] = False
        self._free.extend(slots.tolist())


@dataclass(slots=True)
class _PayloadChunk:
    fid: I64
    off: I64
    length: I64
    frame: I64
    ts: I64
    direction: npt.NDArray[np.uint8]
    pool: bytes


class _PayloadLog:
    """Payload samples of one batch share one byte pool; rows point into it."""

    def __init__(self) -> None:
        self.chunks: list[_PayloadChunk] = []

    def add(self, fid: I64, off: I64, length: I64, frame: I64, ts: I64,
            direction: npt.NDArray[np.uint8], pool: bytes) -> None:
        if len(fid):
            self.chunks.append(_PayloadChunk(fid, off, length, frame, ts, direction, pool))

    def take(self, lookup: npt.NDArray[np.bool_]) -> dict[int, tuple[PayloadSample, ...]]:
        out: dict[int, list[PayloadSample]] = {}
        kept: list[_PayloadChunk] = []
        for c in self.chunks:
            mask = lookup[c.fid]
            if not mask.any():
                kept.append(c)
                continue
            sel = np.flatnonzero(mask)
            pool = c.pool
            for f, o, n, fr, t, d in zip(c.fid[sel].tolist(), c.off[sel].tolist(),
                                         c.length[sel].tolist(), c.frame[sel].tolist(),
                                         (c.ts[sel] / NS).tolist(), c.direction[sel].tolist(),
                                         strict=True):
                out.setdefault(f, []).append(PayloadSample(fr, t, d, pool[o:o + n]))
            if mask.all():
                continue
            rest = ~mask
            nc = _PayloadChunk(c.fid[rest], c.off[rest], c.length[rest], c.frame[rest],
                               c.ts[rest], c.direction[rest], pool)
            live = int(nc.length.sum())
            if len(pool) > (1 << 20) and live * 4 < len(pool):  # repack a mostly dead pool
                arr = np.frombuffer(pool, dtype=np.uint8)
                starts = np.cumsum(nc.length) - nc.length
                nc.pool = arr[np.repeat(nc.off - starts, nc.length)
                              + np.arange(live)].tobytes()
                nc.off = starts
            kept.append(nc)
        self.chunks = kept
        return {f: tuple(v) for f, v in out.items()}


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


def _rtp_framings(arr: npt.NDArray[np.uint8], po: I64, pc: I64, b0: I64,
                  top: int) -> list[tuple[int | I64, npt.NDArray[np.bool_]]]:
    """Candidate RTP header offsets inside UDP payloads, most common first.

    Plain RTP (RFC 3550, version 2, not an RTCP packet type 200-204), RTP inside
    TURN ChannelData (RFC 8656 §12.4: 4-byte header, channel 0x4000-0x4FFF), and
    RTP behind Zoom's media encapsulation (type 5 server framing, an 8-byte
    header then a media header whose first byte names the media).
    """
    def byte(rel: int | I64) -> I64:
        out: I64 = arr[np.minimum(po + rel, top)].astype(np.int64)
        return out

    def rtp_at(rel: int | I64) -> npt.NDArray[np.bool_]:
        v = byte(rel)
        pt = byte(np.asarray(rel) + 1) & 0x7F
        ok: npt.NDArray[np.bool_] = (((v & 0xC0) == 0x80) & ((pt < 72) | (pt > 76))
                                     & (pc >= np.asarray(rel) + 12))
        return ok

    out: list[tuple[int | I64, npt.NDArray[np.bool_]]] = [(0, rtp_at(0))]
    chan = (b0 >= 0x40) & (b0 <= 0x4F)
    out.append((4, chan & rtp_at(4)))
    zoom = (b0 == 0x05) & (pc > 40)
    media = byte(8)
    zoff = np.select([media == 15, media == 16, media == 13, media == 30],
                     [8 + 19, 8 + 24, 8 + 27, 8 + 20], default=0)
    out.append((zoff, zoom & (zoff > 0) & rtp_at(zoff)))
    return out


def _rtp_series(rtp: dict[str, np.ndarray], a: int, z: int, flow_pkts: int,  # type: ignore[type-arg]
                truncated: bool) -> RtpSeries | None:
    """Keep the RTP samples only if the flow looks like RTP: most packets, few SSRCs."""
    n = z - a
    ssrc = rtp["ssrc"][a:z]
    side = rtp["side"][a:z]
    if n < max(4, flow_pkts // 2):
        return None
    # A media stream keeps its SSRC: the top two SSRCs per direction cover nearly everything.
    covered = 0
    for d in (0, 1):
        s = ssrc[side == d]
        if len(s):
            _, counts = np.unique(s, return_counts=True)
            covered += int(np.sort(counts)[-2:].sum())
    if covered < 0.8 * n:
        return None
    return RtpSeries(
        ts=rtp["ts"][a:z].astype(np.float64) / NS, direction=side.astype(np.uint8),
        seq=rtp["seq"][a:z].astype(np.uint16), rtp_ts=rtp["rts"][a:z].astype(np.uint32),
        ssrc=ssrc.astype(np.uint32), pt=rtp["pt"][a:z].astype(np.uint8),
        marker=rtp["mk"][a:z].astype(np.uint8), size=rtp["size"][a:z].astype(np.uint16),
        offset=rtp["off"][a:z].astype(np.uint8), frame=rtp["frame"][a:z].astype(np.int64),
        truncated=truncated)
