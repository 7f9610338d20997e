"""The paper's urban scenario (parallel): risks of an outdoor event, from three agents' data.

"Evaluate environmental risks for setting up an outdoor event" is decomposed by
the gateway into the ``event_risk`` fan-out: the camera agent (crowd counts from
the simulated camera), the environment monitor (air quality and weather from the
roadside unit's synthetic monitor) and the roadside-unit agent (traffic counts)
answer in parallel from their own data, each within a deadline; with a quorum of
two, the assistant aggregates the assessments (its expertise does not cover the
environment domain, so it consults the environment expert's knowledge base).
"""

from __future__ import annotations

import asyncio

from broker import BusSettings
from edgecollab.scenarios.show import outcome_lines
from edgecollab.scenarios.testbed import NodeSpec, Testbed, device_config
from gateway.collab import CollabOutcome
from gateway.planner import make_plan
from wearables.config import SensorConfig

QUESTION = "Evaluate environmental risks for setting up an outdoor event"
NODES = (
    NodeSpec(
        "camera-agent",
        ("camera",),
        data_topics=("data/urban/crowd/+", "data/urban/events/camera-1"),
        role="camera agent",
    ),
    NodeSpec(
        "env-monitor",
        ("air_quality",),
        data_topics=("data/urban/air_quality/+",),
        role="environment monitor agent",
    ),
    NodeSpec(
        "rsu-agent",
        ("traffic",),
        data_topics=("data/urban/traffic/+", "data/urban/events/rsu-1"),
        role="roadside unit agent",
    ),
    NodeSpec("assistant", ("general",), ask=True, role="personal assistant"),
    NodeSpec("env-expert", ("environment",), documents=("environment",), role="environment expert"),
)
DATA = {"camera-agent": ("crowd",), "env-monitor": ("air_quality",), "rsu-agent": ("traffic",)}


def devices(bus: BusSettings, speed: float = 20.0) -> list[SensorConfig]:
    return [device_config("camera", bus, speed), device_config("roadside-unit", bus, speed)]


async def run_urban(
    bed: Testbed,
    *,
    question: str = QUESTION,
    max_tokens: int | None = None,
    subtask_deadline_s: float = 120.0,
) -> CollabOutcome:
    """Run the fan-out on ``bed`` and print what happened."""
    await bed.wait_for_data(DATA)
    domain, _ = await asyncio.to_thread(bed.gateway.orchestrator.classify, question)
    plan = make_plan(question, domain, max_tokens=max_tokens, subtask_deadline_s=subtask_deadline_s)
    print(f'operator asks: "{question}"  (classified: {domain}; template by rule: {plan.template})')
    outcome = await bed.runner.run(plan, tenant="city-events")
    for line in outcome_lines(outcome):
        print(line)
    return outcome
