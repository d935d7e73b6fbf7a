"""The side-by-side benchmark's report: figures, targets and rendering from made-up runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tools.bench_compare import markdown, report
from tools.bench_compare.__main__ import load_runs

MACHINE = {
    "cpu": "Test CPU",
    "logical_cpus": 2,
    "physical_cores": 2,
    "simd": ["avx2"],
    "memory_gb": 8.0,
    "memory_bandwidth_gbs": 10.0,
    "load_average": [1.0, 1.0, 1.0],
    "recommended_mmproj_type": "bf16",
    "python": "3.11",
}
FILES = {"text_mb": 1000.0, "mmproj_mb": 400.0, "kv_cache_mb": 100.0}


def caption(caption_s: float, same_s: float, rss: float = 2000.0) -> dict[str, Any]:
    return {
        "caption_s": caption_s,
        "same_image_s": same_s,
        "peak_rss_mb": rss,
        "generated_tokens": [32, 32],
    }


def concurrent(tps1: float, tps4: float) -> dict[str, Any]:
    level = lambda tps: {"wall_s": 10.0, "tokens": 100, "tokens_per_s": tps}  # noqa: E731
    return {"in_flight": {"1": level(tps1), "4": level(tps4)}, "peak_rss_mb": 1500.0}


def fake_runs(tmp_path: Path) -> report.Runs:
    lines = [
        {"name": "edgecap@256", **caption(10.0, 1.0)},
        {"name": "edgecap@256", **caption(12.0, 0.5)},
        {"name": "mtmd-default@256", **caption(30.0, 30.0)},
        {"name": "mtmd-flash@256", **caption(11.0, 11.0)},
        {"name": "mtmd-flash@256", "error": "timed out after 5 s"},
        {
            "name": "encode",
            "encode_s": {"f16@256": 2.0, "bf16@256": 1.0, "f16@1024": 8.0, "bf16@1024": 9.0},
        },
        {"name": "concurrent-same_image", **concurrent(10.0, 25.0)},
        {"name": "concurrent-different_images", **concurrent(10.0, 11.0)},
        {"name": "server-same_image", **concurrent(10.0, 14.0), "server_peak_rss_mb": 1900.0},
        {
            "name": "folder",
            "folder_s": 20.0,
            "resume_s": 2.0,
            "s_per_image": 5.0,
            "cli_peak_rss_mb": 1800.0,
        },
    ]
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return load_runs(path)


def test_summary_takes_medians_and_judges_each_target(tmp_path: Path) -> None:
    summary = report.summarize(fake_runs(tmp_path), MACHINE, FILES, [256])
    assert summary["captions"]["edgecap@256"]["caption_s"] == {
        "median": 11.0,
        "min": 10.0,
        "max": 12.0,
        "n": 2,
    }
    assert summary["errors"] == {"mtmd-flash@256": ["timed out after 5 s"]}
    met = {
        (t["target"].split(": ")[0], "HTTP" in t["target"]): (t["value"], t["met"])
        for t in summary["targets"]
    }
    assert met["4 concurrent, same image, 128 tokens", False] == (2.5, True)
    assert met["4 concurrent, same image, 128 tokens", True] == (1.4, False)
    assert met["4 concurrent, different 448x448 images, 64 tokens", False] == (1.1, False)
    assert met["4 concurrent, different 448x448 images, 64 tokens", True] == (None, None)
    ratios = [(t["value"], t["met"]) for t in summary["targets"][4:8]]
    # 11/11 vs flash, 11/30 vs defaults; same image 0.75/30 vs defaults, 0.75/11 vs flash
    assert ratios == [(1.0, True), (0.367, True), (0.025, True), (0.068, True)]
    projector = next(t for t in summary["targets"] if t["target"].startswith("recommended"))
    assert projector["value"] == {"256": 0.5, "1024": 1.125} and projector["met"] is False
    rss = summary["targets"][-1]
    assert rss["value"] == 2000.0 and rss["met"] is True  # bound 1.15*1400 + 100 + 300 = 2010


def test_markdown_has_every_table_and_the_failures(tmp_path: Path) -> None:
    text = markdown.render(report.summarize(fake_runs(tmp_path), MACHINE, FILES, [256]))
    assert "| edgecap@256 | 11.00 (10.00–12.00) | 0.75 (0.50–1.00) |" in text
    assert "| 1024 | 8.00 | 9.00 | 1.12 |" in text
    assert "| same image | 4 |" in text and "**not met**" in text
    assert "mtmd-flash@256: ['timed out after 5 s']" in text
    assert "| same image | 4 | 10.00 | 14.00 | 1.40 | 1900.00 |" in text  # through HTTP
    assert "20.00 s, 5.00 s per image, peak RSS 1800.00 MB" in text


def test_chart_is_written(tmp_path: Path) -> None:
    out = tmp_path / "chart.png"
    report.chart(report.summarize(fake_runs(tmp_path), MACHINE, FILES, [256]), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
