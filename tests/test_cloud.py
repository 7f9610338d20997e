"""The cloud client against a real OpenAI-compatible server (llama-cpp-python's)."""

from __future__ import annotations

import time

import httpx
import pytest

from broker import ChatMessage, ErrorCode
from broker.launcher import free_port
from edgecollab.cloud_standin import CLOUD_MODEL
from gateway.cloud import CloudClient, CloudError, CloudSettings

QUESTION = (ChatMessage("user", "What is the capital of France?"),)


async def test_chat_and_stream_against_an_openai_compatible_server(cloud_url):
    settings = CloudSettings(base_url=cloud_url, model=CLOUD_MODEL)
    async with CloudClient(settings) as cloud:
        answer = await cloud.chat(QUESTION, max_tokens=16, temperature=0.0)
        pieces = [p async for p in cloud.stream(QUESTION, max_tokens=16, temperature=0.0)]
    assert answer.text.strip()
    assert answer.model == CLOUD_MODEL
    assert answer.prompt_tokens > 0
    assert 0 < answer.completion_tokens <= 16
    assert "".join(pieces).strip()


async def test_unreachable_cloud_is_a_clear_error_within_the_deadline():
    settings = CloudSettings(base_url=f"http://127.0.0.1:{free_port()}/v1", retries=5)
    t0 = time.monotonic()
    async with CloudClient(settings) as cloud:
        with pytest.raises(CloudError) as info:
            await cloud.chat(QUESTION, max_tokens=8, deadline_s=1.5)
    assert info.value.code is ErrorCode.UNAVAILABLE
    assert "unreachable" in info.value.message
    assert time.monotonic() - t0 < 3.0


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, ErrorCode.UNAUTHORIZED), (400, ErrorCode.BAD_REQUEST), (503, ErrorCode.UNAVAILABLE)],
)
async def test_http_errors_map_to_codes_and_5xx_is_retried(status, code):
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"error": {"message": "nope"}})

    settings = CloudSettings(base_url="http://cloud.invalid/v1", retries=2)
    async with CloudClient(settings, transport=httpx.MockTransport(handler)) as cloud:
        with pytest.raises(CloudError) as info:
            await cloud.chat(QUESTION, max_tokens=8, deadline_s=10)
    assert info.value.code is code
    assert len(calls) == (3 if status == 503 else 1)


async def test_api_key_comes_from_the_environment(monkeypatch):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(
            200,
            json={
                "model": "m",
                "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            },
        )

    monkeypatch.setenv("EDGECOLLAB_TEST_KEY", "sk-test-123")
    settings = CloudSettings(base_url="http://cloud.invalid/v1", api_key_env="EDGECOLLAB_TEST_KEY")
    async with CloudClient(settings, transport=httpx.MockTransport(handler)) as cloud:
        answer = await cloud.chat(QUESTION, max_tokens=8)
    assert seen == ["Bearer sk-test-123"]
    assert answer.text == "ok"
