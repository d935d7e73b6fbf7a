"""``edgecap caption IMAGE...``: caption files, folders, globs, manifests, URLs or stdin.

Parses and validates the flags, finds the images, resolves the model, then hands everything to
:func:`edgecap.batch.caption_many` (or, with ``--ray``, :func:`edgecap.batch.ray_run.
caption_on_ray`) and prints what comes back (:mod:`edgecap.cli.render`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from edgecap.batch import (
    CaptionOptions,
    ImageItem,
    Outcome,
    RunOptions,
    StreamingEngine,
    Summary,
    caption_many,
    find_images,
    redo_summary,
)
from edgecap.batch.model_check import describe_model
from edgecap.batch.ray_run import RayOptions, caption_on_ray, import_ray
from edgecap.cli.render import OUTPUT_FORMATS, OutputFormat, Renderer, random_weights_notice, say
from edgecap.config import (
    MAX_SEED,
    MAX_TEMPERATURE,
    MAX_TOKENS_LIMIT,
    MAX_TOP_K,
    PIXELS_PER_TOKEN,
    Settings,
    default_of,
    load_settings,
)
from edgecap.errors import InvalidParameter
from edgecap.records import ModelFiles, Sampling
from edgecap.registry import Registry

SAMPLING_DEFAULTS = Sampling()  # what the sampling flags default to
# The sampling flags: flag (its Sampling field), type, bounds, metavar, what it does.
SAMPLING_FLAGS: tuple[tuple[str, Callable[[str], float], float, float, str | None, str], ...] = (
    ("--temperature", float, 0.0, MAX_TEMPERATURE, "T", "0 picks the likeliest token every time"),
    ("--top-p", float, 0.0, 1.0, "P", "nucleus sampling; 1 is off"),
    ("--top-k", int, 0, MAX_TOP_K, "K", "sample from the K likeliest tokens; 0 is off"),
    ("--seed", int, 0, MAX_SEED, None, "sampling seed"),
)


class ClosableEngine(StreamingEngine, Protocol):
    """What the command needs of :class:`edgecap.engine.engine.Engine`."""

    def close(self) -> None: ...


def open_engine(model: ModelFiles, settings: Settings) -> ClosableEngine:
    """Load ``model`` into a llama.cpp engine (the one place the CLI builds an engine)."""
    from edgecap.engine import kernels
    from edgecap.engine.engine import Engine as LlamaEngine  # loads llama.cpp: only when captioning

    if kernels.pending(model.text, settings):
        say(
            f"measuring which weight layout runs {model.id} faster on this CPU (once per model "
            "file: two short prefills, about half a minute for a 7B) ..."
        )
    return LlamaEngine(model, settings)


def resolve_model(
    settings: Settings, name: str | None, *, tell: Callable[[str], object] = say
) -> ModelFiles:
    """The model files a name means (None: the default), telling ``tell`` (default: stderr)
    when the weights are random."""
    registry = Registry(settings)
    model = registry.resolve(name)
    if model.random_weights:
        tell(random_weights_notice(model.id, registry.catalog.default))
    return model


# ---------------------------------------------------------------------------- arguments


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "caption",
        help="caption images, folders, globs or URLs",
        description=(
            "Caption images. IMAGE is a file, a folder (searched recursively), a glob, an "
            "http(s) URL, a manifest (.jsonl, .csv or .parquet listing images), or - for "
            "stdin. Text streams for one image; folders show a progress bar, and a bad image "
            "is reported and skipped (exit code 1). --ray runs the same on a Ray cluster."
        ),
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="what to caption")

    ask = parser.add_argument_group("what to ask")
    ask.add_argument("--prompt", help="the instruction (default: describe the image in detail)")
    ask.add_argument("--system", help="a system prompt")
    shape = ask.add_mutually_exclusive_group()
    shape.add_argument(
        "--json-schema",
        type=json_schema_file,
        metavar="FILE",
        help="constrain the answer to this JSON schema",
    )
    shape.add_argument(
        "--json",
        dest="json_schema",
        action="store_const",
        const={},
        help="constrain the answer to a JSON object (any)",
    )

    gen = parser.add_argument_group("model and sampling")
    gen.add_argument("--model", help="model name, alias or AIR id (default: the default model)")
    gen.add_argument(
        "--max-tokens",
        type=bounded(int, 1, MAX_TOKENS_LIMIT),
        metavar="N",
        help=f"longest answer, in tokens (default {default_of('max_tokens')}, EDGECAP_MAX_TOKENS)",
    )
    for flag, kind, low, high, metavar, what in SAMPLING_FLAGS:
        default = getattr(SAMPLING_DEFAULTS, flag[2:].replace("-", "_"))
        gen.add_argument(
            flag,
            type=bounded(kind, low, high),
            default=default,
            metavar=metavar,
            help=f"{what} (default {default:g})",
        )
    gen.add_argument(
        "--max-pixels",
        type=bounded(int, PIXELS_PER_TOKEN, None),
        metavar="N",
        help=f"image budget: shrink images above N pixels (default {default_of('max_pixels')})",
    )
    gen.add_argument(
        "--min-pixels",
        type=bounded(int, PIXELS_PER_TOKEN, None),
        metavar="N",
        help=f"enlarge images below N pixels (default {default_of('min_pixels')})",
    )
    gen.add_argument(
        "--threads", type=bounded(int, 1, 1024), metavar="N", help="default: physical cores"
    )
    gen.add_argument("--offline", action="store_true", help="refuse all network access")

    out = parser.add_argument_group("output")
    out.add_argument(
        "--output",
        choices=OUTPUT_FORMATS,
        help="what to print: text (default), json (the API result item), jsonl (+ image); "
        "with --out or --sidecar nothing is printed unless asked",
    )
    out.add_argument("--include-cost", action="store_true", help="add the API's cost field")
    out.add_argument("--out", type=Path, metavar="FILE", help="append JSONL results to FILE")
    out.add_argument("--sidecar", action="store_true", help="write photo.txt next to photo.jpg")
    out.add_argument("--overwrite", action="store_true", help="redo images that have a sidecar")
    out.add_argument(
        "--resume",
        action="store_true",
        help="skip images whose results for this same job are still in the --out file and "
        "sidecars (journal: FILE.journal beside --out)",
    )

    scale = parser.add_argument_group("on a Ray cluster (pip install 'edgecap[ray]')")
    scale.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="caption on Ray: ADDRESS is host:port or auto; none starts a local Ray",
    )
    scale.add_argument(
        "--engines", type=bounded(int, 1, 4096), metavar="N", help="engine actors (default: fill)"
    )
    scale.add_argument(
        "--cpus-per-engine",
        type=bounded(int, 1, 1024),
        metavar="K",
        help="CPUs (and llama.cpp threads) per engine (default: the smallest node's)",
    )
    parser.set_defaults(func=run)


def bounded(
    kind: Callable[[str], int] | Callable[[str], float], low: float, high: float | None
) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` within ``[low, high]`` (no upper bound if None)."""
    name = "a whole number" if kind is int else "a number"

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if value < low or (high is not None and value > high):
            where = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"{text} is out of range: use {where}")
        return value

    return convert


