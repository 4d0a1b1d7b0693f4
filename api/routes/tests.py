"""``/v1/tests``: request an active test, follow its job, list and read results.

``POST /v1/tests`` (token) checks the request against the service's configuration
(a replay test names one of ``replay_servers`` and an app with a trace; a
reachability test names only ``test_resolvers`` and an app with public endpoints in
the endpoint table; the app is one of the classifier's) and queues it on
:class:`api.active.TestJobs`, which runs one test at a time. ``GET
/v1/tests/jobs/{id}`` follows the job; once ``done`` its ``test_uid`` is the result
at ``GET /v1/tests/{uid}``, whose evidence bundle is ``GET /v1/tests/{uid}/evidence``
(token).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Response, status

from api.active import (
    QueueFull,
    ReachRequest,
    ReplayRequest,
    ReplayTarget,
    TestJobs,
    TestRequest,
    build_test_bundle,
    bundle_name_for_test,
    render_test_html,
    render_test_markdown,
    result_from_dict,
)
from api.config import Settings
from api.deps import MAX_OFFSET, MAX_PAGE, LedgerDep, ServicesDep, SettingsDep, StoreDep, TokenDep
from api.schemas import ErrorOut, TestIn, TestJobOut, TestOut, TestPage, active_test_out, utc
from api.store import TestQuery
from classifier.endpoints import app_endpoints
from classifier.records import APPS
from policy.records import TestKind, VerdictKind

__all__ = ["router", "to_request"]

router = APIRouter(prefix="/v1/tests", tags=["tests"])

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong token."},
    403: {"model": ErrorOut, "description": "No token is configured."}}


def _invalid(field: str, message: str) -> HTTPException:
    """A 422 in the shape of FastAPI's own validation errors, naming the body field."""
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         [{"loc": ["body", field], "msg": message, "type": "value_error"}])


def _target(settings: Settings, server: str) -> ReplayTarget:
    for s in settings.replay_servers:
        if server in (s.name, f"{s.host}:{s.port}"):
            return ReplayTarget(s.name, s.host, s.port, s.token_file)
    names = ", ".join(s.name for s in settings.replay_servers) or "none is configured"
    raise _invalid("server", f"replay server {server!r} is not in the service's configuration "
                             f"(MARSAD_REPLAY_SERVERS: {names}); the service tests against "
                             "no other")


def to_request(body: TestIn, settings: Settings) -> TestRequest:
    """The test a request asks for, checked against the configuration (422 naming what
    is wrong)."""
    if body.app not in APPS:
        raise _invalid("app", f"unknown app {body.app!r}; one of: {', '.join(sorted(APPS))}")
    if body.kind == "replay":
        if body.server is None:
            raise _invalid("server", "a replay test needs 'server': a configured replay server")
        if body.resolvers:
            raise _invalid("resolvers", "'resolvers' is for reachability tests")
        target = _target(settings, body.server)
        from api.replay_test import DEFAULT_TRACES
        name = body.app if body.transport == "udp" else f"{body.app}-{body.transport}"
        if not (DEFAULT_TRACES / f"{name}.pcap").is_file():
            have = sorted(t.name.removesuffix(".pcap") for t in DEFAULT_TRACES.glob("*.pcap"))
            raise _invalid("app", f"no {body.transport.upper()} replay trace for {body.app!r}; "
                                  f"the traces: {', '.join(have) or 'none'}")
        return ReplayRequest(app=body.app, target=target, transport=body.transport)
    if body.server is not None:
        raise _invalid("server", "'server' is for replay tests: a reachability test reaches "
                                 "the app's own endpoints")
    try:
        endpoints = app_endpoints(body.app).endpoints
    except KeyError:
        endpoints = ()
    if not endpoints:
        raise _invalid("app", f"{body.app!r} has no public endpoints in the endpoint table "
                              "(classifier/data/endpoints.json) and the service names no "
                              "others: test it with 'marsad test reachability APP --target'")
    allowed = set(settings.test_resolvers)
    for r in body.resolvers:
        try:
            ipaddress.ip_address(r)
        except ValueError:
            raise _invalid("resolvers", f"resolver {r!r} is not an IP address") from None
        if r not in allowed:
            raise _invalid("resolvers", f"resolver {r} is not in the service's configuration "
                                        "(MARSAD_TEST_RESOLVERS)")
    return ReachRequest(app=body.app, resolvers=tuple(dict.fromkeys(body.resolvers)),
                        timeout_s=body.timeout_s)


def _jobs(svc: ServicesDep) -> TestJobs:
    if svc.tests is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            "active tests are not enabled in this service")
    return svc.tests


def _job_out(job: dict[str, Any]) -> TestJobOut:
    times = {k: utc(job[k]) for k in ("created_at", "started_at", "finished_at")}
    return TestJobOut.model_validate({**job, **times})


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=TestJobOut,
             dependencies=[TokenDep],
             responses={**_AUTH,
                        400: {"model": ErrorOut, "description": "The body cannot be parsed."},
                        429: {"model": ErrorOut, "description": "Too many tests waiting."},
                        503: {"model": ErrorOut, "description": "Tests are not enabled."}})
