"""The study's record schema: the keys are pinned, every write reads back, the results files read
what the writers wrote, and no module but ``report.record`` spells a key."""

from __future__ import annotations

import ast
import csv
import dataclasses
import json
import math
from pathlib import Path

import optuna

from lpsd_search.report import record
from lpsd_search.report.results import pareto_document, trial_rows, write_results
from lpsd_search.trial.evaluate import Measurement

PACKAGE = Path(record.__file__).resolve().parents[1]

STUDY_KEYS = {"config", "baseline", "budgets", "budget", "objectives", "layers"}
TRIAL_KEYS = {"plan", "plan_override", "predicted_params", "stage", "source", "base_trial",
              "worker", "node", "fail_reason", "ray_trial_id", "ray_node_id", "runtime"}
MEASUREMENT_KEYS = {"params", "bytes", "flops", "accuracy", "test_accuracy", "seconds", "loss",
                    "latency_ms", "finetune_steps", "build_seconds", "finetune_seconds",
                    "eval_seconds", "plan_seconds", "admm_steps", "admm_rho", "admm_rho_growth",
                    "orth_reg"}
"""The keys studies on disk hold: changing one makes every stored study unreadable."""

BUDGETS = [{"metric": "params", "requested": "0.5", "limit": 500, "fraction": 0.5},
           {"metric": "flops", "requested": "flops=0.9", "limit": 9000, "fraction": 0.9}]
OBJECTIVES = {"name": "default", "latency_batch": 1, "objectives": [
    {"name": "accuracy", "key": "accuracy", "direction": "maximize"},
    {"name": "params", "key": "params", "direction": "minimize"}]}
PLAN = {"conv": {"method": "svd", "rank": 3}}


def _measurement(params: int, accuracy: float, **extra: float) -> Measurement:
    return Measurement(params=params, bytes=4 * params, flops=10 * params, accuracy=accuracy,
                       test_accuracy=accuracy - 0.01, seconds=0.5, **extra)


def _study() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="schema")
    record.write_study_header(study, config={"model": "m", "seed": 0},
                              baseline=_measurement(1000, 0.95), budgets=BUDGETS,
                              objectives=OBJECTIVES, layers={"conv": ["svd", "none"]})
    return study


def test_the_keys_are_pinned():
    assert set(record.STUDY_KEYS) == STUDY_KEYS
    assert set(record.TRIAL_KEYS) == TRIAL_KEYS
    assert set(record.MEASUREMENT_KEYS) == MEASUREMENT_KEYS
    assert record.PROMOTED_PREFIX == "promoted:"
    # One attribute per measured field: the schema follows ``Measurement``.
    assert set(record.MEASUREMENT_KEYS) == {f.name for f in dataclasses.fields(Measurement)}
    assert set(record.FINETUNED) <= set(record.MEASUREMENT_KEYS)


def test_study_header_round_trip():
    study = _study()
    assert record.has_header(study)
    assert record.study_config(study) == {"model": "m", "seed": 0}
    baseline = record.study_baseline(study)
    assert baseline["params"] == 1000 and "loss" not in baseline  # NaN fields are not stored
    assert record.study_budgets(study) == BUDGETS
    assert record.study_budget(study) == BUDGETS[0]
    assert record.study_objectives(study) == OBJECTIVES["objectives"]
    assert record.study_layers(study) == {"conv": ["svd", "none"]}
    assert set(study.user_attrs) == STUDY_KEYS


def test_a_study_from_before_several_budgets_and_objectives_still_reads():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("baseline", {"params": 10})
    study.set_user_attr("budget", BUDGETS[0])
    assert record.has_header(study)
    assert record.study_budgets(study) == [BUDGETS[0]]
    assert record.study_objectives(study) == record.DEFAULT_OBJECTIVES
    assert record.study_config(study) is None and record.study_layers(study) == {}
    empty = optuna.create_study()
    assert not record.has_header(empty) and record.study_config(empty) is None


def test_promotion_round_trip():
    study = _study()
    assert not record.is_promoted(study, 3) and record.promoted_measures(study) == {}
    record.set_promoted(study, 3, _measurement(400, 0.9, loss=0.3), after=5)
    record.set_promoted(study, 12, {"params": 300, "accuracy": 0.8, "latency_ms": math.nan},
                        after=13)
    assert record.is_promoted(study, 3) and not record.is_promoted(study, 4)
    measures = record.promoted_measures(study)
    assert sorted(measures) == [3, 12]
    assert measures[3]["loss"] == 0.3 and "latency_ms" not in measures[3]
    assert measures[12] == {"params": 300, "accuracy": 0.8, "after_trials": 13}
    assert study.user_attrs["promoted:3"] == measures[3]


