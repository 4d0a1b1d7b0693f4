"""Address classes, and which side of a flow is the local one.

Every stage asks this module, and only this module, what kind of address it is
looking at and which end of a flow is the host the capture was taken next to.

**Address classes** (:class:`AddressClass`) follow the IANA IPv4 and IPv6
Special-Purpose Address Registries (RFC 6890 and the RFCs each entry cites).
An address in no special-purpose block is :attr:`AddressClass.GLOBAL`; so is
one in a special-purpose block the registry marks globally reachable (TURN and
PCP anycast, AS112, AMT, Teredo, 6to4, the NAT64 well-known prefix, ORCHIDv2).
An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, RFC 4291 section 2.5.5.2) has
the class of the IPv4 address inside it.

**Local classes** (:func:`is_local_class`) are the addresses a subscriber's
device has behind an operator: private (RFC 1918), carrier-grade NAT shared
space (RFC 6598), the IPv4 service continuity prefix (RFC 7335: the IPv4 address of a
464XLAT client's translator, 192.0.0.4 on Android phones of IPv6-only mobile
networks), unique local (RFC 4193) and link-local (RFC 3927, RFC 4291).
Documentation and benchmarking blocks are *not* local: test captures often use
them for the far side.

**Which end is local.** Each end of a flow gets a rank: 2 for a local class, 1
for a multicast or broadcast group (it stands for the receivers next to the
capture; the sender is the far end), 0 for anything else. Per flow
(:func:`orig_is_local`, :func:`local_is_orig`) the originator is local unless
the responder ranks higher, or the ends rank alike and the originator sent from a
server's port to a client's (the capture's first packet was a server's answer); a
known local host, when it is one of the flow's ends, decides first. Over a set of
flows (:func:`local_host`) the local host is chosen by vote: the higher-ranked
end of a flow gets two votes, both ends of a flow whose ends rank alike get one.

**One machine, several addresses** (:func:`machines`). A dual-stack host sends from
one IPv4 address and several IPv6 ones (stable and temporary addresses, RFC 8981)
with the same link-layer address; a router's link-layer address carries the
addresses of every host behind it. A link-layer address that carried at most one
routable IPv4 address and IPv6 addresses of at most two /64 prefixes is taken to
be one machine's, and its addresses to be that machine.

Answers are cached per address text: the classifier asks for every flow.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import IntEnum
from typing import Any

from probe.records import FlowRecord

__all__ = [
    "LOCAL_CLASSES",
    "NAT64_WELL_KNOWN",
    "SERVER_PORTS",
    "AddressClass",
    "MachineIndex",
    "address_class",
    "ends",
    "flow_votes",
    "host_key",
    "is_group_l2",
    "is_local_class",
    "local_host",
    "local_is_orig",
    "machines",
    "nat64_embedded",
    "orig_is_local",
    "serves",
]


class AddressClass(IntEnum):
    """What an address is, by the special-purpose block it lies in (RFC 6890)."""

    GLOBAL = 0
    """Globally reachable unicast: no special-purpose block, or one marked globally
    reachable in the registry (192.0.0.9 PCP anycast RFC 7723, 192.0.0.10 TURN anycast
    RFC 8155, 192.31.196.0/24 and 192.175.48.0/24 AS112 RFC 7535/7534, 192.52.193.0/24
    AMT RFC 7450, 2001::/32 Teredo RFC 4380, 2002::/16 6to4 RFC 3056, 64:ff9b::/96
    NAT64 RFC 6052, 2001:20::/28 ORCHIDv2 RFC 7343...)."""
    PRIVATE = 1
    """Private internets, RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16."""
    SHARED = 2
    """Shared address space for carrier-grade NAT, RFC 6598: 100.64.0.0/10 (the
    subscriber side of an operator's NAT)."""
    UNIQUE_LOCAL = 3
    """Unique local IPv6 unicast, RFC 4193: fc00::/7."""
    LINK_LOCAL = 4
    """Link-local: 169.254.0.0/16 (RFC 3927), fe80::/10 (RFC 4291 section 2.5.6)."""
    LOOPBACK = 5
    """Loopback: 127.0.0.0/8 (RFC 1122 section 3.2.1.3), ::1/128 (RFC 4291 section
    2.5.3)."""
    UNSPECIFIED = 6
    """"This network": 0.0.0.0/8 (RFC 791, RFC 1122 section 3.2.1.3); the unspecified
    address ::/128 (RFC 4291 section 2.5.2)."""
    MULTICAST = 7
    """Multicast groups: 224.0.0.0/4 (RFC 5771), ff00::/8 (RFC 4291 section 2.7)."""
    BROADCAST = 8
    """Limited broadcast, 255.255.255.255/32 (RFC 919, RFC 8190)."""
    DOCUMENTATION = 9
    """Documentation: 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (RFC 5737);
    2001:db8::/32 (RFC 3849); 3fff::/20 (RFC 9637)."""
    BENCHMARKING = 10
    """Benchmarking: 198.18.0.0/15 (RFC 2544), 2001:2::/48 (RFC 5180)."""
    IETF_PROTOCOL = 11
    """IETF protocol assignments not globally reachable: 192.0.0.0/24 outside the
    service continuity prefix (RFC 6890 section 2.2.2; 192.0.0.170/31 NAT64 discovery
    RFC 7050), 2001::/23 (RFC 2928) outside its globally reachable entries,
    64:ff9b:1::/48 (local-use IPv4/IPv6 translation, RFC 8215)."""
    DISCARD = 12
    """Discard-only, 100::/64 (RFC 6666)."""
    RESERVED = 13
    """Reserved: 240.0.0.0/4 (RFC 1112 section 4), fec0::/10 (deprecated site-local,
    RFC 3879), 2001:10::/28 (deprecated ORCHID, RFC 4843), and IPv6 outside 2000::/3
    not listed above (RFC 4291 section 2.4)."""
    SERVICE_CONTINUITY = 14
    """The IPv4 service continuity prefix, 192.0.0.0/29 (RFC 7335): the IPv4 side of a
    DS-Lite B4 element (RFC 6333) or a 464XLAT client's translator (CLAT, RFC 6877), a
    subscriber's device or router behind an operator's IPv6-only network."""


LOCAL_CLASSES = frozenset({AddressClass.PRIVATE, AddressClass.SHARED,
                           AddressClass.SERVICE_CONTINUITY, AddressClass.UNIQUE_LOCAL,
                           AddressClass.LINK_LOCAL})
"""The classes of addresses a subscriber's device has behind an operator."""

_A = AddressClass

# (network, prefix length, class): the most specific block wins, so a table is searched
# longest prefix first.
_V4_BLOCKS: tuple[tuple[str, int, AddressClass], ...] = (
    ("255.255.255.255", 32, _A.BROADCAST),
    ("192.0.0.9", 32, _A.GLOBAL),
    ("192.0.0.10", 32, _A.GLOBAL),
    ("192.0.0.170", 31, _A.IETF_PROTOCOL),
    ("192.0.0.0", 29, _A.SERVICE_CONTINUITY),
    ("192.0.0.0", 24, _A.IETF_PROTOCOL),
    ("192.0.2.0", 24, _A.DOCUMENTATION),
    ("198.51.100.0", 24, _A.DOCUMENTATION),
    ("203.0.113.0", 24, _A.DOCUMENTATION),
    ("192.168.0.0", 16, _A.PRIVATE),
    ("169.254.0.0", 16, _A.LINK_LOCAL),
    ("198.18.0.0", 15, _A.BENCHMARKING),
    ("172.16.0.0", 12, _A.PRIVATE),
    ("100.64.0.0", 10, _A.SHARED),
    ("10.0.0.0", 8, _A.PRIVATE),
    ("127.0.0.0", 8, _A.LOOPBACK),
    ("0.0.0.0", 8, _A.UNSPECIFIED),
    ("224.0.0.0", 4, _A.MULTICAST),
    ("240.0.0.0", 4, _A.RESERVED),
)

_V6_BLOCKS: tuple[tuple[str, int, AddressClass], ...] = (
    ("::", 128, _A.UNSPECIFIED),
    ("::1", 128, _A.LOOPBACK),
    ("2001:1::1", 128, _A.GLOBAL),
    ("2001:1::2", 128, _A.GLOBAL),
    ("2001:1::3", 128, _A.GLOBAL),
    ("64:ff9b::", 96, _A.GLOBAL),
    ("100::", 64, _A.DISCARD),
    ("2001:2::", 48, _A.BENCHMARKING),
    ("2001:4:112::", 48, _A.GLOBAL),
    ("64:ff9b:1::", 48, _A.IETF_PROTOCOL),
    ("2001::", 32, _A.GLOBAL),
    ("2001:3::", 32, _A.GLOBAL),
    ("2001:db8::", 32, _A.DOCUMENTATION),
    ("2001:10::", 28, _A.RESERVED),
    ("2001:20::", 28, _A.GLOBAL),
    ("2001:30::", 28, _A.GLOBAL),
    ("2001::", 23, _A.IETF_PROTOCOL),
    ("3fff::", 20, _A.DOCUMENTATION),
    ("2002::", 16, _A.GLOBAL),
    ("fe80::", 10, _A.LINK_LOCAL),
    ("fec0::", 10, _A.RESERVED),
    ("ff00::", 8, _A.MULTICAST),
    ("fc00::", 7, _A.UNIQUE_LOCAL),
    ("2000::", 3, _A.GLOBAL),
)


def _table(blocks: tuple[tuple[str, int, AddressClass], ...], family: socket.AddressFamily,
           bits: int) -> tuple[tuple[int, int, AddressClass], ...]:
    """(network as an integer, mask, class) rows, longest prefix first."""
    rows = []
    for text, plen, cls in blocks:
        net = int.from_bytes(socket.inet_pton(family, text), "big")
        mask = ((1 << plen) - 1) << (bits - plen)
        assert net & mask == net, text
        rows.append((plen, net, mask, cls))
    rows.sort(key=lambda r: -r[0])
    return tuple((net, mask, cls) for _, net, mask, cls in rows)


_V4_TABLE = _table(_V4_BLOCKS, socket.AF_INET, 32)
_V6_TABLE = _table(_V6_BLOCKS, socket.AF_INET6, 128)
_V4_MAPPED = 0xFFFF << 32
_V4_SPECIAL_FIRST = frozenset(
    b for net, mask, _ in _V4_TABLE
    for b in range(net >> 24, ((net | (~mask & 0xFFFFFFFF)) >> 24) + 1))
"""First octets inside some IPv4 block: an address outside them is global at once."""


def _v4_class(x: int) -> AddressClass:
    if (x >> 24) not in _V4_SPECIAL_FIRST:
        return _A.GLOBAL
    for net, mask, cls in _V4_TABLE:
        if x & mask == net:
            return cls
    return _A.GLOBAL


def _v6_class(x: int) -> AddressClass:
    if x >> 32 == 0xFFFF:  # ::ffff:0:0/96, IPv4-mapped
        return _v4_class(x & 0xFFFFFFFF)
    for net, mask, cls in _V6_TABLE:
        if x & mask == net:
            return cls
    return _A.RESERVED


def _classify(addr: str) -> AddressClass | None:
    """The class of an address written as text (a zone index after ``%`` is ignored);
    None if it is not an address."""
    if ":" not in addr:
        try:
            packed = socket.inet_pton(socket.AF_INET, addr)
        except OSError:
            return None
        return _v4_class(int.from_bytes(packed, "big"))
    try:
        packed = socket.inet_pton(socket.AF_INET6, addr.partition("%")[0])
    except OSError:
        return None
    return _v6_class(int.from_bytes(packed, "big"))


_CLASS: dict[str, AddressClass | None] = {}
_RANK: dict[str, int] = {}
_CACHE_MAX = 1 << 20


NAT64_WELL_KNOWN = 0x0064_FF9B_0000_0000_0000_0000
"""The top 96 bits of the NAT64 well-known prefix 64:ff9b::/96 (RFC 6052 §2.1): an
IPv6 address whose value shifted right by 32 is this stands for its last 32 bits."""


def nat64_embedded(addr: str) -> str | None:
    """The IPv4 address an address of the NAT64 well-known prefix 64:ff9b::/96 stands
    for (RFC 6052 §2.1: its last 32 bits), else None. On an IPv6-only access network
    (464XLAT, RFC 6877) DNS64 gives every IPv4-only server such an address, and the
    probe sees the server there."""
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr.strip()), "big")
    except (OSError, ValueError):
        return None
    if value >> 32 != NAT64_WELL_KNOWN:
        return None
    return socket.inet_ntop(socket.AF_INET, (value & 0xFFFFFFFF).to_bytes(4, "big"))


