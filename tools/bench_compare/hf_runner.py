"""transformers on the bench preset's checkpoint: the same image, prompt and token count."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

from PIL import Image

from tools.bench_batching import PROMPTS, png


def transformers_caption(spec: dict[str, Any]) -> dict[str, Any]:
    """Qwen2.5-VL in ``spec["dtype"]``, greedy, exactly ``spec["tokens"]`` new tokens."""
    import torch

    from tools.hf_reference import load_reference

    torch.set_num_threads(spec["threads"])
    checkpoint = Path(spec["text"]).parents[1] / "hf"
    width, height = (int(v) for v in spec["size"].split("x"))
    model, processor = load_reference(
        checkpoint,
        getattr(torch, spec["dtype"]),
        min_pixels=width * height,
        max_pixels=width * height,
    )
    image = Image.open(io.BytesIO(png(spec["seed"], (width, height)))).convert("RGB")

    def caption(prompt: str) -> tuple[float, int]:
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=[text], images=[image], return_tensors="pt")
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=spec["tokens"],
                min_new_tokens=spec["tokens"],
                do_sample=False,
            )
        return time.perf_counter() - started, int(out.shape[1] - inputs["input_ids"].shape[1])

    first_s, first_n = caption(PROMPTS[0])
    return {"caption_s": first_s, "generated_tokens": [first_n]}
