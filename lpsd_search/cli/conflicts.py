"""Options the rest of the command line would ignore: refused in one line, never dropped silently.

A flag given on the command line that another choice makes meaningless (``--global-share`` with
``--strategy flat``, Ray's options without ``--backend ray``, ``--sparse-share`` with
``--method lowrank`` …) used to be accepted and then ignored, so the run was not the one asked
for. Only flags typed on the command line count: a ``--config`` file's keys become defaults.
``--train-epochs`` beside a ``--checkpoint`` is allowed: scripts keep one recipe for both cases.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from lpsd_search.errors import UserInputError


@dataclass(frozen=True)
class Rule:
    """``flag`` has no effect when ``ignored(args)``; ``valid`` says what would.

    Attributes:
        flag: the option, as typed.
        commands: the subcommands the rule applies to.
        ignored: whether the parsed arguments make the option meaningless.
        why: the choice that makes it so, for the message.
        valid: what to do instead.
    """

    flag: str
    commands: tuple[str, ...]
    ignored: Callable[[argparse.Namespace], bool]
    why: str
    valid: str


_SEARCHES = ("search", "demo")
_RAY = ("--ray-address", "--cpus-per-trial", "--gpus-per-trial", "--max-concurrent")

RULES: tuple[Rule, ...] = (
    Rule("--global-share", _SEARCHES, lambda a: a.strategy != "global-local",
         "without --strategy global-local", "drop it, or --strategy global-local"),
    Rule("--promote-margin", _SEARCHES, lambda a: a.strategy == "ladder",
         "with --strategy ladder (it promotes each rung's best)",
         "--promote-top N, or --strategy global-local / flat"),
    Rule("--promote-top", _SEARCHES, lambda a: a.strategy != "ladder" or a.promote_steps == 0,
         "without --strategy ladder and promotion", "drop it, or --strategy ladder"),
    Rule("--warm-starts", _SEARCHES, lambda a: a.no_warm_start, "with --no-warm-start",
         "one of the two"),
    Rule("--promote-margin", _SEARCHES, lambda a: a.promote_steps == 0,
         "with --promote-steps 0 (no promotion)", "drop it, or --promote-steps N > 0"),
    Rule("--distill-temperature", _SEARCHES, lambda a: not a.distill,
         "without --distill ALPHA > 0", "add --distill, or drop it"),
    *(Rule(flag, _SEARCHES, lambda a: a.backend != "ray", "without --backend ray",
           "add --backend ray, or drop it") for flag in _RAY),
    Rule("--sparse-share", ("compress",), lambda a: a.method == "lowrank",
         "with --method lowrank (no sparse part)", "--method lpsd or alpsd, or drop it"),
    Rule("--local-passes", ("compress",), lambda a: a.method != "alpsd",
         "without --method alpsd (only ALPSD selects locally)", "--method alpsd, or drop it"),
)


def given_flags(argv: Sequence[str]) -> set[str]:
    """The long options typed in ``argv`` (``--name`` and ``--name=value`` alike)."""
    return {token.split("=", 1)[0] for token in argv if token.startswith("--")}


def check_ignored(argv: Sequence[str], args: argparse.Namespace) -> None:
    """Refuse a typed option that the other options make meaningless.

    Raises:
        UserInputError: ``--FLAG has no effect WHY; valid: …``.
    """
    given = given_flags(argv)
    for rule in RULES:
        if args.command in rule.commands and rule.flag in given and rule.ignored(args):
            raise UserInputError(f"{rule.flag} has no effect {rule.why}; valid: {rule.valid}")
