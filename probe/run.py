"""Reading a capture end to end: source -> decoder -> meter -> flow records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from probe.decode import Decoder
from probe.errors import UnsupportedLinkType
from probe.meter import FlowMeter, MeterConfig, MeterStats
from probe.records import FlowRecord, Weird
from probe.sources import LinkType, ReadStatus, open_source

__all__ = ["CaptureRun", "FlowReader", "read_capture"]

SUPPORTED_LINKTYPES = frozenset(int(x) for x in LinkType)


class FlowReader:
    """Iterate the flows of a capture as they end.

    ``progress`` (optional) is called after each batch with the bytes of input
    consumed so far. After iteration, :attr:`status` says whether the capture
    was read completely, :attr:`stats` holds the counters and :attr:`weirds`
    the decoding problems that belong to no flow.
    """

    def __init__(self, source: str | Path | BinaryIO, config: MeterConfig | None = None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.config = config or MeterConfig()
        self._src = open_source(source, self.config.chunk_size)
        self._decoder = Decoder()
        self.meter = FlowMeter(self.config)
        self._progress = progress

    @property
    def status(self) -> ReadStatus:
        return self._src.status

    @property
    def stats(self) -> MeterStats:
        return self.meter.stats

    @property
    def weirds(self) -> list[Weird]:
        return self.meter.weirds

    def __iter__(self) -> Iterator[FlowRecord]:
        checked = False
        for batch in self._src.batches():
            if not checked:
                checked = True
                if not self.status.linktypes & SUPPORTED_LINKTYPES:
                    kinds = ", ".join(str(x) for x in sorted(self.status.linktypes))
                    raise UnsupportedLinkType(
                        f"{self.status.source}: unsupported link type {kinds}")
            cols = self._decoder.decode(batch)
            yield from self.meter.feed(batch, cols)
            if self._progress is not None:
                self._progress(self.status.bytes_read)
        if not checked and self.status.linktypes and not (
                self.status.linktypes & SUPPORTED_LINKTYPES):
            kinds = ", ".join(str(x) for x in sorted(self.status.linktypes))
            raise UnsupportedLinkType(f"{self.status.source}: unsupported link type {kinds}")
        yield from self.meter.finish()


@dataclass(slots=True)
class CaptureRun:
    """Everything read from one capture."""

    flows: list[FlowRecord]
    """Finished flows, ordered by their first packet."""
    weirds: list[Weird]
    """Decoding problems that belong to no flow."""
    status: ReadStatus
    """Whether the capture was read completely, and where it stopped if not."""
    stats: MeterStats = field(default_factory=MeterStats)
    """Packet and flow counters."""

    def all_weirds(self) -> list[Weird]:
        """Every weird, with the flow ones first (by frame)."""
        out = list(self.weirds)
        for f in self.flows:
            out.extend(f.weirds)
        return sorted(out, key=lambda w: w.frame)


def read_capture(source: str | Path | BinaryIO, config: MeterConfig | None = None) -> CaptureRun:
    """Read a whole capture into memory. Raises :class:`~probe.errors.CaptureError` if it
    cannot be read at all; a damaged capture returns what came before the damage."""
    reader = FlowReader(source, config)
    flows = sorted(reader, key=lambda f: (f.first_frame, f.uid))
    return CaptureRun(flows, reader.weirds, reader.status, reader.stats)
