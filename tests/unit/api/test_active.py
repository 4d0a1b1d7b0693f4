"""api.active: a test's ledger entry, its re-judgement, its store row and its bundle."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import sys
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from prometheus_client import CollectorRegistry

from api import active
from api.evidence import EvidenceError, check_bundle, record_verdicts, verify_ledger
from api.metrics import MarsadMetrics
from api.pipeline import analyze_capture
from api.store import MIGRATIONS, SqliteStore, TestQuery
from policy import records
from policy.ledger import GENESIS_HASH, Ledger, ProblemKind, canonical_json
from policy.records import VerdictKind
from policy.rules import load_policy
from tests.activetests import judge_module, measure
from tests.conftest import ROOT

NOW = 1_700_200_000.0


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.db", clock=lambda: NOW)


@pytest.fixture
def judged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-judging reachability tests uses the test judgement (see tests.activetests)."""
    monkeypatch.setitem(sys.modules, "policy.reach", judge_module())


def test_entry_is_the_design(tmp_path: Path, ledger: Ledger) -> None:
    result = measure(tmp_path)
    assert result.verdict.kind is VerdictKind.BLOCKED  # the closed port refused
    entry = active.record_test(result, ledger=ledger)
    assert entry.seq == 1 and entry.prev_hash == GENESIS_HASH
    assert entry.capture_sha256 == result.capture_sha256
    assert entry.capture_sha256 == hashlib.sha256(Path(str(result.capture)).read_bytes()
                                                  ).hexdigest()
    assert entry.subject_uid == result.uid
    assert entry.verdict == "BLOCKED" and entry.reasons == ("TCP_RESET",)
    assert entry.evidence == json.loads(canonical_json(result.to_dict()))
    assert active.is_test_entry(entry)
    assert ledger.verify().ok


def test_no_capture_names_the_measurement(tmp_path: Path, ledger: Ledger) -> None:
    result = measure(tmp_path, capture=False)
    entry = active.record_test(result, ledger=ledger)
    assert entry.capture_sha256 == hashlib.sha256(
        canonical_json(result.test_keys).encode()).hexdigest()


def test_verify_rejudges_tests_and_still_derives_calls(tmp_path: Path, ledger: Ledger,
                                                      judged: None) -> None:
    # A call's verdicts and two tests (one with a capture, one without) in one ledger.
    blocked_call = ROOT / "captures" / "sample-blocked.pcap"
    summary = record_verdicts(ledger, analyze_capture(blocked_call, workers=0))
    assert summary.appended
    with_capture = measure(tmp_path / "a")
    without = measure(tmp_path / "b", refuse=False, capture=False)
    assert without.verdict.kind is VerdictKind.OK
    active.record_test(with_capture, ledger=ledger)
    active.record_test(without, ledger=ledger)
    # Without the test's capture: the call is re-derived, the measurement-only test
    # re-judged, the test with a capture left unchecked.
    report = verify_ledger(ledger, [blocked_call])
    assert report.ok, report.problems
    assert with_capture.capture_sha256 in report.captures_unavailable
    assert active.entry_capture_sha256(without) in report.captures_checked
    # With it, every entry is checked.
    report = verify_ledger(ledger, [blocked_call, str(with_capture.capture)])
    assert report.ok, report.problems
    assert not report.captures_unavailable
    assert set(report.captures_checked) == {
        e.capture_sha256 for e in ledger.entries()}


def test_verify_finds_a_verdict_the_measurement_does_not_give(
        tmp_path: Path, ledger: Ledger, judged: None) -> None:
    result = measure(tmp_path)
    # Recorded as ok although the measurement shows the refused connects.
    forged = dataclasses.replace(result, verdict=dataclasses.replace(
        result.verdict, kind=VerdictKind.OK, reasons=(), evidence=()))
    active.record_test(forged, ledger=ledger)
    report = verify_ledger(ledger, [str(result.capture)])
    assert [p.kind for p in report.problems] == [ProblemKind.DERIVATION_MISMATCH]
    assert "capture gives BLOCKED ['TCP_RESET']" in report.problems[0].detail


