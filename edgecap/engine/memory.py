"""Give back the resident pages of the token-embedding table once the text model is loaded.

llama.cpp maps the text GGUF and prefetches all of it (``MAP_POPULATE``), so the whole
token-embedding table — 152,064 rows, 307 MB in a Q4_K_M 7B — is resident, although a caption
reads one row per token (prompt and image embeddings enter as floats). Advising the kernel that
those pages are not needed (``madvise(MADV_DONTNEED)`` on the read-only file mapping) drops them
from this process; the rows a prompt uses are faulted back from the page cache on first use. The
file's bytes never change, so results do not either (tests/test_memory.py).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
import sys
from pathlib import Path

from edgecap.engine import gguf_check

log = logging.getLogger(__name__)

MADV_DONTNEED = 4  # Linux
SPARSE_TENSORS = ("token_embd.weight",)  # read by row (get_rows), never as a whole


def release_sparse_tensors(text: Path) -> int:
    """``madvise`` away the mapped pages of :data:`SPARSE_TENSORS`; the bytes released.

    0 where there is nothing to do: not Linux, the file is not mapped (``use_mmap`` off), or
    madvise refuses.
    """
    if not sys.platform.startswith("linux"):
        return 0
    header = gguf_check.read_header(text, "text model")
    spans = [
        (t.offset, t.offset + t.nbytes) for n, t in header.tensors.items() if n in SPARSE_TENSORS
    ]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for start, end, file_offset in file_mappings(text):
        for lo, hi in spans:
            first = _page_up(max(start, start + lo - file_offset))
            last = _page_down(min(end, start + hi - file_offset))
            if last > first and libc.madvise(first, last - first, MADV_DONTNEED) == 0:
                released += last - first
    if released:
        log.debug("released %d MB of mapped embedding pages of %s", released >> 20, text.name)
    return released


def file_mappings(path: Path) -> list[tuple[int, int, int]]:
    """This process's mappings of ``path``: (start address, end address, file offset)."""
    target = os.path.realpath(path)
    out = []
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == target:
                start, end = (int(v, 16) for v in fields[0].split("-"))
                out.append((start, end, int(fields[2], 16)))
    return out


def _page_up(address: int) -> int:
    return -(-address // mmap.PAGESIZE) * mmap.PAGESIZE


def _page_down(address: int) -> int:
    return address // mmap.PAGESIZE * mmap.PAGESIZE
