"""Caption a folder or dataset on a Ray cluster: Ray Data reads, engine actors caption.

The driver (this process) finds the images and opens the same :class:`Ledger` as a local run:
the same ``--out`` records, sidecars, journal and resume. With ``--resume`` it hashes each file
to leave already-done images out: they are never sent to the cluster. The rest go through a Ray
Data pipeline: :func:`read_images` tasks read, decode and resize images on the cluster's nodes;
:class:`EngineActor` s (one model each, ``num_cpus`` = ``--cpus-per-engine``) caption them;
results stream back to the driver, which stores each one as it arrives.

Before the pipeline, each node is checked for the model (:mod:`edgecap.batch.ray_nodes`): a
node without it is reported once with the fix-it message and left out, and the engines run only
on the nodes that have it (none: the run stops before it starts, exit 2).

Fault tolerance is Ray's: an engine actor that dies (SIGKILL, OOM) is restarted
(``max_restarts``) and the batch it held is retried (``max_task_retries``); the driver writes only
what comes back, so nothing is written twice. An actor that cannot find the model (by digest:
deleted since the check) fails its start with the fix-it message; Ray Data replaces it, and fails
the run only when actors keep dying before any starts.
"""

from __future__ import annotations

import logging
import pickle
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgecap.batch.journal import Ledger, image_key, job_identity
from edgecap.batch.model_check import ModelCheck, model_on_this_node
from edgecap.batch.options import CaptionOptions, RunOptions
from edgecap.batch.outcomes import AlreadyDone, Captioned, Failed, Outcome, Summary
from edgecap.batch.ray_nodes import (
    Node,
    Notice,
    alive_nodes,
    nodes_with_model,
    only_on,
    ray_reason,
    this_node,
)
from edgecap.batch.run import OnOutcome, existing_sidecar, refuse_sidecar, sidecar_owners
from edgecap.batch.sources import ImageItem
from edgecap.config import Settings
from edgecap.errors import DependencyError, EdgecapError, InvalidParameter
from edgecap.protocol import result_item
from edgecap.records import CaptionResult
from edgecap.registry.digests import sha256_file

RAY_MISSING = "--ray needs Ray, an optional extra: pip install 'edgecap[ray]'"
READ_CPUS = 0.25  # a read task decodes and resizes one image: light next to an engine
RESTARTS = 4  # an engine actor that dies is restarted this often ...
TASK_RETRIES = 4  # ... and the images it held retried this often
# Engines that fail to start (no model on their node) are replaced; this many starts failing in
# a row, per engine, stop the run.
INIT_DEATHS_PER_ENGINE = 2


@dataclass(frozen=True)
class RayOptions:
    """Where the cluster is and how many engines to run on it."""

    address: str | None = None  # None: start a local Ray; "auto", or "host:port"
    engines: int | None = None  # default: as many as the CPUs of the nodes with the model allow
    cpus_per_engine: int | None = None  # default: the smallest node's (of those with the model)
    object_store_memory: int | None = None  # only for a local Ray started here


@dataclass(frozen=True)
class _Job:
    """What every task and actor of the pipeline needs (pickled once into each)."""

    settings: Settings
    options: CaptionOptions
    job: str
    model: ModelCheck
    threads: int
    done_keys: frozenset[str] = frozenset()  # for URLs, whose content only a read task knows


