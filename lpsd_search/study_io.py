"""``lpsd-search report`` and ``lpsd-search export``: results and models read back from disk.

``report`` re-creates ``pareto.json`` and ``trials.csv`` from a study's storage alone (any URL the
search accepts), so a search run elsewhere (workers on PostgreSQL, a Ray cluster) can be
reported anywhere. ``export`` writes a front trial's fine-tuned model, kept by the search under
``OUT/models``, as a standalone model file plus a ``torch.export`` program.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import optuna

from lpsd_search.errors import UserInputError
from lpsd_search.export import example_input, export_program, load, model_path
from lpsd_search.measure import measure
from lpsd_search.report import write_results
from lpsd_search.storage import default_url, open_storage

logger = logging.getLogger(__name__)


def load_study(url: str, name: str | None) -> optuna.Study:
    """The named study in ``url``, or its only study when no name is given."""
    storage = open_storage(url)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if name is None:
        if len(names) != 1:
            raise UserInputError(f"storage {url} holds {len(names)} studies; valid: --study "
                                 f"one of {', '.join(names) or '(none)'}")
        name = names[0]
    if name not in names:
        raise UserInputError(f"no study {name!r} in {url}; valid: {', '.join(names) or '(none)'}")
    study = optuna.load_study(study_name=name, storage=storage)
    if "baseline" not in study.user_attrs:
        raise UserInputError(f"study {name!r} in {url} was not made by lpsd-search")
    return study


def report_from_storage(directory: Path | None, url: str | None, name: str | None,
                        out: Path | None) -> tuple[Path, dict[str, Any]]:
    """Write ``pareto.json`` / ``trials.csv`` from storage; returns the folder and document."""
    if url is None:
        if directory is None:
            raise UserInputError("report needs a results folder or --storage; valid: "
                                 "lpsd-search report DIR, or --storage URL --study NAME")
        database = directory / "study.db"
        if not database.is_file():
            raise UserInputError(f"{directory} holds no study.db; valid: a search's --out "
                                 "folder, or --storage URL")
        url = default_url(directory)
    target = out or directory
    if target is None:
        raise UserInputError("report --storage needs --out DIR (where to write the files)")
    return target, write_results(load_study(url, name), target)


def export_trial(directory: Path, trial: int, out: Path) -> list[Path]:
    """Copy trial ``trial``'s saved model to ``out`` and write ``out`` as ``.pt2`` beside it.

    The model is loaded back with ``lpsd_search.load`` and its parameter count checked against
    the trial's measured ``params`` before anything is written.

    Raises:
        UserInputError: no such results folder, or the trial has no saved model.
    """
    pareto = directory / "pareto.json"
    if not pareto.is_file():
        raise UserInputError(f"{directory} holds no pareto.json; valid: a search's --out folder")
    document = json.loads(pareto.read_text(encoding="utf-8"))
    points = {int(p["trial"]): p for p in document["points"]}
    source = model_path(directory, trial)
    if not source.is_file():
        valid = ", ".join(str(n) for n in sorted(points)
                          if model_path(directory, n).is_file()) or "(none saved)"
        raise UserInputError(f"trial {trial} has no saved model in {directory / 'models'} "
                             f"(only front trials keep their weights); valid: --trial {valid}")
    model = load(source)
    params = measure(model, example_input(source)).params
    expected = points.get(trial, {}).get("params")
    if expected is not None and params != expected:
        raise RuntimeError(f"trial {trial}: the rebuilt model has {params} params, the front "
                           f"point {expected}")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, out)
    program = export_program(model, example_input(source), out.with_suffix(".pt2"))
    logger.info("trial %d: %d params, exported to %s and %s", trial, params, out, program)
    return [out, program]
