"""broker.datafollow through a real Mosquitto: indexing, filters, latest, events, bad input."""

from __future__ import annotations

import json
import time
from typing import Literal

import numpy as np
import pytest

from broker import (
    BusClient,
    DataFollower,
    Embedding,
    Event,
    EventRecord,
    SampleMeta,
    encode,
    publish_properties,
)
from broker.codec import JSON
from broker.topics import data_topic
from tests.helpers import eventually, settings


def _meta(domain: str, seq: int, dim: int, **extra) -> dict[str, object]:
    return SampleMeta(
        domain=domain,
        type="imu",
        dimension=dim,
        units={"acc_x": "m/s^2"},
        location={"placement": "wrist", "site": "lab"},
        timestamp=time.time(),
        sequence=seq,
        source="synthetic",
        **extra,
    ).to_meta()


def _embedding(vector, domain: str, seq: int, model: str = "enc-a", **extra) -> bytes:
    vec = np.asarray(vector, dtype=np.float32)
    return encode(Embedding(vec, model, _meta(domain, seq, vec.shape[0], **extra)))


async def test_follower_indexes_filters_and_answers_similarity_queries(mosquitto, prefix):
    domain = prefix  # a unique domain keeps tests on the session broker apart
    rng = np.random.default_rng(0)
    centres = {"walking": rng.normal(size=8), "running": rng.normal(size=8)}
    async with (
        BusClient(settings(mosquitto), f"{prefix}-pub") as pub,
        BusClient(settings(mosquitto), f"{prefix}-sub") as sub,
        DataFollower(sub, [f"data/{domain}/#"], capacity=100) as follower,
    ):
        seq = 0
        for agent in ("w1", "w2"):
            for label, centre in centres.items():
                for _ in range(5):
                    vec = centre + 0.05 * rng.normal(size=8)
                    payload = _embedding(vec, domain, seq, label=label)
                    await pub.publish(data_topic(domain, "imu", agent), payload, qos=0)
                    seq += 1
        # A second encoder's embeddings go to their own index.
        await pub.publish(
            data_topic(domain, "vitals", "w1"), _embedding(np.ones(3), domain, 99, model="enc-b")
        )
        await follower.wait_for(lambda: follower.stats["indexed"] == 21, timeout=5)
        stats = follower.stats
        assert stats["indexed_by_model"] == {"enc-a": 20, "enc-b": 1}
        assert stats["dropped"] == 0
        assert stats["latest"] == 3

        query = centres["running"] + 0.05 * rng.normal(size=8)
        hits = follower.search(query, 5, model="enc-a")
        assert [h.meta["label"] for h in hits] == ["running"] * 5
        hits = follower.search(query, 10, model="enc-a", where={"agent_id": "w2"})
        assert len(hits) == 10
        assert {h.meta["agent_id"] for h in hits} == {"w2"}
        assert [h.meta["label"] for h in hits[:5]] == ["running"] * 5
        assert hits[0].meta["location.placement"] == "wrist"
        since = follower.search(query, 50, model="enc-a", where={"sequence": (15, None)})
        assert sorted(h.meta["sequence"] for h in since) == list(range(15, 20))
        assert follower.search(query, 5, model="unknown") == []
        assert (await follower.asearch(query, 1, model="enc-a"))[0].meta["label"] == "running"

        latest = follower.latest("w2", "imu")
        assert latest is not None
        assert latest.meta.sequence == 19
        assert latest.meta.label == "running"
        assert {s.stream for s in follower.latest_samples(domain)} == {"imu", "vitals"}

        # The latest w2 sample is "running": its neighbours are running, itself excluded.
        similar = follower.similar("w2", "imu", 4)
        assert len(similar) == 4
        assert {h.meta["label"] for h in similar} == {"running"}
        assert all(h.meta["sequence"] != 19 for h in similar)
        assert follower.similar("nobody", "imu") == []


