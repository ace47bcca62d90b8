"""Every bad input stops before any training or trial, with one line and exit status 2.

Each case runs ``lpsd-search`` in-process with training replaced by a stub that fails the test,
and an empty baseline cache, so a case that got as far as training would be caught (and would
be slow). The line must start ``lpsd-search: error:`` and name what was wrong.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from lpsd_search.cli.main import main
from lpsd_search.models.checkpoint import save_checkpoint
from lpsd_search.models.zoo import build_model

# Every module that calls the training loop, by module (the package re-exports ``train``).
TRAINING_MODULES = [importlib.import_module(f"lpsd_search.trial.{name}")
                    for name in ("train", "baseline", "evaluate")]

FACTORIES = '''
from torch import nn


def boom(num_classes):
    raise RuntimeError("boom")


def not_a_module():
    return "a string"


def three_logits(in_channels, input_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size[0] * input_size[1], 3))


def rgb_only(num_classes):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
'''


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), color=128).save(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the cases name: user models, checkpoints, data folders, results folders."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "factories.py").write_text(FACTORIES)
    (root / "broken.py").write_text("def build(:\n")
    (root / "GARBAGE").write_bytes(b"this is not a checkpoint")
    (root / "a_file").write_text("a file where a folder should be")
    (root / "a_folder").mkdir()
    other = build_model("vgg11:width=0.125", in_channels=1, num_classes=10, input_size=(8, 8))
    save_checkpoint(root / "vgg11.pt", other, model_spec="vgg11:width=0.125", data_spec="digits",
                    meta={})
    for index in range(3):
        _png(root / "one-class" / "cat" / f"{index}.png")
        _png(root / "one-filled" / "cat" / f"{index}.png")
    (root / "one-filled" / "dog").mkdir()
    (root / "no-classes").mkdir()
    (root / "results").mkdir()
    (root / "results" / "study.db").write_bytes(b"")
    (root / "bad.toml").write_text("trials = nan\n")
    (root / "linear.toml").write_text('[[rules]]\nmethods = ["svd"]\nlog = false\n')
    return root


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, files: Path) -> list[str]:
    """Training fails the test; the cache is empty; the working folder holds ``files``."""
    calls: list[str] = []

    def training(*args: object, **kwargs: object) -> float:
        calls.append("train")
        raise AssertionError("training ran for a bad input")

    for module in TRAINING_MODULES:
        monkeypatch.setattr(module, "train", training)
    monkeypatch.setenv("LPSD_SEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(files)
    return calls


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse's own errors leave through SystemExit
        return int(stop.code or 0)


BARE = ["search", "--out", "out"]
SEARCH = [*BARE, "--budget", "0.5"]
TRAIN = ["train", "--out", "model.pt"]
COMPRESS = ["compress", "--budget", "0.5", "--out", "out"]
FACTORY = "factories.py"

CASES = [
    # Numbers the parser used to let through, or ranges the options did not check.
    ([*BARE, "--budget", "nan"], "budget 'nan'"),
    ([*BARE, "--budget", "inf"], "budget 'inf'"),
    ([*BARE, "--budget", "0"], "budget '0'"),
    ([*BARE, "--budget", "1e400"], "budget '1e400'"),
    ([*BARE, "--budget", "flops=1.5"], "budget 'flops=1.5' is out of range"),
    ([*BARE, "--budget", "10000000"], "more than the baseline's"),
    ([*BARE, "--budget", "3"], "cannot be met"),
    ([*BARE, "--budget", "0.5", "--budget", "0.2"], "two budgets on params"),
    ([*SEARCH, "--trials", "0"], "--trials: '0' must be > 0"),
    ([*SEARCH, "--trials", "-1"], "--trials: '-1'"),
    ([*SEARCH, "--batch-size", "0"], "--batch-size: '0' must be > 0"),
    ([*SEARCH, "--finetune-lr", "inf"], "--finetune-lr: 'inf' is not a finite number"),
    ([*SEARCH, "--finetune-lr", "nan"], "--finetune-lr: 'nan' is not a finite number"),
    ([*SEARCH, "--finetune-lr", "0"], "--finetune-lr: '0' must be > 0"),
    ([*SEARCH, "--finetune-steps", "-1"], "--finetune-steps: '-1' is negative"),
    ([*SEARCH, "--train-epochs", "inf"], "--train-epochs: 'inf' is not a finite number"),
    ([*SEARCH, "--distill", "1.5"], "--distill: '1.5' is too large; valid: at most 1"),
    ([*SEARCH, "--distill", "nan"], "--distill: 'nan'"),
    ([*SEARCH, "--distill-temperature", "0"], "--distill-temperature: '0'"),
    ([*SEARCH, "--global-share", "1.5"], "--global-share: '1.5' is too large"),
    ([*SEARCH, "--promote-margin", "-0.1"], "--promote-margin: '-0.1' is negative"),
    ([*SEARCH, "--promote-margin", "2"], "--promote-margin: '2' is too large"),
    ([*SEARCH, "--min-accuracy", "1.5"], "--min-accuracy: '1.5' is too large"),
    (["report", "somewhere", "--min-accuracy", "nan"], "--min-accuracy: 'nan'"),
    ([*SEARCH, "--promote-steps", "5"], "--promote-steps 5 is invalid"),
    ([*SEARCH, "--latency-batch", "0"], "--latency-batch: '0' must be > 0"),
    # Options that were accepted and then ignored.
    ([*SEARCH, "--latency-batch", "8"], "--latency-batch 8 has no effect"),
    ([*SEARCH, "--space", "linear.toml"], "log False is invalid"),
    ([*SEARCH, "--seed", "-1"], "--seed: '-1' is negative"),
    ([*SEARCH, "--seed", "99999999999"], "--seed: '99999999999' is too large"),
    ([*SEARCH, "--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    ([*SEARCH, "--warm-starts", "magic"], "unknown warm start 'magic'"),
    ([*SEARCH, "--config", "bad.toml"], "trials = nan"),
    # Storages, names and output folders that would fail only after the baseline.
    ([*SEARCH, "--storage", "redis://x"], "storage 'redis://x' is not understood"),
    ([*SEARCH, "--storage", "sqlite://"], "names no file"),
    ([*SEARCH, "--storage", "sqlite:////no/such/dir/x.db"], "/no/such/dir does not exist"),
    ([*SEARCH, "--storage", "journal:/no/such/dir/j.log"], "/no/such/dir does not exist"),
    ([*SEARCH, "--study", " "], "--study ' ' is invalid"),
    ([*SEARCH, "--out", "a_file"], "--out 'a_file' is a file"),
    ([*SEARCH, "--out", "a_file/run"], "--out 'a_file/run' lies under a file"),
    # Models: malformed specs, user factories that fail, models that do not fit the data.
    ([*SEARCH, "--model", ":"], "unknown model ':'"),
    ([*SEARCH, "--model", "vgg16:width=abc"], "width='abc' is invalid"),
    ([*SEARCH, "--model", "resnet20:width=inf"], "width=inf is invalid"),
    ([*SEARCH, "--model", f"{FACTORY}:boom"], "raised RuntimeError: boom"),
    ([*SEARCH, "--model", f"{FACTORY}:not_a_module"], "returned str, not a torch.nn.Module"),
    ([*SEARCH, "--model", f"{FACTORY}:three_logits"], "gives 3 logits; valid: at least 10"),
    ([*SEARCH, "--model", f"{FACTORY}:rgb_only"], "a forward pass raised RuntimeError"),
    ([*SEARCH, "--model", "broken.py:build"], "raised SyntaxError"),
    # Data, checkpoints and presets.
    ([*SEARCH, "--data", "mnist"], "unknown data spec 'mnist'"),
    ([*SEARCH, "--data", "imagefolder:one-class"], "holds images of 1 class"),
    ([*SEARCH, "--data", "imagefolder:one-filled"], "holds images of 1 class"),
    ([*SEARCH, "--data", "imagefolder:no-classes"], "has no class subfolders"),
    ([*SEARCH, "--checkpoint", "vgg11.pt"], "different model"),
    ([*SEARCH, "--checkpoint", "GARBAGE"], "cannot read checkpoint"),
    ([*SEARCH, "--checkpoint", "missing.pt"], "cannot read checkpoint 'missing.pt'"),
    ([*SEARCH, "--space", "nope"], "unknown search space 'nope'"),
    ([*SEARCH, "--space", "missing.toml"], "search space file 'missing.toml' does not exist"),
    ([*SEARCH, "--objectives", "nope"], "nope"),
    ([*SEARCH, "--objectives", "accuracy"], "two or more"),
    # demo shares the search options.
    (["demo", "--trials", "0"], "--trials: '0' must be > 0"),
    (["demo", "--budget", "1.5"], "budget '1.5' is out of range"),
    (["demo", "--out", "a_file"], "--out 'a_file' is a file"),
    # train: its checkpoint path is checked before training, not after.
    (["train", "--out", "a_folder"], "--out 'a_folder' is a folder"),
    (["train", "--out", "a_file/model.pt"], "its folder 'a_file' is a file"),
    ([*TRAIN, "--epochs", "inf"], "--epochs: 'inf' is not a finite number"),
    ([*TRAIN, "--epochs", "-1"], "--epochs: '-1' must be > 0"),
    ([*TRAIN, "--lr", "nan"], "--lr: 'nan' is not a finite number"),
    ([*TRAIN, "--batch-size", "0"], "--batch-size: '0' must be > 0"),
    ([*TRAIN, "--seed", "-3"], "--seed: '-3' is negative"),
    ([*TRAIN, "--model", f"{FACTORY}:boom"], "model factory 'factories.py:boom' raised"),
    ([*TRAIN, "--model", f"{FACTORY}:three_logits"], "gives 3 logits"),
    ([*TRAIN, "--data", "imagefolder:one-class"], "holds images of 1 class"),
    ([*TRAIN, "--device", "tpu"], "device 'tpu'"),
    # compress.
    ([*COMPRESS, "--budget", "flops=0.5"], "compress takes a parameter budget"),
    ([*COMPRESS, "--budget", "nan"], "budget 'nan'"),
    ([*COMPRESS, "--budget", "3"], "cannot be met"),
    ([*COMPRESS, "--sparse-share", "1"], "--sparse-share: '1' is too large; valid: below 1"),
    ([*COMPRESS, "--sparse-share", "nan"], "--sparse-share: 'nan'"),
    ([*COMPRESS, "--local-passes", "-1"], "--local-passes: '-1' is negative"),
    ([*COMPRESS, "--low-rank", "nope"], "nope"),
    ([*COMPRESS, "--out", "a_file"], "--out 'a_file' is a file"),
    ([*COMPRESS, "--finetune-lr", "-1"], "--finetune-lr: '-1' must be > 0"),
    ([*COMPRESS, "--model", f"{FACTORY}:boom"], "raised RuntimeError: boom"),
    ([*COMPRESS, "--checkpoint", "vgg11.pt"], "different model"),
    # report and export.
    (["report", "missing"], "missing holds no study.db"),
    (["report"], "report needs a results folder or --storage"),
    (["report", "--storage", "redis://x", "--out", "o"], "storage 'redis://x' is not understood"),
    (["report", "results", "--out", "a_file"], "--out 'a_file' is a file"),
    (["export", "results", "--trial", "0", "--out", "a_folder"], "'a_folder' is a folder"),
    (["export", "missing", "--trial", "0", "--out", "m.pt"], "holds no pareto.json"),
    (["export", "results", "--trial", "-1", "--out", "m.pt"], "--trial: '-1' is negative"),
]


@pytest.mark.parametrize(("argv", "message"), CASES,
                         ids=[" ".join(argv) for argv, _ in CASES])
def test_bad_input_is_one_line_with_status_2_before_any_training(
        argv: list[str], message: str, no_training: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("lpsd-search: error:")
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert no_training == []


def test_there_are_enough_cases_across_the_subcommands() -> None:
    commands = {argv[0] for argv, _ in CASES}
    assert len(CASES) >= 40
    assert commands == {"search", "demo", "train", "compress", "report", "export"}


def test_debug_adds_the_traceback_of_the_users_own_error(
        no_training: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = _run(["--debug", *TRAIN, "--model", f"{FACTORY}:boom"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lpsd-search: error: model factory 'factories.py:boom' raised "
                          "RuntimeError: boom\n")
    assert "Traceback" in err
    assert 'raise RuntimeError("boom")' in err  # the user's own line, from their file
    assert no_training == []


def test_the_model_check_leaves_the_model_and_the_random_state_as_they_were(
        digits: object) -> None:
    from lpsd_search.trial.preflight import check_model_fits

    model = build_model("digits-cnn", in_channels=1, num_classes=10, input_size=(8, 8))
    state = {name: value.clone() for name, value in model.state_dict().items()}
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    check_model_fits(model, digits, "digits-cnn")  # type: ignore[arg-type]
    assert torch.equal(torch.rand(3), expected)
    assert model.training
    assert all(torch.equal(value, state[name]) for name, value in model.state_dict().items())
