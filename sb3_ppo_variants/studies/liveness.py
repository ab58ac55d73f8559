"""Dead workers: Optuna's heartbeats on database storages, a lock per worker on journal files.

**Database storages** (SQLite, PostgreSQL; :func:`~sb3_ppo_variants.studies.storage.open_storage`) run Optuna's
heartbeat: a running trial beats every ``heartbeat_interval`` seconds, and ``study.optimize`` (before each trial) or
:func:`recover_stale_trials` fails a trial silent for longer than its grace period, and Optuna's
``RetryHeartbeatStaleTrialCallback`` enqueues it again.

**Journal files** have no heartbeat in Optuna: adding one means implementing Optuna's ``BaseHeartbeat`` on a
journal storage, whose stale-trial query is a private method (``_get_stale_trial_ids``) -- tried, and left for that
reason. So each worker process holds an exclusive ``flock`` on a file of its own (``<journal>.workers/<random>.lock``,
made when the process first opens a journal) for as long as it lives, and records that file on the trials it runs
(:func:`mark_worker`). The kernel releases the lock when the process ends, however it ends (``kill -9`` included):
a worker whose lock another process can take is gone. No host name, process id or clock is compared, so two
machines with one host name (or containers sharing one) cannot be taken for each other. A lock file that cannot be
seen from here (another machine's path) is never judged. A RUNNING trial that its worker has not marked yet is judged
only after :data:`UNMARKED_GRACE_SECONDS`. Without ``fcntl`` (Windows) journal trials are never judged: use SQLite.
"""

from __future__ import annotations

import atexit
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAX_RETRY", "WORKER_ATTR", "hold_worker_lock", "mark_worker", "recover_stale_trials", "worker_is_dead"]

#: The user attribute a running trial records its worker in (lock file, host, pid, and the trial's number).
WORKER_ATTR = "worker"
#: How many times a trial whose worker died is enqueued again.
MAX_RETRY = 2
#: A RUNNING trial whose worker has not yet written its identity is judged stale only after this (journal files).
UNMARKED_GRACE_SECONDS = 120.0

_lock: dict[str, Any] = {}  # this process's lock: pid, path, open file


@contextmanager
def experimental_allowed() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (heartbeats, stale-trial retries, matplotlib plots): it says nothing our
    users can act on. Here only, not process-wide."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def hold_worker_lock(journal: str | Path) -> None:
    """Take this process's worker lock next to ``journal`` (once per process; a forked child takes its own)."""
    if fcntl is None or _lock.get("pid") == os.getpid():
        return
    directory = Path(f"{journal}.workers")
    directory.mkdir(parents=True, exist_ok=True)
    path = (directory / f"{uuid.uuid4().hex}.lock").resolve()
    file: IO[str] = open(path, "w")
    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _lock.update(pid=os.getpid(), path=str(path), file=file)
    atexit.register(path.unlink, missing_ok=True)


def mark_worker(trial: optuna.Trial) -> None:
    """Record this process as the worker of ``trial`` (the trial's number too: a retry inherits the attribute)."""
    lock = _lock["path"] if _lock.get("pid") == os.getpid() else None
    trial.set_user_attr(WORKER_ATTR, {"lock": lock, "host": socket.gethostname(), "pid": os.getpid(), "trial": trial.number})


def worker_is_dead(worker: dict[str, Any]) -> bool:
    """True when the worker's lock file exists here and nobody holds its lock: its process has ended."""
    path = worker.get("lock")
    if fcntl is None or not path or path == _lock.get("path"):
        return False
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError:  # not visible from here, or removed by the check that found it dead
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # held: alive
    else:
        os.unlink(path)  # judged now, under its lock; a later check finds no file and judges nothing
        return True
    finally:
        os.close(descriptor)


def recover_stale_trials(study: optuna.Study) -> list[int]:
    """Fail the RUNNING trials of dead workers and enqueue each again (``RetryHeartbeatStaleTrialCallback``).

    :return: the numbers of the journal trials this call failed (database trials are Optuna's: not listed)
    """
    with experimental_allowed():
        optuna.storages.fail_stale_trials(study)  # database storages with heartbeats; a no-op otherwise
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER_ATTR)
        if isinstance(worker, dict) and worker.get("trial") == trial.number:
            dead = worker_is_dead(worker)
        else:  # not marked yet (or a retry's inherited copy): judged after a grace period
            started = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
            dead = time.time() - started > UNMARKED_GRACE_SECONDS
        if not dead:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first
        retry(study, trial)
        failed.append(trial.number)
    return failed
