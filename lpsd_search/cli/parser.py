"""The ``lpsd-search`` argument parser: every subcommand and its options.

Every default comes from the dataclasses of ``lpsd_search.config`` (the demo's from
``options.DEMO``) and ``--help`` shows it. Bad input prints one line (``lpsd-search: error: …``)
and exits with status 2.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from lpsd_search import __version__
from lpsd_search.config import (
    BACKENDS,
    MAX_SEED,
    PRECISIONS,
    PROCEDURES,
    SAMPLERS,
    STRATEGIES,
    SWITCHES,
    BaselineConfig,
    CompressConfig,
    CompressOptions,
    RayConfig,
)
from lpsd_search.options import DEMO, option_default


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(required)`` to a required option's help, else ``(default: …)`` unless the
    default is None/False or the help already says ``(default: …)``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required and action.option_strings:
            return text + " (required)"
        default = action.default
        if ("(default:" in text or not action.option_strings or default is None
                or default is False or default == argparse.SUPPRESS):
            return text
        if isinstance(default, list):  # --budget of the demo or of a config file
            return text + " (default: " + " ".join(map(str, default)).replace("%", "%%") + ")"
        return text + " (default: %(default)s)"


class CommandParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line; ``commands`` holds the subcommands'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _DefaultsFormatter)
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}

    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; one line that names the fix is easier to read.
        # Every error starts "lpsd-search: error:", a subcommand's too (its prog has two words).
        program, _, command = self.prog.partition(" ")
        where = f"{command}: " if command else ""
        self.exit(2, f"{program}: error: {where}{message} (see {self.prog} --help)\n")


class AppendReplacingDefault(argparse.Action):
    """A repeatable option whose first value on the command line replaces the default list
    (``argparse``'s ``append`` would add to it), so a config file's or the demo's ``--budget``
    gives way to the command line's."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        items = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, [*items, values])


def _number(convert: Callable[[str], Any], noun: str, *, zero: bool,
            most: float | None = None, below: bool = False) -> Callable[[str], Any]:
    """An argparse type: ``convert``'s finite number, at least 0 (``zero``) or above 0, and at
    most ``most`` (below it with ``below``)."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        # float() reads "nan" and "inf"; NaN passes every comparison below unnoticed.
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if zero and value < 0:
            raise argparse.ArgumentTypeError(f"{text!r} is negative; valid: 0 or more")
        if not zero and not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
        if most is not None and (value >= most if below else value > most):
            bound = f"below {most:g}" if below else f"at most {most:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is too large; valid: {bound}")
        return value

    return parse


_positive_int = _number(int, "a whole number", zero=True)
_count = _number(int, "a whole number", zero=False)
_seed = _number(int, "a whole number", zero=True, most=MAX_SEED)
_positive_float = _number(float, "a number", zero=False)
_fraction = _number(float, "a number", zero=True)
_share = _number(float, "a number", zero=True, most=1.0)
_part = _number(float, "a number", zero=True, most=1.0, below=True)
_growth = _number(float, "a number", zero=False, most=100.0)  # below 1: refused by TrainConfig


def _default(name: str, demo: bool = False) -> Any:
    """The default of search option ``name`` as the parser holds it."""
    value = DEMO[name] if demo and name in DEMO else option_default(name)
    if name == "warm_starts":
        return ",".join(value)
    if name == "budget":
        return None if value is None else list(value)
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=_default("model"),
                        help="digits-cnn, vgg11, vgg16, resnet20, resnet56 (NAME:width=0.5), "
                             "torchvision:NAME, package.module:function or file.py:function")
    parser.add_argument("--data", default=_default("data"),
                        help="digits, fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR")
    _add_seed_device(parser)


def _add_seed_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=_seed, default=_default("seed"),
                        help="seeds the search's sampler and fine-tunes (train: the "
                             "initialisation and batches); never the data split, which is "
                             "fixed by the data")
    parser.add_argument("--device", default=_default("device"),
                        help="auto (GPU when present), cpu, cuda:N")


def _adder(parser: argparse.ArgumentParser, demo: bool) -> Callable[..., None]:
    """``add(flag, **kwargs)``: an option of ``parser`` whose default is the search option's."""

    def add(flag: str, **kwargs: Any) -> None:
        parser.add_argument(flag, default=_default(flag[2:].replace("-", "_"), demo), **kwargs)

    return add


def _add_training(parser: argparse.ArgumentParser, *, demo: bool, tuned: str) -> None:
    """The fine-tune and baseline options that ``search``, ``demo`` and ``compress`` share.

    Args:
        parser: the subcommand's parser.
        demo: take the demo's defaults.
        tuned: what is fine-tuned, for the help text.
    """
    add = _adder(parser, demo)
    add("--finetune-steps", type=_positive_int, help=f"fine-tune steps of {tuned}")
    add("--finetune-lr", type=_positive_float, help="fine-tune learning rate (AdamW, cosine)")
    add("--batch-size", type=_count, help="fine-tune batch size")
    add("--train-epochs", type=_positive_float,
        help="epochs of the baseline trained when no --checkpoint is given")
    add("--cache-dir", type=Path,
        help="where trained baselines are cached (default ~/.cache/lpsd-search)")
    _add_methods(parser)
    _add_runtime(parser)


def _add_methods(parser: argparse.ArgumentParser) -> None:
    """The training-time methods (unset: the search space's ``[training]`` table, else off)."""
    add = _adder(parser, False)
    add("--admm-steps", type=_positive_int, metavar="N",
        help="train the dense model N steps by ADMM towards each plan's ranks (tt, tucker2, "
             "svd, alds layers) before decomposing it (default: the search space's, else 0 = "
             "off)")
    add("--admm-rho", type=_positive_float, metavar="RHO",
        help="ADMM penalty ρ at the start (default: the search space's, else 0.1)")
    add("--admm-rho-growth", type=_growth, metavar="G",
        help="ρ is multiplied by G at each of the 10 ADMM dual updates, 1 to 100 (default: "
             "the search space's, else 1.5)")
    add("--orth-reg", type=_fraction, metavar="LAMBDA",
        help="weight of the penalty Σ‖UᵀU − I‖² on the factor matrices of decomposed layers "
             "while fine-tuning (default: the search space's, else 0 = off)")


def _add_runtime(parser: argparse.ArgumentParser) -> None:
    """How trials (and a trained baseline) use the hardware."""
    add = _adder(parser, False)
    add("--precision", choices=PRECISIONS,
        help="autocast precision of training and evaluation (auto: bf16 on AMX/AVX512-BF16 "
             "CPUs, else fp32 with TF32 on CUDA; large models on a GPU want bf16); weights "
             "and factors stay fp32")
    add("--channels-last", choices=SWITCHES,
        help="channels-last memory format (auto: on the CPU, off on CUDA)")
    parser.add_argument("--compile", action="store_true", default=_default("compile"),
                        help="torch.compile each compressed model for its fine-tune")
    add("--threads", type=_count,
        help="CPU threads per process (default: the cores other jobs leave free, split "
             "between --workers)")


def _add_search(parser: argparse.ArgumentParser, *, demo: bool) -> None:
    add = _adder(parser, demo)
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML file of options (keys are the long option names); options "
                             "given on the command line win")
    # Required by search (a --config file may give it instead: cli.main relaxes it then).
    add("--budget", action=AppendReplacingDefault, required=not demo,
        help="hard budget, repeatable: a fraction of the baseline's parameters (0.1), a "
             "parameter count (50000), or bytes=… / flops=…")
    add("--trials", type=_count,
        help="completed trials the study should hold (a re-run tops it up)")
    _add_training(parser, demo=demo, tuned="every trial")
    add("--distill", type=_share, metavar="ALPHA",
        help="knowledge-distillation weight from the dense model (0 = off)")
    add("--distill-temperature", type=_positive_float, help="distillation temperature")
    add("--space", help="search-space preset (default, svd, tucker-vbmf, mtd, lpsd, alpsd, "
                        "all, tt-admm, vbmf-orth) or TOML file")
    add("--objectives", help="objectives preset (default, bytes, flops, latency, loss, "
                             "size-and-speed), TOML file, or a list such as accuracy,flops")
    add("--latency-batch", type=_count,
        help="batch size of the measured latency objective")
    add("--sampler", choices=SAMPLERS, help="Optuna sampler")
    add("--strategy", choices=STRATEGIES,
        help="ladder: each trial a size rung (the budget, then 5x, 10x, 20x … below it) and an "
             "allocation policy, the heuristics at every rung first; global-local: global "
             "knobs, then per-layer refinements; flat: every per-layer knob sampled")
    add("--global-share", type=_share, help="share of the trials in the global stage")
    add("--warm-starts", help="heuristic plans run first (comma list; those the space cannot "
                              "express are skipped)")
    parser.add_argument("--no-warm-start", action="store_true", help="no warm starts")
    add("--promote-steps", type=_positive_int,
        help="fine-tune steps of the promoted trials (the front's); 0 disables promotion "
             "(default: 3× --finetune-steps)")
    add("--promote-margin", type=_share,
        help="global-local/flat: promote trials within this validation accuracy of the front")
    add("--promote-top", type=_positive_int,
        help="ladder: promote the best this many trials of each size rung")
    add("--min-accuracy", type=_share,
        help="validation accuracy (0-1) a point needs to be shown as the best at a "
             "compression level (default: half the baseline's)")
    add("--out", type=Path, help="results folder")
    add("--workers", type=_count,
        help="trials run at once, one process each, on the same device and study (several "
             "small trials fill a GPU that one leaves idle)")
    add("--storage", help="Optuna storage URL: sqlite:///FILE (default OUT/study.db), "
                          "postgresql://…, journal:FILE")
    add("--study", help="study name in the storage")
    parser.add_argument("--no-report", action="store_true",
                        help="skip pareto.png / report.html at the end")


