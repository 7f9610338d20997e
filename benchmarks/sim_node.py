"""One modelled edge node of the allocation model: admission, processor sharing, load.

See ``benchmarks.allocation_sim`` for the model as a whole.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

from benchmarks.trace import Req
from edge_node.admission import Admission, Ticket
from edge_node.profiles import DeviceProfile, get_profile
from gateway.nodes import NOMINAL_TPS, NodeView

MIX: tuple[tuple[str, int], ...] = (("jetson-agx-orin", 2), ("jetson-orin-nano", 6))
BUDGET = 4096
MAX_TOKENS = 512
STALENESS_S = 0.2


class SimNode:
    """One edge node: admission, processor-sharing service, and its published load."""

    def __init__(
        self,
        node_id: str,
        profile: DeviceProfile,
        budget: int,
        staleness_s: float,
        overhead_s: float = 0.0,
    ) -> None:
        self.node_id = node_id
        self.profile = profile
        self.admission = Admission(profile.concurrency.value, budget)
        self.staleness_s = staleness_s
        self.overhead_s = overhead_s
        self.tails: list[tuple[float, int, Ticket]] = []  # (release time, serial, ticket)
        self.now = 0.0  # real time the virtual clock was last advanced to
        self.vclock = 0.0  # single-stream seconds of work done by each stream so far
        self.jobs: list[tuple[float, int, float, Ticket, int]] = []  # vfinish, serial, ...
        self.published = (0, 0)  # (in_flight, tokens_in_flight) of the last load record
        self.last_publish = -math.inf
        self.publish_at = math.inf  # when the next (debounced) load record goes out
        self.unreflected: dict[int, int] = {}  # gateway reservations: serial -> tokens
        stream, aggregate = NOMINAL_TPS[profile.name]
        self.stream_tps, self.capacity_tps = stream, aggregate

    def _advance(self, now: float) -> None:
        self.vclock += (now - self.now) * self.profile.share(len(self.jobs))
        self.now = now

    def next_completion(self) -> float:
        tail = self.tails[0][0] if self.tails else math.inf
        if not self.jobs:
            return tail
        done = self.now + (self.jobs[0][0] - self.vclock) / self.profile.share(len(self.jobs))
        return min(done, tail)

    def _changed(self, now: float) -> None:
        if self.publish_at == math.inf:
            self.publish_at = max(now, self.last_publish + self.staleness_s)
        if self.publish_at <= now:
            self.publish(now)

    def publish(self, now: float) -> None:
        """Send a load record: the gateway now sees the true state, reservations settle."""
        self.published = (self.admission.in_flight, self.admission.tokens_in_flight)
        self.last_publish, self.publish_at = now, math.inf
        self.unreflected.clear()

    def try_start(self, now: float, req: Req, serial: int, refusals: int) -> bool:
        """Admit and start ``req``, or refuse it (``False``) as the node's admission does."""
        ticket = self.admission.admit(req.prompt_tokens + req.tokens)
        if ticket is None:
            return False
        self._advance(now)
        work = req.prompt_tokens / self.profile.prefill_tps.value
        work += req.tokens / self.profile.decode_tps.value
        heapq.heappush(self.jobs, (self.vclock + work, serial, now, ticket, refusals))
        self.unreflected[serial] = ticket.tokens
        self._changed(now)
        return True

    def complete(self, now: float) -> int | None:
        """Finish the first stream due; its serial, or None when it enters its overhead tail.

        With ``overhead_s`` a finished stream holds its slot (not the device) that much
        longer: the system's round trip and scheduling that the model cannot see.
        """
        self._advance(now)
        if self.tails and self.tails[0][0] <= now:
            _, serial, ticket = heapq.heappop(self.tails)
        else:
            _, serial, _, ticket, _ = heapq.heappop(self.jobs)
            if self.overhead_s > 0:
                heapq.heappush(self.tails, (now + self.overhead_s, serial, ticket))
                return None
        self.admission.release(ticket)
        self.unreflected.pop(serial, None)  # the answer releases the gateway's reservation
        self._changed(now)
        return serial

    def view(self) -> NodeView:
        """What the gateway's ``NodeDirectory`` would say about this node now."""
        in_flight, tokens = self.published
        return NodeView(
            node_id=self.node_id,
            device=self.profile.name,
            slots=self.admission.concurrency,
            max_inflight_tokens=self.admission.max_inflight_tokens,
            max_tokens=MAX_TOKENS,
            in_flight=in_flight + len(self.unreflected),
            tokens_in_flight=tokens + sum(self.unreflected.values()),
            capacity_tps=self.capacity_tps,
            stream_tps=self.stream_tps,
        )

    def check(self) -> None:
        """Assert the node never exceeds its slots or token budget (and books balance)."""
        a = self.admission
        assert 0 <= a.in_flight <= a.concurrency, (self.node_id, a.in_flight)
        assert 0 <= a.tokens_in_flight <= a.max_inflight_tokens, (self.node_id, a.tokens_in_flight)
        assert len(self.jobs) + len(self.tails) == a.in_flight
        tokens = sum(j[3].tokens for j in self.jobs) + sum(t[2].tokens for t in self.tails)
        assert tokens == a.tokens_in_flight


def make_nodes(
    mix: Sequence[tuple[str, int]] = MIX,
    budget: int = BUDGET,
    staleness_s: float = STALENESS_S,
    overhead_s: float = 0.0,
) -> list[SimNode]:
    """Fresh nodes for ``mix`` (profile name, count), ids ``<profile>-<i>``."""
    return [
        SimNode(f"{name}-{i}", get_profile(name), budget, staleness_s, overhead_s)
        for name, count in mix
        for i in range(count)
    ]


__all__ = ["BUDGET", "MAX_TOKENS", "MIX", "STALENESS_S", "SimNode", "make_nodes"]