def json_schema_file(text: str) -> dict[str, Any]:
    """An argparse type: a file holding a JSON schema object."""
    try:
        schema = json.loads(Path(text).read_text(encoding="utf-8"))
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise argparse.ArgumentTypeError(f"{text} must hold a JSON object (a JSON schema)")
    return schema


# ---------------------------------------------------------------------------- running


def run(args: argparse.Namespace) -> int:
    settings = load_settings(offline=True if args.offline else None, n_threads=args.threads)
    run_options = RunOptions(
        jsonl=args.out,
        sidecars=args.sidecar,
        overwrite=args.overwrite,
        resume=args.resume,
        include_cost=args.include_cost,
    )
    items = find_images(args.images)
    options = caption_options(args, settings)
    output: OutputFormat | None = args.output or (None if run_options.writes_files else "text")
    renderer = Renderer(output, stream=len(items) == 1 and args.ray is None)

    cluster = ray_options(args)
    model = resolve_model(settings, args.model)
    if cluster is not None:
        summary = _on_ray(items, model, settings, options, run_options, cluster, renderer)
    else:
        engine = open_engine(model, settings)
        try:
            summary = _caption_with_progress(
                items, engine, settings, options, run_options, renderer
            )
        finally:
            engine.close()
    redone = redo_summary(summary.redone)
    if redone is not None:
        print(redone, file=sys.stderr)
    if len(items) > 1 or summary.failed or summary.skipped or summary.done:
        print(summary.line(), file=sys.stderr)
    return summary.exit_code


def caption_options(args: argparse.Namespace, settings: Settings) -> CaptionOptions:
    """What the flags ask of every image, with the settings' defaults filled in."""
    return CaptionOptions(
        prompt=args.prompt or settings.default_prompt,
        system_prompt=args.system,
        sampling=settings.sampling_for(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            max_tokens=args.max_tokens,
        ),
        json_schema=args.json_schema,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
    )


def ray_options(args: argparse.Namespace) -> RayOptions | None:
    """The cluster ``--ray`` names (None: caption here); Ray itself must be installed."""
    if args.ray is None:
        for flag, value in (
            ("--engines", args.engines),
            ("--cpus-per-engine", args.cpus_per_engine),
        ):
            if value is not None:
                raise InvalidParameter(f"{flag} needs --ray: it sizes the engines of a cluster.")
        return None
    import_ray()  # fail before the model is resolved if Ray is missing
    return RayOptions(
        address=args.ray or None, engines=args.engines, cpus_per_engine=args.cpus_per_engine
    )


def _on_ray(
    items: list[ImageItem],
    model: ModelFiles,
    settings: Settings,
    options: CaptionOptions,
    run_options: RunOptions,
    cluster: RayOptions,
    renderer: Renderer,
) -> Summary:
    with _progress(len(items)) as bar:
        check = describe_model(model, settings)
        return caption_on_ray(
            items,
            check,
            settings,
            options,
            run_options,
            cluster,
            on_outcome=_shown(bar, renderer),
            on_notice=say,
        )


def _progress(total: int) -> tqdm:
    # The bar shows only for several images, and only on a terminal (disable=None).
    return tqdm(
        total=total,
        unit="img",
        file=sys.stderr,
        disable=None if total > 1 else True,
        dynamic_ncols=True,
    )


def _shown(bar: tqdm, renderer: Renderer) -> Callable[[Outcome], None]:
    """Each outcome advances the bar and is rendered."""

    def on_outcome(outcome: Outcome) -> None:
        bar.update(1)
        renderer.outcome(outcome)

    return on_outcome


def _caption_with_progress(
    items: list[ImageItem],
    engine: ClosableEngine,
    settings: Settings,
    options: CaptionOptions,
    run_options: RunOptions,
    renderer: Renderer,
) -> Summary:
    with _progress(len(items)) as bar:
        on_outcome = _shown(bar, renderer)
        return caption_many(
            items,
            engine,
            settings,
            options,
            run_options,
            on_outcome=on_outcome,
            on_piece=renderer.piece,
        )