def host_key(addr: str) -> str:
    """The address a host is known by when what was learned of it (an SDP or STUN
    address, a DNS answer, a call's far end) is matched with the flows that reach it: an
    address of NAT64's well-known prefix as the IPv4 address it stands for, any other as
    it is. A server an IPv6-only network reaches at 64:ff9b::a.b.c.d is the one an SDP
    names a.b.c.d."""
    if addr.startswith("64:ff9b:"):
        return nat64_embedded(addr) or addr
    return addr


def address_class(addr: str) -> AddressClass | None:
    """The :class:`AddressClass` of an address written as text, None if ``addr`` is not
    an IPv4 or IPv6 address."""
    try:
        return _CLASS[addr]
    except KeyError:
        pass
    cls = _classify(addr)
    if len(_CLASS) >= _CACHE_MAX:
        _CLASS.clear()
    _CLASS[addr] = cls
    return cls


def is_local_class(addr: str) -> bool:
    """Whether ``addr`` is of a class a subscriber's device has behind an operator
    (:data:`LOCAL_CLASSES`: private, shared/CGNAT, service continuity, unique local,
    link-local)."""
    return _rank(addr) == 2


def _rank(addr: str) -> int:
    """2 for a local class, 1 for a multicast or broadcast group, 0 otherwise."""
    r = _RANK.get(addr)
    if r is None:
        cls = address_class(addr)
        r = (2 if cls in LOCAL_CLASSES
             else 1 if cls in (_A.MULTICAST, _A.BROADCAST) else 0)
        if len(_RANK) >= _CACHE_MAX:
            _RANK.clear()
        _RANK[addr] = r
    return r