def request_test(body: TestIn, response: Response, svc: ServicesDep,
                 settings: SettingsDep, store: StoreDep) -> TestJobOut:
    """Queue an active test (needs the token). Answers 202 with the job; follow
    ``Location`` (``GET /v1/tests/jobs/{id}``) until it is ``done``. A test that is not
    valid (an unknown app or kind, a replay server or resolver outside the service's
    configuration, a missing parameter) is refused with 422 naming the field."""
    jobs = _jobs(svc)
    request = to_request(body, settings)
    try:
        job_id = jobs.submit(request)
    except QueueFull as exc:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, str(exc),
                            headers={"Retry-After": "30"}) from exc
    job = store.test_job(job_id)
    if job is None:  # written by submit; gone only if the store lost it
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, "the job was not stored")
    response.headers["Location"] = f"/v1/tests/jobs/{job_id}"
    return _job_out(job)


@router.get("/jobs/{job_id}", response_model=TestJobOut,
            responses={404: {"model": ErrorOut, "description": "No such job."}})
def get_test_job(job_id: str, store: StoreDep) -> TestJobOut:
    """A requested test's job."""
    job = store.test_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no test job {job_id}")
    return _job_out(job)


@router.get("", response_model=TestPage)
def list_tests(
    store: StoreDep,
    app: Annotated[str | None, Query(max_length=64, description="Only this app.")] = None,
    kind: Annotated[TestKind | None, Query(description="Only this kind of test.")] = None,
    verdict: Annotated[VerdictKind | None, Query(description="Only this verdict.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip.")] = 0,
    order: Annotated[Literal["newest", "oldest"], Query(description=(
        "By start time."))] = "newest",
) -> TestPage:
    """Judged active tests, newest first."""
    rows, total = store.tests(TestQuery(
        app=app, kind=None if kind is None else kind.value,
        verdict=None if verdict is None else verdict.value, limit=limit, offset=offset,
        newest_first=order == "newest"))
    return TestPage(items=[active_test_out(r) for r in rows], total=total, limit=limit,
                    offset=offset)


@router.get("/{uid}", response_model=TestOut,
            responses={404: {"model": ErrorOut, "description": "No such test."}})
def get_test(uid: str, store: StoreDep) -> TestOut:
    """One judged active test."""
    row = store.test(uid)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no test {uid}")
    return active_test_out(row)


@router.get("/{uid}/report", response_class=Response,
            responses={200: {"content": {"text/html": {}, "text/markdown": {}},
                             "description": "The test's report for people."},
                       404: {"model": ErrorOut, "description": "No such test."}})
def get_test_report(
    uid: str, store: StoreDep, ledger: LedgerDep,
    format: Annotated[Literal["html", "md"], Query(
        description="html or md (Markdown).")] = "html",
    lang: Annotated[Literal["en", "fr", "ar"], Query(description="en, fr or ar.")] = "en",
) -> Response:
    """The test's report for people (``marsad report --test``): what was tested, the
    verdict, its reasons and figures, its ledger entry and how to check them."""
    row = store.test(uid)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no test {uid}")
    result = result_from_dict(row.result)
    entries = [] if row.ledger_seq is None else [
        e for e in ledger.entries(start=row.ledger_seq, limit=1) if e.subject_uid == uid]
    if format == "md":
        return Response(render_test_markdown(result, lang=lang, entries=entries),
                        media_type="text/markdown; charset=utf-8")
    return Response(render_test_html(result, lang=lang, entries=entries),
                    media_type="text/html; charset=utf-8")


@router.get("/{uid}/evidence", dependencies=[TokenDep], response_class=Response,
            responses={200: {"content": {"application/zip": {}},
                             "description": "The test's evidence bundle."},
                       **_AUTH,
                       404: {"model": ErrorOut, "description": "No such test."},
                       410: {"model": ErrorOut,
                             "description": "The test's capture is no longer kept."}})
def get_test_evidence(uid: str, store: StoreDep, ledger: LedgerDep) -> Response:
    """The test's evidence bundle: its capture, result, ledger entry and report (needs the
    token)."""
    row = store.test(uid)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no test {uid}")
    result = result_from_dict({**row.result, "capture": row.capture_path})
    if row.capture_sha256 is not None and (
            row.capture_path is None or not Path(row.capture_path).is_file()):
        raise HTTPException(status.HTTP_410_GONE, "the test's capture is no longer kept")
    entries = ledger.entries(start=row.ledger_seq or 1,
                             limit=1 if row.ledger_seq else -1)
    data = build_test_bundle(result, ledger_entries=entries)
    return Response(content=data, media_type="application/zip",
                    headers={"Content-Disposition":
                             f'attachment; filename="{bundle_name_for_test(result)}"'})
