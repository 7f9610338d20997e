"""The Capability Metadata Store: retained messages under ``slm/``.

One retained message per entry, so each can be read, watched, expired and
access-controlled on its own. An empty retained payload clears an entry.
Volatile entries carry a Message Expiry Interval; the broker forgets them and the
local :class:`Mirror` drops them at the same moment.

A :class:`Mirror` follows a prefix: it subscribes, waits for the broker's retained
replay to finish (a barrier message published after the SUBACK comes back after
the retained ones), then applies live changes. After a reconnect it replays again
and drops entries the broker no longer holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from broker.client import BusClient, Inbound, Subscription, publish_properties
from broker.codec import CBOR, decode, encode
from broker.errors import CodecError
from broker.messages import Entry, WireMessage
from broker.topics import reply_topic, validate_cms_key, validate_cms_prefix
from broker.waits import within

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CmsEntry:
    """One entry as held by a mirror."""

    key: str
    message: WireMessage
    received_at: float
    expires_at: float | None = None

    @property
    def value(self) -> Any:
        """The plain value of an ``entry``; the message itself for other kinds."""
        return self.message.value if isinstance(self.message, Entry) else self.message

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class CmsEvent:
    """A change seen by a mirror; ``entry`` is ``None`` when the key was cleared."""

    key: str
    entry: CmsEntry | None
    reason: str  # "set", "cleared", "expired", "resync"


class Cms:
    """Put, get, delete and follow CMS entries through one bus client."""

    def __init__(self, bus: BusClient, *, content_type: str = CBOR) -> None:
        self.bus = bus
        self.content_type = content_type
        self._barrier_topic = reply_topic(bus.client_id, "cms-sync")
        self._barrier_sub: Subscription | None = None
        self._barriers: dict[bytes, asyncio.Future[None]] = {}
        self._tokens = itertools.count(1)

    async def put(self, key: str, value: Any, *, expiry_s: float | None = None) -> None:
        """Write ``value`` (JSON-shaped) at ``key``, retained, optionally expiring."""
        await self.put_message(key, Entry(value=value, ts=time.time()), expiry_s=expiry_s)

    async def put_message(
        self, key: str, message: WireMessage, *, expiry_s: float | None = None
    ) -> None:
        """Write a typed message (``birth``, ``state``...) at ``key``, retained."""
        validate_cms_key(key)
        payload = encode(message, self.content_type)
        props = publish_properties(content_type=self.content_type, expiry_s=expiry_s)
        await self.bus.publish(key, payload, qos=1, retain=True, properties=props)

    async def delete(self, key: str) -> None:
        """Clear ``key`` (an empty retained payload)."""
        validate_cms_key(key)
        await self.bus.publish(key, b"", qos=1, retain=True)

    async def get(self, key: str, *, timeout: float = 5.0) -> CmsEntry | None:
        """Read one entry from the broker; ``None`` when it does not exist."""
        validate_cms_key(key)
        async with self.mirror(key, timeout=timeout) as mirror:
            return mirror.entry(key)

    def mirror(self, prefix: str, *, timeout: float = 10.0) -> Mirror:
        """A mirror of ``prefix`` (a key, or a prefix such as ``slm/nodes``)."""
        return Mirror(self, prefix, sync_timeout=timeout)

    async def watch(self, prefix: str) -> AsyncIterator[CmsEvent]:
        """Yield the current entries under ``prefix`` as ``resync`` events, then changes."""
        async with self.mirror(prefix) as mirror:
            async for event in mirror.changes(replay=True):
                yield event

    async def barrier(self, timeout: float) -> None:
        """Return once every message the broker had queued for us before now has arrived."""
        if self._barrier_sub is None:
            self._barrier_sub = await self.bus.subscribe(self._barrier_topic, self._on_barrier)
        token = str(next(self._tokens)).encode()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers[token] = done
        try:
            await self.bus.publish(self._barrier_topic, token, qos=1, timeout=timeout)
            await within(done, timeout)
        finally:
            del self._barriers[token]

    def _on_barrier(self, msg: Inbound) -> None:
        done = self._barriers.get(msg.payload)
        if done is not None and not done.done():
            done.set_result(None)


class Mirror:
    """A local, live copy of the CMS entries under one prefix."""

    def __init__(self, cms: Cms, prefix: str, *, sync_timeout: float = 10.0) -> None:
        self.cms = cms
        self.prefix = validate_cms_prefix(prefix)
        self.sync_timeout = sync_timeout
        self._entries: dict[str, CmsEntry] = {}
        self._listeners: set[asyncio.Queue[CmsEvent]] = set()
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        self._unhook: Callable[[], None] = lambda: None
        self.stats: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        bus = self.cms.bus
        # "p/#" also matches "p" itself, so one filter serves a key and a prefix.
        self._sub = await bus.subscribe(f"{self.prefix}/#", self._on_message)
        self._unhook = bus.on_connect(self._resync)
        self._sweeper = asyncio.create_task(self._sweep(), name=f"cms-sweep:{self.prefix}")
        await self.cms.barrier(self.sync_timeout)
        self._synced.set()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self._unhook()
        if self._sub is not None:
            await self._sub.cancel()

    # --- reading ------------------------------------------------------------------

    def entry(self, key: str) -> CmsEntry | None:
        found = self._entries.get(key)
        if found is None or found.expired(time.monotonic()):
            return None
        return found

    def get(self, key: str, default: Any = None) -> Any:
        found = self.entry(key)
        return default if found is None else found.value

    def items(self, prefix: str | None = None) -> Iterator[tuple[str, CmsEntry]]:
        """Live entries, sorted by key, optionally under a narrower prefix."""
        now = time.monotonic()
        for key in sorted(self._entries):
            found = self._entries[key]
            if found.expired(now):
                continue
            if prefix is None or key == prefix or key.startswith(prefix.rstrip("/") + "/"):
                yield key, found

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    async def changes(self, *, replay: bool = False) -> AsyncIterator[CmsEvent]:
        """Yield every change from now on (and, with ``replay``, the current entries)."""
        queue: asyncio.Queue[CmsEvent] = asyncio.Queue(maxsize=10_000)
        self._listeners.add(queue)
        try:
            if replay:
                for key, found in list(self.items()):
                    yield CmsEvent(key, found, "resync")
            while True:
                yield await queue.get()
        finally:
            self._listeners.discard(queue)

    # --- following the broker ---------------------------------------------------

    def _on_message(self, msg: Inbound) -> None:
        key = msg.topic
        if not msg.payload:
            if self._entries.pop(key, None) is not None:
                self._emit(CmsEvent(key, None, "cleared"))
            return
        try:
            message = decode(msg.payload, msg.content_type)
        except CodecError as exc:
            self.stats["malformed"] += 1
            logger.warning("CMS entry %s ignored: %s", key, exc)
            return
        expires = None if msg.expiry_s is None else msg.received_at + msg.expiry_s
        found = CmsEntry(key, message, msg.received_at, expires)
        self._entries[key] = found
        self._emit(CmsEvent(key, found, "set"))

    async def _resync(self) -> None:
        """After a reconnect: the broker replays what it holds; drop what it no longer has."""
        if not self._synced.is_set():
            return
        since = self.cms.bus.connected_at
        await self.cms.barrier(self.sync_timeout)
        for key in [k for k, e in self._entries.items() if e.received_at < since]:
            del self._entries[key]
            self._emit(CmsEvent(key, None, "cleared"))
        self.stats["resyncs"] += 1

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for key in [k for k, e in self._entries.items() if e.expired(now)]:
                del self._entries[key]
                self._emit(CmsEvent(key, None, "expired"))

    def _emit(self, event: CmsEvent) -> None:
        for queue in self._listeners:
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self.stats["listener_overflow"] += 1
