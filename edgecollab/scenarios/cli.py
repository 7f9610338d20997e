"""``edgecollab scenario health|urban``: the paper's two scenarios, end to end.

Starts Mosquitto (or uses ``--host``/``--port``), the scenario's edge nodes on one
shared SmolLM2 llama.cpp engine, its simulated device agents and a gateway; with
``--cloud`` also the local cloud stand-in (llama-cpp-python's OpenAI server), so
that what would escalate has somewhere to go. Prints the plan, which agent did
what, latency, tokens and what went to the cloud.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from broker import BrokerLaunchError, BusError, BusSettings, MosquittoBroker
from edge_node.engines.base import Engine
from edge_node.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine
from edge_node.errors import NodeError
from edgecollab.cloud_standin import running_cloud_server
from edgecollab.scenarios import health, urban
from edgecollab.scenarios.show import ScenarioSummary
from edgecollab.scenarios.testbed import NodeSpec, start_testbed
from wearables.errors import SensorError

DEFAULT_REPORTS = Path(tempfile.gettempdir()) / "edgecollab-reports"


def add_scenario_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("scenario", help="run the paper's health or urban scenario")
    parser.add_argument("name", choices=("health", "urban"))
    parser.add_argument("--host", default="127.0.0.1", help="broker host (with --port)")
    parser.add_argument("--port", type=int, default=None, help="use this broker, not a new one")
    parser.add_argument("--question", default=None, help="the user's question")
    parser.add_argument("--max-tokens", type=int, default=None, help="cap on each subtask")
    parser.add_argument("--speed", type=float, default=20.0, help="device replay speed")
    parser.add_argument("--cloud", action="store_true", help="start the local cloud stand-in")
    parser.add_argument(
        "--reports", type=Path, default=DEFAULT_REPORTS, help="where the clinician report goes"
    )
    parser.set_defaults(func=run_scenario)
    return parser


def shared_engine(threads: int = 2) -> Engine:
    """One SmolLM2 engine that every scenario node of this process shares."""
    return LlamaCppEngine(LlamaCppConfig(model="smollm2-135m-instruct", n_threads=threads))


def union(*groups: Sequence[NodeSpec]) -> list[NodeSpec]:
    """Node specs of several scenarios, each node once."""
    seen: dict[str, NodeSpec] = {}
    for group in groups:
        for spec in group:
            seen.setdefault(spec.node_id, spec)
    return list(seen.values())


async def scenario(
    name: str,
    bus: BusSettings,
    engine: Engine,
    *,
    cloud_url: str | None,
    question: str | None,
    max_tokens: int | None,
    speed: float,
    reports: Path,
) -> ScenarioSummary:
    module = health if name == "health" else urban
    async with start_testbed(
        bus, engine, module.NODES, module.devices(bus, speed), cloud_url=cloud_url
    ) as bed:
        print(
            f"testbed: nodes {', '.join(bed.nodes)} (SmolLM2-135M, llama.cpp, one shared engine); "
            f"devices {', '.join(bed.devices)} (simulated); gateway policy "
            f"{bed.gateway.config.policy}; cloud {'stand-in ' + cloud_url if cloud_url else 'off'}"
        )
        if name == "health":
            outcome, report = await health.run_health(
                bed, question=question or health.QUESTION, max_tokens=max_tokens, report_dir=reports
            )
            return ScenarioSummary.of("health", outcome, str(report))
        outcome = await urban.run_urban(
            bed, question=question or urban.QUESTION, max_tokens=max_tokens
        )
        return ScenarioSummary.of("urban", outcome)


@contextlib.contextmanager
def _broker(args: argparse.Namespace) -> Iterator[BusSettings]:
    if args.port is not None:
        yield BusSettings(host=args.host, port=args.port)
        return
    with MosquittoBroker() as broker:
        print(f"Mosquitto {broker.url} (config: mosquitto.conf)")
        yield BusSettings(host=broker.host, port=broker.port)


def run_scenario(args: argparse.Namespace) -> int:
    try:
        with contextlib.ExitStack() as stack:
            bus = stack.enter_context(_broker(args))
            cloud_url = stack.enter_context(running_cloud_server()) if args.cloud else None
            engine = shared_engine()
            stack.callback(engine.close)
            asyncio.run(
                scenario(
                    args.name,
                    bus,
                    engine,
                    cloud_url=cloud_url,
                    question=args.question,
                    max_tokens=args.max_tokens,
                    speed=args.speed,
                    reports=args.reports,
                )
            )
    except (BrokerLaunchError, BusError, NodeError, SensorError, TimeoutError) as exc:
        print(f"edgecollab scenario: {exc or type(exc).__name__}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
