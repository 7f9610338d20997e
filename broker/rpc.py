"""Request/response over MQTT v5: Response Topic, Correlation Data, Message Expiry.

Caller side, :class:`RpcClient`: each call gets a random correlation id and a
deadline; its pending entry is removed in ``finally`` whatever happens. Replies
are zero or more ``chunk`` messages (ordered by ``seq``) and then exactly one
``result`` or ``error``. The request's Message Expiry Interval is the caller's
deadline, so an agent never starts work nobody waits for.

Serving side, :class:`RpcServer`: decodes each request, answers malformed or
oversized ones with an ``error`` reply when they carry a response topic, never
starts an expired request, cancels a handler whose deadline passes, and maps
any handler failure to an ``internal`` error while the agent keeps serving.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from types import TracebackType
from typing import Self

from broker.client import BusClient, Inbound, Subscription, publish_properties
from broker.codec import CBOR, decode, encode
from broker.errors import BusError, CodecError, ErrorCode, RpcError, RpcTimeout
from broker.messages import MAX_ERROR_MESSAGE, Chunk, ErrorReply, Result, WireMessage
from broker.topics import REPLY_ROOT, reply_topic

logger = logging.getLogger(__name__)

TENANT, TRACE, NO_CLOUD = "tenant", "trace", "no-cloud"
Reply = Chunk | Result


class _Pending:
    """Replies to one call: chunks as they come, then the final reply."""

    __slots__ = ("chunks", "final", "wake")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.chunks: deque[Chunk] = deque()
        self.final: asyncio.Future[WireMessage] = loop.create_future()
        self.wake: asyncio.Future[None] | None = None

    def add(self, reply: WireMessage) -> None:
        if isinstance(reply, Chunk):
            self.chunks.append(reply)
        elif not self.final.done():
            self.final.set_result(reply)
        if self.wake is not None and not self.wake.done():
            self.wake.set_result(None)


class RpcClient:
    """Makes calls; one reply subscription (``reply/{client_id}/rpc``) per client."""

    def __init__(self, bus: BusClient, *, content_type: str = CBOR) -> None:
        self.bus = bus
        self.content_type = content_type
        self.response_topic = reply_topic(bus.client_id, "rpc")
        self._pending: dict[bytes, _Pending] = {}
        self._sub: Subscription | None = None
        self.stats: Counter[str] = Counter()

    async def __aenter__(self) -> Self:
        self._sub = await self.bus.subscribe(self.response_topic, self._on_reply)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sub is not None:
            await self._sub.cancel()
            self._sub = None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def call(
        self,
        topic: str,
        request: WireMessage,
        *,
        timeout: float = 30.0,
        user: dict[str, str] | None = None,
    ) -> Result:
        """Send ``request`` and return the final ``result`` (chunks are discarded).

        Raises :class:`RpcError` on an error reply, :class:`RpcTimeout` when the
        deadline passes, :class:`NotConnected` when the request cannot be sent.
        """
        return _expect_result(await self.request(topic, request, timeout=timeout, user=user))

    async def request(
        self,
        topic: str,
        request: WireMessage,
        *,
        timeout: float = 30.0,
        user: dict[str, str] | None = None,
    ) -> WireMessage:
        """Like :meth:`call`, for any final reply kind (``embedding`` answers ``embed``)."""
        correlation, pending = await self._send(topic, request, timeout, user)
        try:
            async with asyncio.timeout(timeout):
                return _final(await pending.final)
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise RpcTimeout(f"no reply on {topic!r} within {timeout:g} s") from None
        finally:
            del self._pending[correlation]

    async def stream(
        self,
        topic: str,
        request: WireMessage,
        *,
        timeout: float = 30.0,
        user: dict[str, str] | None = None,
    ) -> AsyncIterator[Reply]:
        """Send ``request``; yield chunks in ``seq`` order, then the result.

        Raises like :meth:`call`. Chunks that arrive twice are dropped; the result
        always carries the whole text, so a consumer that missed a chunk (after a
        reconnect) still ends with the right answer.
        """
        correlation, pending = await self._send(topic, request, timeout, user)
        loop = asyncio.get_running_loop()
        next_seq = 0
        held: dict[int, Chunk] = {}
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while pending.chunks:
                        chunk = pending.chunks.popleft()
                        if chunk.seq < next_seq or chunk.seq in held:
                            self.stats["chunks_duplicate"] += 1
                            continue
                        held[chunk.seq] = chunk
                        while next_seq in held:
                            yield held.pop(next_seq)
                            next_seq += 1
                    if pending.final.done():
                        result = _expect_result(_final(pending.final.result()))
                        if held or next_seq < result.chunks:
                            self.stats["chunks_missing"] += 1
                        yield result
                        return
                    pending.wake = loop.create_future()
                    await pending.wake
        except TimeoutError:
            self.stats["timeouts"] += 1
            raise RpcTimeout(f"no reply on {topic!r} within {timeout:g} s") from None
        finally:
            del self._pending[correlation]

    async def _send(
        self, topic: str, request: WireMessage, timeout: float, user: dict[str, str] | None
    ) -> tuple[bytes, _Pending]:
        if self._sub is None:
            raise RuntimeError("RpcClient is not started (use 'async with')")
        payload = encode(request, self.content_type)
        correlation = os.urandom(16)
        pending = _Pending(asyncio.get_running_loop())
        props = publish_properties(
            content_type=self.content_type,
            response_topic=self.response_topic,
            correlation=correlation,
            expiry_s=timeout,
            user=user,
        )
        self._pending[correlation] = pending
        try:
            # No wait for PUBACK: the reply, or the deadline, tells the outcome.
            await self.bus.publish(
                topic, payload, qos=1, properties=props, timeout=timeout, wait=False
            )
        except BaseException:
            del self._pending[correlation]
            raise
        return correlation, pending

    def _on_reply(self, msg: Inbound) -> None:
        pending = self._pending.get(msg.correlation or b"")
        if pending is None:
            self.stats["late_replies"] += 1
            return
        try:
            reply = decode(msg.payload, msg.content_type)
        except CodecError as exc:
            self.stats["malformed_replies"] += 1
            reply = ErrorReply(ErrorCode.INTERNAL, f"malformed reply: {exc}")
        pending.add(reply)


def _final(reply: WireMessage) -> WireMessage:
    if isinstance(reply, ErrorReply):
        raise RpcError(reply.code, reply.message)
    return reply


def _expect_result(reply: WireMessage) -> Result:
    if not isinstance(reply, Result):
        raise RpcError(ErrorCode.INTERNAL, f"expected a result, got a {reply.KIND!r} reply")
    return reply


# --- serving side -----------------------------------------------------------------


class Request:
    """One request being served; the handler streams through it."""

    def __init__(self, server: RpcServer, inbound: Inbound, body: WireMessage) -> None:
        self.inbound = inbound
        self.body = body
        self._server = server
        self._seq = 0

    @property
    def deadline(self) -> float | None:
        return self.inbound.deadline

    def remaining(self) -> float | None:
        """Seconds left before the caller's deadline, or ``None`` without one."""
        deadline = self.inbound.deadline
        return None if deadline is None else deadline - time.monotonic()

    @property
    def tenant(self) -> str | None:
        return self.inbound.user.get(TENANT)

    @property
    def trace(self) -> str | None:
        return self.inbound.user.get(TRACE)

    @property
    def no_cloud(self) -> bool:
        return self.inbound.user.get(NO_CLOUD, "").lower() in ("1", "true", "yes")

    @property
    def chunks_sent(self) -> int:
        return self._seq

    async def chunk(self, text: str) -> None:
        """Send the next streamed chunk."""
        seq = self._seq
        self._seq += 1
        await self._server.reply(self.inbound, Chunk(seq=seq, text=text))


