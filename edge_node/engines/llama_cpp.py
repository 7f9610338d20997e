"""llama.cpp engine (llama-cpp-python) on a GGUF model.

Confidence. For the generated tokens t_1..t_n, let p_i be the probability the
model gave t_i, from its raw logits z at that step (softmax at temperature 1,
before sampling transforms): log p_i = z[t_i] - logsumexp(z). The answer's
confidence is the geometric mean of the token probabilities,

    confidence = exp((1/n) * sum_i log p_i)   in [0, 1],

the per-token perplexity's inverse. Only the last row of logits is read at each
step, so ``logits_all`` (n_ctx x vocabulary floats) is not needed.

Each slot is one ``Llama`` instance (a llama.cpp context is not thread-safe);
``instances`` sets how many. On a GPU device ``n_gpu_layers`` offloads layers;
on this CPU it is 0.
"""

from __future__ import annotations

import functools
import math
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from broker import ChatMessage
from edge_node.engines.base import (
    Engine,
    EngineError,
    Generation,
    GenerationRequest,
    ModelInfo,
    OnToken,
)
from edge_node.models import resolve_model


class LlamaCppConfig(BaseModel):
    """A llama.cpp engine."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["llama_cpp"] = "llama_cpp"
    model: str = Field(
        "smollm2-135m-instruct", description="a known model name, or a path to a GGUF file"
    )
    model_id: str | None = Field(None, description="id advertised in the CMS (default: model)")
    sha256: str | None = Field(None, description="expected sha256 for a GGUF path")
    n_ctx: int = Field(2048, ge=256, description="context window per instance")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (default: all cores)")
    n_batch: int = Field(256, ge=8, description="prompt batch size")
    n_gpu_layers: int = Field(0, ge=-1, description="layers offloaded to the GPU; -1 = all")
    instances: int = Field(1, ge=1, le=16, description="parallel slots (one context each)")
    capabilities: tuple[str, ...] = Field(("chat",), description="capabilities served")
    cache_dir: Path | None = Field(None, description="where assembled models are kept")
    embeddings: bool = Field(
        False, description="also load an embedding context (mean pooling) and serve 'embed'"
    )


class LlamaCppEngine(Engine):
    def __init__(self, config: LlamaCppConfig) -> None:
        try:
            from llama_cpp import Llama  # noqa: PLC0415 - optional dependency (extra 'node')
        except ImportError as exc:
            raise EngineError(
                "llama-cpp-python is not installed: pip install 'edgecollab[node]'"
            ) from exc
        resolved = resolve_model(config.model, sha256=config.sha256, cache_dir=config.cache_dir)
        self.config = config
        threads = config.n_threads or os.cpu_count() or 1
        try:
            self._instances = [
                Llama(
                    model_path=str(resolved.path),
                    n_ctx=config.n_ctx,
                    n_threads=threads,
                    n_batch=config.n_batch,
                    n_gpu_layers=config.n_gpu_layers,
                    verbose=False,
                )
                for _ in range(config.instances)
            ]
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineError(f"llama.cpp could not load {resolved.path}: {exc}") from exc
        self._embedder: Any = None
        self._embed_lock = threading.Lock()
        if config.embeddings:
            import llama_cpp  # noqa: PLC0415 - optional dependency, present once loaded

            self._embedder = Llama(
                model_path=str(resolved.path),
                embedding=True,
                n_ctx=512,
                n_threads=threads,
                n_gpu_layers=config.n_gpu_layers,
                verbose=False,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            )
        self._free: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for llm in self._instances:
            self._free.put(llm)
        first = self._instances[0]
        meta: dict[str, str] = dict(first.metadata)
        arch = meta.get("general.architecture", "unknown")
        self._info = ModelInfo(
            model_id=config.model_id or config.model.rsplit("/", 1)[-1],
            architecture=arch,
            parameters=(
                resolved.known.parameters
                if resolved.known
                else meta.get("general.size_label", "unknown")
            ),
            quantization=resolved.known.quantization if resolved.known else _file_type(meta),
            context_length=int(meta.get(f"{arch}.context_length", config.n_ctx)),
            capabilities=(*config.capabilities, *(("embed",) if config.embeddings else ())),
            extra={
                "n_ctx": config.n_ctx,
                "layers": int(meta.get(f"{arch}.block_count", 0)),
                "embedding_length": int(meta.get(f"{arch}.embedding_length", 0)),
                "n_gpu_layers": config.n_gpu_layers,
                "file": resolved.path.name,
                "chat_format": "template" if meta.get("tokenizer.chat_template") else "plain",
            },
        )
        self._formatter = _formatter(first, meta)

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def slots(self) -> int:
        return len(self._instances)

    def _prompt(self, messages: Sequence[ChatMessage]) -> tuple[list[int], list[str]]:
        # Admission counts the prompt's tokens and generation needs them again.
        return self._prompt_cached(tuple(messages))

    @functools.lru_cache(maxsize=32)  # noqa: B019 - the engine lives as long as the process
    def _prompt_cached(self, messages: tuple[ChatMessage, ...]) -> tuple[list[int], list[str]]:
        llm = self._instances[0]
        result = self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        )
        tokens = llm.tokenize(
            result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True
        )
        stop = (
            result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
        )
        return list(tokens), [s for s in stop if s]

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._prompt(messages)[0])

    def generate(
        self, request: GenerationRequest, on_token: OnToken, cancel: threading.Event
    ) -> Generation:
        import llama_cpp  # noqa: PLC0415 - optional dependency, present once loaded

        llm = self._free.get()
        try:
            tokens, prompt_stops = self._prompt(request.messages)
            stops = [*prompt_stops, *request.stop]
            if len(tokens) + request.max_tokens > self.config.n_ctx:
                raise EngineError(
                    f"prompt of {len(tokens)} tokens + max_tokens {request.max_tokens} exceeds "
                    f"the context window of {self.config.n_ctx}"
                )
            vocab = llama_cpp.llama_model_get_vocab(llm.model)
            n_vocab = llm.n_vocab()
            s = request.sampling
            started = time.perf_counter()
            ttft = 0.0
            logprobs: list[float] = []
            raw = b""
            emitted = 0  # characters of the decoded text already sent
            finish = "length"
            for token in llm.generate(
                tokens, temp=s.temperature, top_p=s.top_p, top_k=s.top_k, repeat_penalty=1.0
            ):
                if not logprobs:
                    ttft = (time.perf_counter() - started) * 1e3
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)
                )
                logprobs.append(_logprob(logits, token))
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish = "stop"
                    break
                raw += llm.detokenize([token], prev_tokens=None)
                text = raw.decode("utf-8", errors="ignore")
                cut = _stop_at(text, stops)
                if cut is not None:
                    text, finish = text[:cut], "stop"
                    if len(text) > emitted:
                        on_token(text[emitted:])
                    emitted = len(text)
                    break
                # Hold back a tail that could be the start of a stop string.
                safe = len(text) - _held_back(text, stops)
                if safe > emitted:
                    on_token(text[emitted:safe])
                    emitted = safe
                if len(logprobs) >= request.max_tokens:
                    break
                if cancel.is_set():
                    finish = "cancelled"
                    break
            text = raw.decode("utf-8", errors="ignore")
            cut = _stop_at(text, stops)
            text = text if cut is None else text[:cut]
            if finish == "length" and len(text) > emitted:
                on_token(text[emitted:])
            return Generation(
                text=text,
                prompt_tokens=len(tokens),
                completion_tokens=len(logprobs),
                finish_reason=finish,
                confidence=math.exp(sum(logprobs) / len(logprobs)) if logprobs else None,
                ttft_ms=ttft,
                total_ms=(time.perf_counter() - started) * 1e3,
            )
        finally:
            self._free.put(llm)

    @property
    def supports_embeddings(self) -> bool:
        return self._embedder is not None

    def embed(self, texts: Sequence[str], *, normalize: bool) -> npt.NDArray[np.float32]:
        """Mean-pooled hidden states of the model, one row per text."""
        if self._embedder is None:
            raise EngineError("embeddings are off for this engine (set engine.embeddings: true)")
        with self._embed_lock:  # one embedding context
            rows = self._embedder.embed(list(texts), normalize=normalize)
        return np.asarray(rows, dtype=np.float32)

    def close(self) -> None:
        for llm in self._instances:
            llm.close()
        self._instances.clear()
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None


def _logprob(logits: np.ndarray[Any, Any], token: int) -> float:
    top = float(logits.max())
    return float(logits[token]) - top - math.log(float(np.exp(logits - top).sum()))


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(cuts) if cuts else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if stop.startswith(text[-n:]):
                best = n
                break
    return best


def _file_type(meta: dict[str, str]) -> str:
    return f"gguf file_type {meta.get('general.file_type', '?')}"


@dataclass(frozen=True, slots=True)
class _PlainPrompt:
    prompt: str
    stop: list[str]
    added_special: bool = False


def plain_transcript(messages: list[dict[str, str]]) -> _PlainPrompt:
    """For base models without a chat template: a plain transcript to be continued."""
    names = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
    lines = [f"{names.get(m['role'], m['role'])}: {m['content']}" for m in messages]
    return _PlainPrompt("\n".join([*lines, "Assistant:"]), ["\nUser:", "\nSystem:"])


def _formatter(llm: Any, meta: dict[str, str]) -> Any:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415

    template = meta.get("tokenizer.chat_template")
    if not template:
        return plain_transcript
    eos = llm.detokenize([llm.token_eos()], special=True).decode("utf-8", errors="ignore")
    bos = llm.detokenize([llm.token_bos()], special=True).decode("utf-8", errors="ignore")
    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
