"""What every inference engine provides to the node.

Engines are plugins: one small module each, with a pydantic config whose ``type``
field is the discriminator (see ``edge_node.config``). ``generate`` is blocking
and runs on a worker thread; it reports each piece of text through ``on_token``
and stops early when ``cancel`` is set (deadline passed, node draining).
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from broker import ChatMessage
from edge_node.errors import EngineError

__all__ = [
    "Engine",
    "EngineError",
    "Generation",
    "GenerationRequest",
    "ModelInfo",
    "OnToken",
    "Sampling",
]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the node advertises about a model in its birth and under slm/models/."""

    model_id: str
    architecture: str
    parameters: str  # a size label such as "135M"
    quantization: str
    context_length: int
    capabilities: tuple[str, ...] = ("chat",)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Sampling:
    """Sampling parameters; ``None`` means the live default from the CMS or the config."""

    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    messages: Sequence[ChatMessage]
    max_tokens: int
    sampling: Sampling = Sampling()
    stop: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Generation:
    """The outcome of one generation."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length" or "cancelled"
    confidence: float | None  # in [0, 1]; None when the engine cannot tell
    ttft_ms: float
    total_ms: float
    simulated: bool = False


OnToken = Callable[[str], None]


class Engine(ABC):
    """An inference backend serving one model."""

    @property
    @abstractmethod
    def info(self) -> ModelInfo:
        """The model this engine serves."""

    @property
    @abstractmethod
    def slots(self) -> int:
        """How many generations may run at once."""

    @abstractmethod
    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the prompt will take (exact or a close estimate), for admission."""

    @abstractmethod
    def generate(
        self, request: GenerationRequest, on_token: OnToken, cancel: threading.Event
    ) -> Generation:
        """Generate (blocking; called on a worker thread)."""

    @property
    def supports_embeddings(self) -> bool:
        """Whether :meth:`embed` works with this engine's configuration."""
        return False

    def embed(self, texts: Sequence[str], *, normalize: bool) -> npt.NDArray[np.float32]:
        """One embedding row per text (blocking; called on a worker thread)."""
        del texts, normalize
        raise EngineError(f"{type(self).__name__} does not produce embeddings")

    def close(self) -> None:  # noqa: B027 - engines without resources need not override
        """Release the model."""
