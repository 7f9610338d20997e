"""Scheduling policy decision time over synthetic node views.

    python -m benchmarks.policies --json [--nodes 10 100 1000] [--cms]

For each cluster size, ``NodeView`` records with a seeded mix of devices (Jetson AGX
Orin, Orin Nano, Raspberry Pi 5) and random loads, and a stream of requests with
the allocation study's token demands (50-500 ``max_tokens``, weighted toward the
small ones). Per policy: p50 and p99 of ``policy.order`` with the gateway's default
``limit`` (``p50_us``, ``p99_us``) and of a full ordering of every node
(``full_p50_us``, ``full_p99_us``).

``--cms`` also times a whole decision as the gateway makes it: the same records
published as births, states and loads to a Mosquitto started here, followed by a
``NodeDirectory``, then ``candidates("chat")`` plus ``order`` (``decide_p50_us``,
``decide_p99_us``). That broker runs the project's ``mosquitto.conf`` with
``max_queued_messages`` raised to fit the retained replay: at the template's 1000
(plus 20 in flight), a fresh mirror of ``slm/nodes`` receives only the first ~1020
retained entries, i.e. ~340 nodes of three entries each.

The top-level ``nodes`` and ``policies`` are the largest size; ``by_nodes`` has all.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from broker import Birth, BusClient, BusSettings, Cms, MosquittoBroker, State
from broker.mosquitto_config import read_template
from broker.topics import node_key
from gateway.nodes import NOMINAL_TPS, NodeDirectory, NodeView
from gateway.policies import DEFAULT_LIMIT, POLICIES, Policy, RequestShape, timing

DEVICES = {  # device: (slots, max_inflight_tokens, share of the cluster)
    "jetson-agx-orin": (4, 16384, 0.4),
    "jetson-orin-nano": (2, 8192, 0.4),
    "raspberry-pi-5": (2, 4096, 0.2),
}
DEMANDS = ([50, 100, 200, 300, 500], [0.35, 0.3, 0.2, 0.1, 0.05])


def synthetic_records(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` node records: birth info and a load, for ids ``bench-00000``..."""
    rng = random.Random(seed)
    names = list(DEVICES)
    shares = [DEVICES[d][2] for d in names]
    out = []
    for i in range(n):
        device = rng.choices(names, shares)[0]
        slots, budget, _ = DEVICES[device]
        in_flight = rng.randint(0, slots)
        tokens = min(budget, sum(rng.choice(DEMANDS[0]) + 100 for _ in range(in_flight)))
        out.append(
            {
                "node_id": f"bench-{i:05d}",
                "info": {
                    "models": [{"id": "smollm2-135m-instruct", "parameters": "135M"}],
                    "capabilities": ["chat"],
                    "expertise": [],
                    "device": device,
                    "limits": {
                        "concurrency": slots,
                        "max_inflight_tokens": budget,
                        "max_tokens": 1024,
                    },
                },
                "load": {
                    "slots": slots,
                    "free_slots": slots - in_flight,
                    "in_flight": in_flight,
                    "tokens_in_flight": tokens,
                    "max_inflight_tokens": budget,
                    "tokens_per_s": round(rng.uniform(0, NOMINAL_TPS[device][1]), 2),
                    "draining": False,
                },
            }
        )
    return out


def synthetic_views(records: list[dict[str, Any]]) -> list[NodeView]:
    views = []
    for r in records:
        info, load = r["info"], r["load"]
        stream, aggregate = NOMINAL_TPS[info["device"]]
        views.append(
            NodeView(
                node_id=r["node_id"],
                max_inflight_tokens=load["max_inflight_tokens"],
                max_tokens=info["limits"]["max_tokens"],
                slots=load["slots"],
                capabilities=tuple(info["capabilities"]),
                models=("smollm2-135m-instruct",),
                device=info["device"],
                in_flight=load["in_flight"],
                tokens_in_flight=load["tokens_in_flight"],
                tokens_per_s=load["tokens_per_s"],
                capacity_tps=aggregate,
                stream_tps=stream,
            )
        )
    return views


