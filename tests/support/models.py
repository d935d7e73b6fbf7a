"""Stand-in model files (the registry never parses them), registering them, and a loopback
mirror that answers like the Hugging Face Hub."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from edgecap.config import load_settings
from edgecap.registry import Registry
from tests.support.http import QuietHandler, base_url, serve

# Small stand-ins for GGUF files: the registry never parses them.
TEXT_Q4 = b"GGUF text q4 " + bytes(range(256)) * 64
TEXT_Q8 = b"GGUF text q8 " + bytes(range(255, -1, -1)) * 64
MMPROJ = b"GGUF mmproj " + b"projector" * 2000


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def register(home: Path, name: str) -> None:
    """Install a model by path in the current settings' store (``EDGECAP_HOME``): two
    placeholder files, which fake engines never read."""
    files = home / "registered" / name
    files.mkdir(parents=True)
    (files / "text.gguf").write_bytes(b"text")
    (files / "mmproj.gguf").write_bytes(b"mmproj")
    Registry(load_settings()).register_local(name, files / "text.gguf", files / "mmproj.gguf")


def flip_one_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@dataclass
class HubMirror:
    """Serves ``/{repo}/resolve/{revision}/{filename}`` the way the Hub does.

    HEAD answers ``X-Repo-Commit``, ``ETag`` (for large files the Hub's ETag is the sha256 of
    the content) and ``Content-Length``; GET honours ``Range`` so downloads can resume.
    """

    files: dict[str, bytes]  # "{repo}/{filename}" -> content
    etags: dict[str, str] = field(default_factory=dict)  # override the ETag of a file
    truncate_next_get: bool = False  # send half a body once, then drop the connection
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    url: str = ""

    def lookup(self, path: str) -> tuple[str, bytes] | None:
        parts = path.split("/")  # "", org, name, "resolve", revision, filename
        if len(parts) != 6 or parts[3] != "resolve":
            return None
        key = f"{parts[1]}/{parts[2]}/{parts[5]}"
        return (key, self.files[key]) if key in self.files else None


def _mirror_handler(mirror: HubMirror) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def _headers(self) -> tuple[str, bytes] | None:
            mirror.requests.append((self.command, self.path, self.headers.get("Range")))
            found = mirror.lookup(self.path)
            if found is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            key, data = found
            start = int(self.headers.get("Range", "bytes=0-")[6:].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", mirror.commit)
            self.send_header("ETag", f'"{mirror.etags.get(key, sha256(data))}"')
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            return key, data[start:]

        def do_HEAD(self) -> None:
            self._headers()

        def do_GET(self) -> None:
            found = self._headers()
            if found is None:
                return
            body = found[1]
            if mirror.truncate_next_get:
                mirror.truncate_next_get = False
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@contextmanager
def serve_mirror(files: dict[str, bytes]) -> Iterator[HubMirror]:
    """A running ``HubMirror`` on 127.0.0.1 for ``files`` ("{repo}/{filename}" -> content)."""
    hub = HubMirror(files=files)
    with serve(_mirror_handler(hub)) as server:
        hub.url = base_url(server)
        yield hub
