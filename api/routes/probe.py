"""``GET /v1/probe``: the live probe's last status, from its status file."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ClockDep, SettingsDep
from api.probe_status import STATUS_FILE, ProbeStatusError, read_probe_status
from api.schemas import ProbeOut, probe_out

__all__ = ["router"]

router = APIRouter(prefix="/v1/probe", tags=["probe"])


@router.get("", response_model=ProbeOut)
def probe_status(settings: SettingsDep, clock: ClockDep) -> ProbeOut:
    """Whether a live probe runs, and what it last reported. A missing, stale or unreadable
    status file is reported in ``state``, not as an error."""
    try:
        status = read_probe_status(settings.data_dir)
    except ProbeStatusError as exc:
        return ProbeOut(running=False, state="unreadable", age_s=None,
                        detail=str(exc).replace(str(settings.data_dir), "<data-dir>"))
    if status is None:
        return ProbeOut(running=False, state="absent", age_s=None,
                        detail=f"no probe has written {STATUS_FILE} in the data directory")
    return probe_out(status, clock(), settings.probe_stale_s)
