"""Writers for flow (and later analysis) records: JSON, JSON Lines, CSV."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

import orjson

__all__ = ["CsvWriter", "dumps", "write_jsonl"]

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(obj: Any) -> str:
    """Compact, deterministic JSON (NaN and infinities become null)."""
    return orjson.dumps(obj, option=_OPTS).decode()


def write_jsonl(rows: Iterable[Mapping[str, Any]], out: TextIO) -> None:
    """One JSON object per line; the caller decides when to flush."""
    for row in rows:
        out.write(dumps(row))
        out.write("\n")


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
        self._w.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                          for k, v in row.items()})
