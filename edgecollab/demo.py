"""``edgecollab up``: the local testbed demo.

Starts Mosquitto from the project's configuration, starts a demo responder agent
that advertises itself in the CMS and serves the ``echo`` capability through the
shared subscription, sends it a streamed request, shows a malformed request being
answered with an error while the agent keeps serving, and prints the CMS.

The responder has no model: it streams the words of the question back. It stands
in until the edge node agent (llama.cpp) is part of the testbed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time

from broker import (
    JSON,
    BusClient,
    BusSettings,
    Chat,
    Cms,
    ErrorCode,
    Inbound,
    MosquittoBroker,
    Presence,
    Request,
    Result,
    RpcClient,
    RpcError,
    RpcServer,
    Usage,
    nodes_from,
    publish_properties,
)
from broker.cms_cli import render
from broker.topics import (
    capability_request_topic,
    capability_shared_filter,
    cms_key,
    reply_topic,
)

NODE_ID = "demo-responder"
CAPABILITY = "echo"


def add_up_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("up", help="run the local testbed demo")
    parser.add_argument("--port", type=int, default=0, help="broker port (0: a free one)")
    parser.add_argument(
        "--serve", action="store_true", help="keep the testbed running until Ctrl-C"
    )
    parser.add_argument("--question", default="How is the air quality near the stadium tonight?")
    parser.set_defaults(func=run_up)
    return parser


async def _responder(req: Request) -> Result:
    """Stream the question's words back, as a model would stream tokens."""
    body = req.body
    if not isinstance(body, Chat):
        raise RpcError(ErrorCode.BAD_REQUEST, f"expected a chat request, got {body.KIND}")
    words = body.messages[-1].content.split()
    started = time.perf_counter()
    for word in words[: body.max_tokens]:
        await asyncio.sleep(0.02)  # as if decoding a token
        if body.stream:
            await req.chunk(word + " ")
    text = " ".join(words[: body.max_tokens])
    return Result(
        text=text,
        usage=Usage(prompt_tokens=len(words), completion_tokens=min(len(words), body.max_tokens)),
        node=NODE_ID,
        model="none (demo responder echoes words)",
        finish_reason="stop",
        timings={"total_ms": (time.perf_counter() - started) * 1e3},
    )


async def _demo(port: int, question: str, serve: bool) -> int:
    # SIGTERM ends the demo like Ctrl-C: agents disconnect, the broker is stopped.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    settings = BusSettings(port=port)
    presence = Presence(
        NODE_ID,
        lambda: {
            "capabilities": [CAPABILITY],
            "device": "this machine (no model: demo responder)",
            "limits": {"concurrency": 4},
            "expertise": [],
            "version": "0.1.0",
        },
    )
    async with BusClient(settings, NODE_ID, will=presence.will) as node_bus:
        await RpcServer(node_bus).serve(capability_shared_filter(CAPABILITY), _responder)
        node_cms = Cms(node_bus)
        await presence.attach(node_bus, node_cms)
        await node_cms.put(cms_key("configs", NODE_ID, "version"), "0.1.0")
        async with BusClient(settings, "demo-user") as user_bus, RpcClient(user_bus) as rpc:
            print(f"\n> user asks on {capability_request_topic(CAPABILITY)}: {question!r}")
            print("< streamed: ", end="", flush=True)
            started = time.perf_counter()
            request = Chat.user(question, max_tokens=64, stream=True)
            async for reply in rpc.stream(
                capability_request_topic(CAPABILITY), request, timeout=10
            ):
                if isinstance(reply, Result):
                    elapsed = (time.perf_counter() - started) * 1e3
                    print(
                        f"\n< result from {reply.node} after {elapsed:.1f} ms, "
                        f"{reply.chunks} chunks, usage {reply.usage}"
                    )
                else:
                    print(reply.text, end="", flush=True)
            await _malformed_request(user_bus)
            again = await rpc.call(
                capability_request_topic(CAPABILITY), Chat.user("still serving"), timeout=5
            )
            print(f"< the responder keeps serving: {again.text!r}")
            async with Cms(user_bus).mirror("slm") as mirror:
                print("\nCMS (retained entries under slm/):")
                for key, entry in mirror.items():
                    print(f"  {key}  {json.dumps(render(entry), separators=(',', ':'))}")
                for node, status in nodes_from(mirror.items()).items():
                    print(
                        f"  node {node}: {'online' if status.online else 'offline'} "
                        f"({status.reason}), session {status.session}"
                    )
        if serve:
            print(f"\nTestbed up. Try: edgecollab cms --port {port} watch slm   (Ctrl-C stops)")
            await asyncio.Event().wait()
    return 0


async def _malformed_request(bus: BusClient) -> None:
    """Publish JSON with a typo, as a hand-written mosquitto_pub would, and show the reply."""
    print("\n> a malformed request: JSON with 'max_token' for 'max_tokens'")
    bad = b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"hi"}],"max_token":5}'
    reply_to = reply_topic(bus.client_id, "raw")
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def on_reply(msg: Inbound) -> None:
        if not got.done():
            got.set_result(msg.payload)

    sub = await bus.subscribe(reply_to, on_reply)
    props = publish_properties(
        content_type=JSON, response_topic=reply_to, correlation=b"demo", expiry_s=5
    )
    await bus.publish(capability_request_topic(CAPABILITY), bad, properties=props)
    print(f"< error reply: {(await asyncio.wait_for(got, 5)).decode()}")
    await sub.cancel()


def run_up(args: argparse.Namespace) -> int:
    with MosquittoBroker(port=args.port) as broker:
        print(f"Mosquitto {broker.url} (config: mosquitto.conf, pid {broker.pid})")
        try:
            return asyncio.run(_demo(broker.port, args.question, args.serve))
        except (KeyboardInterrupt, asyncio.CancelledError):
            return 0
