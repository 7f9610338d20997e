"""One MQTT v5 connection as an asyncio protocol (QoS 0 and 1).

Why not aiomqtt or paho: aiomqtt hands every message to a queue read through a
new task and awaits every PUBACK through ``wait_for``; paho rebuilds its property
tables for every packet (about 28 us each, six per request/response) and reads
a packet a few bytes per ``recv``. Through them our RPC reached about 40 % of a
raw paho echo's requests per second (``benchmarks.bus``). Here bytes are parsed
in ``data_received``, an incoming PUBLISH is dispatched inline, a PUBLISH is
written at once, and only callers that need the PUBACK wait for it.

A ``Link`` is one connection; ``BusClient`` makes a new one to reconnect.
Outgoing QoS 1 messages respect the broker's Receive Maximum; those not yet
acknowledged when the connection drops are failed (their callers see
:class:`NotConnected` or their RPC deadline), never silently resent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable

from broker import mqtt5
from broker.errors import BusError, NotConnected
from broker.mqtt5 import Props, Publish, WillSpec

logger = logging.getLogger(__name__)

OnMessage = Callable[[Publish], None]


class PublishRefused(BusError):
    """The broker answered a PUBLISH, SUBSCRIBE or UNSUBSCRIBE with a failure reason."""

    def __init__(self, what: str, reason: int) -> None:
        super().__init__(f"{what} refused by the broker: {mqtt5.reason_text(reason)}")
        self.reason = reason


class Link(asyncio.Protocol):
    """A connected MQTT v5 client session on the running loop."""

    def __init__(
        self,
        client_id: str,
        *,
        on_message: OnMessage,
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        will: WillSpec | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.client_id = client_id
        self._on_message = on_message
        self._username = username
        self._password = password
        self._tls = tls_context
        self._will = will
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._connack: asyncio.Future[Props] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._acks: dict[int, asyncio.Future[list[int]]] = {}
        self._used: set[int] = set()
        self._next_id = 0
        self._inflight: set[int] = set()
        self._backlog: deque[tuple[int, bytes]] = deque()
        self._receive_max = 65535
        self._max_packet = mqtt5.MAX_REMAINING
        self._keepalive = 60
        self._last_out = 0.0
        self._ping_sent: float | None = None
        self._pinger: asyncio.Task[None] | None = None
        self.server_props: Props = {}

    # --- connection -------------------------------------------------------------------

    async def connect(
        self,
        host: str,
        port: int,
        *,
        keepalive: int,
        clean_start: bool,
        session_expiry: int,
        timeout: float,
    ) -> None:
        """Open TCP (or TLS), send CONNECT and await CONNACK."""
        self._keepalive = keepalive
        try:
            async with asyncio.timeout(timeout):
                await self._loop.create_connection(
                    lambda: self,
                    host,
                    port,
                    ssl=self._tls,
                    server_hostname=host if self._tls else None,
                )
                props: Props = {mqtt5.SESSION_EXPIRY: session_expiry} if session_expiry else {}
                self._write(
                    mqtt5.connect(
                        self.client_id,
                        keepalive=keepalive,
                        clean_start=clean_start,
                        props=props,
                        username=self._username,
                        password=self._password,
                        will=self._will,
                    )
                )
                self.server_props = await asyncio.shield(self._connack)
        except (OSError, TimeoutError) as exc:
            self.abort()
            raise NotConnected(f"cannot connect to {host}:{port}: {exc or 'timed out'}") from exc
        except BaseException:
            self.abort()
            raise
        self._receive_max = self.server_props.get(mqtt5.RECEIVE_MAXIMUM, 65535)
        self._max_packet = self.server_props.get(mqtt5.MAXIMUM_PACKET_SIZE, mqtt5.MAX_REMAINING)
        self._keepalive = self.server_props.get(mqtt5.SERVER_KEEP_ALIVE, keepalive)
        self._pinger = self._loop.create_task(
            self._keep_alive(), name=f"mqtt-ping:{self.client_id}"
        )

    async def disconnect(self, timeout: float = 2.0) -> None:
        """Send DISCONNECT (so the will is not published) and close."""
        if self._transport is not None and not self.closed.done():
            self._write(mqtt5.DISCONNECT_PACKET)
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see broker/waits.py
                    await asyncio.shield(self.closed)
        self.abort()

    def abort(self, reason: str = "aborted") -> None:
        """Drop the connection at once (no DISCONNECT: the broker will send the will)."""
        if self._pinger is not None:
            self._pinger.cancel()
            self._pinger = None
        if self._transport is not None:
            self._transport.abort()
        self._set_closed(reason)

    # --- publish / subscribe ------------------------------------------------------

    def publish_nowait(
        self, topic: str, payload: bytes, qos: int, retain: bool, props: Props | None
    ) -> int:
        """Write a PUBLISH now (or queue it behind the Receive Maximum); return its id."""
        self._check_open()
        if qos == 0:
            self._write(
                mqtt5.publish(topic, payload, qos=0, retain=retain, packet_id=0, props=props)
            )
            return 0
        packet_id = self._new_id()
        data = mqtt5.publish(
            topic, payload, qos=qos, retain=retain, packet_id=packet_id, props=props
        )
        self._check_size(data, topic)
        self._used.add(packet_id)
        if len(self._inflight) < self._receive_max:
            self._inflight.add(packet_id)
            self._write(data)
        else:
            self._backlog.append((packet_id, data))
        return packet_id

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        props: Props | None,
        *,
        timeout: float,
    ) -> None:
        """Publish and, at QoS 1, wait for the PUBACK; a failure reason raises."""
        packet_id = self.publish_nowait(topic, payload, qos, retain, props)
        if qos:
            # Registered before any await: the PUBACK cannot have been read yet.
            self._acks[packet_id] = self._loop.create_future()
            reasons = await self._await_ack(packet_id, timeout, f"PUBLISH to {topic!r}")
            if reasons[0] >= 0x80:
                raise PublishRefused(f"PUBLISH to {topic!r}", reasons[0])

    async def subscribe(
        self, topic_filter: str, qos: int, sub_id: int | None, timeout: float
    ) -> int:
        """Subscribe; return the granted QoS. A failure reason raises PublishRefused."""
        self._check_open()
        packet_id = self._new_id()
        self._acks[packet_id] = self._loop.create_future()
        self._write(mqtt5.subscribe(packet_id, topic_filter, qos, sub_id))
        reasons = await self._await_ack(packet_id, timeout, f"SUBSCRIBE {topic_filter!r}")
        if not reasons or reasons[0] >= 0x80:
            raise PublishRefused(f"SUBSCRIBE {topic_filter!r}", reasons[0] if reasons else 0x80)
        return reasons[0]

    async def unsubscribe(self, topic_filter: str, timeout: float) -> None:
        self._check_open()
        packet_id = self._new_id()
        self._acks[packet_id] = self._loop.create_future()
        self._write(mqtt5.unsubscribe(packet_id, topic_filter))
        await self._await_ack(packet_id, timeout, f"UNSUBSCRIBE {topic_filter!r}")

    async def _await_ack(self, packet_id: int, timeout: float, what: str) -> list[int]:
        ack = self._acks[packet_id]
        try:
            async with asyncio.timeout(timeout):
                return await ack
        except TimeoutError:
            raise NotConnected(f"no acknowledgement of {what} within {timeout:g} s") from None
        finally:
            self._acks.pop(packet_id, None)

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_closed(f"connection lost: {exc}" if exc else "connection closed by the broker")

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        pos = 0
        try:
            while len(buf) - pos >= 2:
                got = mqtt5.read_varint(buf, pos + 1)
                if got is None:
                    break
                length, start = got
                end = start + length
                if end > len(buf):
                    break
                self._handle(buf[pos] >> 4, buf[pos] & 0x0F, bytes(buf[start:end]))
                pos = end
        except mqtt5.ProtocolError as exc:
            logger.exception("%s: protocol error from the broker", self.client_id)
            self.abort(f"protocol error: {exc}")
            return
        finally:
            del buf[:pos]

    def _handle(self, kind: int, flags: int, body: bytes) -> None:
        if kind == mqtt5.PUBLISH:
            msg = mqtt5.parse_publish(flags, body)
            try:
                self._on_message(msg)
            finally:
                # The connection may have closed meanwhile (broker restart): then the
                # broker redelivers the message, and there is nobody to acknowledge to.
                if (
                    msg.qos == 1
                    and self._transport is not None
                    and not self._transport.is_closing()
                ):
                    self._write(mqtt5.puback(msg.packet_id))
        elif kind == mqtt5.PUBACK:
            packet_id, reasons, _ = mqtt5.parse_ack(body, many=False)
            self._inflight.discard(packet_id)
            self._used.discard(packet_id)
            self._resolve(packet_id, reasons)
            self._drain_backlog()
        elif kind in (mqtt5.SUBACK, mqtt5.UNSUBACK):
            packet_id, reasons, _ = mqtt5.parse_ack(body, many=True)
            self._resolve(packet_id, reasons)
        elif kind == mqtt5.PINGRESP:
            self._ping_sent = None
        elif kind == mqtt5.CONNACK:
            _present, reason, props = mqtt5.parse_connack(body)
            if self._connack.done():
                raise mqtt5.ProtocolError("second CONNACK")
            if reason >= 0x80:
                self._connack.set_exception(
                    NotConnected(f"broker refused the connection: {mqtt5.reason_text(reason)}")
                )
            else:
                self._connack.set_result(props)
        elif kind == mqtt5.DISCONNECT:
            reason, props = mqtt5.parse_disconnect(body)
            detail = props.get(mqtt5.REASON_STRING, "")
            self.abort(f"broker disconnected us: {mqtt5.reason_text(reason)} {detail}".strip())
        else:
            raise mqtt5.ProtocolError(f"unexpected packet type {kind}")

    # --- internals ----------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise NotConnected("connection closed")
        self._transport.write(data)
        self._last_out = self._loop.time()

    def _check_open(self) -> None:
        if self.closed.done():
            raise NotConnected(f"connection closed: {self.closed.result()}")

    def _check_size(self, data: bytes, topic: str) -> None:
        if len(data) > self._max_packet:
            raise PublishRefused(f"PUBLISH to {topic!r} of {len(data)} bytes", 0x95)

    def _new_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._used and self._next_id not in self._acks:
                return self._next_id
        raise NotConnected("65535 packets awaiting acknowledgement")

    def _resolve(self, packet_id: int, reasons: list[int]) -> None:
        ack = self._acks.pop(packet_id, None)
        if ack is not None and not ack.done():
            ack.set_result(reasons)

    def _drain_backlog(self) -> None:
        while self._backlog and len(self._inflight) < self._receive_max:
            packet_id, data = self._backlog.popleft()
            self._inflight.add(packet_id)
            self._write(data)

    def _set_closed(self, reason: str) -> None:
        if not self._connack.done():
            self._connack.set_exception(NotConnected(reason))
            self._connack.exception()  # mark retrieved: connect() may already have given up
        if not self.closed.done():
            self.closed.set_result(reason)
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(NotConnected(reason))
        self._acks.clear()
        self._backlog.clear()
        self._inflight.clear()
        self._used.clear()

    async def _keep_alive(self) -> None:
        if self._keepalive <= 0:
            return
        while not self.closed.done():
            await asyncio.sleep(min(1.0, self._keepalive / 2))
            now = self._loop.time()
            if self._ping_sent is not None and now - self._ping_sent > self._keepalive:
                self.abort("no PINGRESP within the keepalive")
                return
            if self._ping_sent is None and now - self._last_out >= self._keepalive * 0.75:
                self._write(mqtt5.PINGREQ_PACKET)
                self._ping_sent = now
