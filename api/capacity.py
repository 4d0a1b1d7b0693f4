"""Capacity, as an operator plans it: per hour or per day, each app's traffic (mean, peak
and 95th-percentile bit rate, per category too) and calls (how many, the peak and
95th-percentile number at once, how many were interfered with, their MOS and loss).

Everything is computed from the store's flows and calls on a one-minute grid:

* a flow's wire bytes are spread evenly over its life (as in ``/v1/stats/apps``) and
  summed per minute; a minute's rate is its bytes × 8 / 60;
* a call is in progress during a minute if its start..end overlaps it;
* a period's peak is its busiest minute and its 95th percentile the nearest-rank 95th
  percentile of its minutes, counting the minutes in which nothing was seen as zero;
  only minutes inside the time the source was observed count (from the first to the
  last packet of its flows), so an hour of which a capture holds five minutes is judged
  on those five.

Times are the flows' and calls' own: wall-clock time for a live probe (``source`` live),
capture time for a capture file (``source`` capture); each row says which.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.store import LIVE_PREFIX, Store
from api.store import Query as ListQuery

__all__ = [
    "INTERFERED",
    "MINUTE_S",
    "PERIODS",
    "CallCapacityOut",
    "CapacityOut",
    "TrafficCapacityOut",
    "capacity",
    "nearest_rank",
]

MINUTE_S = 60
"""Width of the grid the rates and counts are measured on."""
PERIODS: dict[str, int] = {"hour": 3600, "day": 86400}
"""Reporting periods, in seconds."""
INTERFERED = frozenset({"blocked", "throttled", "degraded"})
"""Call verdicts counted as interfered with."""
MAX_ROWS = 200_000
"""Most flows (and, apart, calls) read for one answer."""
_PAGE = 1000

Period = Literal["hour", "day"]


class TrafficCapacityOut(BaseModel):
    """One app's (and category's) traffic in one period."""

    start_ts: float = Field(description="Start of the period (seconds since the epoch).")
    source: str = Field(description="live (a probe, wall-clock time) or capture (a capture "
                                    "file, its capture time).")
    app: str | None = Field(description="The app (null: unrecognised).")
    category: str | None = Field(description="What the flows were for (null: all the app's "
                                              "flows, the app's own row).")
    bytes: int = Field(description="Wire bytes, both directions.")
    observed_s: int = Field(description="Seconds of the period the source was observed.")
    mean_bps: float = Field(description="Bits per second over the observed time.")
    peak_bps: float = Field(description="The busiest minute's bits per second.")
    p95_bps: float = Field(description="95th percentile of the minutes' bits per second.")


class CallCapacityOut(BaseModel):
    """One app's calls in one period."""

    start_ts: float = Field(description="Start of the period (seconds since the epoch).")
    source: str = Field(description="live or capture, as for traffic.")
    app: str | None = Field(description="The app (null: unrecognised).")
    calls: int = Field(description="Calls that started in the period.")
    interfered: int = Field(description="Of them, judged blocked, throttled or degraded.")
    interfered_share: float | None = Field(description="interfered / calls (null: no call).")
    peak_concurrent: int = Field(description="Most calls in progress in one minute.")
    p95_concurrent: int = Field(description="95th percentile of the calls in progress per "
                                            "minute.")
    mos_mean: float | None = Field(description="Mean of the calls' (worst leg's) MOS.")
    loss_mean: float | None = Field(description="Mean of the calls' (worst leg's) loss ratio.")


class CapacityOut(BaseModel):
    """Capacity per period: traffic per app and category, and calls per app."""

    period: Period = Field(description="hour or day.")
    period_s: int = Field(description="Length of a period in seconds.")
    resolution_s: int = Field(description="Width of the minutes peaks and percentiles are "
                                          "taken over.")
    complete: bool = Field(description="False when more flows or calls matched than are "
                                       "read for one answer.")
    traffic: list[TrafficCapacityOut] = Field(description="Per period, source, app and "
                                                          "category; newest period first.")
    calls: list[CallCapacityOut] = Field(description="Per period, source and app; newest "
                                                     "period first.")


def nearest_rank(values: list[float], zeros: int, q: float = 0.95) -> float:
    """The nearest-rank ``q`` quantile of ``values`` and ``zeros`` more zeros."""
    n = len(values) + zeros
    if n == 0:
        return 0.0
    rank = max(1, math.ceil(q * n))
    if rank <= zeros:
        return 0.0
    return sorted(values)[rank - zeros - 1]


def _source(capture_id: str) -> str:
    return "live" if capture_id.startswith(LIVE_PREFIX) else "capture"


def _rows(store: Store, table: Literal["flows", "calls"], query: ListQuery,
          limit: int) -> tuple[list[dict[str, Any]], bool]:
    out: list[dict[str, Any]] = []
    offset = 0
    read = store.flows if table == "flows" else store.calls
    while len(out) < limit:
        page = read(ListQuery(since=query.since, until=query.until, app=query.app,
                              capture_id=query.capture_id, source=query.source,
                              limit=min(_PAGE, limit - len(out)), offset=offset))
        out.extend(page.items)
        offset += len(page.items)
        if offset >= page.total or not page.items:
            return out, True
    return out, False


@dataclass(slots=True)
class _Observed:
    """The time a source was observed, from its flows."""

    first: float = math.inf
    last: float = -math.inf

    def add(self, a: float, b: float) -> None:
        self.first = min(self.first, a)
        self.last = max(self.last, b)

    def minutes(self, start: float, length: int) -> range:
        """The grid minutes of the period ``start``..+``length`` inside the observed time."""
        if self.first > self.last:
            return range(0)
        lo = max(start, math.floor(self.first / MINUTE_S) * MINUTE_S)
        hi = min(start + length, math.floor(self.last / MINUTE_S) * MINUTE_S + MINUTE_S)
        return range(int(lo), int(hi), MINUTE_S)


