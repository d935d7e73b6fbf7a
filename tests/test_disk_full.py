"""Issue 9, finding 9: a full disk, for real — EDGECAP_HOME on a 16 MB tmpfs that a filler file
fills up (real ENOSPC / SQLITE_FULL, no patched writes).

Needs permission to mount a tmpfs (root, as in the CI container); elsewhere it is skipped with
the reason, never counted as a pass.
"""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.support.api import api_settings, install_model, live_server, new_uuid
from tests.support.engines import ScriptedEngineFactory
from tests.support.images import b64, data_uri

WAIT_S = 60.0


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}): needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def noise_png(side: int) -> bytes:
    import io
    import random

    image = Image.frombytes("RGB", (side, side), random.Random(1).randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow  # seconds of real deadlines and process kills: not the unit tier
def test_a_full_disk_is_a_retrievable_507_that_survives_a_restart(small_disk: Path) -> None:
    import httpx

    settings = api_settings(small_disk / "home")
    factory = ScriptedEngineFactory(small_disk.parent / "engine.log")
    registry = install_model(settings)
    task_uuid = new_uuid()
    small = b64(noise_png(16))
    with live_server(settings, factory, registry) as server:
        server.wait_ready()

        def post(body: object) -> httpx.Response:
            return httpx.post(server.url, json=body, timeout=WAIT_S)

        accepted = post(
            [
                {
                    "taskType": "caption",
                    "taskUUID": task_uuid,
                    "inputs": {"image": small},
                    "prompt": "sleep:4",
                    "deliveryMethod": "async",
                }
            ]
        )
        assert accepted.status_code == 200
        with sqlite3.connect(settings.db_path, timeout=30) as db:  # an empty WAL: writes grow
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        filler = fill(small_disk)
        refused = post(
            [
                {
                    "taskType": "caption",
                    "taskUUID": new_uuid(),
                    "inputs": {"image": b64(noise_png(700))},
                }
            ]
        )
        assert refused.status_code == 507, refused.text
        assert refused.json()["errors"][0]["code"] == "insufficientStorage"
        upload = post(
            [{"taskType": "imageUpload", "taskUUID": new_uuid(), "image": data_uri(noise_png(300))}]
        )
        assert upload.status_code == 507, upload.text
        assert (
            not list(settings.uploads_dir.glob(".*.tmp")) if settings.uploads_dir.exists() else True
        )
        deadline = time.monotonic() + WAIT_S
        while True:
            answer = post([{"taskType": "getResponse", "taskUUID": task_uuid}])
            if answer.status_code != 200 or "processing" not in answer.text:
                break
            assert time.monotonic() < deadline, "the task stayed processing"
            time.sleep(0.2)
        assert answer.status_code == 507, answer.text
        assert answer.json()["errors"][0]["code"] == "insufficientStorage"
    filler.unlink()
    with live_server(settings, factory, registry) as again:
        answer = httpx.post(
            again.url, json=[{"taskType": "getResponse", "taskUUID": task_uuid}], timeout=WAIT_S
        )
    assert answer.status_code == 507
    assert answer.json()["errors"][0]["code"] == "insufficientStorage"
