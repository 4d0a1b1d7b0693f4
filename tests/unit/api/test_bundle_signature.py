"""Signed evidence bundles: the manifest's Ed25519 signature, made and checked.

Keys are made with openssl as an operator would (``openssl genpkey -algorithm ed25519``)
when it is installed, else with ``cryptography``; the bundle is checked through
``marsad evidence --check``.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
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

from api.cli import main
from api.evidence import EvidenceError, check_bundle, load_signing_key
from tests.conftest import ROOT

BLOCKED = ROOT / "captures" / "sample-blocked.pcap"


def _keypair(tmp: Path, name: str) -> tuple[Path, Path]:
    key, pub = tmp / f"{name}.pem", tmp / f"{name}.pub.pem"
    openssl = shutil.which("openssl")
    if openssl is not None:
        subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out", str(key)],
                       check=True, capture_output=True)
        subprocess.run([openssl, "pkey", "-in", str(key), "-pubout", "-out", str(pub)],
                       check=True, capture_output=True)
    else:
        k = Ed25519PrivateKey.generate()
        key.write_bytes(k.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
        pub.write_bytes(k.public_key().public_bytes(Encoding.PEM,
                                                    PublicFormat.SubjectPublicKeyInfo))
    return key, pub


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def _uid(capsys: pytest.CaptureFixture[str]) -> str:
    _, out = _run(capsys, "analyze", str(BLOCKED), "--json", "--workers", "1")
    return str(json.loads(out)["calls"][0]["uid"])


def test_a_signed_bundle_verifies_and_names_its_signer(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    key, pub = _keypair(tmp_path, "operator")
    uid = _uid(capsys)
    bundle = tmp_path / "b.zip"
    assert _run(capsys, "evidence", uid, "--capture", str(BLOCKED), "--out", str(bundle),
                "--sign", str(key), "--workers", "1")[0] == 0
    with zipfile.ZipFile(bundle) as z:
        assert "manifest.sig" in z.namelist()
    code, out = _run(capsys, "evidence", "--check", str(bundle), "--public-key", str(pub))
    assert code == 0 and "signature valid" in out and "signed: valid" in out
    # Another signer's key is not the one expected.
    _, other_pub = _keypair(tmp_path, "someone-else")
    code, out = _run(capsys, "evidence", "--check", str(bundle), "--public-key",
                     str(other_pub))
    assert code == 1 and "signed: untrusted" in out
    assert "b.zip: files as signed, but NOT signed by the key given" in out
    assert "MODIFIED" not in out  # every file is as it was signed


def test_a_re_hashed_manifest_no_longer_verifies(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Someone edits report.json and fixes its hash in the manifest: the hashes agree
    # again, but the signature over the manifest does not.
    key, pub = _keypair(tmp_path, "operator")
    uid = _uid(capsys)
    bundle = tmp_path / "b.zip"
    _run(capsys, "evidence", uid, "--capture", str(BLOCKED), "--out", str(bundle), "--sign",
         str(key), "--workers", "1")
    with zipfile.ZipFile(bundle) as z:
        files = {n: z.read(n) for n in z.namelist()}
    files["report.json"] = files["report.json"].replace(b'"blocked"', b'"ok"')
    manifest = json.loads(files["manifest.json"])
    manifest["files"]["report.json"] = {"sha256": hashlib.sha256(files["report.json"])
                                        .hexdigest(), "bytes": len(files["report.json"])}
    files["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    bundle.write_bytes(buf.getvalue())
    checked = check_bundle(bundle)
    assert checked.checked and checked.signature == "invalid" and not checked.ok
    code, out = _run(capsys, "evidence", "--check", str(bundle), "--public-key", str(pub))
    assert code == 1 and "does not match manifest.json" in out
    assert "b.zip: MODIFIED after signing (the signature does not verify)" in out
    # Dropping the signature instead: a check that expects one says it is missing.
    del files["manifest.sig"]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, d in files.items():
            z.writestr(n, d)
    bundle.write_bytes(buf.getvalue())
    code, out = _run(capsys, "evidence", "--check", str(bundle), "--public-key", str(pub))
    assert code == 1 and "manifest.sig: missing" in out
    assert "b.zip: NOT signed (a signature was expected)" in out
    assert check_bundle(bundle).signature == "none"


def test_a_key_that_is_not_ed25519_is_refused(tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    rsa = tmp_path / "rsa.pem"
    subprocess.run([openssl, "genpkey", "-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:1024",
                    "-out", str(rsa)], check=True, capture_output=True)
    with pytest.raises(EvidenceError, match="not an Ed25519 key"):
        load_signing_key(rsa)
