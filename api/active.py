"""Active tests in the service and the evidence: record, re-derive, schedule, bundle.

Recording
    :func:`record_test` appends a judged :class:`~policy.records.TestResult` to the
    evidence ledger (every test, ok included: a clean test is evidence too) and stores
    it. The entry's ``capture_sha256`` is the SHA-256 of the test's own capture, or,
    when the test took none, of the canonical JSON of its ``test_keys``
    (:func:`entry_capture_sha256`); ``subject_uid`` is the test's uid and ``evidence``
    the whole result (``TestResult.to_dict()``).

Re-deriving
    A test's verdict follows from its ``test_keys`` (the measurement) and the policy,
    not from re-reading the packets: :func:`rejudge` rebuilds the measurement record
    from the stored ``test_keys`` and runs the test kind's judgement again
    (``policy.replay.judge_replay``, ``policy.reach.judge_reachability``, imported
    when called). :func:`deriver_with_tests` wraps a capture deriver so that ledger
    verification re-judges the test entries of a capture it can read (the test's
    capture file, or ``test_keys`` themselves for a test without one) and leaves
    calls and flows to the capture's analysis. A test kind whose judgement is not
    installed, or whose stored ``test_keys`` do not rebuild its measurement, is
    reported unchecked (the capture counts as unavailable), never as a mismatch.

Scheduling
    :class:`TestJobs` runs ``POST /v1/tests`` requests one at a time on a worker
    thread (two tests at once would measure each other), through a runner function:
    :func:`run_test` by default, which imports ``api.replay_test`` or
    ``api.reach_test`` inside the job and calls ``run_replay_test`` or
    ``run_reach_test``. Tests and their captures land in ``<data_dir>/tests/``. A
    test job's state lives in the store (``test_jobs``) so a restart reports the jobs
    it interrupted.

Evidence bundle
    :func:`build_test_bundle` writes a zip of a test's own capture, its result, its
    ledger entries, its report (:func:`render_test_markdown`) and a manifest with
    every file's SHA-256, signed like a call's bundle when given a key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import tempfile
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum, StrEnum
from importlib import import_module
from pathlib import Path
from typing import Any, Protocol

from api.evidence import BUNDLE_FORMAT, json_finite, zip_bundle
from api.version import marsad_version
from policy.ledger import Derivation, Deriver, Ledger, LedgerEntry, canonical_json
from policy.records import Evidence, Reason, TestKind, TestResult, Verdict, VerdictKind
from policy.rules import Policy
from probe.active.capture import TestCapture

__all__ = [
    "JUDGES",
    "ReachRequest",
    "ReplayRequest",
    "ReplayTarget",
    "ResultStore",
    "Runner",
    "TestJobState",
    "TestJobs",
    "TestRequest",
    "build_test_bundle",
    "bundle_name_for_test",
    "deriver_with_tests",
    "entry_capture_sha256",
    "from_plain",
    "is_test_entry",
    "load_result",
    "record_test",
    "rejudge",
    "render_test_html",
    "render_test_markdown",
    "result_from_dict",
    "run_test",
    "write_result",
]

log = logging.getLogger(__name__)


# -- recording ------------------------------------------------------------------------------------


def entry_capture_sha256(result: TestResult) -> str:
    """What a test's ledger entry names as its capture: the SHA-256 of the test's own
    capture, else of the canonical JSON of its ``test_keys`` (the measurement is then
    the only record of what happened)."""
    if result.capture_sha256:
        return result.capture_sha256
    return hashlib.sha256(canonical_json(json_finite(result.test_keys)).encode()).hexdigest()


class ResultStore(Protocol):
    """The part of :class:`api.store.Store` that :func:`record_test` needs."""

    def add_test(self, result: dict[str, Any], *, capture_path: str | None,
                 ledger_seq: int | None) -> Any: ...


def record_test(result: TestResult, *, ledger: Ledger,
                store: ResultStore | None = None) -> LedgerEntry:
    """Append a judged test to the evidence ledger (and to ``store`` when given) and
    return its entry. Any verdict is recorded, ok included."""
    entry = ledger.append(capture_sha256=entry_capture_sha256(result), subject_uid=result.uid,
                          verdict=result.verdict.kind, reasons=result.verdict.reasons,
                          evidence=json_finite(result.to_dict()))
    if store is not None:
        store.add_test(entry.evidence, capture_path=result.capture, ledger_seq=entry.seq)
    return entry


def result_from_dict(d: Mapping[str, Any]) -> TestResult:
    """The :class:`TestResult` that ``TestResult.to_dict()`` wrote (a result file, a
    ledger entry's evidence, a stored row). Raises :class:`ValueError` naming what is
    wrong (an unknown kind, verdict or reason, a missing field)."""
    try:
        evidence = tuple(
            Evidence(rule=str(e["rule"]), reason=Reason(e["reason"]),
                     flow_uids=tuple(e.get("flow_uids", ())), frames=tuple(e.get("frames", ())),
                     first_ts=float(e["first_ts"]), last_ts=float(e["last_ts"]),
                     figures=dict(e.get("figures") or {}), text=str(e.get("text", "")))
            for e in d.get("evidence", ()))
        verdict = Verdict(VerdictKind(d["verdict"]),
                          tuple(Reason(r) for r in d.get("reasons", ())), evidence)
        return TestResult(uid=str(d["uid"]), kind=TestKind(d["kind"]), app=str(d["app"]),
                          started_ts=float(d["started_ts"]), duration_s=float(d["duration_s"]),
                          verdict=verdict, test_keys=dict(d["test_keys"]),
                          capture=d.get("capture"), capture_sha256=d.get("capture_sha256"))
    except KeyError as exc:
        raise ValueError(f"a test result needs {exc.args[0]!r}") from None
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"not a test result: {exc}") from None


@contextlib.contextmanager
def capturing(out_dir: Path, kind: str, bpf: str | None, *, iface: str = "any"
              ) -> Iterator[TestCapture | None]:
    """Run the block under a :class:`TestCapture` of ``bpf`` to a fresh hidden file in
    ``out_dir`` (tcpdump creates it; ``None`` for ``bpf``: no capture). The file is
    removed if the block fails; :func:`keep_capture` gives it its final name."""
    if bpf is None:
        yield None
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{kind}-", suffix=".pcap", dir=out_dir)
    os.close(fd)
    path = Path(tmp)
    path.unlink()
    cap = TestCapture(path, bpf, iface=iface)
    try:
        with cap:
            yield cap
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def keep_capture(cap: TestCapture | None, out_dir: Path, uid: str
                 ) -> tuple[str | None, str | None, dict[str, Any]]:
    """The test's capture moved to ``out_dir/<uid>.pcap``: its path and SHA-256 (``None``
    when there is none), and the ``capture`` part of its ``test_keys`` (why there is none,
    packets, kernel drops). A capture file that is not kept is removed."""
    if cap is None:
        return None, None, {"problem": "capture not asked for"}
    got = cap.result
    keys: dict[str, Any] = {"problem": got.problem, "packets": got.packets,
                            "dropped": got.dropped}
    if got.path is None or not got.path.exists():
        cap.path.unlink(missing_ok=True)
        return None, None, keys
    final = out_dir / f"{uid}.pcap"
    got.path.replace(final)
    return str(final), got.sha256, keys


def write_result(result: TestResult, out_dir: Path) -> Path:
    """Write ``out_dir/<uid>.json``, the file :func:`load_result` reads: the result as
    JSON, NaN and infinities (not JSON) as null, as in its ledger entry."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.uid}.json"
    path.write_text(json.dumps(json_finite(result.to_dict()), indent=2, sort_keys=True,
                               allow_nan=False) + "\n", encoding="utf-8")
    return path


