"""IP-owner table: which organisation (and which apps) an address belongs to.

The table lives in ``classifier/data/ip_owners.json`` (see ``data/README.md``):
a ``version``, an ``updated`` date and a list of blocks, each
``{"owner", "apps", "service", "source", "retrieved", "prefixes"}``. It is a
snapshot of published lists; ``classifier/refresh.py`` rebuilds it.

Lookup is longest-prefix-wins. At load time the nested and overlapping
prefixes are flattened into disjoint address ranges, each carrying the most
specific prefix that covers it, so a lookup is one binary search:
:meth:`OwnerTable.lookup` for one address (``bisect``), and
:meth:`OwnerTable.lookup_many` / :meth:`OwnerTable.index_v4` for many
(``numpy.searchsorted``; IPv4 as unsigned integers, IPv6 as 16-byte
big-endian strings, which order like the addresses they encode).

An address is looked up as the IPv4 address it stands for when it is IPv4-mapped
(``::ffff:0:0/96``) or in the NAT64 well-known prefix ``64:ff9b::/96`` (RFC 6052
§2.1, the last 32 bits holding the IPv4 address): on an IPv6-only access network
(mobile networks with 464XLAT, RFC 6877) DNS64 gives every IPv4-only server such an
address, and the probe sees the server there.

When two blocks list the very same prefix, the entry with a named service
(not ``any``) wins over ``any``, then the one naming fewer apps, then the
later one in the file.

Errors: :class:`~classifier.hostnames.RulesError` for a file of the wrong
shape; :meth:`OwnerTable.lookup` returns None for text that is not an address.
"""

from __future__ import annotations

import bisect
import ipaddress
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from classifier.hostnames import APPS, DATA_DIR, RulesError, Service, read_json_object
from probe.addresses import NAT64_WELL_KNOWN

__all__ = [
    "OWNERS_PATH",
    "Owner",
    "OwnerTable",
    "default_table",
    "lookup",
    "lookup_many",
    "parse_address",
]

