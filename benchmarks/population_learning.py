"""Does a population learn like solo runs? N seeds trained as one population against the same N seeds trained as
solo SB3 runs (ClipPPO), final deterministic returns on separately seeded evaluation envs, and rliable's
probability of improvement P(population > solo) with a 95% bootstrap interval. Same algorithm, so the interval
should contain 0.5. (Members do not replay their solo twins' episodes: a member's weight init, action noise and
minibatch orders come from ``SeedSequence(seed).spawn``, not from SB3's streams, and the stacked matmuls round
differently; only its environments are seeded as the solo run's. The distributions should agree, and this checks it.)

    python benchmarks/population_learning.py                       # CartPole, Pendulum, Acrobot; 10 seeds
    python benchmarks/population_learning.py --envs CartPole-v1 --seeds 5
    python benchmarks/population_learning.py --quick               # smoke test: CartPole, 2 seeds, 2048 steps
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from importlib.resources import files
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_variants import Population
from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.hyperparams import load_hyperparams, make_env, make_model, split_hyperparams

#: env -> (entry: rl-zoo3's, or SB3's defaults as {}, budget)
ENVS: dict[str, tuple[str, int]] = {
    "CartPole-v1": ("rl-zoo3", 100_000),
    "Pendulum-v1": ("sb3-defaults", 100_000),
    "Acrobot-v1": ("rl-zoo3", 200_000),
}


def _entry(env_id: str) -> dict[str, Any]:
    if ENVS[env_id][0] == "sb3-defaults":
        return {}
    entry = load_hyperparams(str(files("sb3_ppo_variants") / "data" / "zoo_ppo.yml"), env_id)
    entry.pop("n_timesteps", None)
    return entry


def solo_score(env_id: str, entry: dict[str, Any], seed: int, steps: int, n_eval_episodes: int) -> float:
    """A solo ClipPPO run of ``seed``, evaluated as SeededRun evaluates (env seeded seed + EVAL_SEED_OFFSET)."""
    model = make_model("clip", env_id, dict(entry), seed=seed, device="cpu").learn(steps)
    _, settings = split_hyperparams(entry)
    eval_env = make_env(env_id, settings, seed=seed + EVAL_SEED_OFFSET, n_envs=1)
    train_env = model.get_env()
    if isinstance(eval_env, VecNormalize) and isinstance(train_env, VecNormalize):
        eval_env.training, eval_env.norm_reward = False, False
        eval_env.obs_rms = train_env.obs_rms.copy()
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_eval_episodes, deterministic=True)
    return float(mean)  # type: ignore[arg-type]


def probability_of_improvement(population: np.ndarray, solo: np.ndarray) -> tuple[float, float, float]:
    from sb3_ppo_variants.studies.statistics import probability_of_improvement as poi  # rliable's, as the ablation's

    row = poi({"population": population[:, None], "solo": solo[:, None]}, baseline="solo").iloc[0]
    return float(row.probability), float(row.low), float(row.high)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", choices=list(ENVS), default=list(ENVS))
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--timesteps", type=int, default=None, help="override every env's budget")
    parser.add_argument("--n-eval-episodes", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="smoke test: CartPole-v1, 2 seeds, 2048 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.envs, args.seeds, args.timesteps, args.n_eval_episodes = ["CartPole-v1"], 2, 2048, 2
    th.set_num_threads(1)
    lines = [
        "| env | entry | budget | seeds | population: mean +- std | solo: mean +- std | P(population > solo) [95% CI] "
        "| wall s population / solo |",
        "|---|---|---:|---:|---|---|---|---|",
    ]
    for env_id in args.envs:
        entry = _entry(env_id)
        steps = args.timesteps or ENVS[env_id][1]
        start = time.perf_counter()
        population = Population(env_id, [dict(seed=seed) for seed in range(args.seeds)], hyperparams=entry, device="cpu")
        pop_scores = population.learn(steps).evaluate(args.n_eval_episodes)
        pop_time = time.perf_counter() - start
        start = time.perf_counter()
        solo_scores = np.array([solo_score(env_id, entry, seed, steps, args.n_eval_episodes) for seed in range(args.seeds)])
        solo_time = time.perf_counter() - start
        probability, low, high = probability_of_improvement(pop_scores, solo_scores)
        lines.append(
            f"| {env_id} | {ENVS[env_id][0]} | {steps:,} | {args.seeds} | {pop_scores.mean():.1f} +- {pop_scores.std():.1f} | "
            f"{solo_scores.mean():.1f} +- {solo_scores.std():.1f} | {probability:.2f} [{low:.2f}, {high:.2f}] | "
            f"{pop_time:.0f} / {solo_time:.0f} |"
        )
        print(f"  {lines[-1]}", file=sys.stderr, flush=True)
    print(
        f"Population vs solo runs, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.platform()}, 1 torch thread.\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
