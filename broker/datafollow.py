"""Follow ``data/`` topics into vector indexes: data cooperation for any agent.

``async with DataFollower(bus, ["data/health/#"]) as follower`` subscribes to the
filters; every ``embedding`` that arrives on ``data/{domain}/{stream}/{agent_id}``
is decoded, its metadata validated (:class:`~broker.data.SampleMeta`: the domain
must be the topic's, ``dimension`` the vector's), and indexed with its metadata
plus ``agent_id``, ``stream`` and ``model``. Embeddings of different encoders are
not comparable, so there is one :class:`~broker.vectors.VectorIndex` per model,
each bounded by ``capacity`` (oldest evicted). The latest sample per
(agent, stream) is kept. ``event`` messages on ``data/{domain}/events/{agent_id}``
are validated and kept (the newest ``max_events``) and handed to ``on_event``.

Anything else -- a topic outside the namespace, an undecodable, oversized or
wrongly shaped payload, metadata that breaks the contract, a kind that does not
belong on ``data/`` -- is counted by reason in :attr:`DataFollower.stats` and
dropped; the follower keeps running. ``search`` answers similarity queries with
the index's metadata filters (``where``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypedDict

import numpy as np
import numpy.typing as npt

from broker.client import BusClient, Inbound, Subscription
from broker.codec import MAX_PAYLOAD_BYTES, decode
from broker.data import EVENTS_STREAM, Event, SampleMeta
from broker.errors import CodecError, PayloadTooLarge, TopicError
from broker.messages import Embedding
from broker.topics import DATA_ROOT, parse_topic
from broker.vectors import Hit, Metric, VectorIndex

logger = logging.getLogger(__name__)

__all__ = ["DataFollower", "EventRecord", "FollowerStats", "Sample"]

Where = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Sample:
    """One indexed embedding and where it came from."""

    agent_id: str
    domain: str
    stream: str
    model: str
    vector: npt.NDArray[np.float32]
    meta: SampleMeta
    received_at: float  # loop time


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event and who published it."""

    agent_id: str
    domain: str
    event: Event
    received_at: float


class FollowerStats(TypedDict):
    received: int
    indexed: int
    events: int
    dropped: int
    dropped_by_reason: dict[str, int]
    indexed_by_model: dict[str, int]
    latest: int


