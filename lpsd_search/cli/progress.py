"""Progress of a search: a terminal bar, or one log line per finished trial elsewhere.

On a terminal a bar shows trials completed out of the target and a summary of the current
front. Piped or logged output (CI, ``nohup``, a notebook, the Python API) cannot redraw a bar, so
there every finished trial gets one INFO line instead: its number, size, accuracy and time.
"""

from __future__ import annotations

import logging
import sys
from types import TracebackType

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lpsd_search.report.record import (
    fail_reason,
    has_header,
    study_baseline,
    trial_measures,
    trial_seconds,
)
from lpsd_search.report.results import front, study_budgets, study_objectives, trial_rows
from lpsd_search.strategy.controller import completed_count

logger = logging.getLogger("lpsd_search.progress")


def trial_line(trial: FrozenTrial, baseline: dict[str, float], done: int, total: int) -> str:
    """``trial 7 complete (3/20): 4,810 params (5.4×), val acc 98.05%, test 98.61%, 12.3 s``,
    or ``trial 7 failed (3/20): REASON, 2.1 s``."""
    where = f"trial {trial.number} {trial.state.name.lower()} ({done}/{total})"
    seconds = trial_seconds(trial)
    if trial.state != TrialState.COMPLETE:
        return f"{where}: {fail_reason(trial) or 'no reason recorded'}, {seconds:.1f} s"
    measures = trial_measures(trial)
    parts = []
    params = measures.get("params")
    if params:
        ratio = f" ({baseline['params'] / params:.1f}×)" if baseline.get("params") else ""
        parts.append(f"{int(params):,} params{ratio}")
    if "accuracy" in measures:
        parts.append(f"val acc {measures['accuracy']:.2%}")
    if "test_accuracy" in measures:
        parts.append(f"test {measures['test_accuracy']:.2%}")
    parts.append(f"{seconds:.1f} s")
    return f"{where}: {', '.join(parts)}"


class SearchProgress:
    """Shows ``trials completed / target`` and the current front, or logs each finished trial.

    Args:
        total: finished trials the search aims at.
        enabled: draw the bar (True) or log one line per trial (False); None draws it when
            standard error is a terminal.
    """

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total = total
        self._seen: set[int] | None = None  # trials finished before the first update: not logged
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
        """Refresh from the study (call once it is open, and after every trial)."""
        if not has_header(study):
            return
        if self.enabled:
            self._draw(study)
        else:
            self._log(study)

    def _log(self, study: optuna.Study) -> None:
        finished = study.get_trials(deepcopy=False,
                                    states=(TrialState.COMPLETE, TrialState.FAIL))
        if self._seen is None:  # the study opened: what it held already is not news
            self._seen = {trial.number for trial in finished}
            if finished:
                logger.info("study %s holds %d of %d completed trials", study.study_name,
                            completed_count(study), self.total)
            return
        new = [trial for trial in finished if trial.number not in self._seen]
        if not new:
            return
        baseline, done = study_baseline(study), completed_count(study)
        for trial in sorted(new, key=lambda t: t.number):
            self._seen.add(trial.number)
            logger.info("%s", trial_line(trial, baseline, done, self.total))

    def _draw(self, study: optuna.Study) -> None:
        done = completed_count(study)
        baseline = study_baseline(study)
        points = front(trial_rows(study), study_budgets(study), study_objectives(study))
        summary = f"front: {len(points)} points"
        if points and baseline:
            best = max(points, key=lambda p: p.measures["accuracy"])
            ratio = baseline["params"] / best.measures["params"]
            summary += f", best {best.measures['accuracy']:.2%} at {ratio:.1f}×"
        self._progress.update(self._task, completed=done, description=summary)
