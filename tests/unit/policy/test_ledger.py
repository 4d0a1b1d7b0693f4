"""Evidence ledger: canonical hashing, append-only storage and tamper detection."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from enum import IntEnum
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policy.errors import EntryRejected, LedgerFormatError
from policy.ledger import (
    GENESIS_HASH,
    Derivation,
    Ledger,
    Problem,
    ProblemKind,
    entry_hash,
)

CAP_A = hashlib.sha256(b"capture A").hexdigest()
CAP_B = hashlib.sha256(b"capture B").hexdigest()
FIXED_T = 1_704_067_200.0  # 2024-01-01T00:00:00Z


def fixed_clock() -> float:
    return FIXED_T


class Verdict(IntEnum):
    OK = 0
    BLOCKED = 1
    THROTTLED = 2


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "evidence.db", clock=fixed_clock) as led:
        yield led


def fill(led: Ledger, n: int) -> None:
    for i in range(1, n + 1):
        led.append(capture_sha256=CAP_A, subject_uid=f"C{i}", verdict="BLOCKED",
                   reasons=["NO_MEDIA"], evidence={"flows": [f"F{i}"], "frames": [i, i + 1]})


def attacker(path: Path) -> sqlite3.Connection:
    """Open the file directly and remove the append-only triggers, as an attacker would."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("DROP TRIGGER entries_no_delete")
    return db


def kinds_at(problems: tuple[Problem, ...]) -> list[tuple[ProblemKind, int]]:
    return [(p.kind, p.seq) for p in problems]


# -- encoding ----------------------------------------------------------------------------------


def test_first_entry_hash_known_answer(ledger: Ledger) -> None:
    e = ledger.append(capture_sha256=CAP_A, subject_uid="C1", verdict=Verdict.BLOCKED,
                      reasons=["NO_MEDIA", "ICMP_PROHIBITED"],
                      evidence={"uids": ["Fa", "Fb"], "frames": [3, 9], "loss_ratio": 0.25,
                                "note": "café"})
    # Written out by hand: sorted keys, no whitespace, UTF-8, reasons/evidence as JSON values.
    text = ('{"capture_sha256":"' + CAP_A + '","evidence":{"frames":[3,9],"loss_ratio":0.25,'
            '"note":"café","uids":["Fa","Fb"]},"prev_hash":"' + "0" * 64 + '",'
            '"reasons":["NO_MEDIA","ICMP_PROHIBITED"],'
            '"recorded_at":"2024-01-01T00:00:00.000000Z","seq":1,"subject_uid":"C1",'
            '"verdict":"BLOCKED"}')
    assert e.entry_hash == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert e.prev_hash == GENESIS_HASH and e.seq == 1 and e.verdict == "BLOCKED"
    assert ledger.get(1) == e


def test_chain_links_and_reading(ledger: Ledger) -> None:
    fill(ledger, 5)
    entries = ledger.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    for before, after in pairwise(entries):
        assert after.prev_hash == before.entry_hash
        assert entry_hash(after.body()) == after.entry_hash
    assert len(ledger) == 5
    assert [e.seq for e in ledger.entries(start=3, limit=2)] == [3, 4]
    assert ledger.get(9) is None
    anchor = ledger.anchor()
    assert anchor is not None and anchor.seq == 5 and anchor.entry_hash == entries[-1].entry_hash
    assert ledger.verify().ok


def test_evidence_numpy_values_are_stored_as_plain_json(ledger: Ledger) -> None:
    e = ledger.append(capture_sha256=CAP_A, subject_uid="C1", verdict="THROTTLED", reasons=[],
                      evidence={"frames": np.arange(3), "jitter_s": np.float64(0.0125),
                                "pkts": np.int64(7)})
    assert e.evidence == {"frames": [0, 1, 2], "jitter_s": 0.0125, "pkts": 7}
    assert ledger.verify().ok


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"capture_sha256": "XYZ"}, "64 lowercase hex"),
    ({"capture_sha256": CAP_A.upper()}, "64 lowercase hex"),
    ({"subject_uid": ""}, "subject_uid"),
    ({"evidence": {"x": float("nan")}}, "canonical JSON"),
    ({"evidence": {"x": object()}}, "canonical JSON"),
])
def test_invalid_entries_are_rejected(ledger: Ledger, kwargs: dict[str, object],
                                      match: str) -> None:
    args: dict[str, object] = {"capture_sha256": CAP_A, "subject_uid": "C1",
                               "verdict": "OK", "reasons": [], "evidence": {}}
    args.update(kwargs)
    with pytest.raises(EntryRejected, match=match):
        ledger.append(**args)  # type: ignore[arg-type]
    assert len(ledger) == 0


