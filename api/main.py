"""The FastAPI application: :func:`create_app` wires settings, store, ledger and jobs.

The app keeps its parts on ``app.state.services`` (an :class:`api.deps.Services`);
other parts of the service (metrics, dashboard) reach the store and the ledger
there. On start it marks jobs an earlier run left unfinished as interrupted,
applies retention and queues the captures named in ``settings.preload``; on
shutdown it stops the workers and closes the store and the ledger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry

from api.active import Runner, TestJobs
from api.config import Settings
from api.deps import Services, require_token
from api.jobs import Jobs
from api.metrics import (
    MarsadMetrics,
    add_process_collectors,
    metrics_payload,
    read_probe_reports,
)
from api.routes import calls, captures, dashboard, docs, flows, health, ledger, probe, tests
from api.store import open_store
from api.version import marsad_version
from policy.ledger import Ledger
from policy.rules import load_policy

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *,
               clock: Callable[[], float] = time.time,
               test_runner: Runner | None = None) -> FastAPI:
    """The service's app for ``settings`` (default: from the environment).

    ``test_runner`` runs the active tests ``POST /v1/tests`` requests (default:
    :func:`api.active.run_test`, the project's replay and reachability runners).

    Raises :class:`~policy.errors.PolicyError` for a bad policy file,
    :class:`~api.store.StoreError` for an unusable store, and, for a capture to preload,
    :class:`~api.jobs.NotACaptureFile`, :class:`~api.jobs.TooLarge` or :class:`OSError`.
    """
    settings = settings or Settings()
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # captured traffic
    policy = load_policy(settings.policy_file)
    store = open_store(settings.data_dir, clock=clock)
    try:
        led = Ledger(settings.ledger_path, clock=clock)
    except BaseException:
        store.close()
        raise
    interrupted = store.interrupt_unfinished()
    if store.interrupt_unfinished_tests():
        log.warning("test jobs left unfinished by an earlier run marked interrupted")
    if interrupted:
        log.warning("%d analysis job(s) left unfinished by an earlier run marked interrupted",
                    len(interrupted))
    max_age_s = None if settings.retention_days is None else settings.retention_days * 86400
    executor = None
    if settings.analysis_workers > 1 or settings.scheduler is not None:
        from api.archive import make_executor
        try:
            executor = make_executor(settings.analysis_workers, settings.scheduler)
        except BaseException:
            led.close()
            store.close()
            raise
    jobs = Jobs(store, led, captures_dir=settings.captures_dir, policy=policy,
                workers=settings.analysis_workers, max_upload_bytes=settings.max_upload_bytes,
                max_decompressed_bytes=settings.max_decompressed_bytes,
                retention=(max_age_s, settings.retention_max_captures), clock=clock,
                executor=executor)
    test_jobs = TestJobs(store, led, tests_dir=settings.tests_dir, policy=policy,
                         runner=test_runner, max_queued=settings.tests_max_queued,
                         retention=(max_age_s, settings.retention_max_tests), clock=clock)
    services = Services(settings=settings, store=store, ledger=led, jobs=jobs,
                        token=settings.token(), clock=clock,
                        costly=threading.BoundedSemaphore(settings.costly_concurrency),
                        tests=test_jobs)
    # Prometheus: a registry per app, fed by every stored analysis, read at scrape time,
    # with the series of the live probes that report to the data directory.
    registry = CollectorRegistry()
    data_dir = settings.data_dir
    metrics = MarsadMetrics(registry, jobs=store.job_counts,
                            probes=lambda: read_probe_reports(data_dir, clock()), clock=clock,
                            tests=store.test_latest)
    add_process_collectors(registry, marsad_version())
    jobs.add_listener(metrics.observe_result)
    test_jobs.add_listener(metrics.observe_test)

    def close() -> None:
        test_jobs.shutdown()
        store.interrupt_unfinished_tests()
        jobs.shutdown()
        led.close()
        store.close()

    try:
        jobs.prune()
        test_jobs.prune()
        if settings.datasets:
            from api.archive import register_dataset
            for out in settings.datasets:
                added = register_dataset(store, out)
                log.info("dataset %s: %d capture(s) registered", out, len(added))
        for path in settings.preload:
            row, created = jobs.accept(jobs.copy_in(path), path.name)
            log.info("preload %s: capture %s (%s)", path.name, row.id,
                     "queued" if created else "already stored")
    except BaseException:
        close()
        raise

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            close()

    app = FastAPI(
        title="marsad", version=marsad_version(), lifespan=lifespan,
        docs_url=None, redoc_url=None,  # /docs is served offline (api.routes.docs)
        description="Over-the-top voice and video calls seen on the network, and whether the "
                    "network blocked or throttled them. Reads are open unless configured "
                    "otherwise; uploads and evidence downloads need the bearer token.")
    app.state.services = services
    app.state.metrics = metrics

    @app.get("/metrics", include_in_schema=False)
    def _metrics(request: Request) -> Response:
        # a route, not a mount: a mount answers /metrics with a redirect to /metrics/
        body, content_type = metrics_payload(registry, request.headers.get("accept"))
        return Response(body, media_type=content_type)

    reads = [] if settings.open_reads else [Depends(require_token)]
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(dashboard.page_router)
    app.include_router(captures.router, dependencies=reads)
    for router in (flows.router, calls.router, ledger.router, probe.router,
                   dashboard.stats_router, tests.router):
        app.include_router(router, dependencies=reads)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; the service log has the details"},
                            status_code=500)

    return app
