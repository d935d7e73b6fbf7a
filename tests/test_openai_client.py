"""The official ``openai`` package against a live server on the REAL tiny model.

The tiny model has random weights, so its answers are noise — but greedy noise is
deterministic, which is what lets these tests compare a streamed answer with a plain one, cut
one at a stop string, and check a JSON schema was obeyed. The model is registered as a local
conversion standing in for qwen2.5-vl-7b-instruct, so ``runware:152@2`` names it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from edgecap.records import ModelFiles
from edgecap.registry import Registry
from tests.support.api import LiveServer, api_settings, live_server
from tests.support.http import image_host
from tests.support.images import data_uri, png_bytes

KEY = "openai-key"
MODEL = "runware:152@2"
MAX_TOKENS = 12


def photo() -> bytes:
    return png_bytes(96, 64, (30, 140, 90))


def user(text: str, image_url: str | None = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if image_url is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": image_url}})
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_files: ModelFiles
) -> Iterator[LiveServer]:
    settings = api_settings(
        tmp_path_factory.mktemp("home"), api_keys=[KEY], n_threads=2, sync_timeout_s=300
    )
    registry = Registry(settings)
    registry.register_local(
        "my-tiny",
        tiny_model_files.text,
        tiny_model_files.mmproj,
        stands_in_for="qwen2.5-vl-7b-instruct",
    )
    with live_server(settings, None, registry) as server:
        server.wait_ready()
        yield server


@pytest.fixture(scope="module")
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0, timeout=120)


def complete(client: openai.OpenAI, messages: list[dict[str, Any]], **options: Any) -> Any:
    options = {"max_tokens": MAX_TOKENS, "temperature": 0, **options}
    return client.chat.completions.create(model=MODEL, messages=messages, **options)


def test_plain_and_streamed_answers_are_the_same_text(client: openai.OpenAI) -> None:
    messages = [user("Describe the picture.", data_uri(photo()))]
    plain = complete(client, messages)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length")
    assert plain.model == MODEL and plain.id.startswith("chatcmpl-")
    image_tokens = (96 // 28) * (64 // 28)
    assert plain.usage.prompt_tokens > image_tokens
    assert 1 <= plain.usage.completion_tokens <= MAX_TOKENS

    stream = complete(client, messages, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        plain.choices[0].finish_reason
    )
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == plain.usage.model_dump()


def test_a_stop_string_cuts_the_greedy_answer_there(client: openai.OpenAI) -> None:
    messages = [user("Describe the picture.", data_uri(photo()))]
    text = complete(client, messages).choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), f"pick another stop in {text!r}"
    cut = complete(client, messages, stop=[stop, "\u2603never"])
    assert cut.choices[0].message.content == text[: text.index(stop)].strip()
    assert cut.choices[0].finish_reason == "stop"
    streamed = complete(client, messages, stop=stop, stream=True)
    joined = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert joined == cut.choices[0].message.content


def test_a_conversation_with_a_system_message_and_a_follow_up(client: openai.OpenAI) -> None:
    first = user("What colour is it?", data_uri(photo()))
    answer = complete(client, [first]).choices[0].message.content
    follow_up = [
        {"role": "system", "content": "You answer in one word."},
        first,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Are you sure?"},
    ]
    reply = complete(client, follow_up)
    assert reply.choices[0].message.content
    # The whole conversation is in the prompt: more tokens than the first turn alone.
    assert reply.usage.prompt_tokens > complete(client, [first]).usage.prompt_tokens


def test_json_schema_output_obeys_the_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "colour": {"type": "string", "enum": ["red", "green", "blue"]},
            "many": {"type": "boolean"},
        },
        "required": ["colour", "many"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="qwen2.5-vl-7b-instruct",
        messages=[user("Describe it as JSON.", data_uri(photo()))],
        max_completion_tokens=64,
        temperature=0,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "picture", "schema": schema, "strict": True},
        },
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_an_image_by_url_from_an_allowed_host(client: openai.OpenAI) -> None:
    with image_host(photo()) as host:
        reply = complete(client, [user("Describe the picture.", host.url())])
        assert host.requests == ["/picture.png"]
    assert reply.choices[0].message.content
    # The same picture inline gives the same greedy answer.
    inline = complete(client, [user("Describe the picture.", data_uri(photo()))])
    assert reply.choices[0].message.content == inline.choices[0].message.content


def test_a_url_outside_the_policy_is_refused(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, [user("Describe.", "http://127.0.0.2:9/picture.png")])
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["code"], error["param"]) == ("downloadFailed", "messages[0].content")


def test_a_bad_image_is_a_400_naming_the_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        complete(client, [user("Describe.", "data:image/png;base64,bm90IGFuIGltYWdl")])
    assert caught.value.status_code == 400
    error = caught.value.body
    assert isinstance(error, dict)
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalidInputImage")
    assert error["param"] == "messages[0].content"


def test_a_wrong_key_is_refused(server: LiveServer) -> None:
    wrong = openai.OpenAI(base_url=server.url, api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        complete(wrong, [user("hello")])
    assert caught.value.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


def test_models_lists_the_stand_in_and_the_names_it_answers_for(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"my-tiny", "qwen2.5-vl-7b-instruct", MODEL} <= ids
    assert client.models.retrieve(MODEL).id == MODEL
