"""The cost ledger: one row per request, in SQLite (default) or PostgreSQL (by URL).

Each row says who asked (tenant), where it was served (``edge`` node, ``cloud``,
``cache``, or ``error``), under which scheduling policy and model, the tokens in and
out, the latency, what it cost, what the cloud would have charged for it, and why it
was escalated. SQL runs off the event loop (``asyncio.to_thread``).

SQLite runs in WAL mode with a busy timeout, so that the gateway and ``edgecollab
ledger report`` can use the file at once. On PostgreSQL several gateways share one
database: rows have UUID keys, and table creation is serialised by an advisory lock.

Every SQLAlchemy and driver error is mapped, in :meth:`Ledger._mapped`, to
:class:`LedgerError`; passwords in URLs are masked in every message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateSchema
from sqlalchemy.types import TypeDecorator

from broker.topics import validate_id
from gateway.pricing import ROUTES, Route

logger = logging.getLogger(__name__)
T = TypeVar("T")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_CREATE_LOCK = 0x6564_6765_636F  # pg advisory lock key: "edgeco"


class LedgerError(Exception):
    """The ledger's database could not be opened, written or read (URL, connection, SQL)."""


def default_url() -> str:
    """``sqlite:///$XDG_STATE_HOME/edgecollab/ledger.sqlite3`` (``~/.local/state`` if unset)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'edgecollab' / 'ledger.sqlite3'}"


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, parseable or not."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError, TypeError):
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


class _UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out; stored naive UTC on SQLite, ``timestamptz`` else."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        value = _utc(value)
        return value.replace(tzinfo=None) if value and dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return _utc(value)


def _utc(value: datetime | None) -> datetime | None:
    """``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the ledger's tables."""


class RequestRow(Base):
    """One request as recorded (table ``requests``)."""

    __tablename__ = "requests"
    __table_args__ = (
        sa.Index("ix_requests_tenant_ts", "tenant", "ts"),
        sa.Index("ix_requests_ts", "ts"),  # the dashboard's time windows and recent list
        sa.CheckConstraint(
            "route IN ('edge', 'cloud', 'cache', 'error')", name="ck_requests_route"
        ),
    )

    id: Mapped[str] = mapped_column(sa.String(36), primary_key=True)
    ts: Mapped[datetime] = mapped_column(_UtcDateTime())
    tenant: Mapped[str] = mapped_column(sa.String(64))
    route: Mapped[str] = mapped_column(sa.String(8))
    node: Mapped[str | None] = mapped_column(sa.Text)
    policy: Mapped[str] = mapped_column(sa.Text)
    model: Mapped[str] = mapped_column(sa.Text)
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    latency_ms: Mapped[float]
    cost_usd: Mapped[float]
    cloud_equivalent_usd: Mapped[float]
    escalation_reason: Mapped[str | None] = mapped_column(sa.Text)
    status: Mapped[str] = mapped_column(sa.String(32))
    trace: Mapped[str | None] = mapped_column(sa.Text)


@dataclass(frozen=True, slots=True, kw_only=True)
class LedgerEntry:
    """One request to record; ``status`` is ``ok`` or an error code."""

    tenant: str
    route: Route
    policy: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    cost_usd: float = 0.0
    cloud_equivalent_usd: float = 0.0
    node: str | None = None
    escalation_reason: str | None = None
    status: str = "ok"
    trace: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        validate_id(self.tenant, "tenant")
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {', '.join(ROUTES)}, got {self.route!r}")
        counts = (self.prompt_tokens, self.completion_tokens)
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
            raise ValueError(f"token counts must be ints >= 0, got {counts}")
        amounts = (self.latency_ms, self.cost_usd, self.cloud_equivalent_usd)
        if not all(math.isfinite(x) and x >= 0 for x in amounts):
            raise ValueError(f"latency_ms and costs must be finite and >= 0, got {amounts}")
        if not 0 < len(self.status) <= 32:
            raise ValueError(f"status must be 1-32 characters, got {self.status!r}")
        if self.ts.tzinfo is None:
            raise ValueError("ts must be timezone-aware (UTC)")


