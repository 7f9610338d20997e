"""Property and fuzz tests: the codec and the MQTT v5 parser fail only with their own errors.

``decode`` must raise :class:`CodecError` for every bad payload and nothing else; what it
does accept must be a valid message that encodes and decodes to itself. The MQTT v5
parsers must raise only :class:`mqtt5.ProtocolError` on arbitrary bytes.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import cbor2
import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from broker import mqtt5
from broker.codec import CBOR, JSON, decode, encode
from broker.errors import BusError, CodecError, ErrorCode
from broker.messages import (
    ROLES,
    Birth,
    Chat,
    ChatMessage,
    Chunk,
    Embedding,
    Entry,
    ErrorReply,
    Result,
    State,
    Usage,
    kind_class,
    registered_kinds,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


BUILTIN_KINDS = sorted({"embedding", "chat", "chunk", "result", "error", "entry", "birth", "state"})
FIELD_NAMES = sorted(
    {
        "messages", "role", "content", "max_tokens", "temperature", "top_p", "top_k", "stop",
        "stream", "model", "meta", "seq", "text", "usage", "prompt_tokens", "completion_tokens",
        "confidence", "node", "finish_reason", "chunks", "timings", "code", "message", "value",
        "ts", "session", "info", "state", "dtype", "shape", "data",
    }
)  # fmt: skip


def assert_valid(message: Any) -> None:
    """A decoded message is of a registered kind and survives both encodings unchanged."""
    assert message.KIND in registered_kinds()
    assert isinstance(message, kind_class(message.KIND))
    reference = message.to_map(binary=True)
    for content_type in (CBOR, JSON):
        again = decode(encode(message, content_type), content_type)
        assert type(again) is type(message)
        assert again.to_map(binary=True) == reference


# --- strategies

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


def json_values(depth: int = 3) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = json_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    )


JSON_VALUES = json_values()
field_keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)

chat_messages = st.lists(
    st.builds(ChatMessage, st.sampled_from(ROLES), st.text(max_size=40)), min_size=1, max_size=4
).map(tuple)
metas = st.dictionaries(st.text(max_size=8), json_values(2), max_size=4)

chats = st.builds(
    Chat,
    messages=chat_messages,
    max_tokens=st.integers(1, 2**20),
    temperature=st.none() | st.floats(0.0, 5.0),
    top_p=st.none() | st.floats(0.0, 1.0),
    top_k=st.none() | st.integers(0, 2**31),
    stop=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    stream=st.booleans(),
    # decode refuses models longer than 256 characters (the constructor does not check it)
    model=st.none() | st.text(max_size=256),
    meta=metas,
)

SAMPLES: list[Any] = [
    Chat(
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "2+2?")),
        max_tokens=64,
        temperature=0.5,
        top_p=0.9,
        top_k=20,
        stop=("\n",),
        stream=True,
        model="smollm2",
        meta={"tenant": "t"},
    ),
    Result(
        text="4",
        usage=Usage(7, 1),
        confidence=0.9,
        node="n1",
        model="smollm2",
        finish_reason="stop",
        chunks=1,
        timings={"total_ms": 12.5},
        meta={"k": [1, None]},
    ),
    Embedding(
        vector=np.arange(1, 9, dtype="float32").reshape(2, 4) / 8, model="enc", meta={"a": 1}
    ),
    Embedding(vector=np.linspace(-1, 1, 6).astype("float16"), model="enc"),
    Chunk(seq=2, text="tok"),
    ErrorReply(ErrorCode.OVERLOADED, "busy"),
    Entry(value={"x": [1, 2.5, "s"]}, ts=3.0),
    Birth(session=1, info={"capabilities": ["chat"]}),
    State(online=True, session=1, ts=2.0),
]
BASES = [(encode(m, ct), ct) for m in SAMPLES for ct in (CBOR, JSON)]

mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "replace"]),
        st.integers(min_value=0, max_value=1 << 20),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=6,
)


def mutate(payload: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(payload)
    for op, where, byte in ops:
        pos = where % (len(buf) + 1)
        if op == "insert":
            buf.insert(pos, byte)
        elif not buf or pos == len(buf):
            continue
        elif op == "delete":
            del buf[pos]
        elif op == "flip":
            buf[pos] ^= 1 << (byte % 8)
        else:
            buf[pos] = byte
    return bytes(buf)


def try_decode(payload: bytes, content_type: str | None) -> None:
    try:
        message = decode(payload, content_type)
    except CodecError as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event(f"decoded: {message.KIND}")
    assert_valid(message)


# --- (a) arbitrary bytes

arbitrary_payloads = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"{" + b),
    # CBOR map heads, so that the parser gets past the first byte more often
    st.tuples(st.sampled_from([b"\xa1", b"\xa2", b"\xa3", b"\xbf"]), st.binary(max_size=300)).map(
        lambda t: t[0] + t[1]
    ),
)


@FUZZ
@given(payload=arbitrary_payloads, content_type=st.sampled_from([CBOR, JSON, None]))
def test_decode_of_arbitrary_bytes_only_raises_codec_error(
    payload: bytes, content_type: str | None
) -> None:
    try_decode(payload, content_type)


# --- (b) mutated valid payloads


@FUZZ
@given(base=st.sampled_from(BASES), ops=mutations, detect=st.booleans())
def test_mutated_valid_payload_raises_codec_error_or_decodes_valid(
    base: tuple[bytes, str], ops: list[tuple[str, int, int]], detect: bool
) -> None:
    payload, content_type = base
    try_decode(mutate(payload, ops), None if detect else content_type)


def test_bases_decode_unmutated() -> None:
    for payload, content_type in BASES:
        assert_valid(decode(payload, content_type))


# --- (c) random JSON-shaped maps

versions = st.sampled_from([1, 1, 1, 0, 2, "1", True, None, -1, 2**64])
random_bodies = st.builds(
    lambda v, kind, fields: {**fields, "v": v, "kind": kind},
    versions,
    st.sampled_from(BUILTIN_KINDS) | st.text(max_size=8),
    st.dictionaries(field_keys, JSON_VALUES, max_size=8),
)


def as_payloads(body: dict[str, Any]) -> list[tuple[bytes, str | None]]:
    as_json = json.dumps(body, allow_nan=False).encode()
    as_cbor = bytes(cbor2.dumps(body))
    return [(as_json, JSON), (as_json, None), (as_cbor, CBOR), (as_cbor, None)]


@FEW
@given(body=random_bodies)
def test_random_json_shaped_maps_raise_codec_error_or_decode(body: dict[str, Any]) -> None:
    for payload, content_type in as_payloads(body):
        try_decode(payload, content_type)


@st.composite
def near_valid_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message map with one to three fields replaced, added or removed."""
    sample = draw(st.sampled_from(SAMPLES))
    binary = draw(st.booleans())
    body: dict[str, Any] = {"v": 1, "kind": sample.KIND, **sample.to_map(binary=binary)}
    for _ in range(draw(st.integers(1, 3))):
        delete = draw(st.booleans())
        if body and delete:
            del body[draw(st.sampled_from(sorted(body)))]
        else:
            keys = st.sampled_from(sorted(body)) if body else field_keys
            body[draw(keys | field_keys)] = draw(JSON_VALUES)
    return body


