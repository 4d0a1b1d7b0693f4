"""``GET /v1/ledger/verify``: walk the evidence ledger and report every problem."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from api.active import deriver_with_tests
from api.deps import (
    BearerDep,
    JobsDep,
    LedgerDep,
    ServicesDep,
    StoreDep,
    check_token,
    costly_slot,
)
from api.schemas import ErrorOut, LedgerVerifyOut, ledger_out
from policy.ledger import Anchor

__all__ = ["router"]

router = APIRouter(prefix="/v1/ledger", tags=["ledger"])


@router.get("/verify", response_model=LedgerVerifyOut,
            responses={400: {"model": ErrorOut, "description": "Half an anchor was given."},
                       401: {"model": ErrorOut,
                             "description": "rederive without the token, or a wrong one."},
                       403: {"model": ErrorOut,
                             "description": "rederive, and no token is configured."},
                       429: {"model": ErrorOut,
                             "description": "rederive while the service is already "
                                            "re-analysing for other requests."}})
def verify_ledger(
    ledger: LedgerDep, jobs: JobsDep, svc: ServicesDep, creds: BearerDep, store: StoreDep,
    rederive: Annotated[bool, Query(description=(
        "Also re-analyse each stored capture and check its verdicts (slow; needs the "
        "token, and runs for one request at a time)."))] = False,
    anchor_seq: Annotated[int | None, Query(ge=1, le=1 << 62, description=(
        "Position of a published checkpoint; with anchor_hash."))] = None,
    anchor_hash: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$", description=(
        "entry_hash of the published checkpoint."))] = None,
) -> LedgerVerifyOut:
    """Recompute every hash and link; optionally check a published anchor and re-derive the
    verdicts from the captures still stored, an active test's from its measurement (that
    re-analyses every one of them: it needs the token even where reads are open, and is
    limited to ``costly_concurrency`` requests at a time)."""
    if (anchor_seq is None) != (anchor_hash is None):
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            "give both anchor_seq and anchor_hash, or neither")
    anchor = None
    if anchor_seq is not None and anchor_hash is not None:
        anchor = Anchor(seq=anchor_seq, entry_hash=anchor_hash)
    if not rederive:
        return ledger_out(ledger.verify(None, anchor=anchor), ledger.anchor())
    check_token(svc, creds)
    def test_capture(sha: str) -> Path | None:
        row = store.test_capture(sha)
        return None if row is None or row.capture_path is None else Path(row.capture_path)

    derive = deriver_with_tests(ledger, jobs.policy, capture_path=test_capture,
                                fallback=jobs.derive)
    with costly_slot(svc):
        report = ledger.verify(derive, anchor=anchor)
    return ledger_out(report, ledger.anchor())
