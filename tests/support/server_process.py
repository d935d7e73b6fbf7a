"""``edgecap serve`` as a real child process on a loopback port, for fault, corpus and load tests
(and tools/soak.py): its peak memory (VmHWM) can be read, and it can be SIGKILLed or SIGTERMed.

The tiny model is registered in the server's home first (``register``); the server then loads
it as its default model in its engine process.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from edgecap.config import Settings
from edgecap.records import ModelFiles
from edgecap.registry import Registry
from tests.support.urls import LoopbackUrls

READY_TIMEOUT_S = 300.0  # a busy 2-core CI box loads slowly


def register(home: Path, files: ModelFiles) -> None:
    Registry(Settings(home=home)).register_local(
        files.id, files.text, files.mmproj, random_weights=True
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess(LoopbackUrls):
    """A running ``edgecap serve``; ``env`` holds its EDGECAP_* settings."""

    home: Path
    env: dict[str, str]
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def start(self) -> ServerProcess:
        self.port = self.port or free_port()
        self.log_path = self.home / f"server-{self.port}.log"
        env = {**os.environ, "EDGECAP_HOME": str(self.home), **self.env}
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), *sys.path])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edgecap", "serve", "--port", str(self.port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"the server never got ready:\n{self.log()}"
            time.sleep(0.2)

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory so far (VmHWM), in MB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM")

    def open_fds(self) -> int:
        assert self.process is not None
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def kill(self) -> None:
        """SIGKILL the server (its engine child follows: it sees its pipe close)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(60)

    def terminate(self, timeout_s: float = 60.0) -> float:
        """SIGTERM; the seconds it took to exit."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout_s)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path else ""
