"""Many captures into one Parquet dataset: ``marsad analyze|flows CAPTURE... --out DIR``.

Each capture is one task, run by :func:`run_task` wherever the executor puts it (this
process, a local process pool or a Dask worker): the task hashes the capture, skips it
when the dataset already holds it with the same marsad version, policy and settings,
otherwise analyses it with :func:`api.pipeline.analyze_capture` (the one pipeline) and
writes its partitions. Nothing here schedules work itself: :func:`make_executor` gives a
``concurrent.futures`` executor, a process pool or a Dask client's.

The dataset (every table partitioned by the capture's SHA-256, hive style)::

    DIR/flows/capture_sha256=<sha>/part-0.parquet      one row per flow
    DIR/calls/capture_sha256=<sha>/part-0.parquet      one row per call
    DIR/verdicts/capture_sha256=<sha>/part-0.parquet   one row per call or flow verdict
    DIR/evidence/capture_sha256=<sha>/part-0.parquet   one row per rule that fired
    DIR/manifest/capture_sha256=<sha>/part-0.parquet   the capture: status, size, counts,
                                                       timings, error

A capture is in the dataset when its manifest partition is. A task writes its files
under ``DIR/_staging/`` and then renames each partition directory into place, the
manifest last, so a partition is never seen half-written; a task killed between two
renames leaves partitions without a manifest, which :func:`prepare_output` removes
before the next batch, and the capture is analysed again. A capture that cannot be read
(not a capture, empty, unsupported) gets a manifest row with its error and no other
partition; a damaged one (cut short) gets what came before the damage and its error.
Files and directory names starting with ``_`` are skipped by pyarrow, pandas and the
``*/`` globs of DuckDB, so staging never shows in a query.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import posixpath
import resource
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from api.output import dumps
from api.pipeline import AnalysisResult, analyze_capture, capture_sha256
from api.version import marsad_version
from policy.rules import Policy
from policy.settling import PipelineConfig
from probe import CaptureError, FlowReader, ends

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from api.store import Store

log = logging.getLogger(__name__)

__all__ = [
    "PARTITION",
    "TABLES",
    "BatchSummary",
    "Outcome",
    "Settings",
    "Task",
    "dataset_capture_file",
    "expand_inputs",
    "make_executor",
    "prepare_output",
    "read_table",
    "register_dataset",
    "result_tables",
    "rows_as_json",
    "run_batch",
    "run_task",
]

PARTITION = "capture_sha256"
"""The partition column of every table: the capture's SHA-256 (hex)."""
TABLES = ("flows", "calls", "verdicts", "evidence", "manifest")
"""The dataset's tables, one directory each; ``manifest`` is written last."""
_STAGING = "_staging"
_FILE = "part-0.parquet"

_J = pa.string()
"""Lists and objects that have no fixed shape are JSON text."""

FLOWS_SCHEMA = pa.schema([
    ("uid", pa.string()), ("proto", pa.string()), ("ip_version", pa.int8()),
    ("orig_h", pa.string()), ("orig_p", pa.int32()), ("resp_h", pa.string()),
    ("resp_p", pa.int32()), ("first_ts", pa.float64()), ("last_ts", pa.float64()),
    ("duration_s", pa.float64()), ("orig_pkts", pa.int64()), ("orig_bytes", pa.int64()),
    ("orig_wire_bytes", pa.int64()), ("resp_pkts", pa.int64()), ("resp_bytes", pa.int64()),
    ("resp_wire_bytes", pa.int64()), ("conn_state", pa.string()),
    ("orig_retrans", pa.int64()), ("resp_retrans", pa.int64()),
    ("orig_missed_bytes", pa.int64()), ("resp_missed_bytes", pa.int64()),
    ("first_frame", pa.int64()), ("last_frame", pa.int64()), ("end_reason", pa.string()),
    ("vlan", pa.int32()), ("tunnel", pa.string()), ("icmp", _J), ("weirds", pa.int64()),
    ("rtp_streams", pa.int64()), ("orig_l2_addr", pa.string()), ("resp_l2_addr", pa.string()),
    ("app", pa.string()), ("category", pa.string()), ("media", pa.string()),
    ("method", pa.string()), ("confidence", pa.float64()), ("reason", pa.string()),
    ("detail", pa.string()), ("l7", pa.string()), ("sni", pa.string()), ("ja4", pa.string()),
    ("verdict", pa.string()), ("reasons", pa.list_(pa.string())),
])
"""``marsad analyze`` flow rows (``--json``'s ``flows``); ``icmp`` is JSON text."""

