"""Per-packet decoding through a cursor: the slow path for every layout.

:class:`SlowDecoder` walks one packet from its link layer to its transport
header, crossing stacked 802.1Q/802.1ad tags, MPLS, PPPoE, GRE (plain, keyed,
ERSPAN type II/III, transparent Ethernet), VXLAN, GTP-U, IP-in-IP, IPv6
extension headers and IPv4/IPv6 fragments, and reads the packet an ICMP error
quotes. It returns the same facts the columnar fast path extracts
(:class:`PacketInfo`) or says what went wrong (:class:`WeirdInfo`): a broken
inner layer never loses the outer packet.

Layouts: IEEE 802.1Q; RFC 3032 (MPLS); RFC 2784/2890 (GRE); RFC 7348
(VXLAN); 3GPP TS 29.281 (GTP-U); RFC 791, RFC 8200 (IPv6, §4 extension
headers, §4.5 fragment header); RFC 792/4443 (ICMP errors quote the
offending header).
"""

from __future__ import annotations

from typing import NamedTuple

from probe.cursor import Cursor
from probe.errors import Malformed, ParseError, Truncated
from probe.sources import LinkType

__all__ = [
    "GTPU_PORT",
    "LOOP_INET6_FAMILIES",
    "TUNNEL_NAMES",
    "TUNNEL_NONE",
    "VXLAN_PORT",
    "IcmpQuote",
    "PacketInfo",
    "SlowDecoder",
    "WeirdInfo",
]

VXLAN_PORT = 4789
PKTAP_MIN_HEADER = 108
"""The shortest PKTAP header (Wireshark packet-pktap.c ``MIN_PKTAP_HDR_LEN``)."""
PKTAP_PACKET = 1
"""PKTAP record type of a packet (``PKT_REC_PACKET``); other records carry none."""
GTPU_PORT = 2152

TUNNEL_NONE = 0
TUNNEL_MPLS = 1
TUNNEL_GRE = 2
TUNNEL_ERSPAN = 3
TUNNEL_VXLAN = 4
TUNNEL_GTPU = 5
TUNNEL_IPIP = 6
TUNNEL_PPPOE = 7
TUNNEL_NAMES = {TUNNEL_MPLS: "mpls", TUNNEL_GRE: "gre", TUNNEL_ERSPAN: "erspan",
                TUNNEL_VXLAN: "vxlan", TUNNEL_GTPU: "gtpu", TUNNEL_IPIP: "ipip",
                TUNNEL_PPPOE: "pppoe"}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
ETH_MPLS = (0x8847, 0x8848)
ETH_PPPOE = 0x8864
GRE_TEB = 0x6558
GRE_PPP = 0x880B
GRE_ERSPAN2 = 0x88BE
GRE_ERSPAN3 = 0x22EB
IPV6_EXT = {0, 43, 60, 135, 139, 140}
IPV6_FRAG = 44
IPPROTO_AH = 51
ICMP4_ERRORS = {3, 4, 5, 11, 12}
MAX_DEPTH = 6
LOOP_INET6_FAMILIES = (10, 23, 24, 28, 30)
"""AF_INET6 in a loopback header: Linux, Windows, NetBSD/OpenBSD, FreeBSD, Darwin."""
FRAG_TABLE_MAX = 65536
FRAG_TTL_NS = 60 * 1_000_000_000


class WeirdInfo(NamedTuple):
    """Why a packet could not be decoded completely."""

    layer: str
    offset: int
    reason: str


class IcmpQuote(NamedTuple):
    """The packet header an ICMP error quoted, and the error itself."""

    family: int
    type: int
    code: int
    reporter: int
    ipver: int
    src: int
    dst: int
    proto: int
    sport: int
    dport: int


class PacketInfo(NamedTuple):
    """What the meter needs from one packet."""

    ipver: int
    src: int
    dst: int
    proto: int
    sport: int
    dport: int
    flags: int
    seq: int
    pay_off: int
    pay_len: int
    pay_cap: int
    vlan: int
    zone: int
    tunnel: int
    quote: IcmpQuote | None
    frag_key: tuple[int, int, int, int, int] | None = None
    """Set on a non-first fragment whose first fragment was not seen yet."""
    ack: int = 0
    """TCP acknowledgement number (0 for other protocols and where the header was cut)."""


