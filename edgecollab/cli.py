"""The ``edgecollab`` command: one entry point, a subcommand per role.

This package is the only place that imports from every role package; the role
packages never import each other (DESIGN.md, layout).
"""

from __future__ import annotations

import argparse
import logging
import sys

from broker.broker_cli import add_broker_parser
from broker.cms_cli import add_cms_parser
from edge_node.cli import add_node_parser
from edgecollab.demo import add_up_parser
from edgecollab.scenarios.cli import add_scenario_parser
from gateway.ledger_cli import add_ledger_parser
from gateway.service import add_gateway_parser
from wearables.cli import add_sensor_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecollab",
        description="MQTT middleware for collaborating small language models at the edge.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_up_parser(commands)
    add_broker_parser(commands)
    add_cms_parser(commands)
    add_node_parser(commands)
    add_gateway_parser(commands)
    add_ledger_parser(commands)
    add_sensor_parser(commands)
    add_scenario_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
