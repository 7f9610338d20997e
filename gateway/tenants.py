"""Tenants: per-tenant model, usage limit and confidence threshold from the CMS, enforced.

An operator writes, as retained CMS entries::

    slm/tenants/{tenant}/config/model           "smollm2-135m-instruct"
    slm/tenants/{tenant}/usage_limit            100000   (tokens)
                                                or {"tokens": 100000, "usd": 5.0, "window": "30d"}
    slm/tenants/{tenant}/confidence_threshold   0.4

A usage limit counts every token the tenant was served (edge, cloud and cache) and,
for ``usd``, what its cloud requests cost. ``window`` (``"1h"``, ``"1d"``, ``"30d"`` or
seconds) makes the limit apply to a trailing window; without it, to all time. A
request is refused once the tenant has reached a limit (:class:`QuotaExceeded`,
HTTP 429). The check is made when a request starts, so requests in flight on other
gateways may take a tenant slightly past its limit.

Exceptions::

    TenantError
    ├── TenantConfigError   a CMS value is malformed (also a ValueError)
    └── QuotaExceeded       the tenant reached its usage limit (HTTP 429)

A malformed tenant id raises :class:`broker.TopicError`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from broker.topics import cms_key, validate_id
from gateway.ledger import Usage

logger = logging.getLogger(__name__)

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_LIMIT_KEYS = frozenset({"tokens", "usd", "window"})


class TenantError(Exception):
    """Root of the tenant errors."""


class TenantConfigError(TenantError, ValueError):
    """A tenant's CMS entry holds a value that cannot be used."""


class QuotaExceeded(TenantError):
    """The tenant reached a usage limit; the request is refused (HTTP 429)."""

    status_code = 429

    def __init__(
        self,
        tenant: str,
        used: float,
        limit: float,
        unit: str = "tokens",
        window: timedelta | None = None,
    ) -> None:
        self.tenant, self.used, self.limit, self.unit, self.window = (
            tenant,
            used,
            limit,
            unit,
            window,
        )
        amount = (
            f"${used:.4f} of its ${limit:.4f} limit"
            if unit == "usd"
            else f"{used:,.0f} of its {limit:,.0f}-token limit"
        )
        period = "in total" if window is None else f"in the last {describe_duration(window)}"
        super().__init__(
            f"tenant {tenant!r} has used {amount} {period}; "
            "requests are refused until usage falls below the limit or the limit is raised"
        )


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    """What the operator set for one tenant; ``None`` means the gateway's default."""

    model: str | None = None
    usage_limit_tokens: int | None = None
    usage_limit_usd: float | None = None
    confidence_threshold: float | None = None
    usage_window: timedelta | None = None


class UsageSource(Protocol):
    """What :func:`check_quota` needs from the ledger."""

    async def tenant_usage(self, tenant: str, since: datetime | None = None) -> Usage: ...


def tenant_policy(mirror_get: Callable[[str], Any], tenant: str) -> TenantPolicy:
    """Read ``tenant``'s policy through ``mirror_get`` (in the gateway: ``Mirror.get``)."""
    validate_id(tenant, "tenant")
    model_key = cms_key("tenants", tenant, "config", "model")
    limit_key = cms_key("tenants", tenant, "usage_limit")
    threshold_key = cms_key("tenants", tenant, "confidence_threshold")

    model = mirror_get(model_key)
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise TenantConfigError(f"{model_key} must be a non-empty model name, got {model!r}")

    threshold = mirror_get(threshold_key)
    if threshold is not None:
        threshold = _number(threshold, threshold_key)
        if not 0.0 <= threshold <= 1.0:
            raise TenantConfigError(f"{threshold_key} must be between 0 and 1, got {threshold}")

    tokens, usd, window = _usage_limit(mirror_get(limit_key), limit_key)
    return TenantPolicy(
        model=model,
        usage_limit_tokens=tokens,
        usage_limit_usd=usd,
        confidence_threshold=threshold,
        usage_window=window,
    )


async def check_quota(
    ledger: UsageSource, policy: TenantPolicy, tenant: str, *, now: datetime | None = None
) -> None:
    """Raise :class:`QuotaExceeded` when ``tenant`` has reached a limit of ``policy``."""
    if policy.usage_limit_tokens is None and policy.usage_limit_usd is None:
        return
    since = None
    if policy.usage_window is not None:
        since = (now or datetime.now(UTC)) - policy.usage_window
    usage = await ledger.tenant_usage(tenant, since=since)
    exceeded: QuotaExceeded | None = None
    if policy.usage_limit_tokens is not None and usage.tokens >= policy.usage_limit_tokens:
        exceeded = QuotaExceeded(
            tenant, usage.tokens, policy.usage_limit_tokens, "tokens", policy.usage_window
        )
    elif policy.usage_limit_usd is not None and usage.cost_usd >= policy.usage_limit_usd:
        exceeded = QuotaExceeded(
            tenant, usage.cost_usd, policy.usage_limit_usd, "usd", policy.usage_window
        )
    if exceeded is not None:
        logger.info("refused a request: %s", exceeded)
        raise exceeded


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"1d"``, ``"2w"`` or ``"1h30m"`` as a timedelta."""
    compact = text.strip().lower().replace(" ", "")
    if not compact or _DURATION.sub("", compact):
        raise ValueError(f"{text!r} is not a duration like 30m, 1h, 1d or 2w")
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION.findall(compact))
    if seconds <= 0:
        raise ValueError(f"duration {text!r} must be positive")
    return timedelta(seconds=seconds)


def describe_duration(span: timedelta) -> str:
    """A short human form: ``30 days``, ``1 hour``, ``90 seconds``."""
    seconds = span.total_seconds()
    for unit, size in (("week", 7 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} seconds"


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TenantConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _token_limit(value: Any, key: str) -> int:
    number = _number(value, key)
    if number < 0 or not number.is_integer():
        raise TenantConfigError(f"{key} must be a whole number of tokens >= 0, got {value!r}")
    return int(number)


def _usage_limit(value: Any, key: str) -> tuple[int | None, float | None, timedelta | None]:
    if value is None:
        return None, None, None
    if not isinstance(value, dict):
        return _token_limit(value, key), None, None
    unknown = set(value) - _LIMIT_KEYS
    if unknown:
        raise TenantConfigError(
            f"{key} has unknown field(s) {sorted(map(str, unknown))}; "
            "expected a number of tokens or a map with 'tokens', 'usd' and 'window'"
        )
    tokens = value.get("tokens")
    usd = value.get("usd")
    if tokens is None and usd is None:
        raise TenantConfigError(f"{key} must set 'tokens' or 'usd', got {value!r}")
    usd_limit = None if usd is None else _number(usd, f"{key}.usd")
    if usd_limit is not None and usd_limit < 0:
        raise TenantConfigError(f"{key}.usd must be >= 0, got {usd!r}")
    return (
        None if tokens is None else _token_limit(tokens, f"{key}.tokens"),
        usd_limit,
        _window(value.get("window"), f"{key}.window"),
    )


def _window(value: Any, key: str) -> timedelta | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise TenantConfigError(f"{key}: {exc}") from None
    seconds = _number(value, key)
    if seconds <= 0:
        raise TenantConfigError(f"{key} must be a positive number of seconds, got {value!r}")
    return timedelta(seconds=seconds)
