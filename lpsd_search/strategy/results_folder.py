"""The results folder (``--out``): a search writes into it only when what it holds is its own.

A folder holds one search's results: ``pareto.json``, ``trials.csv``, the front's weights under
``models/`` and, with the default storage, the study itself in ``study.db``. Another search run
into it would rewrite the front and delete the earlier front's weights, so ``check_results_folder``
refuses, in one line naming what it found, unless the results are those of the study this search
continues: the same study name in the same storage, which holds every front trial ``pareto.json``
lists (with the plan it lists) and every trial with saved weights. Comparing the results with the
study, rather than recording the storage URL somewhere, also protects folders written before the
check existed, and a folder moved elsewhere with its ``study.db`` still continues.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from lpsd_search.errors import UserInputError
from lpsd_search.report.claims import is_claim_study
from lpsd_search.report.record import trial_plan
from lpsd_search.report.results import front_numbers
from lpsd_search.strategy.faults import show_url
from lpsd_search.strategy.storage import default_url, open_storage
from lpsd_search.trial.export import MODELS_DIR, prune_models

PARETO = "pareto.json"
DATABASE = "study.db"
ANOTHER_OUT = "another --out for this search"


def check_results_folder(out: Path, url: str, name: str) -> None:
    """Refuse to run study ``name`` of storage ``url`` into ``out`` when ``out`` holds the
    results of another study (see the module docstring).

    Raises:
        UserInputError: the folder holds another study's results, or results whose study cannot
            be read (an empty or corrupt ``study.db``, a storage without that study).
    """
    pareto, database = out / PARETO, out / DATABASE
    models = _model_numbers(out)
    if not (pareto.is_file() or models or database.is_file()):
        return
    found = _describe(out, pareto, models, database)
    default = _same_file(url, database)
    if database.is_file() and not default:
        raise UserInputError(
            f"{out} holds {found} of a search stored in its study.db, but this search uses "
            f"--storage {show_url(url)}; valid: leave out --storage to continue that search, or "
            f"{ANOTHER_OUT}")
    recorded, points = _read_pareto(pareto, out)
    where = str(database) if default else show_url(url)
    names = _study_names(url, out, found) if not default or database.is_file() else []
    if name not in names:
        if names:
            others = ", ".join(repr(n) for n in names)
            hint = recorded if recorded in names else names[0]
            raise UserInputError(
                f"{out} holds {found} of study {others} in {where}, not of study {name!r}; "
                f"valid: --study {hint} to continue it, or {ANOTHER_OUT}")
        if pareto.is_file() or models:
            missing = (f"{where} holds no study" if not default or database.is_file()
                       else f"there is no {database}")
            raise UserInputError(
                f"{out} holds {found}{_of(recorded)} but {missing}; valid: the --storage and "
                f"--study of the search that wrote them, or {ANOTHER_OUT}")
        return
    if recorded is not None and recorded != name:
        raise UserInputError(
            f"{out}/pareto.json belongs to study {recorded!r}, not {name!r}; valid: --study "
            f"{recorded} to continue it, or {ANOTHER_OUT}")
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    foreign = sorted({n for n, plan in points.items()
                      if n not in trials or trials[n].state != TrialState.COMPLETE
                      or trial_plan(trials[n]) != plan} | {n for n in models if n not in trials})
    if foreign:
        listed = ", ".join(str(n) for n in foreign[:8]) + (" …" if len(foreign) > 8 else "")
        raise UserInputError(
            f"{out} holds {found} of another search: trials {listed} are not those of study "
            f"{name!r} in {where}; valid: the --storage of the search that wrote them, or "
            f"{ANOTHER_OUT}")


def prune_front_models(study: optuna.Study, out_dir: Path) -> None:
    """Delete the saved weights of trials that are neither on the reported front nor running."""
    # Running trials are read before the front: a worker saves its trial's weights before it
    # tells the study, so a trial completing between the two reads is in one of them.
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    prune_models(out_dir, running | front_numbers(study))


def _model_numbers(out: Path) -> list[int]:
    folder = out / MODELS_DIR
    if not folder.is_dir():
        return []
    stems = (path.stem.removeprefix("trial-") for path in folder.glob("trial-*.pt"))
    return sorted(int(stem) for stem in stems if stem.isdigit())


def _describe(out: Path, pareto: Path, models: list[int], database: Path) -> str:
    parts = [name for name, there in ((PARETO, pareto.is_file()), (DATABASE, database.is_file()))
             if there]
    if models:
        parts.append(f"{len(models)} saved model{'s' if len(models) > 1 else ''}")
    return "results (" + ", ".join(parts) + ")"


def _of(recorded: str | None) -> str:
    return "" if recorded is None else f" of study {recorded!r}"


def _same_file(url: str, database: Path) -> bool:
    """Whether ``url`` is the SQLite file ``database`` (however the path is spelt)."""
    if url == default_url(database.parent):
        return True
    if not url.startswith("sqlite:///"):
        return False
    path = Path(url.removeprefix("sqlite:///").split("?", 1)[0])
    return path.resolve() == database.resolve()


def _read_pareto(pareto: Path, out: Path) -> tuple[str | None, dict[int, Any]]:
    """The study ``pareto.json`` names and its points' plans by trial number."""
    if not pareto.is_file():
        return None, {}
    try:
        document = json.loads(pareto.read_text(encoding="utf-8"))
        return (str(document["study"]),
                {int(p["trial"]): p.get("plan", {}) for p in document["points"]})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserInputError(
            f"{pareto} cannot be read ({type(error).__name__}: {error}); valid: move the "
            f"folder's files away to start afresh, or {ANOTHER_OUT}") from None


def _study_names(url: str, out: Path, found: str) -> list[str]:
    """The searches' study names in the storage (promotion claims left out)."""
    try:
        storage = open_storage(url)
        names = optuna.get_all_study_names(storage)
    except Exception as error:  # sqlite3 and sqlalchemy raise many kinds; the message matters
        if not _same_file(url, out / DATABASE):
            raise
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise UserInputError(
            f"{out / DATABASE} cannot be read ({text or type(error).__name__}), so {found} "
            f"cannot be continued; valid: {ANOTHER_OUT} (or restore study.db from a copy)"
        ) from None
    return [n for n in names if not is_claim_study(n)]
