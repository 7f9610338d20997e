"""How a scenario prints what happened: the plan, who did what, latency, tokens, cloud."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Any

from gateway.collab import CollabOutcome, StepOutcome

WIDTH = 100


@dataclass(frozen=True, slots=True)
class ScenarioSummary:
    """One line of the demo's closing summary."""

    name: str
    mode: str
    status: str
    steps: int
    agents: tuple[str, ...]
    latency_s: float
    tokens: int
    cloud_steps: tuple[str, ...]
    consulted: tuple[str, ...] = ()  # experts asked through knowledge cooperation
    artefact: str | None = None

    @classmethod
    def of(cls, name: str, outcome: CollabOutcome, artefact: str | None = None) -> ScenarioSummary:
        return cls(
            name=name,
            mode=outcome.plan.mode,
            status=outcome.status,
            steps=len(outcome.steps),
            agents=tuple(sorted({s.node for s in outcome.steps if s.node})),
            latency_s=outcome.latency_ms / 1e3,
            tokens=outcome.tokens,
            cloud_steps=tuple(outcome.cloud_steps),
            consulted=tuple(
                sorted(
                    {
                        str(k["peer"])
                        for s in outcome.steps
                        if isinstance(k := s.meta.get("knowledge"), dict) and k.get("peer")
                    }
                )
            ),
            artefact=artefact,
        )


def plan_lines(outcome: CollabOutcome) -> list[str]:
    plan = outcome.plan
    lines = [
        f"plan {plan.task_id}: template {plan.template}, {plan.mode}, "
        f"{len(plan.steps)} subtasks"
        + (f", quorum {plan.quorum}" if plan.mode == "parallel" else "")
        + f", deadline {plan.subtask_deadline_s:g} s each (CMS: slm/inference/{plan.task_id}/...)"
    ]
    for i, step in enumerate(plan.steps, start=1):
        target = f"agents with expertise {step.expertise}" if step.expertise else "any node"
        lines.append(f"  {i}. {step.name}: {target}{' (edge only)' if step.edge_only else ''}")
    if plan.aggregate is not None:
        lines.append(f"  then {plan.aggregate.name}: an SLM combines the answers")
    return lines


def step_lines(step: StepOutcome) -> list[str]:
    where = step.node or "nobody"
    head = (
        f"- {step.name} -> {where} [{step.route or 'none'}] {step.latency_ms:.0f} ms, "
        f"{step.prompt_tokens}+{step.completion_tokens} tokens"
    )
    lines = [head]
    grounding = step.meta.get("grounding")
    if isinstance(grounding, dict) and grounding.get("readings"):
        used = ", ".join(
            f"{r['agent']}/{r['stream']} #{r['sequence']} ({r['source']}"
            + (f", likeness {r['likeness']:.2f})" if r.get("likeness") is not None else ")")
            for r in grounding["readings"]
        )
        lines.append(f"    readings used: {used}")
        events = grounding.get("events") or []
        if events:
            lines.append(
                "    events seen: " + ", ".join(f"{e['type']} from {e['agent']}" for e in events)
            )
    knowledge = step.meta.get("knowledge")
    if isinstance(knowledge, dict):
        lines.extend(_knowledge_lines(knowledge))
    if step.note:
        lines.append(f"    note: {step.note}")
    if step.text:
        lines.extend(
            textwrap.wrap(step.text, WIDTH, initial_indent="    > ", subsequent_indent="      ")
        )
    return lines


def _knowledge_lines(knowledge: dict[str, Any]) -> list[str]:
    out = []
    if knowledge.get("integrated"):
        docs = ", ".join(d["id"] for d in knowledge.get("documents", []))
        out.append(
            f"    knowledge: gap ({knowledge.get('gap')}); asked {knowledge['peer']} on "
            f"knowledge/{knowledge['domain']}/query, its documents: {docs or 'none'}; "
            "answer integrated"
        )
    elif knowledge.get("gap") and knowledge.get("error"):
        out.append(f"    knowledge: gap ({knowledge['gap']}); {knowledge['error']}")
    own = knowledge.get("own_documents") or []
    if own:
        out.append("    own knowledge base: " + ", ".join(d["id"] for d in own))
    return out


def outcome_lines(outcome: CollabOutcome) -> list[str]:
    lines = [*plan_lines(outcome), "who did what:"]
    for step in outcome.steps:
        lines.extend(step_lines(step))
    cloud = outcome.cloud_steps
    lines.append(
        f"status {outcome.status}; {outcome.latency_ms / 1e3:.1f} s end to end; "
        f"{outcome.tokens} tokens; cloud: "
        + (
            f"{', '.join(cloud)} ({len(cloud)} of {len(outcome.steps)} subtasks)"
            if cloud
            else "nothing"
        )
    )
    lines.extend(f"  degraded: {note}" for note in outcome.notes)
    return lines
