"""``--admm-steps`` / ``--orth-reg`` end to end: search and compress on digits, the presets'
``[training]`` tables, the record of each trial, and one-line errors for bad values."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch

from lpsd_search.cli.main import main
from lpsd_search.options import search_options
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import measure
from lpsd_search.report.record import trial_training

# The conftest baseline's recipe, so its cached weights are reused rather than retrained.
FAST = ["--train-epochs", "8", "--finetune-steps", "15", "--seed", "0", "--no-report"]


def _search(cache_dir: Path, out: Path, *extra: str) -> dict:
    assert main(["-q", "search", "--out", str(out), "--cache-dir", str(cache_dir), *FAST,
                 "--promote-steps", "0", *extra]) == 0
    return json.loads((out / "pareto.json").read_text())


def _training(out: Path) -> list[dict]:
    study = optuna.load_study(study_name="lpsd-search", storage=f"sqlite:///{out / 'study.db'}")
    return [trial_training(trial) for trial in study.get_trials()]


def test_search_with_admm_and_orth_reg_meets_the_budget(cache_dir, digits_model, tmp_path):
    out = tmp_path / "run"
    document = _search(cache_dir, out, "--budget", "0.3", "--trials", "4", "--admm-steps", "20",
                       "--admm-rho", "0.2", "--orth-reg", "0.01")
    assert document["points"]
    for point in document["points"]:
        assert point["params"] <= document["budget"]["limit"]
        built = measure(apply_plan(digits_model, Plan.from_dict(point["plan"])),
                        torch.zeros(1, 1, 8, 8))
        assert (built.params, built.bytes, built.flops) == (
            point["params"], point["bytes"], point["flops"])
    records = _training(out)
    assert len(records) == 4
    # The default space's svd and tucker2 layers are constrained and regularised.
    assert {r["orth_reg"] for r in records} == {0.01}
    trained = [r for r in records if r["admm_steps"]]
    assert trained and all(r["admm_steps"] == 20 and r["admm_rho"] == 0.2
                           and r["admm_rho_growth"] == 1.5 for r in trained)


def test_presets_set_the_methods_and_options_given_win(cache_dir, tmp_path):
    assert search_options(budget="0.5", space="tt-admm").finetune.admm_steps == 300
    assert search_options(budget="0.5", space="vbmf-orth").finetune.orth_reg == 0.01
    assert search_options(budget="0.5", space="vbmf-orth", orth_reg=0).finetune.orth_reg == 0
    assert search_options(budget="0.5").finetune.admm_steps is None  # default space: off
    out = tmp_path / "tt"
    config = tmp_path / "run.toml"
    config.write_text('admm-steps = 12\nadmm_rho_growth = 1.1\n')
    _search(cache_dir, out, "--budget", "0.5", "--trials", "2", "--space", "tt-admm",
            "--no-warm-start", "--config", str(config))
    records = _training(out)
    assert all(r["orth_reg"] == 0 for r in records)
    assert {(r["admm_steps"], r["admm_rho"], r["admm_rho_growth"])
            for r in records if r["admm_steps"]} == {(12, 0.1, 1.1)}


def test_compress_takes_both_options(cache_dir, tmp_path):
    out = tmp_path / "compress"
    assert main(["-q", "compress", "--method", "lowrank", "--low-rank", "tucker2", "--budget",
                 "0.3", "--finetune-steps", "10", "--train-epochs", "8", "--cache-dir",
                 str(cache_dir), "--admm-steps", "10", "--orth-reg", "0.05", "--out",
                 str(out)]) == 0
    compressed = json.loads((out / "plan.json").read_text())["compressed"]
    assert (compressed["admm_steps"], compressed["orth_reg"]) == (10, 0.05)
    assert compressed["params"] <= json.loads((out / "plan.json").read_text())["budget"]["limit"]


@pytest.mark.parametrize(("args", "message"), [
    (["--admm-rho-growth", "0.5"],
     "--admm-rho-growth 0.5 is invalid; valid: a number in [1, 100]"),
    (["--admm-rho", "0"], "--admm-rho: '0' must be > 0"),
    (["--admm-steps", "-1"], "--admm-steps: '-1' is negative"),
    (["--orth-reg", "nan"], "--orth-reg: 'nan' is not a finite number"),
])
def test_bad_values_are_one_line_errors(args, message, tmp_path, capsys):
    try:
        code = main(["search", "--budget", "0.5", "--out", str(tmp_path / "x"), *args])
    except SystemExit as stop:
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_a_bad_training_table_is_a_one_line_error(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text('[training]\nadmm_steps = 10\nlr = 0.1\n\n[[rules]]\nmethods = ["svd"]\n')
    assert main(["search", "--budget", "0.5", "--space", str(space), "--out",
                 str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("lpsd-search: error: search space 'space': training: unknown key 'lr'; "
                   "valid: admm_steps, admm_rho, admm_rho_growth, orth_reg")
    space.write_text('[training]\north_reg = -1\n\n[[rules]]\nmethods = ["svd"]\n')
    assert main(["search", "--budget", "0.5", "--space", str(space), "--out",
                 str(tmp_path / "x")]) == 2
    assert "search space 'space': training: --orth-reg -1 is invalid" in capsys.readouterr().err