def test_trial_round_trip():
    study = _study()
    trial = study.ask()
    assert not record.has_origin(trial) and record.base_trial(trial) is None
    assert record.trial_source(trial) == record.SAMPLED and record.trial_stage(trial) == ""
    record.set_worker(trial, "host:12")
    record.set_trial_origin(trial, stage=record.LOCAL, base=4)
    outcome = record.outcome_attrs(plan=PLAN, predicted_params=400, node="host",
                                   measured=_measurement(400, 0.9))
    record.write_attrs(trial, outcome)
    study.tell(trial, [0.9, 400])
    frozen = study.trials[trial.number]
    assert record.has_origin(frozen) and record.trial_stage(frozen) == "local"
    assert record.trial_source(frozen) == "sampled" and record.base_trial(frozen) == 4
    assert record.has_worker(frozen) and record.trial_worker(frozen) == "host:12"
    assert record.trial_plan(frozen) == PLAN and record.trial_node(frozen) == "host"
    assert record.trial_seconds(frozen) == 0.5
    assert record.trial_measures(frozen) == {"params": 400, "bytes": 1600, "flops": 4000,
                                             "accuracy": 0.9, "test_accuracy": 0.89}
    assert frozen.user_attrs["predicted_params"] == 400
    assert record.fail_reason(frozen) == "" and record.ray_trial_id(frozen) is None

    failed = study.ask()
    record.set_fail_reason(failed, "OSError: disk full")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert record.fail_reason(study.trials[failed.number]) == "OSError: disk full"


def test_warm_start_and_ray_attributes_round_trip():
    study = _study()
    study.enqueue_trial({}, user_attrs=record.warm_start_attrs("uniform svd", PLAN))
    trial = study.ask()
    assert record.has_origin(trial) and record.trial_stage(trial) == record.WARM
    assert record.trial_source(trial) == "uniform svd"
    assert record.plan_override(trial.user_attrs) == PLAN
    assert record.plan_override({}) is None

    attrs = {**record.origin_attrs(record.FLAT), record.RAY_TRIAL_ID: "abc_0001",
             **record.placement_attrs("node-1:ff00"), **record.failure_attrs("lost")}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL,
                                              user_attrs=attrs))
    frozen = study.trials[-1]
    assert record.ray_trial_id(frozen) == "abc_0001" and record.fail_reason(frozen) == "lost"
    assert record.trial_node(frozen) == record.trial_worker(frozen) == "node-1:ff00"
    assert record.trial_stage(frozen) == "flat" and record.base_trial(frozen) is None


