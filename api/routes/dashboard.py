"""The dashboard: ``GET /`` (the page), ``/static/<file>`` and ``GET /v1/stats/apps``.

The page is plain HTML, CSS and JavaScript kept in ``api/dashboard/`` and served
from this process only: no build step, no external URL. Its Content-Security-Policy
allows scripts, styles and requests to this origin alone. It reads the JSON API
(``/v1/calls``, ``/v1/captures``, ``/v1/probe``, ``/healthz``) and
``/v1/stats/apps`` below; ``?lang=ar`` shows it in Arabic, right to left.

``/v1/stats/capacity`` is capacity per hour or day (:mod:`api.capacity`).

``/v1/stats/apps`` is the traffic of each app over time, from the stored flows: a
flow's wire bytes (both directions) are spread evenly over its life, from
``first_ts`` to ``last_ts``, and summed per app into fixed-width buckets of
capture time. The store keeps a flow's totals, not its per-second rates, so a
bucket holds the share of each flow's bytes that its time covers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from api.capacity import CapacityOut, capacity
from api.deps import Moment, StoreDep
from api.schemas import ErrorOut
from api.store import Query as ListQuery
from api.store import Store

__all__ = [
    "ASSETS",
    "CSP",
    "DEFAULT_SPAN_S",
    "MAX_BUCKETS",
    "MAX_FLOWS",
    "AppSeriesOut",
    "AppTrafficOut",
    "app_traffic",
    "page_router",
    "stats_router",
]

ASSETS = Path(__file__).resolve().parent.parent / "dashboard"
"""Where the page's files are."""

_STATIC: dict[str, str] = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "i18n.json": "application/json",
}
"""The files ``/static/`` serves, with their media types; any other name is a 404."""

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""The page may load and fetch from its own origin only."""

MAX_BUCKETS = 360
"""Most buckets a series has; a wider window gets wider buckets."""
MAX_FLOWS = 100_000
"""Most flows read for one answer (the newest first)."""
DEFAULT_SPAN_S = 86_400.0
"""Without ``since``, the window reaches back this far from the newest flow's end."""
_PAGE = 1000

Lang = Literal["en", "ar"]

page_router = APIRouter(tags=["dashboard"])
stats_router = APIRouter(prefix="/v1/stats", tags=["stats"])


@page_router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard(lang: Annotated[str, Query(max_length=8)] = "en") -> HTMLResponse:
    """The dashboard page (``?lang=ar``: Arabic, right to left)."""
    chosen: Lang = "ar" if lang == "ar" else "en"
    html = (ASSETS / "index.html").read_text(encoding="utf-8")
    # The page is written in English; the server only sets the starting language and
    # direction, so the layout is right before the script runs.
    html = html.replace('<html lang="en" dir="ltr">',
                        f'<html lang="{chosen}" dir="{"rtl" if chosen == "ar" else "ltr"}">', 1)
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP,
                                       "X-Content-Type-Options": "nosniff",
                                       "Referrer-Policy": "no-referrer",
                                       "Cache-Control": "no-cache"})


