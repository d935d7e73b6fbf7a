"""Weight repacking (llama.cpp's extra CPU buffers): measured once per model file, remembered.

The measurement runs the real llama.cpp on the tiny model quantized to Q4_K_M (its timings are
tiny and noisy, so only the mechanism is asserted, never which way wins; docs/performance.md has
the bench preset's figures).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecap.config import Settings
from edgecap.convert import quantize
from edgecap.engine import kernels
from edgecap.engine.engine import Engine
from edgecap.engine.hardware import detect_backend
from edgecap.records import CaptionRequest, ModelFiles

AMX = "AMX_INT8" in detect_backend().features


@pytest.fixture(scope="module")
def q4_k_m(tiny_gguf: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kernels") / "text-Q4_K_M.gguf"
    return quantize(tiny_gguf[0], out, "Q4_K_M", progress=False)


def never(*_args: object) -> kernels.Choice:
    raise AssertionError("measured although the choice was known")


def test_measured_once_then_remembered(
    q4_k_m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path)
    assert kernels.pending(q4_k_m, settings) is not AMX
    first = kernels.choose(q4_k_m, settings)
    assert not kernels.pending(q4_k_m, settings)
    if AMX:  # never repacked there: the AMX kernels crash (llama.cpp #20824)
        assert first.extra_buffers is False and "AMX" in first.reason
        return
    assert first.measured_s is not None
    assert set(first.measured_s) == {"repacked", "plain"}
    assert all(0 < s < 60 for s in first.measured_s.values())
    stored = json.loads((tmp_path / "kernels.json").read_text())
    assert [v["extra_buffers"] for v in stored.values()] == [first.extra_buffers]

    monkeypatch.setattr(kernels, "measure", never)
    again = kernels.choose(q4_k_m, settings)
    assert again.extra_buffers == first.extra_buffers
    assert again.reason.startswith("measured earlier")
    assert kernels.remembered(settings)[0]["s"] == first.measured_s


def test_each_model_file_is_measured_once(
    q4_k_m: Path, tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path)
    other = quantize(tiny_gguf[0], tmp_path / "text-Q8_0.gguf", "Q8_0", progress=False)
    for text in (q4_k_m, other, q4_k_m):
        kernels.choose(text, settings)
    assert len(kernels.remembered(settings)) == (0 if AMX else 2)


def test_the_setting_wins_and_nothing_is_measured(
    q4_k_m: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "measure", never)
    for value in (True, False):
        choice = kernels.choose(q4_k_m, Settings(home=tmp_path, extra_buffers=value))
        assert choice.extra_buffers is value
        assert "configuration" in choice.reason
    assert kernels.policy(Settings(home=tmp_path, extra_buffers=False)) == "off"
    assert not (tmp_path / "kernels.json").exists()


def test_float_weights_are_not_measured(
    tiny_gguf: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "measure", never)
    choice = kernels.choose(tiny_gguf[0], Settings(home=tmp_path))
    assert choice.extra_buffers is (not AMX)


@pytest.mark.parametrize(
    ("plain", "repacked", "extra"),
    [(1.0, 2.0, False), (0.95, 1.0, True), (2.0, 1.0, True), (0.89, 1.0, False)],
)
def test_plain_weights_must_win_by_the_margin(plain: float, repacked: float, extra: bool) -> None:
    choice = kernels.decide({"plain": plain, "repacked": repacked})
    assert choice.extra_buffers is extra
    assert f"{plain:.2f} CPU s with plain weights" in choice.reason


def test_an_unreadable_record_is_measured_again(q4_k_m: Path, tmp_path: Path) -> None:
    (tmp_path / "kernels.json").write_text("{not json")
    choice = kernels.choose(q4_k_m, Settings(home=tmp_path))
    if not AMX:
        assert choice.measured_s is not None
        assert len(json.loads((tmp_path / "kernels.json").read_text())) == 1


def test_the_engine_loads_the_way_on_record(
    q4_k_m: Path, tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path, image_cache_entries=0, n_threads=1)
    measured = kernels.choose(q4_k_m, settings)
    record = tmp_path / "kernels.json"
    if not AMX:
        flipped = {
            k: {**v, "extra_buffers": not v["extra_buffers"]}
            for k, v in json.loads(record.read_text()).items()
        }
        record.write_text(json.dumps(flipped))
    with Engine(ModelFiles("q4", q4_k_m, tiny_gguf[1]), settings) as engine:
        assert engine.kernels.extra_buffers is (False if AMX else not measured.extra_buffers)
        logits = engine.prompt_logits(CaptionRequest(image=None, prompt="Several tokens here."))
    assert np.isfinite(logits).all()
