"""The ``data/`` contract: what a sample's metadata holds, and the ``event`` message.

A device publishes one ``embedding`` per sensor window on
``data/{domain}/{stream}/{agent_id}`` (QoS 0). ``Embedding.model`` names the
encoder; ``Embedding.meta`` is a :class:`SampleMeta`:

=============  ==========================================================================
``domain``     the topic's domain (``health``, ``urban``...)
``type``       what the sensor measures: ``imu``, ``accelerometer``, ``vitals``,
               ``air_quality``, ``traffic``, ``crowd``...
``dimension``  length of the embedding (must equal the vector's)
``units``      raw channel -> unit of the window the embedding was computed from
               (``{"acc_x": "m/s^2", "gyr_x": "rad/s"}``, ``{"heart_rate": "1/min"}``)
``location``   ``{"lat": deg, "lon": deg, "site": name, "placement": body position}``,
               any of them, at least one
``timestamp``  end of the window, seconds since the Unix epoch (UTC)
``sequence``   per (agent, stream) counter from 0, +1 per sample
``source``     ``replay:<dataset>`` (recorded data replayed), ``synthetic`` or ``live``
``window_s``   optional: the window's duration in seconds
``label``      optional: the dataset's ground truth for the window (evaluation only)
``summary``    optional: raw channel -> mean over the window, in ``units``
=============  ==========================================================================

Other keys are extensions and are kept. Events (QoS 1) go to
``data/{domain}/events/{agent_id}`` as :class:`Event`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self

from broker.errors import CodecError, TopicError
from broker.fields import FieldReader, check_plain
from broker.messages import MAX_DIM, register_kind
from broker.topics import validate_id

EVENTS_STREAM = "events"
PHASES = ("onset", "end", "instant")
SEVERITIES = ("info", "warning", "critical")
_SAMPLE_KEYS = frozenset(
    "domain type dimension units location timestamp sequence source window_s label summary".split()  # noqa: SIM905
)


def _level(value: Any, what: str) -> str:
    try:
        return validate_id(value, what)
    except TopicError as exc:
        raise CodecError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class SampleMeta:
    """Validated metadata of one sample; see the module docstring for the fields."""

    domain: str
    type: str
    dimension: int
    units: dict[str, str]
    location: dict[str, Any]
    timestamp: float
    sequence: int
    source: str
    window_s: float | None = None
    label: str | None = None
    summary: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _level(self.domain, "domain")
        _level(self.type, "type")
        if not 1 <= self.dimension <= MAX_DIM:
            raise CodecError(f"dimension must be 1..{MAX_DIM}")
        if not self.units or any(
            not isinstance(k, str) or not isinstance(v, str) for k, v in self.units.items()
        ):
            raise CodecError("units must map raw channel names to unit strings")
        _check_location(self.location)
        if self.timestamp <= 0 or self.sequence < 0:
            raise CodecError("timestamp must be positive and sequence not negative")
        if not (self.source in ("synthetic", "live") or self.source.startswith("replay:")):
            raise CodecError("source must be 'synthetic', 'live' or 'replay:<dataset>'")
        if self.window_s is not None and self.window_s <= 0:
            raise CodecError("window_s must be positive")
        check_plain(self.extra, "meta")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Self:
        """Validate an ``Embedding.meta`` map; raises :class:`CodecError`."""
        r = FieldReader({k: v for k, v in meta.items() if k in _SAMPLE_KEYS}, "meta")
        summary = r.mapping("summary")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in summary.values()):
            raise CodecError("meta.summary values must be numbers")
        out = cls(
            domain=r.string("domain", max_len=64),
            type=r.string("type", max_len=64),
            dimension=r.integer("dimension", lo=1, hi=MAX_DIM),
            units=r.mapping("units", required=True),
            location=r.mapping("location", required=True),
            timestamp=r.number("timestamp", lo=0.0),
            sequence=r.integer("sequence", lo=0),
            source=r.string("source", max_len=128),
            window_s=r.opt_number("window_s", lo=0.0),
            label=r.opt_string("label", max_len=128),
            summary={k: float(v) for k, v in summary.items()},
            extra={k: v for k, v in meta.items() if k not in _SAMPLE_KEYS},
        )
        r.finish()
        return out

    def to_meta(self) -> dict[str, Any]:
        """The map to put in ``Embedding.meta``."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            domain=self.domain,
            type=self.type,
            dimension=self.dimension,
            units=dict(self.units),
            location=dict(self.location),
            timestamp=self.timestamp,
            sequence=self.sequence,
            source=self.source,
        )
        if self.window_s is not None:
            out["window_s"] = self.window_s
        if self.label is not None:
            out["label"] = self.label
        if self.summary:
            out["summary"] = dict(self.summary)
        return out


def _check_location(location: Mapping[str, Any]) -> None:
    known = {"lat": (-90.0, 90.0), "lon": (-180.0, 180.0)}
    if not location or set(location) - {"lat", "lon", "site", "placement"}:
        raise CodecError("location must hold some of lat, lon, site, placement and nothing else")
    for key, (lo, hi) in known.items():
        value = location.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi
        ):
            raise CodecError(f"location.{key} must be a number in [{lo}, {hi}]")
    for key in ("site", "placement"):
        value = location.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 128):
            raise CodecError(f"location.{key} must be a string of at most 128 characters")


@register_kind
@dataclass(frozen=True, slots=True)
class Event:
    """Something a detector found on a stream: an episode's onset or end, or an instant."""

    KIND: ClassVar[str] = "event"
    type: str  # freezing_of_gait, abnormal_vitals, ...
    stream: str  # the stream the event is about
    phase: Literal["onset", "end", "instant"]
    start: float  # Unix seconds: first window of the episode
    score: float  # the detector's statistic at the decision
    threshold: float  # the value the statistic crossed
    sequence: int  # per agent, +1 per event
    end: float | None = None  # set on "end" and "instant"
    severity: Literal["info", "warning", "critical"] = "warning"
    message: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _level(self.type, "event type")
        _level(self.stream, "event stream")
        if self.phase not in PHASES:
            raise CodecError(f"event.phase must be one of {PHASES}")
        if self.severity not in SEVERITIES:
            raise CodecError(f"event.severity must be one of {SEVERITIES}")
        if self.end is not None and self.end < self.start:
            raise CodecError("event.end must not be before event.start")
        if self.sequence < 0 or len(self.message) > 1024:
            raise CodecError("event.sequence must not be negative, message at most 1024")
        check_plain(self.meta, "event.meta")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {
            "type": self.type,
            "stream": self.stream,
            "phase": self.phase,
            "start": self.start,
            "score": self.score,
            "threshold": self.threshold,
            "sequence": self.sequence,
            "severity": self.severity,
            "message": self.message,
        }
        if self.end is not None:
            out["end"] = self.end
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        out = cls(
            type=r.string("type", max_len=64),
            stream=r.string("stream", max_len=64),
            phase=r.string("phase", max_len=16),  # type: ignore[arg-type]
            start=r.number("start", lo=0.0),
            score=r.number("score"),
            threshold=r.number("threshold"),
            sequence=r.integer("sequence", lo=0),
            end=r.opt_number("end", lo=0.0),
            severity=r.opt_string("severity", max_len=16) or "warning",  # type: ignore[arg-type]
            message=r.opt_string("message", max_len=1024) or "",
            meta=r.mapping("meta"),
        )
        r.finish()
        return out
