"""``edgecollab cms``: list, read, watch and write CMS entries from a terminal."""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
from typing import Any

from broker.client import BusClient
from broker.cms import Cms, CmsEntry
from broker.errors import BusError
from broker.messages import Entry
from broker.settings import BusSettings


def add_bus_arguments(parser: argparse.ArgumentParser) -> None:
    """``--host``/``--port``; defaults come from ``EDGECOLLAB_MQTT_HOST``/``_PORT``."""
    parser.add_argument("--host", default=None, help="broker host (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="broker port (default 1883)")
    parser.add_argument(
        "--bus-file",
        default=None,
        help="an agent's bus.yaml from `broker secure-config` (credentials, TLS; "
        "default $EDGECOLLAB_MQTT_INCLUDE)",
    )


def bus_settings(args: argparse.Namespace) -> BusSettings:
    return BusSettings.from_env(
        include=getattr(args, "bus_file", None),
        host=args.host,
        port=args.port,
        connect_timeout_s=5.0,
    )


def add_cms_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "cms", help="read and write the Capability Metadata Store (retained slm/ entries)"
    )
    add_bus_arguments(parser)
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    verbs = parser.add_subparsers(dest="verb", required=True)
    ls = verbs.add_parser("ls", help="list entries under a prefix")
    ls.add_argument("prefix", nargs="?", default="slm", help="for example slm/nodes")
    get = verbs.add_parser("get", help="print one entry")
    get.add_argument("key")
    watch = verbs.add_parser("watch", help="print entries, then changes, until Ctrl-C")
    watch.add_argument("prefix", nargs="?", default="slm")
    put = verbs.add_parser("set", help="write an entry (VALUE is JSON, or else a string)")
    put.add_argument("key")
    put.add_argument("value")
    put.add_argument("--expiry", type=float, default=None, help="seconds until it vanishes")
    rm = verbs.add_parser("rm", help="clear an entry")
    rm.add_argument("key")
    parser.set_defaults(func=run_cms)
    return parser


def render(entry: CmsEntry | None) -> Any:
    """A JSON-shaped view of an entry: its value, or kind and fields for typed entries."""
    if entry is None:
        return None
    message = entry.message
    if isinstance(message, Entry):
        return message.value
    return {"kind": message.KIND, **message.to_map(binary=False)}


def _print(key: str, entry: CmsEntry | None, as_json: bool, event: str | None = None) -> None:
    value = render(entry)
    if as_json:
        record: dict[str, Any] = {"key": key, "value": value}
        if event:
            record["event"] = event
        print(json.dumps(record), flush=True)
    else:
        head = f"[{event}] " if event else ""
        text = "(cleared)" if entry is None else json.dumps(value, separators=(",", ":"))
        print(f"{head}{key}  {text}", flush=True)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


async def _cms(args: argparse.Namespace) -> int:
    settings = bus_settings(args)
    # The secure broker makes the user name the client id (use_username_as_clientid),
    # and reply topics must name the client id the broker knows.
    client_id = settings.username or f"cli-{secrets.token_hex(4)}"
    async with BusClient(settings, client_id) as bus:
        cms = Cms(bus)
        if args.verb == "ls":
            async with cms.mirror(args.prefix) as mirror:
                for key, entry in mirror.items():
                    _print(key, entry, args.json)
        elif args.verb == "get":
            found = await cms.get(args.key)
            if found is None:
                print(f"{args.key}: no such entry", file=sys.stderr)
                return 1
            _print(args.key, found, args.json)
        elif args.verb == "watch":
            async for event in cms.watch(args.prefix):
                _print(event.key, event.entry, args.json, event.reason)
        elif args.verb == "set":
            await cms.put(args.key, parse_value(args.value), expiry_s=args.expiry)
        elif args.verb == "rm":
            await cms.delete(args.key)
    return 0


def run_cms(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_cms(args))
    except BusError as exc:
        print(f"edgecollab cms: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
