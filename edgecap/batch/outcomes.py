"""What happens to each image of a run, and the counts of a whole run."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
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
class AlreadyDone:
    """A resumed run found this job's result for the image in every destination."""

    image: ImageItem


@dataclass(frozen=True)
class Skipped:
    """Not captioned for another reason (its sidecar exists, say)."""

    image: ImageItem
    reason: str


Outcome = Captioned | Failed | AlreadyDone | Skipped
COUNTED = {Captioned: "captioned", Failed: "failed", AlreadyDone: "done", Skipped: "skipped"}


@dataclass
class Summary:
    captioned: int = 0
    failed: int = 0
    done: int = 0  # already in the output (resume)
    skipped: int = 0
    # Why images the journal had as done were captioned again (their results were gone).
    redone: Counter[str] = field(default_factory=Counter)

    def add(self, outcome: Outcome) -> None:
        name = COUNTED[type(outcome)]
        setattr(self, name, getattr(self, name) + 1)

    def line(self) -> str:
        return (
            f"{self.captioned} captioned, {self.failed} failed, "
            f"{self.done} already in the output, {self.skipped} skipped"
        )

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else 1."""
        return 1 if self.failed else 0
