"""Retrieval quality of a node's knowledge base with each embedder.

Indexes the shipped documents (``edge_node/data/knowledge``: health and
environment, 38 notes) and asks the held-out questions of ``questions.jsonl``
(16, never indexed, phrased unlike the notes), each with the id of the note that
answers it. Hit@1 and hit@3: how often that note is ranked first, or in the top
three, among the notes of the question's domain. Embedders:

- ``minilm``: all-MiniLM-L6-v2 in NumPy (:mod:`broker.encoder`);
- ``smollm2``: SmolLM2-135M-Instruct's mean-pooled hidden states (llama.cpp's
  embedding context, ``engine.embeddings: true``).

    python -m benchmarks.knowledge [--json] [--embedders minilm,smollm2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_node.knowledge import DATA_DIR, SHIPPED, KnowledgeBase, read_documents

Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]


def questions() -> list[dict[str, str]]:
    lines = (DATA_DIR / "questions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def embedder(name: str) -> tuple[Embed, Callable[[], None]]:
    if name == "minilm":
        from broker.encoder import SentenceEncoder  # noqa: PLC0415

        return SentenceEncoder().encode, lambda: None
    if name == "smollm2":
        from edge_node.engines.llama_cpp import LlamaCppConfig, LlamaCppEngine  # noqa: PLC0415

        engine = LlamaCppEngine(LlamaCppConfig(embeddings=True, n_threads=2))
        return (lambda texts: engine.embed(texts, normalize=True)), engine.close
    raise SystemExit(f"unknown embedder {name!r}")


def measure(name: str, directory: Path) -> dict[str, Any]:
    embed, close = embedder(name)
    try:
        kb = KnowledgeBase(f"sqlite:///{directory}/{name}.sqlite3", embed, embedder=name)
        started = time.perf_counter()
        kb.load([d for s in SHIPPED for d in read_documents(s)])
        index_s = time.perf_counter() - started
        hit1 = hit3 = 0
        latencies = []
        misses = []
        for q in questions():
            t0 = time.perf_counter()
            passages = kb.retrieve(q["question"], domain=q["domain"], k=3)
            latencies.append((time.perf_counter() - t0) * 1e3)
            ids = [p.document.id for p in passages]
            hit1 += bool(ids) and ids[0] == q["answer"]
            hit3 += q["answer"] in ids
            if not ids or ids[0] != q["answer"]:
                misses.append({"question": q["question"], "expected": q["answer"], "got": ids})
        n = len(latencies)
        kb.close()
        return {
            "embedder": name,
            "documents": len(kb),
            "questions": n,
            "hit_at_1": round(hit1 / n, 3),
            "hit_at_3": round(hit3 / n, 3),
            "retrieve_ms_median": round(float(np.median(latencies)), 2),
            "index_s": round(index_s, 2),
            "misses": misses,
        }
    finally:
        close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--embedders", default="minilm,smollm2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(name, Path(tmp)) for name in args.embedders.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"{r['embedder']:>8}: hit@1 {r['hit_at_1']:.3f}  hit@3 {r['hit_at_3']:.3f}  "
            f"({r['questions']} held-out questions, {r['documents']} documents; "
            f"retrieve {r['retrieve_ms_median']} ms median, index {r['index_s']} s)"
        )
        for miss in r["misses"]:
            print(f"    miss: {miss['question']!r}: expected {miss['expected']}, got {miss['got']}")


if __name__ == "__main__":
    main()
