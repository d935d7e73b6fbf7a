"""Logging an operator can use: `edgecap serve` logs its own lines, uvicorn's and the engine
process's in the chosen format, on stderr; the level filters them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecap.config import Settings
from edgecap.inputs.images import load_image
from edgecap.records import ModelFiles
from edgecap.runtime.tasks import TaskStore
from tests.support.api import install_model
from tests.support.env import child_env
from tests.support.http import Receiver, free_port
from tests.support.images import png_bytes
from tests.support.tasks import make_job
from tests.support.waiting import wait_until

SERVE_DEADLINE_S = 180.0  # start, load the tiny model, run the requeued task, deliver


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The log's lines, each parsed as JSON (a line that is not JSON fails the test)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def one(lines: list[dict[str, Any]], **expected: str) -> dict[str, Any]:
    """The first line whose fields start with the expected values."""
    for line in lines:
        if all(str(line.get(key, "")).startswith(value) for key, value in expected.items()):
            return line
    raise AssertionError(f"no log line like {expected}; got {[x['message'] for x in lines]}")


def seed_unfinished_task(home: Path, webhook_url: str) -> str:
    """A task a previous run left `processing`, with a webhook: the next start requeues it."""
    image = load_image(png_bytes(64, 64), Settings(home=home))
    job = make_job(image=image, model=None, webhook_url=webhook_url)
    store = TaskStore(home / "tasks.sqlite3")
    try:
        store.add(job)
        assert store.claim_next() is not None
    finally:
        store.close()
    return job.task_uuid


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the server; if it hangs, kill it and its engine process (its process group)."""
    if process.poll() is None:
        process.terminate()  # uvicorn shuts down gracefully, stopping the engine process
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)


def test_serve_logs_requeue_engine_and_delivery_as_json_lines(
    tmp_path: Path, tiny_model_files: ModelFiles
) -> None:
    home, log = tmp_path / "home", tmp_path / "serve.log"
    install_model(Settings(home=home), tiny_model_files)
    receiver = Receiver([])
    task_uuid = seed_unfinished_task(home, receiver.url("/hook"))
    env = child_env(
        EDGECAP_HOME=str(home),
        EDGECAP_N_THREADS="2",
        EDGECAP_DELIVERY_ALLOWLIST='["127.0.0.1"]',  # the webhook receiver is on loopback
    )
    command = [sys.executable, "-m", "edgecap", "serve", "--port", str(free_port())]
    command += ["--log-format", "json", "--log-level", "info"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    try:

        def delivered() -> bool:
            assert process.poll() is None, f"edgecap serve exited:\n{log.read_text()[-3000:]}"
            return "Delivered the webhook" in log.read_text(errors="replace")

        wait_until(delivered, "the delivery to be logged", SERVE_DEADLINE_S, 0.1)
    finally:
        stop(process)
        receiver.close()

    lines = json_lines(log)  # every line, the engine process's and uvicorn's included
    requeued = one(lines, message="Requeued 1 task(s)")
    assert (requeued["level"], requeued["logger"]) == ("INFO", "edgecap.runtime.service")
    assert requeued["process"] == "MainProcess"
    engine = one(lines, message="Engine process")
    assert (engine["level"], engine["process"]) == ("INFO", "edgecap-engine")
    assert engine["pid"] != requeued["pid"]
    one(lines, process="edgecap-engine", message="Loaded the default model")
    delivered = one(lines, message="Delivered the webhook")
    assert delivered["message"] == f"Delivered the webhook of task {task_uuid} (attempt 1)"
    assert delivered["logger"] == "edgecap.runtime.delivery"
    assert one(lines, logger="uvicorn.error", message="Uvicorn running")["level"] == "INFO"
    notice = one(lines, message="using the demo model")  # the CLI's notice, as a log line
    assert (notice["level"], notice["logger"]) == ("WARNING", "edgecap.cli.serve")
    assert {"time", "level", "logger", "process", "pid", "message"} <= set(delivered)
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    ("level", "shown", "hidden"),
    [("INFO", "info line", "debug line"), ("WARNING", "warning line", "info line")],
)
def test_text_logs_filter_by_level(level: str, shown: str, hidden: str) -> None:
    script = (
        "import logging\n"
        "from edgecap.logs import configure_logging\n"
        f"configure_logging({level!r}, 'text')\n"
        "log = logging.getLogger('edgecap.runtime.service')\n"
        "log.debug('debug line'); log.info('info line'); log.warning('warning line')\n"
        "logging.getLogger('httpx').info('a library line')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert shown in run.stderr and hidden not in run.stderr
    assert "a library line" not in run.stderr  # libraries stay at WARNING
    line = next(x for x in run.stderr.splitlines() if shown in x)
    assert f"[MainProcess] edgecap.runtime.service: {shown}" in line


def test_log_settings_refuse_unknown_values() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValueError, match="log_format"):
        Settings(log_format="xml")
