"""How fast a trial fine-tunes, before and after issue 16, next to a plain dense loop.

For each model (trained here for ``--train-epochs`` on Fashion-MNIST and cached), every conv
Tucker-2 supports is compressed to 10 % of its parameters; the compressed model is fine-tuned
``--steps`` steps (batch 64, lr 3e-3 cosine, seed 0, the search's defaults) by

* ``previous``: the evaluator's loop before issue 16 (``legacy_evaluator.py``, verbatim);
* ``fp32``: today's loop in fp32 (data resident on the device, no per-step synchronisation);
* ``auto``: today's loop with the runtime ``--precision auto`` resolves (bf16 where fast);
* ``auto+compile`` (``--compile``): the same under ``torch.compile``, its compile time included;

and the dense model by a plain loop (resident batches, AdamW, no masks, no checks) in fp32 and
in the ``auto`` precision: the ceiling of the device. The variants run round-robin
(``--repeats`` times) so that load from other processes falls on all alike; images/s are
medians. Each row's validation accuracy is from its first repeat (same start, same seed).

Then where a trial's time goes: one ``Evaluator.evaluate`` of the plan as a search runs it
(validation only) with an empty factor cache and once more with it filled (decomposition = the
difference of their build times), plus the test accuracy a trial that reaches the front adds;
a real flat search (``--search-trials`` trials, default 12, random plans, no warm starts, no
promotion) and, for the ``--default-search`` models, a search with the default strategy
(``--default-trials``: ladder, heuristic warm starts at every rung, promotions during the run),
each split from its first trial's start to its return into plan, build, fine-tune,
evaluation and the controller (sampling, storage, results).

With ``--workers 1,4`` (GPU tier) it also runs that many ``lpsd-search search`` processes on
one study and device and counts completed trials per hour.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import legacy_evaluator as legacy
import optuna
import torch
from bench_utils import RESULTS, header, write_results
from torch import nn

from lpsd_search.backends.optuna import search
from lpsd_search.config import (
    BaselineConfig,
    RuntimeConfig,
    SearchConfig,
    SearchOptions,
    TrainConfig,
)
from lpsd_search.data.splits import DataSplits, load_data
from lpsd_search.decompositions.base import get_method
from lpsd_search.decompositions.cache import FactorCache
from lpsd_search.decompositions.ranks import fraction_rank
from lpsd_search.models.checkpoint import save_checkpoint
from lpsd_search.plan.choices import LayerChoice, Plan
from lpsd_search.plan.layers import find_layers
from lpsd_search.report.record import PROMOTED_PREFIX
from lpsd_search.strategy.storage import open_storage
from lpsd_search.trial.baseline import load_model, train_baseline
from lpsd_search.trial.batching import endless
from lpsd_search.trial.evaluate import Evaluator
from lpsd_search.trial.runtime import Runtime, resolve_runtime
from lpsd_search.trial.train import score, train


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def baseline(spec: str, data: DataSplits, device: torch.device, runtime: Runtime,
             args: argparse.Namespace) -> tuple[nn.Module, Path]:
    safe = "".join(c if c.isalnum() else "_" for c in spec)
    path = args.cache_dir / f"evaluator-{safe}-{args.train_epochs:g}ep.pt"
    if not path.is_file():
        model, scores = train_baseline(spec, data, BaselineConfig(epochs=args.train_epochs),
                                       device, runtime=runtime)
        save_checkpoint(path, model, model_spec=spec, data_spec=data.spec, meta=scores,
                        data_fingerprint=data.fingerprint)
    return load_model(spec, data, path, device), path


def tucker_plan(model: nn.Module, example: torch.Tensor) -> Plan:
    modules = dict(model.named_modules())
    tucker = get_method("tucker2")
    return Plan({t.name: LayerChoice("tucker2", fraction_rank(modules[t.name], "tucker2", 0.1))
                 for t in find_layers(model, example)
                 if isinstance(modules[t.name], nn.Conv2d) and tucker.supports(t.geometry)})


def dense_loop(model: nn.Module, data: DataSplits, steps: int, runtime: Runtime) -> float:
    """The ceiling: a plain training loop over resident batches; returns its seconds."""
    runtime.prepare(model).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    stream = endless(data.train, 64, torch.Generator().manual_seed(0), runtime.device)
    _sync(runtime.device)
    start = time.perf_counter()
    for _ in range(steps):
        inputs, labels = next(stream)
        with runtime.autocast():
            loss = nn.functional.cross_entropy(model(runtime.inputs(inputs)).float(), labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    _sync(runtime.device)
    return time.perf_counter() - start


def finetune_rows(spec: str, evaluator: Evaluator, plan: Plan, runtimes: dict[str, Runtime],
                  args: argparse.Namespace) -> list[dict[str, Any]]:
    config = TrainConfig(steps=args.steps)
    device, data = evaluator.device, evaluator.data
    times: dict[str, list[float]] = {}
    accuracy: dict[str, float] = {}
    variants = ["previous", *runtimes, "dense fp32 (plain loop)", "dense auto (plain loop)"]
    for repeat in range(args.repeats):
        for name in variants:
            if name.startswith("dense"):
                used = runtimes["fp32" if "fp32" in name else "auto"]
                times.setdefault(name, []).append(
                    dense_loop(copy.deepcopy(evaluator.model), data, args.steps, used))
                continue
            if name.endswith("compile") and repeat > 0:
                continue  # compile once: its cost is part of the one trial it serves
            model = evaluator.build(plan)
            _sync(device)
            start = time.perf_counter()
            if name == "previous":
                legacy.train(model, data.train, config, device)
            else:
                train(model, data.train, config, device, runtime=runtimes[name])
            _sync(device)
            times.setdefault(name, []).append(time.perf_counter() - start)
            if repeat == 0:
                accuracy[name] = (legacy.score(model, data.val, device)[0] if name == "previous"
                                  else score(model, data.val, device, runtime=runtimes[name])[0])
    rows = []
    for name in variants:
        median = statistics.median(times[name])
        rows.append({"model": spec, "variant": name, "seconds": median,
                     "images_per_s": args.steps * 64 / median,
                     "val_accuracy": accuracy.get(name), "runs": len(times[name])})
    return rows


def trial_split(evaluator: Evaluator, plan: Plan) -> dict[str, float]:
    """One trial as a search runs it (validation only), with an empty factor cache and again
    with it filled; then what a trial that reaches the front adds: its test accuracy."""
    evaluator.cache = FactorCache()
    first, _ = evaluator.evaluate(plan, test=False)
    second, model = evaluator.evaluate(plan, test=False)
    start = time.perf_counter()
    evaluator.test_accuracy(model)
    return {"decomposition": first.build_seconds - second.build_seconds,
            "build": second.build_seconds, "finetune": second.finetune_seconds,
            "evaluation": second.eval_seconds, "total": second.seconds,
            "test": time.perf_counter() - start}


def search_split(spec: str, checkpoint: Path, data_spec: str, device: str,
                 args: argparse.Namespace, work: Path, strategy: str) -> dict[str, float]:
    """A real search's wall time split into plan, build, fine-tune, evaluation, controller.

    ``flat``: random plans, no warm starts, no promotion (the evaluator's own overhead on
    varied plans); ``default``: the default strategy (ladder, heuristic warm starts at every
    rung, promotions during the run), whose allocators choose plans (``plan``).
    """
    out = work / f"search-{strategy}-{spec.replace(':', '_')}"
    search_config = (SearchConfig(trials=args.search_trials, strategy="flat", warm_starts=(),
                                  promote_steps=0) if strategy == "flat"
                     else SearchConfig(trials=args.default_trials))
    options = SearchOptions(
        model=spec, data=data_spec, budget="0.1", out=out, checkpoint=str(checkpoint),
        finetune=TrainConfig(steps=args.steps), device=device, search=search_config,
        runtime=RuntimeConfig(threads=args.threads))
    search(options)
    ended = datetime.datetime.now()
    study = optuna.load_study(study_name=options.search.study_name,
                              storage=open_storage(f"sqlite:///{out / 'study.db'}"))
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    runs = [t.user_attrs for t in trials] + [
        value for key, value in study.user_attrs.items() if key.startswith(PROMOTED_PREFIX)]
    # From the first trial's start to the search's return: promotions and the final results
    # included (trials' datetimes are Optuna's naive local times).
    wall = (ended - min(t.datetime_start for t in trials)).total_seconds()

    def total(key: str) -> float:
        return sum(float(run.get(key, 0.0)) for run in runs)

    evaluator_s = total("seconds")
    return {"trials": len(trials), "runs": len(runs), "wall": wall,
            "plan": total("plan_seconds"),
            "build": total("build_seconds") - total("plan_seconds"),
            "finetune": total("finetune_seconds"), "evaluation": total("eval_seconds"),
            "evaluator_rest": evaluator_s - total("finetune_seconds"),
            "controller": wall - evaluator_s,
            "non_finetune_share": 1 - total("finetune_seconds") / wall,
            "share_without_plan": 1 - total("finetune_seconds") / (wall - total("plan_seconds"))}


def workers_rows(spec: str, checkpoint: Path, data_spec: str, device: str,
                 args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for count in args.workers:
        out = work / f"workers-{count}"
        storage = f"sqlite:///{work / f'workers-{count}.db'}"
        threads = max(1, (os.cpu_count() or 1) // count)
        command = [sys.executable, "-m", "lpsd_search", "-q", "search", "--model", spec,
                   "--data", data_spec, "--checkpoint", str(checkpoint), "--budget", "0.1",
                   "--trials", str(args.worker_trials), "--finetune-steps", str(args.steps),
                   "--strategy", "flat", "--no-warm-start", "--promote-steps", "0",
                   "--no-report", "--device", device, "--threads", str(threads),
                   "--storage", storage, "--study", "workers", "--out", str(out)]
        processes = [subprocess.Popen(command) for _ in range(count)]
        if any(process.wait() for process in processes):
            raise RuntimeError(f"a worker of the {count}-worker run failed")
        study = optuna.load_study(study_name="workers", storage=open_storage(storage))
        trials = [t for t in study.trials if t.state.name == "COMPLETE"]
        wall = (max(t.datetime_complete for t in trials)
                - min(t.datetime_start for t in trials)).total_seconds()
        rows.append({"workers": count, "trials": len(trials), "seconds": wall,
                     "trials_per_hour": 3600 * len(trials) / wall,
                     "median_trial_s": statistics.median(t.user_attrs["seconds"]
                                                         for t in trials)})
    return rows


def markdown(args: argparse.Namespace, device: torch.device, auto: Runtime,
             results: dict[str, Any]) -> list[str]:
    lines = header(f"Evaluator speed, tier {args.tier}", f"torch {auto.threads}", [
        ("device", torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"),
        ("auto runtime", json.dumps(auto.describe())),
        ("fine-tune", f"{args.steps} steps, batch 64, lr 3e-3 cosine, seed 0"),
        ("repeats", f"{args.repeats}, round-robin; images/s are medians")])
    lines += ["## Fine-tune throughput", "",
              "| model | variant | images/s | vs previous | seconds | val accuracy |",
              "|---|---|---|---|---|---|"]
    for spec, rows in results["finetune"].items():
        before = next(r for r in rows if r["variant"] == "previous")["images_per_s"]
        for row in rows:
            accuracy = "" if row["val_accuracy"] is None else f"{row['val_accuracy']:.4f}"
            lines.append(f"| {spec} | {row['variant']} | {row['images_per_s']:.0f} | "
                         f"{row['images_per_s'] / before:.2f}x | {row['seconds']:.2f} | "
                         f"{accuracy} |")
    lines += ["", "## Where a trial's time goes", "",
              "Seconds per run (a trial, or a promotion's longer fine-tune). *plan*: choosing "
              "the plan (repair, or an allocator such as ALPSD's local selection); "
              "*decomposition*: factorising on an empty factor cache; *build*: the rest of "
              "building; *evaluation*: size and validation accuracy (test accuracy only where "
              "said); *controller*: sampling, storage, saving weights, results.", "",
              "| model | what | runs | plan s | decomposition s | build s | fine-tune s | "
              "evaluation s | controller s | non-fine-tune share |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for spec, split in results["split"].items():
        share = 1 - split["finetune"] / split["total"]
        lines.append(f"| {spec} | one trial as a search runs it (validation; warm cache) | 1 | "
                     f"— | {split['decomposition']:.3f} | {split['build']:.3f} | "
                     f"{split['finetune']:.2f} | {split['evaluation']:.2f} | — | {share:.1%} |")
        front = 1 - split["finetune"] / (split["total"] + split["test"])
        lines.append(f"| {spec} | the same trial reaching the front (+ test accuracy) | 1 | — "
                     f"| {split['decomposition']:.3f} | {split['build']:.3f} | "
                     f"{split['finetune']:.2f} | {split['evaluation'] + split['test']:.2f} | — "
                     f"| {front:.1%} |")
        for strategy, found in results["search"].get(spec, {}).items():
            runs = found["runs"]
            what = (f"flat search, {found['trials']} random trials (front trials' test "
                    "accuracy included)" if strategy == "flat" else
                    f"default search (ladder), {found['trials']} trials + "
                    f"{runs - found['trials']} promotions; share without plan "
                    f"{found['share_without_plan']:.1%}")
            lines.append(f"| {spec} | {what} | {runs} | {found['plan'] / runs:.2f} | — | "
                         f"{found['build'] / runs:.2f} | {found['finetune'] / runs:.2f} | "
                         f"{found['evaluation'] / runs:.2f} | "
                         f"{found['controller'] / runs:.2f} | "
                         f"{found['non_finetune_share']:.1%} |")
    if results.get("workers"):
        lines += ["", "## Several trials per device", "",
                  "| workers | trials | seconds | trials/hour | median trial s |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['workers']} | {r['trials']} | {r['seconds']:.1f} | "
                  f"{r['trials_per_hour']:.0f} | {r['median_trial_s']:.2f} |"
                  for r in results["workers"]]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--models", default="vgg16:width=0.25,resnet20")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-epochs", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--search-trials", type=int, default=12,
                        help="trials of the flat search (0: none)")
    parser.add_argument("--default-search", default="vgg16:width=0.25",
                        help="comma list of models that also get a default-strategy search")
    parser.add_argument("--default-trials", type=int, default=24)
    parser.add_argument("--workers", default="", help="comma list of worker counts (GPU)")
    parser.add_argument("--worker-trials", type=int, default=16)
    parser.add_argument("--cache-dir", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",") if w]
    args.default_search = [m for m in args.default_search.split(",") if m]
    device = torch.device("cuda" if args.tier == "gpu" else "cpu")
    auto = resolve_runtime(RuntimeConfig(threads=args.threads), device)
    runtimes = {"fp32": Runtime(device, "fp32", False, False, auto.threads), "auto": auto}
    if args.compile:
        runtimes["auto+compile"] = Runtime(device, auto.precision, auto.channels_last, True,
                                           auto.threads)
    data = load_data(args.data)
    results: dict[str, Any] = {"finetune": {}, "split": {}, "search": {}, "workers": []}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for spec in args.models.split(","):
            model, checkpoint = baseline(spec, data, device, auto, args)
            evaluator = Evaluator(model, data, TrainConfig(steps=args.steps), device,
                                  runtime=auto)
            plan = tucker_plan(evaluator.model, evaluator.example)
            results["finetune"][spec] = finetune_rows(spec, evaluator, plan, runtimes, args)
            results["split"][spec] = trial_split(evaluator, plan)
            strategies = (["flat"] if args.search_trials else []) + (
                ["default"] if spec in args.default_search else [])
            results["search"][spec] = {}
            for strategy in strategies:
                results["search"][spec][strategy] = search_split(
                    spec, checkpoint, args.data, str(device), args, work, strategy)
                save(args, device, auto, results)
            save(args, device, auto, results)  # each model's rows as soon as they exist
        if args.workers:
            first = args.models.split(",")[0]
            checkpoint = baseline(first, data, device, auto, args)[1]
            results["workers"] = workers_rows(first, checkpoint, args.data, str(device), args,
                                              work)
    print(save(args, device, auto, results).read_text())


def save(args: argparse.Namespace, device: torch.device, auto: Runtime,
         results: dict[str, Any]) -> Path:
    """Write the markdown table and its JSON twin; returns the markdown's path."""
    output = args.output or RESULTS / f"evaluator_{args.tier}.md"
    write_results(output, markdown(args, device, auto, results))
    output.with_suffix(".json").write_text(json.dumps(
        {"runtime": auto.describe(), "args": {k: v if not isinstance(v, Path) else str(v)
                                               for k, v in vars(args).items()},
         **results}, indent=2) + "\n")
    return output


if __name__ == "__main__":
    main()
