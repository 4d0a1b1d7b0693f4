"""Rebuild the attribution data from local copies of public lists.

``marsad refresh-data`` mounts :func:`main`. Nothing here touches the network:
download the list yourself (for instance Telegram's ``cidr.txt``, or
Microsoft's endpoints JSON from ``endpoints.office.com``), then::

    marsad refresh-data owners --format cidr --owner telegram --app telegram \\
        cidr.txt --out classifier/data/ip_owners.json
    marsad refresh-data owners --format o365 endpoints.json --out classifier/data/ip_owners.json
    marsad refresh-data owners --format csv prefixes.csv --out classifier/data/ip_owners.json
    marsad refresh-data hostnames --format o365 endpoints.json \\
        --out classifier/data/hostnames.json

Formats:

``cidr``
    one prefix per line, ``#`` starts a comment (Telegram's ``cidr.txt``
    shape). Needs ``--owner``; ``--app`` (repeatable) and ``--service`` say
    what the block serves.
``o365``
    Microsoft 365 endpoints JSON: an array of endpoint sets with ``id``,
    ``serviceArea``, ``category``, ``ips``, ``urls``, ``udpPorts``. Only the
    chosen service areas are read (``--service-area``, default ``Skype``,
    i.e. Teams and Skype for Business). An ``Optimize`` set with UDP ports is
    the Teams media relays (service ``relay``); the others are ``any``.
``csv``
    ``prefix,owner,app,source`` rows (an optional header row naming those
    columns); ``app`` may be empty; rows group into one block per
    (owner, app, source).

Merging: the refreshed owners' blocks are replaced, every other owner's
blocks are kept; each new block records the source file name and the refresh
date. Output is canonical (sorted blocks and prefixes, two-space JSON, one
trailing newline), so the same inputs on the same date give the same bytes.
Bad lines (not a prefix, host bits set, private space, unknown app) are
reported with their line number and skipped; they never stop a refresh.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import ipaddress
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from classifier.hostnames import (
    APPS,
    HOSTNAMES_PATH,
    HostRules,
    MatchKind,
    RulesError,
    Service,
    normalize_name,
)
from classifier.owners import OWNERS_PATH, OwnerTable, parse_network

__all__ = [
    "FORMATS",
    "BadLine",
    "Block",
    "RefreshReport",
    "dump_json",
    "main",
    "merge_blocks",
    "parse_cidr_list",
    "parse_csv",
    "parse_o365_hosts",
    "parse_o365_ips",
    "refresh_hostnames",
    "refresh_owners",
]

FORMATS = ("cidr", "o365", "csv")
"""Source formats :func:`refresh_owners` reads."""

DATA_VERSION = 1
"""The ``version`` written into refreshed files."""

O365_SOURCE_KEY = "ms365-endpoints"
"""Sources-table key of hostname rules refreshed from the O365 endpoints JSON."""

_O365_APPS: dict[str, tuple[str, str]] = {"Skype": ("microsoft", "teams")}
"""O365 service area -> (owner, app); the areas marsad attributes."""


@dataclass(frozen=True, slots=True)
class BadLine:
    """One input line (or JSON item) that was skipped."""

    line: int
    """1-based line number in the source file (JSON: 1-based endpoint-set position)."""
    text: str
    """The offending text, stripped."""
    reason: str
    """Why it was skipped."""


@dataclass(frozen=True, slots=True)
class Block:
    """A set of prefixes with one owner, app set, service and source."""

    owner: str
    """Organisation holding the prefixes."""
    apps: tuple[str, ...]
    """Apps served, sorted; may be empty."""
    service: Service
    """What the prefixes are used for (``any`` when the source does not say)."""
    source: str
    """Source description (for refreshed blocks: the file name and what it is)."""
    retrieved: str
    """ISO date of the refresh (or of reading the source)."""
    prefixes: tuple[str, ...]
    """CIDR prefixes, canonical text, sorted IPv4 first then by address and length."""

    def to_json(self) -> dict[str, Any]:
        """The block as written into ``ip_owners.json``."""
        return {"owner": self.owner, "apps": list(self.apps), "service": self.service.value,
                "source": self.source, "retrieved": self.retrieved,
                "prefixes": list(self.prefixes)}


@dataclass(slots=True)
class RefreshReport:
    """What a refresh did."""

    written: Path
    """The file written."""
    owners: tuple[str, ...] = ()
    """Owners whose blocks were replaced (owners refresh) or the app refreshed (hostnames)."""
    added: int = 0
    """Prefixes (or rules) written for the refreshed owners."""
    removed: int = 0
    """Prefixes (or rules) of the refreshed owners that the old file had."""
    bad: list[BadLine] = field(default_factory=list)
    """Skipped input lines."""


def _sort_prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    nets = {ipaddress.ip_network(p) for p in prefixes}
    ordered = sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    return tuple(str(n) for n in ordered)


def _check_apps(apps: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(apps)))
    unknown = [a for a in out if a not in APPS]
    if unknown:
        raise ValueError(f"unknown app(s) {', '.join(unknown)}; known: {', '.join(sorted(APPS))}")
    return out


def parse_cidr_list(text: str) -> tuple[list[str], list[BadLine]]:
    """Prefixes of a one-per-line list with ``#`` comments, and the lines skipped."""
    good: list[str] = []
    bad: list[BadLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            good.append(str(parse_network(line)))
        except ValueError as exc:
            bad.append(BadLine(number, line, str(exc)))
    return good, bad


def _load_o365(text: str) -> list[Any]:
    doc = json.loads(text)
    if not isinstance(doc, list):
        raise ValueError("O365 endpoints JSON must be an array of endpoint sets")
    return doc


def parse_o365_ips(text: str, service_areas: Sequence[str], source: str, retrieved: str
                   ) -> tuple[list[Block], list[BadLine]]:
    """Blocks from the ``ips`` of the chosen service areas of an O365 endpoints JSON."""
    relay: dict[tuple[str, str], set[str]] = {}
    anyuse: dict[tuple[str, str], set[str]] = {}
    bad: list[BadLine] = []
    for pos, item in enumerate(_load_o365(text), start=1):
        if not isinstance(item, dict):
            bad.append(BadLine(pos, repr(item)[:60], "endpoint set is not an object"))
            continue
        area = str(item.get("serviceArea", ""))
        if area not in service_areas:
            continue
        owner, app = _O365_APPS.get(area, ("microsoft", ""))
        ips = item.get("ips", [])
        if not isinstance(ips, list):
            bad.append(BadLine(pos, repr(ips)[:60], "'ips' is not a list"))
            continue
        media = item.get("category") == "Optimize" and bool(item.get("udpPorts"))
        target = relay if media else anyuse
        for ip in ips:
            try:
                target.setdefault((owner, app), set()).add(str(parse_network(str(ip))))
            except ValueError as exc:
                bad.append(BadLine(pos, str(ip), str(exc)))
    blocks: list[Block] = []
    for service, groups in ((Service.RELAY, relay), (Service.ANY, anyuse)):
        for (owner, app), prefixes in groups.items():
            apps = (app,) if app else ()
            blocks.append(Block(owner, apps, service, source, retrieved, _sort_prefixes(prefixes)))
    return blocks, bad


def parse_o365_hosts(text: str, service_areas: Sequence[str]
                     ) -> tuple[list[tuple[str, MatchKind, str]], list[BadLine]]:
    """(host, match, app) for the ``urls`` of the chosen service areas, and skipped items.

    ``*.name`` becomes a suffix rule on ``name``; a plain name an exact rule;
    a wildcard inside a label (``*cdn.example.net``) an exact rule with that
    label pattern. Placeholders such as ``<tenant>.sharepoint.com`` are skipped.
    """
    found: set[tuple[str, MatchKind, str]] = set()
    bad: list[BadLine] = []
    for pos, item in enumerate(_load_o365(text), start=1):
        if not isinstance(item, dict):
            bad.append(BadLine(pos, repr(item)[:60], "endpoint set is not an object"))
            continue
        area = str(item.get("serviceArea", ""))
        if area not in service_areas:
            continue
        app = _O365_APPS.get(area, ("microsoft", ""))[1]
        if not app:
            bad.append(BadLine(pos, area, "service area has no marsad app"))
            continue
        for url in item.get("urls", []) or []:
            host, kind = str(url).strip(), MatchKind.EXACT
            if host.startswith("*."):
                host, kind = host[2:], MatchKind.SUFFIX
            norm = normalize_name(host)
            if norm is None or any(ch in norm for ch in "<>?[]/:") or "*" in norm.split(".")[-1]:
                bad.append(BadLine(pos, str(url), "not a host name or pattern"))
                continue
            found.add((norm, kind, app))
    return sorted(found), bad


def parse_csv(text: str, retrieved: str) -> tuple[list[Block], list[BadLine]]:
    """Blocks from ``prefix,owner,app,source`` rows, and the rows skipped."""
    groups: dict[tuple[str, str, str], set[str]] = {}
    bad: list[BadLine] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells[:4]] == ["prefix", "owner", "app", "source"]:
            continue
        line = ",".join(cells)
        if len(cells) != 4:
            bad.append(BadLine(number, line, f"expected 4 columns, got {len(cells)}"))
            continue
        prefix, owner, app, source = cells
        if not owner or not source:
            bad.append(BadLine(number, line, "empty owner or source"))
            continue
        if app and app not in APPS:
            bad.append(BadLine(number, line, f"unknown app {app!r}"))
            continue
        try:
            net = parse_network(prefix)
        except ValueError as exc:
            bad.append(BadLine(number, line, str(exc)))
            continue
        groups.setdefault((owner, app, source), set()).add(str(net))
    blocks = [Block(owner, (app,) if app else (), Service.ANY, source, retrieved,
                    _sort_prefixes(prefixes))
              for (owner, app, source), prefixes in groups.items()]
    return blocks, bad


