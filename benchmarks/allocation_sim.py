"""The allocation study (issue 6) as a fast discrete-event model of the cluster, no broker.

    python -m benchmarks.allocation_sim --json [--seed N] [--duration S] [--base-rps R]
        [--policies ...] [--staleness S] [--budget T] [--attempts N] [--mix P:N,...]

Cluster. Eight nodes, :data:`MIX` = 2 Jetson AGX Orin + 6 Jetson Orin Nano, with the
profiles of ``edge_node.profiles``: slots = the profile's concurrency (4 and 2), a
token budget ``max_inflight_tokens`` (default 4096, the node configuration's
default) and ``max_tokens`` 512. A node admits with ``edge_node.admission.Admission``
and refuses instead of queueing.

Service. Processor sharing, event driven and exact: with ``n`` streams on a node,
each prefills and decodes at ``rate * min(1, k / n)`` (the simulated engine's
formula), so a request's work is ``prompt / prefill_tps + tokens / decode_tps``
single-stream seconds and all of a node's streams progress at ``min(1, k / n)``
single-stream seconds per second; a completion or admission changes ``n`` and so
every other stream's finish time (tracked with a per-node virtual clock).

Gateway. For each request the policy (``gateway.policies``, default ``limit``) orders
``NodeView`` records built as ``gateway.nodes.NodeDirectory`` would see them: each
node publishes its load at most every ``staleness_s`` (default 0.2 s, the load
debounce), and the gateway adds its own reservations made since the last publish
(releasing one when its answer comes). The gateway tries up to
:data:`MAX_ATTEMPTS` candidates (1: the paper's rule); a refusal costs
:data:`REFUSAL_S` (2 ms). A request every tried node refused goes to the cloud,
priced at GPT-4 (``gateway.pricing``) for prompt and completion tokens. A holding
policy (``cost_aware``) holds a request that fits nowhere, as
``gateway.routing.PolicyRouter`` does: after each completion or load record the
policy's ``place_held`` places held requests on nodes whose view fits; at the end
of its hold a request goes to the cloud. The
``litellm_*`` methods are LiteLLM's Router (``benchmarks.litellm_router``) on the
model's clock. ``overhead_s`` keeps a slot held that long after its stream ends
(the system's measured round trip, for the agreement check).

Latency. Edge: hold + service time (+ overhead) + 2 ms per refused attempt. Cloud:
hold + 2 ms per refused attempt + :data:`CLOUD_BASE_S` (800 ms) + tokens /
:data:`CLOUD_TPS` (50 tok/s). p50 and p95 are over all requests (edge and cloud),
nearest rank.

``rejected`` counts refusals per attempt;
``processed + cloud_redirects`` is the number of requests.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO, TypedDict

from benchmarks.litellm_router import Held
from benchmarks.sim_node import BUDGET, MAX_TOKENS, MIX, STALENESS_S, SimNode, make_nodes
from benchmarks.trace import BASE_RPS, Req, describe, make_trace
from edge_node.profiles import get_profile
from gateway.nodes import NodeView
from gateway.policies import (
    DEFAULT_LIMIT,
    POLICIES,
    HeldRequest,
    HoldingPolicy,
    RequestShape,
    make_policy,
)
from gateway.pricing import PriceTable

MAX_ATTEMPTS = 1  # the paper's rule: the chosen node cannot take it -> the cloud
REFUSAL_S = 0.002
CLOUD_BASE_S = 0.8
CLOUD_TPS = 50.0
CLOUD_MODEL = "gpt-4"


class PolicyResult(TypedDict):
    """One policy's outcome on a trace (the issue's JSON shape)."""

    processed: int
    rejected: int
    cloud_redirects: int
    cloud_cost_usd: float
    p50_ms: float
    p95_ms: float


def percentile_ms(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 1)


def _shape(req: Req) -> RequestShape:
    return RequestShape(req.prompt_tokens, req.tokens)


class _Native:
    """A gateway policy: order, and (cost_aware) how long to hold a request."""

    def __init__(self, name: str, seed: int, options: Mapping[str, float]) -> None:
        self.policy, self.rng = make_policy(name, **options), random.Random(seed)
        self.holding = self.policy if isinstance(self.policy, HoldingPolicy) else None

    def order(self, req: Req, views: list[NodeView]) -> list[str]:
        order = self.policy.order(_shape(req), views, self.rng, limit=DEFAULT_LIMIT)
        return [v.node_id for v in order]

    def hold(self, req: Req, views: list[NodeView]) -> float:
        return 0.0 if self.holding is None else self.holding.hold_s(_shape(req), views)

    def place_held(
        self, held: Sequence[tuple[int, Req, float]], views: list[NodeView]
    ) -> list[tuple[int, str]]:
        """(key, node id) for the held ``(key, request, waited s)`` placed now."""
        if self.holding is None:
            return []
        waiting = [HeldRequest(key, _shape(req), waited) for key, req, waited in held]
        return [(h.key, v.node_id) for h, v in self.holding.place_held(waiting, views, self.rng)]

    def sent(self, node_id: str, req: Req) -> object:
        return None

    def ended(self, held: object, total_tokens: int | None) -> None:
        pass


class _LiteLLM(_Native):
    """LiteLLM's Router (``benchmarks.litellm_router``) on the model's clock."""

    def __init__(self, name: str, nodes: Sequence[SimNode], clock: Callable[[], float]) -> None:
        from benchmarks.litellm_router import LiteLLMRouter  # noqa: PLC0415 - optional

        self.router = LiteLLMRouter(name, [(n.node_id, n.profile.name) for n in nodes], clock=clock)

    def order(self, req: Req, views: list[NodeView]) -> list[str]:
        return [p.node_id for p in self.router.order(req.prompt_tokens, req.tokens, "general")]

    def hold(self, req: Req, views: list[NodeView]) -> float:
        return 0.0

    def sent(self, node_id: str, req: Req) -> object:
        return self.router.reserve(node_id, req.prompt_tokens + req.tokens)

    def ended(self, held: object, total_tokens: int | None) -> None:
        assert isinstance(held, Held)
        self.router.outcome(held, total_tokens)
        self.router.release(held)


def simulate(
    trace: Sequence[Req],
    policy_name: str,
    *,
    seed: int = 1,
    mix: Sequence[tuple[str, int]] = MIX,
    budget: int = BUDGET,
    staleness_s: float = STALENESS_S,
    attempts: int = MAX_ATTEMPTS,
    overhead_s: float = 0.0,
    check: bool = False,
    options: Mapping[str, float] | None = None,
    records: list[tuple[int, str, float]] | None = None,
) -> PolicyResult:
    """Run ``trace`` through the cluster with one policy; ``check`` asserts every event.

    ``options`` configure the policy (``make_policy``). ``records``, when given,
    receives one ``(max_tokens, route, latency s)`` per request (route ``edge`` or
    ``cloud``), in completion order.
    """
    prices = PriceTable()
    random.seed(seed)  # LiteLLM's strategies draw from the global random module
    nodes = make_nodes(mix, budget, staleness_s, overhead_s)
    by_id = {n.node_id: n for n in nodes}
    clock = [0.0]
    chooser = (
        _LiteLLM(policy_name, nodes, lambda: clock[0])
        if policy_name.startswith("litellm_")
        else _Native(policy_name, seed, options or {})
    )
    latencies: list[float] = []
    processed = rejected = redirects = 0
    cost = 0.0
    started: dict[int, tuple[float, int, object]] = {}  # serial -> (arrival, refusals, held)
    waiting: dict[int, float] = {}  # trace index -> hold deadline, in arrival order

    def cloud(i: int, now: float, refusals: int) -> None:
        nonlocal redirects, cost
        req = trace[i]
        redirects += 1
        cost += prices.cost(CLOUD_MODEL, req.prompt_tokens, req.tokens)
        wait = now - req.t
        latencies.append(wait + refusals * REFUSAL_S + CLOUD_BASE_S + req.tokens / CLOUD_TPS)
        if records is not None:
            records.append((req.tokens, "cloud", latencies[-1]))

    def send(i: int, now: float, order: Sequence[str]) -> None:
        """Try the ordered nodes (at most ``attempts``), then the cloud."""
        nonlocal rejected
        req = trace[i]
        refusals = 0
        for node_id in order[:attempts]:
            held = chooser.sent(node_id, req)
            if by_id[node_id].try_start(now, req, i, refusals):
                started[i] = (req.t, refusals, held)
                break
            chooser.ended(held, None)
            refusals += 1
        else:
            cloud(i, now, refusals)
        rejected += refusals

    def arrive(i: int, now: float) -> None:
        views = [n.view() for n in nodes]
        hold = chooser.hold(trace[i], views)
        if hold > 0:
            waiting[i] = now + hold
        else:
            send(i, now, chooser.order(trace[i], views))

    def retry_waiting(now: float) -> None:
        for i in [i for i, deadline in waiting.items() if deadline <= now]:
            del waiting[i]
            cloud(i, now, 0)
        if not waiting:
            return
        views = [n.view() for n in nodes]
        held = [(i, trace[i], now - trace[i].t) for i in waiting]
        for i, node_id in chooser.place_held(held, views):
            del waiting[i]
            send(i, now, [node_id])  # where the view says it fits; a refusal -> the cloud

    i = 0
    while True:
        arrival = trace[i].t if i < len(trace) else math.inf
        done = min(nodes, key=SimNode.next_completion)
        publish = min(nodes, key=lambda n: n.publish_at)
        t_done, t_pub = done.next_completion(), publish.publish_at
        t_hold = min(waiting.values(), default=math.inf)
        now = min(arrival, t_done, t_pub, t_hold)
        if now == math.inf:
            break
        clock[0] = now
        if t_done == now:  # completions first, then publishes, hold deadlines, arrivals
            serial = done.complete(now)
            if serial is not None:  # else its overhead tail begins: the slot is still held
                t0, refusals, held = started.pop(serial)
                req = trace[serial]
                chooser.ended(held, req.prompt_tokens + req.tokens)
                latencies.append(now - t0 + refusals * REFUSAL_S)
                if records is not None:
                    records.append((req.tokens, "edge", latencies[-1]))
                processed += 1
                retry_waiting(now)
        elif t_pub == now:
            publish.publish(now)
            retry_waiting(now)
        elif t_hold == now:
            retry_waiting(now)
        else:
            arrive(i, now)
            i += 1
        if check:
            for n in nodes:
                n.check()
    latencies.sort()
    return {
        "processed": processed,
        "rejected": rejected,
        "cloud_redirects": redirects,
        "cloud_cost_usd": round(cost, 4),
        "p50_ms": percentile_ms(latencies, 0.5),
        "p95_ms": percentile_ms(latencies, 0.95),
    }


def print_table(results: Mapping[str, PolicyResult], file: TextIO | None = None) -> None:
    """One row per method, one column per :class:`PolicyResult` field."""
    cols = list(PolicyResult.__annotations__)
    print(f"{'policy':<21}" + "".join(f"{c:>16}" for c in cols), file=file)
    for name, result in results.items():
        row: dict[str, object] = dict(result)
        print(f"{name:<21}" + "".join(f"{row[c]!s:>16}" for c in cols), file=file)


def _ratio(policies: dict[str, PolicyResult], a: str, b: str) -> float | None:
    if a not in policies or b not in policies or policies[b]["cloud_cost_usd"] == 0:
        return None
    return round(policies[a]["cloud_cost_usd"] / policies[b]["cloud_cost_usd"], 3)


def _option(text: str) -> tuple[str, float]:
    """``target_s=8`` -> ("target_s", 8.0)."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: {value!r} is not a number") from None


