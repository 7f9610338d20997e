"""Semantic cache benchmark: lookup latency at 10k entries, and hit rates on labelled pairs.

    python -m benchmarks.cache --json

- ``lookup_us``: :meth:`gateway.cache.SemanticCache.lookup` with ``--entries`` cached
  answers in one scope, fake random unit vectors of dimension 384 (the embedding is a
  dictionary look-up here, so this is the cache's own cost: hashing, the lock, the
  FAISS flat search, verification). ``exact_hit``: a stored question reworded only in
  case and spacing; ``vector_hit``: a reworded question (cosine ~0.95 to its entry)
  found by FAISS and verified; ``miss``: a random vector, nothing above the threshold.
- ``encoder_ms``: one query through ``gateway.encoder.SentenceEncoder`` (the cost a
  real non-exact lookup adds), when the encoder is installed.
- ``labelled``: hit rates on the labelled pairs of ``tests/test_semantic_cache.py``
  with the real encoder at ``DEFAULT_THRESHOLD``, with and without verification.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from gateway.cache import DEFAULT_THRESHOLD, CachedAnswer, SemanticCache, same_question

DIM = 384
SCOPE = "bench/model"
ANSWER = CachedAnswer(text="ok", model="m", prompt_tokens=1, completion_tokens=1, node="n")


def percentiles(samples_s: list[float]) -> dict[str, float]:
    us = np.array(samples_s) * 1e6
    return {
        "p50": round(float(np.percentile(us, 50)), 1),
        "p99": round(float(np.percentile(us, 99)), 1),
    }


def bench_lookup(entries: int, lookups: int, seed: int = 7) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    vectors: dict[str, np.ndarray] = {}

    def unit(v: np.ndarray) -> np.ndarray:
        return np.asarray(v / np.linalg.norm(v), dtype=np.float32)

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    cache = SemanticCache(embed, ttl_s=3600, max_entries=entries)
    store_s = []
    for i in range(entries):
        text = f"What is the reading of sensor {i}?"
        vectors[text] = unit(rng.standard_normal(DIM))
        t0 = time.perf_counter()
        cache.store(text, SCOPE, ANSWER)
        store_s.append(time.perf_counter() - t0)
    exact: list[float] = []
    vector: list[float] = []
    miss: list[float] = []
    for n in range(lookups):
        i = int(rng.integers(entries))
        stored = vectors[f"What is the reading of sensor {i}?"]
        reworded = f"Can you tell me what the reading of sensor {i} is?"
        vectors[reworded] = unit(stored + 0.33 * unit(rng.standard_normal(DIM)))
        vectors[f"random {n}"] = unit(rng.standard_normal(DIM))
        for query, samples in (
            (f"what is the READING of sensor {i}", exact),
            (reworded, vector),
            (f"random {n}", miss),
        ):
            t0 = time.perf_counter()
            hit = cache.lookup(query, SCOPE)
            samples.append(time.perf_counter() - t0)
            assert (hit is None) is (samples is miss), (query, hit)
    return {
        "exact_hit": percentiles(exact),
        "vector_hit": percentiles(vector),
        "miss": percentiles(miss),
        "store": percentiles(store_s),
    }


def bench_labelled() -> dict[str, Any] | None:
    if importlib.util.find_spec("gateway.encoder") is None:
        return None
    from gateway.encoder import SentenceEncoder  # noqa: PLC0415 - optional, heavy
    from tests.test_semantic_cache import (  # noqa: PLC0415 - the labelled set lives there
        DIFFERENT,
        NEAR_DUPLICATES,
        PARAPHRASES,
    )

    encoder = SentenceEncoder()
    sets = {"near_duplicates": NEAR_DUPLICATES, "paraphrases": PARAPHRASES, "different": DIFFERENT}
    texts = sorted({t for pairs in sets.values() for p in pairs for t in p})
    memo = dict(zip(texts, encoder.encode(texts), strict=True))

    def embed(batch: Sequence[str]) -> np.ndarray:
        return np.array([memo[t] for t in batch], dtype=np.float32)

    def rate(pairs: list[tuple[str, str]], verify: Callable[[str, str], bool] | None) -> int:
        hits = 0
        for first, second in pairs:
            cache = SemanticCache(embed, ttl_s=60, max_entries=10, verify=verify)
            cache.store(first, SCOPE, ANSWER)
            hits += cache.lookup(second, SCOPE) is not None
        return hits

    out: dict[str, Any] = {"threshold": DEFAULT_THRESHOLD}
    for name, pairs in sets.items():
        cos = [float(memo[a] @ memo[b]) for a, b in pairs]
        out[name] = {
            "pairs": len(pairs),
            "hits": rate(pairs, same_question),
            "hits_without_verify": rate(pairs, None),
            "cosine_min": round(min(cos), 3),
            "cosine_max": round(max(cos), 3),
        }
    query = ["What's the air quality near the stadium tonight?"]
    encoder.encode(query)
    samples = []
    for _ in range(50):
        t0 = time.perf_counter()
        encoder.encode(query)
        samples.append(time.perf_counter() - t0)
    out["encoder_ms_p50"] = round(float(np.median(samples)) * 1e3, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="semantic cache latency and hit rates")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--entries", type=int, default=10_000, help="cached answers")
    parser.add_argument("--lookups", type=int, default=2000, help="lookups of each kind")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "lookup_us": bench_lookup(args.entries, args.lookups),
        "labelled": bench_labelled(),
        "params": {"entries": args.entries, "dim": DIM, "lookups": args.lookups},
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:>10}: {value}")


if __name__ == "__main__":
    main()
