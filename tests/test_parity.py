"""Reference parity: llama.cpp (through our converter and engine) against Hugging Face
transformers 4.57.1 on the tiny checkpoint, f32 GGUF, last-token logits.

See docs/fidelity.md for the figures and for why transformers 5.x is not the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest, ModelFiles, Sampling
from tests.support.env import require
from tests.support.images import encoded, synthetic_photo
from tools.hf_reference import load_reference

TEXT_PROMPTS = [
    "Hello! How are you today?",
    "Translate to French: the cat sits on the mat.",
    "数字 12345 和 emoji 🎉 in one line",
    "def f(x):\n    return x * 2  # code",
]
# Sizes are multiples of 28 so neither side resizes (width x height).
IMAGE_SIZES = [(56, 56), (112, 84), (84, 196), (224, 140)]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):
    torch = require("torch")
    require("transformers")
    return load_reference(tiny_checkpoint, torch.float32)


@pytest.fixture(scope="module")
def engine(tiny_gguf: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory):
    text, mmproj = tiny_gguf
    settings = Settings(home=tmp_path_factory.mktemp("home"), image_cache_entries=0)
    with Engine(ModelFiles("tiny", text, mmproj), settings) as eng:
        yield eng


def reference_logits(reference, prompt: str, image: Image.Image | None) -> np.ndarray:
    model, processor = reference
    content: list[dict] = [{"type": "image"}] if image is not None else []
    content.append({"type": "text", "text": prompt})
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[image] if image is not None else None,
                       return_tensors="pt")  # fmt: skip
    with require("torch").no_grad():
        out = model(**inputs)
    return out.logits[0, -1].float().numpy()


def our_logits(engine: Engine, settings: Settings, prompt: str, image: Image.Image | None):
    loaded = load_image(encoded(image), settings) if image is not None else None
    return engine.prompt_logits(CaptionRequest(image=loaded, prompt=prompt, sampling=Sampling()))


@pytest.mark.parametrize("prompt", TEXT_PROMPTS)
def test_text_logits_match_reference(reference, engine: Engine, prompt: str) -> None:
    ref = reference_logits(reference, prompt, None)
    ours = our_logits(engine, engine.settings, prompt, None)[: ref.shape[0]]
    assert list(np.argsort(-ours)[:5]) == list(np.argsort(-ref)[:5])
    assert np.max(np.abs(ours - ref)) <= 5e-3


@pytest.mark.parametrize(("width", "height"), IMAGE_SIZES)
def test_image_logits_match_reference(reference, engine: Engine, width: int, height: int) -> None:
    image = synthetic_photo(width, height, seed=width * 1000 + height)
    ref = reference_logits(reference, "Describe this image.", image)
    ours = our_logits(engine, engine.settings, "Describe this image.", image)[: ref.shape[0]]
    r = float(np.corrcoef(ours, ref)[0, 1])
    print(f"{width}x{height}: r={r:.7f} max|d|={np.max(np.abs(ours - ref)):.2e}")
    assert int(np.argmax(ours)) == int(np.argmax(ref))
    assert r >= 0.9999


def test_odd_size_goes_through_our_resize_like_the_reference(reference, engine: Engine) -> None:
    """97x301 is resized by edgecap (smart_resize + bicubic) and by the reference processor."""
    image = synthetic_photo(97, 301, seed=7)
    _, processor = reference
    settings = engine.settings
    loaded = load_image(encoded(image), settings)
    grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
    ref_tokens = int(grid[1] * grid[2]) // 4
    assert loaded.tokens == ref_tokens
    assert (loaded.height // 14, loaded.width // 14) == (int(grid[1]), int(grid[2]))
    ref = reference_logits(reference, "What is this?", image)
    ours = our_logits(engine, settings, "What is this?", image)[: ref.shape[0]]
    assert int(np.argmax(ours)) == int(np.argmax(ref))
    assert float(np.corrcoef(ours, ref)[0, 1]) >= 0.9999


def test_greedy_generation_after_an_image_matches_reference(reference, engine: Engine) -> None:
    """Decoding positions after the image (M-RoPE: positions != KV cells) are right."""
    model, processor = reference
    image = synthetic_photo(112, 84, seed=3)
    content = [{"type": "image"}, {"type": "text", "text": "Describe this image."}]
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True
    )
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    with require("torch").no_grad():
        out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    ref_tokens = out[0, inputs["input_ids"].shape[1] :].tolist()
    ref_text = processor.tokenizer.decode(ref_tokens, skip_special_tokens=True).strip()

    loaded = load_image(encoded(image), engine.settings)
    result = engine.caption(
        CaptionRequest(
            image=loaded,
            prompt="Describe this image.",
            sampling=Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=12),
        )
    )
    assert len(set(ref_tokens)) > 3, "tiny model output too degenerate to compare"
    assert result.text == ref_text
