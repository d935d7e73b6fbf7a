"""The engine on the tiny model through the real llama.cpp path: sampling, caches, schema
output, streaming, and clear errors before llama.cpp can abort."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from edgecap.config import Settings
from edgecap.engine.engine import Engine
from edgecap.engine.sampling import LoopGuard
from edgecap.errors import ContextOverflow, InferenceError, ModelError
from edgecap.inputs.images import load_image
from edgecap.records import (
    CaptionRequest,
    CaptionResult,
    LoadedImage,
    ModelFiles,
    Sampling,
    TokenPiece,
)
from tests.support.images import encoded, noise


def picture(width: int, height: int, seed: int) -> bytes:
    return encoded(noise(width, height, seed))


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(home=tmp_path_factory.mktemp("engine-home"))


@pytest.fixture(scope="module")
def engine(tiny_model_files: ModelFiles, settings: Settings) -> Iterator[Engine]:
    with Engine(tiny_model_files, settings) as eng:
        yield eng


@pytest.fixture(scope="module")
def image(settings: Settings) -> LoadedImage:
    return load_image(picture(112, 84, seed=1), settings)


def ask(image: LoadedImage | None, prompt: str, **sampling: float) -> CaptionRequest:
    sampling.setdefault("max_tokens", 16)
    return CaptionRequest(image=image, prompt=prompt, sampling=Sampling(**sampling))  # type: ignore[arg-type]


def test_caption_reports_tokens_and_stages(engine: Engine, image: LoadedImage) -> None:
    result = engine.caption(ask(image, "Describe this image."))
    assert result.text
    assert result.finish_reason in ("stop", "length", "loop")
    assert result.image_tokens == image.tokens == 12
    assert result.prompt_tokens > result.image_tokens
    assert 1 <= result.generated_tokens <= 16
    assert set(result.timings) == {"load_image", "encode", "prefill", "generate"}
    assert result.model == "edgecap-tiny-random"


def test_same_seed_same_text_and_other_seed_differs(engine: Engine, image: LoadedImage) -> None:
    def sample(seed: int) -> str:
        req = ask(image, "Describe.", temperature=1.0, seed=seed, max_tokens=24)
        return engine.caption(req).text

    assert sample(7) == sample(7)
    assert len({sample(7), sample(8), sample(9)}) > 1


def test_stream_pieces_add_up_to_the_result(engine: Engine, image: LoadedImage) -> None:
    items = list(engine.stream(ask(image, "Describe this image.", max_tokens=12)))
    pieces = [i.text for i in items if isinstance(i, TokenPiece)]
    result = items[-1]
    assert isinstance(result, CaptionResult)
    assert all(isinstance(i, TokenPiece) for i in items[:-1])
    assert "".join(pieces).strip() == result.text


def test_same_image_new_question_skips_the_encoder(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path)
    img = load_image(picture(84, 56, seed=2), settings)
    with Engine(tiny_model_files, settings) as eng:
        first = eng.caption(ask(img, "Describe this image."))
        second = eng.caption(ask(img, "What colours do you see?"))
        assert eng.counters["image_encodes"] == 1
        assert eng.counters["image_cache_hits"] + eng.counters["prefix_cache_hits"] >= 1
    assert (first.image_cache_hit, first.prefix_cache_hit) == (False, False)
    assert (second.image_cache_hit, second.prefix_cache_hit) == (True, True)
    assert second.timings["encode"] == 0.0


def test_cached_prefix_gives_the_same_answer_as_a_fresh_prompt(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """Reusing the KV cache of system prompt + image must not change a greedy answer."""
    settings = Settings(home=tmp_path)
    img = load_image(picture(112, 56, seed=3), settings)
    question = ask(img, "What is in the middle?", repeat_penalty=1.0)
    with Engine(tiny_model_files, settings) as eng:
        eng.caption(ask(img, "Describe this image."))
        cached = eng.caption(question)
    with Engine(tiny_model_files, settings.model_copy(update={"image_cache_entries": 0})) as eng:
        fresh = eng.caption(question)
        assert eng.counters["image_encodes"] == 1
    assert cached.prefix_cache_hit and not fresh.image_cache_hit
    assert cached.text == fresh.text


def test_image_embeddings_persist_across_restarts(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, image_cache_dir=tmp_path / "embeddings")
    img = load_image(picture(56, 56, seed=4), settings)
    with Engine(tiny_model_files, settings) as eng:
        before = eng.caption(ask(img, "Describe."))
    with Engine(tiny_model_files, settings) as eng:
        after = eng.caption(ask(img, "Describe."))
        assert eng.counters["image_encodes"] == 0
    assert after.image_cache_hit and not after.prefix_cache_hit
    assert after.text == before.text


def test_json_schema_output_parses_and_validates(engine: Engine, image: LoadedImage) -> None:
    schema = {
        "type": "object",
        "properties": {
            "animal": {"enum": ["cat", "dog", "bird"]},
            "indoors": {"type": "boolean"},
        },
        "required": ["animal", "indoors"],
        "additionalProperties": False,
    }
    req = CaptionRequest(
        image=image, prompt="Answer in JSON.", json_schema=schema, sampling=Sampling(max_tokens=64)
    )
    result = engine.caption(req)
    jsonschema.validate(json.loads(result.text), schema)


def test_any_json_mode_gives_json(engine: Engine, image: LoadedImage) -> None:
    """``json_schema={}``: the grammar forces a JSON object. A random model need not close it
    within maxTokens; then the error says to raise maxTokens, and what was streamed is still
    the start of an object (without the grammar it would be random text)."""
    req = CaptionRequest(
        image=image, prompt="JSON.", json_schema={}, sampling=Sampling(max_tokens=80, seed=1)
    )
    pieces: list[str] = []
    try:
        for item in engine.stream(req):
            if isinstance(item, TokenPiece):
                pieces.append(item.text)
            else:
                assert item.finish_reason == "stop"
                assert isinstance(json.loads(item.text), dict)
    except InferenceError as exc:
        assert "the output is not complete JSON (raise maxTokens)" in exc.message
    assert "".join(pieces).lstrip().startswith("{")


def test_text_only_question(engine: Engine) -> None:
    result = engine.caption(ask(None, "Hello!"))
    assert result.image_tokens == 0 and result.generated_tokens >= 1


def test_prompt_longer_than_the_context_is_refused(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, n_ctx=512)
    img = load_image(picture(28 * 30, 28 * 20, seed=5), settings, max_pixels=28 * 28 * 600)
    assert img.tokens == 600
    with Engine(tiny_model_files, settings) as eng:
        with pytest.raises(ContextOverflow, match="lower maxPixels"):
            eng.caption(ask(img, "Describe."))
        assert eng.caption(ask(None, "Still alive?")).generated_tokens >= 1


def test_generation_room_is_reserved_in_the_shared_kv_pool(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    """A cached image in another slot is evicted up front when this caption needs its cells."""
    settings = Settings(home=tmp_path, n_ctx=512)
    big = load_image(picture(28 * 20, 28 * 15, seed=8), settings, max_pixels=28 * 28 * 300)
    small = load_image(picture(28 * 10, 28 * 14, seed=9), settings)
    with Engine(tiny_model_files, settings) as eng:
        eng.caption(ask(big, "Describe.", max_tokens=4))  # ~320 cells stay cached
        long = eng.caption(ask(small, "Describe.", temperature=1.0, seed=3, max_tokens=150))
    assert long.generated_tokens > 60  # more than the ~190 cells left beside the cached image


def test_text_model_given_as_projector_is_refused(
    tiny_model_files: ModelFiles, settings: Settings
) -> None:
    wrong = ModelFiles("wrong", tiny_model_files.text, tiny_model_files.text)
    with pytest.raises(ModelError):
        Engine(wrong, settings)


def test_truncated_model_file_is_refused(
    tiny_model_files: ModelFiles, settings: Settings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_model_files.text.read_bytes()[: 1 << 20])
    with pytest.raises(ModelError):
        Engine(ModelFiles("broken", broken, tiny_model_files.mmproj), settings)


def test_native_logs_do_not_reach_stderr(
    tiny_model_files: ModelFiles, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path)
    with Engine(tiny_model_files, settings) as eng:
        eng.caption(ask(load_image(picture(56, 56, seed=6), settings), "Describe."))
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_a_looping_caption_ends_cleanly(engine: Engine, settings: Settings) -> None:
    """Greedy decoding without a repeat penalty makes the tiny model loop on the sample."""
    sample = Path(__file__).resolve().parent.parent / "edgecap" / "data" / "sample.jpg"
    req = ask(
        load_image(sample, settings), "Describe this image in detail.", max_tokens=200,
        repeat_penalty=1.0,
    )  # fmt: skip
    result = engine.caption(req)
    assert result.finish_reason == "loop"
    assert result.generated_tokens < 100
    words = result.text.split()
    assert len(words) == len(set(words))  # the repeated cycle is cut to one occurrence


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([1, 2, 3] * 30, 3),  # a 3-token cycle from the start: keep one cycle
        (list(range(40)) + [5] * 70, 41),  # one token repeated after a normal start
        (list(range(100)), None),  # no repetition
        ([1, 2] * 10, None),  # too short to call it a loop
        ([9] * 40, 1),  # one token 32+ times
    ],
)
def test_loop_guard(tokens: list[int], expected: int | None) -> None:
    assert LoopGuard().loop_start(tokens) == expected
