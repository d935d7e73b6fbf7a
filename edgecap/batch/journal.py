"""What ``--resume`` trusts: results still where this run puts them, matched to their journal.

The journal lives beside the output it describes (``run.jsonl`` -> ``run.jsonl.journal``; a run
writing sidecars only keeps ``.edgecap-journal.jsonl`` in the folder holding its images). Each
line names the job that made one result (the key: model, request, image content and source),
the ``taskUUID`` of its line in the JSONL output, and its sidecar with the sha256 of the text.

The journal never vouches for a result on its own. When a run opens it, the output is read
afresh (a torn last line ignored) and the sidecars hashed: an image is done for a resumed run
only if every destination of this run still holds the journaled result. A line of the output
the journal does not describe (written just before a crash, or the journal was lost) counts
its image as done by name. Entries none of whose results remain are pruned, so the journal
never outgrows the results it describes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgecap.batch.options import CaptionOptions, RunOptions
from edgecap.batch.outcomes import Captioned
from edgecap.batch.outputs import LineFile, write_atomic
from edgecap.batch.sources import ImageItem
from edgecap.config import Settings
from edgecap.inputs.images import pixel_budget

JOURNAL_SUFFIX = ".journal"  # run.jsonl -> run.jsonl.journal
FOLDER_JOURNAL = ".edgecap-journal.jsonl"  # sidecar-only runs: in the images' common folder


def journal_path(run: RunOptions, items: Sequence[ImageItem]) -> Path | None:
    """Where the journal of a run's outputs lives (None: the run writes no files)."""
    if run.jsonl is not None:
        return run.jsonl.with_name(run.jsonl.name + JOURNAL_SUFFIX)
    folders = [str(i.path.resolve().parent) for i in items if i.path is not None]
    if not run.sidecars or not folders:
        return None
    return Path(os.path.commonpath(folders)) / FOLDER_JOURNAL


def job_identity(model_id: str, settings: Settings, options: CaptionOptions) -> str:
    """What was asked of every image, by which model: equal strings mean the same job."""
    low, high = pixel_budget(settings, min_pixels=options.min_pixels, max_pixels=options.max_pixels)
    job = {
        "model": model_id,
        "prompt": options.prompt,
        "system": settings.system_prompt_for(options.system_prompt),
        "sampling": asdict(options.sampling),
        "json_schema": options.json_schema,
        "pixels": [low, high],
    }
    return json.dumps(job, sort_keys=True)


def image_key(job: str, image: ImageItem, sha256: str) -> str:
    """The journal key of ``job`` on one image: its source and content."""
    source = str(image.path.resolve()) if image.path is not None else image.name
    text = f"{job}\n{source}\n{sha256}"
    # A file name that is not UTF-8 holds surrogate escapes: hash its original bytes.
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class Resume:
    """What a resumed run may skip, and why journaled images are captioned again."""

    done: set[str] = field(default_factory=set)  # keys whose results are all in place
    by_line: set[str] = field(default_factory=set)  # images of lines the journal lacks
    gone: dict[str, str] = field(default_factory=dict)  # key -> why its result is gone


