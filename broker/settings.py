"""How an agent reaches the broker: validated settings with environment overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

ENV_PREFIX = "EDGECOLLAB_MQTT_"


class TlsSettings(BaseModel):
    """TLS towards the broker (the secure profile)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path = Field(description="CA certificate that signed the broker's certificate")
    cert_file: Path | None = Field(None, description="this agent's certificate")
    key_file: Path | None = Field(None, description="this agent's private key")
    insecure: bool = Field(False, description="skip hostname verification (testing only)")


class BusSettings(BaseModel):
    """Connection settings shared by every agent."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: Path | None = Field(
        None,
        description="YAML file of further bus settings, under the ones given here "
        "(the secure profile writes one per agent: credentials and TLS files)",
    )
    host: str = Field("127.0.0.1", description="broker host name or address")
    port: int = Field(1883, ge=1, le=65535, description="broker port")
    keepalive_s: int = Field(
        10, ge=2, le=3600, description="MQTT keepalive; a dead agent's will fires within 1.5x"
    )
    username: str | None = Field(None, description="MQTT user name (secure profile)")
    password: SecretStr | None = Field(None, description="MQTT password; never logged")
    tls: TlsSettings | None = Field(None, description="TLS settings; None for plain TCP")
    connect_timeout_s: float = Field(10.0, gt=0, description="first connection deadline")
    reconnect_min_s: float = Field(0.1, gt=0, description="first reconnect back-off")
    reconnect_max_s: float = Field(5.0, gt=0, description="back-off ceiling")
    session_expiry_s: int = Field(
        0, ge=0, description="MQTT v5 session expiry; >0 keeps QoS1 messages across drops"
    )
    max_incoming_queue: int = Field(
        20_000, ge=1, description="incoming messages buffered before new ones are dropped"
    )

    @model_validator(mode="before")
    @classmethod
    def _merge_include(cls, data: Any) -> Any:
        """Settings from ``include`` first, then the explicit ones on top."""
        if not isinstance(data, dict) or not data.get("include"):
            return data
        path = Path(data["include"]).expanduser()
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read the bus settings file {path}: {exc}") from exc
        if not isinstance(loaded, dict) or "include" in loaded:
            raise ValueError(f"{path}: expected a mapping of bus settings (without 'include')")
        return {**loaded, **data}

    @classmethod
    def from_env(cls, **overrides: Any) -> BusSettings:
        """Defaults, then ``EDGECOLLAB_MQTT_*`` variables, then explicit ``overrides``."""
        values: dict[str, Any] = {}
        for name in ("include", "host", "port", "keepalive_s", "username", "password"):
            env = os.environ.get(ENV_PREFIX + name.upper())
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
