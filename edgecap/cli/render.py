"""How the CLI prints results: ``text``, ``json`` or ``jsonl`` on stdout; problems on stderr.

- ``text``: the caption. A single image streams its text as it is generated; with several
  images each caption follows a ``==> IMAGE <==`` header line.
- ``json``: exactly the caption API's result item, one compact JSON object per line
  (``{"taskType":"imageCaption","taskUUID":…,"status":"success","text":…}``, plus ``cost``).
- ``jsonl``: the same item with the image it describes first (``{"image":…, "taskType":…}``)
  — the lines ``--out FILE`` holds.

Lines go through ``tqdm.write`` so that they do not tear a progress bar on stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Literal

from tqdm import tqdm

from edgecap.batch import Captioned, Failed, ImageItem, Outcome

OutputFormat = Literal["text", "json", "jsonl"]
OUTPUT_FORMATS: tuple[OutputFormat, ...] = ("text", "json", "jsonl")


def to_json(data: Any, *, indent: int | None = None) -> str:
    """JSON with non-ASCII kept as is: one compact line, or indented for people. Text UTF-8
    cannot hold (a file name that is not UTF-8) makes it all ASCII, with JSON escapes."""
    text = json.dumps(data, ensure_ascii=False, indent=indent)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, indent=indent)
    return text


def shown(name: str) -> str:
    """A name fit for a terminal: bytes of a non-UTF-8 file name become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def say(message: str) -> None:
    """A line for the person at the terminal (stderr)."""
    tqdm.write(message, file=sys.stderr)


class Renderer:
    """Prints each outcome of a run as it arrives."""

    def __init__(self, output: OutputFormat | None, *, stream: bool) -> None:
        """``output`` None prints no results (they went to files); ``stream`` prints text
        pieces as they come (for one image in ``text`` form)."""
        self.output = output
        self.stream = stream and output == "text"

    def piece(self, image: ImageItem, text: str) -> None:
        if self.stream:
            sys.stdout.write(text)
            sys.stdout.flush()

    def outcome(self, outcome: Outcome) -> None:
        if isinstance(outcome, Failed):
            say(shown(f"{outcome.image.name}: {outcome.error.message}"))
        elif isinstance(outcome, Captioned):
            self._result(outcome)

    def _result(self, captioned: Captioned) -> None:
        if self.output == "text":
            if self.stream:
                sys.stdout.write("\n")
                sys.stdout.flush()
            else:
                header = f"==> {shown(captioned.image.name)} <=="
                tqdm.write(f"{header}\n{captioned.result.text}", sys.stdout)
        elif self.output == "json":
            tqdm.write(to_json(captioned.api_item), sys.stdout)
        elif self.output == "jsonl":
            tqdm.write(to_json(captioned.record()), sys.stdout)


def random_weights_notice(model_id: str, real_model_id: str) -> str:
    """What to say when captions come from a model of random weights, and how to do better."""
    return (
        f"using the demo model {model_id}: its weights are random, captions are noise; get the "
        f"real model with: edgecap models pull {real_model_id}"
    )
