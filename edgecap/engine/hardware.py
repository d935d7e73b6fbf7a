"""What this machine offers llama.cpp: physical cores, SIMD features, the backend compiled in."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def physical_cores() -> int:
    """Physical cores (not hyper-threads): llama.cpp's matmuls gain nothing from SMT siblings."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cores: set[tuple[str, str]] = set()
        physical_id = core_id = ""
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key, value = key.strip(), value.strip()
            if key == "physical id":
                physical_id = value
            elif key == "core id":
                core_id = value
                cores.add((physical_id, core_id))
        if cores:
            return len(cores)
    return os.cpu_count() or 1


@dataclass(frozen=True)
class Backend:
    """What llama.cpp was built with and will actually use."""

    name: str  # "CPU", "CUDA", "Metal", "Vulkan", ...
    gpu_offload: bool
    features: tuple[str, ...]  # e.g. ("AVX2", "AVX512", "AVX512_BF16")
    system_info: str


def detect_backend() -> Backend:
    """Ask the loaded llama.cpp library (not the build flags we hoped for)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    gpu = bool(llama_cpp.llama_supports_gpu_offload())
    features = tuple(
        part.split("=")[0].strip()
        for section in info.split("|")
        for part in section.split(":")[-1:]
        if part.strip().endswith("= 1")
    )
    name = "CPU"
    for candidate in ("CUDA", "Metal", "Vulkan", "ROCm", "SYCL"):
        if candidate.upper() in info.upper():
            name = candidate
            break
    return Backend(
        name=name if gpu else "CPU", gpu_offload=gpu, features=features, system_info=info
    )


# -- which 16-bit type this CPU computes fastest -------------------------------------------------

# CPU flags (as /proc/cpuinfo spells them) that give llama.cpp native bf16 dot products: x86's
# AVX512-BF16 and AMX-BF16, and Arm's BF16 extension (BFDOT/BFMMLA).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


@dataclass(frozen=True)
class Recommendation:
    """The projector type to use on this CPU, and why."""

    mmproj_type: str  # "bf16" or "f16"
    reason: str


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features``); empty where unreadable."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.lower().split())
    return frozenset()


def recommend(flags: frozenset[str] | None = None) -> Recommendation:
    """bf16 where the CPU multiplies bf16 natively, f16 elsewhere.

    The vision encoder dominates a CPU caption, and its speed follows the projector's type:
    with native bf16 dot products a bf16 projector encodes faster than f16 (and is the exact
    weights of the bf16 release); without them llama.cpp converts bf16 in software and f16 is
    faster (docs/performance.md has the figures). Quantizing the projector saves memory, not time.
    """
    flags = cpu_flags() if flags is None else flags
    native = [f for f in NATIVE_BF16_FLAGS if f in flags]
    if native:
        return Recommendation("bf16", f"this CPU multiplies bf16 natively ({', '.join(native)})")
    return Recommendation(
        "f16", "this CPU has no native bf16 dot products (no AVX512_BF16/AMX/Arm BF16)"
    )
