"""What every encoder provides, and the TFLite interpreter wrapper LiteRT and tflite-runtime share.

An encoder turns one sensor window, ``(steps, channels)`` float32, into one
L2-normalised float32 embedding. ``encode`` blocks (it runs a model): agents call
it through ``asyncio.to_thread``. Encoders are thread-safe (one lock per
interpreter: a TFLite interpreter is not).

Bundled models live in ``wearables/models/{name}.tflite``; ``manifest.json`` beside
them records each file's sha256, input shape, embedding size and channels. A bundled
model is verified against its sha256 before it is loaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from wearables.errors import EncoderError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
MANIFEST = MODELS_DIR / "manifest.json"


class Encoder(ABC):
    """A window in, an embedding out."""

    model_id: str
    dim: int
    input_shape: tuple[int, int]  # (steps, channels)

    @abstractmethod
    def _run(self, window: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The raw embedding of a checked window."""

    def encode(self, window: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """One L2-normalised embedding; raises :class:`EncoderError` on a bad window."""
        x = np.asarray(window, dtype=np.float32)
        if x.shape != self.input_shape:
            raise EncoderError(
                f"{self.model_id} takes windows of {self.input_shape}, not {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise EncoderError("the window holds non-finite values")
        out = np.asarray(self._run(x), dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(out))
        if out.shape != (self.dim,) or not np.isfinite(norm):
            raise EncoderError(f"{self.model_id} produced a bad embedding {out.shape}")
        return out / norm if norm > 0 else out

    def close(self) -> None:  # noqa: B027 - most encoders hold nothing to release
        """Release the model (idempotent)."""


def bundled_model(name: str) -> tuple[Path, dict[str, Any]]:
    """Path and manifest entry of a bundled model, its sha256 verified."""
    try:
        manifest = json.loads(MANIFEST.read_text())
        entry: dict[str, Any] = manifest[name]
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read the model manifest {MANIFEST}: {exc}") from exc
    except KeyError:
        raise EncoderError(
            f"no bundled model {name!r}; bundled: {', '.join(sorted(manifest))}"
        ) from None
    path = MODELS_DIR / entry["file"]
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise EncoderError(f"cannot read {path}: {exc}") from exc
    if digest != entry["sha256"]:
        raise EncoderError(f"{path} has sha256 {digest}, the manifest says {entry['sha256']}")
    return path, entry


InterpreterFactory = Callable[[str, int], Any]
"""(model path, threads) -> an object with the tf.lite.Interpreter API."""


class InterpreterEncoder(Encoder):
    """A TFLite model run by an interpreter (LiteRT's or tflite-runtime's: same API)."""

    def __init__(self, name: str, factory: InterpreterFactory, runtime: str, threads: int) -> None:
        path, entry = bundled_model(name) if not name.endswith(".tflite") else (Path(name), {})
        try:
            self._interpreter = factory(str(path), threads)
            self._interpreter.allocate_tensors()
            inp = self._interpreter.get_input_details()[0]
            out = self._interpreter.get_output_details()[0]
        except (ValueError, RuntimeError, OSError) as exc:
            raise EncoderError(f"{runtime} cannot load {path}: {exc}") from exc
        shape = tuple(int(s) for s in inp["shape"])
        if len(shape) != 3 or shape[0] != 1:
            raise EncoderError(f"{path}: input shape {shape} is not (1, steps, channels)")
        self._input, self._output = inp["index"], out["index"]
        self.input_shape = (shape[1], shape[2])
        self.dim = int(np.prod(out["shape"][1:]))
        self.model_id = str(entry.get("model_id", path.stem))
        self.runtime = runtime
        self.channels: tuple[str, ...] = tuple(entry.get("channels", ()))
        self._lock = threading.Lock()

    def _run(self, window: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        with self._lock:
            try:
                self._interpreter.set_tensor(self._input, window[np.newaxis])
                self._interpreter.invoke()
                result: npt.NDArray[np.float32] = self._interpreter.get_tensor(self._output)
                return result.copy()
            except (ValueError, RuntimeError) as exc:
                raise EncoderError(f"{self.runtime} failed on {self.model_id}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._interpreter = None
