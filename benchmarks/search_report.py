"""The search benchmark's results: per-seed entries merged, tables, plot (``search.py``).

One results entry per setting holds one value per seed in each of ``PER_SEED``'s fields;
entries of single seeds (a worker's, or another run's file) merge into one.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Any

from bench_utils import RESULTS, header, write_results

HEURISTICS = ("uniform", "vbmf", "alds", "lpsd", "alpsd")
"""The one-shot procedures, reported apart from the searches (the best of them is the bar)."""


def at_steps(curve: list[list[float]], steps: float) -> float:
    """The hypervolume a curve had reached within ``steps`` fine-tune steps (0 before any)."""
    reached = [hv for spent, hv in curve if spent <= steps]
    return reached[-1] if reached else 0.0


def new_setting(setting: tuple[str, str, str, float], tier: dict[str, Any], seeds: list[int],
                samplers: list[str]) -> dict[str, Any]:
    """A setting's results entry with no seed run yet."""
    name, model, data, _ = setting
    return {"name": name, "model": model, "data": data, "seeds": list(seeds),
            "budget": tier["budget"], "trials": tier["trials"], "short_steps": tier["short"],
            "final_steps": tier["final"], "samplers": samplers, "accuracy": {},
            "hypervolume": {}, "finetune_steps": {}, "wall_seconds": {}}


