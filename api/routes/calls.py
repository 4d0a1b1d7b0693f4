"""``/v1/calls``: calls, one call, and a call's evidence bundle."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status

from api.deps import (
    MAX_PAGE,
    JobsDep,
    LedgerDep,
    ListQueryDep,
    ServicesDep,
    SettingsDep,
    StoreDep,
    TokenDep,
    costly_slot,
)
from api.schemas import CallOut, CallPage, ErrorOut, FlowOut, FlowPage
from api.store import CaptureRow
from api.store import Query as ListQuery

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/calls", tags=["calls"])

CaptureParam = Annotated[str | None, Query(max_length=64, description=(
    "The capture to take the call from. Needed only when captures with different "
    "contents hold the uid (409 otherwise); copies of one capture (the same SHA-256) "
    "hold the same call, and the newest is taken."))]


@router.get("", response_model=CallPage)
def list_calls(store: StoreDep, query: ListQueryDep) -> CallPage:
    """Calls with their legs, quality and verdict."""
    page = store.calls(query)
    return CallPage(items=[CallOut.model_validate(row) for row in page.items], total=page.total,
                    limit=query.limit, offset=query.offset)


def _call(store: StoreDep, uid: str, capture: str | None) -> dict[str, Any]:
    """The call ``uid`` (of ``capture`` when named). A uid names one call of one capture
    (it digests the capture's identity), so it is found in several stored captures only
    when they are copies of one capture, or when two captures begin with the same packet
    and hold the call's packets alike; unless their files are the same (one SHA-256), the
    answer would be a guess between calls: 409, naming the captures to choose from."""
    if capture is None:
        holders = store.call_captures(uid)
        if len({sha for _, sha in holders}) > 1:
            ids = ", ".join(cid for cid, _ in holders)
            raise HTTPException(status.HTTP_409_CONFLICT,
                                f"call {uid} is in more than one capture ({ids}): "
                                f"name one with ?capture=")
    row = store.call(uid, capture)
    if row is None:
        where = f" in capture {capture}" if capture is not None else ""
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no call {uid}{where}")
    return row


_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorOut, "description": "No such call."},
    409: {"model": ErrorOut, "description": (
        "Captures with different contents hold the uid: name one with ?capture=.")}}
"""How a call uid is found (or not) in the store: every route on one call answers these."""
_REANALYSED: dict[int | str, dict[str, Any]] = {
    **_FOUND,
    410: {"model": ErrorOut, "description": "The capture file is gone."},
    429: {"model": ErrorOut, "description": (
        "The service is already re-analysing captures for other requests.")}}
"""...and these, for the routes that re-analyse the call's capture."""


@router.get("/{uid}", response_model=CallOut,
            responses=_FOUND)
def get_call(store: StoreDep, uid: str, capture: CaptureParam = None) -> CallOut:
    """One call."""
    return CallOut.model_validate(_call(store, uid, capture))


@router.get("/{uid}/flows", response_model=FlowPage,
            responses={404: {"model": ErrorOut, "description": "No such call."}})
def get_call_flows(store: StoreDep, uid: str, capture: CaptureParam = None) -> FlowPage:
    """The flows of one call (its media, signalling and setup flows), oldest first."""
    row = _call(store, uid, capture)
    query = ListQuery(call_uid=uid, capture_id=row["capture_id"], limit=MAX_PAGE,
                      newest_first=False)
    page = store.flows(query)
    return FlowPage(items=[FlowOut.model_validate(r) for r in page.items], total=page.total,
                    limit=query.limit, offset=0)


def bundle_builder() -> Callable[..., bytes] | None:
    """``api.evidence.build_bundle`` when that module is present."""
    try:
        module = importlib.import_module("api.evidence")
    except ModuleNotFoundError as exc:
        if exc.name == "api.evidence":
            return None
        raise
    build = getattr(module, "build_bundle", None)
    return build if callable(build) else None


def bundle_file_name(capture_name: str, uid: str) -> str:
    """``api.evidence.bundle_name`` (``<capture stem>-<uid>.zip``) when that module is
    present, else ``evidence-<uid>.zip``."""
    try:
        module = importlib.import_module("api.evidence")
    except ModuleNotFoundError:
        return f"evidence-{uid}.zip"
    name = getattr(module, "bundle_name", None)
    return str(name(capture_name, uid)) if callable(name) else f"evidence-{uid}.zip"


@router.get("/{uid}/report", response_class=Response,
            responses={200: {"content": {"text/html": {}, "text/markdown": {},
                                         "application/pdf": {}},
                             "description": "The call's report for people."},
                       **_REANALYSED,
                       501: {"model": ErrorOut, "description": "PDF needs WeasyPrint."}})
def call_report(store: StoreDep, jobs: JobsDep, svc: ServicesDep, uid: str,
                capture: CaptureParam = None,
                format: Annotated[Literal["html", "md", "pdf"], Query(
                    description="html, md (Markdown) or pdf.")] = "html",
                lang: Annotated[Literal["en", "fr", "ar", "ar-MA", "ar-OM"], Query(
                    description="en, fr, ar (Arabic-Indic digits), ar-MA (Western digits), "
                                "ar-OM.")] = "en") -> Response:
    """The call's report for people (``marsad report --format``): what happened, its
    timeline, charts against the thresholds, reasons, hashes and how to verify; the
    frame numbers are those of the stored capture."""
    from api.document import build_document, render_html, render_markdown, render_pdf
    from api.evidence import policy_digest
    from api.version import marsad_version

    row = _call(store, uid, capture)
    capture_row, path = _capture_file(store.capture(row["capture_id"]))
    with costly_slot(svc):  # the report re-analyses the capture
        result = jobs.analyse(path)
    doc = build_document(result, lang=lang, capture_name=capture_row.filename, call_uid=uid,
                         policy=jobs.policy, version=marsad_version(),
                         policy_sha256=policy_digest(jobs.policy))
    if format == "pdf":
        try:
            return Response(render_pdf(doc), media_type="application/pdf")
        except ValueError as exc:
            raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED, str(exc)) from exc
    if format == "md":
        return Response(render_markdown(doc), media_type="text/markdown; charset=utf-8")
    return Response(render_html(doc), media_type="text/html; charset=utf-8")