def _mix(text: str) -> tuple[tuple[str, int], ...]:
    """``jetson-agx-orin:4,raspberry-pi-5:4`` -> ((name, count), ...)."""
    out = []
    for part in text.split(","):
        name, _, count = part.partition(":")
        get_profile(name.strip())
        out.append((name.strip(), int(count or 1)))
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3600.0, help="trace seconds")
    parser.add_argument("--base-rps", type=float, default=BASE_RPS, help="base arrival rate")
    every = [*POLICIES, "litellm_least_busy", "litellm_usage_based"]
    parser.add_argument("--policies", nargs="+", default=every, choices=every)
    parser.add_argument(
        "--mix", type=_mix, default=MIX, help="profile:count,... (default 2 AGX Orin + 6 Nano)"
    )
    parser.add_argument("--staleness", type=float, default=STALENESS_S, help="load debounce, s")
    parser.add_argument("--budget", type=int, default=BUDGET, help="max_inflight_tokens")
    parser.add_argument("--attempts", type=int, default=MAX_ATTEMPTS, help="edge tries")
    parser.add_argument(
        "--cost-aware",
        type=_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of cost_aware, e.g. target_s=8 or patience=1 (repeatable)",
    )
    args = parser.parse_args()
    ours = dict(args.cost_aware)
    try:
        make_policy("cost_aware", **ours)
    except ValueError as exc:
        parser.error(str(exc))
    trace = make_trace(args.seed, args.duration, args.base_rps)
    t0 = time.perf_counter()
    results: dict[str, PolicyResult] = {}
    tails: dict[str, dict[str, float]] = {}
    for name in args.policies:
        records: list[tuple[int, str, float]] = []
        results[name] = simulate(
            trace,
            name,
            seed=args.seed,
            budget=args.budget,
            staleness_s=args.staleness,
            attempts=args.attempts,
            mix=args.mix,
            options=ours if name == "cost_aware" else None,
            records=records,
        )
        latencies = sorted(r[2] for r in records)
        tails[name] = {
            "p99_ms": percentile_ms(latencies, 0.99),
            "max_ms": percentile_ms(latencies, 1.0),
        }
    ratios = {
        "load_aware/random": _ratio(results, "load_aware", "random"),
        "fit_first/load_aware": _ratio(results, "fit_first", "load_aware"),
        "cost_aware/load_aware": _ratio(results, "cost_aware", "load_aware"),
    }
    mix = " + ".join(f"{count} x {name}" for name, count in args.mix)
    out = {
        "model": "discrete-event",
        "nodes": {
            "mix": mix,
            "count": sum(count for _, count in args.mix),
            "max_inflight_tokens": args.budget,
            "max_tokens": MAX_TOKENS,
            "staleness_s": args.staleness,
            "max_attempts": args.attempts,
            "service": "processor sharing, rate * min(1, k / n)",
            "cloud_latency": f"{CLOUD_BASE_S * 1e3:g} ms + tokens / {CLOUD_TPS:g} tok/s",
            "cloud_price": "GPT-4 8K: $0.03 / 1K prompt, $0.06 / 1K completion tokens",
        },
        "trace": describe(trace, args.duration, args.base_rps, args.seed),
        "cost_aware_options": ours,
        "policies": results,
        "tails": tails,
        "ratios": ratios,
        "runtime_s": round(time.perf_counter() - t0, 3),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{mix}; {len(trace)} requests, seed {args.seed}")
    print_table(results)
    for name, tail in tails.items():
        print(f"{name}: p99 {tail['p99_ms']:g} ms, max {tail['max_ms']:g} ms")
    for label, value in ratios.items():
        print(f"cloud cost {label}: {value}")


__all__ = [
    "BUDGET",
    "CLOUD_BASE_S",
    "CLOUD_MODEL",
    "CLOUD_TPS",
    "MAX_ATTEMPTS",
    "MAX_TOKENS",
    "MIX",
    "STALENESS_S",
    "PolicyResult",
    "SimNode",
    "make_nodes",
    "percentile_ms",
    "print_table",
    "simulate",
]


if __name__ == "__main__":
    main()