def _add_train(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--epochs", type=_positive_float, default=BaselineConfig.epochs,
                        help="passes over the training split")
    parser.add_argument("--lr", type=_positive_float, default=BaselineConfig.lr,
                        help="peak learning rate (AdamW, cosine)")
    parser.add_argument("--batch-size", type=_count, default=BaselineConfig.batch_size,
                        help="examples per step")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    _add_runtime(parser)


def _add_compress(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="trained weights (lpsd-search train); default: train and cache")
    parser.add_argument("--method", default=CompressConfig.procedure, choices=PROCEDURES,
                        help="lpsd: low rank + global sparsification; alpsd: alternating fit "
                             "with global then local sparsity selection; lowrank: no sparse "
                             "part")
    parser.add_argument("--budget", required=True,
                        help="at most this fraction of the baseline's parameters (0.05), "
                             "or this many parameters (50000)")
    parser.add_argument("--low-rank", default=CompressConfig.low_rank,
                        help="low-rank method of the L part (alds as in the paper)")
    parser.add_argument("--sparse-share", type=_part, default=CompressConfig.sparse_share,
                        help="share of the compressible layers' budget spent on sparse entries")
    parser.add_argument("--local-passes", type=_positive_int,
                        default=CompressConfig.local_passes,
                        help="ALPSD local-selection passes over the layers (0 skips it)")
    _add_training(parser, demo=False, tuned="the compressed model")
    parser.add_argument("--out", type=Path, default=CompressOptions.out,
                        help="folder for plan.json")


