"""Synthetic streams, labelled synthetic: vitals, air quality, traffic, crowd counts.

No recorded data: each channel is a baseline plus a slow AR(1) wander plus noise,
sampled at ``rate_hz``; episodes (tachycardia, desaturation, pollution,
congestion...) start at random with ``episodes_per_hour`` (of stream time), last
``episode_s``, ramp in and out over 10 % of their length, and shift channels by
their preset deltas. A window's ``label`` is the episode covering at least half of
it, else ``normal``: the ground truth the detectors are scored against. Seeded,
so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from wearables.sources import SourceInfo, Window


@dataclass(frozen=True, slots=True)
class Channel:
    name: str
    unit: str
    base: float
    sd: float  # noise
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class Preset:
    type: str
    channels: tuple[Channel, ...]
    episodes: dict[str, dict[str, float]]  # label -> channel -> delta at full strength


PRESETS: dict[str, Preset] = {
    "vitals": Preset(
        "vitals",
        (
            Channel("heart_rate", "1/min", 72.0, 2.0, 30.0, 220.0),
            Channel("spo2", "%", 97.5, 0.4, 70.0, 100.0),
            Channel("respiration", "1/min", 15.0, 0.8, 4.0, 60.0),
        ),
        {
            "tachycardia": {"heart_rate": 55.0, "respiration": 4.0},
            "desaturation": {"spo2": -9.0, "heart_rate": 12.0},
            "bradypnea": {"respiration": -9.0},
        },
    ),
    "air_quality": Preset(
        "air_quality",
        (
            Channel("pm2_5", "ug/m^3", 12.0, 1.5, 0.0, 1000.0),
            Channel("no2", "ug/m^3", 25.0, 3.0, 0.0, 1000.0),
            Channel("o3", "ug/m^3", 60.0, 4.0, 0.0, 1000.0),
            Channel("temperature", "degC", 24.0, 0.2, -40.0, 60.0),
            Channel("humidity", "%", 55.0, 1.5, 0.0, 100.0),
        ),
        {
            "pollution": {"pm2_5": 55.0, "no2": 45.0},
            "heat": {"temperature": 11.0, "o3": 70.0, "humidity": -20.0},
        },
    ),
    "traffic": Preset(
        "traffic",
        (
            Channel("vehicles", "1/min", 30.0, 3.0, 0.0, 500.0),
            Channel("speed", "km/h", 45.0, 2.5, 0.0, 200.0),
            Channel("occupancy", "%", 15.0, 1.5, 0.0, 100.0),
        ),
        {"congestion": {"vehicles": -12.0, "speed": -32.0, "occupancy": 55.0}},
    ),
    "crowd": Preset(
        "crowd",
        (
            Channel("people", "count", 40.0, 4.0, 0.0, 100000.0),
            Channel("density", "1/m^2", 0.3, 0.04, 0.0, 10.0),
            Channel("flow", "1/min", 20.0, 2.5, 0.0, 10000.0),
        ),
        {"crowding": {"people": 220.0, "density": 1.9, "flow": 60.0}},
    ),
}


class SyntheticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["synthetic"] = "synthetic"
    preset: Literal["vitals", "air_quality", "traffic", "crowd"]
    rate_hz: float = Field(1.0, gt=0, le=1000, description="samples per second")
    steps: int = Field(30, ge=2, le=4096, description="window length in samples")
    hop: int = Field(5, ge=1, le=4096, description="samples between windows")
    episodes_per_hour: float = Field(6.0, ge=0, description="abnormal episodes per hour")
    episode_s: tuple[float, float] = Field((60.0, 180.0), description="episode duration range")
    seed: int = Field(0)


class SyntheticSource:
    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.preset = PRESETS[config.preset]
        self.info = SourceInfo(
            type=self.preset.type,
            channels=tuple(c.name for c in self.preset.channels),
            units={c.name: c.unit for c in self.preset.channels},
            rate_hz=config.rate_hz,
            steps=config.steps,
            hop=config.hop,
            source="synthetic",
        )

    def samples(self) -> Iterator[tuple[np.ndarray, str]]:
        """Endless (values, label) per sample."""
        cfg, chans = self.config, self.preset.channels
        rng = np.random.default_rng(cfg.seed)
        base = np.array([c.base for c in chans])
        sd = np.array([c.sd for c in chans])
        lo, hi = np.array([c.lo for c in chans]), np.array([c.hi for c in chans])
        labels = sorted(self.preset.episodes)
        deltas = {
            lab: np.array([self.preset.episodes[lab].get(c.name, 0.0) for c in chans])
            for lab in labels
        }
        p_start = cfg.episodes_per_hour / 3600.0 / cfg.rate_hz
        wander = np.zeros(len(chans))
        episode: tuple[str, int, int] | None = None  # label, sample index, length
        t = 0
        while True:
            wander = 0.995 * wander + rng.normal(0.0, 0.1, len(chans)) * sd
            value = base + wander + rng.normal(0.0, 1.0, len(chans)) * sd
            if episode is None and rng.random() < p_start:
                length = max(2, int(rng.uniform(*cfg.episode_s) * cfg.rate_hz))
                episode = (labels[int(rng.integers(len(labels)))], t, length)
            label = "normal"
            if episode is not None:
                name, start, length = episode
                k = t - start
                if k >= length:
                    episode = None
                else:
                    ramp = max(1.0, 0.1 * length)
                    value = value + deltas[name] * min(1.0, (k + 1) / ramp, (length - k) / ramp)
                    label = name
            yield np.clip(value, lo, hi), label
            t += 1

    def windows(self) -> Iterator[Window]:
        steps, hop, rate = self.config.steps, self.config.hop, self.config.rate_hz
        buf: list[np.ndarray] = []
        labs: list[str] = []
        for n, (value, label) in enumerate(self.samples(), start=1):
            buf.append(value)
            labs.append(label)
            if len(buf) > steps:
                del buf[0], labs[0]
            if len(buf) == steps and (n - steps) % hop == 0:
                names, counts = np.unique(labs, return_counts=True)
                abnormal = [(c, s) for s, c in zip(names, counts, strict=True) if s != "normal"]
                top = max(abnormal, default=(0, "normal"))
                window_label = top[1] if top[0] * 2 >= steps else "normal"
                data = np.asarray(buf, dtype=np.float32)
                yield Window(data, str(window_label), n / rate)
