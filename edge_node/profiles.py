"""Device profiles for the simulated engine: how fast a device serves a ~1B model.

Every number carries the published measurement it comes from (``Sourced.source``).
The reference workload is a ~1.1B-parameter model at 4-bit quantization (TinyLlama
1.1B / Llama 3.2 1B class, Q4_K_M or Q4_0) under llama.cpp, one request per
context. Where the only published figure is for another model, it is scaled:

- decode (token generation) is memory-bandwidth bound: every token reads all the
  weights once, so ``tps_small = tps_big * (params_big * bits_big) /
  (params_small * bits_small)``. This ignores fixed per-token costs, so it is an
  upper bound for small models; scaled figures are rounded down.
- prefill (prompt processing) is compute bound (~2 FLOPs per parameter per token):
  ``tps_small = tps_big * params_big / params_small``.

A 135M model (SmolLM2-135M) runs 3-5x faster than these rates; override the rates
in the engine configuration to study it.

Concurrency. Each slot is a separate llama.cpp context (see ``engines/llama_cpp``),
so streams running at once share the device. With ``n`` streams running, each
decodes (and prefills) at ``rate * share(n)`` where

    share(n) = min(1, aggregate_speedup / n)

so the aggregate throughput grows linearly up to ``aggregate_speedup`` times the
single-stream rate and is flat beyond it. ``aggregate_speedup`` = 1 means the
device is saturated by one stream (a CPU running all cores); on a GPU a ~1B model
at batch 1 leaves memory bandwidth unused, so two streams get more in total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from edge_node.errors import NodeError

T = TypeVar("T", int, float)

# Published sources, cited by the figures below.
_JUSTINE = (
    "J. Tunney, 'LLaMA Now Goes Faster on CPUs' (justine.lol/matmul, 2024-03): Raspberry "
    "Pi 5, TinyLlama 1.1B Q8_0, llama.cpp 2024-03-26: ~35 prompt tok/s, ~9 eval tok/s "
    "(llamafile 0.7: ~45 / ~9)"
)
_GEERLING = (
    "J. Geerling, github.com/geerlingguy/ai-benchmarks (issue #1): Pi 5 8GB, CPU, "
    "Ollama llama3.2:3b (3.21B, Q4_K_M): 4.61 tok/s, 13.9 W peak at the wall"
)
_NANO_SUPER = (
    "NVIDIA, 'Jetson Orin Nano Developer Kit Gets a Super Boost' (developer.nvidia.com "
    "blog, 2024-12; also jetson-ai-lab.com/benchmarks): SmolLM2 1.7B, MLC INT4, super "
    "mode: 64.5 tok/s"
)
_NANO_LLAMACPP = (
    "smolhub.com 'Tiny LLM Benchmark: Jetson Orin Nano Super 8GB' (llama.cpp CUDA, -ngl 99, "
    "25 W): LFM2.5-1.2B ~54 tok/s, SmolLM2-135M ~165 tok/s; J. Morgan, jeremymorgan.com "
    "'Jetson Orin Nano speed test' (Ollama, 25 W): TinyLlama 1.1B ~58 tok/s"
)
_AGX_LLAMACPP = (
    "NVIDIA Holoscan, github.com/nvidia-holoscan/holohub issue #170 (2024-01): IGX/AGX "
    "Orin iGPU, llama.cpp, Llama-2-7B 4-bit: 22.5 tok/s"
)
_AGX_MLC = (
    "jetson-containers packages/llm/mlc docs (Jetson AGX Orin, MLC q4f16_ft, 16-token "
    "prompt): Llama-2-7B prefill 632.8 tok/s, decode 46.9 tok/s"
)
_CUDA_CORES = (
    "NVIDIA Jetson module specs: AGX Orin 64GB 2048 CUDA cores at up to 1.3 GHz; Orin Nano "
    "8GB 1024 CUDA cores at 1.02 GHz in super mode"
)


class UnknownProfileError(NodeError, ValueError):
    """No device profile has that name (a ValueError, so pydantic validators report it)."""


@dataclass(frozen=True, slots=True)
class Sourced(Generic[T]):
    """A number and where it comes from (a citation, or the rule that derived it)."""

    value: T
    source: str

    def __post_init__(self) -> None:
        if not self.source.strip():
            raise ValueError("every profile figure needs a source")


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """How fast one device serves the reference model (see the module docstring)."""

    name: str
    description: str
    reference_model: str
    prefill_tps: Sourced[float]  # prompt tokens per second, one stream
    decode_tps: Sourced[float]  # generated tokens per second, one stream
    concurrency: Sourced[int]  # slots: generations at once
    aggregate_speedup: Sourced[float]  # k in share(n) = min(1, k / n)
    memory_gb: Sourced[float]
    power_w: Sourced[float] | None = None  # None when no published figure is known

    def __post_init__(self) -> None:
        if self.prefill_tps.value <= 0 or self.decode_tps.value <= 0:
            raise ValueError(f"profile {self.name}: token rates must be positive")
        if self.concurrency.value < 1:
            raise ValueError(f"profile {self.name}: concurrency must be at least 1")
        if self.aggregate_speedup.value < 1:
            raise ValueError(f"profile {self.name}: aggregate_speedup must be at least 1")

    def share(self, running: int) -> float:
        """Fraction of the single-stream rate each of ``running`` streams gets."""
        return min(1.0, self.aggregate_speedup.value / max(1, running))

    def decode_rate(self, running: int) -> float:
        """Tokens per second of one stream while ``running`` streams run."""
        return self.decode_tps.value * self.share(running)

    def prefill_rate(self, running: int) -> float:
        """Prompt tokens per second of one stream while ``running`` streams run."""
        return self.prefill_tps.value * self.share(running)


_REFERENCE = "~1.1B parameters, 4-bit (Q4_K_M / Q4_0), llama.cpp, one context per slot"

PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile(
            name="jetson-agx-orin",
            description="NVIDIA Jetson AGX Orin 64GB, MAXN, all layers on the GPU (CUDA)",
            reference_model=_REFERENCE,
            prefill_tps=Sourced(
                2000.0,
                f"{_AGX_MLC}; scaled by parameters 632.8 * 6.74/1.1 = ~3,900 tok/s, halved "
                "because llama.cpp prefill is slower than MLC's: approximate",
            ),
            decode_tps=Sourced(
                130.0,
                f"{_AGX_LLAMACPP}; scaled by weight bytes 22.5 * 6.74/1.1 = ~138, rounded "
                "down (the MLC figure scales to ~287: upper bound)",
            ),
            concurrency=Sourced(4, "deployment choice: four contexts of ~1 GB each"),
            aggregate_speedup=Sourced(
                2.0,
                "assumption from bandwidth headroom: 130 tok/s * ~0.67 GB of weights = "
                "~87 GB/s of the 204.8 GB/s LPDDR5 peak (NVIDIA spec); not measured",
            ),
            memory_gb=Sourced(64.0, "NVIDIA Jetson AGX Orin 64GB module spec"),
            power_w=Sourced(60.0, "NVIDIA spec: MAXN power budget of the 64GB module"),
        ),
        DeviceProfile(
            name="jetson-orin-nano",
            description="NVIDIA Jetson Orin Nano 8GB (Super, 25 W mode), all layers on GPU",
            reference_model=_REFERENCE,
            prefill_tps=Sourced(
                800.0,
                f"jetson-agx-orin prefill scaled by GPU throughput ({_CUDA_CORES}): "
                "2000 * (1024*1.02)/(2048*1.3) = ~785: approximate, not measured",
            ),
            decode_tps=Sourced(
                60.0,
                f"{_NANO_LLAMACPP}; cross-check: {_NANO_SUPER}, scaled 64.5 * 1.7/1.1 = "
                "~100 tok/s for MLC (upper bound)",
            ),
            concurrency=Sourced(2, "as configs/node-jetson-orin-nano.yaml (instances: 2)"),
            aggregate_speedup=Sourced(
                1.5,
                "assumption from bandwidth headroom: 60 tok/s * ~0.67 GB = ~40 GB/s of the "
                "102 GB/s super-mode peak (NVIDIA JetPack 6.2 blog); not measured",
            ),
            memory_gb=Sourced(8.0, "NVIDIA Jetson Orin Nano 8GB spec (shared CPU/GPU)"),
            power_w=Sourced(25.0, "NVIDIA JetPack 6.2 super mode: 25 W power budget"),
        ),
        DeviceProfile(
            name="raspberry-pi-5",
            description="Raspberry Pi 5 8GB, 4x Cortex-A76 at 2.4 GHz, CPU only",
            reference_model=_REFERENCE,
            prefill_tps=Sourced(
                40.0,
                f"{_JUSTINE}; prefill is compute bound, so Q4 is taken as ~Q8_0: approximate",
            ),
            decode_tps=Sourced(
                12.0,
                f"{_JUSTINE}, scaled Q8_0 -> Q4 by bits 9 * 8.5/4.5 = ~17; {_GEERLING}, "
                "scaled 4.61 * 3.21/1.1 = ~13.5; rounded down",
            ),
            concurrency=Sourced(2, "deployment choice: two contexts share the four cores"),
            aggregate_speedup=Sourced(
                1.0,
                "one llama.cpp stream already uses all four cores; a second one splits "
                "them (assumption: no gain in aggregate throughput)",
            ),
            memory_gb=Sourced(8.0, "Raspberry Pi 5 product brief (2/4/8/16 GB; 8 GB here)"),
            power_w=Sourced(13.9, _GEERLING),
        ),
    )
}


def get_profile(name: str) -> DeviceProfile:
    """The profile called ``name``; ``UnknownProfileError`` lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(
            f"unknown device profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}"
        ) from None


__all__ = ["PROFILES", "DeviceProfile", "Sourced", "UnknownProfileError", "get_profile"]
