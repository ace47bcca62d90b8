"""Does the search's front beat every one-shot heuristic at every size? (issue 17)

For each setting (a model trained here on Fashion-MNIST, cached) and seed, at the budget and at
every round compression level below it (the ladder's rungs), these procedures each give front
points fine-tuned for the same final length (``--final-steps``):

* ``uniform``, ``vbmf``, ``alds``, ``lpsd``, ``alpsd``: the one-shot heuristic's plan at every
  level (``LadderPlanner`` with the heuristic's policy, exactly what the search enqueues),
  fine-tuned ``--final-steps`` steps;
* ``search``: ``lpsd-search search`` with its defaults (ladder strategy, heuristics at every
  rung first, per-rung TPE, the best two of each rung promoted during the run) for ``--trials``
  N trials of ``--short-steps`` steps, promoted trials ``--final-steps``;
* ``random_3n``: the same search with a random sampler and no warm starts for 3N trials.

Accuracy at a level = the test accuracy of the point with the best validation accuracy among
those at least that compressed (the search's and random's: promoted points only). The seeds
vary the fine-tune's batch order and the sampler, never the data split. Hypervolume: the
log-size hypervolume (``report.pareto.log_size_hypervolume``, reference at the budget) of the
validation accuracies of each search's promoted points. Fine-tune steps are counted for every
procedure (a heuristic's: one final fine-tune per level).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import optuna
import torch
from bench_utils import limit_threads
from search_report import HEURISTICS, assemble, merge_setting, new_setting, save

from lpsd_search.backends.optuna import search
from lpsd_search.config import (
    BaselineConfig,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.report.pareto import log_size_hypervolume
from lpsd_search.report.record import PROMOTED_AFTER
from lpsd_search.report.results import study_baseline, study_budgets, trial_rows
from lpsd_search.strategy.runner import TrialRunner
from lpsd_search.strategy.storage import open_storage

TIERS: dict[str, dict[str, Any]] = {
    # CI: one tiny setting, one seed, a few trials (< 2 minutes on 2 cores).
    "smoke": {"settings": [("digits-cnn", "digits-cnn", "digits", 8.0)], "seeds": [0],
              "budget": "0.2", "trials": 12, "short": 20, "final": 60},
    # This machine: two Fashion-MNIST settings, 3 seeds (60–90 minutes on 2 cores).
    "cpu": {"settings": [("vgg11-w0.25", "vgg11:width=0.25", "fashion-mnist", 2.0),
                         ("resnet20-w0.5", "resnet20:width=0.5", "fashion-mnist", 2.0)],
            "seeds": [0, 1, 2], "budget": "0.2", "trials": 40, "short": 50, "final": 150},
    # A lent GPU: the CPU tier's settings at full width.
    "gpu": {"settings": [("vgg16-w0.5", "vgg16:width=0.5", "fashion-mnist", 4.0),
                         ("resnet20", "resnet20", "fashion-mnist", 4.0)],
            "seeds": [0, 1, 2], "budget": "0.2", "trials": 40, "short": 100, "final": 300},
}


def _options(model: str, data: str, epochs: float, tier: dict[str, Any], seed: int, out: Path,
             *, args: argparse.Namespace, **search: Any) -> SearchOptions:
    return SearchOptions(
        model=model, data=data, budget=tier["budget"], out=out, cache_dir=args.cache_dir,
        device=args.device, finetune=TrainConfig(steps=tier["short"], seed=seed),
        baseline=BaselineConfig(epochs=epochs),
        search=SearchConfig(seed=seed, promote_steps=tier["final"], **search),
        runtime=RuntimeConfig(threads=args.threads))


def _at_levels(points: list[dict[str, float]], levels: list[float]) -> dict[str, float | None]:
    """Per level: test accuracy of the best-validation point at least that compressed."""
    found: dict[str, float | None] = {}
    for level in levels:
        eligible = [p for p in points if p["compression"] >= level * 0.999]
        best = max(eligible, key=lambda p: p["accuracy"], default=None)
        found[f"{level:g}"] = None if best is None else best["test_accuracy"]
    return found


def heuristics(options: SearchOptions, final: int) -> dict[str, Any]:
    """Every heuristic's plan at every rung, fine-tuned ``final`` steps."""
    runner = TrialRunner.from_options(options)
    assert runner.ladder is not None
    baseline = runner.pricer.baseline.params
    points: dict[str, list[dict[str, float]]] = {name: [] for name in HEURISTICS}
    for name, policy in runner.ladder.space.heuristics(HEURISTICS):
        for rung in runner.ladder.rungs:
            plan = runner.ladder.plan(runner.ladder.space.params(rung, policy))
            measured, _ = runner.evaluator.evaluate(plan, final)
            points[name].append({"compression": baseline / measured.params,
                                 "accuracy": measured.accuracy,
                                 "test_accuracy": measured.test_accuracy})
    return {"rungs": runner.ladder.rungs, "points": points,
            "steps": {name: final * len(found) for name, found in points.items()},
            "budget_params": runner.budgets[0].limit, "baseline_params": baseline}


