"""``edgecollab up``: the local testbed demo.

Starts Mosquitto from the project's configuration, two edge nodes (a real
llama.cpp node on SmolLM2-135M-Instruct on this machine's CPU, and a simulated
Jetson Orin Nano whose answers say they are simulated), a local stand-in for the
cloud (llama-cpp-python's OpenAI-compatible server, also on SmolLM2) and the
gateway. Then, as a user would see it: a streamed answer from the real model
with its confidence; requests balanced over the ``chat`` pool; a request refused
at once when the real node is busy; a malformed request answered with an error;
a live parameter change through the CMS; the CMS itself; and the gateway through
the ``openai`` SDK: an edge answer, an escalation to the cloud for a strict
tenant, a cached repeat, and the ledger's per-tenant report. Then the paper's two
scenarios on one testbed (more nodes on the same SmolLM2 engine, simulated
wearable, camera and roadside-unit agents replaying data, a scenario gateway):
health (sequential, knowledge cooperation, a clinician report) and urban
(parallel, quorum, SLM aggregation), and a closing summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import openai

from broker import (
    JSON,
    BusClient,
    BusSettings,
    Chat,
    Cms,
    Inbound,
    MosquittoBroker,
    Result,
    RpcClient,
    RpcError,
    nodes_from,
    publish_properties,
)
from broker.topics import capability_request_topic, cms_key, node_request_topic, reply_topic
from edge_node.agent import NodeAgent
from edge_node.config import NodeConfig
from edge_node.engines import build_engine
from edge_node.engines.base import Engine
from edgecollab.cloud_standin import CLOUD_MODEL, running_cloud_server
from edgecollab.live import serve_dashboard
from edgecollab.scenarios import health, urban
from edgecollab.scenarios.cli import DEFAULT_REPORTS, union
from edgecollab.scenarios.show import ScenarioSummary
from edgecollab.scenarios.testbed import start_testbed
from gateway.config import GatewayConfig
from gateway.ledger import Ledger
from gateway.service import running_gateway

REAL, SIMULATED = "smollm2-cpu", "sim-orin-nano"
MODEL = "smollm2-135m-instruct"


def add_up_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("up", help="run the local testbed demo")
    parser.add_argument("--port", type=int, default=0, help="broker port (0: a free one)")
    parser.add_argument("--serve", action="store_true", help="keep the testbed up until Ctrl-C")
    parser.add_argument("--question", default="Give two tips for running in hot weather.")
    parser.set_defaults(func=run_up)
    return parser


def _node_configs(port: int) -> list[NodeConfig]:
    bus = {"port": port}
    return [
        NodeConfig.model_validate(
            {
                "node_id": REAL,
                "bus": bus,
                "device": "this machine (CPU)",
                "engine": {"type": "llama_cpp", "model": MODEL},
                "expertise": ["general"],
                # 'qa' is the pool the demo's gateway uses: nodes with a real model only.
                "capabilities": ["chat", "qa"],
            }
        ),
        NodeConfig.model_validate(
            {
                "node_id": SIMULATED,
                "bus": bus,
                "device": "jetson-orin-nano (simulated)",
                "engine": {"type": "simulated", "profile": "jetson-orin-nano"},
                "expertise": ["health"],
            }
        ),
    ]


async def _demo(port: int, question: str, serve: bool, ledger_dir: Path) -> int:
    # SIGTERM ends the demo like Ctrl-C: nodes drain and say offline, the broker stops.
    main = asyncio.current_task()
    assert main is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    started = time.perf_counter()
    stop = asyncio.Event()
    agents = []
    for config in _node_configs(port):
        engine = await asyncio.to_thread(build_engine, config.engine)
        agents.append(NodeAgent(config, engine))
    tasks = [asyncio.create_task(a.run(stop), name=f"node:{a.config.node_id}") for a in agents]
    try:
        await asyncio.wait_for(asyncio.gather(*(a.ready.wait() for a in agents)), 30)
        print(f"nodes up: {REAL} (llama.cpp, {MODEL}), {SIMULATED} (simulated)")
        async with BusClient(BusSettings(port=port), "demo-user") as bus, RpcClient(bus) as rpc:
            await _stream_answer(rpc, question)
            await _pool(rpc)
            await _refusal(rpc)
            await _malformed_request(bus)
            await _live_parameter(rpc)
            await _show_cms(bus)
            with running_cloud_server() as cloud_url:
                await _through_gateway(port, bus, ledger_dir, cloud_url)
                summaries = await _scenarios(port, agents[0].engine, cloud_url)
            _closing_summary(agents, summaries, time.perf_counter() - started)
        if serve:  # a gateway with the dashboard, and simulated devices, until Ctrl-C
            await serve_dashboard(port, ledger_dir)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for agent in agents:
            agent.engine.close()
    return 0


async def _stream_answer(rpc: RpcClient, question: str) -> None:
    print(f"\n> user asks {REAL} (stream): {question!r}\n< ", end="", flush=True)
    started = time.perf_counter()
    request = Chat.user(question, max_tokens=96, stream=True)
    async for reply in rpc.stream(node_request_topic(REAL), request, timeout=60):
        if isinstance(reply, Result):
            took = (time.perf_counter() - started) * 1e3
            print(
                f"\n< {reply.usage.completion_tokens} tokens in {took:.0f} ms "
                f"(first after {reply.timings['ttft_ms']:.0f} ms), "
                f"confidence {reply.confidence:.2f}, finish {reply.finish_reason}"
            )
        else:
            print(reply.text, end="", flush=True)


async def _pool(rpc: RpcClient) -> None:
    print("\n> four requests to the shared 'chat' pool (computation/chat/request):")
    results = await asyncio.gather(
        *(
            rpc.call(
                capability_request_topic("chat"),
                Chat.user(f"Say hello #{i}.", max_tokens=12),
                timeout=60,
            )
            for i in range(4)
        ),
        return_exceptions=True,
    )
    for i, result in enumerate(results):
        if isinstance(result, Result):
            label = " [simulated]" if result.meta.get("simulated") else ""
            print(f"< #{i} answered by {result.node}{label}: {result.text.strip()[:60]!r}")
        else:
            print(f"< #{i} refused: {result}")


async def _refusal(rpc: RpcClient) -> None:
    print(f"\n> two requests at once to {REAL} (one llama.cpp slot):")
    results = await asyncio.gather(
        *(
            rpc.call(
                node_request_topic(REAL), Chat.user("Count to twenty.", max_tokens=48), timeout=60
            )
            for _ in range(2)
        ),
        return_exceptions=True,
    )
    for result in results:
        if isinstance(result, RpcError):
            print(f"< refused at once: {result}")
        elif isinstance(result, Result):
            print(f"< served: {result.usage.completion_tokens} tokens")


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
    await bus.publish(node_request_topic(REAL), bad, properties=props)
    print(f"< error reply: {(await asyncio.wait_for(got, 5)).decode()}")
    await sub.cancel()


async def _live_parameter(rpc: RpcClient) -> None:
    key = cms_key("parameters", MODEL, "temperature")
    print(f"\n> operator sets {key} = 0 (greedy) in the CMS")
    cms = Cms(rpc.bus)
    await cms.put(key, 0.0)
    await asyncio.sleep(0.2)
    result = await rpc.call(
        node_request_topic(REAL), Chat.user("Name a colour.", max_tokens=8), timeout=60
    )
    print(f"< next answer used sampling {result.meta['sampling']}")
    await cms.delete(key)


async def _show_cms(bus: BusClient) -> None:
    await asyncio.sleep(0.5)  # let the debounced load records settle
    async with Cms(bus).mirror("slm") as mirror:
        print("\nCMS: nodes")
        for node, status in nodes_from(mirror.items()).items():
            model = status.info.get("models", [{}])[0]
            load = mirror.get(f"slm/nodes/{node}/load") or {}
            print(
                f"  {node}: {'online' if status.online else 'offline'}, "
                f"{model.get('id')} ({model.get('parameters')}, {model.get('quantization')}), "
                f"device {status.info.get('device')}, free slots {load.get('free_slots')}"
            )
        print("CMS: other entries")
        for key, entry in mirror.items():
            if not key.startswith("slm/nodes/"):
                print(f"  {key} = {json.dumps(entry.value, separators=(',', ':'))}")


async def _through_gateway(port: int, bus: BusClient, ledger_dir: Path, cloud_url: str) -> None:
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "demo-gateway",
            "bus": {"port": port},
            "http_port": 0,
            "capability": "qa",  # the simulated node writes no real text: not in this pool
            "ledger_url": f"sqlite:///{ledger_dir}/ledger.sqlite3",
            "cloud": {"base_url": cloud_url, "model": CLOUD_MODEL},
        }
    )
    async with running_gateway(config) as gw:
        url = f"http://127.0.0.1:{gw.port}/v1"
        print(
            f"\ngateway: {url} (policy {config.policy}); cloud stand-in: {cloud_url} "
            "(llama-cpp-python server on SmolLM2, standing in for a cloud LLM)"
        )
        await asyncio.sleep(0.3)  # the gateway's mirror follows the nodes
        client = openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
        question: list[Any] = [
            {
                "role": "user",
                "content": "What is the capital of France? Answer in one sentence.",
            }
        ]
        key = cms_key("tenants", "strict-clinic", "confidence_threshold")
        await Cms(bus).put(key, 0.99)
        await asyncio.sleep(0.3)
        try:
            for label, tenant in (
                ("clinic-a", "clinic-a"),
                ("clinic-a again", "clinic-a"),
                ("strict-clinic (threshold 0.99)", "strict-clinic"),
            ):
                reply = await client.chat.completions.create(
                    model="edgecollab",
                    messages=question,
                    max_tokens=24,
                    temperature=0.0,
                    extra_headers={"X-Tenant": tenant},
                )
                extra = (reply.model_extra or {})["edgecollab"]
                via = f" via {extra['node']}" if extra["node"] else ""
                why = f", escalation: {extra['escalation']}" if extra["escalation"] else ""
                text = (reply.choices[0].message.content or "").strip()[:70]
                print(f"> openai SDK, tenant {label}\n< {extra['route']}{via}{why}: {text!r}")
        finally:
            await client.close()
            await Cms(bus).delete(key)
    print("\nledger (edgecollab ledger report):")
    async with Ledger(config.ledger_url) as ledger:
        for row in await ledger.summary():
            print(
                f"  {row.tenant}: {row.requests} requests, edge {row.edge}, "
                f"cloud {row.cloud}, cache {row.cache}, cloud cost ${row.cost_usd:.4f}, "
                f"edge saved ${row.savings_usd:.4f}"
            )


async def _scenarios(port: int, engine: Engine, cloud_url: str) -> list[ScenarioSummary]:
    """Both of the paper's scenarios on one testbed: nodes, simulated devices, a gateway."""
    bus = BusSettings(port=port)
    nodes = union(health.NODES, urban.NODES)
    devices = [*health.devices(bus), *urban.devices(bus)]
    print("\n=== the paper's scenarios ===")
    async with start_testbed(bus, engine, nodes, devices, cloud_url=cloud_url) as bed:
        print(
            f"testbed: {len(bed.nodes)} more nodes on the same SmolLM2 engine "
            f"({', '.join(bed.nodes)}); devices {', '.join(bed.devices)} (simulated: replayed "
            "recordings and synthetic streams); scenario gateway with the cloud stand-in"
        )
        print("\n--- scenario health (sequential) ---")
        outcome, report = await health.run_health(bed, max_tokens=64, report_dir=DEFAULT_REPORTS)
        summaries = [ScenarioSummary.of("health", outcome, str(report))]
        print("\n--- scenario urban (parallel) ---")
        summaries.append(ScenarioSummary.of("urban", await urban.run_urban(bed, max_tokens=64)))
        published = {d: s.stats["published"] for d, s in bed.devices.items()}
        print(f"\ndevices published (windows): {published}")
    return summaries


