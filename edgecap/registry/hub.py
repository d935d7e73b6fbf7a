"""Downloading one file from a Hugging Face repository (or a mirror with the same URL layout).

``huggingface_hub`` does the transfer: it resumes interrupted downloads (the partial file stays
in the store's ``.downloads`` directory), retries, follows the Hub's redirects and shows a
progress bar. Before downloading we ask the Hub for the file's metadata ourselves, to pin the
commit (so the metadata and the bytes are of the same version) and to learn the sha256 the Hub
publishes for large files (their LFS ETag).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    disable_progress_bars,
    enable_progress_bars,
)

from edgecap.errors import DownloadFailed

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Downloaded:
    path: Path  # the complete file, inside the download directory
    url: str  # where it came from, at the pinned commit
    commit: str
    size: int
    hub_sha256: str | None  # the digest the Hub publishes, if it publishes one


def download(
    repo: str,
    filename: str,
    *,
    revision: str,
    dest_dir: Path,
    endpoint: str | None,
    progress: bool,
    fix: str,
) -> Downloaded:
    """Download ``filename`` of ``repo`` into ``dest_dir``; ``fix`` is appended to errors."""
    # An explicit endpoint is a mirror: never send it the user's Hugging Face token.
    token: bool | None = False if endpoint else None
    url = hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
    with _quiet_hub_warnings():
        try:
            meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
            if meta.commit_hash is None or meta.size is None:
                raise DownloadFailed(
                    f"{url} did not answer like a Hugging Face Hub (no commit or size headers). "
                    f"Check the endpoint, or {fix}"
                )
            with _hub_progress(progress):
                path = hf_hub_download(
                    repo,
                    filename,
                    revision=meta.commit_hash,
                    local_dir=dest_dir,
                    endpoint=endpoint,
                    token=token,
                )
        except (HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:
            raise DownloadFailed(f"could not download {url}: {_reason(exc)}; {fix}") from exc
        except requests.ConnectionError as exc:
            host = urlsplit(url).netloc
            raise DownloadFailed(
                f"could not connect to {host} for {url}: check the network, or the --endpoint URL; "
                f"{fix}"
            ) from exc
        except (requests.RequestException, OSError) as exc:
            raise DownloadFailed(f"could not download {url}: {_reason(exc)}; {fix}") from exc
    etag = (meta.etag or "").lower()
    return Downloaded(
        path=Path(path),
        url=hf_hub_url(repo, filename, revision=meta.commit_hash, endpoint=endpoint),
        commit=meta.commit_hash,
        size=meta.size,
        hub_sha256=etag if _SHA256.match(etag) else None,
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, OfflineModeIsEnabled):
        return "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set)"
    first_line = str(exc).strip().splitlines()
    return first_line[0] if first_line else type(exc).__name__


@contextmanager
def _quiet_hub_warnings() -> Iterator[None]:
    """huggingface_hub logs each retry on stderr; our DownloadFailed says what went wrong."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


@contextmanager
def _hub_progress(enabled: bool) -> Iterator[None]:
    """huggingface_hub shows its own progress bars; turn them off for a quiet pull."""
    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()
