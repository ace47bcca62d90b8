"""The Python API: ``lpsd_search.search(...)`` mirrors ``lpsd-search search``.

Example:
    >>> import lpsd_search
    >>> result = lpsd_search.search("digits-cnn", "digits", budget=0.3, trials=12,
    ...                             out="runs/digits")  # doctest: +SKIP
    >>> best = max(result.pareto, key=lambda p: p["accuracy"])  # doctest: +SKIP
    >>> result.export(best["trial"], "digits-best.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpsd_search.backends.optuna import search as run_search
from lpsd_search.config import BaselineConfig, SearchConfig, SearchOptions, TrainConfig


@dataclass(frozen=True)
class SearchResult:
    """What a search left in its results folder.

    Attributes:
        out: the results folder.
        document: the ``pareto.json`` document.
    """

    out: Path
    document: dict[str, Any]

    @property
    def pareto(self) -> list[dict[str, Any]]:
        """The front: one dict per point (trial, params, bytes, flops, accuracy, plan …)."""
        return list(self.document["points"])

    @property
    def trials(self) -> list[dict[str, str]]:
        """Every trial as a row of ``trials.csv``."""
        with (self.out / "trials.csv").open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def export(self, trial: int, path: str | Path) -> list[Path]:
        """Write a front trial's model (``.pt``) and its ``torch.export`` program (``.pt2``)."""
        from lpsd_search.trial.export import export_trial

        return export_trial(self.out, trial, Path(path))


def search(model: str, data: str = "digits", *, budget: float | str | Sequence[float | str],
           out: str | Path = "lpsd-out", checkpoint: str | None = None, space: str = "default",
           objectives: str = "default", trials: int = 20, finetune_steps: int = 200,
           finetune_lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
           sampler: str = "tpe", strategy: str = "global-local", global_share: float = 0.4,
           warm_starts: Sequence[str] = ("uniform", "vbmf", "alds", "lpsd", "alpsd"),
           promote_steps: int | None = None, distill: float = 0.0,
           storage: str | None = None, study: str = "lpsd-search", device: str = "auto",
           train_epochs: float = 30.0, latency_batch: int | None = None) -> SearchResult:
    """Run (or continue) a search; every argument is the CLI option of the same name.

    Args:
        model: model spec (``digits-cnn``, ``vgg16:width=0.25``, ``pkg.mod:factory`` …).
        data: data spec (``digits``, ``fashion-mnist``, ``cifar10:DIR`` …).
        budget: one budget or several (``0.1``, ``50000``, ``"flops=0.3"``).
        out: results folder.
        checkpoint: trained weights; None trains and caches a baseline.
        promote_steps: fine-tune steps of promoted trials (default 3× ``finetune_steps``).

    Returns:
        The result, read from the files the search wrote.
    """
    budgets = (tuple(str(b) for b in budget) if isinstance(budget, (list, tuple))
               else (str(budget),))
    options = SearchOptions(
        model=model, data=data, budget=budgets, out=Path(out), checkpoint=checkpoint,
        space=space, objectives=objectives, latency_batch=latency_batch,
        finetune=TrainConfig(finetune_steps, finetune_lr, batch_size, seed=seed,
                             distill_alpha=distill),
        search=SearchConfig(trials=trials, seed=seed, storage=storage, study_name=study,
                            warm_starts=tuple(warm_starts), sampler=sampler, strategy=strategy,
                            global_share=global_share,
                            promote_steps=3 * finetune_steps if promote_steps is None
                            else promote_steps),
        baseline=BaselineConfig(epochs=train_epochs, seed=seed), device=device,
    )
    return SearchResult(Path(out), run_search(options))
