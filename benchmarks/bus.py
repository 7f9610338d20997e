"""Bus benchmark: raw paho-mqtt against edgecollab's RPC and CMS, on one Mosquitto.

    python -m benchmarks.bus --json

(a) raw paho echo: two paho clients with TCP_NODELAY, QoS 1, 256-byte payloads;
    sequential round trips (p50, p99) and pipelined requests per second with a
    window of outstanding requests;
(b) the same through ``RpcClient``/``RpcServer`` (CBOR envelopes, correlation
    data, message expiry, a ``result`` reply);
(c) a fresh client mirroring 1,000 retained node records (connect, subscribe,
    barrier).

The echo servers run in their own processes, as agents would; the Mosquitto is
started here from the project's configuration on a free port.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from broker.client import BusClient
from broker.cms import Cms
from broker.launcher import MosquittoBroker
from broker.messages import Birth, Chat, Result
from broker.rpc import Request, RpcClient, RpcServer
from broker.settings import BusSettings
from broker.topics import node_key, node_request_topic

PAYLOAD = 256
RAW_REQ, RAW_RESP = "bench/raw/request", "bench/raw/reply"


def _nodelay(client: paho.Client) -> None:
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _paho(port: int, client_id: str) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    _nodelay(client)
    return client


def _raw_echo_server(port: int, ready: Any, stop: Any) -> None:
    client = _paho(port, "bench-raw-echo")

    def on_message(c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        c.publish(RAW_RESP, msg.payload, qos=1)

    def on_connect(c: paho.Client, *_a: Any) -> None:
        c.subscribe(RAW_REQ, qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: ready.set()
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()


def _rpc_echo_server(port: int, ready: Any, stop: Any) -> None:
    async def main() -> None:
        async with BusClient(BusSettings(port=port), "bench-rpc-echo") as bus:

            async def echo(req: Request) -> Result:
                body = req.body
                assert isinstance(body, Chat)
                return Result(text=body.messages[0].content)

            await RpcServer(bus).serve(node_request_topic("bench"), echo)
            ready.set()
            await asyncio.to_thread(stop.wait)

    asyncio.run(main())


def _start(target: Any, port: int) -> tuple[Any, Any]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=target, args=(port, ready, stop), daemon=True)
    proc.start()
    if not ready.wait(30):
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, stop


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(rtts: list[float], rps: float) -> dict[str, float]:
    return {
        "rtt_p50_ms": _percentile(rtts, 0.5) * 1e3,
        "rtt_p99_ms": _percentile(rtts, 0.99) * 1e3,
        "rps": rps,
    }


def bench_raw(port: int, rounds: int, total: int, window: int) -> dict[str, float]:
    proc, stop = _start(_raw_echo_server, port)
    client = _paho(port, "bench-raw-client")
    got = threading.Event()
    slots = threading.Semaphore(window)
    done = threading.Event()
    counter = {"n": 0, "target": 0}
    subscribed = threading.Event()

    def on_message(_c: paho.Client, _u: Any, _m: paho.MQTTMessage) -> None:
        got.set()
        slots.release()
        counter["n"] += 1
        if counter["n"] == counter["target"]:
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.loop_start()
    client.subscribe(RAW_RESP, qos=1)
    subscribed.wait(10)
    payload = b"x" * PAYLOAD
    rtts = []
    counter["target"] = -1
    for _ in range(rounds):
        got.clear()
        slots.acquire()
        t0 = time.perf_counter()
        client.publish(RAW_REQ, payload, qos=1)
        if not got.wait(5):
            raise RuntimeError("raw echo lost a reply")
        rtts.append(time.perf_counter() - t0)
    counter["n"], counter["target"] = 0, total
    t0 = time.perf_counter()
    for _ in range(total):
        slots.acquire()
        client.publish(RAW_REQ, payload, qos=1)
    if not done.wait(60):
        raise RuntimeError(f"raw echo: {counter['n']} of {total} replies")
    rps = total / (time.perf_counter() - t0)
    client.loop_stop()
    client.disconnect()
    stop.set()
    proc.join(10)
    return _summary(rtts, rps)


async def bench_rpc(port: int, rounds: int, total: int, window: int) -> dict[str, float]:
    proc, stop = _start(_rpc_echo_server, port)
    # A Chat envelope whose encoded size is the raw payload's 256 bytes.
    text = "x" * (PAYLOAD - 48)
    topic = node_request_topic("bench")
    async with BusClient(BusSettings(port=port), "bench-rpc-client") as bus, RpcClient(bus) as rpc:
        rtts = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            await rpc.call(topic, Chat.user(text), timeout=5)
            rtts.append(time.perf_counter() - t0)
        slots = asyncio.Semaphore(window)

        async def one() -> None:
            async with slots:
                await rpc.call(topic, Chat.user(text), timeout=60)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(total)))
        rps = total / (time.perf_counter() - t0)
    stop.set()
    proc.join(10)
    return _summary(rtts, rps)


async def bench_cms(port: int, records: int) -> float:
    settings = BusSettings(port=port)
    async with BusClient(settings, "bench-cms-writer") as bus:
        cms = Cms(bus)
        info = {
            "models": [
                {"id": "smollm2-135m-instruct", "quantization": "q8_0", "context_length": 8192}
            ],
            "device": "jetson-orin-nano",
            "limits": {"concurrency": 4, "max_inflight_tokens": 4096},
            "expertise": ["health", "environment"],
        }
        await asyncio.gather(
            *(
                cms.put_message(node_key(f"node{i:04d}", "birth"), Birth(i + 1, info, time.time()))
                for i in range(records)
            )
        )
    t0 = time.perf_counter()
    async with (
        BusClient(settings, "bench-cms-reader") as bus,
        Cms(bus).mirror("slm/nodes") as mirror,
    ):
        count = len(mirror)
    elapsed = time.perf_counter() - t0
    if count != records:
        raise RuntimeError(f"mirror holds {count} of {records} records")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=2000, help="sequential round trips")
    parser.add_argument("--total", type=int, default=10000, help="pipelined requests")
    parser.add_argument("--window", type=int, default=64, help="outstanding requests")
    parser.add_argument("--records", type=int, default=1000, help="retained node records")
    args = parser.parse_args()
    with MosquittoBroker() as broker:
        raw = bench_raw(broker.port, args.rounds, args.total, args.window)
        rpc = asyncio.run(bench_rpc(broker.port, args.rounds, args.total, args.window))
        cms_s = asyncio.run(bench_cms(broker.port, args.records))
    out: dict[str, Any] = {
        "raw_rtt_p50_ms": round(raw["rtt_p50_ms"], 3),
        "raw_rtt_p99_ms": round(raw["rtt_p99_ms"], 3),
        "raw_rps": round(raw["rps"], 1),
        "rpc_rtt_p50_ms": round(rpc["rtt_p50_ms"], 3),
        "rpc_rtt_p99_ms": round(rpc["rtt_p99_ms"], 3),
        "rpc_rps": round(rpc["rps"], 1),
        f"cms_sync_{args.records}_s": round(cms_s, 4),
        "params": {
            "payload_bytes": PAYLOAD,
            "qos": 1,
            "window": args.window,
            "rounds": args.rounds,
            "total": args.total,
        },
    }
    out["targets_met"] = {
        "rpc_rtt_p50": out["rpc_rtt_p50_ms"] <= out["raw_rtt_p50_ms"] + 0.5,
        "rpc_rps": out["rpc_rps"] >= 0.8 * out["raw_rps"],
        "cms_sync": cms_s < 1.0,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>16}: {value}")


if __name__ == "__main__":
    main()
