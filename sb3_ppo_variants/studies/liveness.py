"""Who runs a trial, and whether that process is surely gone: the dead-worker check of the file storages.

Journal and SQLite storages have no heartbeat, so a worker killed mid-trial leaves its trial RUNNING forever.
Tuning and ablation both record :func:`process_identity` on the trials they run and ask :func:`worker_is_dead`
about RUNNING trials: a process on this host that no longer runs, a zombie, a pid since reused by another
process (its start time differs), or any process of a previous boot. Processes on other hosts are never
judged (use a database storage, whose heartbeats cover them).

:func:`recover_stale_trials` does it with Optuna's public API only: ``optuna.storages.fail_stale_trials``
(database storages: trials whose heartbeat stopped), then, for the file storages, ``study.tell(number,
state=FAIL)`` on the RUNNING trials of dead local workers, each followed by Optuna's
``RetryHeartbeatStaleTrialCallback`` -- the retry Optuna itself gives a heartbeat-stale trial. Such a FAIL
carries no ``fail_reason`` (a finished trial's attributes cannot be written through the public API): its retry
points back to it (``system_attrs["failed_trial"]``).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.studies.storage import MAX_RETRY

__all__ = ["WORKER_ATTR", "mark_worker", "process_identity", "recover_stale_trials", "worker_is_dead"]

#: The user attribute a running trial records its worker in (:func:`process_identity` plus the trial's number).
WORKER_ATTR = "worker"
#: A RUNNING trial whose worker has not yet written its identity is judged stale only after this (file storages).
UNMARKED_GRACE_SECONDS = 120.0


def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state first), or None off Linux."""
    text = _read(f"/proc/{pid}/stat")
    return text.rsplit(")", 1)[1].split() if text else None


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """Host, boot id, pid and start time (clock ticks since boot) of a process: enough to tell it is gone."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return {
        "host": socket.gethostname(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pid": pid,
        "start": int(stat[19]) if stat else None,
    }


def worker_is_dead(worker: Mapping[str, Any]) -> bool:
    """True when the process that ran a trial surely no longer runs; False when alive or unknown."""
    me = process_identity()
    if os.name != "posix" or worker.get("host") != me["host"]:
        return False  # another machine (or no way to tell): leave it alone
    if worker.get("boot") and me["boot"] and worker["boot"] != me["boot"]:
        return True  # this machine rebooted since
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return False
    return stat[0] == "Z" or (worker.get("start") is not None and int(stat[19]) != worker["start"])


def mark_worker(trial: optuna.Trial) -> None:
    """Record this process as the worker of ``trial`` (the trial's number too: a retry inherits the attribute)."""
    trial.set_user_attr(WORKER_ATTR, {**process_identity(), "trial": trial.number})


def _is_dead(trial: FrozenTrial, now: float) -> bool:
    worker = trial.user_attrs.get(WORKER_ATTR)
    if not isinstance(worker, dict) or worker.get("trial") != trial.number:  # not marked yet, or a retry's copy
        started = trial.datetime_start.timestamp() if trial.datetime_start else None
        return started is not None and now - started > UNMARKED_GRACE_SECONDS
    return worker_is_dead(worker)


def recover_stale_trials(study: optuna.Study, max_retry: int = MAX_RETRY) -> list[int]:
    """Fail the RUNNING trials whose worker is gone and enqueue each again (see the module docstring).

    :return: the numbers of the trials this call failed on behalf of dead local workers
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # database storages with heartbeats; a no-op otherwise
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)
    now = time.time()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_dead(trial, now):
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker (or the heartbeat check) failed it first
        retry(study, trial)
        failed.append(trial.number)
    return failed
