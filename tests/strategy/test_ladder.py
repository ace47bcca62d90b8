"""The ladder strategy: size rungs, policies, heuristics at every rung, promotion per rung."""

from __future__ import annotations

import math

import optuna
import pytest

from lpsd_search.backends.optuna import run_search
from lpsd_search.config import SearchConfig, SearchOptions, TrainConfig
from lpsd_search.report.pareto import log_size_hypervolume
from lpsd_search.report.results import front, trial_rows
from lpsd_search.strategy.policies import (
    RUNG,
    SHARE,
    SHARE_OFF,
    Policy,
    PolicySpace,
)
from lpsd_search.strategy.promotion import rung_candidates
from lpsd_search.strategy.rungs import LEVELS, size_rungs
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.strategy.samplers import make_sampler
from lpsd_search.strategy.skips import skip_reason


def _runner(digits, digits_model, tmp_path, budget="0.5", steps=5, **search):
    options = SearchOptions(model="digits-cnn", data="digits", budget=budget, out=tmp_path,
                            finetune=TrainConfig(steps=steps), search=SearchConfig(**search),
                            device="cpu")
    return TrialRunner(options, digits, digits_model), options


def test_rungs_start_at_the_budget_and_descend_by_round_levels(digits, digits_model, tmp_path):
    runner, _ = _runner(digits, digits_model, tmp_path, budget="0.5")
    assert runner.ladder is not None
    rungs = runner.ladder.rungs
    baseline = runner.pricer.baseline.params
    assert rungs[0] == pytest.approx(baseline / runner.budgets[0].limit, rel=1e-3)
    assert rungs == sorted(rungs) and len(rungs) >= 3
    assert all(level in LEVELS for level in rungs[1:])
    # Every family of the space reaches every rung: each heuristic's plan fits its rung.
    for rung in rungs:
        for _, policy in runner.ladder.space.heuristics(["uniform", "vbmf", "alds", "lpsd"]):
            plan = runner.ladder.plan(runner.ladder.space.params(rung, policy))
            params = runner.pricer.size(plan).params
            # Aimed at the rung: within it, and not far below (the size is the target).
            assert 0.75 * baseline / rung <= params <= baseline / rung, (rung, policy, params)


def test_a_budget_no_family_reaches_is_one_line(digits, digits_model, tmp_path):
    runner, _ = _runner(digits, digits_model, tmp_path)
    assert runner.ladder is not None
    from lpsd_search.errors import UserInputError
    from lpsd_search.plan.budget import parse_budget

    tiny = parse_budget("5").resolve(runner.pricer.baseline.params)
    with pytest.raises(UserInputError, match="below what every method of the space reaches"):
        size_rungs(runner.pricer, runner.space.allowed, tiny, ["tucker2"])


def test_policy_parameters_round_trip_and_small_shares_mean_none():
    space = PolicySpace([2.0, 5.0], ["svd", "tucker2"], sparse=True, small=True)
    policy = Policy("tucker2", "vbmf", 0.25, alternating=True, local_passes=1,
                    sensitivity=0.5, dense_small=True)
    assert space.policy(space.params(5.0, policy)) == policy
    assert set(space.params(5.0, policy)) == set(space.distributions())
    off = space.policy({RUNG: 2.0, SHARE: SHARE_OFF / 2, "policy:alternating": True})
    assert off.sparse_share == 0 and not off.alternating
    assert off.compress_config().procedure == "lowrank"
    assert policy.compress_config().procedure == "alpsd"
    names = [name for name, _ in space.heuristics(["uniform", "vbmf", "alds", "lpsd", "alpsd"])]
    assert names == ["uniform", "vbmf", "alds", "lpsd", "alpsd"]
    # Without a sparse residual in the space, the LPSD heuristics do not exist.
    plain = PolicySpace([2.0], ["svd"], sparse=False, small=False)
    assert [n for n, _ in plain.heuristics(["lpsd", "alpsd", "alds"])] == ["alds"]


