"""``/v1/captures``: upload a capture for analysis, follow its job, list captures.

``POST /v1/captures`` takes the capture either as the raw request body (any
content type but multipart, e.g. ``curl --data-binary @x.pcap``; name it with
``?name=``) or as the ``file`` part of a ``multipart/form-data`` form. Either
way it is streamed to the data directory, counted against the size limit as it
arrives, hashed, and checked to be a pcap or pcapng capture before a job is
queued.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from api.deps import JobsDep, StoreDep, TokenDep
from api.jobs import Intake, Jobs, NotACaptureFile, TooLarge
from api.schemas import CaptureOut, CapturePage, ErrorOut, capture_out

__all__ = ["router"]

router = APIRouter(prefix="/v1/captures", tags=["captures"])

_MULTIPART_SLACK = 1 << 16
"""Bytes of multipart framing allowed on top of the size limit."""
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_UPLOAD_BODY = {"requestBody": {"required": True, "content": {
    "application/vnd.tcpdump.pcap": _BINARY,
    "application/octet-stream": _BINARY,
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary"}}}},
}}}


def _clean_name(name: str | None) -> str:
    if not name:
        return "upload"
    base = PureWindowsPath(PurePosixPath(name).name).name
    base = _UNSAFE.sub("", base).strip()[:255]
    return base if base.strip(".") else "upload"


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


async def _limited(stream: AsyncIterator[bytes], limit: int, slack: int = 0
                   ) -> AsyncGenerator[bytes, None]:
    """The body's chunks; :class:`TooLarge` (naming ``limit``, the configured size) once
    more than ``limit + slack`` bytes came (``slack``: room for multipart framing)."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit + slack:
            raise TooLarge(limit)
        yield chunk


async def _receive_raw(request: Request, jobs: Jobs) -> Intake:
    with jobs.new_upload() as up:
        async for chunk in request.stream():
            # Off the event loop: a compressed chunk can inflate to a thousand times it.
            await run_in_threadpool(up.write, chunk)
    return await run_in_threadpool(jobs.check, up.path, up.sha256(), up.size)


async def _receive_multipart(request: Request, jobs: Jobs) -> tuple[Intake, str | None]:
    stream = _limited(request.stream(), jobs.max_upload_bytes, _MULTIPART_SLACK)
    parser = MultiPartParser(request.headers, stream, max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST,
                            f"malformed multipart body: {exc.message}") from exc
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise HTTPException(status.HTTP_400_BAD_REQUEST,
                                "the multipart form needs the capture in a file part named "
                                "'file'")
        intake = await run_in_threadpool(jobs.copy_stream, part.file)
        return intake, part.filename
    finally:
        await form.close()


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=CaptureOut,
             dependencies=[TokenDep], openapi_extra=_UPLOAD_BODY,
             responses={200: {"model": CaptureOut,
                              "description": "The same capture is already stored."},
                        400: {"model": ErrorOut,
                              "description": "Not a pcap/pcapng capture, or a malformed "
                                             "multipart form (no 'file' part)."},
                        401: {"model": ErrorOut, "description": "Missing or wrong token."},
                        403: {"model": ErrorOut, "description": "No token is configured."},
                        413: {"model": ErrorOut,
                              "description": "Larger than the size limit, or a compressed "
                                             "capture that decompresses to more than the "
                                             "decompressed-size limit."}})
async def upload_capture(
    request: Request, response: Response, jobs: JobsDep,
    name: Annotated[str | None, Query(max_length=255, description=(
        "File name to record for a raw-body upload."))] = None,
) -> CaptureOut:
    """Upload a pcap or pcapng capture (gzip allowed, up to ``max_decompressed_bytes`` once
    decompressed) and queue its analysis. Answers 202
    with the queued capture, or 200 with the stored one if the same bytes were uploaded
    before; follow ``GET /v1/captures/{id}`` for progress and results."""
    declared = _declared_length(request)
    content_type = request.headers.get("content-type", "")
    multipart = content_type.lower().startswith("multipart/form-data")
    slack = _MULTIPART_SLACK if multipart else 0
    if declared is not None and declared > jobs.max_upload_bytes + slack:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE,
                            str(TooLarge(jobs.max_upload_bytes)))
    try:
        if multipart:
            intake, filename = await _receive_multipart(request, jobs)
        else:
            intake, filename = await _receive_raw(request, jobs), name
    except TooLarge as exc:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(exc)) from exc
    except NotACaptureFile as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from exc
    row, created = await run_in_threadpool(jobs.accept, intake, _clean_name(filename))
    response.status_code = status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/captures/{row.id}"
    return capture_out(row)


@router.get("", response_model=CapturePage)
def list_captures(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1 << 40)] = 0,
) -> CapturePage:
    """Uploaded captures and their jobs, newest first."""
    rows, total = store.captures(limit=limit, offset=offset)
    return CapturePage(items=[capture_out(r) for r in rows], total=total, limit=limit,
                       offset=offset)


@router.get("/{capture_id}", response_model=CaptureOut,
            responses={404: {"model": ErrorOut, "description": "No such capture."}})
def get_capture(store: StoreDep, capture_id: str) -> CaptureOut:
    """A capture's job state, progress and, once done, what the analysis found (its calls
    and flows are at ``/v1/calls?capture={id}`` and ``/v1/flows?capture={id}``)."""
    row = store.capture(capture_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no capture {capture_id}")
    return capture_out(row)
