"""``edgecollab sensor --config wearable.yaml``: run a device agent until SIGTERM or Ctrl-C.

``python -m wearables --config wearable.yaml`` is the same command without the other
roles: ``edgecollab`` imports every role (about 100 MB and 2 s on this machine),
this entry point only the bus and the device code (a device installs only
``edgecollab[sensor]``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from broker import BusError
from wearables.agent import SensorAgent
from wearables.config import SensorConfig, load_sensor_config
from wearables.errors import SensorError

logger = logging.getLogger(__name__)


def add_sensor_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("sensor", help=HELP)
    _add_arguments(parser)
    return parser


HELP = "run a device agent (wearable, camera, roadside unit, environment monitor)"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, help="sensor YAML configuration")
    parser.add_argument("--agent-id", default=None, help="override agent_id")
    parser.add_argument("--port", type=int, default=None, help="override the broker port")
    parser.add_argument(
        "--stats", action="store_true", help="print the agent's stats as JSON when it stops"
    )
    parser.set_defaults(func=run_sensor)


def main(argv: list[str] | None = None) -> int:
    """``python -m wearables``: the sensor command alone."""
    parser = argparse.ArgumentParser(prog="python -m wearables", description=HELP)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_sensor(args)


async def serve(config: SensorConfig, *, print_stats: bool = False) -> None:
    """Run the agent; stop cleanly on SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with SensorAgent(config) as agent:
        await agent.run(stop)
        if print_stats:
            print(json.dumps(agent.stats))


def run_sensor(args: argparse.Namespace) -> int:
    try:
        overrides = {"agent_id": args.agent_id} if args.agent_id else {}
        config = load_sensor_config(args.config, **overrides)
        if args.port:
            config = config.model_copy(
                update={"bus": config.bus.model_copy(update={"port": args.port})}
            )
        asyncio.run(serve(config, print_stats=args.stats))
    except (SensorError, BusError) as exc:
        print(f"edgecollab sensor: {exc}", file=sys.stderr)
        return 2
    return 0
