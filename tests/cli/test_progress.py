"""Progress everywhere: one log line per trial off a terminal, per-epoch lines for ``train``,
``--version``, required options marked in ``--help``, metric names for optuna-dashboard, and
strict JSON results."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import optuna
import pytest
import torch

import lpsd_search
from lpsd_search.cli.main import main
from lpsd_search.data.splits import DataSplits


def _strict(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in "
                                                                                f"{path}"))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_status:
        main(["--version"])
    assert exit_status.value.code == 0
    assert capsys.readouterr().out.strip() == f"lpsd-search {lpsd_search.__version__}"


def test_help_marks_the_budget_required_and_a_config_may_give_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert " --budget BUDGET [" in text  # not [--budget BUDGET] in the usage
    assert "bytes=… / flops=… (required)" in text
    with pytest.raises(SystemExit) as exit_status:
        main(["search", "--out", str(tmp_path)])
    assert exit_status.value.code == 2
    assert "the following arguments are required: --budget" in capsys.readouterr().err
    config = tmp_path / "run.toml"
    config.write_text('budget = "0.5"\n')
    from lpsd_search.cli.main import parse_args

    assert parse_args(["search", "--config", str(config)]).budget == ["0.5"]


def test_train_logs_every_epoch(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                digits: DataSplits) -> None:
    with caplog.at_level(logging.INFO, logger="lpsd_search"):
        assert main(["train", "--epochs", "2", "--out", str(tmp_path / "m.pt")]) == 0
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    saved = torch.load(tmp_path / "m.pt", weights_only=True)
    assert saved["data_fingerprint"] == digits.fingerprint
    assert saved["meta"]["preprocessing"]["input_scale"] == 16.0


def test_a_piped_search_logs_one_line_per_trial_and_names_its_metrics(
        cache_dir: Path, digits_model: torch.nn.Module, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="lpsd_search"):
        assert main(["search", "--budget", "0.5", "--trials", "3", "--finetune-steps", "5",
                     "--promote-steps", "0", "--warm-starts", "uniform", "--train-epochs", "8",
                     "--cache-dir", str(cache_dir), "--no-report", "--out",
                     str(tmp_path)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "lpsd_search.progress"]
    assert len(lines) == 3
    for number, line in enumerate(lines):
        assert re.fullmatch(rf"trial {number} complete \({number + 1}/3\): [\d,]+ params "
                            r"\(\d+\.\d×\), val acc \d+\.\d\d%(, test \d+\.\d\d%)?, "
                            r"\d+\.\d s", line), line
    study = optuna.load_study(study_name="lpsd-search",
                              storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert study.metric_names == ["accuracy", "params"]
    assert _strict(tmp_path / "pareto.json")["points"]


def test_pareto_json_is_strict_even_when_a_stored_value_is_not_finite(tmp_path: Path) -> None:
    from lpsd_search.report.record import write_study_header
    from lpsd_search.report.results import write_results

    study = optuna.create_study(directions=["maximize", "minimize"])
    baseline = {"params": 100, "bytes": 400, "flops": 1000, "accuracy": 0.9,
                "test_accuracy": 0.9}
    write_study_header(study, config={"finetune_lr": float("nan"), "budget": "0.5"},
                       baseline=baseline,
                       budgets=[{"metric": "params", "limit": 50, "requested": "0.5"}],
                       objectives={"name": "default", "objectives": [
                           {"name": "accuracy", "key": "accuracy", "direction": "maximize"},
                           {"name": "params", "key": "params", "direction": "minimize"}]},
                       layers={})
    assert study.metric_names == ["accuracy", "params"]
    document = write_results(study, tmp_path)
    assert _strict(tmp_path / "pareto.json") == document
    assert document["config"]["finetune_lr"] is None