class _Ctx:
    __slots__ = ("base", "depth", "ts", "tunnel", "vlan", "weird", "wire_end", "zone")

    def __init__(self, base: int, wire_end: int, ts: int) -> None:
        self.base = base
        self.wire_end = wire_end
        self.vlan = -1
        self.zone = 0
        self.tunnel = TUNNEL_NONE
        self.depth = 0
        self.ts = ts
        self.weird: WeirdInfo | None = None


class SlowDecoder:
    """Decodes one packet at a time; remembers first fragments to place later ones."""

    def __init__(self) -> None:
        self._frags: dict[tuple[int, int, int, int, int], tuple[int, int, int]] = {}

    # -- entry point -----------------------------------------------------------
    def decode(self, buf: bytes | bytearray, off: int, cap: int, wire: int, linktype: int,
               ts: int) -> tuple[PacketInfo | None, WeirdInfo | None]:
        ctx = _Ctx(off, off + wire, ts)
        cur = Cursor(buf, "link", off, off + cap)
        try:
            info = self._link(cur, linktype, ctx)
        except ParseError as exc:
            return None, WeirdInfo(exc.layer, exc.offset - off, _reason(exc))
        return info, ctx.weird

    def resolve_pending(self, results: list[tuple[int, PacketInfo | None, WeirdInfo | None]]
                        ) -> None:
        """Give later fragments that arrived before their first fragment their ports."""
        for k, (i, info, weird) in enumerate(results):
            if info is None or info.frag_key is None:
                continue
            known = self._frags.get(info.frag_key)
            if known is None:
                results[k] = (i, None, WeirdInfo("ip", 0, "fragment-without-first"))
            else:
                results[k] = (i, info._replace(sport=known[0], dport=known[1], frag_key=None),
                              weird)

    # -- link layers -----------------------------------------------------------
    def _link(self, cur: Cursor, lt: int, ctx: _Ctx) -> PacketInfo | None:
        if lt == LinkType.ETHERNET:
            return self._ethernet(cur, ctx)
        if lt == LinkType.LINUX_SLL:
            cur.layer = "sll"
            cur.skip(14)
            return self._ethertype(cur, cur.u16(), ctx)
        if lt == LinkType.LINUX_SLL2:
            cur.layer = "sll2"
            et = cur.u16()
            cur.skip(18)
            return self._ethertype(cur, et, ctx)
        if lt in (LinkType.RAW, LinkType.RAW_12, LinkType.RAW_14, LinkType.IPV4, LinkType.IPV6):
            return self._ip_by_version(cur, ctx)
        if lt in (LinkType.NULL, LinkType.LOOP):
            cur.layer = "loopback"
            fam_raw = cur.take(4)
            fam = int.from_bytes(fam_raw, "big" if lt == LinkType.LOOP else "little")
            if lt == LinkType.NULL and fam > 0xFFFF:
                fam = int.from_bytes(fam_raw, "big")
            if fam == 2:
                return self._ipv4(cur, ctx)
            if fam in LOOP_INET6_FAMILIES:
                return self._ipv6(cur, ctx)
            return None
        if lt in (LinkType.PPP, LinkType.PPP_HDLC):
            return self._ppp_or_chdlc(cur, ctx)
        if lt == LinkType.C_HDLC:
            return self._chdlc(cur, ctx)
        if lt == LinkType.PPP_ETHER:
            cur.layer = "pppoe"
            cur.skip(6)
            return self._ppp_protocol(cur, cur.u16(), ctx)
        if lt == LinkType.PPI and ctx.depth == 0:
            # PPI (Per-Packet Information): version, flags, header length and the link
            # type of the packet that follows the header, all little-endian.
            cur.layer = "ppi"
            start = cur.pos
            cur.skip(2)
            hlen = cur.u16le()
            inner = cur.u32le()
            if hlen < 8:
                raise Malformed("ppi", start, "bad-header-length")
            cur.seek(start + hlen)
            ctx.depth += 1
            return self._link(cur, inner, ctx)
        if lt in (LinkType.PKTAP, LinkType.USER2) and ctx.depth == 0:
            # Apple's PKTAP (macOS `tcpdump -i any` or `-k`): a little-endian header of its
            # own length, a record type (1: a packet) and the DLT of the packet that
            # follows; then interface, process and service fields (Wireshark packet-pktap.c,
            # at least 108 bytes in all).
            cur.layer = "pktap"
            start = cur.pos
            hlen = cur.u32le()
            record = cur.u32le()
            inner = cur.u32le()
            if hlen < PKTAP_MIN_HEADER:
                raise Malformed("pktap", start, "bad-header-length")
            if record != PKTAP_PACKET:
                return None
            cur.seek(start + hlen)
            ctx.depth += 1
            return self._link(cur, inner, ctx)
        raise Malformed("link", cur.pos, f"unsupported-linktype-{lt}")

    def _ppp_or_chdlc(self, cur: Cursor, ctx: _Ctx) -> PacketInfo | None:
        """LINKTYPE_PPP and LINKTYPE_PPP_HDLC: PPP in HDLC-like framing (RFC 1662: address
        0xFF, control 0x03, then the protocol), PPP with no framing (the protocol first), or
        Cisco HDLC (address 0x0F or 0x8F), which both link types may carry."""
        cur.layer = "ppp"
        first = cur.peek_u8()
        if first in (0x0F, 0x8F):
            return self._chdlc(cur, ctx)
        if first == 0xFF and cur.peek_u8(1) == 0x03:
            cur.skip(2)
        # RFC 1661 §6.5: a compressed protocol field is one odd byte.
        proto = cur.u8() if cur.peek_u8() & 1 else cur.u16()
        return self._ppp_protocol(cur, proto, ctx)

    def _ppp_protocol(self, cur: Cursor, proto: int, ctx: _Ctx) -> PacketInfo | None:
        """What follows a PPP protocol field: IPv4 (0x21) or IPv6 (0x57); the rest (link and
        network control protocols) carries no flow."""
        if proto == 0x0021:
            return self._ipv4(cur, ctx)
        if proto == 0x0057:
            return self._ipv6(cur, ctx)
        return None

    def _chdlc(self, cur: Cursor, ctx: _Ctx) -> PacketInfo | None:
        """Cisco HDLC (RFC 1547 §4.3.1): address (0x0F unicast, 0x8F broadcast), control
        0x00, then an Ethertype; SLARP keepalives (0x8035) and CDP carry no flow."""
        cur.layer = "chdlc"
        cur.skip(2)
        return self._ethertype(cur, cur.u16(), ctx)

    def _ethernet(self, cur: Cursor, ctx: _Ctx) -> PacketInfo | None:
        cur.layer = "ethernet"
        cur.skip(12)
        return self._ethertype(cur, cur.u16(), ctx)

    def _ethertype(self, cur: Cursor, et: int, ctx: _Ctx) -> PacketInfo | None:
        while et in ETH_VLAN_TAGS:
            cur.layer = "vlan"
            tci = cur.u16()
            if ctx.vlan < 0:
                ctx.vlan = tci & 0x0FFF
            et = cur.u16()
        if et in ETH_MPLS:
            cur.layer = "mpls"
            ctx.tunnel = TUNNEL_MPLS
            while True:
                entry = cur.u32()
                if entry & 0x100:  # bottom of stack
                    break
            return self._ip_by_version(cur, ctx)
        if et == ETH_PPPOE:
            cur.layer = "pppoe"
            cur.skip(6)
            ctx.tunnel = TUNNEL_PPPOE
            return self._ppp_protocol(cur, cur.u16(), ctx)
        if et == ETH_IPV4:
            return self._ipv4(cur, ctx)
        if et == ETH_IPV6:
            return self._ipv6(cur, ctx)
        return None

    def _ip_by_version(self, cur: Cursor, ctx: _Ctx) -> PacketInfo | None:
        cur.layer = "ip"
        v = cur.peek_u8() >> 4
        if v == 4:
            return self._ipv4(cur, ctx)
        if v == 6:
            return self._ipv6(cur, ctx)
        raise Malformed("ip", cur.pos, f"bad-ip-version-{v}")

    # -- network layers --------------------------------------------------------
    def _ipv4(self, cur: Cursor, ctx: _Ctx) -> PacketInfo | None:
        cur.layer = "ipv4"
        start = cur.pos
        vihl = cur.u8()
        if vihl >> 4 != 4:
            raise Malformed("ipv4", start, "bad-version")
        ihl = (vihl & 0x0F) * 4
        if ihl < 20:
            raise Malformed("ipv4", start, "bad-ihl")
        cur.skip(1)
        total = cur.u16()
        ident = cur.u16()
        frag = cur.u16()
        cur.skip(1)
        proto = cur.u8()
        cur.skip(2)
        src = cur.u32()
        dst = cur.u32()
        cur.skip(ihl - 20)
        wire_left = ctx.wire_end - start
        if total == 0:
            total = wire_left  # segmentation offload: the NIC fills the length in later
        if total < ihl:
            raise Malformed("ipv4", start, "bad-total-length")
        if total > wire_left:
            ctx.weird = WeirdInfo("ipv4", start - ctx.base, "total-length-beyond-packet")
            total = wire_left
        ip_pay = total - ihl
        more = bool(frag & 0x2000)
        frag_off = (frag & 0x1FFF) * 8
        cur = Cursor(_buf(cur), "ipv4", cur.pos, min(cur.end, start + total))
        if frag_off or more:
            return self._fragment(cur, ctx, 4, src, dst, ident, proto, frag_off, ip_pay)
        return self._transport(cur, ctx, 4, src, dst, proto, ip_pay)

    def _ipv6(self, cur: Cursor, ctx: _Ctx) -> PacketInfo | None:
        cur.layer = "ipv6"
        start = cur.pos
        first = cur.u32()
        if first >> 28 != 6:
            raise Malformed("ipv6", start, "bad-version")
        plen = cur.u16()
        nh = cur.u8()
        cur.skip(1)
        src = int.from_bytes(cur.take(16), "big")
        dst = int.from_bytes(cur.take(16), "big")
        wire_left = ctx.wire_end - start - 40
        if plen > wire_left:
            ctx.weird = WeirdInfo("ipv6", start + 4 - ctx.base, "payload-length-beyond-packet")
            plen = max(wire_left, 0)
        if plen == 0 and nh != 59:
            plen = max(wire_left, 0)  # jumbogram or zero: take what the frame holds
        cur = Cursor(_buf(cur), "ipv6", cur.pos, min(cur.end, start + 40 + plen))
        left = plen
        while nh in IPV6_EXT or nh in (IPPROTO_AH, IPV6_FRAG):
            cur.layer = "ipv6-ext"
            if nh == IPV6_FRAG:
                nxt = cur.u8()
                cur.skip(1)
                fo = cur.u16()
                ident = cur.u32()
                left -= 8
                frag_off = fo & 0xFFF8
                more = bool(fo & 1)
                if frag_off or more:
                    return self._fragment(cur, ctx, 6, src, dst, ident, nxt, frag_off, left)
                nh = nxt
                continue
            nxt = cur.u8()
            hl = cur.u8()
            size = (hl + 2) * 4 if nh == IPPROTO_AH else (hl + 1) * 8
            cur.skip(size - 2)
            left -= size
            nh = nxt
        if left < 0:
            raise Malformed("ipv6-ext", cur.pos, "extension-headers-beyond-payload")
        return self._transport(cur, ctx, 6, src, dst, nh, left)

    def _fragment(self, cur: Cursor, ctx: _Ctx, ver: int, src: int, dst: int, ident: int,
                  proto: int, frag_off: int, ip_pay: int) -> PacketInfo | None:
        key = (ver, src, dst, ident, proto)
        if frag_off == 0:
            info = self._transport(cur, ctx, ver, src, dst, proto, ip_pay, fragment=True)
            if info is not None:
                if len(self._frags) >= FRAG_TABLE_MAX:
                    self._expire_frags(ctx.ts)
                self._frags[key] = (info.sport, info.dport, ctx.ts)
            return info
        pay_off = cur.pos
        pay_cap = max(min(cur.end - pay_off, ip_pay), 0)
        known = self._frags.get(key)
        if known is None:
            return PacketInfo(ver, src, dst, proto, 0, 0, 0, 0, pay_off, ip_pay, pay_cap,
                              ctx.vlan, ctx.zone, ctx.tunnel, None, key)
        return PacketInfo(ver, src, dst, proto, known[0], known[1], 0, 0, pay_off, ip_pay,
                          pay_cap, ctx.vlan, ctx.zone, ctx.tunnel, None)

    def _expire_frags(self, now: int) -> None:
        old = [k for k, v in self._frags.items() if now - v[2] > FRAG_TTL_NS]
        for k in old:
            del self._frags[k]
        if len(self._frags) >= FRAG_TABLE_MAX:
            self._frags.clear()

    # -- transport and tunnels ---------------------------------------------------
    def _transport(self, cur: Cursor, ctx: _Ctx, ver: int, src: int, dst: int, proto: int,
                   ip_pay: int, fragment: bool = False) -> PacketInfo | None:
        ctx.depth += 1
        if ctx.depth > MAX_DEPTH:
            raise Malformed("tunnel", cur.pos, "too-many-encapsulations")
        if proto == 6:
            cur.layer = "tcp"
            start = cur.pos
            sport = cur.u16()
            dport = cur.u16()
            try:
                seq = cur.u32()
                ack = cur.u32()
                thl = (cur.u8() >> 4) * 4
                flags = cur.u8()
            except Truncated as exc:
                ctx.weird = WeirdInfo("tcp", exc.offset - ctx.base, "truncated-header")
                return PacketInfo(ver, src, dst, 6, sport, dport, 0, 0, cur.end, 0, 0,
                                  ctx.vlan, ctx.zone, ctx.tunnel, None)
            if thl < 20 or thl > ip_pay:
                ctx.weird = WeirdInfo("tcp", start + 12 - ctx.base, "bad-data-offset")
                return PacketInfo(ver, src, dst, 6, sport, dport, flags, seq, cur.end, 0, 0,
                                  ctx.vlan, ctx.zone, ctx.tunnel, None, ack=ack)
            pay_off = start + thl
            return PacketInfo(ver, src, dst, 6, sport, dport, flags, seq, pay_off, ip_pay - thl,
                              max(min(cur.end - pay_off, ip_pay - thl), 0), ctx.vlan, ctx.zone,
                              ctx.tunnel, None, ack=ack)
        if proto == 17:
            cur.layer = "udp"
            start = cur.pos
            sport = cur.u16()
            dport = cur.u16()
            try:
                ulen = cur.u16()
                cur.skip(2)
            except Truncated as exc:
                ctx.weird = WeirdInfo("udp", exc.offset - ctx.base, "truncated-header")
                return PacketInfo(ver, src, dst, 17, sport, dport, 0, 0, cur.end, 0, 0,
                                  ctx.vlan, ctx.zone, ctx.tunnel, None)
            if ip_pay < 8:
                raise Malformed("udp", start, "datagram-shorter-than-header")
            if not fragment and ulen != ip_pay:
                ctx.weird = WeirdInfo("udp", start + 4 - ctx.base, "length-mismatch")
            pay_off = cur.pos
            pay_len = ip_pay - 8
            if not fragment and ctx.depth < MAX_DEPTH:
                inner = self._udp_tunnel(cur, ctx, sport, dport)
                if inner is not None:
                    return inner
            return PacketInfo(ver, src, dst, 17, sport, dport, 0, 0, pay_off, pay_len,
                              max(min(cur.end - pay_off, pay_len), 0), ctx.vlan, ctx.zone,
                              ctx.tunnel, None)
        if proto in (1, 58):
            return self._icmp(cur, ctx, ver, src, dst, proto, ip_pay)
        if proto == 4 or proto == 41:
            ctx.tunnel = TUNNEL_IPIP
            return self._ipv4(cur, ctx) if proto == 4 else self._ipv6(cur, ctx)
        if proto == 47:
            return self._gre(cur, ctx, ver, src, dst, ip_pay)
        pay_off = cur.pos
        return PacketInfo(ver, src, dst, proto, 0, 0, 0, 0, pay_off, ip_pay,
                          max(min(cur.end - pay_off, ip_pay), 0), ctx.vlan, ctx.zone,
                          ctx.tunnel, None)

    def _udp_tunnel(self, cur: Cursor, ctx: _Ctx, sport: int, dport: int) -> PacketInfo | None:
        """Decode VXLAN or GTP-U inside a UDP payload; None if it is not such a tunnel."""
        save = cur.pos
        try:
            if VXLAN_PORT in (dport, sport):
                cur.layer = "vxlan"
                flags = cur.u8()
                if not flags & 0x08:
                    raise Malformed("vxlan", save, "vni-flag-missing")
                cur.skip(3)
                vni = cur.u24()
                cur.skip(1)
                ctx.tunnel = TUNNEL_VXLAN
                ctx.zone = vni
                return self._ethernet(cur, ctx)
            if GTPU_PORT in (dport, sport):
                cur.layer = "gtpu"
                flags = cur.u8()
                if flags >> 5 != 1 or not flags & 0x10:
                    raise Malformed("gtpu", save, "not-gtp-v1")
                mtype = cur.u8()
                length = cur.u16()
                cur.skip(4)  # TEID
                if mtype != 0xFF:
                    cur.seek(save)
                    return None
                end = cur.pos + length
                if flags & 0x07:
                    cur.skip(3)
                    ext = cur.u8()
                    while ext:
                        n = cur.u8() * 4
                        if n == 0:
                            raise Malformed("gtpu", cur.pos, "zero-length-extension")
                        cur.skip(n - 2)
                        ext = cur.u8()
                if end < cur.pos:
                    raise Malformed("gtpu", save, "length-shorter-than-header")
                ctx.tunnel = TUNNEL_GTPU
                return self._ip_by_version(cur, ctx)
        except ParseError as exc:
            ctx.weird = WeirdInfo(exc.layer, exc.offset - ctx.base, _reason(exc))
            cur.seek(save)
            ctx.tunnel = TUNNEL_NONE
            ctx.zone = 0
        return None

    def _gre(self, cur: Cursor, ctx: _Ctx, ver: int, src: int, dst: int,
             ip_pay: int) -> PacketInfo | None:
        cur.layer = "gre"
        start = cur.pos
        fl = cur.u16()
        ptype = cur.u16()
        if fl & 0x0007 == 1 and ptype == GRE_PPP:
            # Enhanced GRE (RFC 2637 §4.1): payload length, call id, optional seq and ack.
            cur.skip(4)
            if fl & 0x1000:
                cur.skip(4)
            if fl & 0x0080:
                cur.skip(4)
            if cur.remaining() == 0:
                cur.seek(start)
                return PacketInfo(ver, src, dst, 47, 0, 0, 0, 0, start, ip_pay,
                                  max(min(cur.end - start, ip_pay), 0), ctx.vlan, ctx.zone,
                                  ctx.tunnel, None)
            cur.layer = "ppp"
            if cur.peek(2) == b"\xff\x03":
                cur.skip(2)
            ppp = cur.u8()
            if not ppp & 1:
                ppp = (ppp << 8) | cur.u8()
            ctx.tunnel = TUNNEL_GRE
            if ppp == 0x21:
                return self._ipv4(cur, ctx)
            if ppp == 0x57:
                return self._ipv6(cur, ctx)
            cur.seek(start)
        if fl & 0x0007:
            # Another GRE version, or PPP control traffic: meter the GRE packets as a flow.
            cur.seek(start)
            return PacketInfo(ver, src, dst, 47, 0, 0, 0, 0, start, ip_pay,
                              max(min(cur.end - start, ip_pay), 0), ctx.vlan, ctx.zone,
                              ctx.tunnel, None)
        if fl & 0x8000:
            cur.skip(4)
        if fl & 0x2000:
            cur.skip(4)
        seq_present = bool(fl & 0x1000)
        if seq_present:
            cur.skip(4)
        if ptype in (ETH_IPV4, ETH_IPV6):
            ctx.tunnel = TUNNEL_GRE
            return self._ipv4(cur, ctx) if ptype == ETH_IPV4 else self._ipv6(cur, ctx)
        if ptype == GRE_TEB:
            ctx.tunnel = TUNNEL_GRE
            return self._ethernet(cur, ctx)
        if ptype == GRE_ERSPAN2:
            cur.layer = "erspan"
            if not seq_present:  # ERSPAN type I has no header
                ctx.tunnel = TUNNEL_ERSPAN
                return self._ethernet(cur, ctx)
            cur.skip(8)
            ctx.tunnel = TUNNEL_ERSPAN
            return self._ethernet(cur, ctx)
        if ptype == GRE_ERSPAN3:
            cur.layer = "erspan"
            cur.skip(10)
            ft = cur.u16()
            if ft & 0x0001:  # optional platform-specific subheader
                cur.skip(8)
            ctx.tunnel = TUNNEL_ERSPAN
            return self._ethernet(cur, ctx)
        cur.seek(start)
        return PacketInfo(ver, src, dst, 47, 0, 0, 0, 0, start, ip_pay,
                          max(min(cur.end - start, ip_pay), 0), ctx.vlan, ctx.zone, ctx.tunnel,
                          None)

    def _icmp(self, cur: Cursor, ctx: _Ctx, ver: int, src: int, dst: int, proto: int,
              ip_pay: int) -> PacketInfo:
        cur.layer = "icmp" if proto == 1 else "icmpv6"
        start = cur.pos
        ty = cur.u8()
        code = cur.u8()
        quote: IcmpQuote | None = None
        is_err = ty in ICMP4_ERRORS if proto == 1 else ty < 128
        if is_err:
            try:
                cur.skip(6)
                quote = self._quoted(cur, proto, ty, code, src)
            except ParseError as exc:
                ctx.weird = WeirdInfo(exc.layer, exc.offset - ctx.base, "icmp-quote-" +
                                      _reason(exc))
        return PacketInfo(ver, src, dst, proto, 0, 0, 0, 0, start, ip_pay,
                          max(min(cur.end - start, ip_pay), 0), ctx.vlan, ctx.zone, ctx.tunnel,
                          quote)

    @staticmethod
    def _quoted(cur: Cursor, proto: int, ty: int, code: int, reporter: int) -> IcmpQuote:
        cur.layer = "icmp-quote"
        v = cur.peek_u8() >> 4
        if v == 4:
            vihl = cur.u8()
            ihl = (vihl & 0x0F) * 4
            if ihl < 20:
                raise Malformed("icmp-quote", cur.pos, "bad-ihl")
            cur.skip(8)
            qproto = cur.u8()
            cur.skip(2)
            qsrc = cur.u32()
            qdst = cur.u32()
            cur.skip(ihl - 20)
        elif v == 6:
            cur.skip(6)
            qproto = cur.u8()
            cur.skip(1)
            qsrc = int.from_bytes(cur.take(16), "big")
            qdst = int.from_bytes(cur.take(16), "big")
        else:
            raise Malformed("icmp-quote", cur.pos, "bad-ip-version")
        sp = dp = 0
        if qproto in (6, 17) and cur.remaining() >= 4:
            sp = cur.u16()
            dp = cur.u16()
        return IcmpQuote(4 if proto == 1 else 6, ty, code, reporter, v, qsrc, qdst, qproto, sp,
                         dp)


def _buf(cur: Cursor) -> bytes | memoryview:
    return cur.data


def _reason(exc: ParseError) -> str:
    if isinstance(exc, Truncated):
        return "truncated"
    return exc.reason.replace(" ", "-")
