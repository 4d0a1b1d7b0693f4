"""A read cursor over a byte buffer, for protocol parsers.

Parsers read fields in wire order with ``u8``/``u16``/``u32``/``take``; a
``block(n)`` context checks that a length-prefixed section was consumed exactly.
Running past the end raises :class:`~probe.errors.Truncated` naming the layer
and the offset, so a parser never slices by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from probe.errors import Malformed, Truncated

__all__ = ["Cursor"]


class Cursor:
    """Sequential big-endian reader over ``data`` (bytes, bytearray or memoryview)."""

    __slots__ = ("_data", "_end", "_pos", "layer")

    def __init__(self, data: bytes | bytearray | memoryview, layer: str = "?", pos: int = 0,
                 end: int | None = None) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = pos
        self._end = len(data) if end is None else end
        self.layer = layer

    # -- position ---------------------------------------------------------
    @property
    def data(self) -> bytes | memoryview:
        """The underlying buffer (positions are absolute within it)."""
        return self._data

    @property
    def pos(self) -> int:
        """Offset of the next byte to read."""
        return self._pos

    @property
    def end(self) -> int:
        """Offset one past the last readable byte."""
        return self._end

    def remaining(self) -> int:
        """Bytes left before ``end``."""
        return self._end - self._pos

    def eof(self) -> bool:
        """True when nothing is left to read."""
        return self._pos >= self._end

    def seek(self, pos: int) -> None:
        """Move to ``pos`` (must lie within the buffer)."""
        if pos < 0 or pos > self._end:
            raise Truncated(self.layer, pos, "seek outside buffer")
        self._pos = pos

    def _need(self, n: int) -> int:
        p = self._pos
        if n < 0:
            raise Malformed(self.layer, p, f"negative length {n}")
        if p + n > self._end:
            raise Truncated(self.layer, p, f"need {n} bytes, {self._end - p} left")
        self._pos = p + n
        return p

    # -- fixed-width reads (network byte order) ----------------------------
    def u8(self) -> int:
        p = self._need(1)
        return self._data[p]

    def u16(self) -> int:
        p = self._need(2)
        d = self._data
        return (d[p] << 8) | d[p + 1]

    def u24(self) -> int:
        p = self._need(3)
        d = self._data
        return (d[p] << 16) | (d[p + 1] << 8) | d[p + 2]

    def u32(self) -> int:
        p = self._need(4)
        return int.from_bytes(self._data[p:p + 4], "big")

    def u64(self) -> int:
        p = self._need(8)
        return int.from_bytes(self._data[p:p + 8], "big")

    def u16le(self) -> int:
        p = self._need(2)
        d = self._data
        return d[p] | (d[p + 1] << 8)

    def u32le(self) -> int:
        p = self._need(4)
        return int.from_bytes(self._data[p:p + 4], "little")

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        p = self._need(n)
        return bytes(self._data[p:p + n])

    def rest(self) -> bytes:
        """Everything up to ``end``."""
        return self.take(self._end - self._pos)

    def skip(self, n: int) -> None:
        self._need(n)

    def peek_u8(self, ahead: int = 0) -> int:
        p = self._pos + ahead
        if p >= self._end:
            raise Truncated(self.layer, p, "need 1 byte, 0 left")
        return self._data[p]

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes without moving."""
        p = self._pos
        if p + n > self._end:
            raise Truncated(self.layer, p, f"need {n} bytes, {self._end - p} left")
        return bytes(self._data[p:p + n])

    def varint(self) -> int:
        """QUIC variable-length integer (RFC 9000 §16)."""
        first = self.peek_u8()
        size = 1 << (first >> 6)
        raw = self.take(size)
        value = raw[0] & 0x3F
        for b in raw[1:]:
            value = (value << 8) | b
        return value

    # -- sub-blocks --------------------------------------------------------
    def sub(self, n: int, layer: str | None = None) -> Cursor:
        """A cursor over the next ``n`` bytes; this one moves past them."""
        p = self._need(n)
        return Cursor(self._data, layer or self.layer, p, p + n)

    @contextmanager
    def block(self, n: int) -> Iterator[int]:
        """Read exactly ``n`` bytes inside the ``with`` body.

        Raises :class:`Truncated` if fewer than ``n`` bytes are left and
        :class:`Malformed` if the body read more or fewer than ``n``.
        """
        start = self._pos
        if start + n > self._end:
            raise Truncated(self.layer, start, f"block of {n} bytes, {self._end - start} left")
        outer_end = self._end
        self._end = start + n
        try:
            yield n
        finally:
            self._end = outer_end
        if self._pos != start + n:
            raise Malformed(self.layer, self._pos, f"block of {n} bytes read {self._pos - start}")
