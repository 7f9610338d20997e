"""Small helpers shared by the bus tests."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from broker import BusSettings, Mirror, MosquittoBroker, nodes_from
from edgecollab.cloud_standin import CLOUD_MODEL
from gateway.config import GatewayConfig


def settings(broker: MosquittoBroker, **overrides: object) -> BusSettings:
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "connect_timeout_s": 5.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    values.update(overrides)
    return BusSettings.model_validate(values)


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "") -> float:
    """Poll ``check`` until true; return the seconds it took, fail after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def is_online(mirror: Mirror, node_id: str) -> bool:
    """Whether the mirror's ``slm/nodes`` entries say ``node_id`` is online."""
    status = nodes_from(mirror.items()).get(node_id)
    return status is not None and status.online


@contextlib.asynccontextmanager
async def running_node(
    broker: MosquittoBroker, engine: Any, node_id: str, **overrides: Any
) -> AsyncIterator[Any]:
    """An in-process edge node on ``engine`` until the block ends (then drained)."""
    from edge_node.agent import NodeAgent  # noqa: PLC0415 - only node tests need it
    from edge_node.config import NodeConfig  # noqa: PLC0415
    from edge_node.engines.simulated import SimulatedEngine  # noqa: PLC0415

    simulated = isinstance(engine, SimulatedEngine)
    config = NodeConfig.model_validate(
        {
            "node_id": node_id,
            "bus": settings(broker).model_dump(),
            "engine": {"type": "simulated", "profile": "jetson-orin-nano"}
            if simulated
            else {"type": "llama_cpp"},
            "capabilities": [node_id + "cap"],
            "metrics_interval_s": 0.2,
            "load_interval_s": 0.05,
            **overrides,
        }
    )
    agent = NodeAgent(config, engine)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.ready.wait(), 60)  # a knowledge base embeds its documents first
    try:
        yield agent
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def gateway_config(
    broker: MosquittoBroker, tmp_path: Path, prefix: str, cloud_url: str | None = None, **extra: Any
) -> GatewayConfig:
    """A test gateway on ``broker`` serving capability ``prefix``, with an SQLite ledger in
    ``tmp_path`` and the cloud stand-in at ``cloud_url`` (``None``: no cloud)."""
    return GatewayConfig.model_validate(
        {
            "gateway_id": f"{prefix}-gw",
            "bus": settings(broker).model_dump(),
            "http_port": 0,
            "capability": prefix,
            "ledger_url": f"sqlite:///{tmp_path}/ledger.sqlite3",
            "cloud": {
                "base_url": cloud_url or "http://127.0.0.1:9/v1",
                "model": CLOUD_MODEL,
                "enabled": cloud_url is not None,
                "timeout_s": 60,
            },
            "edge_timeout_s": 30,
            **extra,
        }
    )
