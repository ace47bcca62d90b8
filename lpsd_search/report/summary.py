"""The terminal summary of a search's results: the front and the best point per compression.

Reads the output directory like the other renderers, so ``lpsd-search report DIR`` can show it
for any finished or running search without opening its study.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lpsd_search.report.data import (
    COMPRESSION_LEVELS,
    ReportData,
    best_at_levels,
    budget_label,
    load_report,
    percent,
    plan_summary,
    usefulness_floor,
)


def _accuracy_cells(point: dict[str, Any], baseline: dict[str, float]) -> list[str]:
    delta = 100 * (point["accuracy"] - baseline["accuracy"])
    return [f"{point['accuracy']:.2%}", f"{delta:+.2f}", percent(point, "test_accuracy")]


def front_table(data: ReportData) -> Table:
    """Baseline and front points: size, compression, accuracies, MFLOPs, plan."""
    budgets = "; ".join(budget_label(b, data.baseline) for b in data.budgets) or "no budget"
    latency = any("latency_ms" in point for point in data.points)
    table = Table(title=f"Pareto front ({len(data.points)} points of {len(data.completed)} "
                        f"completed trials, budget {budgets})")
    columns = ["trial", "params", "compression", "val acc", "Δ val", "test acc", "MFLOPs",
               *(["latency ms"] if latency else []), "plan"]
    for column in columns:
        table.add_column(column, justify="left" if column == "plan" else "right")
    baseline = data.baseline
    table.add_row("baseline", f"{int(baseline['params']):,}", "1.0×",
                  f"{baseline['accuracy']:.2%}", "", f"{baseline['test_accuracy']:.2%}",
                  f"{baseline['flops'] / 1e6:.3f}", *([""] if latency else []), "dense")
    for point in data.points:
        value = point.get("latency_ms")
        table.add_row(
            f"{point['trial']}{' ★' if point.get('promoted') else ''}",
            f"{int(point['params']):,}", f"{point['compression']:.1f}×",
            *_accuracy_cells(point, baseline), f"{point['flops'] / 1e6:.3f}",
            *([f"{float(value):.3g}" if value is not None else ""] if latency else []),
            plan_summary(data, point),
        )
    return table


def levels_table(data: ReportData) -> Table | None:
    """The most accurate useful front point at ≥ 2×, 5×, 10×, 20×, 40× (the levels reached),
    or None; points below ``usefulness_floor`` are left out."""
    floor, source = usefulness_floor(data)
    best = best_at_levels(data.points, COMPRESSION_LEVELS, floor)
    if not best:
        return None
    table = Table(title="Best point at each compression level",
                  caption=f"points under {floor:.1%} val acc ({source}) left out")
    for column in ("compression", "trial", "actual", "params", "val acc", "Δ val", "test acc"):
        table.add_column(column, justify="right")
    for level, point in best:
        table.add_row(f"≥ {level:g}×", str(point["trial"]), f"{point['compression']:.1f}×",
                      f"{int(point['params']):,}", *_accuracy_cells(point, data.baseline))
    return table


def print_summary(out_dir: Path, console: Console | None = None,
                  data: ReportData | None = None) -> None:
    """Print the front and the best point per compression level of a search's results.

    Args:
        out_dir: a search's output directory (holds ``pareto.json`` and ``trials.csv``).
        console: where to print; the terminal (200 columns wide off a terminal) when omitted.
        data: the directory already read with ``load_report``; read here when omitted.
    """
    # Off a terminal rich would wrap at 80 columns and fold the plan column beyond reading.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    data = data or load_report(out_dir)
    if not data.completed:
        console.print(f"{data.study or 'lpsd-search'}: no completed trials yet in {out_dir}")
        return
    console.print(front_table(data))
    levels = levels_table(data)
    if levels is None:
        console.print(f"No front point reaches {COMPRESSION_LEVELS[0]:g}× compression.")
    else:
        console.print(levels)
    failed = sum(row.state == "FAIL" for row in data.trials)
    if failed:
        console.print(f"{failed} failed trials: see {Path(out_dir) / 'trials.csv'}")
