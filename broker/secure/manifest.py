"""The deployment manifest: which agents exist, their roles and tenants.

Example (``configs/deployment.yaml``)::

    broker:
      hosts: [localhost, 127.0.0.1]   # names and addresses in the broker's certificate
      port: 8883
    tenants: [clinic-a, clinic-b]
    agents:
      - {id: node-1, role: node}
      - {id: gateway-1, role: gateway}
      - {id: wear-1, role: sensor, tenant: clinic-a}
      - {id: ops, role: operator}                  # no tenant: operates every tenant
      - {id: ops-a, role: operator, tenant: clinic-a}

An agent's id is its MQTT user name and client id (the broker enforces
``use_username_as_clientid``), a topic level, so it obeys the topic rules.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from broker.errors import BusError
from broker.topics import validate_id

Role = Literal["node", "sensor", "gateway", "operator"]
#: Roles that are shared infrastructure and so belong to no tenant.
SHARED_ROLES: frozenset[str] = frozenset({"node", "gateway"})


class ManifestError(BusError):
    """The deployment manifest is missing or invalid."""


class Agent(BaseModel):
    """One agent of the deployment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="MQTT user name and client id; a topic level")
    role: Role = Field(description="node | sensor | gateway | operator")
    tenant: str | None = Field(None, description="tenant of a sensor or operator")

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_id(value, "agent id")

    @field_validator("tenant")
    @classmethod
    def _valid_tenant(cls, value: str | None) -> str | None:
        return None if value is None else validate_id(value, "tenant")

    @model_validator(mode="after")
    def _shared_roles_have_no_tenant(self) -> Agent:
        if self.tenant is not None and self.role in SHARED_ROLES:
            raise ValueError(
                f"agent {self.id}: a {self.role} is shared by every tenant; drop 'tenant'"
            )
        return self


class BrokerSection(BaseModel):
    """Where the secure broker listens and the names its certificate must carry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: tuple[str, ...] = Field(
        ("localhost", "127.0.0.1"), min_length=1, description="DNS names or IPs clients dial"
    )
    port: int = Field(8883, ge=1, le=65535, description="TLS listener port")

    @field_validator("hosts")
    @classmethod
    def _valid_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for host in value:
            if not host or any(c.isspace() or c in "/#+" for c in host):
                raise ValueError(f"invalid broker host {host!r}")
        return value

    def ip_hosts(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        out = []
        for host in self.hosts:
            try:
                out.append(ipaddress.ip_address(host))
            except ValueError:
                continue
        return out

    def dns_hosts(self) -> list[str]:
        ips = {str(ip) for ip in self.ip_hosts()}
        return [h for h in self.hosts if h not in ips]


class Manifest(BaseModel):
    """Agents and tenants of one deployment (one broker, or one site of a bridge)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: BrokerSection = Field(default_factory=BrokerSection)
    tenants: tuple[str, ...] = Field((), description="tenant ids")
    agents: tuple[Agent, ...] = Field(min_length=1)

    @field_validator("tenants")
    @classmethod
    def _valid_tenants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for tenant in value:
            validate_id(tenant, "tenant")
        if len(set(value)) != len(value):
            raise ValueError("tenants must be unique")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        seen: set[str] = set()
        for agent in self.agents:
            if agent.id in seen:
                raise ValueError(f"agent id {agent.id!r} appears twice")
            seen.add(agent.id)
            if agent.tenant is not None and agent.tenant not in self.tenants:
                raise ValueError(f"agent {agent.id}: unknown tenant {agent.tenant!r}")
        return self

    def tenant_members(self, tenant: str) -> list[Agent]:
        return [a for a in self.agents if a.tenant == tenant]


def load_manifest(path: Path) -> Manifest:
    """Read and validate a manifest; :class:`ManifestError` says what is wrong."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from exc
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"invalid manifest {path}:\n{exc}") from exc
