"""Classifier engine: a query's domain, its complexity, knowledge gaps, capable nodes.

**Domain.** Multinomial logistic regression (softmax, L2-regularised, full-batch
gradient descent with Nesterov momentum, NumPy only) over all-MiniLM-L6-v2 sentence
embeddings (:mod:`gateway.encoder`), standardised with the training set's mean and
deviation. Classes: :data:`DOMAINS`. ``confidence`` is the top class probability.

**Complexity.** A second, binary logistic model of the same kind over the embedding
plus four length features: log(1 + words), question marks, clause marks (``, ; :``)
and conjunctions (`` and ``, `` or ``, `` then ``). ``complexity`` is P(high), in
[0, 1]; the label is ``high`` at 0.5 or more. "high" in the training data means a
multi-part, open-ended or multi-step request (design, compare, derive, plan); "low" a
single fact, lookup or short calculation.

**Data.** ``gateway/data/queries.jsonl`` (see the README beside it). The shipped
weights, ``gateway/data/classifier.npz``, come from ``python -m
gateway.train_classifier``, trained on the training part of :func:`split` only; the
file records a digest of its training texts so a test can check that the held-out
part was never seen. Held-out accuracy and the confusion matrix: see that script.

**Gaps and matching** read the CMS node birth info (``capabilities``, ``expertise``)
merged with presence (``online``): :func:`gap_likely`, :func:`match_nodes`.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_DATA",
    "DEFAULT_MODEL",
    "DOMAINS",
    "Classification",
    "ClassifierError",
    "DomainClassifier",
    "Encoder",
    "Example",
    "gap_likely",
    "load_examples",
    "match_nodes",
    "online_expertise",
    "split",
    "texts_digest",
]

DOMAINS = ("health", "environment", "math", "code", "general")
GENERAL = "general"
DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_DATA = DATA_DIR / "queries.jsonl"
DEFAULT_MODEL = DATA_DIR / "classifier.npz"
Complexity = Literal["low", "high"]
Array = npt.NDArray[np.float32]
N_LENGTH_FEATURES = 4
_CLAUSE = re.compile(r"[,;:]")
_CONJUNCTION = re.compile(r"\b(?:and|or|then)\b", re.IGNORECASE)


class ClassifierError(Exception):
    """Bad training data, or a weights file that is missing, malformed or mismatched."""


class Encoder(Protocol):
    """What the classifier needs from a sentence encoder (:class:`SentenceEncoder`)."""

    @property
    def name(self) -> str: ...

    def encode(self, texts: Sequence[str]) -> Array: ...


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled query."""

    text: str
    domain: str
    complexity: Complexity

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ClassifierError(f"unknown domain {self.domain!r} (known: {DOMAINS})")
        if self.complexity not in ("low", "high"):
            raise ClassifierError(f"complexity must be low or high, not {self.complexity!r}")


@dataclass(frozen=True, slots=True)
class Classification:
    """What the classifier says about one query."""

    domain: str
    probabilities: Mapping[str, float]
    confidence: float  # probability of ``domain``
    complexity: float  # P(high) in [0, 1]
    complexity_label: Complexity


def load_examples(path: str | Path = DEFAULT_DATA) -> list[Example]:
    """Read a JSON-lines file of ``{"text", "domain", "complexity"}`` records."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
                out.append(Example(record["text"], record["domain"], record["complexity"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise ClassifierError(f"{path}:{n}: bad example: {exc}") from exc
    return out


def split(
    examples: Sequence[Example], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Stratified by domain, seeded: (train, held out); the same on every machine."""
    rng = np.random.default_rng(seed)
    train: list[Example] = []
    test: list[Example] = []
    for domain in DOMAINS:
        group = [e for e in examples if e.domain == domain]
        order = rng.permutation(len(group))
        n_test = round(len(group) * test_fraction)
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test


def texts_digest(texts: Iterable[str]) -> str:
    """sha256 over the sorted texts: identifies a training set."""
    return hashlib.sha256("\n".join(sorted(texts)).encode()).hexdigest()


