"""`edgecap doctor`, in-process: what it reports, the fixes it gives, its exit codes.

The smoke caption runs on a fake engine here; test_demo.py runs it on the real tiny model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecap.cli import caption as caption_cmd
from edgecap.cli import main
from edgecap.config import Settings, load_settings
from edgecap.engine.hardware import recommend
from edgecap.errors import InferenceError
from edgecap.records import ModelFiles
from tests.support.engines import FakeEngine
from tests.support.models import register


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["doctor", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out.splitlines(), err


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> list[FakeEngine]:
    opened: list[FakeEngine] = []

    def open_fake(model: ModelFiles, settings: Settings) -> FakeEngine:
        opened.append(FakeEngine(model_id=model.id))
        return opened[-1]

    monkeypatch.setattr(caption_cmd, "open_engine", open_fake)
    return opened


def test_a_fresh_install_works_with_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys)
    assert code == 0
    assert lines[0].startswith("ok    versions  edgecap 0.1.0, llama-cpp-python 0.3.36, llama.cpp ")
    assert lines[1].startswith("ok    backend   CPU, no GPU offload; devices: CPU (")
    assert lines[2].startswith("ok    threads   ") and lines[2].endswith(" (physical cores)")
    advice = recommend()
    assert lines[3:] == [
        f"ok    files     {advice.mmproj_type} projector recommended: {advice.reason}",
        "warn  models    no model installed",
        "                fix: install one: `edgecap models pull qwen2.5-vl-7b-instruct` "
        "(about 6 GB), or offline `edgecap models import PATH`",
        "warn  smoke     skipped: the demo model edgecap-tiny-random is not built",
        "                fix: run `edgecap demo` to build it, or smoke-test an installed model: "
        "--smoke-model",
        "edgecap works, with 2 warning(s)",
    ]


def test_threads_follow_the_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGECAP_N_THREADS", "3")
    _, lines, _ = run(capsys)
    assert lines[2] == "ok    threads   3 (EDGECAP_N_THREADS)"


def test_smoke_caption_on_the_demo_model_with_timings(
    edgecap_home: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    register(edgecap_home, "edgecap-tiny-random")
    code, lines, _ = run(capsys, "--json")
    report = json.loads("\n".join(lines))
    assert (code, report["ok"]) == (0, True)
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("versions", "ok"),
        ("backend", "ok"),
        ("threads", "ok"),
        ("files", "ok"),
        ("models", "warn"),
        ("smoke", "ok"),
    ]
    models, smoke = report["checks"][4:]
    assert report["recommendations"]["mmproj_type"] == recommend().mmproj_type
    assert models["detail"] == (
        "1 installed; default edgecap-tiny-random (files verified), whose weights are random"
    )
    assert (smoke["model"], smoke["text"]) == ("edgecap-tiny-random", "a 644x476 image")
    assert list(smoke["timings_s"]) == ["load_model", "load_image", "encode", "prefill", "generate"]
    assert smoke["timings_s"]["encode"] == 1.0
    [engine] = engines
    assert engine.closed and engine.requests[0].sampling.max_tokens == 8
    backend = report["checks"][1]
    assert backend["backend"] == "CPU" and "AVX2" in backend["simd"]
    assert backend["devices"][0]["name"] == "CPU"


def test_a_model_that_fails_verification_is_a_problem(
    edgecap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(edgecap_home, "mine")
    text = edgecap_home / "registered" / "mine" / "text.gguf"
    text.write_bytes(b"TEXT")  # same size, other bytes
    code, lines, _ = run(capsys)
    assert code == 1
    assert lines[4] == "fail  models    1 installed; default mine: its files fail verification"
    assert lines[5].startswith(f"                fix: mine: sha256 mismatch for {text}: expected ")
    assert lines[-1] == "1 problem(s), 1 warning(s): apply the fixes above"


def test_a_failing_smoke_caption_is_a_problem(
    edgecap_home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    register(edgecap_home, "edgecap-tiny-random")

    def broken(model: ModelFiles, settings: Settings) -> FakeEngine:
        return FakeEngine(fail=lambda request: InferenceError("llama_decode returned -3"))

    monkeypatch.setattr(caption_cmd, "open_engine", broken)
    code, lines, _ = run(capsys, "--no-verify")
    assert code == 1
    assert lines[-3:] == [
        "fail  smoke     captioning the sample with edgecap-tiny-random failed: "
        "llama_decode returned -3",
        "                fix: rebuild the demo model: `edgecap models rm edgecap-tiny-random "
        "--yes`, then `edgecap demo`",
        "1 problem(s), 1 warning(s): apply the fixes above",
    ]


@pytest.mark.usefixtures("engines")
def test_smoke_model_without_a_model_is_a_problem(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "--smoke-model")
    assert code == 1
    assert lines[-2:] == [
        "fail  smoke     no model is installed: run `edgecap models pull qwen2.5-vl-7b-instruct` "
        "(about 6 GB), `edgecap models import PATH` with a pack, or `make demo` for the tiny "
        "test model",
        "1 problem(s), 1 warning(s): apply the fixes above",
    ]


def test_smoke_model_uses_the_named_model(
    edgecap_home: Path, engines: list[FakeEngine], capsys: pytest.CaptureFixture[str]
) -> None:
    register(edgecap_home, "mine")
    code, lines, _ = run(capsys, "--smoke-model", "mine", "--no-verify")
    assert code == 0
    assert lines[-2].startswith("ok    smoke     mine captioned the sample in ")
    assert lines[-1] == "edgecap works"
    assert [e.model_id for e in engines] == ["mine"]


@pytest.mark.usefixtures("engines")
def test_doctor_says_a_local_conversion_stands_in_for_the_catalog_model(
    edgecap_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = edgecap_home / "registered"
    files.mkdir()
    (files / "t.gguf").write_bytes(b"text")
    (files / "m.gguf").write_bytes(b"mmproj")
    text, mmproj = str(files / "t.gguf"), str(files / "m.gguf")
    code = main(["models", "register", "my-qwen", "--text", text, "--mmproj", mmproj,
                 "--as", "qwen2.5-vl-7b-instruct"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code, lines, _ = run(capsys, "--json")
    models = next(c for c in json.loads("\n".join(lines))["checks"] if c["name"] == "models")
    assert models["detail"] == (
        "1 installed; default my-qwen (files verified); qwen2.5-vl-7b-instruct is served by "
        "my-qwen, a local conversion standing in for the published files"
    )
    assert models["stand_ins"] == {"my-qwen": "qwen2.5-vl-7b-instruct"}


def test_the_projector_advice_compares_the_installed_file(
    tiny_model_files: ModelFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tiny model's projector is f32: neither 16-bit type, so no warning, but reported."""
    from edgecap.registry import Registry

    Registry(load_settings()).register_local("tiny", tiny_model_files.text, tiny_model_files.mmproj)
    _, lines, _ = run(capsys, "--output", "json", "--no-verify")
    report = json.loads("\n".join(lines))
    files = next(c for c in report["checks"] if c["name"] == "files")
    assert (files["status"], files["installed_mmproj_type"]) == ("ok", "f32")
    assert files["detail"].endswith("'s projector is f32")
    assert set(report["recommendations"]) == {"mmproj_type", "mmproj_reason"}


