"""The one-line checks every option dataclass runs on its values (``config`` uses them).

Each raises ``UserInputError`` with ``<what> <value> is invalid; valid: <range>``, so every
option's error reads the same from the command line, a TOML file or the Python API.
"""

from __future__ import annotations

import math
import numbers

from lpsd_search.errors import UserInputError


def check(ok: bool, what: str, value: object, valid: str) -> None:
    """Raise the one-line error ``<what> <value> is invalid; valid: <valid>`` unless ``ok``."""
    if not ok:
        raise UserInputError(f"{what} {value!r} is invalid; valid: {valid}")


MAX_SEED = 2**31 - 1
"""The largest seed: every seeded generator takes it (Optuna's samplers stop at 2**32 − 1, and a
worker on a shared storage adds an offset below 2**20 to its sampler's seed)."""


def real(what: str, value: float, low: float, high: float = math.inf, *,
         open_low: bool = False, open_high: bool = False) -> None:
    """Check a finite number from ``low`` to ``high`` (``open_*``: the bound is excluded)."""
    # NaN and infinities pass a bare comparison on one side, so finiteness is checked first.
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value) and (low < value if open_low else low <= value)
          and (value < high if open_high else value <= high))
    valid = (f"a finite number {'>' if open_low else '≥'} {low:g}" if high == math.inf else
             f"a number in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}")
    check(ok, what, value, valid)


def count(what: str, value: int, low: int, high: int | None = None) -> None:
    """Check a whole number (not a bool) from ``low`` to ``high``."""
    ok = (isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value
          and (high is None or value <= high))
    check(ok, what, value,
          f"a whole number, {low} or more" if high is None else f"a whole number in [{low}, "
          f"{high}]")


def text(value: object) -> bool:
    """Whether ``value`` is a string with something besides whitespace."""
    return isinstance(value, str) and bool(value.strip())


