"""Knowledge and data cooperation on the node side.

**Knowledge.** A request carries its classified domain (``Chat.domain``, set by the
gateway). The node has a *gap* when that domain is not among its ``expertise``
(``general`` never is a gap) or, with ``knowledge.gap_confidence`` set, when its
own answer's confidence falls below it. On a gap it asks its peers on
``knowledge/{domain}/query`` (RPC, QoS 1, a deadline within the request's own);
experts take those queries through the shared subscription
``$share/knowledge/knowledge/{domain}/query`` (one expert answers each) and answer
from their model plus the documents their knowledge base retrieves. The asking
node puts the expert's answer into its prompt, answers, and says so in
``result.meta["knowledge"]``: the gap, the peer, its documents, or why no peer
answered. A node also grounds answers in its own domain in its own knowledge base.

**Data.** With a ``data`` section the node follows ``data/`` topics
(:class:`broker.datafollow.DataFollower`) and puts a summary of the latest
readings (and recent events) into the prompt, with how alike each window's
embedding is to that stream's nearest earlier windows (a low value flags an
unusual window); ``result.meta["grounding"]`` lists the readings it used.

A query carries the user property ``asker``: an expert never answers its own
query (``not_found``), so a low-confidence expert asking about its own domain
hears from another expert or keeps its own answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from broker import BusClient, Chat, ChatMessage, ErrorCode, Request, Result, RpcClient, RpcError
from broker.datafollow import DataFollower, Sample
from broker.errors import BusError
from broker.topics import knowledge_query_topic, parse_topic
from edge_node.config import DataConfig, KnowledgeConfig, NodeConfig
from edge_node.engines.base import Engine, EngineError
from edge_node.knowledge import Embed, KnowledgeBase, KnowledgeError, Passage, read_documents

logger = logging.getLogger(__name__)
ASKER = "asker"
GENERAL = "general"
LIKENESS_K = 5  # nearest other windows a reading's embedding is compared with
PEER_SHARE = 0.5  # of the request's remaining time, at most, for a peer's answer

AnswerFn = Callable[[Request, Chat], Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class PeerAnswer:
    domain: str
    node: str | None = None
    text: str = ""
    documents: tuple[dict[str, Any], ...] = ()
    error: str | None = None

    def meta(self) -> dict[str, Any]:
        if self.error is not None:
            return {"peer": None, "error": self.error}
        return {"peer": self.node, "documents": list(self.documents), "peer_answer": self.text}


class Cooperation:
    """Answers chat requests with knowledge and data cooperation; serves knowledge queries."""

    def __init__(
        self,
        config: NodeConfig,
        answer: AnswerFn,
        rpc: RpcClient,
        *,
        kb: KnowledgeBase | None = None,
        follower: DataFollower | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self.expertise = set(config.expertise)
        self.knowledge = config.knowledge or KnowledgeConfig(ask_peers=False)
        self._answer = answer
        self.rpc = rpc
        self.kb = kb
        self.follower = follower

    # --- answering a request --------------------------------------------------------

    async def answer(self, req: Request, body: Chat) -> Result:
        domain = body.domain
        question = _question(body)
        readings, grounding = self._readings()
        passages = await self._retrieve(question, domain)
        gap = self._gap(domain)
        peer = await self._ask(req, body, domain) if gap and domain else None
        result = await self._answer(req, _with_context(body, readings, passages, peer))
        k = self.knowledge
        if (
            gap is None
            and domain is not None
            and k.ask_peers
            and k.gap_confidence > 0
            and not body.stream  # what streamed is with the user already
            and result.confidence is not None
            and result.confidence < k.gap_confidence
        ):
            gap = f"confidence {result.confidence:.2f} below {k.gap_confidence}"
            peer = await self._ask(req, body, domain)
            if peer.error is None:
                with contextlib.suppress(RpcError):  # no slot now: keep the first answer
                    result = await self._answer(req, _with_context(body, readings, passages, peer))
        extra: dict[str, Any] = {}
        if gap is not None or passages:
            extra["knowledge"] = {
                "domain": domain,
                "gap": gap,
                "own_documents": [p.cite() for p in passages],
                "integrated": peer is not None and peer.error is None,
                **(peer.meta() if peer is not None else {"peer": None}),
            }
        if grounding:
            extra["grounding"] = grounding
        return replace(result, meta={**result.meta, **extra}) if extra else result

    def _gap(self, domain: str | None) -> str | None:
        """Why ``domain`` is a gap here; ``None`` without one (or without knowledge cooperation)."""
        if self.config.knowledge is None:
            return None
        if domain is None or domain == GENERAL or domain in self.expertise:
            return None
        mine = ", ".join(sorted(self.expertise)) or "none"
        return f"domain {domain} is not in this node's expertise ({mine})"

    async def _retrieve(self, question: str, domain: str | None) -> list[Passage]:
        kb = self.kb
        if kb is None or not question or (domain is not None and domain not in kb.domains):
            return []
        k = self.knowledge
        try:
            return await asyncio.to_thread(
                kb.retrieve, question, domain=domain, k=k.top_k, min_score=k.min_score
            )
        except (KnowledgeError, BusError, EngineError) as exc:
            logger.warning("knowledge retrieval failed: %s", exc)
            return []

    async def _ask(self, req: Request, body: Chat, domain: str) -> PeerAnswer:
        """Ask the experts of ``domain``; never raises, never outlasts its share of the deadline."""
        k = self.knowledge
        if not k.ask_peers:
            return PeerAnswer(domain, error="asking peers is off on this node")
        remaining = req.remaining()
        timeout = (
            k.ask_timeout_s if remaining is None else min(k.ask_timeout_s, remaining * PEER_SHARE)
        )
        if timeout < 0.5:
            return PeerAnswer(domain, error="no time left to ask a peer")
        query = Chat(
            messages=(ChatMessage("user", _question(body)),),
            max_tokens=k.peer_max_tokens,
            temperature=body.temperature,
            domain=domain,
        )
        user = {ASKER: self.node_id, **{n: v for n, v in req.inbound.user.items() if n != ASKER}}
        try:
            got = await self.rpc.call(
                knowledge_query_topic(domain), query, timeout=timeout, user=user
            )
        except RpcError as exc:
            return PeerAnswer(domain, error=f"no {domain} expert answered: {exc}")
        except BusError as exc:
            return PeerAnswer(domain, error=f"could not ask: {exc}")
        knowledge = got.meta.get("knowledge")
        documents = knowledge.get("documents", []) if isinstance(knowledge, dict) else []
        return PeerAnswer(domain, got.node, got.text.strip(), tuple(documents))

    # --- serving peers --------------------------------------------------------------

    async def serve_query(self, req: Request) -> Result:
        """A knowledge query from a peer: answer from the model plus the knowledge base."""
        body = req.body
        if not isinstance(body, Chat):
            raise RpcError(ErrorCode.BAD_REQUEST, f"a knowledge query is a chat, not {body.KIND}")
        if req.inbound.user.get(ASKER) == self.node_id:
            raise RpcError(ErrorCode.NOT_FOUND, f"{self.node_id} does not answer its own query")
        domain = parse_topic(req.inbound.topic).levels["domain"]
        passages = await self._retrieve(_question(body), domain)
        prompt = _expert_prompt(domain, passages)
        messages = (
            ChatMessage("system", prompt),
            *(m for m in body.messages if m.role != "system"),
        )
        result = await self._answer(req, replace(body, messages=messages, stream=False))
        meta = {"role": "expert", "domain": domain, "documents": [p.cite() for p in passages]}
        return replace(result, meta={**result.meta, "knowledge": meta})

    # --- data -----------------------------------------------------------------------

    def _readings(self) -> tuple[list[str], dict[str, Any]]:
        """Lines for the prompt, and what they came from (for ``result.meta``)."""
        follower, data = self.follower, self.config.data
        if follower is None or data is None:
            return [], {}
        now = time.monotonic()
        fresh = [s for s in follower.latest_samples() if now - s.received_at <= data.max_age_s]
        fresh.sort(key=lambda s: s.meta.timestamp, reverse=True)
        used = fresh[: data.max_readings]
        likeness = [_likeness(follower, s) for s in used]
        lines = [_reading_line(s, like) for s, like in zip(used, likeness, strict=True)]
        events = [e for e in follower.events if now - e.received_at <= data.max_age_s][-3:]
        lines += [
            f"event from {e.agent_id}: {e.event.type} ({e.event.phase}, {e.event.severity}) "
            f"{e.event.message}".strip()
            for e in events
        ]
        if not lines:
            return [], {"readings": [], "note": "no recent readings on " + ", ".join(data.topics)}
        return lines, {
            "readings": [
                {
                    "agent": s.agent_id,
                    "stream": s.stream,
                    "type": s.meta.type,
                    "sequence": s.meta.sequence,
                    "timestamp": s.meta.timestamp,
                    "source": s.meta.source,
                    "values": {k: round(v, 3) for k, v in s.meta.summary.items()},
                    "units": dict(s.meta.units),
                    "likeness": like,
                }
                for s, like in zip(used, likeness, strict=True)
            ],
            "events": [{"agent": e.agent_id, "type": e.event.type} for e in events],
        }


def _likeness(follower: DataFollower, sample: Sample) -> float | None:
    """Mean cosine of a window's embedding to its stream's nearest other windows.

    Near 1: the window looks like what this stream usually sends; lower: unusual.
    ``None`` with fewer than three other windows indexed.
    """
    where = {"agent_id": sample.agent_id, "stream": sample.stream}
    hits = follower.similar(sample.agent_id, sample.stream, LIKENESS_K, where=where)
    others = [h.score for h in hits]
    return round(float(np.mean(others)), 3) if len(others) >= 3 else None


def _reading_line(sample: Sample, likeness: float | None = None) -> str:
    meta = sample.meta
    where = meta.location.get("site") or meta.location.get("placement") or "unknown place"
    values = ", ".join(
        f"{name} {value:.3g}{(' ' + meta.units[name]) if name in meta.units else ''}"
        for name, value in meta.summary.items()  # the device's channel order
    )
    when = datetime.fromtimestamp(meta.timestamp, UTC).strftime("%H:%M:%S UTC")
    source = "synthetic" if meta.source == "synthetic" else meta.source
    like = "" if likeness is None else f"; similarity to past windows {likeness:.2f}"
    return (
        f"{sample.agent_id} ({meta.type}, {where}, {when}, {source}): {values or 'no values'}{like}"
    )


def _question(body: Chat) -> str:
    users = [m.content for m in body.messages if m.role == "user"]
    return users[-1] if users else body.messages[-1].content


def _expert_prompt(domain: str, passages: Sequence[Passage]) -> str:
    notes = "\n".join(f"- {p.document.title}: {p.document.text}" for p in passages)
    return (
        f"You are a {domain} expert agent answering another agent. Answer in two or three "
        "short sentences." + (f"\nUse these guidance notes:\n{notes}" if notes else "")
    )


def _with_context(
    body: Chat, readings: list[str], passages: list[Passage], peer: PeerAnswer | None
) -> Chat:
    parts = []
    if readings:
        parts.append("Your recent sensor readings:\n" + "\n".join(f"- {r}" for r in readings))
    if passages:
        parts.append(
            "Guidance notes:\n"
            + "\n".join(f"- {p.document.title}: {p.document.text}" for p in passages)
        )
    if peer is not None and peer.error is None and peer.text:
        parts.append(f"A {peer.domain} expert agent ({peer.node}) advises: {peer.text}")
    if not parts:
        return body
    own = [m.content for m in body.messages if m.role == "system"]
    system = "\n\n".join([*own, "Use this information in your answer.", *parts])
    rest = tuple(m for m in body.messages if m.role != "system")
    return replace(body, messages=(ChatMessage("system", system), *rest))


# --- set-up -------------------------------------------------------------------------


@functools.cache
def _minilm() -> Embed:
    """One MiniLM encoder per process (thread-safe; nodes in one process share it)."""
    from broker.encoder import SentenceEncoder  # noqa: PLC0415 - 90 MB of weights, lazily

    return SentenceEncoder().encode


def _embedder(k: KnowledgeConfig, engine: Engine) -> tuple[Embed, str]:
    """The knowledge base's embedding function and its name (stored with each vector)."""
    if k.embedder == "minilm":
        return _minilm(), "minilm"
    if not engine.supports_embeddings:
        raise KnowledgeError("knowledge.embedder 'engine' needs engine.embeddings: true")

    def embed(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return engine.embed(texts, normalize=True)

    return embed, f"engine:{engine.info.model_id}"


def open_knowledge_base(config: NodeConfig, engine: Engine) -> KnowledgeBase | None:
    """The node's knowledge base from its configuration (blocking: run it off the loop)."""
    k = config.knowledge
    if k is None or not k.documents:
        return None
    embed, name = _embedder(k, engine)
    url = k.db_url
    if url is None:
        cache = Path.home() / ".cache" / "edgecollab"
        cache.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{cache}/kb-{config.node_id}.sqlite3"
    kb = KnowledgeBase(url, embed, embedder=name)
    kb.load([doc for source in k.documents for doc in read_documents(source)])
    return kb


async def open_cooperation(
    stack: contextlib.AsyncExitStack,
    config: NodeConfig,
    engine: Engine,
    bus: BusClient,
    answer: AnswerFn,
) -> Cooperation | None:
    """Everything cooperation needs, owned by ``stack``; ``None`` when the node does neither."""
    if config.knowledge is None and config.data is None:
        return None
    rpc = await stack.enter_async_context(RpcClient(bus))
    follower = None
    if config.data is not None:
        follower = await stack.enter_async_context(_follower(bus, config.data))
    kb = await asyncio.to_thread(open_knowledge_base, config, engine)
    if kb is not None:
        stack.callback(kb.close)
    return Cooperation(config, answer, rpc, kb=kb, follower=follower)


def _follower(bus: BusClient, data: DataConfig) -> DataFollower:
    return DataFollower(bus, data.topics, capacity=2000)


__all__ = ["Cooperation", "PeerAnswer", "open_cooperation", "open_knowledge_base"]
