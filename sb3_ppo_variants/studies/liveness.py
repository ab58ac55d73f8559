"""Who runs a trial, and whether that process is surely gone: the dead-worker check of the file storages.

Journal and SQLite storages have no heartbeat, so a worker killed mid-trial leaves its trial RUNNING forever.
Tuning and ablation both record :func:`process_identity` on the trials they run and ask :func:`worker_is_dead`
about RUNNING trials: a process on this host that no longer runs, a zombie, a pid since reused by another
process (its start time differs), or any process of a previous boot. Processes on other hosts are never
judged (use a database storage, whose heartbeats cover them).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

__all__ = ["process_identity", "worker_is_dead"]


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
