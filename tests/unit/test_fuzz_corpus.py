"""Replay the fuzz corpus (fuzz/corpus/<target>) and the crashers already fixed
(fuzz/regressions/<target>) through every fuzz target: no fuzzing, only the inputs, so a
parser that regresses on one of them fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz import targets
from fuzz.targets import TARGETS, ContractBroken
from probe.errors import Malformed

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"


def _inputs(name: str) -> list[Path]:
    return sorted(p for d in ("corpus", "regressions") for p in (FUZZ / d / name).glob("*")
                  if p.is_file())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_corpus_replays_within_the_contract(name: str) -> None:
    inputs = _inputs(name)
    assert len(inputs) >= 5, f"{name}: seed corpus missing (python fuzz/make_corpus.py)"
    run = TARGETS[name].run
    for path in inputs:
        run(path.read_bytes())  # raises on a crash or a broken contract


def test_committed_corpus_stays_small() -> None:
    total = sum(p.stat().st_size for p in (FUZZ / "corpus").rglob("*") if p.is_file())
    assert total < 400_000


def test_an_error_outside_the_contract_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    (seed, *_) = _inputs("dns")

    def broken(data: bytes, *args: object, **kwargs: object) -> object:
        raise ValueError("not in the error tree")

    monkeypatch.setattr(targets.dns, "parse_dns", broken)
    with pytest.raises(ValueError):
        TARGETS["dns"].run(seed.read_bytes())


def test_a_documented_error_is_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(data: bytes, *args: object, **kwargs: object) -> object:
        raise Malformed("sip", 0, "refused")

    monkeypatch.setattr(targets.sip, "parse_sip", refuse)
    TARGETS["sip"].run(b"INVITE sip:a@b SIP/2.0\r\n\r\n")


def test_a_fast_path_disagreeing_with_its_parser_is_a_crash(
        monkeypatch: pytest.MonkeyPatch) -> None:
    (seed, *_) = (p for p in _inputs("dns") if targets.dns.dns_gist(p.read_bytes()) is not None)
    real = targets.dns.dns_gist

    def wrong(data: bytes) -> object:
        gist = real(data)
        return None if gist is None else type(gist)(not gist.is_response, gist.rcode,
                                                    gist.question, gist.addresses)

    monkeypatch.setattr(targets.dns, "dns_gist", wrong)
    with pytest.raises(ContractBroken):
        TARGETS["dns"].run(seed.read_bytes())
