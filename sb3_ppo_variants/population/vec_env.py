"""One vectorised environment holding every member's environments, with SB3's ``DummyVecEnv`` semantics.

Member k's environment i is seeded ``seed_k + i`` at its first reset, as ``make_vec_env`` seeds a solo run; an
episode that ends is reset in the same step and its last observation is kept (``terminal_observation``), so
truncated episodes can be bootstrapped. Observations come out flattened, (K * n_envs, obs_dim) float32.
CartPole-v1 has a numpy implementation of its own here (:class:`CartPoleEnvs`); gymnasium's vector CartPole
draws every sub-environment's initial state from one generator and resets on the next step, which would couple
members and change SB3's semantics.

Per-member observation and reward normalisation with ``VecNormalize``'s semantics: :class:`MemberNormalizer`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import EzPickle
from stable_baselines3.common.running_mean_std import RunningMeanStd

from sb3_ppo_variants.population.classic_control import (
    AcrobotEnvs,
    MountainCarContinuousEnvs,
    MountainCarEnvs,
    NumpyEnvs,
    PendulumEnvs,
)

__all__ = ["NUMPY_ENVS", "CartPoleEnvs", "MemberEnvs", "MemberNormalizer", "make_member_envs"]


class MemberEnvs:
    """K members x ``n_envs`` gymnasium environments, stepped one by one (a ``DummyVecEnv`` over all of them).

    :param env_id: gymnasium id
    :param seeds: one seed per member
    :param n_envs: environments per member
    :param env_kwargs: keyword arguments of ``gym.make``
    """

    def __init__(self, env_id: str, seeds: list[int], n_envs: int, env_kwargs: dict[str, Any] | None = None):
        self.n_members, self.n_envs = len(seeds), n_envs
        self.num_envs = self.n_members * n_envs
        self.seeds = [seed + i for seed in seeds for i in range(n_envs)]
        self.envs = [gym.make(env_id, **(env_kwargs or {})) for _ in range(self.num_envs)]
        self.observation_space: spaces.Space = self.envs[0].observation_space
        self.action_space: spaces.Space = self.envs[0].action_space
        self._seeded = False

    def _flat(self, obs: Any) -> np.ndarray:
        return np.asarray(obs, dtype=np.float32).reshape(-1)

    @property
    def resumable(self) -> bool:
        """Whether pickling keeps the environments' state: not for ``EzPickle`` environments (Box2D's), which
        pickle as their constructor arguments and come back fresh, before any reset."""
        return not any(isinstance(env.unwrapped, EzPickle) for env in self.envs)

    def reset(self) -> np.ndarray:
        seeds: list[int | None] = list(self.seeds) if not self._seeded else [None] * self.num_envs
        self._seeded = True
        return np.stack([self._flat(env.reset(seed=seed)[0]) for env, seed in zip(self.envs, seeds)])

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every environment; returns observations, rewards, terminated, truncated, terminal observations
        (valid where terminated or truncated)."""
        obs, terminal = [], []
        rewards = np.zeros(self.num_envs, dtype=np.float32)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            observation, reward, terminated[i], truncated[i], _ = env.step(action)
            rewards[i] = reward
            observation = self._flat(observation)
            terminal.append(observation)
            if terminated[i] or truncated[i]:
                observation = self._flat(env.reset()[0])
            obs.append(observation)
        return np.stack(obs), rewards, terminated, truncated, np.stack(terminal)

    def rng_state(self, i: int) -> Mapping[str, Any]:
        """The state of environment ``i``'s generator (``np_random``, which draws its initial states)."""
        return self.envs[i].unwrapped.np_random.bit_generator.state

    def set_rng_state(self, i: int, state: Mapping[str, Any]) -> None:
        self.envs[i].unwrapped.np_random.bit_generator.state = state

    def close(self) -> None:
        for env in self.envs:
            env.close()


