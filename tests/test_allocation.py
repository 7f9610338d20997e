"""The allocation study through the real system (short runs) and LiteLLM's Router adapter."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.allocation import POLICY_NAMES, agreement
from benchmarks.allocation_sim import simulate
from benchmarks.allocation_system import prompt_for, run_policy
from benchmarks.litellm_router import LiteLLMRouter, limits
from benchmarks.trace import make_trace
from broker import ChatMessage
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig
from tests.helpers import settings

ROOT = Path(__file__).resolve().parent.parent
NODES = [("agx", "jetson-agx-orin"), ("nano-0", "jetson-orin-nano"), ("nano-1", "jetson-orin-nano")]


def test_prompt_for_is_counted_as_asked() -> None:
    engine = SimulatedEngine(SimulatedEngineConfig(profile="raspberry-pi-5"))
    for tokens in range(30, 121):
        text = prompt_for(tokens)
        got = engine.count_prompt_tokens([ChatMessage(role="user", content=text)])
        assert abs(got - tokens) <= 1


def test_litellm_limits_from_the_profiles() -> None:
    assert limits("jetson-agx-orin") == (98, 22883)  # 130 tok/s x k=2 for a minute / 158.5
    assert limits("jetson-orin-nano") == (34, 7939)  # 60 x 1.5


def test_litellm_least_busy_uses_its_own_in_flight_counts() -> None:
    router = LiteLLMRouter("litellm_least_busy", NODES, clock=lambda: 0.0)
    first = router.order(50, 100, "general")[0].node_id
    held = router.reserve(first, 150)
    second = router.order(50, 100, "general")[0].node_id
    assert second != first  # the first now has one request in flight
    router.outcome(held, None)  # refused: LiteLLM's failure callback decrements
    router.release(held)
    assert router.order(50, 100, "general")[0].node_id == first


def test_litellm_usage_based_stops_at_the_rpm_limit_per_minute() -> None:
    now = [0.0]
    router = LiteLLMRouter("litellm_usage_based", NODES, clock=lambda: now[0])
    total_rpm = 98 + 34 + 34
    picked = [router.order(50, 100, "general") for _ in range(total_rpm + 5)]
    assert sum(1 for p in picked if p) < total_rpm  # over every node's rpm: cloud
    assert picked[-1] == []
    assert router.stats["no_deployment"] + router.stats["rate_limited"] >= 5
    now[0] = 61.0  # the next (simulated) minute: fresh windows
    assert router.order(50, 100, "general") != []


async def test_litellm_router_hands_the_request_to_the_task_that_calls_the_node() -> None:
    router = LiteLLMRouter("litellm_usage_based", NODES, clock=lambda: 0.0)
    held = router.reserve("agx", 150)

    async def edge_attempt() -> None:  # the orchestrator's own task for the call
        assert router.sent() is held
        router.outcome(held, 150)
        assert router.sent() is None  # its outcome is known

    await asyncio.create_task(edge_attempt())
    assert held.outcome == 150
    assert router.stats["outcomes"] == 1
    router.release(held)


async def test_short_run_through_the_system_adds_up_and_agrees_with_the_model(
    mosquitto,
) -> None:
    trace = make_trace(4, 60.0, 2.0)  # light: one minute, no surge
    bus = settings(mosquitto)
    system, model = {}, {}
    for k, name in enumerate(
        ("load_aware", "cost_aware", "litellm_least_busy", "litellm_usage_based")
    ):
        result, extra = await run_policy(name, trace, bus, speedup=20.0, run=f"ta{k}")
        assert extra["errors"] == 0
        assert result["processed"] + result["cloud_redirects"] == extra["sent"] == len(trace)
        assert extra["ledger_requests"] == len(trace)  # every request is in the ledger
        assert extra["ledger_edge"] == result["processed"]
        assert extra["ledger_cloud"] == result["cloud_redirects"] == extra["cloud_calls_simulated"]
        if name != "litellm_usage_based":  # it sends to the lowest tokens/min, busy or not
            assert result["processed"] > 0.8 * len(trace)  # a light load stays at the edge
        if name.startswith("litellm_"):  # LiteLLM learnt how every edge attempt ended
            assert extra["litellm"]["outcomes"] == result["processed"] + result["rejected"]
        system[name] = result
        model[name] = simulate(trace, name, seed=4, overhead_s=extra["overhead_s"])
    check = agreement(system, model, len(trace))
    assert check["passed"], check


def test_cli_json_shape_and_plot(tmp_path: Path) -> None:
    plot = tmp_path / "fig6.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.allocation",
            "--json",
            "--duration",
            "30",
            "--speedup",
            "30",
            "--sweep-seeds",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    data = json.loads(out.stdout)
    assert set(data["policies"]) == set(POLICY_NAMES)
    for name, row in data["policies"].items():
        assert set(row) == {
            "processed",
            "rejected",
            "cloud_redirects",
            "cloud_cost_usd",
            "p50_ms",
            "p95_ms",
        }
        assert row["processed"] + row["cloud_redirects"] == data["trace"]["requests"], name
    assert "simulated" in data["nodes"]["mix"]
    assert data["speedup"] == 30
    assert "agreement" in data
    assert "passed" in data["agreement"]
    assert all("passed" in c for c in data["checks"])
    assert "[PASS]" in out.stderr or "[FAIL]" in out.stderr  # the table and checks
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