def _block_key(block: Block) -> tuple[str, tuple[str, ...], str, str]:
    return (block.owner, block.apps, block.service.value, block.source)


def merge_blocks(old: Sequence[Block], new: Sequence[Block], owners: Iterable[str]
                 ) -> list[Block]:
    """Drop ``owners``' old blocks, add ``new``; blocks with the same key are joined."""
    replaced = set(owners)
    joined: dict[tuple[str, tuple[str, ...], str, str], Block] = {}
    for block in [b for b in old if b.owner not in replaced] + list(new):
        key = _block_key(block)
        if key in joined:
            prev = joined[key]
            block = Block(prev.owner, prev.apps, prev.service, prev.source,
                          max(prev.retrieved, block.retrieved),
                          _sort_prefixes(prev.prefixes + block.prefixes))
        joined[key] = block
    return [joined[k] for k in sorted(joined)]


def _read_blocks(path: Path) -> list[Block]:
    if not path.exists():
        return []
    OwnerTable.from_file(path)  # validates the whole file first
    doc = json.loads(path.read_text(encoding="utf-8"))
    return [Block(str(b["owner"]), tuple(sorted(b["apps"])), Service(b["service"]),
                  str(b["source"]), str(b["retrieved"]), _sort_prefixes(b["prefixes"]))
            for b in doc["blocks"]]


