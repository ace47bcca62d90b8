"""Locate the TOML presets shipped with the package (``search_spaces/`` and ``objectives/``)."""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any

from lpsd_search.errors import UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def preset_names(kind: str) -> list[str]:
    """Names of the shipped presets of ``kind`` (``"search_spaces"`` or ``"objectives"``)."""
    folder = resources.files(f"lpsd_search.presets.{kind}")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(kind: str, name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Read a preset by shipped name or by path to a TOML file.

    Returns:
        ``(name, parsed TOML)``; the name is the file's stem for a path.

    Raises:
        UserInputError: unknown name, unreadable file or invalid TOML.
    """
    label = kind.replace("_", " ").rstrip("s")
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserInputError(f"{label} file {name_or_path!r} does not exist")
        text, name = _read(path, name_or_path), path.stem
    else:
        if name_or_path not in preset_names(kind):
            valid = ", ".join(preset_names(kind))
            raise UserInputError(
                f"unknown {label} {name_or_path!r}; valid: {valid}, or a path to a .toml file"
            )
        resource = resources.files(f"lpsd_search.presets.{kind}") / f"{name_or_path}.toml"
        text, name = resource.read_text(encoding="utf-8"), name_or_path
    try:
        return name, tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserInputError(f"{label} {name_or_path!r} is not valid TOML: {error}") from None


def _read(path: Path, shown: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserInputError(f"cannot read {shown!r}: {error.__class__.__name__}") from None
