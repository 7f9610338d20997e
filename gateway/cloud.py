"""The cloud fallback: any OpenAI-compatible chat completions endpoint.

Base URL, model and API key come from configuration and the environment (the key
is read from the variable the config names, never from a file in the repo, and
never logged). Timeouts are explicit; connection failures and 5xx/429 answers
are retried with back-off within the request's deadline; everything else maps to
one :class:`CloudError` with an :class:`broker.ErrorCode`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from broker import ChatMessage, ErrorCode

logger = logging.getLogger(__name__)
RETRYABLE = {429, 500, 502, 503, 504}


class CloudSettings(BaseModel):
    """Where the cloud LLM is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str = Field(
        "https://api.openai.com/v1", description="OpenAI-compatible base URL (ends in /v1)"
    )
    model: str = Field("gpt-4", description="model name sent to the endpoint")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable with the key")
    timeout_s: float = Field(60.0, gt=0, description="per attempt")
    connect_timeout_s: float = Field(5.0, gt=0)
    retries: int = Field(2, ge=0, le=10, description="extra attempts on 429/5xx/connection")
    enabled: bool = Field(True, description="False: the edge only")


class CloudError(Exception):
    """The cloud could not answer."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class CloudAnswer:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    latency_ms: float


class CloudClient:
    """``async with CloudClient(settings) as cloud``: one HTTP connection pool."""

    def __init__(
        self, settings: CloudSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        key = os.environ.get(settings.api_key_env, "")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(
            base_url=settings.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(settings.timeout_s, connect=settings.connect_timeout_s),
            transport=transport,
        )

    async def __aenter__(self) -> CloudClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self._http.aclose()

    async def chat(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float | None = None,
        deadline_s: float | None = None,
    ) -> CloudAnswer:
        """One completion; retries within ``deadline_s``."""
        body = self._body(messages, max_tokens, temperature, stream=False)
        started = time.perf_counter()
        response = await self._post(body, deadline_s)
        try:
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return CloudAnswer(
                text=choice["message"]["content"] or "",
                model=str(data.get("model", self.settings.model)),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                completion_tokens=int(usage.get("completion_tokens", 0)),
                finish_reason=choice.get("finish_reason"),
                latency_ms=(time.perf_counter() - started) * 1e3,
            )
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise CloudError(ErrorCode.INTERNAL, f"malformed cloud answer: {exc}") from exc

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        max_tokens: int,
        temperature: float | None = None,
    ) -> AsyncIterator[str]:
        """Text pieces as the endpoint streams them (server-sent events)."""
        body = self._body(messages, max_tokens, temperature, stream=True)
        try:
            async with self._http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code >= 400:
                    text = (await response.aread()).decode(errors="replace")[:300]
                    raise CloudError(
                        _code(response.status_code),
                        f"cloud answered {response.status_code}: {text}",
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    delta = json.loads(data)["choices"][0].get("delta", {})
                    if delta.get("content"):
                        yield str(delta["content"])
        except httpx.HTTPError as exc:
            raise CloudError(ErrorCode.UNAVAILABLE, f"cloud unreachable: {exc!r}") from exc

    def _body(
        self,
        messages: Sequence[ChatMessage],
        max_tokens: int,
        temperature: float | None,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "stream": stream,
        }
        if temperature is not None:
            body["temperature"] = temperature
        return body

    async def _post(self, body: dict[str, Any], deadline_s: float | None) -> httpx.Response:
        if not self.settings.enabled:
            raise CloudError(ErrorCode.UNAVAILABLE, "the cloud fallback is disabled")
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        last = ""
        for attempt in range(self.settings.retries + 1):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            try:
                response = await self._http.post(
                    "/chat/completions",
                    json=body,
                    timeout=None if remaining is None else min(remaining, self.settings.timeout_s),
                )
            except httpx.HTTPError as exc:
                last = f"cloud unreachable: {exc!r}"
            else:
                if response.status_code < 400:
                    return response
                last = f"cloud answered {response.status_code}: {response.text[:300]}"
                if response.status_code not in RETRYABLE:
                    raise CloudError(_code(response.status_code), last)
            logger.warning("cloud attempt %d failed: %s", attempt + 1, last)
            await asyncio.sleep(min(2.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.0))
        raise CloudError(ErrorCode.UNAVAILABLE, last or "cloud deadline passed")


def _code(status: int) -> ErrorCode:
    if status in (401, 403):
        return ErrorCode.UNAUTHORIZED
    if status in {400, 422}:
        return ErrorCode.BAD_REQUEST
    if status == 404:
        return ErrorCode.NOT_FOUND
    if status == 429:
        return ErrorCode.OVERLOADED
    return ErrorCode.UNAVAILABLE
