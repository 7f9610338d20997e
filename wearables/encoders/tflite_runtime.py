"""tflite-runtime: the older TFLite interpreter some device images ship (it needs NumPy < 2)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from wearables.encoders.base import InterpreterEncoder
from wearables.errors import EncoderError


class TfliteRuntimeConfig(BaseModel):
    """A bundled TFLite model (or a ``.tflite`` path) run with tflite-runtime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["tflite_runtime"] = "tflite_runtime"
    model: str = Field(description="bundled model name (wearables/models) or a .tflite path")
    threads: int = Field(1, ge=1, le=16, description="interpreter threads")


def tflite_runtime_interpreter(path: str, threads: int) -> Any:
    try:
        from tflite_runtime.interpreter import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
            Interpreter,
        )
    except ImportError as exc:
        raise EncoderError(
            "neither LiteRT (ai-edge-litert) nor tflite-runtime is installed: "
            "pip install 'edgecollab[sensor]'"
        ) from exc
    return Interpreter(model_path=path, num_threads=threads)


def build_tflite_runtime(config: TfliteRuntimeConfig) -> InterpreterEncoder:
    return InterpreterEncoder(
        config.model, tflite_runtime_interpreter, "tflite-runtime", config.threads
    )