def load_result(path: str | Path) -> TestResult:
    """A test result from the JSON file a test wrote (``<uid>.json``). A relative
    ``capture`` path is taken relative to the file's directory, and a capture that is
    not where the result says is looked for beside it (``<uid>.pcap``), so a test's
    directory can be moved whole."""
    p = Path(path)
    try:
        d = json.loads(p.read_bytes())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not JSON ({exc})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{p}: not a test result (a JSON object)")
    result = result_from_dict(d)
    if result.capture is not None:
        cap = Path(result.capture)
        if not cap.is_absolute():
            cap = p.parent / cap
        if not cap.is_file() and (p.parent / cap.name).is_file():
            cap = p.parent / cap.name
        result = dataclasses.replace(result, capture=str(cap))
    return result


# -- re-deriving ----------------------------------------------------------------------------------

JUDGES: dict[TestKind, tuple[str, str, str, str]] = {
    TestKind.REPLAY: ("policy.replay", "judge_replay",
                      "probe.active.records", "ReplayMeasurement"),
    TestKind.REACHABILITY: ("policy.reach", "judge_reachability",
                            "probe.active.records", "ReachabilityMeasurement"),
}
"""Per test kind: (judgement module, function, record module, measurement record). The
judgement takes ``(measurement, policy)`` and returns a :class:`TestResult`."""


