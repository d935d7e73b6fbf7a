"""Issue 9, fuzzing: the HTTP API from its own OpenAPI document (schemathesis), and the image
loader, the body reader and the request models (hypothesis). Zero 5xx, zero crashes.

Example counts are kept modest for CI (``FUZZ_EXAMPLES``); docs/reliability.md reports the
counts of a longer run (``EDGECAP_FUZZ_EXAMPLES=…``, read by this test only).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edgecap.config import Settings
from edgecap.errors import EdgecapError
from edgecap.inputs.images import load_image
from edgecap.server.limits import decode_tasks
from edgecap.server.schema import TASK_MODELS, parse_task
from tests.support.api import LiveServer, api_settings, scripted_server

FUZZ_EXAMPLES = int(os.environ.get("EDGECAP_FUZZ_EXAMPLES", "60"))
COUNTS: dict[str, int] = {}
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run: a failure reproduces
)


def counted(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


# ---------------------------------------------------------------- the API (schemathesis)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    home = tmp_path_factory.mktemp("fuzz")
    settings_ = api_settings(home, queue_size=1000, sync_timeout_s=30.0)
    with scripted_server(settings_) as server:
        yield server


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    url = f"http://127.0.0.1:{fuzz_server.port}/openapi.json"
    return schemathesis.openapi.from_url(url)


def test_no_request_the_schema_allows_gets_a_5xx(api_schema: Any) -> None:
    """Every operation of /openapi.json, with the cases schemathesis generates from it
    (valid and invalid bodies, paths, headers): each answered below 500."""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 5

    for operation in operations:

        @given(case=operation.as_strategy())
        @FUZZ
        def check(case: Any) -> None:
            response = case.call(timeout=60)
            counted(f"{case.method} {case.path}")
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        check()


# ---------------------------------------------------------------- bodies and task models

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(
    [
        "taskType",
        "taskUUID",
        "inputs",
        "prompt",
        "routing",
        "jsonSchema",
        "maxTokens",
        "webhookURL",
        "inputImages",
        "temperature",
        "apiKey",
        "image",
    ]
)
TASKS = st.dictionaries(FIELDS, JSON, max_size=8) | st.fixed_dictionaries(
    {"taskType": st.sampled_from(["caption", "imageUpload", "getResponse", "ping"])},
    optional={"taskUUID": st.uuids().map(str), "prompt": JSON, "routing": JSON, "jsonSchema": JSON},
)


@given(
    st.binary(max_size=400)
    | st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass"))
)
@FUZZ
def test_any_body_is_a_task_list_or_a_client_error(body: bytes) -> None:
    counted("decode_tasks(bytes)")
    try:
        decode_tasks(body)
    except EdgecapError as exc:
        assert exc.status in (400, 413)


@given(st.lists(TASKS, min_size=1, max_size=3))
@FUZZ
def test_any_json_task_parses_or_is_a_client_error(tasks: list[dict[str, Any]]) -> None:
    counted("task models")
    body = json.dumps(tasks).encode()
    for raw in decode_tasks(body):
        for model in TASK_MODELS:
            try:
                parse_task(model, raw)
            except EdgecapError as exc:
                assert 400 <= exc.status < 500, exc.to_dict()


# ---------------------------------------------------------------- the image loader


def seeds() -> list[bytes]:
    out = []
    for fmt, mode in (
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("WEBP", "RGB"),
        ("TIFF", "I;16"),
        ("BMP", "L"),
    ):
        buffer = io.BytesIO()
        Image.new(mode, (40, 30)).save(buffer, fmt)
        out.append(buffer.getvalue())
    return out


SEEDS = seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            data[where] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[where : where + draw(st.integers(1, 64))]
        else:
            data[where:where] = draw(st.binary(min_size=1, max_size=32))
        if not data:
            break
    return bytes(data)


@given(mutated_images() | st.binary(max_size=200))
@FUZZ
def test_any_bytes_load_or_are_an_invalid_image(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    counted("load_image(mutated)")
    home = Path(tmp_path_factory.getbasetemp()) / "fuzz-images"
    try:
        loaded = load_image(data, Settings(home=home, max_image_megapixels=4.0))
    except EdgecapError as exc:
        assert exc.code == "invalidInputImage" and exc.status == 400
    else:
        assert loaded.width % 28 == 0 and loaded.height % 28 == 0


def test_the_fuzzers_ran(capsys: pytest.CaptureFixture[str]) -> None:
    """Reports the case counts (pytest -s shows them; docs/reliability.md lists a run)."""
    assert COUNTS, "no fuzz case ran"
    with capsys.disabled():
        print("\nfuzz cases:", json.dumps(COUNTS, sort_keys=True))
