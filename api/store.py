"""The service's store: captures (each with its analysis job), flows, calls and verdicts.

:class:`Store` is the interface the API and the job runner use; :class:`SqliteStore`
is the implementation, one SQLite file in WAL mode in the data directory (a
PostgreSQL backend would implement the same protocol). :func:`open_store` picks
the implementation.

Schema versions
---------------
The schema is built by the numbered steps in :data:`MIGRATIONS`; step *n* takes
a version *n−1* database to version *n*. The version is kept in ``PRAGMA
user_version`` and each applied step is recorded, with its time, in
``schema_migrations``. Opening a database runs the missing steps, each in one
transaction; a database newer than this code is refused with :class:`StoreError`.

Jobs
----
A capture's row is its analysis job: ``queued`` → ``running`` → ``done`` or
``failed``. :meth:`Store.interrupt_unfinished`, run when the service starts,
turns jobs a previous run left ``queued`` or ``running`` into ``interrupted``, so
they are reported rather than lost.

Flows and calls are keyed by (capture, uid): uids are derived from the packets,
so the same traffic in two captures gives the same uids.

Active tests
------------
Table ``tests`` (schema step 2) holds each judged active test by its uid: kind, app,
verdict and reasons as columns to filter on, the whole result as JSON, the test's own
capture (path and SHA-256) and the position of its evidence-ledger entry; ``test_jobs``
holds each requested test's job (queued, running, done, failed, interrupted). Retention
applies to tests as to captures (:meth:`Store.prune_tests`); the ledger keeps its entry.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from api.output import dumps
from api.pipeline import AnalysisResult

__all__ = [
    "LIVE_PREFIX",
    "MIGRATIONS",
    "SOURCES",
    "CaptureRow",
    "JobState",
    "Page",
    "Query",
    "SqliteStore",
    "Store",
    "StoreError",
    "TestQuery",
    "TestRow",
    "open_store",
]


class StoreError(Exception):
    """The store cannot be opened or used (unknown schema version, not a database)."""


class JobState(StrEnum):
    """Where a capture's analysis stands."""

    QUEUED = "queued"
    """Uploaded, waiting for a worker."""
    RUNNING = "running"
    """Being analysed."""
    DONE = "done"
    """Analysed; its flows, calls and verdicts are stored."""
    FAILED = "failed"
    """The analysis could not be done (``error`` says why)."""
    INTERRUPTED = "interrupted"
    """The service stopped before the analysis finished."""


UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
FINISHED = (JobState.DONE, JobState.FAILED, JobState.INTERRUPTED)


@dataclass(frozen=True, slots=True)
class CaptureRow:
    """One uploaded capture and its analysis job."""

    id: str
    """Capture id (random, URL-safe)."""
    filename: str
    """Name the capture was uploaded under."""
    path: str
    """Where the capture file is kept."""
    sha256: str
    """SHA-256 of the capture file (hex)."""
    size_bytes: int
    """Size of the capture file."""
    state: JobState
    """Where its analysis stands."""
    progress: float
    """Fraction of the input analysed, 0..1."""
    error: str | None
    """Why the analysis failed or was interrupted."""
    created_at: float
    """When it was uploaded (seconds since the epoch)."""
    started_at: float | None
    """When the analysis started."""
    finished_at: float | None
    """When the analysis ended (done, failed or interrupted)."""
    summary: dict[str, Any]
    """Counts and reading status once done: packets, flows, calls, verdicts, complete..."""


@dataclass(frozen=True, slots=True)
class Query:
    """Filters and page of a flow or call listing; None means no filter."""

    since: float | None = None
    """Only items that end at or after this time (seconds since the epoch)."""
    until: float | None = None
    """Only items that start at or before this time."""
    app: str | None = None
    """Only this app."""
    category: str | None = None
    """Flows: only this category; calls: only calls with a flow of this category."""
    verdict: str | None = None
    """Flows: only this flow verdict; calls: only this call verdict."""
    capture_id: str | None = None
    """Only this capture's items."""
    source: str | None = None
    """Only items of live probe runs (``live``) or of capture files (``capture``)."""
    call_uid: str | None = None
    """Flows: only the flows of this call."""
    limit: int = 100
    """Page size."""
    offset: int = 0
    """Items skipped before the page."""
    newest_first: bool = True
    """Order by start time, newest first (else oldest first)."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing."""

    items: list[dict[str, Any]]
    """The rows, as JSON-ready dicts (each with its ``capture_id``)."""
    total: int
    """Rows matching the filters, over all pages."""


