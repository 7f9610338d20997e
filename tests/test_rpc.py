"""Request/response through a real Mosquitto: results, streams, errors, deadlines."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from broker import (
    JSON,
    BusClient,
    Chat,
    ErrorCode,
    Inbound,
    Request,
    Result,
    RpcClient,
    RpcError,
    RpcServer,
    RpcTimeout,
    publish_properties,
)
from broker.topics import capability_request_topic, capability_shared_filter, node_request_topic
from tests.helpers import eventually, settings


def _text(req: Request) -> str:
    assert isinstance(req.body, Chat)
    return req.body.messages[-1].content


async def echo(req: Request) -> Result:
    return Result(text=_text(req), node="echo")


async def streamer(req: Request) -> Result:
    words = _text(req).split()
    for word in words:
        await req.chunk(word)
    return Result(text=" ".join(words))


@pytest.fixture
async def pair(mosquitto, prefix):
    async with (
        BusClient(settings(mosquitto), f"{prefix}-srv") as srv,
        BusClient(settings(mosquitto), f"{prefix}-cli") as cli,
        RpcClient(cli) as rpc,
    ):
        yield RpcServer(srv), rpc, node_request_topic(prefix)


async def test_call_returns_the_result(pair):
    server, rpc, topic = pair
    await server.serve(topic, echo)
    result = await rpc.call(topic, Chat.user("hello"), timeout=5)
    assert result.text == "hello"
    assert result.node == "echo"
    assert rpc.pending == 0


async def test_stream_yields_chunks_in_order_then_the_result(pair):
    server, rpc, topic = pair
    await server.serve(topic, streamer)
    words = [f"w{i}" for i in range(50)]
    replies = [r async for r in rpc.stream(topic, Chat.user(" ".join(words)), timeout=5)]
    assert [r.text for r in replies[:-1]] == words
    assert [r.seq for r in replies[:-1]] == list(range(50))
    final = replies[-1]
    assert isinstance(final, Result)
    assert final.chunks == 50
    assert final.text == " ".join(words)


async def test_many_concurrent_calls_each_get_their_own_answer(pair):
    server, rpc, topic = pair

    async def slow_echo(req: Request) -> Result:
        await asyncio.sleep(0.01)
        return Result(text=_text(req))

    await server.serve(topic, slow_echo)
    results = await asyncio.gather(
        *(rpc.call(topic, Chat.user(f"q{i}"), timeout=20) for i in range(300))
    )
    assert [r.text for r in results] == [f"q{i}" for i in range(300)]
    assert rpc.pending == 0


async def test_timeout_raises_and_forgets_the_call(pair):
    server, rpc, topic = pair
    started = asyncio.Event()

    async def sleepy(_req: Request) -> Result:
        started.set()
        await asyncio.sleep(30)
        return Result(text="too late")

    await server.serve(topic, sleepy)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(RpcTimeout) as info:
        await rpc.call(topic, Chat.user("hi"), timeout=1.0)
    assert 0.9 < loop.time() - t0 < 2.0
    assert info.value.code is ErrorCode.EXPIRED
    assert rpc.pending == 0
    assert started.is_set()


async def test_server_cancels_work_past_the_deadline(pair):
    server, rpc, topic = pair
    cancelled = asyncio.Event()

    async def sleepy(_req: Request) -> Result:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return Result(text="never")

    await server.serve(topic, sleepy)
    with pytest.raises(RpcError):
        await rpc.call(topic, Chat.user("hi"), timeout=1.0)
    await asyncio.wait_for(cancelled.wait(), 3)
    await eventually(lambda: server.stats["error_expired"] == 1, what="expired counted")


async def test_expired_request_is_never_started(mosquitto, prefix):
    """A node away while a request waits in its session: the broker drops it on expiry."""
    calls: list[str] = []

    async def record(req: Request) -> Result:
        calls.append(_text(req))
        return Result(text="ok")

    node_settings = settings(mosquitto, session_expiry_s=60)
    topic = node_request_topic(prefix)
    async with BusClient(node_settings, f"{prefix}-node") as node:
        await RpcServer(node).serve(topic, record)
    async with BusClient(settings(mosquitto), f"{prefix}-cli") as cli, RpcClient(cli) as rpc:
        with pytest.raises(RpcTimeout):
            await rpc.call(topic, Chat.user("stale"), timeout=1.0)
        # MQTT's Message Expiry counts whole seconds and Mosquitto drops a message only
        # once a full second past its expiry second has begun: wait that out.
        await asyncio.sleep(2.1)
        async with BusClient(node_settings, f"{prefix}-node") as node:
            await RpcServer(node).serve(topic, record)
            fresh = await rpc.call(topic, Chat.user("fresh"), timeout=5)
    assert fresh.text == "ok"
    assert calls == ["fresh"]


async def test_error_replies_carry_their_code(pair):
    server, rpc, topic = pair

    async def refuse(_req: Request) -> Result:
        raise RpcError(ErrorCode.OVERLOADED, "no free slot")

    await server.serve(topic, refuse)
    with pytest.raises(RpcError) as info:
        await rpc.call(topic, Chat.user("hi"), timeout=5)
    assert info.value.code is ErrorCode.OVERLOADED
    assert "no free slot" in info.value.message


async def test_handler_crash_is_internal_and_the_server_keeps_serving(pair):
    server, rpc, topic = pair

    async def fragile(req: Request) -> Result:
        if _text(req) == "crash":
            raise ZeroDivisionError("bug")
        return Result(text="fine")

    await server.serve(topic, fragile)
    with pytest.raises(RpcError) as info:
        await rpc.call(topic, Chat.user("crash"), timeout=5)
    assert info.value.code is ErrorCode.INTERNAL
    assert (await rpc.call(topic, Chat.user("again"), timeout=5)).text == "fine"


async def _raw_request(
    bus: BusClient, topic: str, payload: bytes, *, content_type: str | None, response: bool = True
) -> dict[str, Any] | None:
    reply_to = f"reply/{bus.client_id}/raw"
    got: asyncio.Future[Inbound] = asyncio.get_running_loop().create_future()

    def on_reply(msg: Inbound) -> None:
        if not got.done():
            got.set_result(msg)

    sub = await bus.subscribe(reply_to, on_reply)
    props = publish_properties(
        content_type=content_type,
        response_topic=reply_to if response else None,
        correlation=b"raw-1",
        expiry_s=5,
    )
    await bus.publish(topic, payload, properties=props)
    try:
        msg = await asyncio.wait_for(got, 1.0 if not response else 5.0)
    except TimeoutError:
        return None
    finally:
        await sub.cancel()
    assert msg.correlation == b"raw-1"
    return json.loads(msg.payload) if msg.content_type == JSON else {"cbor": msg.payload}


@pytest.mark.parametrize(
    ("payload", "content_type", "code"),
    [
        (b"{not json", JSON, "bad_request"),
        (b'{"v":2,"kind":"chat","messages":[{"role":"user","content":"x"}]}', JSON, "bad_request"),
        (b'{"v":1,"kind":"chat","messages":[],"max_tokens":5}', JSON, "bad_request"),
        (
            b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"x"}],"max_token":5}',
            JSON,
            "bad_request",
        ),
        (b'{"v":1,"kind":"teleport"}', JSON, "bad_request"),
    ],
)
async def test_malformed_requests_get_error_replies(pair, payload, content_type, code):
    server, rpc, topic = pair
    await server.serve(topic, echo)
    reply = await _raw_request(rpc.bus, topic, payload, content_type=content_type)
    assert reply is not None
    assert reply["kind"] == "error"
    assert reply["code"] == code
    assert reply["message"]
    # and the server still serves
    assert (await rpc.call(topic, Chat.user("ok"), timeout=5)).text == "ok"


async def test_json_request_gets_a_json_reply(pair):
    server, rpc, topic = pair
    await server.serve(topic, echo)
    payload = b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"hej"}]}'
    reply = await _raw_request(rpc.bus, topic, payload, content_type=JSON)
    assert reply == {
        "v": 1,
        "kind": "result",
        "text": "hej",
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "chunks": 0,
        "node": "echo",
    }


async def test_requests_without_a_usable_response_topic_are_dropped_and_counted(pair):
    server, rpc, topic = pair
    await server.serve(topic, echo)
    ok = b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"x"}]}'
    assert await _raw_request(rpc.bus, topic, ok, content_type=JSON, response=False) is None
    props = publish_properties(
        content_type=JSON, response_topic="slm/nodes/victim/state", correlation=b"x", expiry_s=5
    )
    await rpc.bus.publish(topic, ok, properties=props)
    await eventually(lambda: server.stats["no_response_topic"] == 2, what="both counted")
    assert (await rpc.call(topic, Chat.user("still"), timeout=5)).text == "still"


async def test_shared_subscription_balances_and_answers_each_call_once(mosquitto, prefix):
    capability = f"{prefix}cap"
    served: dict[str, int] = {"a": 0, "b": 0}

    def make(name: str):
        async def handler(req: Request) -> Result:
            served[name] += 1
            await asyncio.sleep(0.005)
            return Result(text=_text(req), node=name)

        return handler

    async with (
        BusClient(settings(mosquitto), f"{prefix}-a") as a,
        BusClient(settings(mosquitto), f"{prefix}-b") as b,
        BusClient(settings(mosquitto), f"{prefix}-c") as c,
        RpcClient(c) as rpc,
    ):
        await RpcServer(a).serve(capability_shared_filter(capability), make("a"))
        await RpcServer(b).serve(capability_shared_filter(capability), make("b"))
        topic = capability_request_topic(capability)
        results = await asyncio.gather(
            *(rpc.call(topic, Chat.user(f"q{i}"), timeout=10) for i in range(60))
        )
    assert [r.text for r in results] == [f"q{i}" for i in range(60)]
    assert served["a"] + served["b"] == 60
    assert served["a"] > 0
    assert served["b"] > 0
    assert rpc.stats["late_replies"] == 0
