"""JSON that strict parsers accept: NaN and infinities become null.

Python's ``json`` writes ``NaN`` and ``Infinity``, which strict parsers (and other languages'
libraries) reject; every results file (``pareto.json``, ``plan.json``) goes through this first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float made None (JSON has no such numbers)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value
