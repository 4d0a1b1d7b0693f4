"""The README's DuckDB and pandas queries over a dataset, run as they are written there
(each ```python block after a ``<!-- readme-test: NAME -->`` line), on a dataset of the
bundled captures, and checked against the dataset read with pyarrow."""

from __future__ import annotations

import os
import re
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("duckdb", reason="the dask extra (duckdb, pandas) is not installed")
pytest.importorskip("pandas", reason="the dask extra (duckdb, pandas) is not installed")

from api.archive import read_table
from api.cli import main

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = ROOT / "captures"


def readme_blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    found = dict(re.findall(r"<!-- readme-test: (\w+) -->\n```python\n(.*?)```", text, re.S))
    assert set(found) == {"duckdb", "pandas"}, "the README's tested blocks moved"
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    captures = [*sorted(CAPTURES.glob("sample-*.pcap")),
                *sorted((CAPTURES / "apps").glob("*.pcap"))]
    assert main(["analyze", *map(str, captures), "--out", str(work / "archive"),
                 "--jobs", "1"]) == 0
    return work


def run_block(code: str, cwd: Path) -> dict[str, Any]:
    here = os.getcwd()
    os.chdir(cwd)  # the README's paths are relative: archive/...
    try:
        scope: dict[str, Any] = {}
        exec(compile(code, "README.md", "exec"), scope)
        return scope
    finally:
        os.chdir(here)


def truth(work: Path) -> dict[str, Any]:
    v = read_table(str(work / "archive"), "verdicts").to_pylist()
    calls = [r for r in v if r["subject"] == "call"]
    blocked = Counter((r["app"], datetime.fromtimestamp(r["start_ts"], UTC).date())
                      for r in calls if r["verdict"] == "blocked")
    nets: dict[str, list[bool]] = {}
    for r in calls:
        if r["local"] and r["local"].count(".") == 3:
            nets.setdefault(r["local"].rsplit(".", 1)[0] + ".0/24", []).append(
                r["verdict"] == "throttled")
    reasons = Counter(x for r in v if r["verdict"] != "ok" for x in r["reasons"])
    return {"blocked": dict(blocked),
            "share": {n: (len(t), sum(t) / len(t)) for n, t in nets.items()},
            "reasons": dict(reasons)}


def _date(day: Any) -> date:
    """A day as DuckDB (a timestamp) or pandas (a date) gives it."""
    return day.date() if isinstance(day, datetime) else day  # type: ignore[no-any-return]


@pytest.mark.parametrize("engine", ["duckdb", "pandas"])
def test_readme_queries(dataset: Path, engine: str) -> None:
    want = truth(dataset)
    assert want["blocked"] and want["reasons"] and want["share"]  # something to count
    out = run_block(readme_blocks()[engine], dataset)
    b = out["blocked_per_day"]
    assert {(r.app, _date(r.day)): r.blocked for r in b.itertuples()} == want["blocked"]
    s = out["throttled_share"]
    assert {r.network: (r.calls, r.throttled_share) for r in s.itertuples()} == want["share"]
    top = out["top_reasons"]
    got = (dict(zip(top.reason, top.verdicts, strict=True)) if engine == "duckdb"
           else top.to_dict())
    assert got == want["reasons"]
    counts = list(got.values())
    assert counts == sorted(counts, reverse=True)  # most frequent first