# -- storage -----------------------------------------------------------------------------------


def test_triggers_refuse_update_and_delete(ledger: Ledger) -> None:
    fill(ledger, 2)
    db = sqlite3.connect(ledger.path, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE entries SET verdict = 'OK' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM entries WHERE seq = 2")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert ledger.verify().ok and len(ledger) == 2


def test_reopen_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    with Ledger(path, clock=fixed_clock) as led:
        fill(led, 3)
    with Ledger(path, clock=lambda: FIXED_T + 60) as led:
        e = led.append(capture_sha256=CAP_B, subject_uid="C9", verdict="OK", reasons=[],
                       evidence={})
        assert e.seq == 4 and e.recorded_at == "2024-01-01T00:01:00.000000Z"
        assert led.verify().ok


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all, just bytes" * 10)
    with pytest.raises(LedgerFormatError, match="not an SQLite database"):
        Ledger(junk, clock=fixed_clock)
    other = tmp_path / "other.db"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(LedgerFormatError, match="not a ledger"):
        Ledger(other, clock=fixed_clock)
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 7")
    db.close()
    with pytest.raises(LedgerFormatError, match="format 7"):
        Ledger(newer, clock=fixed_clock)


def test_threads_share_one_ledger_without_forking(ledger: Ledger) -> None:
    def work(k: int) -> None:
        for i in range(25):
            ledger.append(capture_sha256=CAP_A, subject_uid=f"T{k}-{i}", verdict="OK",
                          reasons=[], evidence={"i": i})

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ledger) == 100
    assert ledger.verify().ok


# -- tampering ---------------------------------------------------------------------------------


def test_edited_entry_is_found_at_its_position(ledger: Ledger) -> None:
    fill(ledger, 6)
    db = attacker(ledger.path)
    db.execute("UPDATE entries SET verdict = 'OK' WHERE seq = 4")
    db.close()
    report = ledger.verify()
    assert kinds_at(report.problems) == [(ProblemKind.CONTENT_MISMATCH, 4)]


def test_edited_entry_with_recomputed_hash_breaks_the_next_link(ledger: Ledger) -> None:
    fill(ledger, 6)
    e = ledger.get(3)
    assert e is not None
    body = {**e.body(), "verdict": "OK"}
    db = attacker(ledger.path)
    db.execute("UPDATE entries SET verdict = 'OK', entry_hash = ? WHERE seq = 3",
               (entry_hash(body),))
    db.close()
    assert kinds_at(ledger.verify().problems) == [(ProblemKind.BROKEN_LINK, 4)]


def test_edited_evidence_json_is_found(ledger: Ledger) -> None:
    fill(ledger, 3)
    db = attacker(ledger.path)
    db.execute("""UPDATE entries SET evidence = '{"flows":["F2"],"frames":[2,4]}' WHERE seq = 2""")
    db.execute("UPDATE entries SET reasons = 'not json' WHERE seq = 3")
    db.close()
    assert kinds_at(ledger.verify().problems) == [(ProblemKind.CONTENT_MISMATCH, 2),
                                                  (ProblemKind.UNREADABLE, 3)]


def test_deleted_entry_is_found_at_its_position(ledger: Ledger) -> None:
    fill(ledger, 6)
    db = attacker(ledger.path)
    db.execute("DELETE FROM entries WHERE seq = 3")
    db.close()
    report = ledger.verify()
    assert report.entries == 5
    assert kinds_at(report.problems) == [(ProblemKind.SEQ_GAP, 3), (ProblemKind.BROKEN_LINK, 4)]


def test_deleted_first_entry(ledger: Ledger) -> None:
    fill(ledger, 3)
    db = attacker(ledger.path)
    db.execute("DELETE FROM entries WHERE seq = 1")
    db.close()
    # The survivor at 2 points at an entry that no longer exists.
    assert kinds_at(ledger.verify().problems) == [(ProblemKind.SEQ_GAP, 1),
                                                  (ProblemKind.BROKEN_LINK, 2)]


