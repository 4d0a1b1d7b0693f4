"""``GET /healthz``: is the service up and its store readable."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException, status

from api.deps import StoreDep
from api.schemas import ErrorOut, HealthOut
from api.version import marsad_version

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut,
            responses={503: {"model": ErrorOut, "description": "The store cannot be read."}})
def healthz(store: StoreDep) -> HealthOut:
    """Liveness and readiness: 200 while the store answers."""
    try:
        jobs = store.job_counts()
    except Exception as exc:
        log.warning("health check: store unreadable: %s", exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "the store cannot be read") from exc
    return HealthOut(status="ok", version=marsad_version(), jobs=jobs)