def test_results_read_what_the_record_wrote(tmp_path):
    study = _study()
    for number, (params, accuracy) in enumerate([(400, 0.90), (300, 0.85), (450, 0.80)]):
        trial = study.ask()
        record.set_trial_origin(trial, stage=record.GLOBAL, source=f"s{number}")
        record.write_attrs(trial, record.outcome_attrs(
            plan=PLAN, predicted_params=params, node="n", measured=_measurement(params, accuracy)))
        trial.set_constraint("params", (params - 500) / 500)
        study.tell(trial, [accuracy, params])
    failed = study.ask()
    record.set_fail_reason(failed, "RuntimeError: nan")
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    record.set_promoted(study, 1, _measurement(300, 0.88), after=2)

    document = write_results(study, tmp_path)
    assert document == pareto_document(study)
    assert json.loads((tmp_path / "pareto.json").read_text()) == document
    assert document["config"] == record.study_config(study)
    assert document["baseline"]["params"] == 1000
    assert document["budget"] == BUDGETS[0] and document["budgets"] == BUDGETS
    assert document["objectives"] == OBJECTIVES["objectives"]
    assert document["layers"] == {"conv": ["svd", "none"]}
    points = {p["trial"]: p for p in document["points"]}
    # One fidelity per front: with a trial promoted, only promoted trials are on it.
    assert sorted(points) == [1]
    assert points[1]["accuracy"] == 0.88 and points[1]["promoted"] is True
    assert points[1]["short_finetune"] == {"accuracy": 0.85, "test_accuracy": 0.84}
    assert points[1]["source"] == "s1" and points[1]["plan"] == PLAN
    # Before any promotion the front is that of the short fine-tunes (trial 2 is dominated).
    unpromoted = _study()
    for params, accuracy in [(400, 0.90), (300, 0.85), (450, 0.80)]:
        trial = unpromoted.ask()
        record.write_attrs(trial, record.outcome_attrs(
            plan=PLAN, predicted_params=params, node="n", measured=_measurement(params, accuracy)))
        trial.set_constraint("params", (params - 500) / 500)
        unpromoted.tell(trial, [accuracy, params])
    short = {p["trial"]: p for p in pareto_document(unpromoted)["points"]}
    assert sorted(short) == [0, 1] and "promoted" not in short[0]

    with (tmp_path / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3 + ["FAIL"]
    assert [r["promoted"] for r in rows] == ["0", "1", "0", "0"]
    assert [r["stage"] for r in rows] == ["global"] * 3 + [""]
    assert rows[3]["fail_reason"] == "RuntimeError: nan" and rows[3]["source"] == "sampled"
    assert rows[0]["node"] == "n" and rows[0]["seconds"] == "0.500"
    assert [row.promoted is not None for row in trial_rows(study)] == [False, True, False, False]


# -- nobody else spells a key -------------------------------------------------------------------

KEYS = STUDY_KEYS | TRIAL_KEYS | MEASUREMENT_KEYS
"""Every attribute key (``promoted:<n>`` is caught by its prefix)."""


def _is_key(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in KEYS or node.value.startswith("promoted:")
    if isinstance(node, ast.JoinedStr) and node.values:
        return _is_key(node.values[0])
    return False


def _aliases(tree: ast.AST) -> set[str]:
    """Names bound to a study's or trial's user attributes (``attrs = trial.user_attrs``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            value = node.value
            if isinstance(value, ast.Call) and value.args:  # dict(trial.user_attrs)
                value = value.args[0]
            if isinstance(value, ast.Attribute) and value.attr == "user_attrs":
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def literal_keys(source: str) -> list[int]:
    """Lines where a literal key is written or read as a user attribute."""
    tree = ast.parse(source)
    aliases = _aliases(tree)

    def user_attrs(node: ast.AST) -> bool:
        return ((isinstance(node, ast.Attribute) and node.attr == "user_attrs")
                or (isinstance(node, ast.Name) and node.id in aliases))

    lines = []
    for node in ast.walk(tree):
        found = False
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, owner = node.func.attr, node.func.value
            first = node.args[0] if node.args else None
            found = ((name == "set_user_attr" and _is_key(first))
                     or (name in ("get", "pop", "setdefault") and user_attrs(owner)
                         and _is_key(first)))
            found = found or any(
                k.arg == "user_attrs" and isinstance(k.value, ast.Dict)
                and any(_is_key(key) for key in k.value.keys) for k in node.keywords)
        elif isinstance(node, ast.Subscript):
            found = user_attrs(node.value) and _is_key(node.slice)
        elif isinstance(node, ast.Compare):
            found = (_is_key(node.left) and isinstance(node.ops[0], ast.In | ast.NotIn)
                     and user_attrs(node.comparators[0]))
        if found:
            lines.append(getattr(node, "lineno", 0))
    return sorted(lines)


def test_the_scan_finds_every_kind_of_literal_key():
    source = """
trial.set_user_attr("stage", "local")
study.set_user_attr(f"promoted:{number}", measures)
x = trial.user_attrs["plan"]
y = frozen.user_attrs.get("fail_reason", "")
if "worker" not in trial.user_attrs: pass
study.enqueue_trial(params, user_attrs={"source": label})
attrs = trial.user_attrs
z = attrs.get("plan_override")
ok = trial.user_attrs.get(record.STAGE), other["plan"], trial.set_user_attr(key, value)
"""
    assert literal_keys(source) == [2, 3, 4, 5, 6, 7, 9]


def test_no_module_but_record_spells_an_attribute_key():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == Path(record.__file__).resolve():
            continue
        lines = literal_keys(path.read_text(encoding="utf-8"))
        if lines:
            offenders[str(path.relative_to(PACKAGE.parent))] = lines
    assert offenders == {}, f"use lpsd_search.report.record instead: {offenders}"


def test_every_study_and_trial_key_has_one_constant():
    for key in sorted(STUDY_KEYS | TRIAL_KEYS):
        constants = [name for name, value in vars(record).items()
                     if name.isupper() and value == key]
        assert len(constants) == 1, (key, constants)