def dump_json(doc: Mapping[str, Any]) -> str:
    """Canonical JSON text of a data file: two-space indent, ASCII, final newline."""
    return json.dumps(doc, indent=2, ensure_ascii=True) + "\n"


def _owners_doc(blocks: Sequence[Block], updated: str, note: str) -> dict[str, Any]:
    return {"version": DATA_VERSION, "updated": updated, "note": note,
            "blocks": [b.to_json() for b in blocks]}


_OWNERS_NOTE = ("Snapshot of published address lists, not a live feed; see README.md. "
                "Rebuild with 'marsad refresh-data owners'.")


def _today(today: dt.date | None) -> str:
    return (today or dt.date.today()).isoformat()


def refresh_owners(source_path: Path | str, fmt: str, out_path: Path | str = OWNERS_PATH, *,
                   owner: str | None = None, apps: Sequence[str] = (),
                   service: Service | str = Service.ANY, service_areas: Sequence[str] = ("Skype",),
                   base_path: Path | str | None = None, today: dt.date | None = None
                   ) -> RefreshReport:
    """Rebuild the owners file from the local list at ``source_path``.

    ``base_path`` is the file merged into (default: ``out_path`` when it
    exists). ``owner``/``apps``/``service`` apply to ``cidr`` lists only.
    Raises ``ValueError`` for a bad format or option, ``OSError`` for I/O.
    """
    src = Path(source_path)
    out = Path(out_path)
    base = Path(base_path) if base_path is not None else out
    date = _today(today)
    text = src.read_text(encoding="utf-8")
    if fmt == "cidr":
        if not owner:
            raise ValueError("format 'cidr' needs an owner")
        prefixes, bad = parse_cidr_list(text)
        new = [Block(owner, _check_apps(apps), Service(service), f"{src.name} (cidr list)", date,
                     _sort_prefixes(prefixes))] if prefixes else []
        owners = [owner]
    elif fmt == "o365":
        new, bad = parse_o365_ips(text, service_areas, f"{src.name} (Microsoft 365 endpoints JSON)",
                                  date)
        owners = sorted({b.owner for b in new})
    elif fmt == "csv":
        new, bad = parse_csv(text, date)
        owners = sorted({b.owner for b in new})
    else:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not new:
        reasons = "; ".join(f"line {b.line}: {b.reason}" for b in bad[:3])
        raise ValueError(f"{src.name}: no usable prefix, nothing changed"
                         + (f" ({len(bad)} bad lines: {reasons})" if bad else ""))
    old = _read_blocks(base)
    removed = sum(len(b.prefixes) for b in old if b.owner in owners)
    merged = merge_blocks(old, new, owners)
    out.write_text(dump_json(_owners_doc(merged, date, _OWNERS_NOTE)), encoding="utf-8")
    OwnerTable.from_file(out)  # the file written must load
    added = sum(len(b.prefixes) for b in merged if b.owner in owners)
    return RefreshReport(out, tuple(owners), added, removed, bad)


