"""The ``lpsd-search`` command line (``main``) and its parser."""

from __future__ import annotations

from lpsd_search.cli.main import main
from lpsd_search.cli.parser import build_parser

__all__ = [
    "build_parser",
    "main",
]
