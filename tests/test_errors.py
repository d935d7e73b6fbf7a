"""The error registry: each code has one HTTP status, every class's status follows from it, and
an error crossing a process boundary as values comes back as its own class."""

from __future__ import annotations

import pytest

from edgecap import errors
from edgecap.errors import CODES, EdgecapError, error_class, status_of_code
from edgecap.protocol import Reply, error_object, status_of
from edgecap.runtime.worker import WorkError


def all_classes() -> list[type[EdgecapError]]:
    found, pending = [], [EdgecapError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


@pytest.mark.parametrize("cls", all_classes(), ids=lambda cls: cls.__name__)
def test_every_class_has_a_registered_code_and_is_found_by_name(cls: type[EdgecapError]) -> None:
    assert cls.code in CODES
    assert error_class(cls.__name__) is cls
    # the transport's status differs from the code's
    declared = {"PayloadTooLarge": 413, "DependencyError": 500, "BodyTimeout": 408}
    assert cls.status == declared.get(cls.__name__, CODES[cls.code])


def test_an_instance_code_brings_its_status() -> None:
    assert EdgecapError("gone", code="taskExpired").status == 404
    assert EdgecapError("slow down", code="rateLimitExceeded").status == 429
    assert EdgecapError("odd", code="invalidThing").status == 400  # unknown: a client mistake
    assert EdgecapError("teapot", code="invalidParameter", status=418).status == 418


def test_a_class_with_an_unregistered_code_is_refused() -> None:
    with pytest.raises(TypeError, match=r"not in edgecap\.errors\.CODES"):
        type("Made", (EdgecapError,), {"code": "madeUpCode"})


def test_stored_error_objects_get_the_status_of_their_code() -> None:
    for code, status in CODES.items():
        assert status_of({"code": code}) == status_of_code(code) == status
    reply = Reply()
    reply.add_stored_error({"code": "taskExpired", "message": "gone", "parameter": "taskUUID"})
    assert reply.status == 404


def test_error_objects_name_the_task_and_rename_extras() -> None:
    exc = errors.RateLimited("full", retry_after=7)
    assert error_object(exc, task_type="caption", task_uuid="u") == {
        "code": "rateLimitExceeded",
        "message": "full",
        "parameter": None,
        "retryAfter": 7,
        "taskType": "caption",
        "taskUUID": "u",
    }


@pytest.mark.parametrize(
    "exc",
    [
        errors.PayloadTooLarge("big", parameter="body"),
        errors.TaskExpired("gone", parameter="taskUUID"),
        errors.ContextOverflow("long", parameter="maxTokens", limit=8),
        EdgecapError("custom", code="invalidPrompt", parameter="prompt"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_work_errors_restore_class_code_status_and_fields(exc: EdgecapError) -> None:
    back = WorkError.from_exception(exc).to_exception()
    assert type(back) is type(exc)
    assert (back.code, back.status, back.to_dict()) == (exc.code, exc.status, exc.to_dict())


def test_a_plain_exception_becomes_an_inference_error() -> None:
    back = WorkError.from_exception(ZeroDivisionError("boom")).to_exception()
    assert type(back) is errors.InferenceError
    assert "ZeroDivisionError: boom" in back.message
