"""Throughput of 1 and 2 Optuna workers on one shared study, and each backend's per-trial overhead.

Every run is the real command line (``lpsd-search search``) on digits with the same trial: the
``digits-cnn`` baseline (cached once before any timing), ``--strategy flat``, no warm starts, no
promotion, a fixed ``--finetune-steps`` fine-tune, one torch thread per trial
(``OMP_NUM_THREADS=1``), so a trial costs the same whichever backend or worker runs it.

* **Scaling**: ``--workers`` processes share one study (``--storage``, a journal file by default;
  pass a ``postgresql://`` URL to measure a server) and together fill ``--trials`` completed
  trials. Trials per hour are counted between the first trial's start and the last one's end as
  the study records them (start-up excluded); the wall time includes each process's start-up.
* **Overhead**: one trial at a time (a single Optuna worker; Ray with ``--max-concurrent 1`` on
  a local Ray it starts). A trial's cycle is the time between consecutive trial completions in
  the results study, and its overhead is the cycle minus the trial's own measured work
  (``seconds``: build, fine-tune, measure): sampling, storage, result files, and for Ray the
  trial's scheduling, actor reuse, result reporting and the copy into the study.

Example:
    python benchmarks/scaling.py --trials 12 --finetune-steps 60
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from bench_utils import RESULTS, header, seconds, version_of, write_results

from lpsd_search.report.record import trial_seconds, trial_worker
from lpsd_search.strategy.storage import open_storage

STUDY = "scaling"


def _command(out: Path, args: argparse.Namespace, storage: str, study: str, trials: int,
             *extra: str) -> list[str]:
    return [sys.executable, "-m", "lpsd_search", "-q", "search", "--out", str(out),
            "--storage", storage, "--study", study, "--trials", str(trials),
            "--finetune-steps", str(args.finetune_steps), "--budget", "0.5",
            "--train-epochs", "8", "--seed", "0", "--device", "cpu",
            "--cache-dir", str(args.cache_dir), "--strategy", "flat", "--no-warm-start",
            "--promote-steps", "0", "--no-report", *extra]


def _env() -> dict[str, str]:
    # One thread per trial everywhere; a local Ray here needs no token (loopback only).
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}


def _run(commands: list[list[str]]) -> float:
    """Run the commands at once; the wall time until the last one ends."""
    start = time.perf_counter()
    processes = [subprocess.Popen(c, env=_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for c in commands]
    for process in processes:
        log = process.communicate()[0]
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(process.args)} failed:\n{log[-3000:]}")
    return time.perf_counter() - start


def _complete(storage: str, study_name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(trials, key=lambda t: t.datetime_complete)


def scaling(args: argparse.Namespace, root: Path, workers: int) -> dict[str, float]:
    storage = args.storage or f"journal:{root / f'workers{workers}.log'}"
    study = f"{STUDY}-{workers}-workers-{int(time.time())}"
    commands = [_command(root / f"w{workers}-{i}", args, storage, study, args.trials)
                for i in range(workers)]
    wall = _run(commands)
    trials = _complete(storage, study)
    span = (trials[-1].datetime_complete - min(t.datetime_start for t in trials)).total_seconds()
    work = statistics.median(trial_seconds(t) for t in trials)
    return {"workers": workers, "trials": len(trials), "span": span, "wall": wall,
            "per_hour": len(trials) / span * 3600, "work": work,
            "nodes": len({trial_worker(t) for t in trials})}


def overhead(args: argparse.Namespace, root: Path, backend: str) -> dict[str, float]:
    storage = f"sqlite:///{root / f'{backend}.db'}"
    extra = ["--backend", "ray", "--max-concurrent", "1", "--cpus-per-trial", "1"] \
        if backend == "ray" else []
    wall = _run([_command(root / backend, args, storage, STUDY, args.overhead_trials, *extra)])
    trials = _complete(storage, STUDY)
    # The first cycle holds the start-up (data, model, for Ray the cluster and the actor).
    cycles = [(b.datetime_complete - a.datetime_complete).total_seconds()
              for a, b in itertools.pairwise(trials)]
    overheads = [c - trial_seconds(t) for c, t in zip(cycles, trials[1:],
                                                                    strict=True)]
    return {"backend": backend, "trials": len(trials), "wall": wall,
            "cycle": statistics.median(cycles), "work": statistics.median(
                trial_seconds(t) for t in trials[1:]),
            "overhead": statistics.median(overheads)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--overhead-trials", type=int, default=10)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--storage", default=None,
                        help="shared storage of the scaling runs (default: a journal file)")
    parser.add_argument("--cache-dir", type=Path, default=Path("benchmarks/cache"))
    parser.add_argument("--output", type=Path, default=RESULTS / "scaling.md")
    args = parser.parse_args()
    lines = header("Scaling: Optuna workers on one study, per-trial overhead of each backend",
                   "1 torch thread per trial (OMP_NUM_THREADS=1)",
                   [("optuna", optuna.__version__),
                    ("ray", version_of("ray")), ("trial", f"digits-cnn on digits, budget 0.5, "
                                                        f"{args.finetune_steps} fine-tune steps")])
    with tempfile.TemporaryDirectory(prefix="lpsd-scaling-") as temporary:
        root = Path(temporary)
        # Train and cache the baseline outside every timing.
        _run([_command(root / "warm", args, f"sqlite:///{root / 'warm.db'}", STUDY, 0)])
        runs = [scaling(args, root, workers) for workers in (1, 2)]
        costs = [overhead(args, root, backend) for backend in ("optuna", "ray")]
    lines += ["## Trials per hour, Optuna workers sharing one study", "",
              f"Storage: {args.storage or 'a journal file (journal:FILE)'}; "
              f"{args.trials} completed trials per run.", "",
              "| workers | trials | first start → last end | trials / hour | speed-up | "
              "wall incl. start-up | median trial work |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['workers']:.0f} | {run['trials']:.0f} | {seconds(run['span'])} | "
                     f"{run['per_hour']:.0f} | {run['per_hour'] / runs[0]['per_hour']:.2f}× | "
                     f"{seconds(run['wall'])} | {seconds(run['work'])} |")
    lines += ["", "## Per-trial overhead, one trial at a time", "",
              "| backend | trials | median cycle | median trial work | median overhead | "
              "wall incl. start-up |", "|---|---|---|---|---|---|"]
    for cost in costs:
        lines.append(f"| {cost['backend']} | {cost['trials']:.0f} | {seconds(cost['cycle'])} | "
                     f"{seconds(cost['work'])} | {seconds(cost['overhead'])} | "
                     f"{seconds(cost['wall'])} |")
    slowdown = runs[1]["work"] / runs[0]["work"]
    lines += ["", "## Reading", "",
              f"- With 2 workers each trial's own work took {slowdown:.2f}× as long as with one "
              f"(median {seconds(runs[1]['work'])} vs {seconds(runs[0]['work'])}): the speed-up "
              "is bounded by the CPU time the machine can give a second worker (see the load "
              "average above), not by the shared study.",
              f"- The Optuna controller spends {seconds(costs[0]['overhead'])} per trial outside "
              f"the trial, Ray Tune {seconds(costs[1]['overhead'])} (with `reuse_actors=True`, "
              "one actor reused for every trial); Ray's start-up is in its wall time."]
    print(write_results(args.output, lines))


if __name__ == "__main__":
    main()
