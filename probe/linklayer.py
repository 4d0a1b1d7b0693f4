"""Where a link-layer header writes link-layer (MAC) addresses.

One table for everything that reads or rewrites them: the flow table, which keeps each
endpoint's link-layer address to tell one machine's addresses apart
(:func:`probe.addresses.machines`), and the evidence bundles, which replace them with
pseudonyms. Ethernet writes the destination then the source (IEEE 802.3 §3.1.1); a Linux
cooked capture writes the sender's only, at offset 6 (SLL, its length in bytes 4-5) or
12 (SLL2, its length in byte 11), and only a 6-byte address is an Ethernet one.
"""

from __future__ import annotations

from dataclasses import dataclass

from probe.sources import LinkType

__all__ = ["LINK_ADDRESSES", "LinkAddresses", "link_address_offsets"]


@dataclass(frozen=True, slots=True)
class LinkAddresses:
    """Where one link type's header holds 6-byte link-layer addresses."""

    header_len: int
    """Bytes the header needs before its addresses are read."""
    src_at: int
    """Offset of the sender's address."""
    dst_at: int | None = None
    """Offset of the receiver's address; None when the header does not carry it."""
    length_at: int | None = None
    """Offset of the field that gives the address's length (big-endian), when the header
    has one: the address is read only when that length is 6."""
    length_width: int = 0
    """Bytes of that field."""

    def offsets(self, frame: bytes | bytearray | memoryview) -> tuple[int, ...]:
        """Offsets of the addresses ``frame``'s header writes (destination first)."""
        if len(frame) < self.header_len:
            return ()
        if self.length_at is not None and int.from_bytes(
                frame[self.length_at:self.length_at + self.length_width], "big") != 6:
            return ()
        return (self.src_at,) if self.dst_at is None else (self.dst_at, self.src_at)


LINK_ADDRESSES: dict[int, LinkAddresses] = {
    LinkType.ETHERNET: LinkAddresses(14, src_at=6, dst_at=0),
    LinkType.LINUX_SLL: LinkAddresses(16, src_at=6, length_at=4, length_width=2),
    LinkType.LINUX_SLL2: LinkAddresses(20, src_at=12, length_at=11, length_width=1),
}
"""Link type -> where its header writes link-layer addresses; other link types (raw IP,
loopback, PPP) write none."""


def link_address_offsets(frame: bytes | bytearray | memoryview, linktype: int
                         ) -> tuple[int, ...]:
    """Offsets of the 6-byte link-layer addresses ``frame``'s outermost header writes, for
    a packet of link type ``linktype`` (none for a link type without them)."""
    layout = LINK_ADDRESSES.get(linktype)
    return () if layout is None else layout.offsets(frame)
