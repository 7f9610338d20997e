"""Detectors a device runs on its own raw windows; each episode becomes events.

Where: on the device (see docs/decisions.md). Both need the raw signal (a spectrum,
channel values in their units), which never leaves the device; only embeddings,
window summaries and events are published.

- ``freeze_index``: freezing of gait after Moore et al. (2008), "Ambulatory monitoring
  of freezing of gait in Parkinson's disease": on one leg accelerometer axis, the
  power in the freeze band (3-8 Hz) over the power in the locomotion band (0.5-3 Hz);
  a window is freezing when that ratio exceeds ``threshold`` while the total power
  exceeds ``power_threshold`` (standing still has no gait to freeze).
- ``threshold``: per-channel bounds on the window mean (abnormal vitals, pollution,
  crowding); the score is the largest exceedance relative to its bound.

An :class:`EpisodeTracker` debounces: ``min_windows`` consecutive positive windows
open an episode (``onset``), ``clear_windows`` consecutive negative ones close it
(``end``, with the time of the last positive window).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from wearables.errors import SensorConfigError


@dataclass(frozen=True, slots=True)
class Detection:
    """An episode boundary: ``onset`` (``end`` None) or ``end``."""

    phase: Literal["onset", "end"]
    start: float
    end: float | None
    score: float  # the peak statistic of the episode so far
    threshold: float


class EpisodeTracker:
    def __init__(self, min_windows: int, clear_windows: int, threshold: float) -> None:
        self.min_windows, self.clear_windows, self.threshold = min_windows, clear_windows, threshold
        self._on = self._off = 0
        self._first: float | None = None
        self._last = 0.0
        self._peak = 0.0
        self.active = False

    def update(
        self, positive: bool, score: float, t_start: float, t_end: float
    ) -> Detection | None:
        if positive:
            self._on, self._off = self._on + 1, 0
            self._first = t_start if self._first is None else self._first
            self._last, self._peak = t_end, max(self._peak, score)
            if not self.active and self._on >= self.min_windows:
                self.active = True
                return Detection("onset", self._first, None, self._peak, self.threshold)
            return None
        self._off, self._on = self._off + 1, 0
        if self.active and self._off >= self.clear_windows:
            self.active = False
            out = Detection("end", self._first or t_start, self._last, self._peak, self.threshold)
            self._first, self._peak = None, 0.0
            return out
        if not self.active:
            self._first, self._peak = None, 0.0
        return None


class FreezeIndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["freeze_index"] = "freeze_index"
    event: str = Field("freezing_of_gait", description="event type published")
    channels: tuple[str, ...] = Field(
        ("ankle_fwd", "ankle_vert", "ankle_lat"),
        min_length=1,
        description="accelerometer axes whose band powers are summed",
    )
    threshold: float = Field(3.0, gt=0, description="freeze-band / locomotion-band power")
    power_threshold: float = Field(
        2000.0, ge=0, description="minimum band power (mg^2) for there to be gait at all"
    )
    min_windows: int = Field(2, ge=1)
    clear_windows: int = Field(2, ge=1)


class Bounds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    above: float | None = Field(None, description="abnormal when the mean exceeds this")
    below: float | None = Field(None, description="abnormal when the mean is under this")

    @model_validator(mode="after")
    def _some(self) -> Bounds:
        if self.above is None and self.below is None:
            raise ValueError("a bound needs 'above' or 'below'")
        return self


class ThresholdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["threshold"] = "threshold"
    event: str = Field(description="event type published, e.g. abnormal_vitals")
    rules: dict[str, Bounds] = Field(min_length=1, description="channel -> bounds")
    min_windows: int = Field(2, ge=1)
    clear_windows: int = Field(2, ge=1)


DetectorConfig = Annotated[FreezeIndexConfig | ThresholdConfig, Field(discriminator="type")]


class Detector(ABC):
    event: str

    def __init__(self, min_windows: int, clear_windows: int, threshold: float) -> None:
        self.tracker = EpisodeTracker(min_windows, clear_windows, threshold)

    @abstractmethod
    def score(self, window: npt.NDArray[np.float32]) -> tuple[bool, float]:
        """(positive, statistic) for one window."""

    def update(
        self, window: npt.NDArray[np.float32], t_start: float, t_end: float
    ) -> Detection | None:
        positive, value = self.score(window)
        return self.tracker.update(positive, value, t_start, t_end)


class FreezeIndexDetector(Detector):
    def __init__(
        self, config: FreezeIndexConfig, channels: tuple[str, ...], rate_hz: float
    ) -> None:
        missing = set(config.channels) - set(channels)
        if missing:
            raise SensorConfigError(f"freeze_index channels {sorted(missing)} not in {channels}")
        super().__init__(config.min_windows, config.clear_windows, config.threshold)
        self.config, self.event = config, config.event
        self._channels, self._rate = [channels.index(c) for c in config.channels], rate_hz

    def freeze_index(self, window: npt.NDArray[np.float32]) -> tuple[float, float]:
        """(freeze index, band power) of one window."""
        x = window[:, self._channels].astype(np.float64)
        x = (x - x.mean(axis=0)) * np.hanning(len(x))[:, None]
        power = (np.abs(np.fft.rfft(x, axis=0)) ** 2).sum(axis=1) / len(x)
        freqs = np.fft.rfftfreq(len(x), 1.0 / self._rate)
        freeze = float(power[(freqs > 3.0) & (freqs <= 8.0)].sum())
        loco = float(power[(freqs > 0.5) & (freqs <= 3.0)].sum())
        return freeze / max(loco, 1e-9), (freeze + loco) / len(x)

    def score(self, window: npt.NDArray[np.float32]) -> tuple[bool, float]:
        fi, band_power = self.freeze_index(window)
        return fi > self.config.threshold and band_power > self.config.power_threshold, fi


class ThresholdDetector(Detector):
    def __init__(self, config: ThresholdConfig, channels: tuple[str, ...]) -> None:
        missing = set(config.rules) - set(channels)
        if missing:
            raise SensorConfigError(f"threshold rules name unknown channels {sorted(missing)}")
        super().__init__(config.min_windows, config.clear_windows, 1.0)
        self.config, self.event = config, config.event
        self._rules = [(channels.index(c), b) for c, b in config.rules.items()]

    def score(self, window: npt.NDArray[np.float32]) -> tuple[bool, float]:
        means = window.mean(axis=0)
        worst = 0.0
        for index, bounds in self._rules:
            value = float(means[index])
            if bounds.above is not None:
                worst = max(worst, value / bounds.above if bounds.above > 0 else value)
            if bounds.below is not None and value > 0:
                worst = max(worst, bounds.below / value)
        return worst > 1.0, worst


def build_detector(
    config: FreezeIndexConfig | ThresholdConfig, channels: tuple[str, ...], rate_hz: float
) -> Detector:
    if isinstance(config, FreezeIndexConfig):
        return FreezeIndexDetector(config, channels, rate_hz)
    return ThresholdDetector(config, channels)
