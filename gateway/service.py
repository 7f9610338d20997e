"""``edgecollab gateway``: wire the bus, the CMS, scheduling, the classifier, the cache,
the cloud and the ledger into the orchestrator; serve HTTP and the MQTT ingress.

The MQTT ingress serves ``computation/query/request`` through the shared
subscription ``$share/gateways/computation/query/request``, so several gateways
split the queries between them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from broker import (
    BusClient,
    BusError,
    Chat,
    Cms,
    ErrorCode,
    Mirror,
    Request,
    Result,
    RpcClient,
    RpcError,
    RpcServer,
    Usage,
    nodes_from,
)
from gateway.app import create_app
from gateway.books import LedgerBooks
from gateway.cloud import CloudClient
from gateway.collab import run_planned
from gateway.config import GatewayConfig, GatewayConfigError, load_gateway_config
from gateway.dashboard import Dashboard
from gateway.dashboard_http import dashboard_router
from gateway.ledger import Ledger, LedgerError
from gateway.nodes import NodeDirectory
from gateway.orchestrator import GatewayError, Orchestrator, Query
from gateway.planner import PlanError
from gateway.policies import make_policy
from gateway.pricing import PriceTable
from gateway.routing import CacheAdapter, PolicyRouter, load_classify
from gateway.tenants import QuotaExceeded

logger = logging.getLogger(__name__)
INGRESS = "$share/gateways/computation/query/request"


@dataclass
class RunningGateway:
    """A started gateway; ``port`` is the HTTP port actually bound."""

    config: GatewayConfig
    orchestrator: Orchestrator
    mirror: Mirror
    port: int
    server: uvicorn.Server
    dashboard: Dashboard | None = None


@contextlib.asynccontextmanager
async def running_gateway(config: GatewayConfig) -> AsyncIterator[RunningGateway]:
    """Start everything; stop it all on exit."""
    async with contextlib.AsyncExitStack() as stack:
        bus = await stack.enter_async_context(BusClient(config.bus, config.gateway_id))
        rpc = await stack.enter_async_context(RpcClient(bus))
        mirror = await stack.enter_async_context(Cms(bus).mirror("slm"))
        directory = await stack.enter_async_context(NodeDirectory(mirror))
        ledger = await stack.enter_async_context(Ledger(config.ledger_url))
        cloud = (
            await stack.enter_async_context(CloudClient(config.cloud))
            if config.cloud.enabled
            else None
        )
        classify, encode = await asyncio.to_thread(load_classify)
        cache = CacheAdapter(encode, ttl_s=config.cache_ttl_s) if config.cache_enabled else None
        orchestrator = Orchestrator(
            rpc=rpc,
            router=PolicyRouter(
                directory, make_policy(config.policy, **config.policy_options), config.capability
            ),
            books=LedgerBooks(ledger, mirror, PriceTable(), cloud_model=config.cloud.model),
            classify=classify,
            cloud=cloud,
            cache=cache,
            confidence_threshold=config.confidence_threshold,
            edge_timeout_s=config.edge_timeout_s,
            max_edge_attempts=config.max_edge_attempts,
        )
        await RpcServer(bus).serve(INGRESS, _ingress(orchestrator, config.client_tenants()))

        def models() -> list[str]:
            found = {
                m.get("id")
                for s in nodes_from(mirror.items("slm/nodes")).values()
                if s.online
                for m in s.info.get("models", [])
                if isinstance(m, dict)
            }
            edge = sorted(str(m) for m in found if m)
            return [*edge, config.cloud.model] if config.cloud.enabled else edge

        def healthy() -> dict[str, Any]:
            online = [n for n, s in nodes_from(mirror.items("slm/nodes")).items() if s.online]
            return {"ok": bus.is_connected, "broker": bus.is_connected, "edge_nodes": online}

        dashboard = (
            await stack.enter_async_context(
                Dashboard(
                    bus=bus,
                    mirror=mirror,
                    ledger=ledger,
                    directory=directory,
                    about={
                        "id": config.gateway_id,
                        "policy": config.policy,
                        "capability": config.capability,
                        "cloud_model": config.cloud.model if config.cloud.enabled else None,
                    },
                )
            )
            if config.dashboard
            else None
        )
        app = create_app(
            orchestrator,
            models=models,
            healthy=healthy,
            max_body_bytes=config.max_body_bytes,
            routers=[dashboard_router(dashboard)] if dashboard else [],
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=config.http_host,
                port=config.http_port,
                log_level="warning",
                lifespan="off",
            )
        )
        serving = asyncio.create_task(server.serve(), name="gateway-http")
        try:
            while not server.started:
                if serving.done():
                    serving.result()
                    raise GatewayConfigError("the HTTP server stopped at start-up")
                await asyncio.sleep(0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            yield RunningGateway(config, orchestrator, mirror, port, server, dashboard)
        finally:
            if dashboard is not None:
                await dashboard.close()  # its event streams would hold the server open
            server.should_exit = True
            await serving


def _bound_tenant(client_tenants: dict[str, str], req: Request) -> str:
    """The requester's tenant in the secure profile: who can read the reply decides.

    Only the client named in ``reply/{client}/...`` can read the answer (ACL), so
    that client is the requester; its tenant comes from the manifest, and a request
    claiming another tenant is refused.
    """
    requester = (req.inbound.response_topic or "").split("/")[1:2]
    tenant = client_tenants.get(requester[0]) if requester else None
    if tenant is None:
        raise RpcError(ErrorCode.UNAUTHORIZED, "requester belongs to no tenant of this gateway")
    if req.tenant is not None and req.tenant != tenant:
        raise RpcError(ErrorCode.UNAUTHORIZED, f"requester may not act for tenant {req.tenant!r}")
    return tenant


def _ingress(orchestrator: Orchestrator, client_tenants: dict[str, str] | None = None) -> Any:
    async def handle(req: Request) -> Result:
        body = req.body
        if not isinstance(body, Chat):
            raise RpcError(ErrorCode.BAD_REQUEST, f"expected a chat request, got {body.KIND}")
        tenant = req.tenant or "default"
        if client_tenants:
            tenant = _bound_tenant(client_tenants, req)
        query = Query(
            messages=body.messages,
            max_tokens=body.max_tokens,
            temperature=body.temperature,
            tenant=tenant,
            trace=req.trace,
            no_cloud=req.no_cloud,
        )
        plan = body.meta.get("plan")
        if plan is not None:  # computation cooperation: {"plan": "auto" | template name}
            return await _planned(orchestrator, query, plan)
        try:
            answer = await orchestrator.answer(query)
        except QuotaExceeded as exc:
            raise RpcError(ErrorCode.OVERLOADED, str(exc)) from exc
        except GatewayError as exc:
            raise RpcError(exc.code, exc.message) from exc
        return Result(
            text=answer.text,
            usage=Usage(answer.prompt_tokens, answer.completion_tokens),
            confidence=answer.confidence,
            node=answer.node,
            model=answer.model,
            finish_reason=answer.finish_reason,
            timings={"total_ms": round(answer.latency_ms, 3)},
            meta={"route": answer.route, "escalation": answer.escalation, "domain": answer.domain},
        )

    return handle


async def _planned(orchestrator: Orchestrator, query: Query, template: Any) -> Result:
    if not isinstance(template, str):
        raise RpcError(ErrorCode.BAD_REQUEST, "meta.plan must be 'auto' or a template name")
    try:
        outcome = await run_planned(orchestrator, query, template)
    except PlanError as exc:
        raise RpcError(ErrorCode.BAD_REQUEST, str(exc)) from exc
    except QuotaExceeded as exc:
        raise RpcError(ErrorCode.OVERLOADED, str(exc)) from exc
    return Result(
        text=outcome.answer,
        usage=Usage(outcome.prompt_tokens, outcome.completion_tokens),
        timings={"total_ms": round(outcome.latency_ms, 3)},
        meta=outcome.summary(),
    )


# --- command ------------------------------------------------------------------------


def add_gateway_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("gateway", help="run the gateway (OpenAI-compatible API)")
    parser.add_argument("--config", type=Path, default=None, help="gateway YAML configuration")
    parser.add_argument("--port", type=int, default=None, help="override the broker port")
    parser.add_argument("--http-port", type=int, default=None, help="override the HTTP port")
    parser.set_defaults(func=run_gateway)
    return parser


async def _serve(config: GatewayConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_gateway(config) as gw:
        print(
            f"gateway {config.gateway_id}: http://{config.http_host}:{gw.port}/v1 "
            f"(policy {config.policy}, broker {config.bus.host}:{config.bus.port})",
            flush=True,
        )
        if gw.dashboard is not None:
            print(f"dashboard: http://{config.http_host}:{gw.port}/dashboard", flush=True)
        await stop.wait()


def run_gateway(args: argparse.Namespace) -> int:
    try:
        config = load_gateway_config(args.config)
        updates: dict[str, Any] = {}
        if args.port:
            updates["bus"] = config.bus.model_copy(update={"port": args.port})
        if args.http_port is not None:
            updates["http_port"] = args.http_port
        asyncio.run(_serve(config.model_copy(update=updates)))
    except (GatewayConfigError, LedgerError, BusError) as exc:
        print(f"edgecollab gateway: {exc}", file=sys.stderr)
        return 2
    return 0
