"""A search's results read back from ``pareto.json`` and ``trials.csv`` for the visual reports.

The renderers (``png``, ``html``, ``summary``) read an output directory
only through this module, so they need no Optuna and tolerate the keys that newer searches add
(``objectives``, ``budgets``, ``layers``, per-point ``latency_ms`` / ``promoted``, and the
``source`` / ``stage`` columns of ``trials.csv``) as well as their absence.
"""

from __future__ import annotations

import csv
import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lpsd_search.errors import UserInputError
from lpsd_search.report.pareto import log_size_hypervolume

MEASURES = ("params", "bytes", "flops", "accuracy", "test_accuracy")
COMPRESSION_LEVELS = (2.0, 5.0, 10.0, 20.0, 40.0)
COMPRESSION_TICKS = (1, 1.5, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200, 300, 500, 1000)
"""Tick marks of a log-scale compression axis: round numbers an engineer quotes."""
SAMPLED = "sampled"
"""The ``source`` of a trial the sampler proposed (every other source is a reference plan)."""


@dataclass(frozen=True)
class TrialRecord:
    """One row of ``trials.csv``.

    Attributes:
        trial: the trial number.
        state: ``COMPLETE``, ``FAIL`` or ``RUNNING``.
        measures: the measures the row has (none for failed or running trials).
        compression: baseline params / params, or None without params.
        feasible: completed and within the budget.
        pareto: on the front.
        plan: one-line plan summary (``conv2=tucker2(6,3) fc=svd(5)``).
        source: ``sampled`` or a reference label (``uniform svd``, ``vbmf``, ``alpsd`` ...).
        stage: ``global`` / ``local`` where the search records it, else empty.
        reason: why a failed trial failed.
    """

    trial: int
    state: str
    measures: dict[str, float]
    compression: float | None
    feasible: bool
    pareto: bool
    plan: str
    source: str
    stage: str
    reason: str

    @property
    def completed(self) -> bool:
        return self.state == "COMPLETE" and "accuracy" in self.measures and bool(
            self.measures.get("params"))

    @property
    def reference(self) -> bool:
        """A warm-start or reference plan rather than a sampled one."""
        return self.source not in ("", SAMPLED)


@dataclass(frozen=True)
class ReportData:
    """Everything a report shows, read from one output directory."""

    out_dir: Path
    study: str
    config: dict[str, Any]
    baseline: dict[str, float]
    budgets: list[dict[str, Any]]
    objectives: list[dict[str, str]]
    points: list[dict[str, Any]]
    layers: list[str]
    trials: list[TrialRecord]
    min_accuracy: float | None = None
    """The user's usefulness floor (``--min-accuracy``); None: half the baseline's."""

    @property
    def completed(self) -> list[TrialRecord]:
        return [row for row in self.trials if row.completed]


