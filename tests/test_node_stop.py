"""A node agent always returns after its stop event, whatever lands in the same loop turn.

The hang seen in the allocation benchmark (one of 56 in-process agents never
returned, its CMS state stayed online): the agent's load publisher waited for
"load changed or the refresh period" with ``asyncio.wait_for``; when the stop's
``task.cancel()`` came in the loop turn in which that event was set (a generation
finishing, the drain's own "draining" update), Python 3.11's ``wait_for`` returned
instead of raising, the publisher went round its loop again and ``run`` waited for
it forever, before the close hook that says offline. ``broker.waits`` is the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from typing import Any

import pytest

from broker import BusClient, Chat, Cms, MosquittoBroker, RpcClient
from broker.topics import node_request_topic
from broker.waits import cancel_and_wait, wait_event, within
from edge_node.agent import NodeAgent
from edge_node.config import NodeConfig
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from tests.helpers import eventually, is_online, settings


class WatchedEvent(asyncio.Event):
    """An event that tells how many tasks wait on it now."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def wait(self) -> bool:  # type: ignore[override]
        self.waiting += 1
        try:
            return await super().wait()
        finally:
            self.waiting -= 1


async def _cancel_as_event_is_set(waiter: Any) -> asyncio.Task[Any]:
    event = WatchedEvent()

    async def loop_until_cancelled() -> None:
        while True:  # the shape of the node's load publisher
            await waiter(event)
            event.clear()

    task = asyncio.create_task(loop_until_cancelled())
    await eventually(lambda: event.waiting == 1, what="waiting")
    event.set()
    task.cancel()  # in the same loop turn
    await asyncio.wait([task], timeout=1.0)
    return task


async def test_wait_event_lets_a_cancel_through_in_the_turn_the_event_is_set():
    task = await _cancel_as_event_is_set(lambda ev: wait_event(ev, 10.0))
    assert task.cancelled()
    task = await _cancel_as_event_is_set(lambda ev: within(ev.wait(), 10.0))
    assert task.cancelled()


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was fixed in 3.12")
async def test_asyncio_wait_for_swallows_that_cancel_on_3_11():
    """The cause, pinned: if this starts failing, 3.11's wait_for no longer loses it."""
    task = await _cancel_as_event_is_set(lambda ev: asyncio.wait_for(ev.wait(), 10.0))
    assert not task.done()
    await cancel_and_wait([task])
    assert task.cancelled()


async def test_cancel_and_wait_cancels_again_and_names_a_task_that_swallowed_it(caplog):
    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed once
            await asyncio.sleep(10)
        await asyncio.sleep(10)

    task = asyncio.create_task(stubborn(), name="stubborn-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="broker.waits"):
        await asyncio.wait_for(cancel_and_wait([task], patience_s=0.05), 5)
    assert task.cancelled()
    assert "stubborn-task" in caplog.text


async def test_wait_event_times_out_and_reports_the_event():
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    event.set()
    assert await wait_event(event, 0.01) is True


def _node(broker: MosquittoBroker, node_id: str) -> tuple[NodeAgent, WatchedEvent]:
    engine = SimulatedEngine(
        SimulatedEngineConfig(
            profile="jetson-orin-nano", decode_tps=400, prefill_tps=4000, time_scale=50
        )
    )
    config = NodeConfig.model_validate(
        {
            "node_id": node_id,
            "bus": settings(broker).model_dump(),
            "engine": {"type": "simulated", "profile": "jetson-orin-nano"},
            "load_interval_s": 0.01,
            "metrics_interval_s": 0.05,
        }
    )
    agent = NodeAgent(config, engine)
    changed = WatchedEvent()
    changed.set()  # as NodeAgent does: the first load record goes out at once
    agent._load_changed = changed
    return agent, changed


async def test_stop_returns_and_says_offline_when_load_changes_as_the_publisher_is_cancelled(
    mosquitto, prefix, caplog
):
    caplog.set_level(logging.ERROR, logger="broker.waits")
    agent, changed = _node(mosquitto, prefix)
    real_final_metrics = agent._publish_metrics_once

    async def final_metrics_then_load_change(cms: Cms, last: Any = None) -> Any:
        snapshot = await real_final_metrics(cms, last)
        if agent.draining:
            # The stop path's last step before cancelling the background tasks: make
            # the load change land in the same loop turn as the cancel.
            await eventually(lambda: changed.waiting == 1, what="load publisher idle")
            changed.set()
        return snapshot

    agent._publish_metrics_once = final_metrics_then_load_change  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop), name="node-under-test")
    async with (
        BusClient(settings(mosquitto), f"{prefix}-u") as bus,
        RpcClient(bus) as rpc,
        Cms(bus).mirror(f"slm/nodes/{prefix}") as mirror,
    ):
        try:
            await asyncio.wait_for(agent.ready.wait(), 10)
            await eventually(lambda: is_online(mirror, prefix), what="node online")
            result = await rpc.call(node_request_topic(prefix), Chat.user("hi", max_tokens=20))
            assert result.usage.completion_tokens == 20
            stop.set()
            done, _ = await asyncio.wait([task], timeout=10)
            assert task in done, "the node agent did not return after its stop event"
            task.result()
            assert "still running" not in caplog.text  # returned at the first cancel
            await eventually(lambda: not is_online(mirror, prefix), what="offline after stop")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
