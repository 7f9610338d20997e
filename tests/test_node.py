"""A real llama.cpp edge node (SmolLM2-135M) serving over a real Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from broker import (
    JSON,
    BusClient,
    Chat,
    Chunk,
    Cms,
    Embed,
    Embedding,
    ErrorCode,
    Inbound,
    MosquittoBroker,
    Result,
    RpcClient,
    RpcError,
    RpcTimeout,
    nodes_from,
    publish_properties,
)
from broker.topics import capability_request_topic, cms_key, node_key, node_request_topic
from edge_node.agent import NodeAgent
from edge_node.config import NodeConfig
from edge_node.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from tests.helpers import eventually, is_online, running_node, settings

QUESTION = "What is the capital of France? Answer in one sentence."


@contextlib.asynccontextmanager
async def caller(broker: MosquittoBroker, name: str) -> AsyncIterator[RpcClient]:
    async with BusClient(settings(broker), name) as bus, RpcClient(bus) as rpc:
        yield rpc


async def test_answers_with_text_usage_and_confidence(mosquitto, engine, prefix):
    async with (
        running_node(mosquitto, engine, prefix) as agent,
        caller(mosquitto, f"{prefix}-u") as rpc,
    ):
        result = await rpc.call(
            node_request_topic(prefix),
            Chat.user(QUESTION, max_tokens=32, temperature=0.0),
            timeout=30,
        )
    assert result.text.strip()
    assert "Paris" in result.text
    assert result.usage.prompt_tokens > 10
    assert 0 < result.usage.completion_tokens <= 32
    assert result.confidence is not None
    assert 0.0 <= result.confidence <= 1.0
    assert result.node == prefix
    assert result.model == "smollm2-135m-instruct"
    assert result.timings["ttft_ms"] > 0
    assert agent.metrics.served_total == 1


async def test_capability_pool_and_stream_order(mosquitto, engine, prefix):
    async with running_node(mosquitto, engine, prefix), caller(mosquitto, f"{prefix}-u") as rpc:
        replies = [
            r
            async for r in rpc.stream(
                capability_request_topic(prefix + "cap"),
                Chat.user("Name three colours.", max_tokens=40, stream=True),
                timeout=30,
            )
        ]
    chunks = [r for r in replies if isinstance(r, Chunk)]
    final = replies[-1]
    assert isinstance(final, Result)
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert len(chunks) >= 2
    assert "".join(c.text for c in chunks) == final.text
    assert final.chunks == len(chunks)


async def test_refuses_at_once_when_full_and_over_budget(mosquitto, engine, prefix):
    async with (
        running_node(
            mosquitto, engine, prefix, limits={"max_inflight_tokens": 500, "max_tokens": 512}
        ) as agent,
        caller(mosquitto, f"{prefix}-u") as rpc,
    ):
        topic = node_request_topic(prefix)
        long = asyncio.create_task(
            rpc.call(
                topic, Chat.user("Write a long story about a robot.", max_tokens=300), timeout=60
            )
        )
        await eventually(lambda: agent.admission.in_flight == 1, what="first admitted")
        t0 = time.perf_counter()
        with pytest.raises(RpcError) as busy:
            await rpc.call(topic, Chat.user("hi", max_tokens=8), timeout=10)
        assert busy.value.code is ErrorCode.OVERLOADED
        assert "slots busy" in busy.value.message
        assert time.perf_counter() - t0 < 0.5  # refused at once, not queued
        assert (await long).usage.completion_tokens > 0
        with pytest.raises(RpcError) as too_big:
            await rpc.call(topic, Chat.user("hi", max_tokens=512), timeout=10)
        assert too_big.value.code is ErrorCode.OVERLOADED
        assert "budget" in too_big.value.message
        assert agent.metrics.refused_total == 2
        assert agent.admission.in_flight == 0


async def test_live_parameter_update_takes_effect(mosquitto, engine, prefix):
    async with running_node(mosquitto, engine, prefix), caller(mosquitto, f"{prefix}-u") as rpc:
        topic = node_request_topic(prefix)
        before = await rpc.call(topic, Chat.user(QUESTION, max_tokens=8), timeout=30)
        assert before.meta["sampling"]["temperature"] == 0.7
        await Cms(rpc.bus).put(cms_key("parameters", "smollm2-135m-instruct", "temperature"), 0.0)
        try:
            await asyncio.sleep(0.3)
            after = [
                await rpc.call(topic, Chat.user(QUESTION, max_tokens=16), timeout=30)
                for _ in range(2)
            ]
        finally:
            await Cms(rpc.bus).delete(cms_key("parameters", "smollm2-135m-instruct", "temperature"))
    assert after[0].meta["sampling"]["temperature"] == 0.0
    assert after[0].text == after[1].text  # greedy decoding is deterministic


async def test_deadline_stops_work_and_frees_the_slot(mosquitto, engine, prefix):
    async with (
        running_node(mosquitto, engine, prefix) as agent,
        caller(mosquitto, f"{prefix}-u") as rpc,
    ):
        with pytest.raises(RpcError) as info:
            await rpc.call(
                node_request_topic(prefix),
                Chat.user("Write a very long essay.", max_tokens=500),
                timeout=1.0,
            )
        assert isinstance(info.value, RpcTimeout) or info.value.code is ErrorCode.EXPIRED
        took = await eventually(
            lambda: agent.admission.in_flight == 0, timeout=2, what="slot freed"
        )
        assert took < 1.0
        assert agent.metrics.cancelled_total + agent.metrics.failed_total >= 1


async def test_malformed_requests_get_errors_and_the_node_keeps_serving(mosquitto, engine, prefix):
    async with running_node(mosquitto, engine, prefix), caller(mosquitto, f"{prefix}-u") as rpc:
        bus, topic = rpc.bus, node_request_topic(prefix)
        reply_to = f"reply/{bus.client_id}/raw"
        replies: list[dict[str, Any]] = []

        def on_reply(msg: Inbound) -> None:
            replies.append(json.loads(msg.payload))

        await bus.subscribe(reply_to, on_reply)
        bad = [
            b"\x00\x01garbage",
            b'{"v":1,"kind":"chat","messages":"hi"}',
            b'{"v":1,"kind":"embedding","dtype":"float32","shape":[1],"data":[0.5],"model":"x"}',
            b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"x"}],"max_tokens":100000}',
        ]
        for payload in bad:
            props = publish_properties(
                content_type=JSON, response_topic=reply_to, correlation=b"c", expiry_s=10
            )
            await bus.publish(topic, payload, properties=props)
        await eventually(lambda: len(replies) == len(bad), timeout=10, what="all answered")
        assert all(r["kind"] == "error" and r["code"] == "bad_request" for r in replies)
        ok = await rpc.call(topic, Chat.user("Say hello.", max_tokens=8), timeout=30)
        assert ok.text


async def test_birth_load_and_metrics_in_the_cms(mosquitto, engine, prefix):
    async with (
        running_node(mosquitto, engine, prefix, expertise=["health"]),
        caller(mosquitto, f"{prefix}-u") as rpc,
    ):
        await rpc.call(node_request_topic(prefix), Chat.user("Hi", max_tokens=4), timeout=30)
        async with Cms(rpc.bus).mirror("slm") as mirror:
            status = nodes_from(mirror.items(f"slm/nodes/{prefix}"))[prefix]
            assert status.online
            model = status.info["models"][0]
            assert model["architecture"] == "llama"
            assert model["parameters"] == "135M"
            assert model["quantization"] == "Q4_1"
            assert model["context_length"] == 8192
            assert status.info["expertise"] == ["health"]
            assert status.info["limits"]["concurrency"] == 1
            load = mirror.entry(node_key(prefix, "load"))
            assert load is not None
            assert load.expires_at is not None  # volatile: vanishes with the node
            assert load.value["slots"] == 1
            await eventually(
                lambda: (mirror.get(cms_key("metrics", prefix, "tokens_used_total")) or 0) > 0,
                what="metrics published",
            )
            assert mirror.get(cms_key("metrics", prefix, "inference_time_avg")) > 0
            assert mirror.get(cms_key("models", "smollm2-135m-instruct", "quantization")) == "Q4_1"


# --- the node as a process: SIGTERM drain and SIGKILL will ------------------------


@contextlib.contextmanager
def node_process(
    broker: MosquittoBroker, tmp_path: Path, node_id: str, keepalive: int
) -> Iterator[subprocess.Popen[bytes]]:
    """``edgecollab node`` as its own process; its output goes to a log shown on failure."""
    config = {
        "node_id": node_id,
        "bus": {"host": broker.host, "port": broker.port, "keepalive_s": keepalive},
        "engine": {"type": "llama_cpp", "model": "smollm2-135m-instruct", "n_threads": 2},
        "drain_timeout_s": 20,
        "load_expiry_s": 3,
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "node.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgecollab.cli", "-v", "node", "--config", str(path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ},
        )
        try:
            yield proc
        except BaseException:
            print(log_path.read_text(errors="replace"))
            raise
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


async def _online(mirror: Any, node_id: str) -> bool:
    status = nodes_from(mirror.items(f"slm/nodes/{node_id}")).get(node_id)
    return bool(status and status.online)


async def test_sigterm_drains_in_flight_requests_then_goes_offline(mosquitto, tmp_path, prefix):
    with node_process(mosquitto, tmp_path, prefix, keepalive=5) as proc:
        async with (
            BusClient(settings(mosquitto), f"{prefix}-u") as bus,
            RpcClient(bus) as rpc,
            Cms(bus).mirror(f"slm/nodes/{prefix}") as mirror,
        ):
            await eventually(
                lambda: is_online(mirror, prefix),
                timeout=30,
                what="node online",
            )
            replies: list[Chunk | Result] = []

            async def ask() -> None:
                async for reply in rpc.stream(
                    node_request_topic(prefix),
                    Chat.user(
                        "Tell me about the sea.", max_tokens=64, stream=True, temperature=0.0
                    ),
                    timeout=60,
                ):
                    replies.append(reply)

            task = asyncio.create_task(ask())
            await eventually(lambda: len(replies) >= 1, timeout=30, what="first chunk")
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(task, 60)
            final = replies[-1]
            assert isinstance(final, Result)
            assert final.usage.completion_tokens >= 2
            await eventually(
                lambda: not nodes_from(mirror.items())[prefix].online,
                timeout=10,
                what="offline after drain",
            )
            assert nodes_from(mirror.items())[prefix].reason == "offline"
        assert proc.wait(30) == 0


async def test_sigkilled_node_shows_offline_within_one_and_a_half_keepalives(
    mosquitto, tmp_path, prefix
):
    keepalive = 2
    with node_process(mosquitto, tmp_path, prefix, keepalive=keepalive) as proc:
        async with (
            BusClient(settings(mosquitto), f"{prefix}-u") as bus,
            Cms(bus).mirror(f"slm/nodes/{prefix}") as mirror,
        ):
            await eventually(
                lambda: is_online(mirror, prefix),
                timeout=30,
                what="node online",
            )
            proc.send_signal(signal.SIGKILL)
            took = await eventually(
                lambda: not nodes_from(mirror.items())[prefix].online,
                timeout=3 * keepalive,
                what="offline via will",
            )
            assert took <= 1.5 * keepalive + 0.25
            await eventually(
                lambda: mirror.entry(node_key(prefix, "load")) is None,
                timeout=6,
                what="load expired",
            )


async def test_simulated_node_serves_over_mqtt_and_says_so(mosquitto, prefix):
    engine = SimulatedEngine(
        SimulatedEngineConfig(
            profile="jetson-orin-nano", decode_tps=400, prefill_tps=4000, concurrency=2
        )
    )
    config = NodeConfig.model_validate(
        {
            "node_id": prefix,
            "bus": settings(mosquitto).model_dump(),
            "engine": {"type": "simulated", "profile": "jetson-orin-nano"},
        }
    )
    agent = NodeAgent(config, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await asyncio.wait_for(agent.ready.wait(), 10)
        async with caller(mosquitto, f"{prefix}-u") as rpc:
            topic = node_request_topic(prefix)
            results = await asyncio.gather(
                *(
                    rpc.call(topic, Chat.user("status?", max_tokens=40), timeout=10)
                    for _ in range(2)
                )
            )
            with pytest.raises(RpcError) as third:  # two slots, both busy
                await asyncio.gather(
                    *(rpc.call(topic, Chat.user("x", max_tokens=200), timeout=10) for _ in range(3))
                )
        assert third.value.code is ErrorCode.OVERLOADED
        for result in results:
            assert result.meta["simulated"] is True
            assert result.usage.completion_tokens == 40
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_embeddings_over_mqtt(mosquitto, prefix):
    embedder = LlamaCppEngine(LlamaCppConfig(n_threads=2, embeddings=True))
    try:
        async with (
            running_node(mosquitto, embedder, prefix) as agent,
            caller(mosquitto, f"{prefix}-u") as rpc,
        ):
            texts = (
                "Heart rate 150 after a run.",
                "Heavy traffic on the ring road.",
                "Heart rate 150 after a run.",
            )
            reply = await rpc.request(capability_request_topic("embed"), Embed(texts), timeout=30)
            assert "embed" in agent._birth_info()["capabilities"]
            with pytest.raises(RpcError) as info:
                await rpc.call(capability_request_topic("embed"), Embed(("x",)), timeout=30)
            assert info.value.code is ErrorCode.INTERNAL  # call() wants a chat result
    finally:
        embedder.close()
    assert isinstance(reply, Embedding)
    assert reply.vector.shape == (3, 576)
    assert reply.vector.dtype == np.float32
    norms = np.linalg.norm(reply.vector, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3)
    assert np.allclose(reply.vector[0], reply.vector[2], atol=1e-4)  # same text, same vector
    assert not np.allclose(reply.vector[0], reply.vector[1], atol=1e-2)
    assert reply.model == "smollm2-135m-instruct"


async def test_embed_request_to_a_chat_only_node_is_not_found(mosquitto, engine, prefix):
    async with running_node(mosquitto, engine, prefix), caller(mosquitto, f"{prefix}-u") as rpc:
        with pytest.raises(RpcError) as info:
            await rpc.request(node_request_topic(prefix), Embed(("x",)), timeout=30)
    assert info.value.code is ErrorCode.NOT_FOUND
