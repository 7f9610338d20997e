"""Inference engines: llama.cpp (real models) and simulated (device profiles)."""

from __future__ import annotations

from edge_node.engines.base import Engine
from edge_node.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine
from edge_node.engines.simulated import SimulatedEngine, SimulatedEngineConfig


def build_engine(config: LlamaCppConfig | SimulatedEngineConfig) -> Engine:
    """The engine a configuration names (its ``type``)."""
    if isinstance(config, LlamaCppConfig):
        return LlamaCppEngine(config)
    return SimulatedEngine(config)


__all__ = [
    "Engine",
    "LlamaCppConfig",
    "LlamaCppEngine",
    "SimulatedEngine",
    "SimulatedEngineConfig",
    "build_engine",
]
