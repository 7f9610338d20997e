"""The orchestrator's view of tenants and the ledger: quota checks and one row per request."""

from __future__ import annotations

from broker import ErrorCode, Mirror
from gateway.ledger import Ledger, LedgerEntry
from gateway.orchestrator import Answer, Query
from gateway.pricing import PriceTable
from gateway.tenants import check_quota, tenant_policy


class LedgerBooks:
    """Tenant policy from the CMS mirror; usage and costs in the ledger."""

    def __init__(
        self, ledger: Ledger, mirror: Mirror, prices: PriceTable, *, cloud_model: str
    ) -> None:
        self.ledger = ledger
        self.mirror = mirror
        self.prices = prices
        self.cloud_model = cloud_model

    async def check(self, tenant: str) -> float | None:
        policy = tenant_policy(self.mirror.get, tenant)
        await check_quota(self.ledger, policy, tenant)
        return policy.confidence_threshold

    async def record(
        self, query: Query, answer: Answer | None, *, policy: str, error: ErrorCode | None = None
    ) -> None:
        if answer is None:
            entry = LedgerEntry(
                tenant=query.tenant,
                route="error",
                policy=policy,
                model="",
                status=(error or ErrorCode.INTERNAL).value,
                trace=query.trace,
            )
        else:
            charges = self.prices.charges(
                answer.route,
                answer.model,
                answer.prompt_tokens,
                answer.completion_tokens,
                cloud_model=self.cloud_model,
            )
            entry = LedgerEntry(
                tenant=query.tenant,
                route=answer.route,
                policy=policy,
                model=answer.model,
                prompt_tokens=answer.prompt_tokens,
                completion_tokens=answer.completion_tokens,
                latency_ms=answer.latency_ms,
                cost_usd=charges.cost_usd,
                cloud_equivalent_usd=charges.cloud_equivalent_usd,
                node=answer.node,
                escalation_reason=answer.escalation,
                trace=query.trace,
            )
        await self.ledger.record(entry)
