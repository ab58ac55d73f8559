"""The numpy batches of the classic-control environments step exactly as gymnasium's (observations, rewards,
terminations, truncations, terminal observations and initial states), each environment with its own generator."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from sb3_ppo_variants.population.vec_env import NUMPY_ENVS, make_member_envs


def _policy(env_id: str, obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random actions, and for the mountain cars a push along the velocity (so that episodes reach the goal), with
    actions beyond the bounds (so that clipping is exercised)."""
    n = len(obs)
    if env_id == "CartPole-v1":
        return rng.integers(0, 2, size=n)
    if env_id == "Acrobot-v1":  # pump with the second link's velocity, so that episodes end before the time limit
        return np.where(rng.random(n) < 0.8, np.where(obs[:, 5] >= 0, 2, 0), rng.integers(0, 3, size=n))
    if env_id == "MountainCar-v0":
        return np.where(rng.random(n) < 0.8, np.where(obs[:, 1] >= 0, 2, 0), rng.integers(0, 3, size=n))
    if env_id == "MountainCarContinuous-v0":
        push = np.where(obs[:, 1] >= 0, 1.0, -1.0) * rng.uniform(0.5, 1.5, size=n)
        return np.where(rng.random(n) < 0.8, push, rng.uniform(-1.5, 1.5, size=n)).astype(np.float32).reshape(n, 1)
    return rng.uniform(-2.5, 2.5, size=(n, 1)).astype(np.float32)  # Pendulum: beyond its torque bounds too


@pytest.mark.parametrize("env_id", list(NUMPY_ENVS))
def test_numpy_batches_step_exactly_as_gymnasium(env_id: str) -> None:
    seeds, n_envs = [11, 40], 2
    envs = make_member_envs(env_id, seeds, n_envs)
    assert type(envs) is NUMPY_ENVS[env_id]
    singles = [gym.make(env_id) for _ in range(len(seeds) * n_envs)]
    obs = envs.reset()
    # member k's environment i is seeded seed_k + i, as make_vec_env seeds a solo run
    expected = np.stack(
        [singles[k * n_envs + i].reset(seed=seed + i)[0] for k, seed in enumerate(seeds) for i in range(n_envs)]
    )
    rng = np.random.default_rng(0)
    episodes = terminations = 0
    steps = 2500 if env_id == "MountainCarContinuous-v0" else 1500
    for _ in range(steps):
        assert np.array_equal(obs, expected)
        actions = _policy(env_id, obs, rng)
        obs, rewards, terminated, truncated, terminal = envs.step(actions)
        rows = []
        for i, env in enumerate(singles):
            observation, reward, term, trunc, _ = env.step(actions[i] if actions.ndim > 1 else int(actions[i]))
            assert (term, trunc, np.float32(reward)) == (terminated[i], truncated[i], rewards[i]), i
            if term or trunc:
                assert np.array_equal(terminal[i], observation)
                observation, _ = env.reset()
                episodes += 1
                terminations += int(term)
            rows.append(observation)
        expected = np.stack(rows)
    assert episodes >= 8
    assert terminations > 0 or env_id == "Pendulum-v1"  # Pendulum never terminates, only truncates


def test_member_normalizer_updates_every_member_as_vecnormalize_does() -> None:
    """(K, ...) statistics updated at once equal one RunningMeanStd per member (VecNormalize's), exactly."""
    from stable_baselines3.common.running_mean_std import RunningMeanStd

    from sb3_ppo_variants.population.vec_env import MemberNormalizer

    k, n_envs, rng = 3, 4, np.random.default_rng(1)
    normalizer = MemberNormalizer(k, n_envs, (5,), gamma=0.9)
    obs_rms = [RunningMeanStd(shape=(5,)) for _ in range(k)]
    ret_rms = [RunningMeanStd(shape=()) for _ in range(k)]
    returns = np.zeros((k, n_envs))
    for _ in range(50):
        obs = rng.normal(3.0, 2.0, size=(k * n_envs, 5)).astype(np.float32)
        rewards = rng.normal(size=k * n_envs).astype(np.float32)
        dones = rng.random(k * n_envs) < 0.1
        ours_obs, ours_rewards = normalizer.observe(obs), normalizer.reward(rewards, dones)
        returns = returns * 0.9 + rewards.reshape(k, n_envs)
        for member in range(k):
            obs_rms[member].update(obs.reshape(k, n_envs, 5)[member])
            ret_rms[member].update(returns[member])
            expected = np.clip(
                (obs.reshape(k, n_envs, 5)[member] - obs_rms[member].mean) / np.sqrt(obs_rms[member].var + 1e-8), -10, 10
            )
            assert np.array_equal(ours_obs.reshape(k, n_envs, 5)[member], expected.astype(np.float32))
            scaled = np.clip(rewards.reshape(k, n_envs)[member] / np.sqrt(ret_rms[member].var + 1e-8), -10, 10)
            assert np.array_equal(ours_rewards.reshape(k, n_envs)[member], scaled.astype(np.float32))
        returns[dones.reshape(k, n_envs)] = 0
    for member in range(k):
        assert np.array_equal(normalizer.member_obs_rms(member).var, obs_rms[member].var)
        assert normalizer.member_ret_rms(member).count == ret_rms[member].count
