"""api.store on the sample captures: migrations, results, filters, pages, jobs, retention."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from api.pipeline import AnalysisResult, analyze_capture
from api.store import MIGRATIONS, JobState, Query, SqliteStore, StoreError, open_store
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"


class Clock:
    """A settable clock."""

    def __init__(self, now: float = 1_700_100_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def blocked() -> AnalysisResult:
    return analyze_capture(CAPTURES / "sample-blocked.pcap", workers=1)


@pytest.fixture(scope="module")
def sip() -> AnalysisResult:
    return analyze_capture(CAPTURES / "sample-sip.pcap", workers=1)


def _add(store: SqliteStore, cid: str, sha: str = "a" * 64) -> None:
    store.add_capture(capture_id=cid, filename=f"{cid}.pcap", path=f"/nowhere/{cid}.pcap",
                      sha256=sha, size_bytes=10)


def _done(store: SqliteStore, cid: str, result: AnalysisResult) -> None:
    _add(store, cid, result.sha256 or "b" * 64)
    assert store.start_job(cid)
    store.save_results(cid, result, {"calls": len(result.analysis.calls)})


def test_fresh_database_gets_every_migration(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db", clock=Clock())
    assert store.schema_version() == MIGRATIONS[-1].version
    store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    applied = [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY 1")]
    assert applied == [m.version for m in MIGRATIONS]
    db.close()
    # Opening again applies nothing and keeps the data.
    store = SqliteStore(tmp_path / "s.db", clock=Clock())
    _add(store, "P1")
    store.close()
    store = SqliteStore(tmp_path / "s.db", clock=Clock())
    assert store.capture("P1") is not None
    store.close()


def test_newer_schema_and_foreign_files_are_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "new.db")
    db.execute(f"PRAGMA user_version = {MIGRATIONS[-1].version + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this code"):
        SqliteStore(tmp_path / "new.db", clock=Clock())
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        SqliteStore(tmp_path / "junk.db", clock=Clock())


def test_results_are_stored_with_calls_flows_and_verdicts(tmp_path: Path,
                                                          blocked: AnalysisResult) -> None:
    store = SqliteStore(tmp_path / "s.db", clock=Clock())
    _done(store, "P1", blocked)
    row = store.capture("P1")
    assert row is not None and row.state is JobState.DONE and row.progress == 1.0
    assert row.summary == {"calls": 1}
    flows = store.flows(Query(limit=1000))
    assert flows.total == len(blocked.flows) == 11
    assert {f["uid"] for f in flows.items} == {f.uid for f in blocked.flows}
    call = blocked.analysis.calls[0]
    stored = store.call(call.uid)
    assert stored is not None
    assert stored["verdict"] == "blocked" and stored["capture_id"] == "P1"
    assert stored["reasons"] == ["stun-unanswered", "media-no-return"]
    # Flows of the call point back at it.
    members = [f for f in flows.items if f.get("call_uid") == call.uid]
    assert sorted(f["uid"] for f in members) == sorted(call.flow_uids)
    assert all(f["call_verdict"] == "blocked" for f in members)
    assert store.verdict_counts() == {("call", "blocked"): 1, ("flow", "blocked"): 1}
    store.close()


def test_filters_and_pages(tmp_path: Path, blocked: AnalysisResult, sip: AnalysisResult) -> None:
    store = SqliteStore(tmp_path / "s.db", clock=Clock())
    _done(store, "P1", blocked)
    _done(store, "P2", sip)
    assert store.calls(Query()).total == 2
    assert [c["app"] for c in store.calls(Query(app="sip")).items] == ["sip"]
    assert [c["uid"] for c in store.calls(Query(verdict="blocked")).items] == \
        [blocked.analysis.calls[0].uid]
    assert store.calls(Query(verdict="throttled")).total == 0
    assert store.calls(Query(capture_id="P2")).items[0]["app"] == "sip"
    # The WhatsApp call has a messaging (signalling) flow; the SIP call has none.
    assert "messaging" not in {str(c.category) for c in sip.classes}
    assert [c["capture_id"] for c in store.calls(Query(category="messaging")).items] == ["P1"]
    assert store.calls(Query(category="voice")).total == 2
    assert store.calls(Query(category="streaming")).total == 0
    # Time ranges overlap: the SIP capture is 1000 s after the blocked one.
    sip_start = sip.analysis.calls[0].start_ts
    assert [c["app"] for c in store.calls(Query(since=sip_start - 1)).items] == ["sip"]
    assert [c["app"] for c in store.calls(Query(until=sip_start - 1)).items] == ["whatsapp"]
    # Flow filters.
    dns = store.flows(Query(category="dns", limit=1000))
    assert dns.total == sum(1 for c in blocked.classes + sip.classes if c.category == "dns")
    assert all(f["category"] == "dns" for f in dns.items)
    assert store.flows(Query(verdict="blocked")).total == 1
    # Pages: newest first, then oldest first, covering every flow exactly once.
    total = len(blocked.flows) + len(sip.flows)
    seen: list[tuple[str, str]] = []
    for offset in range(0, total, 4):
        page = store.flows(Query(limit=4, offset=offset))
        assert page.total == total
        seen += [(f["capture_id"], f["uid"]) for f in page.items]
    assert len(seen) == len(set(seen)) == total
    starts = [f["first_ts"] for f in store.flows(Query(limit=1000)).items]
    assert starts == sorted(starts, reverse=True)
    oldest = store.flows(Query(limit=1000, newest_first=False)).items
    assert [f["first_ts"] for f in oldest] == sorted(starts)
    assert store.flows(Query(offset=total)).items == []
    store.close()


def test_same_call_in_two_captures(tmp_path: Path, blocked: AnalysisResult) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "s.db", clock=clock)
    _done(store, "P1", blocked)
    clock.now += 10
    _done(store, "P2", blocked)
    uid = blocked.analysis.calls[0].uid
    newest = store.call(uid)
    assert newest is not None and newest["capture_id"] == "P2"
    first = store.call(uid, "P1")
    assert first is not None and first["capture_id"] == "P1"
    assert store.call(uid, "P3") is None
    assert store.call("Knope") is None
    store.close()


def test_job_states_and_restart(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "s.db", clock=clock)
    _add(store, "P1", "1" * 64)
    _add(store, "P2", "2" * 64)
    _add(store, "P3", "3" * 64)
    assert store.start_job("P1")
    assert not store.start_job("P1")  # already running
    store.set_progress("P1", 0.25)
    store.set_progress("P2", 0.5)  # not running: ignored
    p1 = store.capture("P1")
    assert p1 is not None and p1.progress == 0.25 and p1.started_at == clock.now
    assert store.capture("P2") is not None and store.capture("P2").progress == 0  # type: ignore[union-attr]
    store.set_progress("P1", 7.0)
    assert store.capture("P1").progress == 1.0  # type: ignore[union-attr]
    store.end_job("P3", JobState.FAILED, "broken")
    with pytest.raises(ValueError):
        store.end_job("P3", JobState.DONE, "no")
    assert store.job_counts() == {"queued": 1, "running": 1, "done": 0, "failed": 1,
                                  "interrupted": 0}
    store.close()
    # A new run finds P1 running and P2 queued: both were cut short.
    store = SqliteStore(tmp_path / "s.db", clock=clock)
    assert sorted(r.id for r in store.interrupt_unfinished()) == ["P1", "P2"]
    for cid in ("P1", "P2"):
        row = store.capture(cid)
        assert row is not None and row.state is JobState.INTERRUPTED
        assert row.error is not None and "stopped" in row.error
    failed = store.capture("P3")
    assert failed is not None and failed.state is JobState.FAILED and failed.error == "broken"
    # Failed and interrupted content may be uploaded again.
    assert store.capture_by_sha256("1" * 64) is None
    assert store.capture_by_sha256("3" * 64) is None
    store.close()


def test_retention_by_age_and_count(tmp_path: Path, blocked: AnalysisResult) -> None:
    clock = Clock()
    store = SqliteStore(tmp_path / "s.db", clock=clock)
    _done(store, "P-old", blocked)
    clock.now += 86400 * 40
    for i in range(4):
        clock.now += 1
        _done(store, f"P{i}", blocked)
    _add(store, "P-queued", "q" * 64)
    # 30 days: the old capture goes, with its flows, calls and verdicts.
    gone = store.prune(max_age_s=86400 * 30, max_captures=None)
    assert [r.id for r in gone] == ["P-old"]
    assert store.flows(Query(capture_id="P-old")).total == 0
    assert store.calls(Query(capture_id="P-old")).total == 0
    assert store.verdict_counts()[("call", "blocked")] == 4
    # Keep 2: the newest (a queued job, never pruned) and P3; P2..P0 go.
    gone = store.prune(max_age_s=None, max_captures=2)
    assert sorted(r.id for r in gone) == ["P0", "P1", "P2"]
    rows, total = store.captures(limit=10, offset=0)
    assert total == 2 and [r.id for r in rows] == ["P-queued", "P3"]
    assert store.prune(max_age_s=None, max_captures=None) == []
    store.close()


def test_save_results_for_a_pruned_capture_fails(tmp_path: Path,
                                                 blocked: AnalysisResult) -> None:
    store = SqliteStore(tmp_path / "s.db", clock=Clock())
    with pytest.raises(StoreError, match="no longer stored"):
        store.save_results("P-missing", blocked, {})
    assert store.flows(Query()).total == 0
    store.close()


def test_open_store_creates_the_directory(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a" / "b", clock=Clock())
    assert (tmp_path / "a" / "b" / "marsad.db").is_file()
    store.close()
