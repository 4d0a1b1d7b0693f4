"""When the analysis pipeline (:mod:`policy.pipeline`) settles flows, calls and verdicts:
its settings alone, so that the command line can offer them without loading the pipeline."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PipelineConfig"]


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    """When flows, calls and verdicts settle (capture time)."""

    cut_s: float = 10.0
    """Grid of capture time at which settled flows are classified and calls judged."""
    call_settle_s: float = 60.0
    """A call (a flow verdict) is written once capture time passes its end by this much:
    the gap within which another flow of the same call may still start."""
    call_hold_s: float = 1800.0
    """A call is held back while a UDP flow that may be one of its streams (see
    :mod:`policy.pipeline`) and started before its end plus ``call_settle_s`` is still
    going, at most this long after its end (the probe's active timeout: no flow lasts
    longer)."""
    window_s: float = 600.0
    """Flows out of every call are kept this long after their end, as context (the
    signalling of a call that starts later, "other flows were answered")."""