def run_search(options: SearchOptions) -> dict[str, Any]:
    """One search; its promoted points, steps spent, wall time and hypervolume curve.

    The curve has one ``[fine-tune steps, hypervolume]`` pair per completed trial, in the order
    the search ran them: the hypervolume of the points promoted so far against the steps spent
    so far (every trial's short fine-tune, every promotion's longer one when it was made).
    """
    started = time.perf_counter()
    search(options)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name=options.search.study_name,
                              storage=open_storage(f"sqlite:///{options.out / 'study.db'}"))
    baseline_params = study_baseline(study)["params"]
    budget_params = float(study_budgets(study)[0]["limit"])
    complete = sorted((r for r in trial_rows(study) if r.state == "COMPLETE"),
                      key=lambda r: r.trial)
    promoted = [r for r in complete if r.promoted is not None]
    points = [{"compression": baseline_params / r.measures["params"],
               "params": r.measures["params"], "accuracy": r.measures["accuracy"],
               "test_accuracy": r.measures.get("test_accuracy", float("nan")),
               "after": int(r.promoted.get(PROMOTED_AFTER, len(complete)))}  # type: ignore[union-attr]
              for r in promoted]
    short, final = options.finetune.steps, int(options.search.promote_steps or 0)
    curve: list[list[float]] = []
    for done in range(1, len(complete) + 1):
        made = [p for p in points if p["after"] <= done]
        curve.append([done * short + len(made) * final, log_size_hypervolume(
            [p["accuracy"] for p in made], [p["params"] for p in made], budget_params)])
    steps = len(complete) * short + len(points) * final
    return {"points": points, "steps": steps, "wall": wall, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=sorted(TIERS), default="smoke")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the tier's (setting, seed) units in this many processes of "
                             "--threads threads each (e.g. --jobs 2 --threads 1 on 2 cores)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--only", default=None,
                        help="run one setting of the tier (results: search_<tier>_<name>.*), "
                             "e.g. to run the settings side by side")
    parser.add_argument("--samplers", nargs="+", default=None,
                        help="search variants: the first is `search`, each other "
                             "`search_<sampler>` (default: the search's default sampler)")
    parser.add_argument("--no-random", action="store_true",
                        help="leave out random_3n (an experiment between search variants; "
                             "the tier's results always include it)")
    parser.add_argument("--merge", type=Path, nargs="*", default=None,
                        help="write search_<tier>.* from these results files (one per setting)")
    args = parser.parse_args()
    if args.merge:
        merged: dict[str, Any] = {"tier": args.tier, "settings": []}
        for path in args.merge:
            for setting in json.loads(path.read_text(encoding="utf-8"))["settings"]:
                merge_setting(merged["settings"], setting)
        args.only, args.seeds = None, None
        save(args, merged, "see each merged file's run")
        return
    if args.jobs < 1:
        parser.error(f"--jobs {args.jobs}: must be at least 1")
    threads_note = _set_up(args.threads)
    if args.jobs > 1:
        threads_note += f", in each of {args.jobs} processes"
    tier = TIERS[args.tier]
    samplers = args.samplers or [SearchConfig().sampler]
    seeds = args.seeds if args.seeds is not None else tier["seeds"]
    settings = [s for s in tier["settings"] if args.only in (None, s[0])]
    if not settings:
        parser.error(f"--only {args.only!r}: valid: {', '.join(s[0] for s in tier['settings'])}")
    work = Path(tempfile.mkdtemp(prefix="lpsd-search-bench-"))
    # Seeds outermost: a tier stopped early still has every setting at its first seeds.
    units = [(seed, index) for seed in seeds for index in range(len(settings))]
    done: dict[tuple[int, int], dict[str, Any]] = {}
    started = time.perf_counter()

    def finished(unit: tuple[int, int], setting: dict[str, Any]) -> None:
        done[unit] = setting
        print(f"{settings[unit[1]][0]} seed {unit[0]}: done", file=sys.stderr, flush=True)
        document = assemble(args.tier, settings, tier, seeds, samplers, done)
        document["tier_wall_seconds"] = time.perf_counter() - started
        save(args, document, threads_note)  # after every unit: a long tier keeps its part

    job = functools.partial(run_unit, args, tier, samplers, work)
    if args.jobs == 1:
        for unit in units:
            finished(unit, job(settings[unit[1]], unit[0]))
        return
    # spawn, not fork: a forked child would inherit torch's thread pools mid-use.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_set_up, initargs=(args.threads,)) as pool:
        futures = {pool.submit(job, settings[unit[1]], unit[0]): unit for unit in units}
        for future in as_completed(futures):
            finished(futures[future], future.result())


