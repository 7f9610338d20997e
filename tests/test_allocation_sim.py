"""The discrete-event allocation model: determinism, conservation, limits, speed."""

from __future__ import annotations

import itertools
import time

import pytest

from benchmarks.allocation_sim import SimNode, make_nodes, simulate
from benchmarks.trace import Req, make_trace, rate_at
from edge_node.profiles import get_profile

POLICIES = ("random", "weighted", "load_aware", "fit_first")
EVERY = (*POLICIES, "cost_aware", "litellm_least_busy", "litellm_usage_based")


@pytest.fixture(scope="module")
def trace() -> list[Req]:
    """Ten minutes including one surge (270-330 s), heavy enough to shed to the cloud."""
    return make_trace(5, 600.0, 2.5)


def test_trace_is_seeded_sorted_and_surges() -> None:
    a, b = make_trace(3, 1200.0), make_trace(3, 1200.0)
    assert a == b != make_trace(4, 1200.0)
    assert all(x.t <= y.t for x, y in itertools.pairwise(a))
    assert {r.tokens for r in a} == {50, 100, 200, 300, 500}
    assert all(30 <= r.prompt_tokens <= 120 for r in a)
    surge = sum(270 <= r.t < 330 for r in a)
    calm = sum(100 <= r.t < 160 for r in a)
    assert surge > 2.5 * calm  # x4 on average
    assert rate_at(300.0, 2.0) == (8.0, 330.0)


@pytest.mark.parametrize("policy", EVERY)
@pytest.mark.parametrize("overhead", [0.0, 0.1])
def test_deterministic_and_conserving_within_limits(
    trace: list[Req], policy: str, overhead: float
) -> None:
    first = simulate(trace, policy, seed=9, overhead_s=overhead, check=True)  # every event
    assert first == simulate(trace, policy, seed=9, overhead_s=overhead)
    assert first["processed"] + first["cloud_redirects"] == len(trace)
    assert first["cloud_redirects"] > 0  # the surge saturates the cluster
    if policy not in POLICIES:  # holds and LiteLLM's "no deployment" skip the refusal
        return
    assert first["rejected"] >= first["cloud_redirects"]  # each redirect was refused first
    assert 0 < first["p50_ms"] <= first["p95_ms"]


@pytest.mark.parametrize("staleness", [0.0, 0.2, 2.0])
def test_invariants_hold_with_small_budgets_and_stale_views(
    trace: list[Req], staleness: float
) -> None:
    result = simulate(trace, "fit_first", budget=700, staleness_s=staleness, check=True)
    assert result["processed"] + result["cloud_redirects"] == len(trace)


def test_check_catches_an_overfull_node() -> None:
    node = make_nodes()[0]
    node.admission.in_flight = node.admission.concurrency + 1
    with pytest.raises(AssertionError):
        node.check()


def test_tiny_load_never_goes_to_the_cloud() -> None:
    light = make_trace(2, 600.0, 0.05)
    for policy in POLICIES:
        result = simulate(light, policy, check=True)
        assert result["cloud_redirects"] == 0
        assert result["rejected"] == 0
        assert result["cloud_cost_usd"] == 0.0


def test_processor_sharing_matches_the_engine_formula() -> None:
    profile = get_profile("jetson-orin-nano")  # k = 1.5, two slots
    node = SimNode("n", profile, 4096, 0.0)
    assert node.try_start(0.0, Req(0.0, 0, 90), 0, 0)
    assert node.try_start(0.0, Req(0.0, 0, 90), 1, 0)
    # Two streams at 60 * 0.75 = 45 tok/s each: both end at 2 s.
    assert node.next_completion() == pytest.approx(2.0)
    assert not node.try_start(0.0, Req(0.0, 0, 50), 2, 0)  # no free slot: refused
    node.complete(node.next_completion())
    node.check()


def test_one_hour_runs_in_seconds() -> None:
    trace = make_trace(1, 3600.0)
    t0 = time.perf_counter()
    result = simulate(trace, "fit_first")
    elapsed = time.perf_counter() - t0
    print(f"1-hour trace, {len(trace)} requests, fit_first: {elapsed:.2f} s")
    assert result["processed"] + result["cloud_redirects"] == len(trace)
    assert elapsed < 30  # loose: about a second on a laptop


def test_cost_aware_holds_instead_of_refusing_and_saves_cloud_cost(trace: list[Req]) -> None:
    load_aware = simulate(trace, "load_aware", seed=9)
    ours = simulate(trace, "cost_aware", seed=9)
    assert ours["rejected"] == 0  # it never sends a request where the view says it won't fit
    assert ours["cloud_cost_usd"] < load_aware["cloud_cost_usd"]


def test_overhead_holds_slots_longer() -> None:
    node = SimNode("n", get_profile("jetson-orin-nano"), 4096, 0.0, overhead_s=0.5)
    assert node.try_start(0.0, Req(0.0, 0, 60), 0, 0)  # 1 s of decode alone
    assert node.next_completion() == pytest.approx(1.0)
    assert node.complete(1.0) is None  # the device is done; the slot is held 0.5 s more
    node.check()
    assert node.admission.in_flight == 1
    assert node.next_completion() == pytest.approx(1.5)
    assert node.complete(1.5) == 0
    assert node.admission.in_flight == 0
