"""``lpsd-search report`` and ``lpsd-search export``: results and models read back from disk.

``report`` re-creates ``pareto.json`` and ``trials.csv`` from a study's storage alone (any URL the
search accepts), so a search run elsewhere (workers on PostgreSQL, a Ray cluster) can be
reported anywhere. ``export`` writes a front trial's fine-tuned model, kept by the search under
``OUT/models``, as a standalone model file plus a ``torch.export`` program.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from lpsd_search.errors import UserInputError
from lpsd_search.report.claims import is_claim_study
from lpsd_search.report.record import has_header, set_min_accuracy
from lpsd_search.report.results import write_results
from lpsd_search.strategy.storage import default_url, open_storage
from lpsd_search.trial.preflight import check_output_dir

logger = logging.getLogger(__name__)


def load_study(url: str, name: str | None) -> optuna.Study:
    """The named study in ``url``, or its only study when no name is given."""
    storage = open_storage(url)
    # Promotion claims are marker studies of their own (``strategy.promotion``), not searches.
    names = [n for n in optuna.get_all_study_names(storage) if not is_claim_study(n)]
    if name is None:
        if len(names) != 1:
            raise UserInputError(f"storage {url} holds {len(names)} studies; valid: --study "
                                 f"one of {', '.join(names) or '(none)'}")
        name = names[0]
    if name not in names:
        raise UserInputError(f"no study {name!r} in {url}; valid: {', '.join(names) or '(none)'}")
    study = optuna.load_study(study_name=name, storage=storage)
    if not has_header(study):
        raise UserInputError(f"study {name!r} in {url} was not made by lpsd-search")
    return study


def report_from_storage(directory: Path | None, url: str | None, name: str | None,
                        out: Path | None, min_accuracy: float | None = None
                        ) -> tuple[Path, dict[str, Any]]:
    """Write ``pareto.json`` / ``trials.csv`` from storage; returns the folder and document.

    A ``min_accuracy`` is stored with the study as its reports' usefulness floor from now on.
    """
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
    check_output_dir(target)
    study = load_study(url, name)
    if min_accuracy is not None:
        set_min_accuracy(study, min_accuracy)
    return target, write_results(study, target)


