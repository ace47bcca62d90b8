"""The ``lpsd-search`` argument parser: every subcommand and its options.

Bad input prints one line (``lpsd-search: error: …``) and exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from lpsd_search.config import BACKENDS

DEMO_TRIALS = 20


DEMO_FINETUNE_STEPS = 150


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse prints the whole usage block; one line that names the fix is easier to read.
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; valid: 0 or more")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="digits-cnn",
                        help="digits-cnn, vgg11, vgg16, resnet20, resnet56 (NAME:width=0.5), "
                             "torchvision:NAME, package.module:function or file.py:function")
    parser.add_argument("--data", default="digits",
                        help="digits (default), fashion-mnist[:DIR], cifar10:DIR, imagefolder:DIR")
    parser.add_argument("--seed", type=_positive_int, default=0)
    parser.add_argument("--device", default="auto", help="auto (GPU when present), cpu, cuda:N")


def _add_search(parser: argparse.ArgumentParser, *, demo: bool) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML file of options (keys are the long option names); options "
                             "given on the command line win")
    parser.add_argument("--budget", action="append", default=None, required=False,
                        help="hard budget, repeatable: a fraction of the baseline's parameters "
                             "(0.1), a parameter count (50000), or bytes=… / flops=…")
    parser.add_argument("--trials", type=_positive_int, default=DEMO_TRIALS,
                        help="completed trials the study should hold (a re-run tops it up)")
    parser.add_argument("--finetune-steps", type=_positive_int,
                        default=DEMO_FINETUNE_STEPS if demo else 200)
    parser.add_argument("--finetune-lr", type=_positive_float, default=3e-3)
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--distill", type=float, default=0.0, metavar="ALPHA",
                        help="knowledge-distillation weight from the dense model (0 = off)")
    parser.add_argument("--distill-temperature", type=_positive_float, default=4.0)
    parser.add_argument("--space", default="default",
                        help="search-space preset (default, svd, tucker-vbmf, mtd, lpsd, alpsd, "
                             "all) or TOML file")
    parser.add_argument("--objectives", default="default",
                        help="objectives preset (default, bytes, flops, latency, loss, "
                             "size-and-speed), TOML file, or a list such as accuracy,flops")
    parser.add_argument("--latency-batch", type=_positive_int, default=None,
                        help="batch size of the measured latency objective")
    parser.add_argument("--sampler", default="tpe", choices=["tpe", "nsga2", "random"])
    parser.add_argument("--strategy", default="global-local", choices=["global-local", "flat"],
                        help="global knobs first, then per-layer refinements; or flat")
    parser.add_argument("--global-share", type=float, default=0.25 if demo else 0.4,
                        help="share of the trials in the global stage")
    parser.add_argument("--warm-starts", default="uniform,vbmf,alds,lpsd,alpsd",
                        help="heuristic plans run first (comma list; those the space cannot "
                             "express are skipped)")
    parser.add_argument("--no-warm-start", action="store_true", help="no warm starts")
    parser.add_argument("--promote-steps", type=_positive_int, default=None,
                        help="fine-tune steps of the trials promoted at the end (default 3× "
                             "--finetune-steps; 0 disables promotion)")
    parser.add_argument("--promote-margin", type=float, default=0.005,
                        help="promote trials within this validation accuracy of the front")
    parser.add_argument("--out", type=Path, default=Path("lpsd-demo" if demo else "lpsd-out"))
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL: sqlite:///FILE (default OUT/study.db), "
                             "postgresql://…, journal:FILE")
    parser.add_argument("--study", default="lpsd-search", help="study name in the storage")
    parser.add_argument("--train-epochs", type=_positive_float, default=30.0,
                        help="epochs of the baseline trained when no --checkpoint is given")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where trained baselines are cached (default ~/.cache/lpsd-search)")
    parser.add_argument("--no-report", action="store_true",
                        help="skip pareto.png / report.html at the end")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="lpsd-search", description=(
        "Budget-aware search over per-layer tensor decompositions plus sparse residuals."))
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings only")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = commands.add_parser("train", help="train a dense baseline and save a checkpoint")
    _add_common(train)
    train.add_argument("--epochs", type=_positive_float, default=30.0)
    train.add_argument("--lr", type=_positive_float, default=3e-3)
    train.add_argument("--batch-size", type=_positive_int, default=64)
    train.add_argument("--out", type=Path, required=True, help="checkpoint file to write")

    search = commands.add_parser("search", help="search per-layer compression under a budget")
    _add_common(search)
    search.add_argument("--checkpoint", default=None,
                        help="trained weights (lpsd-search train); default: train and cache")
    _add_search(search, demo=False)
    add_ray_arguments(search)

    compress = commands.add_parser(
        "compress", help="whole-model LPSD (Sparsification), ALPSD or low-rank, no search")
    _add_common(compress)
    compress.add_argument("--checkpoint", default=None,
                          help="trained weights (lpsd-search train); default: train and cache")
    compress.add_argument("--method", default="lpsd", choices=["lpsd", "alpsd", "lowrank"],
                          help="lpsd: low rank + global sparsification; alpsd: alternating fit "
                               "with global then local sparsity selection; lowrank: no sparse "
                               "part")
    compress.add_argument("--budget", required=True,
                          help="at most this fraction of the baseline's parameters (0.05), "
                               "or this many parameters (50000)")
    compress.add_argument("--low-rank", default="alds",
                          help="low-rank method of the L part (default alds, as in the paper)")
    compress.add_argument("--sparse-share", type=float, default=0.3,
                          help="share of the compressible layers' budget spent on sparse entries")
    compress.add_argument("--local-passes", type=_positive_int, default=1,
                          help="ALPSD local-selection passes over the layers (0 skips it)")
    compress.add_argument("--finetune-steps", type=_positive_int, default=200)
    compress.add_argument("--finetune-lr", type=_positive_float, default=3e-3)
    compress.add_argument("--batch-size", type=_positive_int, default=64)
    compress.add_argument("--train-epochs", type=_positive_float, default=30.0)
    compress.add_argument("--cache-dir", type=Path, default=None)
    compress.add_argument("--out", type=Path, default=Path("lpsd-compress"),
                          help="folder for plan.json")

    demo = commands.add_parser("demo", help="digits + small CNN: a complete search in minutes")
    demo.add_argument("--seed", type=_positive_int, default=0)
    demo.add_argument("--device", default="auto")
    _add_search(demo, demo=True)

    report = commands.add_parser("report", help="re-create pareto.json, trials.csv and the "
                                                "visual report from a study's storage")
    report.add_argument("dir", type=Path, nargs="?", default=None,
                        help="results folder of a search (reads DIR/study.db)")
    report.add_argument("--storage", default=None, help="storage URL (instead of DIR/study.db)")
    report.add_argument("--study", default=None, help="study name (default: the only one)")
    report.add_argument("--out", type=Path, default=None, help="where to write (default DIR)")

    export = commands.add_parser("export", help="write a front trial as a model file (.pt) and "
                                                "a torch.export program (.pt2)")
    export.add_argument("dir", type=Path, help="results folder of a search")
    export.add_argument("--trial", type=_positive_int, required=True)
    export.add_argument("--out", type=Path, required=True, help="model file to write (.pt)")
    return parser


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative; valid: 0 or more")
    return value


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and the Ray backend's options, for ``lpsd-search search``."""
    group = parser.add_argument_group("backend")
    group.add_argument("--backend", choices=BACKENDS, default="optuna",
                       help="optuna: trials in this process (several processes may share a "
                            "--storage); ray: Ray Tune trials on a Ray cluster")
    group.add_argument("--ray-address", default=None,
                       help="HOST:PORT of a running Ray cluster (default: start a local one)")
    group.add_argument("--cpus-per-trial", type=_fraction, default=1.0,
                       help="CPUs Tune reserves per trial (ray backend)")
    group.add_argument("--gpus-per-trial", type=_fraction, default=0.0,
                       help="GPUs per trial, fractions share a GPU (ray backend)")
    group.add_argument("--max-concurrent", type=int, default=2,
                       help="trials running at once (ray backend)")
