"""The servers the reachability test tries for each app: one table, checked against the rules.

``classifier/data/endpoints.json`` (see ``data/README.md``) lists, per app, the endpoints
OONI's instant-messaging tests and the vendors' network requirements name: a host (DNS
name or address), its group (OONI's ``endpoints``, ``registration``, ``web``; ``relay``,
``stun``, ``backend``...), the TCP ports to connect to, the ports to make a TLS handshake
on, the UDP ports to send a STUN binding request to, and whether the certificate chain
can be verified with the system store.

The table is the same source of truth the classifier's own rules are: loading it checks
that every name is classified by ``hostnames.json`` as the app (or as a name of the
app's owner, e.g. Messenger's ``*.fbcdn.net``) and every address by ``ip_owners.json``, so
the test never tries a server the classifier would not attribute to the app.

Errors: :class:`~classifier.hostnames.RulesError` when the file is not of this shape or a
host is not the app's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from classifier.hostnames import (
    APPS,
    DATA_DIR,
    HostRules,
    RulesError,
    app_owner,
    default_rules,
    read_json_object,
)
from classifier.owners import OwnerTable, default_table
from probe.active.records import Endpoint

__all__ = ["ENDPOINTS_PATH", "AppEndpoints", "EndpointTable", "app_endpoints",
           "default_endpoints"]

ENDPOINTS_PATH = DATA_DIR / "endpoints.json"
"""The packaged endpoint table."""

_MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class AppEndpoints:
    """One app's entry of the table."""

    app: str
    note: str
    """What the list covers and what it cannot (e.g. relays chosen per call)."""
    endpoints: tuple[Endpoint, ...]
    sources: tuple[str, ...]
    """Keys into the table's ``sources``, one per endpoint (same order)."""


@dataclass(frozen=True, slots=True)
class EndpointTable:
    """The whole endpoint table."""

    version: int
    updated: str
    sources: dict[str, dict[str, str]]
    apps: dict[str, AppEndpoints]

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, rules: HostRules | None = None,
                  owners: OwnerTable | None = None) -> EndpointTable:
        """Build and check a parsed ``endpoints.json``; raises ``RulesError``."""
        try:
            version = int(doc["version"])
            updated = str(doc["updated"])
            sources = doc["sources"]
            raw_apps = doc["apps"]
        except (KeyError, TypeError, ValueError) as exc:
            raise RulesError(f"endpoints: missing or bad top-level field: {exc}") from exc
        if not isinstance(sources, dict) or not isinstance(raw_apps, dict):
            raise RulesError("endpoints: 'sources' and 'apps' must be objects")
        rules = rules or default_rules()
        owners = owners or default_table()
        apps: dict[str, AppEndpoints] = {}
        for app, entry in raw_apps.items():
            if app not in APPS:
                raise RulesError(f"endpoints: unknown app {app!r}")
            if not isinstance(entry, dict) or not isinstance(entry.get("endpoints"), list):
                raise RulesError(f"endpoints.{app}: needs an 'endpoints' list")
            eps: list[Endpoint] = []
            srcs: list[str] = []
            for i, item in enumerate(entry["endpoints"]):
                ep, src = _parse_endpoint(item, f"endpoints.{app}[{i}]", sources)
                _check_owner(app, ep.host, f"endpoints.{app}[{i}]", rules, owners)
                eps.append(ep)
                srcs.append(src)
            apps[app] = AppEndpoints(app, str(entry.get("note", "")), tuple(eps), tuple(srcs))
        return cls(version, updated, {k: dict(v) for k, v in sources.items()}, apps)

    @classmethod
    def from_file(cls, path: Path | str) -> EndpointTable:
        """Load and check an endpoint file; raises ``RulesError`` or ``OSError``."""
        return cls.from_dict(read_json_object(path))


def _ports(item: Mapping[str, Any], key: str, where: str) -> tuple[int, ...]:
    raw = item.get(key, [])
    if not isinstance(raw, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p <= _MAX_PORT for p in raw):
        raise RulesError(f"{where}: {key!r} must be a list of ports 1-65535")
    return tuple(raw)


def _parse_endpoint(item: Any, where: str, sources: Mapping[str, Any]
                    ) -> tuple[Endpoint, str]:
    if not isinstance(item, dict):
        raise RulesError(f"{where}: not an object")
    try:
        host = str(item["host"]).strip().lower()
        group = str(item["group"])
        source = str(item["source"])
    except KeyError as exc:
        raise RulesError(f"{where}: missing field {exc}") from exc
    if not host or not group:
        raise RulesError(f"{where}: empty host or group")
    if source not in sources:
        raise RulesError(f"{where}: source {source!r} is not in the sources table")
    verify = item.get("verify", True)
    if not isinstance(verify, bool):
        raise RulesError(f"{where}: 'verify' must be true or false")
    ep = Endpoint(host, group, _ports(item, "tcp", where), _ports(item, "tls", where),
                  _ports(item, "stun", where), verify)
    if not (ep.tcp or ep.tls or ep.stun):
        raise RulesError(f"{where}: no port to try (tcp, tls or stun)")
    if ep.tls and ep.is_address:
        raise RulesError(f"{where}: a TLS handshake needs a server name, not an address")
    return ep, source


def _check_owner(app: str, host: str, where: str, rules: HostRules,
                 owners: OwnerTable) -> None:
    """The classifier must attribute ``host`` to ``app`` or to ``app``'s owner."""
    owner = app_owner(app)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        m = rules.match(host)
        if m is None or not (m.app == app or (owner is not None and m.owner == owner)):
            raise RulesError(f"{where}: {host} is not classified as {app} by the hostname "
                             f"rules ({m.rule if m else 'no rule'})") from None
        return
    o = owners.lookup(host)
    if o is None or app not in o.apps:
        raise RulesError(f"{where}: {host} is not in {app}'s address blocks")


@cache
def default_endpoints() -> EndpointTable:
    """The packaged table (``classifier/data/endpoints.json``), loaded and checked once."""
    return EndpointTable.from_file(ENDPOINTS_PATH)


def app_endpoints(app: str) -> AppEndpoints:
    """``app``'s entry of the packaged table; ``KeyError`` for an app it does not list."""
    return default_endpoints().apps[app]
