"""The Markdown section of docs/benchmarks.md generated from a benchmark summary."""

from __future__ import annotations

from typing import Any


def _s(entry: dict[str, float] | None) -> str:
    if not entry:
        return "—"
    if entry["n"] == 1:
        return f"{entry['median']:.2f}"
    return f"{entry['median']:.2f} ({entry['min']:.2f}–{entry['max']:.2f})"


def machine_lines(m: dict[str, Any]) -> list[str]:
    return [
        f"- CPU: {m['cpu']}, {m['physical_cores']} physical cores / {m['logical_cpus']} logical, "
        f"SIMD: {', '.join(m['simd'])}",
        f"- Memory: {m['memory_gb']} GB; copy bandwidth (numpy copy of 1 GiB, read+write): "
        f"{m['memory_bandwidth_gbs']} GB/s",
        f"- Load average when the run started: {' / '.join(str(v) for v in m['load_average'])} "
        "(1/5/15 min) — absolute times are inflated by other work; ratios come from interleaved "
        "runs",
        f"- edgecap recommends the `{m['recommended_mmproj_type']}` projector on this CPU",
    ]


def kernel_lines(files: dict[str, Any]) -> list[str]:
    choice = files.get("extra_buffers")
    if not choice:
        return []
    way = "repacked (llama.cpp's extra CPU buffers)" if choice["on"] else "plain (not repacked)"
    return [f"- text weights {way}, measured on this machine: {choice['why']}"]


def caption_table(captions: dict[str, Any]) -> list[str]:
    lines = [
        "| system @ image tokens | caption s | same image, new prompt s | peak RSS MB | tokens |",
        "|---|---|---|---|---|",
    ]
    for name, row in captions.items():
        lines.append(
            f"| {name} | {_s(row.get('caption_s'))} | {_s(row.get('same_image_s'))} | "
            f"{_s(row.get('peak_rss_mb'))} | {row.get('generated_tokens')} |"
        )
    return lines


def encode_table(encode: dict[str, Any]) -> list[str]:
    budgets = sorted({int(k.split("@")[1]) for k in encode})
    lines = ["| image tokens | f16 encode s | bf16 encode s | bf16 / f16 |", "|---|---|---|---|"]
    for b in budgets:
        f16, bf16 = encode.get(f"f16@{b}"), encode.get(f"bf16@{b}")
        ratio = f"{bf16['median'] / f16['median']:.2f}" if f16 and bf16 else "—"
        lines.append(f"| {b} | {_s(f16)} | {_s(bf16)} | {ratio} |")
    return lines


def growth_lines(growth: dict[str, Any]) -> list[str]:
    lines = []
    for kind, g in growth.items():
        per = ", ".join(f"{n}: {ms} ms" for n, ms in g["ms_per_token"].items())
        lines.append(
            f"- {kind}: encode per image token {per}; fit t = a·n + b·n² puts "
            f"{100 * g['quadratic_share_at_max']:.0f}% of the largest encode in the n² term"
        )
    return lines


def concurrency_table(conc: dict[str, Any]) -> list[str]:
    lines = [
        "| requests (4 in all) | in flight | wall s | tokens/s | × one at a time | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for mode, levels in conc.items():
        for k, row in levels.items():
            lines.append(
                f"| {mode.replace('_', ' ')} | {k} | {_s(row['wall_s'])} | "
                f"{_s(row['tokens_per_s'])} | {row['ratio_to_1']:.2f} | {_s(row['peak_rss_mb'])} |"
            )
    return lines


def folder_lines(folder: dict[str, Any]) -> list[str]:
    if not folder.get("folder_s"):
        return ["- not run"]
    return [
        f"- 4 new 448×448 images, `edgecap caption DIR --out FILE` (model load included): "
        f"{_s(folder['folder_s'])} s, {_s(folder['s_per_image'])} s per image, peak RSS "
        f"{_s(folder.get('cli_peak_rss_mb'))} MB",
        "- the same command again with `--resume` (nothing left to do): "
        f"{_s(folder['resume_s'])} s",
    ]


def target_table(targets: list[dict[str, Any]]) -> list[str]:
    marks = {True: "met", False: "**not met**", None: "not measured"}
    lines = ["| target | measured | bound | |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['target']} | {t['value']} | {t['bound']} | {marks[t['met']]} |")
    return lines


def render(summary: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md (machine, tables, targets)."""
    parts = [
        "## Machine",
        "",
        *machine_lines(summary["machine"]),
        *kernel_lines(summary["files"]),
        "",
        "## One caption and a new prompt about the same image",
        "",
        *caption_table(summary["captions"]),
        "",
        "## Projector type: encode time by image tokens",
        "",
        *encode_table(summary["encode"]),
        "",
        *growth_lines(summary.get("encode_growth", {})),
        "",
        "## Concurrent requests through the batching engine",
        "",
        *concurrency_table(summary["concurrency"]),
        "",
        "## Concurrent requests through the server (HTTP, `POST /v1/chat/completions`)",
        "",
        *concurrency_table(summary.get("server", {})),
        "",
        "## A folder through the CLI",
        "",
        *folder_lines(summary.get("folder", {})),
        "",
        "## Targets of issue 8",
        "",
        *target_table(summary["targets"]),
        "",
    ]
    if summary.get("errors"):
        parts += ["## Runs that failed", ""]
        parts += [f"- {k}: {v}" for k, v in summary["errors"].items()] + [""]
    return "\n".join(parts)
