"""Results are never destroyed, and faults end a run in one line.

A search run into an ``--out`` holding another study's results (another ``--study``, an empty or
corrupt ``study.db``, another storage) is refused before anything is written, leaving every file
byte-identical; the same command continues. A full disk while saving a front model fails that
trial (never COMPLETE without its weights) and ends the run with exit status 1 and one line, and
the same command then continues; so do five diverging trials in a row and a lost storage.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc
import torch

from lpsd_search.cli.main import main
from lpsd_search.strategy.storage import open_storage
from lpsd_search.trial import evaluate
from lpsd_search.trial.train import TrainingDiverged

# The conftest baseline's recipe, so its cached weights are reused rather than retrained.
FAST = ["--train-epochs", "8", "--finetune-steps", "10", "--seed", "0", "--no-report",
        "--no-warm-start", "--promote-steps", "0", "--budget", "0.5"]
STUDY = "lpsd-search"


def _search(cache_dir: Path, out: Path, *extra: str) -> int:
    return main(["-q", "search", "--out", str(out), "--cache-dir", str(cache_dir), *FAST,
                 *extra])


def _files(out: Path) -> dict[str, bytes]:
    """Every results file but the database (which a reader may touch), by path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "study.db"}


def _trials(out: Path, storage: str | None = None) -> list[optuna.trial.FrozenTrial]:
    url = storage or f"sqlite:///{out / 'study.db'}"
    return optuna.load_study(study_name=STUDY, storage=open_storage(url)).get_trials()


def _fault_line(err: str) -> str:
    """The run's own last word: exactly one ``lpsd-search:`` line, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lpsd-search:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache_dir) -> Path:
    """A finished two-trial search with a front and its saved weights."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert _search(cache_dir, out, "--trials", "2") == 0
    assert list((out / "models").glob("trial-*.pt"))
    return out


@pytest.fixture
def run(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_another_study_into_the_same_out_is_refused(run, cache_dir, capsys):
    before = _files(run)
    assert _search(cache_dir, run, "--trials", "2", "--study", "other") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"lpsd-search: error: {run} holds results (pareto.json, study.db, ")
    assert f"of study '{STUDY}' in {run / 'study.db'}, not of study 'other'" in err
    assert err.endswith(f"valid: --study {STUDY} to continue it, or another --out for this search")
    assert len(err.splitlines()) == 1
    assert _files(run) == before
    assert optuna.get_all_study_names(open_storage(f"sqlite:///{run / 'study.db'}")) == [STUDY]


@pytest.mark.parametrize(("content", "found"), [
    (b"", "holds no study"),
    (b"this is not a database" * 100, "cannot be read"),
])
def test_an_empty_or_corrupt_study_db_beside_results_is_refused(run, cache_dir, capsys,
                                                                content, found):
    (run / "study.db").write_bytes(content)
    before = _files(run)
    assert _search(cache_dir, run, "--trials", "2") == 2
    err = capsys.readouterr().err.strip()
    assert found in err and "another --out" in err and len(err.splitlines()) == 1
    assert _files(run) == before


def test_another_storage_is_refused(run, cache_dir, tmp_path, capsys):
    before = _files(run)
    journal = f"journal:{tmp_path / 'other.log'}"
    assert _search(cache_dir, run, "--trials", "2", "--storage", journal) == 2
    err = capsys.readouterr().err.strip()
    assert "leave out --storage to continue that search" in err

    # Without the study.db beside them, a storage holding a study of the same name but not
    # these trials is refused too.
    (run / "study.db").unlink()
    optuna.create_study(storage=open_storage(journal), study_name=STUDY,
                        directions=["maximize", "minimize"])
    assert _search(cache_dir, run, "--trials", "2", "--storage", journal) == 2
    err = capsys.readouterr().err.strip()
    assert "of another search: trials 0" in err and len(err.splitlines()) == 1
    assert _files(run) == before


def test_the_same_command_continues(run, cache_dir):
    before = {t.number: t.user_attrs["plan"] for t in _trials(run)}
    assert _search(cache_dir, run, "--trials", "3") == 0
    after = _trials(run)
    assert [t.state.name for t in after] == ["COMPLETE"] * 3
    assert {n: after[n].user_attrs["plan"] for n in before} == before


def test_a_full_disk_fails_the_trial_ends_the_run_and_the_rerun_continues(
        cache_dir, digits_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save = torch.save
    saves = {"n": 0}

    def fill_the_disk(payload, handle, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] < 2:
            return real_save(payload, handle, *args, **kwargs)
        handle.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fill_the_disk)
    assert _search(cache_dir, out, "--trials", "3") == 1
    line = _fault_line(capsys.readouterr().err)
    assert line == (f"lpsd-search: cannot write to {out}: the disk is full (No space left on "
                    f"device); free some space; finished trials are kept in {out}, re-run the "
                    "same command to continue")
    trials = _trials(out)
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert "weights could not be saved" in trials[1].user_attrs["fail_reason"]
    # No COMPLETE trial lacks its weights, and no torn or temporary file is left.
    assert sorted(p.name for p in (out / "models").iterdir()) == ["trial-0.pt"]

    monkeypatch.setattr(torch, "save", real_save)
    assert _search(cache_dir, out, "--trials", "3") == 0
    trials = _trials(out)
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3
    points = json.loads((out / "pareto.json").read_text())["points"]
    assert points and all((out / "models" / f"trial-{p['trial']}.pt").is_file() for p in points)


def test_five_diverging_trials_end_the_run_naming_divergence(cache_dir, digits_model, tmp_path,
                                                            monkeypatch, capsys):
    def diverge(*args, **kwargs):
        raise TrainingDiverged("loss became nan at step 3")

    monkeypatch.setattr(evaluate, "train", diverge)
    out = tmp_path / "run"
    assert _search(cache_dir, out, "--trials", "2", "--finetune-lr", "0.5") == 1
    line = _fault_line(capsys.readouterr().err)
    assert line.startswith("lpsd-search: 5 trials in a row failed: training diverged (loss "
                           "became nan at step 3); lower --finetune-lr (now 0.5)")
    assert [t.state.name for t in _trials(out)] == ["FAIL"] * 5
    assert (out / "trials.csv").read_text().count("TrainingDiverged") == 5


def test_a_lost_storage_ends_the_run_in_one_line(cache_dir, digits_model, tmp_path,
                                                 monkeypatch, capsys):
    def lose(self, *args, **kwargs):
        raise sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("disk I/O error"))

    monkeypatch.setattr(optuna.study.Study, "tell", lose)
    out = tmp_path / "run"
    assert _search(cache_dir, out, "--trials", "2") == 1
    line = _fault_line(capsys.readouterr().err)
    assert line.startswith(f"lpsd-search: lost the study storage sqlite:///{out.resolve()}")
    assert "disk I/O error" in line and line.endswith("re-run the same command to continue")
