"""Extract the recorded sensor data the device agents replay from the ``aeon`` package.

    pip install 'edgecollab[train]'   # aeon is a development/training dependency only
    python scripts/extract_wearables_data.py

Writes wearables/data/basicmotions.npz and wearables/data/daphnet_s06r02e0.npz (see
wearables/data/SOURCES.md for what they hold, where they come from and their licences).
The agents read only these files at run time; aeon is never imported there.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "wearables" / "data"


def basic_motions() -> None:
    from aeon.datasets import load_basic_motions  # noqa: PLC0415 - dev-only dependency

    parts = {split: load_basic_motions(split=split) for split in ("train", "test")}
    x = np.concatenate([parts["train"][0], parts["test"][0]]).transpose(0, 2, 1)
    y = np.concatenate([parts["train"][1], parts["test"][1]])
    split = np.array(["train"] * len(parts["train"][1]) + ["test"] * len(parts["test"][1]))
    np.savez_compressed(
        OUT / "basicmotions.npz",
        x=x.astype(np.float32),  # (80 recordings, 100 steps at 10 Hz, 6 channels)
        y=y.astype(str),
        split=split,
        channels=np.array(["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]),
        rate_hz=np.array(10.0),
    )
    print(f"basicmotions: {x.shape} {sorted(set(y))}")


def daphnet() -> None:
    from aeon.datasets import load_daphnet_s06r02e0  # noqa: PLC0415 - dev-only dependency

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in aeon 1.6 (no FoG labels)
        x, y = load_daphnet_s06r02e0()
    np.savez_compressed(
        OUT / "daphnet_s06r02e0.npz",
        x=x.astype(np.int16),  # (7040 samples at 64 Hz, 9 channels), milli-g
        freeze=y.astype(np.int8),  # the excerpt's labels: all 0, no freezing episode
        channels=np.array(
            [
                f"{part}_{axis}"
                for part in ("ankle", "thigh", "trunk")
                for axis in ("fwd", "vert", "lat")
            ]
        ),
        rate_hz=np.array(64.0),
    )
    print(f"daphnet: {x.shape}, freeze-labelled samples: {int(y.sum())}")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    basic_motions()
    daphnet()
