"""Helpers of the study tests: worker processes that hold a journal worker lock (``liveness.hold_worker_lock``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

#: Takes this process's worker lock next to the journal argv[1], prints the lock file, then dies by SIGKILL (argv[2]
#: == "die": no clean-up runs) or waits for its stdin to close.
HOLDER = """
import importlib.util, os, signal, sys
# liveness.py alone (optuna, no torch): quick to start
spec = importlib.util.spec_from_file_location("liveness", "sb3_ppo_variants/studies/liveness.py")
liveness = importlib.util.module_from_spec(spec)
spec.loader.exec_module(liveness)
liveness.hold_worker_lock(sys.argv[1])
print(liveness._lock["path"], flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()
"""


def worker_lock(journal: Path, die: bool) -> tuple[str, subprocess.Popen[str]]:
    """A worker process's lock file, and the process: dead (killed with -9 after taking it) or alive."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(journal), "die" if die else "live"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert process.stdout is not None
    path = process.stdout.readline().strip()
    if die:
        process.wait()
    return path, process
