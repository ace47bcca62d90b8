"""The command line end to end on digits: output contract, resume, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lpsd_search.cli.main import main
from lpsd_search.plan.apply import apply_plan
from lpsd_search.plan.choices import Plan
from lpsd_search.plan.measure import measure

# Same recipe as the conftest baseline, so the cached weights are reused rather than retrained.
FAST = ["--train-epochs", "8", "--finetune-steps", "15", "--seed", "0", "--no-report"]
CONTRACT = {"trial", "params", "bytes", "flops", "accuracy", "test_accuracy", "compression",
            "plan"}


def _search(cache_dir: Path, out: Path, *extra: str) -> int:
    return main(["-q", "search", "--out", str(out), "--cache-dir", str(cache_dir), *FAST,
                 *extra])


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_search_writes_the_output_contract_and_resumes(cache_dir, digits_model, tmp_path):
    out = tmp_path / "run"
    assert _search(cache_dir, out, "--budget", "0.2", "--trials", "5", "--promote-steps",
                   "0") == 0
    document = json.loads((out / "pareto.json").read_text())
    assert {"params", "bytes", "flops", "accuracy", "test_accuracy"} <= set(document["baseline"])
    baseline = document["baseline"]
    assert baseline["params"] == sum(p.numel() for p in digits_model.parameters())
    assert document["budget"]["limit"] == int(0.2 * baseline["params"])
    assert len(document["points"]) >= 1
    example = torch.zeros(1, 1, 8, 8)
    for point in document["points"]:
        assert set(point) >= CONTRACT
        assert point["params"] <= document["budget"]["limit"]
        assert point["compression"] == pytest.approx(baseline["params"] / point["params"])
        assert set(point["plan"]) <= {"conv1", "conv2", "conv3", "fc"}
        rebuilt = measure(apply_plan(digits_model, Plan.from_dict(point["plan"])), example)
        assert (rebuilt.params, rebuilt.bytes, rebuilt.flops) == (
            point["params"], point["bytes"], point["flops"])
    # The front is non-dominated: sorted by size, accuracy strictly increases.
    accuracies = [p["accuracy"] for p in document["points"]]
    assert accuracies == sorted(accuracies)
    assert len(set(accuracies)) == len(accuracies)

    first = _rows(out)
    assert [r["trial"] for r in first] == [str(i) for i in range(len(first))]
    assert sum(r["state"] == "COMPLETE" for r in first) == 5
    # The ladder: the strongest heuristics first, each at every size rung (5x, 10x); one that
    # trailed the best at 5x by more than 5 points is skipped at 10x, with its reason.
    assert [r["source"] for r in first][:5] == ["alpsd 5x", "alpsd 10x", "alds 5x",
                                                "alds 10x", "lpsd 5x"]
    assert all(r["state"] == "COMPLETE" or (r["state"] == "PRUNED"
                                            and r["fail_reason"].startswith("skipped: "))
               for r in first)

    # Re-running with more trials continues the same study and keeps the finished trials.
    assert _search(cache_dir, out, "--budget", "0.2", "--trials", "7", "--promote-steps",
                   "0") == 0
    second = _rows(out)
    assert [r["trial"] for r in second] == [str(i) for i in range(len(second))]
    assert sum(r["state"] == "COMPLETE" for r in second) == 7
    for before, after in zip(first, second[:len(first)], strict=True):
        assert before["accuracy"] == after["accuracy"]
        assert before["plan"] == after["plan"]


def test_continuing_with_other_settings_is_refused(cache_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _search(cache_dir, out, "--budget", "0.5", "--trials", "1") == 0
    capsys.readouterr()
    assert _search(cache_dir, out, "--budget", "0.3", "--trials", "2") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lpsd-search: error: study 'lpsd-search'")
    assert "budget" in err
    assert len(err.splitlines()) == 1


def test_train_then_search_from_checkpoint(tmp_path, cache_dir):
    checkpoint = tmp_path / "digits.pt"
    assert main(["-q", "train", "--model", "digits-cnn", "--data", "digits", "--epochs", "3",
                 "--out", str(checkpoint)]) == 0
    stored = torch.load(checkpoint, weights_only=True)
    assert stored["model_spec"] == "digits-cnn"
    out = tmp_path / "run"
    assert _search(cache_dir, out, "--checkpoint", str(checkpoint), "--budget", "6000",
                   "--trials", "2", "--no-warm-start") == 0
    document = json.loads((out / "pareto.json").read_text())
    assert document["budget"]["limit"] == 6000
    assert all(p["params"] <= 6000 for p in document["points"])


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "nope-net", "--budget", "0.1"], "unknown model 'nope-net'"),
    (["--data", "mnist", "--budget", "0.1"], "mnist"),
    (["--data", "fashion-mnist:/does/not/exist", "--budget", "0.1"], "/does/not/exist"),
    (["--budget", "0"], "budget '0'"),
    (["--budget", "-0.5"], "budget"),
    (["--budget", "1.5"], "budget '1.5' is out of range"),
    (["--budget", "ten"], "budget 'ten' is not a number"),
    (["--budget", "3"], "cannot be met"),
    (["--budget", "0.1", "--space", "nope"], "unknown search space 'nope'"),
    (["--budget", "0.1", "--device", "tpu"], "device"),
    (["--budget", "0.1", "--checkpoint", "missing.pt"], "cannot read checkpoint 'missing.pt'"),
    (["--budget", "0.1", "--checkpoint", "GARBAGE"], "cannot read checkpoint"),
    (["--budget", "0.1", "--trials", "x"], "--trials: 'x' is not a whole number"),
    (["--trials", "3"], "--budget"),
    (["--budget", "watts=0.1"], "unknown metric 'watts'"),
    (["--budget", "0.1", "--budget", "0.2"], "two budgets on params"),
    (["--budget", "0.1", "--objectives", "accuracy"], "two or more"),
    (["--budget", "0.1", "--objectives", "accuracy,speed"], "unknown objective 'speed'"),
    (["--budget", "0.1", "--storage", "redis://x"], "storage 'redis://x' is not understood"),
    (["--budget", "0.1", "--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    (["--budget", "0.1", "--warm-starts", "magic"], "unknown warm start 'magic'"),
    (["--budget", "0.1", "--config", "missing.toml"], "cannot read config"),
    (["--budget", "0.1", "--config", "GARBAGE"], "is not valid TOML"),
])
def test_bad_input_exits_2_with_one_line(args, message, tmp_path, cache_dir, capsys,
                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "GARBAGE").write_bytes(b"this is not a checkpoint")
    try:
        code = _search(cache_dir, tmp_path / "out", *args)
    except SystemExit as stop:  # argparse's own errors leave through SystemExit
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("lpsd-search")
    assert message in err


def test_bad_input_from_a_real_process_has_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "lpsd_search", "search", "--budget", "2.5", "--out",
         str(tmp_path)], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lpsd-search: error: budget '2.5' is out of range; valid: [params|bytes|flops=]VALUE "
        "with VALUE a fraction in (0, 1] such as 0.1, or a whole number ≥ 1"
    ]
