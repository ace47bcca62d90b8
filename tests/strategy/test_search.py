"""The search end to end on digits: budgets on the built model, presets, promotion, export and
load, report from storage, config files, journal storage and the Python API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import lpsd_search
from lpsd_search.cli.main import main
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import measure

FAST = ["--train-epochs", "8", "--finetune-steps", "10", "--seed", "0", "--no-report"]
EXAMPLE = torch.zeros(1, 1, 8, 8)


def _search(cache_dir: Path, out: Path, *extra: str) -> dict:
    code = main(["-q", "search", "--out", str(out), "--cache-dir", str(cache_dir), *FAST,
                 *extra])
    assert code == 0
    return json.loads((out / "pareto.json").read_text())


def _check_budgets(document: dict, model: torch.nn.Module) -> None:
    assert document["points"]
    for point in document["points"]:
        built = measure(apply_plan(model, Plan.from_dict(point["plan"])), EXAMPLE)
        assert (built.params, built.bytes, built.flops) == (
            point["params"], point["bytes"], point["flops"])
        for budget in document["budgets"]:
            assert getattr(built, budget["metric"]) <= budget["limit"], (budget, point)


@pytest.mark.parametrize(("space", "budgets"), [
    ("lpsd", ["0.25", "bytes=0.4"]),
    ("alpsd", ["0.2"]),
    ("mtd", ["0.3", "flops=0.4"]),
    ("tucker-vbmf", ["flops=0.3"]),
    ("all", ["0.15", "flops=0.5", "bytes=0.3"]),
])
def test_every_front_point_meets_every_budget_on_the_built_model(
        space, budgets, cache_dir, digits_model, tmp_path):
    extra = [arg for budget in budgets for arg in ("--budget", budget)]
    document = _search(cache_dir, tmp_path, *extra, "--space", space, "--trials", "7",
                       "--promote-steps", "0")
    assert [b["requested"] for b in document["budgets"]] == budgets
    _check_budgets(document, digits_model)


def test_objectives_preset_sets_the_study_directions(cache_dir, digits_model, tmp_path):
    document = _search(cache_dir, tmp_path, "--budget", "0.5", "--objectives", "flops",
                       "--trials", "3", "--no-warm-start", "--promote-steps", "0",
                       "--sampler", "nsga2")
    assert [o["name"] for o in document["objectives"]] == ["accuracy", "flops"]
    flops = [p["flops"] for p in document["points"]]
    accuracy = [p["accuracy"] for p in document["points"]]
    # Non-dominated in (accuracy, flops): sorted by FLOPs, accuracy increases.
    order = sorted(range(len(flops)), key=flops.__getitem__)
    assert [accuracy[i] for i in order] == sorted(accuracy)


@pytest.fixture(scope="module")
def promoted_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("promoted")
    document = _search(cache_dir, out, "--budget", "0.4", "--trials", "6", "--promote-steps",
                       "40", "--warm-starts", "uniform", "--min-accuracy", "0.3")
    return out, document


def test_front_reports_promoted_measurements(promoted_run):
    out, document = promoted_run
    promoted = [p for p in document["points"] if p.get("promoted")]
    assert promoted, "the front's trials are promoted"
    saved = json.loads((out / "pareto.json").read_text())
    assert saved == document
    for point in promoted:
        checkpoint = torch.load(out / "models" / f"trial-{point['trial']}.pt",
                                weights_only=True)
        assert checkpoint["meta"]["finetune_steps"] == 40
        assert checkpoint["meta"]["accuracy"] == point["accuracy"]


def test_export_load_and_torch_export_agree_with_the_front(promoted_run, tmp_path):
    out, document = promoted_run
    point = document["points"][-1]
    target = tmp_path / "best.pt"
    assert main(["-q", "export", str(out), "--trial", str(point["trial"]), "--out",
                 str(target)]) == 0
    model = lpsd_search.load(target)
    assert measure(model, EXAMPLE).params == point["params"]
    program = torch.export.load(str(target.with_suffix(".pt2"))).module()
    inputs = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(program(inputs), model(inputs))
    assert torch.load(target, weights_only=True)["meta"]["plan"] == point["plan"]


def test_export_of_a_trial_without_weights_is_a_one_line_error(promoted_run, tmp_path, capsys):
    out, document = promoted_run
    front = {p["trial"] for p in document["points"]}
    other = next(n for n in range(100) if n not in front)
    assert main(["export", str(out), "--trial", str(other), "--out",
                 str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "valid: --trial" in err


def test_report_recreates_the_files_from_storage(promoted_run, tmp_path):
    out, document = promoted_run
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "study.db", copy / "study.db")
    assert main(["-q", "report", str(copy)]) == 0
    assert json.loads((copy / "pareto.json").read_text()) == document
    assert (copy / "trials.csv").read_text() == (out / "trials.csv").read_text()
    assert (copy / "report.html").is_file() and (copy / "pareto.png").is_file()
    again = tmp_path / "again"
    assert main(["-q", "report", "--storage", f"sqlite:///{copy / 'study.db'}",
                 "--study", "lpsd-search", "--out", str(again)]) == 0
    assert json.loads((again / "pareto.json").read_text()) == document
    # The search's --min-accuracy is the reports' floor; a report may change it for good.
    assert document["min_accuracy"] == 0.3
    assert main(["-q", "report", str(copy), "--min-accuracy", "0.6"]) == 0
    assert main(["-q", "report", str(copy)]) == 0
    changed = json.loads((copy / "pareto.json").read_text())
    assert changed == {**document, "min_accuracy": 0.6}
    assert "60.0% validation accuracy (--min-accuracy)" in (copy / "report.html").read_text()


def test_config_file_options_and_command_line_precedence(cache_dir, tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('budget = ["0.3", "flops=0.6"]\ntrials = 2\nwarm-starts = ["uniform"]\n'
                      'promote_steps = 0\nspace = "svd"\n')
    document = _search(cache_dir, tmp_path / "out", "--config", str(config), "--trials", "3")
    assert [b["requested"] for b in document["budgets"]] == ["0.3", "flops=0.6"]
    assert document["config"]["space"] == "svd"
    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # --trials on the command line wins over the file's 2


def test_config_file_with_an_unknown_key_is_refused(cache_dir, tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('budget = "0.3"\nrank-scale = 2\n')
    assert main(["search", "--config", str(config), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "'rank-scale' is not an option of lpsd-search search; valid keys:" in err
    assert len(err.splitlines()) == 1


def test_journal_storage_resumes(cache_dir, tmp_path):
    journal = tmp_path / "study.log"
    args = ["--budget", "0.5", "--storage", f"journal:{journal}", "--no-warm-start",
            "--promote-steps", "0"]
    _search(cache_dir, tmp_path / "out", *args, "--trials", "2")
    document = _search(cache_dir, tmp_path / "out", *args, "--trials", "3")
    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and journal.stat().st_size > 0
    assert document["points"]


def test_python_api_mirrors_the_cli(cache_dir, digits_model, tmp_path):
    result = lpsd_search.search("digits-cnn", "digits", budget=0.4, trials=3,
                                finetune_steps=10, promote_steps=0, warm_starts=("uniform",),
                                out=tmp_path / "api", train_epochs=8, cache_dir=cache_dir)
    assert result.pareto == json.loads((tmp_path / "api" / "pareto.json").read_text())["points"]
    assert [row["trial"] for row in result.trials] == ["0", "1", "2"]
    written = result.export(result.pareto[0]["trial"], tmp_path / "m.pt")
    assert [p.suffix for p in written] == [".pt", ".pt2"]
    assert measure(lpsd_search.load(written[0]), EXAMPLE).params == result.pareto[0]["params"]
