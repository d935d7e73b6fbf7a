"""Route llama.cpp, ggml and mtmd log lines into Python logging instead of stderr.

The lines land on the ``edgecap.llama`` logger at DEBUG (errors at WARNING), and the last few
hundred are kept in memory so an error message can quote what llama.cpp said just before.
"""

from __future__ import annotations

import ctypes
import logging
from collections import deque

import llama_cpp
import llama_cpp.mtmd_cpp as mtmd

logger = logging.getLogger("edgecap.llama")

# ggml_log_level in this llama.cpp: 0 none, 1 debug, 2 info, 3 warn, 4 error, 5 continuation.
# All of it is detail for whoever debugs; errors also reach the user through our exceptions,
# which quote ``tail()``. So nothing here is above INFO, and nothing spills on stderr unasked.
_LEVELS = {4: logging.INFO}

recent: deque[str] = deque(maxlen=400)
_partial: list[str] = []


def _on_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    piece = text.decode("utf-8", "replace") if text else ""
    _partial.append(piece)
    if not piece.endswith("\n"):
        return
    line = "".join(_partial).rstrip("\n")
    _partial.clear()
    recent.append(line)
    logger.log(_LEVELS.get(level, logging.DEBUG), "%s", line)


# Keep a reference: ctypes callbacks are freed with their Python object.
_callback = llama_cpp.llama_log_callback(_on_log)


def capture_native_logs() -> None:
    """Install the callback for llama.cpp/ggml and both mtmd loggers (idempotent)."""
    llama_cpp.llama_log_set(_callback, ctypes.c_void_p(0))
    mtmd.mtmd_log_set(_callback, ctypes.c_void_p(0))
    mtmd.mtmd_helper_log_set(_callback, ctypes.c_void_p(0))


def tail(n: int = 5) -> str:
    """The last ``n`` native log lines, for error messages."""
    return "\n".join(list(recent)[-n:])