def build_parser() -> CommandParser:
    """The argument parser of every subcommand (``.commands[name]`` is a subcommand's)."""
    parser = CommandParser(prog="lpsd-search", description=(
        "Budget-aware search over per-layer tensor decompositions plus sparse residuals."))
    parser.add_argument("--version", action="version", version=f"lpsd-search {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    parser.add_argument("--debug", action="store_true",
                        help="print an error's traceback too (errors are one line without it)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=CommandParser)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        parser.commands[name] = commands.add_parser(name, help=text, description=text)
        return parser.commands[name]

    _add_train(command("train", "train a dense baseline and save a checkpoint"))

    search = command("search", "search per-layer compression under a budget")
    _add_common(search)
    search.add_argument("--checkpoint", default=_default("checkpoint"),
                        help="trained weights (lpsd-search train); default: train and cache")
    _add_search(search, demo=False)
    add_ray_arguments(search)

    _add_compress(command("compress",
                          "whole-model LPSD (Sparsification), ALPSD or low-rank, no search"))

    demo = command("demo", "digits + small CNN: a complete search in minutes")
    _add_seed_device(demo)
    _add_search(demo, demo=True)

    report = command("report", "re-create pareto.json, trials.csv and the visual report from "
                               "a study's storage")
    report.add_argument("dir", type=Path, nargs="?", default=None,
                        help="results folder of a search (reads DIR/study.db)")
    report.add_argument("--storage", default=None, help="storage URL (instead of DIR/study.db)")
    report.add_argument("--study", default=None, help="study name (default: the only one)")
    report.add_argument("--out", type=Path, default=None, help="where to write (default DIR)")
    report.add_argument("--min-accuracy", type=_share, default=None,
                        help="validation accuracy (0-1) a point needs to be shown as the best "
                             "at a compression level; kept for later reports (default: the "
                             "search's, else half the baseline's)")

    export = command("export", "write a front trial (or compress's model) as a model file "
                               "(.pt) and a torch.export program (.pt2), both taking raw "
                               "images")
    export.add_argument("dir", type=Path, help="results folder of a search or of compress")
    export.add_argument("--trial", type=_positive_int, default=None,
                        help="trial number (required for a search's folder)")
    export.add_argument("--out", type=Path, required=True, help="model file to write (.pt)")
    export.add_argument("--trust-model-spec", action="store_true",
                        help="rebuild the model from the spec saved in the file even when it "
                             "names a Python file or module (runs that code: only for results "
                             "you trust)")
    return parser


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and the Ray backend's options, for ``lpsd-search search``."""
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=BACKENDS, default=BACKENDS[0],
                       help="optuna: trials in this process (several processes may share a "
                            "--storage); ray: Ray Tune trials on a Ray cluster")
    group.add_argument("--ray-address", default=RayConfig.address,
                       help="HOST:PORT of a running Ray cluster (default: start a local one)")
    group.add_argument("--cpus-per-trial", type=_fraction, default=RayConfig.cpus_per_trial,
                       help="CPUs Tune reserves per trial (ray backend)")
    group.add_argument("--gpus-per-trial", type=_fraction, default=RayConfig.gpus_per_trial,
                       help="GPUs per trial, fractions share a GPU (ray backend)")
    group.add_argument("--max-concurrent", type=int, default=RayConfig.max_concurrent,
                       help="trials running at once (ray backend)")
