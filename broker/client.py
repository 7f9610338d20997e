"""One async MQTT v5 client per agent: reconnects, resubscribes, dispatches.

``BusClient`` speaks MQTT v5 over asyncio (see ``transport``). It sets
TCP_NODELAY, reconnects with capped exponential back-off and
jitter, restores every subscription after a reconnect, and dispatches each
incoming message to the handlers of the subscriptions it matched, using MQTT v5
subscription identifiers (no topic matching on the hot path, no double delivery
for overlapping filters).

Lifecycle: ``async with BusClient(...) as bus``; reusable, not reentrant.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from broker import mqtt5
from broker.errors import NotConnected
from broker.mqtt5 import Props, Publish
from broker.settings import BusSettings
from broker.topics import validate_id
from broker.transport import Link, PublishRefused
from broker.waits import within

logger = logging.getLogger(__name__)

Handler = Callable[["Inbound"], Awaitable[None] | None]
Hook = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes when this client vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    content_type: str | None = None
    expiry_s: float | None = None


WillFactory = Callable[[], Will | None]


@dataclass(frozen=True, slots=True)
class Inbound:
    """A received message with the MQTT v5 properties agents use."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    content_type: str | None = None
    response_topic: str | None = None
    correlation: bytes | None = None
    expiry_s: int | None = None
    user: dict[str, str] = field(default_factory=dict)
    received_at: float = 0.0

    @property
    def deadline(self) -> float | None:
        """``time.monotonic()`` after which the sender no longer wants an answer."""
        return None if self.expiry_s is None else self.received_at + self.expiry_s


def publish_properties(
    *,
    content_type: str | None = None,
    response_topic: str | None = None,
    correlation: bytes | None = None,
    expiry_s: float | None = None,
    user: dict[str, str] | None = None,
) -> Props | None:
    """MQTT v5 PUBLISH properties; ``None`` when there are none."""
    props: Props = {}
    if content_type:
        props[mqtt5.CONTENT_TYPE] = content_type
    if response_topic:
        props[mqtt5.RESPONSE_TOPIC] = response_topic
    if correlation:
        props[mqtt5.CORRELATION_DATA] = correlation
    if expiry_s is not None:
        props[mqtt5.MESSAGE_EXPIRY] = max(1, int(expiry_s + 0.999))
    if user:
        props[mqtt5.USER_PROPERTY] = list(user.items())
    return props or None


@dataclass(slots=True)
class _Subscription:
    ident: int
    filter: str
    qos: int
    handler: Handler


class Subscription:
    """Handle returned by :meth:`BusClient.subscribe`; ``await sub.cancel()`` ends it."""

    def __init__(self, bus: BusClient, ident: int) -> None:
        self._bus = bus
        self.ident = ident

    async def cancel(self) -> None:
        await self._bus._unsubscribe(self.ident)


