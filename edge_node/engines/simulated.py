"""A simulated engine: takes the real time a device profile says, writes no real text.

For capacity and scheduling studies on one machine (many simulated Jetsons and
Raspberry Pis on one laptop). Everything it returns says it is simulated: the text
is ``"sim "`` repeated, ``Generation.simulated`` is true, ``info.architecture`` is
``"simulated"``.

Timing. A generation first waits ``prompt_tokens / prefill_rate`` and emits its
first token (llama.cpp's first token comes out of the prefill pass), then one
more token every ``1 / decode_rate`` seconds: N tokens take
``prefill + (N - 1) / decode_rate``. Both rates come from the profile
(``edge_node.profiles``) and depend on how many generations run on this engine at
that moment: ``rate * min(1, k / n)``. The prefill uses the count at its start;
the decode re-reads it after every token. Token times are scheduled on the ideal
timeline (``t_i = t_{i-1} + 1/rate``), so sleep overshoot does not accumulate. At
most ``slots`` generations run; more wait for a slot (that wait counts in ttft).
Stop strings are ignored (``"sim "`` never contains one worth honouring).

Compressed time. ``time_scale`` (default 1) is simulated seconds per wall second:
every rate is multiplied by it, so a one-hour capacity study can run in a minute
(``time_scale: 60``) with the same schedule in simulated time. At high scales a
token every few hundred microseconds would wake a thread per token, so tokens are
released in batches at most every ``tick_s`` wall seconds (each no earlier than
its due time); the last token is released at its exact due time, so a
generation's total time is not rounded. Whoever drives a compressed engine must
compress the rest of its clock too (load debounce, deadlines): the engine only
knows its own.

Confidence is NOT a model probability: it is a deterministic pseudo value in
[0, 1), the first 8 bytes of sha256(prompt) read as a fraction, so the same prompt
always gets the same confidence (for reproducible cascade/escalation studies).

Prompt tokens are estimated as ceil(1.3 * words) + 4 per message (the chat
template's role markers): English text averages ~1.3 BPE tokens per word.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker import ChatMessage
from edge_node.engines.base import Engine, Generation, GenerationRequest, ModelInfo, OnToken
from edge_node.profiles import DeviceProfile, Sourced, get_profile

PIECE = "sim "  # the text of every simulated token
TOKENS_PER_WORD = 1.3
TOKENS_PER_MESSAGE = 4
CONTEXT_LENGTH = 4096

_N = TypeVar("_N", int, float)

Sleep = Callable[[threading.Event, float], bool]
"""Wait up to ``dt`` seconds; return True if the event was set (cancelled)."""


def _wait(event: threading.Event, dt: float) -> bool:
    return event.wait(dt)


class SimulatedEngineConfig(BaseModel):
    """A simulated engine with the timing of a device profile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["simulated"] = "simulated"
    profile: str = Field(
        description="device profile: jetson-agx-orin | jetson-orin-nano | raspberry-pi-5"
    )
    model_id: str = Field("simulated-1b", description="model id advertised in the CMS")
    parameters: str = Field("1.1B", description="size label advertised (the profiles' model)")
    capabilities: tuple[str, ...] = Field(("chat",), description="capabilities served")
    prefill_tps: float | None = Field(None, gt=0, description="override: prompt tokens/s")
    decode_tps: float | None = Field(None, gt=0, description="override: generated tokens/s")
    concurrency: int | None = Field(None, ge=1, le=64, description="override: slots")
    aggregate_speedup: float | None = Field(
        None, ge=1, description="override: k in per-stream rate = rate * min(1, k / n)"
    )
    completion_tokens: int | None = Field(
        None, ge=1, description="answer length (finish 'stop'); default: max_tokens"
    )
    time_scale: float = Field(
        1.0, gt=0, le=1000, description="simulated seconds per wall second (rates x this)"
    )
    tick_s: float = Field(
        0.002, ge=0, le=0.1, description="tokens are released at most this often (wall s)"
    )

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        get_profile(value)  # UnknownProfileError (a ValueError) lists the known names
        return value

    def resolve_profile(self) -> DeviceProfile:
        """The named profile with this configuration's overrides applied."""
        base = get_profile(self.profile)
        return replace(
            base,
            prefill_tps=_override(base.prefill_tps, self.prefill_tps),
            decode_tps=_override(base.decode_tps, self.decode_tps),
            concurrency=_override(base.concurrency, self.concurrency),
            aggregate_speedup=_override(base.aggregate_speedup, self.aggregate_speedup),
        )