def refresh_hostnames(source_path: Path | str, out_path: Path | str = HOSTNAMES_PATH, *,
                      service_areas: Sequence[str] = ("Skype",),
                      base_path: Path | str | None = None, today: dt.date | None = None
                      ) -> RefreshReport:
    """Replace the rules sourced from the O365 endpoints JSON with its current ``urls``.

    Other rules are kept. A refreshed host that had a rule before keeps that
    rule's service; a new host gets ``web``. The ``ms365-endpoints`` entry of
    the sources table records the file name and the refresh date.
    """
    src = Path(source_path)
    out = Path(out_path)
    base = Path(base_path) if base_path is not None else out
    date = _today(today)
    hosts, bad = parse_o365_hosts(src.read_text(encoding="utf-8"), service_areas)
    if base.exists():
        HostRules.from_file(base)  # validates
        doc: dict[str, Any] = json.loads(base.read_text(encoding="utf-8"))
    else:
        doc = {"version": DATA_VERSION, "updated": date, "sources": {}, "rules": []}
    rules: list[dict[str, Any]] = list(doc.get("rules", []))
    previous = {(r["host"], r["match"]): r for r in rules if r.get("source") == O365_SOURCE_KEY}
    kept = [r for r in rules if r.get("source") != O365_SOURCE_KEY]
    fresh: list[dict[str, Any]] = []
    if hosts:
        for host, kind, app in hosts:
            prev = previous.get((host, kind.value))
            fresh.append({"host": host, "match": kind.value, "app": app, "owner": "microsoft",
                          "service": prev["service"] if prev else Service.WEB.value,
                          "source": O365_SOURCE_KEY})
    else:
        fresh = list(previous.values())  # nothing usable read: keep what was there
    sources: dict[str, Any] = dict(doc.get("sources", {}))
    entry = dict(sources.get(O365_SOURCE_KEY, {}))
    entry.setdefault("title", "Microsoft 365 URLs and IP address ranges (endpoints JSON)")
    entry.setdefault("url", "https://endpoints.office.com/endpoints/worldwide")
    if hosts:
        entry["file"] = src.name
        entry["retrieved"] = date
    sources[O365_SOURCE_KEY] = entry
    merged = kept + fresh
    merged.sort(key=lambda r: (r["owner"], r["app"] or "",
                               tuple(reversed(r["host"].split("."))), r["match"]))
    doc["version"] = DATA_VERSION
    doc["updated"] = date
    doc["sources"] = dict(sorted(sources.items()))
    doc["rules"] = merged
    out.write_text(dump_json(doc), encoding="utf-8")
    HostRules.from_file(out)  # the file written must load
    return RefreshReport(out, ("teams",), len(fresh), len(previous), bad)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="marsad refresh-data",
        description="Rebuild classifier/data/ip_owners.json or hostnames.json from a local "
                    "copy of a public list. Bad lines are reported and skipped.")
    sub = parser.add_subparsers(dest="what", required=True)
    own = sub.add_parser("owners", help="rebuild the IP-owner table")
    own.add_argument("--format", required=True, choices=FORMATS,
                     help="cidr: one prefix per line; o365: Microsoft 365 endpoints JSON; "
                          "csv: prefix,owner,app,source rows")
    own.add_argument("--owner", help="owner of the prefixes (cidr only), e.g. telegram")
    own.add_argument("--app", action="append", default=[], dest="apps",
                     help="app served by the prefixes (cidr only; repeatable)")
    own.add_argument("--service", default=Service.ANY.value,
                     choices=[s.value for s in Service],
                     help="what the prefixes are used for (cidr only; default any)")
    own.add_argument("--service-area", action="append", dest="areas",
                     help="O365 service area to read (repeatable; default Skype)")
    own.add_argument("--base", help="file to merge into (default: the --out file)")
    own.add_argument("--date", help="refresh date YYYY-MM-DD (default today)")
    own.add_argument("source", help="local copy of the published list")
    own.add_argument("--out", default=str(OWNERS_PATH), help="file to write")
    hst = sub.add_parser("hostnames", help="refresh the Teams hostname rules")
    hst.add_argument("--format", required=True, choices=("o365",),
                     help="o365: Microsoft 365 endpoints JSON (its 'urls')")
    hst.add_argument("--service-area", action="append", dest="areas",
                     help="O365 service area to read (repeatable; default Skype)")
    hst.add_argument("--base", help="file to merge into (default: the --out file)")
    hst.add_argument("--date", help="refresh date YYYY-MM-DD (default today)")
    hst.add_argument("source", help="local copy of the endpoints JSON")
    hst.add_argument("--out", default=str(HOSTNAMES_PATH), help="file to write")
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run ``refresh-data``; 0 on success, 1 when the refresh failed, 2 on bad usage.

    Skipped lines are printed to ``stderr`` as ``FILE:LINE: reason: text``;
    a summary goes to ``stdout``.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    try:
        today = dt.date.fromisoformat(args.date) if args.date else None
        areas = tuple(args.areas or ("Skype",))
        if args.what == "owners":
            report = refresh_owners(args.source, args.format, args.out, owner=args.owner,
                                    apps=args.apps, service=args.service, service_areas=areas,
                                    base_path=args.base, today=today)
        else:
            report = refresh_hostnames(args.source, args.out, service_areas=areas,
                                       base_path=args.base, today=today)
    except (OSError, ValueError, KeyError, RulesError) as exc:
        print(f"refresh-data: {exc}", file=err)
        return 1
    name = Path(args.source).name
    for bad in report.bad:
        print(f"{name}:{bad.line}: {bad.reason}: {bad.text}", file=err)
    print(f"wrote {report.written}: {', '.join(report.owners) or 'nothing'} "
          f"{report.removed} -> {report.added} entries, {len(report.bad)} skipped", file=out)
    return 0
