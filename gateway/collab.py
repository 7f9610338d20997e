"""Computation cooperation: run a :class:`~gateway.planner.Plan` over edge agents.

Each subtask is one ordinary routed request: the orchestrator's own path
(scheduling policy, reservations, ``overloaded`` / dead node → next node, cloud
fallback, ledger), over the nodes whose CMS birth lists the step's expertise
(:class:`ScopedRouter`). What this module adds:

- **sequential** plans: steps in order, each prompt carrying the earlier steps'
  outputs; a failed step is noted and the pipeline goes on with what it has;
- **parallel** plans: every step at once, each within ``subtask_deadline_s``;
  with at least ``quorum`` answers an SLM aggregates them, with fewer the answer
  is what came, marked degraded;
- **never hangs**: every step runs under its deadline; an attempt gets at most
  half of it, so a node that dies mid-answer leaves time to retry elsewhere;
- **progress in the CMS**, retained with an expiry: ``slm/inference/{task}/plan``,
  ``.../status``, ``.../assigned_device`` and ``.../phase_{n}_output``.

The tenant's quota is checked once before anything runs (``QuotaExceeded``); a
limit reached while the plan runs degrades the remaining steps.

``edge_only`` steps (answers from data held on an agent) never go to the cloud:
the cloud has no camera readings to report, so such a step degrades instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from broker import BusError, ChatMessage, Cms
from broker.topics import cms_key
from gateway.nodes import NodeView
from gateway.orchestrator import Answer, GatewayError, Orchestrator, Query
from gateway.planner import Plan, PlanError, Subtask, make_plan
from gateway.policies import RequestShape
from gateway.routing import PolicyRouter, free_slots_among
from gateway.tenants import QuotaExceeded

logger = logging.getLogger(__name__)
GENERAL = "general"
MAX_CMS_TEXT = 2000


class ScopedRouter:
    """The gateway's router narrowed to the online nodes that list one expertise.

    With ``strict`` off, a step falls back to the whole pool when no node lists
    the expertise (an aggregation can be written by any SLM).
    """

    def __init__(self, base: PolicyRouter, expertise: str | None, *, strict: bool) -> None:
        self.base = base
        self.expertise = expertise
        self.strict = strict
        self.policy_name = base.policy_name

    def candidates(self) -> list[NodeView]:
        pool = self.base.directory.candidates(self.base.capability)
        if self.expertise is None:
            return pool
        scoped = [v for v in pool if self.expertise in v.expertise]
        return scoped if scoped or self.strict else pool

    def order(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[NodeView]:
        shape = RequestShape(prompt_tokens, max_tokens, domain)
        return list(self.base.policy.order(shape, self.candidates(), self.base.rng))

    def reserve(self, node_id: str, tokens: int) -> Any:
        return self.base.reserve(node_id, tokens)

    def release(self, reservation: Any) -> None:
        self.base.release(reservation)

    def free_slots(self, prompt_tokens: int, max_tokens: int) -> int | None:
        return free_slots_among(self.candidates(), prompt_tokens, max_tokens)

    def watch_death(self, node_id: str) -> contextlib.AbstractContextManager[asyncio.Event]:
        return self.base.watch_death(node_id)

    def model_size(self, node_id: str) -> float:
        return self.base.model_size(node_id)

    async def order_when_fit(self, prompt_tokens: int, max_tokens: int, domain: str) -> list[Any]:
        # A subtask has its own deadline and a step's experts are few: no hold at the
        # gateway (the base router's hold would place it on any node, out of scope).
        return self.order(prompt_tokens, max_tokens, domain)

    def gap_likely(self, domain: str) -> bool:
        return self.base.gap_likely(domain)


StepStatus = Literal["done", "degraded"]


@dataclass(slots=True)
class StepOutcome:
    """What one subtask produced, and where."""

    name: str
    status: StepStatus
    text: str
    node: str | None = None
    route: str | None = None  # edge, cloud, cache; None when nothing answered
    latency_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: list[str] = field(default_factory=list)
    note: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def cms_value(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "status": self.status,
            "node": self.node,
            "route": self.route,
            "text": self.text[:MAX_CMS_TEXT],
            "latency_ms": round(self.latency_ms, 1),
            "tokens": self.prompt_tokens + self.completion_tokens,
            "note": self.note,
        }


@dataclass(slots=True)
class CollabOutcome:
    """A finished plan: the answer, every step, and what degraded."""

    plan: Plan
    steps: list[StepOutcome]
    answer: str
    status: Literal["done", "degraded"]
    notes: list[str] = field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(s.prompt_tokens for s in self.steps)

    @property
    def completion_tokens(self) -> int:
        return sum(s.completion_tokens for s in self.steps)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def summary(self) -> dict[str, Any]:
        """What a planned answer says about itself (HTTP ``edgecollab``, MQTT result meta)."""
        return {
            "route": "collab",
            "task": self.plan.task_id,
            "template": self.plan.template,
            "mode": self.plan.mode,
            "status": self.status,
            "steps": [
                {"step": s.name, "node": s.node, "route": s.route, "status": s.status}
                for s in self.steps
            ],
            "notes": self.notes,
            "latency_ms": round(self.latency_ms, 1),
        }

    @property
    def cloud_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.route == "cloud"]


class CollabRunner:
    """Runs plans with a gateway's orchestrator (its RPC client, router, ledger, cloud)."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        cms: Cms | None = None,
        expiry_s: float = 3600.0,
        temperature: float | None = 0.2,
    ) -> None:
        if not isinstance(orchestrator.router, PolicyRouter):
            raise TypeError("computation cooperation needs the gateway's PolicyRouter")
        self.orchestrator = orchestrator
        self.router: PolicyRouter = orchestrator.router
        self.cms = cms if cms is not None else Cms(orchestrator.rpc.bus)
        self.expiry_s = expiry_s
        self.temperature = temperature

    async def run(
        self,
        plan: Plan,
        *,
        tenant: str = "default",
        no_cloud: bool = False,
        trace: str | None = None,
    ) -> CollabOutcome:
        started = time.perf_counter()
        await self.orchestrator.books.check(tenant)  # over quota: QuotaExceeded, nothing runs
        await self._put(plan, "plan", plan.to_value())
        await self._put(plan, "status", "running")
        ctx = _Context(tenant=tenant, no_cloud=no_cloud, trace=trace or plan.task_id)
        if plan.mode == "parallel":
            outcome = await self._parallel(plan, ctx)
        else:
            outcome = await self._sequential(plan, ctx)
        outcome.latency_ms = (time.perf_counter() - started) * 1e3
        await self._put(plan, "status", outcome.status)
        return outcome

    # --- modes --------------------------------------------------------------------

    async def _sequential(self, plan: Plan, ctx: _Context) -> CollabOutcome:
        steps: list[StepOutcome] = []
        for index, step in enumerate(plan.steps, start=1):
            await self._put(plan, "status", f"phase_{index}")
            steps.append(await self._step(plan, index, step, _previous(steps), ctx))
        notes = [f"{s.name}: {s.note}" for s in steps if s.status == "degraded"]
        last = steps[-1]
        answer = last.text if last.status == "done" else _joined(steps)
        return CollabOutcome(plan, steps, answer, "degraded" if notes else "done", notes)

    async def _parallel(self, plan: Plan, ctx: _Context) -> CollabOutcome:
        await self._put(plan, "status", "fan_out")
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._step(plan, i, step, "", ctx), name=f"subtask:{step.name}")
                for i, step in enumerate(plan.steps, start=1)
            ]
        steps = [t.result() for t in tasks]
        notes = [f"{s.name}: {s.note}" for s in steps if s.status == "degraded"]
        answered = [s for s in steps if s.status == "done"]
        if len(answered) < plan.quorum:
            notes.append(f"quorum not met: {len(answered)} of {plan.quorum} needed answers")
            return CollabOutcome(plan, steps, _joined(steps), "degraded", notes)
        if plan.aggregate is None:
            status: Literal["done", "degraded"] = "degraded" if notes else "done"
            return CollabOutcome(plan, steps, _joined(answered), status, notes)
        await self._put(plan, "status", "aggregate")
        index = len(plan.steps) + 1
        final = await self._step(plan, index, plan.aggregate, _previous(answered), ctx)
        steps.append(final)
        if final.status == "degraded":
            notes.append(f"{final.name}: {final.note}; the assessments are given as they came")
            return CollabOutcome(plan, steps, _joined(answered), "degraded", notes)
        return CollabOutcome(plan, steps, final.text, "degraded" if notes else "done", notes)

    # --- one step -----------------------------------------------------------------

    async def _step(
        self, plan: Plan, index: int, step: Subtask, previous: str, ctx: _Context
    ) -> StepOutcome:
        o = self.orchestrator
        scoped = Orchestrator(
            rpc=o.rpc,
            router=ScopedRouter(self.router, step.expertise or GENERAL, strict=step.edge_only),
            books=o.books,
            classify=o.classify,
            cloud=o.cloud,
            cache=None,
            confidence_threshold=o.confidence_threshold,
            # Half the step's budget per attempt: a node that dies mid-answer leaves
            # time for one more node before the step's deadline.
            edge_timeout_s=min(o.edge_timeout_s, plan.subtask_deadline_s / 2),
            max_edge_attempts=o.max_edge_attempts,
        )
        query = Query(
            messages=(ChatMessage("user", step.prompt(plan.query, previous)),),
            max_tokens=step.max_tokens,
            temperature=self.temperature,
            tenant=ctx.tenant,
            trace=f"{ctx.trace}-{step.name}",
            no_cloud=ctx.no_cloud or step.edge_only,
            domain=step.domain or GENERAL,
        )
        started = time.perf_counter()
        try:
            async with asyncio.timeout(plan.subtask_deadline_s):
                answer = await scoped.answer(query)
        except TimeoutError:
            out = _degraded(step, f"no answer within {plan.subtask_deadline_s:g} s", started)
        except GatewayError as exc:
            out = _degraded(step, exc.message, started)
        except QuotaExceeded as exc:  # reached while the plan ran: the rest degrades
            out = _degraded(step, str(exc), started)
        else:
            out = _done(step, answer)
        ctx.assigned[step.name] = out.node
        await self._put(plan, "assigned_device", dict(ctx.assigned))
        await self._put(plan, f"phase_{index}_output", out.cms_value())
        return out

    async def _put(self, plan: Plan, entry: str, value: Any) -> None:
        key = cms_key("inference", plan.task_id, entry)
        try:
            await self.cms.put(key, value, expiry_s=self.expiry_s)
        except BusError as exc:  # progress is informative; the plan goes on without it
            logger.warning("could not write %s: %s", key, exc)


