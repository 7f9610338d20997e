"""Requests at a glance, from the ledger: totals, split by policy, escalations, recent rows.

The ledger grows without bound, so the totals are not summed over the whole table on
every refresh. :class:`Traffic` keeps

- ``base``: the totals of the rows with ``ts < watermark``, summed once at start and
  then advanced in steps (each step reads only the rows between the old and the new
  watermark), and
- a window query over ``ts >= watermark`` on every refresh,

so a refresh reads between ``margin_s`` and ``2 * margin_s`` of rows through the
``ts`` index, plus the newest ``recent`` rows. A row is stamped when its request ends
and written at once; one stamped more than ``margin_s`` before it was written (a
gateway whose clock is that far behind, on a shared PostgreSQL) is missed by the
totals until the dashboard restarts.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from gateway.ledger import Breakdown, Ledger, LedgerEntry

Key = tuple[str, str, str | None, str]  # policy, route, escalation, status


class Totals(TypedDict):
    requests: int
    edge: int
    cloud: int
    cache: int
    errors: int
    tokens: int
    cost_usd: float
    all_cloud_usd: float  # what the same requests would have cost in the cloud
    saved_usd: float
    edge_share: float | None  # (edge + cache) / answered
    last_minute: int


class PolicyRow(TypedDict):
    policy: str
    requests: int
    edge: int
    cloud: int
    cache: int
    error: int


class ReasonRow(TypedDict):
    reason: str
    route: str
    count: int


class RecentRow(TypedDict):
    ts: float
    tenant: str
    route: str
    node: str | None
    model: str
    policy: str
    tokens: int
    latency_ms: float
    cost_usd: float
    escalation: str | None
    status: str


class TrafficState(TypedDict):
    totals: Totals
    by_policy: list[PolicyRow]
    escalations: list[ReasonRow]
    errors: list[ReasonRow]
    recent: list[RecentRow]


@dataclass(slots=True)
class _Sums:
    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cloud_equivalent_usd: float = 0.0

    def add(self, row: Breakdown) -> None:
        self.requests += row.requests
        self.tokens += row.tokens
        self.cost_usd += row.cost_usd
        self.cloud_equivalent_usd += row.cloud_equivalent_usd


def _merge(into: dict[Key, _Sums], rows: Iterable[Breakdown]) -> None:
    for row in rows:
        into.setdefault((row.policy, row.route, row.escalation, row.status), _Sums()).add(row)


class Traffic:
    """Running ledger totals for the dashboard; call :meth:`refresh` for a new state."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        margin_s: float = 120.0,
        recent: int = 20,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if margin_s < 60:
            raise ValueError("margin_s must be at least 60 (the last-minute figure uses it)")
        self.ledger = ledger
        self.margin = timedelta(seconds=margin_s)
        self.recent = recent
        self.clock = clock
        self._base: dict[Key, _Sums] = {}
        self._watermark: datetime | None = None

    async def refresh(self) -> TrafficState:
        now = self.clock()
        if self._watermark is None:
            self._watermark = now - self.margin
            _merge(self._base, await self.ledger.breakdown(until=self._watermark))
        elif now - self._watermark > 2 * self.margin:
            step = now - self.margin
            _merge(self._base, await self.ledger.breakdown(since=self._watermark, until=step))
            self._watermark = step
        window = await self.ledger.breakdown(since=self._watermark)
        minute = await self.ledger.breakdown(since=now - timedelta(seconds=60))
        rows = await self.ledger.recent(self.recent)
        sums = {key: replace(base) for key, base in self._base.items()}
        _merge(sums, window)
        return summarise(sums, sum(r.requests for r in minute), rows)


def summarise(
    sums: dict[Key, _Sums], last_minute: int, rows: Iterable[LedgerEntry]
) -> TrafficState:
    """The dashboard's view of grouped ledger totals and the newest rows."""
    routes: Counter[str] = Counter()
    policies: dict[str, PolicyRow] = {}
    reasons: Counter[tuple[str, str]] = Counter()
    errors: Counter[str] = Counter()
    total = _Sums()
    for (policy, route, escalation, status), s in sums.items():
        routes[route] += s.requests
        total.requests += s.requests
        total.tokens += s.tokens
        total.cost_usd += s.cost_usd
        total.cloud_equivalent_usd += s.cloud_equivalent_usd
        row = policies.setdefault(
            policy, PolicyRow(policy=policy, requests=0, edge=0, cloud=0, cache=0, error=0)
        )
        row["requests"] += s.requests
        if route in ("edge", "cloud", "cache", "error"):
            row[route] += s.requests  # type: ignore[literal-required]
        if escalation:
            reasons[(escalation, route)] += s.requests
        if route == "error":
            errors[status] += s.requests
    answered = routes["edge"] + routes["cache"] + routes["cloud"]
    totals = Totals(
        requests=total.requests,
        edge=routes["edge"],
        cloud=routes["cloud"],
        cache=routes["cache"],
        errors=routes["error"],
        tokens=total.tokens,
        cost_usd=total.cost_usd,
        all_cloud_usd=total.cloud_equivalent_usd,
        saved_usd=max(0.0, total.cloud_equivalent_usd - total.cost_usd),
        edge_share=(routes["edge"] + routes["cache"]) / answered if answered else None,
        last_minute=last_minute,
    )
    return TrafficState(
        totals=totals,
        by_policy=sorted(policies.values(), key=lambda p: (-p["requests"], p["policy"])),
        escalations=[
            ReasonRow(reason=reason, route=route, count=n)
            for (reason, route), n in reasons.most_common()
        ],
        errors=[ReasonRow(reason=code, route="error", count=n) for code, n in errors.most_common()],
        recent=[_recent(r) for r in rows],
    )


def _recent(entry: LedgerEntry) -> RecentRow:
    return RecentRow(
        ts=entry.ts.timestamp(),
        tenant=entry.tenant,
        route=entry.route,
        node=entry.node,
        model=entry.model,
        policy=entry.policy,
        tokens=entry.prompt_tokens + entry.completion_tokens,
        latency_ms=round(entry.latency_ms, 1),
        cost_usd=entry.cost_usd,
        escalation=entry.escalation_reason,
        status=entry.status,
    )