def _capture_file(row: CaptureRow | None) -> tuple[CaptureRow, str]:
    """A stored capture and its file: its own copy, or for a capture registered from a
    dataset the file the dataset's manifest names, still there with its SHA-256; else
    410."""
    if row is not None:
        if Path(row.path).is_file():
            return row, str(row.path)
        from api.archive import dataset_capture_file
        found = dataset_capture_file(row.path)
        if found is not None:
            return row, found
    raise HTTPException(status.HTTP_410_GONE,
                        "the capture this call came from is no longer kept")


@router.get("/{uid}/evidence", dependencies=[TokenDep],
            response_class=Response,
            responses={200: {"content": {"application/zip": {}},
                             "description": "The evidence bundle."},
                       401: {"model": ErrorOut, "description": "Missing or wrong token."},
                       403: {"model": ErrorOut, "description": "No token is configured."},
                       **_REANALYSED,
                       501: {"model": ErrorOut, "description": "No bundle builder."}})
def call_evidence(store: StoreDep, jobs: JobsDep, ledger: LedgerDep, settings: SettingsDep,
                  svc: ServicesDep, uid: str,
                  capture: CaptureParam = None,
                  anonymize: Annotated[bool, Query(description=(
                      "Pseudonymise addresses in the bundle."))] = False) -> Response:
    """The call's evidence bundle: its packets and the verdict's reasoning (needs the token)."""
    row = _call(store, uid, capture)
    capture_row, path = _capture_file(store.capture(row["capture_id"]))
    build = bundle_builder()
    if build is None:
        raise HTTPException(status.HTTP_501_NOT_IMPLEMENTED,
                            "evidence bundles are not available in this build "
                            "(api.evidence.build_bundle is missing)")
    with costly_slot(svc):  # the bundle re-analyses the capture
        result = jobs.analyse(path)
    key = settings.anonymize_key
    extra: dict[str, Any] = {}
    params = inspect.signature(build).parameters
    if "ledger_entries" in params:
        extra["ledger_entries"] = ledger.entries(capture_sha256=capture_row.sha256)
    if "capture_name" in params:  # the uploaded file's name, not the stored copy's
        extra["capture_name"] = capture_row.filename
    if "ledger_name" in params:  # the service's own ledger, in its data directory
        extra["ledger_name"] = settings.ledger_path.name
    try:
        data = build(result, uid, Path(path), anonymize,
                     None if key is None else key.get_secret_value().encode(), **extra)
    except Exception as exc:
        log.exception("evidence bundle for call %s failed", uid)
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR,
                            f"the evidence bundle could not be built: "
                            f"{type(exc).__name__}") from exc
    zipped = data[:4] == b"PK\x03\x04"
    name = bundle_file_name(capture_row.filename, uid)
    if not zipped:
        name = name.removesuffix(".zip") + ".bin"
    return Response(content=data,
                    media_type="application/zip" if zipped else "application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
