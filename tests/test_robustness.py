"""Issue 9, findings 1, 4, 12 in-process: decode bounds, stored-task reads, restarts, settings.

Finding numbers refer to issue 9.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecap.cli import main
from edgecap.config import Settings, default_home, load_settings
from edgecap.errors import RateLimited
from edgecap.inputs.decoding import EncodedImage, PixelBudget, decoded, sixteen_bit_to_grey
from edgecap.inputs.images import load_image
from edgecap.records import CaptionRequest
from edgecap.runtime.service import MAX_ATTEMPTS, TaskService
from tests.support.engines import ScriptedEngineFactory
from tests.support.tasks import make_job

WAIT_S = 60.0
READY_WAIT_S = 60.0  # the engine child loading on a busy box


def encoded(image: Image.Image, fmt: str, **options: object) -> EncodedImage:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return EncodedImage(buffer.getvalue(), f"the {fmt} image")


# ---------------------------------------------------------------- 4: decoding


def test_the_default_decode_limit_follows_the_budget(tmp_path: Path) -> None:
    assert Settings(home=tmp_path).max_image_megapixels == 24.0


def test_a_big_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    """40 MP is over the 24 MP limit at full size, but libjpeg decodes it at 1/4 or less."""
    big = encoded(Image.new("RGB", (8000, 5000), (90, 120, 30)), "JPEG", quality=50)
    settings = Settings(home=tmp_path)
    with decoded(big, settings, target_pixels=1024 * 784) as picture:
        assert picture.original_size == (8000, 5000)
        assert picture.image.width * picture.image.height <= 8000 * 5000 // 4
    loaded = load_image(big.data, settings)
    assert (loaded.original_width, loaded.original_height) == (8000, 5000)
    assert loaded.width * loaded.height <= settings.max_pixels


def test_sixteen_bit_images_convert_without_float_copies() -> None:
    values = np.arange(0, 65536, dtype=np.uint16).reshape(256, 256)
    grey = sixteen_bit_to_grey(Image.fromarray(values))
    assert np.array_equal(np.asarray(grey), np.rint(values / 257).astype(np.uint8))
    big = Image.fromarray(np.full((2000, 2000), 40000, dtype=np.uint16))
    tracemalloc.start()
    try:
        sixteen_bit_to_grey(big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2000 * 2000 * 5  # the float64 path held 16+ bytes per pixel (64 MB here)


def test_rgba_giants_are_reduced_before_compositing(tmp_path: Path) -> None:
    giant = encoded(Image.new("RGBA", (4800, 4800), (10, 20, 30, 128)), "PNG")
    with decoded(giant, Settings(home=tmp_path), target_pixels=200_000) as picture:
        assert picture.image.mode == "RGB"
        assert picture.image.width <= 4800 // 2


def test_decodes_in_flight_share_a_pixel_budget() -> None:
    budget = PixelBudget(1000)
    with budget.hold(800):
        with pytest.raises(RateLimited), budget.hold(400, wait_s=0.1):
            pass
        released = threading.Event()

        def later() -> None:
            with budget.hold(400, wait_s=WAIT_S):
                released.set()

        waiter = threading.Thread(target=later)
        waiter.start()
        assert not released.wait(0.2)  # still held
    waiter.join(WAIT_S)
    assert released.is_set() and budget.in_use == 0


# ---------------------------------------------------------------- 1: stored tasks, read once


def test_later_jobs_of_a_task_are_read_without_the_stored_task(tmp_path: Path) -> None:
    service = TaskService(Settings(home=tmp_path))
    job = make_job(original_task={"taskType": "caption", "routing": {"k": "v" * 4000}})
    service.store.add(job)
    light = service.get(job.task_uuid, with_task=False)
    assert light.original_task == {} and light.status == "queued"
    assert service.get(job.task_uuid).original_task["routing"]["k"].startswith("v")
    service.store.close()


# ---------------------------------------------------------------- 12: restarts, the loop


def test_attempts_count_across_restarts(tmp_path: Path) -> None:
    """A task the server was killed during, MAX_ATTEMPTS times, fails instead of re-running."""
    settings = Settings(home=tmp_path)
    first = TaskService(settings, ScriptedEngineFactory(tmp_path / "engine.log"))
    job = make_job(prompt="hello", webhook_url=None)
    first.store.add(job)
    for _ in range(MAX_ATTEMPTS):  # claimed, then "killed": left processing
        assert first.store.claim_next() is not None
        first.store.requeue_unfinished()
        first.store.claim_next()
        first.store.release(job.task_uuid, refund_attempt=False)
    first.store.close()
    service = TaskService(settings, ScriptedEngineFactory(tmp_path / "engine.log"))
    service.start()
    try:
        record = asyncio.run(service.wait(job.task_uuid, WAIT_S))
    finally:
        service.stop()
    assert record.status == "error" and record.error is not None
    assert "stopped during each" in record.error["message"]


def test_waiting_for_a_task_reads_the_store_off_the_event_loop(tmp_path: Path) -> None:
    service = TaskService(Settings(home=tmp_path))
    job = make_job()
    service.store.add(job)
    readers: list[str] = []
    original = service.store.get

    def spying_get(*args: object, **kwargs: object) -> object:
        readers.append(threading.current_thread().name)
        return original(*args, **kwargs)  # type: ignore[arg-type]

    service.store.get = spying_get  # type: ignore[method-assign]

    async def wait() -> None:
        await service.wait(job.task_uuid, 0.05)

    asyncio.run(wait())
    service.store.close()
    assert readers and threading.main_thread().name not in readers


def test_an_empty_edgecap_home_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECAP_HOME", "")
    assert load_settings().home == default_home()


def test_serve_warns_that_api_key_flags_are_visible_to_local_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGECAP_HOME", str(tmp_path))
    code = main(["serve", "--api-key", "k", "--port", "0", "--model", "no-such-model"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--api-key-file" in err and "/proc" in err


@pytest.mark.slow  # seconds of real deadlines and process kills: not the unit tier
def test_a_worker_deadline_fails_the_task_with_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, task_timeout_s=1.0)
    service = TaskService(settings, ScriptedEngineFactory(tmp_path / "engine.log"))
    service.start()
    try:
        deadline = time.monotonic() + READY_WAIT_S
        while not service.ready:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        job = make_job(prompt="sleep:600", webhook_url=None)
        job = type(job)(**{**job.__dict__, "request": CaptionRequest(None, "sleep:600")})
        service.submit(job)
        record = asyncio.run(service.wait(job.task_uuid, WAIT_S))
    finally:
        service.stop()
    assert record.error is not None and record.error["code"] == "timeoutProvider"
