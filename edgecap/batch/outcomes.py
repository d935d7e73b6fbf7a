"""What happens to each image of a run, and the counts of a whole run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgecap.batch.sources import ImageItem
from edgecap.errors import EdgecapError
from edgecap.records import CaptionResult


@dataclass(frozen=True)
class Captioned:
    image: ImageItem
    sha256: str  # of the image's encoded bytes
    result: CaptionResult
    api_item: dict[str, Any]  # exactly the API's result item

    def record(self) -> dict[str, Any]:
        """The JSONL line: the API's result item, with the image it describes first."""
        return {"image": self.image.name, **self.api_item}


@dataclass(frozen=True)
class Failed:
    image: ImageItem
    error: EdgecapError


@dataclass(frozen=True)
class Skipped:
    image: ImageItem
    reason: str


Outcome = Captioned | Failed | Skipped


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    skipped: int = 0

    def add(self, outcome: Outcome) -> None:
        if isinstance(outcome, Captioned):
            self.captioned += 1
        elif isinstance(outcome, Failed):
            self.failed += 1
        else:
            self.skipped += 1

    def line(self) -> str:
        return f"{self.captioned} captioned, {self.failed} failed, {self.skipped} skipped"

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 1 if self.failed else 0