def test_reordered_entries_are_found_at_their_positions(ledger: Ledger) -> None:
    fill(ledger, 6)
    db = attacker(ledger.path)
    # Swap entries 3 and 4 by renumbering them (seq is the row's position).
    db.execute("UPDATE entries SET seq = 100 WHERE seq = 3")
    db.execute("UPDATE entries SET seq = 3 WHERE seq = 4")
    db.execute("UPDATE entries SET seq = 4 WHERE seq = 100")
    db.close()
    problems = kinds_at(ledger.verify().problems)
    order = [(k, s) for k, s in problems if k is ProblemKind.OUT_OF_ORDER]
    # The entry now at 3 chains after 4, the one at 4 after 2, the one at 5 after 3.
    assert order == [(ProblemKind.OUT_OF_ORDER, 3), (ProblemKind.OUT_OF_ORDER, 4),
                     (ProblemKind.OUT_OF_ORDER, 5)]
    # seq is hashed, so both moved entries also fail their own hash.
    assert (ProblemKind.CONTENT_MISMATCH, 3) in problems
    assert (ProblemKind.CONTENT_MISMATCH, 4) in problems
    assert {s for _, s in problems} == {3, 4, 5}


def test_reordered_entries_with_recomputed_hashes(ledger: Ledger) -> None:
    # A careful attacker swaps 3 and 4 and re-hashes both: links still betray the order.
    fill(ledger, 6)
    e3, e4 = ledger.get(3), ledger.get(4)
    assert e3 is not None and e4 is not None
    db = attacker(ledger.path)
    db.execute("DELETE FROM entries WHERE seq IN (3, 4)")
    for new_seq, e in ((3, e4), (4, e3)):
        body = {**e.body(), "seq": new_seq}
        db.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (new_seq, e.recorded_at, e.capture_sha256, e.subject_uid, e.verdict,
                    json.dumps(list(e.reasons)), json.dumps(e.evidence), e.prev_hash,
                    entry_hash(body)))
    db.close()
    problems = kinds_at(ledger.verify().problems)
    # 3 points at the old 3, whose hash changed with its seq; 4 chains after 2; 5 points at
    # the old 4, re-hashed too.
    assert problems == [(ProblemKind.BROKEN_LINK, 3), (ProblemKind.OUT_OF_ORDER, 4),
                        (ProblemKind.BROKEN_LINK, 5)]
    assert {k for k, _ in problems} <= {ProblemKind.OUT_OF_ORDER, ProblemKind.BROKEN_LINK}
    assert {s for _, s in problems} == {3, 4, 5}


def test_inserted_forged_entry_is_found(ledger: Ledger) -> None:
    fill(ledger, 5)
    e2 = ledger.get(2)
    assert e2 is not None
    db = attacker(ledger.path)
    # Make room at 3 (moving 3..5 up) and insert a well-formed entry chained after 2.
    for s in (5, 4, 3):
        db.execute("UPDATE entries SET seq = ? WHERE seq = ?", (s + 1, s))
    body = {"seq": 3, "recorded_at": e2.recorded_at, "capture_sha256": CAP_A,
            "subject_uid": "C-forged", "verdict": "OK", "reasons": [], "evidence": {},
            "prev_hash": e2.entry_hash}
    db.execute("INSERT INTO entries VALUES (3, ?, ?, 'C-forged', 'OK', '[]', '{}', ?, ?)",
               (e2.recorded_at, CAP_A, e2.entry_hash, entry_hash(body)))
    db.close()
    problems = kinds_at(ledger.verify().problems)
    assert (ProblemKind.FORK, 4) in problems  # 3 and the old 3 (now 4) both follow 2
    assert (ProblemKind.OUT_OF_ORDER, 4) in problems
    assert {(ProblemKind.CONTENT_MISMATCH, s) for s in (4, 5, 6)} <= set(problems)
    assert (ProblemKind.CONTENT_MISMATCH, 3) not in problems  # the forgery is well-formed


def test_anchor_catches_a_cut_tail(ledger: Ledger) -> None:
    fill(ledger, 4)
    anchor = ledger.anchor()
    assert anchor is not None
    db = attacker(ledger.path)
    db.execute("DELETE FROM entries WHERE seq = 4")
    db.close()
    assert ledger.verify().ok  # an unkeyed chain alone cannot tell
    assert kinds_at(ledger.verify(anchor=anchor).problems) == [(ProblemKind.ANCHOR_MISMATCH, 4)]


# -- re-derivation -----------------------------------------------------------------------------


