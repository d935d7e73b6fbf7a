"""The server's small parts in-process: API keys, the bind check, the upload store and its
retention, job UUIDs and fingerprints, and `edgecap serve` argument handling."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from edgecap.cli import main
from edgecap.config import Settings
from edgecap.errors import (
    AuthError,
    InvalidInputImage,
    InvalidParameter,
    MediaNotFound,
    MissingApiKey,
)
from edgecap.inputs import images
from edgecap.server.auth import ApiKeys, bearer_key, check_bind, is_loopback, load_key_file
from edgecap.server.jobs import fingerprint, job_uuids, storable_task
from edgecap.server.uploads import UploadStore, is_media_uuid, wire_image
from tests.support.images import b64, data_uri, jpeg_bytes, png_bytes
from tests.support.tasks import FakeClock

# ---------------------------------------------------------------------------- keys


def test_keys_are_checked_and_missing_ones_named() -> None:
    keys = ApiKeys(["alpha", "beta"])
    keys.check("beta")
    with pytest.raises(MissingApiKey):
        keys.check(None)
    with pytest.raises(AuthError) as wrong:
        keys.check("alph")
    assert wrong.value.code == "invalidApiKey"
    assert "alph" not in wrong.value.message  # keys are never echoed
    ApiKeys([]).check(None)  # no keys configured: everyone is let in
    assert keys.identity("alpha") == keys.identity("alpha") != keys.identity("beta")
    assert "alpha" not in keys.identity("alpha")


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_key(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


def test_key_file_skips_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# team keys\nfirst\n\n  second  \n")
    assert load_key_file(path) == ["first", "second"]
    path.write_text("# nothing\n")
    with pytest.raises(InvalidParameter, match="holds no key"):
        load_key_file(path)
    with pytest.raises(InvalidParameter, match="Cannot read"):
        load_key_file(tmp_path / "missing")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_public_bind_needs_a_key_or_the_explicit_flag() -> None:
    assert check_bind("127.0.0.1", ApiKeys([]), allow_unauthenticated=False) is None
    assert check_bind("0.0.0.0", ApiKeys(["k"]), allow_unauthenticated=False) is None
    with pytest.raises(InvalidParameter, match="--allow-unauthenticated-public-bind"):
        check_bind("0.0.0.0", ApiKeys([]), allow_unauthenticated=False)
    warning = check_bind("0.0.0.0", ApiKeys([]), allow_unauthenticated=True)
    assert warning is not None and "WITHOUT an API key" in warning


def test_serve_refuses_a_public_bind_without_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith(
        "edgecap: error: Refusing to listen on 0.0.0.0 without an API key"
    )


def test_serve_rejects_a_bad_port_and_an_unreadable_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "70000"])
    assert exited.value.code == 2
    assert "'70000' is not a port number (0-65535)" in capsys.readouterr().err
    assert main(["serve", "--api-key-file", str(tmp_path / "none")]) == 2
    assert "Cannot read the API key file" in capsys.readouterr().err


# ---------------------------------------------------------------------------- uploads


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path, upload_retention_days=2)


def test_uploads_are_re_encoded_the_same_way_every_time(settings: Settings) -> None:
    """Stored re-encoded (issue 9, finding 7), deterministically: the same picture sent again
    gives the same bytes, so the engine's image cache still recognises it."""
    store = UploadStore(settings)
    picture = png_bytes(40, 30)
    image_uuid = store.save(data_uri(picture))
    assert is_media_uuid(image_uuid)
    stored = store.read(image_uuid)
    assert store.path(image_uuid).suffix == ".png"
    with Image.open(io.BytesIO(stored)) as again, Image.open(io.BytesIO(picture)) as sent:
        assert again.tobytes() == sent.convert("RGB").tobytes()
    assert store.read(store.save(b64(picture))) == stored  # plain base64 too


def test_uploads_larger_than_2048_are_stored_downscaled(settings: Settings) -> None:
    store = UploadStore(settings)
    path = store.path(store.save(b64(jpeg_bytes(1000, 4000))))
    with Image.open(path) as stored:
        assert stored.size == (512, 2048)


def test_uploads_unused_for_the_retention_time_are_deleted(settings: Settings) -> None:
    clock = FakeClock(now=1_700_000_000.0)
    store = UploadStore(settings, clock=clock)
    kept, dropped = store.save(b64(png_bytes())), store.save(b64(png_bytes()))
    for image_uuid in (kept, dropped):
        os.utime(store.path(image_uuid), (clock.now, clock.now))
    clock.now += 1.5 * 86400
    store.read(kept)  # used: its retention starts again
    clock.now += 1 * 86400
    assert store.purge_unused() == 1
    assert store.read(kept)
    with pytest.raises(MediaNotFound):
        store.read(dropped)


def test_upload_errors_name_the_image_parameter(settings: Settings) -> None:
    with pytest.raises(InvalidInputImage) as caught:
        UploadStore(settings).save(data_uri(b"not an image"))
    assert caught.value.parameter == "image"


@pytest.mark.parametrize("text", ["/etc/hostname", "-", "../secret", "photo.jpg"])
def test_wire_images_never_read_files_or_stdin(settings: Settings, text: str) -> None:
    with pytest.raises(InvalidInputImage, match=r"The image is not valid base64.*data:image"):
        wire_image(text, settings)


def test_wire_images_follow_the_cli_base64_rule(settings: Settings) -> None:
    """One rule for CLI and server: URL-safe alphabet, wrapped lines and no padding decode;
    a mix of the two alphabets does not."""
    data = b"\xfb\xff\xbf" * 4 + b"\x00"  # standard "+/+/+/+/+/+/+/+/AA==", URL-safe "-_-_..."
    wrapped = "-_-_-_-_\n-_-_-_-_\r\n AA"  # URL-safe, wrapped, unpadded
    assert wire_image(wrapped, settings) == data
    assert images.read_source(wrapped, settings).data == data
    mixed = "+/+/-_-_-_-_-_-_AA=="
    for reader in (lambda t: wire_image(t, settings), lambda t: images.read_source(t, settings)):
        with pytest.raises(InvalidInputImage, match=r"not .*base64"):  # the CLI: "... or base64"
            reader(mixed)


def test_wire_images_pass_urls_and_data_uris_and_decode_base64(settings: Settings) -> None:
    assert wire_image("https://example.com/a.png", settings) == "https://example.com/a.png"
    assert wire_image("data:image/png;base64,AAAA", settings) == "data:image/png;base64,AAAA"
    assert wire_image(b64(b"\x89PNG"), settings) == b"\x89PNG"


# ---------------------------------------------------------------------------- jobs


def test_job_uuids_are_the_task_uuid_then_stable_derived_ones() -> None:
    task_uuid = "7d5b0c4e-2a51-4c8e-9b0e-0d2f3c4b5a69"
    uuids = job_uuids(task_uuid, 3)
    assert uuids[0] == task_uuid
    assert len(set(uuids)) == 3
    assert job_uuids(task_uuid, 3) == uuids


def test_fingerprints_ignore_key_order_and_see_image_changes() -> None:
    first = {"taskType": "caption", "prompt": "a", "inputImage": "x" * 1000}
    reordered = dict(reversed(list(first.items())))
    assert fingerprint(storable_task(first)) == fingerprint(storable_task(reordered))
    changed = {**first, "inputImage": "y" * 1000}
    assert fingerprint(storable_task(first)) != fingerprint(storable_task(changed))
    url = {"inputs": {"image": "https://example.com/" + "p" * 500}}
    assert storable_task(url) == url  # URLs are kept as sent
