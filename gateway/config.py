"""Gateway configuration: YAML validated by pydantic, with environment overrides.

``EDGECOLLAB_GATEWAY__<FIELD>[__<SUBFIELD>...]=value`` overrides any field
(``EDGECOLLAB_GATEWAY__CLOUD__BASE_URL=https://...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker import BusSettings
from broker.config_file import ConfigFileError, load_config_file
from broker.topics import validate_id
from gateway.cloud import CloudSettings
from gateway.policies import make_policy

ENV_PREFIX = "EDGECOLLAB_GATEWAY__"


class GatewayConfigError(Exception):
    """The gateway configuration is missing or invalid."""


class GatewayConfig(BaseModel):
    """Everything a gateway needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    gateway_id: str = Field("gateway-1", description="unique id; a topic level")
    bus: BusSettings = Field(default_factory=BusSettings)
    http_host: str = Field("127.0.0.1", description="OpenAI-compatible API address")
    http_port: int = Field(8080, ge=0, le=65535, description="0 picks a free port")
    policy: str = Field(
        "fit_first", description="random | weighted | load_aware | fit_first | cost_aware"
    )
    policy_options: dict[str, float] = Field(
        default_factory=dict,
        description="keyword options of the policy, e.g. cost_aware's target_s (latency "
        "objective, s), patience, cloud_base_s and cloud_tps (the cloud's expected latency)",
    )
    capability: str = Field("chat", description="the capability pool edge requests go to")
    confidence_threshold: float = Field(
        0.0, ge=0.0, le=1.0, description="edge answers below this escalate (tenant can override)"
    )
    edge_timeout_s: float = Field(60.0, gt=0, description="deadline of one edge attempt")
    max_edge_attempts: int = Field(4, ge=1, description="nodes tried before the cloud")
    cloud: CloudSettings = Field(default_factory=CloudSettings)
    ledger_url: str | None = Field(None, description="SQLAlchemy URL; default a SQLite file")
    cache_enabled: bool = Field(True, description="semantic cache of answers")
    cache_ttl_s: float = Field(600.0, gt=0)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="HTTP request size limit")
    dashboard: bool = Field(True, description="serve the live dashboard at /dashboard")
    client_tenants_file: Path | None = Field(
        None,
        description="secure profile: client-tenants.yaml from `broker secure-config`; MQTT "
        "ingress queries then take the tenant of the client their reply goes to",
    )

    def client_tenants(self) -> dict[str, str] | None:
        """``{client id: tenant}`` from :attr:`client_tenants_file`, or ``None``."""
        if self.client_tenants_file is None:
            return None
        try:
            data = yaml.safe_load(self.client_tenants_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise GatewayConfigError(f"cannot read {self.client_tenants_file}: {exc}") from exc
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()
        ):
            raise GatewayConfigError(f"{self.client_tenants_file}: expected client: tenant pairs")
        return data

    @field_validator("gateway_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_id(value, "gateway_id")

    @model_validator(mode="after")
    def _known_policy(self) -> GatewayConfig:
        make_policy(self.policy, **self.policy_options)  # raises with what is known
        return self


def load_gateway_config(
    path: Path | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> GatewayConfig:
    """Read YAML (if given), apply ``EDGECOLLAB_GATEWAY__*`` overrides, validate."""
    try:
        return load_config_file(
            GatewayConfig, path, env_prefix=ENV_PREFIX, what="gateway", env=env, overrides=overrides
        )
    except ConfigFileError as exc:
        raise GatewayConfigError(str(exc)) from exc
