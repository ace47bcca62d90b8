"""Inline SVG charts for ``report.html``: the accuracy/compression front and the hypervolume.

Hand-written SVG rather than a plotting library's HTML export: plotly alone would add ~4.8 MB
to a page that must open offline, and the charts need only circles, lines and text. Every
marker carries its tooltip in ``data-tip`` (shown by the page's few lines of JS) and in a
``<title>`` (shown by the browser even with scripts off).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from lpsd_search.report.data import (
    COMPRESSION_TICKS,
    ReportData,
    TrialRecord,
    budget_compression,
    budget_label,
    compression_range,
    plan_summary,
)

WIDTH, HEIGHT = 960, 520
LEFT, RIGHT, TOP, BOTTOM = 70, 24, 28, 56
REFERENCE_COLOURS = ("#e67e22", "#27ae60", "#8e44ad", "#16a085", "#d35400", "#7f8c8d")


@dataclass(frozen=True)
class _Scale:
    """Data to pixel coordinates of one chart, linear or log in x, linear in y."""

    x_low: float
    x_high: float
    y_low: float
    y_high: float
    log_x: bool = False

    def _x_fraction(self, value: float) -> float:
        if self.log_x:
            return math.log(value / self.x_low) / math.log(self.x_high / self.x_low)
        return (value - self.x_low) / ((self.x_high - self.x_low) or 1.0)

    def x(self, value: float) -> float:
        return LEFT + self._x_fraction(value) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        span = (self.y_high - self.y_low) or 1.0
        return TOP + (self.y_high - value) / span * (HEIGHT - TOP - BOTTOM)


def _attr(text: str) -> str:
    return escape(text, quote=True)


def _marker(shape: str, tip: str, css: str, extra: str = "") -> str:
    """One hoverable marker: ``shape`` is an SVG element opening with its geometry."""
    return (f'<{shape} class="{css}" data-tip="{_attr(tip)}"{extra}>'
            f"<title>{escape(tip)}</title></{shape.split()[0]}>")


def _circle(x: float, y: float, radius: float, tip: str, css: str, extra: str = "") -> str:
    return _marker(f'circle cx="{x:.1f}" cy="{y:.1f}" r="{radius}"', tip, css, extra)


def _diamond_corners(x: float, y: float, size: float) -> str:
    return (f"{x:.1f},{y - size:.1f} {x + size:.1f},{y:.1f} {x:.1f},{y + size:.1f} "
            f"{x - size:.1f},{y:.1f}")


def _diamond(x: float, y: float, colour: str, tip: str) -> str:
    return _marker(f'polygon points="{_diamond_corners(x, y, 7)}" fill="{colour}"', tip,
                   "reference")


def _axes(scale: _Scale, x_ticks: Sequence[tuple[float, str]],
          y_ticks: Sequence[tuple[float, str]], x_title: str, y_title: str) -> list[str]:
    parts = []
    for value, label in x_ticks:
        x = scale.x(value)
        parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                     f'y2="{HEIGHT - BOTTOM}"/><text class="tick" x="{x:.1f}" '
                     f'y="{HEIGHT - BOTTOM + 18}" text-anchor="middle">{escape(label)}</text>')
    for value, label in y_ticks:
        y = scale.y(value)
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}"/><text class="tick" x="{LEFT - 8}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(label)}</text>')
    parts.append(f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
                 f'height="{HEIGHT - TOP - BOTTOM}"/>')
    parts.append(f'<text class="axis-title" x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 12}" '
                 f'text-anchor="middle">{escape(x_title)}</text>')
    parts.append(f'<text class="axis-title" transform="translate(18 {(TOP + HEIGHT - BOTTOM) / 2})'
                 f' rotate(-90)" text-anchor="middle">{escape(y_title)}</text>')
    return parts


def _svg(element_id: str, label: str, parts: Sequence[str]) -> str:
    return (f'<svg id="{element_id}" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{_attr(label)}" xmlns="http://www.w3.org/2000/svg">'
            + "".join(parts) + "</svg>")


def trial_tip(data: ReportData, measures: dict[str, Any], header: str, plan: str) -> str:
    """Tooltip lines: trial, sizes, accuracies, latency when measured, plan."""
    params = measures["params"]
    lines = [header,
             f"params {int(params):,} ({data.baseline['params'] / params:.2f}×)",
             f"bytes {int(measures.get('bytes', 0)):,}",
             f"FLOPs {int(measures.get('flops', 0)):,}",
             f"val acc {measures['accuracy']:.2%}"]
    if "test_accuracy" in measures:
        lines.append(f"test acc {measures['test_accuracy']:.2%}")
    if measures.get("latency_ms") is not None:
        lines.append(f"latency {float(measures['latency_ms']):.3g} ms")
    if plan:
        lines.append(f"plan: {plan}")
    return "\n".join(lines)


def reference_colours(data: ReportData) -> dict[str, str]:
    """The colour of each reference source (warm start, vbmf, alpsd ...), stable by name."""
    sources = sorted({row.source for row in data.completed if row.reference})
    return {source: REFERENCE_COLOURS[index % len(REFERENCE_COLOURS)]
            for index, source in enumerate(sources)}


def _row_header(row: TrialRecord) -> str:
    extra = [f"source: {row.source}"] if row.reference else []
    extra += [f"stage: {row.stage}"] if row.stage else []
    return f"trial {row.trial}" + (f" ({', '.join(extra)})" if extra else "")


def front_svg(data: ReportData) -> str:
    """Validation accuracy (%) vs. compression (log x): trials, front, baseline, budgets."""
    low, high = compression_range(data)
    accuracies = [100 * r.measures["accuracy"] for r in data.completed]
    bottom = math.floor(max(0.0, min([*accuracies, 100 * data.baseline["accuracy"]]) - 5) / 10)
    scale = _Scale(low, high, 10.0 * bottom, 101.0, log_x=True)
    step = 10 if 100 - 10 * bottom > 30 else 5
    parts = _axes(scale, [(t, f"{t:g}×") for t in COMPRESSION_TICKS if low <= t <= high],
                  [(v, f"{v}%") for v in range(10 * bottom, 101, step)],
                  "compression (baseline params / params, log scale)",
                  "validation accuracy (%)")
    for budget in data.budgets:
        position = budget_compression(budget, data.baseline)
        if position is not None:
            x = scale.x(position)
            label = escape(f"budget {budget_label(budget, data.baseline)}")
            parts.append(f'<line class="budget" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" '
                         f'y2="{HEIGHT - BOTTOM}"/><text class="budget-label" x="{x:.1f}" '
                         f'y="{TOP - 8}" text-anchor="middle">{label}</text>')
    base_y = scale.y(100 * data.baseline["accuracy"])
    parts.append(f'<line class="baseline-line" x1="{LEFT}" x2="{WIDTH - RIGHT}" '
                 f'y1="{base_y:.1f}" y2="{base_y:.1f}"/>')
    front = {point["trial"] for point in data.points}
    colours = reference_colours(data)
    for row in data.completed:
        if row.trial in front or not row.compression:
            continue
        x, y = scale.x(row.compression), scale.y(100 * row.measures["accuracy"])
        tip = trial_tip(data, row.measures, _row_header(row), row.plan)
        if row.reference:
            parts.append(_diamond(x, y, colours[row.source], tip))
        else:
            parts.append(_circle(x, y, 4.5, tip, "trial"))
    parts.extend(_front_parts(data, scale))
    parts.append(_marker(
        f'polygon points="{_star(scale.x(1.0), base_y)}"',
        trial_tip(data, data.baseline, "baseline (dense)", ""), "baseline"))
    return _svg("front-plot", "validation accuracy against compression", parts)


def _star(x: float, y: float, outer: float = 11.0) -> str:
    corners = []
    for index in range(10):
        radius = outer if index % 2 == 0 else outer * 0.45
        angle = math.pi / 2 + index * math.pi / 5
        corners.append(f"{x + radius * math.cos(angle):.1f},{y - radius * math.sin(angle):.1f}")
    return " ".join(corners)


def _front_parts(data: ReportData, scale: _Scale) -> list[str]:
    points = sorted(data.points, key=lambda p: p["compression"])
    if not points:
        return []
    # Ascending compression is descending accuracy: drop at each point, then run right to the
    # next one, which traces the edge of the region the front dominates.
    corners: list[str] = []
    previous_x = 0.0
    for point in points:
        x, y = scale.x(point["compression"]), scale.y(100 * point["accuracy"])
        if corners:
            corners.append(f"{previous_x:.1f},{y:.1f}")
        corners.append(f"{x:.1f},{y:.1f}")
        previous_x = x
    parts = [f'<polyline class="front-line" points="{" ".join(corners)}"/>']
    references = {row.trial: row.source for row in data.trials if row.reference}
    colours = reference_colours(data)
    for index, point in enumerate(points):
        x, y = scale.x(point["compression"]), scale.y(100 * point["accuracy"])
        trial = int(point["trial"])
        notes = ["front", *([f"source: {references[trial]}"] if trial in references else []),
                 *(["promoted"] if point.get("promoted") else [])]
        tip = trial_tip(data, point, f"trial {trial} ({', '.join(notes)})",
                        plan_summary(data, point))
        if point.get("promoted"):
            parts.append(f'<circle class="promoted" cx="{x:.1f}" cy="{y:.1f}" r="11"/>')
        parts.append(f'<a href="#trial-{trial}">'
                     + _circle(x, y, 7, tip, "front", f' data-trial="{trial}"') + "</a>")
        if trial in references:
            # A reference plan that made the front: its marker inside the front's, not hoverable
            # so that the front point's tooltip still shows.
            parts.append(f'<polygon points="{_diamond_corners(x, y, 4.5)}" pointer-events="none" '
                         f'fill="{colours.get(references[trial], "#7f8c8d")}"/>')
        label_y = y - 11 if index % 2 == 0 else y + 21
        parts.append(f'<text class="front-label" x="{x + 8:.1f}" y="{label_y:.1f}">#{trial}'
                     "</text>")
    return parts


def hypervolume_svg(curve: Sequence[tuple[int, float]]) -> str:
    """Hypervolume (fraction of the ideal box) after each trial, as a step line."""
    last = max((trial for trial, _ in curve), default=1)
    top = max((volume for _, volume in curve), default=0.0)
    y_high = min(1.0, max(0.1, math.ceil(top * 11) / 10))
    scale = _Scale(0.0, float(max(last, 1)), 0.0, y_high)
    tick_step = max(1, math.ceil(last / 10))
    y_ticks = [(v / 10, f"{v / 10:.1f}") for v in range(0, round(y_high * 10) + 1)]
    parts = _axes(scale, [(t, str(t)) for t in range(0, last + 1, tick_step)], y_ticks,
                  "trial number", "hypervolume (accuracy × log10 size below the budget / 3)")
    corners: list[str] = []
    previous = 0.0
    for trial, volume in curve:
        x = scale.x(trial)
        if corners:
            corners.append(f"{x:.1f},{scale.y(previous):.1f}")
        corners.append(f"{x:.1f},{scale.y(volume):.1f}")
        previous = volume
    if corners:
        parts.append(f'<polyline class="hv-line" points="{" ".join(corners)}"/>')
    best = 0.0
    for trial, volume in curve:
        css = "hv-gain" if volume > best + 1e-12 else "hv-point"
        best = max(best, volume)
        parts.append(_circle(scale.x(trial), scale.y(volume), 4 if css == "hv-gain" else 2.5,
                             f"after trial {trial}: hypervolume {volume:.4f}", css))
    return _svg("hypervolume-plot", "hypervolume after each trial", parts)
