"""Seeded training runs that can be advanced in segments and evaluated in between.

Tuning advances K seeds in lockstep (so that each report to a pruner is a mean over seeds) and ablations
record learning curves. Two things make a run advanced in segments identical to one ``learn()`` call:

- schedules see the progress of the whole budget, not of the segment (SB3's ``learn(reset_num_timesteps=False)``
  alone would restart every schedule at each segment);
- each run keeps its own random streams (SB3 draws from the global torch/numpy/random generators, so runs
  interleaved in one process would otherwise feed on each other's streams).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.hyperparams import make_env, make_model, split_hyperparams

__all__ = ["SeededRun"]


def _get_rng() -> tuple[Any, Any, Any]:
    return th.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng(state: tuple[Any, Any, Any]) -> None:
    th.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


@dataclass
class SeededRun:
    """One (variant, env, seed) training run with its own random streams and a separate evaluation env.

    :param variant: a name of :mod:`~sb3_ppo_variants.studies.registry` or an algorithm class
    :param env_id: gymnasium id
    :param seed: training seed; the evaluation env uses ``seed + EVAL_SEED_OFFSET``
    :param total_timesteps: the budget the schedules are computed against
    :param hyperparams: rl-zoo3 style entry (see :func:`sb3_ppo_variants.hyperparams.make_model`)
    :param n_eval_episodes: deterministic evaluation episodes per evaluation
    :param model_kwargs: constructor arguments that override the entry (e.g. sampled by a tuner)
    """

    variant: Any
    env_id: str
    seed: int
    total_timesteps: int
    hyperparams: dict[str, Any] | None = None
    n_eval_episodes: int = 10
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    episode_returns: list[float] = field(default_factory=list)
    episode_timesteps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        outer = _get_rng()
        self.model: BaseAlgorithm = make_model(
            self.variant, self.env_id, self.hyperparams, seed=self.seed, **self.model_kwargs
        )
        self._rng = _get_rng()
        _set_rng(outer)
        _, settings = split_hyperparams(self.hyperparams or {})
        self.eval_env: VecEnv = make_env(self.env_id, settings, seed=self.seed + EVAL_SEED_OFFSET, n_envs=1)
        if isinstance(self.eval_env, VecNormalize):
            self.eval_env.training = False
            self.eval_env.norm_reward = False
        self._started = False

    @property
    def num_timesteps(self) -> int:
        return int(self.model.num_timesteps)

    def advance(self, until: int, **learn_kwargs: Any) -> None:
        """Train on until ``until`` timesteps (rounded up to whole rollouts) of the ``total_timesteps`` budget."""
        if until <= self.num_timesteps:
            return
        model = self.model
        budget = self.total_timesteps
        original = model._update_current_progress_remaining

        def whole_budget_progress(num_timesteps: int, total_timesteps: int) -> None:
            original(num_timesteps, budget)

        outer = _get_rng()
        _set_rng(self._rng)
        model._update_current_progress_remaining = whole_budget_progress  # type: ignore[method-assign]
        try:
            model.learn(until - self.num_timesteps, reset_num_timesteps=not self._started, **learn_kwargs)
        finally:
            del model._update_current_progress_remaining  # back to the class's method (and picklable)
            self._rng = _get_rng()
            _set_rng(outer)
        self._started = True
        self._collect_episodes()

    def _collect_episodes(self) -> None:
        # Monitor keeps the return of every finished training episode, per env; take what is new in each.
        per_env = self.model.get_env().env_method("get_episode_rewards")  # type: ignore[union-attr]
        if not hasattr(self, "_seen"):
            self._seen = [0] * len(per_env)
        for index, returns in enumerate(per_env):
            new = [float(r) for r in returns[self._seen[index] :]]  # type: ignore[arg-type]
            self._seen[index] = len(returns)
            self.episode_returns.extend(new)
            self.episode_timesteps.extend([self.num_timesteps] * len(new))

    def evaluate(self) -> float:
        """Mean return of ``n_eval_episodes`` deterministic episodes on the evaluation env."""
        train_env = self.model.get_env()
        if isinstance(self.eval_env, VecNormalize) and isinstance(train_env, VecNormalize):
            self.eval_env.obs_rms = train_env.obs_rms.copy()
        outer = _get_rng()
        try:
            mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.n_eval_episodes, deterministic=True)
        finally:
            _set_rng(outer)
        return float(mean)  # type: ignore[arg-type]

    def close(self) -> None:
        self.eval_env.close()
        env = self.model.get_env()
        if env is not None:
            env.close()