class SimulatedEngine(Engine):
    """Takes the wall-clock time of ``config.profile``; see the module docstring."""

    def __init__(
        self,
        config: SimulatedEngineConfig,
        *,
        sleep: Sleep = _wait,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config
        self.profile = config.resolve_profile()
        self._sleep = sleep
        self._clock = clock
        self._cond = threading.Condition()
        self._running = 0
        overrides = {
            k: v
            for k, v in config.model_dump(
                include={"prefill_tps", "decode_tps", "concurrency", "aggregate_speedup"}
            ).items()
            if v is not None
        }
        if config.time_scale != 1.0:
            overrides["time_scale"] = config.time_scale
        self._info = ModelInfo(
            model_id=config.model_id,
            architecture="simulated",
            parameters=config.parameters,
            quantization="n/a",
            context_length=CONTEXT_LENGTH,
            capabilities=config.capabilities,
            extra={"simulated": True, "profile": self.profile.name, **overrides},
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def slots(self) -> int:
        return self.profile.concurrency.value

    @property
    def running(self) -> int:
        """Generations running now (prefill or decode)."""
        with self._cond:
            return self._running

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        words = sum(len(m.content.split()) for m in messages)
        return math.ceil(words * TOKENS_PER_WORD) + TOKENS_PER_MESSAGE * len(messages)

    def generate(
        self, request: GenerationRequest, on_token: OnToken, cancel: threading.Event
    ) -> Generation:
        prompt_tokens = self.count_prompt_tokens(request.messages)
        target = request.max_tokens
        finish = "length"
        if self.config.completion_tokens is not None and self.config.completion_tokens < target:
            target, finish = self.config.completion_tokens, "stop"
        confidence = prompt_confidence(request.messages)
        started = self._clock()
        if not self._enter(cancel):
            return self._result(
                prompt_tokens=prompt_tokens,
                n=0,
                finish="cancelled",
                confidence=confidence,
                started=started,
                first=started,
            )
        try:
            # Queueing for a slot counts in ttft; the prefill starts once in a slot.
            scale, tick = self.config.time_scale, self.config.tick_s
            due = self._clock() + prompt_tokens / (self.profile.prefill_rate(self.running) * scale)
            first = due
            emitted = 0
            woke = -math.inf
            while emitted < target:
                # the last token's due time at the current rate caps a batch's wait
                rate = self.profile.decode_rate(self.running) * scale
                wake = min(max(due, woke + tick), due + (target - emitted - 1) / rate)
                if cancel.is_set() or self._sleep(cancel, max(0.0, wake - self._clock())):
                    finish = "cancelled"
                    break
                woke = self._clock()
                if emitted == 0:
                    first = woke
                while emitted < target and due <= woke:  # every token due by now
                    on_token(PIECE)
                    emitted += 1
                    due += 1.0 / (self.profile.decode_rate(self.running) * scale)
            return self._result(
                prompt_tokens=prompt_tokens,
                n=emitted,
                finish=finish,
                confidence=confidence,
                started=started,
                first=first,
            )
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify()

    def _enter(self, cancel: threading.Event) -> bool:
        """Take a slot, waiting while all are busy; False if cancelled meanwhile."""
        with self._cond:
            while self._running >= self.slots:
                if cancel.is_set():
                    return False
                self._cond.wait(0.05)  # also polls cancel, which cannot notify us
            self._running += 1
            return True

    def _result(
        self,
        *,
        prompt_tokens: int,
        n: int,
        finish: str,
        confidence: float,
        started: float,
        first: float,
    ) -> Generation:
        now = self._clock()
        return Generation(
            text=PIECE * n,
            prompt_tokens=prompt_tokens,
            completion_tokens=n,
            finish_reason=finish,
            confidence=confidence,
            ttft_ms=(first - started) * 1e3 if n else 0.0,
            total_ms=(now - started) * 1e3,
            simulated=True,
        )


def _override(figure: Sourced[_N], value: _N | None) -> Sourced[_N]:
    if value is None:
        return figure
    return Sourced(value, "override in the engine configuration")


def prompt_confidence(messages: Sequence[ChatMessage]) -> float:
    """Simulated confidence in [0, 1): sha256 of the prompt as a fraction (not a model's)."""
    digest = hashlib.sha256()
    for m in messages:
        digest.update(f"{m.role}\0{m.content}\0".encode())
    return int.from_bytes(digest.digest()[:8], "big") / 2**64
