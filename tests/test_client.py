"""BusClient against a real Mosquitto: dispatch, reconnection, clean shutdown."""

from __future__ import annotations

import asyncio
import socket

import pytest

from broker import MAX_PAYLOAD_BYTES, BusClient, BusError, BusSettings, Inbound, NotConnected, Will
from broker.launcher import free_port
from tests.helpers import eventually, settings


async def test_publish_subscribe_and_unsubscribe(mosquitto, prefix):
    got: list[Inbound] = []
    async with (
        BusClient(settings(mosquitto), f"{prefix}-a") as a,
        BusClient(settings(mosquitto), f"{prefix}-b") as b,
    ):
        sub = await a.subscribe(f"data/{prefix}/+/+", got.append)
        await b.publish(f"data/{prefix}/hr/w1", b"one", qos=1)
        await eventually(lambda: len(got) == 1, what="first message")
        assert got[0].topic == f"data/{prefix}/hr/w1"
        assert got[0].payload == b"one"
        await sub.cancel()
        await b.publish(f"data/{prefix}/hr/w1", b"two", qos=1)
        await asyncio.sleep(0.2)
        assert [m.payload for m in got] == [b"one"]


async def test_overlapping_filters_each_get_the_message_once(mosquitto, prefix):
    wide: list[bytes] = []
    narrow: list[bytes] = []
    async with BusClient(settings(mosquitto), f"{prefix}-a") as a:
        await a.subscribe(f"data/{prefix}/#", lambda m: wide.append(m.payload))
        await a.subscribe(f"data/{prefix}/hr/+", lambda m: narrow.append(m.payload))
        await a.publish(f"data/{prefix}/hr/w1", b"x")
        await eventually(lambda: bool(wide and narrow), what="both handlers")
        await asyncio.sleep(0.1)
        assert wide == [b"x"]
        assert narrow == [b"x"]


async def test_sockets_set_tcp_nodelay(mosquitto, prefix):
    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        assert bus._link is not None
        transport = bus._link._transport  # the socket is not part of the public API
        assert transport is not None
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_failing_handler_does_not_stop_the_client(mosquitto, prefix):
    got: list[bytes] = []

    def broken(_msg: Inbound) -> None:
        raise RuntimeError("handler bug")

    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        await bus.subscribe(f"data/{prefix}/a/b", broken)
        await bus.subscribe(f"data/{prefix}/a/c", lambda m: got.append(m.payload))
        await bus.publish(f"data/{prefix}/a/b", b"boom")
        await bus.publish(f"data/{prefix}/a/c", b"fine")
        await eventually(lambda: got == [b"fine"], what="second handler still served")
        assert bus.dropped_handler_errors == 1


async def test_unreachable_broker_is_a_clear_error():
    port = free_port()
    bus = BusClient(BusSettings(port=port, connect_timeout_s=0.5), "lonely")
    with pytest.raises(NotConnected, match=f"127.0.0.1:{port}"):
        async with bus:
            pass


async def test_oversized_publish_is_refused_by_the_broker(mosquitto, prefix):
    got: list[bytes] = []
    async with BusClient(settings(mosquitto), f"{prefix}-a") as bus:
        await bus.subscribe(f"data/{prefix}/big/x", lambda m: got.append(m.payload))
        with pytest.raises(BusError, match="refused"):
            await bus.publish(f"data/{prefix}/big/x", b"x" * (MAX_PAYLOAD_BYTES + 1))
        # The connection survives and the next message goes through.
        await bus.publish(f"data/{prefix}/big/x", b"small")
        await eventually(lambda: got == [b"small"], what="small message after refusal")


async def test_reconnects_and_resubscribes_after_broker_restart(fresh_broker, prefix):
    got: list[bytes] = []
    async with BusClient(settings(fresh_broker), f"{prefix}-sub") as sub_bus:
        await sub_bus.subscribe(f"data/{prefix}/hr/+", lambda m: got.append(m.payload))
        await asyncio.to_thread(fresh_broker.restart)
        await eventually(lambda: sub_bus.connections == 2, timeout=10, what="reconnect")
        async with BusClient(settings(fresh_broker), f"{prefix}-pub") as pub_bus:
            await pub_bus.publish(f"data/{prefix}/hr/w1", b"after restart")
        await eventually(lambda: got == [b"after restart"], what="delivery after restart")


async def test_publish_waits_for_reconnection(fresh_broker, prefix):
    async with BusClient(settings(fresh_broker), f"{prefix}-a") as bus:
        fresh_broker.stop()
        await eventually(lambda: not bus.is_connected, what="disconnect noticed")
        with pytest.raises(NotConnected):
            await bus.publish(f"data/{prefix}/a/b", b"x", timeout=0.3)
        restart = asyncio.create_task(asyncio.to_thread(fresh_broker.start))
        await bus.publish(f"data/{prefix}/a/b", b"x", timeout=10)
        await restart


async def test_clean_exit_does_not_publish_the_will(mosquitto, prefix):
    wills: list[bytes] = []
    will_topic = f"data/{prefix}/will/x"
    async with BusClient(settings(mosquitto), f"{prefix}-watch") as watcher:
        await watcher.subscribe(will_topic, lambda m: wills.append(m.payload))
        async with BusClient(
            settings(mosquitto),
            f"{prefix}-a",
            will=lambda: Will(will_topic, b"gone", retain=False),
        ):
            pass
        await asyncio.sleep(0.3)
        assert wills == []
        doomed = BusClient(
            settings(mosquitto),
            f"{prefix}-b",
            will=lambda: Will(will_topic, b"gone", retain=False),
        )
        async with doomed:
            assert doomed._link is not None
            doomed._link.abort()  # a crash: the socket drops without DISCONNECT
            await eventually(lambda: wills == [b"gone"], what="will after abort")