SERVER_PORTS = frozenset({3478, 5349, 5060, 5061})
"""Ports above the system range that servers listen on by standard: STUN and TURN
(RFC 8489 §9, RFC 8656), SIP (RFC 3261 §19.1.2)."""


def serves(port: int) -> bool:
    """Whether ``port`` is one a server listens on: a system port (1-1023, RFC 6335 §6,
    assigned to services and not handed out to clients) or one of :data:`SERVER_PORTS`."""
    return 0 < port < 1024 or port in SERVER_PORTS


def orig_is_local(orig_h: str, resp_h: str, orig_p: int = 0, resp_p: int = 0) -> bool:
    """Whether the originator is the local end of a flow between these addresses (and
    ports, when given): yes unless the responder ranks higher by its address class (see
    the module docstring); between ends that rank alike, yes unless the originator sent
    from a server's port (:func:`serves`) to a client's (1024 and up, and no server's: SIP
    phones and trunks send from 5060 to 5060): its first packet in the capture was a
    server's answer (a capture begun mid-connection, or one that holds what the host
    received only)."""
    server_first = resp_p >= 1024 and serves(orig_p) and not serves(resp_p)
    rr = _RANK.get(resp_h)
    if rr is None:
        rr = _rank(resp_h)
    if not rr and not server_first:  # the common case: one lookup
        return True
    ro = _RANK.get(orig_h)
    if ro is None:
        ro = _rank(orig_h)
    return ro > rr or (ro == rr and not server_first)