def test_without_the_judgement_a_test_is_unchecked_not_wrong(
        tmp_path: Path, ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "policy.reach", None)  # import fails
    result = measure(tmp_path)
    active.record_test(result, ledger=ledger)
    report = verify_ledger(ledger, [str(result.capture)])
    assert report.ok
    assert report.captures_unavailable == (result.capture_sha256,)
    assert active.rejudge(records.TestKind.REACHABILITY, result.test_keys, load_policy()) is None


def test_rejudge_refuses_keys_that_do_not_rebuild(judged: None, tmp_path: Path) -> None:
    result = measure(tmp_path, capture=False)
    policy = load_policy()
    assert active.rejudge(records.TestKind.REACHABILITY, result.test_keys, policy) == result.verdict
    broken = json.loads(json.dumps(result.test_keys))
    broken["measurement"]["tcp_connect"][0]["port"] = "443"  # a string, not a port
    assert active.rejudge(records.TestKind.REACHABILITY, broken, policy) is None
    del broken["measurement"]["started_ts"]
    assert active.rejudge(records.TestKind.REACHABILITY, broken, policy) is None


def test_result_round_trip_and_moved_directory(tmp_path: Path) -> None:
    result = measure(tmp_path / "run")
    assert active.result_from_dict(json.loads(json.dumps(result.to_dict()))) == result
    # A test directory moved elsewhere: the capture is found beside the result.
    moved = tmp_path / "moved"
    moved.mkdir()
    cap = Path(str(result.capture))
    cap.rename(moved / cap.name)
    (moved / f"{result.uid}.json").write_text(json.dumps(result.to_dict()))
    loaded = active.load_result(moved / f"{result.uid}.json")
    assert loaded.capture == str(moved / cap.name)
    with pytest.raises(ValueError, match="'verdict'"):
        active.result_from_dict({k: v for k, v in result.to_dict().items() if k != "verdict"})
    with pytest.raises(ValueError, match=r"is not a valid Reason"):
        active.result_from_dict({**result.to_dict(), "reasons": ["no-such-reason"]})


def test_store_rows_filters_and_retention(tmp_path: Path, ledger: Ledger) -> None:
    clock = [NOW]
    store = SqliteStore(tmp_path / "marsad.db", clock=lambda: clock[0])
    a = measure(tmp_path / "a", "whatsapp")
    b = measure(tmp_path / "b", "signal", refuse=False)
    ea = active.record_test(a, ledger=ledger, store=store)
    clock[0] += 10
    active.record_test(b, ledger=ledger, store=store)
    row = store.test(a.uid)
    assert row is not None and row.ledger_seq == ea.seq and row.verdict == "blocked"
    assert row.capture_path == a.capture and row.capture_sha256 == a.capture_sha256
    assert row.reasons == ("tcp-reset",) and row.result["test_keys"] == a.test_keys
    rows, total = store.tests(TestQuery())
    assert total == 2 and [r.uid for r in rows] == sorted(
        [a.uid, b.uid], key=lambda u: -(a.started_ts if u == a.uid else b.started_ts))
    assert [r.uid for r in store.tests(TestQuery(verdict="ok"))[0]] == [b.uid]
    assert [r.uid for r in store.tests(TestQuery(app="whatsapp", kind="reachability"))[0]
            ] == [a.uid]
    assert store.tests(TestQuery(kind="replay")) == ([], 0)
    assert store.tests(TestQuery(limit=1, offset=1))[1] == 2
    assert store.test_latest() == {("reachability", "whatsapp"): a.started_ts,
                                   ("reachability", "signal"): b.started_ts}
    assert store.test_capture(str(a.capture_sha256)).uid == a.uid  # type: ignore[union-attr]
    removed = store.prune_tests(max_age_s=None, max_tests=1)
    assert [r.uid for r in removed] == [a.uid]
    assert store.test(a.uid) is None and store.test(b.uid) is not None
    assert len(ledger) == 2  # the ledger keeps both