RequestHandler = Callable[[Request], Awaitable[WireMessage]]


class RpcServer:
    """Serves requests arriving on topic filters with async handlers."""

    #: Requests remembered to drop redeliveries (a QoS 1 message resent after a broker
    #: restart or reconnect arrives again with the same correlation data and payload;
    #: a caller reusing correlation data for a different request is still served).
    SEEN_LIMIT = 4096

    def __init__(self, bus: BusClient) -> None:
        self.bus = bus
        self.stats: Counter[str] = Counter()
        self._seen: OrderedDict[tuple[str, bytes, bytes], None] = OrderedDict()

    async def serve(self, topic_filter: str, handler: RequestHandler) -> Subscription:
        """Serve requests on ``topic_filter`` (a plain or ``$share/...`` filter)."""

        async def on_message(msg: Inbound) -> None:
            await self._handle(msg, handler)

        return await self.bus.subscribe(topic_filter, on_message)

    async def _handle(self, msg: Inbound, handler: RequestHandler) -> None:
        self.stats["received"] += 1
        if not msg.response_topic or not msg.response_topic.startswith(REPLY_ROOT + "/"):
            # Nobody can be told; a response topic outside reply/ is refused so that a
            # request cannot make this agent publish into another agent's namespace.
            self.stats["no_response_topic"] += 1
            logger.warning("request on %s without a usable response topic dropped", msg.topic)
            return
        if msg.correlation:
            digest = hashlib.blake2b(msg.payload, digest_size=16).digest()
            key = (msg.response_topic, msg.correlation, digest)
            if key in self._seen:
                self.stats["duplicate"] += 1
                return
            self._seen[key] = None
            if len(self._seen) > self.SEEN_LIMIT:
                self._seen.popitem(last=False)
        await self.reply(msg, await self._outcome(msg, handler))

    async def _outcome(self, msg: Inbound, handler: RequestHandler) -> WireMessage:
        """Run ``handler`` within the request's deadline; every failure becomes an error."""
        deadline = msg.deadline
        if deadline is not None and (msg.expiry_s == 0 or deadline <= time.monotonic()):
            self.stats["error_expired"] += 1
            return ErrorReply(ErrorCode.EXPIRED, "request expired before it started")
        try:
            request = Request(self, msg, decode(msg.payload, msg.content_type))
            async with asyncio.timeout(request.remaining()):
                result = await handler(request)
        except TimeoutError:
            code, text = ErrorCode.EXPIRED, "deadline passed while serving"
        except RpcError as exc:
            code, text = exc.code, exc.message
        except CodecError as exc:
            code, text = exc.code, str(exc)
        except Exception as exc:
            logger.exception("handler failed on %s", msg.topic)
            code, text = ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}"
        else:
            self.stats["served"] += 1
            if isinstance(result, Result):
                return replace(result, chunks=request.chunks_sent)
            return result
        self.stats[f"error_{code.value}"] += 1
        return ErrorReply(code, text[:MAX_ERROR_MESSAGE])

    async def reply(self, msg: Inbound, reply: WireMessage) -> None:
        """Publish ``reply`` to the request's response topic with its correlation data."""
        if not msg.response_topic:
            return
        content_type = msg.content_type or CBOR
        try:
            payload = encode(reply, content_type)
        except CodecError:
            content_type = CBOR
            payload = encode(reply, content_type)
        props = publish_properties(content_type=content_type, correlation=msg.correlation)
        try:
            await self.bus.publish(msg.response_topic, payload, qos=1, properties=props, wait=False)
        except BusError as exc:
            self.stats["reply_failed"] += 1
            logger.warning("reply to %s failed: %s", msg.response_topic, exc)