def is_test_entry(entry: LedgerEntry) -> bool:
    """Whether a ledger entry records an active test (its evidence is a test result)."""
    ev = entry.evidence
    return (isinstance(ev.get("test_keys"), dict) and ev.get("uid") == entry.subject_uid
            and ev.get("kind") in {k.value for k in TestKind})


def from_plain(tp: Any, value: Any) -> Any:
    """``value`` (plain JSON) as type ``tp``: dataclasses field by field, tuples,
    enums, optionals. Raises TypeError/ValueError/KeyError when it does not fit."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return from_plain(arg, value)
            except (TypeError, ValueError, KeyError):
                continue
        raise TypeError(f"{value!r} fits none of {tp}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list for {tp}, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v) for v in value)
        if len(args) != len(value):
            raise ValueError(f"expected {len(args)} items for {tp}")
        return tuple(from_plain(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {tp}")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise TypeError(f"expected an object for {tp.__name__}")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = from_plain(hints[f.name], value[f.name])
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise KeyError(f.name)
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, Enum):
        return tp(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise TypeError(f"expected {tp.__name__}, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"cannot rebuild {tp}")


def rejudge(kind: TestKind, test_keys: Mapping[str, Any], policy: Policy) -> Verdict | None:
    """The verdict the test kind's judgement gives the measurement in ``test_keys`` today,
    or None when it cannot be re-judged here: the judgement is not installed, or the
    measurement record does not rebuild from ``test_keys`` (found whole at the top level
    or under ``measurement``)."""
    module, function, records, record = JUDGES[kind]
    try:
        judge = getattr(import_module(module), function)
        cls = getattr(import_module(records), record)
    except (ImportError, AttributeError):
        return None
    measurement = None
    for candidate in (test_keys.get("measurement"), test_keys):
        if isinstance(candidate, Mapping):
            try:
                measurement = from_plain(cls, dict(candidate))
                break
            except (TypeError, ValueError, KeyError):
                continue
    if measurement is None:
        return None
    try:
        judged: TestResult = judge(measurement, policy)
    except Exception:
        log.exception("re-judging a stored %s test failed", kind)
        return None
    return judged.verdict


def deriver_with_tests(ledger: Ledger, policy: Policy, *,
                       capture_path: Callable[[str], Path | None],
                       fallback: Deriver | None = None) -> Deriver:
    """A ledger deriver that re-judges the test entries of each capture it can read and
    hands the other subjects (calls, flows) to ``fallback``.

    A test's capture can be read when ``capture_path(sha)`` names a file with that
    SHA-256, or when the entry has no capture and ``sha`` is its ``test_keys``' own
    hash (the measurement is the record). The capture is unavailable (``None``) when
    no test entry of it could be re-judged and ``fallback`` has nothing either.
    """
    def derive(sha: str, context: Mapping[str, Any]) -> list[Derivation] | None:
        entries = ledger.entries(capture_sha256=sha)
        tests = [e for e in entries if is_test_entry(e)]
        out: list[Derivation] = []
        if tests:
            path = capture_path(sha)
            for e in tests:
                keys = e.evidence["test_keys"]
                own = hashlib.sha256(canonical_json(keys).encode()).hexdigest() == sha
                if not own and (path is None or not path.is_file()):
                    return None  # the test's capture was not given
                verdict = rejudge(TestKind(e.evidence["kind"]), keys, policy)
                if verdict is None:
                    return None  # this kind cannot be re-judged here
                out.append(Derivation(e.subject_uid, verdict.kind, verdict.reasons))
        if len(tests) < len(entries) or not tests:
            got = None if fallback is None else fallback(sha, context)
            if got is None:
                return None
            out.extend(got)
        return out

    return derive


# -- requests and running -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """A replay server the service's configuration names: the only ones it tests against."""

    name: str
    host: str
    port: int
    token_file: Path
    """File holding the server's client token (read when a test runs, never served)."""

    def token(self) -> str:
        value = self.token_file.read_text(encoding="utf-8").strip()
        if not value:
            raise ValueError(f"replay server {self.name}: its token file is empty")
        return value


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A replay test to run: the app's trace against a configured replay server."""

    app: str
    target: ReplayTarget
    transport: str = "udp"


