"""The allocation study through the real system, in compressed time.

One policy run: eight in-process edge node agents (``edge_node.agent.NodeAgent``)
on the simulated engine with the Orin profiles and ``time_scale = speedup``, a
real Mosquitto, the gateway's own parts (``NodeDirectory`` following the CMS,
``PolicyRouter`` or LiteLLM's Router, ``Orchestrator``, ``LedgerBooks`` on a SQLite
``Ledger`` with the GPT-4 ``PriceTable``, ``CloudClient``), and the seeded trace
replayed at ``speedup`` times real time.

Every clock of the system is compressed by the same factor: the engines' rates,
the nodes' load debounce (``load_interval_s = 0.2 / speedup``), the gateway's
nominal node rates, cost_aware's cloud model and latency objective (the gateway
works in wall time), the cloud stand-in's latency and LiteLLM's minute windows.
What cannot be compressed is the system's own overhead (MQTT round trips, Python):
a 1 ms round trip counts as ``speedup`` ms of simulated time, so latencies here are a little
higher than the model's.

The cloud is a stand-in, labelled simulated: an ``httpx`` transport under the real
``gateway.cloud.CloudClient`` that answers OpenAI-shaped JSON with exactly the
requested ``max_tokens`` after ``(0.8 s + tokens / 50 tok/s) / speedup``; its usage
goes through ``LedgerBooks`` -> ``PriceTable`` into the ledger, and the cloud cost
reported is what the ledger holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.allocation_sim import (
    BUDGET,
    CLOUD_BASE_S,
    CLOUD_TPS,
    MAX_ATTEMPTS,
    MAX_TOKENS,
    MIX,
    STALENESS_S,
    PolicyResult,
    percentile_ms,
)
from benchmarks.trace import Req
from broker import BusClient, BusSettings, ChatMessage, Cms, ErrorCode, Result, RpcClient, RpcError
from edge_node.agent import NodeAgent
from edge_node.config import NodeConfig
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from gateway.books import LedgerBooks
from gateway.cloud import CloudClient, CloudSettings
from gateway.ledger import Ledger
from gateway.nodes import NOMINAL_TPS, NodeDirectory
from gateway.orchestrator import Answer, GatewayError, Orchestrator, Query
from gateway.policies import CostAwarePolicy, make_policy
from gateway.pricing import PriceTable
from gateway.routing import PolicyRouter

CLOUD_MODEL = "gpt-4"
WORD = "word"
_COUNTER = SimulatedEngine(SimulatedEngineConfig(profile="raspberry-pi-5"))


def prompt_for(tokens: int) -> str:
    """A user message the simulated engine counts as ``tokens`` prompt tokens (+-1)."""
    words = max(1, round((tokens - 4) / 1.3))
    return " ".join([WORD] * words)


class SimulatedCloud(httpx.AsyncBaseTransport):
    """OpenAI-shaped answers with the requested token count, after the modelled latency."""

    def __init__(self, speedup: float) -> None:
        self.speedup = speedup
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        tokens = int(body.get("max_tokens") or 1)
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in body["messages"]]
        prompt_tokens = _COUNTER.count_prompt_tokens(messages)  # as the nodes count them
        self.calls += 1
        await asyncio.sleep((CLOUD_BASE_S + tokens / CLOUD_TPS) / self.speedup)
        answer = {
            "id": f"sim-{self.calls}",
            "object": "chat.completion",
            "model": body.get("model", CLOUD_MODEL),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "cloud " * tokens},
                    "finish_reason": "length",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": tokens,
                "total_tokens": prompt_tokens + tokens,
            },
            "simulated": True,
        }
        return httpx.Response(200, json=answer)


class ObservedRpc(RpcClient):
    """An RpcClient that measures each edge call's overhead (round trip - engine time).

    With a LiteLLM router it also tells the router how each request it routed ended.
    """

    def __init__(self, bus: BusClient, router: Any = None) -> None:
        super().__init__(bus)
        self.router = router
        self.overheads_s: list[float] = []

    async def call(self, topic: str, request: Any, **kwargs: Any) -> Result:
        held = None if self.router is None else self.router.sent()
        started = time.monotonic()
        try:
            result = await super().call(topic, request, **kwargs)
        except BaseException:
            if held is not None:
                self.router.outcome(held, None)
            raise
        engine_s = float(result.timings.get("total_ms", 0.0)) / 1e3
        self.overheads_s.append(max(0.0, time.monotonic() - started - engine_s))
        if held is not None:
            self.router.outcome(held, result.usage.prompt_tokens + result.usage.completion_tokens)
        return result


def node_configs(bus: BusSettings, run: str, speedup: float) -> list[NodeConfig]:
    """The eight nodes of :data:`MIX`, compressed by ``speedup``."""
    out = []
    for profile, count in MIX:
        for i in range(count):
            out.append(
                NodeConfig.model_validate(
                    {
                        "node_id": f"{run}-{profile}-{i}",
                        "bus": bus.model_dump(),
                        "engine": {
                            "type": "simulated",
                            "profile": profile,
                            "time_scale": speedup,
                            # answers are not streamed: only the last token's time
                            # matters (exact); batches every 10 ms spare the CPU
                            "tick_s": 0.01,
                        },
                        "capabilities": [f"{run}chat"],
                        "device": profile,
                        "limits": {"max_inflight_tokens": BUDGET, "max_tokens": MAX_TOKENS},
                        "load_interval_s": STALENESS_S / speedup,
                        "metrics_interval_s": 30.0,
                    }
                )
            )
    return out


@contextlib.asynccontextmanager
async def running_nodes(configs: Sequence[NodeConfig], stuck: list[str]) -> Any:
    """The node agents until the block ends; any still running 30 s after stop is
    cancelled and its id appended to ``stuck`` (reported, so it is not silent)."""
    agents = [NodeAgent(c, SimulatedEngine(c.engine)) for c in configs]  # type: ignore[arg-type]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(a.run(stop), name=f"node:{a.config.node_id}") for a in agents]
    try:
        await asyncio.wait_for(asyncio.gather(*(a.ready.wait() for a in agents)), 30)
        yield agents
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=30)
        for task in pending:
            stuck.append(task.get_name())
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_policy(
    name: str,
    trace: Sequence[Req],
    bus: BusSettings,
    *,
    speedup: float,
    run: str,
    ledger_dir: Path | None = None,
) -> tuple[PolicyResult, dict[str, Any]]:
    """Replay ``trace`` through the system with policy ``name``; its result and extras."""
    configs = node_configs(bus, run, speedup)
    stuck: list[str] = []
    t0 = [time.monotonic()]

    def sim_clock() -> float:
        return (time.monotonic() - t0[0]) * speedup

    with tempfile.TemporaryDirectory(dir=ledger_dir) as tmp:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(running_nodes(configs, stuck))
            gw = await stack.enter_async_context(BusClient(bus, f"{run}-gateway"))
            mirror = await stack.enter_async_context(Cms(gw).mirror("slm"))
            # The gateway works in wall time: nominal rates x speedup (the nodes' measured
            # tokens/s are wall rates too), and cost_aware's cloud model likewise.
            nominal = {k: (s * speedup, a * speedup) for k, (s, a) in NOMINAL_TPS.items()}
            # settle_s covers the real MQTT transit of a request and of the load record
            # that reflects it: real time, not compressed (10 ms; the default 50 ms
            # would count a reservation twice for 50 x speedup ms of simulated time)
            directory = await stack.enter_async_context(
                NodeDirectory(mirror, nominal_tps=nominal, settle_s=0.01)
            )
            router: Any
            if name.startswith("litellm_"):
                from benchmarks.litellm_router import LiteLLMRouter  # noqa: PLC0415

                router = LiteLLMRouter(
                    name, [(c.node_id, c.device) for c in configs], clock=sim_clock
                )
                rpc = ObservedRpc(gw, router)
            else:
                policy = make_policy(name)
                if isinstance(policy, CostAwarePolicy):
                    policy = policy.time_scaled(speedup)
                router = PolicyRouter(directory, policy, f"{run}chat")
                rpc = ObservedRpc(gw)
            await stack.enter_async_context(rpc)
            ledger = await stack.enter_async_context(Ledger(f"sqlite:///{tmp}/ledger.db"))
            transport = SimulatedCloud(speedup)
            cloud = await stack.enter_async_context(
                CloudClient(
                    CloudSettings(base_url="http://cloud.simulated/v1", model=CLOUD_MODEL),
                    transport=transport,
                )
            )
            orchestrator = Orchestrator(
                rpc=rpc,
                router=router,
                books=LedgerBooks(ledger, mirror, PriceTable(), cloud_model=CLOUD_MODEL),
                classify=lambda _text: ("general", 0.0),
                cloud=cloud,
                edge_timeout_s=max(2.0, 120.0 / speedup),
                max_edge_attempts=MAX_ATTEMPTS,
            )
            online = {c.node_id for c in configs}
            async with asyncio.timeout(30):  # every node in the gateway's directory
                while {v.node_id for v in directory.candidates(f"{run}chat")} != online:  # noqa: ASYNC110 - the directory has no event for this
                    await asyncio.sleep(0.01)
            answers = await _replay(orchestrator, trace, speedup, t0, run)
            summary = {s.tenant: s for s in await ledger.summary()}[run]
            lag = max(a[2] for a in answers)
    latencies = sorted(a[1] for a in answers)
    edge = [a for a in answers if a[0] is not None and a[0].route == "edge"]
    clouds = [a for a in answers if a[0] is not None and a[0].route == "cloud"]
    refused = sum(
        1 for a in answers if a[0] is not None for x in a[0].attempts if "overloaded" in x
    )
    result: PolicyResult = {
        "processed": len(edge),
        "rejected": refused,
        "cloud_redirects": len(clouds),
        "cloud_cost_usd": round(summary.cost_usd, 4),
        "p50_ms": percentile_ms(latencies, 0.5),
        "p95_ms": percentile_ms(latencies, 0.95),
    }
    extra = {
        "sent": len(trace),
        "errors": sum(1 for a in answers if a[0] is None),
        "ledger_requests": summary.requests,
        "ledger_edge": summary.edge,
        "ledger_cloud": summary.cloud,
        "cloud_calls_simulated": transport.calls,
        "nodes_stuck_at_stop": stuck,
        "max_send_lag_ms": round(lag * 1e3, 1),
        # mean wall round trip beyond the engine's own time, in simulated seconds
        "overhead_s": round(statistics.fmean(rpc.overheads_s or [0.0]) * speedup, 4),
    }
    if name.startswith("litellm_"):  # what LiteLLM's Router saw
        extra["litellm"] = dict(router.stats)
    return result, extra


async def _replay(
    orchestrator: Orchestrator, trace: Sequence[Req], speedup: float, t0: list[float], run: str
) -> list[tuple[Answer | None, float, float]]:
    """Send each request at its (compressed) time; (answer, simulated latency s, lag s)."""

    async def one(req: Req, lag: float) -> tuple[Answer | None, float, float]:
        query = Query(
            messages=(ChatMessage(role="user", content=prompt_for(req.prompt_tokens)),),
            max_tokens=req.tokens,
            temperature=0.0,
            tenant=run,
        )
        started = time.monotonic()
        try:
            answer: Answer | None = await orchestrator.answer(query)
        except (GatewayError, RpcError) as exc:
            code = getattr(exc, "code", ErrorCode.INTERNAL)
            print(f"request failed: {code}: {exc}")
            answer = None
        return answer, (time.monotonic() - started) * speedup, lag

    t0[0] = time.monotonic()
    async with asyncio.TaskGroup() as group:
        tasks = []
        for i, req in enumerate(trace):
            delay = t0[0] + req.t / speedup - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lag = max(0.0, -delay)
            tasks.append(group.create_task(one(req, lag), name=f"request-{i}"))
    return [t.result() for t in tasks]


__all__ = ["SimulatedCloud", "prompt_for", "run_policy"]
