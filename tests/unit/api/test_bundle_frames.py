"""Frame numbers in an evidence bundle's report are those of the bundle's own capture.

Every frame an evidence entry or a flow row cites is looked up with tshark twice: in the
bundle's ``packets.pcap`` by the bundle's number (the entry's ``tshark_filter``) and in
the original capture by the number beside it; the two must be the same packet, byte for
byte. Run on every verdict other than ok of the bundled captures.
"""

from __future__ import annotations

import io
import json
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from api.evidence import build_bundle, bundle_name
from api.pipeline import analyze_capture
from policy.records import VerdictKind
from tests.conftest import ROOT, need_tool

CAPTURES = ROOT / "captures"


def _packets(tshark: str, capture: Path, frames: list[int]) -> list[str]:
    """The hex dumps of ``frames`` of ``capture``, in frame order, as tshark shows them."""
    want = "frame.number in {" + ",".join(str(n) for n in frames) + "}"
    out = subprocess.run([tshark, "-r", str(capture), "-Y", want, "-x"], check=True,
                         capture_output=True, text=True).stdout
    return [b.strip() for b in out.strip().split("\n\n") if b.strip()]


def _cited(doc: Any) -> list[dict[str, Any]]:
    """Every dict of the report that cites frames."""
    out: list[dict[str, Any]] = []
    if isinstance(doc, dict):
        if any(k.startswith("original_") and "frame" in k for k in doc):
            out.append(doc)
        for v in doc.values():
            out.extend(_cited(v))
    elif isinstance(doc, list):
        for v in doc:
            out.extend(_cited(v))
    return out


def _subjects() -> list[Any]:
    out: list[Any] = []
    for p in sorted(CAPTURES.rglob("*.pcap")):
        if p.name.startswith("bad-"):
            continue
        r = analyze_capture(p, hash_capture=False)
        uids = [c.uid for c in r.analysis.calls if c.verdict.kind is not VerdictKind.OK]
        uids += [u for u, v in r.analysis.flow_verdicts.items() if v.kind is not VerdictKind.OK]
        out.extend(pytest.param(p, u, id=f"{p.name}:{u}") for u in uids[:3])
    return out


@pytest.mark.parametrize("path,uid", _subjects())
def test_every_cited_frame_is_that_packet_in_the_bundle(path: Path, uid: str,
                                                          tmp_path: Path) -> None:
    tshark = need_tool("tshark")
    result = analyze_capture(path)
    data = build_bundle(result, uid, path, False, None, clock=lambda: 1_700_000_000.0)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        report = json.loads(z.read("report.json"))
        pcap_name = report["packets"]["file"]
        (tmp_path / pcap_name).write_bytes(z.read(pcap_name))
    bundle = tmp_path / pcap_name
    cited = _cited(report)
    assert cited, "the report cites no frame"
    pairs: dict[int, int] = {}
    for d in cited:
        for key in ("frames", "frame", "first_frame", "last_frame"):
            if f"original_{key}" not in d or key not in d:  # (the packets list: no key)
                continue
            orig, here = d[f"original_{key}"], d[key]
            orig = orig if isinstance(orig, list) else [orig]
            here = here if isinstance(here, list) else [here]
            assert None not in here and len(orig) == len(here), (key, d)
            for o, h in zip(orig, here, strict=True):
                assert pairs.setdefault(h, o) == o
        if "rule" in d:
            # The entry's own filter shows its packets, and its sentence the new numbers.
            assert d["tshark_filter"] == "frame.number in {" + ",".join(
                str(n) for n in d["frames"]) + "}"
            shown = subprocess.run([tshark, "-r", str(bundle), "-Y", d["tshark_filter"], "-T",
                                    "fields", "-e", "frame.number"], check=True,
                                   capture_output=True, text=True).stdout.split()
            assert [int(x) for x in shown] == d["frames"]
    here = sorted(pairs)
    assert all(1 <= h <= report["packets"]["count"] for h in here)
    assert _packets(tshark, bundle, here) == _packets(tshark, path, [pairs[h] for h in here])


def test_sentences_speak_of_the_bundle_frames_with_the_original_beside() -> None:
    path = CAPTURES / "icmp-errors.pcap"
    result = analyze_capture(path)
    uid, v = next((u, v) for u, v in result.analysis.flow_verdicts.items()
                  if any("frame" in e.text for e in v.evidence))
    data = build_bundle(result, uid, path, False, None)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        report = json.loads(z.read("report.json"))
    original = next(e for e in v.evidence if "frame" in e.text)
    got = next(e for e in report["flow_verdict"]["evidence"] if e["rule"] == original.rule)
    assert got["text"] != original.text and "of the original capture" in got["text"]
    for o, h in zip(got["original_frames"], got["frames"], strict=True):
        if f"frame {o}" in original.text:
            assert f"frame {h} (frame {o} of the original capture)" in got["text"]


@pytest.mark.parametrize("given,name", [
    ("captures/sample-call.pcap", "sample-call-Kabc.zip"),
    ("/x/y/call of 3 May.pcapng.gz", "call_of_3_May-Kabc.zip"),
    ("C:\\up\\..pcap", "capture-Kabc.zip"),
])
def test_bundle_names_come_from_the_capture_name(given: str, name: str) -> None:
    assert bundle_name(given, "Kabc") == name