@dataclass(frozen=True, slots=True)
class ReachRequest:
    """A reachability test to run: the app's endpoints, through the named resolvers
    (none: the system's)."""

    app: str
    resolvers: tuple[str, ...] = ()
    timeout_s: float = 5.0


TestRequest = ReplayRequest | ReachRequest
"""A test the service was asked to run."""

Runner = Callable[[TestRequest, Path, Policy], TestResult]
"""Runs a test, writing its capture and result under the directory; returns the result."""


def _runner_module(kind: TestKind) -> Any:
    name = {TestKind.REPLAY: "api.replay_test", TestKind.REACHABILITY: "api.reach_test"}[kind]
    try:
        return import_module(name)
    except ImportError as exc:
        raise RuntimeError(f"the {kind} test runner ({name}) is not installed: {exc}") from None


def run_test(request: TestRequest, out_dir: Path, policy: Policy) -> TestResult:
    """Run a test with the project's runners (``api.replay_test.run_replay_test``,
    ``api.reach_test.run_reach_test``), imported here; :class:`RuntimeError` when the
    runner for its kind is missing."""
    if isinstance(request, ReplayRequest):
        mod = _runner_module(TestKind.REPLAY)
        t = request.target
        spec = mod.ReplaySpec(app=request.app, server=t.host, port=t.port, token=t.token(),
                              transport=request.transport)
        result: TestResult = mod.run_replay_test(spec, out_dir, policy=policy)
        return result
    mod = _runner_module(TestKind.REACHABILITY)
    spec = mod.ReachSpec(app=request.app, resolvers=request.resolvers,
                         timeout_s=request.timeout_s)
    reached: TestResult = mod.run_reach_test(spec, out_dir, policy=policy)
    return reached


class TestJobState(StrEnum):
    """Where a test job stands."""

    __test__ = False

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class _JobStore(Protocol):
    def add_test(self, result: dict[str, Any], *, capture_path: str | None,
                 ledger_seq: int | None) -> Any: ...

    def add_test_job(self, job_id: str, request: dict[str, Any]) -> Any: ...

    def set_test_job(self, job_id: str, state: str, *, error: str | None = None,
                     test_uid: str | None = None) -> None: ...

    def prune_tests(self, *, max_age_s: float | None, max_tests: int | None) -> list[Any]: ...


