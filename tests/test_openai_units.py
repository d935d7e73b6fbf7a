"""The pieces behind the OpenAI-compatible endpoint, one at a time: stop strings, trimming of
streamed pieces, chat history in the prompt, a request becoming a job, and the job surviving
the task store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edgecap.engine.prompt import ChatTemplate
from edgecap.engine.stops import StopScanner
from edgecap.records import ChatTurn
from edgecap.runtime.tasks import TaskStore
from edgecap.server.jobs import JobInputs
from edgecap.server.openai.convert import RESULT_TTL_S, make_job
from edgecap.server.openai.replies import Trim
from edgecap.server.openai.schema import parse_request
from edgecap.server.uploads import UploadStore
from tests.support.api import api_settings, install_model
from tests.support.images import data_uri, jpeg_bytes

# The shape of Qwen2.5-VL's chat template (the real one is in the GGUF; this keeps the test
# independent of a model file).
QWEN_LIKE = (
    "{% for m in messages %}{% if loop.first and m.role != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% else %}{% for c in m.content %}"
    "{% if c.type == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ c.text }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def scan(stops: list[str], pieces: list[str]) -> tuple[list[str], bool]:
    scanner = StopScanner(stops)
    out = [scanner.feed(p) for p in pieces]
    out.append(scanner.flush())
    return out, scanner.stopped


def test_stop_strings_are_found_across_pieces_and_never_shown() -> None:
    assert scan(["END"], ["a E", "N", "D b"]) == (["a ", "", "", ""], True)
    assert scan(["END"], ["a E", "x"]) == (["a ", "Ex", ""], False)
    assert scan(["xy", "b"], ["ab", "xy"]) == (["a", "", ""], True)
    assert scan([], ["a", "b"]) == (["a", "b", ""], False)
    assert scan(["ab"], ["a"]) == (["", "a"], False)  # held back, released at the end


def test_trim_matches_str_strip_on_the_joined_pieces() -> None:
    for pieces in (["  ", " a", " ", "b ", " "], ["\n", "x"], ["a  ", "  b", "\n"]):
        trim = Trim()
        assert "".join(trim.feed(p) for p in pieces) == "".join(pieces).strip()


def test_history_is_rendered_before_the_prompt_with_the_image_where_it_was() -> None:
    template = ChatTemplate(QWEN_LIKE, "<M>")
    history = (
        ChatTurn("system", "Be brief."),
        ChatTurn("user", "What is it?", image=True),
        ChatTurn("assistant", "A cat."),
    )
    text = template.render("And its colour?", system_prompt="ignored", with_image=True,
                           history=history)  # fmt: skip
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<M>What is it?<|im_end|>\n"
        "<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nAnd its colour?<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = template.render("Hi", system_prompt="Sys", with_image=False)
    assert plain.startswith("<|im_start|>system\nSys<|im_end|>\n<|im_start|>user\nHi")


@pytest.fixture
def inputs(tmp_path: Path) -> JobInputs:
    settings = api_settings(tmp_path / "home", system_prompt="Server default.")
    return JobInputs(settings, install_model(settings), UploadStore(settings))


def job_for(inputs: JobInputs, **body: Any) -> Any:
    return make_job(parse_request({"model": "runware:152@2", **body}), inputs)


def test_a_request_becomes_a_job(inputs: JobInputs) -> None:
    image = {"type": "image_url", "image_url": {"url": data_uri(jpeg_bytes(64, 48), "image/jpeg")}}
    job = job_for(
        inputs,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [image, {"type": "text", "text": "What?"}]},
            {"role": "assistant", "content": "A square."},
            {"role": "user", "content": "Colour?"},
        ],
        max_tokens=5,
        max_completion_tokens=7,
        seed=-1,
        top_p=0.5,
        temperature=0.7,
        stop="\n",
    )
    request = job.request
    assert (request.prompt, request.system_prompt) == ("Colour?", "Be brief.")
    assert request.history == (
        ChatTurn("user", "What?", image=True), ChatTurn("assistant", "A square.")
    )  # fmt: skip
    assert request.image is not None and (request.image.width, request.image.height) == (56, 56)
    sampling = request.sampling
    assert (sampling.max_tokens, sampling.seed, sampling.top_p, sampling.temperature) == (
        7, 0xFFFFFFFF, 0.5, 0.7
    )  # fmt: skip
    assert sampling.stop == ("\n",) and request.json_schema is None
    assert job.model is None and job.ttl_s == RESULT_TTL_S
    stored_url = job.original_task["messages"][1]["content"][0]["image_url"]["url"]
    assert job.original_task["taskType"] == "chatCompletion"
    assert stored_url.startswith("<inline image: ")


def test_defaults_come_from_the_settings(inputs: JobInputs) -> None:
    job = job_for(
        inputs,
        messages=[{"role": "user", "content": ""}],
        response_format={"type": "json_object"},
    )
    schema = {"type": "object", "properties": {"a": {"type": "boolean"}}}
    with_schema = job_for(
        inputs,
        messages=[{"role": "user", "content": "x"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert with_schema.request.json_schema == schema
    request = job.request
    assert request.prompt == inputs.settings.default_prompt
    assert request.system_prompt == "Server default."
    assert request.json_schema == {}
    assert request.sampling.temperature == 0.0
    assert request.sampling.max_tokens == inputs.settings.max_tokens


def test_history_and_stops_survive_the_task_store(inputs: JobInputs, tmp_path: Path) -> None:
    job = job_for(
        inputs,
        messages=[
            {"role": "user", "content": "One"},
            {"role": "assistant", "content": "Two"},
            {"role": "user", "content": "Three"},
        ],
        stop=["x", "y"],
    )
    store = TaskStore(tmp_path / "tasks.sqlite3")
    try:
        store.add(job)
        claimed = store.claim_next()
        assert claimed is not None and claimed.job.request == job.request
    finally:
        store.close()
