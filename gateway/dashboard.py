"""The live dashboard's state: nodes from the CMS, data streams, traffic from the ledger.

A :class:`Dashboard` builds one JSON-shaped snapshot (:class:`DashboardState`) from

- the gateway's mirror of ``slm/``: each node's birth, state, load and metrics, with
  the scheduler's view of it (:class:`gateway.nodes.NodeDirectory`);
- a :class:`gateway.data_streams.DataFollower` of ``data/+/+/+`` (metadata only);
- :class:`gateway.traffic.Traffic` over the ledger (bounded queries).

While someone watches (an open ``/dashboard/events`` stream), a background task
rebuilds the snapshot when the CMS or a data stream changes (at most every
``min_interval_s``, and one more second per ``bytes_per_s`` of snapshot, so that a
large cluster's page is not re-sent several times a second) and re-reads the ledger
every ``ledger_poll_s``; watchers get a snapshot whenever it differs from the last
one. Nobody watching, nothing runs.
A ledger that fails keeps the last traffic figures and says why (``ledger_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Self, TypedDict

from broker import BusClient, Mirror, nodes_from
from broker.topics import node_key
from broker.waits import wait_event, within
from gateway.data_streams import DataFollower, EventRow, StreamRow
from gateway.ledger import Ledger, LedgerError
from gateway.nodes import NodeDirectory
from gateway.traffic import Traffic, TrafficState, summarise

logger = logging.getLogger(__name__)


class NodeRow(TypedDict):
    id: str
    online: bool
    status: str  # online | offline | draining
    reason: str
    device: str
    simulated: bool
    engine: str | None
    models: list[dict[str, Any]]
    capabilities: list[str]
    expertise: list[str]
    slots: int | None
    in_flight: int | None
    tokens_in_flight: int | None
    max_inflight_tokens: int | None
    utilisation: float | None
    tokens_per_s: float | None
    capacity_tps: float | None
    load_known: bool
    served_total: int | None
    inference_ms_avg: float | None


class DashboardState(TypedDict):
    generated_at: float
    gateway: dict[str, Any]
    nodes: list[NodeRow]
    streams: list[StreamRow]
    devices: dict[str, dict[str, Any]]
    events: list[EventRow]
    data_stats: dict[str, int]
    traffic: TrafficState
    ledger_error: str | None


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _scalar(value: Any) -> str | float | None:
    """A birth field as JSON can carry it: a finite number, a string, or ``None``."""
    if value is None or isinstance(value, str):
        return value
    number = _number(value)
    return number if number is not None else str(value)[:64]


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _strings(value: Any) -> list[str]:
    return [str(v)[:64] for v in value] if isinstance(value, list | tuple) else []


def _int(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def node_rows(mirror: Mirror, directory: NodeDirectory | None = None) -> list[NodeRow]:
    """One row per node with a birth, online or not, sorted by id."""
    entries = list(mirror.items("slm/nodes"))
    metrics: dict[str, dict[str, Any]] = {}
    for key, entry in mirror.items("slm/metrics"):
        parts = key.split("/")
        if len(parts) == 4:
            metrics.setdefault(parts[2], {})[parts[3]] = entry.value
    rows = []
    for node_id, status in sorted(nodes_from(entries).items()):
        info = status.info
        if not info:
            continue
        raw = mirror.get(node_key(node_id, "load"))
        load: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        view = directory.view(node_id) if directory is not None else None
        models = [m for m in _list(info.get("models")) if isinstance(m, Mapping)]
        device = str(info.get("device") or "")[:128]
        draining = load.get("draining") is True
        counters = metrics.get(node_id, {})
        rows.append(
            NodeRow(
                id=node_id,
                online=status.online,
                status=("draining" if draining else "online") if status.online else "offline",
                reason=status.reason,
                device=device,
                simulated="simulated" in device or any(m.get("simulated") for m in models),
                engine=str(info["engine"])[:32] if "engine" in info else None,
                models=[
                    {k: _scalar(m.get(k)) for k in ("id", "parameters", "quantization", "profile")}
                    for m in models
                ],
                capabilities=_strings(info.get("capabilities")),
                expertise=_strings(info.get("expertise")),
                slots=view.slots if view else _int(load.get("slots")),
                in_flight=view.in_flight
                if view and view.load_known
                else _int(load.get("in_flight")),
                tokens_in_flight=view.tokens_in_flight
                if view and view.load_known
                else _int(load.get("tokens_in_flight")),
                max_inflight_tokens=view.max_inflight_tokens
                if view
                else _int(load.get("max_inflight_tokens")),
                utilisation=round(view.utilisation, 3) if view and view.load_known else None,
                tokens_per_s=_number(load.get("tokens_per_s")),
                capacity_tps=round(view.capacity_tps, 1) if view else None,
                load_known=bool(load),
                served_total=_int(counters.get("served_total")),
                inference_ms_avg=_number(counters.get("inference_time_avg")),
            )
        )
    return rows


def device_infos(mirror: Mirror) -> dict[str, dict[str, Any]]:
    """What devices say about themselves in ``slm/devices/{agent}/info``."""
    found: dict[str, dict[str, Any]] = {}
    for key, entry in mirror.items("slm/devices"):
        parts, info = key.split("/"), entry.value
        if len(parts) != 4 or parts[3] != "info" or not isinstance(info, Mapping):
            continue
        location = info.get("location")
        location = location if isinstance(location, Mapping) else {}
        place = [location.get(k) for k in ("site", "placement")]
        found[parts[2]] = {
            "device": str(info.get("device") or "")[:64] or None,
            "simulated": info.get("simulated") is True,
            "place": " · ".join(str(p)[:48] for p in place if p) or None,
            "streams": [
                str(s.get("stream"))[:64]
                for s in _list(info.get("streams"))
                if isinstance(s, Mapping) and s.get("stream")
            ],
        }
    return found


def _comparable(state: DashboardState) -> str:
    return json.dumps({k: v for k, v in state.items() if k != "generated_at"}, sort_keys=True)


class Dashboard:
    """Snapshots of the edge for ``/dashboard``; enter it to follow ``data/``."""

    def __init__(
        self,
        *,
        bus: BusClient,
        mirror: Mirror,
        ledger: Ledger,
        directory: NodeDirectory | None = None,
        about: Mapping[str, Any] | None = None,
        ledger_poll_s: float = 1.0,
        min_interval_s: float = 0.3,
        bytes_per_s: int = 200_000,
    ) -> None:
        self.bus = bus
        self.mirror = mirror
        self.directory = directory
        self.about = dict(about or {})
        self.traffic = Traffic(ledger)
        self.ledger_poll_s = ledger_poll_s
        self.min_interval_s = min_interval_s
        self.bytes_per_s = bytes_per_s
        self.data = DataFollower(bus, on_change=self._touch)
        self._traffic_state: TrafficState = summarise({}, 0, [])
        self._traffic_at = -float("inf")
        self._ledger_error: str | None = None
        self._state: DashboardState | None = None
        self._state_at = -float("inf")
        self._comparable = ""
        self._version = 0
        self._changed = asyncio.Condition()
        self._dirty = asyncio.Event()
        self._watchers = 0
        self._watched = asyncio.Event()
        self._build_lock = asyncio.Lock()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Self:
        await self.data.__aenter__()
        self._tasks = [
            asyncio.create_task(self._follow_cms(), name="dashboard-cms"),
            asyncio.create_task(self._refresh(), name="dashboard-refresh"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.data.__aexit__(*exc_info)

    async def close(self) -> None:
        """End every event stream (before the HTTP server stops: it waits for them)."""
        self._closed = True
        async with self._changed:
            self._changed.notify_all()

    # --- reading ---------------------------------------------------------------------

    async def state(self) -> DashboardState:
        """The current snapshot (rebuilt when older than ``min_interval_s``)."""
        if self._state is None or time.monotonic() - self._state_at >= self.min_interval_s:
            await self._rebuild()
        assert self._state is not None
        return self._state

    async def updates(self, heartbeat_s: float = 15.0) -> AsyncIterator[DashboardState | None]:
        """The current snapshot, then each changed one; ``None`` after ``heartbeat_s`` idle."""
        self._watchers += 1
        self._watched.set()
        try:
            yield await self.state()
            seen = self._version
            while not self._closed:
                idle = False
                async with self._changed:  # never yield while holding its lock
                    try:
                        await within(self._changed.wait_for(self._moved(seen)), heartbeat_s)
                    except TimeoutError:
                        idle = True
                if idle:
                    yield None
                    continue
                if self._closed:
                    return
                seen = self._version
                assert self._state is not None
                yield self._state
        finally:
            self._watchers -= 1
            if not self._watchers:
                self._watched.clear()

    def _moved(self, seen: int) -> Callable[[], bool]:
        return lambda: self._version != seen or self._closed

    # --- keeping it current ----------------------------------------------------------

    def _touch(self) -> None:
        self._dirty.set()

    async def _follow_cms(self) -> None:
        async for event in self.mirror.changes():
            if event.key.startswith(("slm/nodes/", "slm/metrics/", "slm/devices/")):
                self._dirty.set()

    async def _refresh(self) -> None:
        while True:
            await self._watched.wait()
            await wait_event(self._dirty, self.ledger_poll_s)  # lets a cancel through
            self._dirty.clear()
            try:
                await self._rebuild()
            except Exception:  # the dashboard must not take the gateway down
                logger.exception("dashboard refresh failed")
            await asyncio.sleep(self.min_interval_s + len(self._comparable) / self.bytes_per_s)

    async def _rebuild(self) -> None:
        async with self._build_lock:
            if time.monotonic() - self._traffic_at >= self.ledger_poll_s:
                try:
                    self._traffic_state = await self.traffic.refresh()
                    self._ledger_error = None
                except LedgerError as exc:
                    self._ledger_error = str(exc)
                    logger.warning("dashboard: %s", exc)
                self._traffic_at = time.monotonic()
            state = DashboardState(
                generated_at=time.time(),
                gateway={**self.about, "broker_connected": self.bus.is_connected},
                nodes=node_rows(self.mirror, self.directory),
                streams=self.data.table.rows(),
                devices=device_infos(self.mirror),
                events=self.data.table.events(),
                data_stats=dict(self.data.table.stats),
                traffic=self._traffic_state,
                ledger_error=self._ledger_error,
            )
            self._state, self._state_at = state, time.monotonic()
            comparable = _comparable(state)
            if comparable != self._comparable:
                self._comparable = comparable
                self._version += 1
                async with self._changed:
                    self._changed.notify_all()
