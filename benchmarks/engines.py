"""Engines side by side: trials per hour and per-job overhead, in-process vs. a Ray cluster.

The same search (``digits-cnn`` on ``digits``, budget 0.5, the default ladder strategy with its
warm starts and promotions, seed 0, one torch thread per job) runs through the CLI on:

* ``optuna``: the in-process engine, one worker;
* ``ray, 1 node`` / ``ray, 2 nodes``: ``--backend ray`` on a loopback Ray cluster started here
  (``ray start`` nodes of one CPU each, ``tests/services.py``), one job per CPU.

Per run: wall time of the command (Ray's connection and the shipping of data and weights
included), jobs (trials plus promotions), trials per hour, the mean time a job spent in the
evaluator (``seconds`` of the trial and of its promotion, from the study) and the engine's
overhead per job, ``wall × slots / jobs − mean job seconds``: what each slot spent on anything
but running jobs (start-up amortised over the jobs, asking, telling, scheduling). The baseline is
trained once before the timed runs. Needs Ray (``pip install -e '.[ray]'``).

    python benchmarks/engines.py [--trials 16] [--finetune-steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from bench_utils import RESULTS, header, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from services import ray_cluster  # the loopback cluster the Ray tests use

from lpsd_search.report.record import promoted_measures


def _search(out: Path, cache: Path, args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lpsd_search", "-q", "search", "--model", "digits-cnn",
            "--data", "digits", "--budget", "0.5", "--seed", "0", "--device", "cpu",
            "--threads", "1", "--train-epochs", "8", "--no-report", "--trials",
            str(args.trials), "--finetune-steps", str(args.finetune_steps), "--promote-steps",
            str(2 * args.finetune_steps), "--out", str(out), "--cache-dir", str(cache), *extra]


def _measure(name: str, nodes: int, slots: int, command: list[str],
             env: dict[str, str] | None, out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
    study = optuna.load_study(study_name="lpsd-search", storage=f"sqlite:///{out / 'study.db'}")
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    seconds = [float(t.user_attrs["seconds"]) for t in trials]
    seconds += [float(m["seconds"]) for m in promoted_measures(study).values()]
    jobs = len(seconds)
    mean = statistics.mean(seconds)
    return {"engine": name, "nodes": nodes, "slots": slots, "trials": len(trials),
            "jobs": jobs, "wall_seconds": wall, "trials_per_hour": 3600 * len(trials) / wall,
            "mean_job_seconds": mean, "overhead_per_job_seconds": wall * slots / jobs - mean}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--finetune-steps", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lpsd-engines-"))
    cache = work / "cache"
    # The baseline, trained once and cached: no timed run trains it.
    subprocess.run([*_search(work / "warmup", cache, args), "--trials", "1",
                    "--no-warm-start"], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    rows = [_measure("optuna", 1, 1, _search(work / "optuna", cache, args),
                     {**os.environ, "OMP_NUM_THREADS": "1"}, work / "optuna")]
    for workers in (0, 1):
        with ray_cluster(workers=workers) as cluster:
            nodes = 1 + workers  # the head runs jobs too (one CPU each)
            out = work / f"ray-{nodes}"
            command = _search(out, cache, args, "--backend", "ray", "--ray-address",
                              cluster.address, "--cpus-per-trial", "1", "--max-concurrent",
                              str(nodes))
            rows.append(_measure(f"ray, {nodes} node{'s' * (nodes > 1)}", nodes, nodes,
                                 command, {**cluster.client_env(), "OMP_NUM_THREADS": "1"},
                                 out))
    lines = header("Engines: trials per hour and per-job overhead", "1 per job (--threads 1)")
    lines += ["", f"`digits-cnn` on digits, budget 0.5, default strategy (ladder, warm starts, "
              f"promotions), {args.trials} trials of {args.finetune_steps} fine-tune steps, "
              f"promotions {2 * args.finetune_steps} steps, seed 0. Overhead per job = "
              "wall × slots / jobs − mean job seconds.", "",
              "| engine | nodes | slots | trials | jobs | wall s | trials/hour | "
              "mean job s | overhead per job s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['engine']} | {row['nodes']} | {row['slots']} | {row['trials']} | "
                     f"{row['jobs']} | {row['wall_seconds']:.1f} | "
                     f"{row['trials_per_hour']:.0f} | {row['mean_job_seconds']:.2f} | "
                     f"{row['overhead_per_job_seconds']:.2f} |")
    write_results(RESULTS / "engines.md", lines)
    (RESULTS / "engines.json").write_text(json.dumps({"runs": rows}, indent=1) + "\n",
                                          encoding="utf-8")
    print((RESULTS / "engines.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
