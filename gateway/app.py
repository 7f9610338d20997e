"""The OpenAI-compatible HTTP API: ``/v1/chat/completions``, ``/v1/models``, ops.

The ``openai`` SDK and curl work unchanged. The tenant is the ``X-Tenant``
header (or the body's ``user`` field), ``X-No-Cloud: true`` keeps a request on
the edge, ``X-Trace`` is passed along; ``X-Plan: auto`` (or a template name)
asks for a decomposed answer (computation cooperation, :mod:`gateway.collab`).
Answers carry an extra ``edgecollab`` object: route (edge, cloud, cache, collab),
node, confidence, escalation reason.
Bad input gets a 4xx with a message that says what is wrong.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field

from broker import ChatMessage, ErrorCode
from broker.topics import validate_id
from gateway.collab import CollabOutcome, run_planned
from gateway.orchestrator import Answer, GatewayError, Orchestrator, Query
from gateway.planner import PlanError
from gateway.tenants import QuotaExceeded

STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.OVERLOADED: 503,
    ErrorCode.EXPIRED: 504,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use
    model: str = "edgecollab"
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    stream: bool = False
    user: str | None = None


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


def create_app(
    orchestrator: Orchestrator,
    *,
    models: Callable[[], list[str]],
    healthy: Callable[[], dict[str, Any]],
    max_body_bytes: int = 1 << 20,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """The gateway's HTTP app; ``routers`` add pages such as ``/dashboard``."""
    app = FastAPI(title="edgecollab gateway", version="0.1.0")
    for router in routers:
        app.include_router(router)
    registry = CollectorRegistry()
    requests = Counter(
        "edgecollab_requests_total",
        "Chat requests by route",
        ["route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "edgecollab_request_seconds", "Chat request latency", ["route"], registry=registry
    )
    tokens = Counter(
        "edgecollab_tokens_total",
        "Tokens by route and direction",
        ["route", "direction"],
        registry=registry,
    )

    @app.middleware("http")
    async def limit_body(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return _error(413, f"request body larger than {max_body_bytes} bytes", "too_large")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error(400, f"invalid request: {problems}", "invalid_request_error")

    @app.exception_handler(json.JSONDecodeError)
    async def bad_json(_request: Request, exc: json.JSONDecodeError) -> JSONResponse:
        return _error(400, f"invalid JSON: {exc}", "invalid_request_error")

    def record(answer: Answer | None, status: str, seconds: float) -> None:
        route = answer.route if answer else "error"
        requests.labels(route, status).inc()
        latency.labels(route).observe(seconds)
        if answer is not None:
            tokens.labels(route, "in").inc(answer.prompt_tokens)
            tokens.labels(route, "out").inc(answer.completion_tokens)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: ChatRequest, request: Request) -> Response:
        started = time.perf_counter()
        try:
            query = _query(body, request)
        except ValueError as exc:
            return _error(400, str(exc), "invalid_request_error")
        plan = request.headers.get("x-plan")
        try:
            if plan and not body.stream:  # computation cooperation: a decomposed answer
                return await _planned(orchestrator, query, plan, body.model)
            if body.stream:
                await orchestrator.books.check(query.tenant)  # a 429 before the 200 starts
                return StreamingResponse(
                    _sse(orchestrator, query, body.model, record), media_type="text/event-stream"
                )
            answer = await orchestrator.answer(query)
        except QuotaExceeded as exc:
            record(None, "429", time.perf_counter() - started)
            return _error(429, str(exc), "quota_exceeded")
        except GatewayError as exc:
            record(None, exc.code.value, time.perf_counter() - started)
            return _error(STATUS[exc.code], exc.message, exc.code.value)
        record(answer, "ok", time.perf_counter() - started)
        return JSONResponse(_completion(answer, body.model))

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "edgecollab"}
                for m in models()
            ],
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        state = healthy()
        return JSONResponse(state, status_code=200 if state.get("ok") else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def _query(body: ChatRequest, request: Request) -> Query:
    tenant = request.headers.get("x-tenant") or body.user or "default"
    validate_id(tenant, "tenant")
    return Query(
        messages=tuple(ChatMessage(m.role, m.content) for m in body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens or 256,
        temperature=body.temperature,
        stream=body.stream,
        tenant=tenant,
        trace=request.headers.get("x-trace"),
        no_cloud=request.headers.get("x-no-cloud", "").lower() in ("1", "true", "yes"),
    )


def _extra(answer: Answer) -> dict[str, Any]:
    return {
        "route": answer.route,
        "node": answer.node,
        "confidence": answer.confidence,
        "escalation": answer.escalation,
        "domain": answer.domain,
        "knowledge_gap": answer.knowledge_gap,
        "attempts": answer.attempts,
    }


def _completion(answer: Answer, requested_model: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": answer.model or requested_model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason or "stop",
            }
        ],
        "usage": {
            "prompt_tokens": answer.prompt_tokens,
            "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        },
        "edgecollab": _extra(answer),
    }


async def _planned(
    orchestrator: Orchestrator, query: Query, plan: str, requested_model: str
) -> Response:
    try:
        outcome = await run_planned(orchestrator, query, plan)
    except PlanError as exc:
        return _error(400, str(exc), "invalid_request_error")
    return JSONResponse(_planned_completion(outcome, requested_model))


def _planned_completion(outcome: CollabOutcome, requested_model: str) -> dict[str, Any]:
    prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": requested_model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": outcome.answer},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
        "edgecollab": outcome.summary(),
    }


async def _sse(
    orchestrator: Orchestrator,
    query: Query,
    model: str,
    record: Callable[[Answer | None, str, float], None],
) -> AsyncIterator[str]:
    started = time.perf_counter()
    ident = f"chatcmpl-{uuid.uuid4().hex}"

    def chunk(
        delta: dict[str, Any], finish: str | None = None, extra: dict[str, Any] | None = None
    ) -> str:
        data: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if extra:
            data.update(extra)
        return f"data: {json.dumps(data)}\n\n"

    yield chunk({"role": "assistant"})
    try:
        async for piece in orchestrator.stream(query):
            if isinstance(piece, Answer):
                record(piece, "ok", time.perf_counter() - started)
                yield chunk(
                    {},
                    piece.finish_reason or "stop",
                    {
                        "usage": {
                            "prompt_tokens": piece.prompt_tokens,
                            "completion_tokens": piece.completion_tokens,
                            "total_tokens": piece.prompt_tokens + piece.completion_tokens,
                        },
                        "edgecollab": _extra(piece),
                    },
                )
            else:
                yield chunk({"content": piece})
    except (GatewayError, QuotaExceeded) as exc:
        record(None, "error", time.perf_counter() - started)
        yield f"data: {json.dumps({'error': {'message': str(exc)}})}\n\n"
    yield "data: [DONE]\n\n"
