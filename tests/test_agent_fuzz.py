"""Bad input on every topic the node and the gateway subscribe to, through real Mosquitto.

Hypothesis draws random bytes, mutated valid envelopes, random envelope-shaped maps
and random chat requests, with random content types and expiries, and publishes
them to a running edge node (simulated engine) and a running gateway:

- request topics (the node's directed topic, capability pool and knowledge
  queries, the gateway's MQTT ingress): every message with a response topic gets exactly one final
  reply (an ``error`` for anything malformed) within a few seconds;
- topics without a response topic (the node's live parameters, own state and
  followed data streams and events, the gateway's CMS mirror and dashboard data
  follower, both agents' reply and CMS-barrier topics): nothing
  crashes; afterwards both agents still answer a valid request.

The agents run on an event loop in a background thread, so that hypothesis's
synchronous examples can drive them; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import (
    CBOR,
    JSON,
    MAX_PAYLOAD_BYTES,
    BusClient,
    Chat,
    ChatMessage,
    ErrorReply,
    Inbound,
    MosquittoBroker,
    Result,
    RpcClient,
    decode,
    encode,
    publish_properties,
)
from broker.topics import (
    capability_request_topic,
    knowledge_query_topic,
    node_request_topic,
    reply_topic,
)
from broker.transport import PublishRefused
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from gateway.config import GatewayConfig
from gateway.service import running_gateway
from tests.helpers import eventually, running_node
from tests.helpers import settings as bus_settings
from tests.test_codec_fuzz import BASES, arbitrary_payloads, chats, mutate, mutations, random_bodies

T = TypeVar("T")
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CONTENT_TYPES = st.sampled_from([CBOR, JSON, None, "text/plain", "application/cbor; x", ""])


def _body(value: Any) -> bytes:
    return bytes(cbor2.dumps(value))


payloads = st.one_of(
    arbitrary_payloads,
    st.tuples(st.sampled_from(BASES), mutations).map(lambda b: mutate(b[0][0], b[1])),
    random_bodies.map(_body),
    chats.map(lambda c: encode(c, CBOR)),
)


@dataclass
class Stack:
    loop: asyncio.AbstractEventLoop
    prefix: str
    node_id: str
    gateway_id: str
    client: BusClient | None = None
    rpc: RpcClient | None = None
    finals: dict[bytes, list[Any]] = field(default_factory=dict)
    node: Any = None
    gateway: Any = None
    serial: int = 0

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_reply(self, msg: Inbound) -> None:
        try:
            reply = decode(msg.payload, msg.content_type)
        except Exception:  # noqa: BLE001 - any undecodable reply is a finding
            reply = "undecodable"
        if not isinstance(reply, Result | ErrorReply | str):
            return  # chunks of a streamed answer
        self.finals.setdefault(msg.correlation or b"", []).append(reply)

    async def send(
        self, topic: str, payload: bytes, content_type: str | None, expiry: int | None, reply: bool
    ) -> bytes:
        assert self.client is not None
        self.serial += 1
        correlation = f"fuzz-{self.serial}".encode()
        props = publish_properties(
            content_type=content_type or None,
            response_topic=reply_topic(self.client.client_id, "fuzz") if reply else None,
            correlation=correlation,
            expiry_s=expiry,
        )
        await self.client.publish(topic, payload, qos=1, properties=props)
        return correlation

    async def one_final(self, correlation: bytes, timeout: float = 10.0) -> Any:
        await eventually(lambda: correlation in self.finals, timeout, f"a reply to {correlation!r}")
        await asyncio.sleep(0.05)  # a second final reply would be a bug
        got = self.finals.pop(correlation)
        assert len(got) == 1, got
        assert got[0] != "undecodable"
        return got[0]


@contextlib.asynccontextmanager
async def _agents(stack: Stack, broker: MosquittoBroker, tmp: Path) -> AsyncIterator[None]:
    engine = SimulatedEngine(
        SimulatedEngineConfig(profile="jetson-orin-nano", decode_tps=5000, prefill_tps=50000)
    )
    config = GatewayConfig.model_validate(
        {
            "gateway_id": stack.gateway_id,
            "bus": bus_settings(broker).model_dump(),
            "http_port": 0,
            "capability": stack.prefix,
            "ledger_url": f"sqlite:///{tmp}/ledger.sqlite3",
            "cache_enabled": False,
            "edge_timeout_s": 5,
            "cloud": {"enabled": False},
        }
    )
    async with (
        running_node(
            broker,
            engine,
            stack.node_id,
            capabilities=[stack.prefix],
            expertise=["health"],  # serves knowledge/health/query from its knowledge base
            knowledge={"documents": ["health"]},
            data={"topics": [f"data/{stack.prefix}/#"]},
        ) as node,
        running_gateway(config) as gw,
        BusClient(bus_settings(broker), f"{stack.prefix}-fuzzer") as client,
        RpcClient(client) as rpc,
    ):
        stack.node, stack.gateway, stack.client, stack.rpc = node, gw, client, rpc
        await client.subscribe(reply_topic(client.client_id, "fuzz"), stack.on_reply)
        await eventually(
            lambda: gw.orchestrator.router.order(10, 10, "general") != [], 10, "gateway sees node"
        )
        yield


@pytest.fixture(scope="module")
def stack(mosquitto: MosquittoBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-agents", daemon=True)
    thread.start()
    prefix = f"fz{secrets.token_hex(3)}"
    s = Stack(loop, prefix, f"{prefix}-node", f"{prefix}-gw")
    started = asyncio.Event()
    stop = asyncio.Event()

    async def lifetime() -> None:
        async with _agents(s, mosquitto, tmp_path_factory.mktemp("fuzz")):
            started.set()
            await stop.wait()

    task = asyncio.run_coroutine_threadsafe(lifetime(), loop)
    try:
        s.run(asyncio.wait_for(started.wait(), 60), 70)
        yield s
    finally:
        loop.call_soon_threadsafe(stop.set)
        task.result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _request_topics(s: Stack) -> list[str]:
    return [
        node_request_topic(s.node_id),
        capability_request_topic(s.prefix),  # the node's pool ($share/{cap}/...)
        "computation/query/request",  # the gateway's MQTT ingress
        knowledge_query_topic("health"),  # the node as an expert ($share/knowledge/...)
    ]


def _silent_topics(s: Stack) -> list[str]:
    return [
        f"slm/parameters/{s.node.model_id}/temperature",  # node: live parameters
        f"slm/nodes/{s.node_id}/state",  # node: its own state (stale-will repair)
        f"slm/nodes/{s.prefix}-ghost/birth",  # gateway: CMS mirror and node directory
        f"slm/nodes/{s.prefix}-ghost/load",
        f"slm/tenants/{s.prefix}/usage_limit",  # gateway: tenant limits
        reply_topic(s.gateway_id, "rpc"),  # gateway: replies from nodes
        reply_topic(s.gateway_id, "cms-sync"),
        reply_topic(s.node_id, "cms-sync"),
        f"data/{s.prefix}/crowd/{s.prefix}-cam",  # node's data follower, gateway's streams
        f"data/{s.prefix}/events/{s.prefix}-cam",
    ]


@FUZZ
@given(
    which=st.integers(0, 3),
    payload=payloads,
    content_type=CONTENT_TYPES,
    expiry=st.none() | st.sampled_from([2, 30, 3600]),
)
def test_request_topics_answer_everything_once(
    stack: Stack, which: int, payload: bytes, content_type: str | None, expiry: int | None
) -> None:
    topic = _request_topics(stack)[which]

    async def case() -> Any:
        correlation = await stack.send(topic, payload, content_type, expiry, reply=True)
        return await stack.one_final(correlation)

    reply = stack.run(case())
    if not isinstance(reply, Result):
        assert isinstance(reply, ErrorReply)
        assert reply.code.value in {
            "bad_request", "too_large", "overloaded", "expired", "not_found", "unavailable",
        }, reply  # fmt: skip


@FUZZ
@given(
    which=st.integers(0, 9),
    payload=payloads,
    content_type=CONTENT_TYPES,
    retain=st.booleans(),
)
def test_topics_without_response_survive_anything(
    stack: Stack, which: int, payload: bytes, content_type: str | None, retain: bool
) -> None:
    topic = _silent_topics(stack)[which]

    async def case() -> None:
        assert stack.client is not None
        props = publish_properties(content_type=content_type or None)
        await stack.client.publish(topic, payload, qos=1, retain=retain, properties=props)

    stack.run(case())


def test_agents_alive_after_fuzzing_and_oversized_refused(stack: Stack) -> None:
    async def check() -> None:
        assert stack.client is not None
        assert stack.rpc is not None
        # clear what the fuzzer retained, then both agents still serve
        for topic in _silent_topics(stack):
            await stack.client.publish(topic, b"", qos=1, retain=True)
        question = Chat(messages=(ChatMessage("user", "still there?"),), max_tokens=8)
        got = await stack.rpc.call(node_request_topic(stack.node_id), question, timeout=10)
        assert got.node == stack.node_id
        via_gateway = await stack.rpc.call("computation/query/request", question, timeout=20)
        assert via_gateway.text
        expert = await stack.rpc.call(knowledge_query_topic("health"), question, timeout=20)
        assert expert.meta["knowledge"]["role"] == "expert"
        with pytest.raises(PublishRefused) as refused:
            await stack.client.publish(
                node_request_topic(stack.node_id), b"x" * (MAX_PAYLOAD_BYTES + 1), qos=1
            )
        assert refused.value.reason == 0x95
        assert stack.client.is_connected
        assert stack.node.metrics.requests_total > 0

    stack.run(check(), 60)
