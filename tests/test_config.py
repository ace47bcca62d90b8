"""One source of truth for configuration: the dataclasses' defaults are the command line's and
the Python API's, both map onto them through one function, and a TOML config becomes the
parser's defaults (checked like the command line) with the command line winning."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any

import pytest

from lpsd_search import api
from lpsd_search.cli.main import main, parse_args
from lpsd_search.cli.options import options_from_args
from lpsd_search.cli.parser import build_parser
from lpsd_search.config import (
    PROMOTE_FACTOR,
    BaselineConfig,
    CompressConfig,
    CompressOptions,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.errors import UserInputError
from lpsd_search.options import (
    DEMO,
    OPTIONS,
    UNMAPPED,
    field_default,
    option_default,
    search_options,
)

SECTIONS = {"finetune": TrainConfig, "search": SearchConfig, "baseline": BaselineConfig,
            "runtime": RuntimeConfig}


def _field_paths() -> set[str]:
    paths = set()
    for item in dataclasses.fields(SearchOptions):
        if item.name in SECTIONS:
            paths |= {f"{item.name}.{sub.name}" for sub in dataclasses.fields(SECTIONS[item.name])}
        else:
            paths.add(item.name)
    return paths


def _as_option(name: str, parsed: Any) -> Any:
    """A parser default spelt as the dataclasses spell it (comma list → tuple, list → tuple)."""
    if name == "warm_starts" and isinstance(parsed, str):
        return tuple(parsed.split(","))
    return tuple(parsed) if isinstance(parsed, list) else parsed


def _api_options(**arguments: Any) -> SearchOptions:
    bound = inspect.signature(api.search).bind(**arguments)
    bound.apply_defaults()
    bound.arguments.pop("no_report")  # what the search writes, not how it searches
    return api.search_options(**bound.arguments)


def test_every_field_has_an_option_or_is_documented_as_having_none():
    mapped = {path for paths in OPTIONS.values() for path in paths}
    assert mapped.isdisjoint(UNMAPPED)
    assert mapped | UNMAPPED == _field_paths()


@pytest.mark.parametrize("name", list(OPTIONS))
def test_search_parser_default_is_the_dataclass_default(name):
    parser = build_parser().commands["search"]
    assert _as_option(name, parser.get_default(name)) == option_default(name)
    defaults = {repr(field_default(path)) for path in OPTIONS[name]}
    assert len(defaults) == 1  # an option setting several fields (seed) sets equal defaults
    if name == "promote_steps":
        assert field_default(OPTIONS[name][0]) is None
        assert option_default(name) is None


def test_demo_parser_takes_the_demo_overrides_and_the_defaults_otherwise():
    parser = build_parser().commands["demo"]
    assert set(DEMO) <= set(OPTIONS)
    for name in OPTIONS:
        if name in ("model", "data", "checkpoint"):
            assert parser.get_default(name) is None  # not options of the demo
            continue
        expected = DEMO.get(name, option_default(name))
        assert _as_option(name, parser.get_default(name)) == expected, name
    options = options_from_args(parse_args(["demo"]))
    assert (options.search.trials, options.finetune.steps, options.search.global_share,
            options.budgets, options.out) == (30, 100, 0.25, ("0.5",), Path("lpsd-demo"))
    assert options.search.promote_steps == PROMOTE_FACTOR * 100


def test_cli_and_api_build_the_same_default_options():
    from_cli = options_from_args(parse_args(["search", "--budget", "0.1"]))
    assert from_cli == _api_options(budget="0.1") == search_options(budget="0.1")
    assert from_cli == SearchOptions(budget=("0.1",))
    assert from_cli.finetune.lr == 3e-3 == TrainConfig().lr
    assert from_cli.search.promote_steps == PROMOTE_FACTOR * TrainConfig().steps


def test_cli_and_api_map_every_option_the_same_way():
    from_cli = options_from_args(parse_args([
        "search", "--model", "vgg11", "--data", "cifar10:/d", "--budget", "0.2", "--budget",
        "flops=0.5", "--out", "o", "--checkpoint", "c.pt", "--space", "svd", "--objectives",
        "flops", "--latency-batch", "4", "--device", "cpu", "--cache-dir", "cache", "--seed",
        "3", "--trials", "9", "--finetune-steps", "50", "--finetune-lr", "0.01",
        "--batch-size", "32", "--distill", "0.5", "--distill-temperature", "2", "--sampler",
        "random", "--strategy", "flat", "--global-share", "0.1", "--no-warm-start",
        "--promote-margin", "0.01", "--storage", "journal:j", "--study", "s",
        "--train-epochs", "2"]))
    from_api = _api_options(
        model="vgg11", data="cifar10:/d", budget=["0.2", "flops=0.5"], out="o",
        checkpoint="c.pt", space="svd", objectives="flops", latency_batch=4, device="cpu",
        cache_dir="cache", seed=3, trials=9, finetune_steps=50, finetune_lr=0.01, batch_size=32,
        distill=0.5, distill_temperature=2, sampler="random", strategy="flat", global_share=0.1,
        no_warm_start=True, promote_margin=0.01, storage="journal:j", study="s",
        train_epochs=2)
    assert from_cli == from_api
    assert (from_cli.search.warm_starts, from_cli.search.promote_steps) == ((), 150)
    assert from_cli.finetune.seed == from_cli.search.seed == 3 and from_cli.baseline.seed == 0


def test_the_api_takes_every_search_option_with_the_same_default():
    dests = {action.dest for action in build_parser().commands["search"]._actions} - {"help"}
    parameters = inspect.signature(api.search).parameters
    assert set(parameters) == dests - set(api.CLI_ONLY)
    assert set(api.CLI_ONLY) <= dests
    for name in OPTIONS:
        default = parameters[name].default
        if default is not inspect.Parameter.empty:
            assert _as_option(name, default) == option_default(name), name


def test_help_shows_the_defaults(capsys):
    for command, steps in (("search", 200), ("demo", 100)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"fine-tune steps of every trial (default: {steps})" in text
        assert "(default: 3× --finetune-steps)" in text


def test_dataclasses_reject_bad_values_in_one_line():
    for make, bad in ((lambda: SearchConfig(trials=-3), "-3"),
                      (lambda: SearchConfig(global_share=1.5), "1.5"),
                      (lambda: SearchConfig(promote_steps=-7), "-7"),
                      (lambda: TrainConfig(lr=0.0), "0.0"),
                      (lambda: SearchOptions(budget=()), "--budget"),
                      (lambda: search_options(budget="0.1", rank_scale=2), "rank_scale")):
        with pytest.raises(UserInputError) as caught:
            make()
        message = str(caught.value)
        assert bad in message and "valid" in message and len(message.splitlines()) == 1


def test_promotion_default_follows_the_fine_tune():
    assert SearchConfig().promote_steps is None
    resolved = SearchOptions(budget="0.1", finetune=TrainConfig(steps=40))
    assert resolved.search.promote_steps == 120
    assert dataclasses.replace(resolved, device="cpu").search.promote_steps == 120
    explicit = SearchOptions(budget="0.1", search=SearchConfig(promote_steps=0))
    assert explicit.search.promote_steps == 0


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_config_values_become_defaults_and_the_command_line_wins(tmp_path):
    path = _config(tmp_path, 'budget = ["0.3", "flops=0.6"]\ntrials = 2\nfinetune_steps = 40\n'
                             'warm-starts = ["uniform"]\nno-warm-start = false\nout = "r"\n'
                             'sampler = "random"\n')
    args = parse_args(["search", "--config", str(path)])
    assert (args.budget, args.trials, args.finetune_steps, args.warm_starts, args.out,
            args.sampler) == (["0.3", "flops=0.6"], 2, 40, "uniform", Path("r"), "random")
    args = parse_args(["search", "--config", str(path), "--trials", "5", "--budget", "0.1"])
    assert (args.budget, args.trials) == (["0.1"], 5)
    options = options_from_args(args)
    assert options.search.promote_steps == PROMOTE_FACTOR * 40
    demo = parse_args(["demo", "--config", str(path)])
    assert (demo.trials, demo.finetune_steps) == (2, 40)


@pytest.mark.parametrize(("text", "message"), [
    ('budget = "0.3"\nrank-scale = 2\n', "'rank-scale' is not an option of lpsd-search search;"
                                         " valid keys: model, data, seed"),
    ("trials = -3\n", "trials = -3: '-3' must be > 0"),
    ("trials = 2.5\n", "is not a whole number"),
    ('sampler = "cmaes"\n', "invalid choice; valid: auto, tpe, nsga2, random, rung-gp, rung-tpe"),
    ('no-warm-start = "yes"\n', "valid: true or false"),
    ("trials = [1, 2]\n", "valid: a string or a number"),
    ("config = 'other.toml'\n", "'config' is not an option"),
    ("this is = not toml\n", "is not valid TOML"),
])
def test_bad_config_is_a_one_line_error(text, message, tmp_path, capsys):
    path = _config(tmp_path, text)
    assert main(["search", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("lpsd-search: error: ")
    assert message in err


def test_unreadable_config_is_a_one_line_error(tmp_path, capsys):
    assert main(["search", "--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lpsd-search: error: cannot read config") and len(err.splitlines()) == 1


def test_train_and_compress_parser_defaults_are_the_dataclass_defaults():
    commands = build_parser().commands
    train, compress = commands["train"], commands["compress"]
    baseline, finetune = BaselineConfig(), TrainConfig()
    assert (train.get_default("epochs"), train.get_default("lr"),
            train.get_default("batch_size")) == (baseline.epochs, baseline.lr,
                                                 baseline.batch_size)
    config, options = CompressConfig(), CompressOptions(budget="0.1")
    assert {name: compress.get_default(name) for name in (
        "method", "low_rank", "sparse_share", "local_passes", "finetune_steps", "finetune_lr",
        "batch_size", "train_epochs", "out", "model", "data", "device", "seed")} == {
        "method": config.procedure, "low_rank": config.low_rank,
        "sparse_share": config.sparse_share, "local_passes": config.local_passes,
        "finetune_steps": finetune.steps, "finetune_lr": finetune.lr,
        "batch_size": finetune.batch_size, "train_epochs": baseline.epochs,
        "out": options.out, "model": options.model, "data": options.data,
        "device": options.device, "seed": options.seed}
