"""Exceptions raised by the bus, and the closed set of wire error codes.

Every exception the bus raises derives from :class:`BusError`; errors from
the socket layer, cbor2 and the operating system are mapped at the boundary and chained::

    BusError
    ├── TopicError          an id or topic breaks the namespace rules
    ├── CodecError          a payload cannot be decoded or encoded
    │   └── PayloadTooLarge the payload exceeds the size limit
    ├── BrokerLaunchError   Mosquitto could not be found, started or stopped
    ├── NotConnected        no broker connection within the caller's deadline
    ├── VectorError         a vector or vector-index call is invalid (dimension, filter)
    ├── MissingDependency   an optional package (an extra) is not installed
    └── RpcError            a remote call failed; ``code`` is an :class:`ErrorCode`
        └── RpcTimeout      no reply before the deadline (code ``expired``)
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """The closed set of error codes carried by ``error`` replies.

    - ``bad_request``: the request is malformed or fails validation.
    - ``too_large``: the payload exceeds the size limit.
    - ``unauthorized``: the sender may not make this request.
    - ``overloaded``: admission refused; the scheduler should try elsewhere.
    - ``expired``: the request's deadline passed before it could be served.
    - ``not_found``: the target (model, key, capability) does not exist here.
    - ``unavailable``: no agent (edge or cloud) can serve the request now.
    - ``internal``: the agent failed while serving; the agent keeps running.
    """

    BAD_REQUEST = "bad_request"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    OVERLOADED = "overloaded"
    EXPIRED = "expired"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class BusError(Exception):
    """Root of every exception raised by the bus."""


class TopicError(BusError, ValueError):
    """An id or topic does not follow the namespace rules."""


class CodecError(BusError, ValueError):
    """A payload cannot be decoded (malformed, wrong version, invalid field) or encoded."""

    code: ErrorCode = ErrorCode.BAD_REQUEST


class PayloadTooLarge(CodecError):
    """A payload exceeds the size limit."""

    code = ErrorCode.TOO_LARGE


class BrokerLaunchError(BusError):
    """Mosquitto could not be found, started or stopped."""


class NotConnected(BusError):
    """The client has no broker connection and none came back before the deadline."""


class VectorError(BusError, ValueError):
    """A vector has the wrong shape or values, or a search filter is malformed."""


class MissingDependency(BusError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


class RpcError(BusError):
    """A remote call ended with an error reply or could not be completed."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class RpcTimeout(RpcError):
    """No complete reply arrived before the call's deadline."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.EXPIRED, message)