def length_features(texts: Sequence[str]) -> Array:
    """Per text: log(1 + words), question marks, clause marks, conjunctions."""
    return np.array(
        [
            [
                np.log1p(len(t.split())),
                t.count("?"),
                len(_CLAUSE.findall(t)),
                len(_CONJUNCTION.findall(t)),
            ]
            for t in texts
        ],
        dtype=np.float32,
    ).reshape(len(texts), N_LENGTH_FEATURES)


@dataclass(frozen=True, slots=True)
class _Softmax:
    """Standardised features -> class probabilities: softmax(((x - mean) / scale) @ w + b)."""

    w: Array
    b: Array
    mean: Array
    scale: Array

    @classmethod
    def fit(
        cls, x: Array, y: npt.NDArray[np.int64], n_classes: int, l2: float, iterations: int = 500
    ) -> _Softmax:
        """Minimise mean cross-entropy + l2/2 * |w|^2 (convex; step 1/L, Nesterov)."""
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        z = ((x - mean) / scale).astype(np.float64)
        n, d = z.shape
        onehot = np.eye(n_classes)[y]
        # Lipschitz constant of the gradient: |z|_2^2 / (2n) for softmax CE, + l2.
        step = 1.0 / (np.linalg.norm(z, 2) ** 2 / (2 * n) + 1 + l2)
        w, b = np.zeros((d, n_classes)), np.zeros(n_classes)
        w_prev, b_prev = w, b
        for k in range(1, iterations + 1):
            momentum = (k - 1) / (k + 2)
            vw, vb = w + momentum * (w - w_prev), b + momentum * (b - b_prev)
            error = (_softmax(z @ vw + vb) - onehot) / n
            w_prev, b_prev = w, b
            w = vw - step * (z.T @ error + l2 * vw)
            b = vb - step * error.sum(axis=0)
        f32 = np.float32
        return cls(w.astype(f32), b.astype(f32), mean.astype(f32), scale.astype(f32))

    def proba(self, x: Array) -> Array:
        return _softmax(((x - self.mean) / self.scale) @ self.w + self.b).astype(np.float32)


def _softmax(logits: npt.NDArray[Any]) -> npt.NDArray[Any]:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)  # type: ignore[no-any-return]