def request_dict(request: TestRequest) -> dict[str, Any]:
    """A request as stored and served (a replay server by its configured name only)."""
    if isinstance(request, ReplayRequest):
        return {"kind": "replay", "app": request.app, "server": request.target.name,
                "transport": request.transport}
    return {"kind": "reachability", "app": request.app, "resolvers": list(request.resolvers),
            "timeout_s": request.timeout_s}


class QueueFull(Exception):
    """Too many tests are already waiting."""


class TestJobs:
    """Runs requested tests one at a time in the background and records each result.

    ``runner`` defaults to :func:`run_test` (``api.main.create_app(test_runner=...)``
    passes another); listeners are called with every recorded result.
    """

    __test__ = False

    def __init__(self, store: _JobStore, ledger: Ledger, *, tests_dir: Path, policy: Policy,
                 runner: Runner | None = None, max_queued: int = 8,
                 retention: tuple[float | None, int | None] = (None, None),
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._ledger = ledger
        self.tests_dir = tests_dir
        self._policy = policy
        self._runner = runner
        self._max_queued = max_queued
        self._retention = retention
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="marsad-test")
        self._lock = threading.Lock()
        self._pending = 0
        self._stopping = threading.Event()
        self._listeners: list[Callable[[TestResult], None]] = []
        tests_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def add_listener(self, listener: Callable[[TestResult], None]) -> None:
        """Call ``listener`` with each recorded result (on the worker thread)."""
        self._listeners.append(listener)

    def submit(self, request: TestRequest) -> str:
        """Queue a test; returns its job id. :class:`QueueFull` when ``max_queued`` wait."""
        with self._lock:
            if self._pending >= self._max_queued:
                raise QueueFull(f"{self._pending} test(s) already waiting; try again later")
            self._pending += 1
        job_id = "T" + secrets.token_hex(8)
        try:
            self._store.add_test_job(job_id, request_dict(request))
            self._pool.submit(self.run, job_id, request)
        except BaseException:
            with self._lock:
                self._pending -= 1
            raise
        return job_id

    def run(self, job_id: str, request: TestRequest) -> None:
        """Run one queued test and record its result (what the worker thread does)."""
        try:
            if self._stopping.is_set():
                return
            self._store.set_test_job(job_id, TestJobState.RUNNING.value)
            runner = self._runner or run_test
            try:
                result = runner(request, self.tests_dir, self._policy)
            except Exception as exc:
                log.warning("test job %s failed: %s", job_id, exc)
                self._store.set_test_job(job_id, TestJobState.FAILED.value,
                                         error=f"{type(exc).__name__}: {exc}")
                return
            try:
                record_test(result, ledger=self._ledger, store=self._store)
            except Exception as exc:
                log.exception("recording test %s failed", result.uid)
                self._store.set_test_job(job_id, TestJobState.FAILED.value,
                                         error=f"the result could not be recorded: "
                                               f"{type(exc).__name__}: {exc}",
                                         test_uid=result.uid)
                return
            self._store.set_test_job(job_id, TestJobState.DONE.value, test_uid=result.uid)
            for listener in self._listeners:
                try:
                    listener(result)
                except Exception:
                    log.exception("a listener failed on test %s", result.uid)
            self.prune()
        finally:
            with self._lock:
                self._pending -= 1

    def prune(self) -> int:
        """Apply retention to stored tests and delete their files."""
        max_age_s, max_tests = self._retention
        removed = self._store.prune_tests(max_age_s=max_age_s, max_tests=max_tests)
        for row in removed:
            for name in (row.capture_path, str(self.tests_dir / f"{row.uid}.json")):
                if name and Path(name).resolve().parent == self.tests_dir.resolve():
                    Path(name).unlink(missing_ok=True)
        return len(removed)

    def wait(self, timeout_s: float) -> bool:
        """Wait until no test is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._pending == 0:
                    return True
            time.sleep(0.02)
        return False

    def shutdown(self) -> None:
        """Stop: queued tests are not started (their jobs read ``interrupted`` from the
        store's start-up check); a running one finishes."""
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)


