"""Edge node benchmark: bare llama-cpp-python against the same model behind a node.

    python -m benchmarks.node --json

Same model (SmolLM2-135M-Instruct), same prompts, greedy decoding, same thread
count, one after the other on this machine:

- bare: ``Llama.create_chat_completion(stream=True)`` in this process; time to
  first token and decode tokens per second (tokens after the first, over the time
  after the first).
- mqtt: ``edgecollab node`` as its own process behind a Mosquitto started here;
  a client streams the same requests over MQTT; time from publishing the request
  to the first chunk, and decode rate from the first chunk to the result.
- ``node_rss_mb``: the node process's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from broker import BusClient, BusSettings, Chat, Chunk, Cms, MosquittoBroker, Result, RpcClient
from broker.presence import nodes_from
from broker.topics import node_request_topic
from edge_node.models import resolve_model

PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Give two tips for running in hot weather.",
    "What does a traffic light's amber phase mean?",
    "Describe a healthy breakfast briefly.",
    "Why do cities measure air quality?",
]


def bare(max_tokens: int, threads: int, rounds: int) -> dict[str, float]:
    from llama_cpp import Llama  # noqa: PLC0415 - optional dependency

    path = resolve_model("smollm2-135m-instruct").path
    llm = Llama(model_path=str(path), n_ctx=2048, n_threads=threads, n_batch=256, verbose=False)
    ttfts, rates = [], []
    for i in range(rounds * len(PROMPTS) + 1):
        prompt = PROMPTS[i % len(PROMPTS)]
        t0 = time.perf_counter()
        first = last = 0.0
        tokens = 0
        for chunk in llm.create_chat_completion(
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
        ):
            delta: Any = chunk["choices"][0]["delta"]  # type: ignore[index]
            if delta.get("content"):
                last = time.perf_counter()
                tokens += 1
                if tokens == 1:
                    first = last
        if i == 0:
            continue  # warm-up
        ttfts.append((first - t0) * 1e3)
        if tokens > 1:
            rates.append((tokens - 1) / (last - first))
    llm.close()
    return {"ttft_ms": statistics.median(ttfts), "tok_s": statistics.median(rates)}


async def through_node(port: int, max_tokens: int, rounds: int) -> dict[str, float]:
    async with BusClient(BusSettings(port=port), "bench-node-client") as bus, RpcClient(bus) as rpc:
        async with Cms(bus).mirror("slm/nodes/bench-node") as mirror:
            deadline = time.monotonic() + 60
            while not nodes_from(mirror.items()).get("bench-node"):
                if time.monotonic() > deadline:
                    raise RuntimeError("node did not come online")
                await asyncio.sleep(0.05)
        ttfts, rates = [], []
        for i in range(rounds * len(PROMPTS) + 1):
            request = Chat.user(
                PROMPTS[i % len(PROMPTS)], max_tokens=max_tokens, temperature=0.0, stream=True
            )
            t0 = time.perf_counter()
            first = 0.0
            result: Result | None = None
            async for reply in rpc.stream(node_request_topic("bench-node"), request, timeout=120):
                if isinstance(reply, Chunk) and first == 0.0:
                    first = time.perf_counter()
                elif isinstance(reply, Result):
                    result = reply
            end = time.perf_counter()
            if i == 0 or result is None:
                continue
            ttfts.append((first - t0) * 1e3)
            if result.usage.completion_tokens > 1:
                rates.append((result.usage.completion_tokens - 1) / (end - first))
    return {"ttft_ms": statistics.median(ttfts), "tok_s": statistics.median(rates)}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="bare llama.cpp vs the same through a node")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the prompts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    b = bare(args.max_tokens, args.threads, args.rounds)
    with MosquittoBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "node.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "node_id": "bench-node",
                    "bus": {"port": broker.port},
                    "engine": {
                        "type": "llama_cpp",
                        "model": "smollm2-135m-instruct",
                        "n_threads": args.threads,
                    },
                }
            )
        )
        node = subprocess.Popen(
            [sys.executable, "-m", "edgecollab.cli", "node", "--config", str(config)]
        )
        try:
            m = asyncio.run(through_node(broker.port, args.max_tokens, args.rounds))
            rss = peak_rss_mb(node.pid)
        finally:
            node.terminate()
            node.wait(30)
    out: dict[str, Any] = {
        "bare_tok_s": round(b["tok_s"], 2),
        "mqtt_tok_s": round(m["tok_s"], 2),
        "bare_ttft_ms": round(b["ttft_ms"], 2),
        "mqtt_ttft_ms": round(m["ttft_ms"], 2),
        "node_rss_mb": round(rss, 1),
        "params": {
            "model": "smollm2-135m-instruct",
            "max_tokens": args.max_tokens,
            "threads": args.threads,
            "prompts": len(PROMPTS),
            "rounds": args.rounds,
            "statistic": "median",
        },
    }
    out["targets_met"] = {
        "tok_s": out["mqtt_tok_s"] >= 0.95 * out["bare_tok_s"],
        "ttft": out["mqtt_ttft_ms"] <= out["bare_ttft_ms"] + 5,
        "rss": out["node_rss_mb"] <= 400,
    }
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
