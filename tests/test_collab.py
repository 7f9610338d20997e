"""Computation cooperation through a real Mosquitto and a real gateway: a sequential
pipeline on SmolLM2 nodes, a parallel fan-out on simulated nodes with a quorum, a
deadline and an agent killed mid-request, and the plan's progress in the CMS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from broker import (
    BusClient,
    Chat,
    Cms,
    ErrorCode,
    Inbound,
    MosquittoBroker,
    RpcClient,
    RpcError,
    decode,
)
from broker.topics import capability_request_topic
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from gateway.collab import CollabRunner
from gateway.planner import Plan, Subtask, choose_template, make_plan
from gateway.service import RunningGateway, running_gateway
from tests.helpers import eventually, gateway_config, is_online, running_node, settings

INGRESS_TOPIC = capability_request_topic("query")  # the gateways' shared MQTT ingress


@contextlib.asynccontextmanager
async def gateway(broker: MosquittoBroker, tmp_path: Path, prefix: str) -> AsyncIterator[Any]:
    config = gateway_config(broker, tmp_path, prefix, cache_enabled=False)
    async with running_gateway(config) as gw:
        yield gw


@contextlib.asynccontextmanager
async def spy(broker: MosquittoBroker, prefix: str) -> AsyncIterator[list[tuple[str, Chat]]]:
    """Every request sent to a node, decoded: (node id, chat)."""
    seen: list[tuple[str, Chat]] = []

    def record(msg: Inbound) -> None:
        body = decode(msg.payload, msg.content_type)
        if isinstance(body, Chat):
            seen.append((msg.topic.split("/")[2], body))

    async with BusClient(settings(broker), f"{prefix}-spy") as bus:
        await bus.subscribe("computation/node/+/request", record)
        yield seen


def sim(decode_tps: float = 400.0) -> SimulatedEngine:
    return SimulatedEngine(
        SimulatedEngineConfig(
            profile="jetson-orin-nano", decode_tps=decode_tps, prefill_tps=4000, concurrency=2
        )
    )


async def seen_by(gw: RunningGateway, *node_ids: str) -> None:
    router = gw.orchestrator.router
    await eventually(
        lambda: (
            {v.node_id for v in router.directory.candidates(router.capability)} >= set(node_ids)
        ),
        timeout=30,
        what=f"gateway sees {node_ids}",
    )


def test_templates_are_chosen_by_rules():
    assert choose_template("Evaluate environmental risks for an outdoor event", "environment") == (
        "event_risk"
    )
    assert choose_template("I feel dizzy and tired today", "health") == "health_check"
    assert choose_template("What is 2 + 2?", "math") == "single"
    plan = make_plan("Is the festival safe given the risks?", "environment", quorum=3)
    assert plan.mode == "parallel"
    assert plan.quorum == 3
    assert {s.expertise for s in plan.steps} == {"camera", "air_quality", "traffic"}


async def test_sequential_pipeline_feeds_each_output_into_the_next_step(
    mosquitto, engine, tmp_path, prefix
):
    plan = Plan(
        task_id=f"{prefix}-seq",
        query="Name a fruit.",
        template="test",
        mode="sequential",
        steps=(
            Subtask("first", "{query} Answer with one word.", expertise="alpha", max_tokens=12),
            Subtask("second", "Earlier: {previous}\nRepeat it.", expertise="beta", max_tokens=16),
            Subtask(
                "third", "Steps so far:\n{previous}\nSum up.", expertise="gamma", max_tokens=16
            ),
        ),
        subtask_deadline_s=60,
    )
    nodes = {f"{prefix}-a": "alpha", f"{prefix}-b": "beta", f"{prefix}-c": "gamma"}
    async with contextlib.AsyncExitStack() as stack:
        for node_id, expertise in nodes.items():
            await stack.enter_async_context(
                running_node(
                    mosquitto, engine, node_id, capabilities=[prefix], expertise=[expertise]
                )
            )
        seen = await stack.enter_async_context(spy(mosquitto, prefix))
        gw = await stack.enter_async_context(gateway(mosquitto, tmp_path, prefix))
        await seen_by(gw, *nodes)
        runner = CollabRunner(gw.orchestrator)
        outcome = await runner.run(plan)
        mirror = await stack.enter_async_context(
            Cms(gw.orchestrator.rpc.bus).mirror(f"slm/inference/{plan.task_id}")
        )
        cms = {k.rsplit("/", 1)[1]: e.value for k, e in mirror.items()}

    assert outcome.status == "done", outcome.notes
    first, second, third = outcome.steps
    assert [s.node for s in outcome.steps] == list(nodes)  # each step went to its expert
    assert all(s.text for s in outcome.steps)
    asked = dict(seen)
    assert first.text in asked[f"{prefix}-b"].messages[0].content  # step 1 fed step 2
    assert first.text in asked[f"{prefix}-c"].messages[0].content  # and step 3
    assert second.text in asked[f"{prefix}-c"].messages[0].content
    assert outcome.answer == third.text
    assert outcome.tokens > 0
    # progress in the CMS
    assert cms["plan"]["mode"] == "sequential"
    assert [s["name"] for s in cms["plan"]["steps"]] == ["first", "second", "third"]
    assert cms["status"] == "done"
    assert cms["assigned_device"] == dict(zip(["first", "second", "third"], nodes, strict=True))
    assert cms["phase_2_output"]["text"] == second.text
    assert cms["phase_3_output"]["node"] == f"{prefix}-c"


def fan_out(prefix: str, quorum: int, deadline: float, tag: str) -> Plan:
    steps = tuple(
        Subtask(name, f"{{query}} ({name})", expertise=name, max_tokens=8, edge_only=True)
        for name in ("camera", "air", "traffic")
    )
    return Plan(
        task_id=f"{prefix}-{tag}",
        query="Evaluate the risks.",
        template="test",
        mode="parallel",
        steps=steps,
        quorum=quorum,
        subtask_deadline_s=deadline,
        aggregate=Subtask("aggregate", "Combine:\n{previous}", expertise="general", max_tokens=8),
    )


@contextlib.contextmanager
def sim_node_process(
    broker: MosquittoBroker, tmp_path: Path, node_id: str, capability: str, expertise: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A simulated node as its own process (slow: 4 tokens/s), to be killed."""
    config = {
        "node_id": node_id,
        "bus": {"host": broker.host, "port": broker.port, "keepalive_s": 2},
        "engine": {"type": "simulated", "profile": "jetson-orin-nano", "decode_tps": 4},
        "capabilities": [capability],
        "expertise": [expertise],
    }
    path = tmp_path / f"{node_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgecollab.cli", "node", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_parallel_fan_out_retries_a_killed_agent_elsewhere_then_degrades(
    mosquitto, tmp_path, prefix
):
    traffic = [f"{prefix}-t1", f"{prefix}-t2"]
    live = {f"{prefix}-cam": "camera", f"{prefix}-air": "air", f"{prefix}-gen": "general"}
    with contextlib.ExitStack() as procs:
        proc = {
            n: procs.enter_context(sim_node_process(mosquitto, tmp_path, n, prefix, "traffic"))
            for n in traffic
        }
        async with contextlib.AsyncExitStack() as stack:
            for node_id, expertise in live.items():
                await stack.enter_async_context(
                    running_node(
                        mosquitto, sim(), node_id, capabilities=[prefix], expertise=[expertise]
                    )
                )
            seen = await stack.enter_async_context(spy(mosquitto, prefix))
            gw = await stack.enter_async_context(gateway(mosquitto, tmp_path, prefix))
            await seen_by(gw, *live, *traffic)
            runner = CollabRunner(gw.orchestrator)
            killed: list[str] = []

            async def kill_the_first_traffic_agent_asked() -> None:
                await eventually(lambda: any(n in traffic for n, _ in seen), timeout=20)
                victim = next(n for n, _ in seen if n in traffic)
                proc[victim].send_signal(signal.SIGKILL)
                killed.append(victim)

            # 1. The traffic agent asked first dies mid-request: retried on the other one.
            killer = asyncio.create_task(kill_the_first_traffic_agent_asked())
            started = time.monotonic()
            outcome = await runner.run(fan_out(prefix, quorum=3, deadline=10, tag="retry"))
            took = time.monotonic() - started
            await killer
            (victim,) = killed
            (survivor,) = set(traffic) - {victim}
            steps = {s.name: s for s in outcome.steps}
            assert outcome.status == "done", outcome.notes
            assert steps["traffic"].node == survivor
            # given up at the attempt's deadline, or sooner when the gateway watches wills
            assert any(
                a.startswith(f"{victim}: ") and ("expired" in a or "died" in a)
                for a in steps["traffic"].attempts
            )
            assert steps["camera"].node == f"{prefix}-cam"
            assert steps["aggregate"].node == f"{prefix}-gen"
            assert took < 10 + 8  # the step's deadline, then the aggregate: never a hang

            # 2. No traffic agent left: that step degrades with a note; two of three
            #    answers meet a quorum of two, so the aggregate is still written.
            proc[survivor].send_signal(signal.SIGKILL)
            for node_id in traffic:
                await eventually(
                    lambda n=node_id: not is_online(gw.mirror, n), timeout=10, what="offline"
                )
            outcome = await runner.run(fan_out(prefix, quorum=2, deadline=10, tag="degrade"))
            steps = {s.name: s for s in outcome.steps}
            assert steps["traffic"].status == "degraded"
            assert "expertise traffic" in (steps["traffic"].note or "")
            assert steps["aggregate"].status == "done"
            assert outcome.status == "degraded"
            assert any(n.startswith("traffic:") for n in outcome.notes)

            # 3. A quorum of three cannot be met: degraded, nothing aggregated.
            outcome = await runner.run(fan_out(prefix, quorum=3, deadline=10, tag="quorum"))
            assert outcome.status == "degraded"
            assert any("quorum not met: 2 of 3" in n for n in outcome.notes)
            assert "aggregate" not in {s.name for s in outcome.steps}
            assert "[no answer" in outcome.answer


