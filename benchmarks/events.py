"""Event detection on device streams, scored against the streams' labels: precision, recall.

    python -m benchmarks.events --json

End to end through a real Mosquitto (started here): one simulated wearable replays at
high speed (timestamps on the replay clock, so durations are physical), a
:class:`broker.DataFollower` records every sample's label (the ground truth travels
in the metadata) and every event. Episode-level scoring: a labelled episode is a run
of consecutive windows labelled abnormal, spanning [first window's start, last
window's end]; a detected episode spans [onset.start, end.end]. Precision = detected
episodes overlapping a labelled one / detected episodes; recall = labelled episodes
overlapped by a detection / labelled episodes.

- ``gait``: freezing of gait (freeze index, ``wearables.detectors``) on the real Daphnet
  excerpt with SYNTHETIC freezing episodes overlaid (the excerpt has none of its own).
- ``gait_real_only``: the same detector on the untouched real excerpt: no episode is
  labelled, so every detection is a false alarm (reported per hour of gait).
- ``vitals``: abnormal vitals (thresholds) on the SYNTHETIC vitals stream.
- ``freeze_index_sweep``: offline (no broker) episode P/R of the freeze index per
  threshold on the same semi-synthetic windows, on the ankle's three axes (the
  default) and on its vertical axis alone, to show the trade-offs. The synthetic
  freezes tremble on every leg axis, which favours the three-axis index: read these
  as a check of the pipeline, not as clinical detection performance.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from typing import Any

from broker import BusClient, BusSettings, DataFollower, EventRecord, MosquittoBroker, Sample
from wearables import SensorAgent, SensorConfig
from wearables.detectors import FreezeIndexConfig, FreezeIndexDetector
from wearables.sources import DaphnetConfig, DaphnetSource

Interval = tuple[float, float]


def labelled_episodes(windows: list[tuple[float, float, bool]]) -> list[Interval]:
    """(start, end, positive) windows in time order -> merged positive runs."""
    runs: list[Interval] = []
    current: Interval | None = None
    for start, end, positive in windows:
        if positive:
            current = (current[0] if current else start, end)
        elif current is not None:
            runs.append(current)
            current = None
    if current is not None:
        runs.append(current)
    return runs


def detected_episodes(events: list[EventRecord], stream: str, last: float) -> list[Interval]:
    out: list[Interval] = []
    onset: float | None = None
    for record in sorted(events, key=lambda r: r.event.sequence):
        e = record.event
        if e.stream != stream:
            continue
        if e.phase == "onset":
            onset = e.start
        elif e.phase == "end" and e.end is not None:
            out.append((e.start, e.end))
            onset = None
    if onset is not None:
        out.append((onset, last))
    return out


def score(labelled: list[Interval], detected: list[Interval]) -> dict[str, Any]:
    def overlaps(a: Interval, b: Interval) -> bool:
        return a[0] <= b[1] and b[0] <= a[1]

    true_detections = sum(any(overlaps(d, lab) for lab in labelled) for d in detected)
    found = sum(any(overlaps(lab, d) for d in detected) for lab in labelled)
    return {
        "labelled_episodes": len(labelled),
        "detected_episodes": len(detected),
        "precision": round(true_detections / len(detected), 3) if detected else None,
        "recall": round(found / len(labelled), 3) if labelled else None,
    }


def wearable(port: int, gait: dict[str, Any], windows: int, vitals: bool) -> SensorConfig:
    streams: list[dict[str, Any]] = [
        {
            "name": "gait",
            "source": gait,
            "encoder": {"type": "litert", "model": "accel-daphnet-v1"},
            "detector": {"type": "freeze_index"},  # the ankle's three axes
            "speed": 3000.0,
            "max_windows": windows,
        }
    ]
    if vitals:
        streams.append(
            {
                "name": "vitals",
                "source": {
                    "kind": "synthetic", "preset": "vitals", "episodes_per_hour": 12, "seed": 21,
                },
                "encoder": {"type": "litert", "model": "vitals-v1"},
                "detector": {
                    "type": "threshold",
                    "event": "abnormal_vitals",
                    "rules": {
                        "heart_rate": {"above": 110, "below": 45},
                        "spo2": {"below": 92},
                        "respiration": {"above": 24, "below": 9},
                    },
                },
                "speed": 6000.0,
                "max_windows": windows * 2,
            }
        )  # fmt: skip
    return SensorConfig.model_validate(
        {
            "agent_id": "bench-wearable",
            "device": "wearable",
            "domain": "health",
            "bus": {"host": "127.0.0.1", "port": port},
            "location": {"placement": "ankle"},
            "streams": streams,
            "stats_interval_s": 60,
        }
    )


async def through_bus(
    broker: MosquittoBroker, gait: dict[str, Any], windows: int, vitals: bool
) -> dict[str, Any]:
    samples: list[Sample] = []
    settings = BusSettings(host=broker.host, port=broker.port)
    async with (
        BusClient(settings, "bench-follower") as bus,
        DataFollower(bus, ["data/health/#"], on_sample=samples.append, capacity=None) as follower,
    ):
        config = wearable(broker.port, gait, windows, vitals)
        started = time.perf_counter()
        async with SensorAgent(config) as agent:
            await agent.run()
            stats = agent.stats
        expected = stats["published"]
        await follower.wait_for(lambda: follower.stats["indexed"] >= expected, timeout=30)
        await asyncio.sleep(0.2)  # QoS 1 events after the last QoS 0 sample
        out: dict[str, Any] = {"seconds": round(time.perf_counter() - started, 2)}
        for stream, positive in (("gait", {"freeze"}), ("vitals", None)):
            rows = sorted(
                (s.meta.timestamp - (s.meta.window_s or 0.0), s.meta.timestamp, s.meta.label)
                for s in samples
                if s.stream == stream
            )
            if not rows:
                continue
            labelled = labelled_episodes(
                [
                    (a, b, lab in positive if positive else lab not in (None, "normal"))
                    for a, b, lab in rows
                ]
            )
            detected = detected_episodes(list(follower.events), stream, rows[-1][1])
            result = score(labelled, detected)
            hours = (rows[-1][1] - rows[0][0]) / 3600
            result.update(windows=len(rows), stream_hours=round(hours, 3))
            if not labelled:
                result["false_alarms_per_hour"] = round(len(detected) / hours, 2)
            out[stream] = result
        return out


def sweep(loops: int, thresholds: list[float]) -> list[dict[str, Any]]:
    """Offline episode P/R per threshold, for the ankle's three axes and its vertical alone."""
    source = DaphnetSource(DaphnetConfig(inject_freezes=2, seed=42))  # the bus run's data
    per_loop = (len(source.raw) - 128) // 64 + 1
    windows = list(itertools.islice(source.windows(), per_loop * loops))
    rows = []
    axes_options: list[tuple[str, ...]] = [FreezeIndexConfig().channels, ("ankle_vert",)]
    for axes, threshold in itertools.product(axes_options, thresholds):
        det = FreezeIndexDetector(
            FreezeIndexConfig(threshold=threshold, channels=axes),
            source.info.channels,
            source.info.rate_hz,
        )
        marks, detected, onset = [], [], None
        for w in windows:
            start, end = w.offset_s - 128 / source.info.rate_hz, w.offset_s
            marks.append((start, end, w.label == "freeze"))
            d = det.update(w.data, start, end)
            if d is not None and d.phase == "onset":
                onset = d.start
            elif d is not None and d.end is not None:
                detected.append((d.start, d.end))
                onset = None
        if onset is not None:
            detected.append((onset, windows[-1].offset_s))
        row = {"axes": list(axes), "threshold": threshold}
        rows.append(row | score(labelled_episodes(marks), detected))
    return rows


