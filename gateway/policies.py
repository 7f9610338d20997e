"""Scheduling policies: in which order the gateway tries edge nodes for one request.

A policy orders the candidates (:meth:`gateway.nodes.NodeDirectory.candidates`);
the orchestrator tries them in that order, moving on after ``overloaded`` or a dead
node, then goes to the cloud. Every policy drops the nodes that would *never*
admit the request (``prompt + max_tokens`` above the node's token budget, or
``max_tokens`` above its limit: the node would refuse it outright), so each node's
limits are honoured; beyond that:

- ``random``: uniform, regardless of capacity or load (the paper's Random).
- ``weighted``: random, favouring capacity: each position is drawn with probability
  proportional to ``capacity_tps`` among the nodes not yet drawn.
- ``load_aware``: least utilised first, utilisation =
  ``max(in_flight / slots, tokens_in_flight / max_inflight_tokens)``; ties broken
  at random so that idle nodes share the work.
- ``fit_first`` (ours): token-aware expected completion. Why it should cost less
  cloud than ``load_aware``:

  1. It applies the node's admission rule exactly (free slot, and
     ``tokens_in_flight + prompt + max_tokens <= max_inflight_tokens``), so the
     first choices are nodes that will say yes. Least utilised is not the same as
     fits: a node with a free slot but a nearly spent token budget looks idle to
     ``load_aware`` and refuses a 500-token request; with a few attempts per
     request, wasted refusals end in the cloud.
  2. Among nodes that fit, the earliest expected completion goes first:
     ``max(need / stream_tps, (tokens_in_flight + need) / capacity_tps)`` — a
     lone stream cannot beat the single-stream rate, and the node's backlog drains
     at its aggregate rate. Work goes to where it ends soonest, so slots and token
     budgets are freed sooner and fewer later requests find the edge full; the
     estimate is a completion *time*, so p95 latency is what it minimises.
  3. Nodes that do not fit now are not dropped but go last, by the same estimate:
     the view lags by the node's load debounce and completions free capacity all
     the time; trying one costs an immediate ``overloaded`` (one round trip),
     skipping it costs a cloud call at GPT-4 prices.
  4. With more than ``scan_limit`` candidates and a bounded ``limit``, it samples
     ``choices x limit`` nodes at random and ranks those (power of d choices),
     scanning everything only when too few sampled nodes fit. That keeps a
     decision O(limit) at 1,000 nodes and stops several gateways, which read the
     same lagging CMS, from all sending their next request to the same best node
     (the gateway's own reservations already prevent that within one gateway).

- ``cost_aware`` (ours, for the allocation study): fit_first's order, and a request
  that fits nowhere now is *held* at the gateway instead of going to the cloud at
  once. Nodes refuse rather than queue, so without a hold every request that meets a
  full cluster during a surge pays GPT-4 prices although a slot frees every few
  hundred milliseconds. The hold is set by a latency objective ``target_s`` (default
  5.5 s), with ``cloud_s = cloud_base_s + max_tokens / cloud_tps``:

  1. a request the cloud can answer within the objective (``cloud_s < target_s``) is
     held ``target_s - cloud_s``: if no slot frees for it, the cloud still answers
     in time;
  2. a request the cloud cannot answer in time misses the objective whichever way it
     goes, so it may wait longer for the edge, where it costs nothing: up to
     ``patience x cloud_s`` (default 2, so at worst ``3 x cloud_s`` in all). These
     are the large requests, the ones that cost the most in the cloud.

  Freed capacity goes to held requests in two passes (:meth:`CostAwarePolicy.place_held`):
  first, largest first, to those that still meet the objective on a node that fits
  (waited + ``max_tokens`` at the request's share of the node's rate, processor
  sharing, <= ``target_s``), so a slot on a fast node serves a large request in time
  rather than a small one that would be as quick in the cloud; then, smallest first,
  to the rest on any node that fits (per second of slot time a small request saves
  the most cloud money: its prompt is billed too). A held request
  that fits nowhere when its hold ends goes to the cloud without a refused attempt.
  :meth:`CostAwarePolicy.hold_s` says how long; the gateway's router waits on the
  node directory (``gateway.routing.PolicyRouter``).

``limit`` bounds how many nodes a policy returns (default :data:`DEFAULT_LIMIT`:
twice the orchestrator's default of four attempts); ``None`` orders every node.
"""

from __future__ import annotations

import bisect
import heapq
import inspect
import itertools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import ClassVar, Protocol, TypedDict, runtime_checkable

from gateway.nodes import NodeView

