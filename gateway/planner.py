"""Decomposing a query into subtasks: rule-based templates per scenario type.

A :class:`Plan` is what computation cooperation runs (:mod:`gateway.collab`):
either a *sequential* pipeline (each step's output feeds the next step's prompt)
or a *parallel* fan-out (every step at once, each with a deadline, a quorum of
answers, then one aggregation step by an SLM).

Steps target agents by what they advertise in their CMS birth: a step names an
``expertise`` (``vitals``, ``camera``...) and the runner asks only online nodes
listing it. A step whose answer must come from data held on the edge (a camera's
own readings) is ``edge_only``: if no such agent answers, the plan degrades with
a note rather than asking the cloud to invent the readings.

Templates are chosen by rules over the query text and the classifier's domain
(:func:`make_plan`); a caller can name one. An SLM-written plan is not attempted:
a 135M model does not produce reliable plans, and a wrong plan fails silently.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from broker.topics import validate_cms_level, validate_id

Mode = Literal["sequential", "parallel", "single"]
PREVIOUS = "{previous}"
QUERY = "{query}"


class PlanError(ValueError):
    """A plan or template is malformed, or names an unknown template."""


@dataclass(frozen=True, slots=True)
class Subtask:
    """One step: an instruction for the agents advertising ``expertise``.

    ``instruction`` may hold ``{query}`` (the user's question) and, in a pipeline,
    ``{previous}`` (the previous steps' outputs).
    """

    name: str
    instruction: str
    expertise: str | None = None  # None: any node of the pool
    domain: str | None = None  # the domain the subtask's request carries
    max_tokens: int = 96
    edge_only: bool = False  # the answer needs data that lives on the edge

    def __post_init__(self) -> None:
        validate_id(self.name, "subtask name")
        if self.expertise is not None:
            validate_id(self.expertise, "subtask expertise")
        if self.domain is not None:
            validate_id(self.domain, "subtask domain")
        if not self.instruction.strip():
            raise PlanError(f"subtask {self.name}: empty instruction")
        if not 1 <= self.max_tokens <= 4096:
            raise PlanError(f"subtask {self.name}: max_tokens must be 1..4096")

    def prompt(self, query: str, previous: str = "") -> str:
        return self.instruction.replace(QUERY, query).replace(PREVIOUS, previous or "(none)")


@dataclass(frozen=True, slots=True)
class Plan:
    """A decomposed query; ``task_id`` names its CMS entries (``slm/inference/{task_id}/...``)."""

    task_id: str
    query: str
    template: str
    mode: Mode
    steps: tuple[Subtask, ...]
    quorum: int = 1  # parallel: answers needed before aggregating
    subtask_deadline_s: float = 60.0  # a step's whole budget (retries included)
    aggregate: Subtask | None = None  # parallel: the step that combines the answers

    def __post_init__(self) -> None:
        validate_cms_level(self.task_id)
        if not self.steps:
            raise PlanError("a plan needs at least one step")
        if len({s.name for s in self.steps}) != len(self.steps):
            raise PlanError("step names must be unique within a plan")
        if self.mode == "parallel" and not 1 <= self.quorum <= len(self.steps):
            raise PlanError(f"quorum {self.quorum} must be between 1 and {len(self.steps)}")
        if self.subtask_deadline_s <= 0:
            raise PlanError("subtask_deadline_s must be positive")

    def to_value(self) -> dict[str, Any]:
        """The plan as a JSON-shaped CMS value."""
        return {
            "task_id": self.task_id,
            "query": self.query,
            "template": self.template,
            "mode": self.mode,
            "quorum": self.quorum,
            "subtask_deadline_s": self.subtask_deadline_s,
            "steps": [_step_value(s) for s in self.steps],
            "aggregate": None if self.aggregate is None else _step_value(self.aggregate),
        }


def _step_value(step: Subtask) -> dict[str, Any]:
    return {
        "name": step.name,
        "expertise": step.expertise,
        "domain": step.domain,
        "max_tokens": step.max_tokens,
        "edge_only": step.edge_only,
    }


# --- templates ---------------------------------------------------------------------------

TemplateFn = Callable[[str, str], Plan]  # (query, task_id) -> plan


def health_check(query: str, task_id: str) -> Plan:
    """Sequential: vitals agent, then motion agent, then an assistant (knowledge cooperation)."""
    return Plan(
        task_id=task_id,
        query=query,
        template="health_check",
        mode="sequential",
        steps=(
            Subtask(
                "vitals",
                "The wearer says: {query}\nFrom your recent vitals readings, state in two "
                "sentences what heart rate, SpO2 and breathing show.",
                expertise="vitals",
                domain="health",
                edge_only=True,
            ),
            Subtask(
                "motion",
                "The wearer says: {query}\nEarlier agents reported:\n{previous}\nNow describe "
                "only the wearer's movement (walking, resting, freezing episodes) from your "
                "motion readings, in two sentences.",
                expertise="motion",
                domain="health",
                edge_only=True,
            ),
            Subtask(
                "advice",
                "The wearer says: {query}\nOn-body agents report:\n{previous}\nGive the wearer "
                "short, personal advice: what to do now and when to see a clinician.",
                expertise=None,
                domain="health",
                max_tokens=128,
            ),
        ),
    )


def event_risk(query: str, task_id: str) -> Plan:
    """Parallel: camera, environment monitor and roadside unit, then an SLM aggregates."""
    return Plan(
        task_id=task_id,
        query=query,
        template="event_risk",
        mode="parallel",
        quorum=2,
        steps=(
            Subtask(
                "crowd",
                "Task: {query}\nFrom your camera readings, assess crowding and "
                "visibility risks in two sentences.",
                expertise="camera",
                domain="environment",
                edge_only=True,
            ),
            Subtask(
                "air",
                "Task: {query}\nFrom your air-quality and weather readings, assess "
                "air and heat risks in two sentences.",
                expertise="air_quality",
                domain="environment",
                edge_only=True,
            ),
            Subtask(
                "traffic",
                "Task: {query}\nFrom your roadside traffic readings, assess traffic and "
                "access risks in two sentences.",
                expertise="traffic",
                domain="environment",
                edge_only=True,
            ),
        ),
        aggregate=Subtask(
            "aggregate",
            "Task: {query}\nAssessments from edge agents:\n{previous}\nIn three sentences, "
            "name the main risks they found, then say whether the event should go ahead and "
            "with which precautions.",
            domain="environment",
            max_tokens=128,
        ),
    )


def single(query: str, task_id: str) -> Plan:
    """No decomposition: one step to the pool."""
    return Plan(
        task_id=task_id,
        query=query,
        template="single",
        mode="single",
        steps=(Subtask("answer", "{query}", max_tokens=128),),
    )


TEMPLATES: dict[str, TemplateFn] = {
    "health_check": health_check,
    "event_risk": event_risk,
    "single": single,
}
_RISK = re.compile(r"\b(risks?|hazards?|safe|safety|dangers?)\b", re.IGNORECASE)
_EVENT = re.compile(r"\b(events?|festivals?|concerts?|gatherings?|markets?)\b", re.IGNORECASE)
_SYMPTOM = re.compile(
    r"\b(i feel|i am feeling|i'm feeling|symptoms?|dizzy|tired|pain|short of breath)", re.I
)


def choose_template(query: str, domain: str) -> str:
    """The rule: outdoor-event risk questions fan out; symptoms go down the on-body pipeline."""
    if _RISK.search(query) and _EVENT.search(query):
        return "event_risk"
    if domain == "health" and _SYMPTOM.search(query):
        return "health_check"
    return "single"


def new_task_id() -> str:
    return f"task-{secrets.token_hex(6)}"


def make_plan(
    query: str,
    domain: str,
    *,
    template: str | None = None,
    task_id: str | None = None,
    subtask_deadline_s: float | None = None,
    quorum: int | None = None,
    max_tokens: int | None = None,
) -> Plan:
    """A plan for ``query`` from the named template, or the one :func:`choose_template` picks."""
    name = template or choose_template(query, domain)
    try:
        build = TEMPLATES[name]
    except KeyError:
        raise PlanError(f"unknown plan template {name!r}; known: {', '.join(TEMPLATES)}") from None
    plan = build(query, task_id or new_task_id())
    changes: dict[str, Any] = {}
    if subtask_deadline_s is not None:
        changes["subtask_deadline_s"] = subtask_deadline_s
    if quorum is not None:
        changes["quorum"] = quorum
    if max_tokens is not None:  # a cap on every step (short runs, tests)

        def capped(step: Subtask) -> Subtask:
            return replace(step, max_tokens=min(step.max_tokens, max_tokens))

        changes["steps"] = tuple(capped(s) for s in plan.steps)
        if plan.aggregate is not None:
            changes["aggregate"] = capped(plan.aggregate)
    return replace(plan, **changes) if changes else plan


__all__ = [
    "TEMPLATES",
    "Mode",
    "Plan",
    "PlanError",
    "Subtask",
    "choose_template",
    "event_risk",
    "health_check",
    "make_plan",
    "new_task_id",
    "single",
]
