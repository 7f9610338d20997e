"""Sensor agent footprint: resident memory, publish rate and encode latency.

    python -m benchmarks.sensor --json

Runs the example wearable (``configs/wearable.yaml``: BasicMotions IMU, Daphnet gait
with freeze detection, synthetic vitals, three LiteRT encoders) in this process
against a Mosquitto started here, for ``--seconds`` at ``--speed`` times real time, and
prints what the agent's own stats say: ``rss_mb`` (current resident set after the
run, /proc), ``peak_rss_mb`` (getrusage), windows per second per stream and in total,
encode latency (mean, p95, ms). This process holds
only the agent (the broker is a separate process), so its RSS is the agent's.
``rss_mb_python_m_wearables`` and ``rss_mb_edgecollab_sensor`` are the same agent
started as a command (5 s at real time, its ``--stats``): the second imports every
role's code through the ``edgecollab`` command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any

from broker import MosquittoBroker
from wearables import SensorAgent, load_sensor_config
from wearables.memory import rss_mb

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "wearable.yaml"
LIMIT_MB = 150.0


async def command_rss(command: list[str], port: int, seconds: float) -> float | None:
    """The ``rss_mb`` a sensor command reports (``--stats``) after running ``seconds``."""
    proc = await asyncio.create_subprocess_exec(
        *command, "--config", str(CONFIG), "--port", str(port), "--stats",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await asyncio.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    lines = out.decode().strip().splitlines()
    return round(float(json.loads(lines[-1])["rss_mb"]), 1) if lines else None


async def run(seconds: float, speed: float) -> dict[str, Any]:
    before = rss_mb()
    with MosquittoBroker() as broker:
        # The two ways to start a device agent, each in its own process, at real time.
        lean = await command_rss([sys.executable, "-m", "wearables"], broker.port, 5.0)
        full = await command_rss(
            [sys.executable, "-m", "edgecollab.cli", "sensor"], broker.port, 5.0
        )
        config = load_sensor_config(CONFIG, env={"EDGECOLLAB_SENSOR__BUS__PORT": str(broker.port)})
        streams = tuple(s.model_copy(update={"speed": speed}) for s in config.streams)
        config = config.model_copy(update={"streams": streams})
        stop = asyncio.Event()
        async with SensorAgent(config) as agent:
            task = asyncio.create_task(agent.run(stop), name="bench:sensor")
            started = time.perf_counter()
            await asyncio.sleep(seconds)
            stop.set()
            await task
            elapsed = time.perf_counter() - started
            stats = agent.stats
    streams_out = {
        name: {
            "published": s["published"],
            "windows_per_s": round(s["published"] / elapsed, 1),
            "encode_ms_mean": round(s["encode_ms_mean"], 3),
            "encode_ms_p95": round(s["encode_ms_p95"], 3),
            "model": s["model"],
            "events": s["events"],
        }
        for name, s in stats["streams"].items()
    }
    rss = stats["rss_mb"]
    return {
        "rss_mb": round(rss, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_agent_mb": round(before, 1),
        "rss_mb_python_m_wearables": lean,
        "rss_mb_edgecollab_sensor": full,
        "limit_mb": LIMIT_MB,
        "under_limit": rss < LIMIT_MB,
        "seconds": round(elapsed, 2),
        "speed": speed,
        "rate": round(stats["published"] / elapsed, 1),
        "encode_ms_mean": round(
            sum(s["encode_ms_mean"] for s in stats["streams"].values()) / len(stats["streams"]), 3
        ),
        "streams": streams_out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--speed", type=float, default=20.0, help="x real time")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = asyncio.run(run(args.seconds, args.speed))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"rss {result['rss_mb']} MB (peak {result['peak_rss_mb']}, limit {LIMIT_MB}); "
        f"{result['rate']} windows/s at {args.speed}x; encode {result['encode_ms_mean']} ms"
    )
    for name, s in result["streams"].items():
        print(f"  {name}: {s}")


if __name__ == "__main__":
    main()