def _closing_summary(
    agents: list[NodeAgent], summaries: list[ScenarioSummary], seconds: float
) -> None:
    print("\n=== summary ===")
    print(
        f"edge nodes: {len(agents)} demo nodes plus the scenario nodes; "
        "all requests above answered at the edge unless marked cloud"
    )
    for s in summaries:
        cloud = ", ".join(s.cloud_steps) or "nothing"
        extra = f"; experts consulted: {', '.join(s.consulted)}" if s.consulted else ""
        extra += f"; report {s.artefact}" if s.artefact else ""
        print(
            f"  {s.name} ({s.mode}): {s.status}, {s.steps} subtasks by {', '.join(s.agents)}; "
            f"{s.latency_s:.1f} s, {s.tokens} tokens; cloud: {cloud}{extra}"
        )
    print(f"demo took {seconds:.0f} s")


def run_up(args: argparse.Namespace) -> int:
    with MosquittoBroker(port=args.port) as broker, tempfile.TemporaryDirectory() as tmp:
        print(f"Mosquitto {broker.url} (config: mosquitto.conf, pid {broker.pid})")
        try:
            return asyncio.run(_demo(broker.port, args.question, args.serve, Path(tmp)))
        except (KeyboardInterrupt, asyncio.CancelledError):
            return 0
