"""Optuna storages from a URL: SQLite (default), any SQLAlchemy database, or a journal file.

``sqlite:///…``, ``postgresql://…`` and ``mysql://…`` open an ``RDBStorage`` with heartbeats, so a
worker that dies (SIGKILL, lost node) leaves a RUNNING trial that the next worker marks FAILED
and re-runs; ``journal:PATH`` (or a path ending in ``.log``) opens a journal file, which suits
NFS-less single machines and needs no database.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

from lpsd_search.errors import UserInputError

logger = logging.getLogger(__name__)

# Optuna warns that heartbeats are meant for ``study.optimize``; our ask/tell loop beats itself
# (``heartbeat`` below), so the warning does not apply.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")

HEARTBEAT_SECONDS = 20
GRACE_SECONDS = 60
SQLITE_LOCK_SECONDS = 60
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
VALID = ("valid: sqlite:///FILE, postgresql://USER@HOST/DB, mysql://…, journal:FILE "
         "(or a FILE.log path)")


def default_url(out_dir: Path) -> str:
    """The SQLite file inside the results folder."""
    return f"sqlite:///{(out_dir / 'study.db').resolve()}"


def _journal_path(url: str) -> Path | None:
    """The file of a journal storage URL, or None for a database URL."""
    if url.startswith("journal:") or url.endswith(".log"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    return None


def check_url(url: str) -> None:
    """Check the form of a storage URL without opening it (a search does this before any
    training; opening a server's storage can wait).

    Raises:
        UserInputError: an unknown scheme, a journal or SQLite file whose folder does not exist,
            or an SQLite URL with no file (an in-memory study would be lost at exit).
    """
    journal = _journal_path(url)
    if journal is not None:
        if not journal.name:
            raise UserInputError(f"journal storage {url!r} names no file; {VALID}")
        if not journal.parent.is_dir():
            raise UserInputError(f"journal storage {url!r}: folder {journal.parent} does not "
                                 "exist")
        return
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    if scheme not in SQL_SCHEMES or "://" not in url:
        raise UserInputError(f"storage {url!r} is not understood; {VALID}")
    if scheme == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db; no file at all is an in-memory study.
        file = url.split("://", 1)[1].removeprefix("/").split("?", 1)[0]
        if not file or file == ":memory:":
            raise UserInputError(f"storage {url!r} names no file (an in-memory study is lost at "
                                 f"exit); {VALID}")
        if not Path(file).parent.is_dir():
            raise UserInputError(f"storage {url!r}: folder {Path(file).parent} does not exist")


def open_storage(url: str) -> BaseStorage:
    """The storage behind ``url``.

    Raises:
        UserInputError: an unknown scheme, a missing database driver, or an unreachable server.
    """
    check_url(url)
    journal = _journal_path(url)
    if journal is not None:
        return JournalStorage(JournalFileBackend(str(journal)))
    try:
        return _rdb_storage(url)
    except ImportError as error:
        raise UserInputError(f"storage {url!r} needs a database driver ({error.name}); valid: "
                             "pip install 'lpsd-search[postgres]' for PostgreSQL") from None
    except Exception as error:  # sqlalchemy raises many kinds; the message is what matters
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise UserInputError(f"cannot open storage {url!r}: {type(error).__name__} "
                             f"{reason}".rstrip()) from None


def _rdb_storage(url: str, attempts: int = 4) -> RDBStorage:
    """An ``RDBStorage``; workers that create a fresh database's schema at the same moment race
    (the loser gets a unique-constraint or "relation already exists" error), so on PostgreSQL the
    creation is serialised by an advisory lock, and on any server a lost race is retried."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    for attempt in range(attempts):
        try:
            with _schema_lock(url), warnings.catch_warnings():
                # Heartbeats are "experimental" since Optuna 2.9; they make resume safe.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, heartbeat_interval=HEARTBEAT_SECONDS,
                                  grace_period=GRACE_SECONDS, engine_kwargs=_engine_kwargs(url))
        except (IntegrityError, OperationalError, ProgrammingError) as error:
            # SQLite too: a reader (``lpsd-search report``, a test) holding the file while the
            # schema is created makes the writer fail with "database is locked".
            if attempt == attempts - 1:
                raise
            logger.debug("storage schema race (attempt %d): %s", attempt + 1, error)
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


def _engine_kwargs(url: str) -> dict[str, object]:
    """SQLite waits up to a minute for a lock (Python's default, 5 s, is short on a busy host)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}}
    return {}


# Any fixed 64-bit key; it only has to be the same in every lpsd-search process.
_SCHEMA_LOCK_KEY = 0x4C505344


@contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """Hold a PostgreSQL session advisory lock while Optuna creates or checks the schema."""
    if not url.startswith("postgres"):
        yield
        return
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"),
                               {"key": _SCHEMA_LOCK_KEY})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"),
                                   {"key": _SCHEMA_LOCK_KEY})
    finally:
        engine.dispose()


def has_heartbeat(storage: BaseStorage) -> bool:
    return isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None


def fail_stale(storage: BaseStorage, study: optuna.Study) -> None:
    """Mark RUNNING trials whose worker stopped sending heartbeats as FAILED."""
    if has_heartbeat(storage):
        with warnings.catch_warnings():  # "experimental" since Optuna 2.9; shown on every run
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)


@contextmanager
def heartbeat(storage: BaseStorage, study: optuna.Study, number: int) -> Iterator[None]:
    """Record the heartbeat of trial ``number`` every few seconds while the block runs.

    Optuna only beats inside ``study.optimize``; an ask/tell loop must beat itself, or other
    workers would fail its trial as stale after the grace period.
    """
    if not has_heartbeat(storage):
        yield
        return
    assert isinstance(storage, RDBStorage)
    stop = threading.Event()
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)

    def beat() -> None:
        while True:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as error:  # a missed beat is not worth killing the trial for
                logger.warning("heartbeat of trial %d failed: %s", number, error)
            if stop.wait(HEARTBEAT_SECONDS):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