def _set_up(threads: int) -> str:
    """Threads and log level of a process running units (this one, or a worker as it starts);
    returns the threads note of the results header."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return limit_threads(threads)


def run_unit(args: argparse.Namespace, tier: dict[str, Any], samplers: list[str], work: Path,
             setting: tuple[str, str, str, float], seed: int) -> dict[str, Any]:
    """One setting at one seed (in this process or a worker): its one-seed results entry."""
    name, model, data, epochs = setting
    entry = new_setting(setting, tier, [seed], samplers)
    options = functools.partial(_options, model, data, epochs, tier, seed, args=args)
    run_seed(entry, seed, work / f"{name}-{seed}", options, tier, samplers,
             random=not args.no_random)
    return entry


def run_seed(setting: dict[str, Any], seed: int, out: Path, options: Any,
             tier: dict[str, Any], samplers: list[str], *, random: bool = True) -> None:
    """Every procedure of one setting and seed, added to ``setting``: the heuristics, one
    search per sampler (the first named ``search``) and random search with 3N trials."""
    found = heuristics(options(out / "h"), tier["final"])
    # The budget's own level (5.0006× for 0.2) is named by its round value.
    levels = [float(f"{rung:.3g}") for rung in found["rungs"]]
    setting["levels"] = levels
    runs = {}
    for index, sampler in enumerate(samplers):
        key = "search" if index == 0 else f"search_{sampler}"
        runs[key] = run_search(options(out / f"s-{sampler}", trials=tier["trials"],
                                       sampler=sampler))
    if random:
        runs["random_3n"] = run_search(options(out / "r", trials=3 * tier["trials"],
                                               sampler="random", warm_starts=()))
    per: dict[str, list[dict[str, float]]] = {**found["points"]}
    per.update({k: v["points"] for k, v in runs.items()})
    for procedure, points in per.items():
        table = setting["accuracy"].setdefault(procedure, {})
        for level, value in _at_levels(points, levels).items():
            table.setdefault(level, []).append(value)
    steps = {**found["steps"], **{k: v["steps"] for k, v in runs.items()}}
    for procedure, count in steps.items():
        setting["finetune_steps"].setdefault(procedure, []).append(count)
    for key, run in runs.items():
        setting["hypervolume"].setdefault(key, []).append(log_size_hypervolume(
            [p["accuracy"] for p in run["points"]],
            [p["params"] for p in run["points"]], found["budget_params"]))
        setting.setdefault("curves", {}).setdefault(key, []).append(run["curve"])
        setting["wall_seconds"].setdefault(key, []).append(run["wall"])
    setting["seeds_done"] = [*setting.get("seeds_done", []), seed]


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
