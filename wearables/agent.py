"""The device agent: sources -> encoders -> ``data/`` embeddings; detectors -> events.

``SensorAgent(config)`` (or ``SensorAgent(config, bus)`` to share a connected
``BusClient`` in-process) is an ``async with`` lifecycle; ``await agent.run(stop)``
streams until ``stop`` is set or every stream reached its ``max_windows``. Per
stream, one named task: take the next window, encode it off the loop, publish an
``embedding`` (QoS 0) on ``data/{domain}/{stream}/{agent_id}`` with the metadata
of :mod:`broker.data`, feed the detector and publish its episode boundaries as
``event`` messages (QoS 1) on ``data/{domain}/events/{agent_id}``. Windows are
paced at ``hop / rate_hz / speed`` seconds; an agent that falls behind (slow
encoder, lost connection) skips ahead instead of bursting. Timestamps are on the
replay clock: the stream's start (wall clock) plus the window's position in the
stream, so that at ``speed`` > 1 durations (episodes, windows) stay physical.

CMS: ``slm/devices/{agent_id}/info`` (retained: device, domain, location, streams
with their model, dimension, channels and units) is written on start and cleared
on a clean stop; ``slm/metrics/{agent_id}/sensor`` (the stats, expiring) every
``stats_interval_s``. A window that fails to encode and a publish that fails are
counted and skipped; the agent keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypedDict

import numpy as np

from broker import BusClient, BusError, Cms, Embedding, Event, SampleMeta, encode
from broker.data import EVENTS_STREAM
from broker.topics import cms_key, data_topic
from broker.waits import wait_event
from wearables.config import SensorConfig, StreamConfig
from wearables.detectors import Detection, Detector, build_detector
from wearables.encoders import Encoder, build_encoder
from wearables.errors import EncoderError, SensorError
from wearables.memory import rss_mb
from wearables.sources import BasicMotionsSource, DaphnetSource, SourceInfo, Window
from wearables.synthetic import SyntheticSource

logger = logging.getLogger(__name__)

MAX_LAG_S = 1.0


class StreamStats(TypedDict):
    published: int
    dropped: int
    encode_errors: int
    events: int
    last_sequence: int
    rate: float  # windows per second since the stream started
    encode_ms_mean: float
    encode_ms_p95: float
    model: str
    dimension: int


class SensorStats(TypedDict):
    agent_id: str
    simulated: bool
    rss_mb: float
    published: int
    events: int
    streams: dict[str, StreamStats]


@dataclass(slots=True)
class _Stream:
    config: StreamConfig
    info: SourceInfo
    windows: Iterator[Window]
    encoder: Encoder
    detector: Detector | None
    topic: str
    published: int = 0
    dropped: int = 0
    encode_errors: int = 0
    events: int = 0
    started: float = 0.0
    epoch: float = 0.0  # wall-clock time at which the replay started (the replay clock's zero)
    encode_ms: deque[float] = field(default_factory=lambda: deque(maxlen=512))


def _open_source(config: StreamConfig) -> BasicMotionsSource | DaphnetSource | SyntheticSource:
    source = config.source
    if source.kind == "basicmotions":
        return BasicMotionsSource(source)
    if source.kind == "daphnet":
        return DaphnetSource(source)
    return SyntheticSource(source)


def _open_stream(config: StreamConfig, domain: str, agent_id: str) -> _Stream:
    source = _open_source(config)
    encoder = build_encoder(config.encoder)
    shape = (source.info.steps, len(source.info.channels))
    if encoder.input_shape != shape:
        encoder.close()
        raise SensorError(
            f"stream {config.name}: encoder {encoder.model_id} takes {encoder.input_shape}, "
            f"the source gives {shape}"
        )
    try:
        detector = (
            None
            if config.detector is None
            else build_detector(config.detector, source.info.channels, source.info.rate_hz)
        )
    except SensorError:
        encoder.close()
        raise
    topic = data_topic(domain, config.name, agent_id)
    return _Stream(config, source.info, source.windows(), encoder, detector, topic)


class SensorAgent:
    """A wearable, camera, roadside unit or environment monitor; see the module docstring."""

    def __init__(self, config: SensorConfig, bus: BusClient | None = None) -> None:
        self.config = config
        self._bus = bus
        self._owns_bus = bus is None
        self._stack: AsyncExitStack | None = None
        self._streams: list[_Stream] = []
        self._event_seq = 0
        self.ready = asyncio.Event()

    @property
    def bus(self) -> BusClient:
        if self._bus is None:
            raise SensorError("the agent is not started (use 'async with')")
        return self._bus

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("SensorAgent is not reentrant")
        stack = AsyncExitStack()
        try:
            for stream_config in self.config.streams:
                stream = await asyncio.to_thread(
                    _open_stream, stream_config, self.config.domain, self.config.agent_id
                )
                stack.callback(stream.encoder.close)
                self._streams.append(stream)
            if self._bus is None:
                self._bus = await stack.enter_async_context(
                    BusClient(self.config.bus, self.config.agent_id)
                )
            stack.push_async_callback(self._clear_info)
            await Cms(self._bus).put(self._info_key, self.describe())
        except BaseException:
            await stack.aclose()
            self._streams.clear()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._streams.clear()
        if self._owns_bus:
            self._bus = None

    @property
    def _info_key(self) -> str:
        return cms_key("devices", self.config.agent_id, "info")

    async def _clear_info(self) -> None:
        with contextlib.suppress(BusError):
            await Cms(self.bus).delete(self._info_key)

    def describe(self) -> dict[str, Any]:
        """The device's CMS entry: what it publishes and where."""
        return {
            "device": self.config.device,
            "domain": self.config.domain,
            "simulated": self.config.simulated,
            "location": self.config.location.as_meta(),
            "streams": [
                {
                    "stream": s.config.name,
                    "topic": s.topic,
                    "type": s.info.type,
                    "source": s.info.source,
                    "model": s.encoder.model_id,
                    "dimension": s.encoder.dim,
                    "channels": list(s.info.channels),
                    "units": s.info.units,
                    "rate_hz": s.info.rate_hz,
                    "window_s": s.info.steps / s.info.rate_hz,
                    "events": None if s.detector is None else s.detector.event,
                }
                for s in self._streams
            ],
        }

    @property
    def stats(self) -> SensorStats:
        now = time.monotonic()
        streams: dict[str, StreamStats] = {}
        for s in self._streams:
            lat = sorted(s.encode_ms)
            elapsed = now - s.started if s.started else 0.0
            streams[s.config.name] = StreamStats(
                published=s.published,
                dropped=s.dropped,
                encode_errors=s.encode_errors,
                events=s.events,
                last_sequence=s.published + s.dropped - 1,
                rate=s.published / elapsed if elapsed > 0 else 0.0,
                encode_ms_mean=float(np.mean(lat)) if lat else 0.0,
                encode_ms_p95=lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0,
                model=s.encoder.model_id,
                dimension=s.encoder.dim,
            )
        return SensorStats(
            agent_id=self.config.agent_id,
            simulated=self.config.simulated,
            rss_mb=rss_mb(),
            published=sum(s.published for s in self._streams),
            events=sum(s.events for s in self._streams),
            streams=streams,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Stream until ``stop`` is set or every stream has sent its ``max_windows``."""
        if self._stack is None:
            raise SensorError("run() needs the agent started (use 'async with')")
        stop = stop or asyncio.Event()
        self.ready.set()
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._stream(s, stop), name=f"sensor:{s.config.name}")
                for s in self._streams
            ]
            reporter = group.create_task(self._report(stop), name="sensor:stats")
            await asyncio.wait(tasks)
            reporter.cancel()

    async def _report(self, stop: asyncio.Event) -> None:
        cms = Cms(self.bus)
        key = cms_key("metrics", self.config.agent_id, "sensor")
        while not stop.is_set():
            await wait_event(stop, self.config.stats_interval_s)
            stats = self.stats
            logger.info("%s: %s", self.config.agent_id, stats)
            try:
                expiry = 3 * self.config.stats_interval_s
                await cms.put(key, dict(stats), expiry_s=expiry)
            except BusError as exc:
                logger.warning("%s: stats not published: %s", self.config.agent_id, exc)

    async def _stream(self, s: _Stream, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        period = s.info.hop / s.info.rate_hz / s.config.speed
        s.started, s.epoch = time.monotonic(), time.time()
        due = loop.time()
        while not stop.is_set():
            if s.config.max_windows is not None and s.published + s.dropped >= s.config.max_windows:
                return
            window = next(s.windows)
            await self._publish_window(s, window)
            due += period
            lag = loop.time() - due
            if lag > MAX_LAG_S:
                due = loop.time()  # behind: skip ahead instead of bursting
            await wait_event(stop, max(0.0, due - loop.time()))

    async def _publish_window(self, s: _Stream, window: Window) -> None:
        started = time.perf_counter()
        try:
            vector = await asyncio.to_thread(s.encoder.encode, window.data)
        except EncoderError as exc:
            s.encode_errors += 1
            logger.warning("%s/%s: window skipped: %s", self.config.agent_id, s.config.name, exc)
            return
        s.encode_ms.append((time.perf_counter() - started) * 1000)
        # The replay clock: at speed 1 the wall clock; faster, durations stay physical.
        now = s.epoch + window.offset_s
        window_s = s.info.steps / s.info.rate_hz
        meta = SampleMeta(
            domain=self.config.domain,
            type=s.info.type,
            dimension=s.encoder.dim,
            units=s.info.units,
            location=self.config.location.as_meta(),
            timestamp=now,
            sequence=s.published + s.dropped,
            source=s.info.source,
            window_s=window_s,
            label=window.label,
            summary={
                c: round(float(v), 4)
                for c, v in zip(s.info.channels, window.data.mean(axis=0), strict=True)
            },
            extra={"simulated": self.config.simulated, "semi_synthetic": s.info.semi_synthetic},
        )
        try:
            payload = encode(Embedding(vector, s.encoder.model_id, meta.to_meta()))
            await self.bus.publish(s.topic, payload, qos=0, timeout=1.0)
            s.published += 1
        except BusError as exc:
            s.dropped += 1
            logger.warning("%s: sample not published: %s", s.topic, exc)
        if s.detector is not None:
            detection = s.detector.update(window.data, now - window_s, now)
            if detection is not None:
                await self._publish_event(s, detection)

    async def _publish_event(self, s: _Stream, d: Detection) -> None:
        assert s.detector is not None
        event = Event(
            type=s.detector.event,
            stream=s.config.name,
            phase=d.phase,
            start=d.start,
            end=d.end,
            score=round(d.score, 4),
            threshold=d.threshold,
            sequence=self._event_seq,
            severity="warning",
            message=f"{s.detector.event} {d.phase} on {s.config.name}",
            meta={"simulated": self.config.simulated, "source": s.info.source},
        )
        self._event_seq += 1
        topic = data_topic(self.config.domain, EVENTS_STREAM, self.config.agent_id)
        try:
            await self.bus.publish(topic, encode(event), qos=1, timeout=5.0)
            s.events += 1
        except BusError as exc:
            logger.warning("%s: event not published: %s", topic, exc)
