"""The gateway end to end: real Mosquitto, a real SmolLM2 node, simulated nodes,
llama-cpp-python's server as the cloud, the openai SDK as the client."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from broker import BusClient, Chat, Cms, MosquittoBroker, RpcClient
from broker.topics import cms_key
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from edgecollab.cloud_standin import CLOUD_MODEL
from gateway.ledger import Ledger
from gateway.service import running_gateway
from tests.helpers import eventually, gateway_config, running_node, settings

QUESTION: list[Any] = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."}
]


@contextlib.asynccontextmanager
async def gateway(
    broker: MosquittoBroker,
    tmp_path: Path,
    prefix: str,
    cloud_url: str | None,
    *,
    expect_nodes: bool = True,
    **extra: Any,
) -> AsyncIterator[tuple[str, Any]]:
    config = gateway_config(broker, tmp_path, prefix, cloud_url, **extra)
    async with running_gateway(config) as gw:
        await eventually(
            lambda: gw.orchestrator.router.order(10, 10, "general") != [] or not expect_nodes,
            timeout=10,
            what="gateway sees the nodes",
        )
        yield f"http://127.0.0.1:{gw.port}/v1", gw


def sdk(url: str, **headers: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=url, api_key="unused", default_headers=headers, max_retries=0
    )


async def test_openai_sdk_gets_an_edge_answer_and_the_ledger_records_it(
    mosquitto, engine, cloud_url, tmp_path, prefix
):
    async with (
        running_node(mosquitto, engine, f"{prefix}-llm", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, cloud_url) as (url, _gw),
    ):
        client = sdk(url, **{"X-Tenant": "clinic-a"})
        reply = await client.chat.completions.create(
            model="edgecollab", messages=QUESTION, max_tokens=24, temperature=0.0
        )
        raw = reply.model_extra or {}
        models = await client.models.list()
        await client.close()
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.usage is not None
    assert reply.usage.completion_tokens > 0
    assert raw["edgecollab"]["route"] == "edge"
    assert raw["edgecollab"]["node"] == f"{prefix}-llm"
    assert 0 <= raw["edgecollab"]["confidence"] <= 1
    assert raw["edgecollab"]["domain"] == "general"
    assert raw["edgecollab"]["knowledge_gap"] is False
    assert {m.id for m in models.data} >= {"smollm2-135m-instruct", CLOUD_MODEL}
    async with Ledger(f"sqlite:///{tmp_path}/ledger.sqlite3") as ledger:
        summary = {s.tenant: s for s in await ledger.summary()}
    assert summary["clinic-a"].edge == 1
    assert summary["clinic-a"].cost_usd == 0
    assert summary["clinic-a"].cloud_equivalent_usd > 0


async def test_streaming_through_the_sdk(mosquitto, engine, cloud_url, tmp_path, prefix):
    async with (
        running_node(mosquitto, engine, f"{prefix}-llm", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, cloud_url) as (url, _gw),
    ):
        client = sdk(url)
        stream = await client.chat.completions.create(
            model="edgecollab", messages=QUESTION, max_tokens=24, temperature=0.0, stream=True
        )
        pieces, finals = [], []
        async for event in stream:
            if event.choices and event.choices[0].delta.content:
                pieces.append(event.choices[0].delta.content)
            if event.choices and event.choices[0].finish_reason:
                finals.append(event)
        await client.close()
    assert len(pieces) >= 2
    assert "Paris" in "".join(pieces)
    assert (finals[-1].model_extra or {})["edgecollab"]["route"] == "edge"


async def test_low_confidence_escalates_to_the_cloud_but_never_for_no_cloud(
    mosquitto, engine, cloud_url, tmp_path, prefix
):
    key = cms_key("tenants", "strict", "confidence_threshold")
    async with (
        running_node(mosquitto, engine, f"{prefix}-llm", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, cloud_url, cache_enabled=False) as (url, gw),
        BusClient(settings(mosquitto), f"{prefix}-op") as op,
    ):
        await Cms(op).put(key, 0.999)
        try:
            await eventually(lambda: gw.mirror.get(key) == 0.999, what="policy seen")
            client = sdk(url, **{"X-Tenant": "strict"})
            private = sdk(url, **{"X-Tenant": "strict", "X-No-Cloud": "true"})
            escalated = await client.chat.completions.create(
                model="edgecollab", messages=QUESTION, max_tokens=16
            )
            kept_reply = await private.chat.completions.create(
                model="edgecollab", messages=QUESTION, max_tokens=16
            )
            await client.close()
            await private.close()
        finally:
            await Cms(op).delete(key)
    up = (escalated.model_extra or {})["edgecollab"]
    assert up["route"] == "cloud"
    assert up["escalation"] == "low confidence"
    assert escalated.model == CLOUD_MODEL
    kept = (kept_reply.model_extra or {})["edgecollab"]
    assert kept["route"] == "edge"
    assert "no-cloud" in kept["escalation"]


async def test_saturated_edge_redirects_to_the_cloud(mosquitto, cloud_url, tmp_path, prefix):
    slow = SimulatedEngine(
        SimulatedEngineConfig(profile="jetson-orin-nano", decode_tps=40, concurrency=1)
    )
    async with (
        running_node(mosquitto, slow, f"{prefix}-sim", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, cloud_url, cache_enabled=False) as (url, _gw),
    ):
        client = sdk(url)
        replies = await asyncio.gather(
            *(
                client.chat.completions.create(
                    model="edgecollab",
                    messages=[{"role": "user", "content": f"Status {i}?"}],
                    max_tokens=40,
                )
                for i in range(3)
            )
        )
        await client.close()
    routes = sorted((r.model_extra or {})["edgecollab"]["route"] for r in replies)
    assert routes.count("edge") >= 1
    assert routes.count("cloud") >= 1
    for reply in replies:
        extra = (reply.model_extra or {})["edgecollab"]
        if extra["route"] == "cloud":
            assert extra["escalation"] == "edge saturated"


async def test_no_edge_and_no_cloud_is_a_clear_503(mosquitto, tmp_path, prefix):
    async with (
        gateway(mosquitto, tmp_path, prefix, None, expect_nodes=False) as (url, _gw),
        httpx.AsyncClient() as http,
    ):
        got = await http.post(f"{url}/chat/completions", json={"model": "x", "messages": QUESTION})
    assert got.status_code == 503
    assert "no cloud is configured" in got.json()["error"]["message"]


async def test_tenant_limit_is_enforced_with_429(mosquitto, engine, tmp_path, prefix):
    key = cms_key("tenants", "tiny", "usage_limit")
    async with (
        running_node(mosquitto, engine, f"{prefix}-llm", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, None, cache_enabled=False) as (url, gw),
        BusClient(settings(mosquitto), f"{prefix}-op") as op,
        httpx.AsyncClient(headers={"X-Tenant": "tiny"}, timeout=60) as http,
    ):
        await Cms(op).put(key, 10)
        try:
            await eventually(lambda: gw.mirror.get(key) == 10, what="limit seen")
            body = {"model": "x", "messages": QUESTION, "max_tokens": 8}
            first = await http.post(f"{url}/chat/completions", json=body)
            second = await http.post(f"{url}/chat/completions", json=body)
        finally:
            await Cms(op).delete(key)
    assert first.status_code == 200
    assert second.status_code == 429
    assert "tiny" in second.json()["error"]["message"]


async def test_near_duplicate_is_answered_from_the_cache(mosquitto, engine, tmp_path, prefix):
    async with (
        running_node(mosquitto, engine, f"{prefix}-llm", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, None) as (url, _gw),
    ):
        client = sdk(url)
        first = await client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=16,
            temperature=0.0,
        )
        again = await client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "what is the capital of France"}],
            max_tokens=16,
            temperature=0.0,
        )
        other = await client.chat.completions.create(
            model="x",
            messages=[{"role": "user", "content": "What is the capital of Spain?"}],
            max_tokens=16,
            temperature=0.0,
        )
        await client.close()
    assert (first.model_extra or {})["edgecollab"]["route"] == "edge"
    assert (again.model_extra or {})["edgecollab"]["route"] == "cache"
    assert again.choices[0].message.content == first.choices[0].message.content
    assert (other.model_extra or {})["edgecollab"]["route"] == "edge"


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "JSON"),
        (json.dumps({"model": "x"}).encode(), 400, "messages"),
        (json.dumps({"model": "x", "messages": []}).encode(), 400, "messages"),
        (
            json.dumps({"model": "x", "messages": [{"role": "wizard", "content": "x"}]}).encode(),
            400,
            "role",
        ),
        (
            json.dumps({"model": "x", "messages": QUESTION, "max_tokens": -1}).encode(),
            400,
            "max_tokens",
        ),
        (b"x" * (2 << 20), 413, "larger than"),
    ],
)
async def test_bad_http_input_is_a_clear_4xx(mosquitto, tmp_path, prefix, body, status, words):
    async with (
        gateway(mosquitto, tmp_path, prefix, None, expect_nodes=False) as (url, _gw),
        httpx.AsyncClient() as http,
    ):
        got = await http.post(
            f"{url}/chat/completions", content=body, headers={"content-type": "application/json"}
        )
        health = await http.get(url.removesuffix("/v1") + "/healthz")
        metrics = await http.get(url.removesuffix("/v1") + "/metrics")
    assert got.status_code == status
    assert words in got.json()["error"]["message"]
    assert health.json()["broker"] is True
    assert "edgecollab_requests_total" in metrics.text


async def test_mqtt_ingress_answers_through_the_gateway(mosquitto, engine, tmp_path, prefix):
    async with (
        running_node(mosquitto, engine, f"{prefix}-llm", capabilities=[prefix]),
        gateway(mosquitto, tmp_path, prefix, None) as (_url, _gw),
        BusClient(settings(mosquitto), f"{prefix}-dev") as bus,
        RpcClient(bus) as rpc,
    ):
        result = await rpc.call(
            "computation/query/request",
            Chat.user("What is the capital of France?", max_tokens=16),
            timeout=60,
            user={"tenant": "wearables"},
        )
    assert result.text
    assert result.meta["route"] == "edge"
    assert result.node == f"{prefix}-llm"
