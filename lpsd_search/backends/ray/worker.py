"""The worker side of the Ray Tune backend: one ``TrialRunner`` per worker process.

The driver puts the data splits and the dense model's weights into Ray's object store once
(``Shipment``); each Tune trial actor fetches them the first time it runs a trial of that search
and keeps the runner it builds from them in a module-level cache. With ``reuse_actors=True`` an
actor runs many trials, so the large objects cross the network once per node, are deserialised
once per worker process, and never once per trial. Nodes need the package installed, but neither
the data nor the checkpoint on their disks, and no node retrains the baseline.

Each Tune trial runs one job of the search controller (``strategy.ask_tell.Job``, the trial's
config) and reports once: the objective values, the constraints and the trial's user attributes
as JSON, or the reason it failed; a job that keeps its weights adds them as a Tune checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpsd_search.report.record import NODE, RAY_NODE_ID

if TYPE_CHECKING:
    from lpsd_search.config import SearchOptions
    from lpsd_search.strategy.runner import TrialRunner

logger = logging.getLogger(__name__)

JOB_KEY = "lpsd_job"
"""Config key of the job a Tune trial runs (``strategy.ask_tell.Job.to_dict``)."""
FAIL_KEY = "lpsd_fail_reason"
"""A failed job's error message."""
ERROR_KEY = "lpsd_error_type"
"""A failed job's error class name: the driver raises the same kind of error (bad input stops
the search, divergence and memory advice name their cause, as in-process)."""
VALUES_KEY = "lpsd_values"
CONSTRAINTS_KEY = "lpsd_constraints"
OUTCOME_KEY = "lpsd_outcome"
NODE_KEY = NODE
"""Result key of the node label; it also lands in the trial's attributes under the same key."""
NODE_ID_KEY = RAY_NODE_ID
MODEL_FILE = "model.pt"
"""The job's saved weights in its Tune checkpoint (the file ``lpsd-search export`` reads)."""


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


def trial_folder(trial_id: str) -> str:
    """A short folder name per Tune trial (the default spells out every parameter)."""
    return f"trial_{trial_id}"


def trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator``: ``trial_folder`` of the trial's id."""
    return trial_folder(trial.trial_id)


def node_label() -> tuple[str, str]:
    """``host:node-id-prefix`` (readable, and unique when several nodes share a host), node id."""
    import ray

    node_id = str(ray.get_runtime_context().get_node_id())
    return f"{socket.gethostname()}:{node_id[:8]}", node_id


def trainable(config: dict[str, Any], shipment: Shipment) -> None:
    """The Tune function trainable: run one job of the controller and report it once.

    An error in the job itself (a diverged fine-tune, say) is reported as a failed result,
    since retrying it would fail again; bad user input too, marked so that the driver stops the
    search. A lost worker or node raises inside Ray and Tune retries the trial
    (``FailureConfig``). A job that keeps its weights reports them as a Tune checkpoint holding
    the file ``lpsd-search export`` reads; the driver copies it to ``OUT/models``.
    """
    from ray import tune

    from lpsd_search.strategy.ask_tell import Job

    job = Job.from_dict(config[JOB_KEY])
    runner = worker_runner(shipment)
    node, node_id = node_label()
    where = {NODE_KEY: node, NODE_ID_KEY: node_id}
    try:
        outcome = runner.run(job.params, job.attrs, job.steps, test=job.test)
    except Exception as error:  # recorded as a failed trial by the driver
        logger.warning("job of trial %d failed on %s: %s: %s", job.number, node,
                       type(error).__name__, error)
        tune.report({FAIL_KEY: str(error), ERROR_KEY: type(error).__name__, **where})
        return
    metrics = {
        VALUES_KEY: [float(v) for v in outcome.values],
        CONSTRAINTS_KEY: [float(c) for c in outcome.constraints],
        OUTCOME_KEY: json.dumps({**outcome.attrs, **where}, default=str),
        **where,
    }
    if not (job.save and outcome.model is not None):
        tune.report(metrics)
        return
    from lpsd_search.trial.export import save_trial_model

    with tempfile.TemporaryDirectory() as folder:
        saved = save_trial_model(Path(folder), job.number, outcome.model,
                                 plan=outcome.attrs["plan"], measures=outcome.attrs,
                                 model_spec=runner.options.model, data=runner.data)
        saved.rename(Path(folder) / MODEL_FILE)
        for leftover in Path(folder).iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
