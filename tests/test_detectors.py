"""Detectors, sources and the data/ contract: logic without a broker."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from broker import CodecError, Event, SampleMeta, decode, encode
from broker.codec import JSON
from wearables.detectors import (
    EpisodeTracker,
    FreezeIndexConfig,
    FreezeIndexDetector,
    ThresholdConfig,
    ThresholdDetector,
)
from wearables.errors import SensorConfigError
from wearables.sources import DaphnetConfig, DaphnetSource
from wearables.synthetic import SyntheticConfig, SyntheticSource


def test_episode_tracker_debounces_onset_and_end():
    tracker = EpisodeTracker(min_windows=2, clear_windows=2, threshold=1.0)
    pattern = [True, False, True, True, True, False, True, False, False, False]
    out = [tracker.update(p, 2.0 + i, float(i), float(i) + 1) for i, p in enumerate(pattern)]
    fired = [(i, d.phase, d.start, d.end) for i, d in enumerate(out) if d is not None]
    # A lone positive window (0) opens nothing; 2-3 open at 2; a one-window gap (5)
    # does not close; 7-8 close it with the end of the last positive window (6 -> 7.0).
    assert fired == [(3, "onset", 2.0, None), (8, "end", 2.0, 7.0)]
    assert out[8] is not None
    assert out[8].score == 8.0  # the episode's peak


def test_freeze_index_separates_trembling_from_walking():
    rate, t = 64.0, np.arange(128) / 64.0
    walking = np.zeros((128, 9), dtype=np.float32)
    walking[:, 1] = 400 * np.sin(2 * np.pi * 1.5 * t)  # ankle_vert, 1.5 Hz steps
    trembling = walking.copy()
    trembling[:, 1] = 40 * np.sin(2 * np.pi * 1.5 * t) + 200 * np.sin(2 * np.pi * 6 * t)
    channels = tuple(
        f"{p}_{a}" for p in ("ankle", "thigh", "trunk") for a in ("fwd", "vert", "lat")
    )
    det = FreezeIndexDetector(FreezeIndexConfig(channels=("ankle_vert",)), channels, rate)
    assert det.freeze_index(walking)[0] < 0.1
    assert det.freeze_index(trembling)[0] > 10
    still = np.zeros_like(walking)
    assert det.score(still)[0] is False  # no gait power: standing is not freezing
    with pytest.raises(SensorConfigError):
        FreezeIndexDetector(FreezeIndexConfig(channels=("wrist_x",)), channels, rate)


def test_threshold_detector_scores_the_worst_bound():
    config = ThresholdConfig.model_validate(
        {
            "event": "abnormal_vitals",
            "rules": {"hr": {"above": 100, "below": 40}, "spo2": {"below": 90}},
        }
    )
    det = ThresholdDetector(config, ("hr", "spo2"))
    ok = det.score(np.array([[70, 97]] * 5, dtype=np.float32))
    assert ok[0] is False
    assert ok[1] < 1
    high = det.score(np.array([[150, 97]] * 5, dtype=np.float32))
    assert high == (True, pytest.approx(1.5))
    low = det.score(np.array([[70, 81]] * 5, dtype=np.float32))
    assert low[0] is True
    with pytest.raises(ValueError, match="above"):
        ThresholdConfig.model_validate({"event": "x", "rules": {"hr": {}}})


def test_daphnet_injection_is_labelled_and_the_real_excerpt_is_untouched():
    plain = DaphnetSource(DaphnetConfig())
    x, freeze = plain.signal(0)
    assert not freeze.any()
    np.testing.assert_array_equal(x, plain.raw)
    assert next(plain.windows()).label is None  # the excerpt has no labels of its own
    injected = DaphnetSource(DaphnetConfig(inject_freezes=3, seed=1))
    x2, mask = injected.signal(0)
    assert 3 * 3 * 64 <= mask.sum() <= 3 * 8 * 64
    np.testing.assert_array_equal(x2[~mask], plain.raw[~mask])
    assert injected.info.semi_synthetic
    labels = {w.label for w in itertools.islice(injected.windows(), 108)}
    assert labels == {"freeze", "no_freeze"}
    # Reproducible per seed and loop.
    np.testing.assert_array_equal(injected.signal(0)[0], x2)
    assert not np.array_equal(injected.signal(1)[1], mask)


def test_synthetic_windows_label_their_episodes():
    source = SyntheticSource(SyntheticConfig(preset="vitals", episodes_per_hour=60, seed=3))
    windows = list(itertools.islice(source.windows(), 2000))
    assert {w.data.shape for w in windows} == {(30, 3)}
    labels = [w.label for w in windows]
    assert set(labels) == {"normal", "tachycardia", "desaturation", "bradypnea"}
    tachy = np.array([w.data[:, 0].mean() for w in windows if w.label == "tachycardia"])
    normal = np.array([w.data[:, 0].mean() for w in windows if w.label == "normal"])
    assert tachy.mean() > normal.mean() + 30
    assert windows[1].offset_s - windows[0].offset_s == 5.0  # hop 5 at 1 Hz


def _meta(**changes):
    base = {
        "domain": "health",
        "type": "vitals",
        "dimension": 16,
        "units": {"heart_rate": "1/min"},
        "location": {"placement": "wrist"},
        "timestamp": time.time(),
        "sequence": 0,
        "source": "synthetic",
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    "changes",
    [
        {"domain": "Health"},
        {"dimension": 0},
        {"units": {}},
        {"units": {"hr": 3}},
        {"location": {}},
        {"location": {"lat": 91}},
        {"location": {"room": "x"}},
        {"timestamp": -1},
        {"sequence": -1},
        {"source": "made-up"},
        {"summary": {"hr": "high"}},
        {"label": 3},
    ],
)
def test_sample_meta_refuses_what_breaks_the_contract(changes):
    with pytest.raises(CodecError):
        SampleMeta.from_meta(_meta(**changes))


def test_sample_meta_keeps_extensions_and_round_trips():
    meta = SampleMeta.from_meta(_meta(simulated=True, summary={"heart_rate": 71.5}))
    assert meta.extra == {"simulated": True}
    assert SampleMeta.from_meta(meta.to_meta()) == meta


@pytest.mark.parametrize("content_type", ["application/cbor", JSON])
def test_event_round_trips_and_validates(content_type):
    event = Event(
        "freezing_of_gait", "gait", "end", 10.0, 4.5, 3.0, 7, end=14.0, meta={"simulated": True}
    )
    assert decode(encode(event, content_type), content_type) == event
    with pytest.raises(CodecError):
        Event("x", "gait", "middle", 1.0, 1.0, 1.0, 0)  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        Event("x", "gait", "end", 5.0, 1.0, 1.0, 0, end=4.0)
    with pytest.raises(CodecError):
        decode(b'{"v":1,"kind":"event","type":"x","stream":"s","phase":"onset"}', JSON)
