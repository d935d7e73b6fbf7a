"""Turn benchmark runs into figures (median, min, max), targets, Markdown and a PNG chart."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

Runs = dict[str, list[dict[str, Any]]]


def spread(values: list[float]) -> dict[str, float]:
    """Median and range of ``values``, rounded for the report."""
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def spread_of(items: list[dict[str, Any]], key: str) -> dict[str, float] | None:
    """The spread of ``key`` over the runs that recorded it, None if none did."""
    values = [r[key] for r in items if r.get(key) is not None]
    return spread(values) if values else None


def ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if "error" not in r]


def captions(runs: Runs) -> dict[str, dict[str, Any]]:
    """Per ``system@budget``: caption, same-image and peak-RSS spreads, tokens made."""
    out: dict[str, dict[str, Any]] = {}
    for name, items in runs.items():
        good = ok(items)
        if "@" not in name or not good:
            continue
        out[name] = {
            key: spread_of(good, key) for key in ("caption_s", "same_image_s", "peak_rss_mb")
        }
        out[name]["generated_tokens"] = good[0].get("generated_tokens")
        out[name]["stages_s"] = good[0].get("stages_s")
    return out


def encodes(runs: Runs) -> dict[str, dict[str, float]]:
    """Per ``type@tokens``: encode-time spread across rounds."""
    good = ok(runs.get("encode", []))
    keys = good[0]["encode_s"] if good else {}
    return {k: spread([r["encode_s"][k] for r in good]) for k in keys}


def encode_growth(encode: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Per projector type: encode time per image token at each budget, and a least-squares fit
    ``t = a*n + b*n^2`` (n = image tokens) with the share of ``b*n^2`` at the largest n: a share
    well above zero means encode grows faster than the patch count (the dense window mask)."""
    import numpy as np

    out: dict[str, Any] = {}
    for kind in sorted({k.split("@")[0] for k in encode}):
        points = sorted(
            (int(k.split("@")[1]), v["median"])
            for k, v in encode.items()
            if k.startswith(kind + "@")
        )
        if len(points) < 2:
            continue
        n = np.array([p[0] for p in points], dtype=float)
        t = np.array([p[1] for p in points])
        (_a, b), *_ = np.linalg.lstsq(np.stack([n, n * n], axis=1), t, rcond=None)
        out[kind] = {
            "ms_per_token": {
                str(int(x)): round(1000 * y / x, 2) for x, y in zip(n, t, strict=True)
            },
            "quadratic_share_at_max": round(float(b * n[-1] ** 2 / t[-1]), 3),
        }
    return out


def concurrency(runs: Runs, prefix: str = "concurrent-") -> dict[str, dict[str, Any]]:
    """Per mode and in-flight count: throughput spread and its ratio to one at a time."""
    out: dict[str, dict[str, Any]] = {}
    for name, items in runs.items():
        good = ok(items)
        if not name.startswith(prefix) or not good:
            continue
        mode = name.removeprefix(prefix)
        levels = good[0]["in_flight"]
        out[mode] = {
            k: {
                "wall_s": spread([r["in_flight"][k]["wall_s"] for r in good]),
                "tokens_per_s": spread([r["in_flight"][k]["tokens_per_s"] for r in good]),
                "ratio_to_1": round(
                    statistics.median(
                        r["in_flight"][k]["tokens_per_s"] / r["in_flight"]["1"]["tokens_per_s"]
                        for r in good
                    ),
                    3,
                ),
                "peak_rss_mb": spread_of(good, "server_peak_rss_mb")
                or spread_of(good, "peak_rss_mb"),
            }
            for k in levels
        }
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    return round(num / den, 3) if num is not None and den else None


def _median(table: dict[str, Any], name: str, key: str) -> float | None:
    entry = table.get(name, {}).get(key)
    return entry["median"] if entry else None


# (what, edgecap's figure, the handler run, its figure, bound): edgecap / handler <= bound.
CAPTION_TARGETS = (
    ("one caption: edgecap / MTMDChatHandler with flash attention", "caption_s", "mtmd-flash", 1.0),
    ("one caption: edgecap / MTMDChatHandler defaults", "caption_s", "mtmd-default", 0.45),
    (
        "same image, new prompt: edgecap / MTMDChatHandler defaults",
        "same_image_s",
        "mtmd-default",
        0.1,
    ),
    (
        "same image, new prompt: edgecap / MTMDChatHandler with flash attention",
        "same_image_s",
        "mtmd-flash",
        0.1,
    ),
)
# (what, mode, bound): throughput with 4 in flight / with 1 >= bound.
CONCURRENCY_TARGETS = (
    ("4 concurrent, same image, 128 tokens: throughput / one at a time", "same_image", 2.0),
    (
        "4 concurrent, different 448x448 images, 64 tokens: throughput / one at a time",
        "different_images",
        1.25,
    ),
)


