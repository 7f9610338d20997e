"""The secure profile: a deployment manifest turned into TLS material, passwords and ACLs.

``edgecollab broker secure-config --manifest deployment.yaml --out DIR`` runs
:func:`generate`. See :mod:`broker.secure.acl` for who may publish and subscribe where.
"""

from broker.secure.acl import acl_rules, render_acl
from broker.secure.credentials import hash_password
from broker.secure.generate import GeneratedProfile, generate
from broker.secure.manifest import Agent, Manifest, Role, load_manifest

__all__ = [
    "Agent",
    "GeneratedProfile",
    "Manifest",
    "Role",
    "acl_rules",
    "generate",
    "hash_password",
    "load_manifest",
    "render_acl",
]
