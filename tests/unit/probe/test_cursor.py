"""The cursor: fixed-width reads, exact blocks, and errors that name layer and offset."""

from __future__ import annotations

import pytest

from probe.cursor import Cursor
from probe.errors import Malformed, ParseError, Truncated

# The first 8 bytes of an IPv4 UDP header pair (sport 5060, dport 5060, len 28, csum 0).
UDP_HDR = bytes.fromhex("13c413c4001c0000")


def test_reads_in_network_order() -> None:
    c = Cursor(UDP_HDR, "udp")
    assert (c.u16(), c.u16(), c.u16(), c.u16()) == (5060, 5060, 28, 0)
    assert c.eof()


def test_truncated_names_layer_and_offset() -> None:
    c = Cursor(UDP_HDR[:5], "udp")
    c.u16()
    c.u16()
    with pytest.raises(Truncated) as exc:
        c.u16()
    assert exc.value.layer == "udp"
    assert exc.value.offset == 4


def test_block_must_be_read_exactly() -> None:
    c = Cursor(bytes([3, 1, 2, 3, 9]), "tlv")
    n = c.u8()
    with c.block(n):
        assert c.take(3) == b"\x01\x02\x03"
    assert c.u8() == 9
    c = Cursor(bytes([3, 1, 2, 3]), "tlv")
    n = c.u8()
    with pytest.raises(Malformed), c.block(n):
        c.u8()


def test_block_longer_than_buffer() -> None:
    c = Cursor(bytes([9, 1, 2]), "tlv")
    n = c.u8()
    with pytest.raises(Truncated), c.block(n):
        pass


def test_varint_rfc9000_examples() -> None:
    # RFC 9000 appendix A.1 sample encodings.
    for raw, value in (("c2197c5eff14e88c", 151288809941952652), ("9d7f3e7d", 494878333),
                       ("7bbd", 15293), ("25", 37), ("4025", 37)):
        assert Cursor(bytes.fromhex(raw)).varint() == value


def test_sub_cursor_is_bounded() -> None:
    c = Cursor(b"abcdef", "outer")
    inner = c.sub(3, "inner")
    assert inner.rest() == b"abc"
    assert c.rest() == b"def"
    with pytest.raises(ParseError):
        inner.u8()