class DataFollower:
    """Subscribe to ``data/`` filters and index what arrives; see the module docstring."""

    def __init__(
        self,
        bus: BusClient,
        filters: Sequence[str] = (f"{DATA_ROOT}/#",),
        *,
        metric: Metric = "cosine",
        capacity: int | None = 10_000,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        max_events: int = 1000,
        on_sample: Callable[[Sample], None] | None = None,
        on_event: Callable[[EventRecord], None] | None = None,
    ) -> None:
        if not filters or any(not f.startswith(f"{DATA_ROOT}/") for f in filters):
            raise TopicError(f"a data follower's filters must be under {DATA_ROOT}/")
        self._bus, self.filters = bus, tuple(filters)
        self.metric, self.capacity, self.max_payload_bytes = metric, capacity, max_payload_bytes
        self._on_sample, self._on_event = on_sample, on_event
        self._indexes: dict[str, VectorIndex] = {}
        self._latest: dict[tuple[str, str], Sample] = {}
        self.events: deque[EventRecord] = deque(maxlen=max_events)
        self._subs: list[Subscription] = []
        self._received = self._indexed = self._events = 0
        self._dropped: Counter[str] = Counter()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        if self._subs:
            raise RuntimeError("DataFollower is not reentrant")
        try:
            for topic_filter in self.filters:
                self._subs.append(await self._bus.subscribe(topic_filter, self._handle, qos=1))
        except BaseException:
            await self._unsubscribe()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._unsubscribe()

    async def _unsubscribe(self) -> None:
        subs, self._subs = self._subs, []
        for sub in subs:
            await sub.cancel()

    # -- queries ---------------------------------------------------------------------

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self._indexes)

    def index(self, model: str) -> VectorIndex | None:
        return self._indexes.get(model)

    def search(
        self,
        vector: npt.ArrayLike,
        k: int = 5,
        *,
        model: str,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """The ``k`` indexed samples of ``model`` nearest ``vector`` that match ``where``."""
        index = self._indexes.get(model)
        return [] if index is None else index.search(vector, k, where)

    async def asearch(
        self,
        vector: npt.ArrayLike,
        k: int = 5,
        *,
        model: str,
        where: Mapping[str, Any] | None = None,
    ) -> list[Hit]:
        """:meth:`search` in a worker thread (for large indexes on an event loop)."""
        return await asyncio.to_thread(self.search, vector, k, model=model, where=where)

    def similar(
        self, agent_id: str, stream: str, k: int = 5, *, where: Where | None = None
    ) -> list[Hit]:
        """Samples most like the latest one of ``agent_id``'s ``stream`` (itself excluded):
        "when did this wearer, or anyone, look like this before?"."""
        sample = self._latest.get((agent_id, stream))
        if sample is None:
            return []
        hits = self.search(sample.vector, k + 1, model=sample.model, where=where)
        own = (agent_id, stream, sample.meta.sequence)
        return [
            h for h in hits if (h.meta["agent_id"], h.meta["stream"], h.meta["sequence"]) != own
        ][:k]

    def latest(self, agent_id: str, stream: str) -> Sample | None:
        """The newest sample of one agent's stream."""
        return self._latest.get((agent_id, stream))

    def latest_samples(self, domain: str | None = None) -> list[Sample]:
        """The newest sample of every (agent, stream) seen, optionally of one domain."""
        return [s for s in self._latest.values() if domain is None or s.domain == domain]

    @property
    def stats(self) -> FollowerStats:
        return FollowerStats(
            received=self._received,
            indexed=self._indexed,
            events=self._events,
            dropped=sum(self._dropped.values()),
            dropped_by_reason=dict(self._dropped),
            indexed_by_model={m: len(i) for m, i in self._indexes.items()},
            latest=len(self._latest),
        )

    async def wait_for(self, check: Callable[[], bool], timeout: float) -> None:
        """Wait until ``check()`` holds, re-checked after each message; ``TimeoutError``."""
        async with asyncio.timeout(timeout):
            while not check():
                self._changed.clear()
                await self._changed.wait()

    # -- intake ------------------------------------------------------------------------

    def _handle(self, message: Inbound) -> None:
        self._received += 1
        try:
            self._take(message)
        except PayloadTooLarge as exc:
            self._drop("too_large", message, exc)
        except (CodecError, TopicError) as exc:
            self._drop(getattr(exc, "reason", "decode"), message, exc)
        finally:
            self._changed.set()

    def _take(self, message: Inbound) -> None:
        try:
            parsed = parse_topic(message.topic)
        except TopicError as exc:
            raise _Rejected("topic", f"not a data topic: {exc}") from None
        if parsed.kind != "data":
            raise _Rejected("topic", f"{message.topic!r} is not data/<domain>/<stream>/<agent>")
        domain, stream, agent = (parsed.levels[k] for k in ("domain", "stream", "agent_id"))
        decoded = decode(message.payload, message.content_type, max_bytes=self.max_payload_bytes)
        if stream == EVENTS_STREAM:
            if not isinstance(decoded, Event):
                raise _Rejected("kind", f"{decoded.KIND!r} on an events topic")
            self._take_event(EventRecord(agent, domain, decoded, message.received_at))
        elif isinstance(decoded, Embedding):
            self._take_sample(agent, domain, stream, decoded, message.received_at)
        else:
            raise _Rejected("kind", f"{decoded.KIND!r} on a data stream")

    def _take_event(self, record: EventRecord) -> None:
        self.events.append(record)
        self._events += 1
        if self._on_event is not None:
            self._on_event(record)

    def _take_sample(
        self, agent: str, domain: str, stream: str, embedding: Embedding, received_at: float
    ) -> None:
        if embedding.vector.ndim != 1:
            raise _Rejected("shape", "one embedding per message")
        try:
            meta = SampleMeta.from_meta(embedding.meta)
        except CodecError as exc:
            raise _Rejected("meta", str(exc)) from None
        if meta.domain != domain or meta.dimension != embedding.vector.shape[0]:
            raise _Rejected("meta", "meta.domain/dimension disagree with the topic or vector")
        if not embedding.model:
            raise _Rejected("meta", "embedding.model must name the encoder")
        index = self._indexes.get(embedding.model)
        if index is None:
            index = VectorIndex(meta.dimension, metric=self.metric, capacity=self.capacity)
            self._indexes[embedding.model] = index
        elif index.dim != meta.dimension:
            raise _Rejected("dimension", f"{embedding.model} embeddings have {index.dim} values")
        vector = embedding.vector.astype(np.float32)
        flat = {k: v for k, v in meta.to_meta().items() if not isinstance(v, dict | list)}
        flat.update(agent_id=agent, stream=stream, model=embedding.model)
        flat.update({f"location.{k}": v for k, v in meta.location.items()})
        flat.update({f"summary.{k}": v for k, v in meta.summary.items()})
        try:
            index.add(vector, flat)
        except ValueError as exc:  # VectorError: a zero vector under cosine, for example
            raise _Rejected("vector", str(exc)) from None
        sample = Sample(agent, domain, stream, embedding.model, vector, meta, received_at)
        self._latest[(agent, stream)] = sample
        self._indexed += 1
        if self._on_sample is not None:
            self._on_sample(sample)

    def _drop(self, reason: str, message: Inbound, exc: Exception) -> None:
        self._dropped[reason] += 1
        logger.warning("dropped data on %.128s (%s): %.200s", message.topic, reason, exc)


class _Rejected(CodecError):
    """A payload that decoded but breaks the data/ contract; ``reason`` names the counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
