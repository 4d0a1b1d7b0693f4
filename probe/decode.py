"""Packet decoding, in two speeds.

The fast path decodes a whole :class:`~probe.sources.RawBatch` column-wise
with numpy: link layer (Ethernet with one 802.1Q tag, Linux cooked v1/v2, raw
IP, BSD loopback), plain IPv4/IPv6 and the TCP/UDP/ICMP headers. Any packet
that needs more (stacked tags, MPLS, GRE/ERSPAN, VXLAN, GTP-U, IP-in-IP, IPv6
extension headers, fragments, ICMP errors, or anything odd) is sent through
the per-packet decoder in :mod:`probe.layers`, which fills the same columns or
reports a :class:`~probe.records.Weird`.

Addresses are held as two uint64 halves; an IPv4 address ``a`` is stored in
its IPv4-mapped IPv6 form (``hi = 0``, ``lo = 0xffff00000000 | a``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from probe.layers import (
    GTPU_PORT,
    LOOP_INET6_FAMILIES,
    TUNNEL_NONE,
    VXLAN_PORT,
    IcmpQuote,
    PacketInfo,
    SlowDecoder,
    WeirdInfo,
)
from probe.sources import LinkType, RawBatch

__all__ = ["KIND_FLOW", "KIND_NONIP", "KIND_WEIRD", "V4_MAPPED", "Decoded", "Decoder", "join_addr",
           "split_addr"]

KIND_FLOW = 0
"""The packet belongs to a flow (its key columns are valid)."""
KIND_NONIP = 1
"""Not an IP packet (ARP, LLDP...): counted, not metered."""
KIND_WEIRD = 2
"""Could not be decoded far enough to name a flow."""

V4_MAPPED = 0xFFFF00000000

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


@dataclass(slots=True)
class Decoded:
    """Per-packet columns for one batch (index = position in the batch)."""

    kind: npt.NDArray[np.uint8]
    ipver: npt.NDArray[np.uint8]
    src_hi: U64
    src_lo: U64
    dst_hi: U64
    dst_lo: U64
    proto: npt.NDArray[np.uint8]
    sport: I64
    dport: I64
    flags: npt.NDArray[np.uint8]
    seq: I64
    ack: I64
    """TCP acknowledgement number (0 for other protocols)."""
    pay_off: I64
    pay_len: I64
    pay_cap: I64
    vlan: I64
    zone: I64
    tunnel: npt.NDArray[np.uint8]
    weirds: list[tuple[int, WeirdInfo]]
    """(batch index, what went wrong); the packet may still have a flow (kind FLOW)."""
    icmp: list[tuple[int, IcmpQuote]]
    """(batch index, the quoted packet) for ICMP errors."""
    slow: int
    """How many packets went through the per-packet decoder."""


# The readers below take a column of positions, some of which may lie past the end of a
# packet (a mask rejects those packets afterwards); each clamps its positions so that the
# bytes it reads lie inside the buffer. The clamp is by the width read: a field that ends
# exactly at the end of the buffer (the last packet of a chunk) is read where it is.


def _u8(arr: npt.NDArray[np.uint8], idx: I64) -> I64:
    return arr[np.minimum(idx, len(arr) - 1)].astype(np.int64)


def _be16(arr: npt.NDArray[np.uint8], idx: I64) -> I64:
    idx = np.minimum(idx, len(arr) - 2)
    return (arr[idx].astype(np.int64) << 8) | arr[idx + 1]


def _be32(arr: npt.NDArray[np.uint8], idx: I64) -> I64:
    idx = np.minimum(idx, len(arr) - 4)
    b = arr[idx[:, None] + np.arange(4)].astype(np.int64)
    out: I64 = (b[:, 0] << 24) | (b[:, 1] << 16) | (b[:, 2] << 8) | b[:, 3]
    return out


def _be64(arr: npt.NDArray[np.uint8], idx: I64) -> U64:
    idx = np.minimum(idx, len(arr) - 8)
    b = arr[idx[:, None] + np.arange(8)]
    out: U64 = b.copy().view(">u8").reshape(-1).astype(np.uint64)
    return out


class Decoder:
    """Decodes batches; keeps the IPv4/IPv6 fragment table between batches."""

    def __init__(self) -> None:
        self._slow = SlowDecoder()

    def decode(self, b: RawBatch) -> Decoded:
        n = len(b)
        buf = b.buf
        arr = np.frombuffer(buf, dtype=np.uint8)
        if len(arr) < 16:
            arr = np.concatenate([arr, np.zeros(16, dtype=np.uint8)])
        off = b.data_off
        cap = b.caplen
        lt = b.linktype
        end = off + cap

        l3 = np.full(n, -1, dtype=np.int64)
        et = np.zeros(n, dtype=np.int64)
        vlan = np.full(n, -1, dtype=np.int64)
        slow = np.zeros(n, dtype=bool)

        eth = lt == LinkType.ETHERNET
        if eth.any():
            ok = eth & (cap >= 14)
            slow |= eth & ~ok
            e = _be16(arr, off + 12)
            tag = ok & (e == 0x8100)
            e2 = _be16(arr, off + 16)
            tag_ok = tag & (cap >= 18)
            slow |= tag & ~tag_ok
            vlan = np.where(tag_ok, _be16(arr, off + 14) & 0x0FFF, vlan)
            et = np.where(ok, np.where(tag_ok, e2, e), et)
            l3 = np.where(ok, np.where(tag_ok, off + 18, off + 14), l3)
        sll = lt == LinkType.LINUX_SLL
        if sll.any():
            ok = sll & (cap >= 16)
            slow |= sll & ~ok
            et = np.where(ok, _be16(arr, off + 14), et)
            l3 = np.where(ok, off + 16, l3)
        sll2 = lt == LinkType.LINUX_SLL2
        if sll2.any():
            ok = sll2 & (cap >= 20)
            slow |= sll2 & ~ok
            et = np.where(ok, _be16(arr, off), et)
            l3 = np.where(ok, off + 20, l3)
        raw = np.isin(lt, (LinkType.RAW, LinkType.RAW_12, LinkType.RAW_14, LinkType.IPV4,
                           LinkType.IPV6))
        if raw.any():
            ok = raw & (cap >= 1)
            slow |= raw & ~ok
            v = _u8(arr, off) >> 4
            et = np.where(ok, np.where(v == 4, 0x0800, np.where(v == 6, 0x86DD, -1)), et)
            l3 = np.where(ok, off, l3)
        loop = (lt == LinkType.NULL) | (lt == LinkType.LOOP)
        if loop.any():
            ok = loop & (cap >= 5)
            slow |= loop & ~ok
            # The address family says what follows, as in the per-packet decoder: host
            # order for NULL (read the other way when it cannot be little-endian), network
            # order for LOOP; any family but IPv4's and IPv6's is not IP.
            be = _be32(arr, off)
            le = (((be & 0xFF) << 24) | (((be >> 8) & 0xFF) << 16) | (((be >> 16) & 0xFF) << 8)
                  | (be >> 24))
            fam = np.where((lt == LinkType.NULL) & (le <= 0xFFFF), le, be)
            et = np.where(ok, np.where(fam == 2, 0x0800,
                                       np.where(np.isin(fam, LOOP_INET6_FAMILIES), 0x86DD, -1)), et)
            l3 = np.where(ok, off + 4, l3)
        known = eth | sll | sll2 | raw | loop
        slow |= ~known
        # Anything layered (stacked tags, MPLS, PPPoE...) goes the slow way.
        slow |= np.isin(et, (0x8100, 0x88A8, 0x9100, 0x8847, 0x8848, 0x88BE, 0x8864))

        avail = end - l3
        ip_wire = b.wirelen - (l3 - off)
        ipver = np.zeros(n, dtype=np.uint8)
        proto = np.zeros(n, dtype=np.int64)
        src_hi = np.zeros(n, dtype=np.uint64)
        src_lo = np.zeros(n, dtype=np.uint64)
        dst_hi = np.zeros(n, dtype=np.uint64)
        dst_lo = np.zeros(n, dtype=np.uint64)
        l4 = np.zeros(n, dtype=np.int64)
        ip_pay = np.zeros(n, dtype=np.int64)

        i4 = np.flatnonzero(~slow & (et == 0x0800))
        if len(i4):
            L = l3[i4]
            h0 = _u8(arr, L)
            ihl = (h0 & 0x0F) * 4
            tot = _be16(arr, L + 2)
            frag = _be16(arr, L + 6)
            pr = _u8(arr, L + 9)
            av = avail[i4]
            good = ((av >= 20) & ((h0 >> 4) == 4) & (ihl >= 20) & (av >= ihl) & (tot >= ihl)
                    & (tot <= ip_wire[i4]) & ((frag & 0x3FFF) == 0)
                    & (pr != 4) & (pr != 41) & (pr != 47))
            slow[i4[~good]] = True
            g = i4[good]
            Lg = L[good]
            ipver[g] = 4
            proto[g] = pr[good]
            src_lo[g] = (_be32(arr, Lg + 12) | V4_MAPPED).astype(np.uint64)
            dst_lo[g] = (_be32(arr, Lg + 16) | V4_MAPPED).astype(np.uint64)
            l4[g] = Lg + ihl[good]
            ip_pay[g] = tot[good] - ihl[good]
        i6 = np.flatnonzero(~slow & (et == 0x86DD))
        if len(i6):
            L = l3[i6]
            h0 = _u8(arr, L)
            plen = _be16(arr, L + 4)
            nh = _u8(arr, L + 6)
            good = ((avail[i6] >= 40) & ((h0 >> 4) == 6) & (plen > 0)
                    & (plen + 40 <= ip_wire[i6]) & np.isin(nh, (6, 17, 58, 132, 59)))
            slow[i6[~good]] = True
            g = i6[good]
            Lg = L[good]
            ipver[g] = 6
            proto[g] = nh[good]
            src_hi[g] = _be64(arr, Lg + 8)
            src_lo[g] = _be64(arr, Lg + 16)
            dst_hi[g] = _be64(arr, Lg + 24)
            dst_lo[g] = _be64(arr, Lg + 32)
            l4[g] = Lg + 40
            ip_pay[g] = plen[good]

        sport = np.zeros(n, dtype=np.int64)
        dport = np.zeros(n, dtype=np.int64)
        flags = np.zeros(n, dtype=np.int64)
        seq = np.zeros(n, dtype=np.int64)
        ack = np.zeros(n, dtype=np.int64)
        hdr = np.zeros(n, dtype=np.int64)
        fast = np.zeros(n, dtype=bool)
        ip = ipver > 0
        it = np.flatnonzero(ip & (proto == 6))
        if len(it):
            L = l4[it]
            thl = (_u8(arr, L + 12) >> 4) * 4
            good = ((end[it] - L) >= 14) & (thl >= 20) & (thl <= ip_pay[it])
            slow[it[~good]] = True
            g = it[good]
            Lg = L[good]
            sport[g] = _be16(arr, Lg)
            dport[g] = _be16(arr, Lg + 2)
            seq[g] = _be32(arr, Lg + 4)
            ack[g] = _be32(arr, Lg + 8)
            flags[g] = _u8(arr, Lg + 13)
            hdr[g] = thl[good]
            fast[g] = True
        iu = np.flatnonzero(ip & (proto == 17))
        if len(iu):
            L = l4[iu]
            sp = _be16(arr, L)
            dp = _be16(arr, L + 2)
            ulen = _be16(arr, L + 4)
            pay = ip_pay[iu]
            good = (((end[iu] - L) >= 8) & (pay >= 8) & (ulen == pay)
                    & (sp != VXLAN_PORT) & (dp != VXLAN_PORT) & (sp != GTPU_PORT)
                    & (dp != GTPU_PORT))
            slow[iu[~good]] = True
            g = iu[good]
            sport[g] = sp[good]
            dport[g] = dp[good]
            hdr[g] = 8
            fast[g] = True
        ic = np.flatnonzero(ip & ((proto == 1) | (proto == 58)))
        if len(ic):
            L = l4[ic]
            ty = _u8(arr, L)
            err = np.where(proto[ic] == 1, np.isin(ty, (3, 4, 5, 11, 12)), ty < 128)
            bad = err | ((end[ic] - L) < 1)
            slow[ic[bad]] = True
        other = ip & (proto != 6) & (proto != 17)
        fast |= other
        fast &= ~slow

        kind = np.full(n, KIND_NONIP, dtype=np.uint8)
        kind[fast] = KIND_FLOW
        pay_off = l4 + hdr
        pay_len = np.maximum(ip_pay - hdr, 0)
        pay_cap = np.clip(end - pay_off, 0, pay_len)
        zone = np.zeros(n, dtype=np.int64)
        tunnel = np.full(n, TUNNEL_NONE, dtype=np.uint8)

        cols = Decoded(kind, ipver, src_hi, src_lo, dst_hi, dst_lo, proto.astype(np.uint8),
                       sport, dport, flags.astype(np.uint8), seq, ack, pay_off, pay_len, pay_cap,
                       vlan, zone, tunnel, [], [], 0)
        slow_idx = np.flatnonzero(slow)
        cols.slow = len(slow_idx)
        if len(slow_idx):
            self._fill_slow(cols, b, slow_idx)
        return cols

    def _fill_slow(self, cols: Decoded, b: RawBatch, idx: I64) -> None:
        buf = b.buf
        offs = b.data_off[idx].tolist()
        caps = b.caplen[idx].tolist()
        wires = b.wirelen[idx].tolist()
        lts = b.linktype[idx].tolist()
        tss = b.ts_ns[idx].tolist()
        results: list[tuple[int, PacketInfo | None, WeirdInfo | None]] = []
        for i, o, c, w, lt, ts in zip(idx.tolist(), offs, caps, wires, lts, tss, strict=True):
            info, weird = self._slow.decode(buf, o, c, w, lt, ts)
            results.append((i, info, weird))
        self._slow.resolve_pending(results)
        for i, info, weird in results:
            if weird is not None:
                cols.weirds.append((i, weird))
            if info is None:
                cols.kind[i] = KIND_WEIRD if weird is not None else KIND_NONIP
                continue
            cols.kind[i] = KIND_FLOW
            cols.ipver[i] = info.ipver
            cols.src_hi[i], cols.src_lo[i] = _split(info.src, info.ipver)
            cols.dst_hi[i], cols.dst_lo[i] = _split(info.dst, info.ipver)
            cols.proto[i] = info.proto
            cols.sport[i] = info.sport
            cols.dport[i] = info.dport
            cols.flags[i] = info.flags
            cols.seq[i] = info.seq
            cols.ack[i] = info.ack
            cols.pay_off[i] = info.pay_off
            cols.pay_len[i] = info.pay_len
            cols.pay_cap[i] = info.pay_cap
            cols.vlan[i] = info.vlan
            cols.zone[i] = info.zone
            cols.tunnel[i] = info.tunnel
            if info.quote is not None:
                cols.icmp.append((i, info.quote))


def split_addr(addr: int, ipver: int) -> tuple[int, int]:
    """The two stored halves of an integer address of IP version ``ipver`` (IPv4 in its
    mapped form); the inverse of :func:`join_addr`."""
    if ipver == 4:
        return 0, V4_MAPPED | addr
    return addr >> 64, addr & 0xFFFFFFFFFFFFFFFF


def _split(addr: int, ipver: int) -> tuple[np.uint64, np.uint64]:
    hi, lo = split_addr(addr, ipver)
    return np.uint64(hi), np.uint64(lo)


def join_addr(hi: int, lo: int) -> tuple[int, int]:
    """(ip version, integer address) from the two stored halves."""
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return 4, lo & 0xFFFFFFFF
    return 6, (hi << 64) | lo
