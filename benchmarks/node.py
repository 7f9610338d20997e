"""Edge node benchmark: bare llama-cpp-python against the same model behind a node.

    python -m benchmarks.node --json

Same model (SmolLM2-135M-Instruct), same prompts, greedy decoding, same thread
count; bare and node alternate prompt by prompt (never at the same time), so
that the machine's noise falls on both alike:

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

PAUSE_S = 0.2
PROMPTS = [
    "Explain in three sentences why the sky is blue.",
    "Give two tips for running in hot weather.",
    "What does a traffic light's amber phase mean?",
    "Describe a healthy breakfast briefly.",
    "Why do cities measure air quality?",
]


class Bare:
    """llama-cpp-python itself, in this process."""

    def __init__(self, threads: int) -> None:
        from llama_cpp import Llama  # noqa: PLC0415 - optional dependency

        path = resolve_model("smollm2-135m-instruct").path
        self.llm = Llama(
            model_path=str(path), n_ctx=2048, n_threads=threads, n_batch=256, verbose=False
        )

    def run(self, prompt: str, max_tokens: int) -> tuple[float, float | None]:
        """(time to first token in ms, decode tokens per second)."""
        t0 = time.perf_counter()
        first = last = 0.0
        tokens = 0
        for chunk in self.llm.create_chat_completion(
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
        rate = (tokens - 1) / (last - first) if tokens > 1 else None
        return (first - t0) * 1e3, rate


async def wait_online(mirror: Any, node_id: str) -> None:
    deadline = time.monotonic() + 60
    while not (status := nodes_from(mirror.items()).get(node_id)) or not status.online:
        if time.monotonic() > deadline:
            raise RuntimeError("node did not come online")
        await asyncio.sleep(0.05)


async def through_node(
    rpc: RpcClient, prompt: str, max_tokens: int
) -> tuple[float, float | None, float]:
    """(time to first chunk in ms, decode tokens per second, the node's own engine TTFT)."""
    request = Chat.user(prompt, max_tokens=max_tokens, temperature=0.0, stream=True)
    t0 = time.perf_counter()
    first = 0.0
    result: Result | None = None
    async for reply in rpc.stream(node_request_topic("bench-node"), request, timeout=120):
        if isinstance(reply, Chunk) and first == 0.0:
            first = time.perf_counter()
        elif isinstance(reply, Result):
            result = reply
    end = time.perf_counter()
    assert result is not None
    tokens = result.usage.completion_tokens
    rate = (tokens - 1) / (end - first) if tokens > 1 else None
    return (first - t0) * 1e3, rate, result.timings["ttft_ms"]


async def interleaved(port: int, bare: Bare, max_tokens: int, rounds: int) -> dict[str, float]:
    """Bare and node alternate prompt by prompt, so machine noise hits both alike."""
    samples: dict[str, list[float]] = {k: [] for k in ("bt", "br", "mt", "mr", "et")}
    async with BusClient(BusSettings(port=port), "bench-node-client") as bus, RpcClient(bus) as rpc:
        async with Cms(bus).mirror("slm/nodes/bench-node") as mirror:
            await wait_online(mirror, "bench-node")
        for i in range(rounds * len(PROMPTS) + 1):
            prompt = PROMPTS[i % len(PROMPTS)]
            # ggml's worker threads keep polling for a while after a run; a pause lets the
            # previous engine's threads go idle so neither side starts on busy cores.
            await asyncio.sleep(PAUSE_S)
            b_ttft, b_rate = bare.run(prompt, max_tokens)
            await asyncio.sleep(PAUSE_S)
            m_ttft, m_rate, engine_ttft = await through_node(rpc, prompt, max_tokens)
            if i == 0:
                continue  # warm-up
            samples["bt"].append(b_ttft)
            samples["mt"].append(m_ttft)
            samples["et"].append(engine_ttft)
            if b_rate and m_rate:
                samples["br"].append(b_rate)
                samples["mr"].append(m_rate)
    return {k: statistics.median(v) for k, v in samples.items()}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="bare llama.cpp vs the same through a node")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="passes over the prompts")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    bare = Bare(args.threads)
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
            m = asyncio.run(interleaved(broker.port, bare, args.max_tokens, args.rounds))
            rss = peak_rss_mb(node.pid)
        finally:
            node.terminate()
            node.wait(30)
    out: dict[str, Any] = {
        "bare_tok_s": round(m["br"], 2),
        "mqtt_tok_s": round(m["mr"], 2),
        "bare_ttft_ms": round(m["bt"], 2),
        "mqtt_ttft_ms": round(m["mt"], 2),
        "node_rss_mb": round(rss, 1),
        "node_engine_ttft_ms": round(m["et"], 2),
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
