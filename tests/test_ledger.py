"""The cost ledger, prices, tenant policies and quotas, and ``edgecollab ledger report``.

Ledger tests run against a SQLite file and against the PostgreSQL server on this
machine (``EDGECOLLAB_TEST_POSTGRES_URL``, default ``postgresql+psycopg://postgres@
127.0.0.1:5432/test``), each test in a schema of its own that is dropped afterwards.
An unreachable PostgreSQL fails the tests: it runs here and in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from broker import TopicError
from gateway.ledger import Ledger, LedgerEntry, LedgerError, RequestRow, default_url, mask_url
from gateway.ledger_cli import add_ledger_parser, parse_since
from gateway.pricing import PriceTable, Route
from gateway.tenants import (
    QuotaExceeded,
    TenantConfigError,
    TenantPolicy,
    check_quota,
    parse_duration,
    tenant_policy,
)

PG_URL = os.environ.get(
    "EDGECOLLAB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PRICES = PriceTable()


@pytest.fixture(scope="session")
def postgres() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        pytest.fail(
            f"PostgreSQL at {mask_url(PG_URL)} is unreachable ({exc.orig}); the ledger tests "
            "need it (it runs on this machine and in CI; set EDGECOLLAB_TEST_POSTGRES_URL)",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema(postgres: sa.Engine) -> Iterator[str]:
    schema = f"ledger_test_{secrets.token_hex(4)}"
    yield schema
    with postgres.begin() as conn:
        conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(url, schema) of an empty ledger on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'ledger.sqlite3'}", None
    return PG_URL, request.getfixturevalue("pg_schema")


@pytest.fixture
async def ledger(target: tuple[str, str | None]) -> AsyncIterator[Ledger]:
    url, schema = target
    async with Ledger(url, schema=schema) as opened:
        yield opened


def entry(
    tenant: str = "acme",
    route: Route = "edge",
    prompt: int = 1000,
    completion: int = 500,
    **fields: Any,
) -> LedgerEntry:
    model = fields.pop("model", "gpt-4" if route == "cloud" else "smollm2-135m-instruct")
    charges = PRICES.charges(route, model, prompt, completion, cloud_model="gpt-4")
    return LedgerEntry(
        tenant=tenant,
        route=route,
        policy="fit_first",
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_ms=12.5,
        cost_usd=charges.cost_usd,
        cloud_equivalent_usd=charges.cloud_equivalent_usd,
        node=fields.pop("node", "orin-1" if route == "edge" else None),
        **fields,
    )


def rows(url: str, schema: str | None) -> list[RequestRow]:
    engine = sa.create_engine(url).execution_options(schema_translate_map={None: schema})
    try:
        with sa.orm.Session(engine) as session:
            return list(session.scalars(sa.select(RequestRow).order_by(RequestRow.ts)))
    finally:
        engine.dispose()


# --- prices ---------------------------------------------------------------------------


def test_default_prices_are_gpt4_8k():
    assert PRICES.cost("gpt-4", 1000, 500) == pytest.approx(0.06)
    assert PRICES.cost("some-unlisted-model", 1000, 0) == pytest.approx(0.03)
    assert PRICES.cost("gpt-4", 0, 1000) == pytest.approx(0.06)
    assert PRICES.cost("gpt-4o-mini", 1_000_000, 1_000_000) == pytest.approx(0.75)
    assert PRICES.price("gpt-4o-mini-2024-07-18") == PRICES.models["gpt-4o-mini"]
    assert PRICES.price("gpt-4-0613") == PRICES.models["gpt-4"]


def test_charges_by_route():
    cloud = PRICES.charges("cloud", "gpt-4", 1000, 500, cloud_model="gpt-4")
    assert (cloud.cost_usd, cloud.cloud_equivalent_usd) == pytest.approx((0.06, 0.06))
    for route in ("edge", "cache"):
        served = PRICES.charges(route, "smollm2", 1000, 500, cloud_model="gpt-4")
        assert (served.cost_usd, served.cloud_equivalent_usd) == pytest.approx((0.0, 0.06))
    failed = PRICES.charges("error", "gpt-4", 1000, 0, cloud_model="gpt-4")
    assert (failed.cost_usd, failed.cloud_equivalent_usd) == (0.0, 0.0)
    with pytest.raises(ValueError, match="route must be one of"):
        PRICES.charges("moon", "gpt-4", 1, 1, cloud_model="gpt-4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=">= 0"):
        PRICES.cost("gpt-4", -1, 0)


def test_price_table_is_configurable_and_strict():
    table = PriceTable.model_validate(
        {
            "default": {"input_per_1k": 0.001, "output_per_1k": 0.002},
            "models": {"mine": {"input_per_1k": 0.01, "output_per_1k": 0.1}},
        }
    )
    assert table.cost("mine", 2000, 1000) == pytest.approx(0.12)
    assert table.cost("gpt-4", 1000, 1000) == pytest.approx(0.003)
    with pytest.raises(ValidationError):
        PriceTable.model_validate({"default": {"input_per_1k": 0.01, "output": 0.02}})
    with pytest.raises(ValidationError):
        PriceTable.model_validate({"default": {"input_per_1k": -1, "output_per_1k": 0}})


# --- ledger ---------------------------------------------------------------------------


def test_entry_validation():
    with pytest.raises(TopicError):
        entry(tenant="Acme/1")
    with pytest.raises(ValueError, match="route"):
        entry(route="moon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="token counts"):
        entry(prompt=-1)
    with pytest.raises(ValueError, match="timezone"):
        entry(ts=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="status"):
        entry(status="")


async def test_record_and_read_back(ledger: Ledger, target: tuple[str, str | None]):
    sent = entry(
        route="cloud", escalation_reason="confidence 0.21 < 0.40", trace="t-1", status="ok"
    )
    await ledger.record(sent)
    await ledger.record(entry(route="error", prompt=0, completion=0, status="unavailable"))
    stored = await asyncio.to_thread(rows, *target)
    assert [r.route for r in stored] == ["cloud", "error"]
    first = stored[0]
    assert first.id == sent.id
    assert first.ts == sent.ts
    assert first.ts.tzinfo is not None
    assert (first.tenant, first.model, first.policy, first.node) == (
        "acme",
        "gpt-4",
        "fit_first",
        None,
    )
    assert (first.prompt_tokens, first.completion_tokens) == (1000, 500)
    assert first.cost_usd == pytest.approx(0.06)
    assert first.escalation_reason == "confidence 0.21 < 0.40"
    assert first.trace == "t-1"
    assert stored[1].status == "unavailable"


async def test_tenant_usage_and_since(ledger: Ledger):
    now = datetime.now(UTC)
    await ledger.record(entry(route="cloud", ts=now - timedelta(days=3)))
    await ledger.record(entry(route="edge", ts=now))
    await ledger.record(entry(tenant="other", route="cloud", ts=now))
    usage = await ledger.tenant_usage("acme")
    assert (usage.tokens, usage.requests) == (3000, 2)
    assert usage.cost_usd == pytest.approx(0.06)
    recent = await ledger.tenant_usage("acme", since=now - timedelta(days=1))
    assert (recent.tokens, recent.cost_usd, recent.requests) == (1500, 0.0, 1)
    naive = (now - timedelta(days=1)).replace(tzinfo=None)  # naive = UTC
    assert await ledger.tenant_usage("acme", since=naive) == recent
    nobody = await ledger.tenant_usage("nobody")
    assert (nobody.tokens, nobody.cost_usd, nobody.requests) == (0, 0.0, 0)


async def test_summary_split_and_savings(ledger: Ledger):
    for route in ("edge", "edge", "edge", "cloud", "cache", "error"):
        await ledger.record(entry(route=route))
    await ledger.record(entry(tenant="beta", route="cloud", prompt=2000, completion=0))
    acme, beta = await ledger.summary()
    assert (acme.tenant, acme.requests, acme.edge, acme.cloud, acme.cache, acme.errors) == (
        "acme",
        6,
        3,
        1,
        1,
        1,
    )
    assert acme.tokens == 6 * 1500
    assert acme.cost_usd == pytest.approx(0.06)  # only the cloud request is paid
    assert acme.savings_usd == pytest.approx(4 * 0.06)  # 3 edge + 1 cache at GPT-4 prices
    assert acme.cloud_equivalent_usd == pytest.approx(5 * 0.06)
    assert acme.edge_share == pytest.approx(0.75)
    assert (beta.tenant, beta.cloud, beta.savings_usd, beta.edge_share) == ("beta", 1, 0.0, 0.0)
    assert beta.cost_usd == pytest.approx(0.06)
    later = await ledger.summary(since=datetime.now(UTC) + timedelta(minutes=1))
    assert later == []


async def test_fifty_concurrent_records_all_land(ledger: Ledger):
    await asyncio.gather(*(ledger.record(entry(route="edge", prompt=i)) for i in range(50)))
    usage = await ledger.tenant_usage("acme")
    assert usage.requests == 50
    assert usage.tokens == sum(range(50)) + 50 * 500


async def test_two_gateways_share_postgresql(pg_schema: str):
    first, second = Ledger(PG_URL, schema=pg_schema), Ledger(PG_URL, schema=pg_schema)
    try:
        await asyncio.gather(first.open(), second.open())  # creation is serialised
        await asyncio.gather(*(gw.record(entry(route="edge")) for gw in (first, second) * 10))
        (summary,) = await first.summary()
        assert summary.requests == 20
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_sqlite_file_in_wal_mode(tmp_path: Path):
    path = tmp_path / "deep" / "ledger.sqlite3"
    async with Ledger(f"sqlite:///{path}") as ledger:
        await ledger.record(entry())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_in_memory_sqlite_works_across_threads():
    async with Ledger("sqlite://") as ledger:
        await asyncio.gather(*(ledger.record(entry()) for _ in range(10)))
        assert (await ledger.tenant_usage("acme")).requests == 10


def test_default_url_follows_xdg_state_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_url() == f"sqlite:///{tmp_path}/edgecollab/ledger.sqlite3"
    assert Ledger().url == default_url()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("not a url", "parsing the URL failed"),
        ("mysql://user:hunter2@db/ledger", "only sqlite and postgresql"),
        ("postgresql+nosuchdriver://user:hunter2@db/ledger", "parsing the URL failed"),
    ],
)
def test_bad_url_is_a_ledger_error(url: str, expected: str):
    with pytest.raises(LedgerError, match=expected) as caught:
        Ledger(url)
    assert "hunter2" not in str(caught.value)


async def test_unreachable_database_is_a_ledger_error(tmp_path: Path):
    ledger = Ledger("postgresql+psycopg://user:hunter2@127.0.0.1:1/ledger")
    with pytest.raises(LedgerError, match="opening failed") as caught:
        await ledger.record(entry())
    assert "hunter2" not in str(caught.value)
    assert "***" in str(caught.value)
    await ledger.close()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(LedgerError, match="opening failed"):
        await Ledger(f"sqlite:///{blocked}/ledger.sqlite3").open()
    with pytest.raises(LedgerError, match="needs PostgreSQL"):
        Ledger(f"sqlite:///{tmp_path}/l.db", schema="x")
    with pytest.raises(LedgerError, match="is closed"):
        await ledger.record(entry())


# --- tenants and quotas ---------------------------------------------------------------


def getter(tenant: str = "acme", **values: Any):
    keys = {"model": "config/model", "limit": "usage_limit", "threshold": "confidence_threshold"}
    cms = {f"slm/tenants/{tenant}/{keys[name]}": value for name, value in values.items()}
    return cms.get


def test_tenant_policy_from_cms():
    assert tenant_policy(getter(), "acme") == TenantPolicy()
    policy = tenant_policy(getter(model="gemma3-270m", limit=50_000, threshold=0.4), "acme")
    assert policy == TenantPolicy(
        model="gemma3-270m", usage_limit_tokens=50_000, confidence_threshold=0.4
    )
    limits = tenant_policy(getter(limit={"tokens": 1e6, "usd": 5, "window": "30d"}), "acme")
    assert (limits.usage_limit_tokens, limits.usage_limit_usd) == (1_000_000, 5.0)
    assert limits.usage_window == timedelta(days=30)
    usd_only = tenant_policy(getter(limit={"usd": 0.5, "window": 3600}), "acme")
    assert usd_only.usage_limit_tokens is None
    assert usd_only.usage_window == timedelta(hours=1)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model": ""}, "config/model must be a non-empty model name"),
        ({"model": 7}, "config/model must be a non-empty model name"),
        ({"limit": "lots"}, "usage_limit must be a finite number"),
        ({"limit": -5}, "whole number of tokens >= 0"),
        ({"limit": 10.5}, "whole number of tokens >= 0"),
        ({"limit": True}, "usage_limit must be a finite number"),
        ({"limit": {"tokens": 10, "euros": 3}}, "unknown field"),
        ({"limit": {}}, "must set 'tokens' or 'usd'"),
        ({"limit": {"usd": -1}}, r"usage_limit.usd must be >= 0"),
        ({"limit": {"usd": float("nan")}}, "finite number"),
        ({"limit": {"tokens": 5, "window": "soon"}}, "not a duration"),
        ({"limit": {"tokens": 5, "window": 0}}, "positive number of seconds"),
        ({"threshold": 1.5}, "between 0 and 1"),
        ({"threshold": "high"}, "confidence_threshold must be a finite number"),
    ],
)
def test_bad_tenant_values_are_clear_errors(values: dict[str, Any], message: str):
    with pytest.raises(TenantConfigError, match=message) as caught:
        tenant_policy(getter(**values), "acme")
    assert "slm/tenants/acme/" in str(caught.value)


def test_tenant_ids_are_validated():
    for bad in ("Acme", "a/b", "a+", "#", ""):
        with pytest.raises(TopicError):
            tenant_policy(getter(), bad)


def test_durations():
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("", "1y", "h", "0s", "-1h"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


async def test_quota_enforcement(ledger: Ledger):
    unlimited = TenantPolicy()
    tokens = TenantPolicy(usage_limit_tokens=4000)
    dollars = TenantPolicy(usage_limit_usd=0.10)
    await check_quota(ledger, unlimited, "acme")
    await ledger.record(entry(route="cloud"))  # 1500 tokens, $0.06
    await ledger.record(entry(route="edge"))  # 1500 tokens, $0
    await check_quota(ledger, tokens, "acme")  # 3000 < 4000
    await check_quota(ledger, dollars, "acme")  # $0.06 < $0.10
    await ledger.record(entry(route="cloud"))  # 4500 tokens, $0.12
    with pytest.raises(QuotaExceeded) as over_tokens:
        await check_quota(ledger, tokens, "acme")
    assert (over_tokens.value.used, over_tokens.value.limit, over_tokens.value.unit) == (
        4500,
        4000,
        "tokens",
    )
    assert over_tokens.value.status_code == 429
    assert "tenant 'acme' has used 4,500 of its 4,000-token limit in total" in str(
        over_tokens.value
    )
    with pytest.raises(QuotaExceeded, match=r"\$0\.1200 of its \$0\.1000 limit") as over_usd:
        await check_quota(ledger, dollars, "acme")
    assert over_usd.value.unit == "usd"
    await check_quota(ledger, tokens, "beta")  # other tenants are not affected
    await check_quota(ledger, TenantPolicy(usage_limit_tokens=4500 + 1), "acme")


async def test_quota_window(ledger: Ledger):
    now = datetime.now(UTC)
    await ledger.record(entry(route="cloud", ts=now - timedelta(days=2)))
    daily = TenantPolicy(usage_limit_tokens=1000, usage_window=timedelta(days=1))
    await check_quota(ledger, daily, "acme", now=now)  # yesterday's usage is outside
    await ledger.record(entry(route="edge", ts=now))
    with pytest.raises(QuotaExceeded, match="in the last 1 day;"):
        await check_quota(ledger, daily, "acme", now=now)


# --- edgecollab ledger report ---------------------------------------------------------


def run_report(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="edgecollab")
    add_ledger_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["ledger", "report", *argv])
    result: int = args.func(args)
    return result


async def fill(url: str) -> None:
    async with Ledger(url) as ledger:
        for route in ("edge", "edge", "edge", "cloud", "cache"):
            await ledger.record(entry(route=route))
        await ledger.record(entry(tenant="beta", route="cloud", prompt=2000, completion=0))
        await ledger.record(
            entry(tenant="old", route="cloud", ts=datetime.now(UTC) - timedelta(days=10))
        )


def test_report_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    asyncio.run(fill(url))
    assert run_report("--url", url, "--since", "1d") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "tenant",
        "requests",
        "edge",
        "cloud",
        "cache",
        "errors",
        "tokens",
        "cloud",
        "cost",
        "$",
        "edge",
        "saved",
        "$",
        "edge/cloud",
        "%",
    ]
    assert lines[1].split() == [
        "acme",
        "5",
        "3",
        "1",
        "1",
        "0",
        "7500",
        "0.0600",
        "0.2400",
        "75/25",
    ]
    assert lines[2].split() == [
        "beta",
        "1",
        "0",
        "1",
        "0",
        "0",
        "2000",
        "0.0600",
        "0.0000",
        "0/100",
    ]
    assert set(lines[3]) == {"-"}
    assert lines[4].split() == [
        "TOTAL",
        "6",
        "3",
        "2",
        "1",
        "0",
        "9500",
        "0.1200",
        "0.2400",
        "60/40",
    ]
    assert len(lines) == 5  # "old" is before --since


def test_report_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    asyncio.run(fill(url))
    monkeypatch.setenv("EDGECOLLAB_GATEWAY__LEDGER_URL", url)  # the gateway's own setting
    assert run_report("--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["since"] is None
    assert [t["tenant"] for t in report["tenants"]] == ["acme", "beta", "old"]
    acme = report["tenants"][0]
    assert acme["savings_usd"] == pytest.approx(0.24)
    assert (acme["edge_share"], acme["cloud_share"]) == (0.75, 0.25)
    assert report["total"]["requests"] == 7
    assert report["total"]["cost_usd"] == pytest.approx(0.18)


def test_report_on_empty_and_bad_ledgers(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run_report("--url", f"sqlite:///{tmp_path / 'empty.sqlite3'}") == 0
    assert capsys.readouterr().out.strip() == "no requests recorded"
    assert run_report("--url", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x") == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecollab ledger: ledger postgresql+psycopg://u:***@")
    assert "hunter2" not in err


def test_since_parsing():
    now = datetime(2025, 5, 1, 12, tzinfo=UTC)
    assert parse_since("1h", now) == now - timedelta(hours=1)
    assert parse_since("2025-04-30T00:00:00") == datetime(2025, 4, 30, tzinfo=UTC)
    assert parse_since("2025-04-30T02:00:00+02:00") == datetime(2025, 4, 30, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="neither an ISO 8601 time"):
        parse_since("yesterday")
