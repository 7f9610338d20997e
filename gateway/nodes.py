"""What the gateway knows about edge nodes: one view per node, built from the CMS.

A :class:`NodeView` joins a node's retained birth (capabilities, models, device,
limits), its state (online or offline, session-checked by :func:`broker.nodes_from`)
and its volatile ``load`` record. A :class:`NodeDirectory` keeps the views current
from a :class:`broker.Mirror` of ``slm/nodes`` and holds the gateway's reservations.

Capacity. Roles never import each other, so :data:`NOMINAL_TPS` copies the decode
rates of the simulated engine's device profiles (one stream; all slots together),
matched by name in the birth's ``device`` or a model's ``profile``
(``"jetson-agx-orin (simulated)"`` is ``jetson-agx-orin``); others get
:data:`DEFAULT_TPS`. The load's ``tokens_per_s`` measures demand, not capacity (an
idle fast node shows 0), so ``capacity_tps = max(nominal, peak tokens_per_s seen this
session)``: a node running a model smaller than the profiles' ~1.1B learns its rate.

Unknown load. An online node without a live load record (just born, or its record
expired) stays a candidate with ``load_known=False``, counted as full: tried last.

Reconciliation. The CMS load lags by the node's debounce. The gateway reserves
``prompt + max_tokens`` and a slot when it sends a request and releases them when the
answer or error comes. A reservation is added to the published load until a load
record is *received at least* ``settle_s`` *after the reservation was made*: that
record was published after the request reached the node, so it counts the request
(or its end) itself. From then on the published figure alone is trusted, so nothing
is counted twice. ``settle_s`` (50 ms) must exceed the trip to the node and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self

from broker import CmsEntry, Mirror, NodeStatus, node_status, nodes_from
from broker.topics import node_key

logger = logging.getLogger(__name__)

NODES_PREFIX = "slm/nodes"
#: Nominal decode rates, tokens/s of a ~1.1B 4-bit model under llama.cpp: (one stream,
#: all slots together). Copied from the simulated engine's device profiles, whose
#: sources are cited there (jetson-agx-orin: 130 x aggregate speedup 2; orin-nano:
#: 60 x 1.5; raspberry-pi-5: 12 x 1).
NOMINAL_TPS: dict[str, tuple[float, float]] = {
    "jetson-agx-orin": (130.0, 260.0),
    "jetson-orin-nano": (60.0, 90.0),
    "raspberry-pi-5": (12.0, 12.0),
}
DEFAULT_TPS = (20.0, 20.0)


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node as the scheduler sees it; load figures include unreflected reservations."""

    node_id: str
    max_inflight_tokens: int
    max_tokens: int
    slots: int = 1
    online: bool = True
    capabilities: tuple[str, ...] = ()
    expertise: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    parameters: str | None = None  # size label of the first model, such as "135M"
    device: str = ""
    in_flight: int = 0
    tokens_in_flight: int = 0
    tokens_per_s: float = 0.0
    draining: bool = False
    load_known: bool = True
    capacity_tps: float = DEFAULT_TPS[1]  # all slots together
    stream_tps: float = DEFAULT_TPS[0]  # one stream alone
    reserved: int = 0  # local reservations not yet reflected in the load
    free_slots: int = field(init=False)
    free_tokens: int = field(init=False)
    utilisation: float = field(init=False)

    def __post_init__(self) -> None:
        if self.slots < 1 or self.max_inflight_tokens < 1 or self.max_tokens < 1:
            raise ValueError(f"node {self.node_id}: limits must be positive")
        if not (self.capacity_tps > 0 and self.stream_tps > 0):
            raise ValueError(f"node {self.node_id}: token rates must be positive")
        object.__setattr__(self, "free_slots", max(0, self.slots - self.in_flight))
        object.__setattr__(self, "free_tokens", self.max_inflight_tokens - self.tokens_in_flight)
        object.__setattr__(
            self,
            "utilisation",
            max(self.in_flight / self.slots, self.tokens_in_flight / self.max_inflight_tokens),
        )

    @property
    def model_ids(self) -> tuple[str, ...]:
        return self.models

    def can_take(self, tokens: int, max_tokens: int) -> bool:
        """Whether the node would ever admit such a request (its static limits)."""
        return tokens <= self.max_inflight_tokens and max_tokens <= self.max_tokens

    def fits(self, tokens: int, max_tokens: int) -> bool:
        """Whether the node's admission would take it now (``edge_node.admission``)."""
        return self.free_slots > 0 and tokens <= self.free_tokens and max_tokens <= self.max_tokens


