"""The model registry: the shipped catalog, resolving names, the store, packs, verify, and pulls
through huggingface_hub from a loopback mirror that answers like the Hugging Face Hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgecap.registry.install
from edgecap.config import Settings
from edgecap.engine.hardware import Recommendation
from edgecap.errors import DownloadFailed, InvalidParameter, ModelError, ModelNotReady, UnknownModel
from edgecap.registry import PACK_FILE, Catalog, Registry, load_catalog
from edgecap.registry.catalog import Variant
from tests.support.models import (
    MMPROJ,
    TEXT_Q4,
    TEXT_Q8,
    HubMirror,
    flip_one_byte,
    serve_mirror,
    sha256,
    write,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
QWEN_7B, QWEN_3B, TINY = "qwen2.5-vl-7b-instruct", "qwen2.5-vl-3b-instruct", "edgecap-tiny-random"


def settings_for(home: Path, **overrides: Any) -> Settings:
    # Explicit values, so EDGECAP_* variables of the machine running the tests do not leak in.
    return Settings.model_validate({"home": home, "offline": False, "model": None, **overrides})


# -- a catalog for pull tests, and the loopback Hub mirror ------------------------------------

FAKE_REPO = "test-org/Fake-VL-GGUF"
FAKE_FILES = {
    "Fake-Q4_K_M.gguf": TEXT_Q4,
    "Fake-Q8_0.gguf": TEXT_Q8,
    "mmproj-Fake-f16.gguf": MMPROJ,
}


def fake_catalog(
    *,
    digests: bool = True,
    override: dict[str, str] | None = None,
    contents: dict[str, bytes] = FAKE_FILES,
) -> Catalog:
    """A catalog with one pullable model, ``fake-vl``, served by the mirror."""
    files = {
        name: {"size": len(data), "sha256": sha256(data) if digests else None}
        for name, data in contents.items()
    }
    for name, digest in (override or {}).items():
        files[name]["sha256"] = digest
    return Catalog.model_validate(
        {
            "format": 1,
            "default": "fake-vl",
            "models": [
                {
                    "id": "fake-vl",
                    "title": "Fake VL",
                    "aliases": ["runware:999@1"],
                    "licence": {"name": "Apache-2.0"},
                    "repo": FAKE_REPO,
                    "revision": "main",
                    "default_variant": "q4_k_m",
                    "files": files,
                    "variants": {
                        "q4_k_m": {"text": "Fake-Q4_K_M.gguf", "mmproj": "mmproj-Fake-f16.gguf"},
                        "q8_0": {"text": "Fake-Q8_0.gguf", "mmproj": "mmproj-Fake-f16.gguf"},
                    },
                }
            ],
        }
    )


@pytest.fixture
def mirror() -> Iterator[HubMirror]:
    with serve_mirror({f"{FAKE_REPO}/{name}": data for name, data in FAKE_FILES.items()}) as hub:
        yield hub


def gets(mirror: HubMirror) -> list[str]:
    return [path.rsplit("/", 1)[1] for method, path, _ in mirror.requests if method == "GET"]


# -- the shipped catalog -----------------------------------------------------------------------


def test_shipped_catalog_has_one_source_of_truth() -> None:
    assert (REPO_ROOT / "edgecap" / "data" / "manifest.json").is_file()
    assert not (REPO_ROOT / "models" / "manifest.json").exists()  # no copy to drift


def test_shipped_catalog_names_the_qwen_models() -> None:
    catalog = load_catalog()
    assert catalog.default == QWEN_7B
    assert catalog.get("runware:152@2").id == QWEN_7B
    assert catalog.get("RUNWARE:152@1").id == QWEN_3B
    assert catalog.get("alibaba-qwen2-5-vl-7b-instruct").id == QWEN_7B
    assert catalog.get("alibaba-qwen2-5-vl-3b-instruct").id == QWEN_3B
    seven = catalog.get(QWEN_7B)
    assert seven.repo == "ggml-org/Qwen2.5-VL-7B-Instruct-GGUF"
    assert seven.variant(None)[1].text == "Qwen2.5-VL-7B-Instruct-Q4_K_M.gguf"
    assert seven.variant(None)[1].mmproj == "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf"
    assert seven.licence.name == "Apache-2.0"
    assert "Research" in catalog.get(QWEN_3B).licence.name
    tiny = catalog.get(TINY)
    assert not tiny.pullable and tiny.random_weights


def test_unknown_variant_lists_the_variants() -> None:
    with pytest.raises(ModelError, match=r"q4_k_m, q4_k_m-mmproj-q8_0, q8_0, f16"):
        load_catalog().get(QWEN_7B).variant("q2_k")


# -- resolving names ---------------------------------------------------------------------------


def make_pack(directory: Path, model_id: str, files: dict[str, bytes], **extra: Any) -> Path:
    """A pack written by hand, as another machine's `edgecap models export` would."""
    (text_name, text), (mmproj_name, mmproj) = files.items()
    write(directory / text_name, text)
    write(directory / mmproj_name, mmproj)
    manifest = {
        "format": "edgecap-pack",
        "version": 1,
        "id": model_id,
        "licence": {"name": "Apache-2.0", "url": None},
        "source": "test",
        "created_by": "edgecap test",
        "text": {"name": text_name, "size": len(text), "sha256": sha256(text)},
        "mmproj": {"name": mmproj_name, "size": len(mmproj), "sha256": sha256(mmproj)},
        **extra,
    }
    (directory / PACK_FILE).write_text(json.dumps(manifest))
    return directory


