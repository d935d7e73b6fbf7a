"""Stop sequences: end generation before the first occurrence of any of a few strings.

Text is fed piece by piece as it is decoded. What could still turn out to be the start of a
stop string is held back, so no streamed piece ever shows part of a stop string, and the
pieces released add up exactly to the text kept.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    """Finds the first stop string in a stream of text pieces."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that is safe to release after ``piece``; sets ``stopped`` at a stop string.

        Once stopped, everything from the stop string on is dropped, now and later.
        """
        if self.stopped:
            return ""
        if not self._stops:
            return piece
        text = self._held + piece
        cut = min((i for s in self._stops if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = self._partial_suffix(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once generation has ended without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, text: str) -> int:
        """Length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
