"""An append-only, hash-chained evidence ledger in SQLite.

Every verdict the system reaches is appended as one :class:`LedgerEntry`:
which capture (its SHA-256), which call or flow (``subject_uid``), the verdict,
its reason codes and the evidence (flow uids, frame numbers, timestamps,
figures). Entries are chained: each stores the hash of the one before it.

Canonical encoding (what ``entry_hash`` covers)
-----------------------------------------------
``entry_hash = SHA-256(canonical(body))`` in lowercase hex, where ``body`` is the
JSON object with exactly these keys::

    seq, recorded_at, capture_sha256, subject_uid, verdict, reasons, evidence, prev_hash

and ``canonical(x)`` is ``json.dumps(x, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8: keys sorted by code
point at every depth, no insignificant whitespace, non-ASCII characters as
themselves, integers in decimal, floats in Python's shortest round-trip form,
NaN and infinities refused. ``reasons`` and ``evidence`` are embedded as JSON
values, not as strings. The first entry's ``prev_hash`` is 64 zeros
(:data:`GENESIS_HASH`). ``recorded_at`` is UTC ISO 8601 with microseconds and a
``Z`` suffix, taken from the injected clock.

Storage and crash safety
------------------------
The database runs in WAL mode with ``synchronous=FULL``. An append (of one
entry, or of a batch) is one ``BEGIN IMMEDIATE`` transaction that reads the tail
and inserts the next entries, so two writers (threads or processes) are
serialised by SQLite's write lock and a crash leaves either the whole batch or
nothing: the chain cannot fork or break. Triggers refuse ``UPDATE`` and ``DELETE``
on the table.

What verification can and cannot see
-------------------------------------
:meth:`Ledger.verify` recomputes every hash and walks the links; anyone who can
edit the file can drop the triggers, so edits, deletions, reordering and
insertions all show up as :class:`Problem` records. An unkeyed chain cannot
detect a rewrite of the whole tail from some entry on, or the loss of the last
entries: publish :meth:`Ledger.anchor` elsewhere and pass it back to ``verify``
for that, and pass a re-derivation callable so each stored verdict is checked
against the packets of its capture.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum, IntEnum
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

from policy.errors import EntryRejected, LedgerFormatError

__all__ = [
    "DERIVATION_KEYS",
    "FORMAT_VERSION",
    "GENESIS_HASH",
    "Anchor",
    "Derivation",
    "Deriver",
    "Ledger",
    "LedgerEntry",
    "NewEntry",
    "Problem",
    "ProblemKind",
    "VerifyReport",
    "canonical_json",
    "derivation_context",
    "entry_hash",
]

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first entry."""
FORMAT_VERSION = 1
"""Stored in ``PRAGMA user_version``; a file with another version is refused."""

_HEX64 = re.compile(r"[0-9a-f]{64}")

