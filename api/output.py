"""Writers for flow (and later analysis) records: JSON, JSON Lines, CSV."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

__all__ = ["CsvWriter", "dumps", "write_jsonl"]


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def dumps(obj: Any) -> str:
    """Compact, deterministic JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=_clean)


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: TextIO) -> None:
    for row in rows:
        out.write(dumps(row))
        out.write("\n")
        out.flush()


class CsvWriter:
    """CSV with a header taken from the first row; nested values become JSON."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._w: Any = None

    def write(self, row: Mapping[str, Any]) -> None:
        if self._w is None:
            self._w = csv.DictWriter(self._out, fieldnames=list(row.keys()),
                                     extrasaction="ignore", lineterminator="\n")
            self._w.writeheader()
        self._w.writerow({k: dumps(v) if isinstance(v, list | dict) else v
                          for k, v in row.items()})
        self._out.flush()