def local_is_orig(flow: FlowRecord, local: str | None = None) -> bool:
    """Whether the flow's originator is its local end: the known ``local`` host when it
    is one of the flow's ends, else by the ends' address classes."""
    if local is not None:
        if flow.orig_h == local:
            return True
        if flow.resp_h == local:
            return False
    return orig_is_local(flow.orig_h, flow.resp_h, flow.orig_p, flow.resp_p)


def ends(flow: FlowRecord, local: str | None = None
         ) -> tuple[tuple[str, int], tuple[str, int]]:
    """((local host, port), (remote host, port)) of a flow, by :func:`local_is_orig`."""
    if local_is_orig(flow, local):
        return (flow.orig_h, flow.orig_p), (flow.resp_h, flow.resp_p)
    return (flow.resp_h, flow.resp_p), (flow.orig_h, flow.orig_p)


def flow_votes(flow: FlowRecord) -> tuple[tuple[str, int], ...]:
    """The votes one flow gives in :func:`local_host`: two to its higher-ranked end, one to
    each end when they rank alike (the originator first)."""
    ro, rr = _rank(flow.orig_h), _rank(flow.resp_h)
    if ro > rr:
        return ((flow.orig_h, 2),)
    if rr > ro:
        return ((flow.resp_h, 2),)
    return ((flow.orig_h, 1), (flow.resp_h, 1))


