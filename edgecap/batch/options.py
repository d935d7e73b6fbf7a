"""What a run asks of every image, and where and how it writes the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecap.errors import InvalidParameter
from edgecap.records import CaptionRequest, LoadedImage, Sampling


@dataclass(frozen=True)
class CaptionOptions:
    """What every image of a run is asked: the instruction, sampling, constraint, budget."""

    prompt: str
    system_prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    json_schema: dict[str, Any] | None = None  # {} = any JSON object; None = free text
    min_pixels: int | None = None  # None: the settings' budget
    max_pixels: int | None = None

    def request(self, image: LoadedImage) -> CaptionRequest:
        return CaptionRequest(
            image=image,
            prompt=self.prompt,
            system_prompt=self.system_prompt,
            sampling=self.sampling,
            json_schema=self.json_schema,
        )


@dataclass(frozen=True)
class RunOptions:
    """Where a run writes results, what they carry, and how a rerun treats finished images."""

    jsonl: Path | None = None  # append one line per captioned image
    sidecars: bool = False  # write photo.txt next to photo.jpg
    overwrite: bool = False  # caption images whose sidecar exists (else skip them)
    resume: bool = False  # skip images whose results for this same job are in the outputs
    include_cost: bool = False  # put the API's ``cost`` in every result item

    def __post_init__(self) -> None:
        if self.resume and not self.writes_files:
            raise InvalidParameter(
                "--resume needs results written to files (--out FILE or --sidecar): "
                "results printed to the terminal cannot be resumed.",
                parameter="resume",
            )

    @property
    def writes_files(self) -> bool:
        return self.jsonl is not None or self.sidecars