class CartPoleEnvs(NumpyEnvs):
    """CartPole-v1 (gymnasium's ``CartPoleEnv`` with its 500-step time limit), K x ``n_envs`` of them stepped
    with numpy at once. Each environment has its own generator, seeded as gymnasium seeds ``reset(seed=...)``,
    which draws its initial states: member k's episodes do not depend on the other members."""

    gravity, masscart, masspole, length, force_mag, tau = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    state_dim = 4

    def __init__(self, env_id: str, seeds: list[int], n_envs: int, env_kwargs: dict[str, Any] | None = None):
        super().__init__(env_id, seeds, n_envs)  # CartPole-v1 takes no constructor arguments that change its dynamics
        self.max_episode_steps = self.max_episode_steps or 500

    def _reset_one(self, i: int) -> None:
        self.state[i] = self.rngs[i].uniform(low=-0.05, high=0.05, size=(4,))
        self.steps[i] = 0

    def _observations(self) -> np.ndarray:
        return self.state.astype(np.float32)

    def _dynamics(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, x_dot, theta, theta_dot = self.state.T
        force = np.where(actions == 1, self.force_mag, -self.force_mag)
        costheta, sintheta = np.cos(theta), np.sin(theta)
        total_mass = self.masspole + self.masscart
        polemass_length = self.masspole * self.length
        temp = (force + polemass_length * theta_dot**2 * sintheta) / total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta**2 / total_mass)
        )
        xacc = temp - polemass_length * thetaacc * costheta / total_mass
        self.state = np.stack(
            [x + self.tau * x_dot, x_dot + self.tau * xacc, theta + self.tau * theta_dot, theta_dot + self.tau * thetaacc],
            axis=1,
        )
        x, theta = self.state[:, 0], self.state[:, 2]
        terminated = (x < -self.x_threshold) | (x > self.x_threshold)
        terminated |= (theta < -self.theta_threshold_radians) | (theta > self.theta_threshold_radians)
        return np.ones(self.num_envs), terminated


def make_member_envs(
    env_id: str, seeds: list[int], n_envs: int, env_kwargs: dict[str, Any] | None = None
) -> MemberEnvs | CartPoleEnvs | NumpyEnvs:
    """A numpy batch for the classic-control envs that have one (:data:`NUMPY_ENVS`) without keyword arguments, the
    one-by-one stepping otherwise."""
    if env_id in NUMPY_ENVS and not env_kwargs:
        return NUMPY_ENVS[env_id](env_id, seeds, n_envs)
    return MemberEnvs(env_id, seeds, n_envs, env_kwargs)


#: gymnasium id -> its numpy batch (each checked equal to gymnasium step by step in the tests)
NUMPY_ENVS: dict[str, Any] = {
    "CartPole-v1": CartPoleEnvs,
    "Pendulum-v1": PendulumEnvs,
    "MountainCar-v0": MountainCarEnvs,
    "MountainCarContinuous-v0": MountainCarContinuousEnvs,
    "Acrobot-v1": AcrobotEnvs,
}


