"""LiteLLM's Router choosing the edge node, for the allocation study's side-by-side.

What of LiteLLM runs here, unchanged (litellm pinned in the ``dev`` extra):

- ``litellm.Router`` with one deployment per edge node (``model_name`` ``"edge"``,
  ``model_info.id`` = node id, ``rpm``/``tpm`` from the node's device profile, see
  :func:`limits`) and ``routing_strategy`` ``"least-busy"`` or
  ``"usage-based-routing-v2"``;
- ``Router.get_available_deployment`` picks the node (its healthy/cooldown filter,
  then the strategy's own ``get_available_deployments``);
- the strategy's ``pre_call_check`` (what ``Router.routing_strategy_pre_call_checks``
  calls; usage-based: the RPM check and increment; over the limit it raises
  ``RateLimitError``, which here means the request falls back to the cloud, as a
  Router ``fallbacks`` entry would send it);
- the strategy's own accounting callbacks, driven by what happened to the request
  on our bus: ``LeastBusyLoggingHandler.log_pre_api_call`` when it is sent and
  ``log_success_event``/``log_failure_event`` when it ends;
  ``LowestTPMLoggingHandler_v2.log_success_event`` with the answer's total tokens.

What does not run: ``Router.completion`` and LiteLLM's HTTP clients. The request
travels over MQTT to the chosen node through the gateway orchestrator (or, in the
discrete-event model, to the modelled node), so that every method shares the same
nodes, the same attempt rule and the same cloud and ledger.

Time. usage-based-routing-v2 counts per UTC minute (``get_utc_datetime``). The
study runs on simulated time (compressed in the system run, virtual in the model),
so :class:`LiteLLMRouter` points that module's clock at the study's clock; that is
the one place LiteLLM is adjusted, and it keeps its per-minute windows minutes of
simulated time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from edge_node.profiles import get_profile

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import

try:
    from litellm.exceptions import RateLimitError
    from litellm.router import Router
    from litellm.router_strategy import lowest_tpm_rpm_v2
    from litellm.types.router import RouterRateLimitError

    HAVE_LITELLM = True
except ImportError:  # pragma: no cover - the message says what to install
    HAVE_LITELLM = False

Strategy = Literal["least-busy", "usage-based-routing-v2"]
NAMES: dict[str, Strategy] = {
    "litellm_least_busy": "least-busy",
    "litellm_usage_based": "usage-based-routing-v2",
}
GROUP = "edge"
MEAN_PROMPT_TOKENS, MEAN_COMPLETION_TOKENS = 75.0, 158.5  # the trace's means
EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
_SENT: ContextVar[Held | None] = ContextVar("litellm_router_sent", default=None)


class LiteLLMMissing(RuntimeError):
    """litellm is not installed."""


def available() -> bool:
    return HAVE_LITELLM


def require() -> None:
    if not HAVE_LITELLM:
        raise LiteLLMMissing(
            "litellm is not installed: `pip install -e '.[dev]'` (pins litellm) to run the "
            "litellm_least_busy and litellm_usage_based policies"
        )


def limits(profile_name: str) -> tuple[int, int]:
    """(rpm, tpm) of a node from its profile: what it sustains of the trace's mix.

    rpm = aggregate decode tokens/s x 60 / the trace's mean completion tokens (158.5);
    tpm = rpm x the mean prompt + completion tokens (LiteLLM counts total tokens).
    """
    profile = get_profile(profile_name)
    aggregate = profile.decode_tps.value * min(
        profile.aggregate_speedup.value, profile.concurrency.value
    )
    rpm = max(1, int(aggregate * 60 / MEAN_COMPLETION_TOKENS))
    return rpm, int(rpm * (MEAN_PROMPT_TOKENS + MEAN_COMPLETION_TOKENS))


@dataclass(frozen=True, slots=True)
class Pick:
    """The node LiteLLM chose (what the orchestrator reads: ``node_id``, ``model_ids``)."""

    node_id: str
    model_ids: tuple[str, ...] = ()


@dataclass(slots=True)
class Held:
    """One request sent to a node; ``outcome`` is set before it is released."""

    node_id: str
    tokens: int
    outcome: int | None = None  # total tokens on success, -1 on failure
    kwargs: dict[str, Any] = field(default_factory=dict)


class LiteLLMRouter:
    """The orchestrator's router protocol, answered by ``litellm.Router``."""

    policy_name: str
    uses_outcomes: ClassVar[bool] = True

    def __init__(
        self,
        name: str,
        nodes: Sequence[tuple[str, str]],
        *,
        clock: Callable[[], float],
    ) -> None:
        """``name`` from :data:`NAMES`; ``nodes`` (node id, profile); ``clock`` in s."""
        require()
        self.policy_name = name
        self.strategy = NAMES[name]
        self.clock = clock
        lowest_tpm_rpm_v2.get_utc_datetime = self._now  # type: ignore[attr-defined]
        model_list: list[dict[str, Any]] = []
        for node_id, profile in nodes:
            rpm, tpm = limits(profile)
            model_list.append(
                {
                    "model_name": GROUP,
                    "litellm_params": {
                        "model": f"openai/{node_id}",
                        "api_base": "http://edge.invalid/v1",
                        "api_key": "none",
                        "rpm": rpm,
                        "tpm": tpm,
                    },
                    "model_info": {"id": node_id},
                }
            )
        self.router = Router(model_list=model_list, routing_strategy=self.strategy)
        self._deployments = {d["model_info"]["id"]: d for d in model_list}
        self.stats = {"picked": 0, "no_deployment": 0, "rate_limited": 0, "outcomes": 0}

    def _now(self) -> dt.datetime:
        return EPOCH + dt.timedelta(seconds=self.clock())

    # --- the orchestrator's Router protocol ----------------------------------------------

    def order(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[Pick]:
        del max_tokens, domain
        messages = [{"role": "user", "content": " ".join(["word"] * max(1, prompt_tokens))}]
        try:
            deployment = self.router.get_available_deployment(model=GROUP, messages=messages)
        except (RouterRateLimitError, ValueError):
            self.stats["no_deployment"] += 1
            return []
        usage = getattr(self.router, "lowesttpm_logger_v2", None)
        try:
            if usage is not None:  # this router's own logger, not every one in litellm.callbacks
                usage.pre_call_check(deployment)
        except RateLimitError:
            self.stats["rate_limited"] += 1
            return []
        self.stats["picked"] += 1
        return [Pick(deployment["model_info"]["id"])]

    def reserve(self, node_id: str, tokens: int) -> Held:
        kwargs = {
            "litellm_params": {"metadata": {"model_group": GROUP}, "model_info": {"id": node_id}}
        }
        held = Held(node_id, tokens, kwargs=kwargs)
        _SENT.set(held)
        busy = getattr(self.router, "leastbusy_logger", None)
        if busy is not None:
            busy.log_pre_api_call(node_id, [], kwargs)
        return held

    @staticmethod
    def sent() -> Held | None:
        """The request this task (or the task it started) last reserved a node for.

        A context variable, not a map keyed by task: the orchestrator runs the edge call
        in a task of its own (to watch the node's death), which inherits the context
        of the task that reserved. ``None`` once its outcome is known.
        """
        held = _SENT.get()
        return held if held is not None and held.outcome is None else None

    def outcome(self, held: Held, total_tokens: int | None) -> None:
        """What happened on the bus: the answer's total tokens, or ``None`` for a failure."""
        held.outcome = -1 if total_tokens is None else total_tokens
        self.stats["outcomes"] += 1

    def release(self, held: Held) -> None:
        ok = held.outcome is not None and held.outcome >= 0
        busy = getattr(self.router, "leastbusy_logger", None)
        if busy is not None:
            (busy.log_success_event if ok else busy.log_failure_event)(held.kwargs, None, 0, 0)
        usage = getattr(self.router, "lowesttpm_logger_v2", None)
        if usage is not None and ok:
            model = self._deployments[held.node_id]["litellm_params"]["model"]
            logged = {
                "standard_logging_object": {
                    "model_group": GROUP,
                    "model_id": held.node_id,
                    "hidden_params": {"litellm_model_name": model},
                    "total_tokens": held.outcome,
                }
            }
            usage.log_success_event(logged, None, 0, 0)

    def free_slots(self, prompt_tokens: int, max_tokens: int) -> int | None:
        del prompt_tokens, max_tokens
        return None  # LiteLLM knows no slots: never refused before routing

    def watch_death(self, node_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        del node_id
        return contextlib.nullcontext(asyncio.Event())  # LiteLLM does not follow presence

    def model_size(self, node_id: str) -> float:
        del node_id
        return 0.0

    def gap_likely(self, domain: str) -> bool:
        del domain
        return False


__all__ = ["NAMES", "Held", "LiteLLMMissing", "LiteLLMRouter", "Pick", "available", "limits"]
