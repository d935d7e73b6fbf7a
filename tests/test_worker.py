"""The engine process: results and errors as values, crash recovery, stopping.

The engine in the spawned child is tests.support.engines.ScriptedEngine: its prompt scripts
what it does, and its log file tells the parent what the child did.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from edgecap.errors import ContextOverflow, EdgecapError, UnknownModel
from edgecap.records import CaptionRequest
from edgecap.runtime.worker import (
    Worker,
    WorkerCrashed,
    WorkerStopped,
    WorkItem,
    describe_exit,
)
from tests.support.engines import ScriptedEngineFactory
from tests.support.waiting import wait_until

READY_WAIT_S = 60.0  # generous: spawning a Python child on a busy 2-core CI box is slow


def caption_item(prompt: str, model: str | None = None, task_uuid: str = "t1") -> WorkItem:
    return WorkItem(task_uuid, model, CaptionRequest(image=None, prompt=prompt))


def wait_until_ready(worker: Worker) -> None:
    wait_until(lambda: worker.ready, "the engine process to become ready", READY_WAIT_S)


@pytest.fixture
def factory(tmp_path: Path) -> ScriptedEngineFactory:
    return ScriptedEngineFactory(tmp_path / "loads.log")


@pytest.fixture
def worker(factory: ScriptedEngineFactory):
    worker = Worker(factory)
    worker.start()
    yield worker
    worker.stop()


def test_captions_in_a_child_process_that_loaded_the_default_model(
    worker: Worker, factory: ScriptedEngineFactory
) -> None:
    wait_until_ready(worker)
    result = worker.run(caption_item("hello"))
    assert result.text == "default saw hello"
    assert result.model.split("@")[1] != str(os.getpid())
    assert factory.lines("load") == ["None"]


@pytest.mark.parametrize(
    ("prompt", "cls", "fields"),
    [
        (
            "invalid",
            EdgecapError,
            {"code": "invalidParameter", "message": "too big", "parameter": "maxPixels", "max": 9},
        ),
        (
            "overflow",
            ContextOverflow,
            {"code": "invalidParameter", "message": "too long", "parameter": "maxTokens"}
            | {"limit": 4096},
        ),
    ],
)
def test_errors_cross_the_process_boundary_as_values_of_their_own_class(
    worker: Worker, prompt: str, cls: type[EdgecapError], fields: dict[str, object]
) -> None:
    with pytest.raises(EdgecapError) as caught:
        worker.run(caption_item(prompt))
    assert type(caught.value) is cls  # the subclass itself, restored in the parent
    assert caught.value.to_dict() == fields
    assert caught.value.status == 400


def test_a_plain_exception_in_the_engine_is_an_inference_error(worker: Worker) -> None:
    with pytest.raises(EdgecapError) as caught:
        worker.run(caption_item("bug"))
    assert caught.value.code == "inferenceError"
    assert "ZeroDivisionError: division by zero" in caught.value.message

    assert worker.run(caption_item("still here")).text == "default saw still here"
    assert worker.restarts == 0


def test_another_model_replaces_the_loaded_one_and_load_errors_are_values(
    worker: Worker, factory: ScriptedEngineFactory
) -> None:
    assert worker.run(caption_item("hi", model="small")).text == "small saw hi"
    with pytest.raises(EdgecapError) as caught:
        worker.run(caption_item("hi", model="missing"))
    assert caught.value.code == "unknownModel"
    assert type(caught.value) is UnknownModel  # the class itself, restored in the parent
    assert factory.lines("load") == ["None", "small"]


def test_a_native_abort_is_reported_and_a_new_child_takes_over(
    worker: Worker, factory: ScriptedEngineFactory
) -> None:
    first = worker.run(caption_item("before")).model
    with pytest.raises(WorkerCrashed) as caught:
        worker.run(caption_item("abort"))
    assert caught.value.code == "inferenceError"
    assert "killed by SIGABRT" in caught.value.message
    assert worker.restarts == 1

    after = worker.run(caption_item("after"))
    assert after.text == "default saw after"
    assert after.model != first  # another process
    wait_until_ready(worker)
    assert factory.lines("load") == ["None", "None"]  # the new child reloaded the model


def test_a_child_that_died_while_idle_is_replaced_without_failing_the_next_task(
    worker: Worker,
) -> None:
    pid = int(worker.run(caption_item("first")).model.split("@")[1])
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not worker.ready, "the worker to notice the kill", READY_WAIT_S)
    after = worker.run(caption_item("second"))
    assert after.text == "default saw second"
    assert after.model != f"default@{pid}"
    assert worker.restarts == 1


def test_stop_interrupts_a_running_task(worker: Worker, factory: ScriptedEngineFactory) -> None:
    wait_until_ready(worker)
    outcome: list[BaseException] = []

    def run_long() -> None:
        try:
            worker.run(caption_item("sleep:600"))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run_long)
    thread.start()
    wait_until(lambda: "sleep:600" in factory.lines("caption"), "the task to reach the child")
    worker.stop()
    thread.join(READY_WAIT_S)
    assert not thread.is_alive(), "stop did not interrupt the task"
    assert len(outcome) == 1 and isinstance(outcome[0], WorkerStopped)
    assert not worker.ready
    with pytest.raises(WorkerStopped):
        worker.run(caption_item("too late"))


def test_a_broken_default_model_is_not_ready_but_other_models_work(tmp_path: Path) -> None:
    worker = Worker(ScriptedEngineFactory(tmp_path / "loads.log", broken_default=True))
    worker.start()
    try:
        with pytest.raises(EdgecapError) as caught:
            worker.run(caption_item("hi"))
        assert caught.value.code == "unknownModel"
        assert not worker.ready
        assert worker.run(caption_item("hi", model="small")).text == "small saw hi"
    finally:
        worker.stop()


def test_describe_exit() -> None:
    assert describe_exit(-6) == "was killed by SIGABRT"
    assert describe_exit(-9) == "was killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(None) == "stopped answering"
