"""Hostname rules: which app and which of its services a DNS name belongs to.

The rules live in ``classifier/data/hostnames.json`` (see ``data/README.md``):
a ``version``, an ``updated`` date, a ``sources`` table and a list of rules,
each ``{"host", "match", "app", "owner", "service", "source"}``. A name seen as
TLS SNI, QUIC SNI or in a DNS question/answer is matched with
:func:`match_host` (or :meth:`HostRules.match` for a table loaded from
elsewhere).

Matching:

* names are compared case-insensitively, with one trailing dot ignored;
* ``match: "exact"`` matches the name itself; ``match: "suffix"`` matches the
  name and every name below it, on label boundaries only (``whatsapp.net``
  matches ``g.whatsapp.net`` but never ``notwhatsapp.net``);
* a label of a rule's host may hold ``*`` wildcards that stay inside that one
  label (``zoom*zc.zoom.us`` matches ``zoomfr84zc.zoom.us``, not
  ``a.b.zoom.us``);
* when several rules match, the most specific wins: more labels that are not
  a bare ``*`` first, then more labels, then more literal (non-wildcard)
  characters, then ``exact`` over ``suffix``.

Errors: :class:`RulesError` (a ``ValueError``) when a rules file is not of
this shape: unknown app or service, bad host, missing field.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "APPS",
    "DATA_DIR",
    "HOSTNAMES_PATH",
    "HostMatch",
    "HostRule",
    "HostRules",
    "MatchKind",
    "RulesError",
    "Service",
    "app_owner",
    "default_rules",
    "match_host",
    "normalize_name",
    "read_json_object",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
"""Where the classifier's packaged data files live."""
HOSTNAMES_PATH = DATA_DIR / "hostnames.json"
"""The packaged hostname rules."""

APPS: frozenset[str] = frozenset({
    "whatsapp", "messenger", "facebook", "teams", "zoom", "facetime", "viber", "signal",
    "telegram", "meet", "discord", "webex", "wechat", "line", "imo", "snapchat", "sip",
    "youtube", "netflix",
})
"""Every app name the classifier reports (the ``app`` field of a classification)."""

_MAX_NAME = 253
"""Longest DNS name in text form without the trailing dot (RFC 1035 §2.3.4)."""
_MAX_LABEL = 63
"""Longest DNS label (RFC 1035 §2.3.4)."""


class RulesError(ValueError):
    """A rules or owners file does not have the documented shape."""


class Service(StrEnum):
    """What a name (or an address block) is used for by its app."""

    RELAY = "relay"
    """Media relays, TURN/STUN servers, SFUs: the far end of call media."""
    CALL_SETUP = "call-setup"
    """Call signalling and session control (zone controllers, flight proxies)."""
    MESSAGING = "messaging"
    """Chat transport and the app's service APIs."""
    MEDIA = "media"
    """File, image and attachment storage and CDNs."""
    STREAMING = "streaming"
    """Video streaming CDNs (YouTube, Netflix)."""
    WEB = "web"
    """Web sites, web apps and generic front doors."""
    PUSH = "push"
    """Push and notification channels."""
    ANY = "any"
    """Address blocks only: the owner's whole space, use unknown."""


class MatchKind(StrEnum):
    """How a rule's host is compared with a name."""

    EXACT = "exact"
    """The name itself only."""
    SUFFIX = "suffix"
    """The name and every name below it, on label boundaries."""


