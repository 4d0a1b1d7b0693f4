"""The flow key: a flow's direction-free identity, and the one place its two ends are ordered.

A key is one row of :data:`KEY_WIDTH` unsigned 64-bit words::

    a_hi, a_lo, b_hi, b_lo, ports, zone
    ports = a_port << 48 | b_port << 32 | proto << 16 | (vlan + 1)

``a`` is the lower ``(address, port)`` endpoint, compared as (``hi``, ``lo``,
port); addresses are the two 64-bit halves of their IPv6 form, an IPv4 address
``x`` as ``::ffff:x`` (``hi = 0``, ``lo = 0xffff00000000 | x``), as the decoder
stores them. ``vlan + 1`` is 0 for an untagged packet. ``zone`` tells apart
tunnels whose inner addresses could collide (the decoder's ``zone`` column); a
finished :class:`~probe.records.FlowRecord` does not carry it, so
:func:`record_key` gives the first five words.

:func:`canonical_key` keys a batch of decoded packets (columns, vectorised);
:func:`key_row` keys one pair of endpoints (an ICMP error's quoted header);
:func:`record_key` keys a finished flow. All three order the ends the same way,
so a flow found by one is found by the others.
"""

from __future__ import annotations

import ipaddress

import numpy as np
import numpy.typing as npt

from probe.decode import Decoded, split_addr
from probe.records import FlowRecord

__all__ = [
    "KEY_BYTES",
    "KEY_WIDTH",
    "PROTO_NAMES",
    "PROTO_NUMBERS",
    "canonical_key",
    "key_ports",
    "key_proto",
    "key_row",
    "pack_addr",
    "ports_word_fields",
    "record_key",
]

KEY_WIDTH = 6
"""Words in a key row."""
KEY_BYTES = KEY_WIDTH * 8
"""Bytes of a key row (the flow table's dict is keyed by them)."""
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah",
               58: "icmpv6", 89: "ospf", 103: "pim", 112: "vrrp", 132: "sctp"}
"""IP protocol numbers (IANA) -> the names flow records use; others are written as the
number."""
PROTO_NUMBERS = {name: num for num, name in PROTO_NAMES.items()}
"""Flow record protocol names -> IP protocol numbers."""
_PORT = np.uint64(0xFFFF)

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


def pack_addr(text: str) -> tuple[int, int]:
    """An address in the key's form: the two 64-bit halves of its IPv6 form (IPv4 as
    ``::ffff:a.b.c.d``), the inverse of :func:`~probe.decode.join_addr`."""
    ip = ipaddress.ip_address(text)
    return split_addr(int(ip), ip.version)


def canonical_key(cols: Decoded, idx: I64) -> tuple[U64, npt.NDArray[np.bool_]]:
    """The key of each packet ``idx`` of a decoded batch, and whether its sender is the
    lower endpoint ``a``."""
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


def key_row(src: tuple[int, int, int], dst: tuple[int, int, int], proto: int,
            vlan: int | None = None) -> tuple[tuple[int, int, int, int, int], bool]:
    """The first five words of the key of a packet from ``src`` to ``dst`` (each
    ``(hi, lo, port)``), and whether ``src`` is the lower endpoint ``a``."""
    src_is_a = src <= dst
    a, b = (src, dst) if src_is_a else (dst, src)
    ports = (a[2] << 48) | (b[2] << 32) | (proto << 16) | (0 if vlan is None else vlan + 1)
    return (a[0], a[1], b[0], b[1], ports), src_is_a


def record_key(flow: FlowRecord) -> tuple[int, int, int, int, int]:
    """The first five words of a finished flow's key (all but ``zone``)."""
    proto = PROTO_NUMBERS.get(flow.proto)
    if proto is None:
        proto = int(flow.proto)
    row, _ = key_row((*pack_addr(flow.orig_h), flow.orig_p),
                     (*pack_addr(flow.resp_h), flow.resp_p), proto, flow.vlan)
    return row


def ports_word_fields(word: int) -> tuple[int, int, int, int]:
    """(port of ``a``, port of ``b``, protocol, VLAN or -1) of a key's ``ports`` word."""
    return word >> 48, (word >> 32) & 0xFFFF, (word >> 16) & 0xFF, (word & 0xFFFF) - 1


def key_proto(keys: U64) -> I64:
    """The IP protocol number of each key row."""
    out: I64 = (keys[:, 4] >> np.uint64(16)).astype(np.int64) & 0xFF
    return out


def key_ports(keys: U64) -> tuple[U64, U64]:
    """The ports of ends ``a`` and ``b`` of each key row."""
    return (keys[:, 4] >> np.uint64(48)) & _PORT, (keys[:, 4] >> np.uint64(32)) & _PORT