async def test_bad_payloads_are_counted_by_reason_and_survived(mosquitto, prefix):
    domain = prefix
    topic = data_topic(domain, "imu", "w1")
    async with (
        BusClient(settings(mosquitto), f"{prefix}-pub") as pub,
        BusClient(settings(mosquitto), f"{prefix}-sub") as sub,
        DataFollower(sub, [f"data/{domain}/#"], max_payload_bytes=2048) as follower,
    ):
        bad = [
            (topic, b"\xff\x00 not cbor"),  # decode
            (topic, b'{"v": 1, "kind": "embedding"}'),  # decode: fields missing
            (topic, _embedding(np.ones(1000), domain, 0)),  # too_large (4 KB > 2048)
            (topic, encode(Event("fall", "imu", "instant", 1.0, 1.0, 0.5, 0))),  # kind
            (f"data/{domain}/events/w1", _embedding(np.ones(4), domain, 1)),  # kind
            (topic, encode(Embedding(np.ones(4, np.float32), "enc", {"domain": domain}))),  # meta
            (topic, _embedding(np.ones(4), "otherdomain", 2)),  # meta: domain != topic's
            (f"data/{domain}/imu/w1/extra", _embedding(np.ones(4), domain, 3)),  # topic
            (f"data/{domain}/IMU", _embedding(np.ones(4), domain, 4)),  # topic
            (topic, _embedding(np.zeros(4), domain, 5)),  # vector: no cosine for zero
        ]
        for where, payload in bad:
            await pub.publish(where, payload)
        good_vec = np.arange(1, 5, dtype=np.float32)
        await pub.publish(topic, _embedding(good_vec, domain, 6))
        # Same model, other dimension: refused, the index keeps its dimension.
        await pub.publish(topic, _embedding(np.ones(5), domain, 7))
        # JSON is accepted everywhere (a plain mosquitto_pub can take part).
        as_json = encode(Embedding(good_vec * 2, "enc-a", _meta(domain, 8, 4)), JSON)
        assert json.loads(as_json)["kind"] == "embedding"
        await pub.publish(topic, as_json, properties=publish_properties(content_type=JSON))
        await follower.wait_for(lambda: follower.stats["received"] == len(bad) + 3, timeout=5)
        stats = follower.stats
        assert stats["indexed"] == 2, stats
        assert stats["dropped_by_reason"] == {
            "decode": 2,
            "too_large": 1,
            "kind": 2,
            "meta": 2,
            "topic": 2,
            "vector": 1,
            "dimension": 1,
        }
        latest = follower.latest("w1", "imu")
        assert latest is not None
        assert latest.meta.sequence == 8


async def test_events_are_kept_and_handed_over(mosquitto, prefix):
    domain = prefix
    seen: list[EventRecord] = []
    async with (
        BusClient(settings(mosquitto), f"{prefix}-pub") as pub,
        BusClient(settings(mosquitto), f"{prefix}-sub") as sub,
        DataFollower(sub, [f"data/{domain}/#"], on_event=seen.append, max_events=2) as follower,
    ):
        phases: tuple[Literal["onset", "end"], ...] = ("onset", "end", "onset")
        for seq, phase in enumerate(phases):
            event = Event(
                "freezing_of_gait", "accel", phase, 100.0, 4.2, 2.0, seq,
                end=None if phase == "onset" else 104.0,
            )  # fmt: skip
            await pub.publish(data_topic(domain, "events", "w1"), encode(event), qos=1)
        await eventually(lambda: len(seen) == 3, what="three events")
        assert [r.event.phase for r in seen] == ["onset", "end", "onset"]
        assert seen[1].event.end == 104.0
        assert seen[0].agent_id == "w1"
        assert seen[0].domain == domain
        assert len(follower.events) == 2  # bounded
        assert follower.stats["events"] == 3


def test_filters_must_stay_under_data():
    with pytest.raises(ValueError, match="data/"):
        DataFollower(None, ["computation/#"])  # type: ignore[arg-type]
