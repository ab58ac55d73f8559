"""Throughput of every variant against the algorithm it extends on identical settings, as paired ratios:
the plain variants against SB3's PPO, the maskable and recurrent ones against sb3-contrib's MaskablePPO and
RecurrentPPO.

Identical runs on this kind of machine drift by up to 35%, so only ratios measured in the same run mean
anything: each round runs SB3's PPO and every variant once (in a rotated order, A B A B ...), each in a
fresh process (so peak memory is per run), and a variant's ratio for a round is its steps/s over its
original's steps/s in that round. Reported: the median ratio over rounds with min and max, the share of learn()
spent collecting rollouts and updating, and peak resident memory.

    python benchmarks/throughput.py                 # full: 6 settings x 5 rounds
    python benchmarks/throughput.py --quick         # smoke test: tiny budgets, 1 round
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
from typing import Any

import gymnasium as gym

ALGORITHMS = ("sb3_ppo", "clip", "kl", "adaptive_kl", "clip_kl")
#: The algorithms of a setting, the original first (the ratios' denominator); ALGORITHMS where not listed.
SETTING_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "InvalidActionEnvDiscrete/maskable-defaults": (
        "maskable_ppo", "maskable_clip", "maskable_kl", "maskable_adaptive_kl", "maskable_clip_kl",
    ),
    "CartPole-v1/recurrent-defaults": (
        "recurrent_ppo", "recurrent_clip", "recurrent_kl", "recurrent_adaptive_kl", "recurrent_clip_kl",
    ),
}  # fmt: skip

# sb3-contrib's action-masking test env (20 actions, 10 of them invalid at each step), registered so that the
# benchmark's fresh processes (which import this module) can build it by id.
gym.register(
    "InvalidActionEnvDiscrete-v0",
    entry_point="sb3_contrib.common.envs:InvalidActionEnvDiscrete",
    kwargs={"dim": 20, "n_invalid_actions": 10},
)

#: name -> (env id, constructor kwargs incl. n_envs, timesteps of the full benchmark)
# fmt: off
SETTINGS: dict[str, tuple[str, dict[str, Any], int]] = {
    "CartPole-v1/sb3-defaults": ("CartPole-v1", {"n_envs": 1}, 16_384),
    "CartPole-v1/rl-zoo3": (
        "CartPole-v1",
        {
            "n_envs": 8,
            "n_steps": 32,
            "batch_size": 256,
            "gae_lambda": 0.8,
            "gamma": 0.98,
            "n_epochs": 20,
            "learning_rate": "lin_0.001",
            "clip_range": "lin_0.2",
        },
        16_384,
    ),
    "Pendulum-v1/sb3-defaults": ("Pendulum-v1", {"n_envs": 1}, 16_384),
    "Pendulum-v1/rl-zoo3": (
        "Pendulum-v1",
        {
            "n_envs": 4,
            "n_steps": 1024,
            "gae_lambda": 0.95,
            "gamma": 0.9,
            "n_epochs": 10,
            "learning_rate": 1e-3,
            "clip_range": 0.2,
            "use_sde": True,
            "sde_sample_freq": 4,
        },
        16_384,
    ),
    # sb3-contrib's defaults: MaskablePPO's are PPO's (n_steps 2048, batch 64, 10 epochs); RecurrentPPO's are
    # n_steps 128, batch 128, 10 epochs, an LSTM of 256 units.
    "InvalidActionEnvDiscrete/maskable-defaults": ("InvalidActionEnvDiscrete-v0", {"n_envs": 1}, 8_192),
    "CartPole-v1/recurrent-defaults": ("CartPole-v1", {"n_envs": 1, "policy": "MlpLstmPolicy"}, 2_048),
}
# fmt: on


def _run(algorithm: str, env_id: str, hyperparams: dict[str, Any], timesteps: int, queue: Any) -> None:
    import torch as th

    from sb3_ppo_variants.hyperparams import make_model

    th.set_num_threads(1)
    model = make_model(algorithm, env_id, dict(hyperparams), seed=0, device="cpu")
    spent = {"collect": 0.0, "train": 0.0}

    def timed(name: str, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start

        return wrapper

    model.collect_rollouts = timed("collect", model.collect_rollouts)  # type: ignore[method-assign]
    model.train = timed("train", model.train)  # type: ignore[method-assign]
    start = time.perf_counter()
    model.learn(timesteps)
    elapsed = time.perf_counter() - start
    queue.put(
        {
            "steps_per_s": model.num_timesteps / elapsed,
            "collect_share": spent["collect"] / elapsed,
            "train_share": spent["train"] / elapsed,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def measure(algorithm: str, env_id: str, hyperparams: dict[str, Any], timesteps: int) -> dict[str, float]:
    """One learn() in a fresh process: steps/s, time shares and peak memory."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_run, args=(algorithm, env_id, hyperparams, timesteps, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{algorithm} on {env_id} exited with {process.exitcode}")
    return result


def benchmark(settings: list[str], rounds: int, timesteps: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for setting in settings:
        env_id, hyperparams, default_steps = SETTINGS[setting]
        steps = timesteps or default_steps
        algorithms = SETTING_ALGORITHMS.get(setting, ALGORITHMS)
        runs: dict[str, list[dict[str, float]]] = {a: [] for a in algorithms}
        for round_index in range(rounds):
            shift = round_index % len(algorithms)
            for algorithm in algorithms[shift:] + algorithms[:shift]:
                runs[algorithm].append(measure(algorithm, env_id, hyperparams, steps))
                print(f"  {setting} round {round_index + 1}/{rounds} {algorithm}: "
                      f"{runs[algorithm][-1]['steps_per_s']:.0f} steps/s", file=sys.stderr, flush=True)  # fmt: skip
        for algorithm in algorithms:
            ratios = [run["steps_per_s"] / base["steps_per_s"] for run, base in zip(runs[algorithm], runs[algorithms[0]])]
            rows.append(
                {
                    "setting": setting,
                    "algorithm": algorithm,
                    "steps_per_s": statistics.median(r["steps_per_s"] for r in runs[algorithm]),
                    "ratio_median": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                    "collect_share": statistics.median(r["collect_share"] for r in runs[algorithm]),
                    "train_share": statistics.median(r["train_share"] for r in runs[algorithm]),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs[algorithm]),
                }
            )
    return rows


def markdown(rows: list[dict[str, Any]], rounds: int, timesteps: int | None) -> str:
    lines = [
        f"Throughput, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, "
        f"{mp.cpu_count()} CPUs, Python {platform.python_version()}; {rounds} round(s), "
        f"{'default' if timesteps is None else timesteps} timesteps per run, 1 torch thread, each run in a fresh process.",
        "",
        "| setting | algorithm | steps/s (median) | ratio vs the original (first row): median [min, max] "
        "| collect / update share | peak RSS MB |",
        "|---|---|---:|---|---|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['setting']} | {row['algorithm']} | {row['steps_per_s']:.0f} | "
            f"{row['ratio_median']:.3f} [{row['ratio_min']:.3f}, {row['ratio_max']:.3f}] | "
            f"{row['collect_share']:.0%} / {row['train_share']:.0%} | {row['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, 1024 timesteps per run")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=None, help="override every setting's budget")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.timesteps = 1, args.timesteps or 2048
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")
    print(markdown(benchmark(args.settings, args.rounds, args.timesteps), args.rounds, args.timesteps))


if __name__ == "__main__":
    main()