@dataclass(frozen=True, slots=True)
class TestQuery:
    """Filters and page of a test listing; None means no filter."""

    __test__ = False  # not a pytest test class

    app: str | None = None
    """Only this app."""
    kind: str | None = None
    """Only this kind of test (``replay``, ``reachability``)."""
    verdict: str | None = None
    """Only this verdict."""
    since: float | None = None
    """Only tests started at or after this time."""
    until: float | None = None
    """Only tests started at or before this time."""
    limit: int = 100
    """Page size."""
    offset: int = 0
    """Items skipped before the page."""
    newest_first: bool = True
    """Order by start time, newest first (else oldest first)."""


@dataclass(frozen=True, slots=True)
class TestRow:
    """One stored active test: its judged result, its capture and its ledger entry."""

    __test__ = False  # not a pytest test class

    uid: str
    kind: str
    app: str
    verdict: str
    reasons: tuple[str, ...]
    started_ts: float
    duration_s: float
    result: dict[str, Any]
    """The result as :meth:`policy.records.TestResult.to_dict` wrote it."""
    capture_path: str | None
    """Where the test's own capture is kept (None: the test took none)."""
    capture_sha256: str | None
    ledger_seq: int | None
    """Position of the test's entry in the evidence ledger (None: not recorded)."""
    created_at: float
    """When the service stored it."""


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    statements: tuple[str, ...]
    description: str = ""


MIGRATIONS: tuple[_Migration, ...] = (
    _Migration(1, (
        """CREATE TABLE schema_migrations (
        version     INTEGER PRIMARY KEY,
        applied_at  REAL NOT NULL,
        description TEXT NOT NULL
        )""",
        """CREATE TABLE captures (
        id          TEXT PRIMARY KEY,
        filename    TEXT NOT NULL,
        path        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        size_bytes  INTEGER NOT NULL,
        state       TEXT NOT NULL,
        progress    REAL NOT NULL DEFAULT 0,
        error       TEXT,
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL,
        summary     TEXT NOT NULL DEFAULT '{}'
        )""",
        "CREATE INDEX captures_sha256 ON captures (sha256)",
        "CREATE INDEX captures_created ON captures (created_at)",
        """CREATE TABLE flows (
        capture_id TEXT NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
        uid        TEXT NOT NULL,
        first_ts   REAL NOT NULL,
        last_ts    REAL NOT NULL,
        app        TEXT,
        category   TEXT,
        verdict    TEXT,
        call_uid   TEXT,
        row        TEXT NOT NULL,
        PRIMARY KEY (capture_id, uid)
        )""",
        "CREATE INDEX flows_time ON flows (first_ts)",
        """CREATE TABLE calls (
        capture_id TEXT NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
        uid        TEXT NOT NULL,
        start_ts   REAL NOT NULL,
        end_ts     REAL NOT NULL,
        app        TEXT,
        verdict    TEXT NOT NULL,
        categories TEXT NOT NULL,
        row        TEXT NOT NULL,
        PRIMARY KEY (capture_id, uid)
        )""",
        "CREATE INDEX calls_time ON calls (start_ts)",
        "CREATE INDEX calls_uid ON calls (uid)",
        """CREATE TABLE verdicts (
        capture_id  TEXT NOT NULL REFERENCES captures (id) ON DELETE CASCADE,
        subject_uid TEXT NOT NULL,
        subject     TEXT NOT NULL,
        verdict     TEXT NOT NULL,
        reasons     TEXT NOT NULL,
        evidence    TEXT NOT NULL,
        PRIMARY KEY (capture_id, subject_uid)
        )""",
    ), "captures with their jobs, flows, calls, verdicts"),
    _Migration(2, (
        """CREATE TABLE tests (
        uid            TEXT PRIMARY KEY,
        kind           TEXT NOT NULL,
        app            TEXT NOT NULL,
        verdict        TEXT NOT NULL,
        reasons        TEXT NOT NULL,
        started_ts     REAL NOT NULL,
        duration_s     REAL NOT NULL,
        result         TEXT NOT NULL,
        capture_path   TEXT,
        capture_sha256 TEXT,
        ledger_seq     INTEGER,
        created_at     REAL NOT NULL
        )""",
        "CREATE INDEX tests_started ON tests (started_ts)",
        "CREATE INDEX tests_created ON tests (created_at)",
        "CREATE INDEX tests_capture ON tests (capture_sha256)",
        """CREATE TABLE test_jobs (
        id          TEXT PRIMARY KEY,
        request     TEXT NOT NULL,
        state       TEXT NOT NULL,
        error       TEXT,
        test_uid    TEXT,
        created_at  REAL NOT NULL,
        started_at  REAL,
        finished_at REAL
        )""",
    ), "active tests: judged results with their capture and ledger entry"),
)
"""Schema steps, in order; the last one's version is the current schema."""

