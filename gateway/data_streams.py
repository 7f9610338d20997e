"""Which devices publish what on ``data/``: the metadata of each stream, never its vectors.

The dashboard subscribes ``data/+/+/+`` at QoS 0 and keeps, per topic, what the last
message said about itself (the ``embedding`` envelope's ``model``, shape and ``meta``:
``type``, ``source`` (``synthetic``, ``live``, ``replay:<dataset>``), declared
``rate_hz``, ``simulated``, ``location``) with the measured arrival rate and when it
was last seen; ``event`` messages (detectors' findings, on ``data/{domain}/events/...``)
go to a bounded list of recent events instead. A message that does not decode is
counted and dropped. The table is bounded (``max_streams``): the stream seen least
recently goes first.

This is deliberately tiny; a shared data follower in ``broker/`` should replace it
once one exists.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self, TypedDict

from broker import (
    BusClient,
    CodecError,
    Embedding,
    Event,
    Inbound,
    Subscription,
    TopicError,
    decode,
)
from broker.topics import data_filter, parse_topic

logger = logging.getLogger(__name__)
RATE_WINDOW = 32  # arrivals kept per stream to measure its rate


class StreamRow(TypedDict):
    agent_id: str
    domain: str
    stream: str
    kind: str
    type: str | None
    model: str | None
    shape: list[int]
    declared_rate_hz: float | None
    rate_hz: float | None
    source: str | None
    place: str | None  # meta.location: site, placement
    simulated: bool
    last_seen: float  # epoch seconds
    messages: int


class EventRow(TypedDict):
    agent_id: str
    domain: str
    type: str
    stream: str
    phase: str
    severity: str
    message: str
    received: float  # epoch seconds


@dataclass(slots=True)
class _Stream:
    agent_id: str
    domain: str
    stream: str
    kind: str = ""
    type: str | None = None
    model: str | None = None
    shape: list[int] = field(default_factory=list)
    declared_rate_hz: float | None = None
    source: str | None = None
    place: str | None = None
    simulated: bool = False
    last_seen: float = 0.0
    messages: int = 0
    arrivals: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW))


def _text(meta: dict[str, Any], *names: str) -> str | None:
    for name in names:
        value = meta.get(name)
        if isinstance(value, str) and value:
            return value[:64]
    return None


def _number(meta: dict[str, Any], *names: str) -> float | None:
    for name in names:
        value = meta.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return None


class StreamTable:
    """The latest metadata of each ``data/`` stream (pure bookkeeping, no I/O)."""

    def __init__(
        self,
        *,
        max_streams: int = 500,
        max_events: int = 20,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_streams = max_streams
        self.clock = clock
        self._streams: dict[str, _Stream] = {}
        self._events: deque[EventRow] = deque(maxlen=max_events)
        self.stats: Counter[str] = Counter()

    def observe(self, topic: str, payload: bytes, content_type: str | None) -> bool:
        """Take one message; ``False`` (and counted) when it is not a valid data message."""
        try:
            levels = parse_topic(topic)
            message = decode(payload, content_type)
        except (TopicError, CodecError) as exc:
            self.stats["malformed"] += 1
            logger.debug("data message on %s ignored: %s", topic, exc)
            return False
        if levels.kind != "data":
            self.stats["malformed"] += 1
            return False
        now = self.clock()
        names = levels.levels
        if isinstance(message, Event):
            self._events.appendleft(
                EventRow(
                    agent_id=names["agent_id"],
                    domain=names["domain"],
                    type=message.type,
                    stream=message.stream,
                    phase=message.phase,
                    severity=message.severity,
                    message=message.message[:200],
                    received=now,
                )
            )
            self.stats["events"] += 1
            return True
        found = self._streams.pop(topic, None)  # re-inserted last: dict order = recency
        if found is None:
            found = _Stream(names["agent_id"], names["domain"], names["stream"])
            while len(self._streams) >= self.max_streams:
                self._streams.pop(next(iter(self._streams)))
                self.stats["evicted"] += 1
        self._streams[topic] = found
        found.kind = message.KIND
        if isinstance(message, Embedding):
            meta = message.meta
            found.model = message.model[:64] or None
            found.shape = list(message.vector.shape)
            found.type = _text(meta, "type", "sensor", "device_type", "modality")
            found.declared_rate_hz = _number(meta, "rate_hz", "hz")
            found.source = _text(meta, "source")
            found.place = _place(meta.get("location"))
            found.simulated = meta.get("simulated") is True or found.source == "synthetic"
        found.last_seen = now
        found.messages += 1
        found.arrivals.append(now)
        self.stats["messages"] += 1
        return True

    def rows(self) -> list[StreamRow]:
        """Every stream, by agent, domain and stream."""
        return [
            StreamRow(
                agent_id=s.agent_id,
                domain=s.domain,
                stream=s.stream,
                kind=s.kind,
                type=s.type,
                model=s.model,
                shape=s.shape,
                declared_rate_hz=s.declared_rate_hz,
                rate_hz=_rate(s.arrivals),
                source=s.source,
                place=s.place,
                simulated=s.simulated,
                last_seen=s.last_seen,
                messages=s.messages,
            )
            for s in sorted(self._streams.values(), key=lambda s: (s.agent_id, s.domain, s.stream))
        ]

    def events(self) -> list[EventRow]:
        """The newest events first."""
        return list(self._events)


def _place(location: Any) -> str | None:
    if not isinstance(location, dict):
        return None
    parts = [location.get(k) for k in ("site", "placement")]
    return " · ".join(p[:48] for p in parts if isinstance(p, str) and p) or None


def _rate(arrivals: deque[float]) -> float | None:
    if len(arrivals) < 2 or arrivals[-1] <= arrivals[0]:
        return None
    return round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 2)


class DataFollower:
    """Follows ``data/+/+/+`` into a :class:`StreamTable` while entered."""

    def __init__(
        self,
        bus: BusClient,
        table: StreamTable | None = None,
        *,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.bus = bus
        self.table = table or StreamTable()
        self.on_change = on_change
        self._sub: Subscription | None = None

    async def __aenter__(self) -> Self:
        self._sub = await self.bus.subscribe(data_filter(), self._on_message, qos=0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.cancel()

    def _on_message(self, msg: Inbound) -> None:
        if self.table.observe(msg.topic, msg.payload, msg.content_type):
            self.on_change()
