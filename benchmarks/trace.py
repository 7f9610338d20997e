"""A seeded request trace for the allocation study: bursty load with periodic surges.

The study (issue 6, the paper's Fig. 6) runs "one hour of bursty load with periodic
surges of requests; each request's token demand drawn from 50, 100, 200, 300 and
500 tokens, weighted toward the small ones". Here:

- arrivals are a piecewise-constant Poisson process: ``base_rps`` (default
  :data:`BASE_RPS` = 2 requests/s), multiplied by ``surge_factor`` (4) for
  ``surge_s`` (60 s) centred in every ``surge_every_s`` (600 s) period, i.e.
  surges at 270-330 s, 870-930 s, ... (six in an hour, none at the cold start);
- ``tokens`` (the request's ``max_tokens``, all generated) is drawn from
  :data:`DEMANDS` = 50/100/200/300/500 with weights 0.35/0.25/0.20/0.12/0.08
  (mean 158.5 tokens);
- ``prompt_tokens`` is uniform on 30..120 (inclusive).

Why 2 requests/s: the default cluster of ``benchmarks.allocation_sim`` (2 Jetson AGX
Orin + 6 Orin Nano) sustains about 6.5 requests/s of this mix when every slot is
busy (20 slots, each request ~2.4-3.5 s at the shared per-stream rates), so the
base load (2/s) fits with room to spare while a surge (8/s) saturates the cluster
and the edge must shed work to the cloud.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Token demands (``max_tokens``) and their weights, toward the small ones.
DEMANDS: tuple[tuple[int, ...], tuple[float, ...]] = (
    (50, 100, 200, 300, 500),
    (0.35, 0.25, 0.20, 0.12, 0.08),
)
PROMPT_TOKENS = (30, 120)  # uniform, inclusive
BASE_RPS = 2.0
SURGE_FACTOR = 4.0
SURGE_S = 60.0
SURGE_EVERY_S = 600.0


@dataclass(frozen=True, slots=True)
class Req:
    """One request of the trace: arrival time (s), prompt and completion tokens."""

    t: float
    prompt_tokens: int
    tokens: int  # max_tokens; the model generates all of them

    def __post_init__(self) -> None:
        if self.t < 0 or self.prompt_tokens < 0 or self.tokens < 1:
            raise ValueError(f"invalid request {self!r}")

    @property
    def max_tokens(self) -> int:
        return self.tokens


def rate_at(
    t: float,
    base_rps: float,
    *,
    surge_factor: float = SURGE_FACTOR,
    surge_s: float = SURGE_S,
    surge_every_s: float = SURGE_EVERY_S,
) -> tuple[float, float]:
    """The arrival rate at ``t`` and the time at which it next changes."""
    period = int(t // surge_every_s)
    start = period * surge_every_s + (surge_every_s - surge_s) / 2
    end = start + surge_s
    if t < start:
        return base_rps, start
    if t < end:
        return base_rps * surge_factor, end
    return base_rps, start + surge_every_s


def make_trace(
    seed: int,
    duration_s: float = 3600.0,
    base_rps: float = BASE_RPS,
    *,
    surge_factor: float = SURGE_FACTOR,
    surge_s: float = SURGE_S,
    surge_every_s: float = SURGE_EVERY_S,
) -> list[Req]:
    """Requests arriving in ``[0, duration_s)``, sorted by time; the same for a seed."""
    if duration_s <= 0 or base_rps <= 0 or surge_factor <= 0:
        raise ValueError("duration_s, base_rps and surge_factor must be positive")
    if not 0 <= surge_s <= surge_every_s:
        raise ValueError("need 0 <= surge_s <= surge_every_s")
    rng = random.Random(seed)
    demands, weights = DEMANDS
    out: list[Req] = []
    t = 0.0
    while True:
        rate, change = rate_at(
            t, base_rps, surge_factor=surge_factor, surge_s=surge_s, surge_every_s=surge_every_s
        )
        step = rng.expovariate(rate)
        if t + step >= change:  # memoryless: restart the draw where the rate changes
            t = change
        else:
            t += step
            if t < duration_s:
                out.append(Req(t, rng.randint(*PROMPT_TOKENS), rng.choices(demands, weights)[0]))
        if t >= duration_s:
            break
    return out


def describe(
    trace: list[Req], duration_s: float, base_rps: float, seed: int
) -> dict[str, float | int | str]:
    """The trace's parameters and size, for a benchmark's JSON output."""
    return {
        "seed": seed,
        "duration_s": duration_s,
        "requests": len(trace),
        "base_rps": base_rps,
        "surges": (f"x{SURGE_FACTOR:g} for {SURGE_S:g} s centred in every {SURGE_EVERY_S:g} s"),
        "tokens": "50/100/200/300/500 at 0.35/0.25/0.20/0.12/0.08",
        "prompt_tokens": f"uniform {PROMPT_TOKENS[0]}-{PROMPT_TOKENS[1]}",
        "mean_tokens": round(sum(r.tokens for r in trace) / max(1, len(trace)), 1),
    }


__all__ = ["BASE_RPS", "DEMANDS", "Req", "describe", "make_trace", "rate_at"]
