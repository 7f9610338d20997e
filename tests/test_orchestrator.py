"""Routing logic of the orchestrator with fakes (the end-to-end path is in test_gateway)."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any, cast

import pytest

from broker import ChatMessage, ErrorCode, Result, RpcError, Usage
from gateway.orchestrator import Answer, GatewayError, Orchestrator, Query


@dataclass
class FakeNode:
    node_id: str
    size: float


class FakeRouter:
    policy_name = "fake"

    def __init__(self, nodes: list[FakeNode]) -> None:
        self.nodes = nodes
        self.held: list[str] = []

    def order(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[FakeNode]:
        return list(self.nodes)

    def reserve(self, node_id: str, tokens: int) -> str:
        self.held.append(node_id)
        return node_id

    def release(self, reservation: Any) -> None:
        self.held.remove(reservation)

    def free_slots(self, prompt_tokens: int, max_tokens: int) -> int:
        return 1 << 30

    def watch_death(self, node_id: str) -> Any:
        return contextlib.nullcontext(asyncio.Event())

    def model_size(self, node_id: str) -> float:
        return next(n.size for n in self.nodes if n.node_id == node_id)

    def gap_likely(self, domain: str) -> bool:
        return domain != "general"


class FakeRpc:
    """Answers per node: a confidence, or an error code."""

    def __init__(self, behaviour: dict[str, float | ErrorCode]) -> None:
        self.behaviour = behaviour
        self.calls: list[str] = []

    async def call(self, topic: str, request: Any, **_kw: Any) -> Result:
        node = topic.split("/")[2]
        self.calls.append(node)
        got = self.behaviour[node]
        if isinstance(got, ErrorCode):
            raise RpcError(got, f"{node} says {got.value}")
        return Result(
            text=f"from {node}", usage=Usage(5, 3), confidence=got, node=node, model=f"model-{node}"
        )


class FakeBooks:
    def __init__(self, threshold: float | None = None) -> None:
        self.threshold = threshold
        self.rows: list[tuple[Answer | None, ErrorCode | None]] = []

    async def check(self, tenant: str) -> float | None:
        return self.threshold

    async def record(
        self, query: Query, answer: Answer | None, *, policy: str, error: ErrorCode | None = None
    ) -> None:
        self.rows.append((answer, error))


def make(
    nodes: list[FakeNode], behaviour: dict[str, float | ErrorCode], threshold: float | None = None
) -> tuple[Orchestrator, FakeRpc, FakeBooks, FakeRouter]:
    rpc, books, router = FakeRpc(behaviour), FakeBooks(threshold), FakeRouter(nodes)
    orch = Orchestrator(
        rpc=cast(Any, rpc),
        router=router,
        books=books,
        classify=lambda _t: ("general", 0.1),
        cloud=None,
    )
    return orch, rpc, books, router


QUERY = Query(messages=(ChatMessage("user", "hello"),), max_tokens=8)


async def test_overloaded_and_dead_nodes_are_skipped_and_nothing_is_asked_twice():
    orch, rpc, books, router = make(
        [FakeNode("a", 1), FakeNode("b", 1), FakeNode("c", 1)],
        {"a": ErrorCode.OVERLOADED, "b": ErrorCode.EXPIRED, "c": 0.9},
    )
    answer = await orch.answer(QUERY)
    assert answer.node == "c"
    assert rpc.calls == ["a", "b", "c"]
    assert answer.attempts == ["a: overloaded", "b: expired"]
    assert router.held == []  # every reservation released
    assert books.rows[-1][0] is answer


async def test_low_confidence_cascades_to_a_bigger_edge_model_first():
    orch, rpc, _books, _router = make(
        [FakeNode("small", 1.35e8), FakeNode("big", 1.1e9)],
        {"small": 0.3, "big": 0.8},
        threshold=0.5,
    )
    answer = await orch.answer(QUERY)
    assert answer.node == "big"
    assert answer.escalation == "low confidence: bigger edge model"
    assert rpc.calls == ["small", "big"]


async def test_no_cloud_keeps_the_best_edge_answer_and_otherwise_fails_clearly():
    orch, _rpc, _books, _router = make([FakeNode("small", 1.0)], {"small": 0.3}, threshold=0.5)
    private = Query(messages=QUERY.messages, max_tokens=8, no_cloud=True)
    kept = await orch.answer(private)
    assert kept.route == "edge"
    assert kept.escalation is not None
    assert "no-cloud" in kept.escalation
    orch, _rpc, books, _router = make([FakeNode("a", 1.0)], {"a": ErrorCode.OVERLOADED})
    with pytest.raises(GatewayError) as info:
        await orch.answer(private)
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "no-cloud" in info.value.message
    assert books.rows[-1] == (None, ErrorCode.UNAVAILABLE)


async def test_a_bad_request_is_not_retried_elsewhere():
    orch, rpc, _books, _router = make(
        [FakeNode("a", 1), FakeNode("b", 1)], {"a": ErrorCode.BAD_REQUEST, "b": 0.9}
    )
    with pytest.raises(GatewayError) as info:
        await orch.answer(QUERY)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert rpc.calls == ["a"]