OWNERS_PATH = DATA_DIR / "ip_owners.json"
"""The packaged IP-owner table."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Owner:
    """The most specific published prefix an address falls in, and whose it is."""

    owner: str
    """Organisation that holds the prefix (``meta``, ``microsoft``, ``telegram``...)."""
    apps: tuple[str, ...]
    """Apps served from the prefix (from :data:`classifier.hostnames.APPS`); may be empty."""
    service: Service
    """What the prefix is used for; ``any`` when the list does not say."""
    prefix: str
    """The matching prefix in CIDR form (``157.240.0.0/17``, ``2a03:2880::/32``)."""
    source: str
    """Where the prefix was published (vendor page, RIR/ASN, or a refreshed file name)."""
    retrieved: str
    """ISO date the source was read."""

    @property
    def app(self) -> str | None:
        """The one app of the prefix, or None when it serves none or several."""
        return self.apps[0] if len(self.apps) == 1 else None


def parse_address(text: str) -> IPAddress | None:
    """Parse an IPv4/IPv6 address; IPv4-mapped IPv6 and an address of the NAT64
    well-known prefix become the IPv4 address they stand for; None if invalid."""
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        if int(addr) >> 32 == NAT64_WELL_KNOWN:
            return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return addr


def _address_value(text: str) -> tuple[int, int] | None:
    """(IP version, integer value) of an address as :func:`parse_address` reads it, made
    from the packed form (a fifth of the time of building an ``ipaddress`` object) where
    the text is in the usual form, and by :func:`parse_address` otherwise."""
    try:
        if ":" not in text:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except OSError:  # leading zeros, a scope id, spaces, junk: the library decides
        addr = parse_address(text)
        return None if addr is None else (addr.version, int(addr))
    if value >> 32 in (0xFFFF, NAT64_WELL_KNOWN):  # IPv4-mapped, NAT64's well-known prefix
        return 4, value & 0xFFFFFFFF
    return 6, value


def _v6_key(value: int) -> bytes:
    return value.to_bytes(16, "big")


class _Ranges:
    """Disjoint [start, end] ranges of one address family, each with an entry index."""

    def __init__(self, items: list[tuple[int, int, tuple[int, int, int]]]) -> None:
        # items: (start, end, priority); the priority's last element is the entry index.
        # CIDR prefixes are nested or disjoint, so one sweep with a stack of open
        # prefixes (outermost first) yields the most specific owner of every range.
        items.sort(key=lambda it: (it[0], -(it[1] - it[0]), it[2]))
        starts: list[int] = []
        ends: list[int] = []
        owners: list[int] = []

        def emit(lo: int, hi: int, idx: int) -> None:
            if lo <= hi:
                starts.append(lo)
                ends.append(hi)
                owners.append(idx)

        stack: list[tuple[int, int]] = []  # (end, entry index)
        pos = 0
        for start, end, prio in items:
            while stack and stack[-1][0] < start:
                top_end, top_idx = stack.pop()
                emit(pos, top_end, top_idx)
                pos = top_end + 1
            if stack:
                emit(pos, start - 1, stack[-1][1])
            pos = start
            stack.append((end, prio[2]))
        while stack:
            top_end, top_idx = stack.pop()
            emit(pos, top_end, top_idx)
            pos = top_end + 1
        self.starts = starts
        """Range starts, ascending."""
        self.ends = ends
        """Range ends (inclusive)."""
        self.owners = owners
        """Entry index of each range."""

    def find(self, value: int) -> int:
        i = bisect.bisect_right(self.starts, value) - 1
        if i >= 0 and value <= self.ends[i]:
            return self.owners[i]
        return -1


class OwnerTable:
    """Longest-prefix lookup over a set of owner blocks."""

    def __init__(self, entries: Iterable[Owner], version: int = 0, updated: str = "") -> None:
        self.entries: tuple[Owner, ...] = tuple(entries)
        """One entry per (block, prefix), in file order."""
        self.version = version
        """The file's ``version`` field."""
        self.updated = updated
        """The file's ``updated`` date (ISO 8601)."""
        v4: list[tuple[int, int, tuple[int, int, int]]] = []
        v6: list[tuple[int, int, tuple[int, int, int]]] = []
        for idx, entry in enumerate(self.entries):
            net = ipaddress.ip_network(entry.prefix)
            prio = (1 if entry.service is not Service.ANY else 0, -len(entry.apps), idx)
            item = (int(net.network_address), int(net.broadcast_address), prio)
            (v4 if net.version == 4 else v6).append(item)
        self._v4 = _Ranges(v4)
        self._v6 = _Ranges(v6)
        self._v4_starts = np.asarray(self._v4.starts, dtype=np.uint64)
        self._v4_ends = np.asarray(self._v4.ends, dtype=np.uint64)
        self._v4_owner = np.asarray(self._v4.owners, dtype=np.int64)
        self._v6_starts = np.asarray([_v6_key(v) for v in self._v6.starts], dtype="S16")
        self._v6_ends = np.asarray([_v6_key(v) for v in self._v6.ends], dtype="S16")
        self._v6_owner = np.asarray(self._v6.owners, dtype=np.int64)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> OwnerTable:
        """Build from a parsed ``ip_owners.json`` document; raises :class:`RulesError`."""
        try:
            version = int(doc["version"])
            updated = str(doc["updated"])
            blocks = doc["blocks"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RulesError(f"ip owners: missing or bad top-level field: {exc}") from exc
        if not isinstance(blocks, list):
            raise RulesError("ip owners: 'blocks' must be a list")
        entries: list[Owner] = []
        for i, block in enumerate(blocks):
            entries.extend(parse_block(block, i))
        return cls(entries, version, updated)

    @classmethod
    def from_file(cls, path: Path | str) -> OwnerTable:
        """Load an owners file; raises :class:`RulesError` or ``OSError``."""
        return cls.from_dict(read_json_object(path))

    def lookup(self, ip: str) -> Owner | None:
        """The most specific entry covering ``ip``, or None (also for non-addresses)."""
        got = _address_value(ip)
        if got is None:
            return None
        ranges = self._v4 if got[0] == 4 else self._v6
        idx = ranges.find(got[1])
        return self.entries[idx] if idx >= 0 else None

    def index_v4(self, addrs: npt.ArrayLike) -> npt.NDArray[np.int64]:
        """Entry index (or -1) for each IPv4 address given as an unsigned integer."""
        values = np.asarray(addrs, dtype=np.uint64)
        if self._v4_starts.size == 0:
            return np.full(values.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._v4_starts, values, side="right") - 1
        safe = np.clip(pos, 0, None)
        hit = (pos >= 0) & (values <= self._v4_ends[safe])
        return np.where(hit, self._v4_owner[safe], -1)

    def index_v6(self, keys: npt.NDArray[np.bytes_]) -> npt.NDArray[np.int64]:
        """Entry index (or -1) for each IPv6 address given as 16 big-endian bytes (``S16``)."""
        values = np.asarray(keys, dtype="S16")
        if self._v6_starts.size == 0:
            return np.full(values.shape, -1, dtype=np.int64)
        pos = np.searchsorted(self._v6_starts, values, side="right") - 1
        safe = np.clip(pos, 0, None)
        hit = (pos >= 0) & (values <= self._v6_ends[safe])
        return np.where(hit, self._v6_owner[safe], -1)

    def lookup_many(self, ips: Sequence[str]) -> list[Owner | None]:
        """:meth:`lookup` for many addresses at once, IPv4 and IPv6 mixed."""
        result: list[Owner | None] = [None] * len(ips)
        v4_pos: list[int] = []
        v4_val: list[int] = []
        v6_pos: list[int] = []
        v6_val: list[bytes] = []
        for i, text in enumerate(ips):
            addr = parse_address(text)
            if addr is None:
                continue
            if addr.version == 4:
                v4_pos.append(i)
                v4_val.append(int(addr))
            else:
                v6_pos.append(i)
                v6_val.append(addr.packed)
        if v4_pos:
            for i, idx in zip(v4_pos, self.index_v4(np.asarray(v4_val, dtype=np.uint64)).tolist(),
                              strict=True):
                result[i] = self.entries[idx] if idx >= 0 else None
        if v6_pos:
            for i, idx in zip(v6_pos, self.index_v6(np.asarray(v6_val, dtype="S16")).tolist(),
                              strict=True):
                result[i] = self.entries[idx] if idx >= 0 else None
        return result

    def __len__(self) -> int:
        return len(self.entries)


def parse_network(text: str) -> IPNetwork:
    """Parse and vet one published prefix; raises ``ValueError`` with the reason.

    Host bits must be clear, and the prefix must be globally routable (no
    private, loopback, link-local, multicast, reserved or unspecified space).
    """
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"not a CIDR prefix: {exc}") from None
    if (net.is_private or net.is_loopback or net.is_link_local or net.is_multicast
            or net.is_reserved or net.is_unspecified):
        raise ValueError(f"{net} is not globally routable")
    return net


