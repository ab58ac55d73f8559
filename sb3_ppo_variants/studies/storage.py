"""Where a study lives, and opening it: one storage argument, one protocol check, one mismatch error.

Storages: an embedded file by default, PostgreSQL (or any SQLAlchemy URL) for several machines.

- ``None`` or a path ending in ``.log``: an Optuna journal file (safe for several local processes); a killed
  worker is found by its lock (:mod:`~sb3_ppo_variants.studies.liveness`).
- a path ending in ``.db`` or a ``sqlite:///`` URL: SQLite; ``postgresql://...`` (psycopg 3), ``mysql://...``: a
  shared database. Both with Optuna's heartbeats, so that a trial of a killed worker is failed and retried.

Several workers started at the same moment on an empty PostgreSQL database race while creating
Optuna's tables (seen here: ``UniqueViolation ... pg_type_typname_nsp_index``); :func:`open_storage`
absorbs that by retrying.

A study stores its *protocol* -- what makes its trials comparable (budget, seeds, evaluation, fixed
settings) -- in its user attributes; :func:`open_study` refuses to resume it with another one
(:class:`StudyMismatchError`, naming each field that differs).
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from sb3_ppo_variants.studies.liveness import MAX_RETRY, experimental_allowed, hold_worker_lock

__all__ = [
    "DEFAULT_STORAGE_NAME",
    "StorageError",
    "StudyMismatchError",
    "open_storage",
    "open_study",
    "protocol_of",
    "storage_label",
]

DEFAULT_STORAGE_NAME = "study.log"


class StorageError(ValueError):
    """The storage argument is malformed or the storage cannot be reached."""


def storage_label(storage: str | None, out_dir: str | Path) -> str:
    """The storage as a user would pass it again (a file path or a URL with the password hidden)."""
    if storage is None:
        return str(Path(out_dir) / DEFAULT_STORAGE_NAME)
    if "://" in storage:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    return storage


def open_storage(
    storage: str | None, out_dir: str | Path = ".", heartbeat_interval: int = 60, max_retry: int = MAX_RETRY, attempts: int = 8
) -> BaseStorage:
    """Open (creating if needed) the storage of a study.

    :param storage: None (a journal file ``study.log`` in ``out_dir``), a ``.log`` or ``.db`` path
        (relative paths are taken as they are), or a database URL
    :param out_dir: where the default journal file goes
    :param heartbeat_interval: seconds between heartbeats of a running trial (SQLite and database URLs); a
        trial silent for twice that is failed and, up to ``max_retry`` times, enqueued again
    :param attempts: how many times to retry the creation of Optuna's tables on a shared database
    :raises StorageError: for a malformed argument or a database that does not connect
    """
    if storage is None:
        storage = str(Path(out_dir) / DEFAULT_STORAGE_NAME)
    if not isinstance(storage, str) or not storage:
        raise StorageError(f"--storage must be a file path (*.log, *.db) or a database URL, got {storage!r}")
    if "://" not in storage:  # a file
        path = Path(storage)
        if path.suffix not in (".log", ".db"):
            raise StorageError(
                f"--storage {storage!r}: a file storage must end in .log (Optuna journal) or .db (SQLite); "
                "a database is given as a URL such as postgresql://user@host:5432/dbname"
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".log":
            hold_worker_lock(path)
            return JournalStorage(JournalFileBackend(str(path)))
        storage = f"sqlite:///{path}"
    sqlite = storage.startswith("sqlite")
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    last_error: Exception | None = None
    for attempt in range(attempts):
        try:
            with experimental_allowed():
                return RDBStorage(
                    storage,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_interval,
                    grace_period=2 * heartbeat_interval,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                )
        except ImportError as error:
            raise StorageError(
                f"--storage {storage_label(storage, out_dir)}: no database driver ({error.__cause__ or error}); "
                "for postgresql:// install psycopg 3: pip install 'psycopg[binary]'"
            ) from None
        except Exception as error:  # sqlalchemy errors: connection refused, or the table-creation race
            last_error = error
            text = str(error)
            if "UniqueViolation" in text or "already exists" in text or "duplicate key" in text:
                time.sleep(0.2 + random.random() * (attempt + 1))
                continue
            break
    raise StorageError(
        f"--storage {storage_label(storage, out_dir)} does not connect: {type(last_error).__name__}: "
        f"{str(last_error).splitlines()[0] if last_error else ''}"
    )


class StudyMismatchError(ValueError):
    """The study in the storage was created with another protocol (or another recipe for a finished cell)."""


def protocol_of(study: optuna.Study) -> dict[str, Any]:
    """The protocol stored with ``study`` (see :func:`open_study`)."""
    return dict(study.user_attrs["protocol"])


def open_study(
    storage: BaseStorage,
    study_name: str,
    protocol: Mapping[str, Any],
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Create the study (direction: maximize), or load it to resume; refuse it when its protocol differs.

    Several workers may open the same new study at once: the first protocol written is the study's.

    :param protocol: JSON-able settings every trial of the study shares
    :raises StudyMismatchError: naming each field that differs, with the stored and the given value
    """
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction="maximize", load_if_exists=True, sampler=sampler, pruner=pruner
    )
    wanted = json.loads(json.dumps(dict(protocol)))
    stored = study.user_attrs.get("protocol")
    if stored is None:
        try:
            study.set_user_attr("protocol", wanted)
        except Exception:  # two workers creating the study together: the other one's write won; read it
            pass
        stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs.get("protocol", wanted)
    if stored != wanted:
        differences = ", ".join(
            f"{key}: stored {stored.get(key)!r}, given {wanted.get(key)!r}"
            for key in sorted(set(stored) | set(wanted))
            if stored.get(key) != wanted.get(key)
        )
        raise StudyMismatchError(
            f"study {study_name!r} in this storage was created with other settings ({differences}); resume it with the "
            "same settings, or choose another --study-name, --out or --storage"
        )
    return study
