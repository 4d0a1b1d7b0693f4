"""The analysis pipeline on a whole capture: :func:`analyze_capture` runs the one
pipeline (:mod:`policy.pipeline`) to the end of a capture and collects what it settled,
hashing the capture file alongside (for the ledger). The CLI's batch commands, the
service's jobs, ``marsad report``, ``evidence`` and ``verify`` use it; ``marsad analyze
--jsonl`` and the live probe drive the same pipeline step by step.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO

from classifier.payloads import meter_config
from policy.pipeline import (
    AnalysisResult,
    Pipeline,
    PipelineConfig,
    analyze_flows,
    flow_row,
    run_capture,
)
from policy.rules import Policy
from probe import FlowReader, MeterConfig, default_workers
from probe.speed import gc_paused

__all__ = ["RECORDED_METER", "AnalysisResult", "CaptureHasher", "analysis_settings",
           "analyze_capture", "capture_sha256", "flow_row", "settings_configs"]


def capture_sha256(path: str | Path) -> str:
    """SHA-256 of a capture file, as recorded in the evidence ledger."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CaptureHasher(threading.Thread):
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

    def result(self) -> str:
        """The digest, once the file is read; raises the error reading it met."""
        self.join()
        if self.error is not None:
            raise self.error
        assert self.digest is not None
        return self.digest


RECORDED_METER = ("udp_idle_s", "tcp_idle_s", "other_idle_s", "tcp_close_s", "active_s",
                  "max_flows", "payload_samples", "payload_snap", "signal_samples",
                  "payload_full", "payload_tail_snap", "timing_packets", "rtp_detail_packets")
"""The meter settings a capture's flows, calls and verdicts depend on (the command line's
options among them): recorded with a verdict when they are not the defaults. (How far a
compressed capture may be decompressed decides only whether it is read whole: not
recorded.)"""

_POSITIVE = frozenset({"udp_idle_s", "tcp_idle_s", "other_idle_s", "tcp_close_s", "active_s",
                       "max_flows", "cut_s"})
"""Settings that must be above zero (the others: zero or more)."""


def analysis_settings(meter: MeterConfig, pipeline: PipelineConfig | None = None
                      ) -> dict[str, Any]:
    """The meter and pipeline settings that differ from the defaults, as JSON
    (``{"meter": {...}, "pipeline": {...}}``, empty for the defaults): what re-deriving a
    verdict needs besides the capture and the policy (:func:`settings_configs`)."""
    base = meter_config()
    out: dict[str, Any] = {}
    m = {n: getattr(meter, n) for n in RECORDED_METER if getattr(meter, n) != getattr(base, n)}
    if m:
        out["meter"] = m
    if pipeline is not None:
        p = {f.name: getattr(pipeline, f.name) for f in fields(PipelineConfig)
             if getattr(pipeline, f.name) != getattr(PipelineConfig(), f.name)}
        if p:
            out["pipeline"] = p
    return out


def settings_configs(settings: Mapping[str, Any]) -> tuple[MeterConfig, PipelineConfig]:
    """The meter and pipeline configurations :func:`analysis_settings` described. Settings
    read from a ledger are checked as the command line checks its options: a name marsad
    does not know, a value of the wrong kind (a count that is no whole number) or out of
    range is a :class:`ValueError`."""
    if not isinstance(settings, Mapping):
        raise ValueError("settings: not an object")
    base = meter_config()
    meter = settings.get("meter") or {}
    pipe = settings.get("pipeline") or {}
    if not isinstance(meter, Mapping) or not isinstance(pipe, Mapping):
        raise ValueError("settings: meter and pipeline must be objects")
    names = {f.name for f in fields(PipelineConfig)}
    m: dict[str, Any] = {}
    p: dict[str, float] = {}
    for section, known, got in (("meter", RECORDED_METER, meter), ("pipeline", names, pipe)):
        for k, v in got.items():
            if k not in known:
                raise ValueError(f"settings: unknown {section} setting {k!r}")
            whole = section == "meter" and isinstance(getattr(base, k), int)
            if (isinstance(v, bool) or not isinstance(v, int | float)
                    or (whole and not isinstance(v, int)) or not math.isfinite(v)
                    or v < 0 or (v == 0 and k in _POSITIVE)):
                raise ValueError(f"settings: {section}.{k} = {v!r} is not a "
                                 f"{'count' if whole else 'number'} in range")
            if section == "meter":
                m[k] = v if whole else float(v)
            else:
                p[k] = float(v)
    return meter_config(**m), PipelineConfig(**p)


def analyze_capture(source: str | Path | BinaryIO, *, policy: Policy | None = None,
                    config: MeterConfig | None = None, workers: int | None = None,
                    fingerprints: bool = False, hash_capture: bool = True,
                    progress: Callable[[int], None] | None = None,
                    pipeline: PipelineConfig | None = None) -> AnalysisResult:
    """Read, classify and judge a whole capture. Raises
    :class:`~probe.errors.CaptureError` if it cannot be read at all.

    ``hash_capture`` computes the file's SHA-256 (for the ledger) alongside. Without
    ``config``, the meter's defaults with the classifier's payload policy. A file of a
    live capture's ring (listed in the ``index.json`` beside it) is analysed with the
    live stream's identity, so that its flows get the uids the live probe gave them (as
    every reader of a file does, :class:`~probe.run.FlowReader`).
    """
    config = config or meter_config()
    reader = FlowReader(source, config, progress=progress,
                        workers=default_workers() if workers is None else workers)
    hasher = None
    if hash_capture and isinstance(source, str | Path) and str(source) != "-":
        hasher = CaptureHasher(source)
        hasher.start()
    pipe = Pipeline(policy, reader.config, fingerprints=fingerprints, config=pipeline)
    with gc_paused():
        result = analyze_flows(run_capture(reader, pipe), reader)
    result.settings = analysis_settings(reader.config, pipe.cfg)
    if hasher is not None:
        result.sha256 = hasher.result()
    return result