@dataclass(frozen=True, slots=True)
class Usage:
    """A tenant's usage: tokens in and out, cloud cost, number of requests."""

    tokens: int
    cost_usd: float
    requests: int


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Totals of the requests sharing a policy, route, escalation reason and status."""

    policy: str
    route: str
    escalation: str | None
    status: str
    requests: int
    tokens: int
    cost_usd: float
    cloud_equivalent_usd: float


@dataclass(frozen=True, slots=True)
class TenantSummary:
    """Per-tenant totals; ``savings_usd`` is the cloud equivalent of edge and cache answers."""

    tenant: str
    requests: int
    edge: int
    cloud: int
    cache: int
    errors: int
    tokens: int
    cost_usd: float
    cloud_equivalent_usd: float
    savings_usd: float

    @property
    def edge_share(self) -> float | None:
        """Edge answers over edge plus cloud answers; ``None`` when there were none."""
        served = self.edge + self.cloud
        return self.edge / served if served else None


def _sum(column: Any, *routes: str) -> Any:
    """``SUM(column)``, over the rows of ``routes`` only when given; 0 when no rows."""
    value = sa.case((RequestRow.route.in_(routes), column), else_=0) if routes else column
    return sa.func.coalesce(sa.func.sum(value), 0)


_TOKENS = RequestRow.prompt_tokens + RequestRow.completion_tokens
_TABLE: sa.Table = RequestRow.__table__  # type: ignore[assignment]  # a Table, typed FromClause


class Ledger:
    """The request ledger at ``url`` (default :func:`default_url`).

    ``schema`` (PostgreSQL only) keeps the tables in a schema of their own, created
    if missing. Use ``async with Ledger(url) as ledger`` or call :meth:`open` (the
    other methods open it on first use) and :meth:`close`.
    """

    def __init__(self, url: str | None = None, *, schema: str | None = None) -> None:
        raw = url or default_url()
        self.url, self.schema = mask_url(raw), schema
        self._opened = self._closed = False
        self._open_lock = asyncio.Lock()
        self._memory_lock: threading.Lock | None = None
        self._sqlite_file: Path | None = None
        with self._mapped("parsing the URL", chain=False):  # the cause may quote the password
            parsed = sa.make_url(raw)
            if parsed.drivername == "postgresql":
                parsed = parsed.set(drivername="postgresql+psycopg")
            backend = parsed.get_backend_name()
            if backend not in ("sqlite", "postgresql"):
                raise LedgerError(f"ledger {self.url}: only sqlite and postgresql are supported")
            if schema is not None and (backend != "postgresql" or not _SCHEMA.fullmatch(schema)):
                raise LedgerError(
                    f"ledger {self.url}: schema {schema!r} needs PostgreSQL "
                    "and a lowercase SQL identifier"
                )
            if backend == "sqlite":
                engine = self._sqlite_engine(parsed)
            else:
                timeout = {} if "connect_timeout" in parsed.query else {"connect_timeout": 10}
                engine = sa.create_engine(parsed, pool_pre_ping=True, connect_args=timeout)
        self._base_engine = engine
        self._engine = engine.execution_options(schema_translate_map={None: schema})

    def _sqlite_engine(self, url: sa.URL) -> sa.Engine:
        if url.database in (None, "", ":memory:"):  # one shared connection, one thread at a time
            self._memory_lock = threading.Lock()
            args = {"check_same_thread": False}
            return sa.create_engine(url, poolclass=StaticPool, connect_args=args)
        if not url.database.startswith("file:"):
            self._sqlite_file = Path(url.database).expanduser()
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA busy_timeout=30000")

        return engine

    @contextlib.contextmanager
    def _mapped(self, action: str, *, chain: bool = True) -> Iterator[None]:
        """Map SQLAlchemy, driver and file-system errors to :class:`LedgerError`."""
        try:
            yield
        except LedgerError:
            raise
        except (SQLAlchemyError, ImportError, OSError) as exc:
            detail = str(exc.orig if isinstance(exc, DBAPIError) and exc.orig else exc).strip()
            text = detail.splitlines()[0] if detail else type(exc).__name__
            message = f"ledger {self.url}: {action} failed: {mask_url(text)[:300]}"
            raise LedgerError(message) from (exc if chain else None)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the database file, schema and tables if missing (idempotent)."""
        async with self._open_lock:
            if self._closed:
                raise LedgerError(f"ledger {self.url} is closed")
            if not self._opened:
                with self._mapped("opening"):
                    await asyncio.to_thread(self._create)
                self._opened = True
                logger.info("ledger open at %s", self.url)

    def _create(self) -> None:
        if self._sqlite_file is not None:
            self._sqlite_file.parent.mkdir(parents=True, exist_ok=True)
        with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # several gateways may start at once
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CREATE_LOCK)))
                if self.schema is not None:
                    conn.execute(CreateSchema(self.schema, if_not_exists=True))
            Base.metadata.create_all(conn)
            for index in _TABLE.indexes:  # indexes added after the table was created
                index.create(conn, checkfirst=True)

    async def close(self) -> None:
        """Release the connections; the ledger cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._base_engine.dispose)

    async def _run(self, action: str, work: Callable[[sa.Connection], T]) -> T:
        """Run ``work`` in a transaction on a worker thread, errors mapped."""
        await self.open()
        lock = self._memory_lock or contextlib.nullcontext()

        def in_thread() -> T:
            with lock, self._engine.begin() as conn:
                return work(conn)

        with self._mapped(action):
            return await asyncio.to_thread(in_thread)

    async def record(self, entry: LedgerEntry) -> None:
        """Append one request."""
        row = dataclasses.asdict(entry)
        await self._run("recording a request", lambda c: c.execute(sa.insert(RequestRow), [row]))

    async def tenant_usage(self, tenant: str, since: datetime | None = None) -> Usage:
        """Tokens, cloud cost and requests of ``tenant`` (since ``since``, if given)."""
        stmt = sa.select(_sum(_TOKENS), _sum(RequestRow.cost_usd), sa.func.count())
        stmt = stmt.where(RequestRow.tenant == tenant)
        if since is not None:
            stmt = stmt.where(RequestRow.ts >= since)
        tokens, cost, count = await self._run("reading usage", lambda c: c.execute(stmt).one())
        return Usage(tokens=int(tokens), cost_usd=float(cost), requests=int(count))

    async def summary(self, since: datetime | None = None) -> list[TenantSummary]:
        """Per-tenant totals, sorted by tenant."""
        counts = (_sum(sa.literal_column("1"), route) for route in ROUTES)
        money = (_sum(RequestRow.cost_usd), _sum(RequestRow.cloud_equivalent_usd))
        saved = _sum(RequestRow.cloud_equivalent_usd, "edge", "cache")
        columns = (RequestRow.tenant, sa.func.count(), *counts, _sum(_TOKENS), *money, saved)
        stmt = sa.select(*columns).group_by(RequestRow.tenant).order_by(RequestRow.tenant)
        if since is not None:
            stmt = stmt.where(RequestRow.ts >= since)
        rows = await self._run("summarising", lambda c: c.execute(stmt).all())
        return [
            TenantSummary(r[0], *(int(v) for v in r[1:7]), *(float(v) for v in r[7:])) for r in rows
        ]

    async def breakdown(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[Breakdown]:
        """Totals grouped by policy, route, escalation reason and status, ``since <= ts < until``.

        One aggregate query; with bounds it reads only that range of the ``ts`` index.
        """
        keys = (RequestRow.policy, RequestRow.route, RequestRow.escalation_reason)
        money = (_sum(RequestRow.cost_usd), _sum(RequestRow.cloud_equivalent_usd))
        columns = (*keys, RequestRow.status, sa.func.count(), _sum(_TOKENS), *money)
        stmt = sa.select(*columns).group_by(*keys, RequestRow.status)
        if since is not None:
            stmt = stmt.where(RequestRow.ts >= since)
        if until is not None:
            stmt = stmt.where(RequestRow.ts < until)
        rows = await self._run("summarising", lambda c: c.execute(stmt).all())
        return [
            Breakdown(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), float(r[6]), float(r[7]))
            for r in rows
        ]

    async def recent(self, limit: int = 20) -> list[LedgerEntry]:
        """The ``limit`` newest requests, newest first."""
        if not 0 < limit <= 1000:
            raise ValueError(f"limit must be 1..1000, got {limit}")
        stmt = sa.select(_TABLE).order_by(RequestRow.ts.desc()).limit(limit)
        names = [f.name for f in dataclasses.fields(LedgerEntry)]

        def read(conn: sa.Connection) -> list[LedgerEntry]:
            rows = conn.execute(stmt).mappings().all()
            return [LedgerEntry(**{n: r[n] for n in names}) for r in rows]

        return await self._run("reading recent requests", read)
