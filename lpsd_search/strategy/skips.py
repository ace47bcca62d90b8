"""Ladder warm starts not worth a trial: a heuristic that lost by far at a larger size.

The ladder enqueues every heuristic at every rung, each heuristic's rungs in order from the
budget down. Where a heuristic collapses (uniform ranks at 10x on VGG-11: chance level, 60
points below ALPSD), it does not recover at a smaller size, and running it there spends a trial
the sampler could have had. So before a warm start runs, it is compared with its own result at
the nearest larger rung already measured: if that trailed the best trial of that rung by more
than ``MARGIN`` of the first objective, the warm start is skipped (Optuna's ``PRUNED`` state,
with the reason; it takes no trial of the search's count). The heuristics are still each run at
least once, at the budget, and the best of them at every rung.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lpsd_search.report.record import STAGE, WARM, trial_source, trial_stage
from lpsd_search.strategy.policies import RUNG

MARGIN = 0.05
"""How far (in the first objective: 5 points of accuracy) a heuristic may trail a rung's best
and still be run at the smaller rungs."""


def skip_reason(study: optuna.Study, params: dict[str, Any],
                attrs: dict[str, Any]) -> str | None:
    """Why the ladder warm start with ``params`` and ``attrs`` should not run, or None.

    Args:
        study: the search's study (the ladder's: trials carry a ``rung`` parameter).
        params: the warm start's parameters (its rung and its heuristic's policy).
        attrs: its user attributes (``stage`` and ``source`` from its enqueueing).
    """
    if attrs.get(STAGE) != WARM or RUNG not in params:
        return None
    rung = float(params[RUNG])
    policy = {k: v for k, v in params.items() if k != RUNG}
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.values is not None and RUNG in t.params]
    own = [t for t in complete if float(t.params[RUNG]) < rung and _policy(t) == policy
           and trial_stage(t) == WARM]
    if not own:
        return None
    earlier = max(own, key=lambda t: float(t.params[RUNG]))
    at = float(earlier.params[RUNG])
    sign = 1.0 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    best = max(sign * t.values[0] for t in complete if float(t.params[RUNG]) == at)
    behind = best - sign * earlier.values[0]
    if behind <= MARGIN:
        return None
    return (f"skipped: {trial_source(earlier)} trailed the best at "
            f"{at:g}x by {behind:.3g} (more than {MARGIN:g})")


def _policy(trial: FrozenTrial) -> dict[str, Any]:
    return {k: v for k, v in trial.params.items() if k != RUNG}
