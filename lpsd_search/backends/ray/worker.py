"""The worker side of the Ray Tune backend: one ``TrialRunner`` per worker process.

The driver puts the data splits and the dense model's weights into Ray's object store once
(``Shipment``); each Tune trial actor fetches them the first time it runs a trial of that search
and keeps the runner it builds from them in a module-level cache. With ``reuse_actors=True`` an
actor runs many trials, so the large objects cross the network once per node, are deserialised
once per worker process, and never once per trial. Nodes need the package installed, but neither
the data nor the checkpoint on their disks, and no node retrains the baseline.

Results go back to Tune as flat metrics: the objectives under ``objective_<name>`` (what
``OptunaSearch`` reads), the constraints, and the trial's user attributes as JSON.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lpsd_search.errors import UserInputError
from lpsd_search.report.record import NODE, RAY_NODE_ID

if TYPE_CHECKING:
    from lpsd_search.config import SearchOptions
    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)

ATTRS_KEY = "lpsd_attrs"
"""Config key holding the Optuna trial's user attributes (a warm start's ``plan_override``)."""
FAIL_KEY = "lpsd_fail_reason"
CONSTRAINTS_KEY = "lpsd_constraints"
OUTCOME_KEY = "lpsd_outcome"
NODE_KEY = NODE
"""Result key of the node label; it also lands in the trial's attributes under the same key."""
NODE_ID_KEY = RAY_NODE_ID
OBJECTIVE_PREFIX = "objective_"


def metric_name(objective: str) -> str:
    """The Tune metric under which ``objective`` is reported."""
    return f"{OBJECTIVE_PREFIX}{objective}"


@dataclass(frozen=True)
class Shipment:
    """What every worker needs, sent once: small options inline, large objects by reference.

    Attributes:
        key: identifies the search; a worker rebuilds its runner only when the key changes.
        options: the search's options (the device is resolved again on the worker).
        data: object reference to the ``DataSplits``.
        weights: object reference to the dense model's ``state_dict`` (CPU tensors).
        threads: torch threads per trial (the CPUs Tune reserved for it).
    """

    key: str
    options: SearchOptions
    data: Any
    weights: Any
    threads: int = 1


_cached: tuple[str, TrialRunner] | None = None


def worker_runner(shipment: Shipment) -> TrialRunner:
    """The runner of ``shipment``'s search, built on this worker's first trial of it."""
    global _cached
    if _cached is not None and _cached[0] == shipment.key:
        return _cached[1]
    import ray
    import torch

    from lpsd_search.strategy.runner import TrialRunner
    from lpsd_search.trial.baseline import new_model

    torch.set_num_threads(max(1, shipment.threads))
    data, weights = ray.get([shipment.data, shipment.weights])
    model = new_model(shipment.options.model, data)
    model.load_state_dict(weights)
    # The weights came from the driver: nothing on this node is read or trained.
    options = replace(shipment.options, checkpoint=None)
    if options.runtime.threads is None:
        # The CPUs Tune reserved for the trial, not the node's free cores, bound its threads.
        options = replace(options, runtime=replace(options.runtime, threads=shipment.threads))
    if options.device == "auto" and not ray.get_gpu_ids():
        # No GPU reserved for this trial (--gpus-per-trial 0): stay off the node's GPUs.
        options = replace(options, device="cpu")
    runner = TrialRunner(options, data, model)
    _cached = (shipment.key, runner)
    logger.info("built the trial runner of %s on %s", shipment.key, socket.gethostname())
    return runner


def trial_dirname(trial: Any) -> str:
    """A short folder name per Tune trial (the default spells out every parameter)."""
    return f"trial_{trial.trial_id}"


def node_label() -> tuple[str, str]:
    """``host:node-id-prefix`` (readable, and unique when several nodes share a host), node id."""
    import ray

    node_id = str(ray.get_runtime_context().get_node_id())
    return f"{socket.gethostname()}:{node_id[:8]}", node_id


def trainable(config: dict[str, Any], shipment: Shipment) -> None:
    """The Tune function trainable: run one trial and report its outcome once.

    An error in the trial itself (a diverged fine-tune, say) is reported as a failed result,
    since retrying it would fail again; a lost worker or node raises inside Ray and Tune retries
    the trial (``FailureConfig``). Bad user input is raised: it fails every trial alike.
    """
    from ray import tune

    runner = worker_runner(shipment)
    distributions = runner.distributions()
    params = {name: value for name, value in config.items() if name in distributions}
    attrs = dict(config.get(ATTRS_KEY) or {})
    node, node_id = node_label()
    where = {NODE_KEY: node, NODE_ID_KEY: node_id}
    try:
        outcome = runner.run(params, attrs)
    except UserInputError:
        raise
    except Exception as error:  # recorded as a failed trial; the search goes on
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        logger.warning("trial failed on %s: %s", node, reason)
        # Tune insists on every searcher metric in a result; NaN marks them as missing.
        tune.report({**{metric_name(n): math.nan for n in runner.objective_names},
                     FAIL_KEY: reason, **where})
        return
    attrs_out = {**outcome.attrs, **where}
    tune.report({
        **{metric_name(n): float(v)
           for n, v in zip(runner.objective_names, outcome.values, strict=True)},
        CONSTRAINTS_KEY: [float(c) for c in outcome.constraints],
        OUTCOME_KEY: json.dumps(attrs_out, default=str),
        **where,
    })
