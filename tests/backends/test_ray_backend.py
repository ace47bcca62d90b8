"""The Ray Tune backend: on a real two-node Ray cluster on this machine, through the CLI."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from services import RayCluster, ray_cluster

from lpsd_search.backends.ray import driver
from lpsd_search.cli.main import main
from lpsd_search.cli.parser import add_ray_arguments
from lpsd_search.config import RayConfig, SearchOptions
from lpsd_search.errors import UserInputError

# Same baseline recipe as the conftest fixture, so the driver loads the cached weights.
FAST = ["--train-epochs", "8", "--finetune-steps", "20", "--seed", "0", "--budget", "0.5",
        "--device", "cpu", "--no-report"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    with ray_cluster(workers=1) as running:
        yield running


def _command(cluster: RayCluster, out: Path, cache_dir: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "lpsd_search", "-q", "search", "--backend", "ray",
            "--ray-address", cluster.address, "--cpus-per-trial", "1", "--max-concurrent", "2",
            "--trials", str(trials), "--out", str(out), "--cache-dir", str(cache_dir), *FAST]


def _env(cluster: RayCluster) -> dict[str, str]:
    # The driver only samples and records; the trials run on the cluster's nodes.
    return {**cluster.client_env(), "OMP_NUM_THREADS": "1"}


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "trials.csv").open() as handle:
        return list(csv.DictReader(handle))


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="lpsd-search", storage=f"sqlite:///{out / 'study.db'}")


def test_the_backend_modules_do_not_import_ray():
    code = ("import sys, lpsd_search, lpsd_search.backends.ray, lpsd_search.backends.ray.driver, "
            "lpsd_search.backends.ray.worker, lpsd_search.cli; print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_ray_arguments_parse_to_their_values_types_and_defaults():
    parser = argparse.ArgumentParser()
    add_ray_arguments(parser)
    given = parser.parse_args(["--backend", "ray", "--ray-address", "10.0.0.1:6379",
                               "--cpus-per-trial", "2", "--gpus-per-trial", "0.25",
                               "--max-concurrent", "4"])
    assert vars(given) == {"backend": "ray", "ray_address": "10.0.0.1:6379",
                           "cpus_per_trial": 2.0, "gpus_per_trial": 0.25, "max_concurrent": 4}
    assert [type(given.cpus_per_trial), type(given.gpus_per_trial),
            type(given.max_concurrent)] == [float, float, int]
    assert vars(parser.parse_args([])) == {"backend": "optuna", "ray_address": None,
                                           "cpus_per_trial": 1.0, "gpus_per_trial": 0.0,
                                           "max_concurrent": 2}
    # The parser's defaults are RayConfig's, so a bare --backend ray runs as documented there.
    assert RayConfig() == RayConfig(address=None, cpus_per_trial=1.0, gpus_per_trial=0.0,
                                    max_concurrent=2, max_failures=1)


@pytest.mark.parametrize(("argv", "message"), [
    (["--backend", "dask"], "argument --backend: invalid choice: 'dask'"),
    (["--gpus-per-trial", "-0.5"], "argument --gpus-per-trial: '-0.5' is negative; valid: 0 "
                                   "or more"),
    (["--cpus-per-trial", "two"], "argument --cpus-per-trial: 'two' is not a number"),
    (["--max-concurrent", "1.5"], "argument --max-concurrent: invalid int value: '1.5'"),
])
def test_ray_arguments_reject_bad_values_with_the_option_named(argv, message, capsys):
    parser = argparse.ArgumentParser(prog="p")
    add_ray_arguments(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_concurrent": 0}, "--max-concurrent 0 is invalid; valid: 1 or more"),
    ({"max_concurrent": -3}, "--max-concurrent -3 is invalid; valid: 1 or more"),
    ({"cpus_per_trial": 0.0}, "--cpus-per-trial 0.0 is invalid; valid: > 0"),
    ({"cpus_per_trial": -1.0}, "--cpus-per-trial -1.0 is invalid; valid: > 0"),
    ({"gpus_per_trial": -0.5}, "--gpus-per-trial -0.5 is invalid; valid: 0 or more"),
    ({"max_failures": -1}, "max failures -1 is invalid; valid: 0 or more"),
])
def test_ray_config_rejects_each_bad_field_with_its_message(fields, message):
    with pytest.raises(UserInputError) as info:
        RayConfig(**fields)
    assert str(info.value) == message


def test_ray_config_accepts_the_boundary_values():
    config = RayConfig(cpus_per_trial=0.5, gpus_per_trial=0.0, max_concurrent=1, max_failures=0)
    assert (config.cpus_per_trial, config.gpus_per_trial, config.max_concurrent,
            config.max_failures) == (0.5, 0.0, 1, 0)


def _search_with_ray_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                              *ray_args: str) -> tuple[int, list[tuple[SearchOptions, RayConfig]]]:
    """Run ``lpsd-search search --backend ray`` with the driver replaced by a recorder.

    The stand-in writes an empty result, as a search whose trials all failed would, so the CLI
    goes on to its summary; nothing imports Ray.
    """
    calls: list[tuple[SearchOptions, RayConfig]] = []

    def run_ray_search(options: SearchOptions, config: RayConfig,
                       on_trial: object = None) -> dict[str, object]:
        calls.append((options, config))
        document = {"study": "recorded", "baseline": {"params": 1000, "bytes": 4000,
                                                      "flops": 9000, "accuracy": 0.9,
                                                      "test_accuracy": 0.9}, "points": []}
        options.out.mkdir(parents=True, exist_ok=True)
        (options.out / "pareto.json").write_text(json.dumps(document))
        return document

    monkeypatch.setattr(driver, "run_ray_search", run_ray_search)
    status = main(["-q", "search", "--budget", "0.3", "--trials", "5", "--seed", "7",
                   "--out", str(tmp_path / "run"), "--no-report", "--backend", "ray",
                   *ray_args])
    return status, calls


def test_search_cli_builds_the_ray_config_from_its_arguments(monkeypatch, tmp_path):
    status, calls = _search_with_ray_recorded(
        monkeypatch, tmp_path, "--ray-address", "10.0.0.1:6379", "--cpus-per-trial", "2",
        "--gpus-per-trial", "0.25", "--max-concurrent", "4")
    assert status == 0
    assert len(calls) == 1
    options, config = calls[0]
    assert config == RayConfig(address="10.0.0.1:6379", cpus_per_trial=2.0,
                               gpus_per_trial=0.25, max_concurrent=4, max_failures=1)
    # The search's own options reach the driver as given.
    assert (options.budget, options.search.trials, options.search.seed, options.out) == (
        ("0.3",), 5, 7, tmp_path / "run")


def test_search_cli_ray_defaults(monkeypatch, tmp_path):
    status, calls = _search_with_ray_recorded(monkeypatch, tmp_path)
    assert status == 0
    assert [config for _, config in calls] == [RayConfig(
        address=None, cpus_per_trial=1.0, gpus_per_trial=0.0, max_concurrent=2,
        max_failures=1)]


@pytest.mark.parametrize(("ray_args", "message"), [
    (["--max-concurrent", "0"], "--max-concurrent 0 is invalid; valid: 1 or more"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial 0.0 is invalid; valid: > 0"),
])
def test_search_cli_reports_a_bad_ray_config_as_one_line_before_running(
        monkeypatch, tmp_path, capsys, ray_args, message):
    status, calls = _search_with_ray_recorded(monkeypatch, tmp_path, *ray_args)
    assert (status, calls) == (2, [])
    assert capsys.readouterr().err == f"lpsd-search: error: {message}\n"


@pytest.mark.ray
def test_trials_run_on_both_nodes_and_reach_the_results(cluster, digits_model, cache_dir,
                                                        tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(_command(cluster, out, cache_dir, 4), capture_output=True, text=True,
                          env=_env(cluster), timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    rows = _rows(out)
    assert [r["trial"] for r in rows] == [str(i) for i in range(4)]
    assert all(r["state"] == "COMPLETE" for r in rows)
    nodes = {r["node"] for r in rows}
    # One CPU per node, two trials at a time: both nodes ran trials, and only these two did.
    assert len(nodes) == 2, nodes
    assert {n.rsplit(":", 1)[1] for n in nodes} == {i[:8] for i in cluster.node_ids()}
    study = _study(out)
    trial_ids = [t.user_attrs["ray_trial_id"] for t in study.trials]
    assert len(trial_ids) == len(set(trial_ids)) == 4
    # The same files as the Optuna backend: constraints stored, a front of feasible points.
    assert [set(t.constraints) for t in study.trials] == [{"params"}] * 4
    assert all(t.constraints["params"] <= 0 for t in study.trials)
    document = json.loads((out / "pareto.json").read_text())
    limit = document["budget"]["limit"]
    assert limit == int(0.5 * document["baseline"]["params"])
    assert all(int(r["params"]) <= limit and r["feasible"] == "1" for r in rows)
    front = sorted(int(r["trial"]) for r in rows if r["pareto"] == "1")
    assert len(front) >= 1
    assert sorted(p["trial"] for p in document["points"]) == front


def _node_workers(node: subprocess.Popen[bytes]) -> dict[int, str]:
    """The node's Ray worker processes (pid → title).

    Workers run in process groups of their own; they are the children of the node's raylet,
    which is in the node's group.
    """
    workers = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if title.startswith("ray::") and os.getpgid(parent) == node.pid:
                workers[int(proc.name)] = title
        except (OSError, ProcessLookupError, ValueError, IndexError):
            continue
    return workers


def _kill_node(node: subprocess.Popen[bytes]) -> None:
    """SIGKILL the whole node at once, as a lost machine would go: raylet, agents, workers."""
    workers = _node_workers(node)
    os.killpg(node.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait(timeout=30)


def _failures_in_experiment(out: Path) -> int:
    """Failed attempts that Tune counted, summed over the experiment's trials."""
    total = 0
    for state in (out / "ray").glob("*/experiment_state*.json"):
        for _, metadata in json.loads(state.read_text())["trial_data"]:
            total += int(json.loads(metadata)["num_failures"])
    return total


