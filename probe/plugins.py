"""What the meter keeps of payloads and where it looks for RTP, as its user declares it.

The probe measures RTP (RFC 3550) wherever the header sits, and copies the first
few payloads of each flow direction for inspection; it knows no application.
Which further payloads must be kept whole (a SIP dialog's late final answer, RTCP
reports) and inside which application framings an RTP header sits (TURN
ChannelData, an app's media encapsulation) is knowledge of the layer that
classifies: it hands a :class:`PayloadPolicy` to the meter through
:attr:`probe.meter.MeterConfig.payloads`, much as nfstream's plugins extend its
meter. The default policy keeps nothing whole and finds plain RTP only.

Everything here runs once per batch over numpy columns of all candidate payloads
(:func:`probe.prepare.prepare`), never per packet: a framing's ``locate`` is a
vectorised function over a :class:`PayloadView`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "NEUTRAL",
    "PLAIN_RTP",
    "Framing",
    "PayloadPolicy",
    "PayloadView",
    "Prefix",
    "RtpLocator",
    "rtp_header_at",
]

I64 = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
Bool = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class PayloadView:
    """The UDP payloads of one batch, as columns: where each starts in the batch buffer,
    how many of its bytes were captured and how long it was."""

    buf: npt.NDArray[np.uint8]
    """The batch's capture buffer."""
    start: I64
    """Offset of each payload in ``buf``."""
    length: I64
    """Captured bytes of each payload."""
    full_length: I64
    """Bytes of each payload on the wire, as its IP header counts them: more than
    :attr:`length` when the capture cut the packet short (a snap length)."""

    def subset(self, idx: I64) -> PayloadView:
        """The payloads at positions ``idx`` only."""
        return PayloadView(self.buf, self.start[idx], self.length[idx], self.full_length[idx])

    def byte(self, rel: int | I64) -> I64:
        """The byte at ``rel`` (a number, or one per payload) from each payload's start.

        Reads past the end of a payload return whatever follows it in the buffer (the
        buffer's last byte past its end); checks that need the byte compare ``rel``
        with :attr:`length`."""
        out: I64 = self.buf[np.minimum(self.start + rel, len(self.buf) - 1)].astype(np.int64)
        return out


RtpLocator = Callable[[PayloadView], tuple[int | I64, Bool]]
"""Where an RTP header would start in each payload (a number, or one per payload), and
which payloads carry the framing at all."""


@dataclass(frozen=True, slots=True)
class Framing:
    """An encapsulation that can carry RTP. The probe takes a payload's RTP header from
    the first framing of the policy that claims the payload and has a well-formed RTP
    header (:func:`rtp_header_at`) where that framing places it."""

    name: str
    """What the framing is (for readers and tests)."""
    locate: RtpLocator
    """Vectorised: RTP header offset per payload and which payloads the framing claims."""


def rtp_header_at(view: PayloadView, rel: int | I64) -> Bool:
    """Payloads with an RTP header at ``rel``: version 2, room for the 12-byte fixed
    header, and a second byte that is not an RTCP packet type (200-204 read as marker bit
    plus payload type 72-76, RFC 5761 §4)."""
    v = view.byte(rel)
    pt = view.byte(np.asarray(rel) + 1) & 0x7F
    ok: Bool = (((v & 0xC0) == 0x80) & ((pt < 72) | (pt > 76))
                & (view.length >= np.asarray(rel) + 12))
    return ok


def _plain(view: PayloadView) -> tuple[int, Bool]:
    return 0, np.ones(len(view.start), dtype=bool)


PLAIN_RTP = Framing("rtp", _plain)
"""RTP as the whole UDP payload (RFC 3550 §5.1)."""


@dataclass(frozen=True, slots=True)
class Prefix:
    """Payloads whose first four bytes, masked with ``mask``, equal ``value``."""

    name: str
    """What such payloads are (for readers and tests)."""
    value: int
    """Big-endian value of the first four bytes, after masking."""
    mask: int = 0xFFFFFFFF
    """Bits of the first four bytes that must match."""

    @classmethod
    def of(cls, name: str, start: bytes) -> Prefix:
        """Payloads that start with ``start`` (its first four bytes; shorter ones pad the
        mask with zero bits)."""
        head = start[:4]
        pad = 4 - len(head)
        return cls(name, int.from_bytes(head + b"\0" * pad, "big"),
                   (0xFFFFFFFF << (8 * pad)) & 0xFFFFFFFF)


@dataclass(frozen=True, slots=True)
class PayloadPolicy:
    """Which payloads the meter keeps whole and where it finds RTP.

    ``keep_whole`` payloads (at least four bytes captured, matching a prefix) are kept
    beyond the first samples of a flow direction, up to
    :attr:`~probe.meter.MeterConfig.signal_samples` more, and are never cut short.
    ``rtp_framings`` are tried in order (:class:`Framing`).
    """

    keep_whole: tuple[Prefix, ...] = ()
    """Prefixes of payloads kept whole whatever their rank."""
    rtp_framings: tuple[Framing, ...] = (PLAIN_RTP,)
    """Where RTP headers sit, first match wins."""

    def keeps_whole(self, first4: U32) -> Bool:
        """Which payloads (by their first four bytes, big-endian) match a prefix."""
        out = np.zeros(len(first4), dtype=bool)
        masks: dict[int, list[int]] = {}
        for p in self.keep_whole:
            masks.setdefault(p.mask, []).append(p.value)
        for mask, values in masks.items():
            word = first4 if mask == 0xFFFFFFFF else first4 & np.uint32(mask)
            out |= np.isin(word, np.asarray(values, dtype=np.uint32))
        return out

    def rtp_offsets(self, view: PayloadView) -> I64:
        """Offset of the RTP header in each payload, -1 where there is none."""
        n = len(view.start)
        off = np.full(n, -1, dtype=np.int64)
        for framing in self.rtp_framings:
            at, claimed = framing.locate(view)
            todo = np.flatnonzero((off < 0) & claimed)
            if len(todo) == n:  # every payload (plain RTP, the first framing)
                off = np.where(rtp_header_at(view, at), at, off)
            elif len(todo):  # only the payloads claimed and still without RTP are read
                rel = at if isinstance(at, int) else at[todo]
                ok = rtp_header_at(view.subset(todo), rel)
                off[todo[ok]] = rel if isinstance(rel, int) else rel[ok]
        return off


NEUTRAL = PayloadPolicy()
"""Nothing kept whole, plain RTP only: the probe on its own."""
