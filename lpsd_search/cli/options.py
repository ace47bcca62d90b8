"""Command-line (and TOML config) options of ``search`` / ``demo`` turned into ``SearchOptions``.

``--config run.toml`` holds the same options as the command line, keyed by their long names
(``budget = ["0.1", "flops=0.3"]``, ``finetune-steps = 300`` or ``finetune_steps = 300``);
options also given on the command line win.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from lpsd_search.config import BaselineConfig, SearchConfig, SearchOptions, TrainConfig
from lpsd_search.errors import UserInputError
from lpsd_search.presets import tomllib

DEMO_BUDGET = "0.5"
PROMOTE_FACTOR = 3
"""Promoted trials get this many times the search's fine-tune steps unless told otherwise."""


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    """The options of a parsed ``search`` or ``demo`` command line."""
    budgets = args.budget or ([DEMO_BUDGET] if args.command == "demo" else None)
    if not budgets:
        raise UserInputError("--budget is required; valid: --budget 0.1 (a fraction of the "
                             "baseline's parameters), --budget 50000, --budget flops=0.3")
    warm = () if args.no_warm_start else tuple(
        name.strip() for name in args.warm_starts.split(",") if name.strip())
    promote = (args.promote_steps if args.promote_steps is not None
               else PROMOTE_FACTOR * args.finetune_steps)
    search = SearchConfig(
        trials=args.trials, seed=args.seed, storage=args.storage, study_name=args.study,
        warm_starts=warm, sampler=args.sampler, strategy=args.strategy,
        global_share=args.global_share, promote_steps=promote,
        promote_margin=args.promote_margin,
    )
    return SearchOptions(
        model=getattr(args, "model", "digits-cnn"),
        data=getattr(args, "data", "digits"),
        budget=tuple(budgets),
        out=args.out,
        checkpoint=getattr(args, "checkpoint", None),
        space=args.space,
        objectives=args.objectives,
        latency_batch=args.latency_batch,
        finetune=TrainConfig(args.finetune_steps, args.finetune_lr, args.batch_size,
                             seed=args.seed, distill_alpha=args.distill,
                             distill_temperature=args.distill_temperature),
        search=search,
        baseline=BaselineConfig(epochs=args.train_epochs, seed=args.seed),
        device=args.device,
        cache_dir=args.cache_dir,
    )


def _tokens(key: str, value: Any) -> list[str]:
    flag = "--" + key.replace("_", "-")
    values = value if isinstance(value, list) and flag == "--budget" else [value]
    tokens: list[str] = []
    for item in values:
        if isinstance(item, bool):
            tokens += [flag] if item else []
        elif isinstance(item, list):
            tokens += [flag, ",".join(str(v) for v in item)]
        else:
            tokens += [flag, str(item)]
    return tokens


def apply_config(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                 args: argparse.Namespace) -> argparse.Namespace:
    """Re-parse with ``args.config``'s options inserted before the command line's own.

    Raises:
        UserInputError: unreadable or invalid TOML, or a key that is not an option.
    """
    path = args.config
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserInputError(f"cannot read config {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"config {str(path)!r} is not valid TOML: {error}") from None
    line = list(sys.argv[1:] if argv is None else argv)
    given = {token.split("=", 1)[0] for token in line if token.startswith("--")}
    inserted: list[str] = []
    for key, value in data.items():
        flag = "--" + key.replace("_", "-")
        if flag in given or flag == "--config":
            continue
        inserted += _tokens(key, value)
    where = line.index(args.command) + 1
    merged, unknown = parser.parse_known_args(line[:where] + inserted + line[where:])
    if unknown:
        raise UserInputError(f"config {str(path)!r}: {unknown[0]!r} is not an option of "
                             f"{args.command}; valid: the long option names of "
                             f"'lpsd-search {args.command} --help'")
    return merged
