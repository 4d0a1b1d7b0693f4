"""api.jobs on real captures: intake, background analysis, ledger, shutdown, restart."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.jobs import UPLOAD_PREFIX, Jobs, NotACaptureFile, TooLarge
from api.pipeline import AnalysisResult
from api.store import JobState, Query, SqliteStore
from policy.ledger import Ledger
from policy.rules import load_policy
from tests.conftest import ROOT

CAPTURES = ROOT / "captures"


class Clock:
    def __init__(self, now: float = 1_700_100_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Parts:
    """A store, a ledger and the jobs over them, in one data directory."""

    def __init__(self, root: Path, *, max_upload_bytes: int = 1 << 24,
                 retention: tuple[float | None, int | None] = (None, None)) -> None:
        self.clock = Clock()
        self.store = SqliteStore(root / "marsad.db", clock=self.clock)
        self.ledger = Ledger(root / "ledger.db", clock=self.clock)
        self.jobs = Jobs(self.store, self.ledger, captures_dir=root / "captures",
                         policy=load_policy(), max_upload_bytes=max_upload_bytes,
                         retention=retention, clock=self.clock)

    def close(self) -> None:
        self.jobs.shutdown()
        self.ledger.close()
        self.store.close()


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = Parts(tmp_path)
    yield p
    p.close()


def test_capture_is_analysed_and_its_verdicts_recorded(parts: Parts) -> None:
    seen: list[AnalysisResult] = []
    parts.jobs.add_listener(seen.append)
    row, created = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "sample-blocked.pcap"),
                                     "sample-blocked.pcap")
    assert created and row.state is JobState.QUEUED
    stored = Path(row.path)
    assert stored.parent == parts.jobs.captures_dir and stored.name == f"{row.id}.pcap"
    assert stored.read_bytes() == (CAPTURES / "sample-blocked.pcap").read_bytes()
    assert parts.jobs.wait(60)
    done = parts.store.capture(row.id)
    assert done is not None and done.state is JobState.DONE, done
    assert done.summary["flows"] == 11 and done.summary["calls"] == 1
    assert done.summary["verdicts"] == {"blocked": 1}
    assert done.summary["complete"] is True
    # The blocked call and the blocked flow are in the ledger, once.
    entries = parts.ledger.entries(capture_sha256=row.sha256)
    assert done.summary["ledger_entries"] == len(entries) == 2
    assert {e.verdict for e in entries} == {"BLOCKED"}
    assert [r.analysis.calls[0].uid for r in seen] == [entries[0].subject_uid]
    # Re-deriving from the stored capture agrees with the ledger.
    report = parts.ledger.verify(parts.jobs.derive)
    assert report.ok and report.captures_checked == (row.sha256,)


def test_same_content_is_not_analysed_twice(parts: Parts) -> None:
    first, created = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "sample-sip.pcap"), "a")
    assert created
    again, created = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "sample-sip.pcap"), "b")
    assert not created and again.id == first.id
    assert parts.jobs.wait(60)
    assert parts.store.captures(limit=10, offset=0)[1] == 1
    # Only the stored copy is left in the captures directory.
    assert [p.name for p in parts.jobs.captures_dir.iterdir()] == [Path(first.path).name]


def test_gzip_capture_keeps_its_suffix(parts: Parts, tmp_path: Path) -> None:
    gz = tmp_path / "call.pcap.gz"
    gz.write_bytes(gzip.compress((CAPTURES / "sample-sip.pcap").read_bytes()))
    row, _ = parts.jobs.accept(parts.jobs.copy_in(gz), gz.name)
    assert row.path.endswith(".pcap.gz")
    assert parts.jobs.wait(60)
    done = parts.store.capture(row.id)
    assert done is not None and done.state is JobState.DONE
    assert done.summary["compressed"] is True and done.summary["calls"] == 1


def test_damaged_capture_is_done_with_what_was_read(parts: Parts) -> None:
    row, _ = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "bad-truncated.pcap"), "t.pcap")
    assert parts.jobs.wait(60)
    done = parts.store.capture(row.id)
    assert done is not None and done.state is JobState.DONE
    assert done.summary["complete"] is False and done.summary["stopped_at"] == 800
    assert "truncated" in done.summary["message"]


def test_unsupported_link_type_fails_the_job(parts: Parts) -> None:
    row, _ = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "bad-linktype147.pcap"),
                               "odd.pcap")
    assert parts.jobs.wait(60)
    failed = parts.store.capture(row.id)
    assert failed is not None and failed.state is JobState.FAILED
    assert failed.error == "odd.pcap: unsupported link type 147"
    # Failed content can be uploaded again (and fails again, as a new job).
    again, created = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "bad-linktype147.pcap"),
                                       "odd.pcap")
    assert created and again.id != row.id


@pytest.mark.parametrize("name", ["bad-text.pcap", "bad-empty.pcap"])
def test_not_a_capture_is_refused_and_removed(parts: Parts, name: str) -> None:
    with pytest.raises(NotACaptureFile):
        parts.jobs.copy_in(CAPTURES / name)
    assert list(parts.jobs.captures_dir.iterdir()) == []


def test_too_large_is_refused_and_removed(tmp_path: Path) -> None:
    p = Parts(tmp_path, max_upload_bytes=1000)
    try:
        with pytest.raises(TooLarge, match="1000 bytes"):
            p.jobs.copy_in(CAPTURES / "sample-sip.pcap")
        assert list(p.jobs.captures_dir.iterdir()) == []
    finally:
        p.close()


def test_shutdown_during_analysis_marks_the_job_interrupted(parts: Parts) -> None:
    store = parts.store
    real_start = store.start_job

    def start_then_stop(capture_id: str) -> bool:
        started = real_start(capture_id)
        parts.jobs._stopping.set()  # the service begins to shut down mid-analysis
        return started

    store.start_job = start_then_stop  # type: ignore[method-assign]
    row, _ = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "sample-call.pcap"), "c.pcap")
    assert parts.jobs.wait(60)
    stopped = store.capture(row.id)
    assert stopped is not None and stopped.state is JobState.INTERRUPTED
    assert stopped.error is not None and "stopped during the analysis" in stopped.error
    assert store.flows(Query()).total == 0


def test_jobs_survive_a_restart_as_interrupted(tmp_path: Path) -> None:
    p = Parts(tmp_path)
    # A queued job whose worker never ran (the process died before it).
    p.jobs._stopping.set()
    row, _ = p.jobs.accept(p.jobs.copy_in(CAPTURES / "sample-sip.pcap"), "s.pcap")
    p.jobs._pool.shutdown(wait=True)
    p.ledger.close()
    p.store.close()
    (p.jobs.captures_dir / (UPLOAD_PREFIX + "half")).write_bytes(b"\xd4\xc3")
    q = Parts(tmp_path)
    try:
        assert q.store.capture(row.id).state is JobState.QUEUED  # type: ignore[union-attr]
        assert [r.id for r in q.store.interrupt_unfinished()] == [row.id]
        assert q.store.capture(row.id).state is JobState.INTERRUPTED  # type: ignore[union-attr]
        # A half-received upload of the earlier run was removed.
        assert [x.name for x in q.jobs.captures_dir.iterdir()] == [Path(row.path).name]
    finally:
        q.close()


def test_retention_deletes_capture_files(tmp_path: Path) -> None:
    p = Parts(tmp_path, retention=(None, 1))
    try:
        first, _ = p.jobs.accept(p.jobs.copy_in(CAPTURES / "sample-sip.pcap"), "a")
        assert p.jobs.wait(60)
        p.clock.now += 1
        second, _ = p.jobs.accept(p.jobs.copy_in(CAPTURES / "sample-blocked.pcap"), "b")
        assert p.jobs.wait(60)
        assert p.store.capture(first.id) is None
        assert not Path(first.path).exists() and Path(second.path).is_file()
        # The ledger is never pruned: the blocked verdicts stay.
        assert len(p.ledger) == 2
        assert p.jobs.derive(first.sha256) is None
    finally:
        p.close()


def test_inflation_counts_what_a_gzip_capture_decompresses_to() -> None:
    from api.jobs import InflatesTooLarge, Inflation

    part = gzip.compress(b"a" * 300_000)
    two = part + gzip.compress(b"b" * 300_000)  # two members, one after the other
    for step in (1, 7, 65536, len(two)):
        counted = Inflation(600_000)
        for i in range(0, len(two), step):
            counted.feed(two[i:i + step])
        assert counted.total == 600_000
    over = Inflation(599_999)
    with pytest.raises(InflatesTooLarge, match="more than the limit of 599999 bytes"):
        over.feed(two)
    plain = Inflation(10)
    plain.feed(b"\xd4\xc3\xb2\xa1" + bytes(1000))
    assert plain.total == 0
    broken = Inflation(1 << 30)  # damaged gzip: the analysis reads what comes before it
    broken.feed(part + b"\x1f\x8b garbage, not a gzip member")
    assert broken.total == 300_000
    broken.feed(gzip.compress(bytes(1000)))
    assert broken.total == 300_000


def test_the_services_derivation_uses_the_settings_an_entry_recorded(parts: Parts) -> None:
    """An entry of a stored capture made with other settings (a probe sharing the data
    directory, say) is re-derived with them; settings it cannot read make it not follow."""
    from api.evidence import ledger_items
    from api.pipeline import analyze_capture
    from classifier.payloads import meter_config
    from policy.ledger import NewEntry

    row, _ = parts.jobs.accept(parts.jobs.copy_in(CAPTURES / "sample-blocked.pcap"), "b.pcap")
    assert parts.jobs.wait(60)
    other = analyze_capture(row.path, config=meter_config(udp_idle_s=0.5), hash_capture=False)
    assert other.settings == {"meter": {"udp_idle_s": 0.5}}
    items = ledger_items(other)
    assert items and {u for u, _, _ in items} - {
        e.subject_uid for e in parts.ledger.entries(capture_sha256=row.sha256)}
    parts.ledger.append_many([NewEntry(row.sha256, u, v.kind, v.reasons, ev)
                              for u, v, ev in items])
    assert parts.ledger.verify(parts.jobs.derive).ok
    uid, v, ev = items[0]
    parts.ledger.append_many([NewEntry(row.sha256, uid, v.kind, v.reasons,
                                       {**ev, "settings": {"meter": {"udp_idle_s": 0}}})])
    report = parts.ledger.verify(parts.jobs.derive)
    assert [p.seq for p in report.problems] == [len(parts.ledger.entries())]