def install_qwen(registry: Registry, tmp_path: Path, size: str) -> None:
    files = {
        f"Qwen2.5-VL-{size}-Instruct-Q4_K_M.gguf": TEXT_Q4 + size.encode(),
        f"mmproj-Qwen2.5-VL-{size}-Instruct-f16.gguf": MMPROJ + size.encode(),
    }
    model_id = f"qwen2.5-vl-{size.lower()}-instruct"
    registry.import_pack(make_pack(tmp_path / f"pack-{size}", model_id, files), progress=False)


def test_resolve_air_ids_slugs_and_ids(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    install_qwen(registry, tmp_path, "7B")
    install_qwen(registry, tmp_path, "3B")
    for name in (
        "runware:152@2",
        "alibaba-qwen2-5-vl-7b-instruct",
        QWEN_7B,
        " Qwen2.5-VL-7B-Instruct ",
    ):
        model = registry.resolve(name)
        assert model.id == QWEN_7B
        assert model.text.read_bytes() == TEXT_Q4 + b"7B"
        assert model.mmproj.name == "mmproj-Qwen2.5-VL-7B-Instruct-f16.gguf"
    for name in ("runware:152@1", "alibaba-qwen2-5-vl-3b-instruct", QWEN_3B):
        assert registry.resolve(name).id == QWEN_3B
    assert not registry.resolve(QWEN_7B).random_weights


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path))
    with pytest.raises(UnknownModel) as err:
        registry.resolve("runware:152@9")
    assert err.value.code == "unknownModel" and err.value.parameter == "model"
    assert f"{QWEN_7B}, {QWEN_3B}, {TINY}" in err.value.message
    assert "`edgecap models list`" in err.value.message


def test_nothing_installed_says_how_to_get_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelNotReady) as err:
        Registry(settings_for(tmp_path)).resolve(None)
    assert f"`edgecap models pull {QWEN_7B}`" in err.value.message
    assert "`edgecap models import PATH`" in err.value.message
    assert "`make demo`" in err.value.message


def test_known_model_not_installed_names_its_pull_command(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path))
    with pytest.raises(ModelNotReady, match=rf"`edgecap models pull {QWEN_3B}`"):
        registry.resolve("runware:152@1")
    with pytest.raises(ModelNotReady, match=r"`make demo`"):
        registry.resolve("tiny")


