"""MQTT v5 packet codec: the subset a client needs (QoS 0 and 1).

Properties are plain ``dict[int, Any]`` keyed by property identifier; the two
that may repeat (subscription identifier, user property) hold lists. Decoding
raises :class:`ProtocolError` for anything malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

from broker.errors import BusError

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT, AUTH = 12, 13, 14, 15

# Property identifiers used by name in the code.
PAYLOAD_FORMAT: Final = 1
MESSAGE_EXPIRY: Final = 2
CONTENT_TYPE: Final = 3
RESPONSE_TOPIC: Final = 8
CORRELATION_DATA: Final = 9
SUBSCRIPTION_ID: Final = 11
SESSION_EXPIRY: Final = 17
ASSIGNED_CLIENT_ID: Final = 18
SERVER_KEEP_ALIVE: Final = 19
REASON_STRING: Final = 31
RECEIVE_MAXIMUM: Final = 33
USER_PROPERTY: Final = 38
MAXIMUM_PACKET_SIZE: Final = 39

_BYTE, _U16, _U32, _VARINT, _BIN, _STR, _PAIR = range(7)
PROPERTY_TYPES: Final[dict[int, int]] = {
    1: _BYTE,
    2: _U32,
    3: _STR,
    8: _STR,
    9: _BIN,
    11: _VARINT,
    17: _U32,
    18: _STR,
    19: _U16,
    21: _STR,
    22: _BIN,
    23: _BYTE,
    24: _U32,
    25: _BYTE,
    26: _STR,
    28: _STR,
    31: _STR,
    33: _U16,
    34: _U16,
    35: _U16,
    36: _BYTE,
    37: _BYTE,
    38: _PAIR,
    39: _U32,
    40: _BYTE,
    41: _BYTE,
    42: _BYTE,
}
_REPEATABLE: Final = (SUBSCRIPTION_ID, USER_PROPERTY)
MAX_REMAINING: Final = 268_435_455
Props = dict[int, Any]


class ProtocolError(BusError):
    """The peer sent bytes that are not valid MQTT v5."""


# --- primitives -----------------------------------------------------------------


def varint(value: int) -> bytes:
    if not 0 <= value <= MAX_REMAINING:
        raise ProtocolError(f"variable byte integer {value} out of range")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def read_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """Value and next position, or ``None`` if ``buf`` ends first."""
    value = shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolError("variable byte integer longer than 4 bytes")


def _str(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def _bin(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def encode_props(props: Props | None) -> bytes:
    if not props:
        return b"\x00"
    out = bytearray()
    for ident, value in props.items():
        kind = PROPERTY_TYPES[ident]
        for item in value if ident in _REPEATABLE else (value,):
            out.append(ident)
            if kind == _BYTE:
                out.append(item)
            elif kind == _U16:
                out += struct.pack("!H", item)
            elif kind == _U32:
                out += struct.pack("!I", item)
            elif kind == _VARINT:
                out += varint(item)
            elif kind == _BIN:
                out += _bin(item)
            elif kind == _STR:
                out += _str(item)
            else:
                out += _str(item[0]) + _str(item[1])
    return varint(len(out)) + bytes(out)


class Reader:
    """Sequential reads from one packet body; overruns raise :class:`ProtocolError`."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise ProtocolError("packet ends early")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        got = read_varint(self.buf, self.pos)
        if got is None:
            raise ProtocolError("packet ends early")
        value, self.pos = got
        return value

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            return self.binary().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("invalid UTF-8 string") from exc

    def rest(self) -> bytes:
        out = self.buf[self.pos :]
        self.pos = len(self.buf)
        return out

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def props(self) -> Props:
        end = self.varint() + self.pos
        if end > len(self.buf):
            raise ProtocolError("properties run past the packet")
        props: Props = {}
        while self.pos < end:
            ident = self.byte()
            kind = PROPERTY_TYPES.get(ident)
            if kind is None:
                raise ProtocolError(f"unknown property {ident}")
            value = _READ[kind](self)
            if ident in _REPEATABLE:
                props.setdefault(ident, []).append(value)
            else:
                props[ident] = value
        if self.pos != end:
            raise ProtocolError("a property runs past the declared properties length")
        return props


