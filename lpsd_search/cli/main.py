"""The ``lpsd-search`` commands: train, search, compress, demo, report, export.

Bad input prints one line (``lpsd-search: error: …``) and exits with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lpsd_search.cli.parser import build_parser
from lpsd_search.errors import RunFault, UserInputError

if TYPE_CHECKING:
    import optuna

    from lpsd_search.config import RuntimeConfig, SearchOptions

logger = logging.getLogger("lpsd_search")

def _runtime_config(args: argparse.Namespace) -> RuntimeConfig:
    from lpsd_search.config import RuntimeConfig

    return RuntimeConfig(precision=args.precision, channels_last=args.channels_last,
                         compile=args.compile, threads=args.threads)


def _train(args: argparse.Namespace) -> None:
    from lpsd_search.config import BaselineConfig
    from lpsd_search.data.splits import load_data
    from lpsd_search.models.checkpoint import save_checkpoint
    from lpsd_search.trial.baseline import baseline_meta, train_baseline
    from lpsd_search.trial.device import resolve_device
    from lpsd_search.trial.preflight import check_output_file
    from lpsd_search.trial.runtime import resolve_runtime

    check_output_file(args.out)  # now, not after the training whose weights it would lose
    device = resolve_device(args.device)
    runtime = resolve_runtime(_runtime_config(args), device)
    data = load_data(args.data)
    config = BaselineConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                            seed=args.seed)
    model, scores = train_baseline(args.model, data, config, device, runtime=runtime)
    save_checkpoint(args.out, model, model_spec=args.model, data_spec=data.spec,
                    data_fingerprint=data.fingerprint,
                    meta=baseline_meta(data, **scores, epochs=args.epochs, lr=args.lr,
                                       seed=args.seed))
    print(f"saved {args.out}: validation accuracy {scores['accuracy']:.4f}, "
          f"test accuracy {scores['test_accuracy']:.4f}")


def _compress(args: argparse.Namespace) -> None:
    from lpsd_search.config import BaselineConfig, CompressConfig, CompressOptions, TrainConfig
    from lpsd_search.decompositions.base import get_method
    from lpsd_search.procedures.run import run_compress

    get_method(args.low_rank)  # an unknown method fails before any data is loaded
    options = CompressOptions(
        model=args.model, data=args.data, budget=args.budget, out=args.out,
        config=CompressConfig(procedure=args.method, low_rank=args.low_rank,
                              sparse_share=args.sparse_share, local_passes=args.local_passes),
        checkpoint=args.checkpoint,
        finetune=TrainConfig(steps=args.finetune_steps, lr=args.finetune_lr,
                             batch_size=args.batch_size, seed=args.seed,
                             admm_steps=args.admm_steps, admm_rho=args.admm_rho,
                             admm_rho_growth=args.admm_rho_growth, orth_reg=args.orth_reg),
        # The seed varies the run, not the dense model it starts from.
        baseline=BaselineConfig(epochs=args.train_epochs),
        device=args.device, runtime=_runtime_config(args), cache_dir=args.cache_dir,
        seed=args.seed,
    )
    document = run_compress(options)
    base, result = document["baseline"], document["compressed"]
    print(f"{args.method}: {result['params']:,} params ({result['compression']:.1f}x smaller "
          f"than {base['params']:,}), validation accuracy {result['accuracy']:.2%} "
          f"({result['accuracy_before_finetune']:.2%} before the fine-tune; baseline "
          f"{base['accuracy']:.2%}), test {result['test_accuracy']:.2%}")
    print(f"plan: {args.out / 'plan.json'}; model: {args.out / document['model_file']} "
          f"(lpsd-search export {args.out} --out FILE.pt)")


def _search(args: argparse.Namespace) -> None:
    from lpsd_search.cli.options import options_from_args
    from lpsd_search.cli.progress import SearchProgress
    from lpsd_search.report.summary import print_summary

    options = options_from_args(args)
    with SearchProgress(options.search.trials) as progress:
        if getattr(args, "backend", "optuna") == "ray":
            _run_ray(args, options, progress.update)
        else:
            from lpsd_search.backends.optuna import search

            search(options, on_trial=progress.update, on_start=progress.update)
    print_summary(options.out)
    written = [options.out / "pareto.json", options.out / "trials.csv"]
    if not args.no_report:
        written += _render(options.out)
    print("results: " + ", ".join(str(path) for path in written))


def _run_ray(args: argparse.Namespace, options: SearchOptions,
             on_trial: Callable[[optuna.Study], None]) -> dict[str, Any]:
    """Run the search on Ray Tune (``--backend ray``)."""
    from lpsd_search.backends.ray.driver import run_ray_search
    from lpsd_search.config import RayConfig

    if options.runtime.workers > 1:
        raise UserInputError(f"--workers {options.runtime.workers} is for the Optuna backend; "
                             "valid with --backend ray: --max-concurrent N (and a fractional "
                             "--gpus-per-trial to share a GPU)")
    config = RayConfig(address=args.ray_address, cpus_per_trial=args.cpus_per_trial,
                       gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent)
    return run_ray_search(options, config, on_trial)


def _render(out: Path) -> list[Path]:
    from lpsd_search.report.html import render_report_or_warn  # matplotlib: only when drawn

    return render_report_or_warn(out)


def _report(args: argparse.Namespace) -> None:
    from lpsd_search.report.summary import print_summary
    from lpsd_search.strategy.study import report_from_storage

    out, _ = report_from_storage(args.dir, args.storage, args.study, args.out,
                                 args.min_accuracy)
    print_summary(out)
    written = [out / "pareto.json", out / "trials.csv", *_render(out)]
    print("results: " + ", ".join(str(path) for path in written))


def _export(args: argparse.Namespace) -> None:
    from lpsd_search.trial.export import export_trial
    from lpsd_search.trial.preflight import check_output_file

    check_output_file(args.out)
    written = export_trial(args.dir, args.trial, args.out,
                           trust_model_spec=args.trust_model_spec)
    print("wrote " + ", ".join(str(path) for path in written))
    print("both take raw images (float N×C×H×W, pixels as the data stores them) and normalise "
          "them themselves; the .pt's meta holds the recipe ('preprocessing')")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; a ``--config`` file's options become the subcommand's defaults
    and the command line is parsed again, so its own options win.

    Raises:
        UserInputError: the config file is unreadable, invalid, or holds a bad key or value.
    """
    parser = build_parser()
    tokens = sys.argv[1:] if argv is None else list(argv)
    relaxed = _relax_required(parser) if any(_names_config(t) for t in tokens) else []
    args = parser.parse_args(argv)
    defaults: dict[str, Any] = {}
    if getattr(args, "config", None) is not None:
        from lpsd_search.cli.options import config_defaults, read_config

        command = parser.commands[args.command]
        defaults = config_defaults(command, read_config(args.config), repr(str(args.config)))
        command.set_defaults(**defaults)
    for action in relaxed:  # what the file does not give, the command line must
        action.required = action.dest not in defaults
    if relaxed or defaults:
        args = parser.parse_args(argv)
    return args


