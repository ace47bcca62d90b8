"""A terminal progress bar for searches: trials done and the best front so far."""

from __future__ import annotations

import sys
from types import TracebackType

import optuna
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lpsd_search.report.record import has_header, study_baseline
from lpsd_search.report.results import front, study_budgets, study_objectives, trial_rows
from lpsd_search.strategy.controller import completed_count


class SearchProgress:
    """Shows ``trials completed / asked`` and a one-line summary of the current front.

    It draws only when standard error is a terminal, so logs and CI output stay clean.

    Args:
        total: finished trials the search aims at.
        enabled: force on or off; None decides from ``sys.stderr.isatty()``.
    """

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total = total
        self._progress = Progress(
            TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.description}"), transient=True,
        )
        self._task = self._progress.add_task("", total=total)

    def __enter__(self) -> SearchProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self.enabled:
            self._progress.stop()

    def update(self, study: optuna.Study) -> None:
        """Refresh from the study (call after every trial)."""
        if not self.enabled:
            return
        done = completed_count(study)
        if not has_header(study):
            return
        baseline = study_baseline(study)
        points = front(trial_rows(study), study_budgets(study), study_objectives(study))
        summary = f"front: {len(points)} points"
        if points and baseline:
            best = max(points, key=lambda p: p.measures["accuracy"])
            ratio = baseline["params"] / best.measures["params"]
            summary += f", best {best.measures['accuracy']:.2%} at {ratio:.1f}×"
        self._progress.update(self._task, completed=done, description=summary)
