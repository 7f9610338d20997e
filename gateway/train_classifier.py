"""Train the query classifier and report how well it does on queries it never saw.

    python -m gateway.train_classifier [--json] [--out gateway/data/classifier.npz]

1. Reads ``gateway/data/queries.jsonl`` and splits it 80/20, stratified by domain,
   seeded (:func:`gateway.classifier.split`): the same split on every machine.
2. Picks the L2 strength by 5-fold stratified cross-validation on the training part
   only, from :data:`L2_GRID` (ties go to the stronger regularisation).
3. Trains on the whole training part, saves that model (so the held-out figures
   describe the shipped weights), and reports on the held-out part: domain accuracy,
   per-domain precision and recall, the confusion matrix (rows: true domain,
   columns: predicted) and complexity accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

from gateway.classifier import (
    DEFAULT_DATA,
    DEFAULT_MODEL,
    DOMAINS,
    DomainClassifier,
    Example,
    load_examples,
    split,
)
from gateway.encoder import SentenceEncoder

L2_GRID = (0.001, 0.01, 0.1, 1.0)
FOLDS = 5
SEED = 0


class DomainScore(TypedDict):
    precision: float
    recall: float
    support: int


class Report(TypedDict):
    examples: int
    train: int
    held_out: int
    seed: int
    l2: float
    cv_accuracy: dict[str, float]
    accuracy: float
    complexity_accuracy: float
    per_domain: dict[str, DomainScore]
    confusion: list[list[int]]
    domains: list[str]
    encode_seconds: float
    model: str


def _cv_accuracy(
    train: list[Example], emb: np.ndarray, encoder: SentenceEncoder, l2: float
) -> float:
    """Mean accuracy over stratified folds of the training part (seeded)."""
    rng = np.random.default_rng(SEED)
    fold = np.empty(len(train), dtype=np.int64)
    for domain in DOMAINS:
        rows = np.array([i for i, e in enumerate(train) if e.domain == domain])
        fold[rng.permutation(rows)] = np.arange(len(rows)) % FOLDS
    scores = []
    for k in range(FOLDS):
        fit, val = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        model = DomainClassifier.train([train[i] for i in fit], encoder, l2=l2, embeddings=emb[fit])
        pred = model.predict([train[i].text for i in val], embeddings=emb[val])
        scores.append(
            np.mean([p.domain == train[i].domain for p, i in zip(pred, val, strict=True)])
        )
    return float(np.mean(scores))


def run(data: Path, out: Path) -> Report:
    """Split, select L2, train, save, evaluate: the figures as a :class:`Report`."""
    examples = load_examples(data)
    train, test = split(examples, 0.2, SEED)
    encoder = SentenceEncoder()
    started = time.perf_counter()
    emb_train = encoder.encode([e.text for e in train])
    emb_test = encoder.encode([e.text for e in test])
    encode_seconds = time.perf_counter() - started

    cv = {str(l2): _cv_accuracy(train, emb_train, encoder, l2) for l2 in L2_GRID}
    best = max(L2_GRID, key=lambda l2: (round(cv[str(l2)], 6), l2))
    model = DomainClassifier.train(train, encoder, l2=best, embeddings=emb_train)
    model.save(out)

    pred = model.predict([e.text for e in test], embeddings=emb_test)
    n = len(DOMAINS)
    confusion = np.zeros((n, n), dtype=np.int64)
    for e, p in zip(test, pred, strict=True):
        confusion[DOMAINS.index(e.domain), DOMAINS.index(p.domain)] += 1
    per_domain: dict[str, DomainScore] = {}
    for i, domain in enumerate(DOMAINS):
        predicted, actual = int(confusion[:, i].sum()), int(confusion[i].sum())
        per_domain[domain] = {
            "precision": float(confusion[i, i] / predicted) if predicted else 0.0,
            "recall": float(confusion[i, i] / actual) if actual else 0.0,
            "support": actual,
        }
    complexity_ok = [p.complexity_label == e.complexity for e, p in zip(test, pred, strict=True)]
    return {
        "examples": len(examples),
        "train": len(train),
        "held_out": len(test),
        "seed": SEED,
        "l2": best,
        "cv_accuracy": cv,
        "accuracy": float(np.trace(confusion) / len(test)),
        "complexity_accuracy": float(np.mean(complexity_ok)),
        "per_domain": per_domain,
        "confusion": confusion.tolist(),
        "domains": list(DOMAINS),
        "encode_seconds": round(encode_seconds, 3),
        "model": str(out),
    }


def _print_report(r: Report) -> None:
    print(
        f"{r['examples']} examples: {r['train']} train, {r['held_out']} held out (seed {r['seed']})"
    )
    cv = ", ".join(f"{k}: {v:.3f}" for k, v in r["cv_accuracy"].items())
    print(f"L2 by {FOLDS}-fold CV on the training part: {r['l2']} ({cv})")
    print(f"held-out domain accuracy:     {r['accuracy']:.3f}")
    print(f"held-out complexity accuracy: {r['complexity_accuracy']:.3f}")
    print(f"\n{'domain':<12} precision  recall  support")
    for d, s in r["per_domain"].items():
        print(f"{d:<12} {s['precision']:>9.3f} {s['recall']:>7.3f} {s['support']:>8}")
    print("\nconfusion (rows: true, columns: predicted)")
    print(" " * 12 + "".join(f"{d[:6]:>8}" for d in r["domains"]))
    for d, row in zip(r["domains"], r["confusion"], strict=True):
        print(f"{d:<12}" + "".join(f"{c:>8}" for c in row))
    print(f"\nsaved {r['model']}")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.train_classifier",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="labelled queries (JSONL)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL, help="where to save the weights")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    args = parser.parse_args(argv)
    report = run(args.data, args.out)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
