"""A model-free encoder: per-channel summary statistics of the window (NumPy only).

For the synthetic urban streams (air quality, traffic, crowd counts), where a handful
of slowly varying channels are described well by their level, spread and trend.
Each channel contributes ``(mean - offset) / scale``, ``std / scale`` and the slope
over the window per step, ``/ scale``; the vector is L2-normalised like every embedding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from wearables.encoders.base import Encoder


class FeaturesConfig(BaseModel):
    """Summary statistics per channel; ``offset``/``scale`` put channels on one footing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["features"] = "features"
    steps: int = Field(ge=2, description="window length in samples")
    offset: tuple[float, ...] = Field(description="per channel: a typical level")
    scale: tuple[float, ...] = Field(description="per channel: a typical deviation (> 0)")

    @model_validator(mode="after")
    def _same_channels(self) -> FeaturesConfig:
        if len(self.offset) != len(self.scale) or not self.offset:
            raise ValueError("offset and scale need one value per channel")
        if any(s <= 0 for s in self.scale):
            raise ValueError("scale values must be positive")
        return self


class FeaturesEncoder(Encoder):
    def __init__(self, config: FeaturesConfig) -> None:
        channels = len(config.offset)
        self.input_shape = (config.steps, channels)
        self.dim = 3 * channels
        self.model_id = f"features-{channels}x{config.steps}"
        self.runtime = "numpy"
        self._offset = np.asarray(config.offset, dtype=np.float32)
        self._scale = np.asarray(config.scale, dtype=np.float32)
        t = np.arange(config.steps, dtype=np.float32)
        self._t = (t - t.mean()) / float(((t - t.mean()) ** 2).sum())

    def _run(self, window: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        level = (window.mean(axis=0) - self._offset) / self._scale
        spread = window.std(axis=0) / self._scale
        slope = (self._t @ window) * self.input_shape[0] / self._scale
        out: npt.NDArray[np.float32] = np.concatenate([level, spread, slope]).astype(np.float32)
        return out