SCHEMA_VERSION = MIGRATIONS[-1].version


class Store(Protocol):
    """What the service needs from its store."""

    def add_capture(self, *, capture_id: str, filename: str, path: str, sha256: str,
                    size_bytes: int) -> CaptureRow:
        """Record an uploaded capture as a queued job."""
        ...

    def capture(self, capture_id: str) -> CaptureRow | None:
        """One capture, or None."""
        ...

    def capture_by_sha256(self, sha256: str) -> CaptureRow | None:
        """The newest capture with this content that is not failed or interrupted."""
        ...

    def captures(self, *, limit: int, offset: int) -> tuple[list[CaptureRow], int]:
        """A page of captures, newest first, and how many there are."""
        ...

    def start_job(self, capture_id: str) -> bool:
        """Mark a queued job running; False if it is not queued any more."""
        ...

    def set_progress(self, capture_id: str, progress: float) -> None:
        """Record how far a running job is."""
        ...

    def end_job(self, capture_id: str, state: JobState, error: str) -> None:
        """Mark a job failed or interrupted, saying why."""
        ...

    def save_results(self, capture_id: str, result: AnalysisResult,
                     summary: dict[str, Any]) -> None:
        """Store a finished analysis and mark the job done (one transaction)."""
        ...

    def save_rows(self, capture_id: str, flows: list[dict[str, Any]],
                  calls: list[dict[str, Any]], flow_verdicts: dict[str, dict[str, Any]],
                  summary: dict[str, Any]) -> None:
        """Store an analysis given as its records (``marsad analyze --json``'s flows and
        calls, each flow verdict as ``Verdict.to_dict()`` by flow uid) and mark the job
        done (one transaction)."""
        ...

    def interrupt_unfinished(self) -> list[CaptureRow]:
        """Mark jobs left queued or running by an earlier run as interrupted."""
        ...

    def flows(self, query: Query) -> Page:
        """A page of flows."""
        ...

    def calls(self, query: Query) -> Page:
        """A page of calls."""
        ...

    def call(self, uid: str, capture_id: str | None = None) -> dict[str, Any] | None:
        """A call by uid (the newest capture's, unless one is named)."""
        ...

    def call_captures(self, uid: str) -> list[tuple[str, str]]:
        """(capture id, capture SHA-256) of every capture holding a call ``uid``, newest
        first."""
        ...

    def job_counts(self) -> dict[str, int]:
        """Captures per job state."""
        ...

    def verdict_counts(self) -> dict[tuple[str, str], int]:
        """Stored verdicts per (subject kind, verdict): ``("call", "blocked")``..."""
        ...

    def add_test(self, result: dict[str, Any], *, capture_path: str | None,
                 ledger_seq: int | None) -> TestRow:
        """Store a judged test (``TestResult.to_dict()``); the same uid again replaces it."""
        ...

    def test(self, uid: str) -> TestRow | None:
        """One stored test."""
        ...

    def tests(self, query: TestQuery) -> tuple[list[TestRow], int]:
        """A page of tests and how many match the filters."""
        ...

    def test_latest(self) -> dict[tuple[str, str], float]:
        """Start time of the latest stored test of each (kind, app)."""
        ...

    def test_capture(self, sha256: str) -> TestRow | None:
        """The latest stored test whose capture has this SHA-256."""
        ...

    def add_test_job(self, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Record a queued test job."""
        ...

    def set_test_job(self, job_id: str, state: str, *, error: str | None = None,
                     test_uid: str | None = None) -> None:
        """Move a test job to ``running``, ``done`` or ``failed``."""
        ...

    def test_job(self, job_id: str) -> dict[str, Any] | None:
        """A test job: id, request, state, error, test_uid and its times."""
        ...

    def interrupt_unfinished_tests(self) -> int:
        """Mark test jobs an earlier run left queued or running as interrupted."""
        ...

    def prune_tests(self, *, max_age_s: float | None, max_tests: int | None) -> list[TestRow]:
        """Apply retention to tests as to captures; returns the rows removed (their capture
        files are the caller's to delete)."""
        ...

    def prune(self, *, max_age_s: float | None, max_captures: int | None) -> list[CaptureRow]:
        """Delete finished captures past retention; return them (their files are the
        caller's to delete)."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


def _dumps(value: Any) -> str:
    """A stored row's JSON: the output's JSON, anything without a JSON type as its text."""
    return dumps(value, default=str)


_CAPTURE_COLUMNS = ("id, filename, path, sha256, size_bytes, state, progress, error, created_at, "
                    "started_at, finished_at, summary")


def _capture(row: Sequence[Any]) -> CaptureRow:
    return CaptureRow(id=row[0], filename=row[1], path=row[2], sha256=row[3], size_bytes=row[4],
                      state=JobState(row[5]), progress=row[6], error=row[7], created_at=row[8],
                      started_at=row[9], finished_at=row[10], summary=json.loads(row[11]))


@dataclass(slots=True)
class _Where:
    clauses: list[str] = field(default_factory=list)
    args: list[Any] = field(default_factory=list)

    def add(self, clause: str, *args: Any) -> None:
        self.clauses.append(clause)
        self.args.extend(args)

    def sql(self) -> str:
        return (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""


LIVE_PREFIX = "live-"
"""How the capture ids of live probe runs begin (``live-<start>-<pid>``)."""
SOURCES = ("live", "capture")
"""Values of :attr:`Query.source`."""


def _where_capture(w: _Where, query: Query) -> None:
    """The capture and source filters of a listing."""
    if query.capture_id is not None:
        w.add("capture_id = ?", query.capture_id)
    if query.source == "live":
        w.add("substr(capture_id, 1, ?) = ?", len(LIVE_PREFIX), LIVE_PREFIX)
    elif query.source == "capture":
        w.add("substr(capture_id, 1, ?) != ?", len(LIVE_PREFIX), LIVE_PREFIX)
    elif query.source is not None:
        raise ValueError(f"source is one of {SOURCES}, not {query.source!r}")


class SqliteStore:
    """The store in one SQLite file (WAL); safe to share between threads."""

    def __init__(self, path: str | Path, *, clock: Callable[[], float],
                 timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open ({exc})") from exc
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    # -- schema ----------------------------------------------------------------------------

    def _migrate(self) -> None:
        db = self._db
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: not an SQLite database ({exc})") from exc
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=NORMAL")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path}: schema version {version} is newer than this "
                             f"code's {SCHEMA_VERSION}")
        for step in MIGRATIONS:
            if step.version <= version:
                continue
            db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have applied it while we waited for the lock.
                if db.execute("PRAGMA user_version").fetchone()[0] < step.version:
                    for statement in step.statements:
                        db.execute(statement)
                    db.execute("INSERT INTO schema_migrations VALUES (?, ?, ?)",
                               (step.version, self._clock(), step.description))
                    db.execute(f"PRAGMA user_version = {step.version}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def schema_version(self) -> int:
        """The database's schema version."""
        with self._lock:
            return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    # -- captures and jobs -----------------------------------------------------------------

    def add_capture(self, *, capture_id: str, filename: str, path: str, sha256: str,
                    size_bytes: int) -> CaptureRow:
        now = self._clock()
        with self._lock:
            self._db.execute(
                f"INSERT INTO captures ({_CAPTURE_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, 0, NULL, ?, NULL, NULL, '{}')",
                (capture_id, filename, path, sha256, size_bytes, JobState.QUEUED.value, now))
        row = self.capture(capture_id)
        assert row is not None
        return row

    def capture(self, capture_id: str) -> CaptureRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE id = ?",
                                   (capture_id,)).fetchone()
        return None if row is None else _capture(row)

    def capture_by_sha256(self, sha256: str) -> CaptureRow | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE sha256 = ? AND state IN "
                "(?, ?, ?) ORDER BY created_at DESC, rowid DESC LIMIT 1",
                (sha256, JobState.QUEUED.value, JobState.RUNNING.value,
                 JobState.DONE.value)).fetchone()
        return None if row is None else _capture(row)

    def captures(self, *, limit: int, offset: int) -> tuple[list[CaptureRow], int]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_CAPTURE_COLUMNS} FROM captures ORDER BY created_at DESC, rowid DESC "
                "LIMIT ? OFFSET ?", (limit, offset)).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
        return [_capture(r) for r in rows], int(total)

    def start_job(self, capture_id: str) -> bool:
        with self._lock:
            cur = self._db.execute(
                "UPDATE captures SET state = ?, started_at = ?, progress = 0 "
                "WHERE id = ? AND state = ?",
                (JobState.RUNNING.value, self._clock(), capture_id, JobState.QUEUED.value))
        return cur.rowcount == 1

    def set_progress(self, capture_id: str, progress: float) -> None:
        with self._lock:
            self._db.execute("UPDATE captures SET progress = ? WHERE id = ? AND state = ?",
                             (min(max(progress, 0.0), 1.0), capture_id,
                              JobState.RUNNING.value))

    def end_job(self, capture_id: str, state: JobState, error: str) -> None:
        if state not in (JobState.FAILED, JobState.INTERRUPTED):
            raise ValueError(f"a job ends with an error as failed or interrupted, not {state}")
        with self._lock:
            self._db.execute(
                "UPDATE captures SET state = ?, error = ?, finished_at = ? WHERE id = ?",
                (state.value, error, self._clock(), capture_id))

    def save_results(self, capture_id: str, result: AnalysisResult,
                     summary: dict[str, Any]) -> None:
        self.save_rows(capture_id, result.flow_rows(),
                       [call.to_dict() for call in result.analysis.calls],
                       {u: v.to_dict() for u, v in result.analysis.flow_verdicts.items()},
                       summary)

    def save_rows(self, capture_id: str, flows: list[dict[str, Any]],
                  calls: list[dict[str, Any]], flow_verdicts: dict[str, dict[str, Any]],
                  summary: dict[str, Any]) -> None:
        call_of: dict[str, tuple[str, str]] = {}
        for call in calls:
            for uid in call["flow_uids"]:
                call_of[uid] = (call["uid"], call["verdict"])
        flow_rows: list[tuple[Any, ...]] = []
        categories: dict[str, str] = {}
        for row in flows:
            uid = row["uid"]
            categories[uid] = row["category"]
            call_uid, call_verdict = call_of.get(uid, (None, None))
            if call_uid is not None:
                row["call_uid"] = call_uid
                row["call_verdict"] = call_verdict
            flow_rows.append((capture_id, uid, row["first_ts"], row["last_ts"], row["app"],
                              row["category"], row.get("verdict"), call_uid, _dumps(row)))
        call_rows: list[tuple[Any, ...]] = []
        verdict_rows: list[tuple[Any, ...]] = []
        for d in calls:
            cats = sorted({categories[u] for u in d["flow_uids"] if u in categories})
            call_rows.append((capture_id, d["uid"], d["start_ts"], d["end_ts"], d["app"],
                              d["verdict"], "," + ",".join(cats) + ",", _dumps(d)))
            verdict_rows.append(_verdict_row(capture_id, d["uid"], "call", d))
        for uid, v in flow_verdicts.items():
            verdict_rows.append(_verdict_row(capture_id, uid, "flow", v))
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM captures WHERE id = ?",
                              (capture_id,)).fetchone() is None:
                    raise StoreError(f"capture {capture_id} is no longer stored")
                db.executemany("INSERT OR REPLACE INTO flows VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                               flow_rows)
                db.executemany("INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               call_rows)
                db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?, ?, ?)",
                               verdict_rows)
                db.execute("UPDATE captures SET state = ?, progress = 1, error = NULL, "
                           "finished_at = ?, summary = ? WHERE id = ?",
                           (JobState.DONE.value, self._clock(), _dumps(summary), capture_id))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def interrupt_unfinished(self) -> list[CaptureRow]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                rows = db.execute(
                    f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE state IN (?, ?)",
                    [s.value for s in UNFINISHED]).fetchall()
                db.execute(
                    "UPDATE captures SET state = ?, finished_at = ?, error = ? "
                    "WHERE state IN (?, ?)",
                    (JobState.INTERRUPTED.value, self._clock(),
                     "the service stopped before the analysis finished; upload the capture "
                     "again to analyse it", *[s.value for s in UNFINISHED]))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return [_capture(r) for r in rows]

    # -- listings --------------------------------------------------------------------------

    def flows(self, query: Query) -> Page:
        w = _Where()
        if query.since is not None:
            w.add("last_ts >= ?", query.since)
        if query.until is not None:
            w.add("first_ts <= ?", query.until)
        if query.app is not None:
            w.add("app = ?", query.app)
        if query.category is not None:
            w.add("category = ?", query.category)
        if query.verdict is not None:
            w.add("verdict = ?", query.verdict)
        if query.call_uid is not None:
            w.add("call_uid = ?", query.call_uid)
        _where_capture(w, query)
        order = "DESC" if query.newest_first else "ASC"
        return self._page("flows", w, f"first_ts {order}, capture_id, uid", query)

    def calls(self, query: Query) -> Page:
        w = _Where()
        if query.since is not None:
            w.add("end_ts >= ?", query.since)
        if query.until is not None:
            w.add("start_ts <= ?", query.until)
        if query.app is not None:
            w.add("app = ?", query.app)
        if query.category is not None:
            w.add("instr(categories, ?) > 0", "," + query.category + ",")
        if query.verdict is not None:
            w.add("verdict = ?", query.verdict)
        _where_capture(w, query)
        order = "DESC" if query.newest_first else "ASC"
        return self._page("calls", w, f"start_ts {order}, capture_id, uid", query)

    def _page(self, table: str, w: _Where, order: str, query: Query) -> Page:
        where = w.sql()
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM {table}{where}", w.args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT capture_id, row FROM {table}{where} ORDER BY {order} LIMIT ? OFFSET ?",
                [*w.args, query.limit, query.offset]).fetchall()
        return Page(items=[_with_capture(r) for r in rows], total=int(total))

    def call(self, uid: str, capture_id: str | None = None) -> dict[str, Any] | None:
        sql = ("SELECT calls.capture_id, calls.row FROM calls JOIN captures "
               "ON captures.id = calls.capture_id WHERE calls.uid = ?")
        args: list[Any] = [uid]
        if capture_id is not None:
            sql += " AND calls.capture_id = ?"
            args.append(capture_id)
        sql += " ORDER BY captures.created_at DESC, captures.rowid DESC LIMIT 1"
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return None if row is None else _with_capture(row)

    def call_captures(self, uid: str) -> list[tuple[str, str]]:
        sql = ("SELECT calls.capture_id, captures.sha256 FROM calls JOIN captures "
               "ON captures.id = calls.capture_id WHERE calls.uid = ? "
               "ORDER BY captures.created_at DESC, captures.rowid DESC")
        with self._lock:
            rows = self._db.execute(sql, (uid,)).fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]

    def job_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, COUNT(*) FROM captures GROUP BY state").fetchall()
        counts = {s.value: 0 for s in JobState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def verdict_counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT subject, verdict, COUNT(*) FROM verdicts GROUP BY subject, verdict"
            ).fetchall()
        return {(r[0], r[1]): int(r[2]) for r in rows}

    # -- active tests ----------------------------------------------------------------------

    def add_test(self, result: dict[str, Any], *, capture_path: str | None,
                 ledger_seq: int | None) -> TestRow:
        uid = str(result["uid"])
        values = (uid, str(result["kind"]), str(result["app"]), str(result["verdict"]),
                  _dumps(list(result.get("reasons", []))), float(result["started_ts"]),
                  float(result["duration_s"]), _dumps(result), capture_path,
                  result.get("capture_sha256"), ledger_seq, self._clock())
        with self._lock:
            self._db.execute(f"INSERT OR REPLACE INTO tests ({_TEST_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        row = self.test(uid)
        assert row is not None
        return row

    def test(self, uid: str) -> TestRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_TEST_COLUMNS} FROM tests WHERE uid = ?",
                                   (uid,)).fetchone()
        return None if row is None else _test(row)

    def tests(self, query: TestQuery) -> tuple[list[TestRow], int]:
        w = _Where()
        for column, value in (("app", query.app), ("kind", query.kind),
                              ("verdict", query.verdict)):
            if value is not None:
                w.add(f"{column} = ?", value)
        if query.since is not None:
            w.add("started_ts >= ?", query.since)
        if query.until is not None:
            w.add("started_ts <= ?", query.until)
        order = "DESC" if query.newest_first else "ASC"
        where = w.sql()
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM tests{where}", w.args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT {_TEST_COLUMNS} FROM tests{where} ORDER BY started_ts {order}, uid "
                "LIMIT ? OFFSET ?", [*w.args, query.limit, query.offset]).fetchall()
        return [_test(r) for r in rows], int(total)

    def test_latest(self) -> dict[tuple[str, str], float]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, app, MAX(started_ts) FROM tests GROUP BY kind, app").fetchall()
        return {(str(r[0]), str(r[1])): float(r[2]) for r in rows}

    def test_capture(self, sha256: str) -> TestRow | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_TEST_COLUMNS} FROM tests WHERE capture_sha256 = ? "
                "ORDER BY created_at DESC, rowid DESC LIMIT 1", (sha256,)).fetchone()
        return None if row is None else _test(row)

    def add_test_job(self, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self._db.execute("INSERT INTO test_jobs (id, request, state, created_at) "
                             "VALUES (?, ?, ?, ?)",
                             (job_id, _dumps(request), JobState.QUEUED.value, self._clock()))
        job = self.test_job(job_id)
        assert job is not None
        return job

    def set_test_job(self, job_id: str, state: str, *, error: str | None = None,
                     test_uid: str | None = None) -> None:
        now = self._clock()
        with self._lock:
            if state == JobState.RUNNING.value:
                self._db.execute("UPDATE test_jobs SET state = ?, started_at = ? WHERE id = ?",
                                 (state, now, job_id))
            elif state in (JobState.DONE.value, JobState.FAILED.value):
                self._db.execute("UPDATE test_jobs SET state = ?, error = ?, test_uid = ?, "
                                 "finished_at = ? WHERE id = ?",
                                 (state, error, test_uid, now, job_id))
            else:
                raise ValueError(f"a test job is set running, done or failed, not {state}")

    def test_job(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, request, state, error, test_uid, created_at, started_at, "
                "finished_at FROM test_jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        return {"id": row[0], "request": json.loads(row[1]), "state": row[2], "error": row[3],
                "test_uid": row[4], "created_at": row[5], "started_at": row[6],
                "finished_at": row[7]}

    def interrupt_unfinished_tests(self) -> int:
        with self._lock:
            cur = self._db.execute(
                "UPDATE test_jobs SET state = ?, finished_at = ?, error = ? "
                "WHERE state IN (?, ?)",
                (JobState.INTERRUPTED.value, self._clock(),
                 "the service stopped before the test ran or finished; request it again",
                 *[s.value for s in UNFINISHED]))
        return cur.rowcount

    def prune_tests(self, *, max_age_s: float | None, max_tests: int | None) -> list[TestRow]:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                doomed: dict[str, Sequence[Any]] = {}
                if max_age_s is not None:
                    cutoff = self._clock() - max_age_s
                    for r in db.execute(f"SELECT {_TEST_COLUMNS} FROM tests "
                                        "WHERE created_at < ?", (cutoff,)):
                        doomed[r[0]] = r
                if max_tests is not None:
                    for r in db.execute(f"SELECT {_TEST_COLUMNS} FROM tests ORDER BY "
                                        "created_at DESC, rowid DESC LIMIT -1 OFFSET ?",
                                        (max_tests,)):
                        doomed[r[0]] = r
                db.executemany("DELETE FROM tests WHERE uid = ?", [(k,) for k in doomed])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return [_test(r) for r in doomed.values()]

    # -- retention -------------------------------------------------------------------------

    def prune(self, *, max_age_s: float | None, max_captures: int | None) -> list[CaptureRow]:
        finished = [s.value for s in FINISHED]
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                doomed: dict[str, Sequence[Any]] = {}
                if max_age_s is not None:
                    cutoff = self._clock() - max_age_s
                    for r in db.execute(
                            f"SELECT {_CAPTURE_COLUMNS} FROM captures WHERE state IN (?, ?, ?) "
                            "AND COALESCE(finished_at, created_at) < ?", (*finished, cutoff)):
                        doomed[r[0]] = r
                if max_captures is not None:
                    for r in db.execute(
                            f"SELECT {_CAPTURE_COLUMNS} FROM captures ORDER BY created_at DESC, "
                            "rowid DESC LIMIT -1 OFFSET ?", (max_captures,)):
                        if r[5] in finished:
                            doomed[r[0]] = r
                db.executemany("DELETE FROM captures WHERE id = ?", [(k,) for k in doomed])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return [_capture(r) for r in doomed.values()]

    def close(self) -> None:
        with self._lock:
            self._db.close()


_TEST_COLUMNS = ("uid, kind, app, verdict, reasons, started_ts, duration_s, result, "
                 "capture_path, capture_sha256, ledger_seq, created_at")


def _test(row: Sequence[Any]) -> TestRow:
    return TestRow(uid=row[0], kind=row[1], app=row[2], verdict=row[3],
                   reasons=tuple(json.loads(row[4])), started_ts=row[5], duration_s=row[6],
                   result=json.loads(row[7]), capture_path=row[8], capture_sha256=row[9],
                   ledger_seq=row[10], created_at=row[11])


def _with_capture(row: Sequence[Any]) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(row[1])
    d["capture_id"] = row[0]
    return d


def _verdict_row(capture_id: str, uid: str, subject: str, d: dict[str, Any]
                 ) -> tuple[Any, ...]:
    """A verdict's row from its ``Verdict.to_dict()`` keys (a call's dict holds them)."""
    return (capture_id, uid, subject, d["verdict"], _dumps(d["reasons"]), _dumps(d["evidence"]))


def open_store(data_dir: str | Path, *, clock: Callable[[], float]) -> Store:
    """The store of a data directory (created if missing)."""
    path = Path(data_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SqliteStore(path / "marsad.db", clock=clock)

