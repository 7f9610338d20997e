"""Fault scenarios through the real system: ``python -m benchmarks.faults --json``.

Each scenario runs Mosquitto, ``edgecollab node`` processes on the simulated Jetson
Orin Nano engine (SIMULATED devices: real time, no real text), the gateway with its
real orchestrator and MQTT ingress, and a client that accounts for every query:

- ``node_kill``: a node SIGKILLed while it serves; its will marks it offline and
  the gateway re-routes the pending attempts to the other node or the cloud;
- ``broker_restart``: Mosquitto stopped with SIGTERM and started again under load;
- ``cloud_outage``: the cloud endpoint refuses connections; the edge serves what it
  can, the rest get a clear error;
- ``overload``: ten times the edge's concurrent capacity at once, no cloud;
  refusals come at once, admitted queries finish within their deadlines.

Also runs the ACL cases of ``benchmarks.acl_cases`` against a secure broker and
prints how many forbidden cases were refused. Target: ``lost`` = 0 and
``duplicated`` = 0 everywhere; every forbidden ACL case refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.acl_cases import make_profile, run_cases
from benchmarks.fault_rig import Counts, clear_nodes, running_rig, wait_online
from broker import MosquittoBroker, Result, free_port

SLOW = {"decode_tps": 40.0, "concurrency": 2}  # 120 tokens ~ 3 s per query


def _rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def node_kill(broker: MosquittoBroker, folder: Path, cloud_url: str | None) -> Counts:
    async with running_rig(
        broker, folder, nodes=3, cloud_url=cloud_url, engine=SLOW, edge_timeout_s=20
    ) as (gw, procs, client):
        asks = [
            asyncio.create_task(
                client.ask(f"kill test {i}: tell me about bridges", max_tokens=120, deadline_s=40),
                name=f"ask-{i}",
            )
            for i in range(4)
        ]
        await asyncio.sleep(1.0)  # every query is being served by now
        directory = gw.orchestrator.router.directory
        busiest = max(procs, key=lambda p: getattr(directory.view(p.node_id), "in_flight", 0))
        in_flight = getattr(directory.view(busiest.node_id), "in_flight", 0)
        busiest.kill()
        await asyncio.gather(*asks)
        await clear_nodes(broker, procs)
    counts = client.tally()
    counts.extra["killed_node_in_flight"] = in_flight
    return counts


async def broker_restart(broker: MosquittoBroker, folder: Path, cloud_url: str | None) -> Counts:
    async with running_rig(
        broker,
        folder,
        nodes=2,
        cloud_url=cloud_url,
        engine={"decode_tps": 120.0, "concurrency": 2},
        edge_timeout_s=12,
    ) as (gw, procs, client):
        asks = []
        for i in range(24):
            asks.append(
                asyncio.create_task(
                    client.ask(f"restart test {i}: hello", max_tokens=60, deadline_s=30),
                    name=f"ask-{i}",
                )
            )
            if i == 8:
                await asyncio.to_thread(broker.restart)
            await asyncio.sleep(0.2)
        await asyncio.gather(*asks)
        # every agent is back: connected again, nodes online, and the edge answers
        await wait_online(gw.mirror, [p.node_id for p in procs])
        after = await asyncio.gather(
            *(client.ask(f"after restart {i}", max_tokens=20, deadline_s=20) for i in range(2))
        )
        reconnects = {
            "gateway": gw.orchestrator.rpc.bus.connections,
            "client": client.bus.connections,
        }
        await clear_nodes(broker, procs)
    counts = client.tally()
    counts.extra["reconnections"] = reconnects
    counts.extra["edge_answers_after_restart"] = sum(
        isinstance(r, Result) and (r.meta or {}).get("route") == "edge" for r in after
    )
    return counts


async def cloud_outage(broker: MosquittoBroker, folder: Path) -> Counts:
    dead_cloud = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    async with running_rig(
        broker,
        folder,
        nodes=1,
        cloud_url=dead_cloud,
        engine={"decode_tps": 200.0, "concurrency": 4},
    ) as (_gw, procs, client):
        # the node takes max_tokens <= 512; larger ones only the cloud could serve
        asks = [
            client.ask(f"outage test {i}", max_tokens=40 if i % 2 else 600, deadline_s=30)
            for i in range(8)
        ]
        await asyncio.gather(*asks)
        await clear_nodes(broker, procs)
    return client.tally()


async def overload(broker: MosquittoBroker, folder: Path) -> tuple[Counts, dict[str, Any]]:
    async with running_rig(
        broker, folder, nodes=2, cloud_url=None, engine=SLOW, edge_timeout_s=20
    ) as (_gw, procs, client):
        capacity = 2 * SLOW["concurrency"]
        memory: dict[str, Any] = {"capacity": capacity}
        for wave in range(2):
            asks = [
                client.ask(f"overload {wave} {i}: a story", max_tokens=80, deadline_s=30)
                for i in range(10 * int(capacity))
            ]
            await asyncio.gather(*asks)
            memory[f"rss_mb_after_wave_{wave}"] = {
                "gateway_process": round(
                    resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
                ),
                **{p.node_id: round(_rss_mb(p.proc.pid), 1) for p in procs if p.proc},
            }
        await clear_nodes(broker, procs)
    return client.tally(), memory


@contextlib.contextmanager
def _cloud(enabled: bool) -> Iterator[str | None]:
    if not enabled:
        yield None
        return
    from edgecollab.cloud_standin import running_cloud_server  # noqa: PLC0415

    with running_cloud_server() as url:
        yield url


async def _acl() -> dict[str, int]:
    with tempfile.TemporaryDirectory() as tmp:
        profile = make_profile(Path(tmp))
        with MosquittoBroker(config=profile.conf) as broker:
            outcomes = await run_cases(profile, broker.port)
    forbidden = [o for o in outcomes if not o.case.allowed]
    allowed = [o for o in outcomes if o.case.allowed]
    return {
        "forbidden_cases": len(forbidden),
        "forbidden_refused": sum(o.ok for o in forbidden),
        "allowed_cases": len(allowed),
        "allowed_delivered": sum(o.ok for o in allowed),
    }


async def run_all(*, cloud: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"devices": "simulated jetson-orin-nano nodes (processes)"}
    with _cloud(cloud) as cloud_url, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out["cloud"] = "llama-cpp-python server on SmolLM2 (stand-in)" if cloud_url else "none"
        with MosquittoBroker() as broker:
            started = time.monotonic()
            out["node_kill"] = (await node_kill(broker, folder, cloud_url)).as_dict()
            out["broker_restart"] = (await broker_restart(broker, folder, cloud_url)).as_dict()
            out["cloud_outage"] = (await cloud_outage(broker, folder)).as_dict()
            counts, memory = await overload(broker, folder)
            out["overload"] = {**counts.as_dict(), "memory": memory}
            out["seconds"] = round(time.monotonic() - started, 1)
    out["acl"] = await _acl()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--no-cloud", action="store_true", help="skip the cloud stand-in")
    args = parser.parse_args()
    result = asyncio.run(run_all(cloud=not args.no_cloud))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name in ("node_kill", "broker_restart", "cloud_outage", "overload"):
        r = result[name]
        print(
            f"{name:15} sent {r['sent']:3} answered {r['answered']:3} "
            f"failed_clearly {r['failed_clearly']:3} lost {r['lost']} duplicated {r['duplicated']}"
        )
    acl = result["acl"]
    print(f"ACL: {acl['forbidden_refused']}/{acl['forbidden_cases']} forbidden cases refused")


if __name__ == "__main__":
    main()