def _votes(flows: Iterable[FlowRecord]) -> Counter[str]:
    votes: Counter[str] = Counter()
    for f in flows:
        for host, n in flow_votes(f):
            votes[host] += n
    return votes


def local_host(flows: Iterable[FlowRecord],
               tie_break: Iterable[FlowRecord] | Mapping[str, int] = ()) -> str | None:
    """The host the capture was taken next to, by vote over ``flows``: the higher-ranked
    end of each flow gets two votes; both ends of a flow whose ends rank alike get one,
    so the host common to most such flows wins, whichever way they were opened (a tap
    that kept only what the host received sees every flow begin at the far end). Hosts
    that tie are told apart by the same vote over ``tie_break`` (the capture's other
    flows, or their votes already counted: a call's flows all join the same two ends,
    the capture's flows share the local one); then the host seen first wins (a flow's
    originator before its responder). None for no flows."""
    ranked = _votes(flows).most_common()
    if not ranked:
        return None
    tied = [h for h, n in ranked if n == ranked[0][1]]
    if len(tied) > 1:
        wider = tie_break if isinstance(tie_break, Mapping) else _votes(tie_break)
        return max(tied, key=lambda h: wider.get(h, 0))  # the first of the best: max is stable
    return tied[0]


HOST_V6_PREFIXES = 2
"""/64 prefixes one machine's IPv6 addresses may span (a global prefix and a unique local
one, RFC 4193), besides link-local ones."""

_NOT_A_MACHINE = frozenset({_A.LINK_LOCAL, _A.UNSPECIFIED, _A.MULTICAST, _A.BROADCAST,
                            _A.LOOPBACK})
"""Address classes that say nothing of how many machines a link-layer address is."""


def is_group_l2(l2: str) -> bool:
    """Whether a link-layer address (``aa:bb:...``) names a group, not one interface: its
    I/G bit, the first octet's lowest (IEEE 802 §8.2; broadcast and multicast)."""
    return l2[1] in "13579bdfBDF"