@FUZZ
@given(body=near_valid_bodies())
def test_near_valid_maps_raise_codec_error_or_decode(body: dict[str, Any]) -> None:
    payloads: list[tuple[bytes, str | None]]
    if any(isinstance(v, bytes) for v in body.values()):
        payloads = [(bytes(cbor2.dumps(body)), CBOR)]
    else:
        payloads = as_payloads(body)
    for payload, content_type in payloads:
        try_decode(payload, content_type)


# --- (d) round-trip properties


@FEW
@given(message=chats, content_type=st.sampled_from([CBOR, JSON]))
def test_chat_round_trip(message: Chat, content_type: str) -> None:
    assert decode(encode(message, content_type), content_type) == message


@FEW
@given(text=st.text(max_size=200), content_type=st.sampled_from([CBOR, JSON]))
def test_chat_user_round_trip(text: str, content_type: str) -> None:
    out = decode(encode(Chat.user(text), content_type), content_type)
    assert isinstance(out, Chat)
    assert out.messages == (ChatMessage("user", text),)


def finite_arrays(dtype: str, width: Literal[16, 32]) -> st.SearchStrategy[Any]:
    return hnp.arrays(
        dtype=np.dtype(dtype),
        shape=hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=48),
        elements=st.floats(width=width, allow_nan=False, allow_infinity=False),
    )


@FEW
@given(
    vector=finite_arrays("float32", 32) | finite_arrays("float16", 16),
    content_type=st.sampled_from([CBOR, JSON]),
)
def test_embedding_round_trip_is_bit_exact(vector: Any, content_type: str) -> None:
    out = decode(encode(Embedding(vector=vector, model="m"), content_type), content_type)
    assert isinstance(out, Embedding)
    assert out.vector.dtype == vector.dtype
    assert out.vector.shape == vector.shape
    assert out.vector.tobytes() == vector.astype(vector.dtype.newbyteorder("<")).tobytes()


