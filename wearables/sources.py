"""Sensor sources: recorded data replayed window by window (BasicMotions, Daphnet).

A source yields :class:`Window` objects endlessly (a recording is replayed in a loop);
the agent paces them: one window every ``hop / rate_hz / speed`` seconds. The data
files are the small extracts in ``wearables/data`` (see ``SOURCES.md`` there).

- ``basicmotions``: smartwatch 3-D accelerometer and gyroscope at 10 Hz, 80 ten-second
  recordings of four activities (standing, walking, running, badminton) by four
  people; windows stay inside one recording and carry its activity as ``label``.
- ``daphnet``: the excerpt of Daphnet freezing-of-gait recording S06R02E0 that aeon
  ships, 110 s of ankle, thigh and trunk 3-D accelerometers at 64 Hz (milli-g). The
  excerpt has **no** freezing episode. With ``inject_freezes`` the replay overlays
  **synthetic** freezing episodes (legs trembling at 4-7 Hz, trunk almost still) on
  the real recording and labels those windows ``freeze`` (metadata: semi-synthetic):
  that is what the freezing-of-gait detector is evaluated on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from wearables.errors import SourceError

DATA_DIR = Path(__file__).resolve().parent / "data"
Activity = Literal["standing", "walking", "running", "badminton"]
ACTIVITIES: tuple[Activity, ...] = ("standing", "walking", "running", "badminton")


@dataclass(frozen=True, slots=True)
class Window:
    """One window of raw samples, ``(steps, channels)``, with its ground truth if known."""

    data: npt.NDArray[np.float32]
    label: str | None
    offset_s: float  # position of the window's end in the replayed stream


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source produces; becomes the samples' metadata."""

    type: str
    channels: tuple[str, ...]
    units: dict[str, str]
    rate_hz: float
    steps: int
    hop: int
    source: str  # replay:<dataset> | synthetic
    semi_synthetic: bool = False


def _load(name: str) -> dict[str, npt.NDArray[np.generic]]:
    path = DATA_DIR / name
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {path}: {exc}") from exc


class BasicMotionsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["basicmotions"] = "basicmotions"
    activities: tuple[Activity, ...] = ACTIVITIES
    split: Literal["train", "test", "all"] = Field("all", description="which recordings")
    steps: int = Field(50, ge=10, le=100, description="window length (10 Hz samples)")
    hop: int = Field(25, ge=1, le=100, description="samples between windows")
    seed: int | None = Field(None, description="shuffle the recordings' order with this seed")


class BasicMotionsSource:
    def __init__(self, config: BasicMotionsConfig) -> None:
        data = _load("basicmotions.npz")
        keep = np.isin(data["y"], config.activities)
        if config.split != "all":
            keep &= data["split"] == config.split
        self.x = data["x"][keep].astype(np.float32)
        self.y = data["y"][keep].astype(str)
        if len(self.y) == 0:
            raise SourceError("no BasicMotions recording matches the configuration")
        self._order = np.arange(len(self.y))
        if config.seed is not None:
            np.random.default_rng(config.seed).shuffle(self._order)
        channels = tuple(str(c) for c in data["channels"])
        self.config = config
        self.info = SourceInfo(
            type="imu",
            channels=channels,
            # The archive does not state units; these are the Android sensor API's.
            units={c: "m/s^2" if c.startswith("acc") else "rad/s" for c in channels},
            rate_hz=float(data["rate_hz"]),
            steps=config.steps,
            hop=config.hop,
            source="replay:basicmotions",
        )

    def windows(self) -> Iterator[Window]:
        steps, hop, rate = self.config.steps, self.config.hop, self.info.rate_hz
        offset = 0.0
        while True:
            for i in self._order:
                for start in range(0, self.x.shape[1] - steps + 1, hop):
                    offset += hop / rate
                    yield Window(self.x[i, start : start + steps], str(self.y[i]), offset)


class DaphnetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["daphnet"] = "daphnet"
    steps: int = Field(128, ge=64, le=1024, description="window length (64 Hz samples)")
    hop: int = Field(64, ge=1, le=1024, description="samples between windows")
    inject_freezes: int = Field(
        0, ge=0, le=8, description="synthetic freezing episodes overlaid per 110 s replay"
    )
    seed: int = Field(0, description="seed of the synthetic episodes")


class DaphnetSource:
    def __init__(self, config: DaphnetConfig) -> None:
        data = _load("daphnet_s06r02e0.npz")
        self.raw = data["x"].astype(np.float32)
        channels = tuple(str(c) for c in data["channels"])
        self.config = config
        self.info = SourceInfo(
            type="accelerometer",
            channels=channels,
            units=dict.fromkeys(channels, "mg"),
            rate_hz=float(data["rate_hz"]),
            steps=config.steps,
            hop=config.hop,
            source="replay:daphnet_s06r02e0",
            semi_synthetic=config.inject_freezes > 0,
        )

    def signal(self, loop: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
        """One replay of the excerpt, with this loop's synthetic freezes, and their mask."""
        x, freeze = self.raw.copy(), np.zeros(len(self.raw), dtype=bool)
        n, rate = self.config.inject_freezes, self.info.rate_hz
        if n == 0:
            return x, freeze
        rng = np.random.default_rng([self.config.seed, loop])
        slot = len(x) // n
        for k in range(n):
            length = int(rng.uniform(3.0, 8.0) * rate)
            start = k * slot + int(rng.integers(int(rate), max(int(rate) + 1, slot - length)))
            end = min(start + length, len(x))
            _tremble(x, start, end, rate, rng)
            freeze[start:end] = True
        return x, freeze

    def windows(self) -> Iterator[Window]:
        steps, hop, rate = self.config.steps, self.config.hop, self.info.rate_hz
        offset, loop = 0.0, 0
        while True:
            x, freeze = self.signal(loop)
            for start in range(0, len(x) - steps + 1, hop):
                offset += hop / rate
                frozen = freeze[start : start + steps].mean() >= 0.5
                label = ("freeze" if frozen else "no_freeze") if self.info.semi_synthetic else None
                yield Window(x[start : start + steps], label, offset)
            loop += 1


def _tremble(
    x: npt.NDArray[np.float32], start: int, end: int, rate: float, rng: np.random.Generator
) -> None:
    """Overlay a synthetic freeze on ``x[start:end]``: 15 % of the real motion remains, the
    legs tremble at 4-7 Hz (80-250 mg), the trunk barely (40 % of that)."""
    t = np.arange(end - start) / rate
    ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.25)[:, None]  # 0.25 s cross-fades
    level = x[start:end].mean(axis=0)
    freq = rng.uniform(4.0, 7.0)
    shake = np.zeros((end - start, x.shape[1]), dtype=np.float32)
    for c in range(6):  # ankle and thigh
        amp = rng.uniform(80.0, 250.0)
        shake[:, c] = amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    shake += rng.normal(0.0, 25.0, size=shake.shape)
    shake[:, 6:] *= 0.4
    residual = np.full(x.shape[1], 0.15, dtype=np.float32)  # some gait motion remains
    frozen = level + residual * (x[start:end] - level) + shake
    x[start:end] = (1 - ramp) * x[start:end] + ramp * frozen
