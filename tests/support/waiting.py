"""The one polling loop of the suite: every wait has a deadline, so no test hangs."""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_WAIT_S = 30.0


def wait_until(
    condition: Callable[[], object],
    what: str,
    timeout: float = DEFAULT_WAIT_S,
    interval: float = 0.02,
) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout`` seconds.

    The condition may itself raise (e.g. assert that a process is still alive).
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
