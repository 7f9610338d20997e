"""Envelope codec: CBOR or JSON, chosen by MQTT Content Type, strictly validated.

``decode`` raises :class:`CodecError` (or :class:`PayloadTooLarge`) for every bad
payload, whatever the reason; it never lets another exception escape.
"""

from __future__ import annotations

import json
from typing import Any, Final

import cbor2

from broker.errors import CodecError, PayloadTooLarge
from broker.fields import FieldReader
from broker.messages import SCHEMA_VERSION, WireMessage, kind_class

CBOR: Final = "application/cbor"
JSON: Final = "application/json"
CONTENT_TYPES: Final = (CBOR, JSON)
# Same number as message_size_limit in mosquitto.conf: the broker refuses what the
# codec would refuse. 256 KiB holds 64k float32 values, far above one embedding batch.
MAX_PAYLOAD_BYTES: Final = 262_144


def encode(
    message: WireMessage, content_type: str = CBOR, *, max_bytes: int = MAX_PAYLOAD_BYTES
) -> bytes:
    """Serialise ``message`` with its schema version and kind."""
    binary = _binary(content_type)
    body: dict[str, Any] = {"v": SCHEMA_VERSION, "kind": message.KIND}
    body.update(message.to_map(binary=binary))
    try:
        payload = (
            cbor2.dumps(body)
            if binary
            else json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        )
    except (TypeError, ValueError, cbor2.CBOREncodeError) as exc:
        raise CodecError(f"cannot encode {message.KIND}: {exc}") from exc
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"{message.KIND} payload is {len(payload)} bytes, limit {max_bytes}")
    return payload


def decode(
    payload: bytes | bytearray,
    content_type: str | None = None,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
) -> WireMessage:
    """Parse and validate ``payload``; no content type means CBOR unless it looks like JSON."""
    if not isinstance(payload, bytes | bytearray):
        raise CodecError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(payload)} bytes, limit {max_bytes}")
    if not payload:
        raise CodecError("empty payload")
    if content_type is None or content_type == "":
        content_type = JSON if payload[:1] == b"{" else CBOR
    body = _parse(bytes(payload), _binary(content_type))
    if not isinstance(body, dict):
        raise CodecError(f"payload must be a map, got {type(body).__name__}")
    version = body.get("v")
    if isinstance(version, bool) or version != SCHEMA_VERSION:
        raise CodecError(
            f"unsupported schema version {version!r}; this agent speaks v{SCHEMA_VERSION}"
        )
    kind = body.get("kind")
    if not isinstance(kind, str):
        raise CodecError("payload has no 'kind'")
    cls = kind_class(kind)
    fields = {k: v for k, v in body.items() if k not in ("v", "kind")}
    try:
        return cls.from_map(FieldReader(fields, kind))
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError, KeyError) as exc:
        raise CodecError(f"invalid {kind}: {exc}") from exc


def _binary(content_type: str) -> bool:
    base = content_type.split(";", 1)[0].strip().lower()
    if base == CBOR:
        return True
    if base == JSON:
        return False
    raise CodecError(f"unsupported content type {content_type!r}; use {CBOR} or {JSON}")


def _parse(payload: bytes, binary: bool) -> Any:
    try:
        if binary:
            return cbor2.loads(payload)
        return json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise CodecError("payload is nested too deeply") from exc
    # cbor2 and json raise many exception types for bad input; all of them mean "malformed".
    except Exception as exc:
        what = "CBOR" if binary else "JSON"
        raise CodecError(f"malformed {what}: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise CodecError(f"JSON constant {name} is not allowed")
