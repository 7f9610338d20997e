"""A testbed for the paper's scenarios: nodes, devices and a gateway on one broker.

Every edge node runs in this process on one shared SmolLM2 llama.cpp engine
(several node agents, one model in memory; their requests take turns on it).
Device agents (``wearables``) replay recorded or synthetic data from the example
configurations in ``configs/``, faster than real time, and say they are
simulated. The gateway is the real one (``gateway.service.running_gateway``):
computation cooperation runs on its orchestrator (:mod:`gateway.collab`).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker import BusSettings, DataFollower
from edge_node.agent import NodeAgent
from edge_node.config import NodeConfig
from edge_node.engines.base import Engine
from edgecollab.cloud_standin import CLOUD_MODEL
from gateway.collab import CollabRunner
from gateway.config import GatewayConfig
from gateway.service import RunningGateway, running_gateway
from wearables.agent import SensorAgent
from wearables.config import SensorConfig, load_sensor_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
POOL = "scenario"  # the capability pool of the scenario nodes (and the gateway's)


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One scenario node: what it knows, which data it follows."""

    node_id: str
    expertise: tuple[str, ...]
    data_topics: tuple[str, ...] = ()
    documents: tuple[str, ...] = ()  # knowledge base sets; () with ask=True: asks only
    ask: bool = False
    role: str = ""

    def config(self, bus: BusSettings, kb_dir: Path) -> NodeConfig:
        values: dict[str, Any] = {
            "node_id": self.node_id,
            "bus": bus.model_dump(),
            "device": f"this machine (CPU): {self.role}" if self.role else "this machine (CPU)",
            "engine": {"type": "llama_cpp", "model": "smollm2-135m-instruct"},
            "capabilities": [POOL],
            "expertise": list(self.expertise),
            "load_interval_s": 0.05,
            "limits": {"max_tokens": 512, "max_inflight_tokens": 4096},
        }
        if self.data_topics:
            values["data"] = {"topics": list(self.data_topics), "max_readings": 4}
        if self.documents or self.ask:
            values["knowledge"] = {
                "documents": list(self.documents),
                "db_url": f"sqlite:///{kb_dir}/kb-{self.node_id}.sqlite3",
                "ask_peers": self.ask,
                "ask_timeout_s": 60,
            }
        return NodeConfig.model_validate(values)


@dataclass(slots=True)
class Testbed:
    bus: BusSettings
    nodes: dict[str, NodeAgent]
    devices: dict[str, SensorAgent]
    gateway: RunningGateway
    runner: CollabRunner
    cloud_url: str | None
    workdir: Path
    notes: list[str] = field(default_factory=list)

    async def wait_for_data(
        self, expected: Mapping[str, Sequence[str]], timeout: float = 30.0, windows: int = 4
    ) -> None:
        """Until each data-following node has seen ``windows`` windows of each stream it
        expects (enough for a reading's likeness to earlier windows)."""
        async with asyncio.timeout(timeout):
            for node_id, streams in expected.items():
                coop = self.nodes[node_id].cooperation
                follower = None if coop is None else coop.follower
                if follower is None:
                    raise ValueError(f"{node_id} follows no data")
                await follower.wait_for(_has_streams(follower, set(streams), windows), timeout)


def _has_streams(follower: DataFollower, want: set[str], windows: int) -> Callable[[], bool]:
    def check() -> bool:
        got = {s.stream for s in follower.latest_samples() if s.meta.sequence >= windows - 1}
        return want <= got

    return check


def device_config(name: str, bus: BusSettings, speed: float, **changes: Any) -> SensorConfig:
    """An example device configuration from ``configs/``, on ``bus``, replayed at ``speed``."""
    config = load_sensor_config(CONFIGS / f"{name}.yaml", env={})
    streams = tuple(s.model_copy(update={"speed": speed}) for s in config.streams)
    return config.model_copy(update={"bus": bus, "streams": streams, **changes})


@contextlib.asynccontextmanager
async def start_testbed(
    bus: BusSettings,
    engine: Engine,
    nodes: Sequence[NodeSpec],
    devices: Sequence[SensorConfig],
    *,
    cloud_url: str | None = None,
    edge_timeout_s: float = 90.0,
) -> AsyncIterator[Testbed]:
    """Start ``nodes`` on ``engine``, ``devices`` and a gateway; stop them all on exit."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def finish() -> None:
        stop.set()  # nodes drain and say offline, devices stop streaming
        done = await asyncio.gather(*tasks, return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, Exception):
                raise outcome

    async with contextlib.AsyncExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgecollab-")))
        agents = {n.node_id: NodeAgent(n.config(bus, workdir), engine) for n in nodes}
        sensors: dict[str, SensorAgent] = {}
        try:
            for node_id, agent in agents.items():
                tasks.append(asyncio.create_task(agent.run(stop), name=f"node:{node_id}"))
            async with asyncio.timeout(60):
                await asyncio.gather(*(a.ready.wait() for a in agents.values()))
            for config in devices:
                sensor = await stack.enter_async_context(SensorAgent(config))
                tasks.append(
                    asyncio.create_task(sensor.run(stop), name=f"device:{config.agent_id}")
                )
                sensors[config.agent_id] = sensor
            gw = await stack.enter_async_context(
                running_gateway(_gateway_config(bus, workdir, cloud_url, edge_timeout_s))
            )
        finally:
            stack.push_async_callback(finish)  # runs first on exit, before devices close
        runner = CollabRunner(gw.orchestrator)
        async with asyncio.timeout(30):  # the gateway's directory sees every node
            # The directory offers no change event to wait on: poll it.
            while {v.node_id for v in runner.router.directory.candidates(POOL)} < set(agents):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        yield Testbed(bus, agents, sensors, gw, runner, cloud_url, workdir)


def _gateway_config(
    bus: BusSettings, workdir: Path, cloud_url: str | None, edge_timeout_s: float
) -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "gateway_id": "scenario-gateway",
            "bus": bus.model_dump(),
            "http_port": 0,
            "capability": POOL,
            "ledger_url": f"sqlite:///{workdir}/ledger.sqlite3",
            "cache_enabled": False,
            "edge_timeout_s": edge_timeout_s,
            "cloud": {
                "base_url": cloud_url or "http://127.0.0.1:9/v1",
                "model": CLOUD_MODEL,
                "enabled": cloud_url is not None,
                "timeout_s": 120,
            },
        }
    )