DEFAULT_LIMIT = 8
_UTILISATION = attrgetter("utilisation")
_CAPACITY = attrgetter("capacity_tps")


class UnknownPolicyError(ValueError):
    """No policy has that name (a ValueError, so pydantic validators report it)."""


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What a policy knows about a request: its token demand and domain."""

    prompt_tokens: int
    max_tokens: int
    domain: str = "general"

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.max_tokens < 1:
            raise ValueError("prompt_tokens must be >= 0 and max_tokens >= 1")

    @property
    def tokens(self) -> int:
        """What a node's admission reserves: prompt plus ``max_tokens``."""
        return self.prompt_tokens + self.max_tokens


class Policy(Protocol):
    """Orders candidates, best first; returns at most ``limit`` of them."""

    name: ClassVar[str]

    def order(
        self,
        request: RequestShape,
        candidates: Sequence[NodeView],
        rng: random.Random,
        *,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[NodeView]: ...


def _shuffled(items: Sequence[NodeView], rng: random.Random) -> Iterator[NodeView]:
    """Uniformly random order, drawn lazily (partial Fisher-Yates): O(1) per item taken."""
    pool = list(items)
    n = len(pool)
    for i in range(n):
        j = i + int(rng.random() * (n - i))
        pool[i], pool[j] = pool[j], pool[i]
        yield pool[i]


class RandomPolicy:
    name: ClassVar[str] = "random"

    def order(
        self,
        request: RequestShape,
        candidates: Sequence[NodeView],
        rng: random.Random,
        *,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[NodeView]:
        tokens, max_tokens = request.tokens, request.max_tokens
        ok = (v for v in _shuffled(candidates, rng) if v.can_take(tokens, max_tokens))
        return list(itertools.islice(ok, limit))


class WeightedPolicy:
    name: ClassVar[str] = "weighted"

    def order(
        self,
        request: RequestShape,
        candidates: Sequence[NodeView],
        rng: random.Random,
        *,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[NodeView]:
        tokens, max_tokens = request.tokens, request.max_tokens
        n = len(candidates)
        if limit is not None and 0 < limit * 4 <= n:
            # Draws proportional to capacity; a node drawn again or unable to take the
            # request is skipped: exactly sampling among the nodes not drawn yet.
            cumulative = list(itertools.accumulate(map(_CAPACITY, candidates)))
            total = cumulative[-1]
            seen: set[int] = set()
            out: list[NodeView] = []
            for _ in range(8 * limit):
                i = min(bisect.bisect(cumulative, rng.random() * total), n - 1)
                if i not in seen:
                    seen.add(i)
                    if candidates[i].can_take(tokens, max_tokens):
                        out.append(candidates[i])
                        if len(out) == limit:
                            return out
            rest = [v for i, v in enumerate(candidates) if i not in seen]
            return out + self.order(request, rest, rng, limit=limit - len(out))
        # Exponential races (Efraimidis-Spirakis): the same distribution, all at once.
        keyed = sorted(
            (rng.expovariate(v.capacity_tps), i)
            for i, v in enumerate(candidates)
            if v.can_take(tokens, max_tokens)
        )
        return [candidates[i] for _, i in keyed[:limit]]


class LoadAwarePolicy:
    name: ClassVar[str] = "load_aware"

    def order(
        self,
        request: RequestShape,
        candidates: Sequence[NodeView],
        rng: random.Random,
        *,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[NodeView]:
        tokens, max_tokens = request.tokens, request.max_tokens
        start = int(rng.random() * len(candidates))
        rotated = [*candidates[start:], *candidates[:start]]  # random tie-break (stable sorts)
        if limit is not None:
            best = heapq.nsmallest(limit, rotated, key=_UTILISATION)
            if all(v.can_take(tokens, max_tokens) for v in best):
                return best
        ok = [v for v in rotated if v.can_take(tokens, max_tokens)]
        return sorted(ok, key=_UTILISATION)[:limit]


class FitFirstPolicy:
    """Token-aware expected completion with power-of-d sampling (module docstring)."""

    name: ClassVar[str] = "fit_first"

    def __init__(self, *, scan_limit: int = 64, choices: int = 2) -> None:
        if scan_limit < 1 or choices < 1:
            raise ValueError("scan_limit and choices must be positive")
        self.scan_limit = scan_limit
        self.choices = choices

    def order(
        self,
        request: RequestShape,
        candidates: Sequence[NodeView],
        rng: random.Random,
        *,
        limit: int | None = DEFAULT_LIMIT,
    ) -> list[NodeView]:
        tokens, max_tokens = request.tokens, request.max_tokens
        fit: list[NodeView] = []
        later: list[NodeView] = []
        n = len(candidates)
        if limit is None or n <= self.scan_limit:
            start = int(rng.random() * n)
            pool: Sequence[NodeView] = [*candidates[start:], *candidates[:start]]
        else:
            # Sample choices x limit nodes, more while fewer than limit of them fit (up
            # to scan_limit), then every node: a full scan only near saturation.
            want, drawn = self.choices * limit, _shuffled(candidates, rng)
            pool = []
            while len(pool) < self.scan_limit:
                more = list(itertools.islice(drawn, want))
                pool.extend(more)
                if not more or sum(1 for v in pool if v.fits(tokens, max_tokens)) >= limit:
                    break
            else:
                fitting = [
                    v
                    for v in candidates
                    if v.free_slots > 0 and v.free_tokens >= tokens and v.max_tokens >= max_tokens
                ]
                if len(fitting) > want:
                    fitting = rng.sample(fitting, want)
                pool = fitting + [v for v in pool if not v.fits(tokens, max_tokens)]
        for v in pool:
            if v.fits(tokens, max_tokens):
                fit.append(v)
            elif v.can_take(tokens, max_tokens):
                later.append(v)
        key = _completion(tokens)
        fit.sort(key=key)
        later.sort(key=key)
        return [*fit, *later][:limit]


@dataclass(frozen=True, slots=True)
class HeldRequest:
    """A request the gateway holds for a slot: its key, its shape, seconds waited so far."""

    key: int
    shape: RequestShape
    waited_s: float


@runtime_checkable
class HoldingPolicy(Policy, Protocol):
    """A policy that may hold a request that fits nowhere (``cost_aware``)."""

    def hold_s(self, request: RequestShape, candidates: Sequence[NodeView]) -> float: ...

    def place_held(
        self, held: Sequence[HeldRequest], candidates: Sequence[NodeView], rng: random.Random
    ) -> list[tuple[HeldRequest, NodeView]]: ...


class CostAwarePolicy(FitFirstPolicy):
    """fit_first's order; hold a request that fits nowhere, by a latency objective."""

    name: ClassVar[str] = "cost_aware"

    def __init__(
        self,
        *,
        cloud_base_s: float = 0.8,
        cloud_tps: float = 50.0,
        target_s: float = 5.5,
        patience: float = 2.0,
        scan_limit: int = 64,
        choices: int = 2,
    ) -> None:
        super().__init__(scan_limit=scan_limit, choices=choices)
        if cloud_base_s < 0 or cloud_tps <= 0:
            raise ValueError("cloud_base_s must be >= 0 and cloud_tps > 0")
        if target_s <= 0 or patience < 0:
            raise ValueError("target_s must be > 0 and patience >= 0")
        self.cloud_base_s = cloud_base_s
        self.cloud_tps = cloud_tps
        self.target_s = target_s
        self.patience = patience

    def time_scaled(self, factor: float) -> CostAwarePolicy:
        """The same policy with every duration divided by ``factor`` (compressed time)."""
        return CostAwarePolicy(
            cloud_base_s=self.cloud_base_s / factor,
            cloud_tps=self.cloud_tps * factor,
            target_s=self.target_s / factor,
            patience=self.patience,
            scan_limit=self.scan_limit,
            choices=self.choices,
        )

    def cloud_s(self, max_tokens: int) -> float:
        """Expected seconds for the cloud to answer ``max_tokens``."""
        return self.cloud_base_s + max_tokens / self.cloud_tps

    def hold_s(self, request: RequestShape, candidates: Sequence[NodeView]) -> float:
        """Seconds the gateway may wait for a slot (0 when a node fits or none ever will)."""
        tokens, max_tokens = request.tokens, request.max_tokens
        able = False
        for v in candidates:
            if v.fits(tokens, max_tokens):
                return 0.0
            able = able or v.can_take(tokens, max_tokens)
        if not able:
            return 0.0
        cloud = self.cloud_s(max_tokens)
        if cloud < self.target_s:
            return self.target_s - cloud
        return self.patience * cloud

    def place_held(
        self, held: Sequence[HeldRequest], candidates: Sequence[NodeView], rng: random.Random
    ) -> list[tuple[HeldRequest, NodeView]]:
        """Which held requests go where now, in the two passes of the module docstring.

        Each placement counts in the views of the next (a slot and the tokens), as the
        directory's reservation will.
        """
        views = {v.node_id: v for v in candidates}
        placed: list[tuple[HeldRequest, NodeView]] = []
        free = sum(v.free_slots for v in candidates)

        def take(h: HeldRequest, in_time: bool) -> bool:
            nonlocal free
            tokens, max_tokens = h.shape.tokens, h.shape.max_tokens
            done = _shared_finish(max_tokens)
            for v in self.order(h.shape, list(views.values()), rng):
                if not v.fits(tokens, max_tokens):
                    break  # fitting nodes come first
                if in_time and h.waited_s + done(v) > self.target_s:
                    continue
                placed.append((h, v))
                free -= 1
                views[v.node_id] = replace(
                    v, in_flight=v.in_flight + 1, tokens_in_flight=v.tokens_in_flight + tokens
                )
                return True
            return False

        rest: list[HeldRequest] = []
        for h in sorted(held, key=lambda h: (-h.shape.max_tokens, h.key)):
            if not (free > 0 and take(h, in_time=True)):
                rest.append(h)
        for h in sorted(rest, key=lambda h: (h.shape.max_tokens, h.key)):
            if free <= 0:
                break
            take(h, in_time=False)
        return placed


def _shared_finish(max_tokens: int) -> Callable[[NodeView], float]:
    """Seconds a request would take on a node once it joins the streams running there.

    Processor sharing, as the device shares its throughput: each of ``n`` streams
    decodes at ``stream_tps * min(1, k / n)`` with ``k = capacity_tps / stream_tps``.
    The streams already running are taken to run throughout (an upper bound: they
    end, and this one speeds up); the prompt is left out (prefill runs ten or more
    times faster than decode). :func:`_completion`, fit_first's ranking, counts every
    in-flight token as still to come and every prompt token at decode speed: it
    orders nodes well but overstates the time by seconds on a busy node, which
    made requests that would have been in time wait until they were late.
    """

    def seconds(v: NodeView) -> float:
        k = v.capacity_tps / v.stream_tps
        return max_tokens / (v.stream_tps * min(1.0, k / (v.in_flight + 1)))

    return seconds


def _completion(tokens: int) -> Callable[[NodeView], float]:
    """Expected seconds until a request of ``tokens`` would finish on a node."""

    def seconds(v: NodeView) -> float:
        return max(tokens / v.stream_tps, (v.tokens_in_flight + tokens) / v.capacity_tps)

    return seconds


POLICIES: dict[str, type[Policy]] = {
    p.name: p
    for p in (RandomPolicy, WeightedPolicy, LoadAwarePolicy, FitFirstPolicy, CostAwarePolicy)
}


def make_policy(name: str, **options: float) -> Policy:
    """The policy called ``name``, configured with ``options`` (keyword arguments).

    :class:`UnknownPolicyError` lists the known policies, or the options the policy
    takes when one is unknown; a bad value raises the policy's own ``ValueError``.
    """
    try:
        cls = POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown scheduling policy {name!r}; known policies: {', '.join(sorted(POLICIES))}"
        ) from None
    known = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise UnknownPolicyError(
            f"policy {name!r} has no option {', '.join(unknown)}; its options: "
            f"{', '.join(known) or 'none'}"
        )
    return cls(**options)


class DecisionTiming(TypedDict):
    """Decision time of a policy, microseconds."""

    p50_us: float
    p99_us: float


def pick_timing(
    policy: Policy,
    request: RequestShape,
    candidates: Sequence[NodeView],
    *,
    rounds: int = 2000,
    limit: int | None = DEFAULT_LIMIT,
    rng: random.Random | None = None,
) -> DecisionTiming:
    """Time ``rounds`` calls of ``policy.order`` on the same candidates."""
    rng = rng or random.Random(0)
    return timing(lambda: policy.order(request, candidates, rng, limit=limit), rounds)


def timing(call: Callable[[], object], rounds: int) -> DecisionTiming:
    """p50 and p99 of ``rounds`` timed calls (after a short warm-up), microseconds."""
    if rounds < 1:
        raise ValueError("rounds must be positive")
    for _ in range(min(100, rounds)):
        call()
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        t0 = clock()
        call()
        samples.append(clock() - t0)
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2] / 1e3, 2),
        "p99_us": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))] / 1e3, 2),
    }


__all__ = [
    "DEFAULT_LIMIT",
    "POLICIES",
    "CostAwarePolicy",
    "DecisionTiming",
    "FitFirstPolicy",
    "HeldRequest",
    "HoldingPolicy",
    "LoadAwarePolicy",
    "Policy",
    "RandomPolicy",
    "RequestShape",
    "UnknownPolicyError",
    "WeightedPolicy",
    "make_policy",
    "pick_timing",
    "timing",
]
