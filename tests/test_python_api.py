"""The Python API (``edgecap.caption``, ``edgecap.open_engine``), used as a user would: in a fresh
interpreter that imports edgecap and captions with the tiny model, and in-process for the
options, the errors and the streaming contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from importlib import resources
from pathlib import Path

import pytest
from PIL import Image

import edgecap
from edgecap.config import load_settings
from edgecap.errors import InvalidInputImage, InvalidParameter, ModelNotReady
from edgecap.records import ModelFiles
from edgecap.registry import Registry

REPO = Path(__file__).resolve().parent.parent
RUN_TIMEOUT_S = 300  # a guard against a hung child, not a timing
NOTICE = (
    "RandomWeightsWarning: using the demo model edgecap-tiny-random: its weights are random, "
    "captions are noise; get the real model with: edgecap models pull qwen2.5-vl-7b-instruct"
)


def install_tiny(model: ModelFiles) -> None:
    """Register the session's tiny GGUF files as the demo model of this test's EDGECAP_HOME."""
    Registry(load_settings()).register_local(
        "edgecap-tiny-random", model.text, model.mmproj, random_weights=True
    )


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A directory holding ``photo.jpg`` (edgecap's sample picture), to run Python in."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    with resources.as_file(resources.files(edgecap) / "data" / "sample.jpg") as sample:
        shutil.copy(sample, workdir / "photo.jpg")
    return workdir / "photo.jpg"


def run_python(code: str, cwd: Path, home: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code`` in a fresh interpreter: this checkout's edgecap, no stray EDGECAP_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")}
    env.update(EDGECAP_HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


# -- as a user runs it ---------------------------------------------------------------------


def test_the_one_liner_captions_with_the_default_model(
    tiny_model_files: ModelFiles, photo: Path, edgecap_home: Path
) -> None:
    install_tiny(tiny_model_files)
    code = "import edgecap; print(edgecap.caption('photo.jpg'))"
    run = run_python(code, photo.parent, edgecap_home)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip(), "no caption printed"
    assert NOTICE in run.stderr and "Traceback" not in run.stderr


def test_a_script_captions_streams_and_reuses_one_model(
    tiny_model_files: ModelFiles, photo: Path, edgecap_home: Path
) -> None:
    install_tiny(tiny_model_files)
    script = textwrap.dedent(
        """
        import json, sys, warnings
        from pathlib import Path
        from PIL import Image
        import edgecap

        warnings.simplefilter("ignore", edgecap.RandomWeightsWarning)
        one = edgecap.caption("photo.jpg", "Name one colour.", max_tokens=12)
        with edgecap.open_engine() as engine:
            again = engine.caption("photo.jpg", "Name one colour.", max_tokens=12)
            items = list(engine.stream(Path("photo.jpg").read_bytes(), "Name one colour.",
                                       max_tokens=12))
            from_pil = engine.caption(Image.open("photo.jpg"), "Name one colour.",
                                      max_tokens=12)
        json.dump({
            "one": one.text, "again": again.text, "model": one.model,
            "finish": one.finish_reason, "generated": one.generated_tokens,
            "pieces": [i.text for i in items[:-1] if isinstance(i, edgecap.TokenPiece)],
            "last": type(items[-1]).__name__, "streamed": items[-1].text,
            "cache_hit": items[-1].image_cache_hit, "pil": from_pil.text,
            "engine": repr(engine),
        }, sys.stdout)
        """
    )
    run = run_python(script, photo.parent, edgecap_home)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["model"] == "edgecap-tiny-random"
    assert out["one"] and 1 <= out["generated"] <= 12
    # greedy decoding: the same caption from one call, a kept engine, a stream and a PIL image
    assert out["again"] == out["streamed"] == out["pil"] == out["one"]
    assert out["last"] == "CaptionResult" and "".join(out["pieces"]).strip() == out["one"]
    assert out["cache_hit"] is True  # the bytes of photo.jpg: the image cache knows them
    assert out["engine"] == "<edgecap.Captioner edgecap-tiny-random (closed)>"


def test_import_edgecap_loads_neither_llama_cpp_nor_numpy(tmp_path: Path) -> None:
    heavy = ("llama_cpp", "numpy", "PIL", "gguf", "torch", "fastapi", "httpx", "jsonschema")
    code = f"import sys, edgecap; print([m for m in {heavy!r} if m in sys.modules])"
    run = run_python(code, tmp_path, tmp_path / "home")
    assert (run.returncode, run.stdout, run.stderr) == (0, "[]\n", "")


# -- one engine, in-process ------------------------------------------------------------------


def test_an_open_engine_streams_pieces_then_the_result(
    tiny_model_files: ModelFiles, photo: Path
) -> None:
    with edgecap.open_engine(tiny_model_files, n_threads=2) as engine:
        assert engine.model == tiny_model_files and engine.settings.n_threads == 2
        request = engine.request(photo, "Describe it.", max_tokens=8, temperature=0.0)
        assert request.sampling.max_tokens == 8 and request.image is not None
        items = list(engine.stream(request))
        result = engine.caption(str(photo), "Describe it.", max_tokens=8)
    *pieces, last = items
    assert pieces and all(isinstance(p, edgecap.TokenPiece) for p in pieces)
    assert isinstance(last, edgecap.CaptionResult) and str(last) == last.text
    assert result.text == last.text and result.image_cache_hit  # the same picture: cached
    with pytest.raises(ModelNotReady, match=r"is closed; open another with edgecap\.open_engine"):
        engine.caption(photo)
    engine.close()  # closing twice is fine


def test_settings_and_overrides_combine(tiny_model_files: ModelFiles, tmp_path: Path) -> None:
    base = edgecap.Settings(home=tmp_path, max_tokens=5)
    with edgecap.open_engine(tiny_model_files, settings=base, n_ctx=1024) as engine:
        assert (engine.settings.home, engine.settings.n_ctx) == (tmp_path, 1024)
        picture = Image.new("RGB", (56, 56), "red")
        result = engine.caption(picture)
    assert result.generated_tokens <= 5  # the settings' max_tokens is the default


# -- errors before any model loads -------------------------------------------------------------


def test_an_unknown_option_is_a_type_error_naming_it(photo: Path) -> None:
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'temprature' \(did you "):
        edgecap.caption(photo, temprature=0.5)
    with pytest.raises(TypeError, match="open_engine\\(\\) got an unexpected keyword argument 'x'"):
        edgecap.open_engine(x=1)


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("temperature", 5, "less than or equal to 2"),
        ("max_tokens", 0, "greater than or equal to 1"),
        ("seed", True, "valid integer"),
        ("json_schema", {"type": 12}, "not a JSON schema"),
        ("system_prompt", " ", "must not be empty"),
        ("n_threads", 0, "greater than or equal to 1"),
    ],
)
def test_a_bad_value_names_the_option(photo: Path, option: str, value: object, words: str) -> None:
    with pytest.raises(InvalidParameter) as caught:
        edgecap.caption(photo, **{option: value})
    assert caught.value.parameter == option
    assert caught.value.message.startswith("The ") and f"{option}={value!r}" in caught.value.message
    assert words in caught.value.message


def test_the_image_is_checked_before_the_model_loads(tmp_path: Path) -> None:
    # No model is installed in this test's home: a bad image is reported, not the missing model.
    with pytest.raises(InvalidInputImage, match="No such file"):
        edgecap.caption(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="image must be a path, an http"):
        edgecap.caption(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="The prompt is empty"):
        edgecap.caption(tmp_path / "missing.jpg", "  ")


def test_without_a_model_the_error_says_how_to_get_one(photo: Path) -> None:
    with pytest.raises(ModelNotReady, match=r"edgecap models pull qwen2\.5-vl-7b-instruct"):
        edgecap.caption(photo)
