"""The envelope codec: round trips for every kind, strict rejection, size limits."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import cbor2
import numpy as np
import pytest

from broker import codec, messages
from broker.codec import CBOR, JSON, MAX_PAYLOAD_BYTES, decode, encode
from broker.errors import BusError, CodecError, ErrorCode, PayloadTooLarge
from broker.fields import FieldReader
from broker.messages import (
    Birth,
    Chat,
    ChatMessage,
    Chunk,
    Embed,
    Embedding,
    Entry,
    ErrorReply,
    Result,
    State,
    Usage,
    kind_class,
    register_kind,
    registered_kinds,
)

BUILTIN_KINDS = {"embedding", "chat", "chunk", "result", "error", "entry", "birth", "state"}
CONTENT_TYPES = [CBOR, JSON]


def roundtrip(message: Any, content_type: str) -> Any:
    return decode(encode(message, content_type), content_type)


def cbor(body: Any) -> bytes:
    return bytes(cbor2.dumps(body))


def js(body: Any) -> bytes:
    return json.dumps(body).encode()


def decode_embedding(payload: bytes, content_type: str | None = None) -> Embedding:
    out = decode(payload, content_type)
    assert isinstance(out, Embedding)
    return out


def chat_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "kind": "chat",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
    }
    body.update(overrides)
    return body


def embedding_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "kind": "embedding",
        "dtype": "float32",
        "shape": [3],
        "data": np.array([0.5, -1.0, 2.0], dtype="<f4").tobytes(),
        "model": "m",
    }
    body.update(overrides)
    return body


# --- round trips

CHAT_FULL = Chat(
    messages=(
        ChatMessage("system", "You are terse."),
        ChatMessage("user", "What is 2+2? ünïcödé ✓"),
        ChatMessage("assistant", "4"),
        ChatMessage("tool", '{"result": 4}'),
    ),
    max_tokens=256,
    temperature=0.7,
    top_p=0.9,
    top_k=40,
    stop=("\n\n", "</s>"),
    stream=True,
    model="smollm2-135m-instruct",
    meta={"tenant": "acme", "trace": "t-1", "nested": {"list": [1, 2.5, None, True]}},
)

RESULT_FULL = Result(
    text="The answer is 4.",
    usage=Usage(prompt_tokens=12, completion_tokens=5),
    confidence=0.83,
    node="jetson-1",
    model="smollm2-135m-instruct",
    finish_reason="stop",
    chunks=5,
    timings={"queue_ms": 1.5, "prompt_ms": 12.25, "total_ms": 40.0},
    meta={"cascade": ["edge"], "escalated": False},
)

SAMPLES: list[Any] = [
    CHAT_FULL,
    Chat.user("hello"),
    Chunk(seq=0, text=""),
    Chunk(seq=41, text=" token"),
    RESULT_FULL,
    Result(text=""),
    Result(text="x", confidence=0.0),
    Result(text="x", confidence=1.0),
    *(ErrorReply(code, f"{code.value} happened") for code in ErrorCode),
    Entry(value={"a": [1, 2.5, "x", None, True, {"b": {"c": [], "d": {}}}]}, ts=1_700_000_000.5),
    Entry(value=None),
    Entry(value="plain"),
    Entry(value=-(2**40)),
    Entry(value=[{"k": "v"}, [[]]]),
    Birth(
        session=3,
        info={
            "capabilities": ["chat", "summarize"],
            "device": "rpi5",
            "limits": {"slots": 2, "max_tokens": 512},
            "expertise": ["arithmetic"],
        },
        ts=12.5,
    ),
    Birth(session=0),
    State(online=True, session=7, ts=1.0),
    State(online=False, session=7),
]


def test_samples_cover_every_builtin_kind() -> None:
    assert {s.KIND for s in SAMPLES} | {"embedding"} == BUILTIN_KINDS
    assert set(registered_kinds()) >= BUILTIN_KINDS
    for kind in BUILTIN_KINDS:
        assert kind == kind_class(kind).KIND


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Any, content_type: str) -> None:
    out = roundtrip(message, content_type)
    assert type(out) is type(message)
    assert out == message


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_reply_round_trip_for_every_code(code: ErrorCode, content_type: str) -> None:
    out = roundtrip(ErrorReply(code, "why"), content_type)
    assert isinstance(out, ErrorReply)
    assert out.code is code
    assert out.message == "why"


def test_error_codes_are_the_documented_closed_set() -> None:
    assert {c.value for c in ErrorCode} >= {
        "bad_request",
        "too_large",
        "unauthorized",
        "overloaded",
        "expired",
        "internal",
    }


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_state_round_trip_keeps_online_flag(content_type: str) -> None:
    online = roundtrip(State(online=True, session=2), content_type)
    offline = roundtrip(State(online=False, session=2), content_type)
    assert (online.online, offline.online) == (True, False)
    body = json.loads(encode(State(online=False, session=2), JSON))
    assert body == {"v": 1, "kind": "state", "state": "offline", "session": 2}


def test_chat_defaults_survive_round_trip() -> None:
    out = roundtrip(Chat.user("hi"), CBOR)
    assert out.messages == (ChatMessage("user", "hi"),)
    assert out.max_tokens == 128
    assert (out.temperature, out.top_p, out.top_k, out.model) == (None, None, None, None)
    assert out.stop == ()
    assert out.stream is False
    assert out.meta == {}


def test_envelope_carries_version_and_kind() -> None:
    for message in SAMPLES:
        for body in (cbor2.loads(encode(message, CBOR)), json.loads(encode(message, JSON))):
            assert body["v"] == 1
            assert body["kind"] == message.KIND


EMBEDDINGS = [
    ("float32", (384,)),
    ("float16", (384,)),
    ("float32", (4, 8)),
    ("float16", (3, 5)),
    ("float32", (1,)),
]


def make_vector(dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize(("dtype", "shape"), EMBEDDINGS)
def test_embedding_round_trip(dtype: str, shape: tuple[int, ...], content_type: str) -> None:
    vec = make_vector(dtype, shape)
    message = Embedding(vector=vec, model="minilm-l6", meta={"window_s": 2.0, "sensor": "imu"})
    out = roundtrip(message, content_type)
    assert isinstance(out, Embedding)
    assert out.dtype == dtype
    assert out.vector.dtype == np.dtype(dtype)
    assert out.vector.shape == shape
    assert out.vector.tobytes() == vec.tobytes()
    assert out.model == "minilm-l6"
    assert out.meta == {"window_s": 2.0, "sensor": "imu"}
    assert not out.vector.flags.writeable


@pytest.mark.parametrize(("dtype", "itemsize"), [("float32", 4), ("float16", 2)])
@pytest.mark.parametrize("dim", [64, 384, 1024])
def test_embedding_cbor_is_compact_bytes(dtype: str, itemsize: int, dim: int) -> None:
    payload = encode(Embedding(vector=make_vector(dtype, (dim,)), model="m"), CBOR)
    body = cbor2.loads(payload)
    assert isinstance(body["data"], bytes)
    assert len(body["data"]) == itemsize * dim
    assert itemsize * dim < len(payload) <= itemsize * dim + 80
    assert len(payload) < len(encode(Embedding(vector=make_vector(dtype, (dim,)), model="m"), JSON))


def test_embedding_cbor_data_is_little_endian() -> None:
    vec = np.array([1.0, -2.5], dtype=">f4")  # big-endian input
    body = cbor2.loads(encode(Embedding(vector=vec, model="m"), CBOR))
    assert body["data"] == np.array([1.0, -2.5], dtype="<f4").tobytes()
    out = decode_embedding(encode(Embedding(vector=vec, model="m")))
    assert out.vector.tolist() == [1.0, -2.5]


def test_embedding_json_data_is_a_list_of_numbers() -> None:
    body = json.loads(
        encode(Embedding(vector=np.array([[0.5, 1.0], [2.0, -3.0]], "f4"), model="m"), JSON)
    )
    assert body["data"] == [0.5, 1.0, 2.0, -3.0]
    assert body["shape"] == [2, 2]
    assert body["dtype"] == "float32"


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embedding_json_accepts_hand_written_list(dtype: str) -> None:
    payload = js(
        {
            "v": 1,
            "kind": "embedding",
            "dtype": dtype,
            "shape": [2, 2],
            "data": [0.5, 1, -2.25, 0],
            "model": "m",
        }
    )
    out = decode_embedding(payload, JSON)
    assert out.vector.dtype == np.dtype(dtype)
    assert out.vector.tolist() == [[0.5, 1.0], [-2.25, 0.0]]
    assert out.meta == {}


@pytest.mark.parametrize(
    "vector",
    [
        np.zeros(3, dtype="float64"),
        np.zeros(3, dtype="int8"),
        np.zeros(0, dtype="float32"),
        np.zeros((2, 2, 2), dtype="float32"),
        np.array([1.0, np.nan], dtype="float32"),
        np.array([np.inf], dtype="float16"),
        [0.1, 0.2],
    ],
    ids=["float64", "int8", "empty", "3d", "nan", "inf", "list"],
)
def test_embedding_constructor_refuses_bad_vectors(vector: Any) -> None:
    with pytest.raises(CodecError):
        Embedding(vector=vector, model="m")


# --- rejections

NAN_CHAT_JSON = (
    b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"x"}],"temperature":NaN}'
)
INF_CHAT_JSON = (
    b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"x"}],"temperature":Infinity}'
)

REJECTIONS: list[Any] = [
    # malformed bytes
    pytest.param(b"\xff\xff\xff", CBOR, id="cbor-garbage"),
    pytest.param(b"\x1c", CBOR, id="cbor-reserved-info"),
    pytest.param(b'{"v": 1,', JSON, id="json-unterminated"),
    pytest.param(b"{v: 1}", JSON, id="json-unquoted-key"),
    pytest.param(b'{"v": 1, "kind": "chunk", "seq": 0, "text": "\xff"}', JSON, id="json-bad-utf8"),
    pytest.param(cbor(chat_body())[:-3], CBOR, id="cbor-truncated"),
    pytest.param(cbor(chat_body())[:1], CBOR, id="cbor-truncated-to-head"),
    # not a map
    pytest.param(cbor([1, 2]), CBOR, id="cbor-list"),
    pytest.param(cbor(5), CBOR, id="cbor-int"),
    pytest.param(cbor("chat"), CBOR, id="cbor-string"),
    pytest.param(cbor(None), CBOR, id="cbor-null"),
    pytest.param(b"[1, 2]", JSON, id="json-list"),
    pytest.param(b"5", JSON, id="json-int"),
    pytest.param(b'"chat"', JSON, id="json-string"),
    pytest.param(b"null", JSON, id="json-null"),
    # version
    *(
        pytest.param(enc({k: w for k, w in chat_body().items() if k != "v"}), ct, id=f"no-v-{ct}")
        for enc, ct in ((cbor, CBOR), (js, JSON))
    ),
    *(
        pytest.param(enc(chat_body(v=v)), ct, id=f"v={v!r}-{ct}")
        for v in (0, 2, "1", True, None, [1])
        for enc, ct in ((cbor, CBOR), (js, JSON))
    ),
    # kind
    pytest.param(js({"v": 1, "messages": []}), JSON, id="no-kind"),
    pytest.param(js(chat_body(kind="chatt")), JSON, id="unknown-kind"),
    pytest.param(cbor(chat_body(kind=5)), CBOR, id="kind-int"),
    pytest.param(cbor(chat_body(kind=None)), CBOR, id="kind-null"),
    # unknown fields
    pytest.param(js(chat_body(max_token=5)), JSON, id="typo-max_token"),
    pytest.param(
        js(chat_body(messages=[{"role": "user", "contents": "x"}])), JSON, id="typo-in-message"
    ),
    pytest.param(
        js({"v": 1, "kind": "result", "text": "x", "usage": {"prompt": 1}}),
        JSON,
        id="typo-in-usage",
    ),
    pytest.param(cbor({**embedding_body(), "extra": 1}), CBOR, id="embedding-extra"),
    # wrong field types
    pytest.param(js(chat_body(max_tokens="128")), JSON, id="max_tokens-str"),
    pytest.param(js(chat_body(max_tokens=1.5)), JSON, id="max_tokens-float"),
    pytest.param(js(chat_body(max_tokens=True)), JSON, id="max_tokens-bool"),
    pytest.param(js(chat_body(stream="yes")), JSON, id="stream-str"),
    pytest.param(js(chat_body(stream=1)), JSON, id="stream-int"),
    pytest.param(js(chat_body(messages={"role": "user"})), JSON, id="messages-map"),
    pytest.param(js(chat_body(messages=["hi"])), JSON, id="message-str"),
    pytest.param(js(chat_body(messages=[{"role": "user", "content": 5}])), JSON, id="content-int"),
    pytest.param(js(chat_body(messages=[{"role": "user"}])), JSON, id="content-missing"),
    pytest.param(js(chat_body(stop="x")), JSON, id="stop-str"),
    pytest.param(js(chat_body(stop=[1])), JSON, id="stop-int-item"),
    pytest.param(js(chat_body(temperature="hot")), JSON, id="temperature-str"),
    pytest.param(js(chat_body(temperature=True)), JSON, id="temperature-bool"),
    pytest.param(js(chat_body(top_k=2.0)), JSON, id="top_k-float"),
    pytest.param(js(chat_body(model=5)), JSON, id="model-int"),
    pytest.param(js(chat_body(meta=[1])), JSON, id="meta-list"),
    pytest.param(cbor(chat_body(meta={1: "x"})), CBOR, id="meta-int-key"),
    pytest.param(cbor(chat_body(meta={"b": b"raw"})), CBOR, id="meta-bytes-value"),
    pytest.param(js({"v": 1, "kind": "chunk", "seq": -1, "text": ""}), JSON, id="seq-negative"),
    pytest.param(js({"v": 1, "kind": "chunk", "seq": "1", "text": ""}), JSON, id="seq-str"),
    pytest.param(js({"v": 1, "kind": "chunk", "seq": 0}), JSON, id="chunk-no-text"),
    pytest.param(js({"v": 1, "kind": "result"}), JSON, id="result-no-text"),
    pytest.param(
        js({"v": 1, "kind": "result", "text": "x", "timings": {"a": "x"}}), JSON, id="timings-str"
    ),
    pytest.param(
        js({"v": 1, "kind": "result", "text": "x", "timings": {"a": True}}), JSON, id="timings-bool"
    ),
    pytest.param(
        js({"v": 1, "kind": "result", "text": "x", "usage": {"prompt_tokens": -1}}),
        JSON,
        id="usage-negative",
    ),
    pytest.param(js({"v": 1, "kind": "result", "text": "x", "usage": 5}), JSON, id="usage-int"),
    pytest.param(
        js({"v": 1, "kind": "state", "state": "maybe", "session": 1}), JSON, id="state-bad"
    ),
    pytest.param(js({"v": 1, "kind": "state", "state": True, "session": 1}), JSON, id="state-bool"),
    pytest.param(js({"v": 1, "kind": "birth", "session": -1}), JSON, id="birth-session-negative"),
    pytest.param(
        js({"v": 1, "kind": "birth", "session": 1, "info": []}), JSON, id="birth-info-list"
    ),
    pytest.param(js({"v": 1, "kind": "entry", "value": 1, "ts": "now"}), JSON, id="entry-ts-str"),
    # NaN and Infinity
    pytest.param(NAN_CHAT_JSON, JSON, id="json-NaN"),
    pytest.param(INF_CHAT_JSON, JSON, id="json-Infinity"),
    pytest.param(b'{"v":1,"kind":"entry","value":[-Infinity]}', JSON, id="json-neg-Infinity"),
    pytest.param(b'{"v":1,"kind":"entry","value":1e400}', JSON, id="json-overflowing-float"),
    pytest.param(cbor(chat_body(temperature=math.nan)), CBOR, id="cbor-nan-temperature"),
    pytest.param(cbor(chat_body(top_p=math.inf)), CBOR, id="cbor-inf-top_p"),
    pytest.param(
        cbor({"v": 1, "kind": "entry", "value": {"x": [math.inf]}}), CBOR, id="cbor-inf-entry"
    ),
    pytest.param(
        cbor({"v": 1, "kind": "entry", "value": 1, "ts": -math.inf}), CBOR, id="cbor-inf-ts"
    ),
    pytest.param(
        cbor({"v": 1, "kind": "result", "text": "x", "confidence": math.nan}),
        CBOR,
        id="cbor-nan-conf",
    ),
    pytest.param(
        cbor({"v": 1, "kind": "result", "text": "x", "timings": {"t": math.nan}}),
        CBOR,
        id="cbor-nan-timing",
    ),
    pytest.param(cbor(chat_body(meta={"x": math.nan})), CBOR, id="cbor-nan-meta"),
    # embedding validation
    pytest.param(cbor(embedding_body(data=b"\x00" * 11)), CBOR, id="emb-bytes-short"),
    pytest.param(cbor(embedding_body(data=b"\x00" * 16)), CBOR, id="emb-bytes-long"),
    pytest.param(cbor(embedding_body(dtype="float16")), CBOR, id="emb-dtype-size-mismatch"),
    pytest.param(js(embedding_body(data=[1.0, 2.0])), JSON, id="emb-list-short"),
    pytest.param(js(embedding_body(shape=[2, 3], data=[0.0] * 5)), JSON, id="emb-list-2d-short"),
    pytest.param(js(embedding_body(data=[1.0, "2", 3.0])), JSON, id="emb-list-str"),
    pytest.param(js(embedding_body(data=[1.0, True, 3.0])), JSON, id="emb-list-bool"),
    pytest.param(js(embedding_body(data=[1.0, [2.0], 3.0])), JSON, id="emb-list-nested"),
    pytest.param(js(embedding_body(data="AAAA")), JSON, id="emb-data-str"),
    pytest.param(cbor(embedding_body(data=None)), CBOR, id="emb-data-null"),
    pytest.param(cbor(embedding_body(dtype="float64", data=b"\x00" * 24)), CBOR, id="emb-float64"),
    pytest.param(cbor(embedding_body(dtype="int8", data=b"\x00" * 3)), CBOR, id="emb-int8"),
    pytest.param(cbor(embedding_body(dtype=None)), CBOR, id="emb-no-dtype"),
    pytest.param(cbor(embedding_body(dtype=4)), CBOR, id="emb-dtype-int"),
    pytest.param(cbor(embedding_body(shape=[0], data=b"")), CBOR, id="emb-shape-zero"),
    pytest.param(cbor(embedding_body(shape=[-3])), CBOR, id="emb-shape-negative"),
    pytest.param(cbor(embedding_body(shape=[True, 3])), CBOR, id="emb-shape-bool"),
    pytest.param(cbor(embedding_body(shape=[3, 0])), CBOR, id="emb-shape-2d-zero"),
    pytest.param(cbor(embedding_body(shape=[])), CBOR, id="emb-shape-empty"),
    pytest.param(cbor(embedding_body(shape=[1, 1, 3])), CBOR, id="emb-shape-3d"),
    pytest.param(cbor(embedding_body(shape=[3.0])), CBOR, id="emb-shape-float"),
    pytest.param(cbor(embedding_body(shape=3)), CBOR, id="emb-shape-int"),
    pytest.param(cbor(embedding_body(shape=None)), CBOR, id="emb-shape-missing"),
    pytest.param(
        cbor(embedding_body(shape=[2**20 + 1], data=b"")), CBOR, id="emb-shape-too-many-values"
    ),
    pytest.param(
        cbor(embedding_body(shape=[2**40, 2**40], data=b"")),
        CBOR,
        id="emb-shape-overflowing-product",
    ),
    pytest.param(
        cbor(embedding_body(data=np.array([1, np.nan, 2], "<f4").tobytes())), CBOR, id="emb-nan"
    ),
    pytest.param(
        cbor(embedding_body(data=np.array([1, np.inf, 2], "<f4").tobytes())), CBOR, id="emb-inf"
    ),
    pytest.param(
        cbor(embedding_body(dtype="float16", data=np.array([1, -np.inf, 2], "<f2").tobytes())),
        CBOR,
        id="emb-f16-inf",
    ),
    pytest.param(js(embedding_body(data=None, dtype="float32")), JSON, id="emb-json-null-data"),
    pytest.param(
        b'{"v":1,"kind":"embedding","dtype":"float32","shape":[1],"data":[1e400],"model":"m"}',
        JSON,
        id="emb-json-inf",
    ),
    pytest.param(cbor(embedding_body(model=None)), CBOR, id="emb-no-model"),
    # chat validation
    pytest.param(js(chat_body(messages=[])), JSON, id="chat-empty-messages"),
    pytest.param(js(chat_body(messages=None)), JSON, id="chat-null-messages"),
    pytest.param(js(chat_body(messages=[{"role": "admin", "content": "x"}])), JSON, id="bad-role"),
    pytest.param(js(chat_body(max_tokens=0)), JSON, id="max_tokens-0"),
    pytest.param(js(chat_body(max_tokens=-5)), JSON, id="max_tokens-negative"),
    pytest.param(js(chat_body(max_tokens=2**20 + 1)), JSON, id="max_tokens-huge"),
    pytest.param(js(chat_body(max_tokens=10**30)), JSON, id="max_tokens-bigint"),
    pytest.param(js(chat_body(temperature=5.01)), JSON, id="temperature-high"),
    pytest.param(js(chat_body(temperature=-0.1)), JSON, id="temperature-negative"),
    pytest.param(js(chat_body(top_p=1.5)), JSON, id="top_p-high"),
    pytest.param(js(chat_body(top_k=-1)), JSON, id="top_k-negative"),
    pytest.param(js(chat_body(model="m" * 257)), JSON, id="model-too-long"),
    # result and error validation
    pytest.param(
        js({"v": 1, "kind": "result", "text": "x", "confidence": 1.5}), JSON, id="conf-1.5"
    ),
    pytest.param(
        js({"v": 1, "kind": "result", "text": "x", "confidence": -0.01}), JSON, id="conf-negative"
    ),
    pytest.param(
        js({"v": 1, "kind": "error", "code": "nope", "message": "m"}), JSON, id="bad-code"
    ),
    pytest.param(
        js({"v": 1, "kind": "error", "code": "BAD_REQUEST", "message": "m"}), JSON, id="code-upper"
    ),
    pytest.param(js({"v": 1, "kind": "error", "message": "m"}), JSON, id="no-code"),
    pytest.param(js({"v": 1, "kind": "error", "code": "internal"}), JSON, id="no-message"),
    pytest.param(js({"v": 1, "kind": "error", "code": 500, "message": "m"}), JSON, id="code-int"),
    # unsupported content type and empty payload
    pytest.param(js(chat_body()), "text/plain", id="text-plain"),
    pytest.param(cbor(chat_body()), "application/octet-stream", id="octet-stream"),
    pytest.param(js(chat_body()), "application/jsonx", id="jsonx"),
    pytest.param(b"", CBOR, id="empty-cbor"),
    pytest.param(b"", JSON, id="empty-json"),
    pytest.param(b"", None, id="empty-none"),
    # payload in the wrong encoding for its content type
    pytest.param(js(chat_body()), CBOR, id="json-as-cbor"),
    pytest.param(cbor(chat_body()), JSON, id="cbor-as-json"),
]


@pytest.mark.parametrize(("payload", "content_type"), REJECTIONS)
def test_decode_rejects_with_codec_error(payload: bytes, content_type: str | None) -> None:
    with pytest.raises(CodecError) as info:
        decode(payload, content_type)
    assert type(info.value) is CodecError  # not PayloadTooLarge: these are all small
    assert info.value.code is ErrorCode.BAD_REQUEST


def test_valid_bodies_used_by_rejections_do_decode() -> None:
    # The rejection cases above mutate these; make sure the unmutated ones are valid.
    assert isinstance(decode(js(chat_body()), JSON), Chat)
    assert isinstance(decode(cbor(chat_body())), Chat)
    emb = decode_embedding(cbor(embedding_body()))
    assert emb.vector.tolist() == [0.5, -1.0, 2.0]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (js(chat_body(max_token=5)), "unknown field.*'max_token'"),
        (js(chat_body(v=2)), "unsupported schema version 2"),
        (js({k: v for k, v in chat_body().items() if k != "v"}), "schema version None"),
        (js(chat_body(kind="chatt")), "unknown message kind 'chatt'"),
        (cbor([1]), "must be a map, got list"),
        (js(chat_body(max_tokens=0)), "'max_tokens'=0 is out of range"),
        (js(chat_body(messages=[{"role": "admin", "content": "x"}])), "role must be one of"),
        (js({"v": 1, "kind": "error", "code": "nope", "message": "m"}), "'nope' is not a known"),
        (NAN_CHAT_JSON, "NaN"),
        (cbor(embedding_body(data=b"\x00" * 11)), "11 bytes.*needs 12"),
        (cbor(embedding_body(dtype="float64")), "float32 or float16"),
    ],
)
def test_decode_error_messages_name_the_problem(payload: bytes, match: str) -> None:
    with pytest.raises(CodecError, match=match):
        decode(payload)


@pytest.mark.parametrize("payload", ["{}", None, 5, memoryview(b"{}")])
def test_decode_refuses_non_bytes(payload: Any) -> None:
    with pytest.raises(CodecError, match="payload must be bytes"):
        decode(payload)


def test_decode_accepts_bytearray() -> None:
    assert decode(bytearray(encode(Chunk(1, "a")))) == Chunk(1, "a")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", ""])
def test_encode_refuses_unsupported_content_type(content_type: str) -> None:
    with pytest.raises(CodecError, match="unsupported content type"):
        encode(Chunk(0, "x"), content_type)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_encode_json_refuses_non_finite_numbers(value: float) -> None:
    # Entry.ts is not range-checked by the constructor; the JSON encoder must still refuse.
    with pytest.raises(CodecError, match="cannot encode entry"):
        encode(Entry(value=1, ts=value), JSON)


def test_constructors_refuse_invalid_values() -> None:
    with pytest.raises(CodecError):
        Entry(value={"x": math.inf})
    with pytest.raises(CodecError):
        Entry(value={1: "int key"})
    with pytest.raises(CodecError):
        Result(text="x", confidence=1.5)
    with pytest.raises(CodecError):
        Chat.user("x", temperature=math.nan)
    with pytest.raises(CodecError):
        Chat(messages=())
    with pytest.raises(CodecError):
        Chat.user("x", max_tokens=0)
    with pytest.raises(CodecError):
        ChatMessage("admin", "x")  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        Chunk(seq=-1, text="x")


# --- bugs found while writing these tests, now fixed


@pytest.mark.parametrize(("dtype", "value"), [("float16", 70000.0), ("float32", 1e39)])
def test_json_embedding_value_beyond_dtype_range_is_a_codec_error(dtype: str, value: float) -> None:
    payload = js(embedding_body(dtype=dtype, shape=[1], data=[value]))
    with pytest.raises(CodecError):
        decode(payload, JSON)


@pytest.mark.parametrize("usage", [0, False, [], ""], ids=repr)
def test_result_usage_must_be_a_map(usage: Any) -> None:
    with pytest.raises(CodecError):
        decode(js({"v": 1, "kind": "result", "text": "x", "usage": usage}), JSON)


def test_error_reply_longer_than_decode_accepts_is_refused_at_construction() -> None:
    with pytest.raises(CodecError):
        ErrorReply(ErrorCode.INTERNAL, "traceback line\n" * 400)


def test_json_lone_surrogate_is_refused_or_re_encodable() -> None:
    payload = b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"\\ud800"}]}'
    try:
        message = decode(payload, JSON)
    except CodecError:
        return
    assert decode(encode(message, CBOR)) == message


# --- size limits


def test_payload_too_large_is_a_codec_error_with_code_too_large() -> None:
    assert issubclass(PayloadTooLarge, CodecError)
    assert issubclass(CodecError, BusError)
    assert issubclass(CodecError, ValueError)
    assert PayloadTooLarge.code is ErrorCode.TOO_LARGE
    assert CodecError.code is ErrorCode.BAD_REQUEST


def padded_json(size: int) -> bytes:
    payload = js({"v": 1, "kind": "chunk", "seq": 0, "text": "x"})
    return payload + b" " * (size - len(payload))


@pytest.mark.parametrize("content_type", [CBOR, JSON, None])
def test_decode_refuses_payload_one_byte_over_the_limit(content_type: str | None) -> None:
    with pytest.raises(PayloadTooLarge) as info:
        decode(padded_json(MAX_PAYLOAD_BYTES + 1), content_type)
    assert info.value.code is ErrorCode.TOO_LARGE
    assert str(MAX_PAYLOAD_BYTES) in str(info.value)


def test_decode_accepts_payload_exactly_at_the_limit() -> None:
    payload = padded_json(MAX_PAYLOAD_BYTES)
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert decode(payload, JSON) == Chunk(0, "x")


def test_decode_size_check_comes_before_parsing() -> None:
    with pytest.raises(PayloadTooLarge):
        decode(b"\xff" * (MAX_PAYLOAD_BYTES + 1), CBOR)


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_encode_refuses_too_large_embedding(content_type: str) -> None:
    vec = np.ones(MAX_PAYLOAD_BYTES // 4 + 1, dtype="float32")
    with pytest.raises(PayloadTooLarge) as info:
        encode(Embedding(vector=vec, model="m"), content_type)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_largest_float32_embedding_under_the_limit_encodes() -> None:
    vec = np.ones(MAX_PAYLOAD_BYTES // 4 - 32, dtype="float32")
    payload = encode(Embedding(vector=vec, model="m"), CBOR)
    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert decode_embedding(payload).vector.shape == vec.shape


def test_custom_max_bytes() -> None:
    message = Chunk(seq=0, text="x" * 100)
    payload = encode(message)
    with pytest.raises(PayloadTooLarge):
        encode(message, max_bytes=len(payload) - 1)
    assert encode(message, max_bytes=len(payload)) == payload
    with pytest.raises(PayloadTooLarge):
        decode(payload, max_bytes=len(payload) - 1)
    assert decode(payload, max_bytes=len(payload)) == message
    big = padded_json(MAX_PAYLOAD_BYTES + 10)
    assert decode(big, JSON, max_bytes=MAX_PAYLOAD_BYTES + 10) == Chunk(0, "x")


# --- content type detection


@pytest.mark.parametrize("content_type", [None, ""])
def test_missing_content_type_detects_json(content_type: str | None) -> None:
    payload = encode(CHAT_FULL, JSON)
    assert payload[:1] == b"{"
    assert decode(payload, content_type) == CHAT_FULL


@pytest.mark.parametrize("content_type", [None, ""])
def test_missing_content_type_defaults_to_cbor(content_type: str | None) -> None:
    assert decode(encode(RESULT_FULL, CBOR), content_type) == RESULT_FULL


@pytest.mark.parametrize(
    ("content_type", "binary"),
    [
        ("application/json; charset=utf-8", False),
        ("Application/JSON", False),
        (" application/json ;charset=utf-8", False),
        ("application/cbor; x=y", True),
        ("APPLICATION/CBOR", True),
    ],
)
def test_content_type_with_parameters_and_case(content_type: str, binary: bool) -> None:
    payload = encode(CHAT_FULL, content_type)
    assert (payload[:1] != b"{") is binary
    assert decode(payload, content_type) == CHAT_FULL


def test_default_content_type_is_cbor() -> None:
    assert encode(CHAT_FULL) == encode(CHAT_FULL, CBOR)
    assert codec.CONTENT_TYPES == (CBOR, JSON) == ("application/cbor", "application/json")


def test_json_encoding_is_compact_and_parses_as_plain_json() -> None:
    payload = encode(Chunk(3, "hi"), JSON)
    assert payload == b'{"v":1,"kind":"chunk","seq":3,"text":"hi"}'


# --- the kind registry


def test_register_kind_refuses_a_different_class_under_an_existing_kind() -> None:
    @dataclass(frozen=True)
    class FakeChat:
        KIND: ClassVar[str] = "chat"

        def to_map(self, *, binary: bool) -> dict[str, Any]:
            return {}

        @classmethod
        def from_map(cls, reader: FieldReader) -> FakeChat:
            return cls()

    with pytest.raises(ValueError, match="'chat' is already registered"):
        register_kind(FakeChat)
    assert kind_class("chat") is Chat
    assert isinstance(decode(js(chat_body())), Chat)


def test_register_kind_is_idempotent_for_the_same_class() -> None:
    assert register_kind(Chat) is Chat
    assert kind_class("chat") is Chat


def test_register_kind_makes_a_new_kind_decodable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "_KINDS", dict(messages._KINDS))

    @register_kind
    @dataclass(frozen=True)
    class Ping:
        KIND: ClassVar[str] = "test_ping"
        n: int

        def to_map(self, *, binary: bool) -> dict[str, Any]:
            return {"n": self.n}

        @classmethod
        def from_map(cls, reader: FieldReader) -> Ping:
            out = cls(reader.integer("n"))
            reader.finish()
            return out

    assert "test_ping" in registered_kinds()
    assert decode(encode(Ping(5), JSON)) == Ping(5)
    with pytest.raises(CodecError, match="unknown field"):
        decode(js({"v": 1, "kind": "test_ping", "n": 1, "m": 2}))


def test_unknown_kind_lookup_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="unknown message kind"):
        kind_class("nope")


@pytest.mark.parametrize("content_type", [CBOR, JSON])
def test_embed_request_round_trips_and_validates(content_type: str) -> None:
    message = Embed(("heart rate 150", "air quality poor"), model="m", normalize=False)
    assert decode(encode(message, content_type), content_type) == message
    bads: list[dict[str, Any]] = [
        {"texts": []},
        {"texts": [""]},
        {"texts": [1]},
        {"texts": ["x"] * 65},
        {"texts": ["x"], "normalise": True},
    ]
    for bad in bads:
        with pytest.raises(CodecError):
            decode(json.dumps({"v": 1, "kind": "embed", **bad}).encode(), JSON)
