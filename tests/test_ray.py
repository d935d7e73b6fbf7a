"""``edgecap caption --ray`` on a real two-node Ray cluster on loopback, with the tiny model.

The cluster (two ``ray start`` nodes of one CPU each on 127.0.0.1) is started once for the
module and stopped at its end, by process group. Each node has an ``EDGECAP_HOME`` of its own
(its registry; ``ray start``'s environment is its workers'), both empty unless a test installs a
model there. Each run is a real ``edgecap`` process: the driver.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecap.batch.model_check import describe_model, model_on_this_node
from edgecap.batch.ray_nodes import node_name
from edgecap.config import Settings, load_settings
from edgecap.errors import ModelNotReady
from edgecap.records import ModelFiles
from edgecap.registry import Registry
from tests.support.cli import NOTICE, caption_lines, run
from tests.support.env import child_env
from tests.support.http import free_port
from tests.support.images import write_png
from tests.support.models import flip_one_byte, install_tiny

RAY = Path(sys.executable).parent / "ray"
OBJECT_STORE = str(200 * 1024 * 1024)
MARKER = "EDGECAP_TEST_RAY_CLUSTER"  # in the environment of every process of the cluster
DEADLINE = 240.0  # seconds: a guard against hanging, not a measurement


def start_node(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start ... --block`` in a process group of its own, so it can be stopped by id."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(RAY), "start", *argv, "--block", "--disable-usage-stats"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def alive_nodes(address: str, env: dict[str, str]) -> set[str]:
    """How messages name the cluster's alive nodes (none while it is not answering)."""
    probe = (
        f"import ray; ray.init(address={address!r}, log_to_driver=False); "
        "print(' '.join(n['NodeManagerAddress'] + '=' + n['NodeID'] for n in ray.nodes() "
        "if n['Alive']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    lines = done.stdout.strip().splitlines() if done.returncode == 0 else []
    pairs = [pair.split("=") for pair in lines[-1].split()] if lines else []
    return {node_name(node_id, ip) for ip, node_id in pairs}


def marked_pids(marker: str) -> list[int]:
    """The processes whose environment holds ``marker``: all the cluster's, and only its."""
    needle = f"{MARKER}={marker}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def stop(nodes: list[subprocess.Popen[bytes]], marker: str) -> None:
    """Stop the nodes (SIGTERM to their process groups), then anything of theirs left."""
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=20)
    deadline = time.monotonic() + 30
    while left := marked_pids(marker):
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for node in nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=1)
        assert time.monotonic() < deadline, f"Ray processes {left} would not stop"
        time.sleep(0.5)


@dataclass(frozen=True)
class Cluster:
    """A running two-node cluster: its address, and each node's name (as messages name it:
    Ray's address for it, its id) and EDGECAP_HOME."""

    address: str
    head: str
    head_home: Path
    worker: str
    worker_home: Path
    logs: Path  # the session's logs: every worker's stderr is a worker-*.err there


