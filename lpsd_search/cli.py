"""The ``lpsd-search`` command line: train, search, compress, demo.

Bad input prints one line (``lpsd-search: error: …``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from lpsd_search.errors import UserInputError

logger = logging.getLogger("lpsd_search")

DEMO_BUDGET = "0.5"
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
    parser.add_argument("--budget", default=DEMO_BUDGET if demo else None, required=not demo,
                        help="at most this fraction of the baseline's parameters (0.1), "
                             "or this many parameters (50000)")
    parser.add_argument("--trials", type=_positive_int, default=DEMO_TRIALS,
                        help="completed trials the study should hold (a re-run tops it up)")
    parser.add_argument("--finetune-steps", type=_positive_int,
                        default=DEMO_FINETUNE_STEPS if demo else 200)
    parser.add_argument("--finetune-lr", type=_positive_float, default=3e-3)
    parser.add_argument("--batch-size", type=_positive_int, default=64)
    parser.add_argument("--space", default="default", help="search-space preset or TOML file")
    parser.add_argument("--out", type=Path, default=Path("lpsd-demo" if demo else "lpsd-out"))
    parser.add_argument("--storage", default=None,
                        help="Optuna storage URL (default: sqlite:///OUT/study.db)")
    parser.add_argument("--study", default="lpsd-search", help="study name in the storage")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="do not enqueue uniform-rank plans as the first trials")
    parser.add_argument("--train-epochs", type=_positive_float, default=30.0,
                        help="epochs of the baseline trained when no --checkpoint is given")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where trained baselines are cached (default ~/.cache/lpsd-search)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="lpsd-search", description=__doc__)
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
    return parser


def _train(args: argparse.Namespace) -> None:
    from lpsd_search.baseline import BaselineConfig, train_baseline
    from lpsd_search.checkpoint import save_checkpoint
    from lpsd_search.data import load_data
    from lpsd_search.pipeline import resolve_device

    device = resolve_device(args.device)
    data = load_data(args.data, seed=args.seed)
    config = BaselineConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            seed=args.seed)
    model, scores = train_baseline(args.model, data, config, device)
    save_checkpoint(args.out, model, model_spec=args.model, data_spec=data.spec,
                    meta={**scores, "epochs": args.epochs, "lr": args.lr, "seed": args.seed})
    print(f"saved {args.out}: validation accuracy {scores['accuracy']:.4f}, "
          f"test accuracy {scores['test_accuracy']:.4f}")


def _compress(args: argparse.Namespace) -> None:
    from lpsd_search.baseline import BaselineConfig
    from lpsd_search.compress import CompressConfig
    from lpsd_search.compress_run import CompressOptions, run_compress
    from lpsd_search.decompositions import get_method
    from lpsd_search.train import TrainConfig

    get_method(args.low_rank)  # an unknown method fails before any data is loaded
    options = CompressOptions(
        model=args.model, data=args.data, budget=args.budget, out=args.out,
        config=CompressConfig(procedure=args.method, low_rank=args.low_rank,
                              sparse_share=args.sparse_share, local_passes=args.local_passes),
        checkpoint=args.checkpoint,
        finetune=TrainConfig(args.finetune_steps, args.finetune_lr, args.batch_size,
                             seed=args.seed),
        baseline=BaselineConfig(epochs=args.train_epochs, seed=args.seed),
        device=args.device, cache_dir=args.cache_dir, seed=args.seed,
    )
    document = run_compress(options)
    base, result = document["baseline"], document["compressed"]
    print(f"{args.method}: {result['params']:,} params ({result['compression']:.1f}x smaller "
          f"than {base['params']:,}), validation accuracy {result['accuracy']:.2%} "
          f"({result['accuracy_before_finetune']:.2%} before the fine-tune; baseline "
          f"{base['accuracy']:.2%}), test {result['test_accuracy']:.2%}")
    print(f"plan: {args.out / 'plan.json'}")


def _search(args: argparse.Namespace) -> None:
    from lpsd_search.baseline import BaselineConfig
    from lpsd_search.controller import SearchConfig
    from lpsd_search.pipeline import SearchOptions, search
    from lpsd_search.progress import SearchProgress
    from lpsd_search.report import print_front
    from lpsd_search.train import TrainConfig

    options = SearchOptions(
        model=getattr(args, "model", "digits-cnn"),
        data=getattr(args, "data", "digits"),
        budget=args.budget,
        out=args.out,
        checkpoint=getattr(args, "checkpoint", None),
        space=args.space,
        finetune=TrainConfig(args.finetune_steps, args.finetune_lr, args.batch_size,
                             seed=args.seed),
        search=SearchConfig(trials=args.trials, seed=args.seed, storage=args.storage,
                            study_name=args.study, warm_start=not args.no_warm_start),
        baseline=BaselineConfig(epochs=args.train_epochs, seed=args.seed),
        device=args.device,
        cache_dir=args.cache_dir,
    )
    with SearchProgress(args.trials) as progress:
        document = search(options, on_trial=progress.update, on_start=progress.update)
    print_front(document)
    print(f"results: {args.out / 'pareto.json'}, {args.out / 'trials.csv'}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lpsd-search``; returns the exit status."""
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        if args.command == "train":
            _train(args)
        elif args.command == "compress":
            _compress(args)
        else:
            _search(args)
    except UserInputError as error:
        print(f"lpsd-search: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lpsd-search: interrupted; finished trials are kept, re-run to continue",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
