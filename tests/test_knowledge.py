"""Knowledge cooperation: a knowledge base in SQLite + FAISS with real MiniLM embeddings,
and through a real Mosquitto two SmolLM2 nodes: one with a gap asks the expert,
which answers from its knowledge base; the asker integrates the answer and says so."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker import (
    CBOR,
    JSON,
    BusClient,
    Chat,
    CodecError,
    Embed,
    ErrorCode,
    Inbound,
    RpcClient,
    RpcError,
    decode,
    encode,
)
from broker.encoder import SentenceEncoder
from broker.topics import knowledge_query_topic, node_request_topic
from edge_node.knowledge import DATA_DIR, KnowledgeBase, KnowledgeError, read_documents
from tests.helpers import running_node, settings

QUESTION = "I get light-headed when I stand up quickly. What should I do?"


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_knowledge_base_retrieves_stores_and_reuses_embeddings(encoder, tmp_path):
    url = f"sqlite:///{tmp_path}/kb.sqlite3"
    docs = read_documents("health") + read_documents("environment")
    kb = KnowledgeBase(url, encoder.encode, embedder="minilm")
    assert kb.load(docs) == len(docs)  # everything embedded once
    assert kb.domains == {"health", "environment"}
    held_out = [
        json.loads(line) for line in (DATA_DIR / "questions.jsonl").read_text().split("\n") if line
    ]
    hits = 0
    for q in held_out:
        top = kb.retrieve(q["question"], domain=q["domain"], k=3)
        assert all(p.document.domain == q["domain"] for p in top)  # the filter holds
        hits += q["answer"] in [p.document.id for p in top]
    print(f"hit@3 on {len(held_out)} held-out questions: {hits / len(held_out):.3f}")
    assert hits / len(held_out) >= 0.8
    kb.close()
    again = KnowledgeBase(url, encoder.encode, embedder="minilm")
    assert again.load(docs) == 0  # stored vectors reused: nothing re-embedded
    assert len(again) == len(docs)
    changed = [docs[0].__class__(docs[0].id, "health", docs[0].title, docs[0].text + " More.")]
    assert again.load(changed + docs[1:]) == 1
    again.close()


def test_a_bad_document_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "domain": "health", "title": "t", "text": "x"}\n{"id": "b"}\n')
    with pytest.raises(KnowledgeError, match=r"bad\.jsonl:2"):
        read_documents(str(path))
    path.write_text('{"id": "a", "domain": "Bad/Domain", "title": "t", "text": "x"}\n')
    with pytest.raises(KnowledgeError, match="domain"):
        read_documents(str(path))


@contextlib.asynccontextmanager
async def two_nodes(
    mosquitto, engine, prefix, tmp_path: Path, **asker_knowledge
) -> AsyncIterator[None]:
    expert_kb = {"documents": ["health"], "db_url": f"sqlite:///{tmp_path}/expert.sqlite3"}
    async with (
        running_node(
            mosquitto, engine, f"{prefix}-expert", expertise=["health"], knowledge=expert_kb
        ),
        running_node(
            mosquitto,
            engine,
            f"{prefix}-asker",
            expertise=["general"],
            knowledge={"ask_timeout_s": 60, **asker_knowledge},
        ),
    ):
        yield


@contextlib.asynccontextmanager
async def spy(mosquitto, prefix) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
    seen: list[tuple[str, dict[str, str]]] = []

    def record(msg: Inbound) -> None:
        seen.append((msg.topic, msg.user))

    async with BusClient(settings(mosquitto), f"{prefix}-spy") as bus:
        await bus.subscribe("knowledge/+/query", record)
        yield seen


async def test_a_gap_is_answered_by_the_expert_from_its_knowledge_base_and_integrated(
    mosquitto, engine, prefix, tmp_path
):
    async with (
        two_nodes(mosquitto, engine, prefix, tmp_path),
        spy(mosquitto, prefix) as seen,
        BusClient(settings(mosquitto), f"{prefix}-u") as bus,
        RpcClient(bus) as rpc,
    ):
        topic = node_request_topic(f"{prefix}-asker")
        ask = Chat.user(QUESTION, max_tokens=48, temperature=0.0, domain="health")
        result = await rpc.call(topic, ask, timeout=60)
        plain = await rpc.call(
            topic, Chat.user(QUESTION, max_tokens=48, temperature=0.0), timeout=60
        )
    knowledge = result.meta["knowledge"]
    assert knowledge["domain"] == "health"
    assert "not in this node's expertise" in knowledge["gap"]
    assert knowledge["peer"] == f"{prefix}-expert"
    assert knowledge["integrated"] is True
    assert knowledge["peer_answer"]
    ids = [d["id"] for d in knowledge["documents"]]
    assert "h-dizziness" in ids  # the expert retrieved the right note
    assert all(i.startswith("h-") for i in ids)
    assert result.node == f"{prefix}-asker"
    assert result.text.strip()
    # the asker's prompt carried the expert's answer; without a domain there is no gap
    assert result.usage.prompt_tokens > plain.usage.prompt_tokens + 20
    assert "knowledge" not in plain.meta
    assert [t for t, _ in seen] == [knowledge_query_topic("health")]
    assert seen[0][1]["asker"] == f"{prefix}-asker"


async def test_no_expert_online_the_node_answers_alone_and_says_why(
    mosquitto, engine, prefix, tmp_path
):
    async with (
        two_nodes(mosquitto, engine, prefix, tmp_path, ask_timeout_s=2),
        BusClient(settings(mosquitto), f"{prefix}-u") as bus,
        RpcClient(bus) as rpc,
    ):
        started = time.monotonic()
        result = await rpc.call(
            node_request_topic(f"{prefix}-asker"),
            Chat.user("Is the air safe for a run today?", max_tokens=16, domain="environment"),
            timeout=30,
        )
        took = time.monotonic() - started
        # malformed knowledge queries get an error; the expert keeps serving
        with pytest.raises(RpcError) as bad:
            await rpc.call(knowledge_query_topic("health"), Embed(("x",)), timeout=10)
        ok = await rpc.call(
            knowledge_query_topic("health"),
            Chat.user("Resting heart rate?", max_tokens=8),
            timeout=30,
        )
    knowledge = result.meta["knowledge"]
    assert knowledge["peer"] is None
    assert knowledge["integrated"] is False
    assert "no environment expert answered" in knowledge["error"]
    assert result.text.strip()
    assert took < 2 + 15  # the ask gave up after its timeout, then the node answered
    assert bad.value.code is ErrorCode.BAD_REQUEST
    assert ok.meta["knowledge"]["role"] == "expert"
    assert ok.meta["knowledge"]["documents"][0]["id"] == "h-resting-hr"


async def test_low_confidence_is_a_gap_and_an_expert_never_answers_itself(
    mosquitto, engine, prefix, tmp_path
):
    node_id = f"{prefix}-solo"
    knowledge = {"gap_confidence": 0.999, "ask_timeout_s": 10}
    async with (
        running_node(mosquitto, engine, node_id, expertise=["math"], knowledge=knowledge),
        BusClient(settings(mosquitto), f"{prefix}-u") as bus,
        RpcClient(bus) as rpc,
    ):
        ask = Chat.user("What is 17 times 23?", max_tokens=12, domain="math")
        result = await rpc.call(node_request_topic(node_id), ask, timeout=60)
    knowledge_meta = result.meta["knowledge"]
    assert knowledge_meta["gap"].startswith("confidence ")
    assert "below 0.999" in knowledge_meta["gap"]
    # the only math expert is the asker: the shared group hands it its own query back
    assert knowledge_meta["peer"] is None
    assert "does not answer its own query" in knowledge_meta["error"]
    assert result.text.strip()


def test_chat_carries_a_validated_domain_on_the_wire():
    for content_type in (JSON, CBOR):
        wire = encode(Chat.user("hi", domain="health"), content_type)
        assert decode(wire, content_type).domain == "health"
    assert decode(encode(Chat.user("hi"))).domain is None
    with pytest.raises(CodecError, match="domain"):
        Chat.user("hi", domain="Health/Care")
    bad = b'{"v":1,"kind":"chat","messages":[{"role":"user","content":"x"}],"domain":"a+b"}'
    with pytest.raises(CodecError, match="domain"):
        decode(bad, JSON)