_READ: Final[dict[int, Any]] = {
    _BYTE: Reader.byte,
    _U16: Reader.u16,
    _U32: Reader.u32,
    _VARINT: Reader.varint,
    _BIN: Reader.binary,
    _STR: Reader.string,
    _PAIR: lambda r: (r.string(), r.string()),
}


# --- packets ----------------------------------------------------------------------


def packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes((kind << 4 | flags,)) + varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class WillSpec:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True
    props: Props = field(default_factory=dict)


def connect(
    client_id: str,
    *,
    keepalive: int,
    clean_start: bool,
    props: Props,
    username: str | None = None,
    password: str | None = None,
    will: WillSpec | None = None,
) -> bytes:
    flags = 0x02 if clean_start else 0
    payload = _str(client_id)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += encode_props(will.props) + _str(will.topic) + _bin(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _bin(password.encode("utf-8"))
    body = _str("MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive)
    return packet(CONNECT, 0, body + encode_props(props) + payload)


def publish(
    topic: str,
    payload: bytes,
    *,
    qos: int,
    retain: bool,
    packet_id: int,
    props: Props | None,
    dup: bool = False,
) -> bytes:
    flags = (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    head = _str(topic) + (struct.pack("!H", packet_id) if qos else b"")
    return packet(PUBLISH, flags, head + encode_props(props) + payload)


def puback(packet_id: int, reason: int = 0) -> bytes:
    if reason == 0:
        return packet(PUBACK, 0, struct.pack("!H", packet_id))
    return packet(PUBACK, 0, struct.pack("!HB", packet_id, reason) + b"\x00")


def subscribe(packet_id: int, topic_filter: str, qos: int, sub_id: int | None) -> bytes:
    props = {SUBSCRIPTION_ID: [sub_id]} if sub_id else None
    body = struct.pack("!H", packet_id) + encode_props(props) + _str(topic_filter) + bytes((qos,))
    return packet(SUBSCRIBE, 0x02, body)


def unsubscribe(packet_id: int, topic_filter: str) -> bytes:
    return packet(UNSUBSCRIBE, 0x02, struct.pack("!H", packet_id) + b"\x00" + _str(topic_filter))


PINGREQ_PACKET: Final = bytes((PINGREQ << 4, 0))
DISCONNECT_PACKET: Final = bytes((DISCONNECT << 4, 0))


@dataclass(frozen=True, slots=True)
class Publish:
    """A received PUBLISH."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    packet_id: int
    props: Props


def parse_publish(flags: int, body: bytes) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos > 1:
        raise ProtocolError(f"QoS {qos} is not supported (subscriptions ask for at most 1)")
    r = Reader(body)
    topic = r.string()
    packet_id = r.u16() if qos else 0
    props = r.props()
    return Publish(topic, r.rest(), qos, bool(flags & 0x01), packet_id, props)


def parse_ack(body: bytes, *, many: bool) -> tuple[int, list[int], Props]:
    """PUBACK (one optional reason), SUBACK and UNSUBACK (a list): id, reasons, props."""
    r = Reader(body)
    packet_id = r.u16()
    if r.at_end():
        return packet_id, [0], {}
    if many:
        props = r.props()
        return packet_id, list(r.rest()), props
    reason = r.byte()
    props = {} if r.at_end() else r.props()
    return packet_id, [reason], props


def parse_connack(body: bytes) -> tuple[bool, int, Props]:
    r = Reader(body)
    flags, reason = r.byte(), r.byte()
    return bool(flags & 0x01), reason, ({} if r.at_end() else r.props())


def parse_disconnect(body: bytes) -> tuple[int, Props]:
    if not body:
        return 0, {}
    r = Reader(body)
    reason = r.byte()
    return reason, ({} if r.at_end() else r.props())


REASONS: Final[dict[int, str]] = {
    0x04: "disconnect with will",
    0x80: "unspecified error",
    0x81: "malformed packet",
    0x82: "protocol error",
    0x83: "implementation specific error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8B: "server shutting down",
    0x8D: "keep alive timeout",
    0x8E: "session taken over",
    0x8F: "topic filter invalid",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x93: "receive maximum exceeded",
    0x95: "packet too large",
    0x96: "message rate too high",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
    0x9E: "shared subscriptions not supported",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}


def reason_text(code: int) -> str:
    return f"{REASONS.get(code, 'reason')} (0x{code:02x})"
