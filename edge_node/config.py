"""Node configuration: YAML validated by pydantic, with environment overrides.

``EDGECOLLAB_NODE__<FIELD>[__<SUBFIELD>...]=value`` overrides any field; values
are parsed as YAML scalars (``EDGECOLLAB_NODE__BUS__PORT=1884``,
``EDGECOLLAB_NODE__ENGINE__N_GPU_LAYERS=-1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker import BusSettings
from broker.config_file import ConfigFileError, load_config_file
from broker.topics import validate_id
from edge_node.engines.llama_cpp import LlamaCppConfig
from edge_node.engines.simulated import SimulatedEngineConfig
from edge_node.errors import NodeError

ENV_PREFIX = "EDGECOLLAB_NODE__"

EngineConfig = Annotated[LlamaCppConfig | SimulatedEngineConfig, Field(discriminator="type")]


class ConfigError(NodeError):
    """The node configuration is missing or invalid."""


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    concurrency: int | None = Field(None, ge=1, description="default: the engine's slots")
    max_inflight_tokens: int = Field(4096, ge=1, description="prompt + max_tokens in flight")
    max_tokens: int = Field(512, ge=1, description="largest max_tokens accepted per request")


class SamplingDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, ge=0.0, le=1.0)
    top_k: int = Field(40, ge=0)


class KnowledgeConfig(BaseModel):
    """Knowledge cooperation: the knowledge base a node holds, and when it asks peers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    documents: tuple[str, ...] = Field(
        (), description="shipped sets (health, environment) or JSON-lines paths; () = no base"
    )
    db_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite file ~/.cache/edgecollab/kb-{node}.db"
    )
    embedder: Literal["minilm", "engine"] = Field(
        "minilm", description="MiniLM sentence encoder, or the engine's embedding context"
    )
    top_k: int = Field(3, ge=1, le=16, description="documents retrieved per question")
    min_score: float = Field(0.3, ge=-1.0, le=1.0, description="cosine below this is dropped")
    ask_peers: bool = Field(True, description="ask knowledge/{domain}/query on a gap")
    gap_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="an own answer below this confidence is a gap too"
    )
    ask_timeout_s: float = Field(30.0, gt=0, description="longest wait for a peer's answer")
    peer_max_tokens: int = Field(96, ge=1, description="max_tokens of a knowledge query")


class DataConfig(BaseModel):
    """Data-grounded answers: follow data/ topics and put recent readings in the prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topics: tuple[str, ...] = Field(description="topic filters under data/, e.g. data/urban/#")
    max_readings: int = Field(6, ge=1, le=32, description="latest readings put in a prompt")
    max_age_s: float = Field(600.0, gt=0, description="readings older than this are ignored")

    @field_validator("topics")
    @classmethod
    def _under_data(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        if not values or any(not v.startswith("data/") for v in values):
            raise ValueError("data.topics must be one or more filters under data/")
        return values


class NodeConfig(BaseModel):
    """Everything an edge node needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    node_id: str = Field(description="unique id; a topic level ([a-z0-9_-])")
    bus: BusSettings = Field(default_factory=BusSettings, description="broker connection")
    engine: EngineConfig = Field(description="inference engine (type: llama_cpp | simulated)")
    capabilities: tuple[str, ...] = Field(
        ("chat",), description="capability pools joined through shared subscriptions"
    )
    expertise: tuple[str, ...] = Field((), description="knowledge domains, e.g. health")
    device: str = Field("generic-linux", description="device profile or description")
    limits: Limits = Field(default_factory=Limits)
    sampling: SamplingDefaults = Field(default_factory=SamplingDefaults)
    load_interval_s: float = Field(0.2, gt=0, description="load updates at most this often")
    load_expiry_s: int = Field(15, ge=2, description="a dead node's load vanishes after this")
    metrics_interval_s: float = Field(5.0, gt=0, description="metrics publication period")
    stream_interval_s: float = Field(
        0.03, ge=0, description="streamed tokens are sent together at most this often"
    )
    drain_timeout_s: float = Field(20.0, ge=0, description="SIGTERM waits this long for work")
    knowledge: KnowledgeConfig | None = Field(None, description="knowledge cooperation")
    data: DataConfig | None = Field(None, description="ground answers in followed data/")

    @field_validator("node_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        return validate_id(value, "node_id")

    @field_validator("capabilities", "expertise")
    @classmethod
    def _valid_levels(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(validate_id(v, "capability or domain") for v in values)


def load_config(
    path: Path | None, env: Mapping[str, str] | None = None, **overrides: Any
) -> NodeConfig:
    """Read YAML (if given), apply ``EDGECOLLAB_NODE__*`` overrides, validate."""
    try:
        return load_config_file(
            NodeConfig, path, env_prefix=ENV_PREFIX, what="node", env=env, overrides=overrides
        )
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from exc
