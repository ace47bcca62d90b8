"""What ends a run: trials failing in a row (diverging, out of memory), a full disk, a lost
storage, each as one line naming the cause and what to try."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import sqlalchemy.exc
import torch

from lpsd_search.errors import RunFault
from lpsd_search.strategy.faults import (
    MAX_CONSECUTIVE_FAILURES,
    FailureStreak,
    guarding,
    is_out_of_memory,
    is_storage_error,
    writing,
)
from lpsd_search.trial.train import TrainingDiverged


def test_five_diverging_trials_in_a_row_end_the_run_naming_the_cause():
    streak = FailureStreak(finetune_lr=0.5, batch_size=64)
    for _ in range(MAX_CONSECUTIVE_FAILURES - 1):
        streak.failed(TrainingDiverged("loss became nan at step 3"))
    streak.succeeded()  # a success in between starts the count again
    for _ in range(MAX_CONSECUTIVE_FAILURES - 1):
        streak.failed(TrainingDiverged("loss became nan at step 3"))
    with pytest.raises(RunFault) as caught:
        streak.failed(TrainingDiverged("loss became nan at step 3"))
    assert str(caught.value) == ("5 trials in a row failed: training diverged (loss became nan "
                                 "at step 3); lower --finetune-lr (now 0.5)")


def test_other_failures_in_a_row_name_the_last_reason():
    streak = FailureStreak(finetune_lr=1e-3, batch_size=64)
    for _ in range(MAX_CONSECUTIVE_FAILURES - 1):
        streak.failed(ValueError("bad plan"))
    with pytest.raises(RunFault, match=r"^5 trials in a row failed: RuntimeError: an objective "
                                       r"is NaN; see fail_reason in trials.csv"):
        streak.failed(RuntimeError("an objective is NaN\nmore"))


def test_running_out_of_memory_twice_in_a_row_ends_the_run():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: 8 GB"))
    assert not is_out_of_memory(TrainingDiverged("loss became nan at step 3"))
    streak = FailureStreak(finetune_lr=1e-3, batch_size=128)
    streak.failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    streak.failed(TrainingDiverged("loss became inf at step 1"))
    streak.failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(RunFault) as caught:
        streak.failed(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    message = str(caught.value)
    assert message.startswith("2 trials in a row ran out of memory (CUDA out of memory.")
    assert "lower --batch-size (now 128)" in message and "\n" not in message


def test_a_full_disk_while_writing_is_a_fault_naming_the_folder(tmp_path: Path):
    with pytest.raises(RunFault) as caught, writing(tmp_path):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "pareto.json"))
    assert str(caught.value) == (f"cannot write to {tmp_path}: the disk is full (No space left "
                                 "on device); free some space")
    with pytest.raises(RunFault, match="Permission denied"), writing(tmp_path):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "models"))


def test_a_lost_storage_is_a_fault_and_its_password_is_not_printed():
    lost = sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("server closed"))
    assert is_storage_error(lost) and not is_storage_error(ValueError("x"))
    with pytest.raises(RunFault) as caught, guarding("postgresql://me:secret@db/search"):
        raise lost
    message = str(caught.value)
    assert message.startswith("lost the study storage postgresql://me:***@db/search: "
                              "OperationalError")
    assert "secret" not in message and "\n" not in message
    with pytest.raises(KeyError), guarding("sqlite:///x.db"):  # other errors pass through
        raise KeyError("not a storage error")