CONN_SCHEMA = pa.schema([f for f in FLOWS_SCHEMA if f.name not in (
    "app", "category", "media", "method", "confidence", "reason", "detail", "l7", "sni",
    "ja4", "verdict", "reasons")])
"""``marsad flows`` rows: the conn.log columns only."""

_CALL_JSON = ("legs", "setup", "evidence", "quality", "extra")
CALLS_SCHEMA = pa.schema([
    ("uid", pa.string()), ("app", pa.string()), ("media", pa.list_(pa.string())),
    ("flow_uids", pa.list_(pa.string())), ("start_ts", pa.float64()),
    ("end_ts", pa.float64()), ("duration_s", pa.float64()), ("local", pa.string()),
    ("outcome", pa.string()), ("verdict", pa.string()), ("reasons", pa.list_(pa.string())),
    ("mos", pa.float64()), ("loss_ratio", pa.float64()), ("jitter_s", pa.float64()),
    *((name, _J) for name in _CALL_JSON),
])
"""Calls: ``--json``'s ``calls``, the worst leg's quality in columns too (``mos``,
``loss_ratio``, ``jitter_s``); ``legs``, ``setup``, ``evidence``, ``quality`` and
``extra`` (what the call carries beyond the fixed keys, e.g. ``sip_call_id``) are JSON
text."""

VERDICTS_SCHEMA = pa.schema([
    ("subject", pa.string()), ("uid", pa.string()), ("app", pa.string()),
    ("verdict", pa.string()), ("reasons", pa.list_(pa.string())),
    ("start_ts", pa.float64()), ("end_ts", pa.float64()), ("local", pa.string()),
    ("flow_uids", pa.list_(pa.string())),
])
"""Every verdict: of a call (``subject`` ``call``) or of a flow on its own (``flow``);
``local`` is the local host of the call or flow, ``start_ts``/``end_ts`` its span."""

EVIDENCE_SCHEMA = pa.schema([
    ("subject", pa.string()), ("uid", pa.string()), ("verdict", pa.string()),
    ("rule", pa.string()), ("reason", pa.string()), ("flow_uids", pa.list_(pa.string())),
    ("frames", pa.list_(pa.int64())), ("first_ts", pa.float64()), ("last_ts", pa.float64()),
    ("figures", _J), ("text", pa.string()),
])
"""One row per rule that fired for a verdict (``Evidence``); ``figures`` is JSON text."""

MANIFEST_SCHEMA = pa.schema([
    ("path", pa.string()), ("size_bytes", pa.int64()), ("status", pa.string()),
    ("error", pa.string()), ("format", pa.string()), ("compressed", pa.bool_()),
    ("packets", pa.int64()), ("flows", pa.int64()), ("calls", pa.int64()),
    ("weirds", pa.int64()), ("stopped_at", pa.int64()),
    ("started_at", pa.float64()), ("hash_s", pa.float64()), ("analysis_s", pa.float64()),
    ("marsad_version", pa.string()), ("policy_sha256", pa.string()),
    ("settings_sha256", pa.string()), ("command", pa.string()), ("worker", pa.string()),
])
"""One row per capture: ``status`` is ``ok``, ``damaged`` (cut short: results before
the damage, ``stopped_at`` its byte offset) or ``unreadable`` (no results); ``error``
says why; ``started_at`` (Unix time), ``hash_s`` (the SHA-256) and ``analysis_s`` are
wall-clock timings; the version, policy and settings digests decide whether a later batch may skip
the capture."""

_SCHEMAS = {"flows": FLOWS_SCHEMA, "calls": CALLS_SCHEMA, "verdicts": VERDICTS_SCHEMA,
            "evidence": EVIDENCE_SCHEMA, "manifest": MANIFEST_SCHEMA}


