"""The report a person files, in English, French and Arabic, read back from its PDF.

Each report is rendered by WeasyPrint and its text read back with pdftotext: the title,
the verdict, the translated evidence sentence, the capture's SHA-256, the call's uid and
the tshark filter must be there in the report's language. Arabic is compared after
Unicode normalisation (pdftotext gives some letters as presentation forms, and bidi
marks around left-to-right runs).
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import unicodedata
import zipfile
from pathlib import Path

import pytest

from api.cli import main
from api.document import (
    EVIDENCE,
    TEXTS,
    build_document,
    evidence_sentence,
    render_html,
    render_markdown,
    render_pdf,
)
from api.evidence import build_bundle
from api.pipeline import analyze_capture
from tests.conftest import ROOT, need_tool

CAPTURES = ROOT / "captures"
BLOCKED = CAPTURES / "sample-blocked.pcap"
SIP = CAPTURES / "sample-sip.pcap"

WANT = {
    # (title, blocked verdict word, a piece of the translated STUN sentence)
    "en": ("Call quality and interference report", "blocked", "got no response while other"),
    "fr": ("Rapport sur la qualité des appels", "bloqué", "n'ont reçu aucune réponse"),
    "ar": ("تقرير جودة المكالمات", "محجوبة", "أي رد بينما"),
}


def plain(text: str) -> str:
    """Text as compared: NFKC (presentation forms to letters), no bidi controls, no
    Arabic short vowels or tatweel, runs of spaces as one."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub("[\u200e\u200f\u202a-\u202e\u2066-\u2069\u064b-\u0652\u0640]", "", text)
    return re.sub(r"\s+", " ", text)


def pdf_text(tmp: Path, data: bytes, name: str) -> str:
    tool = need_tool("pdftotext")
    pdf = tmp / name
    pdf.write_bytes(data)
    out = subprocess.run([tool, "-raw", str(pdf), "-"], check=True, capture_output=True)
    return plain(out.stdout.decode("utf-8"))


def _contains(hay: str, needle: str) -> bool:
    """``needle`` in ``hay`` word by word in order: pdftotext may reorder the runs of a
    right-to-left line, so Arabic is matched word by word."""
    needle = plain(needle)
    if needle in hay:
        return True
    return all(w in hay for w in needle.split())


@pytest.mark.parametrize("lang", ["en", "fr", "ar"])
def test_the_pdf_report_reads_back_in_its_language(lang: str, tmp_path: Path) -> None:
    pytest.importorskip("weasyprint")
    result = analyze_capture(BLOCKED)
    call = result.analysis.calls[0]
    doc = build_document(result, lang=lang, capture_name=BLOCKED.name, version="test",
                         policy_sha256="ab" * 32)
    text = pdf_text(tmp_path, render_pdf(doc), f"{lang}.pdf")
    title, verdict, sentence = WANT[lang]
    for needle in (title, verdict, sentence, TEXTS[lang]["verify"], TEXTS[lang]["timeline"],
                   TEXTS[lang]["benign"]):
        assert _contains(text, needle), (lang, needle)
    assert result.sha256 is not None and result.sha256 in text.replace(" ", "")
    assert call.uid in text and "frame.numberin{29,30,34" in text.replace(" ", "")
    assert "157.240.27.54" in text  # the STUN server named in the evidence


@pytest.mark.parametrize("lang", ["fr", "ar"])
def test_evidence_sentences_are_translated_from_their_templates(lang: str) -> None:
    result = analyze_capture(BLOCKED)
    by_uid = {f.uid: f for f in result.flows}
    for ev in result.analysis.calls[0].verdict.evidence:
        assert ev.rule in EVIDENCE[lang]
        text, translated = evidence_sentence(ev, by_uid, lang)
        assert translated and text != ev.text
        english, _ = evidence_sentence(ev, by_uid, "en")
        assert english == ev.text  # the English template says what the rule said
    # A rule every language knows, in every language.
    assert set(EVIDENCE["en"]) == set(EVIDENCE["fr"]) == set(EVIDENCE["ar"])


@pytest.mark.parametrize("lang", ["en", "fr", "ar"])
def test_what_the_capture_missed_is_said_in_every_language(lang: str, tmp_path: Path) -> None:
    # Silence in a capture that missed half of what its host acknowledged receiving is
    # unknown, and says how much it missed; where it missed nothing the block stands and
    # the report names that among the benign explanations ruled out.
    from tests.unit.policy.test_verdict_rules import ME_HOST, silence_capture
    lossy = analyze_capture(silence_capture(tmp_path / "lossy.pcap", 0.5), workers=1)
    by_uid = {f.uid: f for f in lossy.flows}
    (call,) = lossy.analysis.calls
    (ev,) = call.verdict.evidence
    assert ev.rule == "unknown.capture_loss"
    text, translated = evidence_sentence(ev, by_uid, lang)
    assert translated and ME_HOST in text
    assert {"en": "50.0%", "fr": "50,0\u00a0%", "ar": "٥٠٫٠٪"}[lang] in text, text
    whole = analyze_capture(silence_capture(tmp_path / "whole.pcap", 1.0), workers=1)
    md = render_markdown(build_document(whole, lang=lang, capture_name="whole.pcap"))
    want = {"en": "The capture holds what came back", "fr": "La capture contient ce qui",
            "ar": "يحتوي التسجيل على ما عاد"}[lang]
    assert want in md, md
    lossy_md = render_markdown(build_document(lossy, lang=lang, capture_name="lossy.pcap"))
    assert want not in lossy_md  # not ruled out there: it is why the verdict is unknown


