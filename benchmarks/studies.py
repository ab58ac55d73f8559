"""Throughput of the study tools, before and after a change: runs per hour, measured side by side in one run.

Two workloads, each run by the command a user types, in a fresh output directory, on a fresh embedded storage:

- ``ablation``: the README's ablation command (4 variants x 3 seeds on CartPole-v1, 30,000 timesteps each: 12 runs);
- ``tuning``: a 3-seed tuning study (``clip_kl`` on CartPole-v1, ``--trials`` trials of 3 seeds, no pruning,
  a fixed sampler seed: ``3 x trials`` runs).

"Before" is the tree of git revision ``--before`` (exported with ``git archive``), "after" the working tree; both
run with the same interpreter, one torch thread, alternating (before, after, before, after, ...) so that a change
of load on the machine hits both alike. The ratio is after / before of runs per hour, per round, then its median.

    python benchmarks/studies.py --before 26fc3b1                 # the full workloads, 2 rounds (~30 min on 2 cores)
    python benchmarks/studies.py --before 26fc3b1 --quick         # smoke test: tiny budgets, 1 round
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workloads(timesteps: int, tuning_timesteps: int, trials: int) -> dict[str, tuple[list[str], int]]:
    """name -> (arguments of the command under ``tuning/``, number of training runs it does)."""
    ablation = ["ablate.py", "--envs", "CartPole-v1", "--variants", "clip", "kl", "adaptive_kl", "clip_kl", "--seeds", "3"]
    ablation += ["--timesteps", str(timesteps)]
    tuning = ["tune.py", "--variant", "clip_kl", "--env", "CartPole-v1", "--seeds", "3", "--timesteps", str(tuning_timesteps)]
    tuning += ["--n-evaluations", "2", "--n-trials", str(trials), "--max-total-trials", str(trials), "--pruner", "none"]
    tuning += ["--sampler-seed", "0", "--no-progress-bar"]
    return {"ablation": (ablation, 12), "tuning": (tuning, 3 * trials)}


def export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` in ``into`` (``git archive``)."""
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_once(tree: Path, arguments: list[str], out: Path) -> float:
    """Wall time of one command of ``tree`` (its package first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(tree / "tuning" / arguments[0]), *arguments[1:], "--out", str(out)]
    cli = tree / "sb3_ppo_variants" / "studies" / "cli" / "tune.py"
    if arguments[0] == "tune.py" and "--confirm-seeds" in cli.read_text():  # the same runs before and after
        command += ["--confirm-seeds", "0"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=out.parent, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git revision of the 'before' tree")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs per workload (default 2)")
    parser.add_argument("--timesteps", type=int, default=30_000, help="ablation budget per run (README: 30000)")
    parser.add_argument("--tuning-timesteps", type=int, default=10_000, help="tuning budget per run (default 10000)")
    parser.add_argument("--trials", type=int, default=4, help="tuning trials (default 4)")
    parser.add_argument("--only", choices=["ablation", "tuning"], help="one workload only")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2048 timesteps, 2 trials, 1 round")
    args = parser.parse_args(argv)
    if args.quick:
        args.timesteps, args.tuning_timesteps, args.trials, args.rounds = 2048, 2048, 2, 1
    jobs = workloads(args.timesteps, args.tuning_timesteps, args.trials)
    if args.only:
        jobs = {args.only: jobs[args.only]}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"before": export(args.before, Path(scratch) / "before"), "after": ROOT}
        for name, (arguments, runs) in jobs.items():
            rates: dict[str, list[float]] = {"before": [], "after": []}
            for round_ in range(args.rounds):
                for label, tree in trees.items():
                    out = Path(scratch) / f"{name}-{label}-{round_}" / "out"
                    out.parent.mkdir(parents=True)
                    seconds = run_once(tree, arguments, out)
                    rates[label].append(runs / seconds * 3600)
                    print(f"{name} {label} round {round_}: {seconds:.1f} s, {rates[label][-1]:.0f} runs/h", flush=True)
            ratios = [after / before for before, after in zip(rates["before"], rates["after"])]
            rows.append((name, runs, rates, ratios))
    print(
        f"\nStudy throughput, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, "
        f"{os.cpu_count()} CPUs; before = {args.before}, after = working tree; {args.rounds} alternating round(s)\n"
    )
    print("| workload | runs | before: runs/h per round | after: runs/h per round | after / before (median) |")
    print("|---|---:|---|---|---:|")
    for name, runs, rates, ratios in rows:
        before = ", ".join(f"{r:.0f}" for r in rates["before"])
        after = ", ".join(f"{r:.0f}" for r in rates["after"])
        print(f"| {name} | {runs} | {before} | {after} | {statistics.median(ratios):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