# -- what a task is given and gives back ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything besides the capture that decides a task's rows: the command, the
    policy, and the meter and pipeline options as the command line gives them."""

    command: str
    """``analyze`` (flows, calls, verdicts, evidence) or ``flows`` (conn.log rows)."""
    policy: Policy
    meter: Mapping[str, Any]
    """Keyword arguments of :func:`classifier.payloads.meter_config`."""
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    fingerprints: bool = False

    def policy_sha256(self) -> str:
        from api.evidence import policy_digest
        return policy_digest(self.policy)

    def settings_sha256(self) -> str:
        """Digest of the command, meter and pipeline options (not the policy)."""
        doc = {"command": self.command, "meter": dict(self.meter),
               "pipeline": asdict(self.pipeline), "fingerprints": self.fingerprints}
        return hashlib.sha256(dumps(doc).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Task:
    """One capture to bring into the dataset at ``out`` (a path or fsspec URL)."""

    source: str
    out: str
    settings: Settings
    version: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a task did with its capture."""

    source: str
    status: str
    """``ok``, ``damaged``, ``unreadable``, ``skipped`` (already in the dataset) or
    ``duplicate`` (another task of the batch wrote the same content), or ``error`` (the
    task failed for a reason of ours, or its worker was lost: nothing is recorded, and
    the next batch tries the capture again)."""
    sha256: str | None
    size_bytes: int
    error: str | None = None
    packets: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0
    """The peak resident memory of the process that ran the task, so far (Linux)."""
    worker: str = ""
    recorded: str | None = None
    """For a capture skipped or a duplicate: the status the dataset holds for it."""


# -- file systems ----------------------------------------------------------------------------


def _fs(url: str) -> tuple[AbstractFileSystem, str]:
    if _local_name(url):  # as written, even with fsspec's "::" chaining or glob brackets
        from fsspec.implementations.local import LocalFileSystem
        return LocalFileSystem(), os.path.abspath(url)
    from fsspec.core import url_to_fs
    fs, path = url_to_fs(url)
    return fs, path


def _local_name(url: str) -> bool:
    """Whether ``url`` is the name of a local file or directory that exists, as written."""
    return "://" not in url and os.path.exists(url)


def _is_local(fs: AbstractFileSystem) -> bool:
    from fsspec.implementations.local import LocalFileSystem
    return isinstance(fs, LocalFileSystem)


_CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".pcap.gz", ".pcapng.gz", ".gz")


def expand_inputs(specs: Sequence[str]) -> list[str]:
    """Files named by ``specs``: files as given, directories walked for captures (by
    suffix, recursively), globs expanded; local paths or fsspec URLs (a local file or
    directory that exists is taken as named, whatever characters it holds). A name that matches
    nothing is kept, so its task reports it unreadable. Order: as given, each
    directory's and glob's files sorted; a file named twice is kept once."""
    out: list[str] = []
    for spec in specs:
        fs, path = _fs(spec)
        proto = _protocol(spec)
        if glob.has_magic(path) and not _local_name(spec):
            found = sorted(fs.glob(path))
            files = [p for p in found if fs.isfile(p)]
        elif fs.isdir(path):
            files = sorted(p for p in fs.find(path)
                           if p.lower().endswith(_CAPTURE_SUFFIXES)
                           and not posixpath.basename(p).startswith("."))
        else:
            files = [path]
        out.extend(proto + p if proto else p for p in files)
    return list(dict.fromkeys(out))


