"""A vector index with metadata filters, shared by every agent kind (FAISS underneath).

``VectorIndex(dim, metric=..., capacity=...)`` keeps vectors in a FAISS
``IndexIDMap2`` over a flat index (exact search: the sizes here, thousands to
hundreds of thousands of rows, do not need an approximate index) and each row's
metadata in Python. Three metrics:

- ``cosine``: rows and queries are L2-normalised; ``score`` is the cosine (higher is better);
- ``ip``: raw inner product, for callers that normalise themselves (higher is better);
- ``l2``: ``score`` is the Euclidean distance (lower is better).

Hits are always returned best first.

**Filters.** ``search(query, k, where={...})`` keeps only rows whose metadata
matches every condition: a plain value is an exact match (``{"domain": "health"}``),
a tuple ``(lo, hi)`` an inclusive range where ``None`` leaves an end open
(``{"timestamp": (t0, None)}``), a ``set``/``frozenset`` membership
(``{"agent_id": {"w1", "w2"}}``). Exact matches use an inverted index; the
selection is handed to FAISS as an ``IDSelectorBatch``, so the search ranks only
the selected rows.

**Ids and capacity.** ``add`` returns a new id (increasing) unless one is given;
adding an existing id replaces that row. With ``capacity`` the index never holds
more than ``capacity`` rows: when an add goes beyond, the oldest rows are evicted,
in one batch down to ``capacity - capacity // 32`` (a FAISS removal is one pass
over the index, too costly per sample), so a stream of embeddings never grows
memory without bound.

**Threads.** Methods are thread-safe (one lock). Searches block for their
duration: on an event loop call them through ``asyncio.to_thread`` when the
index is large.

FAISS comes from ``faiss-cpu`` (the ``data`` extra), imported on first use; without
it :class:`~broker.errors.MissingDependency` names the extra to install.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from broker.errors import MissingDependency, VectorError

__all__ = ["Hit", "Metric", "VectorIndex", "load_faiss", "set_faiss_threads"]

Metric = Literal["cosine", "ip", "l2"]
Where = Mapping[str, Any]


def load_faiss() -> Any:
    """The ``faiss`` module, or :class:`MissingDependency` naming the extra."""
    try:
        import faiss  # type: ignore[import-untyped, unused-ignore]  # noqa: PLC0415 - optional
    except ImportError as exc:
        raise MissingDependency(
            "vector search needs faiss-cpu: pip install 'edgecollab[data]' "
            "(included in the node, gateway and all extras)"
        ) from exc
    return faiss


def set_faiss_threads(threads: int) -> None:
    """Size FAISS's OpenMP pool (process-wide). One thread is fastest for one query at a
    time on small indexes (10k rows: 0.31 ms on one thread, 0.75 ms on two, measured)."""
    load_faiss().omp_set_num_threads(threads)


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the row's id, its score under the index's metric, its metadata."""

    id: int
    score: float
    meta: Mapping[str, Any] = field(default_factory=dict)