def test_store_migrates_a_version_1_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(";\n".join(MIGRATIONS[0].statements))
    db.execute("INSERT INTO schema_migrations VALUES (1, 0, 'v1')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = SqliteStore(path, clock=lambda: NOW)
    assert store.schema_version() == MIGRATIONS[-1].version == 2
    assert store.tests(TestQuery()) == ([], 0)


def test_bundle_holds_the_test_and_checks(tmp_path: Path, ledger: Ledger) -> None:
    result = measure(tmp_path)
    entry = active.record_test(result, ledger=ledger)
    key = Ed25519PrivateKey.generate()
    data = active.build_test_bundle(result, ledger_entries=ledger.entries(),
                                    clock=lambda: NOW, signing_key=key)
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    checked = check_bundle(data, pub)
    assert checked.ok and checked.signature == "valid", checked.problems
    with zipfile.ZipFile(__import__("io").BytesIO(data)) as z:
        names = set(z.namelist())
        assert names == {"test.pcap", "result.json", "ledger.json", "report.en.md",
                         "report.en.html", "report.fr.html", "report.ar.html",
                         "manifest.json", "manifest.sig"}
        fr = z.read("report.fr.html").decode()
        assert "bloqué" in fr and "connexion refusée par une réinitialisation" in fr
        ar = z.read("report.ar.html").decode()
        assert '<html lang="ar" dir="rtl">' in ar and "محجوبة" in ar
        assert hashlib.sha256(z.read("test.pcap")).hexdigest() in ar
        assert z.read("test.pcap") == Path(str(result.capture)).read_bytes()
        assert json.loads(z.read("ledger.json")) == [entry.to_dict()]
        doc = json.loads(z.read("result.json"))
        assert doc["uid"] == result.uid and doc["capture"] == "test.pcap"
        report = z.read("report.en.md").decode()
        assert "- Verdict: **blocked (blocked)**" in report and "tcp-reset" in report
        assert entry.entry_hash in report
        assert hashlib.sha256(z.read("test.pcap")).hexdigest() in report
        manifest = json.loads(z.read("manifest.json"))
        assert manifest["subject"] == "test"
        assert manifest["capture"]["sha256"] == result.capture_sha256
    # A capture that is not the one the result names is refused.
    Path(str(result.capture)).write_bytes(b"\xd4\xc3\xb2\xa1 other bytes")
    with pytest.raises(EvidenceError, match="SHA-256"):
        active.build_test_bundle(result)


def test_metrics_count_tests_and_read_the_latest(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    latest = {("reachability", "whatsapp"): 1_700_000_000.0, ("replay", "no-such-app"): 5.0,
              ("no-such-kind", "zoom"): 7.0}
    m = MarsadMetrics(reg, tests=lambda: latest)
    blocked = measure(tmp_path / "a")
    m.observe_test(blocked)
    m.observe_test(blocked)
    m.observe_test(measure(tmp_path / "b", "other-app", refuse=False))
    get = reg.get_sample_value
    assert get("marsad_test_finished_total", {"kind": "reachability", "app": "whatsapp",
                                              "verdict": "blocked"}) == 2
    assert get("marsad_test_finished_total", {"kind": "reachability", "app": "unknown",
                                              "verdict": "ok"}) == 1
    assert get("marsad_test_last_timestamp_seconds",
               {"kind": "reachability", "app": "whatsapp"}) == 1_700_000_000.0
    assert get("marsad_test_last_timestamp_seconds", {"kind": "replay", "app": "unknown"}) == 5.0
    names = {s.labels.get("kind") for fam in reg.collect() for s in fam.samples
             if s.name.startswith("marsad_test_")}
    assert names == {"reachability", "replay"}  # an unknown kind makes no series


def test_a_replay_measurement_rebuilds_from_its_json() -> None:
    # What re-judging a replay test reads back: the measurement as plain JSON, whole.
    from probe.active.records import (
        Interval,
        ReplayKind,
        ReplayMeasurement,
        ReplayRun,
        Series,
    )

    def series(direction: str, lost: int) -> Series:
        return Series(direction, 0.5, tuple(
            Interval(i * 0.5, 50, 6000, 50 - lost, 6000 - 120 * lost, lost,
                     None if lost == 50 else 1.5 + i, None if lost == 50 else 0.4)
            for i in range(3)))

    runs = tuple(ReplayRun(kind, "udp", ("192.0.2.10", 40000 + n), ("198.51.100.20", 3478),
                           1_700_000_000.0 + n * 10, 1.5, series("up", 0),
                           series("down", 50 if kind is ReplayKind.ORIGINAL else 2),
                           kind is not ReplayKind.ORIGINAL,
                           None if kind is not ReplayKind.ORIGINAL else "generic_timeout_error")
                 for n, kind in enumerate(ReplayKind))
    m = ReplayMeasurement("whatsapp", "whatsapp.pcap@" + "ab" * 32, 1_700_000_000.0, runs)
    plain = json.loads(json.dumps(dataclasses.asdict(m)))
    assert active.from_plain(ReplayMeasurement, plain) == m
    plain["runs"][0]["kind"] = "mirrored"  # not a ReplayKind
    with pytest.raises(ValueError):
        active.from_plain(ReplayMeasurement, plain)


def test_a_result_file_is_strict_json_and_loads_back(tmp_path: Path) -> None:
    # A NaN figure was written as the bare word NaN, which is not JSON: other readers of
    # <uid>.json (jq, a browser) refused the file.
    result = dataclasses.replace(measure(tmp_path, capture=False),
                                 test_keys={"figure": float("nan"), "ok": 1.5})
    path = active.write_result(result, tmp_path)
    assert path == tmp_path / f"{result.uid}.json"

    def refuse(word: str) -> None:
        raise ValueError(word)
    doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)
    assert doc["test_keys"] == {"figure": None, "ok": 1.5}
    assert active.load_result(path).uid == result.uid


def test_verify_rejudges_a_replay_test_by_both_runs_of_the_original(
        tmp_path: Path, ledger: Ledger) -> None:
    # Two replay tests kept without a capture (the measurement is the record): one whose
    # two runs of the original were both slowed (throttled), one where only the run
    # before the controls was (a passing change of the path: unknown). Re-judging from
    # test_keys["measurement"] gives each its verdict back; a forged "throttled" on the
    # second is found.
    from policy.replay import judge_replay
    from tests.unit.policy.test_replay_judge import PKTS, N, measurement, series

    slow, full = series("down", [7] * N), series("down", [PKTS] * N)
    both = judge_replay(measurement(slow), load_policy())
    one = judge_replay(measurement(slow, after_down=full), load_policy())
    assert both.verdict.kind is VerdictKind.THROTTLED
    assert one.verdict.kind is VerdictKind.UNKNOWN
    assert len(both.test_keys["measurement"]["runs"]) == 4
    for result in (both, one):
        assert active.rejudge(records.TestKind.REPLAY, json.loads(json.dumps(
            result.test_keys)), load_policy()) == result.verdict
        active.record_test(result, ledger=ledger)
    report = verify_ledger(ledger, [])
    assert report.ok, report.problems
    assert set(report.captures_checked) == {active.entry_capture_sha256(both),
                                            active.entry_capture_sha256(one)}
    forged = dataclasses.replace(one, verdict=both.verdict)
    other = Ledger(tmp_path / "forged.db", clock=lambda: NOW)
    active.record_test(forged, ledger=other)
    report = verify_ledger(other, [])
    assert [p.kind for p in report.problems] == [ProblemKind.DERIVATION_MISMATCH]
    assert "REPLAY_INCONCLUSIVE" in report.problems[0].detail