# --- MQTT v5 parsers

packet_bodies = st.binary(max_size=200)


def test_protocol_error_is_a_bus_error() -> None:
    assert issubclass(mqtt5.ProtocolError, BusError)


@FUZZ
@given(flags=st.integers(0, 15), body=packet_bodies)
def test_parse_publish_only_raises_protocol_error(flags: int, body: bytes) -> None:
    try:
        msg = mqtt5.parse_publish(flags, body)
    except mqtt5.ProtocolError:
        return
    assert msg.qos in (0, 1)
    assert msg.retain is bool(flags & 1)
    assert isinstance(msg.topic, str)
    assert body.endswith(msg.payload)


@FUZZ
@given(body=packet_bodies, many=st.booleans())
def test_parse_ack_only_raises_protocol_error(body: bytes, many: bool) -> None:
    try:
        packet_id, reasons, props = mqtt5.parse_ack(body, many=many)
    except mqtt5.ProtocolError:
        return
    assert 0 <= packet_id <= 0xFFFF
    assert all(0 <= r <= 255 for r in reasons)
    assert isinstance(props, dict)


@FUZZ
@given(body=packet_bodies)
def test_parse_connack_only_raises_protocol_error(body: bytes) -> None:
    try:
        present, reason, props = mqtt5.parse_connack(body)
    except mqtt5.ProtocolError:
        return
    assert isinstance(present, bool)
    assert 0 <= reason <= 255
    assert isinstance(props, dict)


@FUZZ
@given(body=packet_bodies)
def test_parse_disconnect_only_raises_protocol_error(body: bytes) -> None:
    try:
        reason, props = mqtt5.parse_disconnect(body)
    except mqtt5.ProtocolError:
        return
    assert 0 <= reason <= 255
    assert isinstance(props, dict)


@FUZZ
@given(body=packet_bodies)
def test_reader_props_only_raises_protocol_error(body: bytes) -> None:
    try:
        props = mqtt5.Reader(body).props()
    except mqtt5.ProtocolError:
        return
    assert set(props) <= set(mqtt5.PROPERTY_TYPES)


@FUZZ
@given(buf=st.binary(max_size=8), pos=st.integers(0, 10))
def test_read_varint_returns_none_a_value_or_raises_protocol_error(buf: bytes, pos: int) -> None:
    try:
        got = mqtt5.read_varint(buf, pos)
    except mqtt5.ProtocolError:
        return
    if got is not None:
        value, end = got
        assert 0 <= value <= mqtt5.MAX_REMAINING
        assert pos < end <= min(pos + 4, len(buf))


def property_value(ident: int) -> st.SearchStrategy[Any]:
    kind = mqtt5.PROPERTY_TYPES[ident]
    if ident == mqtt5.SUBSCRIPTION_ID:
        return st.lists(st.integers(0, mqtt5.MAX_REMAINING), min_size=1, max_size=3)
    if ident == mqtt5.USER_PROPERTY:
        return st.lists(
            st.tuples(st.text(max_size=10), st.text(max_size=10)), min_size=1, max_size=4
        )
    return {
        0: st.integers(0, 0xFF),
        1: st.integers(0, 0xFFFF),
        2: st.integers(0, 0xFFFFFFFF),
        4: st.binary(max_size=40),
        5: st.text(max_size=30),
    }[kind]


props_strategy = st.lists(st.sampled_from(sorted(mqtt5.PROPERTY_TYPES)), unique=True).flatmap(
    lambda ids: st.fixed_dictionaries({i: property_value(i) for i in ids})
)


@FUZZ
@given(props=props_strategy)
def test_props_round_trip(props: dict[int, Any]) -> None:
    reader = mqtt5.Reader(mqtt5.encode_props(props))
    assert reader.props() == props
    assert reader.at_end()


@FUZZ
@given(
    topic=st.text(max_size=60),
    payload=st.binary(max_size=300),
    qos=st.sampled_from([0, 1]),
    retain=st.booleans(),
    packet_id=st.integers(1, 0xFFFF),
    props=props_strategy,
)
def test_publish_round_trip(
    topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, props: dict[int, Any]
) -> None:
    pkt = mqtt5.publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id, props=props)
    assert pkt[0] >> 4 == mqtt5.PUBLISH
    got = mqtt5.read_varint(pkt, 1)
    assert got is not None
    length, start = got
    assert len(pkt) - start == length
    msg = mqtt5.parse_publish(pkt[0] & 0x0F, pkt[start:])
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, payload, qos, retain)
    assert msg.packet_id == (packet_id if qos else 0)
    assert msg.props == props