class Ledger:
    """A run's destinations (JSONL file, sidecars) and their journal; stores each result.

    :meth:`store` writes the result durably (sidecar by atomic rename, the JSONL line fsynced)
    and only then journals it.
    """

    def __init__(self, run: RunOptions, items: Sequence[ImageItem]) -> None:
        self.run = run
        self.results = LineFile(run.jsonl) if run.jsonl is not None else None
        path = journal_path(run, items)
        self.journal = LineFile(path) if path is not None else None
        self.resume = self._load() if run.resume else Resume()

    def is_done(self, key: str | None, image: ImageItem) -> bool:
        """True if this run's destinations all hold a result of this job for ``image`` (with
        ``key`` None, not known yet: only a line of the output the journal lacks counts)."""
        if not self.run.resume:
            return False
        if key is not None and key in self.resume.done:
            return True
        sidecar_ok = not self.run.sidecars or (image.sidecar is not None and image.sidecar.exists())
        return image.name in self.resume.by_line and sidecar_ok

    @property
    def done_keys(self) -> frozenset[str]:
        """The keys whose results are all in place (empty unless resuming)."""
        return frozenset(self.resume.done)

    def why_redone(self, key: str) -> str | None:
        """Why an image the journal had as done is captioned again (None: it had not)."""
        return self.resume.gone.get(key)

    def store(self, captioned: Captioned, key: str) -> None:
        """Write the outputs durably, then (and only then) journal the image as done."""
        image, text = captioned.image, captioned.result.text
        sidecar = image.sidecar if self.run.sidecars else None
        if sidecar is not None:
            write_atomic(sidecar, text)
        if self.results is not None:
            self.results.append(captioned.record())
        if self.journal is not None:
            self.journal.append(
                {
                    "key": key,
                    "image": image.name,
                    "sha256": captioned.sha256,
                    "task": captioned.api_item["taskUUID"] if self.results else None,
                    "sidecar": str(sidecar) if sidecar is not None else None,
                    "text_sha256": text_sha256(text) if sidecar is not None else None,
                    "model": captioned.result.model,
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                }
            )

    def close(self) -> None:
        for file in (self.results, self.journal):
            if file is not None:
                file.close()

    # -- reading what is there -------------------------------------------------------------

    def _load(self) -> Resume:
        resume = Resume()
        if self.journal is None:
            return resume
        lines = self._lines()
        kept: list[dict[str, Any]] = []
        known: set[str] = set()
        entries = 0
        for entry in self.journal.records():
            key = entry.get("key")
            if not isinstance(key, str):
                continue
            entries += 1
            if isinstance(entry.get("task"), str):
                known.add(entry["task"])
            lost = self._lost(entry, lines)
            if len(lost) < len(_recorded(entry)):
                kept.append(entry)  # some result of it is still in place
            if self._holds_all(entry, lost):
                resume.done.add(key)
            elif lost:
                resume.gone[key] = lost[0]
        for key in resume.done:
            resume.gone.pop(key, None)
        resume.by_line = {name for task, name in lines.items() if task not in known}
        if len(kept) < entries:
            self.journal.rewrite(kept)
        return resume

    def _lines(self) -> dict[str, str]:
        """taskUUID -> image of every line in the JSONL output."""
        if self.results is None:
            return {}
        lines = {}
        for record in self.results.records():
            task, image = record.get("taskUUID"), record.get("image")
            if isinstance(task, str) and isinstance(image, str):
                lines[task] = image
        return lines

    def _lost(self, entry: dict[str, Any], lines: dict[str, str]) -> list[str]:
        """Why each result the entry records is no longer in place (empty: all are)."""
        lost = []
        task = entry.get("task")
        if isinstance(task, str) and self.results is not None and task not in lines:
            lost.append(f"its line is missing from {self.results.path}")
        sidecar = entry.get("sidecar")
        if isinstance(sidecar, str):
            why = _sidecar_gone(Path(sidecar), entry.get("text_sha256"))
            if why is not None:
                lost.append(why)
        return lost

    def _holds_all(self, entry: dict[str, Any], lost: list[str]) -> bool:
        """Every destination of this run is recorded by the entry and still holds it."""
        needed = {"task": self.results is not None, "sidecar": self.run.sidecars}
        recorded = _recorded(entry)
        return not lost and all(name in recorded for name, need in needed.items() if need)


def _recorded(entry: dict[str, Any]) -> set[str]:
    return {name for name in ("task", "sidecar") if isinstance(entry.get(name), str)}


def _sidecar_gone(sidecar: Path, expected: object) -> str | None:
    try:
        text = sidecar.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "its sidecar is missing"
    except (OSError, UnicodeDecodeError):
        return "its sidecar cannot be read"
    return None if text_sha256(text) == expected else "its sidecar was changed"


def redo_summary(reasons: Counter[str]) -> str | None:
    """One line: how many journaled images a run captioned again, and why."""
    if not reasons:
        return None
    total = sum(reasons.values())
    why = "; ".join(f"{n} because {reason}" for reason, n in reasons.most_common())
    entries = "entry" if total == 1 else "entries"
    return f"resume: {total} journal {entries} re-done ({why})"