def test_derivation_checks_each_verdict_against_its_capture(ledger: Ledger) -> None:
    ledger.append(capture_sha256=CAP_A, subject_uid="C1", verdict=Verdict.BLOCKED,
                  reasons=["NO_MEDIA"], evidence={})
    ledger.append(capture_sha256=CAP_A, subject_uid="C2", verdict="THROTTLED",
                  reasons=["DELAY_PLATEAU"], evidence={})
    ledger.append(capture_sha256=CAP_B, subject_uid="C3", verdict="OK", reasons=[],
                  evidence={})
    ledger.append(capture_sha256=CAP_A, subject_uid="C4", verdict="OK", reasons=[],
                  evidence={})
    calls: list[str] = []

    def derive(sha: str, context: Mapping[str, Any]) -> list[Derivation] | None:
        assert context == {}  # no settings or ring recorded: the defaults
        calls.append(sha)
        if sha == CAP_B:
            return None  # capture no longer on disk
        return [Derivation("C1", Verdict.BLOCKED, ("NO_MEDIA",)),
                Derivation("C2", "THROTTLED", ("LOSS",))]

    report = ledger.verify(derive)
    assert calls == [CAP_A, CAP_B]  # once per capture
    assert kinds_at(report.problems) == [(ProblemKind.DERIVATION_MISMATCH, 2),
                                         (ProblemKind.NOT_DERIVED, 4)]
    assert report.captures_checked == (CAP_A,) and report.captures_unavailable == (CAP_B,)

    def honest(sha: str, context: Mapping[str, Any]) -> list[Derivation]:
        return [Derivation("C1", "BLOCKED", ("NO_MEDIA",)),
                Derivation("C2", "THROTTLED", ("DELAY_PLATEAU",)),
                Derivation("C3", "OK", ()), Derivation("C4", "OK", ())]

    assert ledger.verify(honest).ok


def test_a_batch_is_one_chain_and_the_same_as_one_at_a_time(tmp_path: Path) -> None:
    from policy.ledger import NewEntry

    items = [NewEntry(CAP_A if i % 2 else CAP_B, f"C{i}", Verdict.BLOCKED, ("NO_MEDIA",),
                      {"flows": [f"F{i}"], "n": i}) for i in range(1, 6)]
    with Ledger(tmp_path / "batch.db", clock=fixed_clock) as led:
        led.append(capture_sha256=CAP_A, subject_uid="C0", verdict="OK", reasons=[],
                   evidence={})
        batch = led.append_many(items)
        assert [e.seq for e in batch] == [2, 3, 4, 5, 6]
        assert led.verify().ok
        stored = led.entries()
    with Ledger(tmp_path / "single.db", clock=fixed_clock) as led:
        led.append(capture_sha256=CAP_A, subject_uid="C0", verdict="OK", reasons=[],
                   evidence={})
        for it in items:
            led.append(capture_sha256=it.capture_sha256, subject_uid=it.subject_uid,
                       verdict=it.verdict, reasons=it.reasons, evidence=it.evidence)
        assert led.entries() == stored  # the same entries, hashes and links
    assert stored[1:] == batch


def test_a_batch_with_one_bad_entry_stores_nothing(ledger: Ledger) -> None:
    from policy.ledger import NewEntry

    fill(ledger, 2)
    good = NewEntry(CAP_A, "C3", "BLOCKED", (), {"a": 1})
    with pytest.raises(EntryRejected):
        ledger.append_many([good, NewEntry(CAP_A, "C4", "BLOCKED", (), {"x": float("nan")})])
    with pytest.raises(EntryRejected):
        ledger.append_many([good, NewEntry("not hex", "C4", "BLOCKED", (), {})])
    assert len(ledger) == 2 and ledger.append_many([]) == []
    assert ledger.verify().ok


def test_entries_are_derived_in_groups_of_the_same_settings(tmp_path: Path) -> None:
    """Each entry is derived as it was made: entries of one capture with other recorded
    settings or ring files are another derivation (the capture counted once)."""
    ledger = Ledger(tmp_path / "ctx.db", clock=fixed_clock)
    ledger.append(capture_sha256=CAP_A, subject_uid="C1", verdict="BLOCKED",
                  reasons=["NO_MEDIA"], evidence={})
    ledger.append(capture_sha256=CAP_A, subject_uid="C2", verdict="BLOCKED",
                  reasons=["NO_MEDIA"], evidence={"settings": {"meter": {"udp_idle_s": 1}}})
    ledger.append(capture_sha256=CAP_A, subject_uid="C3", verdict="BLOCKED",
                  reasons=["NO_MEDIA"], evidence={"settings": {"meter": {"udp_idle_s": 1}},
                                                  "other": 1})
    seen: list[dict[str, Any]] = []

    def derive(sha: str, context: Mapping[str, Any]) -> list[Derivation]:
        seen.append(dict(context))
        uids = ("C1",) if not context else ("C2", "C3")
        return [Derivation(u, "BLOCKED", ("NO_MEDIA",)) for u in uids]

    report = ledger.verify(derive)
    assert report.ok, report.problems
    assert seen == [{}, {"settings": {"meter": {"udp_idle_s": 1}}}]
    assert report.captures_checked == (CAP_A,)
