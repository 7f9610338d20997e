"""Encoders on LiteRT: the committed TFLite models separate their classes on held-out data."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from wearables.encoders import (
    FeaturesConfig,
    LiteRtConfig,
    TfliteRuntimeConfig,
    build_encoder,
    bundled_model,
)
from wearables.encoders.base import MANIFEST
from wearables.errors import EncoderError
from wearables.sources import BasicMotionsConfig, BasicMotionsSource
from wearables.synthetic import SyntheticConfig, SyntheticSource


def _nearest_centroid(train_e, train_y, test_e, test_y) -> float:
    labels = sorted(set(train_y))
    centroids = np.stack([train_e[train_y == lab].mean(axis=0) for lab in labels])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    predicted = np.array(labels)[np.argmax(test_e @ centroids.T, axis=1)]
    return float((predicted == test_y).mean())


def _windows(split: str):
    source = BasicMotionsSource(BasicMotionsConfig(split=split))  # type: ignore[arg-type]
    windows = list(itertools.islice(source.windows(), len(source.y) * 3))  # 3 per recording
    return np.stack([w.data for w in windows]), np.array([w.label for w in windows])


def test_imu_embeddings_separate_activities_on_held_out_recordings():
    encoder = build_encoder(LiteRtConfig(model="imu-basicmotions-v1"))
    assert encoder.input_shape == (50, 6)
    assert encoder.dim == 16
    x, y = _windows("train")
    xt, yt = _windows("test")  # recordings the encoder never saw in training
    train_e = np.stack([encoder.encode(w) for w in x])
    test_e = np.stack([encoder.encode(w) for w in xt])
    np.testing.assert_allclose(np.linalg.norm(test_e, axis=1), 1.0, rtol=1e-5)
    accuracy = _nearest_centroid(train_e, y, test_e, yt)
    print(f"BasicMotions held-out nearest-centroid accuracy: {accuracy:.3f} on {len(yt)} windows")
    assert len(set(yt)) == 4
    assert accuracy >= 0.9


def test_vitals_embeddings_separate_episode_types_on_another_seed():
    encoder = build_encoder(LiteRtConfig(model="vitals-v1"))

    def windows(seed: int, n: int):
        config = SyntheticConfig(preset="vitals", seed=seed, episodes_per_hour=30.0)
        ws = list(itertools.islice(SyntheticSource(config).windows(), n))
        return np.stack([encoder.encode(w.data) for w in ws]), np.array([w.label for w in ws])

    train_e, y = windows(11, 1500)
    test_e, yt = windows(12, 600)
    accuracy = _nearest_centroid(train_e, y, test_e, yt)
    print(f"vitals held-out nearest-centroid accuracy: {accuracy:.3f} on {len(yt)} windows")
    assert len(set(yt)) >= 3
    assert accuracy >= 0.85


def test_manifest_records_every_model_and_its_digest():
    manifest = json.loads(MANIFEST.read_text())
    assert set(manifest) == {"imu-basicmotions-v1", "vitals-v1", "accel-daphnet-v1"}
    for name in manifest:
        path, entry = bundled_model(name)
        assert path.stat().st_size < 100_000
        assert entry["dim"] == 16


def test_bad_models_and_windows_are_encoder_errors(tmp_path):
    with pytest.raises(EncoderError, match="no bundled model"):
        build_encoder(LiteRtConfig(model="nope"))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a flatbuffer")
    with pytest.raises(EncoderError, match="cannot load"):
        build_encoder(LiteRtConfig(model=str(garbage)))
    encoder = build_encoder(LiteRtConfig(model="imu-basicmotions-v1"))
    with pytest.raises(EncoderError, match="takes"):
        encoder.encode(np.zeros((10, 6)))
    with pytest.raises(EncoderError, match="non-finite"):
        encoder.encode(np.full((50, 6), np.nan))


def test_tflite_runtime_backend_is_guarded():
    try:
        import tflite_runtime  # type: ignore[import-not-found]  # noqa: F401, PLC0415
    except ImportError:
        with pytest.raises(EncoderError, match="tflite-runtime"):
            build_encoder(TfliteRuntimeConfig(model="vitals-v1"))
    else:  # a device image with tflite-runtime: it must run the same model
        assert build_encoder(TfliteRuntimeConfig(model="vitals-v1")).dim == 16


def test_features_encoder_describes_level_spread_and_trend():
    encoder = build_encoder(FeaturesConfig(steps=10, offset=(0.0,), scale=(1.0,)))
    rising = encoder.encode(np.arange(10, dtype=np.float32)[:, None])
    flat = encoder.encode(np.full((10, 1), 4.5, dtype=np.float32))
    assert encoder.dim == 3
    assert rising[2] > 0.5  # the trend dominates
    assert flat[2] == 0.0
