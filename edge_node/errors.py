"""Exceptions of the edge node.

NodeError
├── EngineError   an engine could not load its model or failed while generating
│   └── ModelError  a model is unknown, missing or corrupt
└── ConfigError   (edge_node.config) the configuration is missing or invalid
"""

from __future__ import annotations


class NodeError(Exception):
    """Root of the edge node's exceptions."""


class EngineError(NodeError):
    """An engine could not load its model or failed while generating."""


class ModelError(EngineError):
    """A model is unknown, missing or corrupt."""