def assemble(tier_name: str, settings: list[tuple[str, str, str, float]], tier: dict[str, Any],
             seeds: list[int], samplers: list[str],
             done: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    """The results document from the units done so far, seeds in order whatever finished first."""
    document: dict[str, Any] = {"tier": tier_name, "settings": []}
    for index, setting in enumerate(settings):
        entries = [done[(seed, index)] for seed in seeds if (seed, index) in done]
        if not entries:
            document["settings"].append(new_setting(setting, tier, seeds, samplers))
            continue
        merged = [copy.deepcopy(entries[0])]  # the merge extends the first entry in place
        for entry in entries[1:]:
            merge_setting(merged, entry)
        merged[0]["seeds"] = list(seeds)
        document["settings"].append(merged[0])
    return document


PER_SEED = ("accuracy", "hypervolume", "finetune_steps", "wall_seconds", "curves")
"""Fields holding one value per seed (nested in dicts), which a merge concatenates."""


def merge_setting(settings: list[dict[str, Any]], setting: dict[str, Any]) -> None:
    """Add one results file's setting to ``settings``: a new one, or more seeds of a known one."""
    known = next((s for s in settings if s["name"] == setting["name"]), None)
    if known is None:
        settings.append(setting)
        return
    overlap = set(known["seeds_done"]) & set(setting["seeds_done"])
    if overlap:
        raise SystemExit(f"--merge: {setting['name']} seeds {sorted(overlap)} are in two files")

    def extend(into: dict[str, Any], more: dict[str, Any]) -> None:
        for key, value in more.items():
            if isinstance(value, dict):
                extend(into.setdefault(key, {}), value)
            else:
                into.setdefault(key, []).extend(value)

    for field in PER_SEED:
        extend(known.setdefault(field, {}), setting.get(field, {}))
    known["seeds_done"] = known["seeds_done"] + setting["seeds_done"]
    known["seeds"] = sorted(set(known["seeds"]) | set(setting["seeds"]))


def _mean_std(values: list[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "—"
    if len(present) == 1:
        return f"{100 * present[0]:.2f}"
    return f"{100 * statistics.mean(present):.2f} ± {100 * statistics.stdev(present):.2f}"


def save(args: argparse.Namespace, document: dict[str, Any], threads_note: str) -> None:
    extra = [("device", args.device)]
    if "tier_wall_seconds" in document:
        extra.append(("wall time of this run", f"{document['tier_wall_seconds'] / 60:.1f} min"
                      + (f" ({args.jobs} processes)" if args.jobs > 1 else "")))
    lines = header(f"Search vs. one-shot heuristics, tier {args.tier}", threads_note, extra)
    for setting in document["settings"]:
        if "levels" not in setting:  # its first seed is still running
            continue
        levels = [f"{level:g}" for level in setting["levels"]]
        lines += ["", f"## {setting['name']}: `{setting['model']}` on {setting['data']}", "",
                  f"Budget {setting['budget']}, seeds {setting['seeds_done']} (of "
                  f"{setting['seeds']}), search "
                  f"{setting['trials']} trials of {setting['short_steps']} fine-tune steps, "
                  f"every reported point {setting['final_steps']} steps. Test accuracy (%) "
                  "at each compression level, mean ± std over seeds:", "",
                  "| procedure | " + " | ".join(f"≥ {lv}×" for lv in levels)
                  + " | fine-tune steps |",
                  "|---|" + "---|" * (len(levels) + 1)]
        for procedure, table in setting["accuracy"].items():
            steps = statistics.mean(setting["finetune_steps"][procedure])
            lines.append(f"| {procedure} | " + " | ".join(
                _mean_std(table.get(lv, [])) for lv in levels) + f" | {steps:,.0f} |")
        best = {lv: max((statistics.mean([v for v in table[lv] if v is not None])
                         for proc, table in setting["accuracy"].items()
                         if proc in HEURISTICS and any(v is not None for v in table[lv])),
                        default=None) for lv in levels}
        searches = [key for key in setting["accuracy"] if key.startswith("search")]
        for key in searches:
            verdicts = []
            for lv in levels:
                present = [v for v in setting["accuracy"][key][lv] if v is not None]
                if not present or best[lv] is None:
                    verdicts.append(f"≥ {lv}×: no value")
                    continue
                delta = 100 * (statistics.mean(present) - best[lv])
                verdicts.append(f"≥ {lv}×: {delta:+.2f}")
            lines += ["", f"{key} minus the best heuristic's mean (points): "
                      + ", ".join(verdicts)]
        lines += ["", "| hypervolume (log size, reference at the budget) | mean ± std |",
                  "|---|---|"]
        for key, values in setting["hypervolume"].items():
            lines.append(f"| {key} | {statistics.mean(values):.4f}"
                         + (f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else "")
                         + " |")
        curves = setting.get("curves", {})
        if curves.get("random_3n"):
            lines += ["", "Hypervolume against fine-tune steps: random search with 3N trials "
                      "at the steps each search spent, and at its own end (mean over seeds; "
                      "plot: `" + f"{_stem(args)}.png`):", "",
                      "| search | after N trials | random_3n at its steps "
                      "| random_3n after 3N trials | its steps | random_3n's steps |",
                      "|---|---|---|---|---|---|"]
            random_end = statistics.mean(setting["hypervolume"]["random_3n"])
            random_steps = statistics.mean(c[-1][0] for c in curves["random_3n"])
            for key in searches:
                spent = [c[-1][0] for c in curves[key]]
                equal = [at_steps(c, s) for c, s in zip(curves["random_3n"], spent,
                                                         strict=True)]
                lines.append(f"| {key} | {statistics.mean(setting['hypervolume'][key]):.4f} | "
                             f"{statistics.mean(equal):.4f} | {random_end:.4f} | "
                             f"{statistics.mean(spent):,.0f} | {random_steps:,.0f} |")
    stem = _stem(args)
    plot(document, RESULTS / f"{stem}.png")
    write_results(RESULTS / f"{stem}.md", lines)
    (RESULTS / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n",
                                         encoding="utf-8")
    print((RESULTS / f"{stem}.md").read_text(encoding="utf-8"))


def _stem(args: argparse.Namespace) -> str:
    """``search_<tier>[_<setting>][_seeds-<s>-…]``; names with dots (vgg11-w0.25) are kept
    whole (the suffix is appended, never substituted)."""
    stem = f"search_{args.tier}" + (f"_{args.only}" if args.only else "")
    if args.seeds is not None:
        stem += "_seeds-" + "-".join(str(seed) for seed in args.seeds)
    return stem


def plot(document: dict[str, Any], path: Path) -> None:
    """Per setting: test accuracy at each level by procedure, and hypervolume vs. steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = [s for s in document["settings"] if "levels" in s]
    if not settings:
        return
    figure, axes = plt.subplots(len(settings), 2, figsize=(11, 4 * len(settings)),
                                squeeze=False)
    for row, setting in zip(axes, settings, strict=True):
        levels = setting["levels"]
        for procedure, table in setting["accuracy"].items():
            means = []
            for level in levels:
                present = [v for v in table[f"{level:g}"] if v is not None]
                means.append(100 * statistics.mean(present) if present else float("nan"))
            style = "--." if procedure in HEURISTICS else "-o"
            row[0].plot(levels, means, style, label=procedure)
        row[0].set(xscale="log", xlabel="compression level (x)", ylabel="test accuracy (%)",
                   title=f"{setting['name']}: accuracy at each level")
        row[0].set_xticks(levels, [f"{level:g}x" for level in levels])
        row[0].legend(fontsize=8)
        for key, curves in setting.get("curves", {}).items():
            for index, curve in enumerate(curves):
                row[1].plot([c[0] for c in curve], [c[1] for c in curve],
                            color=f"C{list(setting['curves']).index(key)}", alpha=0.8,
                            drawstyle="steps-post",
                            label=key if index == 0 else None)
        row[1].set(xlabel="fine-tune steps spent", ylabel="log-size hypervolume",
                   title=f"{setting['name']}: hypervolume vs. steps (one line per seed)")
        row[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
