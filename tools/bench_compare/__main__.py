"""``python -m tools.bench_compare`` (``make bench``): build the bench preset once (cached under
--workdir), run every measurement interleaved, write docs/benchmarks.{json,md,png}."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgecap.config import Settings
from edgecap.convert import quantize
from edgecap.engine import kernels
from tools.bench import build_model
from tools.bench_compare import machine, markdown, report
from tools.bench_compare.plan import CAPTION_SYSTEMS, SIZES, jobs, run_job

DOC_HEAD = Path(__file__).with_name("doc_head.md")
DOC_TAIL = Path(__file__).with_name("doc_tail.md")  # notes on the recorded run, kept by hand


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--workdir", type=Path, default=Path("build/bench"))
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--vision-blocks", type=int, default=8)
    p.add_argument("--text-type", default="Q4_K_M")
    p.add_argument("--runs", type=int, default=3, help="interleaved rounds (median of these)")
    p.add_argument("--tokens", type=int, default=32, help="generated tokens per caption")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--budgets", default="256,1024,2048", help="image tokens of the caption runs")
    p.add_argument("--encode-budgets", default="256,1024,2048")
    p.add_argument("--in-flight", default="1,2,4")
    p.add_argument(
        "--systems",
        default="edgecap,mtmd-default,mtmd-flash",
        help=f"of {','.join(CAPTION_SYSTEMS)}",
    )
    p.add_argument(
        "--extras",
        default="encode,concurrent,server,folder",
        help="any of encode,concurrent,server,folder, or none",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds per child run")
    p.add_argument("--results", type=Path, help="runs file (JSON lines); default in --workdir")
    p.add_argument("--report-only", action="store_true", help="render --results, run nothing")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    args.budgets = [int(b) for b in args.budgets.split(",")]
    args.encode_budgets = [int(b) for b in args.encode_budgets.split(",")]
    args.in_flight = [int(k) for k in args.in_flight.split(",")]
    args.systems = args.systems.split(",")
    args.extras = args.extras.split(",")
    for b in args.budgets + args.encode_budgets:
        if b not in SIZES:
            p.error(f"image budget {b}: choose from {sorted(SIZES)}")
    args.mmproj_type = "bf16"  # build_model's projector; f16 is derived from it below
    args.results = args.results or args.workdir / "results.jsonl"
    return args


def model_files(args: argparse.Namespace) -> dict[str, Any]:
    """The bench preset's files (built once), sizes, and the KV cache the engine allocates."""
    files = build_model(args.workdir, args)
    # Beside the converted directory: tools.bench reuses a directory holding exactly its 2 files.
    f16 = files.mmproj.parents[1] / files.mmproj.name.replace("-bf16", "-f16")
    if not f16.exists():
        quantize(files.mmproj, f16, "F16", mmproj=True)
    config = json.loads((files.text.parents[1] / "hf" / "config.json").read_text())
    text_config = config.get("text_config", config)
    head_dim = text_config["hidden_size"] // text_config["num_attention_heads"]
    kv = (
        8192
        * text_config["num_hidden_layers"]
        * 2
        * text_config["num_key_value_heads"]
        * head_dim
        * 2
    )
    home = args.workdir / "home"
    choice = kernels.choose(files.text, Settings(home=home))
    return {
        "kernels_record": str(home / "kernels.json"),
        "extra_buffers": {"on": choice.extra_buffers, "why": choice.reason},
        "text": str(files.text),
        "mmproj": str(files.mmproj),
        "mmproj_bf16": str(files.mmproj),
        "mmproj_f16": str(f16),
        "text_mb": files.text.stat().st_size / 1e6,
        "mmproj_mb": files.mmproj.stat().st_size / 1e6,
        "kv_cache_mb": kv / 1e6,
    }


def run_all(args: argparse.Namespace, files: dict[str, Any]) -> None:
    log = args.results.with_suffix(".stderr.log")
    for job in jobs(files, args):
        started = time.perf_counter()
        figures = run_job(job, args.timeout, log)
        record = {"name": job.name, **figures}
        with args.results.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        print(f"{job.name}: {time.perf_counter() - started:.0f} s {record}", flush=True)


def load_runs(path: Path) -> report.Runs:
    runs: report.Runs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            name = record.pop("name")
            runs.setdefault(name, []).append(record)
    return runs


def write_docs(summary: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    report.chart(summary, out / "benchmarks.png")
    head = DOC_HEAD.read_text(encoding="utf-8") if DOC_HEAD.exists() else "# Benchmarks\n"
    tail = DOC_TAIL.read_text(encoding="utf-8") if DOC_TAIL.exists() else ""
    text = head + "\n" + markdown.render(summary) + ("\n" + tail if tail else "")
    (out / "benchmarks.md").write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    files = model_files(args)
    meta_path = args.results.with_suffix(".machine.json")
    if not args.report_only:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(machine.describe()), encoding="utf-8")
        run_all(args, files)
    summary = report.summarize(
        load_runs(args.results), json.loads(meta_path.read_text()), files, args.budgets
    )
    write_docs(summary, args.out)
    print(markdown.render(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