# -- report and bundle ----------------------------------------------------------------------------

_LABELS: dict[str, dict[str, str]] = {
    "en": {"title": "marsad active test {uid}", "test": "Test", "app": "App",
           "started": "Started (UTC)", "duration": "Duration", "verdict": "Verdict",
           "reasons": "Reasons", "capture": "Capture (SHA-256)",
           "no_capture": "none: the measurement is the record", "evidence": "Evidence",
           "rule": "rule", "files": "Files", "ledger": "Ledger",
           "entry": "entry {seq} recorded {at}", "check": "How to check",
           "check.bundle": "re-hashes every file against the manifest (and checks its "
                           "signature)",
           "check.verify": "checks the ledger's chain and re-judges the test's measurement "
                           "(result.json test_keys)",
           "check.packets": "shows the packets the test sent and received",
           "kind.replay": "replay of the app's call traffic against its controls "
                          "(Wehe's method)",
           "kind.reachability": "reachability of the app's endpoints: DNS, TCP, TLS, STUN "
                                "(OONI's method)"},
    "fr": {"title": "Test actif marsad {uid}", "test": "Test", "app": "Application",
           "started": "Début (UTC)", "duration": "Durée", "verdict": "Verdict",
           "reasons": "Raisons", "capture": "Capture (SHA-256)",
           "no_capture": "aucune : la mesure fait foi", "evidence": "Preuves",
           "rule": "règle", "files": "Fichiers", "ledger": "Registre",
           "entry": "entrée {seq} enregistrée le {at}", "check": "Comment vérifier",
           "check.bundle": "recalcule l'empreinte de chaque fichier d'après le manifeste "
                           "(et vérifie sa signature)",
           "check.verify": "vérifie la chaîne du registre et rejuge la mesure du test "
                           "(test_keys de result.json)",
           "check.packets": "montre les paquets envoyés et reçus par le test",
           "kind.replay": "rejeu du trafic d'appel de l'application face à ses témoins "
                          "(méthode Wehe)",
           "kind.reachability": "joignabilité des serveurs de l'application : DNS, TCP, "
                                "TLS, STUN (méthode OONI)"},
    "ar": {"title": "اختبار نشط من مرصد {uid}", "test": "الاختبار", "app": "التطبيق",
           "started": "البداية (UTC)", "duration": "المدة", "verdict": "الحكم",
           "reasons": "الأسباب", "capture": "الالتقاط (SHA-256)",
           "no_capture": "لا يوجد: القياس هو السجل", "evidence": "الأدلة",
           "rule": "القاعدة", "files": "الملفات", "ledger": "السجل",
           "entry": "القيد {seq} المسجل في {at}", "check": "كيفية التحقق",
           "check.bundle": "يعيد حساب بصمة كل ملف مقابل البيان (ويتحقق من توقيعه)",
           "check.verify": "يتحقق من سلسلة السجل ويعيد الحكم على قياس الاختبار "
                           "(test_keys في result.json)",
           "check.packets": "يعرض الحزم التي أرسلها الاختبار واستقبلها",
           "kind.replay": "إعادة تشغيل حركة مكالمات التطبيق مقابل نسخ ضابطة (طريقة Wehe)",
           "kind.reachability": "إمكانية الوصول إلى خوادم التطبيق: DNS وTCP وTLS وSTUN "
                                "(طريقة OONI)"},
}
"""The words of a test's report, per language of :data:`api.evidence.REPORT_LANGUAGES`."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class _Report:
    title: str
    facts: tuple[tuple[str, str], ...]
    evidence: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    """(sentence, ((figure, value)...)) per piece of evidence."""
    sections: tuple[tuple[str, tuple[str, ...]], ...]
    """(heading, lines): files, ledger, how to check."""
    verdict: str
    lang: str


def _report(result: TestResult, lang: str, files: Mapping[str, str] | None,
            entries: Sequence[LedgerEntry]) -> _Report:
    from api.document import REASON_WORDS, VERDICT_WORDS
    if lang not in _LABELS:
        raise ValueError(f"no report language {lang!r}; one of {', '.join(_LABELS)}")
    lb = _LABELS[lang]
    v = result.verdict
    facts = [(lb["test"], f"{result.kind}: {lb['kind.' + str(result.kind)]}"),
             (lb["app"], result.app), (lb["started"], _iso(result.started_ts)),
             (lb["duration"], f"{result.duration_s:.1f} s"),
             (lb["verdict"], f"{VERDICT_WORDS[lang].get(str(v.kind), str(v.kind))} "
                             f"({v.kind})")]
    if v.reasons:
        facts.append((lb["reasons"], "; ".join(
            f"{REASON_WORDS[lang].get(str(r), str(r))} ({r})" for r in v.reasons)))
    facts.append((lb["capture"], result.capture_sha256 or lb["no_capture"]))
    evidence = tuple(
        (f"{e.reason} ({lb['rule']} {e.rule}): {e.text}",
         tuple((k, json.dumps(json_finite(val), ensure_ascii=False))
               for k, val in sorted(e.figures.items())))
        for e in v.evidence)
    sections: list[tuple[str, tuple[str, ...]]] = []
    if files:
        sections.append((lb["files"], tuple(f"{name}: {digest}"
                                            for name, digest in sorted(files.items()))))
    if entries:
        sections.append((lb["ledger"], tuple(
            f"{lb['entry'].format(seq=e.seq, at=e.recorded_at)}: {e.verdict} "
            f"{list(e.reasons)}, entry_hash {e.entry_hash}" for e in entries)))
    sections.append((lb["check"], (
        f"marsad evidence --check BUNDLE.zip — {lb['check.bundle']}",
        f"marsad verify LEDGER --capture test.pcap — {lb['check.verify']}",
        f"tshark -r test.pcap — {lb['check.packets']}")))
    return _Report(lb["title"].format(uid=result.uid), tuple(facts), evidence,
                   tuple(sections), str(v.kind), lang)


def render_test_markdown(result: TestResult, *, lang: str = "en",
                         files: Mapping[str, str] | None = None,
                         entries: Sequence[LedgerEntry] = ()) -> str:
    """A test's report for people, in Markdown (``lang``: en, fr or ar): what was tested,
    the verdict, its reasons and figures, the files and ledger entries that back it, and
    how to check them."""
    r = _report(result, lang, files, entries)
    lines = [f"# {r.title}", ""]
    lines += [f"- {k}: **{val}**" if k == _LABELS[lang]["verdict"] else f"- {k}: {val}"
              for k, val in r.facts]
    if r.evidence:
        lines += ["", f"## {_LABELS[lang]['evidence']}", ""]
        for sentence, figures in r.evidence:
            lines.append(f"- {sentence}")
            lines += [f"  - `{k}`: {val}" for k, val in figures]
    for heading, items in r.sections:
        lines += ["", f"## {heading}", ""]
        lines += [f"- {item}" for item in items]
    lines.append("")
    return "\n".join(lines)


def render_test_html(result: TestResult, *, lang: str = "en",
                     files: Mapping[str, str] | None = None,
                     entries: Sequence[LedgerEntry] = ()) -> str:
    """The report of :func:`render_test_markdown` as one self-contained HTML page
    (right to left in Arabic)."""
    import html
    r = _report(result, lang, files, entries)
    e = html.escape
    out = [f'<!DOCTYPE html>\n<html lang="{lang}" dir="{"rtl" if lang == "ar" else "ltr"}">'
           f'<head><meta charset="utf-8"><title>{e(r.title)}</title></head><body>',
           f"<h1>{e(r.title)}</h1>", "<table>"]
    for k, val in r.facts:
        cls = f' class="verdict-{e(r.verdict)}"' if k == _LABELS[lang]["verdict"] else ""
        out.append(f"<tr><th>{e(k)}</th><td{cls}><bdi>{e(val)}</bdi></td></tr>")
    out.append("</table>")
    if r.evidence:
        out.append(f"<h2>{e(_LABELS[lang]['evidence'])}</h2><ul>")
        for sentence, figures in r.evidence:
            out.append(f'<li><bdi>{e(sentence)}</bdi><ul dir="ltr">')
            out += [f"<li><code>{e(k)}</code>: {e(val)}</li>" for k, val in figures]
            out.append("</ul></li>")
        out.append("</ul>")
    for heading, items in r.sections:
        out.append(f"<h2>{e(heading)}</h2><ul>")
        out += [f"<li><bdi>{e(item)}</bdi></li>" for item in items]
        out.append("</ul>")
    out.append("</body></html>\n")
    return "\n".join(out)


def build_test_bundle(result: TestResult, *, ledger_entries: Iterable[LedgerEntry] | None = None,
                      clock: Callable[[], float] = time.time,
                      signing_key: Any = None) -> bytes:
    """A zip of the evidence about one test: ``test.pcap`` (its own capture, when it took
    one; checked against the result's SHA-256), ``result.json``, ``ledger.json`` (its
    entries, when given), its report (``report.<lang>.html`` in English, French and
    Arabic, and ``report.en.md``, citing the other files' SHA-256) and ``manifest.json``;
    with ``signing_key``, ``manifest.sig`` as for a call's bundle
    (:func:`api.evidence.check_bundle` reads both kinds). Raises
    :class:`api.evidence.EvidenceError` when the capture is missing or is not the one
    the result names."""
    from api.evidence import EvidenceError
    files: dict[str, bytes] = {}
    if result.capture is not None or result.capture_sha256 is not None:
        if result.capture is None or not Path(result.capture).is_file():
            raise EvidenceError(f"test {result.uid}: its capture {result.capture} is missing")
        pcap = Path(result.capture).read_bytes()
        digest = hashlib.sha256(pcap).hexdigest()
        if result.capture_sha256 is not None and digest != result.capture_sha256:
            raise EvidenceError(f"test {result.uid}: {result.capture} has SHA-256 {digest}, "
                                f"not the {result.capture_sha256} its result names")
        files["test.pcap"] = pcap
    doc = json_finite(result.to_dict())
    if "test.pcap" in files:
        doc["capture"] = "test.pcap"
    files["result.json"] = _json_bytes(doc)
    entries = [] if ledger_entries is None else [
        e for e in ledger_entries if e.subject_uid == result.uid]
    if ledger_entries is not None:
        files["ledger.json"] = _json_bytes([e.to_dict() for e in entries])
    digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
    for lang in _LABELS:
        files[f"report.{lang}.html"] = render_test_html(result, lang=lang, files=digests,
                                                        entries=entries).encode()
    files["report.en.md"] = render_test_markdown(result, files=digests,
                                                 entries=entries).encode()
    created = clock()
    manifest = {
        "format": BUNDLE_FORMAT, "tool": "marsad", "tool_version": marsad_version(),
        "created_at": _iso(created), "subject_uid": result.uid, "subject": "test",
        "test": {"kind": str(result.kind), "app": result.app},
        "capture": {"sha256": entry_capture_sha256(result),
                    "name": "test.pcap" if "test.pcap" in files else None},
        "anonymised": False, "anonymisation": None,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()}}
    return zip_bundle(files, manifest, created, signing_key)


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def bundle_name_for_test(result: TestResult) -> str:
    """``test-<kind>-<app>-<uid>.zip``."""
    return f"test-{result.kind}-{os.path.basename(result.app)}-{result.uid}.zip"