def test_default_prefers_the_7b_then_real_weights_then_the_demo(tmp_path: Path) -> None:
    home = tmp_path / "home"
    registry = Registry(settings_for(home))
    text, mmproj = write(tmp_path / "t.gguf", TEXT_Q4), write(tmp_path / "m.gguf", MMPROJ)
    registry.register_local(TINY, text, mmproj)
    assert registry.resolve(None).id == TINY
    assert registry.resolve(None).random_weights
    registry.register_local("my-qwen", text, mmproj)
    assert registry.resolve(None).id == "my-qwen"
    install_qwen(registry, tmp_path, "3B")
    assert registry.resolve(None).id == QWEN_3B
    install_qwen(registry, tmp_path, "7B")
    assert registry.resolve(None).id == QWEN_7B
    assert [s.id for s in registry.list() if s.is_default] == [QWEN_7B]
    # A configured default wins.
    configured = Registry(settings_for(home, model="my-qwen"))
    assert configured.resolve(None).id == "my-qwen"
    assert [s.id for s in configured.list() if s.is_default] == ["my-qwen"]


# -- local registrations -----------------------------------------------------------------------


def test_register_local_uses_files_in_place(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    text, mmproj = write(tmp_path / "a" / "t.gguf", TEXT_Q4), write(tmp_path / "m.gguf", MMPROJ)
    record = registry.register_local("My-Qwen", text, mmproj)
    assert record.id == "my-qwen" and record.source == "local"
    assert record.text.sha256 == sha256(TEXT_Q4) and record.trust == "tofu"
    model = registry.resolve("my-qwen")
    assert (model.text, model.mmproj) == (text, mmproj)
    text.unlink()
    with pytest.raises(ModelError, match=r"t\.gguf is missing; register it again"):
        registry.resolve("my-qwen")


def test_register_local_keeps_files_inside_the_store(tmp_path: Path) -> None:
    """Files registered by path may live in the model's own store directory (the demo)."""
    home = tmp_path / "home"
    registry = Registry(settings_for(home))
    inside = home / "models" / "my-qwen"
    text, mmproj = write(inside / "t.gguf", TEXT_Q4), write(inside / "m.gguf", MMPROJ)
    registry.register_local("my-qwen", text, mmproj)
    assert text.exists() and mmproj.exists()
    assert registry.resolve("my-qwen").text == text


def test_register_local_rejects_bad_input(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    text, mmproj = write(tmp_path / "t.gguf", TEXT_Q4), write(tmp_path / "m.gguf", MMPROJ)
    with pytest.raises(InvalidParameter, match=r"register your files under another name"):
        registry.register_local("runware:152@2", text, mmproj)
    with pytest.raises(InvalidParameter, match=r"not a usable model name"):
        registry.register_local("../evil", text, mmproj)
    with pytest.raises(ModelError, match=r"does not exist"):
        registry.register_local("x", tmp_path / "nope.gguf", mmproj)
    with pytest.raises(InvalidParameter, match=r"two different files"):
        registry.register_local("x", text, text)
    assert registry.store.all() == []


def test_remove_keeps_registered_files_and_deletes_store_files(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    text, mmproj = write(tmp_path / "t.gguf", TEXT_Q4), write(tmp_path / "m.gguf", MMPROJ)
    registry.register_local("mine", text, mmproj)
    removed = registry.remove("mine")
    assert removed.kept_files == (text, mmproj) and text.is_file() and mmproj.is_file()
    install_qwen(registry, tmp_path, "7B")
    stored = registry.resolve(QWEN_7B).text
    assert registry.remove("runware:152@2").kept_files == ()
    assert not stored.exists()
    with pytest.raises(ModelNotReady, match="nothing to remove"):
        registry.remove(QWEN_7B)


# -- packs and verify --------------------------------------------------------------------------


def test_export_import_verify_round_trip(tmp_path: Path) -> None:
    here = Registry(settings_for(tmp_path / "here"))
    here.register_local(
        "mine", write(tmp_path / "t.gguf", TEXT_Q4), write(tmp_path / "m.gguf", MMPROJ)
    )
    pack_dir = tmp_path / "usb" / "mine"
    pack = here.export_pack("mine", pack_dir, progress=False)
    assert sorted(p.name for p in pack_dir.iterdir()) == [PACK_FILE, "m.gguf", "t.gguf"]
    written = json.loads((pack_dir / PACK_FILE).read_text())
    assert written["format"] == "edgecap-pack" and written["version"] == 1
    assert written["text"] == {"name": "t.gguf", "size": len(TEXT_Q4), "sha256": sha256(TEXT_Q4)}
    assert pack.mmproj.sha256 == sha256(MMPROJ)

    there = Registry(settings_for(tmp_path / "there"))
    record = there.import_pack(pack_dir, progress=False)
    assert (record.id, record.source, record.trust) == ("mine", "import", "tofu")
    model = there.resolve("mine")
    assert model.text.parent == tmp_path / "there" / "models" / "mine"
    assert model.text.read_bytes() == TEXT_Q4 and model.mmproj.read_bytes() == MMPROJ
    report = there.verify("mine", progress=False)
    assert report.ok and report.error() is None
    assert there.store.load("mine").verified_at is not None  # type: ignore[union-attr]


def test_import_rejects_a_flipped_byte_and_installs_nothing(tmp_path: Path) -> None:
    pack_dir = make_pack(tmp_path / "pack", "mine", {"t.gguf": TEXT_Q4, "m.gguf": MMPROJ})
    flip_one_byte(pack_dir / "m.gguf")
    registry = Registry(settings_for(tmp_path / "home"))
    with pytest.raises(ModelError) as err:
        registry.import_pack(pack_dir, progress=False)
    message = err.value.message
    assert f"sha256 mismatch for {pack_dir / 'm.gguf'}: expected {sha256(MMPROJ)}" in message
    assert "was not installed" in message and "`edgecap models import PATH`" in message
    assert registry.store.all() == []
    assert list((tmp_path / "home" / "models" / "mine").iterdir()) == []  # no partial files


def test_import_rejects_missing_and_resized_files(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    pack_dir = make_pack(tmp_path / "pack", "mine", {"t.gguf": TEXT_Q4, "m.gguf": MMPROJ})
    with (pack_dir / "t.gguf").open("ab") as f:
        f.write(b"extra")
    with pytest.raises(ModelError, match=rf"is {len(TEXT_Q4) + 5} bytes but the pack says"):
        registry.import_pack(pack_dir, progress=False)
    (pack_dir / "t.gguf").unlink()
    with pytest.raises(ModelError, match=r"the pack is incomplete: .*t\.gguf is missing"):
        registry.import_pack(pack_dir, progress=False)
    (pack_dir / PACK_FILE).unlink()
    with pytest.raises(ModelError, match=r"is not an edgecap pack .*`edgecap models export"):
        registry.import_pack(pack_dir, progress=False)
    assert registry.store.all() == []


def test_import_rejects_a_pack_naming_unsafe_files(tmp_path: Path) -> None:
    pack_dir = make_pack(tmp_path / "pack", "mine", {"t.gguf": TEXT_Q4, "m.gguf": MMPROJ})
    manifest = json.loads((pack_dir / PACK_FILE).read_text())
    manifest["text"]["name"] = "../../t.gguf"
    (pack_dir / PACK_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"not a valid edgecap pack manifest"):
        Registry(settings_for(tmp_path / "home")).import_pack(pack_dir, progress=False)


def test_verify_reports_a_flipped_byte_in_the_store(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    install_qwen(registry, tmp_path, "7B")
    text = registry.resolve(QWEN_7B).text
    flip_one_byte(text)
    report = registry.verify("runware:152@2", progress=False)
    assert not report.ok
    assert [c.ok for c in report.files] == [False, True]
    error = report.error()
    assert error is not None
    expected = sha256(TEXT_Q4 + b"7B")
    assert f"sha256 mismatch for {text}: expected {expected}, got {sha256(text.read_bytes())}" in (
        error.message
    )
    assert "re-run `edgecap models import PATH`" in error.message
    assert registry.store.load(QWEN_7B).verified_at is None  # type: ignore[union-attr]


def test_export_refuses_a_non_empty_directory_and_a_bad_store_file(tmp_path: Path) -> None:
    registry = Registry(settings_for(tmp_path / "home"))
    install_qwen(registry, tmp_path, "7B")
    write(tmp_path / "full" / "other.txt", b"x")
    with pytest.raises(ModelError, match=r"not an empty directory"):
        registry.export_pack(QWEN_7B, tmp_path / "full", progress=False)
    flip_one_byte(registry.resolve(QWEN_7B).mmproj)
    with pytest.raises(ModelError, match=r"no longer matches its recorded sha256"):
        registry.export_pack(QWEN_7B, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / PACK_FILE).exists()


# -- pulling through huggingface_hub from the loopback mirror ----------------------------------


def test_pull_checks_catalog_digests(tmp_path: Path, mirror: HubMirror) -> None:
    registry = Registry(settings_for(tmp_path / "home"), catalog=fake_catalog())
    record = registry.pull("runware:999@1", endpoint=mirror.url, progress=False)
    assert (record.source, record.variant, record.trust) == ("pull", "q4_k_m", "manifest")
    assert f"{mirror.url}/{FAKE_REPO}/resolve/{mirror.commit}/Fake-Q4_K_M.gguf" in record.origin
    model = registry.resolve("fake-vl")
    assert model.text.read_bytes() == TEXT_Q4 and model.mmproj.read_bytes() == MMPROJ
    assert sorted(gets(mirror)) == ["Fake-Q4_K_M.gguf", "mmproj-Fake-f16.gguf"]
    assert ("HEAD", f"/{FAKE_REPO}/resolve/main/Fake-Q4_K_M.gguf", None) in mirror.requests
    assert not registry.store.downloads_dir("fake-vl").exists()


def test_pull_without_catalog_digests_uses_the_hub_sha256_or_tofu(
    tmp_path: Path, mirror: HubMirror
) -> None:
    registry = Registry(settings_for(tmp_path / "home"), catalog=fake_catalog(digests=False))
    mirror.etags[f"{FAKE_REPO}/mmproj-Fake-f16.gguf"] = "a-git-blob-etag-not-a-sha256"
    record = registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    assert record.text.digest_source == "hub"
    assert record.mmproj.digest_source == "tofu" and record.mmproj.sha256 == sha256(MMPROJ)
    assert record.trust == "tofu"


def test_pull_rejects_a_file_that_does_not_match_the_catalog(
    tmp_path: Path, mirror: HubMirror
) -> None:
    wrong = sha256(b"something else")
    catalog = fake_catalog(override={"mmproj-Fake-f16.gguf": wrong})
    registry = Registry(settings_for(tmp_path / "home"), catalog=catalog)
    with pytest.raises(ModelError) as err:
        registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    assert f"expected {wrong}, got {sha256(MMPROJ)}" in err.value.message
    assert "mmproj-Fake-f16.gguf" in err.value.message
    assert "`edgecap models pull fake-vl` again" in err.value.message
    assert registry.store.all() == []
    leftovers = registry.store.downloads_dir("fake-vl").glob("*.gguf")
    assert [p.name for p in leftovers] == ["Fake-Q4_K_M.gguf"]  # checked, waiting; bad one gone


def test_pull_rejects_a_file_that_does_not_match_the_hub(tmp_path: Path, mirror: HubMirror) -> None:
    registry = Registry(settings_for(tmp_path / "home"), catalog=fake_catalog(digests=False))
    mirror.etags[f"{FAKE_REPO}/Fake-Q4_K_M.gguf"] = sha256(b"what the hub says")
    with pytest.raises(ModelError, match=rf"expected {sha256(b'what the hub says')}"):
        registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    assert registry.store.all() == []


def test_an_interrupted_pull_resumes(tmp_path: Path, mirror: HubMirror) -> None:
    # huggingface_hub writes what it received in 10 MiB chunks: the file must span a few of
    # them for part of it to survive the dropped connection.
    big = bytes(range(256)) * (100 * 1024)  # 25 MiB
    contents = {**FAKE_FILES, "Fake-Q4_K_M.gguf": big}
    mirror.files[f"{FAKE_REPO}/Fake-Q4_K_M.gguf"] = big
    registry = Registry(settings_for(tmp_path / "home"), catalog=fake_catalog(contents=contents))
    mirror.truncate_next_get = True
    with pytest.raises(DownloadFailed, match=r"downloads resume"):
        registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    assert registry.store.all() == []
    registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    assert registry.resolve("fake-vl").text.read_bytes() == big
    ranges = [r for method, _, r in mirror.requests if method == "GET" and r]
    assert ranges == [f"bytes={10 * 1024 * 1024}-"]


def test_pull_of_another_variant_keeps_the_shared_projector(
    tmp_path: Path, mirror: HubMirror
) -> None:
    registry = Registry(settings_for(tmp_path / "home"), catalog=fake_catalog())
    registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    mirror.requests.clear()
    record = registry.pull("fake-vl", variant="Q8_0", endpoint=mirror.url, progress=False)
    assert record.variant == "q8_0" and gets(mirror) == ["Fake-Q8_0.gguf"]
    model_dir = registry.store.model_dir("fake-vl")
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "Fake-Q8_0.gguf",
        "manifest.json",
        "mmproj-Fake-f16.gguf",
    ]


def test_offline_pull_says_how_to_import(tmp_path: Path, mirror: HubMirror) -> None:
    registry = Registry(settings_for(tmp_path, offline=True), catalog=fake_catalog())
    with pytest.raises(DownloadFailed) as err:
        registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    assert "offline" in err.value.message and "`edgecap models import DIR`" in err.value.message
    assert mirror.requests == []


def test_pull_of_a_missing_file_or_a_local_model_fails_clearly(
    tmp_path: Path, mirror: HubMirror
) -> None:
    del mirror.files[f"{FAKE_REPO}/mmproj-Fake-f16.gguf"]
    registry = Registry(settings_for(tmp_path / "home"), catalog=fake_catalog())
    with pytest.raises(DownloadFailed, match=r"could not download .*mmproj-Fake-f16\.gguf"):
        registry.pull("fake-vl", endpoint=mirror.url, progress=False)
    with pytest.raises(ModelError, match=r"`make demo`"):
        Registry(settings_for(tmp_path / "home")).pull(TINY, progress=False)


# -- the projector that suits this CPU ------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu_type", "published_bf16", "variant", "mmproj", "note"),
    [
        ("bf16", True, "q4_k_m-mmproj-bf16", "mmproj-Fake-bf16.gguf", False),
        ("bf16", False, "q4_k_m", "mmproj-Fake-f16.gguf", True),
        ("f16", True, "q4_k_m", "mmproj-Fake-f16.gguf", False),
    ],
)
def test_pull_takes_the_projector_that_suits_the_cpu(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    cpu_type: str,
    published_bf16: bool,
    variant: str,
    mmproj: str,
    note: bool,
) -> None:
    """The CPU is simulated (``recommend`` answers for a CPU with or without native bf16); the
    download is real, from the loopback mirror."""
    monkeypatch.setattr(
        edgecap.registry.install, "recommend", lambda: Recommendation(cpu_type, "simulated")
    )
    contents = {**FAKE_FILES, "mmproj-Fake-bf16.gguf": MMPROJ + b"bf16"}
    catalog = fake_catalog(contents=contents)
    if published_bf16:
        known = catalog.models[0]
        variants = {
            **known.variants,
            "q4_k_m-mmproj-bf16": Variant(text="Fake-Q4_K_M.gguf", mmproj="mmproj-Fake-bf16.gguf"),
        }
        catalog = catalog.model_copy(
            update={"models": [known.model_copy(update={"variants": variants})]}
        )
    registry = Registry(settings_for(tmp_path / "home"), catalog=catalog)
    with serve_mirror({f"{FAKE_REPO}/{n}": d for n, d in contents.items()}) as hub:
        record = registry.pull("fake-vl", endpoint=hub.url, progress=False)
    assert record.variant == variant
    assert registry.resolve("fake-vl").mmproj.read_bytes() == contents[mmproj]
    assert ("publishes none" in caplog.text) == note
