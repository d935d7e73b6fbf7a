"""`edgecap models`, run in-process: exact output, exit codes, fix-it errors, no tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecap.cli import main
from tests.support.models import MMPROJ, TEXT_Q4, flip_one_byte, serve_mirror, sha256, write

QWEN_7B = "qwen2.5-vl-7b-instruct"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("EDGECAP_HOME", str(home))
    return home


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["models", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def register_mine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    text, mmproj = write(tmp_path / "t.gguf", TEXT_Q4), write(tmp_path / "m.gguf", MMPROJ)
    code, out, _ = run(capsys, "register", "mine", "--text", str(text), "--mmproj", str(mmproj))
    assert code == 0
    assert out.splitlines() == [
        "registered mine: 34.4 kB",
        f"  text    t.gguf  sha256 {sha256(TEXT_Q4)}  [TOFU]",
        f"  mmproj  m.gguf  sha256 {sha256(MMPROJ)}  [TOFU]",
        "  licence: unknown (registered local files)",
        "  digests recorded on first use (TOFU): there was no published digest to check "
        "against; `edgecap models verify` checks the files against them from now on",
    ]
    return text, mmproj


def test_list_on_an_empty_store(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID", "INSTALLED", "SIZE", "DIGESTS", "VERIFIED", "LICENCE", "ALIASES"
    ]  # fmt: skip
    assert lines[1].split()[:6] == [QWEN_7B, "no", "-", "-", "-", "Apache-2.0"]
    assert lines[1].endswith("runware:152@2, alibaba-qwen2-5-vl-7b-instruct")
    assert lines[2].startswith("qwen2.5-vl-3b-instruct  no ")
    assert "Qwen Research License (non-commercial)" in lines[2]
    assert lines[3].startswith("edgecap-tiny-random     no (make demo)")
    assert "* = the default model, used when a request names none" in lines
    assert any(line.startswith("DIGESTS: catalog = checked against") for line in lines)


def test_list_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    register_mine(tmp_path, capsys)
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    listed = {entry["id"]: entry for entry in json.loads(out)}
    assert list(listed) == [QWEN_7B, "qwen2.5-vl-3b-instruct", "edgecap-tiny-random", "mine"]
    assert listed[QWEN_7B]["installed"] is False
    assert listed[QWEN_7B]["aliases"] == ["runware:152@2", "alibaba-qwen2-5-vl-7b-instruct"]
    mine = listed["mine"]
    assert (mine["installed"], mine["source"], mine["trust"], mine["is_default"]) == (
        True,
        "local",
        "tofu",
        True,
    )
    assert mine["size"] == len(TEXT_Q4) + len(MMPROJ) and mine["verified_at"] is None


def test_register_verify_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, mmproj = register_mine(tmp_path, capsys)
    code, out, _ = run(capsys, "verify", "mine")
    assert code == 0
    assert out.splitlines() == [
        f"ok        text    {text}  [TOFU]",
        f"ok        mmproj  {mmproj}  [TOFU]",
        "mine: every file matches its sha256",
    ]
    code, out, _ = run(capsys, "list")
    row = next(line for line in out.splitlines() if line.startswith("mine"))
    assert row.split()[:6] == ["mine", "*", "local", "34.4", "kB", "TOFU"]


def test_verify_rejects_a_flipped_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, _ = register_mine(tmp_path, capsys)
    flip_one_byte(text)
    code, out, err = run(capsys, "verify", "mine")
    assert code == 2
    assert out.splitlines()[0] == f"MISMATCH  text    {text}  [TOFU]"
    assert err == (
        f"edgecap: error: mine: sha256 mismatch for {text}: expected {sha256(TEXT_Q4)}, "
        f"got {sha256(text.read_bytes())}. Fix: register it again with "
        "`edgecap models register mine --text TEXT --mmproj MMPROJ`\n"
    )


def test_export_then_import_elsewhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    register_mine(tmp_path, capsys)
    pack = tmp_path / "usb" / "mine"
    code, out, _ = run(capsys, "export", "mine", str(pack))
    assert code == 0
    assert out.splitlines() == [
        f"exported mine to {pack}: 34.4 kB",
        "  t.gguf, m.gguf, edgecap-pack.json",
        f"  on the other machine: edgecap models import {pack}",
    ]
    monkeypatch.setenv("EDGECAP_HOME", str(tmp_path / "air-gapped"))
    code, out, _ = run(capsys, "import", str(pack))
    assert code == 0
    assert out.splitlines()[0] == f"imported from {pack}: mine: 34.4 kB"
    assert run(capsys, "verify", "mine")[0] == 0


def test_import_of_a_tampered_pack_fails_with_a_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_mine(tmp_path, capsys)
    pack = tmp_path / "pack"
    run(capsys, "export", "mine", str(pack))
    run(capsys, "rm", "mine", "--yes")
    flip_one_byte(pack / "m.gguf")
    code, out, err = run(capsys, "import", str(pack))
    assert (code, out) == (2, "")
    assert err.startswith(f"edgecap: error: sha256 mismatch for {pack / 'm.gguf'}: expected ")
    assert err.endswith("copy the pack again and re-run `edgecap models import PATH`\n")


def test_rm_asks_for_yes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, mmproj = register_mine(tmp_path, capsys)
    code, _, err = run(capsys, "rm", "mine")
    assert code == 2
    assert err == (
        "edgecap: error: removing mine needs confirmation: run `edgecap models rm mine --yes`\n"
    )
    code, out, _ = run(capsys, "rm", "mine", "--yes")
    assert code == 0
    assert out.splitlines() == [
        "removed mine",
        f"  left in place (registered by path): {text}",
        f"  left in place (registered by path): {mmproj}",
    ]
    assert text.is_file()


def test_errors_are_one_line_with_a_fix(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = run(capsys, "verify", "nope")
    assert code == 2
    assert err.startswith("edgecap: error: unknown model 'nope'; known models: ")
    code, _, err = run(capsys, "export", "runware:152@1", "/tmp/x")
    assert code == 2
    assert "`edgecap models pull qwen2.5-vl-3b-instruct`" in err
    monkeypatch.setenv("EDGECAP_OFFLINE", "1")
    code, _, err = run(capsys, "pull", "runware:152@2")
    assert code == 2
    assert err.startswith(f"edgecap: error: edgecap is set to offline, so {QWEN_7B} cannot")
    assert err.endswith("and run `edgecap models import DIR`\n")


def test_pull_from_a_mirror(capsys: pytest.CaptureFixture[str]) -> None:
    repo = "ggml-org/Qwen2.5-VL-7B-Instruct-GGUF"
    files = {
        f"{repo}/Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf": TEXT_Q4,
        f"{repo}/mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf": MMPROJ,
    }
    with serve_mirror(files) as mirror:
        code, out, _ = run(capsys, "pull", "runware:152@2", "--endpoint", mirror.url)
    assert code == 0
    assert out.splitlines()[:4] == [
        f"installed {QWEN_7B} (variant q4_k_m): 34.4 kB",
        f"  text    Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf  sha256 {sha256(TEXT_Q4)}  [hub]",
        f"  mmproj  mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf  sha256 {sha256(MMPROJ)}  [hub]",
        "  licence: Apache-2.0 <https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct>",
    ]
    code, out, _ = run(capsys, "list")
    assert out.splitlines()[1].split()[:7] == [
        QWEN_7B, "*", "pulled", "(q4_k_m)", "34.4", "kB", "hub"
    ]  # fmt: skip
