"""Allowed and forbidden publishes and subscriptions of each role, against a secure broker.

Used by ``tests/test_secure_acl.py`` and ``benchmarks.faults`` (which prints how many
forbidden cases were refused). Every case is checked from both ends:

- a publish: the publisher's PUBACK reason (0x87 = not authorized) and whether an
  observer with read access received it;
- a subscription: Mosquitto 2.0.11 grants every SUBACK and enforces read access at
  delivery, so a forbidden subscriber must never receive a message that an allowed
  observer (same topic) does receive.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker import BusClient, BusSettings, Inbound
from broker.secure import GeneratedProfile, Manifest, generate
from broker.transport import PublishRefused

MANIFEST: dict[str, Any] = {
    "broker": {"hosts": ["localhost", "127.0.0.1"], "port": 8883},
    "tenants": ["clinic-a", "clinic-b"],
    "agents": [
        {"id": "node-1", "role": "node"},
        {"id": "node-2", "role": "node"},
        {"id": "gateway-1", "role": "gateway"},
        {"id": "wear-a1", "role": "sensor", "tenant": "clinic-a"},
        {"id": "wear-a2", "role": "sensor", "tenant": "clinic-a"},
        {"id": "wear-b1", "role": "sensor", "tenant": "clinic-b"},
        {"id": "ops", "role": "operator"},
        {"id": "ops-a", "role": "operator", "tenant": "clinic-a"},
    ],
}


@dataclass(frozen=True, slots=True)
class PubCase:
    publisher: str
    topic: str
    allowed: bool
    observer: str  # has read access to topic


@dataclass(frozen=True, slots=True)
class SubCase:
    subscriber: str
    filter: str
    publisher: str  # allowed to publish topic
    topic: str
    allowed: bool
    observer: str  # allowed to read topic


PUB_CASES: tuple[PubCase, ...] = (
    PubCase("node-1", "slm/nodes/node-1/birth", True, "gateway-1"),
    PubCase("node-1", "slm/metrics/node-1/tokens_used_total", True, "gateway-1"),
    PubCase("node-1", "slm/nodes/node-2/state", False, "gateway-1"),
    PubCase("node-1", "slm/metrics/node-2/tokens_used_total", False, "gateway-1"),
    PubCase("node-1", "slm/tenants/clinic-a/usage_limit", False, "gateway-1"),
    PubCase("node-1", "slm/parameters/smollm2/temperature", False, "gateway-1"),
    PubCase("node-1", "reply/wear-a1/rpc", True, "wear-a1"),
    PubCase("node-1", "data/env/air/node-1", True, "ops"),
    PubCase("gateway-1", "computation/node/node-1/request", True, "node-1"),
    PubCase("gateway-1", "slm/inference/task1/assigned_device", True, "ops"),
    PubCase("gateway-1", "slm/nodes/node-1/state", False, "ops"),
    PubCase("gateway-1", "slm/tenants/clinic-a/usage_limit", False, "ops"),
    PubCase("wear-a1", "data/health/heart/wear-a1", True, "ops-a"),
    PubCase("wear-a1", "data/health/heart/wear-b1", False, "ops"),
    PubCase("wear-a1", "computation/query/request", True, "gateway-1"),
    PubCase("wear-a1", "computation/node/node-1/request", False, "node-1"),
    PubCase("wear-a1", "computation/chat/request", False, "node-1"),
    PubCase("wear-a1", "slm/nodes/node-1/state", False, "gateway-1"),
    PubCase("wear-a1", "slm/tenants/clinic-a/usage_limit", False, "gateway-1"),
    PubCase("wear-a1", "reply/wear-b1/rpc", False, "wear-b1"),
    PubCase("ops-a", "slm/tenants/clinic-a/usage_limit", True, "gateway-1"),
    PubCase("ops-a", "slm/tenants/clinic-b/usage_limit", False, "gateway-1"),
    PubCase("ops-a", "slm/parameters/smollm2/temperature", False, "gateway-1"),
    PubCase("ops", "slm/parameters/smollm2/temperature", True, "node-1"),
    PubCase("ops", "slm/tenants/clinic-b/usage_limit", True, "gateway-1"),
    PubCase("ops", "slm/nodes/node-1/state", False, "gateway-1"),
)

SUB_CASES: tuple[SubCase, ...] = (
    # tenant A cannot read tenant B's replies (and nobody reads another's)
    SubCase("wear-b1", "reply/wear-a1/#", "gateway-1", "reply/wear-a1/rpc", False, "wear-a1"),
    SubCase("wear-a1", "reply/wear-a1/#", "gateway-1", "reply/wear-a1/rpc", True, "wear-a1"),
    SubCase("node-2", "reply/gateway-1/#", "node-1", "reply/gateway-1/rpc", False, "gateway-1"),
    # no '#' for devices: nothing outside their ACL arrives through it
    SubCase("wear-b1", "#", "wear-a1", "data/health/heart/wear-a1", False, "ops-a"),
    SubCase("wear-b1", "#", "gateway-1", "reply/wear-a1/x", False, "wear-a1"),
    SubCase("wear-b1", "#", "ops", "slm/tenants/clinic-a/config/model", False, "ops-a"),
    SubCase("wear-b1", "data/#", "wear-a1", "data/health/heart/wear-a1", False, "ops-a"),
    SubCase("wear-a2", "data/#", "wear-a1", "data/health/heart/wear-a1", True, "ops-a"),
    SubCase("ops-a", "slm/tenants/#", "ops", "slm/tenants/clinic-b/usage_limit", False, "ops"),
    SubCase("ops-a", "slm/tenants/#", "ops", "slm/tenants/clinic-a/usage_limit", True, "ops"),
    # a node cannot take another node's directed requests; a sensor not the ingress
    SubCase(
        "node-2",
        "computation/node/node-1/request",
        "gateway-1",
        "computation/node/node-1/request",
        False,
        "node-1",
    ),
    SubCase(
        "wear-b1",
        "$share/g/computation/query/request",
        "wear-a1",
        "computation/query/request",
        False,
        "gateway-1",
    ),
    SubCase("wear-b1", "slm/#", "node-1", "slm/nodes/node-1/load", True, "gateway-1"),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    case: PubCase | SubCase
    refused: bool  # PUBACK 0x87 (publish cases)
    delivered: bool  # reached the publisher's target (observer or subscriber)
    observer_got: bool

    @property
    def ok(self) -> bool:
        if isinstance(self.case, PubCase):
            if self.case.allowed:
                return not self.refused and self.observer_got
            return self.refused and not self.observer_got
        if self.case.allowed:
            return self.delivered and self.observer_got
        return not self.delivered and self.observer_got


def manifest() -> Manifest:
    return Manifest.model_validate(MANIFEST)


def make_profile(out: Path) -> GeneratedProfile:
    return generate(manifest(), out)


def agent_settings(profile: GeneratedProfile, agent: str, port: int, **extra: Any) -> BusSettings:
    return BusSettings.model_validate(
        {
            "include": str(profile.agent_files[agent]),
            "port": port,
            "connect_timeout_s": 5.0,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
            **extra,
        }
    )


async def run_cases(profile: GeneratedProfile, port: int) -> list[Outcome]:
    """Connect one client per agent, run every case, return the outcomes."""
    agents = [a["id"] for a in MANIFEST["agents"]]
    # One subscription per (agent, filter): a second SUBSCRIBE to the same filter
    # would replace the first one (and its subscription identifier).
    got: dict[tuple[str, str], set[bytes]] = defaultdict(set)
    outcomes: list[Outcome] = []
    async with AsyncExitStack() as stack:
        bus = {
            a: await stack.enter_async_context(BusClient(agent_settings(profile, a, port), a))
            for a in agents
        }

        async def listen(who: str, topic_filter: str) -> None:
            if (who, topic_filter) in got:
                return

            def on(msg: Inbound) -> None:
                got[(who, topic_filter)].add(msg.payload)

            got[(who, topic_filter)] = set()
            await bus[who].subscribe(topic_filter, on)

        tag = secrets.token_hex(3)
        for pc in PUB_CASES:
            await listen(pc.observer, pc.topic)
        base = len(PUB_CASES)
        for sc in SUB_CASES:
            await listen(sc.subscriber, sc.filter)
            await listen(sc.observer, sc.topic)
        refused: dict[int, bool] = {}
        for i, pc in enumerate(PUB_CASES):
            refused[i] = await _publish(bus[pc.publisher], pc.topic, f"{tag}:{i}".encode())
        for i, sc in enumerate(SUB_CASES):
            if await _publish(bus[sc.publisher], sc.topic, f"{tag}:{base + 2 * i}".encode()):
                raise AssertionError(f"publisher of {sc} was refused: the case is wrong")
        await asyncio.sleep(0.5)

        def has(who: str, topic_filter: str, payload: str) -> bool:
            return payload.encode() in got[(who, topic_filter)]

        for i, pc in enumerate(PUB_CASES):
            seen = has(pc.observer, pc.topic, f"{tag}:{i}")
            outcomes.append(Outcome(pc, refused[i], seen, seen))
        for i, sc in enumerate(SUB_CASES):
            payload = f"{tag}:{base + 2 * i}"
            outcomes.append(
                Outcome(
                    sc,
                    False,
                    has(sc.subscriber, sc.filter, payload),
                    has(sc.observer, sc.topic, payload),
                )
            )
    return outcomes


async def _publish(bus: BusClient, topic: str, payload: bytes) -> bool:
    """Publish at QoS 1; True when the broker refused it."""
    try:
        await bus.publish(topic, payload, qos=1)
    except PublishRefused as exc:
        if exc.reason != 0x87:
            raise
        return True
    return False
