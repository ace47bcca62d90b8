"""``report.html``: one self-contained page about a search, and ``render_report`` for both files.

The page loads nothing: styles, charts (inline SVG) and a few lines of vanilla JS for the
tooltips are all in the file, and its Content-Security-Policy forbids every fetch, so it opens
offline, from a mail attachment or a CI artifact alike, and a stray external URL would show up
as a console error rather than a silent network call. Every value from the results is escaped.
"""

from __future__ import annotations

import logging
import os
from html import escape
from pathlib import Path

from lpsd_search.report.data import (
    ReportData,
    best_at_levels,
    budget_label,
    export_command,
    hypervolume_curve,
    load_report,
    percent,
    plan_summary,
    usefulness_floor,
)
from lpsd_search.report.layers import layer_table
from lpsd_search.report.png import render_png
from lpsd_search.report.svg import front_svg, hypervolume_svg, reference_colours

logger = logging.getLogger(__name__)

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1f2937;
background:#f8fafc}
main{max-width:1280px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
section>h2:first-child{margin-top:6px}
.meta{color:#475569;margin:2px 0}.note{color:#64748b;font-style:italic}
section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 18px;
margin-top:16px}
.chart{width:100%;height:auto;display:block}
.grid{stroke:#e5e7eb}.frame{fill:none;stroke:#94a3b8}.tick{font-size:12px;fill:#475569}
.axis-title{font-size:13px;fill:#334155}
.trial{fill:#94a3b8;fill-opacity:.5}.reference{stroke:#fff;stroke-width:1}
.front{fill:#1f5fbf;stroke:#fff;stroke-width:1.5;cursor:pointer}
.front-line{fill:none;stroke:#1f5fbf;stroke-width:2;stroke-opacity:.6}
.front-label{font-size:12px;font-weight:600;fill:#1f5fbf}
.promoted{fill:none;stroke:#eab308;stroke-width:2.5}
.baseline{fill:#111827}.baseline-line{stroke:#111827;stroke-dasharray:2 4;stroke-opacity:.5}
.budget{stroke:#c0392b;stroke-width:1.5;stroke-dasharray:6 4}
.budget-label{font-size:12px;fill:#c0392b}
.hv-line{fill:none;stroke:#0f766e;stroke-width:2}.hv-gain{fill:#0f766e}.hv-point{fill:#99a3a4}
[data-tip]:hover{stroke:#111827;stroke-width:2}
.front.hl{stroke:#111827;stroke-width:3}
table{border-collapse:collapse;font-size:13px}
th,td{padding:4px 8px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}
th{background:#f1f5f9}td.plan,td.text,th.layer{text-align:left}td.plan{white-space:normal;
min-width:260px}
tr.hl td,td.hl,th.hl{outline:2px solid #111827;outline-offset:-2px}
.scroll{overflow-x:auto}
code.cmd{user-select:all;background:#f1f5f9;padding:2px 6px;border-radius:4px;font-size:12px}
table.layers td.cell{text-align:center;border:2px solid #fff;min-width:88px;line-height:1.25}
td.cell.dense,.swatch.dense{background:#f3f4f6;color:#9ca3af}
th.point span{font-weight:400;color:#475569;font-size:12px}
.legend{color:#475569;font-size:13px}
.swatch{display:inline-block;width:12px;height:12px;border-radius:2px;margin:0 4px 0 10px;
vertical-align:-1px}
.swatch.round{border-radius:50%}
#tooltip{position:fixed;display:none;pointer-events:none;background:#111827;color:#f9fafb;
padding:6px 9px;border-radius:6px;font-size:12px;white-space:pre;z-index:10;max-width:640px;
overflow:hidden}
"""

# Tooltips and cross-highlighting only; the page reads fine without it.
_SCRIPT = """
(function () {
  "use strict";
  var tip = document.getElementById("tooltip");
  var titles = document.querySelectorAll("svg [data-tip] > title");
  for (var i = 0; i < titles.length; i++) { titles[i].parentNode.removeChild(titles[i]); }
  function owner(event) {
    var node = event.target;
    return node && node.closest ? node.closest("[data-tip],[data-trial]") : null;
  }
  function mark(trial, on) {
    if (!trial) { return; }
    var nodes = document.querySelectorAll('[data-trial="' + trial + '"]');
    for (var j = 0; j < nodes.length; j++) { nodes[j].classList.toggle("hl", on); }
  }
  document.addEventListener("mouseover", function (event) {
    var node = owner(event);
    if (!node) { return; }
    var text = node.getAttribute("data-tip");
    if (text) { tip.textContent = text; tip.style.display = "block"; }
    mark(node.getAttribute("data-trial"), true);
  });
  document.addEventListener("mouseout", function (event) {
    var node = owner(event);
    if (!node) { return; }
    tip.style.display = "none";
    mark(node.getAttribute("data-trial"), false);
  });
  document.addEventListener("mousemove", function (event) {
    if (tip.style.display !== "block") { return; }
    var box = tip.getBoundingClientRect();
    var x = event.clientX + 14, y = event.clientY + 14;
    if (x + box.width > window.innerWidth) { x = Math.max(0, event.clientX - box.width - 14); }
    if (y + box.height > window.innerHeight) { y = Math.max(0, event.clientY - box.height - 14); }
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  });
})();
"""

_POLICY = ("default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
           "img-src data:")


def _header(data: ReportData) -> str:
    config, baseline = data.config, data.baseline
    failed = sum(row.state == "FAIL" for row in data.trials)
    running = sum(row.state == "RUNNING" for row in data.trials)
    lines = [f"<h1>{escape(data.study or 'lpsd-search')}: compression search report</h1>"]
    described = ", ".join(f"{key} {config[key]}" for key in
                          ("model", "data", "space", "finetune_steps", "seed") if key in config)
    if described:
        lines.append(f'<p class="meta">{escape(described)}</p>')
    lines.append(f'<p class="meta">baseline: {int(baseline["params"]):,} params, '
                 f'{int(baseline["bytes"]):,} bytes, {baseline["flops"] / 1e6:.3f} MFLOPs, '
                 f'validation {baseline["accuracy"]:.2%}, test {baseline["test_accuracy"]:.2%}'
                 "</p>")
    budgets = "; ".join(budget_label(b, baseline) for b in data.budgets) or "none recorded"
    lines.append(f'<p class="meta">budget: {escape(budgets)}</p>')
    if data.objectives:
        names = ", ".join(f"{o.get('direction', '')} {o.get('name', '')}"
                          for o in data.objectives)
        lines.append(f'<p class="meta">objectives: {escape(names)}</p>')
    lines.append(f'<p class="meta">{len(data.trials)} trials: {len(data.completed)} completed, '
                 f"{failed} failed, {running} running; {len(data.points)} on the front</p>")
    return "\n".join(lines)


def _chart_legend(data: ReportData) -> str:
    items = ['<span class="swatch round" style="background:#94a3b8"></span>trial',
             '<span class="swatch round" style="background:#1f5fbf"></span>front point '
             "(click: its row below)",
             '<span class="swatch" style="background:#111827"></span>baseline (dashed: its '
             "accuracy)", '<span class="swatch" style="background:#c0392b"></span>budget']
    items += [f'<span class="swatch" style="background:{colour}"></span>reference: '
              f"{escape(source)}" for source, colour in reference_colours(data).items()]
    if any(point.get("promoted") for point in data.points):
        items.append('<span class="swatch round" style="border:2px solid #eab308"></span>'
                     "promoted (longer fine-tune)")
    return '<p class="legend">' + " ".join(items) + "</p>"


def _front_table(data: ReportData, out_dir_text: str) -> str:
    if not data.points:
        return '<p class="note">No completed trial fits the budget yet: the front is empty.</p>'
    latency = any("latency_ms" in point for point in data.points)
    columns = ["trial", "params", "compression", "val acc", "Δ val", "test acc",
               "MFLOPs", *(["latency ms"] if latency else []), "plan", "export"]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    rows = []
    model_spec = str(data.config.get("model", ""))
    for point in data.points:
        trial = int(point["trial"])
        delta = 100 * (point["accuracy"] - data.baseline["accuracy"])
        mark = " ★" if point.get("promoted") else ""
        cells = [f"{trial}{mark}", f"{int(point['params']):,}", f"{point['compression']:.1f}×",
                 f"{point['accuracy']:.2%}", f"{delta:+.2f}", percent(point, "test_accuracy"),
                 f"{point['flops'] / 1e6:.3f}"]
        if latency:
            value = point.get("latency_ms")
            cells.append(f"{float(value):.3g}" if value is not None else "")
        body = "".join(f"<td>{escape(c)}</td>" for c in cells)
        body += f'<td class="plan">{escape(plan_summary(data, point))}</td>'
        body += (f'<td class="text"><code class="cmd">'
                 f"{escape(export_command(out_dir_text, trial, model_spec))}</code></td>")
        rows.append(f'<tr id="trial-{trial}" data-trial="{trial}">{body}</tr>')
    note = ('<p class="legend">★ promoted: measured after a longer fine-tune.</p>'
            if any(point.get("promoted") for point in data.points) else "")
    return (f'<div class="scroll"><table id="front-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>{note}')


def _levels_table(data: ReportData) -> str:
    floor, source = usefulness_floor(data)
    best = best_at_levels(data.points, floor=floor)
    if not best:
        return (f'<p class="note">No front point reaches 2× compression with at least '
                f'{floor:.1%} validation accuracy ({escape(source)}).</p>')
    rows = "".join(
        f'<tr data-trial="{int(p["trial"])}"><td>≥ {level:g}×</td><td>{int(p["trial"])}</td>'
        f'<td>{p["compression"]:.1f}×</td><td>{p["accuracy"]:.2%}</td>'
        f'<td>{100 * (p["accuracy"] - data.baseline["accuracy"]):+.2f}</td>'
        f'<td>{percent(p, "test_accuracy")}</td></tr>' for level, p in best)
    return ("<table><thead><tr><th>compression</th><th>trial</th><th>actual</th>"
            "<th>val acc</th><th>Δ val</th><th>test acc</th></tr></thead>"
            f"<tbody>{rows}</tbody></table><p class=\"legend\">Points below {floor:.1%} "
            f"validation accuracy ({escape(source)}) are left out: a collapsed model is "
            "never the best at a level.</p>")


def _failed_table(data: ReportData) -> str:
    failed = [row for row in data.trials if row.state == "FAIL"]
    if not failed:
        return ""
    rows = "".join(f'<tr><td>{row.trial}</td><td class="plan">{escape(row.plan)}</td>'
                   f'<td class="plan">{escape(row.reason)}</td></tr>' for row in failed)
    return (f"<section><h2>Failed trials ({len(failed)})</h2><div class=\"scroll\"><table>"
            "<thead><tr><th>trial</th><th>plan</th><th>reason</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></div></section>")


def _body(data: ReportData, out_dir_text: str) -> str:
    if not data.completed:
        return ('<section><p class="note">No completed trials yet: nothing to plot. Run or '
                "continue the search, then render the report again.</p></section>"
                + _failed_table(data))
    return "\n".join([
        "<section><h2>Accuracy against compression</h2>", _chart_legend(data),
        front_svg(data), "</section>",
        "<section><h2>Pareto front: export a point</h2>", _front_table(data, out_dir_text),
        "<h2>Best point at each compression level</h2>", _levels_table(data), "</section>",
        "<section><h2>Per-layer plan of each front point</h2>", layer_table(data), "</section>",
        "<section><h2>Hypervolume over trials</h2><p class=\"legend\">Area dominated by the "
        "completed trials within the budget seen so far (validation accuracy up, params down; "
        "reference point: 0 % accuracy at the baseline's params), as a fraction of the box "
        "100 % × baseline params. Larger dots: trials that grew it.</p>",
        hypervolume_svg(hypervolume_curve(data)), "</section>",
        _failed_table(data),
    ])


def render_html(out_dir: Path, data: ReportData | None = None) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    Args:
        out_dir: a search's output directory, as the user gave it (the export commands on the
            page name it so).
        data: the directory already read with ``load_report``; read here when omitted.
    """
    data = data or load_report(out_dir)
    title = escape(f"{data.study or 'lpsd-search'} report")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{escape(_POLICY)}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{title}</title><style>{_STYLE}</style>'
            f'</head><body><main>{_header(data)}\n{_body(data, str(out_dir))}</main>'
            f'<div id="tooltip"></div><script>{_SCRIPT}</script></body></html>\n')
    path = Path(out_dir) / "report.html"
    # Written next to the target and renamed, so a browser never sees a half-written page.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(page, encoding="utf-8")
    os.replace(temporary, path)
    logger.info("wrote %s", path)
    return path


def render_report(out_dir: Path) -> list[Path]:
    """Write ``pareto.png`` and ``report.html`` next to ``out_dir/pareto.json``.

    Args:
        out_dir: a search's output directory (``lpsd-search search --out DIR``).

    Returns:
        The paths written: ``[pareto.png, report.html]``.

    Raises:
        UserInputError: ``out_dir`` holds no readable ``pareto.json``.

    Example:
        >>> render_report(Path("runs/vgg16"))  # doctest: +SKIP
        [PosixPath('runs/vgg16/pareto.png'), PosixPath('runs/vgg16/report.html')]
    """
    data = load_report(out_dir)
    return [render_png(out_dir, data), render_html(out_dir, data)]


def render_report_or_warn(out_dir: Path) -> list[Path]:
    """``render_report``, logging a warning instead of failing: the numbers are on disk
    already, and a drawing problem must not turn a finished search into an error."""
    try:
        return render_report(out_dir)
    except Exception as error:
        logger.warning("could not render the visual report: %s", error)
        return []