def _row(what: str, value: float | None, bound: float, op: str) -> dict[str, Any]:
    met = None if value is None else (value >= bound if op == ">=" else value <= bound)
    return {"target": what, "value": value, "bound": f"{op} {bound}", "met": met}


def targets(summary: dict[str, Any], budgets: list[int]) -> list[dict[str, Any]]:
    """The issue's targets: each with its measured value, the bound, and met or not."""
    cap, conc = summary["captions"], summary["concurrency"]
    out = [
        _row(f"{what} ({path})", table.get(mode, {}).get("4", {}).get("ratio_to_1"), bound, ">=")
        for what, mode, bound in CONCURRENCY_TARGETS
        for path, table in (("engine", conc), ("HTTP server", summary.get("server", {})))
    ]
    for budget in budgets:
        for what, key, other, bound in CAPTION_TARGETS:
            value = _ratio(
                _median(cap, f"edgecap@{budget}", key), _median(cap, f"{other}@{budget}", key)
            )
            out.append(_row(f"{what} ({budget} image tokens)", value, bound, "<="))
    out.append(projector_target(summary["encode"], summary["machine"]["recommended_mmproj_type"]))
    out.append(rss_target(summary))
    return out


def projector_target(enc: dict[str, Any], recommended: str) -> dict[str, Any]:
    """Whether the recommended projector type encodes faster at every measured budget."""
    other = "f16" if recommended == "bf16" else "bf16"
    ratios = {
        key.split("@")[1]: round(
            enc[key]["median"] / enc[f"{other}@{key.split('@')[1]}"]["median"], 3
        )
        for key in enc
        if key.startswith(recommended + "@") and f"{other}@{key.split('@')[1]}" in enc
    }
    return {
        "target": f"recommended projector ({recommended}) encodes faster than {other}: "
        f"encode {recommended}/{other} by image tokens",
        "value": ratios or None,
        "bound": "< 1.0 at every budget",
        "met": all(r < 1.0 for r in ratios.values()) if ratios else None,
    }


def rss_target(summary: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of edgecap's runs against 1.15 x files + KV cache + 300 MB."""
    files = summary["files"]
    bound = 1.15 * (files["text_mb"] + files["mmproj_mb"]) + files["kv_cache_mb"] + 300
    entries = [v for k, v in summary["captions"].items() if k.startswith("edgecap@")]
    entries += [lvl for m in summary["concurrency"].values() for lvl in m.values()]
    peaks = [e["peak_rss_mb"]["max"] for e in entries if e.get("peak_rss_mb")]
    worst = max(peaks) if peaks else None
    return {
        "target": "edgecap peak RSS (MB, worst scenario) <= 1.15 x (text + projector) "
        "+ KV cache + 300 MB",
        "value": round(worst, 1) if worst else None,
        "bound": f"<= {bound:.0f}",
        "met": None if worst is None else worst <= bound,
    }


def summarize(
    runs: Runs, machine: dict[str, Any], files: dict[str, Any], budgets: list[int]
) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "machine": machine,
        "files": files,
        "captions": captions(runs),
        "encode": encodes(runs),
        "concurrency": concurrency(runs),
        "server": concurrency(runs, "server-"),
        "folder": {
            key: spread_of(ok(runs.get("folder", [])), key)
            for key in ("folder_s", "resume_s", "s_per_image", "cli_peak_rss_mb")
        },
        "errors": {
            k: [r["error"] for r in v if "error" in r]
            for k, v in runs.items()
            if any("error" in r for r in v)
        },
    }
    summary["encode_growth"] = encode_growth(summary["encode"])
    summary["targets"] = targets(summary, budgets)
    return summary


def chart(summary: dict[str, Any], path: Path) -> None:
    """Bars: caption and same-image medians per system and budget, with min-max whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, title in zip(
        axes,
        ("caption_s", "same_image_s"),
        ("one caption (s)", "same image, new prompt (s)"),
        strict=True,
    ):
        names = [n for n, row in summary["captions"].items() if row.get(key)]
        med = [summary["captions"][n][key]["median"] for n in names]
        low = [m - summary["captions"][n][key]["min"] for n, m in zip(names, med, strict=True)]
        high = [summary["captions"][n][key]["max"] - m for n, m in zip(names, med, strict=True)]
        ax.barh(names, med, xerr=[low, high], color="#4a7ab5")
        ax.set_title(title)
        ax.invert_yaxis()
    fig.suptitle("bench preset (random weights, real 7B widths); lower is better")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