@page_router.get("/static/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    """One of the page's files."""
    media_type = _STATIC.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {name}")
    return FileResponse(ASSETS / name, media_type=media_type,
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Cache-Control": "no-cache"})


class AppSeriesOut(BaseModel):
    """One app's traffic over the window."""

    app: str | None = Field(description="The app (null: flows no app was recognised in).")
    bytes: int = Field(description="Wire bytes of the app's flows inside the window, both "
                                   "directions.")
    flows: int = Field(description="The app's flows overlapping the window.")
    series: list[int] = Field(description="Wire bytes per bucket, oldest first.")


class AppTrafficOut(BaseModel):
    """Traffic per app over time, in buckets of capture time."""

    bucket_s: int = Field(description="Width of a bucket in seconds (wider than asked when "
                                      "the window would need more than 360 buckets).")
    start_ts: float | None = Field(description="Start of the first bucket (seconds since the "
                                               "epoch); null when no flow matched.")
    end_ts: float | None = Field(description="End of the window.")
    buckets: int = Field(description="Number of buckets.")
    flows: int = Field(description="Flows counted.")
    complete: bool = Field(description="False when more flows matched than are read for one "
                                       "answer; the newest were counted.")
    apps: list[AppSeriesOut] = Field(description="Apps, most bytes first.")


@dataclass(frozen=True, slots=True)
class _Span:
    app: str | None
    first_ts: float
    last_ts: float
    wire_bytes: int


@dataclass(slots=True)
class _Acc:
    series: list[float]
    flows: int = 0
    total: float = 0.0


def _share(s: _Span, a: float, b: float) -> float:
    """The part of the flow's life inside a..b."""
    life = s.last_ts - s.first_ts
    return 1.0 if life <= 0 else (b - a) / life


def _wire_bytes(row: dict[str, Any]) -> int:
    total = 0
    for side in ("orig", "resp"):
        value = row.get(f"{side}_wire_bytes", row.get(f"{side}_bytes", 0))
        if isinstance(value, int) and value > 0:
            total += value
    return total


def _read_spans(store: Store, since: float | None, until: float | None,
                capture: str | None, max_flows: int, app: str | None = None,
                source: str | None = None) -> tuple[list[_Span], bool]:
    spans: list[_Span] = []
    offset = 0
    def query(limit: int) -> ListQuery:
        return ListQuery(since=since, until=until, capture_id=capture, app=app, source=source,
                         limit=limit, offset=offset)

    while True:
        limit = min(_PAGE, max_flows - len(spans))
        if limit <= 0:
            more = store.flows(query(1)).items
            return spans, not more
        page = store.flows(query(limit))
        for row in page.items:
            first, last = float(row["first_ts"]), float(row["last_ts"])
            spans.append(_Span(row.get("app"), first, max(last, first), _wire_bytes(row)))
        offset += len(page.items)
        if len(page.items) < limit:
            return spans, True


def _bucket_width(asked: int, span_s: float, max_buckets: int) -> int:
    # Aligning the first bucket can add one, so the span must fit in one fewer.
    room = max(max_buckets - 1, 1)
    if span_s / asked <= room:
        return asked
    return max(asked, math.ceil(span_s / room))


def app_traffic(store: Store, *, bucket_s: int, since: float | None = None,
                until: float | None = None, capture: str | None = None,
                app: str | None = None, source: str | None = None,
                max_buckets: int = MAX_BUCKETS, max_flows: int = MAX_FLOWS,
                default_span_s: float = DEFAULT_SPAN_S) -> AppTrafficOut:
    """Bytes per app per bucket of capture time, from the store's flows.

    The window is ``since``..``until`` where given; otherwise it runs from the earliest
    flow start (but no more than ``default_span_s`` before the end) to the latest flow
    end. Buckets are aligned to multiples of their width since the epoch.
    """
    if bucket_s < 1:
        raise ValueError(f"a bucket is at least 1 s wide, not {bucket_s}")
    spans, complete = _read_spans(store, since, until, capture, max_flows, app, source)
    if not spans:
        return AppTrafficOut(bucket_s=bucket_s, start_ts=None, end_ts=None, buckets=0,
                             flows=0, complete=complete, apps=[])
    hi = until if until is not None else max(s.last_ts for s in spans)
    lo = since if since is not None else max(min(s.first_ts for s in spans),
                                             hi - default_span_s)
    hi = max(hi, lo)
    width = _bucket_width(bucket_s, hi - lo, max_buckets)
    start = math.floor(lo / width) * width
    count = max(1, min(max_buckets, math.ceil((hi - start) / width)))
    acc: dict[str | None, _Acc] = {}

    def index(ts: float) -> int:
        # The last bucket also holds the instant the window ends.
        return min(count - 1, int((ts - start) // width))

    for s in spans:
        a, b = max(s.first_ts, lo), min(s.last_ts, hi)
        if b < a:
            continue
        got = acc.setdefault(s.app, _Acc([0.0] * count))
        got.flows += 1
        got.total += s.wire_bytes * _share(s, a, b)
        life = s.last_ts - s.first_ts
        if life <= 0:
            got.series[index(a)] += s.wire_bytes
            continue
        for i in range(index(a), index(b) + 1):
            left = max(a, start + i * width)
            right = b if i == count - 1 else min(b, start + (i + 1) * width)
            got.series[i] += s.wire_bytes * (right - left) / life
    apps = [AppSeriesOut(app=app, bytes=round(a.total), flows=a.flows,
                         series=[round(v) for v in a.series])
            for app, a in acc.items()]
    apps.sort(key=lambda x: (-x.bytes, x.app is None, x.app or ""))
    return AppTrafficOut(bucket_s=width, start_ts=float(start), end_ts=hi, buckets=count,
                         flows=sum(a.flows for a in apps), complete=complete, apps=apps)


@stats_router.get("/apps", response_model=AppTrafficOut,
                  responses={400: {"model": ErrorOut,
                                   "description": "since is after until."}})
def apps_over_time(
    store: StoreDep,
    bucket: Annotated[int, Query(ge=1, le=86_400, description=(
        "Bucket width in seconds (made wider when the window would need more than 360)."
    ))] = 60,
    since: Annotated[Moment, Query(description=(
        "Start of the window: an RFC 3339 date-time (UTC unless it says) or seconds since "
        "the epoch (default: the earliest flow, at most a day before the end)."))] = None,
    until: Annotated[Moment, Query(description=(
        "End of the window (default: the latest flow's end)."))] = None,
    capture: Annotated[str | None, Query(max_length=64, description=(
        "Only this capture's flows."))] = None,
    app: Annotated[str | None, Query(max_length=64, description=(
        "Only this app's flows."))] = None,
    source: Annotated[Literal["live", "capture"] | None, Query(description=(
        "Only flows of live probe runs (live) or of capture files (capture)."))] = None,
) -> AppTrafficOut:
    """Traffic of each app over time (wire bytes per bucket of capture time, each flow's
    bytes spread evenly over its life)."""
    lo, hi = since, until
    if lo is not None and hi is not None and lo > hi:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "since is after until")
    return app_traffic(store, bucket_s=bucket, since=lo, until=hi, capture=capture, app=app,
                       source=source)


@stats_router.get("/capacity", response_model=CapacityOut,
                  responses={400: {"model": ErrorOut,
                                   "description": "since is after until."}})
def capacity_per_period(
    store: StoreDep,
    period: Annotated[Literal["hour", "day"], Query(description=(
        "Report per hour or per day."))] = "hour",
    since: Annotated[Moment, Query(description=(
        "Start of the window: an RFC 3339 date-time or seconds since the epoch."))] = None,
    until: Annotated[Moment, Query(description="End of the window.")] = None,
    app: Annotated[str | None, Query(max_length=64, description="Only this app.")] = None,
    capture: Annotated[str | None, Query(max_length=64, description=(
        "Only this capture or probe run."))] = None,
    source: Annotated[Literal["live", "capture"] | None, Query(description=(
        "Only live probe runs (live) or capture files (capture)."))] = None,
) -> CapacityOut:
    """Capacity per hour or day: each app's traffic (mean, peak and 95th-percentile bit rate
    on a one-minute grid, per category too) and calls (count, peak and 95th-percentile
    number in progress, interfered share, mean MOS and loss), labelled by source."""
    if since is not None and until is not None and since > until:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "since is after until")
    return capacity(store, period=period, since=since, until=until, app=app, capture=capture,
                    source=source)
