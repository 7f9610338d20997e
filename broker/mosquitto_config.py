"""Render the project's ``mosquitto.conf`` template into a runnable broker config.

The template (``mosquitto.conf`` at the repository root) is a complete config for a
local deployment. A launcher runs it on its own host, port and data directory, so
:func:`render_config` replaces the *launcher-owned* keys and keeps everything else:

- From the global part and the first listener's block (everything before the
  template's second ``listener`` line), lines whose first token is one of
  :data:`LAUNCHER_KEYS` are dropped.
- The launcher's own lines go where the template's first ``listener`` line was (or
  at the end when there is none): ``persistence_location``, ``log_dest``, ``user``
  when running as root, then ``listener {port} {host}``. The options that followed
  the template's first listener therefore configure the launcher's listener.
- From the second ``listener`` line on (extra listeners such as the TLS one of the
  secure profile), the template is kept verbatim.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from broker.errors import BrokerLaunchError

CONF_ENV: Final = "EDGECOLLAB_MOSQUITTO_CONF"
LAUNCHER_KEYS: Final = frozenset(
    {"listener", "port", "bind_address", "persistence_location", "pid_file", "log_dest", "user"}
)


def template_path() -> Path:
    """The config template: ``$EDGECOLLAB_MOSQUITTO_CONF`` or the repository's ``mosquitto.conf``.

    The repository file is found relative to this package, which holds for a source
    checkout and an editable install; other installs set the environment variable.
    """
    override = os.environ.get(CONF_ENV)
    if override:
        return Path(override).expanduser()
    return Path(__file__).resolve().parent.parent / "mosquitto.conf"


def read_template(path: Path | None = None) -> str:
    """Read the template at ``path`` (default :func:`template_path`)."""
    path = template_path() if path is None else path
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BrokerLaunchError(
            f"cannot read the Mosquitto config template {path}: {exc.strerror}; "
            f"set {CONF_ENV} to the project's mosquitto.conf"
        ) from exc


def render_config(
    template: str,
    *,
    host: str,
    port: int,
    data_dir: Path,
    log_file: Path | None = None,
    as_root: bool | None = None,
) -> str:
    """Return ``template`` with the launcher's listener, data dir, log and user.

    ``log_file`` ``None`` logs to stderr. ``as_root`` ``None`` means "this process is
    root" (``os.geteuid() == 0``); then ``user root`` is written, because Mosquitto
    started as root otherwise drops to the ``mosquitto`` user, which cannot write a
    data dir created by root (0700 temp dirs): version 2.0.11 then logs "Error saving
    in-memory database ... Permission denied" at shutdown, exits 0, and retained
    messages are silently lost. With ``user root`` it keeps root (and logs a warning).
    """
    if not host or any(c.isspace() for c in host):
        raise BrokerLaunchError(f"invalid broker host {host!r}")
    if not 0 < port < 65536:
        raise BrokerLaunchError(f"invalid broker port {port}")
    for path in (data_dir, log_file):
        if path is not None and "\n" in str(path):
            raise BrokerLaunchError(f"path {str(path)!r} contains a newline")
    if as_root is None:
        as_root = os.geteuid() == 0
    own = [
        "# --- launcher-owned settings (broker/mosquitto_config.py) ---",
        f"persistence_location {str(data_dir).rstrip('/')}/",
        f"log_dest file {log_file}" if log_file is not None else "log_dest stderr",
    ]
    if as_root:
        own.append("user root")
    own.append(f"listener {port} {host}")

    out: list[str] = []
    listeners = 0
    placed = False
    for line in template.splitlines():
        key = _key(line)
        if key == "listener":
            listeners += 1
        if listeners >= 2:
            out.append(line)
        elif key == "listener" and not placed:
            out.extend(own)
            placed = True
        elif key not in LAUNCHER_KEYS:
            out.append(line)
    if not placed:
        out.extend(own)
    return "\n".join(out) + "\n"


def message_size_limit(template: str) -> int | None:
    """The effective ``message_size_limit`` of a config (the last one wins), or ``None``."""
    value: int | None = None
    for line in template.splitlines():
        if _key(line) == "message_size_limit":
            tokens = line.split()
            if len(tokens) != 2 or not tokens[1].isdigit():
                raise ValueError(f"malformed config line {line.strip()!r}")
            value = int(tokens[1])
    return value


def _key(line: str) -> str | None:
    """The option name of a config line, or ``None`` for blank and comment lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    return stripped.split(None, 1)[0]
