"""Route one query: cache, edge nodes in the policy's order, cascade, cloud, ledger.

For each query the gateway

1. checks the tenant's quota (over the limit: :class:`QuotaExceeded`, HTTP 429);
2. classifies it (domain, complexity) with the sentence encoder;
3. answers from the semantic cache when a near-duplicate was answered before;
4. tries edge nodes in the order the scheduling policy gives, reserving the
   request's tokens on each until it answers; ``overloaded``, ``expired``, a
   dead node or a lost connection moves on to the next node (an edge node never
   starts an expired request, so a retry cannot answer twice);
5. escalates when the edge answer's confidence is below the tenant's threshold:
   first to an edge node serving a bigger model, then to the cloud, and records
   why; a ``no-cloud`` query never leaves the edge (best edge answer or an error);
6. records every request in the ledger (route, node, policy, tokens, latency,
   cost, what the cloud would have cost, escalation reason).

Streaming requests are routed the same way, except that an answer already
streamed to the user is not re-routed for low confidence (its text is out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from broker import (
    Chat,
    ChatMessage,
    Chunk,
    ErrorCode,
    NotConnected,
    Result,
    RpcClient,
    RpcError,
)
from broker.topics import node_request_topic
from gateway.cloud import CloudClient, CloudError

logger = logging.getLogger(__name__)
RETRY_ELSEWHERE = {
    ErrorCode.OVERLOADED,
    ErrorCode.EXPIRED,
    ErrorCode.UNAVAILABLE,
    ErrorCode.INTERNAL,
}


class GatewayError(Exception):
    """A query could not be answered; ``code`` says why (maps to an HTTP status)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class NodeDied(Exception):
    """The node an attempt was sent to went offline before answering."""


@dataclass(frozen=True, slots=True)
class Query:
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 256
    temperature: float | None = None
    stream: bool = False
    tenant: str = "default"
    trace: str | None = None
    no_cloud: bool = False
    domain: str | None = None  # set by the caller (a planned subtask) or by the classifier


@dataclass(slots=True)
class Answer:
    text: str
    route: Route
    model: str
    prompt_tokens: int
    completion_tokens: int
    node: str | None = None
    confidence: float | None = None
    finish_reason: str | None = None
    domain: str | None = None
    escalation: str | None = None
    knowledge_gap: bool = False  # no online node lists the query's domain as expertise
    attempts: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)  # the node's result meta (knowledge...)


class Candidate(Protocol):
    node_id: str

    @property
    def model_ids(self) -> Sequence[str]: ...


