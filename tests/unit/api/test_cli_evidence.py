"""``marsad analyze --ledger``, ``verify``, ``evidence`` and ``report`` end to end."""

from __future__ import annotations

import io
import json
import re
import sqlite3
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from api.cli import main
from api.evidence import record_verdicts
from api.pipeline import analyze_capture
from classifier.payloads import meter_config
from policy.ledger import Ledger
from tests.conftest import NDPI_DEV, ROOT, need_shared, need_tool

CAPTURES = ROOT / "captures"
BLOCKED = str(CAPTURES / "sample-blocked.pcap")
CALL = str(CAPTURES / "sample-call.pcap")
SIP = str(CAPTURES / "sample-sip.pcap")
ICMP = str(CAPTURES / "icmp-errors.pcap")
SIP_488 = NDPI_DEV / "pcap_other" / "sip-488-Not-Acceptable-Here-codec-null.pcapng"
W1 = ["--workers", "1"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def attacker(path: Path) -> sqlite3.Connection:
    """The ledger file opened directly, the append-only triggers dropped."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("DROP TRIGGER entries_no_update")
    db.execute("DROP TRIGGER entries_no_delete")
    return db


@pytest.fixture
def ledger_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """A ledger of five entries: sample-blocked's two, icmp-errors' three (the ok calls of
    sample-sip and sample-call add none)."""
    path = tmp_path / "evidence.db"
    for cap in (BLOCKED, SIP, CALL, ICMP):
        code, _, _ = run(capsys, "analyze", cap, "--ledger", str(path), *W1)
        assert code == 0
    return path


def test_analyze_ledger_records_once_and_prints_the_same(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    path = tmp_path / "l.db"
    code, plain, _ = run(capsys, "analyze", BLOCKED, *W1)
    assert code == 0
    code, recorded, err = run(capsys, "analyze", BLOCKED, "--ledger", str(path), *W1)
    assert code == 0 and recorded == plain
    assert "2 verdict(s) recorded, 0 already there" in err
    code, _, err = run(capsys, "analyze", BLOCKED, "--ledger", str(path), "--jsonl", *W1)
    assert code == 0 and "0 verdict(s) recorded, 2 already there" in err
    with Ledger(path, clock=lambda: 0.0) as led:
        entries = led.entries()
    call = json.loads(plain)["calls"][0]
    judged = [f["uid"] for f in json.loads(plain)["flows"] if "verdict" in f]
    assert [e.subject_uid for e in entries] == [call["uid"], *judged]
    assert entries[0].evidence["evidence"][0]["frames"] == call["evidence"][0]["frames"]
    # --jsonl writes, with a ledger, what it writes without one.
    _, lines_plain, _ = run(capsys, "analyze", BLOCKED, "--jsonl", *W1)
    _, lines_rec, _ = run(capsys, "analyze", BLOCKED, "--jsonl", "--ledger", str(path), *W1)
    assert lines_rec == lines_plain and lines_plain.count('"record":"flow"') > 1
    # stdin has no SHA-256 to record.
    assert run(capsys, "analyze", "-", "--ledger", str(path))[0] == 2


def _entries(path: Path) -> list[tuple[Any, ...]]:
    with Ledger(path, clock=lambda: 0.0) as led:
        return [(e.capture_sha256, e.subject_uid, e.verdict, e.reasons, e.evidence)
                for e in led.entries()]


@pytest.mark.parametrize("fmt", ["--json", "--jsonl", "--csv", "--zeek"])
def test_analyze_ledger_records_what_a_whole_result_records(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    """``analyze --ledger`` gathers the verdicts from the pipeline's steps as they settle,
    in every output format: the entries are those of the whole result (the same subjects,
    verdicts, reasons and evidence, in the same order), settings other than the defaults
    recorded with them."""
    caps = [BLOCKED, ICMP]
    if NDPI_DEV.is_dir():
        caps += [str(NDPI_DEV / "pcap" / n) for n in ("sip.pcap", "teams.pcap", "h323.pcap",
                                                       "lru_ipv6_caches.pcapng")]
        caps += [str(SIP_488)]
    streamed, whole = tmp_path / "streamed.db", tmp_path / "whole.db"
    for cap in caps:
        code, _, err = run(capsys, "analyze", cap, fmt, "--udp-idle", "90", "--ledger",
                           str(streamed), *W1)
        assert code == 0, err
        with Ledger(whole, clock=lambda: 0.0) as led:
            record_verdicts(led, analyze_capture(cap, workers=1,
                                                 config=meter_config(udp_idle_s=90.0)))
    got, want = _entries(streamed), _entries(whole)
    assert got == want
    assert len(want) >= 5 and all(e[4]["settings"] == {"meter": {"udp_idle_s": 90.0}}
                                   for e in want)


def test_failed_sip_call_goes_into_the_ledger(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    need_shared()
    path = tmp_path / "l.db"
    code, out, _ = run(capsys, "analyze", str(SIP_488), "--ledger", str(path), *W1)
    assert code == 0
    failed = [c for c in json.loads(out)["calls"] if c["verdict"] == "failed"]
    with Ledger(path, clock=lambda: 0.0) as led:
        entries = {e.subject_uid: e for e in led.entries()}
    assert entries[failed[0]["uid"]].reasons[0] == "SIP_REJECTED"


def test_verify_intact_ledger(ledger_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", str(ledger_path), "--capture", BLOCKED,
                       "--capture", CALL)
    assert code == 0
    assert out.splitlines()[0] == f"{ledger_path}: 5 entries, no problems"
    assert f"re-derived from {BLOCKED}" in out and f"{CALL}: no entries in the ledger" in out
    code, out, _ = run(capsys, "verify", str(ledger_path), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["entries"] == 5 and doc["problems"] == []
    assert len(doc["captures_unavailable"]) == 2


@pytest.mark.parametrize(("tamper", "expected"), [
    ("UPDATE entries SET verdict = 'OK' WHERE seq = 4", [(4, "edited")]),
    ("UPDATE entries SET evidence = '{}' WHERE seq = 2", [(2, "edited")]),
    ("DELETE FROM entries WHERE seq = 3", [(3, "deleted"), (4, "broken link")]),
    ("UPDATE entries SET seq = 100 WHERE seq = 2; UPDATE entries SET seq = 2 WHERE seq = 3; "
     "UPDATE entries SET seq = 3 WHERE seq = 100",
     [(2, "edited"), (2, "reordered"), (3, "edited"), (3, "reordered"), (4, "reordered")]),
])
def test_verify_reports_tampering_with_its_position(ledger_path: Path, tamper: str,
                                                    expected: list[tuple[int, str]],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    db = attacker(ledger_path)
    for statement in tamper.split("; "):
        db.execute(statement)
    db.close()
    code, out, _ = run(capsys, "verify", str(ledger_path))
    assert code == 1
    lines = [x.strip() for x in out.splitlines()[1:] if x.strip().startswith("entry ")]
    got = [(int(x.split(":")[0].split()[1]), x.split(": ")[1]) for x in lines]
    assert [(s, w.split(" (")[0]) for s, w in got] == expected
    code, out, _ = run(capsys, "verify", str(ledger_path), "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    assert [(p["seq"], p["what"].split(" (")[0]) for p in doc["problems"]] == expected


def test_verify_inserted_entry(ledger_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(ledger_path, clock=lambda: 0.0) as led:
        first = led.get(1)
    assert first is not None
    db = attacker(ledger_path)
    for s in (5, 4, 3, 2):
        db.execute(f"UPDATE entries SET seq = {s + 1} WHERE seq = {s}")
    # A forged entry at 2, chained after 1 like the real one (now at 3); its hash differs
    # from the real one's in the first digit (hashes are unique in the table).
    db.execute("INSERT INTO entries SELECT 2, recorded_at, capture_sha256, 'Kforged', verdict, "
               "reasons, evidence, prev_hash, "
               "CASE substr(entry_hash, 1, 1) WHEN 'f' THEN 'e' ELSE 'f' END "
               "|| substr(entry_hash, 2) FROM entries WHERE seq = 3")
    db.close()
    code, out, _ = run(capsys, "verify", str(ledger_path))
    assert code == 1 and "entry 3: inserted" in out and "entry 2: edited" in out


def test_verify_catches_a_verdict_the_packets_do_not_support(
        ledger_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(ledger_path, clock=lambda: 0.0) as led:
        e = led.get(1)
        assert e is not None
        # A well-chained entry that claims a throttled call.
        led.append(capture_sha256=e.capture_sha256, subject_uid=e.subject_uid,
                   verdict="THROTTLED", reasons=["RATE_CAPPED"], evidence={})
    code, out, _ = run(capsys, "verify", str(ledger_path))
    assert code == 0  # the chain itself is intact
    code, out, _ = run(capsys, "verify", str(ledger_path), "--capture", BLOCKED)
    assert code == 1
    assert "entry 6: does not follow from the packets: stored THROTTLED ['RATE_CAPPED'], " \
           "capture gives BLOCKED ['STUN_UNANSWERED', 'MEDIA_NO_RETURN']" in out


def test_the_end_of_a_ledger_is_said_so_that_a_cut_can_be_shown(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A chain cut at its end is still a whole chain: what shows the cut is the end
    noted elsewhere, which ``analyze --ledger`` and ``verify`` print for that."""
    path = tmp_path / "l.db"
    code, _, err = run(capsys, "analyze", BLOCKED, "--ledger", str(path), *W1)
    end = re.search(r"its end is (\d+:[0-9a-f]{64})", err)
    assert code == 0 and end is not None
    code, out, _ = run(capsys, "verify", str(path))
    assert code == 0 and f"its end is {end[1]}" in out
    code, out, _ = run(capsys, "verify", str(path), "--json")
    assert json.loads(out)["anchor"] == end[1]
    db = attacker(path)
    db.execute("DELETE FROM entries WHERE seq = (SELECT MAX(seq) FROM entries)")
    db.close()
    assert run(capsys, "verify", str(path))[0] == 0  # the chain alone cannot tell
    code, out, _ = run(capsys, "verify", str(path), "--anchor", end[1])
    assert code == 1 and "tail cut or rewritten" in out and "its end is" not in out
    code, out, _ = run(capsys, "verify", str(path), "--anchor", end[1], "--json")
    assert code == 1 and json.loads(out)["anchor"] is None  # no end vouched for


def test_a_stray_file_named_like_the_signature_is_a_change_to_the_files() -> None:
    from api.cli import _bundle_state
    from api.evidence import BundleCheck
    stray = BundleCheck({}, ("manifest.sig.txt: in the zip but not in the manifest",), (),
                        "valid")
    assert _bundle_state(stray) == "MODIFIED"
    other = BundleCheck({}, ("manifest.sig: signed by key ab, not the one given",), (),
                        "untrusted")
    assert _bundle_state(other) == "files as signed, but NOT signed by the key given"


def test_errors_name_the_file_or_folder(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "l.db"
    assert run(capsys, "analyze", BLOCKED, "--ledger", str(path), *W1)[0] == 0
    missing = tmp_path / "nope.pcap"
    code, _, err = run(capsys, "verify", str(path), "--capture", str(missing))
    assert code == 2 and err.strip() == f"marsad: {missing}: no such file or directory"
    with Ledger(path, clock=lambda: 0.0) as led:
        uid = led.entries()[0].subject_uid
    code, _, err = run(capsys, "evidence", uid, "--capture", BLOCKED, "--out",
                       str(tmp_path / "no" / "b.zip"))
    assert code == 2
    assert err.strip() == f"marsad: {tmp_path / 'no'}: no such directory to write the bundle in"


def test_verify_anchor_and_bad_inputs(ledger_path: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    with Ledger(ledger_path, clock=lambda: 0.0) as led:
        anchor = led.anchor()
    assert anchor is not None
    good = f"{anchor.seq}:{anchor.entry_hash}"
    assert run(capsys, "verify", str(ledger_path), "--anchor", good)[0] == 0
    db = attacker(ledger_path)
    db.execute(f"DELETE FROM entries WHERE seq = {anchor.seq}")
    db.close()
    code, out, _ = run(capsys, "verify", str(ledger_path), "--anchor", good)
    assert code == 1 and f"entry {anchor.seq}: tail cut or rewritten" in out
    assert run(capsys, "verify", str(tmp_path / "missing.db"))[0] == 2
    assert run(capsys, "verify", str(ledger_path), "--anchor", "x")[0] == 2


def test_evidence_bundle_and_check(ledger_path: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "analyze", BLOCKED, *W1)
    call = json.loads(out)["calls"][0]
    bundle = tmp_path / "b.zip"
    code, _, err = run(capsys, "evidence", call["uid"], "--capture", BLOCKED, "--out",
                       str(bundle), "--ledger", str(ledger_path), "--anonymize", "--key",
                       "00" * 32, *W1)
    assert code == 0 and "anonymised" in err
    with zipfile.ZipFile(bundle) as z:
        names = set(z.namelist())
        pcap = z.read("packets.pcap")
        ledger_doc = json.loads(z.read("ledger.json"))
    assert names == {"packets.pcap", "report.json", "manifest.json", "ledger.json",
                     "report.en.html", "report.fr.html", "report.ar.html", "report.en.md"}
    judged = [f["uid"] for f in json.loads(out)["flows"] if "verdict" in f]
    assert [e["subject_uid"] for e in ledger_doc] == [call["uid"], *judged]
    (tmp_path / "p.pcap").write_bytes(pcap)
    tshark = need_tool("tshark")
    seen = subprocess.run([tshark, "-n", "-r", str(tmp_path / "p.pcap"), "-T", "fields", "-e",
                           "ip.src"], capture_output=True, text=True, check=True).stdout
    assert len(seen.splitlines()) == sum(
        f["orig_pkts"] + f["resp_pkts"] for f in json.loads(out)["flows"]
        if f["uid"] in call["flow_uids"])
    assert "192.168.1.23" not in seen
    code, out, _ = run(capsys, "evidence", "--check", str(bundle))
    assert code == 0 and "intact" in out and "anonymised: True" in out
    # Change one file inside the zip: --check names it and fails.
    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["report.json"] = files["report.json"].replace(b"blocked", b"ok     ")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    bundle.write_bytes(buf.getvalue())
    code, out, _ = run(capsys, "evidence", "--check", str(bundle))
    assert code == 1 and "PROBLEM  report.json: SHA-256" in out and "MODIFIED" in out


def test_evidence_names_the_bundle_after_the_capture(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(capsys, "analyze", BLOCKED, *W1)
    uid = json.loads(out)["calls"][0]["uid"]
    for _ in range(2):  # the same name every time
        code, _, _ = run(capsys, "evidence", uid, "--capture", BLOCKED, "--out",
                         str(tmp_path), *W1)
        assert code == 0
        assert [p.name for p in tmp_path.iterdir()] == [f"sample-blocked-{uid}.zip"]


def test_evidence_refuses_bad_requests(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "b.zip")
    assert run(capsys, "evidence", "Kx", "--capture", BLOCKED, "--out", str(tmp_path),
               *W1)[0] == 2  # no such call
    assert list(tmp_path.iterdir()) == []
    code, _, err = run(capsys, "evidence", "Knope", "--capture", BLOCKED, "--out", out, *W1)
    assert code == 2 and "no call or flow Knope" in err
    assert run(capsys, "evidence", "Kx", "--capture", BLOCKED, "--out", out, "--anonymize",
               "--key", "zz", *W1)[0] == 2
    assert not (tmp_path / "b.zip").exists()
    (tmp_path / "junk.zip").write_bytes(b"junk")
    assert run(capsys, "evidence", "--check", str(tmp_path / "junk.zip"))[0] == 2


def test_report_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", BLOCKED, *W1)
    assert code == 0
    assert "verdict     blocked" in out and "reasons     stun-unanswered, media-no-return" in out
    assert "evidence: 9 STUN requests or pings to 157.240.27.54, 31.13.70.49" in out
    code, out, _ = run(capsys, "report", str(CAPTURES / "icmp-errors.pcap"), *W1)
    assert code == 0 and "Interfered flows outside calls" in out
    code, _, _ = run(capsys, "report", str(CAPTURES / "bad-text.pcap"), *W1)
    assert code == 2
