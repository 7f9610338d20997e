"""``edgecollab broker secure-config``: generate the secure profile from a manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from broker.errors import BusError
from broker.secure.generate import generate
from broker.secure.manifest import load_manifest


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
