"""A live probe's verdicts re-derived from its capture ring.

The probe records a verdict under the ring file holding its subject's last frame and lists
every file holding the subject's frames in the evidence (``ring``). A call that began in
an earlier file is re-derived from those files together, each checked against the SHA-256
recorded; a file of the run that was changed makes the verdict underivable.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from api.evidence import ring_paths, verify_ledger
from api.pipeline import analyze_capture, capture_sha256
from policy.ledger import Ledger
from tests.conftest import ROOT


def _probe(tmp_path: Path) -> tuple[Path, list[Path]]:
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "api.cli", "probe", "-r",
                    str(ROOT / "captures" / "sample-blocked.pcap"), "--data-dir", str(data),
                    "--workers", "1", "--ring-age-s", "5"],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    files = sorted((data / "captures" / "ring").glob("ring-*.pcap"))
    return data, files


def test_a_verdict_whose_packets_span_ring_files_is_re_derived(tmp_path: Path) -> None:
    data, files = _probe(tmp_path)
    assert len(files) >= 3
    with Ledger(data / "ledger.db", clock=time.time) as ledger:
        entries = ledger.entries()
        spanning = [e for e in entries if len(e.evidence.get("ring") or []) > 1]
        assert spanning, "no verdict spans two ring files: the capture no longer tests this"
        holder = next(f for f in files if capture_sha256(f) == spanning[0].capture_sha256)
        run = ring_paths(holder, spanning[0].evidence["ring"])
        assert run is not None and len(run) > 1 and run[-1] == holder
        for f in files:
            report = verify_ledger(ledger, [f])
            assert report.ok, (f.name, report.problems)
        assert set(verify_ledger(ledger, files).captures_checked) == {
            e.capture_sha256 for e in entries}


def test_a_changed_ring_file_of_the_run_makes_the_verdict_underivable(tmp_path: Path) -> None:
    data, files = _probe(tmp_path)
    with Ledger(data / "ledger.db", clock=time.time) as ledger:
        spanning = next(e for e in ledger.entries() if len(e.evidence.get("ring") or []) > 1)
        holder = next(f for f in files if capture_sha256(f) == spanning.capture_sha256)
        run = ring_paths(holder, spanning.evidence["ring"])
        assert run is not None
        earlier = run[0]
        raw = bytearray(earlier.read_bytes())
        raw[-5] ^= 0xFF
        earlier.write_bytes(bytes(raw))
        assert ring_paths(holder, spanning.evidence["ring"]) is None
        report = verify_ledger(ledger, [holder])
        assert not report.ok
        assert any(p.seq == spanning.seq for p in report.problems)
        # Entries that need no changed file still follow.
        others = [e for e in ledger.entries(capture_sha256=spanning.capture_sha256)
                  if earlier.name not in {f["file"] for f in e.evidence.get("ring") or []}]
        assert not {p.seq for p in report.problems} & {e.seq for e in others}
    # Outside its ring (no index beside it), the file is analysed alone.
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(holder, alone / holder.name)
    assert ring_paths(alone / holder.name, spanning.evidence["ring"]) is None


def test_verdicts_made_with_other_settings_are_derived_with_them(tmp_path: Path) -> None:
    """Settings other than the defaults (here a 0.5 s UDP idle timeout, which changes the
    flows and so the calls) are recorded with each verdict; verify and evidence use them."""
    cap = ROOT / "captures" / "sample-blocked.pcap"
    db = tmp_path / "ledger.db"
    subprocess.run([sys.executable, "-m", "api.cli", "analyze", "--json", "--ledger", str(db),
                    "--udp-idle", "0.5", str(cap)], cwd=ROOT, check=True, capture_output=True,
                   timeout=120)
    with Ledger(db, clock=time.time) as ledger:
        entries = ledger.entries()
        assert entries
        assert all(e.evidence["settings"] == {"meter": {"udp_idle_s": 0.5}} for e in entries)
        assert verify_ledger(ledger, [cap]).ok
        uid = entries[0].subject_uid
    # Analysed with the defaults the capture has no such subject: the settings matter.
    assert uid not in {c.uid for c in analyze_capture(cap, hash_capture=False).analysis.calls}
    out = subprocess.run([sys.executable, "-m", "api.cli", "evidence", "--capture", str(cap),
                          "--ledger", str(db), uid, "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (0, 3), out.stderr
    assert list(tmp_path.glob("*.zip"))


def test_settings_round_trip() -> None:
    from api.pipeline import analysis_settings, settings_configs
    from classifier.payloads import meter_config
    from policy.settling import PipelineConfig

    assert analysis_settings(meter_config(), PipelineConfig()) == {}
    meter = meter_config(udp_idle_s=2.0, payload_samples=3)
    pipe = PipelineConfig(call_settle_s=0.0)
    got = analysis_settings(meter, pipe)
    assert got == {"meter": {"udp_idle_s": 2.0, "payload_samples": 3},
                   "pipeline": {"call_settle_s": 0.0}}
    m, p = settings_configs(got)
    assert m == meter and p == pipe


def test_the_bundle_of_a_subject_spanning_ring_files_is_cut_from_them(tmp_path: Path) -> None:
    """``marsad evidence --ledger`` on the file holding the subject's last frame cuts its
    packets from the ring files its entry lists, joined; the manifest lists them. With one
    of them changed, it says which files the subject spans."""
    import json
    import zipfile

    data, files = _probe(tmp_path)
    with Ledger(data / "ledger.db", clock=time.time) as ledger:
        spanning = next(e for e in ledger.entries() if len(e.evidence.get("ring") or []) > 1)
    holder = next(f for f in files if capture_sha256(f) == spanning.capture_sha256)

    def evidence() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "api.cli", "evidence", "--capture",
                               str(holder), "--ledger", str(data / "ledger.db"),
                               spanning.subject_uid, "--out", str(tmp_path / "b.zip")],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)

    out = evidence()
    assert out.returncode in (0, 3), out.stderr
    with zipfile.ZipFile(tmp_path / "b.zip") as z:
        manifest = json.loads(z.read("manifest.json"))
        ledger_doc = json.loads(z.read("ledger.json"))
        report = json.loads(z.read("report.json"))
    assert [f["file"] for f in manifest["capture"]["ring"]] == [
        f["file"] for f in spanning.evidence["ring"]]
    assert manifest["capture"]["name"] == holder.name
    assert [e["seq"] for e in ledger_doc] == [spanning.seq]
    assert report.get("call", {}).get("uid", spanning.subject_uid) == spanning.subject_uid
    check = subprocess.run([sys.executable, "-m", "api.cli", "evidence", "--check",
                            str(tmp_path / "b.zip")], cwd=ROOT, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    first = next(holder.parent / f["file"] for f in spanning.evidence["ring"]
                 if f["file"] != holder.name)
    raw = bytearray(first.read_bytes())
    raw[-5] ^= 0xFF
    first.write_bytes(bytes(raw))
    out = evidence()
    assert out.returncode == 2
    assert "its packets span the ring files" in out.stderr


def test_entries_made_with_different_settings_each_follow(tmp_path: Path) -> None:
    """One capture analysed with the defaults, then with other settings: each entry is
    derived with its own."""
    cap = ROOT / "captures" / "sample-blocked.pcap"
    db = tmp_path / "ledger.db"
    for opts in ([], ["--udp-idle", "0.5"]):
        subprocess.run([sys.executable, "-m", "api.cli", "analyze", "--json", "--ledger",
                        str(db), *opts, str(cap)], cwd=ROOT, check=True, capture_output=True,
                       timeout=120)
    with Ledger(db, clock=time.time) as ledger:
        assert {bool(e.evidence.get("settings")) for e in ledger.entries()} == {False, True}
        report = verify_ledger(ledger, [cap])
        assert report.ok, report.problems


def test_settings_that_cannot_be_read_make_an_entry_not_follow(tmp_path: Path) -> None:
    """A ledger entry whose recorded settings are not settings marsad takes (hand-made,
    or another version's) does not follow; verify says so instead of failing."""
    import pytest

    from api.pipeline import settings_configs
    from policy.ledger import NewEntry
    from policy.records import Reason, VerdictKind

    for bad in ({"meter": {"udp_idle_s": None}}, {"pipeline": {"cut_s": 0}},
                {"meter": {"payload_samples": 2.5}}, {"meter": {"nonsense": 1}},
                {"meter": [1]}, {"pipeline": {"call_settle_s": -1}}):
        with pytest.raises(ValueError):
            settings_configs(bad)
    cap = ROOT / "captures" / "sample-blocked.pcap"
    with Ledger(tmp_path / "ledger.db", clock=time.time) as ledger:
        ledger.append_many([NewEntry(capture_sha256(cap), "Kdeadbeef", VerdictKind.BLOCKED,
                                     (Reason.STUN_UNANSWERED,),
                                     {"settings": {"pipeline": {"cut_s": 0}}, "ring": 5})])
        report = verify_ledger(ledger, [cap])
        assert not report.ok and [p.seq for p in report.problems] == [1]
