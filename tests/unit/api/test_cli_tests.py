"""``marsad evidence --test``, ``marsad report --test`` and ``marsad verify`` on an active
test's files (a result JSON and its capture, as a test run writes them)."""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from api.active import record_test
from api.cli import main
from policy.ledger import Ledger
from policy.records import TestResult
from tests.activetests import judge_module, measure


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def written(tmp_path: Path) -> tuple[TestResult, Path, Path]:
    """A measured test's result file and capture, recorded in a ledger."""
    result = measure(tmp_path / "run")
    path = tmp_path / "run" / f"{result.uid}.json"
    path.write_text(json.dumps(result.to_dict()))
    ledger = tmp_path / "ledger.db"
    with Ledger(ledger, clock=time.time) as led:
        record_test(result, ledger=led)
    return result, path, ledger


def test_evidence_bundle_of_a_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result, path, ledger = written(tmp_path)
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "key.pem"
    pem.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM,
                                                  PublicFormat.SubjectPublicKeyInfo))
    code, _, err = run(capsys, "evidence", "--test", str(path), "--ledger", str(ledger),
                       "--sign", str(pem), "--out", str(tmp_path))
    assert code == 0, err
    zipped = tmp_path / f"test-reachability-whatsapp-{result.uid}.zip"
    with zipfile.ZipFile(zipped) as z:
        [entry] = json.loads(z.read("ledger.json"))
        assert entry["subject_uid"] == result.uid and entry["verdict"] == "BLOCKED"
        assert z.read("test.pcap") == Path(str(result.capture)).read_bytes()
    code, out, _ = run(capsys, "evidence", "--check", str(zipped), "--public-key", str(pub))
    assert code == 0 and "intact" in out and "signature valid" in out
    # A call's options make no sense for a test.
    code, _, err = run(capsys, "evidence", "--test", str(path), "--anonymize")
    assert code == 2 and "--test takes no" in err
    # The capture went missing: said, exit 2.
    Path(str(result.capture)).unlink()
    code, _, err = run(capsys, "evidence", "--test", str(path), "--out", str(tmp_path))
    assert code == 2 and "missing" in err


def test_report_of_a_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result, path, _ = written(tmp_path)
    code, out, _ = run(capsys, "report", "--test", str(path))
    assert code == 0
    assert f"# marsad active test {result.uid}" in out and "**blocked (blocked)**" in out
    assert "connection refused by a reset (tcp-reset)" in out
    code, out, _ = run(capsys, "report", "--test", str(path), "--json")
    assert code == 0 and json.loads(out)["tests"][0]["uid"] == result.uid
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run(capsys, "report", "--test", str(bad))
    assert code == 2 and "a test result needs 'verdict'" in err
    code, _, err = run(capsys, "report")
    assert code == 2 and "required" in err


def test_verify_rejudges_the_test(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "policy.reach", judge_module())
    result, _, ledger = written(tmp_path)
    code, out, _ = run(capsys, "verify", str(ledger), "--capture", str(result.capture))
    assert code == 0, out
    assert "no problems" in out and f"re-derived from {result.capture}" in out


def test_verify_rejudges_a_test_without_capture(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "policy.reach", judge_module())
    result = measure(tmp_path, capture=False)
    ledger = tmp_path / "ledger.db"
    with Ledger(ledger, clock=time.time) as led:
        entry = record_test(result, ledger=led)
    code, out, _ = run(capsys, "verify", str(ledger))
    assert code == 0, out
    assert f"re-derived from a test measurement ({entry.capture_sha256[:16]})" in out
    code, out, _ = run(capsys, "verify", str(ledger), "--json")
    assert code == 0
    assert json.loads(out)["captures_checked"] == [{"sha256": entry.capture_sha256,
                                                    "file": None}]
