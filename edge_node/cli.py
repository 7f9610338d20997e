"""``edgecollab node --config node.yaml``: run an edge node until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from broker import BusError
from edge_node.agent import NodeAgent
from edge_node.config import ConfigError, NodeConfig, load_config
from edge_node.engines import build_engine
from edge_node.engines.base import EngineError

logger = logging.getLogger(__name__)


def add_node_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "node", help="run an edge node agent (llama.cpp or simulated engine)"
    )
    parser.add_argument("--config", type=Path, required=True, help="node YAML configuration")
    parser.add_argument("--node-id", default=None, help="override node_id")
    parser.add_argument("--port", type=int, default=None, help="override the broker port")
    parser.set_defaults(func=run_node)
    return parser


async def serve(config: NodeConfig) -> None:
    """Load the engine, run the agent, stop cleanly on SIGTERM/SIGINT."""
    engine = await asyncio.to_thread(build_engine, config.engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        agent = NodeAgent(config, engine)
        await agent.run(stop)
    finally:
        engine.close()


def run_node(args: argparse.Namespace) -> int:
    try:
        overrides = {}
        if args.node_id:
            overrides["node_id"] = args.node_id
        config = load_config(args.config, **overrides)
        if args.port:
            config = config.model_copy(
                update={"bus": config.bus.model_copy(update={"port": args.port})}
            )
        asyncio.run(serve(config))
    except (ConfigError, EngineError, BusError) as exc:
        print(f"edgecollab node: {exc}", file=sys.stderr)
        return 2
    return 0
