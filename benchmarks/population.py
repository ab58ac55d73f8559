"""Throughput of a population of K members against one SB3 PPO run, as paired ratios.

A population's throughput is its aggregate member steps/s (K x each member's timesteps over the wall time of its
``learn()``); its ratio is that over the steps/s of one SB3 PPO ``learn()`` on the same settings, measured in the
same round right before or after it (the order alternates: A B, B A, ...), each run in a fresh process (so peak
memory is per run). Identical runs here drift by up to 35%, so only the paired ratios mean anything.

    python benchmarks/population.py                 # full: 3 settings x K in 1 4 8 16 32 x 3 rounds
    python benchmarks/population.py --members 1 8 64 --device cpu     # the sizes of docs/benchmarks.md
    python benchmarks/population.py --members 256 1024 --device cuda  # the population on a GPU (SB3's run on the CPU)
    python benchmarks/population.py --quick         # smoke test: tiny budgets, K in 1 2, 1 round
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import SETTINGS as SOLO_SETTINGS
from throughput import in_fresh_process, measure

#: name -> (env id, rl-zoo3 style entry, SB3 run's timesteps)
SETTINGS: dict[str, tuple[str, dict[str, Any], int]] = {
    "CartPole-v1/rl-zoo3": SOLO_SETTINGS["CartPole-v1/rl-zoo3"],
    "Pendulum-v1/sb3-defaults": SOLO_SETTINGS["Pendulum-v1/sb3-defaults"],
    "LunarLander-v3/sb3-defaults": ("LunarLander-v3", {"n_envs": 1}, 16_384),
}
SIZES = (1, 4, 8, 16, 32)


def member_timesteps(timesteps: int, size: int, rollout: int) -> int:
    """Each member's budget: the SB3 run's budget shared out over the members (a larger population runs longer in
    all, so its rate is measured over as much wall time), at least two rollouts."""
    return max(2 * rollout, timesteps * 4 // max(size, 4))


def _run_population(env_id: str, hyperparams: dict[str, Any], size: int, timesteps: int, device: str, queue: Any) -> None:
    import torch as th

    from sb3_ppo_variants import Population

    th.set_num_threads(1)
    population = Population(env_id, [dict(seed=seed) for seed in range(size)], hyperparams=dict(hyperparams), device=device)
    start = time.perf_counter()
    population.learn(timesteps)
    elapsed = time.perf_counter() - start
    queue.put(
        {
            "steps_per_s": size * population.num_timesteps / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def benchmark(
    settings: list[str], sizes: list[int], rounds: int, timesteps: int | None, device: str = "cpu"
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for setting in settings:
        env_id, hyperparams, default_steps = SETTINGS[setting]
        steps = timesteps or default_steps
        rollout = int(hyperparams.get("n_steps", 2048)) * int(hyperparams.get("n_envs", 1))
        for size in sizes:
            pairs: list[tuple[dict[str, float], dict[str, float]]] = []
            for round_index in range(rounds):
                order = ["sb3", "population"] if round_index % 2 == 0 else ["population", "sb3"]
                result: dict[str, dict[str, float]] = {}
                for which in order:
                    if which == "sb3":
                        result[which] = measure("sb3_ppo", env_id, hyperparams, steps)
                    else:
                        budget = member_timesteps(steps, size, rollout)
                        result[which] = in_fresh_process(_run_population, env_id, hyperparams, size, budget, device)
                pairs.append((result["population"], result["sb3"]))
                print(f"  {setting} K={size} round {round_index + 1}/{rounds}: population "
                      f"{result['population']['steps_per_s']:.0f} steps/s, SB3 {result['sb3']['steps_per_s']:.0f}",
                      file=sys.stderr, flush=True)  # fmt: skip
            ratios = [pop["steps_per_s"] / sb3["steps_per_s"] for pop, sb3 in pairs]
            peak = max(pop["peak_rss_mb"] for pop, _ in pairs)
            solo_peak = max(sb3["peak_rss_mb"] for _, sb3 in pairs)
            rows.append(
                {
                    "setting": setting,
                    "size": size,
                    "steps_per_s": statistics.median(pop["steps_per_s"] for pop, _ in pairs),
                    "sb3_steps_per_s": statistics.median(sb3["steps_per_s"] for _, sb3 in pairs),
                    "ratio_median": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "peak_rss_mb": peak,
                    "sb3_peak_rss_mb": solo_peak,
                    "mb_per_member": max(peak - solo_peak, 0.0) / size,
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], rounds: int, timesteps: int | None, device: str = "cpu") -> str:
    lines = [
        f"Population throughput, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, "
        f"{mp.cpu_count()} CPUs, Python {platform.python_version()}; {rounds} round(s), SB3 run "
        f"{'default' if timesteps is None else timesteps} timesteps, 1 torch thread, each run in a fresh process; "
        f"population on {_device_name(device)}, SB3 PPO on the CPU.",
        "",
        "| setting | K | population steps/s (all members, median) | SB3 PPO steps/s (median) "
        "| ratio: median [min, max] | peak RSS MB (SB3 run) | MB per member over SB3's |",
        "|---|---:|---:|---:|---|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['size']} | {row['steps_per_s']:.0f} | {row['sb3_steps_per_s']:.0f} | "
            f"{row['ratio_median']:.2f} [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}] | "
            f"{row['peak_rss_mb']:.0f} ({row['sb3_peak_rss_mb']:.0f}) | {row['mb_per_member']:.1f} |"
        )
    return "\n".join(lines)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch as th

        return f"{device} ({th.cuda.get_device_name(th.device(device))})" if th.cuda.is_available() else f"{device} (absent)"
    return "the CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, K in 1 2, 1024 timesteps")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--timesteps", type=int, default=None, help="the SB3 run's budget (members share it out)")
    parser.add_argument("--members", "--sizes", dest="sizes", type=int, nargs="+", default=list(SIZES), help="K values")
    parser.add_argument("--device", default="cpu", help="the population's device (cpu, cuda); SB3's run stays on the CPU")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.timesteps, args.sizes = 1, args.timesteps or 1024, [1, 2]
    if args.rounds < 1 or min(args.sizes) < 1:
        parser.error(f"--rounds and --sizes must be >= 1, got {args.rounds} and {args.sizes}")
    if args.device.startswith("cuda"):
        import torch as th

        if not th.cuda.is_available():
            parser.error(f"--device {args.device}: no CUDA device here")
    rows = benchmark(args.settings, args.sizes, args.rounds, args.timesteps, args.device)
    print(markdown(rows, args.rounds, args.timesteps, args.device))


if __name__ == "__main__":
    main()
