"""``edgecollab broker``: run Mosquitto in the foreground with the project's config;
``edgecollab broker secure-config``: generate the secure profile from a manifest.

The config is rendered from ``mosquitto.conf`` (see :mod:`broker.mosquitto_config`)
into the data dir, Mosquitto logs to this terminal, SIGINT and SIGTERM are forwarded
to it (it saves its database and exits), and its exit code becomes ours.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from broker.errors import BrokerLaunchError, BusError
from broker.launcher import find_mosquitto, free_port
from broker.mosquitto_config import read_template, render_config
from broker.secure.generate import generate
from broker.secure.manifest import load_manifest

DEFAULT_PORT = 1883


def default_data_dir(port: int) -> Path:
    """``$XDG_STATE_HOME/edgecollab/mosquitto-<port>`` (``~/.local/state`` by default)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "edgecollab" / f"mosquitto-{port}"


def add_broker_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``broker`` subcommand; its handler is ``args.func`` (:func:`run_broker`)."""
    parser = subparsers.add_parser(
        "broker",
        help="run the Mosquitto broker in the foreground with the project's config",
        description="Run Mosquitto in the foreground with the project's mosquitto.conf, "
        "rendered for this host, port and data dir. Ctrl-C stops it.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port to listen on (0: pick a free one)"
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="config template (default: mosquitto.conf)"
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="persistence dir (default: $XDG_STATE_HOME/edgecollab/mosquitto-<port>)",
    )
    parser.set_defaults(func=run_broker)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    add_secure_config_parser(actions)
    return parser


def run_broker(args: argparse.Namespace) -> int:
    """Run Mosquitto until it exits; return its exit code (128+N when killed by signal N)."""
    try:
        binary = find_mosquitto()
        template = read_template(args.config)
        port = args.port or free_port(args.host)
        data_dir: Path = args.data_dir or default_data_dir(port)
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = data_dir / "mosquitto.conf"
        conf.write_text(
            render_config(template, host=args.host, port=port, data_dir=data_dir),
            encoding="utf-8",
        )
    except (BrokerLaunchError, OSError) as exc:
        print(f"edgecollab broker: {exc}", file=sys.stderr)
        return 1
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"edgecollab broker: mqtt://{host}:{port} (data {data_dir})", file=sys.stderr)
    # Own session, so that a terminal Ctrl-C reaches Mosquitto once, through us.
    proc = subprocess.Popen([binary, "-c", str(conf)], start_new_session=True)

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        print(f"edgecollab broker: mosquitto exited with code {code}", file=sys.stderr)
    return 128 - code if code < 0 else code


def add_secure_config_parser(
    actions: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = actions.add_parser(
        "secure-config",
        help="generate CA, certificates, passwords, ACL and the secure broker config",
        description="Read a deployment manifest and write the secure profile into --out: "
        "a CA and per-agent certificates, the Mosquitto password file and ACL, "
        "broker/mosquitto-secure.conf and agents/{id}/bus.yaml (mode 0600, never commit). "
        "Run again to add agents: the CA and existing passwords are kept.",
    )
    parser.add_argument("--manifest", type=Path, required=True, help="deployment.yaml")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--ca-cert", type=Path, default=None, help="your own CA certificate")
    parser.add_argument("--ca-key", type=Path, default=None, help="your own CA private key")
    parser.set_defaults(func=run_secure_config)
    return parser


def run_secure_config(args: argparse.Namespace) -> int:
    if (args.ca_cert is None) != (args.ca_key is None):
        print("edgecollab broker secure-config: give both --ca-cert and --ca-key", file=sys.stderr)
        return 2
    try:
        manifest = load_manifest(args.manifest)
        profile = generate(manifest, args.out, ca_cert=args.ca_cert, ca_key=args.ca_key)
    except (BusError, OSError) as exc:
        print(f"edgecollab broker secure-config: {exc}", file=sys.stderr)
        return 1
    print(f"broker config: {profile.conf}")
    print(f"CA certificate: {profile.ca_cert}")
    for agent_id, path in profile.agent_files.items():
        print(f"agent {agent_id}: {path}")
    print(f"run it: mosquitto -c {profile.conf}   (or: MosquittoBroker(config=...))")
    return 0
