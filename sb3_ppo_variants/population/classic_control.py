"""gymnasium's classic-control environments as numpy batches over every member's environments: Pendulum-v1,
MountainCar-v0, MountainCarContinuous-v0 and Acrobot-v1 (CartPole-v1 is
:class:`~sb3_ppo_variants.population.vec_env.CartPoleEnvs`).

Each is gymnasium's ``step`` written for arrays, in the same floating-point types and operation order, so that it gives
gymnasium's observations, rewards, terminations and truncations (its ``TimeLimit``), bit for bit (tested step by step).
Each environment has its own generator, seeded as gymnasium's ``reset(seed=...)`` seeds ``np_random``, which draws its
initial states: member k's episodes do not depend on the other members.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["AcrobotEnvs", "MountainCarContinuousEnvs", "MountainCarEnvs", "NumpyEnvs", "PendulumEnvs"]


class NumpyEnvs:
    """Base: K members x ``n_envs`` environments of one classic-control env, stepped as numpy batches, with SB3's
    ``DummyVecEnv`` semantics (an episode that ends is reset in the same step; its last observation is returned apart).

    :param env_id: gymnasium id
    :param seeds: one seed per member (its environment i is seeded ``seed + i``)
    :param n_envs: environments per member
    """

    #: the rows of ``state``
    state_dim: int
    #: pickling keeps the state (numpy arrays and generators)
    resumable = True

    def __init__(self, env_id: str, seeds: list[int], n_envs: int, env_kwargs: dict[str, Any] | None = None):
        env = gym.make(env_id, **(env_kwargs or {}))
        self.observation_space: spaces.Space = env.observation_space
        self.action_space: spaces.Space = env.action_space
        self.max_episode_steps = int(env.spec.max_episode_steps) if env.spec and env.spec.max_episode_steps else 0
        self._configure(env.unwrapped)
        env.close()
        self.n_members, self.n_envs = len(seeds), n_envs
        self.num_envs = self.n_members * n_envs
        self.seeds = [seed + i for seed in seeds for i in range(n_envs)]
        self.rngs: list[np.random.Generator] = []
        self.state = np.zeros((self.num_envs, self.state_dim))
        self.steps = np.zeros(self.num_envs, dtype=np.int64)

    def _configure(self, env: Any) -> None:
        """Read the environment's parameters (those its constructor took)."""

    def _reset_one(self, i: int) -> None:
        raise NotImplementedError

    def _observations(self) -> np.ndarray:
        raise NotImplementedError

    def _dynamics(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every environment one step; returns rewards (float64) and terminations."""
        raise NotImplementedError

    def reset(self) -> np.ndarray:
        if not self.rngs:
            self.rngs = [np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed))) for seed in self.seeds]
        for i in range(self.num_envs):
            self._reset_one(i)
        return self._observations()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every environment; returns observations, rewards, terminated, truncated, terminal observations
        (valid where terminated or truncated)."""
        rewards, terminated = self._dynamics(actions)
        self.steps += 1
        truncated = self.steps >= self.max_episode_steps if self.max_episode_steps else np.zeros(self.num_envs, bool)
        terminal = self._observations()
        ended = np.flatnonzero(terminated | truncated)
        for i in ended:
            self._reset_one(int(i))
        obs = self._observations() if len(ended) else terminal
        return obs, rewards.astype(np.float32), terminated, truncated, terminal

    def rng_state(self, i: int) -> Mapping[str, Any]:
        """The state of environment ``i``'s generator (which draws its initial states)."""
        return self.rngs[i].bit_generator.state

    def set_rng_state(self, i: int, state: Mapping[str, Any]) -> None:
        self.rngs[i].bit_generator.state = state

    def close(self) -> None:
        pass


def _angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


class PendulumEnvs(NumpyEnvs):
    """Pendulum-v1 (gymnasium's ``PendulumEnv``, 200-step time limit); state (theta, theta_dot), float64."""

    state_dim = 2

    def _configure(self, env: Any) -> None:
        self.max_speed, self.max_torque, self.dt = env.max_speed, env.max_torque, env.dt
        self.g, self.m, self.l = env.g, env.m, env.l

    def _reset_one(self, i: int) -> None:
        high = np.array([np.pi, 1.0])  # gymnasium's DEFAULT_X, DEFAULT_Y
        self.state[i] = self.rngs[i].uniform(low=-high, high=high)
        self.steps[i] = 0

    def _observations(self) -> np.ndarray:
        theta, theta_dot = self.state.T
        return np.stack([np.cos(theta), np.sin(theta), theta_dot], axis=1).astype(np.float32)

    def _dynamics(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        th, thdot = self.state[:, 0], self.state[:, 1]
        g, m, length, dt = self.g, self.m, self.l, self.dt
        u = np.clip(actions.reshape(self.num_envs), -self.max_torque, self.max_torque)
        costs = _angle_normalize(th) ** 2 + 0.1 * thdot**2 + 0.001 * (u**2)
        newthdot = thdot + (3 * g / (2 * length) * np.sin(th) + 3.0 / (m * length**2) * u) * dt
        newthdot = np.clip(newthdot, -self.max_speed, self.max_speed)
        newth = th + newthdot * dt
        self.state = np.stack([newth, newthdot], axis=1)
        return -costs, np.zeros(self.num_envs, dtype=bool)


class MountainCarEnvs(NumpyEnvs):
    """MountainCar-v0 (gymnasium's ``MountainCarEnv``, 200-step time limit); state (position, velocity), float64."""

    state_dim = 2

    def _configure(self, env: Any) -> None:
        self.min_position, self.max_position, self.max_speed = env.min_position, env.max_position, env.max_speed
        self.goal_position, self.goal_velocity = env.goal_position, env.goal_velocity
        self.force, self.gravity = env.force, env.gravity

    def _reset_one(self, i: int) -> None:
        self.state[i] = [self.rngs[i].uniform(low=-0.6, high=-0.4), 0]
        self.steps[i] = 0

    def _observations(self) -> np.ndarray:
        return self.state.astype(np.float32)

    def _dynamics(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        position, velocity = self.state[:, 0], self.state[:, 1]
        action = actions.reshape(self.num_envs).astype(np.int64)
        velocity = velocity + ((action - 1) * self.force + np.cos(3 * position) * (-self.gravity))
        velocity = np.clip(velocity, -self.max_speed, self.max_speed)
        position = np.clip(position + velocity, self.min_position, self.max_position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        self.state = np.stack([position, velocity], axis=1)
        return np.full(self.num_envs, -1.0), terminated


class MountainCarContinuousEnvs(NumpyEnvs):
    """MountainCarContinuous-v0 (gymnasium's ``Continuous_MountainCarEnv``, 999-step time limit).

    gymnasium keeps the state in float64 after a reset and in float32 after a step, and mixes numpy float32 scalars
    with Python floats; each case is reproduced (``fresh`` marks the environments whose state is still float64).
    """

    state_dim = 2

    def _configure(self, env: Any) -> None:
        self.min_action, self.max_action = env.min_action, env.max_action
        self.min_position, self.max_position, self.max_speed = env.min_position, env.max_position, env.max_speed
        self.goal_position, self.goal_velocity, self.power = env.goal_position, env.goal_velocity, env.power
        self.fresh = np.ones(0, dtype=bool)

    def _reset_one(self, i: int) -> None:
        if len(self.fresh) != self.num_envs:
            self.fresh = np.ones(self.num_envs, dtype=bool)
        self.state[i] = [self.rngs[i].uniform(low=-0.6, high=-0.4), 0]
        self.fresh[i] = True
        self.steps[i] = 0

    def _observations(self) -> np.ndarray:
        return self.state.astype(np.float32)

    def _dynamics(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f32 = np.float32
        action = actions.reshape(self.num_envs).astype(f32)
        position, velocity = self.state[:, 0], self.state[:, 1]
        # force = min(max(action, min_action), max_action): a float32 action, or a Python float bound where it clips
        clipped = (action < self.min_action) | (action > self.max_action)
        bound = np.where(action > self.max_action, self.max_action, self.min_action)
        # 3 * position: float64 after a reset, float32 after a step (math.cos then takes it as a double)
        cos_term = 0.0025 * np.cos(np.where(self.fresh, 3 * position, (f32(3) * position.astype(f32)).astype(np.float64)))
        # velocity += force * power - 0.0025 * cos(3 * position), in the types gymnasium's scalars have
        push32 = (action * f32(self.power)).astype(f32)  # float32 * Python float: float32
        rhs32 = (push32 - cos_term.astype(f32)).astype(f32)  # float32 - Python float: float32
        rhs64 = bound * self.power - cos_term  # Python floats
        rhs = np.where(clipped, rhs64, rhs32.astype(np.float64))
        fresh_velocity = velocity + rhs  # float64 + (float32 | float): float64
        v32 = velocity.astype(f32)
        stale_velocity = np.where(clipped, v32 + rhs64.astype(f32), v32 + rhs32).astype(np.float64)
        velocity = np.where(self.fresh, fresh_velocity, stale_velocity)
        velocity = np.where(velocity > self.max_speed, self.max_speed, velocity)
        velocity = np.where(velocity < -self.max_speed, -self.max_speed, velocity)
        fresh_position = position + velocity
        # float32 + (float32, or the Python float max_speed where the velocity was bounded, taken as float32): float32
        stale_position = (position.astype(f32) + velocity.astype(f32)).astype(np.float64)
        position = np.where(self.fresh, fresh_position, stale_position)
        position = np.where(position > self.max_position, self.max_position, position)
        position = np.where(position < self.min_position, self.min_position, position)
        velocity = np.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        # a float32 position is compared with the goal as float32 (NumPy's rule for a Python float beside a float32)
        reached = np.where(self.fresh, position >= self.goal_position, position.astype(f32) >= f32(self.goal_position))
        terminated = reached & (velocity >= self.goal_velocity)
        rewards = np.where(terminated, 100.0, 0.0) - np.power(action.astype(np.float64), 2) * 0.1
        self.state = np.stack([position, velocity], axis=1).astype(f32).astype(np.float64)
        self.fresh[:] = False
        return rewards, terminated


def _square(x: np.ndarray) -> np.ndarray:
    """``x ** 2`` as a NumPy float64 *scalar* computes it (C's ``pow``), which is not always ``x * x`` (what ``**`` on an
    array gives): 11 in 10,000 values differed here."""
    return np.float_power(x, np.full_like(x, 2.0))


class AcrobotEnvs(NumpyEnvs):
    """Acrobot-v1 (gymnasium's ``AcrobotEnv``, "book" dynamics, no torque noise, 500-step time limit): its Runge-Kutta
    step on every environment at once; state (theta1, theta2, dtheta1, dtheta2), float32 after a reset, float64 after
    a step (as gymnasium's, whose first step widens it)."""

    state_dim = 4

    def _configure(self, env: Any) -> None:
        if env.torque_noise_max > 0 or env.book_or_nips != "book":
            raise ValueError("AcrobotEnvs reproduces the default Acrobot-v1 only (no torque noise, book dynamics)")
        self.dt = env.dt
        self.m1, self.m2, self.l1 = env.LINK_MASS_1, env.LINK_MASS_2, env.LINK_LENGTH_1
        self.lc1, self.lc2, self.moi = env.LINK_COM_POS_1, env.LINK_COM_POS_2, env.LINK_MOI
        self.max_vel_1, self.max_vel_2 = env.MAX_VEL_1, env.MAX_VEL_2
        self.torques = np.array(env.AVAIL_TORQUE, dtype=np.float64)
        self.fresh = np.ones(0, dtype=bool)

    def _reset_one(self, i: int) -> None:
        if len(self.fresh) != self.num_envs:
            self.fresh = np.ones(self.num_envs, dtype=bool)
        self.state[i] = self.rngs[i].uniform(low=-0.1, high=0.1, size=(4,)).astype(np.float32)
        self.fresh[i] = True
        self.steps[i] = 0

    def _observations(self) -> np.ndarray:
        s = self.state.T
        s32 = s.astype(np.float32)  # a state fresh from a reset is float32: its cos and sin are float32's
        cos0, sin0 = np.where(self.fresh, np.cos(s32[0]), np.cos(s[0])), np.where(self.fresh, np.sin(s32[0]), np.sin(s[0]))
        cos1, sin1 = np.where(self.fresh, np.cos(s32[1]), np.cos(s[1])), np.where(self.fresh, np.sin(s32[1]), np.sin(s[1]))
        return np.stack([cos0, sin0, cos1, sin1, s[2], s[3]], axis=1).astype(np.float32)

    def _dsdt(self, y: np.ndarray) -> np.ndarray:
        """gymnasium's ``_dsdt`` on rows: y (N, 5) = (theta1, theta2, dtheta1, dtheta2, torque)."""
        m1, m2, l1, lc1, lc2 = self.m1, self.m2, self.l1, self.lc1, self.lc2
        i1 = i2 = self.moi
        g = 9.8
        theta1, theta2, dtheta1, dtheta2, a = y.T
        pi = np.pi
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * np.cos(theta2)) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * np.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * np.cos(theta1 + theta2 - pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * _square(dtheta2) * np.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * np.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * np.cos(theta1 - pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * _square(dtheta1) * np.sin(theta2) - phi2) / (
            m2 * lc2**2 + i2 - _square(d2) / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return np.stack([dtheta1, dtheta2, ddtheta1, ddtheta2, np.zeros_like(a)], axis=1)

    def _dynamics(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torque = self.torques[actions.reshape(self.num_envs).astype(np.int64)]
        y0 = np.concatenate([self.state, torque[:, None]], axis=1)
        dt = self.dt - 0  # gymnasium's rk4 over t = [0, dt]
        dt2 = dt / 2.0
        k1 = self._dsdt(y0)
        k2 = self._dsdt(y0 + dt2 * k1)
        k3 = self._dsdt(y0 + dt2 * k2)
        k4 = self._dsdt(y0 + dt * k3)
        ns = (y0 + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4))[:, :4]
        for column in (0, 1):  # wrap into [-pi, pi]
            x = ns[:, column]
            while (x > np.pi).any():
                x = np.where(x > np.pi, x - 2 * np.pi, x)
            while (x < -np.pi).any():
                x = np.where(x < -np.pi, x + 2 * np.pi, x)
            ns[:, column] = x
        ns[:, 2] = np.minimum(np.maximum(ns[:, 2], -self.max_vel_1), self.max_vel_1)
        ns[:, 3] = np.minimum(np.maximum(ns[:, 3], -self.max_vel_2), self.max_vel_2)
        self.state = ns
        self.fresh[:] = False
        terminated = -np.cos(ns[:, 0]) - np.cos(ns[:, 1] + ns[:, 0]) > 1.0
        return np.where(terminated, 0.0, -1.0), terminated