def test_arabic_reads_right_to_left_with_its_digits_or_western_ones() -> None:
    result = analyze_capture(BLOCKED)
    ar = render_html(build_document(result, lang="ar", capture_name=BLOCKED.name))
    ma = render_html(build_document(result, lang="ar-MA", capture_name=BLOCKED.name))
    assert 'dir="rtl"' in ar and 'lang="ar"' in ar
    assert "٢٢٫٣" in ar and "22.3" not in ar.split("<h2>", 1)[1].split("<h3>", 1)[0]
    assert "22.3" in ma and "٢٢٫٣" not in ma
    # Identifiers stay as they are typed.
    assert result.sha256 is not None and result.sha256 in ar


def test_markdown_report_of_a_sip_call_and_a_period() -> None:
    result = analyze_capture(SIP)
    call = result.analysis.calls[0]
    md = render_markdown(build_document(result, lang="en", capture_name=SIP.name))
    assert f"## Call `{call.uid}`" in md and "### Timeline" in md and "set-up begins" in md
    before = render_markdown(build_document(result, lang="en", capture_name=SIP.name,
                                            until=call.start_ts))
    assert "No call in this report." in before
    with pytest.raises(ValueError, match="no call Knope"):
        build_document(result, lang="en", capture_name=SIP.name, call_uid="Knope")


def test_the_cli_writes_each_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("weasyprint")
    assert main(["report", str(BLOCKED), "--format", "md", "--lang", "fr", "--workers",
                 "1"]) == 0
    assert "# Rapport sur la qualité" in capsys.readouterr().out
    assert main(["report", str(BLOCKED), "--format", "pdf", "--lang", "ar", "--out",
                 str(tmp_path), "--workers", "1"]) == 0
    pdf = tmp_path / "sample-blocked.pcap.report.ar.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert main(["report", str(BLOCKED), "--format", "pdf", "--workers", "1"]) == 2


@pytest.mark.parametrize("lang", ["en", "fr", "ar"])
def test_a_report_of_a_damaged_capture_says_where_it_stops(
        lang: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What a report rests on stops where the capture was cut: the document says so at
    its head, in its language, with the byte offset, and the command warns (exit 3)."""
    data = (CAPTURES / "sample-call.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:100_000])
    result = analyze_capture(cut, workers=1)
    at = result.status.stopped_at
    assert not result.status.complete and at is not None and 0 < at < 100_000
    md = render_markdown(build_document(result, lang=lang, capture_name="cut.pcap"))
    head = md.split("\n\n")[1]  # the header's lines
    words = {"en": "Damaged capture", "fr": "Capture endommagée", "ar": "تسجيل تالف"}[lang]
    number = str(at).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")) if lang == "ar" \
        else str(at)
    assert words in head and number in head, head
    whole = render_markdown(build_document(analyze_capture(CAPTURES / "sample-call.pcap",
                                                           workers=1),
                                           lang=lang, capture_name="sample-call.pcap"))
    assert words not in whole
    out = tmp_path / f"cut.{lang}.html"
    assert main(["report", str(cut), "--format", "html", "--lang", lang, "--out", str(out),
                 "--workers", "1"]) == 3
    err = capsys.readouterr().err
    assert f"marsad: {cut}: capture truncated at byte {at}" in err
    assert f"flows before byte {at} were reported" in err
    assert words in out.read_text(encoding="utf-8")


def test_every_call_bundle_holds_its_report_with_the_bundles_frames(tmp_path: Path) -> None:
    result = analyze_capture(BLOCKED)
    call = result.analysis.calls[0]
    with zipfile.ZipFile(io.BytesIO(build_bundle(result, call.uid, BLOCKED, False,
                                                 None))) as z:
        md = z.read("report.en.md").decode()
        html = z.read("report.ar.html").decode()
        manifest = z.read("manifest.json").decode()
        report = z.read("report.json")
    # The STUN evidence cites frame 29 of the capture: in the bundle, the packet it became.
    stun = json.loads(report)["call"]["evidence"][0]
    assert stun["original_frames"][0] == 29 and stun["frames"][0] != 29
    here = ",".join(str(n) for n in stun["frames"])
    assert f"tshark -r packets.pcap -Y 'frame.number in {{{here}}}'" in md
    assert "original capture's frames 29" in md
    assert "marsad evidence --check sample-blocked-" in md
    assert "marsad verify evidence.db --capture sample-blocked.pcap" in md
    assert "report.ar.html" in manifest and 'dir="rtl"' in html
    # The command names the ledger the bundle's entries came from.
    with zipfile.ZipFile(io.BytesIO(build_bundle(result, call.uid, BLOCKED, False, None,
                                                 ledger_name="my ledger.db"))) as z:
        assert "marsad verify 'my ledger.db' --capture" in z.read("report.en.md").decode()
    anon = zipfile.ZipFile(io.BytesIO(build_bundle(result, call.uid, BLOCKED, True,
                                                   bytes(range(32)))))
    assert "192.168.1.23" not in anon.read("report.en.md").decode()


def test_the_commands_to_verify_can_be_pasted_into_a_shell() -> None:
    """A capture named with spaces is quoted; one read from standard input has no name, so
    the command names the file it was saved as."""
    result = analyze_capture(BLOCKED, workers=1)
    md = render_markdown(build_document(result, lang="en", capture_name="cap ture é.pcap"))
    assert "marsad verify evidence.db --capture 'cap ture é.pcap'" in md
    assert "tshark -r 'cap ture é.pcap' -Y" in md
    stdin = render_markdown(build_document(result, lang="en", capture_name="-"))
    assert "--capture CAPTURE.pcap" in stdin and "--capture -" not in stdin
    assert "tshark -r CAPTURE.pcap -Y" in stdin and "tshark -r -" not in stdin