class DomainClassifier:
    """Domain and complexity of queries, from sentence embeddings.

    Build one with :meth:`train` or :meth:`load`; :meth:`predict` is thread-safe (pure
    NumPy) and blocking: on the event loop call it through ``asyncio.to_thread``.
    """

    def __init__(
        self,
        encoder: Encoder,
        domain_model: _Softmax,
        complexity_model: _Softmax,
        *,
        train_digest: str = "",
    ) -> None:
        self.encoder = encoder
        self._domain = domain_model
        self._complexity = complexity_model
        self.train_digest = train_digest

    @classmethod
    def train(
        cls,
        examples: Sequence[Example],
        encoder: Encoder | None = None,
        *,
        l2: float = 0.1,
        embeddings: Array | None = None,
    ) -> DomainClassifier:
        """Fit both models on ``examples`` (``embeddings``: their rows, if already encoded)."""
        if {e.domain for e in examples} != set(DOMAINS):
            raise ClassifierError(f"training data must cover every domain: {DOMAINS}")
        enc = encoder if encoder is not None else _default_encoder()
        texts = [e.text for e in examples]
        emb = enc.encode(texts) if embeddings is None else embeddings
        domains = np.array([DOMAINS.index(e.domain) for e in examples], dtype=np.int64)
        complexity = np.array([e.complexity == "high" for e in examples], dtype=np.int64)
        domain_model = _Softmax.fit(emb, domains, len(DOMAINS), l2)
        features = np.hstack([emb, length_features(texts)])
        complexity_model = _Softmax.fit(features, complexity, 2, l2)
        return cls(enc, domain_model, complexity_model, train_digest=texts_digest(texts))

    def predict(
        self, texts: Sequence[str], embeddings: Array | None = None
    ) -> list[Classification]:
        """Classify each text (``embeddings``: their rows, if already encoded)."""
        if not texts:
            return []
        emb = self.encoder.encode(texts) if embeddings is None else embeddings
        p_domain = self._domain.proba(emb)
        p_high = self._complexity.proba(np.hstack([emb, length_features(texts)]))[:, 1]
        out = []
        for row, high in zip(p_domain, p_high, strict=True):
            best = int(row.argmax())
            out.append(
                Classification(
                    domain=DOMAINS[best],
                    probabilities={d: float(p) for d, p in zip(DOMAINS, row, strict=True)},
                    confidence=float(row[best]),
                    complexity=float(high),
                    complexity_label="high" if high >= 0.5 else "low",
                )
            )
        return out

    def classify(self, text: str) -> tuple[str, float]:
        """(domain, complexity) of one text: the orchestrator's ``Classify`` callable."""
        c = self.predict([text])[0]
        return c.domain, c.complexity

    def save(self, path: str | Path) -> None:
        """Write the weights, the domain list and the encoder name to an ``.npz`` file."""
        arrays: dict[str, npt.NDArray[Any]] = {
            "domains": np.array(DOMAINS),
            "encoder": np.array(self.encoder.name),
            "train_digest": np.array(self.train_digest),
        }
        for prefix, model in (("domain", self._domain), ("complexity", self._complexity)):
            for field in ("w", "b", "mean", "scale"):
                arrays[f"{prefix}_{field}"] = getattr(model, field)
        with Path(path).open("wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(
        cls, path: str | Path = DEFAULT_MODEL, encoder: Encoder | None = None
    ) -> DomainClassifier:
        """Read :meth:`save`'s file; the encoder must be the one it was trained with."""
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
            models = [
                _Softmax(*(data[f"{p}_{k}"] for k in ("w", "b", "mean", "scale")))
                for p in ("domain", "complexity")
            ]
            domains = tuple(str(d) for d in data["domains"])
            name, digest = str(data["encoder"]), str(data["train_digest"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise ClassifierError(f"cannot load classifier weights from {path}: {exc}") from exc
        if domains != DOMAINS:
            raise ClassifierError(f"{path}: trained for domains {domains}, expected {DOMAINS}")
        if models[0].w.shape[1] != len(DOMAINS) or models[1].w.shape != (
            models[0].w.shape[0] + N_LENGTH_FEATURES,
            2,
        ):
            raise ClassifierError(f"{path}: weight shapes do not fit together")
        enc = encoder if encoder is not None else _default_encoder()
        if name != enc.name:
            raise ClassifierError(f"{path}: trained on {name} embeddings, not {enc.name}")
        return cls(enc, models[0], models[1], train_digest=digest)


def _default_encoder() -> Encoder:
    from gateway.encoder import SentenceEncoder  # noqa: PLC0415 - loads 90 MB of weights

    return SentenceEncoder()


def online_expertise(nodes: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Union of the ``expertise`` lists of the online nodes."""
    return {
        d
        for info in nodes.values()
        if info.get("online") is True
        for d in info.get("expertise", ())
    }


def gap_likely(domain: str, online_expertise: set[str]) -> bool:
    """True when no online node lists ``domain`` as expertise.

    ``general`` is never a gap: every language model is a generalist; nodes list
    specialities, and a query in no special domain needs none.
    """
    return domain != GENERAL and domain not in online_expertise


def match_nodes(domain: str, capability: str, nodes: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Ids of online nodes serving ``capability``: experts in ``domain`` first, then the rest.

    ``nodes`` maps node id to its CMS birth info plus presence: ``capabilities`` and
    ``expertise`` (lists of names) and ``online`` (a node without it counts as offline:
    a request must not be sent where nobody is known to listen). Ids are sorted within
    each group; the scheduling policy orders by load afterwards.
    """
    serving = sorted(
        node_id
        for node_id, info in nodes.items()
        if info.get("online") is True and capability in info.get("capabilities", ())
    )
    experts = [n for n in serving if domain in nodes[n].get("expertise", ())]
    return experts + [n for n in serving if n not in experts]
