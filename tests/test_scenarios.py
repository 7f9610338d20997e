"""Short versions of the paper's two scenarios, end to end: real Mosquitto, SmolLM2 nodes
sharing one llama.cpp engine, simulated device agents replaying data, the real gateway
(with the cloud stand-in configured, so "nothing went to the cloud" can fail)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from broker import BusClient, Cms
from edgecollab.scenarios import health, urban
from edgecollab.scenarios.testbed import start_testbed
from tests.helpers import settings

pytestmark = pytest.mark.slow


async def cms_entries(bed, task_id: str) -> dict[str, object]:
    async with (
        BusClient(bed.bus, "scenario-test-reader") as bus,
        Cms(bus).mirror(f"slm/inference/{task_id}") as mirror,
    ):
        return {k.rsplit("/", 1)[1]: e.value for k, e in mirror.items()}


async def test_health_scenario_short(fresh_broker, engine, cloud_url, tmp_path, capsys):
    bus = settings(fresh_broker)
    async with start_testbed(
        bus, engine, health.NODES, health.devices(bus, speed=20), cloud_url=cloud_url
    ) as bed:
        outcome, report = await health.run_health(
            bed, max_tokens=24, report_dir=tmp_path, subtask_deadline_s=240
        )
        cms = await cms_entries(bed, outcome.plan.task_id)
    printed = capsys.readouterr().out
    assert outcome.status == "done", outcome.notes
    steps = {s.name: s for s in outcome.steps}
    assert [s.node for s in outcome.steps] == ["wrist-vitals", "gait-motion", "assistant"]
    vitals = steps["vitals"].meta["grounding"]["readings"]
    assert {(r["agent"], r["stream"]) for r in vitals} == {("wearable-1", "vitals")}
    assert 0.0 < vitals[0]["likeness"] <= 1.0  # compared with earlier vitals embeddings
    motion = {r["stream"] for r in steps["motion"].meta["grounding"]["readings"]}
    assert motion <= {"gait", "imu"}
    assert motion
    knowledge = steps["advice"].meta["knowledge"]
    assert knowledge["integrated"] is True
    assert knowledge["peer"] == "health-expert"
    assert knowledge["documents"]
    assert all(d["id"].startswith("h-") for d in knowledge["documents"])
    assert outcome.cloud_steps == []  # no-cloud: health data stays on the edge
    text = report.read_text()
    assert "Report for the clinician" in text
    assert "health-expert" in text
    assert "| wearable-1 | vitals |" in text
    assert cms["status"] == "done"
    assert cms["plan"]["template"] == "health_check"
    assert f"clinician report: {report}" in printed
    assert "cloud: nothing" in printed


async def test_urban_scenario_short(fresh_broker, engine, cloud_url, capsys):
    bus = settings(fresh_broker)
    async with start_testbed(
        bus, engine, urban.NODES, urban.devices(bus, speed=20), cloud_url=cloud_url
    ) as bed:
        outcome = await urban.run_urban(bed, max_tokens=24, subtask_deadline_s=240)
        cms = await cms_entries(bed, outcome.plan.task_id)
    printed = capsys.readouterr().out
    assert outcome.plan.template == "event_risk"  # chosen by the rule, not named
    assert outcome.status == "done", outcome.notes
    steps = {s.name: s for s in outcome.steps}
    expected = {"crowd": ("camera-agent", "crowd"), "air": ("env-monitor", "air_quality")}
    expected["traffic"] = ("rsu-agent", "traffic")
    for name, (node, stream) in expected.items():
        assert steps[name].node == node
        assert steps[name].text
        streams = {r["stream"] for r in steps[name].meta["grounding"]["readings"]}
        assert streams == {stream}
    assert steps["aggregate"].node == "assistant"
    assert steps["aggregate"].meta["knowledge"]["peer"] == "env-expert"
    assert outcome.answer == steps["aggregate"].text
    assert outcome.cloud_steps == []
    assert cms["plan"]["mode"] == "parallel"
    assert set(cms["assigned_device"]) == {"crowd", "air", "traffic", "aggregate"}
    assert "cloud: nothing" in printed


def test_the_scenario_command_refuses_an_unknown_scenario():
    done = subprocess.run(
        [sys.executable, "-m", "edgecollab.cli", "scenario", "harbour"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "invalid choice: 'harbour'" in done.stderr