class MachineIndex:
    """:func:`machines` over a set of flows that changes (:meth:`add`, :meth:`remove`):
    which addresses each link-layer address sent from, counted per flow end, so that
    what one address stands for is known without looking at every flow again."""

    __slots__ = ("_ends", "_got", "_hosts", "_l2s", "_v4", "_v6")

    def __init__(self) -> None:
        self._ends: dict[tuple[str, str], int] = {}
        """Flow ends per (link-layer address, address)."""
        self._hosts: dict[str, set[str]] = {}
        """Per link-layer address (no group), the addresses it sent from."""
        self._l2s: dict[str, set[str]] = {}
        """Per address, the link-layer addresses (no group) it was sent from."""
        self._v4: dict[str, set[str]] = {}
        """Per link-layer address, its routable IPv4 addresses."""
        self._v6: dict[str, dict[bytes, int]] = {}
        """Per link-layer address, the /64 prefixes of its routable IPv6 addresses (with
        how many addresses each)."""
        self._got: dict[str, str | None] = {}
        """What :meth:`get` found per address, kept until a change can alter it: the
        calls of a window ask it for the same addresses at every settle."""

    def add(self, flow: FlowRecord) -> None:
        self._count(flow.orig_l2_addr, flow.orig_h, 1)
        self._count(flow.resp_l2_addr, flow.resp_h, 1)

    def remove(self, flow: FlowRecord) -> None:
        self._count(flow.orig_l2_addr, flow.orig_h, -1)
        self._count(flow.resp_l2_addr, flow.resp_h, -1)

    def _count(self, l2: str | None, host: str, n: int) -> None:
        if l2 is None:
            return
        key = (l2, host)
        was = self._ends.get(key, 0)
        now = was + n
        if now:
            self._ends[key] = now
        else:
            del self._ends[key]
        if (was and now) or is_group_l2(l2):  # the same pairs; a group is no one machine
            return
        one_before = self._one_machine(l2)
        change: Any = set.add if now else set.discard
        change(self._hosts.setdefault(l2, set()), host)
        change(self._l2s.setdefault(host, set()), l2)
        cls = address_class(host)
        if cls is not None and cls not in _NOT_A_MACHINE:
            if ":" in host:
                prefix = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])[:8]
                v6 = self._v6.setdefault(l2, {})
                left = v6.get(prefix, 0) + (1 if now else -1)
                if left:
                    v6[prefix] = left
                else:
                    del v6[prefix]
            else:
                change(self._v4.setdefault(l2, set()), host)
        # what get() found for this address, and, if l2 stopped or started standing for
        # one machine, for every address sent from it
        self._got.pop(host, None)
        if self._one_machine(l2) != one_before:
            for h in self._hosts.get(l2, ()):
                self._got.pop(h, None)
        for index, k in ((self._hosts, l2), (self._l2s, host), (self._v4, l2), (self._v6, l2)):
            if k in index and not index[k]:
                del index[k]

    def _one_machine(self, l2: str) -> bool:
        return (len(self._v4.get(l2, ())) <= 1
                and len(self._v6.get(l2, ())) <= HOST_V6_PREFIXES)

    def get(self, host: str, default: str | None = None) -> str | None:
        """The link-layer address standing for ``host``'s machine: the first, in sorted
        order, of those it was sent from that carried one machine's addresses."""
        if host in self._got:
            got = self._got[host]
        else:
            l2s = self._l2s.get(host)
            mine = [l2 for l2 in l2s if self._one_machine(l2)] if l2s else None
            got = self._got[host] = min(mine) if mine else None
        return default if got is None else got

    def __bool__(self) -> bool:
        return any(self._one_machine(l2) for l2 in self._hosts)

    def hosts_of(self, l2: str) -> list[str]:
        """The addresses ``l2`` stands for (those whose machine it is), sorted."""
        return sorted(h for h in self._hosts.get(l2, ()) if self.get(h) == l2)

    def as_dict(self) -> dict[str, str]:
        return {h: l2 for h in self._l2s if (l2 := self.get(h)) is not None}


def machines(flows: Iterable[FlowRecord]) -> dict[str, str]:
    """Addresses held by one machine, each mapped to that machine's link-layer address,
    by the link-layer addresses ``flows`` were sent from (see the module docstring). An
    address seen from no such link-layer address is absent: it stands for itself."""
    index = MachineIndex()
    for f in flows:
        index.add(f)
    return index.as_dict()
