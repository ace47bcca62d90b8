"""``pareto.png``: validation accuracy vs. compression of every trial, the front highlighted.

Drawn with matplotlib's object API and the Agg canvas, never ``pyplot``: no display is needed
and no global backend is switched, so the caller's own matplotlib use is left alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lpsd_search.report.data import (
    COMPRESSION_TICKS,
    ReportData,
    TrialRecord,
    budget_compression,
    budget_label,
    compression_range,
    load_report,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

logger = logging.getLogger(__name__)

WIDTH_PX, HEIGHT_PX, DPI = 1200, 800, 100
FRONT_COLOUR = "#1f5fbf"
BUDGET_COLOUR = "#c0392b"
REFERENCE_STYLES = (("D", "#e67e22"), ("s", "#27ae60"), ("^", "#8e44ad"), ("v", "#16a085"),
                    ("P", "#d35400"), ("X", "#7f8c8d"))


def _coordinates(rows: Sequence[TrialRecord]) -> tuple[list[float], list[float]]:
    """Compression and validation accuracy (%) of the rows that have a size."""
    placed = [row for row in rows if row.compression]
    return ([float(row.compression or 0.0) for row in placed],
            [100 * row.measures["accuracy"] for row in placed])


def _draw_trials(axes: Axes, data: ReportData) -> None:
    front = {point["trial"] for point in data.points}
    plain = [row for row in data.completed if not row.reference and row.trial not in front]
    if plain:
        axes.scatter(*_coordinates(plain), s=40, color="#7f8c8d", alpha=0.45, linewidths=0,
                     label=f"trials ({len(data.completed)} completed)")
    sources = sorted({row.source for row in data.completed if row.reference})
    for index, source in enumerate(sources):
        marker, colour = REFERENCE_STYLES[index % len(REFERENCE_STYLES)]
        rows = [row for row in data.completed if row.source == source]
        # On top of the front's markers, and smaller there: a reference plan that made the
        # front shows as both.
        sizes = [55 if row.trial in front else 90 for row in rows if row.compression]
        axes.scatter(*_coordinates(rows), s=sizes, marker=marker, color=colour,
                     edgecolors="white", linewidths=0.8, zorder=6,
                     label=f"reference: {source}")


def _draw_front(axes: Axes, data: ReportData) -> None:
    if not data.points:
        return
    # Ascending compression = descending accuracy; 'steps-pre' traces the dominated region's edge.
    points = sorted(data.points, key=lambda p: p["compression"])
    xs = [p["compression"] for p in points]
    ys = [100 * p["accuracy"] for p in points]
    axes.plot(xs, ys, drawstyle="steps-pre", color=FRONT_COLOUR, linewidth=1.6, alpha=0.7)
    axes.scatter(xs, ys, s=110, color=FRONT_COLOUR, edgecolors="white", linewidths=1.0, zorder=5,
                 label=f"Pareto front ({len(points)} points)")
    promoted = [p for p in points if p.get("promoted")]
    if promoted:
        axes.scatter([p["compression"] for p in promoted],
                     [100 * p["accuracy"] for p in promoted], s=230, facecolors="none",
                     edgecolors="#f1c40f", linewidths=2.0, zorder=6,
                     label="promoted (longer fine-tune)")
    for index, (x, y, point) in enumerate(zip(xs, ys, points, strict=True)):
        # Alternate above/below so that neighbouring labels on a dense front do not collide.
        offset = (6, 8) if index % 2 == 0 else (6, -16)
        axes.annotate(f"#{point['trial']}", (x, y), xytext=offset, textcoords="offset points",
                      fontsize=11, color=FRONT_COLOUR, fontweight="bold", zorder=7,
                      bbox={"boxstyle": "round,pad=0.1", "facecolor": "white",
                            "edgecolor": "none", "alpha": 0.75})


def _draw_baseline_and_budgets(axes: Axes, data: ReportData) -> None:
    baseline = data.baseline
    axes.axhline(100 * baseline["accuracy"], color="black", linewidth=0.8, linestyle=":",
                 alpha=0.6)
    axes.scatter([1.0], [100 * baseline["accuracy"]], s=260, marker="*", color="black", zorder=6,
                 label=f"baseline ({baseline['accuracy']:.2%}, {int(baseline['params']):,} "
                       "params)")
    for budget in data.budgets:
        position = budget_compression(budget, data.baseline)
        if position is not None:
            axes.axvline(position, color=BUDGET_COLOUR, linestyle="--", linewidth=1.4,
                         label=f"budget: {budget_label(budget, data.baseline)}")
        else:
            # No place on this axis (see budget_compression): named in the legend only.
            axes.plot([], [], linestyle="none",
                      label=f"budget: {budget_label(budget, data.baseline)} (not on this axis)")


def _format_axes(axes: Axes, data: ReportData) -> None:
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    low, high = compression_range(data)
    axes.set_xscale("log")
    axes.set_xlim(low, high)
    axes.xaxis.set_major_locator(FixedLocator([t for t in COMPRESSION_TICKS if low <= t <= high]))
    axes.xaxis.set_minor_locator(NullLocator())
    axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}×"))
    accuracies = [100 * r.measures["accuracy"] for r in data.completed]
    bottom = min([*accuracies, 100 * data.baseline["accuracy"]])
    axes.set_ylim(max(0.0, bottom - 5.0), 101.0)
    axes.set_xlabel("compression (baseline params / params, log scale)", fontsize=13)
    axes.set_ylabel("validation accuracy (%)", fontsize=13)
    axes.tick_params(labelsize=11)
    axes.grid(True, which="major", alpha=0.3)


def _title(data: ReportData) -> str:
    failed = sum(row.state == "FAIL" for row in data.trials)
    title = (f"{data.study or 'lpsd-search'}: {len(data.trials)} trials "
             f"({len(data.completed)} completed, {failed} failed), "
             f"front of {len(data.points)}")
    model, dataset = data.config.get("model"), data.config.get("data")
    return title + (f"\n{model} on {dataset}" if model and dataset else "")


def render_png(out_dir: Path, data: ReportData | None = None) -> Path:
    """Write ``out_dir/pareto.png`` (1200×800) and return its path.

    Args:
        out_dir: a search's output directory (holds ``pareto.json`` and ``trials.csv``).
        data: the directory already read with ``load_report``; read here when omitted.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = data or load_report(out_dir)
    figure = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    _draw_trials(axes, data)
    _draw_front(axes, data)
    _draw_baseline_and_budgets(axes, data)
    _format_axes(axes, data)
    if not data.completed:
        axes.text(0.5, 0.5, "no completed trials yet", transform=axes.transAxes, ha="center",
                  va="center", fontsize=18, color="#7f8c8d")
    axes.set_title(_title(data), fontsize=14)
    axes.legend(loc="best", fontsize=11, framealpha=0.9)
    figure.tight_layout()
    path = Path(out_dir) / "pareto.png"
    figure.savefig(path, dpi=DPI)
    logger.info("wrote %s", path)
    return path
