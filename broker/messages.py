"""Wire messages: one frozen dataclass per ``kind``, each validating itself.

A payload is a map ``{"v": 1, "kind": ..., ...fields}``. Classes register their
kind with :func:`register_kind`; other packages may register kinds of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar

import numpy as np
import numpy.typing as npt

from broker.errors import CodecError, ErrorCode, TopicError
from broker.fields import FieldReader, check_plain, check_text
from broker.topics import validate_id

SCHEMA_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")
DTYPES: dict[str, np.dtype[Any]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
MAX_DIM = 1 << 20
MAX_ERROR_MESSAGE = 4096
MAX_NAME = 256
MAX_EMBED_TEXTS = 64


class WireMessage(Protocol):
    """What every message class provides."""

    KIND: ClassVar[str]

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        """Fields (without ``v`` and ``kind``); ``binary`` is False for JSON."""
        ...

    @classmethod
    def from_map(cls, reader: FieldReader) -> Self:
        """Build from a reader positioned on the message map."""
        ...


_KINDS: dict[str, type[WireMessage]] = {}
M = TypeVar("M", bound=type[WireMessage])


def register_kind(cls: M) -> M:
    """Class decorator: make ``cls.KIND`` decodable."""
    kind = cls.KIND
    if kind in _KINDS and _KINDS[kind] is not cls:
        raise ValueError(f"message kind {kind!r} is already registered")
    _KINDS[kind] = cls
    return cls


def kind_class(kind: str) -> type[WireMessage]:
    try:
        return _KINDS[kind]
    except KeyError:
        raise CodecError(f"unknown message kind {kind!r}") from None


def registered_kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


# --- embeddings -----------------------------------------------------------------


def _freeze(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    array.setflags(write=False)
    return array


@register_kind
@dataclass(frozen=True, slots=True)
class Embedding:
    """A vector (or batch) with what it means: compact typed array on CBOR."""

    KIND: ClassVar[str] = "embedding"
    vector: npt.NDArray[Any]
    model: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.vector, np.ndarray):
            raise CodecError("embedding.vector must be a numpy array")
        name = self.vector.dtype.name
        if name not in DTYPES:
            raise CodecError(f"embedding dtype must be float32 or float16, not {name}")
        if self.vector.size == 0 or self.vector.size > MAX_DIM or self.vector.ndim > 2:
            raise CodecError("embedding must be 1-D or 2-D with 1..1048576 values")
        if not np.all(np.isfinite(self.vector)):
            raise CodecError("embedding values must be finite")
        check_plain(self.meta, "embedding.meta")

    @property
    def dtype(self) -> str:
        return self.vector.dtype.name

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        vec = self.vector.astype(DTYPES[self.dtype], copy=False)
        data: Any = vec.tobytes() if binary else vec.astype(np.float64).ravel().tolist()
        return {
            "dtype": self.dtype,
            "shape": list(vec.shape),
            "data": data,
            "model": self.model,
            "meta": self.meta,
        }

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        dtype_name = r.string("dtype", max_len=16)
        if dtype_name not in DTYPES:
            raise CodecError(f"embedding dtype must be float32 or float16, not {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        shape = r.sequence("shape", required=True)
        if not 1 <= len(shape) <= 2 or any(
            isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape
        ):
            raise CodecError("embedding.shape must be 1 or 2 positive integers")
        count = int(np.prod(shape))
        if count > MAX_DIM:
            raise CodecError("embedding has too many values")
        raw = r.raw("data")
        if isinstance(raw, bytes | bytearray):
            if len(raw) != count * dtype.itemsize:
                raise CodecError(
                    f"embedding.data has {len(raw)} bytes, shape {shape} of {dtype_name} "
                    f"needs {count * dtype.itemsize}"
                )
            vec = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape)
        elif isinstance(raw, list):
            if len(raw) != count or any(
                isinstance(x, bool) or not isinstance(x, int | float) for x in raw
            ):
                raise CodecError(f"embedding.data must be {count} numbers")
            wide = np.asarray(raw, dtype=np.float64)
            if not np.all(np.isfinite(wide)) or np.abs(wide).max() > np.finfo(dtype).max:
                raise CodecError(f"embedding values must be finite and fit {dtype_name}")
            vec = wide.astype(dtype).reshape(shape)
        else:
            raise CodecError("embedding.data must be bytes or a list of numbers")
        out = cls(
            vector=_freeze(vec.astype(dtype.newbyteorder("="))),
            model=r.string("model"),
            meta=r.mapping("meta"),
        )
        r.finish()
        return out


@register_kind
@dataclass(frozen=True, slots=True)
class Embed:
    """A request for embeddings of ``texts``; the reply is an ``embedding`` (one row each)."""

    KIND: ClassVar[str] = "embed"
    texts: tuple[str, ...]
    model: str | None = None
    normalize: bool = True

    def __post_init__(self) -> None:
        if not 1 <= len(self.texts) <= MAX_EMBED_TEXTS:
            raise CodecError(f"embed.texts must hold 1 to {MAX_EMBED_TEXTS} texts")
        if any(not isinstance(t, str) or not t for t in self.texts):
            raise CodecError("embed.texts must be non-empty strings")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {"texts": list(self.texts), "normalize": self.normalize}
        if self.model is not None:
            out["model"] = self.model
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        texts = r.sequence("texts", required=True)
        for i, text in enumerate(texts):
            if isinstance(text, str):
                check_text(text, f"embed.texts[{i}]")
        out = cls(
            texts=tuple(texts),
            model=r.opt_string("model", max_len=MAX_NAME),
            normalize=r.flag("normalize", default=True),
        )
        r.finish()
        return out


# --- chat request and its replies --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Literal["system", "user", "assistant", "tool"]
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise CodecError(f"chat message role must be one of {ROLES}, not {self.role!r}")
        if not isinstance(self.content, str):
            raise CodecError("chat message content must be a string")


def _chat_message(value: Any, index: int) -> ChatMessage:
    r = FieldReader(value, f"chat.messages[{index}]")
    role = r.string("role", max_len=16)
    msg = ChatMessage(role=role, content=r.string("content"))  # type: ignore[arg-type]
    r.finish()
    return msg


@register_kind
@dataclass(frozen=True, slots=True)
class Chat:
    """A chat completion request."""

    KIND: ClassVar[str] = "chat"
    messages: tuple[ChatMessage, ...]
    max_tokens: int = 128
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    model: str | None = None
    domain: str | None = None  # the classified domain (gateway), for expertise and gaps
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.domain is not None:
            try:
                validate_id(self.domain, "chat.domain")
            except TopicError as exc:
                raise CodecError(str(exc)) from None
        if not self.messages:
            raise CodecError("chat.messages must not be empty")
        if not 1 <= self.max_tokens <= 1 << 20:
            raise CodecError("chat.max_tokens must be between 1 and 1048576")
        if self.temperature is not None and not 0.0 <= self.temperature <= 5.0:
            raise CodecError("chat.temperature must be between 0 and 5")
        if self.top_p is not None and not 0.0 <= self.top_p <= 1.0:
            raise CodecError("chat.top_p must be between 0 and 1")
        if self.top_k is not None and self.top_k < 0:
            raise CodecError("chat.top_k must not be negative")
        if self.model is not None and len(self.model) > MAX_NAME:
            raise CodecError(f"chat.model is longer than {MAX_NAME}")
        check_plain(self.meta, "chat.meta")

    @classmethod
    def user(cls, text: str, **kwargs: Any) -> Chat:
        """A one-turn request."""
        return cls(messages=(ChatMessage("user", text),), **kwargs)

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "max_tokens": self.max_tokens,
            "stream": self.stream,
        }
        for name in ("temperature", "top_p", "top_k", "model", "domain"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.stop:
            out["stop"] = list(self.stop)
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        raw_messages = r.sequence("messages", required=True)
        stop = r.sequence("stop")
        if any(not isinstance(s, str) for s in stop):
            raise CodecError("chat.stop must be a list of strings")
        out = cls(
            messages=tuple(_chat_message(m, i) for i, m in enumerate(raw_messages)),
            max_tokens=r.opt_integer("max_tokens", lo=1, hi=1 << 20) or 128,
            temperature=r.opt_number("temperature", lo=0.0, hi=5.0),
            top_p=r.opt_number("top_p", lo=0.0, hi=1.0),
            top_k=r.opt_integer("top_k", lo=0),
            stop=tuple(stop),
            stream=r.flag("stream"),
            model=r.opt_string("model", max_len=MAX_NAME),
            domain=r.opt_string("domain", max_len=64),
            meta=r.mapping("meta"),
        )
        r.finish()
        return out


@register_kind
@dataclass(frozen=True, slots=True)
class Chunk:
    """Streamed tokens; ``seq`` counts from 0 within one reply."""

    KIND: ClassVar[str] = "chunk"
    seq: int
    text: str

    def __post_init__(self) -> None:
        if self.seq < 0:
            raise CodecError("chunk.seq must not be negative")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        return {"seq": self.seq, "text": self.text}

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        out = cls(seq=r.integer("seq", lo=0), text=r.string("text"))
        r.finish()
        return out


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@register_kind
@dataclass(frozen=True, slots=True)
class Result:
    """The final answer to a request. ``chunks`` says how many chunks preceded it."""

    KIND: ClassVar[str] = "result"
    text: str
    usage: Usage = Usage()
    confidence: float | None = None
    node: str | None = None
    model: str | None = None
    finish_reason: str | None = None
    chunks: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise CodecError("result.confidence must be between 0 and 1")
        for name, value, limit in (
            ("node", self.node, MAX_NAME),
            ("model", self.model, MAX_NAME),
            ("finish_reason", self.finish_reason, 64),
        ):
            if value is not None and len(value) > limit:
                raise CodecError(f"result.{name} is longer than {limit}")
        check_plain(self.meta, "result.meta")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {
            "text": self.text,
            "usage": {
                "prompt_tokens": self.usage.prompt_tokens,
                "completion_tokens": self.usage.completion_tokens,
            },
            "chunks": self.chunks,
        }
        for name in ("confidence", "node", "model", "finish_reason"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.timings:
            out["timings"] = self.timings
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        raw_usage = r.raw("usage", required=False)
        ur = FieldReader({} if raw_usage is None else raw_usage, "result.usage")
        usage = Usage(
            prompt_tokens=ur.opt_integer("prompt_tokens", lo=0) or 0,
            completion_tokens=ur.opt_integer("completion_tokens", lo=0) or 0,
        )
        ur.finish()
        timings = r.mapping("timings")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in timings.values()):
            raise CodecError("result.timings values must be numbers")
        out = cls(
            text=r.string("text"),
            usage=usage,
            confidence=r.opt_number("confidence", lo=0.0, hi=1.0),
            node=r.opt_string("node", max_len=MAX_NAME),
            model=r.opt_string("model", max_len=MAX_NAME),
            finish_reason=r.opt_string("finish_reason", max_len=64),
            chunks=r.opt_integer("chunks", lo=0) or 0,
            timings={k: float(v) for k, v in timings.items()},
            meta=r.mapping("meta"),
        )
        r.finish()
        return out


@register_kind
@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error; ``code`` is one of the closed set in :class:`ErrorCode`."""

    KIND: ClassVar[str] = "error"
    code: ErrorCode
    message: str

    def __post_init__(self) -> None:
        if not isinstance(self.code, ErrorCode):
            raise CodecError(f"error.code must be an ErrorCode, not {self.code!r}")
        if len(self.message) > MAX_ERROR_MESSAGE:
            raise CodecError(f"error.message is longer than {MAX_ERROR_MESSAGE}")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        return {"code": self.code.value, "message": self.message}

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        code = r.string("code", max_len=32)
        try:
            parsed = ErrorCode(code)
        except ValueError:
            raise CodecError(f"error.code {code!r} is not a known error code") from None
        out = cls(code=parsed, message=r.string("message", max_len=MAX_ERROR_MESSAGE))
        r.finish()
        return out