def _number(text: str | None) -> float | None:
    if text is None or not text.strip():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _fraction(value: Any) -> float | None:
    """A stored accuracy in [0, 1], or None (absent, or not one)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0.0 <= value <= 1.0 else None


def _flag(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes")


def read_trials(path: Path, baseline_params: float) -> list[TrialRecord]:
    """The rows of ``trials.csv`` in trial order; an absent file gives no rows."""
    if not path.is_file():
        return []
    records = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            number = _number(row.get("trial"))
            if number is None:
                continue  # a torn or foreign line: nothing to place on a chart
            measures = {key: value for key in MEASURES
                        if (value := _number(row.get(key))) is not None}
            params = measures.get("params")
            compression = _number(row.get("compression"))
            if compression is None and params:
                compression = baseline_params / params
            records.append(TrialRecord(
                trial=int(number), state=(row.get("state") or "").strip().upper(),
                measures=measures, compression=compression, feasible=_flag(row.get("feasible")),
                pareto=_flag(row.get("pareto")), plan=row.get("plan") or "",
                source=(row.get("source") or "").strip(), stage=(row.get("stage") or "").strip(),
                reason=row.get("fail_reason") or "",
            ))
    return sorted(records, key=lambda r: r.trial)


def _layer_order(document: dict[str, Any]) -> list[str]:
    # Newer searches list every compressible layer in model order; older ones only name the
    # layers in the plans, whose insertion order is the model order too.
    layers = [str(name) for name in document.get("layers") or []]
    for point in document.get("points", []):
        layers.extend(name for name in point.get("plan", {}) if name not in layers)
    return list(dict.fromkeys(layers))


def load_report(out_dir: Path) -> ReportData:
    """Read ``out_dir/pareto.json`` and ``out_dir/trials.csv``.

    Raises:
        UserInputError: ``pareto.json`` is missing or is not a search's result.
    """
    path = Path(out_dir) / "pareto.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        baseline = {key: float(document["baseline"][key]) for key in MEASURES}
    except FileNotFoundError:
        raise UserInputError(f"no search results in {str(out_dir)!r}: {path} is missing; "
                             "valid: the --out folder of lpsd-search search") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UserInputError(f"{path} is not a search result ({error!r}); valid: the "
                             "pareto.json that lpsd-search search writes") from None
    budgets = list(document.get("budgets") or ([document["budget"]] if "budget" in document
                                               else []))
    points = sorted(document.get("points", []), key=lambda p: p["params"])
    for point in points:
        point.setdefault("compression", baseline["params"] / point["params"])
    return ReportData(
        out_dir=Path(out_dir), study=str(document.get("study", "")),
        config=dict(document.get("config") or {}), baseline=baseline, budgets=budgets,
        objectives=list(document.get("objectives") or []), points=points,
        layers=_layer_order(document),
        trials=read_trials(Path(out_dir) / "trials.csv", baseline["params"]),
        min_accuracy=_fraction(document.get("min_accuracy")),
    )


def compression_range(data: ReportData) -> tuple[float, float]:
    """The x range of a compression chart: baseline (1×), every trial and every budget line."""
    values = [1.0] + [row.compression for row in data.completed if row.compression]
    values += [point["compression"] for point in data.points]
    values += [c for b in data.budgets if (c := budget_compression(b, data.baseline))]
    return min(values) / 1.15, max(values) * 1.3


def budget_compression(budget: dict[str, Any], baseline: dict[str, float]) -> float | None:
    """Where a params budget sits on the compression axis (1 / fraction), else None.

    Bytes and FLOPs budgets have no place on a params-compression axis: a model can meet a
    bytes limit at many parameter counts, so a line there would mislead.
    """
    if budget.get("metric", "params") != "params":
        return None
    fraction = budget.get("fraction")
    if fraction:
        return 1.0 / float(fraction)
    limit = budget.get("limit")
    return baseline["params"] / float(limit) if limit else None


def percent(point: dict[str, Any], key: str) -> str:
    """``point[key]`` as a percentage, or "—" when it was not measured (a search measures a
    trial's test accuracy only when the trial reaches its front)."""
    value = point.get(key)
    return "—" if value is None else f"{value:.2%}"


def budget_label(budget: dict[str, Any], baseline: dict[str, float]) -> str:
    """``params ≤ 12,989 (50 %, 2.0×)``, or the same for bytes / FLOPs."""
    metric = str(budget.get("metric", "params"))
    limit = budget.get("limit")
    text = f"{metric} ≤ {int(limit):,}" if limit is not None else metric
    fraction = budget.get("fraction")
    if fraction:
        text += f" ({float(fraction):.0%}"
        compression = budget_compression(budget, baseline)
        text += f", {compression:.1f}×)" if compression else ")"
    return text


def hypervolume_curve(data: ReportData) -> list[tuple[int, float]]:
    """Hypervolume after each trial, in trial number order.

    ``report.pareto.log_size_hypervolume`` of validation accuracy and params over the
    completed feasible trials seen so far: reference at (0 accuracy, the params budget, or
    the baseline's params without one), size on a log scale down to 1000× below it, so a
    front that reaches far below the budget counts as much as one that crowds at it.
    """
    curve: list[tuple[int, float]] = []
    accuracy: list[float] = []
    params: list[float] = []
    limits = [float(b["limit"]) for b in data.budgets
              if b.get("metric", "params") == "params" and b.get("limit")]
    reference = min(limits) if limits else float(data.baseline["params"])
    for row in data.trials:
        if row.completed and row.feasible and row.measures["params"] <= reference:
            accuracy.append(row.measures["accuracy"])
            params.append(row.measures["params"])
        curve.append((row.trial, log_size_hypervolume(accuracy, params, reference)))
    return curve


USEFUL_FRACTION = 0.5
"""A point below this fraction of the baseline's validation accuracy has lost what made the
model useful (a collapsed model sits near chance level): it is never the best at a level."""


def usefulness_floor(data: ReportData) -> tuple[float, str]:
    """The validation accuracy a point needs to count as the best at a compression level,
    and where it comes from (for captions)."""
    if data.min_accuracy is not None:
        return data.min_accuracy, "--min-accuracy"
    return USEFUL_FRACTION * float(data.baseline["accuracy"]), "half the baseline's"


def best_at_levels(points: Sequence[dict[str, Any]],
                   levels: Sequence[float] = COMPRESSION_LEVELS, floor: float = 0.0
                   ) -> list[tuple[float, dict[str, Any]]]:
    """The most accurate point with compression ≥ each level and accuracy ≥ ``floor``, for the
    levels such a point reaches.

    Example:
        >>> best_at_levels([{"compression": 3.0, "accuracy": 0.9}], [2, 5])
        [(2, {'compression': 3.0, 'accuracy': 0.9})]
        >>> best_at_levels([{"compression": 3.0, "accuracy": 0.2}], [2, 5], floor=0.5)
        []
    """
    best = []
    for level in levels:
        reaching = [p for p in points if p["compression"] >= level and p["accuracy"] >= floor]
        if reaching:
            best.append((level, max(reaching, key=lambda p: p["accuracy"])))
    return best


def is_dense(choice: dict[str, Any]) -> bool:
    """Whether a plan entry leaves its layer as it was."""
    return choice.get("method", "none") == "none" and not choice.get("sparsity")


def describe_choice(choice: dict[str, Any]) -> str:
    """``tucker2(14,6)``, ``svd(3)+s0.02`` (``+S``: alternating fit), ``sparse(0.1)``, ``dense``.

    The same text as ``LayerChoice.describe``, without importing torch to get it.
    """
    method, sparsity = str(choice.get("method", "none")), float(choice.get("sparsity") or 0.0)
    if method == "none":
        return f"sparse({sparsity:.3g})" if sparsity else "dense"
    rank = choice.get("rank")
    ranks = ",".join(map(str, rank)) if isinstance(rank, list) else str(rank)
    sparse = f"+{'S' if choice.get('alternating') else 's'}{sparsity:.3g}" if sparsity else ""
    return f"{method}({ranks}){sparse}"


def plan_summary(data: ReportData, point: dict[str, Any]) -> str:
    """One line for a front point: the summary ``trials.csv`` holds, else built from its plan."""
    for row in data.trials:
        if row.trial == point["trial"] and row.plan:
            return row.plan
    parts = [f"{name}={describe_choice(choice)}" for name, choice in point.get("plan", {}).items()
             if not is_dense(choice)]
    return " ".join(parts) or "dense"


def _names_user_code(model_spec: str) -> bool:
    """Whether a stored model spec names a user's file or module (``file.py:fn``,
    ``pkg.module:fn``), which ``export`` builds only with ``--trust-model-spec``. (The report
    does not import the model zoo: built-ins are ``name[:key=value,…]`` or
    ``torchvision:NAME``.)"""
    target, _, rest = model_spec.partition(":")
    if not rest or target == "torchvision" or "=" in rest:
        return False
    return target.endswith(".py") or "/" in target or "." in target


def export_command(out_dir: Path | str, trial: int, model_spec: str = "") -> str:
    """The shell command that exports one trial's compressed model (for a model given to the
    Python API as an object, the ``lpsd_search.load`` call that rebuilds it)."""
    if model_spec.startswith("python:"):
        return (f"lpsd_search.load({str(Path(out_dir) / 'models' / f'trial-{int(trial)}.pt')!r}"
                ", model_factory=<your model factory>)")
    trust = " --trust-model-spec" if _names_user_code(model_spec) else ""
    return (f"lpsd-search export {shlex.quote(str(out_dir))} --trial {int(trial)} "
            f"--out trial-{int(trial)}.pt{trust}")