@dataclass(frozen=True, slots=True)
class Reservation:
    """Tokens the gateway sent to a node and has not had an answer for yet."""

    node_id: str
    tokens: int
    at: float  # the directory's clock when made
    serial: int


def nominal_rates(
    device: str,
    profiles: Iterable[str] = (),
    table: Mapping[str, tuple[float, float]] = NOMINAL_TPS,
) -> tuple[float, float]:
    """(one stream, aggregate) tokens/s for a device description, or the default."""
    names = [device.lower(), *(p.lower() for p in profiles)]
    for key in sorted(table, key=len, reverse=True):
        if any(key in name for name in names):
            return table[key]
    return DEFAULT_TPS


def build_view(
    status: NodeStatus,
    load: Mapping[str, Any] | None,
    *,
    peak_tps: float = 0.0,
    table: Mapping[str, tuple[float, float]] = NOMINAL_TPS,
) -> NodeView:
    """A view from a node's status (birth info) and load record; ``ValueError`` if malformed."""
    info = status.info
    limits = info.get("limits")
    limits = limits if isinstance(limits, Mapping) else {}
    models = [m for m in info.get("models", ()) if isinstance(m, Mapping)]
    load = load if isinstance(load, Mapping) else None
    slots = _int(load, "slots") or _int(limits, "concurrency") or 1
    budget = _int(load, "max_inflight_tokens") or _int(limits, "max_inflight_tokens")
    if budget is None:
        raise ValueError(f"node {status.node_id}: birth has no limits.max_inflight_tokens")
    device = info.get("device") if isinstance(info.get("device"), str) else ""
    stream, aggregate = nominal_rates(
        str(device), (str(m["profile"]) for m in models if "profile" in m), table
    )
    tps = _float(load, "tokens_per_s")
    capacity = max(aggregate, peak_tps, tps)
    if load is not None:
        free = _int(load, "free_slots")
        in_flight = max(_int(load, "in_flight") or 0, slots - free if free is not None else 0)
        tokens = _int(load, "tokens_in_flight") or 0
    else:  # unknown load: assume full, so it is tried last
        in_flight, tokens = slots, budget
    return NodeView(
        node_id=status.node_id,
        online=status.online,
        capabilities=_strings(info.get("capabilities")),
        expertise=_strings(info.get("expertise")),
        models=tuple(str(m["id"]) for m in models if "id" in m),
        parameters=str(models[0]["parameters"]) if models and "parameters" in models[0] else None,
        device=str(device),
        slots=slots,
        max_inflight_tokens=budget,
        max_tokens=_int(limits, "max_tokens") or budget,
        in_flight=in_flight,
        tokens_in_flight=tokens,
        tokens_per_s=tps,
        draining=load is not None and load.get("draining") is True,
        load_known=load is not None,
        capacity_tps=capacity,
        stream_tps=stream * capacity / aggregate,
    )


