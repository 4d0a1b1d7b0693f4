"""The analysis pipeline as one call: capture in, flows + classifications + calls out.

Used by the CLI (``marsad analyze``/``report``/``evidence``/``verify``) and by
the service, so that every entry point derives the same verdicts from the same
capture.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from api.runtime import gc_paused
from classifier.engine import Classifier, Observation
from classifier.records import Classification
from policy.calls import Analysis, analyse_calls
from policy.rules import Policy, load_policy
from probe import FlowReader, FlowRecord, MeterConfig, ReadStatus, Weird
from probe.meter import MeterStats
from probe.run import default_workers

__all__ = ["AnalysisResult", "analyze_capture", "capture_sha256", "flow_row", "gc_paused"]


@dataclass(slots=True)
class AnalysisResult:
    """Everything derived from one capture."""

    flows: list[FlowRecord]
    """Flow records, by first packet."""
    classes: list[Classification]
    """One classification per flow, same order."""
    analysis: Analysis
    """Calls and flow verdicts."""
    status: ReadStatus
    """How reading the capture went."""
    stats: MeterStats
    """Packet and flow counters."""
    weirds: list[Weird] = field(default_factory=list)
    """Decoding problems that belong to no flow."""
    sha256: str | None = None
    """SHA-256 of the capture file, when it was read from a file."""

    def flow_rows(self) -> list[dict[str, Any]]:
        rows = []
        for f, c in zip(self.flows, self.classes, strict=True):
            row = flow_row(f, c)
            v = self.analysis.flow_verdicts.get(f.uid)
            if v is not None:
                row["verdict"] = str(v.kind)
                row["reasons"] = [str(x) for x in v.reasons]
            rows.append(row)
        return rows

    def to_json(self) -> dict[str, Any]:
        """The ``marsad analyze --json`` object."""
        return {"flows": self.flow_rows(),
                "calls": [call.to_dict() for call in self.analysis.calls]}


def flow_row(rec: FlowRecord, c: Classification) -> dict[str, Any]:
    """A flow's conn.log columns plus its classification, JSON-ready."""
    row = rec.conn_dict()
    row.update(c.to_dict())
    if c.detail:
        row["detail"] = c.detail
    f = c.facts
    if f.protocol:
        row["l7"] = f.protocol
    if f.sni:
        row["sni"] = f.sni
    if f.ja4:
        row["ja4"] = f.ja4
    return row


def capture_sha256(path: str | Path) -> str:
    """SHA-256 of a capture file, as recorded in the evidence ledger."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _Hasher(threading.Thread):
    """SHA-256 of a capture file, computed beside the analysis (hashlib lets go of the
    GIL on large blocks, so this uses the time the other core has spare)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(name="marsad-sha256", daemon=True)
        self.path = path
        self.digest: str | None = None
        self.error: OSError | None = None

    def run(self) -> None:
        try:
            self.digest = capture_sha256(self.path)
        except OSError as exc:
            self.error = exc


def analyze_capture(source: str | Path | BinaryIO, *, policy: Policy | None = None,
                    config: MeterConfig | None = None, workers: int | None = None,
                    fingerprints: bool = False, hash_capture: bool = True,
                    progress: Callable[[int], None] | None = None) -> AnalysisResult:
    """Read, classify and judge a whole capture. Raises
    :class:`~probe.errors.CaptureError` if it cannot be read at all.

    Each flow is observed (inspected, its media statistics taken) as soon as the probe
    ends it (:meth:`~probe.run.FlowReader.observed`, the reader process taking a share);
    the record kept for the later stages comes without its payload bytes and timing
    series (:meth:`~probe.records.FlowRecord.lightened`), so memory follows the flow
    table rather than the capture. ``hash_capture`` computes the file's
    SHA-256 (for the ledger) alongside.
    """
    reader = FlowReader(source, config, progress=progress,
                        workers=default_workers() if workers is None else workers)
    hasher = None
    if hash_capture and isinstance(source, str | Path) and str(source) != "-":
        hasher = _Hasher(source)
        hasher.start()
    classifier = Classifier(fingerprints=fingerprints)
    flows: list[FlowRecord] = []
    observed: dict[str, Observation] = {}
    with gc_paused():
        for rec, ob in reader.observed(classifier.observe):
            observed[rec.uid] = ob
            flows.append(rec)
        flows.sort(key=lambda r: (r.first_frame, r.uid))
        classes = classifier.classify_all(flows, observed)
        del observed
        analysis = analyse_calls(flows, classes, policy or load_policy())
    sha = None
    if hasher is not None:
        hasher.join()
        if hasher.error is not None:
            raise hasher.error
        sha = hasher.digest
    return AnalysisResult(flows, classes, analysis, reader.status, reader.stats,
                          reader.weirds, sha)
