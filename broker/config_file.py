"""Agent configuration files: YAML validated by a pydantic model, with environment overrides.

``{PREFIX}<FIELD>[__<SUBFIELD>...]=value`` overrides any field; values are parsed
as YAML scalars (``EDGECOLLAB_NODE__BUS__PORT=1884``). Every role's configuration
loads through :func:`load_config_file`, so they all behave alike.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from broker.errors import BusError

M = TypeVar("M", bound=BaseModel)


class ConfigFileError(BusError):
    """A configuration file is missing, unreadable or invalid."""


def load_config_file(
    model: type[M],
    path: Path | None,
    *,
    env_prefix: str,
    what: str,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> M:
    """Read YAML (if given), apply ``env_prefix`` overrides and ``overrides``, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigFileError(f"cannot read {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigFileError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    for key, raw in (os.environ if env is None else env).items():
        if key.startswith(env_prefix):
            _set(data, key[len(env_prefix) :].lower().split("__"), yaml.safe_load(raw), key)
    data.update(overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        where = f" in {path}" if path else ""
        raise ConfigFileError(f"invalid {what} configuration{where}:\n{exc}") from exc


def _set(data: dict[str, Any], levels: list[str], value: Any, key: str) -> None:
    for level in levels[:-1]:
        child = data.setdefault(level, {})
        if not isinstance(child, dict):
            raise ConfigFileError(f"cannot apply {key}: {level} is not a mapping")
        data = child
    data[levels[-1]] = value
