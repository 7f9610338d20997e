"""Credentials of the secure profile: certificates and Mosquitto password hashes.

Certificates: a CA, the broker's and every agent's, made with the ``cryptography``
package (extra ``secure``); keys are ECDSA P-256. Bring your own CA by passing its
certificate and key: they sign the broker's and agents' certificates and the CA
key is never copied into the output.

Passwords: ``mosquitto_passwd -b`` would put each password on a command line
(visible in ``ps`` and shell history); instead the hash is computed here in the
format Mosquitto 2.0 writes and reads: ``user:$7$<iterations>$<base64 salt>$<base64
hash>``, PBKDF2-HMAC-SHA512 over a 12-byte salt (101 iterations, its default).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from pathlib import Path

from broker.errors import BusError

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError:  # pragma: no cover - depends on the installed extras
    x509 = None  # type: ignore[assignment]

ITERATIONS = 101
SALT_BYTES = 12
CA_DAYS = 3650
LEAF_DAYS = 825


class PkiError(BusError):
    """Certificates cannot be made (missing package, unreadable CA)."""


@dataclass(frozen=True, slots=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _require() -> None:
    if x509 is None:
        raise PkiError(
            "the secure profile needs the 'cryptography' package: pip install 'edgecollab[secure]'"
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgecollab"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """Signs certificates; make one with :meth:`create` or :meth:`load`."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, common_name: str = "edgecollab CA") -> CertificateAuthority:
        _require()
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(_name(common_name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        """An existing CA (yours, or one generated before) from PEM files."""
        _require()
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise PkiError(f"cannot load the CA from {cert_path} and {key_path}: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey | _rsa_type()):
            raise PkiError(f"{key_path}: unsupported CA key type {type(key).__name__}")
        return cls(cert, key)  # type: ignore[arg-type]

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def issue(
        self, common_name: str, *, server_hosts: list[str] | None = None, days: int = LEAF_DAYS
    ) -> Issued:
        """A leaf certificate: for the broker when ``server_hosts`` is given, else a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server_hosts is not None:
            names: list[x509.GeneralName] = []
            for host in server_hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _rsa_type() -> type:
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    return rsa.RSAPrivateKey


# --- passwords ---


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
