"""Command-line (and TOML config) options of ``search`` / ``demo`` turned into ``SearchOptions``.

``--config run.toml`` holds the same options as the command line, keyed by their long names
(``budget = ["0.1", "flops=0.3"]``, ``finetune-steps = 300`` or ``finetune_steps = 300``). Its
values are checked and converted like the command line's and become the subcommand parser's
defaults, so options also given on the command line win.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lpsd_search.cli.parser import AppendReplacingDefault
from lpsd_search.config import SearchOptions
from lpsd_search.errors import UserInputError
from lpsd_search.options import OPTIONS, search_options
from lpsd_search.presets import tomllib


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    """The options of a parsed ``search`` or ``demo`` command line (``options.search_options``
    with the parser's values; ``demo`` has no ``--model`` / ``--data`` / ``--checkpoint``)."""
    names = (*OPTIONS, "no_warm_start")
    return search_options(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def read_config(path: Path) -> dict[str, Any]:
    """The table of a TOML config file.

    Raises:
        UserInputError: the file cannot be read or is not valid TOML.
    """
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserInputError(f"cannot read config {str(path)!r}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"config {str(path)!r} is not valid TOML: {error}") from None


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's long options a config may set, by name without the dashes."""
    # argparse lists its actions only in ``_actions``.
    return {flag[2:]: action for action in parser._actions
            for flag in action.option_strings
            if flag.startswith("--") and action.dest not in ("help", "config")}


def _convert(action: argparse.Action, value: Any) -> Any:
    """One config value through the option's type and choices, as argparse would treat it."""
    if isinstance(value, (bool, list, dict)):
        raise ValueError("invalid; valid: a string or a number")
    text = str(value)
    converter = action.type
    try:
        converted = converter(text) if callable(converter) else text
    except argparse.ArgumentTypeError as error:
        raise ValueError(str(error)) from None
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"invalid choice; valid: {', '.join(map(str, action.choices))}")
    return converted


def _value(action: argparse.Action, value: Any) -> Any:
    if action.nargs == 0:  # a flag such as --no-warm-start
        if not isinstance(value, bool):
            raise ValueError("invalid; valid: true or false")
        return value
    if isinstance(action, AppendReplacingDefault):
        return [_convert(action, item) for item in (value if isinstance(value, list)
                                                    else [value])]
    if action.dest == "warm_starts" and isinstance(value, list):
        value = ",".join(str(item) for item in value)
    return _convert(action, value)


def config_defaults(parser: argparse.ArgumentParser, table: Mapping[str, Any],
                    source: str) -> dict[str, Any]:
    """The parser defaults (by dest) that a config's ``table`` sets, checked and converted.

    Raises:
        UserInputError: a key that is not a long option of ``parser``, or an invalid value.
    """
    options = _options(parser)
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        action = options.get(key.replace("_", "-"))
        if action is None:
            raise UserInputError(f"config {source}: {key!r} is not an option of {parser.prog}; "
                                 f"valid keys: {', '.join(options)}")
        try:
            defaults[action.dest] = _value(action, value)
        except ValueError as error:
            raise UserInputError(f"config {source}: {key} = {value!r}: {error}") from None
    return defaults


def apply_config(parser: argparse.ArgumentParser, path: Path) -> None:
    """Make the options of the TOML file ``path`` the defaults of the subcommand ``parser``.

    Raises:
        UserInputError: unreadable or invalid TOML, a key that is not an option, a bad value.
    """
    parser.set_defaults(**config_defaults(parser, read_config(path), repr(str(path))))