def requests(seed: int, count: int = 1024) -> list[RequestShape]:
    rng = random.Random(seed)
    return [
        RequestShape(rng.randint(20, 200), rng.choices(*DEMANDS)[0], "general")
        for _ in range(count)
    ]


def _timed(
    policy: Policy,
    shapes: list[RequestShape],
    views: Callable[[], list[NodeView]],
    rounds: int,
    limit: int | None = DEFAULT_LIMIT,
) -> dict[str, float]:
    rng, cycle = random.Random(1), itertools.cycle(shapes)
    got = timing(lambda: policy.order(next(cycle), views(), rng, limit=limit), rounds)
    return {"p50_us": got["p50_us"], "p99_us": got["p99_us"]}


def time_policies(
    views: list[NodeView], shapes: list[RequestShape], rounds: int
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for name, cls in POLICIES.items():
        bounded = _timed(cls(), shapes, lambda: views, rounds)
        full = _timed(cls(), shapes, lambda: views, max(50, rounds // 10), limit=None)
        out[name] = {**bounded, "full_p50_us": full["p50_us"], "full_p99_us": full["p99_us"]}
    return out


async def time_decisions(
    records: list[dict[str, Any]], shapes: list[RequestShape], rounds: int
) -> dict[str, dict[str, float]]:
    """candidates() + order() through a NodeDirectory following a real broker."""
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        queued = f"max_queued_messages {4 * len(records) + 1000}"
        conf.write_text(re.sub(r"(?m)^max_queued_messages .*$", queued, read_template(None)))
        return await _decide_on(MosquittoBroker(config=conf), records, shapes, rounds)


async def _decide_on(
    broker: MosquittoBroker, records: list[dict[str, Any]], shapes: list[RequestShape], rounds: int
) -> dict[str, dict[str, float]]:
    with broker:
        bus_settings = BusSettings(host=broker.host, port=broker.port)
        async with BusClient(bus_settings, "bench-policies-pub") as bus:
            cms = Cms(bus)
            for i, r in enumerate(records):
                await cms.put_message(node_key(r["node_id"], "birth"), Birth(i + 1, r["info"]))
                await cms.put_message(node_key(r["node_id"], "state"), State(True, i + 1))
                await cms.put(node_key(r["node_id"], "load"), r["load"], expiry_s=600)
        async with (
            BusClient(bus_settings, "bench-policies-gw") as bus,
            Cms(bus).mirror("slm/nodes") as mirror,
            NodeDirectory(mirror) as directory,
        ):
            found = len(directory.candidates("chat"))
            if found != len(records):
                raise RuntimeError(f"directory sees {found} of {len(records)} nodes")
            out: dict[str, dict[str, float]] = {}
            for name, cls in POLICIES.items():
                got = _timed(cls(), shapes, lambda: directory.candidates("chat"), rounds)
                out[name] = {"decide_p50_us": got["p50_us"], "decide_p99_us": got["p99_us"]}
            return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--rounds", type=int, default=5000, help="timed decisions per policy")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cms", action="store_true", help="also time decisions via the CMS")
    args = parser.parse_args()
    shapes = requests(args.seed)
    by_nodes: dict[str, dict[str, dict[str, float]]] = {}
    for n in sorted(args.nodes):
        records = synthetic_records(n, args.seed)
        result = time_policies(synthetic_views(records), shapes, args.rounds)
        if args.cms:
            for name, got in asyncio.run(time_decisions(records, shapes, args.rounds)).items():
                result[name].update(got)
        by_nodes[str(n)] = result
    largest = str(max(args.nodes))
    out = {
        "nodes": int(largest),
        "limit": DEFAULT_LIMIT,
        "rounds": args.rounds,
        "policies": by_nodes[largest],
        "by_nodes": by_nodes,
    }
    if args.json:
        print(json.dumps(out))
        return
    for n, result in by_nodes.items():
        print(f"{n} nodes (limit {DEFAULT_LIMIT}; microseconds)")
        for name, got in result.items():
            cells = "  ".join(f"{k} {v:8.1f}" for k, v in got.items())
            print(f"  {name:<11} {cells}")


if __name__ == "__main__":
    main()