async def run_planned(
    orchestrator: Orchestrator, query: Query, template: str, **plan_options: Any
) -> CollabOutcome:
    """Decompose ``query`` (``template`` ``auto``: chosen by rule) and run the plan.

    The query's ``max_tokens`` caps every subtask's.
    """
    plan_options.setdefault("max_tokens", query.max_tokens)
    text = next((m.content for m in reversed(query.messages) if m.role == "user"), "")
    if not text:
        raise PlanError("a planned query needs a user message")
    domain = query.domain or (await asyncio.to_thread(orchestrator.classify, text))[0]
    plan = make_plan(
        text, domain, template=None if template == "auto" else template, **plan_options
    )
    runner = CollabRunner(orchestrator)
    return await runner.run(
        plan, tenant=query.tenant, no_cloud=query.no_cloud, trace=query.trace or plan.task_id
    )


@dataclass(slots=True)
class _Context:
    tenant: str
    no_cloud: bool
    trace: str
    assigned: dict[str, str | None] = field(default_factory=dict)  # step -> node


def _done(step: Subtask, answer: Answer) -> StepOutcome:
    return StepOutcome(
        name=step.name,
        status="done",
        text=answer.text.strip(),
        node=answer.node,
        route=answer.route,
        latency_ms=answer.latency_ms,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
        attempts=list(answer.attempts),
        note=answer.escalation,
        meta=dict(answer.meta),
    )


def _degraded(step: Subtask, why: str, started: float) -> StepOutcome:
    where = f" (agents with expertise {step.expertise})" if step.expertise else ""
    return StepOutcome(
        name=step.name,
        status="degraded",
        text="",
        latency_ms=(time.perf_counter() - started) * 1e3,
        note=f"{why}{where}",
    )


def _previous(steps: list[StepOutcome]) -> str:
    lines = []
    for s in steps:
        said = s.text if s.status == "done" else f"[no answer: {s.note}]"
        lines.append(f"- {s.name} ({s.node or 'nobody'}): {said}")
    return "\n".join(lines)


def _joined(steps: list[StepOutcome]) -> str:
    return "\n".join(
        f"{s.name}: {s.text}" if s.status == "done" else f"{s.name}: [no answer: {s.note}]"
        for s in steps
    )


__all__ = ["CollabOutcome", "CollabRunner", "ScopedRouter", "StepOutcome", "run_planned"]