class NodeDirectory:
    """Live node views from a mirror of ``slm/nodes``, plus the local reservation ledger.

    Enter it (``async with NodeDirectory(mirror) as nodes``) to follow the mirror's
    changes incrementally: each decision then costs O(candidates) list work. Not
    entered, it re-reads the whole mirror when its copy is older than ``refresh_s``
    (fine for a handful of nodes; a large cluster should enter it).
    """

    def __init__(
        self,
        mirror: Mirror,
        *,
        settle_s: float = 0.05,
        refresh_s: float = 0.05,
        nominal_tps: Mapping[str, tuple[float, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (mirror.prefix == "slm" or f"{mirror.prefix}/".startswith(f"{NODES_PREFIX}/")):
            raise ValueError(
                f"a node directory needs a mirror of {NODES_PREFIX}, not {mirror.prefix}"
            )
        self.mirror = mirror
        self.settle_s = settle_s
        self.refresh_s = refresh_s
        self.table = dict(NOMINAL_TPS if nominal_tps is None else nominal_tps)
        self.clock = clock
        self._base: dict[str, NodeView] = {}  # as published
        self._views: dict[str, NodeView] = {}  # with unreflected reservations
        self._load_at: dict[str, float] = {}
        self._peak: dict[str, tuple[int, float]] = {}  # node -> (session, peak tokens/s)
        self._pending: dict[str, dict[int, Reservation]] = {}
        self._cache: dict[tuple[str, str | None], tuple[list[NodeView], dict[str, int]]] = {}
        self._serial = itertools.count(1)
        self._refreshed = -math.inf
        self._task: asyncio.Task[None] | None = None
        self._death: dict[str, set[asyncio.Event]] = {}
        self._listeners: list[Callable[[], None]] = []

    async def __aenter__(self) -> Self:
        self.refresh()
        self._task = asyncio.create_task(
            self._follow(), name=f"node-directory:{self.mirror.prefix}"
        )
        await asyncio.sleep(0)  # let it register with the mirror before we return
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def following(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- reading ----------------------------------------------------------------------

    def view(self, node_id: str) -> NodeView | None:
        self._maybe_refresh()
        return self._views.get(node_id)

    def views(self) -> list[NodeView]:
        """Every node with a birth, online or not, sorted by id."""
        self._maybe_refresh()
        return [self._views[n] for n in sorted(self._views)]

    def candidates(self, capability: str, model: str | None = None) -> list[NodeView]:
        """Online, not draining, serving ``capability`` (and ``model``), sorted by id."""
        self._maybe_refresh()
        key = (capability, model)
        cached = self._cache.get(key)
        if cached is None:
            found = [v for _, v in sorted(self._views.items()) if _serves(v, capability, model)]
            cached = found, {v.node_id: i for i, v in enumerate(found)}
            self._cache[key] = cached
        return list(cached[0])

    @contextlib.contextmanager
    def watch_death(self, node_id: str) -> Iterator[asyncio.Event]:
        """An event set when ``node_id`` goes offline (its will) or vanishes, while inside.

        Lets a pending request give up on a dead node at once instead of at its
        deadline. Only a directory that follows the mirror (entered) sees it live.
        """
        event = asyncio.Event()
        view = self._views.get(node_id)
        if view is None or not view.online:
            event.set()
        watchers = self._death.setdefault(node_id, set())
        watchers.add(event)
        try:
            yield event
        finally:
            watchers.discard(event)
            if not watchers:
                self._death.pop(node_id, None)

    def _signal_death(self, node_id: str) -> None:
        for event in self._death.get(node_id, ()):
            event.set()

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after any view changes (load record or reservation)."""
        self._listeners.append(listener)

    # --- reservations -----------------------------------------------------------------

    def reserve(self, node_id: str, tokens: int) -> Reservation:
        """Count ``tokens`` and one slot against ``node_id`` until the load shows them."""
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        held = Reservation(node_id, tokens, self.clock(), next(self._serial))
        self._pending.setdefault(node_id, {})[held.serial] = held
        self._recompute(node_id)
        return held

    def release(self, reservation: Reservation) -> None:
        """Forget a reservation (its answer or error came); releasing twice is harmless."""
        held = self._pending.get(reservation.node_id)
        if held is not None and held.pop(reservation.serial, None) is not None:
            if not held:
                del self._pending[reservation.node_id]
            self._recompute(reservation.node_id)

    # --- following the mirror ---------------------------------------------------------

    def refresh(self) -> None:
        """Rebuild every view from the mirror."""
        entries = list(self.mirror.items(NODES_PREFIX))
        loads = {k.split("/")[2]: e for k, e in entries if k.endswith("/load")}
        statuses = nodes_from(entries)
        for node_id in set(self._base) - set(statuses):
            self._forget(node_id)
        for node_id, status in statuses.items():
            self._apply(status, loads.get(node_id))
        self._cache.clear()
        self._refreshed = self.clock()

    def _maybe_refresh(self) -> None:
        if not self.following and self.clock() - self._refreshed >= self.refresh_s:
            self.refresh()

    async def _follow(self) -> None:
        """Apply each change; if this ever fails, fall back to re-reading the mirror."""
        overflow = self.mirror.stats["listener_overflow"]
        try:
            async for event in self.mirror.changes(replay=True):
                if self.mirror.stats["listener_overflow"] != overflow:  # events were lost
                    overflow = self.mirror.stats["listener_overflow"]
                    self.refresh()
                    continue
                parts = event.key.split("/")
                if len(parts) == 4 and parts[1] == "nodes":
                    self._update(parts[2])
        except Exception:
            logger.exception("node directory stopped following %s", self.mirror.prefix)

    def _update(self, node_id: str) -> None:
        entry = self.mirror.entry
        birth, state = entry(node_key(node_id, "birth")), entry(node_key(node_id, "state"))
        if birth is None and state is None:
            self._forget(node_id)
            return
        self._apply(node_status(node_id, birth, state), entry(node_key(node_id, "load")))

    def _apply(self, status: NodeStatus, load: CmsEntry | None) -> None:
        node_id = status.node_id
        if not status.info:  # no birth: nothing to schedule on
            self._forget(node_id)
            return
        value = load.value if load is not None else None
        session, peak = self._peak.get(node_id, (status.session, 0.0))
        if session != status.session:
            peak = 0.0
        if isinstance(value, Mapping):
            peak = max(peak, _float(value, "tokens_per_s"))
        self._peak[node_id] = (status.session, peak)
        try:
            base = build_view(status, value, peak_tps=peak, table=self.table)
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning("node %s ignored: %s", node_id, exc)
            self._forget(node_id)
            return
        self._base[node_id] = base
        self._load_at[node_id] = load.received_at if load is not None else -math.inf
        self._recompute(node_id)

    def _recompute(self, node_id: str) -> None:
        base = self._base.get(node_id)
        if base is None:
            return
        for listener in self._listeners:  # listeners defer their work (call_soon)
            listener()
        since = self._load_at.get(node_id, -math.inf)
        late = [r for r in self._pending.get(node_id, {}).values() if r.at + self.settle_s > since]
        view = base
        if late:
            tokens = base.tokens_in_flight + sum(r.tokens for r in late)
            view = replace(
                base,
                in_flight=base.in_flight + len(late),
                tokens_in_flight=tokens,
                reserved=len(late),
            )
        old = self._views.get(node_id)
        self._views[node_id] = view
        if not view.online:
            self._signal_death(node_id)
        if old is None or _membership(old) != _membership(view):
            self._cache.clear()
            return
        for found, index in self._cache.values():
            i = index.get(node_id)
            if i is not None:
                found[i] = view

    def _forget(self, node_id: str) -> None:
        self._signal_death(node_id)
        if self._views.pop(node_id, None) is not None:
            self._cache.clear()
        self._base.pop(node_id, None)
        self._load_at.pop(node_id, None)
        self._peak.pop(node_id, None)


def _serves(v: NodeView, capability: str, model: str | None) -> bool:
    return (
        v.online
        and not v.draining
        and capability in v.capabilities
        and (model is None or model in v.models)
    )


def _membership(view: NodeView) -> tuple[object, ...]:
    return (view.online, view.draining, view.capabilities, view.models)


def _int(source: Mapping[str, Any] | None, key: str) -> int | None:
    value = None if source is None else source.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(source: Mapping[str, Any] | None, key: str) -> float:
    value = None if source is None else source.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(0.0, float(value))
    return 0.0


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


__all__ = [
    "DEFAULT_TPS",
    "NODES_PREFIX",
    "NOMINAL_TPS",
    "NodeDirectory",
    "NodeView",
    "Reservation",
    "build_view",
    "nominal_rates",
]
