"""The edge node agent: serves chat requests with its engine over MQTT.

It subscribes to its directed topic and to the shared-subscription pool of each
capability; admits a request only when a slot and its tokens are free (else
``overloaded`` at once); runs inference on a worker thread and streams chunks;
stops work whose deadline passed; keeps its birth, load and metrics in the CMS;
applies ``slm/parameters/{model}/temperature|top_k|top_p`` live; and on stop
leaves the pools, drains what runs, and says offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from broker import (
    BusClient,
    Chat,
    Cms,
    Embed,
    Embedding,
    ErrorCode,
    Mirror,
    Presence,
    Request,
    Result,
    RpcError,
    RpcServer,
    Subscription,
    Usage,
)
from broker.topics import (
    capability_shared_filter,
    cms_key,
    knowledge_shared_filter,
    node_key,
    node_request_topic,
)
from broker.waits import cancel_and_wait, wait_event
from edge_node.admission import Admission, Ticket
from edge_node.config import NodeConfig
from edge_node.cooperation import Cooperation, open_cooperation
from edge_node.engines.base import Engine, EngineError, Generation, GenerationRequest, Sampling
from edge_node.metrics import NodeMetrics, load_record

logger = logging.getLogger(__name__)
VERSION = "0.1.0"
_DONE = object()


class NodeAgent:
    """One node: ``await NodeAgent(config, engine).run(stop_event)``."""

    def __init__(self, config: NodeConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.model_id = engine.info.model_id
        concurrency = min(config.limits.concurrency or engine.slots, engine.slots)
        self.admission = Admission(concurrency, config.limits.max_inflight_tokens)
        self.metrics = NodeMetrics()
        self.presence = Presence(config.node_id, self._birth_info)
        self.draining = False
        self._executor = ThreadPoolExecutor(engine.slots, thread_name_prefix="inference")
        self._load_changed = asyncio.Event()
        self._load_changed.set()  # the first load record goes out right after the birth
        self._params_mirror: Mirror | None = None
        self._running: set[asyncio.Future[Generation]] = set()
        self.ready = asyncio.Event()
        self.cooperation: Cooperation | None = None

    # --- lifecycle ------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        cfg = self.config
        try:
            async with (
                BusClient(cfg.bus, cfg.node_id, will=self.presence.will) as bus,
                contextlib.AsyncExitStack() as stack,
            ):
                cms = Cms(bus)
                self.cooperation = await open_cooperation(
                    stack, cfg, self.engine, bus, self.answer_chat
                )
                async with cms.mirror(cms_key("parameters", self.model_id)) as params:
                    self._params_mirror = params
                    server = RpcServer(bus)
                    self.server = server
                    subs = [await server.serve(node_request_topic(cfg.node_id), self._handle)]
                    if self.cooperation is not None and cfg.knowledge is not None:
                        for domain in cfg.expertise:  # experts answer their peers' gaps
                            subs.append(
                                await server.serve(knowledge_shared_filter(domain), self._query)
                            )
                    pools = [*cfg.capabilities]
                    if self.engine.supports_embeddings and "embed" not in pools:
                        pools.append("embed")
                    for capability in pools:
                        subs.append(
                            await server.serve(capability_shared_filter(capability), self._handle)
                        )
                    await self._publish_static(cms)
                    await self.presence.attach(bus, cms)
                    background = [
                        asyncio.create_task(self._publish_load(cms), name="node-load"),
                        asyncio.create_task(self._publish_metrics(cms), name="node-metrics"),
                    ]
                    try:
                        self.ready.set()
                        await stop.wait()
                        await self._drain(subs)
                        await self._publish_metrics_once(cms)
                    finally:
                        await cancel_and_wait(background)
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self, subs: list[Subscription]) -> None:
        """Leave the pools, refuse new work, let what runs finish (up to the timeout)."""
        self.draining = True
        self._load_changed.set()
        for sub in subs:
            await sub.cancel()
        if self._running:
            logger.info("draining %d request(s)", len(self._running))
            _, pending = await asyncio.wait(self._running, timeout=self.config.drain_timeout_s)
            if pending:
                logger.warning("%d request(s) still running after the drain timeout", len(pending))

    # --- serving --------------------------------------------------------------------

    async def _handle(self, req: Request) -> Result | Embedding:
        self.metrics.requests_total += 1
        body = req.body
        if isinstance(body, Embed):
            return await self._embed(body)
        if not isinstance(body, Chat):
            raise RpcError(
                ErrorCode.BAD_REQUEST, f"expected a chat or embed request, got {body.KIND}"
            )
        if self.cooperation is not None:
            return await self.cooperation.answer(req, body)
        return await self.answer_chat(req, body)

    async def _query(self, req: Request) -> Result:
        self.metrics.requests_total += 1
        assert self.cooperation is not None
        return await self.cooperation.serve_query(req)

    async def answer_chat(self, req: Request, body: Chat) -> Result:
        """Admit, generate and describe one chat answer (cooperation builds on this)."""
        ticket = self._admit(body)
        request = GenerationRequest(body.messages, body.max_tokens, self._sampling(body), body.stop)
        gen = await self._generate(req, request, ticket, stream=body.stream)
        return self._result(gen, request)

    async def _embed(self, body: Embed) -> Embedding:
        """Embeddings on a worker thread; a text counts one token per 3 characters here."""
        if not self.engine.supports_embeddings:
            raise RpcError(ErrorCode.NOT_FOUND, f"{self.config.node_id} serves no embeddings")
        tokens = sum(len(t) // 3 + 1 for t in body.texts)
        ticket = self.admission.admit(tokens)
        if ticket is None:
            self.metrics.refused_total += 1
            raise RpcError(
                ErrorCode.OVERLOADED, f"{self.config.node_id}: {self.admission.refusal(tokens)}"
            )
        self._load_changed.set()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, lambda: self.engine.embed(body.texts, normalize=body.normalize)
        )

        def finished(_fut: asyncio.Future[Any]) -> None:
            self.admission.release(ticket)  # when the thread is done, not the caller
            self._load_changed.set()

        future.add_done_callback(finished)
        vectors = await asyncio.shield(future)
        return Embedding(
            vector=vectors,
            model=self.model_id,
            meta={"node": self.config.node_id, "normalized": body.normalize},
        )

    def _admit(self, body: Chat) -> Ticket:
        """Validate against this node's limits and reserve capacity, or refuse at once."""
        if body.max_tokens > self.config.limits.max_tokens:
            raise RpcError(
                ErrorCode.BAD_REQUEST,
                f"max_tokens {body.max_tokens} exceeds this "
                f"node's limit of {self.config.limits.max_tokens}",
            )
        if self.draining:
            self.metrics.refused_total += 1
            raise RpcError(ErrorCode.OVERLOADED, "node is draining")
        prompt_tokens = self.engine.count_prompt_tokens(body.messages)
        ticket = self.admission.admit(prompt_tokens + body.max_tokens)
        if ticket is None:
            self.metrics.refused_total += 1
            reason = self.admission.refusal(prompt_tokens + body.max_tokens)
            raise RpcError(ErrorCode.OVERLOADED, f"{self.config.node_id}: {reason}")
        self._load_changed.set()
        return ticket

    async def _generate(
        self, req: Request, request: GenerationRequest, ticket: Ticket, *, stream: bool
    ) -> Generation:
        """Run the engine on a worker thread; stream its text; free the slot when it ends."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        # Tokens are coalesced on the inference thread: the first goes out at once, the
        # rest at most every stream_interval_s, so neither the event loop nor the broker
        # is woken for every token while llama.cpp wants every core.
        pending: list[str] = []
        last_flush = [0.0]
        interval = self.config.stream_interval_s

        def on_token(text: str) -> None:
            pending.append(text)
            now = time.monotonic()
            if now - last_flush[0] >= interval:
                last_flush[0] = now
                loop.call_soon_threadsafe(pieces.put_nowait, "".join(pending))
                pending.clear()

        def work() -> Generation:
            try:
                return self.engine.generate(request, on_token, cancel)
            finally:
                if pending:
                    loop.call_soon_threadsafe(pieces.put_nowait, "".join(pending))
                loop.call_soon_threadsafe(pieces.put_nowait, _DONE)

        future = loop.run_in_executor(self._executor, work)
        self._running.add(future)

        def finished(fut: asyncio.Future[Generation]) -> None:
            # The slot is free only when the thread is, not when the caller gave up.
            self._running.discard(fut)
            self.admission.release(ticket)
            self._load_changed.set()
            if not fut.cancelled() and fut.exception() is None:
                self.metrics.record(fut.result())
            else:
                self.metrics.failed_total += 1

        future.add_done_callback(finished)
        try:
            while (piece := await pieces.get()) is not _DONE:
                if stream:
                    await req.chunk(str(piece))
            return await asyncio.shield(future)
        except EngineError as exc:
            raise RpcError(ErrorCode.BAD_REQUEST, str(exc)) from exc
        finally:
            cancel.set()  # deadline passed or caller gone: stop at the next token

    def _result(self, gen: Generation, request: GenerationRequest) -> Result:
        return Result(
            text=gen.text,
            usage=Usage(gen.prompt_tokens, gen.completion_tokens),
            confidence=gen.confidence,
            node=self.config.node_id,
            model=self.model_id,
            finish_reason=gen.finish_reason,
            timings={"ttft_ms": round(gen.ttft_ms, 3), "total_ms": round(gen.total_ms, 3)},
            meta={
                "sampling": {
                    "temperature": request.sampling.temperature,
                    "top_p": request.sampling.top_p,
                    "top_k": request.sampling.top_k,
                },
                **({"simulated": True} if gen.simulated else {}),
            },
        )

    def _sampling(self, body: Chat) -> Sampling:
        """Request values first, then live CMS parameters, then the configuration."""
        defaults = self.config.sampling
        mirror = self._params_mirror
        live = {
            name: None if mirror is None else mirror.get(cms_key("parameters", self.model_id, name))
            for name in ("temperature", "top_p", "top_k")
        }
        return Sampling(
            temperature=_pick(body.temperature, live["temperature"], defaults.temperature),
            top_p=_pick(body.top_p, live["top_p"], defaults.top_p),
            top_k=int(_pick(body.top_k, live["top_k"], defaults.top_k)),
        )

    # --- CMS ------------------------------------------------------------------------

    def _birth_info(self) -> dict[str, Any]:
        info = self.engine.info
        return {
            "models": [
                {
                    "id": info.model_id,
                    "architecture": info.architecture,
                    "parameters": info.parameters,
                    "quantization": info.quantization,
                    "context_length": info.context_length,
                    "capabilities": list(info.capabilities),
                    **info.extra,
                }
            ],
            "capabilities": list(self.config.capabilities)
            + (["embed"] if self.engine.supports_embeddings else []),
            "expertise": list(self.config.expertise),
            "device": self.config.device,
            "limits": {
                "concurrency": self.admission.concurrency,
                "max_inflight_tokens": self.admission.max_inflight_tokens,
                "max_tokens": self.config.limits.max_tokens,
            },
            "engine": self.config.engine.type,
            "version": VERSION,
        }

    async def _publish_static(self, cms: Cms) -> None:
        info = self.engine.info
        model = ("models", info.model_id)
        await cms.put(
            cms_key(*model, "architecture_parameters"),
            {"architecture": info.architecture, "parameters": info.parameters},
        )
        await cms.put(cms_key(*model, "context_length"), info.context_length)
        await cms.put(cms_key(*model, "quantization"), info.quantization)
        await cms.put(cms_key("configs", self.config.node_id, "version"), VERSION)
        await cms.put(
            cms_key("configs", self.config.node_id, "max_tokens"), self.config.limits.max_tokens
        )

    async def _publish_load(self, cms: Cms) -> None:
        """Debounced on change, refreshed before its expiry while the node lives."""
        key = node_key(self.config.node_id, "load")
        refresh = self.config.load_expiry_s / 3
        while True:
            # not asyncio.wait_for: on 3.11 it can swallow the stop's cancel (broker.waits)
            await wait_event(self._load_changed, refresh)
            self._load_changed.clear()
            record = load_record(self.admission, self.metrics, self.draining)
            with contextlib.suppress(Exception):
                await cms.put(key, record, expiry_s=self.config.load_expiry_s)
            await asyncio.sleep(self.config.load_interval_s)

    async def _publish_metrics(self, cms: Cms) -> None:
        last: dict[str, Any] | None = None
        while True:
            last = await self._publish_metrics_once(cms, last)
            await asyncio.sleep(self.config.metrics_interval_s)

    async def _publish_metrics_once(
        self, cms: Cms, last: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        snapshot = self.metrics.snapshot()
        for name, value in snapshot.items():
            if last is None or last.get(name) != value:
                with contextlib.suppress(Exception):
                    await cms.put(cms_key("metrics", self.config.node_id, name), value)
        return snapshot


def _pick(*values: float | None) -> float:
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    raise ValueError("no sampling value")
