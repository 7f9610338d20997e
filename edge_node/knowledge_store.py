"""The knowledge base's table (SQLAlchemy Core): one row per document with its vector.

Imported only when a node holds a knowledge base (SQLAlchemy is in the
``knowledge`` extra). SQLite by default; any SQLAlchemy URL works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Column, Connection, LargeBinary, MetaData, String, Table, Text, select

if TYPE_CHECKING:
    from edge_node.knowledge import Document

metadata = MetaData()

documents = Table(
    "kb_documents",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("domain", String(64), nullable=False, index=True),
    Column("title", String(512), nullable=False),
    Column("text", Text, nullable=False),
    Column("source", String(512), nullable=False),
    Column("digest", String(64), nullable=False),  # sha256 of what was embedded, and by whom
    Column("embedder", String(128), nullable=False),
    Column("vector", LargeBinary, nullable=False),  # float32, little-endian
)


def load_rows(conn: Connection) -> dict[str, Any]:
    """Every stored document row by id."""
    return {row.id: row for row in conn.execute(select(documents))}


def upsert(
    conn: Connection, doc: Document, digest: str, embedder: str, vector: npt.NDArray[Any]
) -> None:
    values = {
        "domain": doc.domain,
        "title": doc.title,
        "text": doc.text,
        "source": doc.source,
        "digest": digest,
        "embedder": embedder,
        "vector": np.asarray(vector, dtype="<f4").tobytes(),
    }
    updated = conn.execute(documents.update().where(documents.c.id == doc.id).values(**values))
    if updated.rowcount == 0:
        conn.execute(documents.insert().values(id=doc.id, **values))
