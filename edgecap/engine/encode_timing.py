"""Time one image encode with each of several projectors for the same text model.

``edgecap doctor --measure-projectors`` uses it to check the projector-type recommendation
against this machine: where a model's f16 and bf16 projectors are both installed, the measured
faster one is what this CPU should use.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest, ModelFiles, Sampling

SIZE = 448  # pixels a side: 256 image tokens, a few seconds per encode for the 7B on 2 cores


def encode_seconds(text: Path, projectors: dict[str, Path], settings: Settings) -> dict[str, float]:
    """Seconds of one encode of the same synthetic image per projector (label -> seconds)."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(buffer, "PNG")
    uncached = settings.model_copy(
        update={"image_cache_entries": 0, "image_cache_dir": None, "max_pixels": SIZE * SIZE}
    )
    image = load_image(buffer.getvalue(), uncached)
    request = CaptionRequest(image=image, prompt="Describe.", sampling=Sampling(max_tokens=1))
    seconds = {}
    for label, mmproj in projectors.items():
        with Engine(ModelFiles(label, text, mmproj), uncached) as engine:
            seconds[label] = round(engine.caption(request).timings["encode"], 3)
    return seconds