class Router(Protocol):
    """What the orchestrator needs from scheduling (directory + policy)."""

    policy_name: str

    def order(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[Any]: ...

    def reserve(self, node_id: str, tokens: int) -> Any: ...

    def release(self, reservation: Any) -> None: ...

    def watch_death(self, node_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        """An event set when the node dies (its will says offline) while inside."""
        ...

    def model_size(self, node_id: str) -> float: ...

    def free_slots(self, prompt_tokens: int, max_tokens: int) -> int | None:
        """Slots free now on nodes that would admit such a request; ``None``: no node ever would."""
        ...

    def gap_likely(self, domain: str) -> bool:
        """No online node lists ``domain`` among its expertise."""
        ...


class Books(Protocol):
    """What the orchestrator needs from the ledger and tenants."""

    async def check(self, tenant: str) -> float | None:
        """Raise when over quota; return the tenant's confidence threshold, if any."""

    async def record(
        self, query: Query, answer: Answer | None, *, policy: str, error: ErrorCode | None = None
    ) -> None: ...


Classify = Callable[[str], tuple[str, float]]  # text -> (domain, complexity in [0, 1])
Route = Literal["edge", "cloud", "cache"]


class Cache(Protocol):
    async def lookup(self, query: Query) -> Answer | None: ...

    async def store(self, query: Query, answer: Answer) -> None: ...


def estimate_tokens(messages: Sequence[ChatMessage]) -> int:
    """Prompt tokens before a node counts them exactly: ~4 characters per token + framing."""
    return sum(len(m.content) // 4 + 4 for m in messages) + 8


class Orchestrator:
    def __init__(
        self,
        *,
        rpc: RpcClient,
        router: Router,
        books: Books,
        classify: Classify,
        cloud: CloudClient | None,
        cache: Cache | None = None,
        confidence_threshold: float = 0.0,
        edge_timeout_s: float = 60.0,
        max_edge_attempts: int = 4,
    ) -> None:
        self.rpc = rpc
        self.router = router
        self.books = books
        self.classify = classify
        self.cloud = cloud
        self.cache = cache
        self.confidence_threshold = confidence_threshold
        self.edge_timeout_s = edge_timeout_s
        self.max_edge_attempts = max_edge_attempts
        self.rng = random.Random()
        self._waiting = 0  # admitted queries not yet holding a node reservation

    # --- non-streaming --------------------------------------------------------------

    async def answer(self, query: Query) -> Answer:
        started = time.perf_counter()
        threshold = await self.books.check(query.tenant)
        if threshold is None:
            threshold = self.confidence_threshold
        free = self.router.free_slots(estimate_tokens(query.messages), query.max_tokens)
        if (self.cloud is None or query.no_cloud) and free is not None and self._waiting >= free:
            # Refused at once, before classifying: nothing at the edge could take it
            # (queries admitted but not yet routed count against the free slots).
            await self.books.record(
                query, None, policy=self.router.policy_name, error=ErrorCode.OVERLOADED
            )
            raise GatewayError(
                ErrorCode.OVERLOADED, "every edge node is busy and there is no cloud; retry later"
            )
        self._waiting += 1
        try:
            domain = query.domain or (await asyncio.to_thread(self.classify, _last_user(query)))[0]
            query = replace(query, domain=domain)  # nodes learn the domain from the request
            hit = None if self.cache is None else await self.cache.lookup(query)
        finally:
            self._waiting -= 1  # from here on its node reservation counts instead
        if hit is not None:
            hit.domain, hit.latency_ms = domain, (time.perf_counter() - started) * 1e3
            await self.books.record(query, hit, policy=self.router.policy_name)
            return hit
        try:
            answer = await self._route(query, domain, threshold)
        except GatewayError as exc:
            await self.books.record(query, None, policy=self.router.policy_name, error=exc.code)
            raise
        answer.domain = domain
        answer.knowledge_gap = self.router.gap_likely(domain)
        answer.latency_ms = (time.perf_counter() - started) * 1e3
        await self.books.record(query, answer, policy=self.router.policy_name)
        if self.cache is not None and answer.route != "cache" and answer.escalation is None:
            await self.cache.store(query, answer)
        return answer

    async def _route(self, query: Query, domain: str, threshold: float) -> Answer:
        attempts: list[str] = []
        best: Answer | None = None
        prompt_tokens = estimate_tokens(query.messages)
        hold = getattr(self.router, "order_when_fit", None)  # a router that may hold a request
        order = (
            await hold(prompt_tokens, query.max_tokens, domain)
            if hold is not None
            else self.router.order(prompt_tokens, query.max_tokens, domain)
        )
        for node in order[: self.max_edge_attempts]:
            answer = await self._try_node(node.node_id, query, prompt_tokens, attempts)
            if answer is None:
                continue
            if answer.confidence is None or answer.confidence >= threshold:
                answer.attempts = attempts
                return answer
            attempts.append(f"{node.node_id}: confidence {answer.confidence:.2f} < {threshold}")
            if best is None or (answer.confidence or 0) > (best.confidence or 0):
                best = answer
            bigger = self._bigger_than(node.node_id, order)
            if bigger is not None:
                again = await self._try_node(bigger, query, prompt_tokens, attempts)
                if again is not None and (again.confidence or 0) >= threshold:
                    again.escalation = "low confidence: bigger edge model"
                    again.attempts = attempts
                    return again
            break
        reason = (
            "low confidence"
            if best is not None
            else "edge saturated"
            if attempts
            else "no edge node serves this"
        )
        if query.no_cloud:
            if best is not None:
                best.escalation = f"{reason}; no-cloud: best edge answer kept"
                best.attempts = attempts
                return best
            raise GatewayError(
                ErrorCode.UNAVAILABLE,
                f"no edge node could answer ({reason}) and the request is "
                f"marked no-cloud; tried: {attempts or 'none'}",
            )
        answer = await self._cloud(query, attempts)
        answer.escalation = reason
        return answer

    def _bigger_than(self, node_id: str, order: Sequence[Any]) -> str | None:
        size = self.router.model_size(node_id)
        bigger = [n.node_id for n in order if self.router.model_size(n.node_id) > size]
        return bigger[0] if bigger else None

    async def _try_node(
        self, node_id: str, query: Query, prompt_tokens: int, attempts: list[str]
    ) -> Answer | None:
        reservation = self.router.reserve(node_id, prompt_tokens + query.max_tokens)
        try:
            result = await self._unless_dead(
                node_id,
                self.rpc.call(
                    node_request_topic(node_id),
                    _chat(query, stream=False),
                    timeout=self.edge_timeout_s,
                    user=_user_props(query),
                ),
            )
        except NodeDied:
            # Its correlation id is forgotten with the call: a late reply is dropped.
            attempts.append(f"{node_id}: died mid-request")
            return None
        except RpcError as exc:
            attempts.append(f"{node_id}: {exc.code.value}")
            if exc.code in RETRY_ELSEWHERE:
                return None
            raise GatewayError(exc.code, exc.message) from exc
        except NotConnected as exc:
            attempts.append(f"{node_id}: {exc}")
            return None
        finally:
            self.router.release(reservation)
        return _edge_answer(result)

    async def _unless_dead(self, node_id: str, call: Coroutine[Any, Any, Result]) -> Result:
        """Await ``call`` unless the node's will says offline first (then :class:`NodeDied`)."""
        with self.router.watch_death(node_id) as died:
            attempt = asyncio.create_task(call, name=f"edge-attempt:{node_id}")
            watch = asyncio.create_task(died.wait(), name=f"death-watch:{node_id}")
            try:
                await asyncio.wait({attempt, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                if not attempt.done():
                    attempt.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await attempt
        if attempt.cancelled():
            raise NodeDied(node_id)
        return attempt.result()

    async def _cloud(self, query: Query, attempts: list[str]) -> Answer:
        if self.cloud is None:
            raise GatewayError(
                ErrorCode.UNAVAILABLE,
                f"the edge cannot serve this and no cloud is configured; "
                f"tried: {attempts or 'none'}",
            )
        try:
            got = await self.cloud.chat(
                query.messages,
                max_tokens=query.max_tokens,
                temperature=query.temperature,
                deadline_s=self.edge_timeout_s,
            )
        except CloudError as exc:
            raise GatewayError(
                exc.code, f"{exc.message}; edge attempts: {attempts or 'none'}"
            ) from exc
        return Answer(
            text=got.text,
            route="cloud",
            model=got.model,
            prompt_tokens=got.prompt_tokens,
            completion_tokens=got.completion_tokens,
            finish_reason=got.finish_reason,
            attempts=attempts,
        )

    # --- streaming ------------------------------------------------------------------

    async def stream(self, query: Query) -> AsyncIterator[str | Answer]:
        """Text pieces, then the final :class:`Answer` (recorded in the ledger)."""
        started = time.perf_counter()
        await self.books.check(query.tenant)
        domain = query.domain or (await asyncio.to_thread(self.classify, _last_user(query)))[0]
        query = replace(query, domain=domain)
        attempts: list[str] = []
        prompt_tokens = estimate_tokens(query.messages)
        answer: Answer | None = None
        for node in self.router.order(prompt_tokens, query.max_tokens, domain)[
            : self.max_edge_attempts
        ]:
            reservation = self.router.reserve(node.node_id, prompt_tokens + query.max_tokens)
            sent = False
            try:
                async for reply in self.rpc.stream(
                    node_request_topic(node.node_id),
                    _chat(query, stream=True),
                    timeout=self.edge_timeout_s,
                    user=_user_props(query),
                ):
                    if isinstance(reply, Chunk):
                        sent = True
                        yield reply.text
                    else:
                        answer = _edge_answer(reply)
            except RpcError as exc:
                attempts.append(f"{node.node_id}: {exc.code.value}")
                if sent or exc.code not in RETRY_ELSEWHERE:
                    await self.books.record(
                        query, None, policy=self.router.policy_name, error=exc.code
                    )
                    raise GatewayError(exc.code, exc.message) from exc
            except NotConnected as exc:
                attempts.append(f"{node.node_id}: {exc}")
            finally:
                self.router.release(reservation)
            if answer is not None:
                break
        if answer is None:
            out: list[Answer] = []
            async for piece in self._stream_cloud(query, attempts, prompt_tokens, out):
                yield piece
            answer = out[0]
        answer.domain = domain
        answer.attempts = attempts
        answer.latency_ms = (time.perf_counter() - started) * 1e3
        await self.books.record(query, answer, policy=self.router.policy_name)
        yield answer

    async def _stream_cloud(
        self, query: Query, attempts: list[str], prompt_tokens: int, out: list[Answer]
    ) -> AsyncIterator[str]:
        """Stream from the cloud; the final answer is appended to ``out``."""
        if query.no_cloud or self.cloud is None:
            error = GatewayError(
                ErrorCode.UNAVAILABLE, f"no edge node could answer; tried: {attempts or 'none'}"
            )
            await self.books.record(query, None, policy=self.router.policy_name, error=error.code)
            raise error
        pieces: list[str] = []
        try:
            async for piece in self.cloud.stream(
                query.messages, max_tokens=query.max_tokens, temperature=query.temperature
            ):
                pieces.append(piece)
                yield piece
        except CloudError as exc:
            raise GatewayError(exc.code, exc.message) from exc
        # A stream carries no usage; each streamed piece is counted as one token.
        out.append(
            Answer(
                text="".join(pieces),
                route="cloud",
                model=self.cloud.settings.model,
                prompt_tokens=prompt_tokens,
                completion_tokens=len(pieces),
                escalation="edge saturated" if attempts else "no edge node",
            )
        )


def _last_user(query: Query) -> str:
    users = [m.content for m in query.messages if m.role == "user"]
    return users[-1] if users else query.messages[-1].content


def _chat(query: Query, *, stream: bool) -> Chat:
    return Chat(
        messages=query.messages,
        max_tokens=query.max_tokens,
        temperature=query.temperature,
        stream=stream,
        domain=query.domain,
    )


def _user_props(query: Query) -> dict[str, str]:
    props = {"tenant": query.tenant}
    if query.trace:
        props["trace"] = query.trace
    if query.no_cloud:
        props["no-cloud"] = "true"
    return props


def _edge_answer(result: Result) -> Answer:
    return Answer(
        text=result.text,
        route="edge",
        model=result.model or "edge",
        prompt_tokens=result.usage.prompt_tokens,
        completion_tokens=result.usage.completion_tokens,
        node=result.node,
        confidence=result.confidence,
        finish_reason=result.finish_reason,
        meta=dict(result.meta),
    )
