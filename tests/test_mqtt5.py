"""The MQTT v5 packet codec: varints, properties, PUBLISH, acks."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from broker import mqtt5
from broker.errors import BusError
from broker.mqtt5 import ProtocolError, Reader, encode_props, read_varint, varint


def split_packet(pkt: bytes) -> tuple[int, int, bytes]:
    """Packet type, flags and body, checking the remaining length."""
    got = read_varint(pkt, 1)
    assert got is not None
    length, start = got
    body = pkt[start:]
    assert len(body) == length
    return pkt[0] >> 4, pkt[0] & 0x0F, body


# --- variable byte integers


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_boundaries(value: int, encoded: bytes) -> None:
    assert varint(value) == encoded
    assert read_varint(encoded, 0) == (value, len(encoded))
    assert read_varint(b"xyz" + encoded + b"tail", 3) == (value, 3 + len(encoded))
    assert Reader(encoded).varint() == value


@pytest.mark.parametrize("value", [-1, 268_435_456, 2**32])
def test_varint_refuses_out_of_range(value: int) -> None:
    with pytest.raises(ProtocolError, match="out of range"):
        varint(value)


@pytest.mark.parametrize(
    ("buf", "pos"),
    [(b"", 0), (b"\x80", 0), (b"\xff\xff", 0), (b"\xff\xff\xff", 0), (b"\x05", 1), (b"\x01", 7)],
)
def test_read_varint_returns_none_for_incomplete_input(buf: bytes, pos: int) -> None:
    assert read_varint(buf, pos) is None


@pytest.mark.parametrize(
    "buf", [b"\x80\x80\x80\x80\x01", b"\xff\xff\xff\xff\x7f", b"\xff\xff\xff\xff"]
)
def test_read_varint_refuses_five_byte_varints(buf: bytes) -> None:
    with pytest.raises(ProtocolError, match="longer than 4 bytes"):
        read_varint(buf, 0)


def test_reader_varint_on_incomplete_input_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="ends early"):
        Reader(b"\x80").varint()


def test_protocol_error_is_a_bus_error() -> None:
    assert issubclass(ProtocolError, BusError)


# --- properties

EVERY_PROPERTY: dict[int, Any] = {
    ident: {
        0: 0xAB,  # byte
        1: 0xFFFE,  # two-byte integer
        2: 0xFFFF_FFFE,  # four-byte integer
        4: b"\x00\xff corr",  # binary data
        5: f"text/{ident} ü✓",  # UTF-8 string
    }.get(mqtt5.PROPERTY_TYPES[ident])
    for ident in mqtt5.PROPERTY_TYPES
    if ident not in (mqtt5.SUBSCRIPTION_ID, mqtt5.USER_PROPERTY)
}
EVERY_PROPERTY[mqtt5.SUBSCRIPTION_ID] = [1, 127, 128, 268_435_455]
EVERY_PROPERTY[mqtt5.USER_PROPERTY] = [
    ("tenant", "acme"),
    ("trace", "t-1"),
    ("tenant", "second value for the same key"),
    ("no-cloud", ""),
]


def test_every_property_type_round_trips() -> None:
    assert set(EVERY_PROPERTY) == set(mqtt5.PROPERTY_TYPES)
    assert all(value is not None for value in EVERY_PROPERTY.values())
    reader = Reader(encode_props(EVERY_PROPERTY))
    assert reader.props() == EVERY_PROPERTY
    assert reader.at_end()


@pytest.mark.parametrize(("ident", "value"), sorted(EVERY_PROPERTY.items()))
def test_each_property_round_trips_alone(ident: int, value: Any) -> None:
    reader = Reader(encode_props({ident: value}) + b"rest")
    assert reader.props() == {ident: value}
    assert reader.rest() == b"rest"


def test_repeated_user_properties_keep_order_and_duplicates() -> None:
    pairs = [("k", "1"), ("k", "2"), ("a", "3"), ("k", "1")]
    assert Reader(encode_props({mqtt5.USER_PROPERTY: pairs})).props() == {
        mqtt5.USER_PROPERTY: pairs
    }


@pytest.mark.parametrize(
    ("props", "encoded"),
    [
        (None, b"\x00"),
        ({}, b"\x00"),
        ({mqtt5.CONTENT_TYPE: "a"}, b"\x04\x03\x00\x01a"),
        ({mqtt5.MESSAGE_EXPIRY: 30}, b"\x05\x02\x00\x00\x00\x1e"),
        ({mqtt5.RECEIVE_MAXIMUM: 10}, b"\x03\x21\x00\x0a"),
        ({mqtt5.PAYLOAD_FORMAT: 1}, b"\x02\x01\x01"),
        ({mqtt5.CORRELATION_DATA: b"\x01\x02"}, b"\x05\x09\x00\x02\x01\x02"),
        ({mqtt5.SUBSCRIPTION_ID: [200]}, b"\x03\x0b\xc8\x01"),
        ({mqtt5.USER_PROPERTY: [("a", "b")]}, b"\x07\x26\x00\x01a\x00\x01b"),
    ],
)
def test_encode_props_bytes(props: dict[int, Any] | None, encoded: bytes) -> None:
    assert encode_props(props) == encoded
    assert Reader(encoded).props() == (props or {})


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x02\x07\x00", "unknown property 7"),
        (b"\x01\x00", "unknown property 0"),
        (b"\x05\x02\x00\x00", "properties run past the packet"),
        (b"\x03\x03\x00\x05", "ends early"),  # string longer than the packet
        (b"\x04\x03\x00\x01\xff", "invalid UTF-8"),
        (b"\x03\x26\x00\x00", "ends early"),  # user property without its value
        (b"\x80", "ends early"),
        (b"", "ends early"),
    ],
)
def test_reader_props_refuses_malformed(body: bytes, problem: str) -> None:
    with pytest.raises(ProtocolError, match=problem):
        Reader(body).props()


def test_reader_props_refuses_property_straddling_the_declared_length() -> None:
    # Property length 1, but the property (message expiry, 4-byte value) needs 5 bytes.
    with pytest.raises(ProtocolError):
        Reader(b"\x01\x02\x00\x00\x00\x05payload").props()


def test_reader_take_past_the_end_is_a_protocol_error() -> None:
    reader = Reader(b"\x00\x01")
    assert reader.u16() == 1
    assert reader.at_end()
    with pytest.raises(ProtocolError, match="ends early"):
        reader.byte()


# --- PUBLISH

PUBLISH_PROPS: dict[int, Any] = {
    mqtt5.PAYLOAD_FORMAT: 0,
    mqtt5.MESSAGE_EXPIRY: 30,
    mqtt5.CONTENT_TYPE: "application/cbor",
    mqtt5.RESPONSE_TOPIC: "reply/gateway-1/c0ffee",
    mqtt5.CORRELATION_DATA: b"\x00\x01\x02\xff",
    mqtt5.SUBSCRIPTION_ID: [3],
    mqtt5.USER_PROPERTY: [("tenant", "acme"), ("trace", "t-9"), ("no-cloud", "1")],
}


@pytest.mark.parametrize("payload_size", [0, 5, 200, 20_000])
@pytest.mark.parametrize(("qos", "retain"), [(0, False), (1, False), (1, True), (0, True)])
def test_publish_parses_back(qos: int, retain: bool, payload_size: int) -> None:
    payload = bytes(range(256)) * (payload_size // 256) + bytes(payload_size % 256)
    pkt = mqtt5.publish(
        "computation/chat/request",
        payload,
        qos=qos,
        retain=retain,
        packet_id=513,
        props=PUBLISH_PROPS,
    )
    kind, flags, body = split_packet(pkt)
    assert kind == mqtt5.PUBLISH
    assert flags == (qos << 1) | int(retain)
    msg = mqtt5.parse_publish(flags, body)
    assert msg.topic == "computation/chat/request"
    assert msg.payload == payload
    assert msg.qos == qos
    assert msg.retain is retain
    assert msg.packet_id == (513 if qos else 0)
    assert msg.props == PUBLISH_PROPS


def test_publish_qos0_has_no_packet_id_and_empty_props() -> None:
    pkt = mqtt5.publish("a/b", b"x", qos=0, retain=False, packet_id=99, props=None)
    assert pkt == b"\x30\x07\x00\x03a/b\x00x"
    msg = mqtt5.parse_publish(0, pkt[2:])
    assert (msg.topic, msg.payload, msg.packet_id, msg.props) == ("a/b", b"x", 0, {})


def test_publish_qos1_puts_packet_id_after_topic() -> None:
    pkt = mqtt5.publish("t", b"", qos=1, retain=True, packet_id=0x0102, props={})
    assert pkt == b"\x33\x06\x00\x01t\x01\x02\x00"


def test_publish_dup_flag() -> None:
    pkt = mqtt5.publish("t", b"p", qos=1, retain=False, packet_id=7, props=None, dup=True)
    _, flags, body = split_packet(pkt)
    assert flags == 0x08 | 0x02
    msg = mqtt5.parse_publish(flags, body)
    assert (msg.qos, msg.packet_id, msg.payload) == (1, 7, b"p")


@pytest.mark.parametrize("flags", [0x04, 0x05, 0x06, 0x0C])
def test_parse_publish_refuses_qos2_and_qos3(flags: int) -> None:
    body = b"\x00\x01t\x00\x01\x00payload"
    with pytest.raises(ProtocolError, match=r"QoS [23] is not supported"):
        mqtt5.parse_publish(flags, body)


def test_qos2_publish_built_by_publish_is_refused_by_parse_publish() -> None:
    pkt = mqtt5.publish("t", b"p", qos=2, retain=False, packet_id=1, props=None)
    _, flags, body = split_packet(pkt)
    with pytest.raises(ProtocolError):
        mqtt5.parse_publish(flags, body)


@pytest.mark.parametrize(
    ("flags", "body"),
    [
        (0, b""),
        (0, b"\x00"),
        (0, b"\x00\x05abc"),
        (2, b"\x00\x01t\x00"),  # QoS 1 without a full packet id
        (0, b"\x00\x01t"),  # no property length
        (0, b"\x00\x01t\x05\x02\x00"),  # properties past the end
        (0, b"\x00\x02\xc3\x28\x00"),  # invalid UTF-8 topic
    ],
)
def test_parse_publish_refuses_truncated_or_malformed(flags: int, body: bytes) -> None:
    with pytest.raises(ProtocolError):
        mqtt5.parse_publish(flags, body)


# --- acks


def test_puback_success_is_the_short_form() -> None:
    pkt = mqtt5.puback(7)
    assert pkt == b"\x40\x02\x00\x07"
    kind, _, body = split_packet(pkt)
    assert kind == mqtt5.PUBACK
    assert mqtt5.parse_ack(body, many=False) == (7, [0], {})


@pytest.mark.parametrize("reason", [0x10, 0x80, 0x87, 0x97])
def test_puback_with_reason_parses(reason: int) -> None:
    kind, _, body = split_packet(mqtt5.puback(0xBEEF, reason))
    assert kind == mqtt5.PUBACK
    assert mqtt5.parse_ack(body, many=False) == (0xBEEF, [reason], {})


def test_puback_reason_without_properties_parses() -> None:
    assert mqtt5.parse_ack(b"\x00\x07\x80", many=False) == (7, [0x80], {})


def test_puback_with_reason_string_parses() -> None:
    body = b"\x00\x07\x87" + encode_props({mqtt5.REASON_STRING: "not authorized"})
    assert mqtt5.parse_ack(body, many=False) == (7, [0x87], {mqtt5.REASON_STRING: "not authorized"})


def test_suback_parses_every_reason() -> None:
    body = struct.pack("!H", 12) + encode_props({mqtt5.REASON_STRING: "r"}) + b"\x00\x01\x80"
    assert mqtt5.parse_ack(body, many=True) == (12, [0, 1, 0x80], {mqtt5.REASON_STRING: "r"})


@pytest.mark.parametrize(
    ("body", "many"), [(b"", False), (b"\x00", True), (b"\x00\x01\x00\x05", False)]
)
def test_parse_ack_refuses_truncated(body: bytes, many: bool) -> None:
    with pytest.raises(ProtocolError):
        mqtt5.parse_ack(body, many=many)


def test_parse_connack() -> None:
    props = {mqtt5.ASSIGNED_CLIENT_ID: "auto-1", mqtt5.SERVER_KEEP_ALIVE: 30}
    assert mqtt5.parse_connack(b"\x01\x00" + encode_props(props)) == (True, 0, props)
    assert mqtt5.parse_connack(b"\x00\x87") == (False, 0x87, {})
    with pytest.raises(ProtocolError):
        mqtt5.parse_connack(b"\x00")


def test_parse_disconnect() -> None:
    assert mqtt5.parse_disconnect(b"") == (0, {})
    assert mqtt5.parse_disconnect(b"\x8e") == (0x8E, {})
    body = b"\x8b" + encode_props({mqtt5.REASON_STRING: "bye"})
    assert mqtt5.parse_disconnect(body) == (0x8B, {mqtt5.REASON_STRING: "bye"})
    with pytest.raises(ProtocolError):
        mqtt5.parse_disconnect(b"\x8b\x09\x1f")


# --- other packets the client sends


def test_subscribe_packet_layout() -> None:
    kind, flags, body = split_packet(
        mqtt5.subscribe(5, "$share/chat/computation/chat/request", 1, 9)
    )
    assert (kind, flags) == (mqtt5.SUBSCRIBE, 0x02)
    r = Reader(body)
    assert r.u16() == 5
    assert r.props() == {mqtt5.SUBSCRIPTION_ID: [9]}
    assert r.string() == "$share/chat/computation/chat/request"
    assert r.byte() == 1
    assert r.at_end()


def test_unsubscribe_packet_layout() -> None:
    kind, flags, body = split_packet(mqtt5.unsubscribe(6, "reply/gw/#"))
    assert (kind, flags) == (mqtt5.UNSUBSCRIBE, 0x02)
    r = Reader(body)
    assert (r.u16(), r.props(), r.string()) == (6, {}, "reply/gw/#")
    assert r.at_end()


def test_connect_packet_layout() -> None:
    will = mqtt5.WillSpec("slm/nodes/n1/state", b"offline", props={mqtt5.CONTENT_TYPE: "x"})
    pkt = mqtt5.connect(
        "n1",
        keepalive=30,
        clean_start=True,
        props={mqtt5.SESSION_EXPIRY: 0},
        username="u",
        password="p",
        will=will,
    )
    kind, _, body = split_packet(pkt)
    assert kind == mqtt5.CONNECT
    r = Reader(body)
    assert (r.string(), r.byte()) == ("MQTT", 5)
    # username, password, will retain, will QoS 1, will flag, clean start
    assert r.byte() == 0x80 | 0x40 | 0x20 | 0x08 | 0x04 | 0x02
    assert r.u16() == 30
    assert r.props() == {mqtt5.SESSION_EXPIRY: 0}
    assert r.string() == "n1"
    assert r.props() == {mqtt5.CONTENT_TYPE: "x"}
    assert (r.string(), r.binary()) == ("slm/nodes/n1/state", b"offline")
    assert (r.string(), r.binary()) == ("u", b"p")
    assert r.at_end()


def test_reason_text_names_known_and_unknown_codes() -> None:
    assert mqtt5.reason_text(0x87) == "not authorized (0x87)"
    assert mqtt5.reason_text(0x42) == "reason (0x42)"