def failed_engine_starts(cluster: Cluster) -> int:
    """Worker processes of the cluster whose stderr holds an engine that failed for the model
    (the check before the run returns its message; only an actor's start raises it)."""
    needle = "edgecap.errors.ModelNotReady"
    return sum(needle in err.read_text(errors="replace") for err in cluster.logs.glob("*.err"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A two-node Ray cluster (1 CPU per node) on 127.0.0.1."""
    logs = tmp_path_factory.mktemp("ray-logs")
    temp_dir = Path(f"/tmp/rt{os.getpid()}")  # short: Ray's socket paths must fit
    marker = uuid.uuid4().hex
    env = child_env(RAY_USAGE_STATS_ENABLED="0", **{MARKER: marker})
    homes = tmp_path_factory.mktemp("head-home"), tmp_path_factory.mktemp("worker-home")
    port = free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus", "1", "--object-store-memory", OBJECT_STORE, f"--temp-dir={temp_dir}"]
    head_only = ["--include-dashboard=false"]
    head = start_node(
        ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), *head_only, *common],
        {**env, "EDGECAP_HOME": str(homes[0])},
        logs / "head.log",
    )
    nodes = [head]
    try:
        deadline = time.monotonic() + DEADLINE
        while len(ids := alive_nodes(address, env)) < 1:
            assert head.poll() is None, (logs / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head never came up"
            time.sleep(1)
        worker = start_node(
            ["--address", address, "--node-ip-address", "127.0.0.1", *common],
            {**env, "EDGECAP_HOME": str(homes[1])},
            logs / "worker.log",
        )
        nodes.append(worker)
        while len(both := alive_nodes(address, env)) < 2:
            assert worker.poll() is None, (logs / "worker.log").read_text()
            assert time.monotonic() < deadline, "the second Ray node never joined"
            time.sleep(1)
        (head_name,) = ids
        (worker_name,) = both - ids
        logs = temp_dir / "session_latest" / "logs"
        yield Cluster(address, head_name, homes[0], worker_name, homes[1], logs)
    finally:
        stop(nodes, marker)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def dozen(tmp_path: Path) -> Path:
    """photos/: eleven PNGs of different sizes and one broken file."""
    for i in range(11):
        write_png(tmp_path / "photos" / f"p{i:02}.png", (56 + 28 * (i % 4), 56 + 28 * (i // 4)))
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"not a JPEG at all")
    return tmp_path / "photos"


def edgecap(*argv: str, timeout: float = DEADLINE) -> subprocess.CompletedProcess[str]:
    env = child_env(RAY_USAGE_STATS_ENABLED="0")
    return subprocess.run(
        [sys.executable, "-m", "edgecap", "caption", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line + "\n" != NOTICE]


def test_a_folder_on_two_nodes_is_captioned_once_like_a_local_run(
    tiny_model_files: ModelFiles,
    cluster: Cluster,
    dozen: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    install_tiny(tiny_model_files)
    out = tmp_path / "ray.jsonl"
    flags = ["--max-tokens", "8", "--out", str(out)]
    done = edgecap(str(dozen), *flags, "--ray", cluster.address)
    lines = summary_lines(done.stderr)
    assert done.returncode == 1, done.stderr
    assert lines[-1] == "11 captioned, 1 failed, 0 already in the output, 0 skipped"
    assert [x for x in lines if x.startswith(str(dozen / "broken.jpg"))], done.stderr
    on_ray = caption_lines(out)  # each image once
    assert sorted(on_ray) == sorted(str(p) for p in dozen.glob("*.png"))
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(list(r) == ["image", "taskType", "taskUUID", "status", "text"] for r in records)

    local = tmp_path / "local.jsonl"
    code, _, _ = run(capsys, str(dozen), "--max-tokens", "8", "--out", str(local))
    assert code == 1
    assert caption_lines(local) == on_ray  # greedy: the same captions

    again = edgecap(str(dozen), *flags, "--ray", cluster.address, "--resume")
    assert again.returncode == 1  # the broken file is tried again, and fails again
    assert summary_lines(again.stderr)[-1] == (
        "0 captioned, 1 failed, 11 already in the output, 0 skipped"
    )
    assert out.read_text().count("\n") == 11

    # Nothing left to do: the cluster is not even contacted (an address nobody serves).
    (dozen / "broken.jpg").unlink()
    idle = edgecap(str(dozen), *flags, "--ray", f"127.0.0.1:{free_port()}", "--resume")
    assert (idle.returncode, summary_lines(idle.stderr)[-1]) == (
        0,
        "0 captioned, 0 failed, 11 already in the output, 0 skipped",
    )


def engine_actor_pids() -> list[int]:
    """Processes Ray runs the engine actors in (their titles name the actor class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"EngineActor" in title and b"MapWorker" in title:
            pids.append(int(entry.name))
    return pids


def test_an_engine_actor_killed_mid_run_loses_and_duplicates_nothing(
    tiny_model_files: ModelFiles, cluster: Cluster, dozen: Path, tmp_path: Path
) -> None:
    install_tiny(tiny_model_files)
    (dozen / "broken.jpg").unlink()
    for i in range(11, 24):
        write_png(dozen / f"p{i:02}.png", (56 + 28 * (i % 5), 84))
    out = tmp_path / "ray.jsonl"
    env = child_env(RAY_USAGE_STATS_ENABLED="0")
    argv = [str(dozen), "--max-tokens", "64", "--out", str(out), "--ray", cluster.address]
    with (tmp_path / "stderr.txt").open("w+") as stderr:
        driver = subprocess.Popen(
            [sys.executable, "-m", "edgecap", "caption", *argv], env=env, stderr=stderr
        )
        try:
            deadline = time.monotonic() + DEADLINE
            while not (out.exists() and out.read_text().count("\n") >= 2):
                assert driver.poll() is None, "the run ended before an actor was killed"
                assert time.monotonic() < deadline, "no results came back"
                time.sleep(0.05)
            victims = engine_actor_pids()
            assert victims, "no engine actor process found"
            os.kill(victims[0], signal.SIGKILL)
            killed_at = out.read_text().count("\n")
            assert driver.wait(timeout=DEADLINE) == 0
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(30)
        stderr.seek(0)
        assert summary_lines(stderr.read())[-1] == (
            "24 captioned, 0 failed, 0 already in the output, 0 skipped"
        )
    assert killed_at < 24, "the run had finished before the kill"
    assert sorted(caption_lines(out)) == sorted(str(p) for p in dozen.glob("*.png"))


# ---------------------------------------------------------------------------- the model on a node


def test_a_node_finds_the_model_by_digest_or_says_how_to_put_it_there(
    tiny_model_files: ModelFiles, tmp_path: Path
) -> None:
    check = describe_model(tiny_model_files, load_settings())  # not registered: hashed
    assert model_on_this_node(check).text == tiny_model_files.text  # a shared path

    moved = type(check)(
        check.id, tmp_path / "gone.gguf", tmp_path / "gone-mmproj.gguf",
        check.text_sha256, check.mmproj_sha256, check.random_weights,
    )  # fmt: skip
    with pytest.raises(ModelNotReady) as caught:
        model_on_this_node(moved)
    assert f"does not have the model {check.id} (not at {tmp_path / 'gone.gguf'}" in (
        caught.value.message
    )
    assert f"`edgecap models export {check.id} DIR`" in caught.value.message
    assert "`edgecap models import DIR` there" in caught.value.message

    install_tiny(tiny_model_files)  # this node's own registry has the same files
    assert model_on_this_node(moved).text == Registry(load_settings()).resolve(check.id).text

    other = type(check)(
        check.id, moved.text, moved.mmproj, "0" * 64, check.mmproj_sha256, True
    )  # another build of the same name: refused
    with pytest.raises(ModelNotReady):
        model_on_this_node(other)


def test_a_node_without_the_model_is_left_out_and_the_others_caption_everything(
    tiny_model_files: ModelFiles, cluster: Cluster, dozen: Path, tmp_path: Path
) -> None:
    # The driver's own copy, registered by name, then altered (same size): no node finds the
    # model at the driver's path, as if that path were not shared. The head node's registry has
    # the real files; the worker node's registry (its own EDGECAP_HOME) has nothing.
    copy = tmp_path / "driver-model"
    copy.mkdir()
    text, mmproj = copy / "text.gguf", copy / "mmproj.gguf"
    text.write_bytes(tiny_model_files.text.read_bytes())
    mmproj.write_bytes(tiny_model_files.mmproj.read_bytes())
    name = "edgecap-tiny-random"
    Registry(load_settings()).register_local(name, text, mmproj, random_weights=True)
    flip_one_byte(text)
    head = Registry(Settings(home=cluster.head_home))
    head.register_local(name, tiny_model_files.text, tiny_model_files.mmproj, random_weights=True)
    try:
        for extra in ("broken.jpg", *(f"p{i:02}.png" for i in range(6, 11))):
            (dozen / extra).unlink()
        out = tmp_path / "ray.jsonl"
        failed_before = failed_engine_starts(cluster)
        done = edgecap(str(dozen), "--max-tokens", "8", "--out", str(out), "--ray", cluster.address)
    finally:
        head.remove(name)
    assert failed_engine_starts(cluster) == failed_before  # no engine was tried on the worker
    lines = summary_lines(done.stderr)
    assert done.returncode == 0, done.stderr
    assert lines[-1] == "6 captioned, 0 failed, 0 already in the output, 0 skipped"
    assert sorted(caption_lines(out)) == sorted(str(p) for p in dozen.glob("*.png"))
    left_out = [line for line in lines if "does not have the model" in line]
    assert left_out == [
        f"node {cluster.worker} does not have the model {name} (not at "
        f"{text}, nor with the same sha256 in its own registry): put the model files on "
        "storage every node mounts at the same path, or copy a pack made by `edgecap models "
        f"export {name} DIR` to this node and run `edgecap models import DIR` there. It is "
        "left out of this run."
    ], done.stderr  # once, for the worker only


def test_when_no_node_has_the_model_the_run_says_how_to_put_it_there(
    tiny_model_files: ModelFiles, cluster: Cluster, dozen: Path, tmp_path: Path
) -> None:
    install_tiny(tiny_model_files)
    record = Registry(load_settings()).store.model_dir("edgecap-tiny-random") / "manifest.json"
    data = json.loads(record.read_text())
    data["text"]["sha256"] = "0" * 64  # the driver's model is not what any node holds
    record.write_text(json.dumps(data))
    out = tmp_path / "ray.jsonl"
    done = edgecap(str(dozen), "--max-tokens", "4", "--out", str(out), "--ray", cluster.address)
    assert done.returncode == 2, done.stderr
    lines = summary_lines(done.stderr)
    for node in (cluster.head, cluster.worker):
        (line,) = [x for x in lines if x.startswith(f"node {node} does not have the model ")]
        assert line.endswith("`edgecap models import DIR` there. It is left out of this run.")
    assert lines[-1] == (
        "edgecap: error: No node of the Ray cluster has the model edgecap-tiny-random (each "
        "node's reason is above): put the model files on storage every node mounts at the same "
        "path, or copy a pack made by `edgecap models export edgecap-tiny-random DIR` to every "
        "node and run `edgecap models import DIR` on each."
    ), done.stderr
    assert "The Ray run stopped" not in done.stderr  # no pipeline was started
    assert not out.exists() or out.read_text() == ""


def test_more_cpus_per_engine_than_any_node_has_is_refused_not_left_waiting(
    tiny_model_files: ModelFiles, cluster: Cluster, dozen: Path, tmp_path: Path
) -> None:
    install_tiny(tiny_model_files)
    out = tmp_path / "ray.jsonl"
    argv = [str(dozen), "--out", str(out), "--ray", cluster.address, "--cpus-per-engine", "2"]
    done = edgecap(*argv)
    assert (done.returncode, summary_lines(done.stderr)[-1]) == (
        2,
        "edgecap: error: --cpus-per-engine 2 is more CPUs than any node with the model has "
        "(the most is 1): an engine would never start. Ask for fewer.",
    ), done.stderr
    assert not out.exists() or out.read_text() == ""
