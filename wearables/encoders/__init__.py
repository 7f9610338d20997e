"""Encoders (plugins, chosen by ``type``): LiteRT, tflite-runtime, model-free features."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from wearables.encoders.base import Encoder, InterpreterEncoder, bundled_model
from wearables.encoders.features import FeaturesConfig, FeaturesEncoder
from wearables.encoders.litert import LiteRtConfig, build_litert
from wearables.encoders.tflite_runtime import TfliteRuntimeConfig, build_tflite_runtime

EncoderConfig = Annotated[
    LiteRtConfig | TfliteRuntimeConfig | FeaturesConfig, Field(discriminator="type")
]


def build_encoder(config: LiteRtConfig | TfliteRuntimeConfig | FeaturesConfig) -> Encoder:
    """The encoder a configuration names; raises :class:`~wearables.errors.EncoderError`."""
    if isinstance(config, LiteRtConfig):
        return build_litert(config)
    if isinstance(config, TfliteRuntimeConfig):
        return build_tflite_runtime(config)
    return FeaturesEncoder(config)


__all__ = [
    "Encoder",
    "EncoderConfig",
    "FeaturesConfig",
    "FeaturesEncoder",
    "InterpreterEncoder",
    "LiteRtConfig",
    "TfliteRuntimeConfig",
    "build_encoder",
    "bundled_model",
]
