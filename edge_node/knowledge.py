"""A node's knowledge base: documents in SQL (SQLAlchemy), vectors in a FAISS index.

Documents are short guidance notes (``id``, ``domain``, ``title``, ``text``) read
from JSON-lines files; the node ships two sets written for the testbed
(``edge_node/data/knowledge``: ``health``, ``environment``; not medical advice).
Each document is stored with its embedding and a digest of what was embedded, so
a restarted node re-embeds only what changed; at start every stored vector goes
into a :class:`broker.vectors.VectorIndex` (cosine), and :meth:`retrieve` ranks
documents of one domain against a question.

The embedder is injected (``texts -> unit rows``): the MiniLM sentence encoder
(:mod:`broker.encoder`) by default, or the node's llama.cpp embedding context.
Measured retrieval with each is in ``benchmarks/knowledge.py`` and
docs/decisions.md. Every method blocks (SQL, embedding, FAISS): call them off the
event loop. SQLAlchemy errors become :class:`KnowledgeError`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from broker.errors import TopicError
from broker.topics import validate_id
from broker.vectors import VectorIndex
from edge_node.errors import NodeError

DATA_DIR = Path(__file__).resolve().parent / "data" / "knowledge"
SHIPPED = ("health", "environment")
MAX_TEXT = 4000

Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]


class KnowledgeError(NodeError):
    """A knowledge base could not be read, stored or searched."""


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    domain: str
    title: str
    text: str
    source: str = "edgecollab testbed (written for the testbed; not medical advice)"

    def __post_init__(self) -> None:
        if not self.id or len(self.id) > 128:
            raise KnowledgeError("a document id must be 1-128 characters")
        try:
            validate_id(self.domain, "document domain")
        except TopicError as exc:
            raise KnowledgeError(f"document {self.id}: {exc}") from None
        if not self.title.strip() or not self.text.strip() or len(self.text) > MAX_TEXT:
            raise KnowledgeError(f"document {self.id}: title and text (<= {MAX_TEXT}) required")

    @property
    def embedded_text(self) -> str:
        return f"{self.title}. {self.text}"


@dataclass(frozen=True, slots=True)
class Passage:
    """A retrieved document and its cosine similarity to the question."""

    document: Document
    score: float

    def cite(self) -> dict[str, Any]:
        return {"id": self.document.id, "title": self.document.title, "score": round(self.score, 3)}


def documents_path(name_or_path: str) -> Path:
    """A shipped set's file (``health``) or a path to a JSON-lines file."""
    if name_or_path in SHIPPED:
        return DATA_DIR / f"{name_or_path}.jsonl"
    return Path(name_or_path).expanduser()


def read_documents(name_or_path: str) -> list[Document]:
    """Documents of one JSON-lines file; a bad line is a :class:`KnowledgeError` naming it."""
    path = documents_path(name_or_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KnowledgeError(f"cannot read knowledge documents {path}: {exc}") from exc
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            out.append(
                Document(
                    id=str(raw["id"]),
                    domain=str(raw["domain"]),
                    title=str(raw["title"]),
                    text=str(raw["text"]),
                    **({"source": str(raw["source"])} if "source" in raw else {}),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise KnowledgeError(f"{path}:{number}: not a document ({exc})") from exc
    return out


class KnowledgeBase:
    """Documents in SQL plus a vector index over them; see the module docstring."""

    def __init__(self, url: str, embed: Embed, *, embedder: str) -> None:
        from sqlalchemy import create_engine  # noqa: PLC0415 - optional (extra 'knowledge')
        from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

        from edge_node.knowledge_store import metadata  # noqa: PLC0415

        self.url = url
        self.embedder = embedder
        self._embed = embed
        self._errors: tuple[type[Exception], ...] = (SQLAlchemyError,)
        self._docs: dict[int, Document] = {}
        self._index: VectorIndex | None = None
        try:
            self._engine = create_engine(url)
            metadata.create_all(self._engine)
        except SQLAlchemyError as exc:
            raise KnowledgeError(f"knowledge store {url}: {exc}") from exc

    def __len__(self) -> int:
        return len(self._docs)

    @property
    def domains(self) -> set[str]:
        return {d.domain for d in self._docs.values()}

    def load(self, documents: Iterable[Document]) -> int:
        """Store ``documents`` (re-embedding new or changed ones), then rebuild the index.

        Returns how many documents were embedded now.
        """
        from edge_node.knowledge_store import load_rows, upsert  # noqa: PLC0415

        wanted = {d.id: d for d in documents}
        try:
            with self._engine.begin() as conn:
                stored = load_rows(conn)
                fresh = [
                    d
                    for d in wanted.values()
                    if d.id not in stored or stored[d.id].digest != self._digest(d)
                ]
                if fresh:
                    vectors = self._embed([d.embedded_text for d in fresh])
                    for doc, vector in zip(fresh, vectors, strict=True):
                        upsert(conn, doc, self._digest(doc), self.embedder, vector)
                rows = load_rows(conn)
        except self._errors as exc:
            raise KnowledgeError(f"knowledge store {self.url}: {exc}") from exc
        self._rebuild(rows)
        return len(fresh)

    def _rebuild(self, rows: dict[str, Any]) -> None:
        usable = [r for r in rows.values() if r.embedder == self.embedder]
        self._docs.clear()
        self._index = None
        if not usable:
            return
        vectors = np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in usable])
        index = VectorIndex(vectors.shape[1], metric="cosine")
        for row, vector in zip(usable, vectors, strict=True):
            doc = Document(row.id, row.domain, row.title, row.text, row.source)
            self._docs[index.add(vector, {"domain": row.domain, "doc": row.id})] = doc
        self._index = index

    def retrieve(
        self, question: str, *, domain: str | None = None, k: int = 3, min_score: float = 0.0
    ) -> list[Passage]:
        """The ``k`` documents (of ``domain``) most similar to ``question``, best first."""
        if self._index is None or not question.strip():
            return []
        vector = self._embed([question])[0]
        where = None if domain is None else {"domain": domain}
        hits = self._index.search(vector, k, where)
        return [Passage(self._docs[h.id], h.score) for h in hits if h.score >= min_score]

    def _digest(self, doc: Document) -> str:
        text = f"{self.embedder}\n{doc.domain}\n{doc.embedded_text}\n{doc.source}"
        return hashlib.sha256(text.encode()).hexdigest()

    def close(self) -> None:
        self._engine.dispose()


__all__ = [
    "SHIPPED",
    "Document",
    "Embed",
    "KnowledgeBase",
    "KnowledgeError",
    "Passage",
    "documents_path",
    "read_documents",
]
