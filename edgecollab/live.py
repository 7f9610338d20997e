"""``edgecollab up --serve``: keep a gateway with its dashboard and simulated devices up.

After the demo, a gateway on the demo's ledger (so the page starts with the demo's
requests) serves ``/dashboard`` and the API, with no cloud; the example device agents
(``configs/roadside-unit.yaml``, ``configs/wearable.yaml``, simulated) publish on
``data/`` so that the page has streams and events to show. Until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.config import GatewayConfig
from gateway.service import running_gateway
from wearables import SensorAgent, SensorConfigError, load_sensor_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEVICES = ("roadside-unit.yaml", "wearable.yaml")


async def serve_dashboard(port: int, ledger_dir: Path, *, http_port: int = 0) -> None:
    """Run until cancelled; prints the URLs."""
    config = GatewayConfig.model_validate(
        {
            "gateway_id": "demo-gateway",
            "bus": {"port": port},
            "http_port": http_port,
            "capability": "qa",
            "ledger_url": f"sqlite:///{ledger_dir}/ledger.sqlite3",
            "cloud": {"enabled": False},
        }
    )
    async with contextlib.AsyncExitStack() as stack:
        gw = await stack.enter_async_context(running_gateway(config))
        agents = []
        for name in DEVICES:
            try:
                device = load_sensor_config(CONFIGS / name, bus={"port": port})
            except SensorConfigError as exc:
                print(f"device {name} not started: {exc}")
                continue
            agents.append(await stack.enter_async_context(SensorAgent(device)))
        print(
            f"\nTestbed up: dashboard http://127.0.0.1:{gw.port}/dashboard, "
            f"API http://127.0.0.1:{gw.port}/v1 (edge only), "
            f"{len(agents)} simulated devices publishing on data/. "
            f"Try: edgecollab cms --port {port} watch slm   (Ctrl-C stops)",
            flush=True,
        )
        async with asyncio.TaskGroup() as tasks:
            for agent in agents:
                tasks.create_task(agent.run(), name=f"device:{agent.config.agent_id}")
            tasks.create_task(asyncio.Event().wait(), name="serve-forever")
