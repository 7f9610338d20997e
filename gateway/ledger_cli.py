"""``edgecollab ledger report``: per-tenant cost and the edge/cloud split, from the ledger.

The ledger URL is ``--url``, else ``EDGECOLLAB_GATEWAY__LEDGER_URL`` (the gateway's own
setting), else the default SQLite file. ``--since`` takes an ISO 8601 time (UTC when
no offset is given) or a trailing duration (``30m``, ``1h``, ``1d``, ``2w``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.ledger import Ledger, LedgerError, TenantSummary
from gateway.tenants import parse_duration

URL_ENV = "EDGECOLLAB_GATEWAY__LEDGER_URL"
_COLUMNS = (
    "tenant",
    "requests",
    "edge",
    "cloud",
    "cache",
    "errors",
    "tokens",
    "cloud cost $",
    "edge saved $",
    "edge/cloud %",
)


def add_ledger_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add ``ledger`` (verb ``report``) to the ``edgecollab`` command."""
    parser = subparsers.add_parser("ledger", help="per-tenant cost and edge/cloud split")
    verbs = parser.add_subparsers(dest="verb", required=True)
    report = verbs.add_parser("report", help="print per-tenant requests, tokens, cost, savings")
    report.add_argument(
        "--url", default=None, help=f"SQLAlchemy URL (default ${URL_ENV} or the SQLite file)"
    )
    report.add_argument(
        "--since",
        default=None,
        type=parse_since,
        help="ISO 8601 time or a duration back from now: 30m, 1h, 1d, 2w",
    )
    report.add_argument("--json", action="store_true", help="one JSON document")
    parser.set_defaults(func=run_ledger)
    return parser


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (naive = UTC) or a duration before ``now``."""
    try:
        return (now or datetime.now(UTC)) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither an ISO 8601 time nor a duration like 1h or 1d"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_ledger(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Handler of ``edgecollab ledger``: 0 on success, 2 when the ledger is unusable."""
    out = out or sys.stdout
    url = args.url or os.environ.get(URL_ENV) or None
    try:
        rows = asyncio.run(_summary(url, args.since))
    except LedgerError as exc:
        print(f"edgecollab ledger: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report_json(rows, args.since), indent=2), file=out)
    else:
        print(render_table(rows), file=out)
    return 0


async def _summary(url: str | None, since: datetime | None) -> list[TenantSummary]:
    async with Ledger(url) as ledger:
        return await ledger.summary(since)


def totals(rows: Sequence[TenantSummary]) -> TenantSummary:
    """All tenants together, as one summary named ``TOTAL``."""
    return TenantSummary(
        tenant="TOTAL",
        **{
            name: sum(getattr(r, name) for r in rows)
            for name in (
                "requests",
                "edge",
                "cloud",
                "cache",
                "errors",
                "tokens",
                "cost_usd",
                "cloud_equivalent_usd",
                "savings_usd",
            )
        },
    )


def _split(summary: TenantSummary) -> str:
    share = summary.edge_share
    if share is None:
        return "-"
    return f"{100 * share:.0f}/{100 - 100 * share:.0f}"


def render_table(rows: Sequence[TenantSummary]) -> str:
    """A fixed-width table, one line per tenant and a total line."""
    if not rows:
        return "no requests recorded"
    lines = [_COLUMNS]
    for r in (*rows, totals(rows)):
        lines.append(
            (
                r.tenant,
                str(r.requests),
                str(r.edge),
                str(r.cloud),
                str(r.cache),
                str(r.errors),
                str(r.tokens),
                f"{r.cost_usd:.4f}",
                f"{r.savings_usd:.4f}",
                _split(r),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(_COLUMNS))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in lines
    ]
    text.insert(len(text) - 1, "-" * len(text[0]))
    return "\n".join(text)


def _as_json(summary: TenantSummary) -> dict[str, Any]:
    data = asdict(summary)
    share = summary.edge_share
    data["edge_share"] = share
    data["cloud_share"] = None if share is None else 1.0 - share
    return data


def report_json(rows: Sequence[TenantSummary], since: datetime | None) -> dict[str, Any]:
    """The ``--json`` document: the window, one object per tenant, and the total."""
    return {
        "since": None if since is None else since.isoformat(),
        "tenants": [_as_json(r) for r in rows],
        "total": _as_json(totals(rows)),
    }
