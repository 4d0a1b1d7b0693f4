"""``GET /v1/flows``: flows of the analysed captures, filtered and paged."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import ListQueryDep, StoreDep
from api.schemas import FlowOut, FlowPage

__all__ = ["router"]

router = APIRouter(prefix="/v1/flows", tags=["flows"])


@router.get("", response_model=FlowPage)
def list_flows(store: StoreDep, query: ListQueryDep) -> FlowPage:
    """Flows with their classification and, when their own packets show interference, their
    verdict. Times are capture times (seconds since the epoch)."""
    page = store.flows(query)
    return FlowPage(items=[FlowOut.model_validate(row) for row in page.items], total=page.total,
                    limit=query.limit, offset=query.offset)