async def run(loops: int) -> dict[str, Any]:
    windows = 108 * loops  # one 110 s Daphnet replay is 108 2-s windows at a 1 s hop
    with MosquittoBroker() as broker:
        injected = {"kind": "daphnet", "inject_freezes": 2, "seed": 42}
        mixed = await through_bus(broker, injected, windows, vitals=True)
        real = await through_bus(broker, {"kind": "daphnet"}, 108 * 4, vitals=False)
    return {
        "gait_semi_synthetic": mixed.get("gait"),
        "vitals_synthetic": mixed.get("vitals"),
        "gait_real_only": real.get("gait"),
        "seconds": mixed["seconds"] + real["seconds"],
        "freeze_index_sweep": sweep(loops, [2.0, 3.0, 5.0, 10.0]),
        "default_freeze_threshold": FreezeIndexConfig().threshold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=20, help="110 s Daphnet replays")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    result = asyncio.run(run(args.loops))
    if args.json:
        print(json.dumps(result))
        return
    for name in ("gait_semi_synthetic", "vitals_synthetic", "gait_real_only"):
        print(f"{name}: {result[name]}")
    for row in result["freeze_index_sweep"]:
        print(f"freeze index {'+'.join(row['axes'])} > {row['threshold']}: {row}")


if __name__ == "__main__":
    main()
