"""Describe the machine a benchmark ran on: CPU, SIMD flags, cores, memory bandwidth, load."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecap.engine.hardware import cpu_flags, physical_cores, recommend

SIMD = ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def memory_bandwidth_gbs(size_bytes: int = 1 << 30, repeats: int = 3) -> float:
    """Best of ``repeats`` timed copies of a ``size_bytes`` array (read + write counted)."""
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - started)
    return round(2 * size_bytes / best / 1e9, 1)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def describe() -> dict[str, Any]:
    """The machine as the benchmark doc reports it."""
    flags = cpu_flags()
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "simd": [f for f in SIMD if f in flags],
        "memory_gb": round(mem_total / 1e9, 1),
        "memory_bandwidth_gbs": memory_bandwidth_gbs(),
        "load_average": [round(v, 1) for v in os.getloadavg()],
        "recommended_mmproj_type": recommend(flags).mmproj_type,
        "python": platform.python_version(),
    }
