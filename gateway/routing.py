"""Adapters between the orchestrator and the gateway's parts.

- :class:`PolicyRouter`: the node directory (CMS) and a scheduling policy.
- :class:`CacheAdapter`: the semantic cache keyed by conversation and scope.
- :func:`load_classify`: the sentence encoder and the trained domain classifier.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from broker.waits import within
from gateway.cache import CachedAnswer, SemanticCache, cache_key, scope_key
from gateway.classifier import DomainClassifier, gap_likely
from gateway.encoder import SentenceEncoder
from gateway.nodes import NodeDirectory, NodeView, Reservation
from gateway.orchestrator import Answer, Query
from gateway.policies import HeldRequest, HoldingPolicy, Policy, RequestShape, make_policy

CLASSIFIER = Path(__file__).resolve().parent / "data" / "classifier.npz"
_SIZE = re.compile(r"^\s*([0-9.]+)\s*([KMBT]?)", re.IGNORECASE)
_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


@dataclass(frozen=True, slots=True)
class _Held:
    """A request waiting in :meth:`PolicyRouter.order_when_fit`."""

    shape: RequestShape
    since: float  # time.monotonic() when the hold began
    placed: asyncio.Future[tuple[NodeView, Reservation]]


class PolicyRouter:
    """Candidates from the CMS, ordered by the configured policy.

    A holding policy (``cost_aware``, :class:`gateway.policies.HoldingPolicy`) may have
    a request that fits nowhere wait here (:meth:`order_when_fit`) instead of going to
    the cloud: whenever the directory's views change, the policy's ``place_held``
    says which held requests go to which nodes that fit; each slot is reserved at
    once and handed to the waiting task's :meth:`reserve`. ``policy`` is a name, or a
    configured policy object.
    """

    def __init__(self, directory: NodeDirectory, policy: str | Policy, capability: str) -> None:
        self.directory = directory
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.policy_name = self.policy.name
        self.capability = capability
        self.rng = random.Random()
        self._holding = self.policy if isinstance(self.policy, HoldingPolicy) else None
        self._held: dict[int, _Held] = {}
        self._serial = itertools.count()
        self._handoff: dict[asyncio.Task[Any] | None, Reservation] = {}
        self._scheduled = False
        if self._holding is not None:
            directory.add_listener(self._changed)

    def order(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[NodeView]:
        candidates = self.directory.candidates(self.capability)
        return list(
            self.policy.order(RequestShape(prompt_tokens, max_tokens, domain), candidates, self.rng)
        )

    async def order_when_fit(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[Any]:
        """:meth:`order`, or wait up to the policy's hold for a node that fits ([] after)."""
        shape = RequestShape(prompt_tokens, max_tokens, domain)
        holding = self._holding
        hold = 0.0
        if holding is not None:
            hold = holding.hold_s(shape, self.directory.candidates(self.capability))
        if hold <= 0:
            return self.order(prompt_tokens, max_tokens, domain)
        key = next(self._serial)
        placed: asyncio.Future[tuple[NodeView, Reservation]]
        placed = asyncio.get_running_loop().create_future()
        self._held[key] = _Held(shape, time.monotonic(), placed)
        try:
            with contextlib.suppress(TimeoutError):
                await within(asyncio.shield(placed), hold)
        finally:
            self._held.pop(key, None)
        if not placed.done():
            placed.cancel()
            return []
        view, reservation = placed.result()
        self._handoff[asyncio.current_task()] = reservation
        return [view]

    def _changed(self) -> None:
        if self._held and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._place)

    def _place(self) -> None:
        """Give freed capacity to held requests, as the policy's ``place_held`` says."""
        self._scheduled = False
        if self._holding is None:
            return
        now = time.monotonic()
        waiting = [
            HeldRequest(key, h.shape, now - h.since)
            for key, h in self._held.items()
            if not h.placed.done()
        ]
        if not waiting:
            return
        candidates = self.directory.candidates(self.capability)
        for held, view in self._holding.place_held(waiting, candidates, self.rng):
            reservation = self.directory.reserve(view.node_id, held.shape.tokens)
            self._held[held.key].placed.set_result((view, reservation))

    def reserve(self, node_id: str, tokens: int) -> Any:
        held = self._handoff.pop(asyncio.current_task(), None)  # made when a hold ended
        if held is not None:
            if held.node_id == node_id:
                return held
            self.directory.release(held)
        return self.directory.reserve(node_id, tokens)

    def release(self, reservation: Any) -> None:
        self.directory.release(reservation)

    def free_slots(self, prompt_tokens: int, max_tokens: int) -> int | None:
        return free_slots_among(
            self.directory.candidates(self.capability), prompt_tokens, max_tokens
        )

    def watch_death(self, node_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        return self.directory.watch_death(node_id)

    def model_size(self, node_id: str) -> float:
        """Parameters of the node's first model ("135M" -> 1.35e8); 0 when unknown."""
        view = self.directory.view(node_id)
        return 0.0 if view is None else parameter_count(view.parameters)

    def gap_likely(self, domain: str) -> bool:
        expertise = {
            d for view in self.directory.candidates(self.capability) for d in view.expertise
        }
        return gap_likely(domain, expertise)


def parameter_count(label: str | None) -> float:
    match = _SIZE.match(label or "")
    if match is None:
        return 0.0
    return float(match.group(1)) * _SCALE[match.group(2).upper()]


class CacheAdapter:
    """The semantic cache for orchestrator queries (tenant- and sampling-scoped)."""

    def __init__(
        self, encode: Callable[[Sequence[str]], npt.NDArray[np.float32]], *, ttl_s: float
    ) -> None:
        self.cache = SemanticCache(encode, ttl_s=ttl_s)

    @staticmethod
    def _keys(query: Query) -> tuple[str, str] | None:
        scope = scope_key(
            query.tenant, "any", max_tokens=query.max_tokens, temperature=query.temperature or 0.0
        )
        if scope is None:
            return None
        return cache_key([(m.role, m.content) for m in query.messages]), scope

    async def lookup(self, query: Query) -> Answer | None:
        keys = self._keys(query)
        if keys is None:
            return None
        hit = await self.cache.alookup(*keys)
        if hit is None:
            return None
        got = hit.answer
        return Answer(
            text=got.text,
            route="cache",
            model=got.model,
            prompt_tokens=got.prompt_tokens,
            completion_tokens=got.completion_tokens,
            node=got.node,
            escalation=None,
            attempts=[f"cache: similarity {hit.similarity:.3f}"],
        )

    async def store(self, query: Query, answer: Answer) -> None:
        keys = self._keys(query)
        if keys is not None:
            await self.cache.astore(
                *keys,
                CachedAnswer(
                    answer.text,
                    answer.model,
                    answer.prompt_tokens,
                    answer.completion_tokens,
                    answer.node or answer.route,
                ),
            )


def load_classify() -> tuple[
    Callable[[str], tuple[str, float]], Callable[[Sequence[str]], npt.NDArray[np.float32]]
]:
    """The classifier (domain, complexity) and the encoder it shares with the cache."""
    encoder = SentenceEncoder()
    classifier = DomainClassifier.load(CLASSIFIER, encoder=encoder)

    def classify(text: str) -> tuple[str, float]:
        result = classifier.predict([text])[0]
        return result.domain, float(result.complexity)

    return classify, encoder.encode


def free_slots_among(views: Iterable[NodeView], prompt_tokens: int, max_tokens: int) -> int | None:
    """Free slots now on the nodes that could ever take such a request; ``None`` if none could."""
    tokens = prompt_tokens + max_tokens
    able = [v for v in views if v.can_take(tokens, max_tokens)]
    if not able:
        return None
    return sum(v.free_slots for v in able if v.fits(tokens, max_tokens))
