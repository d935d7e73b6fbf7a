"""From a validated caption task to the :class:`CaptionJob`s the task service runs.

One job per image: a task with ``inputImages`` becomes several jobs, the first under the task's
own UUID and the others under UUIDs derived from it (:func:`job_uuids`), so the task's results
can be found again from its UUID alone. Everything here blocks (model files are checked, URLs
resolved, images fetched and decoded): call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from edgecap.config import Settings
from edgecap.errors import DownloadFailed, EdgecapError, InvalidParameter
from edgecap.inputs import images, netguard
from edgecap.records import CaptionRequest, LoadedImage
from edgecap.registry import Registry
from edgecap.runtime.service import CaptionJob
from edgecap.server.schema import CaptionTask
from edgecap.server.uploads import UploadStore, is_media_uuid, is_url, wire_image

INLINE_KEPT_CHARS = 256


@dataclass(frozen=True)
class JobInputs:
    """The collaborators that turn a task into jobs."""

    settings: Settings
    registry: Registry
    uploads: UploadStore


def storable_task(raw: dict[str, Any]) -> dict[str, Any]:
    """The task as it is stored and fingerprinted: inline images (data URIs, base64) longer
    than :data:`INLINE_KEPT_CHARS` become a placeholder naming their length and sha256.

    The pixels are stored anyway; this keeps megabytes of base64 out of the task table and
    out of getTaskDetails answers, while a changed image still changes the fingerprint.
    """
    out = dict(raw)
    if isinstance(out.get("inputs"), dict) and "image" in out["inputs"]:
        out["inputs"] = {**out["inputs"], "image": inline_placeholder(out["inputs"]["image"])}
    if "inputImage" in out:
        out["inputImage"] = inline_placeholder(out["inputImage"])
    if isinstance(out.get("inputImages"), list):
        out["inputImages"] = [inline_placeholder(image) for image in out["inputImages"]]
    return out


def inline_placeholder(image: Any) -> Any:
    if not isinstance(image, str) or len(image) <= INLINE_KEPT_CHARS or is_url(image):
        return image
    digest = hashlib.sha256(image.encode()).hexdigest()
    return f"<inline image: {len(image)} characters, sha256 {digest}>"


def redacted_task(task: dict[str, Any]) -> dict[str, Any]:
    """The stored task as getTaskDetails shows it: URLs lose their credentials and query
    strings (webhook tokens, signed image links), which only the sender should know."""
    out = dict(task)
    for name in ("webhookURL", "uploadEndpoint", "inputImage"):
        if isinstance(out.get(name), str):
            out[name] = redacted_url(out[name])
    if isinstance(out.get("inputs"), dict) and isinstance(out["inputs"].get("image"), str):
        out["inputs"] = {**out["inputs"], "image": redacted_url(out["inputs"]["image"])}
    if isinstance(out.get("inputImages"), list):
        out["inputImages"] = [
            redacted_url(i) if isinstance(i, str) else i for i in out["inputImages"]
        ]
    return out


def redacted_url(text: str) -> str:
    """``https://user:pw@host/p?token=x#f`` → ``https://host/p?<redacted>``; others unchanged."""
    if not is_url(text):
        return text
    parts = urlsplit(text)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def fingerprint(task: dict[str, Any]) -> str:
    """sha256 of the task's canonical JSON: the same task sent twice has the same one."""
    canonical = json.dumps(task, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def job_uuids(task_uuid: str, count: int) -> list[str]:
    """The job UUIDs of a task with ``count`` images: its own first, then derived ones."""
    namespace = uuid.UUID(task_uuid)
    return [task_uuid] + [str(uuid.uuid5(namespace, f"inputImages[{i}]")) for i in range(1, count)]


def image_count(original_task: dict[str, Any]) -> int:
    """How many images (so jobs) a stored caption task has."""
    listed = original_task.get("inputImages")
    return len(listed) if isinstance(listed, list) and listed else 1


def make_jobs(
    task: CaptionTask, raw: dict[str, Any], inputs: JobInputs, *, owner: str | None = None
) -> list[CaptionJob]:
    """Check the model and delivery URLs, load the images, and build one job per image."""
    settings = inputs.settings
    model = resolve_model(inputs.registry, task.model)
    for url, purpose in (
        (task.webhook_url, "webhookURL"),
        (task.upload_endpoint, "uploadEndpoint"),
    ):
        if url is not None:
            check_delivery_url(url, settings, purpose)
    loaded = [
        load_task_image(source, parameter, task, inputs, owner)
        for source, parameter in zip(task.image_sources(), image_parameters(task), strict=True)
    ]
    sampling = settings.sampling_for(
        temperature=task.temperature, seed=task.seed, max_tokens=task.max_tokens
    )
    json_schema = task.json_schema
    if json_schema is None and task.response_format == "json":
        json_schema = {}
    stored = storable_task(raw)
    task_fingerprint = fingerprint(stored)
    return [
        CaptionJob(
            task_uuid=job_uuid,
            request=CaptionRequest(
                image=image,
                prompt=task.instruction() or settings.default_prompt,
                system_prompt=None,  # the API has none: the engine applies the server's
                sampling=sampling,
                json_schema=json_schema,
            ),
            model=model,
            include_cost=task.include_cost,
            webhook_url=task.webhook_url,
            upload_endpoint=task.upload_endpoint,
            ttl_s=task.ttl,
            fingerprint=task_fingerprint,
            original_task=stored,
            owner=owner,
        )
        for job_uuid, image in zip(job_uuids(task.task_uuid, len(loaded)), loaded, strict=True)
    ]


def resolve_model(registry: Registry, name: str | None) -> str | None:
    """The model id a task names, or None for the server's default model.

    Raises UnknownModel, ModelNotReady or ModelError now, rather than in the worker. A name
    that means the default model becomes None, so the worker does not reload it under a
    second name.
    """
    model_id = registry.resolve(name).id
    if name is None:
        return None
    try:
        return None if registry.resolve(None).id == model_id else model_id
    except EdgecapError:  # the default is broken or missing; this model is fine
        return model_id


def image_parameters(task: CaptionTask) -> list[str]:
    """How error messages name each image source of the task."""
    if task.inputs is not None:
        return ["inputs.image"]
    if task.input_image is not None:
        return ["inputImage"]
    return [f"inputImages[{i}]" for i in range(len(task.input_images or []))]


def load_task_image(
    source: str,
    parameter: str,
    task: CaptionTask,
    inputs: JobInputs,
    owner: str | None = None,
) -> LoadedImage:
    """An upload (by UUID), a URL, a data URI or base64, decoded and budget-resized."""
    try:
        readable: str | bytes = (
            inputs.uploads.read(source, parameter=parameter, owner=owner)
            if is_media_uuid(source)
            else wire_image(source, inputs.settings)
        )
        return images.load_image(
            readable, inputs.settings, min_pixels=task.min_pixels, max_pixels=task.max_pixels
        )
    except EdgecapError as exc:
        if exc.parameter is None:
            exc.parameter = parameter
        raise


def check_delivery_url(url: str, settings: Settings, purpose: str) -> None:
    """A webhookURL or uploadEndpoint must pass the outbound URL policy now, not at delivery."""
    try:
        netguard.check_url(url, settings, purpose=purpose)
    except DownloadFailed as exc:
        raise InvalidParameter(exc.message, parameter=purpose) from None
