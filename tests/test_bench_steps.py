"""tools/bench_steps.py: the decode-step cost curve runs on a real model (timings not asserted)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

from tools import bench_steps

ROOT = Path(__file__).resolve().parents[1]


def test_every_layout_and_row_count_gets_a_measured_step(tiny_gguf: tuple[Path, Path]) -> None:
    text, _ = tiny_gguf
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "bench_steps.py"),
            str(text),
            "--rows",
            "1,3",
            "--rounds",
            "1",
            "--steps",
            "2",
            "--context",
            "16",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    rows = [line.split("|")[1:-1] for line in out.stdout.splitlines()[2:]]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [
        ("plain", "1"),
        ("plain", "3"),
        ("repacked", "1"),
        ("repacked", "3"),
    ]
    for _, _, step_ms, per_row_ms, gain in rows:
        assert 0 < float(step_ms) < 60_000 and math.isfinite(float(per_row_ms))
        assert float(gain) > 0
    assert "round 1 repacked" in out.stderr


def test_the_table_compares_each_row_count_with_one_row() -> None:
    results = {"plain": [{1: 0.030, 4: 0.080}, {1: 0.020, 4: 0.090}]}
    lines = bench_steps.table(results, [1, 4]).splitlines()
    assert lines[2] == "| plain | 1 | 20.0 | 20.0 | 1.00 |"  # the fastest round per row count
    assert lines[3] == "| plain | 4 | 80.0 | 20.0 | 1.00 |"