async def test_a_planned_query_through_the_mqtt_ingress_and_the_http_api(
    mosquitto, tmp_path, prefix
):
    async with (
        running_node(
            mosquitto, sim(), f"{prefix}-gen", capabilities=[prefix], expertise=["general"]
        ),
        gateway(mosquitto, tmp_path, prefix) as gw,
        BusClient(settings(mosquitto), f"{prefix}-app") as bus,
        RpcClient(bus) as rpc,
    ):
        await seen_by(gw, f"{prefix}-gen")
        ask = Chat.user("What is 2 + 2?", max_tokens=8, meta={"plan": "auto"})
        result = await rpc.call(INGRESS_TOPIC, ask, timeout=30)
        unknown = Chat.user("What is 2 + 2?", meta={"plan": "no-such-template"})
        with pytest.raises(RpcError) as bad:
            await rpc.call(INGRESS_TOPIC, unknown, timeout=30)
        # the same through the OpenAI-compatible API, with the X-Plan header
        client = openai.AsyncOpenAI(
            base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="unused", max_retries=0
        )
        try:
            reply = await client.chat.completions.create(
                model="edgecollab",
                messages=[{"role": "user", "content": "What is 2 + 2?"}],
                max_tokens=6,
                extra_headers={"X-Plan": "auto"},
            )
            with pytest.raises(openai.BadRequestError, match="unknown plan template"):
                await client.chat.completions.create(
                    model="edgecollab",
                    messages=[{"role": "user", "content": "What is 2 + 2?"}],
                    extra_headers={"X-Plan": "no-such-template"},
                )
        finally:
            await client.close()
        # a tenant over its quota gets nothing planned, nothing run
        tenant = f"{prefix}-broke"
        await Cms(bus).put(f"slm/tenants/{tenant}/usage_limit", 0)
        await eventually(
            lambda: gw.mirror.get(f"slm/tenants/{tenant}/usage_limit") == 0, what="limit seen"
        )
        with pytest.raises(RpcError) as broke:
            await rpc.call(INGRESS_TOPIC, ask, timeout=30, user={"tenant": tenant})
    assert result.meta["route"] == "collab"
    assert result.meta["template"] == "single"
    assert result.meta["steps"] == [
        {"step": "answer", "node": f"{prefix}-gen", "route": "edge", "status": "done"}
    ]
    assert result.text.strip()
    assert result.usage.completion_tokens == 8
    assert bad.value.code is ErrorCode.BAD_REQUEST
    assert "unknown plan template" in bad.value.message
    extra = (reply.model_extra or {})["edgecollab"]
    assert extra["route"] == "collab"
    assert extra["steps"][0]["node"] == f"{prefix}-gen"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 6
    assert reply.choices[0].message.content
    assert broke.value.code is ErrorCode.OVERLOADED
    assert "limit" in broke.value.message