class BusClient:
    """Reconnecting MQTT v5 client with handler dispatch."""

    def __init__(
        self,
        settings: BusSettings,
        client_id: str,
        *,
        will: WillFactory | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = validate_id(client_id, "client id")
        if settings.username is not None and settings.username != client_id:
            # The secure profile's broker renames the client after its user name, and
            # reply/{client_id}/... would then be unreadable for it.
            logger.warning(
                "client id %r differs from user name %r: under the secure profile "
                "(use_username_as_clientid) its replies will not reach it",
                client_id,
                settings.username,
            )
        self._will = will
        self._subs: dict[int, _Subscription] = {}
        self._ids = itertools.count(1)
        self._link: Link | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._connect_hooks: list[Hook] = []
        self._close_hooks: list[Hook] = []
        self._last_error: BaseException | None = None
        self.connections = 0
        self.connected_at = 0.0  # monotonic time of the last CONNACK
        self.dropped_handler_errors = 0

    # --- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._supervisor is not None:
            raise RuntimeError("BusClient is reusable but not reentrant")
        self._closing = False
        self._supervisor = asyncio.create_task(self._run(), name=f"bus:{self.client_id}")
        try:
            await self.wait_connected(self.settings.connect_timeout_s)
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._shutdown()

    async def _shutdown(self) -> None:
        self._closing = True
        if self._connected.is_set():
            for hook in reversed(self._close_hooks):
                try:
                    await within(hook(), 2.0)
                except Exception:
                    logger.exception("close hook failed")
        for task in list(self._handler_tasks):
            task.cancel()
        await asyncio.gather(*self._handler_tasks, return_exceptions=True)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        self._connected.clear()

    def on_connect(self, hook: Hook) -> Callable[[], None]:
        """Run ``hook`` after every (re)connection, once subscriptions are restored.

        Returns a function that removes the hook.
        """
        self._connect_hooks.append(hook)
        return lambda: self._connect_hooks.remove(hook) if hook in self._connect_hooks else None

    def on_close(self, hook: Hook) -> None:
        """Run ``hook`` before a clean disconnect (for example to publish offline)."""
        self._close_hooks.append(hook)

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait for a live connection, or raise :class:`NotConnected`."""
        if self._connected.is_set():
            return
        if self._supervisor is None:
            raise NotConnected("the client is not started (use 'async with')")
        try:
            await within(self._connected.wait(), timeout)
        except TimeoutError:
            where = f"{self.settings.host}:{self.settings.port}"
            detail = f": {self._last_error}" if self._last_error else ""
            raise NotConnected(f"no connection to the broker at {where}{detail}") from None

    # --- publish / subscribe ------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Props | None = None,
        timeout: float = 10.0,
        wait: bool = True,
    ) -> None:
        """Publish ``payload``; raises :class:`NotConnected`.

        With ``wait`` (the default) a QoS 1 publish returns once the broker has
        acknowledged it. Without, it returns once written: request/response uses
        that, since the reply (or its deadline) tells the outcome anyway.
        """
        link = self._link
        if link is None or not self._connected.is_set():
            await self.wait_connected(timeout)
            link = self._link
            if link is None:
                raise NotConnected("connection lost before publishing")
        if wait and qos > 0:
            await link.publish(topic, payload, qos, retain, properties, timeout=timeout)
        else:
            link.publish_nowait(topic, payload, qos, retain, properties)

    async def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1) -> Subscription:
        """Subscribe ``handler``; it is restored after every reconnect.

        A handler that returns an awaitable runs as a task owned by this client.
        """
        ident = next(self._ids)
        sub = _Subscription(ident, topic_filter, qos, handler)
        self._subs[ident] = sub
        if self._link is not None and self._connected.is_set():
            # On failure the supervisor restores it after reconnecting; the caller
            # learns now through NotConnected.
            await self._send_subscribe(self._link, sub)
        return Subscription(self, ident)

    async def _unsubscribe(self, ident: int) -> None:
        sub = self._subs.pop(ident, None)
        if sub is None or self._link is None or not self._connected.is_set():
            return
        if any(other.filter == sub.filter for other in self._subs.values()):
            return
        with contextlib.suppress(NotConnected):
            await self._link.unsubscribe(sub.filter, timeout=5.0)

    async def _send_subscribe(self, link: Link, sub: _Subscription) -> None:
        await link.subscribe(sub.filter, sub.qos, sub.ident, timeout=10.0)

    # --- connection supervisor ----------------------------------------------------

    async def _open_link(self) -> Link:
        s = self.settings
        tls_context = None
        if s.tls is not None:
            tls_context = ssl.create_default_context(cafile=str(s.tls.ca_file))
            if s.tls.cert_file is not None:
                key_file = str(s.tls.key_file) if s.tls.key_file else None
                tls_context.load_cert_chain(str(s.tls.cert_file), key_file)
            tls_context.check_hostname = not s.tls.insecure
        will = self._will() if self._will else None
        spec = None
        if will is not None:
            props = publish_properties(content_type=will.content_type, expiry_s=will.expiry_s)
            spec = mqtt5.WillSpec(will.topic, will.payload, will.qos, will.retain, props or {})
        link = Link(
            self.client_id,
            on_message=self._dispatch,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            tls_context=tls_context,
            will=spec,
        )
        await link.connect(
            s.host,
            s.port,
            keepalive=s.keepalive_s,
            # A persistent session (expiry > 0) is resumed even by a restarted agent,
            # so that QoS 1 requests queued meanwhile (and not yet expired) reach it.
            clean_start=s.session_expiry_s == 0,
            session_expiry=s.session_expiry_s,
            timeout=s.connect_timeout_s,
        )
        return link

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            link: Link | None = None
            try:
                link = await self._open_link()
                self.connected_at = time.monotonic()
                attempt = 0
                self.connections += 1
                self._link = link
                for sub in list(self._subs.values()):
                    try:
                        await self._send_subscribe(link, sub)
                    except PublishRefused as exc:
                        # For example, an ACL that changed while we were away.
                        logger.error("%s: %s", self.client_id, exc)  # noqa: TRY400
                self._connected.set()
                logger.info(
                    "%s connected to %s:%s", self.client_id, self.settings.host, self.settings.port
                )
                for hook in self._connect_hooks:
                    self._spawn(hook(), "connect-hook")
                reason = await asyncio.shield(link.closed)
                logger.warning("%s: broker connection lost: %s", self.client_id, reason)
            except NotConnected as exc:
                self._last_error = exc
                logger.warning("%s: %s", self.client_id, exc)
            except asyncio.CancelledError:
                if link is not None:
                    await link.disconnect()
                raise
            finally:
                self._connected.clear()
                self._link = None
            if link is not None:
                link.abort()
            if self._closing:
                break
            cap = min(self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2**attempt)
            attempt += 1
            await asyncio.sleep(cap / 2 + random.uniform(0, cap / 2))

    def _dispatch(self, message: Publish) -> None:
        inbound = _to_inbound(message)
        idents: list[int] = message.props.get(mqtt5.SUBSCRIPTION_ID, [])
        if not idents:
            logger.debug("message on %s without subscription identifier", inbound.topic)
            idents = [
                s.ident for s in self._subs.values() if matches(_plain(s.filter), inbound.topic)
            ]
        for ident in idents:
            sub = self._subs.get(ident)
            if sub is None:
                continue
            try:
                outcome = sub.handler(inbound)
            except Exception:
                self.dropped_handler_errors += 1
                logger.exception("handler for %s failed on %s", sub.filter, inbound.topic)
                continue
            if inspect.isawaitable(outcome):
                self._spawn(outcome, f"handler:{sub.filter}")

    def _spawn(self, awaitable: Awaitable[None], name: str) -> None:
        async def runner() -> None:
            try:
                await awaitable
            except asyncio.CancelledError:
                raise
            except Exception:
                self.dropped_handler_errors += 1
                logger.exception("%s failed", name)

        task = asyncio.create_task(runner(), name=f"{self.client_id}:{name}")
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)


def _plain(topic_filter: str) -> str:
    """Strip ``$share/{group}/`` so that a shared filter can be matched locally."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (``+`` one level, ``#`` the rest)."""
    f_levels, t_levels = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level not in ("+", t_levels[i])):
            return False
    return len(f_levels) == len(t_levels)


def _to_inbound(message: Publish) -> Inbound:
    props = message.props
    pairs = props.get(mqtt5.USER_PROPERTY)
    return Inbound(
        topic=message.topic,
        payload=message.payload,
        qos=message.qos,
        retain=message.retain,
        content_type=props.get(mqtt5.CONTENT_TYPE),
        response_topic=props.get(mqtt5.RESPONSE_TOPIC),
        correlation=props.get(mqtt5.CORRELATION_DATA),
        expiry_s=props.get(mqtt5.MESSAGE_EXPIRY),
        user=dict(pairs) if pairs else {},
        received_at=time.monotonic(),
    )