def test_installed_f16_and_bf16_projectors_are_timed_against_the_advice(
    tiny_checkpoint: Path,
    tiny_model_files: ModelFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real encodes on the tiny model: one per projector type, the faster one reported."""
    from edgecap.convert import convert
    from edgecap.registry import Registry

    registry = Registry(load_settings())
    for kind in ("bf16", "f16"):
        _, mmproj = convert(
            tiny_checkpoint, tmp_path / kind, "f32", progress=False, mmproj_type=kind
        )
        registry.register_local(f"tiny-{kind}", tiny_model_files.text, mmproj)
    _, lines, _ = run(capsys, "--output", "json", "--no-verify", "--measure-projectors")
    report = json.loads("\n".join(lines))
    check = next(c for c in report["checks"] if c["name"] == "projectors")
    seconds = check["measured_encode_s"]
    assert set(seconds) == {"bf16", "f16"} and all(s > 0 for s in seconds.values())
    faster = min(seconds, key=seconds.__getitem__)
    assert report["recommendations"]["measured_faster_mmproj_type"] == faster
    assert report["recommendations"]["measured_encode_s"] == seconds
    agrees = faster == recommend().mmproj_type
    assert check["status"] == ("ok" if agrees else "warn")
    assert f"{faster} is faster here" in check["detail"]


def test_one_projector_type_is_nothing_to_measure(
    tiny_model_files: ModelFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgecap.registry import Registry

    Registry(load_settings()).register_local("tiny", tiny_model_files.text, tiny_model_files.mmproj)
    code, lines, _ = run(capsys, "--no-verify", "--measure-projectors")
    assert code == 0
    (line,) = [line for line in lines if line.startswith("skip  projectors ")]
    assert line.endswith(": no f16 or bf16 projector installed, nothing to compare")  # f32