def import_ray() -> Any:
    """The ``ray`` module, or a message naming the extra to install."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise DependencyError(RAY_MISSING) from None
    return ray


def caption_on_ray(
    items: Sequence[ImageItem],
    model: ModelCheck,
    settings: Settings,
    options: CaptionOptions,
    run: RunOptions,
    cluster: RayOptions,
    *,
    on_outcome: OnOutcome | None = None,
    on_notice: Notice | None = None,
) -> Summary:
    """Caption ``items`` on a Ray cluster; report each outcome as it arrives; return the counts.

    The same outcomes, records and resume as :func:`edgecap.batch.caption_many`, in the order
    the cluster finishes them. Each node left out for lacking the model is told to
    ``on_notice`` (default: a logged warning).
    """
    ray = import_ray()
    job = job_identity(model.id, settings, options)
    ledger = Ledger(run, items)
    summary = Summary()

    def report(outcome: Outcome) -> None:
        summary.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    try:
        todo = _triage(items, job, ledger, run, summary, report)
        if todo:
            _connect(ray, cluster)
            try:
                nodes = nodes_with_model(ray, alive_nodes(ray), model, on_notice)
                engines, cpus = engine_shape(nodes, cluster)
                engines = min(engines, len(todo))
                urls = any(image.path is None for image in todo)
                done = ledger.done_keys if urls else frozenset()
                spec = _Job(settings, options, job, model, threads=cpus, done_keys=done)
                context = ray.data.DataContext.get_current()
                context.max_consecutive_actor_init_deaths = INIT_DEATHS_PER_ENGINE * engines
                try:
                    pipeline = _pipeline(ray, todo, spec, nodes, engines)
                    for row in pipeline.iter_rows():
                        outcome = _outcome(pickle.loads(row["out"]), todo, spec, run)
                        if isinstance(outcome, Captioned):
                            ledger.store(outcome, image_key(job, outcome.image, outcome.sha256))
                        report(outcome)
                except ray.exceptions.RayError as exc:
                    raise EdgecapError(f"The Ray run stopped: {ray_reason(exc)}") from exc
            finally:
                ray.shutdown()
    finally:
        ledger.close()
    return summary


def _triage(
    items: Sequence[ImageItem],
    job: str,
    ledger: Ledger,
    run: RunOptions,
    summary: Summary,
    report: OnOutcome,
) -> list[ImageItem]:
    """What the driver settles itself (refused, already done, skipped); the rest, to send."""
    owners = sidecar_owners(items) if run.sidecars else {}
    todo = []
    for image in items:
        refused = refuse_sidecar(image, run, owners)
        if refused is not None:
            report(refused)
            continue
        key = _file_key(job, image) if run.resume else None
        if ledger.is_done(key, image):
            report(AlreadyDone(image))
            continue
        skipped = existing_sidecar(image, run)
        if skipped is not None:
            report(skipped)
            continue
        why = ledger.why_redone(key) if key is not None else None
        if why is not None:
            summary.redone[why] += 1
        todo.append(image)
    return todo


def _file_key(job: str, image: ImageItem) -> str | None:
    if image.path is None:
        return None  # a URL: its content is known once a read task fetched it
    try:
        return image_key(job, image, sha256_file(image.path))
    except OSError:
        return None  # the read task reports it


def _connect(ray: Any, cluster: RayOptions) -> None:
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "logging_level": logging.WARNING,
    }
    if cluster.address is None and cluster.object_store_memory is not None:
        kwargs["object_store_memory"] = cluster.object_store_memory
    try:
        ray.init(address=cluster.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EdgecapError(
            f"Could not connect to the Ray cluster at {cluster.address}: {exc}. Check the "
            "address (`ray status` on the head node prints it), or omit it to start Ray here."
        ) from exc
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows its own, per image
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "disabled"
    # An engine that cannot start is replaced, and logged with its traceback; the driver says
    # the reason once, if the run stops for it.
    logging.getLogger("ray.data._internal.execution.operators.actor_pool_map_operator").setLevel(
        logging.ERROR
    )
    logging.getLogger("ray.data.exceptions").setLevel(logging.CRITICAL)  # its full stack trace


def engine_shape(nodes: Sequence[Node], cluster: RayOptions) -> tuple[int, int]:
    """``(engines, cpus per engine)``: as asked, else filling the CPUs of ``nodes`` (those
    with the model)."""
    node_cpus = [node.cpus for node in nodes]
    cpus = cluster.cpus_per_engine or min(node_cpus)
    if cpus > max(node_cpus):
        raise InvalidParameter(
            f"--cpus-per-engine {cpus} is more CPUs than any node with the model has (the "
            f"most is {max(node_cpus)}): an engine would never start. Ask for fewer."
        )
    engines = cluster.engines or max(1, sum(n // cpus for n in node_cpus))
    return engines, cpus


def _pipeline(
    ray: Any, todo: list[ImageItem], spec: _Job, nodes: Sequence[Node], engines: int
) -> Any:
    """from_items -> read tasks -> engine actors, only on ``nodes``. An engine takes its CPUs
    less what one read task takes, so a read can always run beside it on its node."""
    rows = [{"item": pickle.dumps((index, image))} for index, image in enumerate(todo)]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    loaded = dataset.map_batches(
        read_images,
        fn_kwargs={"spec": spec},
        batch_size=1,
        num_cpus=READ_CPUS,
        compute=ray.data.TaskPoolStrategy(size=engines * 2),  # a bounded read-ahead
    )
    with warnings.catch_warnings():
        # Ray 2.60 warns that these will become named parameters; they are the ones it reads.
        warnings.simplefilter("ignore", DeprecationWarning)
        return loaded.map_batches(
            EngineActor,
            fn_constructor_kwargs={"spec": spec},
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=engines),
            num_cpus=spec.threads - READ_CPUS,
            label_selector=only_on(nodes),
            num_gpus=1 if gpu_build() else None,
            max_restarts=RESTARTS,
            max_task_retries=TASK_RETRIES,
        )


def gpu_build() -> bool:
    """True if this llama.cpp build offloads to a GPU: each engine then asks Ray for one
    (the nodes are expected to run the same build as the driver)."""
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


# ---------------------------------------------------------------------------- on the cluster


def _error(exc: EdgecapError) -> dict[str, Any]:
    return {"message": exc.message, "code": exc.code, "status": exc.status}


def read_images(batch: dict[str, np.ndarray], spec: _Job) -> dict[str, list[bytes]]:
    """A Ray Data task: read, decode and resize each image of the batch (or note its error)."""
    from edgecap.inputs.images import load_image

    out = []
    for blob in batch["item"]:
        index, image = pickle.loads(blob)
        try:
            loaded = load_image(
                image.source,
                spec.settings,
                min_pixels=spec.options.min_pixels,
                max_pixels=spec.options.max_pixels,
            )
            if image_key(spec.job, image, loaded.sha256) in spec.done_keys:
                out.append(pickle.dumps({"index": index, "done": True}))
            else:
                out.append(pickle.dumps({"index": index, "loaded": loaded}))
        except EdgecapError as exc:
            out.append(pickle.dumps({"index": index, "error": _error(exc)}))
    return {"item": out}


class EngineActor:
    """A Ray Data actor: one engine, its model found and checked by digest when it starts."""

    def __init__(self, spec: _Job) -> None:
        from edgecap.engine.engine import Engine

        self.spec = spec
        files = model_on_this_node(spec.model, node=this_node())
        settings = spec.settings.model_copy(update={"n_threads": spec.threads})
        self.engine = Engine(files, settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[bytes]]:
        return {"out": [pickle.dumps(self._caption(pickle.loads(b))) for b in batch["item"]]}

    def _caption(self, read: dict[str, Any]) -> dict[str, Any]:
        loaded = read.get("loaded")
        if loaded is None:
            return read  # its read failed, or it is done: that goes back as is
        done: dict[str, Any] = {"index": read["index"], "sha256": loaded.sha256}
        try:
            done["result"] = asdict(self.engine.caption(self.spec.options.request(loaded)))
        except EdgecapError as exc:
            done["error"] = _error(exc)
        return done


# ---------------------------------------------------------------------------- back on the driver


def _outcome(done: dict[str, Any], todo: list[ImageItem], spec: _Job, run: RunOptions) -> Outcome:
    image = todo[done["index"]]
    if done.get("done"):
        return AlreadyDone(image)  # a URL whose content the journal has (read, not captioned)
    error = done.get("error")
    if error is not None:
        return Failed(image, EdgecapError(**error))
    result = CaptionResult(**done["result"])
    item = result_item(
        result,
        str(uuid.uuid4()),
        include_cost=run.include_cost,
        cost_per_second=spec.settings.cost_per_second,
    )
    return Captioned(image, done["sha256"], result, item)
