"""An anonymised bundle names no local address or port, in any encoding.

For every call (and every flow with a verdict of its own) of the bundled captures and,
when ``../shared`` is there, of the ``real-dev`` captures, a plain and an anonymised
bundle are built and compared by :func:`tests.anoncheck.leaks`; the rewritten capture's
checksums are checked by tshark as well.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import pytest

from api.evidence import PrefixAnonymiser, build_bundle
from api.pipeline import analyze_capture
from probe.errors import CaptureError
from tests.anoncheck import leaks
from tests.conftest import ROOT, need_tool

KEY = bytes(range(32))
REAL_DEV = ROOT.parent / "shared" / "captures" / "real-dev" / "pcap"
MAX_SUBJECTS = 4
"""Subjects bundled per capture: its calls first, then flows with their own verdict."""


def _unzip(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {n: z.read(n) for n in z.namelist()}


def _bad_checksums(tshark: str, pcap: Path) -> int:
    import subprocess
    opts = ["-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
            "-o", "tcp.check_checksum:TRUE"]
    # TCP's 0xFFFF for a sum of 0x0000 is one's-complement negative zero (RFC 1624 §3),
    # which tshark flags and the anonymiser, recomputing, writes as 0x0000: not a bad sum.
    bad = " || ".join([*(f"{f}.checksum.status == 0" for f in ("ip", "udp", "icmp")),
                       "(tcp.checksum.status == 0 && tcp.checksum != 0xffff)"])
    out = subprocess.run([tshark, "-n", "-r", str(pcap), *opts, "-Y", bad], check=True,
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def check_capture(path: Path, tmp_path: Path) -> dict[str, Any]:
    """Bundle each subject of ``path`` plain and anonymised; fail on any leak."""
    tshark = need_tool("tshark")
    try:
        result = analyze_capture(path)
    except CaptureError as exc:
        pytest.skip(f"{path.name}: not readable ({exc})")
    subjects = [(c.uid, c.local) for c in result.analysis.calls]
    subjects += [(u, None) for u in result.analysis.flow_verdicts]
    if not subjects:
        subjects = [(f.uid, None) for f in result.flows[:1]]
    totals: dict[str, int] = {"bundles": 0}
    for uid, local in subjects[:MAX_SUBJECTS]:
        plain = _unzip(build_bundle(result, uid, path, False, None))
        anon = _unzip(build_bundle(result, uid, path, True, KEY))
        name = next(n for n in plain if n.startswith("packets."))
        p0, p1 = tmp_path / f"plain-{name}", tmp_path / f"anon-{name}"
        p0.write_bytes(plain[name])
        p1.write_bytes(anon[name])
        names = PrefixAnonymiser(KEY)
        found, looked = leaks(tshark, p0, p1, anon, local, names.address)
        assert not found, f"{path.name} {uid}: {found[:10]}"
        assert _bad_checksums(tshark, p1) == _bad_checksums(tshark, p0)
        totals["bundles"] += 1
        for k, v in looked.items():
            totals[k] = totals.get(k, 0) + v
    return totals


def _bundled() -> list[Any]:
    return [pytest.param(p, id=p.name) for p in sorted((ROOT / "captures").rglob("*"))
            if p.suffix in (".pcap", ".pcapng", ".gz") and not p.name.startswith("bad-")]


def _real_dev() -> list[Any]:
    if not REAL_DEV.is_dir():
        return [pytest.param(None, id="real-dev-missing", marks=pytest.mark.shared)]
    return [pytest.param(p, id=p.name, marks=pytest.mark.shared)
            for p in sorted(REAL_DEV.iterdir()) if p.is_file()]


@pytest.mark.parametrize("path", _bundled())
def test_no_local_address_or_port_in_an_anonymised_bundle(path: Path, tmp_path: Path) -> None:
    check_capture(path, tmp_path)


@pytest.mark.parametrize("path", _real_dev())
def test_no_local_address_or_port_in_an_anonymised_real_bundle(path: Path | None,
                                                               tmp_path: Path) -> None:
    if path is None:
        pytest.skip(f"{REAL_DEV} is missing (../shared is absent)")
    check_capture(path, tmp_path)


def test_the_samples_carry_what_is_looked_for(tmp_path: Path) -> None:
    # The SIP sample names its phone in SIP headers and SDP; the call sample its public
    # address in STUN XOR-MAPPED-ADDRESS: the check above has something to find.
    sip = check_capture(ROOT / "captures" / "sample-sip.pcap", tmp_path)
    call = check_capture(ROOT / "captures" / "sample-call.pcap", tmp_path)
    assert sip["addresses"] >= 1 and sip["ports"] >= 2 and sip["header_ports"] >= 2
    assert call["stun_ports"] >= 6
