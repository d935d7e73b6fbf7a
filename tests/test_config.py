"""The configuration file: precedence (flag > env > file > default), refusals with the key and
its line, empty variables, `edgecap config show`, docs/configuration.md's example, and
`edgecap serve --config` for real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from edgecap.cli import main
from edgecap.config import Settings, default_home, load_settings
from edgecap.errors import InvalidParameter
from edgecap.records import ModelFiles
from edgecap.registry import Registry
from tests.support.http import free_port
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EDGECAP_* variable of the machine leaks in (EDGECAP_HOME stays: conftest's)."""
    for name in list(os.environ):
        if name.startswith("EDGECAP_") and name != "EDGECAP_HOME":
            monkeypatch.delenv(name)


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    return path


def example_file(tmp_path: Path) -> Path:
    """The first ```toml block of docs/configuration.md, as a file."""
    doc = (REPO / "docs" / "configuration.md").read_text("utf-8")
    block = re.search(r"```toml\n(.*?)```", doc, re.S)
    assert block is not None
    return write(tmp_path / "edgecap.toml", block.group(1))


def test_the_documented_example_loads_and_names_every_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGECAP_HOME")  # else it would win over the file's home
    path = example_file(tmp_path)
    settings = load_settings(path)
    assert settings.home == Path("/var/lib/edgecap")
    assert settings.url_allowlist == ["10.0.0.0/8"]
    text = path.read_text()
    missing = [n for n in Settings.model_fields if not re.search(rf"^#? ?{n} =", text, re.M)]
    assert missing == [], f"docs/configuration.md's example lacks {missing}"
    # Uncommented, every line still loads.
    uncommented = re.sub(r"^# (\w+ =)", r"\1", text, flags=re.M)
    everything = load_settings(write(tmp_path / "all.toml", uncommented))
    assert everything.api_key_file == Path("/etc/edgecap/keys")
    assert everything.log_level == "INFO" and everything.n_threads == 4


def test_precedence_is_flag_then_env_then_file_then_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.toml", "port = 9001\nqueue_size = 7\nmax_tokens = 99\n")
    assert load_settings().port == 8080
    assert load_settings(path).port == 9001
    monkeypatch.setenv("EDGECAP_PORT", "9002")
    assert load_settings(path).port == 9002
    settings = load_settings(path, port=9003, max_tokens=None)  # None: the flag was not given
    assert (settings.port, settings.queue_size, settings.max_tokens) == (9003, 7, 99)
    monkeypatch.setenv("EDGECAP_CONFIG", str(path))
    assert load_settings().queue_size == 7  # EDGECAP_CONFIG names the file
    other = write(tmp_path / "o.toml", "queue_size = 3\n")
    assert load_settings(other).queue_size == 3  # --config beats EDGECAP_CONFIG


def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGECAP_HOME", "")
    monkeypatch.setenv("EDGECAP_PORT", "")
    monkeypatch.setenv("EDGECAP_URL_ALLOWLIST", "")
    monkeypatch.setenv("EDGECAP_CONFIG", "")
    settings = load_settings()
    assert (settings.home, settings.port, settings.url_allowlist) == (default_home(), 8080, [])
    path = write(tmp_path / "c.toml", "port = 9001\n")
    assert load_settings(path).port == 9001  # an empty variable does not hide the file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 1\n\n# a comment\nprot = 2\n",
         r"c.toml line 4: unknown setting 'prot'; did you mean 'port'\? docs/configuration.md"),
        ("port = 1\n[server]\nport = 2\n", r"c.toml line 2: unknown setting 'server'"),
        ('"api-keys" = ["x"]\n', r"c.toml line 1: unknown setting 'api-keys'; did you mean "
         r"'api_keys'\?"),
        ('port = "eighty"\n', r"setting port \(from .*c.toml line 1\): Input should be a valid "
         r"integer.*; got 'eighty'"),
        ("api_keys = 5\n", r"setting api_keys \(from .*c.toml line 1\): Input should be a valid "
         r"list\.$"),  # a secret's value is never echoed
        ("port = \n", r"c.toml is not valid TOML: .*line 1"),
    ],
)  # fmt: skip
def test_bad_files_are_refused_saying_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidParameter, match=message):
        load_settings(write(tmp_path / "c.toml", text))


def test_a_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGECAP_QUEUE_SIZE", "0")
    with pytest.raises(InvalidParameter, match=r"queue_size \(from env EDGECAP_QUEUE_SIZE\)"):
        load_settings()


def test_config_show_prints_values_and_origins_with_secrets_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "c.toml",
        '# keys\napi_keys = ["k3y-one", "k3y-two"]\nport = 9001\nwebhook_secret = "hm4c"\n',
    )
    monkeypatch.setenv("EDGECAP_PORT", "9002")
    monkeypatch.setenv("EDGECAP_CONFIG", str(path))
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "k3y" not in out and "hm4c" not in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}
    assert lines["api_keys"] == ['["****",', '"****"]', str(path), "line", "2"]
    assert lines["port"] == ["9002", "env", "EDGECAP_PORT"]
    assert lines["queue_size"] == ["64", "default"]
    assert lines["webhook_secret"] == ['"****"', str(path), "line", "4"]
    assert set(lines) == set(Settings.model_fields)
    assert main(["config", "show", "--json", "--config", str(path)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["config_file"] == str(path)
    assert shown["settings"]["api_keys"] == {"value": ["****", "****"], "origin": f"{path} line 2"}
    assert shown["settings"]["home"]["origin"] == "env EDGECAP_HOME"
    assert main(["config", "show", "--config", str(tmp_path / "none.toml")]) == 2
    assert "Cannot read the configuration file" in capsys.readouterr().err


def test_serve_reads_the_file_before_binding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "c.toml", 'host = "0.0.0.0"\nport = 0\n')
    assert main(["serve", "--config", str(path)]) == 2
    assert "Refusing to listen on 0.0.0.0 without an API key" in capsys.readouterr().err
    keys = write(tmp_path / "keys", "k1\n")
    with_keys = write(tmp_path / "k.toml", f'host = "0.0.0.0"\napi_key_file = "{keys}"\n')
    assert main(["serve", "--config", str(with_keys)]) == 2  # past the bind check: no model
    assert "no model is installed" in capsys.readouterr().err


@pytest.mark.slow
def test_serve_with_a_config_file_for_real(tmp_path: Path, tiny_model_files: ModelFiles) -> None:
    home = tmp_path / "home"
    keys = write(tmp_path / "keys", "# the service's keys\nfile-key\n")
    port = free_port()
    config = write(
        tmp_path / "edgecap.toml",
        f'home = "{home}"\nport = {port}\napi_key_file = "{keys}"\nn_threads = 1\n'
        'log_level = "WARNING"\n',
    )
    Registry(Settings(home=home)).register_local(
        "my-tiny", tiny_model_files.text, tiny_model_files.mmproj, random_weights=True
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECAP_")}
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from edgecap.cli import main; sys.exit(main())",
         "serve", "--config", str(config)],
        env={**env, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "the server to answer /healthz", START_TIMEOUT_S, interval=0.2)
        assert httpx.get(f"{base}/v1/models", timeout=10).status_code == 401
        listing = httpx.get(
            f"{base}/v1/models", headers={"Authorization": "Bearer file-key"}, timeout=10
        )
        assert "my-tiny" in [m["id"] for m in listing.json()["data"]]
    finally:
        process.terminate()
        process.wait(30)