def parse_block(block: Any, index: int) -> list[Owner]:
    """Validate one block of an owners file into one :class:`Owner` per prefix."""
    where = f"block {index}"
    if not isinstance(block, dict):
        raise RulesError(f"{where}: not an object")
    try:
        owner = str(block["owner"])
        apps = block["apps"]
        service = Service(block["service"])
        source = str(block["source"])
        retrieved = str(block["retrieved"])
        prefixes = block["prefixes"]
    except KeyError as exc:
        raise RulesError(f"{where}: missing field {exc}") from exc
    except ValueError as exc:
        raise RulesError(f"{where}: {exc}") from exc
    if not owner or not source:
        raise RulesError(f"{where}: empty owner or source")
    if not isinstance(apps, list) or any(a not in APPS for a in apps):
        raise RulesError(f"{where}: apps must be a list of known app names, got {apps!r}")
    if not isinstance(prefixes, list) or not prefixes:
        raise RulesError(f"{where}: prefixes must be a non-empty list")
    out: list[Owner] = []
    for text in prefixes:
        try:
            net = parse_network(str(text))
        except ValueError as exc:
            raise RulesError(f"{where}: {exc}") from exc
        out.append(Owner(owner, tuple(apps), service, str(net), source, retrieved))
    return out


@cache
def default_table() -> OwnerTable:
    """The packaged table (``classifier/data/ip_owners.json``), loaded once."""
    return OwnerTable.from_file(OWNERS_PATH)


def lookup(ip: str) -> Owner | None:
    """Longest-prefix owner of ``ip`` in the packaged table, or None."""
    return default_table().lookup(ip)


def lookup_many(ips: Sequence[str]) -> list[Owner | None]:
    """:func:`lookup` for many addresses, vectorised."""
    return default_table().lookup_many(ips)
