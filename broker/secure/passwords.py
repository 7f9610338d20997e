"""Mosquitto password files without ``mosquitto_passwd``.

``mosquitto_passwd -b`` would put each password on a command line (visible in
``ps`` and shell history); instead the hash is computed here in the format
Mosquitto 2.0 writes and reads: ``user:$7$<iterations>$<base64 salt>$<base64 hash>``,
PBKDF2-HMAC-SHA512 over a 12-byte salt (101 iterations, mosquitto_passwd's default).
"""

from __future__ import annotations

import base64
import hashlib
import secrets

ITERATIONS = 101
SALT_BYTES = 12


def new_password() -> str:
    """A random password (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` hash of ``password`` as Mosquitto stores it."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (for tests and checks)."""
    parts = stored.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    salt = base64.b64decode(parts[3])
    again = hash_password(password, salt=salt, iterations=int(parts[2]))
    return secrets.compare_digest(again, stored)


def render_password_file(passwords: dict[str, str]) -> str:
    """The password file for ``{user: password}`` (hashes only)."""
    return "".join(f"{user}:{hash_password(pw)}\n" for user, pw in sorted(passwords.items()))
