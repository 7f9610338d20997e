"""Exceptions of the device agents, one root mapped at the boundary::

    SensorError
    ├── SensorConfigError   the sensor configuration is missing or invalid
    ├── SourceError         a recorded data file is missing or malformed
    └── EncoderError        an encoder runtime is missing or a model cannot be loaded or run

LiteRT / tflite-runtime errors (``ValueError``, ``RuntimeError``) and file errors are
chained into :class:`EncoderError` or :class:`SourceError` where they happen.
"""

from __future__ import annotations


class SensorError(Exception):
    """Root of every exception raised by ``wearables``."""


class SensorConfigError(SensorError):
    """The sensor configuration is missing or invalid."""


class SourceError(SensorError):
    """A sensor source cannot produce windows (missing or malformed data file)."""


class EncoderError(SensorError):
    """An encoder cannot be loaded (runtime or model missing) or failed on a window."""