def _spread(first: float, last: float, amount: float) -> Iterator[tuple[int, float]]:
    """(minute start, share of ``amount``) for a quantity spread evenly over first..last."""
    life = last - first
    m = math.floor(first / MINUTE_S) * MINUTE_S
    if life <= 0:
        yield int(m), amount
        return
    while m < last:
        a, b = max(first, m), min(last, m + MINUTE_S)
        if b > a:
            yield int(m), amount * (b - a) / life
        m += MINUTE_S


def _wire(row: dict[str, Any]) -> int:
    total = 0
    for side in ("orig", "resp"):
        v = row.get(f"{side}_wire_bytes", row.get(f"{side}_bytes", 0))
        if isinstance(v, int) and v > 0:
            total += v
    return total


def capacity(store: Store, *, period: Period = "hour", since: float | None = None,
             until: float | None = None, app: str | None = None, capture: str | None = None,
             source: str | None = None, max_rows: int = MAX_ROWS) -> CapacityOut:
    """Traffic and calls per ``period`` from the store (see the module docstring)."""
    length = PERIODS[period]
    query = ListQuery(since=since, until=until, app=app, capture_id=capture, source=source)
    flows, flows_whole = _rows(store, "flows", query, max_rows)
    calls, calls_whole = _rows(store, "calls", query, max_rows)

    def inside(m: int) -> bool:
        return (since is None or m + MINUTE_S > since) and (until is None or m <= until)

    observed: dict[str, _Observed] = defaultdict(_Observed)
    # (source, app, category or None) -> minute -> bytes
    minutes: dict[tuple[str, str | None, str | None], dict[int, float]] = defaultdict(
        lambda: defaultdict(float))
    for f in flows:
        src = _source(f["capture_id"])
        first, last = float(f["first_ts"]), max(float(f["last_ts"]), float(f["first_ts"]))
        observed[src].add(first, last)
        for m, share in _spread(first, last, _wire(f)):
            if inside(m):
                minutes[src, f.get("app"), None][m] += share
                minutes[src, f.get("app"), f.get("category")][m] += share
    traffic: list[TrafficCapacityOut] = []
    for (src, app_name, category), per_minute in minutes.items():
        by_period: dict[int, list[float]] = defaultdict(list)
        for m, b in per_minute.items():
            by_period[m - m % length].append(b)
        for start, values in by_period.items():
            span = len(observed[src].minutes(start, length)) or 1
            rates = [b * 8 / MINUTE_S for b in values]
            total = sum(values)
            traffic.append(TrafficCapacityOut(
                start_ts=float(start), source=src, app=app_name, category=category,
                bytes=round(total), observed_s=span * MINUTE_S,
                mean_bps=round(total * 8 / (span * MINUTE_S), 3),
                peak_bps=round(max(rates), 3),
                p95_bps=round(nearest_rank(rates, max(0, span - len(rates))), 3)))
    # calls: started per period; in progress per minute
    started: dict[tuple[int, str, str | None], list[dict[str, Any]]] = defaultdict(list)
    busy: dict[tuple[str, str | None], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for c in calls:
        src = _source(c["capture_id"])
        began, ended = float(c["start_ts"]), max(float(c["end_ts"]), float(c["start_ts"]))
        observed[src].add(began, ended)
        key_app = c.get("app")
        started[int(began - began % length), src, key_app].append(c)
        minute = math.floor(began / MINUTE_S) * MINUTE_S
        while minute <= ended:
            if inside(minute):
                busy[src, key_app][minute] += 1
            minute += MINUTE_S
    call_rows: dict[tuple[int, str, str | None], CallCapacityOut] = {}
    periods = {(start, src, a) for start, src, a in started}
    for (src, a), in_progress in busy.items():
        periods |= {(m - m % length, src, a) for m in in_progress}
    for start, src, a in periods:
        these = started.get((start, src, a), [])
        counts = [n for m, n in busy[src, a].items() if start <= m < start + length]
        span = len(observed[src].minutes(start, length))
        moss = [c["quality"]["mos"] for c in these
                if (c.get("quality") or {}).get("mos") is not None]
        losses = [c["quality"]["loss_ratio"] for c in these
                  if (c.get("quality") or {}).get("loss_ratio") is not None]
        bad = sum(1 for c in these if c.get("verdict") in INTERFERED)
        call_rows[start, src, a] = CallCapacityOut(
            start_ts=float(start), source=src, app=a, calls=len(these), interfered=bad,
            interfered_share=round(bad / len(these), 4) if these else None,
            peak_concurrent=max(counts, default=0),
            p95_concurrent=round(nearest_rank([float(n) for n in counts],
                                              max(0, span - len(counts)))),
            mos_mean=round(sum(moss) / len(moss), 3) if moss else None,
            loss_mean=round(sum(losses) / len(losses), 5) if losses else None)
    traffic.sort(key=lambda r: (-r.start_ts, r.source, -r.bytes, r.app or "",
                                r.category or ""))
    out_calls = sorted(call_rows.values(), key=lambda r: (-r.start_ts, r.source, -r.calls,
                                                          r.app or ""))
    return CapacityOut(period=period, period_s=length, resolution_s=MINUTE_S,
                       complete=flows_whole and calls_whole, traffic=traffic,
                       calls=out_calls)
