"""Train the device encoders and convert them to TFLite (wearables/models).

    pip install -e '.[train]'        # TensorFlow: development only, not at run time
    python scripts/train_encoders.py

Each encoder is a small 1-D CNN: per-channel normalisation (fitted on the training
windows, baked into the model), two convolutions, global average and max pooling, a
dense embedding. It is trained with a softmax head over the stream's classes; the
head is dropped and the embedding sub-model converted with the TFLite converter.

- ``imu-basicmotions-v1``: (50, 6) windows of the BasicMotions *train* recordings,
  random crops; classes standing/walking/running/badminton. The *test* recordings are
  held out (tests/test_encoders.py scores nearest-centroid accuracy on them).
- ``vitals-v1``: (30, 3) windows of the synthetic vitals stream (seed 1); classes
  normal/tachycardia/desaturation/bradypnea. Held out: seed 2.
- ``accel-daphnet-v1``: (128, 9) windows of the Daphnet excerpt with synthetic
  freezing episodes overlaid (seeds 100+); classes no_freeze/freeze. Held out: seed 7.

Writes ``wearables/models/{name}.tflite`` and ``manifest.json`` (sha256, shapes,
channels, classes, held-out nearest-centroid accuracy measured on the TFLite model).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tensorflow as tf  # type: ignore[import-untyped]
from ai_edge_litert.interpreter import Interpreter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wearables.sources import (  # noqa: E402 - after the path set-up
    BasicMotionsConfig,
    BasicMotionsSource,
    DaphnetConfig,
    DaphnetSource,
)
from wearables.synthetic import SyntheticConfig, SyntheticSource  # noqa: E402

MODELS = ROOT / "wearables" / "models"
EMBED_DIM = 16


def basicmotions(split: str, crops: bool) -> tuple[np.ndarray, np.ndarray]:
    src = BasicMotionsSource(BasicMotionsConfig(split=split))  # type: ignore[arg-type]
    xs, ys = [], []
    step = 1 if crops else 25
    for rec, label in zip(src.x, src.y, strict=True):
        for start in range(0, rec.shape[0] - 50 + 1, step):
            xs.append(rec[start : start + 50])
            ys.append(label)
    return np.stack(xs), np.array(ys)


def vitals(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    config = SyntheticConfig(preset="vitals", seed=seed, episodes_per_hour=30.0)
    windows = list(itertools.islice(SyntheticSource(config).windows(), n))
    return np.stack([w.data for w in windows]), np.array([w.label for w in windows])


def daphnet(seed: int, loops: int) -> tuple[np.ndarray, np.ndarray]:
    src = DaphnetSource(DaphnetConfig(inject_freezes=4, seed=seed, hop=32))
    per_loop = (len(src.raw) - 128) // 32 + 1
    windows = list(itertools.islice(src.windows(), per_loop * loops))
    return np.stack([w.data for w in windows]), np.array([w.label for w in windows])


def build(shape: tuple[int, int], classes: int, x: np.ndarray) -> tuple[tf.keras.Model, ...]:
    norm = tf.keras.layers.Normalization(axis=-1)
    norm.adapt(x.reshape(-1, shape[1]))
    inp = tf.keras.Input(shape=shape, batch_size=None)
    h = norm(inp)
    h = tf.keras.layers.Conv1D(16, 5, padding="same", activation="relu")(h)
    h = tf.keras.layers.MaxPooling1D(2)(h)
    h = tf.keras.layers.Conv1D(32, 5, padding="same", activation="relu")(h)
    pooled = tf.keras.layers.Concatenate()(
        [tf.keras.layers.GlobalAveragePooling1D()(h), tf.keras.layers.GlobalMaxPooling1D()(h)]
    )
    embedding = tf.keras.layers.Dense(EMBED_DIM, name="embedding")(pooled)
    logits = tf.keras.layers.Dense(classes)(tf.keras.layers.Activation("relu")(embedding))
    return tf.keras.Model(inp, logits), tf.keras.Model(inp, embedding)


def to_tflite(encoder: tf.keras.Model, shape: tuple[int, int]) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        encoder.export(tmp, format="tf_saved_model", input_signature=[
            tf.TensorSpec((1, *shape), tf.float32)
        ])  # fmt: skip
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        return bytes(converter.convert())


def tflite_embed(model: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=model)  # LiteRT: the runtime the agents use
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for window in x:
        interpreter.set_tensor(inp["index"], window[None].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    e = np.asarray(rows)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def nearest_centroid(
    train_e: np.ndarray, train_y: np.ndarray, test_e: np.ndarray, test_y: np.ndarray
) -> float:
    labels = sorted(set(train_y))
    centroids = np.stack([train_e[train_y == lab].mean(axis=0) for lab in labels])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    predicted = np.array(labels)[np.argmax(test_e @ centroids.T, axis=1)]
    return float((predicted == test_y).mean())


Split = tuple[np.ndarray, np.ndarray]


def train(
    name: str, train_xy: Split, test_xy: Split, channels: tuple[str, ...], epochs: int
) -> dict[str, object]:
    (x, y), (xt, yt) = train_xy, test_xy
    classes = sorted(set(y))
    index = {c: i for i, c in enumerate(classes)}
    shape = (x.shape[1], x.shape[2])
    tf.keras.utils.set_random_seed(0)
    classifier, encoder = build(shape, len(classes), x)
    classifier.compile(
        optimizer=tf.keras.optimizers.Adam(3e-3),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    counts = {c: int((y == c).sum()) for c in classes}
    weights = {index[c]: len(y) / (len(classes) * n) for c, n in counts.items()}
    classifier.fit(
        x, np.array([index[v] for v in y]), epochs=epochs, batch_size=64, verbose=0,
        class_weight=weights, shuffle=True,
    )  # fmt: skip
    model = to_tflite(encoder, shape)
    (MODELS / f"{name}.tflite").write_bytes(model)
    accuracy = nearest_centroid(tflite_embed(model, x), y, tflite_embed(model, xt), yt)
    print(f"{name}: {len(model)} bytes, held-out nearest-centroid accuracy {accuracy:.3f}")
    return {
        "model_id": name,
        "file": f"{name}.tflite",
        "sha256": hashlib.sha256(model).hexdigest(),
        "input_shape": list(shape),
        "dim": EMBED_DIM,
        "channels": list(channels),
        "classes": classes,
        "train_windows": counts,
        "heldout_nearest_centroid_accuracy": round(accuracy, 4),
    }


def main() -> None:
    MODELS.mkdir(parents=True, exist_ok=True)
    bm = BasicMotionsSource(BasicMotionsConfig())
    vit = SyntheticSource(SyntheticConfig(preset="vitals"))
    dap = DaphnetSource(DaphnetConfig())
    manifest = {
        "imu-basicmotions-v1": train(
            "imu-basicmotions-v1",
            basicmotions("train", crops=True),
            basicmotions("test", crops=False),
            bm.info.channels,
            epochs=40,
        ),
        "vitals-v1": train(
            "vitals-v1", vitals(1, 3000), vitals(2, 1000), vit.info.channels, epochs=25
        ),
        "accel-daphnet-v1": train(
            "accel-daphnet-v1", daphnet(100, 12), daphnet(7, 3), dap.info.channels, epochs=15
        ),
    }
    (MODELS / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