class MemberNormalizer:
    """``VecNormalize``'s observation and reward normalisation, with one set of statistics per member, held as
    (K, ...) arrays and updated for every member at once (``RunningMeanStd``'s formulas, per member).

    :param n_members: K
    :param n_envs: environments per member
    :param obs_shape: the flat observation's shape
    :param kwargs: VecNormalize's ``norm_obs``, ``norm_reward``, ``clip_obs``, ``clip_reward``, ``epsilon``,
        ``gamma`` (VecNormalize's own discount of the return it normalises by, 0.99 by default as there)
    :attr obs_mean: (K, *obs_shape); ``obs_var`` likewise; ``obs_count``: (K,)
    :attr ret_mean: (K,); ``ret_var``, ``ret_count`` likewise
    """

    def __init__(self, n_members: int, n_envs: int, obs_shape: tuple[int, ...], **kwargs: Any):
        allowed = {"norm_obs", "norm_reward", "clip_obs", "clip_reward", "epsilon", "gamma"}
        unknown = set(kwargs) - allowed
        if unknown:
            raise ValueError(
                f"normalize_kwargs {sorted(unknown)} are not supported in a population; allowed: {sorted(allowed)}"
            )
        self.norm_obs = bool(kwargs.get("norm_obs", True))
        self.norm_reward = bool(kwargs.get("norm_reward", True))
        self.clip_obs = float(kwargs.get("clip_obs", 10.0))
        self.clip_reward = float(kwargs.get("clip_reward", 10.0))
        self.epsilon = float(kwargs.get("epsilon", 1e-8))
        self.gamma = float(kwargs.get("gamma", 0.99))
        self.n_members, self.n_envs = n_members, n_envs
        template = RunningMeanStd(shape=obs_shape)  # its initial statistics (count = 1e-4)
        self.obs_mean = np.zeros((n_members, *obs_shape))
        self.obs_var = np.ones((n_members, *obs_shape))
        self.obs_count = np.full(n_members, template.count)
        self.ret_mean = np.zeros(n_members)
        self.ret_var = np.ones(n_members)
        self.ret_count = np.full(n_members, template.count)
        self.returns = np.zeros((n_members, n_envs))
        self.training = True

    @staticmethod
    def _update(
        mean: np.ndarray, var: np.ndarray, count: np.ndarray, batch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``RunningMeanStd.update`` for every member: ``batch`` (K, n, ...), statistics (K, ...) and counts (K,)."""
        batch_mean, batch_var, batch_count = np.mean(batch, axis=1), np.var(batch, axis=1), batch.shape[1]
        count_ = count.reshape(-1, *([1] * (mean.ndim - 1)))
        delta = batch_mean - mean
        tot_count = count_ + batch_count
        new_mean = mean + delta * batch_count / tot_count
        m_a = var * count_
        m_b = batch_var * batch_count
        m_2 = m_a + m_b + np.square(delta) * count_ * batch_count / (count_ + batch_count)
        new_var = m_2 / (count_ + batch_count)
        return new_mean, new_var, batch_count + count

    def _per_member(self, array: np.ndarray) -> np.ndarray:
        return array.reshape(self.n_members, -1, *array.shape[1:])

    def normalize_obs(self, obs: np.ndarray) -> np.ndarray:
        if not self.norm_obs:
            return obs
        per = self._per_member(obs)
        mean, std = self.obs_mean[:, None], np.sqrt(self.obs_var + self.epsilon)[:, None]
        return np.clip((per - mean) / std, -self.clip_obs, self.clip_obs).reshape(obs.shape).astype(np.float32)

    def observe(self, obs: np.ndarray) -> np.ndarray:
        """Update the observation statistics with new raw observations (training), then normalise them."""
        if self.training and self.norm_obs:
            self.obs_mean, self.obs_var, self.obs_count = self._update(
                self.obs_mean, self.obs_var, self.obs_count, self._per_member(obs)
            )
        return self.normalize_obs(obs)

    def reward(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Update the return statistics with raw rewards (training) and normalise them; ``dones`` resets returns."""
        if not self.norm_reward:
            return rewards
        per = rewards.reshape(self.n_members, self.n_envs)
        self.returns = self.returns * self.gamma + per
        if self.training:
            statistics = self._update(self.ret_mean, self.ret_var, self.ret_count, self.returns)
            self.ret_mean, self.ret_var, self.ret_count = statistics
        out = np.clip(per / np.sqrt(self.ret_var + self.epsilon)[:, None], -self.clip_reward, self.clip_reward)
        self.returns[dones.reshape(self.n_members, self.n_envs)] = 0
        return out.reshape(rewards.shape).astype(np.float32)

    def member_obs_rms(self, k: int) -> RunningMeanStd:
        """Member k's observation statistics as VecNormalize holds them (a copy)."""
        rms = RunningMeanStd(shape=self.obs_mean.shape[1:])
        rms.mean, rms.var, rms.count = self.obs_mean[k].copy(), self.obs_var[k].copy(), float(self.obs_count[k])
        return rms

    def member_ret_rms(self, k: int) -> RunningMeanStd:
        """Member k's return statistics as VecNormalize holds them (a copy)."""
        rms = RunningMeanStd(shape=())
        rms.mean, rms.var, rms.count = self.ret_mean[k].copy(), self.ret_var[k].copy(), float(self.ret_count[k])
        return rms
