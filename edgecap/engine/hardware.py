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
