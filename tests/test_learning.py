"""Learning runs (slow, run in CI): every variant learns CartPole-v1 from rl-zoo3's tuned PPO entry.

rl-zoo3's entry is used verbatim (tests/data/ppo_zoo.yml: lin_0.001 learning rate, lin_0.2 clip range);
the variants add only their own defaults (kl_coef, kl_target). Evaluation: 20 deterministic episodes on
a separate environment whose seed is not a training seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import PLAIN_VARIANTS
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_ppo_variants.hyperparams import load_hyperparams, make_model

ZOO = Path(__file__).parent / "data" / "ppo_zoo.yml"
SEED = 0


@pytest.mark.slow
@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_every_variant_solves_cartpole_in_100k_steps(variant: str) -> None:
    entry = load_hyperparams(ZOO, "CartPole-v1")
    model = make_model(variant, "CartPole-v1", entry, seed=SEED, device="cpu")
    model.learn(int(model.n_timesteps))  # type: ignore[attr-defined]
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=SEED + 1000)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=20, deterministic=True)
    assert model.num_timesteps >= 100_000
    assert mean_return >= 475, f"{variant}: mean evaluation return {mean_return} < 475"