_SCHEMA = (
    """CREATE TABLE entries (
    seq            INTEGER PRIMARY KEY,
    recorded_at    TEXT NOT NULL,
    capture_sha256 TEXT NOT NULL,
    subject_uid    TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    reasons        TEXT NOT NULL,
    evidence       TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    entry_hash     TEXT NOT NULL UNIQUE
    )""",
    "CREATE INDEX entries_capture ON entries (capture_sha256)",
    """CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
    """CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END""",
)
"""Statements creating a version-1 ledger (run in one transaction)."""

_COLUMNS = ("seq, recorded_at, capture_sha256, subject_uid, verdict, reasons, evidence, "
            "prev_hash, entry_hash")


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays, tuples of enums...: reduce to plain JSON values.
    if isinstance(value, Enum):
        return value.name
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def canonical_json(value: Any) -> str:
    """The canonical JSON text described in the module docstring."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=_json_default)


def entry_hash(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical encoding of an entry body (all fields but the hash)."""
    return hashlib.sha256(canonical_json(dict(body)).encode("utf-8")).hexdigest()


def _code(value: str | Enum) -> str:
    return value.name if isinstance(value, Enum) else str(value)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One recorded verdict with its evidence."""

    seq: int
    """Position in the ledger, 1..n without gaps."""
    recorded_at: str
    """When it was appended: UTC ISO 8601 with microseconds and ``Z``."""
    capture_sha256: str
    """SHA-256 (hex) of the capture file the verdict was derived from."""
    subject_uid: str
    """The call or flow uid the verdict is about."""
    verdict: str
    """Verdict name (e.g. ``BLOCKED``)."""
    reasons: tuple[str, ...]
    """Reason code names, in the order the rules produced them."""
    evidence: dict[str, Any]
    """JSON evidence: flow uids, frame numbers, timestamps, figures."""
    prev_hash: str
    """``entry_hash`` of the entry before (``GENESIS_HASH`` for the first)."""
    entry_hash: str
    """SHA-256 of the canonical encoding of every other field."""

    def body(self) -> dict[str, Any]:
        """The hashed fields as a JSON-ready dict."""
        return {"seq": self.seq, "recorded_at": self.recorded_at,
                "capture_sha256": self.capture_sha256, "subject_uid": self.subject_uid,
                "verdict": self.verdict, "reasons": list(self.reasons),
                "evidence": self.evidence, "prev_hash": self.prev_hash}

    def to_dict(self) -> dict[str, Any]:
        return {**self.body(), "entry_hash": self.entry_hash}


class NewEntry(NamedTuple):
    """What :meth:`Ledger.append_many` is given for one entry (the ledger adds the rest:
    its number, time and hashes)."""

    capture_sha256: str
    """The capture whose packets the verdict rests on."""
    subject_uid: str
    """The call or flow judged."""
    verdict: str | Enum
    """The verdict."""
    reasons: tuple[str | Enum, ...]
    """Its reasons."""
    evidence: Mapping[str, Any]
    """Its evidence (canonical JSON once stored)."""


@dataclass(frozen=True, slots=True)
class Anchor:
    """A published checkpoint: the ledger had at least ``seq`` entries, the last hashing to this."""

    seq: int
    """Position of the checkpointed entry."""
    entry_hash: str
    """Its hash at the time."""

    def __str__(self) -> str:
        """``SEQ:SHA256``, as ``marsad verify --anchor`` reads it."""
        return f"{self.seq}:{self.entry_hash}"


@dataclass(frozen=True, slots=True)
class Derivation:
    """What the pipeline concludes, re-run on a capture, about one subject."""

    subject_uid: str
    """The call or flow uid."""
    verdict: str | Enum
    """The verdict (enum members compare by name)."""
    reasons: tuple[str | Enum, ...]
    """Reason codes, in order."""


Deriver = Callable[[str, Mapping[str, Any]], Iterable[Derivation] | None]
"""Given a capture's SHA-256 and a derivation context (:func:`derivation_context`),
re-derive its verdicts; ``None`` if the capture is unavailable."""

DERIVATION_KEYS = ("settings", "ring")
"""Keys of an entry's evidence that say how its verdict was derived, besides the capture
and the policy: the analysis settings other than the defaults, and the live capture's ring
files the subject's frames span. Entries are re-derived in groups of the same."""


def derivation_context(entry: LedgerEntry) -> dict[str, Any]:
    """How ``entry``'s verdict was derived (:data:`DERIVATION_KEYS` of its evidence)."""
    return {k: entry.evidence[k] for k in DERIVATION_KEYS if k in entry.evidence}


class ProblemKind(IntEnum):
    """What :meth:`Ledger.verify` can find wrong."""

    CONTENT_MISMATCH = 1
    """The stored fields no longer hash to ``entry_hash``: the entry was edited."""
    SEQ_GAP = 2
    """Sequence numbers are missing: entries were deleted."""
    BROKEN_LINK = 3
    """``prev_hash`` names no entry in the ledger: its predecessor was deleted or rewritten."""
    OUT_OF_ORDER = 4
    """``prev_hash`` names an existing entry other than ``seq − 1``: entries were reordered."""
    FORK = 5
    """Two entries name the same predecessor: one was inserted."""
    BAD_GENESIS = 6
    """The first entry does not start the chain, or a later one claims to."""
    UNREADABLE = 7
    """A stored field is not valid JSON of the right shape."""
    ANCHOR_MISMATCH = 8
    """The anchored entry is missing or hashes differently: the tail was cut or rewritten."""
    DERIVATION_MISMATCH = 9
    """Re-deriving the capture gives another verdict or other reasons for the subject."""
    NOT_DERIVED = 10
    """Re-deriving the capture gives no verdict at all for the subject."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :meth:`Ledger.verify`."""

    kind: ProblemKind
    """What is wrong."""
    seq: int
    """Sequence number (position) where it was found."""
    detail: str
    """Human-readable explanation."""


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of walking the whole ledger."""

    entries: int
    """Entries read."""
    problems: tuple[Problem, ...]
    """Every problem found, ordered by position."""
    captures_checked: tuple[str, ...] = ()
    """Captures whose verdicts were re-derived."""
    captures_unavailable: tuple[str, ...] = ()
    """Captures the deriver could not re-run (their entries are unchecked)."""

    @property
    def ok(self) -> bool:
        """True if no problem was found."""
        return not self.problems

    def at(self, seq: int) -> tuple[Problem, ...]:
        """Problems found at one position."""
        return tuple(p for p in self.problems if p.seq == seq)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Ledger:
    """The evidence ledger stored at ``path`` (created on first use).

    ``clock`` returns seconds since the epoch; tests pass a fixed one. The object
    may be shared between threads; each process should open its own.
    """

    def __init__(self, path: str | Path, *, clock: Callable[[], float],
                 timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._clock = clock
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                   check_same_thread=False)
        try:
            self._setup()
        except BaseException:
            self._db.close()
            raise

    def _setup(self) -> None:
        db = self._db
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise LedgerFormatError(f"{self.path}: not an SQLite database ({exc})") from exc
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        if version not in (0, FORMAT_VERSION):
            raise LedgerFormatError(f"{self.path}: ledger format {version}, "
                                    f"this code reads {FORMAT_VERSION}")
        if version == 0:
            db.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have created it while we waited for the lock.
                if db.execute("PRAGMA user_version").fetchone()[0] == 0:
                    if db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0]:
                        raise LedgerFormatError(f"{self.path}: not empty and not a ledger")
                    for statement in _SCHEMA:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- writing ---------------------------------------------------------------------------

    def append(self, *, capture_sha256: str, subject_uid: str, verdict: str | Enum,
               reasons: Sequence[str | Enum], evidence: Mapping[str, Any]) -> LedgerEntry:
        """Append one entry atomically and return it as stored."""
        (entry,) = self.append_many([NewEntry(capture_sha256, subject_uid, verdict,
                                              tuple(reasons), evidence)])
        return entry

    def append_many(self, items: Sequence[NewEntry]) -> list[LedgerEntry]:
        """Append entries in order, in one transaction (all of them or none: a crash
        leaves the chain as it was before), and return them as stored. One commit, so
        one flush to disk, for a batch of verdicts instead of one each. Every entry is
        checked before any is written: one that cannot be stored rejects the batch."""
        checked = []
        for item in items:
            if not _HEX64.fullmatch(item.capture_sha256):
                raise EntryRejected(f"capture_sha256 must be 64 lowercase hex digits, "
                                    f"got {item.capture_sha256!r}")
            if not item.subject_uid:
                raise EntryRejected("subject_uid is empty")
            try:
                # Round-trip once so the stored evidence is exactly what was hashed.
                evidence_json = canonical_json(dict(item.evidence))
            except (TypeError, ValueError) as exc:
                raise EntryRejected(f"evidence is not canonical JSON: {exc}") from exc
            checked.append((item, tuple(_code(r) for r in item.reasons), evidence_json,
                            json.loads(evidence_json)))
        if not checked:
            return []
        out: list[LedgerEntry] = []
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
                seq, prev = (0, GENESIS_HASH) if row is None else (row[0], row[1])
                for item, reason_codes, evidence_json, evidence_value in checked:
                    seq += 1
                    entry = LedgerEntry(seq=seq, recorded_at=_iso(self._clock()),
                                        capture_sha256=item.capture_sha256,
                                        subject_uid=item.subject_uid,
                                        verdict=_code(item.verdict), reasons=reason_codes,
                                        evidence=evidence_value, prev_hash=prev,
                                        entry_hash="")
                    digest = entry_hash(entry.body())
                    db.execute(
                        f"INSERT INTO entries ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, entry.recorded_at, item.capture_sha256, item.subject_uid,
                         entry.verdict, canonical_json(list(reason_codes)), evidence_json,
                         prev, digest))
                    out.append(replace(entry, entry_hash=digest))
                    prev = digest
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return out

    # -- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def entries(self, *, start: int = 1, limit: int = -1,
                capture_sha256: str | None = None) -> list[LedgerEntry]:
        """Entries from ``seq >= start`` in order, optionally only one capture's."""
        sql = f"SELECT {_COLUMNS} FROM entries WHERE seq >= ?"
        args: list[Any] = [start]
        if capture_sha256 is not None:
            sql += " AND capture_sha256 = ?"
            args.append(capture_sha256)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_entry(r) for r in rows]

    def get(self, seq: int) -> LedgerEntry | None:
        """The entry at ``seq``, if any."""
        found = self.entries(start=seq, limit=1)
        return found[0] if found and found[0].seq == seq else None

    def anchor(self) -> Anchor | None:
        """A checkpoint of the current tail, to publish outside the ledger."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, entry_hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else Anchor(seq=row[0], entry_hash=row[1])

    # -- verification ----------------------------------------------------------------------

    def verify(self, derive: Deriver | None = None, *,
               anchor: Anchor | None = None) -> VerifyReport:
        """Walk the chain and report every problem with its position.

        ``derive`` is called once per capture; each
        stored verdict must equal the derived one for its subject.
        """
        with self._lock:
            # One statement reads one consistent snapshot, even with writers active.
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY seq").fetchall()
        problems: list[Problem] = []
        parsed: list[LedgerEntry | None] = []
        for row in rows:
            entry = _try_entry(row)
            parsed.append(entry)
            if entry is None:
                problems.append(Problem(ProblemKind.UNREADABLE, row[0],
                                        "reasons or evidence is not valid JSON of the right "
                                        "shape"))
            elif entry_hash(entry.body()) != entry.entry_hash:
                problems.append(Problem(ProblemKind.CONTENT_MISMATCH, entry.seq,
                                        "stored fields do not hash to entry_hash"))
        problems += _link_problems(rows)
        if anchor is not None:
            problems += _anchor_problems(rows, anchor)
        checked: list[str] = []
        unavailable: list[str] = []
        if derive is not None:
            problems += _derivation_problems([e for e in parsed if e is not None], derive,
                                             checked, unavailable)
        problems.sort(key=lambda p: (p.seq, p.kind))
        return VerifyReport(entries=len(rows), problems=tuple(problems),
                            captures_checked=tuple(checked),
                            captures_unavailable=tuple(unavailable))

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _entry(row: Sequence[Any]) -> LedgerEntry:
    return LedgerEntry(seq=row[0], recorded_at=row[1], capture_sha256=row[2],
                       subject_uid=row[3], verdict=row[4], reasons=tuple(json.loads(row[5])),
                       evidence=json.loads(row[6]), prev_hash=row[7], entry_hash=row[8])


def _try_entry(row: Sequence[Any]) -> LedgerEntry | None:
    try:
        entry = _entry(row)
    except (TypeError, ValueError):
        return None
    if not isinstance(entry.evidence, dict) or not all(isinstance(r, str)
                                                        for r in entry.reasons):
        return None
    return entry


def _link_problems(rows: Sequence[Sequence[Any]]) -> list[Problem]:
    """Seq continuity and prev_hash links, rows ordered by seq."""
    out: list[Problem] = []
    seq_of = {r[8]: r[0] for r in rows}
    claims = Counter(r[7] for r in rows)
    claimed_before: set[str] = set()
    expected_seq = 1
    prev_row: Sequence[Any] | None = None
    for row in rows:
        seq, prev_hash = row[0], row[7]
        if seq != expected_seq:
            out.append(Problem(ProblemKind.SEQ_GAP, expected_seq,
                               f"entries {expected_seq}..{seq - 1} are missing"))
        if seq == 1 or prev_hash == GENESIS_HASH:
            if seq != 1 or prev_hash != GENESIS_HASH:
                out.append(Problem(ProblemKind.BAD_GENESIS, seq,
                                   "only entry 1 may, and entry 1 must, start from the "
                                   "genesis hash"))
        elif prev_row is not None and prev_row[0] == seq - 1 and prev_hash == prev_row[8]:
            pass
        elif prev_hash in seq_of:
            out.append(Problem(ProblemKind.OUT_OF_ORDER, seq,
                               f"chained after entry {seq_of[prev_hash]}, not {seq - 1}"))
        elif prev_row is not None and prev_row[0] == seq - 1:
            out.append(Problem(ProblemKind.BROKEN_LINK, seq,
                               f"prev_hash does not match entry {seq - 1}, nor any entry"))
        else:
            out.append(Problem(ProblemKind.BROKEN_LINK, seq,
                               "prev_hash points to an entry that is not in the ledger"))
        if claims[prev_hash] > 1 and prev_hash in claimed_before:
            out.append(Problem(ProblemKind.FORK, seq,
                               "another entry already chains after the same predecessor"))
        claimed_before.add(prev_hash)
        expected_seq = seq + 1
        prev_row = row
    return out


def _anchor_problems(rows: Sequence[Sequence[Any]], anchor: Anchor) -> list[Problem]:
    for row in rows:
        if row[0] == anchor.seq:
            if row[8] != anchor.entry_hash:
                return [Problem(ProblemKind.ANCHOR_MISMATCH, anchor.seq,
                                "entry hash differs from the published anchor")]
            return []
    return [Problem(ProblemKind.ANCHOR_MISMATCH, anchor.seq,
                    "the anchored entry is missing: the ledger was cut")]


def _derivation_problems(entries: Sequence[LedgerEntry], derive: Deriver, checked: list[str],
                         unavailable: list[str]) -> list[Problem]:
    out: list[Problem] = []
    derived: dict[tuple[str, str], dict[str, Derivation] | None] = {}
    for entry in entries:
        cap = entry.capture_sha256
        context = derivation_context(entry)
        key = (cap, canonical_json(context))
        if key not in derived:
            result = derive(cap, context)
            derived[key] = None if result is None else {d.subject_uid: d for d in result}
            seen = unavailable if result is None else checked
            if cap not in seen:
                seen.append(cap)
        table = derived[key]
        if table is None:
            continue
        d = table.get(entry.subject_uid)
        if d is None:
            out.append(Problem(ProblemKind.NOT_DERIVED, entry.seq,
                               f"the capture yields no verdict for {entry.subject_uid}"))
            continue
        want_verdict = _code(d.verdict)
        want_reasons = tuple(_code(r) for r in d.reasons)
        if want_verdict != entry.verdict or want_reasons != entry.reasons:
            out.append(Problem(ProblemKind.DERIVATION_MISMATCH, entry.seq,
                               f"stored {entry.verdict} {list(entry.reasons)}, capture gives "
                               f"{want_verdict} {list(want_reasons)}"))
    return out
