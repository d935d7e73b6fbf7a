"""Which nodes of a Ray cluster may run an engine: each one checked for the model first.

Before the pipeline starts, :func:`nodes_with_model` runs one small task pinned to each alive
node that has CPUs (``NodeAffinitySchedulingStrategy(soft=False)``). It looks for the driver's
model there exactly as an engine actor does when it starts
(:func:`edgecap.batch.model_check.model_on_this_node`). A node without it is reported once, with
the fix, and left out; :func:`only_on` keeps the engine actors on the nodes that passed. The
actor still checks when it starts, so a model deleted after this check fails that actor with the
same message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from edgecap.batch.model_check import ModelCheck, how_to_place, model_on_this_node
from edgecap.errors import EdgecapError, ModelNotReady

PROBE_CPUS = 0.05  # the check hashes the model files: I/O, not compute
PROBE_DEADLINE = 300.0  # seconds for every node to start a worker and hash the model (7B: 4.7 GB)
NODE_ID_LABEL = "ray.io/node-id"  # a label Ray gives every node, its id as the value

Notice = Callable[[str], object]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Node:
    """An alive node of the cluster that has CPUs for an engine."""

    id: str
    ip: str
    cpus: int

    @property
    def name(self) -> str:
        return node_name(self.id, self.ip)


def node_name(node_id: str, ip: str) -> str:
    """How messages name a node: its address (as Ray reports it) and the start of its id."""
    return f"{ip} (id {node_id[:12]}…)"


def this_node() -> str:
    """The name of the node the calling task or actor runs on."""
    import ray

    return node_name(ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address())


def alive_nodes(ray: Any) -> list[Node]:
    """The cluster's alive nodes with at least one CPU (a head started with 0 CPUs is not one)."""
    nodes = []
    for node in ray.nodes():
        cpus = int(node["Resources"].get("CPU", 0))
        if node.get("Alive") and cpus > 0:
            nodes.append(Node(node["NodeID"], node["NodeManagerAddress"], cpus))
    return nodes


def probe(check: ModelCheck, name: str) -> str | None:
    """On a node: None if it holds the model's bytes, else the message saying how to fix it."""
    try:
        model_on_this_node(check, node=name)
    except ModelNotReady as exc:
        return exc.message
    return None


def nodes_with_model(
    ray: Any, nodes: Sequence[Node], check: ModelCheck, notice: Notice | None = None
) -> list[Node]:
    """The ``nodes`` that hold the model; each other one is told to ``notice`` once, with the
    fix. Raises ModelNotReady if none has it (or there are no nodes with CPUs)."""
    if not nodes:
        raise EdgecapError(
            "The Ray cluster has no alive node with CPUs for an engine (`ray status` shows its "
            "resources): start a worker node, or start the head without --num-cpus 0."
        )
    problems = _probe_all(ray, nodes, check)
    for problem in problems.values():
        (notice or log.warning)(f"{problem} It is left out of this run.")
    healthy = [node for node in nodes if node.id not in problems]
    if not healthy:
        raise ModelNotReady(
            f"No node of the Ray cluster has the model {check.id} (each node's reason is "
            f"above): {how_to_place(check.id, every_node=True)}",
            parameter="model",
        )
    return healthy


def _probe_all(ray: Any, nodes: Sequence[Node], check: ModelCheck) -> dict[str, str]:
    """The problem of each node that failed the check (or did not answer in time), by id."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=PROBE_CPUS, max_retries=0)(probe)
    refs = {
        node.id: task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.id, soft=False)
        ).remote(check, node.name)
        for node in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=PROBE_DEADLINE)
    answered = set(ready)
    problems = {}
    for node in nodes:
        ref = refs[node.id]
        if ref not in answered:
            ray.cancel(ref, force=True)
            problems[node.id] = (
                f"node {node.name} did not finish checking the model within "
                f"{PROBE_DEADLINE:.0f} s (busy, or its model storage is slow)."
            )
            continue
        try:
            why = ray.get(ref)
        except ray.exceptions.RayError as exc:
            why = f"node {node.name} could not check the model: {ray_reason(exc).rstrip('.')}."
        if why is not None:
            problems[node.id] = why
    return problems


def only_on(nodes: Sequence[Node]) -> dict[str, str]:
    """A label selector for "one of these nodes", for the engine actors.

    Ray 2.60 schedules Ray Data actors by ``label_selector`` (the same path Ray Data itself
    takes to pin local reads to the driver's node, instead of a node-affinity strategy), and
    every node carries its id as the ``ray.io/node-id`` label; ``in(a, b)`` is the selector
    syntax for any of several values. A custom resource per healthy node would need the nodes
    restarted; a node-affinity strategy names a single node, and a pool needs several.
    """
    return {NODE_ID_LABEL: f"in({', '.join(node.id for node in nodes)})"}


def ray_reason(exc: Exception) -> str:
    """The line of a Ray error that says what went wrong: edgecap's own message if there is one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ours = [line for line in lines if line.startswith("edgecap.errors.")]
    if ours:
        return ours[-1].split(": ", 1)[-1]
    return lines[-1] if lines else type(exc).__name__
