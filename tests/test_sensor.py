"""Device agents through a real Mosquitto: data cooperation end to end, config errors."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker import BusClient, Cms, DataFollower
from edgecollab.cli import main
from tests.helpers import eventually, settings
from wearables import SensorAgent, SensorConfig, SensorConfigError, load_sensor_config
from wearables.cli import main as sensor_main
from wearables.encoders import LiteRtConfig, build_encoder
from wearables.sources import BasicMotionsConfig, BasicMotionsSource

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _wearable(
    broker: Any, agent_id: str, domain: str, streams: list[dict[str, Any]]
) -> SensorConfig:
    return SensorConfig.model_validate(
        {
            "agent_id": agent_id,
            "device": "wearable",
            "domain": domain,
            "bus": settings(broker).model_dump(),
            "location": {"placement": "wrist"},
            "streams": streams,
            "stats_interval_s": 0.2,
        }
    )


def _imu(activity: str, windows: int) -> dict[str, Any]:
    return {
        "name": "imu",
        "source": {"kind": "basicmotions", "activities": [activity], "split": "train"},
        "encoder": {"type": "litert", "model": "imu-basicmotions-v1"},
        "speed": 500.0,
        "max_windows": windows,
    }


async def test_follower_finds_the_agent_and_activity_of_a_held_out_window(mosquitto, prefix):
    runner = _wearable(mosquitto, f"{prefix}-runner", prefix, [_imu("running", 24)])
    sitter = _wearable(mosquitto, f"{prefix}-sitter", prefix, [_imu("standing", 24)])
    async with (
        BusClient(settings(mosquitto), f"{prefix}-follower") as bus,
        DataFollower(bus, [f"data/{prefix}/imu/+"]) as follower,
        SensorAgent(runner) as a,
        SensorAgent(sitter) as b,
    ):
        info = await Cms(bus).get(f"slm/devices/{prefix}-runner/info")
        assert info is not None
        assert info.value["streams"][0]["model"] == "imu-basicmotions-v1"
        await asyncio.gather(a.run(), b.run())
        await follower.wait_for(lambda: follower.stats["indexed"] == 48, timeout=10)
        assert a.stats["published"] == 24
        assert a.stats["rss_mb"] > 0

        # A window from a held-out (test split) running recording, encoded by the same model.
        held_out = BasicMotionsSource(BasicMotionsConfig(activities=("running",), split="test"))
        window = next(held_out.windows())
        query = build_encoder(LiteRtConfig(model="imu-basicmotions-v1")).encode(window.data)
        hits = follower.search(query, 5, model="imu-basicmotions-v1")
        assert [h.meta["agent_id"] for h in hits] == [f"{prefix}-runner"] * 5
        assert {h.meta["label"] for h in hits} == {"running"}
        filtered = follower.search(
            query, 3, model="imu-basicmotions-v1", where={"agent_id": f"{prefix}-sitter"}
        )
        assert {h.meta["label"] for h in filtered} == {"standing"}
        sample = follower.latest(f"{prefix}-runner", "imu")
        assert sample is not None
        assert sample.meta.units["gyr_x"] == "rad/s"
        assert sample.meta.extra["simulated"] is True
        assert sample.meta.sequence == 23
    # A clean stop clears the device's CMS entry.
    async with BusClient(settings(mosquitto), f"{prefix}-check") as bus:
        assert await Cms(bus).get(f"slm/devices/{prefix}-runner/info") is None


async def test_abnormal_vitals_arrive_as_events(mosquitto, prefix):
    vitals = {
        "name": "vitals",
        "source": {"kind": "synthetic", "preset": "vitals", "episodes_per_hour": 40, "seed": 5},
        "encoder": {"type": "litert", "model": "vitals-v1"},
        "detector": {
            "type": "threshold",
            "event": "abnormal_vitals",
            "rules": {"heart_rate": {"above": 110}, "spo2": {"below": 92}},
        },
        "speed": 4000.0,
        "max_windows": 1500,
    }
    config = _wearable(mosquitto, f"{prefix}-w", prefix, [vitals])
    async with (
        BusClient(settings(mosquitto), f"{prefix}-follower") as bus,
        DataFollower(bus, [f"data/{prefix}/#"]) as follower,
        SensorAgent(config) as agent,
    ):
        await agent.run()
        await eventually(lambda: follower.stats["events"] == agent.stats["events"], timeout=10)
        events = [r.event for r in follower.events]
        assert len(events) >= 4
        assert {e.type for e in events} == {"abnormal_vitals"}
        assert events[0].phase == "onset"
        assert all(e.stream == "vitals" for e in events)
        ends = [e for e in events if e.phase == "end"]
        assert ends
        assert all(e.end is not None and e.end >= e.start for e in ends)
        # The windows around an onset are labelled abnormal in the indexed metadata.
        abnormal = follower.index("vitals-v1").matching({"label": {"tachycardia", "desaturation"}})
        assert abnormal


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "sensor.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((CONFIGS / "camera.yaml").read_text())
    return data


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d.update(agent_id="Bad/Id"), "agent_id"),
        (lambda d: d["streams"][0].update(name="events"), "reserved"),
        (lambda d: d["streams"][0]["source"].update(kind="webcam"), "kind"),
        (lambda d: d["streams"][0]["encoder"].update(type="onnx"), "type"),
        (lambda d: d["streams"].append(dict(d["streams"][0])), "unique"),
        (lambda d: d.update(location={}), "location"),
    ],
)
def test_config_errors_exit_2_with_a_clear_message(tmp_path, capsys, change, message):
    data = _base()
    change(data)
    path = str(_write(tmp_path, data))
    assert main(["sensor", "--config", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecollab sensor: ")
    assert message in err
    assert sensor_main(["--config", path]) == 2  # python -m wearables
    assert message in capsys.readouterr().err


def test_config_problems_found_at_start_exit_2(tmp_path, capsys):
    assert main(["sensor", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    data = _base()  # the encoder's window (steps) disagrees with the source's
    data["streams"][0]["encoder"]["steps"] = 20
    assert main(["sensor", "--config", str(_write(tmp_path, data)), "--port", "1"]) == 2
    assert "takes (20, 3)" in capsys.readouterr().err
    data = _base()
    data["streams"][0]["detector"]["rules"] = {"nope": {"above": 1}}
    assert main(["sensor", "--config", str(_write(tmp_path, data)), "--port", "1"]) == 2
    assert "unknown channels" in capsys.readouterr().err


def test_example_configs_are_valid():
    for name in ("wearable", "camera", "roadside-unit"):
        config = load_sensor_config(CONFIGS / f"{name}.yaml", env={})
        assert config.streams
    with pytest.raises(SensorConfigError, match="port"):
        load_sensor_config(CONFIGS / "camera.yaml", env={"EDGECOLLAB_SENSOR__BUS__PORT": "x"})


async def test_cli_runs_an_agent_against_the_broker(mosquitto, prefix, tmp_path):
    data = _base()
    data["agent_id"] = f"{prefix}-cam"
    data["streams"][0].update(speed=1000.0, max_windows=20)
    path = _write(tmp_path, data)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgecollab.cli", "sensor", "--config", str(path),
        "--port", str(mosquitto.port), "--stats",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    stats = json.loads(out.decode().strip().splitlines()[-1])
    assert stats["published"] == 20
    assert stats["rss_mb"] < 150
    assert list(stats["streams"]) == ["crowd"]


async def test_agent_survives_a_broker_outage_and_resumes(fresh_broker, prefix):
    stream = {
        "name": "crowd",
        "source": {"kind": "synthetic", "preset": "crowd"},
        "encoder": {"type": "features", "steps": 30, "offset": [40, 0.3, 20], "scale": [50, 1, 20]},
        "speed": 100.0,  # a window every 50 ms
    }
    config = _wearable(fresh_broker, f"{prefix}-cam", prefix, [stream])
    stop = asyncio.Event()
    async with SensorAgent(config) as agent:
        task = asyncio.create_task(agent.run(stop))
        await eventually(lambda: agent.stats["published"] >= 5, what="first samples")
        await asyncio.to_thread(fresh_broker.stop)
        await eventually(
            lambda: agent.stats["streams"]["crowd"]["dropped"] >= 1, what="drops while down"
        )
        await asyncio.to_thread(fresh_broker.start)
        async with (
            BusClient(settings(fresh_broker), f"{prefix}-follower") as bus,
            DataFollower(bus, [f"data/{prefix}/#"]) as follower,
        ):
            await follower.wait_for(lambda: follower.stats["indexed"] >= 3, timeout=10)
            sample = follower.latest(f"{prefix}-cam", "crowd")
            assert sample is not None
            # Sequence numbers count dropped windows too: the gap shows the outage.
            assert sample.meta.sequence > agent.stats["streams"]["crowd"]["published"] - 1
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, 10)
