"""Admission control: a concurrency limit and a budget of in-flight tokens.

A request reserves its prompt tokens plus its ``max_tokens`` for as long as it
runs. One that does not fit is refused at once (the gateway redirects it);
nothing waits in a queue, so a node's memory and latency stay bounded under any
load.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Ticket:
    tokens: int


class Admission:
    """Counts what runs; thread-unsafe by design (used from the event loop only)."""

    def __init__(self, concurrency: int, max_inflight_tokens: int) -> None:
        if concurrency < 1 or max_inflight_tokens < 1:
            raise ValueError("concurrency and max_inflight_tokens must be positive")
        self.concurrency = concurrency
        self.max_inflight_tokens = max_inflight_tokens
        self.in_flight = 0
        self.tokens_in_flight = 0

    @property
    def free_slots(self) -> int:
        return self.concurrency - self.in_flight

    def refusal(self, tokens: int) -> str | None:
        """Why a request of ``tokens`` cannot start now, or ``None`` if it can."""
        if tokens > self.max_inflight_tokens:
            return (
                f"request needs {tokens} tokens, more than this node's budget of "
                f"{self.max_inflight_tokens}"
            )
        if self.in_flight >= self.concurrency:
            return f"all {self.concurrency} slots busy"
        if self.tokens_in_flight + tokens > self.max_inflight_tokens:
            return (
                f"{self.tokens_in_flight} of {self.max_inflight_tokens} tokens in flight; "
                f"{tokens} more do not fit"
            )
        return None

    def admit(self, tokens: int) -> Ticket | None:
        """Reserve capacity, or return ``None`` when it does not fit."""
        if self.refusal(tokens) is not None:
            return None
        self.in_flight += 1
        self.tokens_in_flight += tokens
        return Ticket(tokens)

    def release(self, ticket: Ticket) -> None:
        self.in_flight -= 1
        self.tokens_in_flight -= ticket.tokens
