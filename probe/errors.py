"""Errors raised by the probe.

The tree::

    ProbeError
    ├── ParseError(layer, offset, reason)   a packet or block could not be decoded
    │   ├── Truncated                       more bytes would have helped
    │   └── Malformed                       the bytes are wrong
    └── CaptureError                        a whole capture cannot be read
        ├── NotACapture                     the magic matches no known format
        └── UnsupportedLinkType             a link type we cannot decode

Nothing in the packet loop lets a ``ParseError`` escape: it becomes a
:class:`probe.records.Weird`. A damaged capture is not an exception either: the
reader yields everything before the damage and reports it through
:class:`probe.sources.ReadStatus`.
"""

from __future__ import annotations

__all__ = [
    "CaptureError",
    "Malformed",
    "NotACapture",
    "ParseError",
    "ProbeError",
    "Truncated",
    "UnsupportedLinkType",
]


class ProbeError(Exception):
    """Base of every error the probe raises."""


class ParseError(ProbeError):
    """A layer could not be decoded.

    ``layer`` names the protocol (``"ipv4"``, ``"stun"``), ``offset`` is the byte
    position inside the buffer being parsed where the problem was found.
    """

    def __init__(self, layer: str, offset: int, reason: str) -> None:
        super().__init__(f"{layer}: {reason} at offset {offset}")
        self.layer = layer
        self.offset = offset
        self.reason = reason


class Truncated(ParseError):
    """The buffer ended before the structure did."""


class Malformed(ParseError):
    """The bytes contradict the protocol (bad version, impossible length...)."""


class CaptureError(ProbeError):
    """A capture file or stream cannot be read at all."""


class NotACapture(CaptureError):
    """The input starts with no pcap, pcapng or gzip magic."""


class UnsupportedLinkType(CaptureError):
    """The capture's link type is not one the probe decodes."""
