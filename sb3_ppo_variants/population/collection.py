"""The collection state of a population: its environments, their normalisation, the last observations and the
episodes recorded so far; one rollout of every member as SB3's ``collect_rollouts`` gathers it, with SB3's GAE."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th

from sb3_ppo_variants.kl import distribution_param_dim
from sb3_ppo_variants.population.classic_control import NumpyEnvs
from sb3_ppo_variants.population.policy import StackedActorCritic
from sb3_ppo_variants.population.trainer import RolloutData, compute_gae
from sb3_ppo_variants.population.vec_env import CartPoleEnvs, MemberEnvs, MemberNormalizer

__all__ = ["Collector"]


class Collector:
    """Every member's environments and what a rollout carries over to the next: the last observations and episode
    starts, the running episode returns, the members' timesteps and the episodes they finished.

    :param envs: the members' environments (K x n_envs of them)
    :param normalizer: per-member VecNormalize statistics, or None
    :param device: where the rollout tensors live
    :attr episode_returns: per member, the return of each finished episode (as ``Monitor`` records it)
    :attr episode_timesteps: per member, its timesteps when each episode finished
    """

    def __init__(self, envs: MemberEnvs | CartPoleEnvs | NumpyEnvs, normalizer: MemberNormalizer | None, device: th.device):
        self.envs = envs
        self.normalizer = normalizer
        self.device = device
        self.n_members, self.n_envs = envs.n_members, envs.n_envs
        self.obs_dim = int(np.prod(envs.observation_space.shape or ()))
        self.num_timesteps = 0
        self.episode_returns: list[list[float]] = [[] for _ in range(self.n_members)]
        self.episode_timesteps: list[list[int]] = [[] for _ in range(self.n_members)]
        #: members whose episodes are no longer recorded (they failed)
        self.stopped = np.zeros(self.n_members, dtype=bool)
        self.last_obs: np.ndarray | None = None
        self.last_episode_starts = np.ones(self.n_members * self.n_envs, dtype=bool)
        self.episode_return = np.zeros(self.n_members * self.n_envs)
        self.episode_length = np.zeros(self.n_members * self.n_envs, dtype=np.int64)

    #: what save/load keep (the environments are saved apart: some do not pickle)
    STATE = (
        "normalizer",
        "num_timesteps",
        "episode_returns",
        "episode_timesteps",
        "stopped",
        "last_obs",
        "last_episode_starts",
        "episode_return",
        "episode_length",
    )

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.STATE}

    def load_state(self, state: dict[str, Any]) -> None:
        for name in self.STATE:
            setattr(self, name, state[name])

    def obs_tensor(self, obs: np.ndarray) -> th.Tensor:
        """(K * n_envs, obs_dim) numpy -> (K, n_envs, obs_dim) on the device."""
        return th.as_tensor(obs, device=self.device).view(self.n_members, -1, self.obs_dim)

    def reset(self) -> None:
        raw = self.envs.reset()
        if self.normalizer is not None:
            self.normalizer.returns[:] = 0
            raw = self.normalizer.observe(raw)
        self.last_obs = raw
        self.last_episode_starts = np.ones(self.n_members * self.n_envs, dtype=bool)
        self.episode_return[:] = 0
        self.episode_length[:] = 0

    def _record_episodes(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self.episode_return += rewards
        self.episode_length += 1
        for index in np.flatnonzero(dones):
            member = int(index) // self.n_envs
            if not self.stopped[member]:
                self.episode_returns[member].append(round(float(self.episode_return[index]), 6))  # as Monitor records it
                self.episode_timesteps[member].append(self.num_timesteps)
            self.episode_return[index] = 0.0
            self.episode_length[index] = 0

    @th.no_grad()
    def collect(
        self,
        policy: StackedActorCritic,
        noise: th.Tensor,
        n_steps: int,
        gamma: th.Tensor,
        gae_lambda: th.Tensor,
        frozen: th.Tensor | None = None,
        on_step: Callable[[], None] | None = None,
    ) -> RolloutData:
        """One rollout of ``n_steps`` per environment, with its advantages and returns.

        :param noise: (K, n_steps, n_envs, noise_dim), each member's sampling noise from its own generator
        :param gamma: (K,) discounts; ``gae_lambda``: (K,)
        :param frozen: (K,) bool, members that failed: their actions are made finite before the environments see them
        """
        assert self.last_obs is not None
        k, e = self.n_members, self.n_envs
        dist = policy.distribution
        space = self.envs.action_space
        obs_buf = th.zeros((k, n_steps, e, self.obs_dim), device=self.device)
        act_buf = th.zeros((k, n_steps, e, dist.action_dim), device=self.device)
        params_buf = th.zeros((k, n_steps, e, distribution_param_dim(space)), device=self.device)
        rewards_buf = th.zeros((k, n_steps, e), device=self.device)
        starts_buf = th.zeros((k, n_steps, e), device=self.device)
        values_buf = th.zeros((k, n_steps, e), device=self.device)
        log_prob_buf = th.zeros((k, n_steps, e), device=self.device)
        discount = gamma.unsqueeze(1)
        frozen_actions = None if frozen is None or not bool(frozen.any()) else frozen.view(k, 1, 1)
        for step in range(n_steps):
            obs = self.obs_tensor(self.last_obs)
            params, values = policy.forward(obs)
            actions = dist.sample(params, noise[:, step])
            log_prob = dist.log_prob(params, actions)
            env_actions = actions if frozen_actions is None else th.where(frozen_actions, th.nan_to_num(actions), actions)
            raw_obs, raw_rewards, terminated, truncated, terminal = self.envs.step(dist.env_actions(env_actions))
            dones = terminated | truncated
            self.num_timesteps += e
            self._record_episodes(raw_rewards, dones)
            rewards = raw_rewards
            new_obs = raw_obs
            if self.normalizer is not None:
                new_obs = self.normalizer.observe(raw_obs)
                terminal = self.normalizer.normalize_obs(terminal)
                rewards = self.normalizer.reward(raw_rewards, dones)
            rewards_t = th.as_tensor(rewards, device=self.device).view(k, e)
            bootstrap = truncated & ~terminated
            if bootstrap.any():  # SB3: rewards += gamma * V(terminal observation) for time-limit truncations
                terminal_values = policy.values(self.obs_tensor(terminal))
                mask = th.as_tensor(bootstrap, device=self.device).view(k, e)
                rewards_t = th.where(mask, rewards_t + discount * terminal_values, rewards_t)
            obs_buf[:, step] = obs
            act_buf[:, step] = actions
            params_buf[:, step] = params
            rewards_buf[:, step] = rewards_t
            starts_buf[:, step] = th.as_tensor(self.last_episode_starts, device=self.device).view(k, e).float()
            values_buf[:, step] = values
            log_prob_buf[:, step] = log_prob
            self.last_obs = new_obs
            self.last_episode_starts = dones
            if on_step is not None:
                on_step()
        last_values = policy.values(self.obs_tensor(self.last_obs))
        dones_t = th.as_tensor(self.last_episode_starts, device=self.device).view(k, e)
        advantages, returns = compute_gae(rewards_buf, values_buf, starts_buf, last_values, dones_t, gamma, gae_lambda)
        flat = RolloutData.flatten
        return RolloutData(
            flat(obs_buf),
            flat(act_buf),
            flat(values_buf),
            flat(log_prob_buf),
            flat(advantages),
            flat(returns),
            flat(params_buf),
        )
