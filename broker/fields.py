"""Strict reading of decoded wire maps: every problem becomes a :class:`CodecError`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from broker.errors import CodecError

JSON_SCALARS = (str, int, float, bool, type(None))
MAX_DEPTH = 16


class FieldReader:
    """Reads typed fields from one decoded map and refuses fields nobody read.

    ``finish()`` raises when the map holds a key that no accessor asked for, so a
    typo in a hand-written JSON message is reported instead of silently ignored.
    """

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        if not isinstance(data, Mapping):
            raise CodecError(f"{where}: expected a map, got {type(data).__name__}")
        self._data = data
        self._where = where
        self._seen: set[str] = set()

    def _get(self, name: str, required: bool) -> Any:
        self._seen.add(name)
        if name not in self._data or self._data[name] is None:
            if required:
                raise CodecError(f"{self._where}: missing field {name!r}")
            return None
        return self._data[name]

    def string(self, name: str, *, max_len: int = 1 << 20) -> str:
        value = self._get(name, True)
        return self._check_str(name, value, max_len)

    def opt_string(self, name: str, *, max_len: int = 1 << 20) -> str | None:
        value = self._get(name, False)
        return None if value is None else self._check_str(name, value, max_len)

    def integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
        return self._check_int(name, self._get(name, True), lo, hi)

    def opt_integer(self, name: str, *, lo: int | None = None, hi: int | None = None) -> int | None:
        value = self._get(name, False)
        return None if value is None else self._check_int(name, value, lo, hi)

    def number(self, name: str, *, lo: float | None = None, hi: float | None = None) -> float:
        return self._check_float(name, self._get(name, True), lo, hi)

    def opt_number(
        self, name: str, *, lo: float | None = None, hi: float | None = None
    ) -> float | None:
        value = self._get(name, False)
        return None if value is None else self._check_float(name, value, lo, hi)

    def flag(self, name: str, *, default: bool = False) -> bool:
        value = self._get(name, False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise CodecError(f"{self._where}: field {name!r} must be a boolean")
        return value

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any]:
        value = self._get(name, required)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise CodecError(f"{self._where}: field {name!r} must be a map")
        check_plain(value, f"{self._where}.{name}")
        return dict(value)

    def sequence(self, name: str, *, required: bool = False) -> list[Any]:
        value = self._get(name, required)
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise CodecError(f"{self._where}: field {name!r} must be a list")
        return list(value)

    def plain(self, name: str) -> Any:
        value = self._get(name, False)
        check_plain(value, f"{self._where}.{name}")
        return value

    def raw(self, name: str, *, required: bool = True) -> Any:
        return self._get(name, required)

    def finish(self) -> None:
        extra = set(self._data) - self._seen
        if extra:
            names = ", ".join(sorted(repr(k) for k in extra))
            raise CodecError(f"{self._where}: unknown field(s) {names}")

    def _check_str(self, name: str, value: Any, max_len: int) -> str:
        if not isinstance(value, str):
            raise CodecError(f"{self._where}: field {name!r} must be a string")
        check_text(value, f"{self._where}.{name}")
        if len(value) > max_len:
            raise CodecError(f"{self._where}: field {name!r} is longer than {max_len}")
        return value

    def _check_int(self, name: str, value: Any, lo: int | None, hi: int | None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CodecError(f"{self._where}: field {name!r} must be an integer")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise CodecError(f"{self._where}: field {name!r}={value} is out of range")
        return value

    def _check_float(self, name: str, value: Any, lo: float | None, hi: float | None) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CodecError(f"{self._where}: field {name!r} must be a number")
        out = float(value)
        if not math.isfinite(out):
            raise CodecError(f"{self._where}: field {name!r} must be finite")
        if (lo is not None and out < lo) or (hi is not None and out > hi):
            raise CodecError(f"{self._where}: field {name!r}={out} is out of range")
        return out


def check_text(value: str, where: str) -> None:
    """Refuse strings that cannot be UTF-8 (lone surrogates from JSON escapes)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise CodecError(f"{where}: invalid Unicode (lone surrogate)") from None


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Refuse anything that is not JSON-shaped (maps with string keys, lists, scalars)."""
    if depth > MAX_DEPTH:
        raise CodecError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, JSON_SCALARS):
        if isinstance(value, str):
            check_text(value, where)
        if isinstance(value, float) and not math.isfinite(value):
            raise CodecError(f"{where}: numbers must be finite")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"{where}: map keys must be strings")
            check_text(key, where)
            check_plain(item, f"{where}.{key}", depth + 1)
        return
    if isinstance(value, list | tuple):
        for item in value:
            check_plain(item, where, depth + 1)
        return
    raise CodecError(f"{where}: values of type {type(value).__name__} are not allowed")