def test_a_sensitivity_weighted_policy_moves_rank_between_layers(digits, digits_model, tmp_path):
    runner, _ = _runner(digits, digits_model, tmp_path, budget="0.3")
    assert runner.ladder is not None
    space = runner.ladder.space
    rung = space.rungs[0]
    plain = runner.ladder.plan(space.params(rung, Policy("tucker2")))
    weighted = runner.ladder.plan(space.params(rung, Policy("tucker2", sensitivity=1.0)))
    assert plain.to_dict() != weighted.to_dict()
    limit = runner.pricer.baseline.params / rung
    assert runner.pricer.size(weighted).params <= limit


def test_the_ladder_search_runs_heuristics_at_every_rung_and_promotes_during_the_run(
        digits, digits_model, tmp_path):
    runner, options = _runner(digits, digits_model, tmp_path, budget="0.5", trials=15,
                              warm_starts=("alds", "uniform", "vbmf"), promote_steps=10,
                              promote_top=1)
    assert runner.ladder is not None
    rungs = runner.ladder.rungs
    study = runner.open_study(make_sampler("tpe", 0))
    promoted_at: list[int] = []

    def on_trial(study: optuna.Study) -> None:
        promoted_at.append(sum(row.promoted is not None for row in trial_rows(study)))

    allocations = []
    allocate = runner.ladder.plan
    runner.ladder.plan = lambda params: allocations.append(1) or allocate(params)  # type: ignore[method-assign]
    run_search(study, runner, options.search, tmp_path, on_trial)
    trials = study.trials
    run = [t for t in trials if t.state != optuna.trial.TrialState.PRUNED]
    # A promotion rebuilds the plan its trial recorded: the allocator ran once per trial run.
    assert len(allocations) == len(run)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) == 15
    sources = [t.user_attrs.get("source") for t in trials]
    warm = 3 * len(rungs)
    assert warm < 15
    assert sources[:warm] == ([f"alds {r:.3g}x" for r in rungs]
                              + [f"vbmf {r:.3g}x" for r in rungs]
                              + [f"uniform {r:.3g}x" for r in rungs])
    assert all(s == "sampled" for s in sources[warm:])
    # A heuristic is skipped exactly where it trailed its previous rung's best by the margin.
    for trial in trials[:warm]:
        skipped = trial.state == optuna.trial.TrialState.PRUNED
        assert skipped == (skip_reason(_before(study, trial.number), trial.params,
                                       trial.user_attrs) is not None)
        assert skipped == trial.user_attrs.get("fail_reason", "").startswith("skipped: ")
    measured = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials[:warm])
    # Promotion starts once the warm starts are measured, during the run, not at its end: the
    # controller hands out the promotions before the next trial.
    assert promoted_at[measured - 1] == 0 and promoted_at[-1] >= len(rungs)
    assert any(count > 0 for count in promoted_at[:-1])
    rows = trial_rows(study)
    # Each promotion records how many trials were complete when it was made.
    after = sorted(int(row.promoted["after_trials"]) for row in rows if row.promoted)
    assert after[0] >= measured and after[-1] <= len(run)
    promoted = {row.trial for row in rows if row.promoted is not None}
    # Each rung's best short fine-tune is promoted (and trials of a rung that lost their
    # place stay promoted: never twice).
    assert set(rung_candidates(study, 1)) <= promoted
    by_rung = {t.params[RUNG] for t in trials if t.number in promoted}
    assert by_rung == set(rungs)
    # The reported front holds promoted trials only, each with its test accuracy.
    points = front(rows, [b.to_dict() for b in runner.budgets])
    assert points and all(row.promoted is not None for row in points)
    assert all(not math.isnan(row.measures["test_accuracy"]) for row in points)


def _before(study: optuna.Study, number: int) -> optuna.Study:
    """The study as it was when trial ``number`` was asked (its earlier trials only)."""
    earlier = optuna.create_study(directions=study.directions)
    earlier.add_trials([t for t in study.trials if t.number < number])
    return earlier


