"""LiteRT (``ai-edge-litert``, the maintained TFLite runtime), falling back to tflite-runtime."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from wearables.encoders.base import InterpreterEncoder
from wearables.encoders.tflite_runtime import tflite_runtime_interpreter
from wearables.errors import EncoderError


class LiteRtConfig(BaseModel):
    """A bundled TFLite model (or a ``.tflite`` path) run with LiteRT."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["litert"] = "litert"
    model: str = Field(description="bundled model name (wearables/models) or a .tflite path")
    threads: int = Field(1, ge=1, le=16, description="interpreter threads")
    fallback: bool = Field(True, description="use tflite-runtime when LiteRT is not installed")


def litert_interpreter(path: str, threads: int) -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415 - optional
    except ImportError as exc:
        raise EncoderError(
            "LiteRT is not installed: pip install 'edgecollab[sensor]' (ai-edge-litert)"
        ) from exc
    return Interpreter(model_path=path, num_threads=threads)


def build_litert(config: LiteRtConfig) -> InterpreterEncoder:
    try:
        return InterpreterEncoder(config.model, litert_interpreter, "litert", config.threads)
    except EncoderError as exc:
        if not config.fallback or "not installed" not in str(exc):
            raise
        return InterpreterEncoder(
            config.model, tflite_runtime_interpreter, "tflite-runtime", config.threads
        )
