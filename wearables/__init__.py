"""Device agents: wearables, cameras, roadside units and environment monitors.

Sources replay recorded data (BasicMotions smartwatch IMU, a Daphnet accelerometer
excerpt) or generate labelled synthetic streams; encoders (TFLite on LiteRT or
tflite-runtime, or model-free features) turn windows into embeddings published on
``data/{domain}/{stream}/{agent_id}``; detectors publish events on
``data/{domain}/events/{agent_id}``. Imports ``broker`` only.
"""

from wearables.agent import SensorAgent, SensorStats, StreamStats
from wearables.config import Location, SensorConfig, StreamConfig, load_sensor_config
from wearables.errors import EncoderError, SensorConfigError, SensorError, SourceError

__all__ = [
    "EncoderError",
    "Location",
    "SensorAgent",
    "SensorConfig",
    "SensorConfigError",
    "SensorError",
    "SensorStats",
    "SourceError",
    "StreamConfig",
    "StreamStats",
    "load_sensor_config",
]