@pytest.mark.ray
def test_a_dead_worker_node_fails_only_its_trial_which_is_retried(cluster, digits_model,
                                                                  cache_dir, tmp_path):
    # A node of its own, so that killing it leaves the module's two nodes as they were.
    cluster.add_worker()
    node = cluster.processes[-1]
    out = tmp_path / "run"
    # Trials long enough (seconds) that the new node's actor starts one before the others
    # have run them all.
    command = [*_command(cluster, out, cache_dir, 4), "--max-concurrent", "3",
               "--finetune-steps", "400", "--promote-steps", "0"]
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env(cluster))
    deadline = time.monotonic() + 300
    # Ray retitles a worker ``ray::<Trainable>.train`` while it runs a trial.
    while not any(".train" in title for title in _node_workers(node).values()):
        assert search.poll() is None and time.monotonic() < deadline, "no trial on the node"
        time.sleep(0.1)
    _kill_node(node)

    log = search.communicate(timeout=400)[0]
    assert search.returncode == 0, log[-3000:]
    study = _study(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    # Four Tune trials, four results: the killed one was run again, not dropped or replaced.
    assert len({t.user_attrs["ray_trial_id"] for t in study.trials}) == 4
    assert _failures_in_experiment(out) >= 1
    assert sorted(t.number for t in study.trials) == list(range(4))