# --- CMS entries ------------------------------------------------------------------


@register_kind
@dataclass(frozen=True, slots=True)
class Entry:
    """A CMS value: any JSON-shaped value, stamped with its writer's clock."""

    KIND: ClassVar[str] = "entry"
    value: Any
    ts: float | None = None

    def __post_init__(self) -> None:
        check_plain(self.value, "entry.value")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {"value": self.value}
        if self.ts is not None:
            out["ts"] = self.ts
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        out = cls(value=r.plain("value"), ts=r.opt_number("ts"))
        r.finish()
        return out


@register_kind
@dataclass(frozen=True, slots=True)
class Birth:
    """A node's birth certificate: what it offers, under one session number."""

    KIND: ClassVar[str] = "birth"
    session: int
    info: dict[str, Any] = field(default_factory=dict)
    ts: float | None = None

    def __post_init__(self) -> None:
        if self.session < 0:
            raise CodecError("birth.session must not be negative")
        check_plain(self.info, "birth.info")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {"session": self.session, "info": self.info}
        if self.ts is not None:
            out["ts"] = self.ts
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        out = cls(session=r.integer("session", lo=0), info=r.mapping("info"), ts=r.opt_number("ts"))
        r.finish()
        return out


@register_kind
@dataclass(frozen=True, slots=True)
class State:
    """Online or offline, for one session; the will carries ``offline``."""

    KIND: ClassVar[str] = "state"
    online: bool
    session: int
    ts: float | None = None

    def __post_init__(self) -> None:
        if self.session < 0:
            raise CodecError("state.session must not be negative")

    def to_map(self, *, binary: bool) -> dict[str, Any]:
        del binary
        out: dict[str, Any] = {
            "state": "online" if self.online else "offline",
            "session": self.session,
        }
        if self.ts is not None:
            out["ts"] = self.ts
        return out

    @classmethod
    def from_map(cls, r: FieldReader) -> Self:
        state = r.string("state", max_len=16)
        if state not in ("online", "offline"):
            raise CodecError("state.state must be 'online' or 'offline'")
        out = cls(
            online=state == "online", session=r.integer("session", lo=0), ts=r.opt_number("ts")
        )
        r.finish()
        return out


Decoder = Callable[[Mapping[str, Any]], WireMessage]
