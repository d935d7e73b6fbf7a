"""``edgecap demo`` (``make demo``): caption the bundled sample image, on any fresh machine.

With a real model installed, the demo uses it. Otherwise it builds the tiny demo model
(:data:`DEMO_MODEL`: the ``tiny`` Qwen2.5-VL checkpoint of :mod:`edgecap.tiny` with seeded
random weights, converted by :func:`edgecap.convert.convert`), registers it, and captions with
that — proving the whole path runs, with a caption that is noise, as it says on stderr. The
built model is kept under ``$EDGECAP_HOME/demo/``, so a second run starts at once. Both
builders are part of the package, so the demo works from an installed wheel.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import edgecap
from edgecap.batch import Captioned, CaptionOptions, Failed, ImageItem, Outcome, caption_many
from edgecap.cli import caption
from edgecap.cli.render import say, to_json
from edgecap.config import Settings, load_settings
from edgecap.errors import EdgecapError, ModelError, ModelNotReady
from edgecap.fsutil import publish
from edgecap.records import ModelFiles, Sampling
from edgecap.registry import Registry

DEMO_MODEL = "edgecap-tiny-random"  # its catalog entry: edgecap/data/manifest.json
DEMO_SEED = 0
DEMO_OUTTYPE = "f32"  # the tiny model is a few MB: keep the weights exactly as generated
NOISE_MAX_TOKENS = 32  # random weights caption noise: a line of it is enough to show it runs


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="caption the bundled sample image (builds a tiny demo model if none is installed)",
        description=(
            "Caption edgecap's sample image and print the API's JSON response. Without a real "
            f"model installed, build and use {DEMO_MODEL}, whose weights are random."
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = Registry(settings)
    model = real_model(registry) or ensure_demo_model(registry, settings)
    started = time.perf_counter()
    outcome = caption_sample(model, settings)
    elapsed = time.perf_counter() - started
    print(to_json({"data": [outcome.api_item]}, indent=2))
    if model.random_weights:
        say(
            f"That caption is noise: {model.id} has random weights; it only shows that "
            f"everything runs ({elapsed:.1f} s). For real captions install the real model: "
            f"`edgecap models pull {registry.catalog.default}` (about 6 GB), or on an offline "
            "machine `edgecap models import PATH` with a pack made by `edgecap models export`."
        )
    else:
        say(f"captioned with {model.id} in {elapsed:.1f} s")
    return 0


def real_model(registry: Registry) -> ModelFiles | None:
    """The default model if it has real weights; None when only random ones are installed."""
    try:
        model = registry.resolve(None)
    except ModelNotReady:
        return None  # nothing installed yet
    return None if model.random_weights else model


def ensure_demo_model(registry: Registry, settings: Settings) -> ModelFiles:
    """The demo model's files: installed ones, else built (or rebuilt) and registered."""
    try:
        return registry.resolve(DEMO_MODEL)
    except (ModelNotReady, ModelError):
        pass  # not built yet, or its files went missing
    text, mmproj = build_demo_files(settings.home / "demo" / DEMO_MODEL)
    registry.register_local(DEMO_MODEL, text, mmproj, random_weights=True)
    return registry.resolve(DEMO_MODEL)


def build_demo_files(dest: Path) -> tuple[Path, Path]:
    """The demo model's two GGUF files in ``dest``, built unless already there.

    Built in a temporary directory beside ``dest`` and renamed into it: files in ``dest`` are
    always complete.
    """
    text, mmproj = dest / f"{DEMO_MODEL}.gguf", dest / f"mmproj-{DEMO_MODEL}.gguf"
    if text.is_file() and mmproj.is_file():
        return text, mmproj
    from edgecap.convert import convert  # numpy, gguf and the tokenizer: only when building
    from edgecap.tiny import make_checkpoint

    say(f"building the demo model {DEMO_MODEL} (random weights; once, a few seconds) ...")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{DEMO_MODEL}-") as tmp:
        checkpoint = make_checkpoint(Path(tmp) / "hf", "tiny", seed=DEMO_SEED)
        built_text, built_mmproj = convert(
            checkpoint,
            Path(tmp) / "gguf",
            outtype=DEMO_OUTTYPE,
            name=DEMO_MODEL,
            progress=sys.stderr.isatty(),
        )
        publish(built_mmproj, mmproj)
        publish(built_text, text)  # last: its presence says both are complete
    return text, mmproj


def caption_sample(
    model: ModelFiles, settings: Settings, *, max_tokens: int | None = None
) -> Captioned:
    """Caption the bundled sample image with ``model``; raise the error if that fails.

    ``max_tokens`` defaults to the settings', or a short line for a model of random weights.
    """
    if max_tokens is None:
        max_tokens = NOISE_MAX_TOKENS if model.random_weights else settings.max_tokens
    options = CaptionOptions(settings.default_prompt, sampling=Sampling(max_tokens=max_tokens))
    outcomes: list[Outcome] = []
    engine = caption.open_engine(model, settings)
    try:
        with resources.as_file(resources.files(edgecap) / "data" / "sample.jpg") as sample:
            caption_many([ImageItem(sample)], engine, settings, options, on_outcome=outcomes.append)
    finally:
        engine.close()
    [outcome] = outcomes
    if isinstance(outcome, Failed):
        raise outcome.error
    if not isinstance(outcome, Captioned):  # pragma: no cover - nothing skips without outputs
        raise EdgecapError(f"the sample image was not captioned: {outcome}")
    return outcome
