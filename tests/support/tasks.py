"""Task-store builders: a clock that moves only when told to, images and caption jobs."""

from __future__ import annotations

import hashlib
import uuid

from edgecap.records import CaptionRequest, LoadedImage, Sampling
from edgecap.runtime.tasks import CaptionJob


class FakeClock:
    """Wall-clock time that moves only when told to."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_image(seed: int = 1, width: int = 56, height: int = 28) -> LoadedImage:
    rgb = bytes((seed + i) % 256 for i in range(width * height * 3))
    return LoadedImage(
        rgb=rgb,
        width=width,
        height=height,
        original_width=width * 2,
        original_height=height * 2,
        sha256=hashlib.sha256(f"source {seed}".encode()).hexdigest(),
        source_format="PNG",
        load_seconds=0.25,
    )


def make_job(
    image: LoadedImage | None = None, prompt: str = "Describe.", **fields: object
) -> CaptionJob:
    task_uuid = str(fields.pop("task_uuid", uuid.uuid4()))
    request = CaptionRequest(
        image=image if image is not None else make_image(),
        prompt=prompt,
        system_prompt="Be brief.",
        sampling=Sampling(temperature=0.7, seed=42, max_tokens=33),
        json_schema={"type": "object"},
    )
    values: dict[str, object] = {
        "model": "qwen2.5-vl-7b",
        "include_cost": True,
        "webhook_url": "http://127.0.0.1:9/hook",
        "upload_endpoint": None,
        "ttl_s": 120,
        "fingerprint": f"fp-{prompt}",
        "original_task": {"taskType": "caption", "taskUUID": task_uuid, "prompt": prompt},
    }
    values.update(fields)
    return CaptionJob(task_uuid=task_uuid, request=request, **values)  # type: ignore[arg-type]