def _protocol(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://" if sep else ""


# -- rows --------------------------------------------------------------------------------


def _json(value: Any) -> str | None:
    return None if value is None else dumps(value)


def result_tables(result: AnalysisResult) -> dict[str, pa.Table]:
    """The flows, calls, verdicts and evidence tables of one analysed capture."""
    flows = []
    for row in result.flow_rows():
        row["icmp"] = _json(row.get("icmp"))
        flows.append(row)
    calls: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    evidence: list[dict[str, Any]] = []
    by_uid = {f.uid: (f, c) for f, c in zip(result.flows, result.classes, strict=True)}
    for call in result.analysis.calls:
        d = call.to_dict()
        fixed = {k: d.pop(k) for k in list(d) if k in CALLS_SCHEMA.names}
        q = fixed["quality"]
        fixed.update(mos=q["mos"], loss_ratio=q["loss_ratio"], jitter_s=q["jitter_s"])
        for k in ("legs", "setup", "evidence", "quality"):
            fixed[k] = _json(fixed[k])
        fixed["extra"] = _json(d) if d else None
        calls.append(fixed)
        verdicts.append({"subject": "call", "uid": call.uid, "app": call.app,
                         "verdict": str(call.verdict.kind),
                         "reasons": [str(r) for r in call.verdict.reasons],
                         "start_ts": call.start_ts, "end_ts": call.end_ts,
                         "local": call.local, "flow_uids": list(call.flow_uids)})
        evidence.extend(_evidence_rows("call", call.uid, call.verdict))
    for uid, v in result.analysis.flow_verdicts.items():
        f, c = by_uid[uid]
        verdicts.append({"subject": "flow", "uid": uid, "app": c.app, "verdict": str(v.kind),
                         "reasons": [str(r) for r in v.reasons], "start_ts": f.first_ts,
                         "end_ts": f.last_ts, "local": ends(f)[0][0], "flow_uids": [uid]})
        evidence.extend(_evidence_rows("flow", uid, v))
    return {"flows": _table(flows, FLOWS_SCHEMA), "calls": _table(calls, CALLS_SCHEMA),
            "verdicts": _table(verdicts, VERDICTS_SCHEMA),
            "evidence": _table(evidence, EVIDENCE_SCHEMA)}


def _evidence_rows(subject: str, uid: str, verdict: Any) -> Iterator[dict[str, Any]]:
    for e in verdict.evidence:
        d = e.to_dict()
        d["figures"] = _json(d["figures"])
        yield {"subject": subject, "uid": uid, "verdict": str(verdict.kind), **d}


def _table(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    extra = {k for r in rows for k in r} - set(schema.names)
    if extra:  # a new column in the pipeline's rows must be given a type here, not lost
        raise ValueError(f"columns outside the dataset schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=schema)


def rows_as_json(table: str, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Dataset rows of ``table`` (``flows`` or ``calls``) back as the records of
    ``marsad analyze --json``: JSON text decoded, absent keys left out as the JSON has
    them, the partition column dropped."""
    out = []
    for row in rows:
        d = {k: v for k, v in row.items() if k != PARTITION}
        if table == "flows":
            d["icmp"] = json.loads(d["icmp"])
            for k in ("detail", "l7", "sni", "ja4", "verdict", "reasons"):
                if d.get(k) is None:
                    d.pop(k, None)
        elif table == "calls":
            for k in _CALL_JSON:
                d[k] = None if d[k] is None else json.loads(d[k])
            for k in ("mos", "loss_ratio", "jitter_s"):
                del d[k]
            d.update(d.pop("extra") or {})
        out.append(d)
    return out


def read_table(out: str, table: str, shas: Iterable[str] | None = None) -> pa.Table:
    """A table of the dataset at ``out`` (with its ``capture_sha256`` column), only the
    captures in the manifest (and in ``shas`` if given)."""
    fs, root = _fs(out)
    done = set(_committed(fs, root))
    if shas is not None:
        done &= set(shas)
    parts = []
    for sha in sorted(done):
        path = posixpath.join(root, table, f"{PARTITION}={sha}", _FILE)
        if not fs.exists(path):
            continue
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh)
        parts.append(t.append_column(PARTITION, pa.array([sha] * t.num_rows, pa.string())))
    if not parts:
        schema = _SCHEMAS.get(table, FLOWS_SCHEMA)
        return schema.append(pa.field(PARTITION, pa.string())).empty_table()
    return pa.concat_tables(parts, promote_options="default")


# -- the dataset on disk -----------------------------------------------------------------------


def _committed(fs: AbstractFileSystem, root: str) -> list[str]:
    """SHA-256 of every capture whose manifest partition is in place."""
    return _partitions(fs, posixpath.join(root, "manifest"))


def _partitions(fs: AbstractFileSystem, table_dir: str) -> list[str]:
    if not fs.isdir(table_dir):
        return []
    prefix = f"{PARTITION}="
    return [posixpath.basename(p.rstrip("/"))[len(prefix):] for p in fs.ls(table_dir,
                                                                              detail=False)
            if posixpath.basename(p.rstrip("/")).startswith(prefix)]


def prepare_output(out: str) -> int:
    """Make the dataset directory ready for a batch: remove what an interrupted one left
    (staging files; partitions of a capture whose manifest was never written). Returns
    how many partitions were removed. Called once before the tasks start."""
    fs, root = _fs(out)
    fs.makedirs(root, exist_ok=True)
    staging = posixpath.join(root, _STAGING)
    if fs.exists(staging):
        fs.rm(staging, recursive=True)
    done = set(_committed(fs, root))
    removed = 0
    for table in TABLES[:-1]:
        for sha in _partitions(fs, posixpath.join(root, table)):
            if sha not in done:
                fs.rm(posixpath.join(root, table, f"{PARTITION}={sha}"), recursive=True)
                removed += 1
    return removed


def _recorded(fs: AbstractFileSystem, root: str, sha: str) -> dict[str, Any] | None:
    path = posixpath.join(root, "manifest", f"{PARTITION}={sha}", _FILE)
    try:
        with fs.open(path, "rb") as fh:
            rows = pq.read_table(fh).to_pylist()
    except FileNotFoundError:
        return None
    return rows[0] if rows else None


def _same_run(recorded: Mapping[str, Any], task: Task) -> bool:
    """Whether a manifest row was written by the same version, policy and settings as
    ``task`` would use (so the task may skip its capture)."""
    s = task.settings
    return bool((recorded["marsad_version"], recorded["policy_sha256"],
                 recorded["settings_sha256"], recorded["command"]) == (
        task.version, s.policy_sha256(), s.settings_sha256(), s.command))


def _commit(fs: AbstractFileSystem, root: str, sha: str,
            tables: Mapping[str, pa.Table], task: Task) -> bool:
    """Write a capture's partitions: each to staging, then renamed into place, the
    manifest last. An earlier manifest of the capture (another version or policy) goes
    first, with the earlier rows of every table this task does not write, so the capture
    is never listed with rows of two analyses. False if another
    task committed the same capture meanwhile (its rows are the same; ours are
    dropped)."""
    stage = posixpath.join(root, _STAGING, f"{sha}-{os.getpid()}-{secrets.token_hex(4)}")
    for name, table in tables.items():
        d = posixpath.join(stage, name)
        fs.makedirs(d, exist_ok=True)
        with fs.open(posixpath.join(d, _FILE), "wb") as fh:
            pq.write_table(table, fh)
    manifest = posixpath.join(root, "manifest", f"{PARTITION}={sha}")
    try:
        prev = _recorded(fs, root, sha)
        if prev is not None:
            if _same_run(prev, task):  # a duplicate of the batch got there first
                return False
            fs.rm(manifest, recursive=True)
            # The earlier analysis's rows of tables this one does not write (calls of an
            # analysis replaced by flows only, anything of a capture now unreadable) go too.
            for name in TABLES:
                old = posixpath.join(root, name, f"{PARTITION}={sha}")
                if name not in tables and fs.exists(old):
                    fs.rm(old, recursive=True)
        for name in [n for n in TABLES if n in tables]:
            final = posixpath.join(root, name, f"{PARTITION}={sha}")
            fs.makedirs(posixpath.dirname(final), exist_ok=True)
            if fs.exists(final):
                if name == "manifest":  # another task of the batch got there first
                    return False
                fs.rm(final, recursive=True)
            _rename(fs, posixpath.join(stage, name), final)
    except FileExistsError:
        return False
    finally:
        if fs.exists(stage):
            fs.rm(stage, recursive=True)
    return True


def _rename(fs: AbstractFileSystem, src: str, dst: str) -> None:
    """Move a directory into place: one ``rename`` on a local disk (atomic), the file
    system's move elsewhere."""
    if _is_local(fs):
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno in (39, 17):  # ENOTEMPTY, EEXIST: put there by another task
                raise FileExistsError(dst) from exc
            raise
    else:
        fs.mv(src, dst, recursive=True)


# -- one task ----------------------------------------------------------------------------------


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@contextlib.contextmanager
def _local_copy(fs: AbstractFileSystem, path: str) -> Iterator[str]:
    """A local path of the capture: itself on a local disk, else a temporary copy."""
    if _is_local(fs):
        yield path
        return
    import tempfile
    fd, tmp = tempfile.mkstemp(prefix="marsad-capture-")
    os.close(fd)
    try:
        fs.get_file(path, tmp)
        yield tmp
    finally:
        os.unlink(tmp)


def run_task(task: Task) -> Outcome:
    """Bring one capture into the dataset (see the module's docstring). Never raises
    for the capture's own faults: they are its outcome and its manifest row."""
    t0 = time.monotonic()
    started = time.time()
    src_fs, src = _fs(task.source)
    out_fs, root = _fs(task.out)
    worker = _worker_name()
    s = task.settings
    try:
        size = int(src_fs.size(src))
        with _local_copy(src_fs, src) as local:
            sha = capture_sha256(local)
            hash_s = time.monotonic() - t0
            prev = _recorded(out_fs, root, sha)
            if prev is not None and _same_run(prev, task):
                return Outcome(task.source,
                               "skipped" if prev["path"] == task.source else "duplicate",
                               sha, size, prev["error"], prev["packets"] or 0,
                               time.monotonic() - t0, _peak_rss(), worker, prev["status"])
            tables, meta = _analyse(local, s)
    except OSError as exc:
        return Outcome(task.source, "unreadable", None, 0, f"{task.source}: {_os_error(exc)}",
                       0, time.monotonic() - t0, _peak_rss(), worker)
    except Exception as exc:  # a fault of ours, not the capture's: not recorded, retried
        return Outcome(task.source, "error", None, 0,
                       f"{task.source}: internal error: {type(exc).__name__}: {exc}",
                       0, time.monotonic() - t0, _peak_rss(), worker)
    analysis_s = time.monotonic() - t0
    status = meta.pop("status")
    if meta.get("error"):
        error = meta["error"].replace(local, task.source)
        meta["error"] = error if error.startswith(task.source) else f"{task.source}: {error}"
    manifest = {"path": task.source, "size_bytes": size, "status": status,
                "started_at": started, "hash_s": round(hash_s, 6),
                "analysis_s": round(analysis_s - hash_s, 6),
                "marsad_version": task.version, "policy_sha256": s.policy_sha256(),
                "settings_sha256": s.settings_sha256(), "command": s.command,
                "worker": worker, **meta}
    tables["manifest"] = _table([manifest], MANIFEST_SCHEMA)
    try:
        committed = _commit(out_fs, root, sha, tables, task)
    except OSError as exc:  # the dataset cannot be written: nothing recorded, retried
        return Outcome(task.source, "error", sha, size,
                       f"{task.out}: cannot write the dataset: {_os_error(exc)}", 0,
                       time.monotonic() - t0, _peak_rss(), worker)
    return Outcome(task.source, status if committed else "duplicate", sha, size,
                   manifest.get("error"), meta.get("packets") or 0,
                   time.monotonic() - t0, _peak_rss(), worker,
                   None if committed else status)


def _analyse(path: str, s: Settings) -> tuple[dict[str, pa.Table], dict[str, Any]]:
    """The tables of one local capture file, and its manifest fields."""
    from classifier.payloads import meter_config
    config = meter_config(**s.meter)
    try:
        if s.command == "flows":
            reader = FlowReader(path, config, workers=1)
            rows = list(reader.conn_rows())
            for r in rows:
                r["icmp"] = _json(r.get("icmp"))
            tables = {"flows": _table(rows, CONN_SCHEMA)}
            st, stats, calls = reader.status, reader.stats, 0
        else:
            result = analyze_capture(path, policy=s.policy, config=config, workers=1,
                                     fingerprints=s.fingerprints, hash_capture=False,
                                     pipeline=s.pipeline)
            tables = result_tables(result)
            st, stats, calls = result.status, result.stats, len(result.analysis.calls)
    except CaptureError as exc:
        return {}, {"status": "unreadable", "error": str(exc)}
    meta = {"status": "ok" if st.complete else "damaged",
            "error": None if st.complete else f"{st.message}; rows before byte "
                                              f"{st.stopped_at}",
            "format": st.format, "compressed": st.compressed, "packets": stats.packets,
            "flows": tables["flows"].num_rows, "calls": calls, "weirds": stats.weird,
            "stopped_at": st.stopped_at}
    return tables, meta


def _os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


# -- executors and the batch --------------------------------------------------------------------


class _InProcess(Executor):
    """Runs each task in this process when it is submitted (``--jobs 1``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            fut.set_exception(exc)
        return fut


def make_executor(jobs: int, scheduler: str | None = None, *, fork: bool = False) -> Executor:
    """Where tasks run: a Dask cluster's workers (``scheduler``: ``tcp://HOST:PORT`` or a
    scheduler file), ``jobs`` local processes, or this process for one job.

    Local processes are started fresh (``spawn``), or with ``fork`` as copies of this
    process, which then start at once with the analysis loaded; only a process with no
    other thread running may fork (the command line before its progress display, not the
    service)."""
    if scheduler is not None:
        from distributed import Client
        client = (Client(scheduler_file=scheduler) if os.path.isfile(scheduler)  # type: ignore[no-untyped-call]
                  else Client(scheduler))  # type: ignore[no-untyped-call]
        return _DaskExecutor(client)
    if jobs <= 1:
        return _InProcess()
    import multiprocessing
    # Workers end when this process does (_end_with_parent).
    if fork:
        import classifier.engine  # noqa: F401 - loaded once, before the copies are made
        import policy.pipeline  # noqa: F401
    ctx = multiprocessing.get_context("fork" if fork else "spawn")
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                               initializer=_end_with_parent, initargs=(os.getpid(),))
    if fork:  # the first task forks every worker, while this process has no other thread
        pool.submit(int)
    return pool


def _end_with_parent(parent: int) -> None:
    """In a pool worker: end the process as soon as ``parent`` (the process that started
    the pool) is gone, however it ended (``kill -9`` included), rather than finish a
    batch nobody waits for. A daemon thread looks every half second."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="marsad-parent-watch", daemon=True).start()


class _DaskExecutor(Executor):
    """A Dask client's ``concurrent.futures`` executor; closes the client on shutdown."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._ex = client.get_executor(pure=False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        fut: Future[Any] = self._ex.submit(fn, *args, **kwargs)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._ex.shutdown(wait=wait)
        self.client.close()


@dataclass(slots=True)
class BatchSummary:
    """What a batch did, capture by capture."""

    outcomes: list[Outcome] = field(default_factory=list)
    removed: int = 0
    """Partitions an interrupted batch had left, removed before this one."""
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Captures this batch gave ``status``."""
        return sum(o.status == status for o in self.outcomes)

    def held(self, status: str) -> int:
        """Captures the dataset holds with ``status`` (``ok``, ``damaged``, ``unreadable``),
        whether this batch or an earlier one analysed them."""
        return sum((o.recorded or o.status) == status for o in self.outcomes)


def run_batch(sources: Sequence[str], out: str, settings: Settings, executor: Executor,
              on_done: Callable[[Outcome], None] | None = None) -> BatchSummary:
    """Every capture of ``sources`` into the dataset at ``out`` on ``executor``.
    ``on_done`` sees each outcome as it comes (progress)."""
    t0 = time.monotonic()
    summary = BatchSummary(removed=prepare_output(out))
    version = marsad_version()
    futures = {executor.submit(run_task, Task(src, out, settings, version)): src
               for src in sources}
    for fut in as_completed(futures):
        try:
            outcome: Outcome = fut.result()
        except Exception as exc:  # the worker process was lost (killed, out of memory)
            outcome = Outcome(futures[fut], "error", None, 0,
                              f"{futures[fut]}: the task was lost: {type(exc).__name__}: "
                              f"{exc}")
        summary.outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    fs, root = _fs(out)
    staging = posixpath.join(root, _STAGING)
    if fs.exists(staging):  # every task is done with it
        fs.rm(staging, recursive=True)
    summary.seconds = time.monotonic() - t0
    return summary


# -- the service -------------------------------------------------------------------------------


def register_dataset(store: Store, out: str) -> list[str]:
    """Put the captures of the dataset at ``out`` in the service's store (each once: a
    capture whose content is stored already is left alone), so the API and the dashboard
    list their flows, calls and verdicts. Captures that could not be read are not stored.
    The stored capture's path names the dataset, not a file: the store's retention
    deletes files of the captures it prunes, never the archive's. Captures a ``marsad
    flows --out`` task wrote are not stored either: they hold conn.log columns only, no
    classification, call or verdict (a warning says how many). Returns the ids added."""
    added = []
    flows_only = 0
    for row in read_table(out, "manifest").to_pylist():
        sha = row[PARTITION]
        if row.get("command") == "flows":
            flows_only += 1
            continue
        if row["status"] == "unreadable" or store.capture_by_sha256(sha) is not None:
            continue
        flows = rows_as_json("flows", read_table(out, "flows", [sha]).to_pylist())
        calls = rows_as_json("calls", read_table(out, "calls", [sha]).to_pylist())
        evidence: dict[str, list[dict[str, Any]]] = {}
        for e in read_table(out, "evidence", [sha]).to_pylist():
            if e["subject"] == "flow":
                d = {k: e[k] for k in ("rule", "reason", "flow_uids", "frames", "first_ts",
                                       "last_ts", "figures", "text")}
                d["figures"] = json.loads(d["figures"])
                evidence.setdefault(e["uid"], []).append(d)
        flow_verdicts = {v["uid"]: {"verdict": v["verdict"], "reasons": v["reasons"],
                                    "evidence": evidence.get(v["uid"], [])}
                         for v in read_table(out, "verdicts", [sha]).to_pylist()
                         if v["subject"] == "flow"}
        capture_id = "D" + sha[:16]
        store.add_capture(capture_id=capture_id, filename=posixpath.basename(row["path"])[:255],
                          path=f"dataset:{out}#{sha}", sha256=sha,
                          size_bytes=row["size_bytes"] or 0)
        store.start_job(capture_id)
        times = [f["first_ts"] for f in flows] + [f["last_ts"] for f in flows]
        summary = {
            "format": row["format"], "compressed": row["compressed"], "packets": row["packets"],
            "flows": len(flows), "calls": len(calls), "weirds": row["weirds"],
            "complete": row["status"] == "ok", "stopped_at": row["stopped_at"],
            "message": row["error"], "first_ts": min(times) if times else None,
            "last_ts": max(times) if times else None,
            "verdicts": _counts(c["verdict"] for c in calls),
            "flow_verdicts": _counts(v["verdict"] for v in flow_verdicts.values()),
            "ledger_entries": 0, "warnings": [f"from the dataset {out}"], "dataset": out}
        store.save_rows(capture_id, flows, calls, flow_verdicts, summary)
        added.append(capture_id)
    if flows_only:
        log.warning("dataset %s: %d capture(s) written by marsad flows --out (conn.log "
                    "columns, no analysis) not registered; marsad analyze --out analyses them",
                    out, flows_only)
    return added


def dataset_capture_file(stored_path: str) -> str | None:
    """The capture file a capture registered from a dataset (:func:`register_dataset`,
    stored path ``dataset:DIR#SHA256``) came from, when the file the dataset's manifest
    names is still there, local, with that SHA-256; None otherwise (or for any other
    stored path)."""
    if not stored_path.startswith("dataset:"):
        return None
    out, _, sha = stored_path[len("dataset:"):].rpartition("#")
    try:
        rows = read_table(out, "manifest", [sha]).to_pylist()
    except (OSError, ValueError):
        return None
    for row in rows:
        path = row.get("path")
        if (isinstance(path, str) and "://" not in path and os.path.isfile(path)
                and capture_sha256(path) == sha):
            return path
    return None


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
