"""HTTP routes of the live dashboard: the page, its two static files, state and events.

- ``GET /dashboard``: the page (plain HTML, CSS and JavaScript shipped in
  ``gateway/static/``; no build step, nothing fetched from elsewhere);
- ``GET /dashboard/state``: the current snapshot as JSON;
- ``GET /dashboard/events``: server-sent events, one ``state`` event per changed
  snapshot and a comment line every 15 s so that proxies keep the stream open.
  The browser's ``EventSource`` reconnects by itself when the stream breaks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from gateway.dashboard import Dashboard

ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
}
_NO_CACHE = {"Cache-Control": "no-cache"}


def _asset(name: str) -> str:
    return (resources.files("gateway") / "static" / name).read_text(encoding="utf-8")


def dashboard_router(dashboard: Dashboard, *, heartbeat_s: float = 15.0) -> APIRouter:
    """The ``/dashboard`` routes over ``dashboard``."""
    router = APIRouter(prefix="/dashboard", tags=["dashboard"])
    page = _asset("dashboard.html")
    assets = {name: _asset(name) for name in ASSETS}

    @router.get("", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=_NO_CACHE)

    @router.get("/static/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, f"no dashboard file {name!r}")
        return Response(assets[name], media_type=ASSETS[name], headers=_NO_CACHE)

    @router.get("/state")
    async def state() -> JSONResponse:
        return JSONResponse(await dashboard.state(), headers=_NO_CACHE)

    @router.get("/events")
    async def events() -> StreamingResponse:
        return StreamingResponse(
            _sse(dashboard, heartbeat_s),
            media_type="text/event-stream",
            headers={**_NO_CACHE, "X-Accel-Buffering": "no"},
        )

    return router


async def _sse(dashboard: Dashboard, heartbeat_s: float) -> AsyncIterator[str]:
    yield "retry: 2000\n\n"
    async for snapshot in dashboard.updates(heartbeat_s):
        if snapshot is None:
            yield ": idle\n\n"
        else:
            yield f"event: state\ndata: {json.dumps(snapshot, separators=(',', ':'))}\n\n"