@dataclass(frozen=True, slots=True)
class HostRule:
    """One rule of the hostname table."""

    host: str
    """The rule's host, lower case, no trailing dot; labels may hold ``*``."""
    match: MatchKind
    """Exact name only, or the name and its subdomains."""
    app: str | None
    """App from :data:`APPS`, or None when the name is the owner's but no one app's."""
    owner: str
    """Organisation that runs the name (``meta``, ``microsoft``, ``apple``...)."""
    service: Service
    """What the name is used for."""
    source: str
    """Key into the file's ``sources`` table."""

    @property
    def labels(self) -> tuple[str, ...]:
        """The host's labels, left to right."""
        return tuple(self.host.split("."))

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        """Sort key: more non-``*`` labels, more labels, more literal characters, exact first."""
        named = sum(1 for label in self.labels if label != "*")
        literal = sum(len(label.replace("*", "")) for label in self.labels)
        exact = 1 if self.match is MatchKind.EXACT else 0
        return (named, len(self.labels), literal, exact)

    @property
    def text(self) -> str:
        """The rule as one string, e.g. ``suffix:whatsapp.net``."""
        return f"{self.match.value}:{self.host}"


@dataclass(frozen=True, slots=True)
class HostMatch:
    """The rule a name matched, and what it says about the name."""

    app: str | None
    """App from :data:`APPS`, or None for a name of the owner shared by several apps."""
    owner: str
    """Organisation that runs the name."""
    service: Service
    """What the name is used for."""
    rule: str
    """The winning rule as ``<match>:<host>`` (e.g. ``suffix:relay.teams.microsoft.com``)."""
    source: str
    """Key of the rule's source in the rules file's ``sources`` table."""


def normalize_name(name: str) -> str | None:
    """Lower-case ``name`` and drop one trailing dot; None if it is no DNS name.

    Empty names, names with empty labels, labels over 63 characters, names
    over 253 characters and names with spaces or control characters give None.
    """
    text = name.strip().lower()
    if text.endswith("."):
        text = text[:-1]
    if not text or len(text) > _MAX_NAME:
        return None
    labels = text.split(".")
    for label in labels:
        if not label or len(label) > _MAX_LABEL:
            return None
        if any(ch.isspace() or ord(ch) < 0x21 or ord(ch) == 0x7F for ch in label):
            return None
    return text


