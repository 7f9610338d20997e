"""broker.vectors: exact search, metrics, metadata filters, bounded capacity (real FAISS)."""

from __future__ import annotations

import itertools
import sys
import threading

import numpy as np
import pytest

from broker.errors import MissingDependency, VectorError
from broker.vectors import Hit, VectorIndex


def _rng_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_cosine_search_finds_the_nearest_rows_best_first():
    rows = _rng_rows(200, 16)
    index = VectorIndex(16)
    ids = index.add_many(rows, [{"i": i} for i in range(200)])
    assert len(index) == 200
    assert ids == list(range(1, 201))
    query = rows[17] + 0.01
    hits = index.search(query, 5)
    normed = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    expected = np.argsort(-(normed @ (query / np.linalg.norm(query))))[:5]
    assert [h.meta["i"] for h in hits] == expected.tolist()
    assert hits[0].meta["i"] == 17
    assert hits[0].score > 0.99
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    assert isinstance(hits[0], Hit)


def test_l2_scores_are_euclidean_distances_smallest_first():
    index = VectorIndex(2, metric="l2")
    index.add([3.0, 4.0], {"name": "far"})
    index.add([0.0, 1.0], {"name": "near"})
    hits = index.search([0.0, 0.0], 2)
    assert [(h.meta["name"], round(h.score, 5)) for h in hits] == [("near", 1.0), ("far", 5.0)]


def test_ip_metric_keeps_magnitudes():
    index = VectorIndex(2, metric="ip")
    index.add([1.0, 0.0], {"n": "unit"})
    index.add([5.0, 0.0], {"n": "long"})
    assert [h.meta["n"] for h in index.search([1.0, 0.0], 2)] == ["long", "unit"]
    assert index.search([1.0, 0.0], 1)[0].score == pytest.approx(5.0)


def test_exact_range_and_set_filters_rank_only_matching_rows():
    rows = _rng_rows(300, 8, seed=1)
    metas = [
        {"domain": "health" if i % 3 == 0 else "urban", "agent": f"a{i % 5}", "timestamp": i}
        for i in range(300)
    ]
    index = VectorIndex(8)
    index.add_many(rows, metas)
    query = rows[1]  # an urban row: a health filter must not return it
    hits = index.search(query, 10, where={"domain": "health"})
    assert len(hits) == 10
    assert all(h.meta["domain"] == "health" for h in hits)
    hits = index.search(query, 50, where={"domain": "health", "timestamp": (100, 160)})
    assert hits
    assert all(100 <= h.meta["timestamp"] <= 160 for h in hits)
    assert len(hits) == len([i for i in range(100, 161) if i % 3 == 0])
    hits = index.search(query, 300, where={"agent": {"a1", "a2"}, "timestamp": (None, 49)})
    assert {h.meta["agent"] for h in hits} == {"a1", "a2"}
    assert len(hits) == 20
    # The unfiltered best among matches equals the filtered search's first hit.
    allowed = [i for i, m in enumerate(metas) if m["domain"] == "health"]
    normed = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    best = max(allowed, key=lambda i: float(normed[i] @ normed[1]))
    assert index.search(query, 1, where={"domain": "health"})[0].meta["timestamp"] == best
    assert index.search(query, 5, where={"domain": "nowhere"}) == []
    assert index.search(query, 5, where={"missing_key": (0, 1)}) == []
    assert index.matching({"agent": "a0", "timestamp": (0, 20)}) == [1, 6, 11, 16, 21]


def test_capacity_evicts_the_oldest_rows_in_batches():
    index = VectorIndex(4, capacity=64)
    for i in range(1000):
        index.add(np.array([1.0, i % 7, i % 3, 1.0]), {"seq": i, "agent": "w1"})
        assert len(index) <= 64
    kept = [index.meta(i)["seq"] for i in index.ids()]
    assert kept == list(range(1000 - len(kept), 1000))  # the newest, in order
    assert len(kept) >= 64 - 64 // 32
    assert index.evicted == 1000 - len(kept)
    # Evicted rows leave neither FAISS nor the filter index.
    assert len(index.search([1, 0, 0, 1], 1000, where={"agent": "w1"})) == len(kept)
    assert index.matching({"seq": 0}) == []


def test_explicit_ids_replace_rows_and_remove_drops_them():
    index = VectorIndex(2)
    index.add([1.0, 0.0], {"v": 1}, ident=42)
    index.add([0.0, 1.0], {"v": 2}, ident=42)
    assert len(index) == 1
    assert index.meta(42)["v"] == 2
    assert index.search([0.0, 1.0], 1)[0].score == pytest.approx(1.0)
    assert index.matching({"v": 1}) == []
    assert index.remove(42)
    assert not index.remove(42)
    assert len(index) == 0
    assert index.search([0.0, 1.0], 3) == []


def test_bad_input_is_a_vector_error_and_changes_nothing():
    index = VectorIndex(3)
    index.add([1.0, 0.0, 0.0])
    for bad in ([1.0, 2.0], [[1.0, 2.0, 3.0, 4.0]], [np.nan, 0.0, 0.0], [0.0, 0.0, 0.0], ["x"]):
        with pytest.raises(VectorError):
            index.add(bad)
    with pytest.raises(VectorError):
        index.add_many(np.ones((2, 3)), [{}])
    with pytest.raises(VectorError):
        index.search([1.0, 0.0, 0.0], 0)
    with pytest.raises(VectorError):
        index.search([1.0, 0.0, 0.0], 1, where={"t": (1, 2, 3)})
    with pytest.raises(VectorError):
        index.search([1.0, 0.0, 0.0], 1, where={"t": ("a", None)})
    with pytest.raises(VectorError):
        VectorIndex(0)
    with pytest.raises(VectorError):
        VectorIndex(3, metric="dot")  # type: ignore[arg-type]
    assert len(index) == 1
    assert isinstance(VectorError("x"), ValueError)


def test_metadata_is_read_only_and_copied():
    meta = {"domain": "health"}
    index = VectorIndex(2)
    ident = index.add([1.0, 1.0], meta)
    meta["domain"] = "urban"
    assert index.meta(ident)["domain"] == "health"
    with pytest.raises(TypeError):
        index.meta(ident)["domain"] = "x"  # type: ignore[index]


def test_concurrent_adds_and_searches_keep_the_index_consistent():
    index = VectorIndex(8, capacity=500)
    rows = _rng_rows(2000, 8, seed=3)

    def writer(part: int) -> None:
        for i in range(part, 2000, 2):
            index.add(rows[i], {"part": part})

    def reader() -> None:
        for i in range(200):
            for hit in index.search(rows[i], 3, where={"part": 0}):
                assert hit.meta["part"] == 0

    threads = [threading.Thread(target=writer, args=(p,)) for p in (0, 1)]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index) <= 500
    assert len(index.ids()) == len(index)


def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(MissingDependency, match=r"edgecollab\[data\]"):
        VectorIndex(4)
