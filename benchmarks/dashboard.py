"""What the dashboard's ledger reads cost as the ledger grows.

    python -m benchmarks.dashboard --json [--rows 200000] [--recent-rate 20] [--url URL]

Fills a fresh SQLite ledger (or ``--url``, e.g. PostgreSQL) with ``--rows`` requests
spread over the past week, the last ten minutes at ``--recent-rate`` requests per
second, then times

- ``first_refresh_ms``: the dashboard's first :meth:`gateway.traffic.Traffic.refresh`
  (it sums everything older than the watermark once);
- ``refresh_p50_ms`` / ``refresh_p99_ms``: later refreshes, as the page gets them
  every second (a window of the last 2-4 minutes plus the 20 newest rows);
- ``full_scan_p50_ms``: an unbounded :meth:`Ledger.breakdown`, what a dashboard
  summing the whole table every second would pay;

and reports ``snapshot_bytes``, the JSON size of the traffic part of a snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from gateway.ledger import Ledger, RequestRow
from gateway.traffic import Traffic

ROUTES = (["edge", "cache", "cloud", "error"], [0.7, 0.1, 0.17, 0.03])
REASONS = ["low confidence", "edge saturated", "no edge node serves this"]


def synthetic_rows(rows: int, recent_rate: float, now: datetime, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    recent = min(rows, int(recent_rate * 600))
    stamps = [now - timedelta(seconds=rng.uniform(0, 600)) for _ in range(recent)]
    stamps += [now - timedelta(seconds=rng.uniform(600, 7 * 86400)) for _ in range(rows - recent)]
    out = []
    for ts in stamps:
        route = rng.choices(*ROUTES)[0]
        tokens_in, tokens_out = rng.randint(10, 400), rng.randint(10, 300)
        price = (tokens_in * 0.03 + tokens_out * 0.06) / 1000
        out.append(
            {
                "id": str(uuid.UUID(int=rng.getrandbits(128))),
                "ts": ts,
                "tenant": rng.choice(["clinic-a", "city-ops", "wearables"]),
                "route": route,
                "node": f"node-{rng.randint(1, 8)}" if route == "edge" else None,
                "policy": rng.choice(["fit_first", "load_aware"]),
                "model": "m",
                "prompt_tokens": tokens_in if route != "error" else 0,
                "completion_tokens": tokens_out if route != "error" else 0,
                "latency_ms": rng.uniform(50, 3000),
                "cost_usd": price if route == "cloud" else 0.0,
                "cloud_equivalent_usd": price if route != "error" else 0.0,
                "escalation_reason": rng.choice(REASONS) if route == "cloud" else None,
                "status": "ok" if route != "error" else "unavailable",
                "trace": None,
            }
        )
    return out


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def measure(url: str, rows: int, recent_rate: float, rounds: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with Ledger(url) as ledger:
        await ledger.open()
        data = synthetic_rows(rows, recent_rate, now, seed=8)
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            for start in range(0, len(data), 20_000):
                conn.execute(sa.insert(RequestRow), data[start : start + 20_000])
        engine.dispose()
        traffic = Traffic(ledger)
        started = time.perf_counter()
        state = await traffic.refresh()
        first = time.perf_counter() - started
        refreshes, scans = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            state = await traffic.refresh()
            refreshes.append(time.perf_counter() - started)
            started = time.perf_counter()
            await ledger.breakdown()
            scans.append(time.perf_counter() - started)
    refreshes.sort()
    return {
        "rows": rows,
        "recent_rate_per_s": recent_rate,
        "rows_last_10_min": min(rows, int(recent_rate * 600)),
        "first_refresh_ms": _ms(first),
        "refresh_p50_ms": _ms(statistics.median(refreshes)),
        "refresh_p99_ms": _ms(refreshes[min(len(refreshes) - 1, int(0.99 * len(refreshes)))]),
        "full_scan_p50_ms": _ms(statistics.median(scans)),
        "snapshot_bytes": len(json.dumps(state, separators=(",", ":"))),
        "totals_match": state["totals"]["requests"] == rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--recent-rate", type=float, default=20.0, help="requests/s, last 10 min")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--url", default=None, help="ledger URL (default: a temporary SQLite)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.url or f"sqlite:///{Path(tmp) / 'ledger.sqlite3'}"
        result = asyncio.run(measure(url, args.rows, args.recent_rate, args.rounds))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>22}: {value}")


if __name__ == "__main__":
    main()