def _literal_suffix(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The longest run of wildcard-free labels at the right end of ``labels``."""
    cut = len(labels)
    while cut > 0 and "*" not in labels[cut - 1]:
        cut -= 1
    return labels[cut:]


def read_json_object(path: Path | str) -> dict[str, Any]:
    """A data file's JSON object; raises :class:`RulesError` (not JSON, not an object) or
    ``OSError``."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RulesError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise RulesError(f"{path}: top level must be an object")
    return doc


class HostRules:
    """A hostname rule table with most-specific-wins lookup.

    Rules are bucketed by the wildcard-free labels at their right end, so a
    lookup walks the suffixes of the name once (one dictionary probe per
    label) and only tests wildcard labels of rules in the buckets it meets.
    """

    def __init__(self, rules: Iterable[HostRule], version: int = 0, updated: str = "",
                 sources: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.rules: tuple[HostRule, ...] = tuple(rules)
        """All rules, in file order."""
        self.version = version
        """The file's ``version`` field."""
        self.updated = updated
        """The file's ``updated`` date (ISO 8601)."""
        self.sources: dict[str, dict[str, str]] = {k: dict(v) for k, v in (sources or {}).items()}
        """The file's ``sources`` table: key -> title, url, retrieved, licence."""
        self._buckets: dict[tuple[str, ...], list[HostRule]] = {}
        for rule in self.rules:
            self._buckets.setdefault(_literal_suffix(rule.labels), []).append(rule)
        for bucket in self._buckets.values():
            bucket.sort(key=lambda r: r.specificity, reverse=True)

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> HostRules:
        """Build from a parsed ``hostnames.json`` document; raises :class:`RulesError`."""
        try:
            version = int(doc["version"])
            updated = str(doc["updated"])
            sources = doc.get("sources", {})
            raw_rules = doc["rules"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RulesError(f"hostname rules: missing or bad top-level field: {exc}") from exc
        if not isinstance(sources, dict) or not isinstance(raw_rules, list):
            raise RulesError("hostname rules: 'sources' must be an object, 'rules' a list")
        rules = [parse_rule(item, i, sources) for i, item in enumerate(raw_rules)]
        return cls(rules, version, updated, sources)

    @classmethod
    def from_file(cls, path: Path | str) -> HostRules:
        """Load a rules file; raises :class:`RulesError` or ``OSError``."""
        return cls.from_dict(read_json_object(path))

    def candidates(self, name: str) -> list[HostRule]:
        """Every rule that matches ``name``, most specific first."""
        norm = normalize_name(name)
        if norm is None:
            return []
        labels = tuple(norm.split("."))
        found: list[HostRule] = []
        for start in range(len(labels) + 1):
            bucket = self._buckets.get(labels[start:])
            if bucket:
                found.extend(r for r in bucket if _rule_matches(r, labels))
        found.sort(key=lambda r: r.specificity, reverse=True)
        return found

    def match(self, name: str) -> HostMatch | None:
        """The most specific rule matching ``name``, or None."""
        found = self.candidates(name)
        if not found:
            return None
        best = found[0]
        return HostMatch(best.app, best.owner, best.service, best.text, best.source)

    def __len__(self) -> int:
        return len(self.rules)


def _rule_matches(rule: HostRule, labels: tuple[str, ...]) -> bool:
    pattern = rule.labels
    if len(labels) < len(pattern):
        return False
    if rule.match is MatchKind.EXACT and len(labels) != len(pattern):
        return False
    tail = labels[len(labels) - len(pattern):]
    return all(p == n or ("*" in p and fnmatchcase(n, p)) for p, n in zip(pattern, tail,
                                                                            strict=True))


def _check_host(host: str, where: str) -> str:
    norm = normalize_name(host)
    if norm is None or any(ch in norm for ch in "?[]"):
        raise RulesError(f"{where}: bad host {host!r}")
    if norm.replace("*", "").replace(".", "") == "":
        raise RulesError(f"{where}: host {host!r} has no literal label")
    return norm


def parse_rule(item: Any, index: int, sources: Mapping[str, Any]) -> HostRule:
    """Validate one rule object of a rules file; raises :class:`RulesError`."""
    where = f"rule {index}"
    if not isinstance(item, dict):
        raise RulesError(f"{where}: not an object")
    try:
        host = _check_host(str(item["host"]), where)
        match = MatchKind(item["match"])
        service = Service(item["service"])
        owner = str(item["owner"])
        source = str(item["source"])
        app = item["app"]
    except KeyError as exc:
        raise RulesError(f"{where}: missing field {exc}") from exc
    except ValueError as exc:
        raise RulesError(f"{where}: {exc}") from exc
    if app is not None and app not in APPS:
        raise RulesError(f"{where}: unknown app {app!r}")
    if service is Service.ANY:
        raise RulesError(f"{where}: service 'any' is for address blocks only")
    if not owner:
        raise RulesError(f"{where}: empty owner")
    if source not in sources:
        raise RulesError(f"{where}: source {source!r} is not in the sources table")
    return HostRule(host, match, app, owner, service, source)


@cache
def default_rules() -> HostRules:
    """The packaged rules (``classifier/data/hostnames.json``), loaded once."""
    return HostRules.from_file(HOSTNAMES_PATH)


@cache
def _app_owners() -> dict[str, str]:
    votes: dict[str, Counter[str]] = {}
    for rule in default_rules().rules:
        if rule.app is not None:
            votes.setdefault(rule.app, Counter())[rule.owner] += 1
    return {app: c.most_common(1)[0][0] for app, c in votes.items()}


def app_owner(app: str) -> str | None:
    """The organisation that runs ``app``'s servers, by the packaged hostname rules (the
    owner most of the app's rules name: ``meta`` for whatsapp, messenger and facebook),
    or None for an app the rules do not name."""
    return _app_owners().get(app)


def match_host(name: str) -> HostMatch | None:
    """Match ``name`` (SNI, QUIC SNI, DNS name) against the packaged rules."""
    return default_rules().match(name)
