"""What a node counts, and the load record it keeps current in the CMS."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edge_node.admission import Admission
from edge_node.engines.base import Generation


@dataclass
class NodeMetrics:
    """Counters since start; published under ``slm/metrics/{node_id}/...``."""

    started: float = field(default_factory=time.monotonic)
    requests_total: int = 0
    served_total: int = 0
    refused_total: int = 0
    failed_total: int = 0
    cancelled_total: int = 0
    prompt_tokens_total: int = 0
    completion_tokens_total: int = 0
    inference_ms_total: float = 0.0
    ttft_ms_total: float = 0.0
    recent: list[tuple[float, int]] = field(default_factory=list)  # (when, tokens)

    def record(self, gen: Generation) -> None:
        self.served_total += 1
        if gen.finish_reason == "cancelled":
            self.cancelled_total += 1
        self.prompt_tokens_total += gen.prompt_tokens
        self.completion_tokens_total += gen.completion_tokens
        self.inference_ms_total += gen.total_ms
        self.ttft_ms_total += gen.ttft_ms
        now = time.monotonic()
        self.recent.append((now, gen.completion_tokens))
        self.recent = [(t, n) for t, n in self.recent if now - t <= 60.0]

    def tokens_per_s(self) -> float:
        """Completion tokens per second over the last minute."""
        now = time.monotonic()
        window = min(60.0, max(1.0, now - self.started))
        return sum(n for t, n in self.recent if now - t <= 60.0) / window

    def snapshot(self) -> dict[str, Any]:
        served = max(1, self.served_total)
        return {
            "inference_time_avg": round(self.inference_ms_total / served, 2),
            "ttft_avg": round(self.ttft_ms_total / served, 2),
            "tokens_used_total": self.prompt_tokens_total + self.completion_tokens_total,
            "completion_tokens_total": self.completion_tokens_total,
            "requests_total": self.requests_total,
            "served_total": self.served_total,
            "refused_total": self.refused_total,
            "failed_total": self.failed_total,
            "cancelled_total": self.cancelled_total,
            "tokens_per_s": round(self.tokens_per_s(), 2),
            "uptime_s": round(time.monotonic() - self.started, 1),
        }


def load_record(admission: Admission, metrics: NodeMetrics, draining: bool) -> dict[str, Any]:
    """The volatile ``slm/nodes/{id}/load`` value the scheduler reads."""
    return {
        "slots": admission.concurrency,
        "free_slots": admission.free_slots,
        "in_flight": admission.in_flight,
        "tokens_in_flight": admission.tokens_in_flight,
        "max_inflight_tokens": admission.max_inflight_tokens,
        "tokens_per_s": round(metrics.tokens_per_s(), 2),
        "draining": draining,
    }