def _names_config(token: str) -> bool:
    """Whether a command-line token is ``--config`` (or an abbreviation argparse accepts)."""
    name = token.partition("=")[0]
    return len(name) > 3 and "--config".startswith(name)


def _relax_required(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Make the subcommands' required options optional for a first parse: a ``--config``
    file may give them (``--budget``, say). Returns the actions relaxed."""
    relaxed = []
    for command in getattr(parser, "commands", {}).values():
        for action in command._actions:  # argparse lists its actions only there
            if action.required and action.option_strings:
                action.required = False
                relaxed.append(action)
    return relaxed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lpsd-search``; returns the exit status."""
    try:
        args = parse_args(argv)
    except UserInputError as error:
        print(f"lpsd-search: error: {error}", file=sys.stderr)
        return 2
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        from lpsd_search.cli.conflicts import check_ignored

        check_ignored(sys.argv[1:] if argv is None else argv, args)
        if args.command == "train":
            _train(args)
        elif args.command == "compress":
            _compress(args)
        elif args.command == "report":
            _report(args)
        elif args.command == "export":
            _export(args)
        else:
            _search(args)
    except UserInputError as error:
        print(f"lpsd-search: error: {error}", file=sys.stderr)
        if args.debug:  # where it was raised, and the user's own exception it may wrap
            traceback.print_exc()
        return 2
    except RunFault as error:  # a fault of the run, not of its input: one line, status 1
        kept = f" in {args.out}" if getattr(args, "out", None) else ""
        print(f"lpsd-search: {error}; finished trials are kept{kept}, re-run the same command "
              "to continue", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lpsd-search: interrupted; finished trials are kept, re-run to continue",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
