"""Shared dependencies of the routes, as ``Annotated`` aliases.

:func:`api.main.create_app` puts one :class:`Services` on ``app.state.services``;
routes reach its parts through :data:`SettingsDep`, :data:`StoreDep`,
:data:`JobsDep`, :data:`LedgerDep` and :data:`ClockDep`.

Access: :func:`require_token` guards write endpoints and evidence downloads (and
reads when ``open_reads`` is off), and :func:`check_token` the costly variants of
open reads (``/v1/ledger/verify?rederive=true``). The token is compared in constant
time and never logged or echoed. Requests that re-analyse stored captures take a
slot of :attr:`Services.costly` (:func:`costly_slot`); none left: 429.
"""

from __future__ import annotations

import hmac
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator, WithJsonSchema

from api.active import TestJobs
from api.config import Settings
from api.jobs import Jobs
from api.store import Query as ListQuery
from api.store import Store
from classifier.records import Category
from policy.ledger import Ledger
from policy.records import VerdictKind

__all__ = [
    "BearerDep",
    "ClockDep",
    "JobsDep",
    "LedgerDep",
    "ListQueryDep",
    "Moment",
    "Services",
    "ServicesDep",
    "SettingsDep",
    "StoreDep",
    "TokenDep",
    "bearer",
    "check_token",
    "costly_slot",
    "require_token",
    "services",
]


@dataclass(frozen=True, slots=True)
class Services:
    """What the routes share, created once per app."""

    settings: Settings
    """The configuration."""
    store: Store
    """Captures, flows, calls, verdicts."""
    ledger: Ledger
    """The evidence ledger."""
    jobs: Jobs
    """Capture intake and background analysis."""
    token: str | None
    """The bearer token in force; None: token-protected endpoints are refused."""
    clock: Callable[[], float]
    """Seconds since the epoch."""
    costly: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(1))
    """Slots for requests that re-analyse stored captures (``costly_concurrency``)."""
    tests: TestJobs | None = None
    """Active tests requested through the API (None: not enabled)."""


def services(request: Request) -> Services:
    """The app's :class:`Services`."""
    found: Services = request.app.state.services
    return found


ServicesDep = Annotated[Services, Depends(services)]


def _settings(s: ServicesDep) -> Settings:
    return s.settings


def _store(s: ServicesDep) -> Store:
    return s.store


def _jobs(s: ServicesDep) -> Jobs:
    return s.jobs


def _ledger(s: ServicesDep) -> Ledger:
    return s.ledger


def _clock(s: ServicesDep) -> Callable[[], float]:
    return s.clock


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[Store, Depends(_store)]
JobsDep = Annotated[Jobs, Depends(_jobs)]
LedgerDep = Annotated[Ledger, Depends(_ledger)]
ClockDep = Annotated[Callable[[], float], Depends(_clock)]

bearer = HTTPBearer(auto_error=False, scheme_name="token",
                    description="The service's API token (MARSAD_API_TOKEN, or the "
                                "api-token file in the data directory).")


BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def require_token(s: ServicesDep, creds: BearerDep) -> None:
    """Refuse the request unless it carries the API token as a bearer token."""
    check_token(s, creds)


def check_token(s: Services, creds: HTTPAuthorizationCredentials | None) -> None:
    """:func:`require_token` for a route that needs the token only for some requests."""
    if s.token is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN,
                            "this endpoint needs an API token and none is configured: set "
                            "MARSAD_API_TOKEN or run 'marsad serve', which creates one")
    if creds is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                            "missing bearer token (Authorization: Bearer <token>)",
                            headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(creds.credentials.encode(), s.token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


TokenDep = Depends(require_token)
"""Add to a route's or router's ``dependencies`` to require the token."""

RETRY_AFTER_S = 10
"""What a 429 from :func:`costly_slot` asks the client to wait, in seconds."""


@contextmanager
def costly_slot(s: Services) -> Iterator[None]:
    """Hold one of the slots for work that re-analyses stored captures, or refuse with 429
    when all are taken: such a request costs what an analysis costs, and one client must
    not be able to start many of them at once. The slots are per process."""
    if not s.costly.acquire(blocking=False):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"the service is already re-analysing captures for "
                            f"{s.settings.costly_concurrency} request(s); try again later",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    try:
        yield
    finally:
        s.costly.release()


MAX_PAGE = 1000
"""Largest page a listing returns."""
MAX_OFFSET = 1 << 40


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})?")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _moment(value: object) -> float | None:
    """Seconds since the epoch from an RFC 3339 date-time (UTC when it names no offset)
    or a number of seconds; anything else (a date alone, words, ``inf``) is refused."""
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        seconds = value
    elif isinstance(value, str) and _NUMBER.fullmatch(value):
        seconds = float(value)
    elif isinstance(value, str) and _DATE_TIME.fullmatch(value):
        try:
            moment = datetime.fromisoformat(value.upper())
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = (moment - _EPOCH).total_seconds()
        except (ValueError, OverflowError) as exc:
            raise ValueError(f"not a valid date-time: {exc}") from exc
    else:
        raise ValueError("expected an RFC 3339 date-time (2024-01-02T03:04:05Z) or a number "
                         "of seconds since the epoch")
    if seconds is not None and not MOMENT_MIN_S <= seconds <= MOMENT_MAX_S:  # NaN too
        raise ValueError("expected a time between the years 1 and 9999")
    return None if seconds is None else float(seconds)


MOMENT_MIN_S = -62_135_596_800
"""0001-01-01T00:00:00Z in seconds since the epoch: the earliest time a query may name."""
MOMENT_MAX_S = 253_402_300_799
"""9999-12-31T23:59:59Z: the latest."""

Moment = Annotated[float | None, BeforeValidator(_moment), WithJsonSchema(
    {"anyOf": [{"type": "string", "format": "date-time"},
               {"type": "number", "minimum": MOMENT_MIN_S, "maximum": MOMENT_MAX_S}]})]
"""A query parameter naming a time: an RFC 3339 date-time or seconds since the epoch, as
the OpenAPI schema says (and nothing else), given to the route as seconds."""


def list_query(
    since: Annotated[Moment, Query(description=(
        "Only items that end at or after this time: an RFC 3339 date-time (UTC unless it "
        "says) or seconds since the epoch."))] = None,
    until: Annotated[Moment, Query(description=(
        "Only items that start at or before this time."))] = None,
    app: Annotated[str | None, Query(max_length=64, description="Only this app "
                                                                "(whatsapp, teams...).")] = None,
    category: Annotated[Category | None, Query(description=(
        "Flows: only this category; calls: only calls with a flow of this category."))] = None,
    verdict: Annotated[VerdictKind | None, Query(description=(
        "Flows: only flows with this verdict of their own; calls: only this call verdict."
    ))] = None,
    capture: Annotated[str | None, Query(max_length=64, description="Only this capture's "
                                                                    "items.")] = None,
    source: Annotated[Literal["live", "capture"] | None, Query(description=(
        "Only items of live probe runs (live) or of capture files: uploads and preloads "
        "(capture)."))] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
    order: Annotated[Literal["newest", "oldest"], Query(description=(
        "By start time."))] = "newest",
) -> ListQuery:
    """The filters and page of a flow or call listing."""
    return ListQuery(since=since, until=until, app=app,
                     category=None if category is None else category.value,
                     verdict=None if verdict is None else verdict.value, capture_id=capture,
                     source=source, limit=limit, offset=offset, newest_first=order == "newest")


ListQueryDep = Annotated[ListQuery, Depends(list_query)]
