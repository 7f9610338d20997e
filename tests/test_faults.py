"""Faults through the real system: Mosquitto, node processes (simulated Jetson Orin
Nano engine), the gateway's orchestrator and MQTT ingress, the cloud stand-in.

Each scenario is the one ``benchmarks.faults`` measures, at the same size.
"""

from __future__ import annotations

from benchmarks import faults
from broker import MosquittoBroker


def _no_loss(counts: faults.Counts) -> None:
    assert counts.lost == 0, counts
    assert counts.duplicated == 0, counts
    assert counts.answered + counts.failed_clearly == counts.sent, counts
    assert counts.late_s <= 0.0, counts  # every outcome came within its deadline


async def test_node_killed_mid_request(fresh_broker: MosquittoBroker, tmp_path, cloud_url) -> None:
    counts = await faults.node_kill(fresh_broker, tmp_path, cloud_url)
    _no_loss(counts)
    assert counts.extra["killed_node_in_flight"] >= 1
    assert counts.answered == counts.sent, counts
    # the death was noticed through the will, not at the 20 s attempt deadline
    assert counts.worst_answer_s < 15, counts


async def test_broker_restarted_under_load(
    fresh_broker: MosquittoBroker, tmp_path, cloud_url
) -> None:
    counts = await faults.broker_restart(fresh_broker, tmp_path, cloud_url)
    _no_loss(counts)
    assert counts.extra["reconnections"]["gateway"] >= 2
    assert counts.extra["reconnections"]["client"] >= 2
    assert counts.extra["edge_answers_after_restart"] == 2
    assert counts.answered >= counts.sent // 2, counts


async def test_cloud_down(fresh_broker: MosquittoBroker, tmp_path) -> None:
    counts = await faults.cloud_outage(fresh_broker, tmp_path)
    _no_loss(counts)
    assert counts.answered == 4, counts  # the ones the edge node can take
    assert counts.errors == {"unavailable": 4}, counts
    assert counts.worst_error_s < 10, counts


async def test_overload_ten_times_capacity(fresh_broker: MosquittoBroker, tmp_path) -> None:
    counts, memory = await faults.overload(fresh_broker, tmp_path)
    _no_loss(counts)
    assert counts.answered >= memory["capacity"], counts
    # refused by the gateway at once; a rare race with a node's own admission may
    # still end as "unavailable" after trying every node, never as anything else
    assert set(counts.errors) <= {"overloaded", "unavailable"}, counts
    assert counts.errors.get("overloaded", 0) >= 0.9 * counts.failed_clearly, counts
    assert counts.worst_error_s < 2.0, counts  # refusals are immediate (generous margin)
    first, second = memory["rss_mb_after_wave_0"], memory["rss_mb_after_wave_1"]
    for name, mb in second.items():
        assert mb - first[name] < 30, memory
