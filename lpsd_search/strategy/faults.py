"""Faults that end a run, each as one line (``errors.RunFault``).

A trial that fails is recorded with its reason and the search goes on. These end the run
instead, because every later trial would meet them too: results or weights that cannot be
written (a full disk), a study storage that stopped answering, trials that run out of memory
twice in a row, and ``MAX_CONSECUTIVE_FAILURES`` trials in a row failing with no success between
them (a learning rate that makes every fine-tune diverge, say). Finished trials stay in the
study, so the same command continues once the cause is fixed.
"""

from __future__ import annotations

import errno
import gc
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import torch

from lpsd_search.errors import RunFault
from lpsd_search.trial.train import TrainingDiverged

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 5
MAX_OUT_OF_MEMORY = 2
"""Trials in a row that ran out of memory before the run stops: the next would too."""


@contextmanager
def writing(out_dir: Path) -> Iterator[None]:
    """Turn an ``OSError`` raised while the block writes into ``out_dir`` into a ``RunFault``."""
    try:
        yield
    except OSError as error:
        raise RunFault(write_fault_message(error, out_dir)) from error


def write_fault_message(error: OSError, out_dir: Path) -> str:
    """One line: what could not be written, why, and what to do."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"cannot write to {out_dir}: the disk is full ({error.strerror}); free some space"
    where = f" ({error.filename})" if error.filename else ""
    reason = error.strerror or str(error) or type(error).__name__
    return f"cannot write to {out_dir}{where}: {reason}; check that the folder is writable"


def is_storage_error(error: BaseException) -> bool:
    """Whether ``error`` came from the study's storage (the database or its driver)."""
    if isinstance(error, optuna.exceptions.StorageInternalError):
        return True
    # sqlalchemy is imported only by SQL storages; its errors are told apart by their module.
    return any(kind.__module__.startswith("sqlalchemy") for kind in type(error).__mro__)


def show_url(url: str) -> str:
    """A storage URL fit to print: its password hidden."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def storage_fault(error: BaseException, url: str) -> RunFault:
    """The fault for a storage that stopped answering."""
    text = str(error).strip()
    reason = text.splitlines()[0][:200] if text else ""
    return RunFault(f"lost the study storage {show_url(url)}: {type(error).__name__} "
                    f"{reason}".rstrip() + "; check that the database (or its disk) is reachable")


@contextmanager
def guarding(url: str) -> Iterator[None]:
    """Turn a storage error raised in the block into a ``RunFault``."""
    try:
        yield
    except RunFault:
        raise
    except Exception as error:
        if is_storage_error(error):
            raise storage_fault(error, url) from error
        raise


def is_out_of_memory(error: BaseException) -> bool:
    """Whether a trial failed for lack of GPU or CPU memory."""
    return (isinstance(error, torch.OutOfMemoryError | MemoryError)
            or "can't allocate memory" in str(error))


def release_memory() -> None:
    """Hand cached GPU memory back after a trial ran out of it, so the next starts clean."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class FailureStreak:
    """Counts the trials failing in a row and stops the run when they go on failing.

    Args:
        finetune_lr: the search's fine-tune learning rate (named in the advice on divergence).
        batch_size: its fine-tune batch size (named in the advice on memory).
    """

    def __init__(self, finetune_lr: float, batch_size: int) -> None:
        self.finetune_lr = finetune_lr
        self.batch_size = batch_size
        self.failures: list[BaseException] = []

    def succeeded(self) -> None:
        self.failures.clear()

    def failed(self, error: BaseException) -> None:
        """Count a failed trial.

        Raises:
            RunFault: the last ``MAX_OUT_OF_MEMORY`` trials ran out of memory, or the last
                ``MAX_CONSECUTIVE_FAILURES`` failed.
        """
        self.failures.append(error)
        recent = self.failures[-MAX_OUT_OF_MEMORY:]
        if len(recent) == MAX_OUT_OF_MEMORY and all(map(is_out_of_memory, recent)):
            raise RunFault(f"{len(recent)} trials in a row ran out of memory "
                           f"({_first_line(error)}); lower --batch-size (now {self.batch_size})"
                           ", or use a smaller model or another --device")
        if len(self.failures) >= MAX_CONSECUTIVE_FAILURES:
            raise RunFault(f"{len(self.failures)} trials in a row failed: {self._cause(error)}")

    def _cause(self, error: BaseException) -> str:
        if isinstance(error, TrainingDiverged):
            return (f"training diverged ({_first_line(error)}); lower --finetune-lr (now "
                    f"{self.finetune_lr:g})")
        return (f"{type(error).__name__}: {_first_line(error)}; see fail_reason in trials.csv "
                "for each trial")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__
