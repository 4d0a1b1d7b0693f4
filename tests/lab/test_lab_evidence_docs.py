"""Evidence made from lab calls: anonymised bundles that name no local address or port,
and the report in three languages read back from its PDF."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from api.document import build_document, render_pdf
from api.pipeline import analyze_capture
from tests.unit.api.test_anonymised_bundles import check_capture
from tests.unit.api.test_document import WANT, _contains, pdf_text

LabCaptures = dict[str, tuple[Path, dict[str, Any]]]


def test_no_local_address_or_port_in_an_anonymised_lab_bundle(lab_captures: LabCaptures,
                                                             tmp_path: Path) -> None:
    looked: dict[str, int] = {}
    for name, (path, _meta) in sorted(lab_captures.items()):
        work = tmp_path / name
        work.mkdir()
        got = check_capture(path, work)
        for k, v in got.items():
            looked[k] = looked.get(k, 0) + v
    # The lab's calls carry STUN with XOR-MAPPED-ADDRESS and SIP/SDP from sipp.
    assert looked["bundles"] >= len(lab_captures) and looked["stun_ports"] > 0


@pytest.mark.parametrize("lang", ["en", "fr", "ar"])
def test_a_lab_call_report_reads_back_in_its_language(lab_captures: LabCaptures, lang: str,
                                                      tmp_path: Path) -> None:
    if importlib.util.find_spec("weasyprint") is None:
        pytest.skip("WeasyPrint is not installed")
    path, _meta = lab_captures["block_udp"]
    result = analyze_capture(path, workers=1)
    call = max(result.analysis.calls, key=lambda c: sum(leg.packets for leg in c.legs))
    doc = build_document(result, lang=lang, capture_name=path.name, call_uid=call.uid)
    text = pdf_text(tmp_path, render_pdf(doc), f"{lang}.pdf")
    title, verdict, _ = WANT[lang]
    assert _contains(text, title) and _contains(text, verdict)
    assert call.uid in text and (result.sha256 or "") in text.replace(" ", "")
