"""The per-layer view of ``report.html``: a layers × front points table of what each plan does.

A cell's colour names the method; its shade says how much of the layer is kept, darker = more.
The kept fraction is exact where the plan shows it (a dense layer keeps 1, a sparse-only layer
its ``sparsity``, an entry may carry ``kept``). A low-rank layer's true fraction needs the
layer's shape, which ``pareto.json`` does not hold, so there the shade is the rank relative to
the largest rank the same layer takes with the same method on the front: enough to see which
points cut a layer hardest.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from lpsd_search.report.data import ReportData, describe_choice, is_dense

METHOD_COLOURS = {"svd": "#2563eb", "alds": "#0891b2", "tucker2": "#d97706", "cp": "#059669",
                  "tt": "#7c3aed", "sparse": "#db2777"}
OTHER_COLOUR = "#475569"
DENSE = {"method": "none", "rank": None, "sparsity": 0.0}


def _rank_size(rank: Any) -> float:
    if isinstance(rank, list):
        return float(math.prod(int(r) for r in rank)) if rank else 0.0
    return float(rank) if isinstance(rank, (int, float)) else 0.0


def _method_key(choice: dict[str, Any]) -> str:
    method = str(choice.get("method", "none"))
    return "sparse" if method == "none" else method


def _mix(colour: str, weight: float) -> str:
    """``colour`` blended with white; ``weight`` 1 is the full colour."""
    channels = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    blended = [round(255 - weight * (255 - c)) for c in channels]
    return "#" + "".join(f"{c:02x}" for c in blended)


def _text_colour(background: str) -> str:
    red, green, blue = (int(background[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return "#111827" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.55 else "#ffffff"


def kept_fraction(choice: dict[str, Any], largest_rank: float) -> float:
    """How much of the layer the choice keeps, exact or relative (see the module docstring)."""
    if isinstance(choice.get("kept"), (int, float)):
        return min(1.0, max(0.0, float(choice["kept"])))
    if is_dense(choice):
        return 1.0
    if choice.get("method", "none") == "none":
        return float(choice.get("sparsity") or 0.0)
    size = _rank_size(choice.get("rank"))
    return size / largest_rank if largest_rank > 0 else 1.0


def _largest_ranks(points: list[dict[str, Any]]) -> dict[tuple[str, str], float]:
    largest: dict[tuple[str, str], float] = {}
    for point in points:
        for layer, choice in point.get("plan", {}).items():
            key = (layer, _method_key(choice))
            largest[key] = max(largest.get(key, 0.0), _rank_size(choice.get("rank")))
    return largest


def _cell(choice: dict[str, Any], layer: str, trial: int, largest: float) -> str:
    description = describe_choice(choice)
    title = escape(f"trial {trial}, {layer}: {description}", quote=True)
    if is_dense(choice):
        return f'<td class="cell dense" data-trial="{trial}" title="{title}">dense</td>'
    key = _method_key(choice)
    weight = 0.18 + 0.82 * kept_fraction(choice, largest)
    background = _mix(METHOD_COLOURS.get(key, OTHER_COLOUR), weight)
    lines = [f"<b>{escape(key)}</b>"]
    rank = choice.get("rank")
    if key != "sparse" and rank is not None:
        ranks = ",".join(map(str, rank)) if isinstance(rank, list) else str(rank)
        lines.append(f"r=({escape(ranks)})")
    sparsity = float(choice.get("sparsity") or 0.0)
    if sparsity:
        plus = "" if key == "sparse" else ("+S " if choice.get("alternating") else "+s ")
        lines.append(f"{plus}{sparsity:.2%}")
    return (f'<td class="cell" data-trial="{trial}" title="{title}" style="background:'
            f'{background};color:{_text_colour(background)}">{"<br>".join(lines)}</td>')


def _legend(points: list[dict[str, Any]]) -> str:
    used = sorted({_method_key(c) for p in points for c in p.get("plan", {}).values()
                   if not is_dense(c)})
    swatches = [f'<span class="swatch" style="background:{METHOD_COLOURS.get(m, OTHER_COLOUR)}">'
                f"</span>{escape(m)}" for m in used]
    swatches.append('<span class="swatch dense"></span>dense')
    return ('<p class="legend">' + " ".join(swatches) + " &middot; darker = more of the layer "
            "kept (low rank: rank relative to the largest this layer takes on the front; "
            "+s: sparse residual, +S: fitted alternately, as a fraction of the layer's "
            "entries)</p>")


def layer_table(data: ReportData) -> str:
    """The heatmap table, or a note when the front is empty."""
    if not data.points:
        return '<p class="note">No front point yet, so no per-layer plan to show.</p>'
    largest = _largest_ranks(data.points)
    header = "".join(
        f'<th class="point" data-trial="{int(p["trial"])}"><a href="#trial-{int(p["trial"])}">'
        f'#{int(p["trial"])}</a><br><span>{p["compression"]:.1f}× · {p["accuracy"]:.1%}'
        "</span></th>" for p in data.points)
    rows = []
    for layer in data.layers:
        cells = "".join(
            _cell(choice := p.get("plan", {}).get(layer, DENSE), layer, int(p["trial"]),
                  largest.get((layer, _method_key(choice)), 0.0)) for p in data.points)
        rows.append(f'<tr><th class="layer">{escape(layer)}</th>{cells}</tr>')
    return (_legend(data.points) + '<div class="scroll"><table class="layers" id="layer-table">'
            f'<thead><tr><th class="layer">layer \\ front point</th>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')