def test_log_size_hypervolume_counts_every_halving_alike():
    # One point at the budget adds nothing; halving the size adds log10(2)/3 of its accuracy.
    assert log_size_hypervolume([0.9], [100.0], 100.0) == 0.0
    half = log_size_hypervolume([0.9], [50.0], 100.0)
    quarter = log_size_hypervolume([0.9], [25.0], 100.0)
    assert half == pytest.approx(0.9 * math.log10(2) / 3)
    assert quarter == pytest.approx(2 * half)
    # Beyond three decades the box is full.
    assert log_size_hypervolume([1.0], [0.001], 100.0) == pytest.approx(1.0)


def test_a_study_made_before_metric_names_gets_them_when_continued(digits, digits_model, tmp_path,
                                                                    monkeypatch):
    from lpsd_search.report import record

    runner, _ = _runner(digits, digits_model, tmp_path)
    with monkeypatch.context() as patch:
        patch.setattr(record, "name_metrics", lambda study, objectives: None)
        assert runner.open_study().metric_names is None
    again, _ = _runner(digits, digits_model, tmp_path)
    assert again.open_study().metric_names == ["accuracy", "params"]


def test_every_sampled_policy_reaches_the_farthest_rung_or_fails_only_its_trial(
        digits, digits_model, tmp_path):
    # Small layers kept dense cost more than the farthest rung leaves: the planner compresses
    # them too rather than stopping the search with a user-input error.
    runner, _ = _runner(digits, digits_model, tmp_path, budget="0.2")
    assert runner.ladder is not None
    space = runner.ladder.space
    far = space.rungs[-1]
    limit = runner.pricer.baseline.params / far
    for share in (0.0, 0.5):
        policy = Policy("tucker2", "uniform", share, dense_small=True)
        plan = runner.ladder.plan(space.params(far, policy))
        assert runner.pricer.size(plan).params <= limit
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(12):
        params = {k: v for k, v in study.ask(space.distributions()).params.items()}
        params[RUNG] = far
        try:
            plan = runner.ladder.plan(params)
        except RuntimeError as error:  # a trial failure, never a UserInputError
            assert "cannot reach" in str(error)
            continue
        assert runner.pricer.size(plan).params <= limit


def test_a_heuristic_is_skipped_below_a_rung_where_it_trailed_the_best_by_the_margin():
    dists = {RUNG: optuna.distributions.CategoricalDistribution([5.0, 10.0, 20.0]),
             "policy:share": optuna.distributions.FloatDistribution(0.0, 0.5)}
    warm = {"stage": "warm"}

    def study_of(rows):
        study = optuna.create_study(directions=["maximize", "minimize"])
        for rung, share, accuracy, attrs in rows:
            study.add_trial(optuna.trial.create_trial(
                params={RUNG: rung, "policy:share": share}, distributions=dists,
                values=[accuracy, 1 / rung], user_attrs={**attrs, "source": f"h{share}"}))
        return study

    weak = {RUNG: 20.0, "policy:share": 0.0}
    # At 5x the heuristic (share 0) trailed the best (a sampled trial counts) by 0.06 > 0.05.
    study = study_of([(5.0, 0.3, 0.90, warm), (5.0, 0.0, 0.84, warm), (5.0, 0.1, 0.91, {})])
    assert skip_reason(study, weak, warm).startswith("skipped: h0.0 trailed the best at 5x")
    # Within the margin: it runs; the nearest larger rung decides, not the first.
    assert skip_reason(study_of([(5.0, 0.3, 0.90, warm), (5.0, 0.0, 0.86, warm)]), weak,
                       warm) is None
    assert skip_reason(study_of([(5.0, 0.3, 0.90, warm), (5.0, 0.0, 0.80, warm),
                                 (10.0, 0.3, 0.88, warm), (10.0, 0.0, 0.85, warm)]),
                       weak, warm) is None
    # Only warm starts are skipped, and only on their own (same policy) earlier result.
    assert skip_reason(study, weak, {"stage": "ladder"}) is None
    assert skip_reason(study, {RUNG: 20.0, "policy:share": 0.2}, warm) is None
