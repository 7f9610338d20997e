"""Data-grounded answers: a SmolLM2 node follows data/ topics through a real Mosquitto
and puts its latest readings (and events) into the prompt, saying which it used."""

from __future__ import annotations

import time

import numpy as np
import pytest

from broker import BusClient, Chat, Embedding, Event, RpcClient, SampleMeta, encode
from broker.topics import data_topic, node_request_topic
from edge_node.config import DataConfig
from tests.helpers import eventually, running_node, settings


def reading(domain: str, seq: int, heart_rate: float, vector: list[float]) -> bytes:
    meta = SampleMeta(
        domain=domain,
        type="vitals",
        dimension=4,
        units={"heart_rate": "1/min", "spo2": "%"},
        location={"placement": "wrist"},
        timestamp=time.time(),
        sequence=seq,
        source="synthetic",
        summary={"heart_rate": heart_rate, "spo2": 91.0},
    )
    return encode(Embedding(np.asarray(vector, dtype=np.float32), "vitals-test", meta.to_meta()))


async def test_node_grounds_its_answer_in_the_latest_readings(mosquitto, engine, prefix):
    domain = prefix
    node_id = f"{prefix}-vitals"
    async with (
        running_node(
            mosquitto, engine, node_id, expertise=["vitals"], data={"topics": [f"data/{domain}/#"]}
        ) as agent,
        BusClient(settings(mosquitto), f"{prefix}-dev") as device,
        RpcClient(device) as rpc,
    ):
        ask = Chat.user("How is my heart doing?", max_tokens=24, temperature=0.0)
        before = await rpc.call(node_request_topic(node_id), ask, timeout=60)
        usual = [1.0, 0.5, 0.0, 0.0]
        for seq in range(4):  # four usual windows, then an unusual one
            jitter = [v + 0.01 * seq for v in usual]
            await device.publish(
                data_topic(domain, "vitals", "watch-1"), reading(domain, seq, 72.0, jitter)
            )
        await device.publish(
            data_topic(domain, "vitals", "watch-1"), reading(domain, 4, 131.0, [0, 0, 1.0, 0.2])
        )
        event = Event("abnormal_vitals", "vitals", "onset", time.time(), 131.0, 110.0, 0)
        await device.publish(data_topic(domain, "events", "watch-1"), encode(event))
        follower = agent.cooperation.follower
        await eventually(
            lambda: follower.stats["indexed"] == 5 and follower.stats["events"] == 1,
            what="readings followed",
        )
        after = await rpc.call(node_request_topic(node_id), ask, timeout=60)
    assert before.meta["grounding"]["readings"] == []
    assert "no recent readings" in before.meta["grounding"]["note"]
    used = after.meta["grounding"]["readings"]
    assert [(r["agent"], r["stream"], r["sequence"]) for r in used] == [("watch-1", "vitals", 4)]
    assert used[0]["source"] == "synthetic"
    assert used[0]["values"]["heart_rate"] == 131.0
    assert used[0]["likeness"] < 0.3  # unlike the stream's earlier windows: flagged
    assert after.meta["grounding"]["events"] == [{"agent": "watch-1", "type": "abnormal_vitals"}]
    assert after.usage.prompt_tokens > before.usage.prompt_tokens + 20  # readings in the prompt
    assert after.text.strip()


def test_data_topics_must_be_under_data():
    with pytest.raises(ValueError, match="under data/"):
        DataConfig(topics=("slm/nodes/#",))