class VectorIndex:
    """Exact nearest-neighbour search with metadata filters; see the module docstring."""

    def __init__(self, dim: int, *, metric: Metric = "cosine", capacity: int | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise VectorError(f"dim must be a positive integer, not {dim!r}")
        if metric not in ("cosine", "ip", "l2"):
            raise VectorError(f"metric must be 'cosine', 'ip' or 'l2', not {metric!r}")
        if capacity is not None and capacity < 1:
            raise VectorError(f"capacity must be at least 1, not {capacity}")
        faiss = load_faiss()
        self._faiss = faiss
        self.dim, self.metric, self.capacity = dim, metric, capacity
        flat = faiss.IndexFlatL2(dim) if metric == "l2" else faiss.IndexFlatIP(dim)
        self._index: Any = faiss.IndexIDMap2(flat)
        self._lock = threading.Lock()
        self._meta: dict[int, Mapping[str, Any]] = {}  # insertion order = age order
        self._by_value: dict[tuple[str, Hashable], set[int]] = {}
        self._ids = itertools.count(1)
        self.evicted = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._meta)

    def __contains__(self, ident: object) -> bool:
        with self._lock:
            return ident in self._meta

    def meta(self, ident: int) -> Mapping[str, Any]:
        """The metadata stored with ``ident``; ``KeyError`` if absent."""
        with self._lock:
            return self._meta[ident]

    def ids(self) -> list[int]:
        """Every id, oldest first."""
        with self._lock:
            return list(self._meta)

    def add(
        self,
        vector: npt.ArrayLike,
        meta: Mapping[str, Any] | None = None,
        *,
        ident: int | None = None,
    ) -> int:
        """Index one vector with its metadata; returns its id."""
        row = self._rows(vector)
        if row.shape[0] != 1:
            raise VectorError("add takes one vector; use add_many for several")
        return self._insert(row, [meta or {}], None if ident is None else [ident])[0]

    def add_many(
        self,
        vectors: npt.ArrayLike,
        metas: Sequence[Mapping[str, Any]] | None = None,
        *,
        ids: Sequence[int] | None = None,
    ) -> list[int]:
        """Index rows of ``vectors`` (n x dim) with one metadata map each; returns their ids."""
        return self._insert(self._rows(vectors), metas, ids)

    def _insert(
        self,
        rows: npt.NDArray[np.float32],
        metas: Sequence[Mapping[str, Any]] | None,
        ids: Sequence[int] | None,
    ) -> list[int]:
        n = rows.shape[0]
        metas = [{}] * n if metas is None else list(metas)
        if len(metas) != n or (ids is not None and len(ids) != n):
            raise VectorError(f"{n} vectors need {n} metadata maps and ids")
        with self._lock:
            chosen = [next(self._ids) for _ in range(n)] if ids is None else [int(i) for i in ids]
            if len(set(chosen)) != n or any(i < 0 for i in chosen):
                raise VectorError("ids must be distinct non-negative integers")
            self._remove([i for i in chosen if i in self._meta])
            self._index.add_with_ids(rows, np.asarray(chosen, dtype=np.int64))
            for ident, meta in zip(chosen, metas, strict=True):
                frozen = MappingProxyType(dict(meta))
                self._meta[ident] = frozen
                for key, value in frozen.items():
                    if isinstance(value, Hashable):
                        self._by_value.setdefault((key, value), set()).add(ident)
            if self.capacity is not None and len(self._meta) > self.capacity:
                # A FAISS removal is a pass over the whole index: evict in batches.
                excess = len(self._meta) - self.capacity + self.capacity // 32
                self._remove(list(itertools.islice(self._meta, excess)))
                self.evicted += excess
        return chosen

    def remove(self, ident: int) -> bool:
        """Drop ``ident``; returns whether it was there."""
        with self._lock:
            if ident not in self._meta:
                return False
            self._remove([ident])
            return True

    def clear(self) -> None:
        with self._lock:
            self._index.reset()
            self._meta.clear()
            self._by_value.clear()

    def search(self, query: npt.ArrayLike, k: int, where: Where | None = None) -> list[Hit]:
        """Up to ``k`` rows nearest ``query`` among those matching ``where``, best first."""
        if k < 1:
            raise VectorError(f"k must be at least 1, not {k}")
        row = self._rows(query)
        if row.shape[0] != 1:
            raise VectorError("search takes one query vector")
        with self._lock:
            selected = None if not where else self._select(where)
            available = len(self._meta) if selected is None else len(selected)
            if available == 0:
                return []
            k = min(k, available)
            if selected is None:
                scores, found = self._index.search(row, k)
            else:
                chosen = np.fromiter(selected, dtype=np.int64, count=len(selected))
                params = self._faiss.SearchParameters(sel=self._faiss.IDSelectorBatch(chosen))
                scores, found = self._index.search(row, k, params=params)
            hits = []
            for score, ident in zip(scores[0], found[0], strict=True):
                if ident < 0:
                    continue
                value = float(np.sqrt(max(score, 0.0))) if self.metric == "l2" else float(score)
                hits.append(Hit(int(ident), value, self._meta[int(ident)]))
            return hits

    def matching(self, where: Where) -> list[int]:
        """Ids (oldest first) whose metadata matches ``where``."""
        with self._lock:
            selected = self._select(where)
            return [i for i in self._meta if i in selected]

    # -- internals; callers hold the lock ---------------------------------------------

    def _rows(self, vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        try:
            rows = np.array(vectors, dtype=np.float32, ndmin=2)
        except (TypeError, ValueError) as exc:
            raise VectorError(f"vectors must be numbers: {exc}") from exc
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise VectorError(f"vectors must have dimension {self.dim}, got shape {rows.shape}")
        if not np.all(np.isfinite(rows)):
            raise VectorError("vectors must be finite")
        if self.metric == "cosine":
            norms = np.linalg.norm(rows, axis=1, keepdims=True)
            if np.any(norms == 0):
                raise VectorError("a zero vector has no cosine similarity")
            rows /= norms
        return np.ascontiguousarray(rows)

    def _remove(self, idents: list[int]) -> None:
        if not idents:
            return
        for ident in idents:
            for key, value in self._meta.pop(ident).items():
                if isinstance(value, Hashable):
                    bucket = self._by_value.get((key, value))
                    if bucket is not None:
                        bucket.discard(ident)
                        if not bucket:
                            del self._by_value[(key, value)]
        self._index.remove_ids(np.asarray(idents, dtype=np.int64))

    def _select(self, where: Where) -> set[int]:
        exact = [(k, v) for k, v in where.items() if not isinstance(v, tuple | set | frozenset)]
        others = [(k, v) for k, v in where.items() if isinstance(v, tuple | set | frozenset)]
        if exact:
            buckets = sorted((self._bucket(k, v) for k, v in exact), key=len)
            selected = set(buckets[0]).intersection(*buckets[1:])
        else:
            selected = set(self._meta)
        for key, condition in others:
            if isinstance(condition, tuple):
                lo, hi = _bounds(key, condition)
                selected = {i for i in selected if _in_range(self._meta[i].get(key), lo, hi)}
            else:
                selected = {i for i in selected if _member(self._meta[i].get(key), condition)}
        return selected

    def _bucket(self, key: str, value: Any) -> set[int]:
        if not isinstance(value, Hashable):
            raise VectorError(f"filter on {key!r} must be a plain value, a range or a set")
        return self._by_value.get((key, value), set())


def _bounds(key: str, condition: tuple[Any, ...]) -> tuple[float | None, float | None]:
    if len(condition) != 2 or any(
        v is not None and (isinstance(v, bool) or not isinstance(v, int | float)) for v in condition
    ):
        raise VectorError(f"range filter on {key!r} must be (lo, hi) numbers or None")
    return condition[0], condition[1]


def _in_range(value: Any, lo: float | None, hi: float | None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (lo is None or value >= lo) and (hi is None or value <= hi)


def _member(value: Any, options: set[Any] | frozenset[Any]) -> bool:
    return isinstance(value, Hashable) and value in options
