"""Sensor agent configuration: YAML validated by pydantic, with environment overrides.

``EDGECOLLAB_SENSOR__<FIELD>[__<SUBFIELD>...]=value`` overrides any field
(``EDGECOLLAB_SENSOR__BUS__PORT=1884``), as for every role (broker.config_file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker import BusSettings
from broker.config_file import ConfigFileError, load_config_file
from broker.data import EVENTS_STREAM
from broker.topics import validate_id
from wearables.detectors import DetectorConfig
from wearables.encoders import EncoderConfig
from wearables.errors import SensorConfigError
from wearables.sources import BasicMotionsConfig, DaphnetConfig
from wearables.synthetic import SyntheticConfig

ENV_PREFIX = "EDGECOLLAB_SENSOR__"

SourceConfig = Annotated[
    BasicMotionsConfig | DaphnetConfig | SyntheticConfig, Field(discriminator="kind")
]


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: float | None = Field(None, ge=-90, le=90, description="degrees north")
    lon: float | None = Field(None, ge=-180, le=180, description="degrees east")
    site: str | None = Field(None, max_length=128, description="a place name")
    placement: str | None = Field(None, max_length=128, description="body position (wearables)")

    def as_meta(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class StreamConfig(BaseModel):
    """One stream: a source, the encoder of its windows, optionally a detector."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="the {stream} topic level, e.g. imu, vitals, air_quality")
    source: SourceConfig
    encoder: EncoderConfig
    detector: DetectorConfig | None = Field(None, description="events on this stream")
    speed: float = Field(1.0, gt=0, le=10_000, description="replay speed; 1 = real time")
    max_windows: int | None = Field(None, ge=1, description="stop the stream after this many")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        validate_id(value, "stream name")
        if value == EVENTS_STREAM:
            raise ValueError(f"'{EVENTS_STREAM}' is reserved for events")
        return value


class SensorConfig(BaseModel):
    """A device agent: a wearable, a camera, a roadside unit, an environment monitor."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    agent_id: str = Field(description="unique id; a topic level ([a-z0-9_-])")
    device: Literal["wearable", "camera", "roadside_unit", "environment_monitor"]
    domain: str = Field(description="the {domain} topic level, e.g. health, urban")
    simulated: bool = Field(True, description="replayed/synthetic data: a simulated device")
    bus: BusSettings = Field(default_factory=BusSettings, description="broker connection")
    location: Location = Field(description="where the device is (or where it is worn)")
    streams: tuple[StreamConfig, ...] = Field(min_length=1)
    stats_interval_s: float = Field(
        10.0, gt=0, description="how often the agent's stats are logged and put in the CMS"
    )

    @field_validator("agent_id", "domain")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_id(value, "agent_id or domain")

    @model_validator(mode="after")
    def _unique_streams(self) -> SensorConfig:
        names = [s.name for s in self.streams]
        if len(set(names)) != len(names):
            raise ValueError(f"stream names must be unique, got {names}")
        if not self.location.as_meta():
            raise ValueError("location needs at least one of lat, lon, site, placement")
        return self


def load_sensor_config(
    path: Path | None, *, env: Mapping[str, str] | None = None, **overrides: Any
) -> SensorConfig:
    """Read and validate; raises :class:`SensorConfigError` naming the problem."""
    try:
        return load_config_file(
            SensorConfig, path, env_prefix=ENV_PREFIX, what="sensor", env=env, overrides=overrides
        )
    except ConfigFileError as exc:
        raise SensorConfigError(str(exc)) from exc
