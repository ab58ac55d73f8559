"""The population trainer: K PPO runs of equal shapes trained together, one forward pass and one optimiser step
for all of them, each member a solo run's mathematics with its own seeds and random streams."""

from __future__ import annotations

import copy
import pickle
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import is_image_space
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_variants.algorithm import VariantPPO
from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.hyperparams import make_model, parse_policy_kwargs, split_hyperparams
from sb3_ppo_variants.kl import distribution_param_dim
from sb3_ppo_variants.population.distributions import stacked_distribution
from sb3_ppo_variants.population.policy import StackedActorCritic, StackedAdam
from sb3_ppo_variants.population.trainer import MemberCoefficients, RolloutData, compute_gae, update
from sb3_ppo_variants.population.vec_env import MemberNormalizer, make_member_envs
from sb3_ppo_variants.schedules import ConstantSchedule

__all__ = ["STRUCTURAL_SETTINGS", "Population", "PopulationCallback", "PopulationEvalCallback"]

#: Settings that fix shapes or loops: equal across a population's members.
STRUCTURAL_SETTINGS = (
    "n_envs",
    "n_steps",
    "batch_size",
    "n_epochs",
    "normalize_advantage",
    "policy",
    "policy_kwargs",
    "normalize",
    "normalize_kwargs",
    "env_kwargs",
)
_SOLO_ONLY = "train it as a solo run (one model per process) instead"


@contextmanager
def _global_rng_kept() -> Iterator[None]:
    """SB3 seeds the global random generators when it builds a model; keep the caller's streams as they were."""
    state = th.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        yield
    finally:
        th.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])


@dataclass
class _Member:
    """One member: its variant, seed, the rl-zoo3 entry it would be built from solo, and a model holding its
    validated settings (built without environment or networks)."""

    index: int
    variant: str
    seed: int
    entry: dict[str, Any]
    settings: dict[str, Any]
    template: VariantPPO

    @property
    def label(self) -> str:
        return f"member {self.index} ({self.variant}, seed {self.seed})"


def _resolve_members(members: list[dict[str, Any]], hyperparams: dict[str, Any] | None) -> list[_Member]:
    from sb3_ppo_variants import VARIANTS

    if not isinstance(members, (list, tuple)) or not members:
        raise ValueError(
            f"members must be a non-empty list of dicts such as {{'variant': 'clip', 'seed': 0}}, got {members!r}"
        )
    base = dict(hyperparams or {})
    resolved = []
    for index, member in enumerate(members):
        if not isinstance(member, dict):
            raise TypeError(f"member {index} must be a dict such as {{'variant': 'clip', 'seed': 0}}, got {member!r}")
        overrides = dict(member)
        variant = overrides.pop("variant", "clip")
        plain = [name for name, cls in VARIANTS.items() if issubclass(cls, VariantPPO)]
        if variant not in plain:
            hosted = " (variants on sb3-contrib's hosts run solo)" if variant in VARIANTS else ""
            raise ValueError(f"member {index}: variant must be one of {plain}{hosted}, got {variant!r}")
        if "seed" not in overrides:
            raise ValueError(f"member {index} ({variant}): seed is required (an int)")
        seed = overrides.pop("seed")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"member {index} ({variant}): seed must be an int, got {seed!r}")
        label = f"member {index} ({variant}, seed {seed})"
        for key in ("device", "env", "_init_setup_model", "verbose", "tensorboard_log"):
            if key in overrides:
                raise ValueError(f"{label}: {key!r} is a setting of the Population, not of a member")
        entry = {**base, **overrides}
        model_kwargs, settings = split_hyperparams(entry)
        if settings.get("frame_stack"):
            raise ValueError(f"{label}: frame_stack is not supported in a population; {_SOLO_ONLY}")
        for key in ("use_sde", "rollout_buffer_class", "rollout_buffer_kwargs"):
            if model_kwargs.get(key):
                raise ValueError(f"{label}: {key}={model_kwargs[key]!r} is not supported in a population; {_SOLO_ONLY}")
        policy = settings.get("policy", "MlpPolicy")
        if policy not in ("MlpPolicy", ActorCriticPolicy):
            raise ValueError(f"{label}: policy must be 'MlpPolicy' in a population, got {policy!r}; {_SOLO_ONLY}")
        try:
            template: VariantPPO = VARIANTS[variant](  # type: ignore[assignment]  # a plain variant (checked above)
                "MlpPolicy",
                None,  # type: ignore[arg-type]  # settings only: no environment, no networks
                seed=int(seed),
                device="cpu",
                _init_setup_model=False,
                **model_kwargs,
            )
        except (TypeError, ValueError) as error:
            raise type(error)(f"{label}: {error}") from None
        settings = {
            "n_envs": int(settings.get("n_envs", 1)),
            "policy": "MlpPolicy",
            "normalize": settings.get("normalize", False),
            "normalize_kwargs": settings.get("normalize_kwargs"),
            "env_kwargs": settings.get("env_kwargs"),
            "n_steps": template.n_steps,
            "batch_size": template.batch_size,
            "n_epochs": template.n_epochs,
            "normalize_advantage": template.normalize_advantage,
            "policy_kwargs": template.policy_kwargs,
        }
        resolved.append(_Member(index, variant, int(seed), entry, settings, template))
    for name in STRUCTURAL_SETTINGS:
        values = [m.settings[name] for m in resolved]
        if any(value != values[0] for value in values[1:]):
            groups: dict[str, list[int]] = {}
            for m, value in zip(resolved, values):
                groups.setdefault(repr(value), []).append(m.index)
            listing = "; ".join(f"{value} for members {indices}" for value, indices in groups.items())
            raise ValueError(f"{name} must be equal across a population's members (it fixes shapes or loops); got {listing}")
    return resolved


def check_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> None:
    """Raise a ``ValueError`` for spaces a population cannot train: flat Box observations and Discrete, Box,
    MultiDiscrete or MultiBinary actions are supported."""
    if not isinstance(observation_space, spaces.Box) or is_image_space(observation_space):
        raise ValueError(
            f"observation space {observation_space} is not supported in a population (flat Box observations "
            f"with MlpPolicy are); {_SOLO_ONLY}"
        )
    stacked_distribution(action_space)  # raises for an action space it has no distribution for


def check_policy_kwargs(policy_kwargs: dict[str, Any]) -> None:
    extractor = policy_kwargs.get("features_extractor_class", FlattenExtractor)
    if extractor is not FlattenExtractor:
        raise ValueError(
            f"policy_kwargs features_extractor_class={extractor!r} is not supported in a population; {_SOLO_ONLY}"
        )
    optimizer = policy_kwargs.get("optimizer_class", th.optim.Adam)
    if optimizer is not th.optim.Adam:
        raise ValueError(f"policy_kwargs optimizer_class={optimizer!r}: a population trains with Adam only; {_SOLO_ONLY}")
    unknown = set(policy_kwargs.get("optimizer_kwargs") or {}) - {"eps", "betas"}
    if unknown:
        raise ValueError(
            f"policy_kwargs optimizer_kwargs {sorted(unknown)} are not supported in a population (eps, betas are)"
        )


class PopulationCallback:
    """Called by :meth:`Population.learn` before the first rollout and after each policy update of the population;
    returning False stops training (from ``on_learn_start``: before any rollout)."""

    def on_learn_start(self, population: Population) -> bool:
        return True

    def on_update(self, population: Population) -> bool:
        return True


class PopulationEvalCallback(PopulationCallback):
    """Evaluate every member (:meth:`Population.evaluate`) once the members' timesteps reach each of ``eval_points``
    (0: before training), as a solo run advanced point by point is evaluated (whole rollouts: a point is evaluated
    after the first update that reaches it).

    :param eval_points: member timesteps at which to evaluate (e.g. ``evaluation_points(total, n)``), >= 0
    :param n_eval_episodes: deterministic episodes per member and evaluation
    :param on_evaluation: ``on_evaluation(timestep, scores)`` after each evaluation, ``scores`` (K,); returning
        False stops training (a tuner's pruning); an exception propagates out of ``learn()``
    :attr timesteps: the points evaluated so far
    :attr reached: the members' timesteps when each point was evaluated
    :attr scores: (points evaluated, K) mean returns
    """

    def __init__(
        self,
        eval_points: list[int],
        n_eval_episodes: int = 10,
        on_evaluation: Callable[[int, np.ndarray], bool | None] | None = None,
    ):
        points = sorted(int(p) for p in eval_points)
        if not points or points[0] < 0:
            raise ValueError(f"eval_points must be a non-empty list of timesteps >= 0, got {eval_points!r}")
        self.eval_points = points
        self.n_eval_episodes = n_eval_episodes
        self.on_evaluation = on_evaluation
        self.timesteps: list[int] = []
        self.reached: list[int] = []
        self._scores: list[np.ndarray] = []

    @property
    def scores(self) -> np.ndarray:
        return np.array(self._scores)

    def on_learn_start(self, population: Population) -> bool:
        return self.on_update(population)

    def on_update(self, population: Population) -> bool:
        pending = [p for p in self.eval_points if p <= population.num_timesteps and p not in self.timesteps]
        for point in pending:
            scores = population.evaluate(self.n_eval_episodes)
            self.timesteps.append(point)
            self.reached.append(population.num_timesteps)
            self._scores.append(scores)
            if self.on_evaluation is not None and self.on_evaluation(point, scores) is False:
                return False
        return True


class Population:
    """K PPO runs trained together: their parameters stacked into (K, ...) tensors, one forward pass and one Adam
    step for all of them. Member k is a solo run of its variant and seed, term for term (SB3's GAE with the
    time-limit bootstrap, per-minibatch advantage normalisation, ``target_kl`` early stopping, its own KL
    controller), with its own environments (seeded as ``make_vec_env`` seeds a solo run), its own random streams
    (a torch and a numpy generator) and its own VecNormalize statistics, so its result does not depend on its
    companions.

    :param env_id: gymnasium id
    :param members: one dict per member: ``{"variant": VARIANTS key (default "clip"), "seed": int, **overrides}``;
        overrides are constructor arguments or rl-zoo3 entry keys and take precedence over ``hyperparams``
    :param hyperparams: rl-zoo3 style entry (as :func:`sb3_ppo_variants.hyperparams.make_model` takes)
    :param device: as in SB3 (``"auto"``, ``"cpu"``, ``"cuda"``)
    :param verbose: 1 prints each member's train/ values after each update
    """

    def __init__(
        self,
        env_id: str,
        members: list[dict[str, Any]],
        hyperparams: dict[str, Any] | None = None,
        device: th.device | str = "auto",
        verbose: int = 0,
    ):
        self.env_id = env_id
        self.member_specs = copy.deepcopy(list(members)) if isinstance(members, (list, tuple)) else members
        self.hyperparams = copy.deepcopy(hyperparams)
        self._members = _resolve_members(members, hyperparams)
        first = self._members[0]
        self.n_members = len(self._members)
        self.n_envs = first.settings["n_envs"]
        self.n_steps = first.template.n_steps
        self.batch_size = first.template.batch_size
        self.n_epochs = first.template.n_epochs
        self.normalize_advantage = first.template.normalize_advantage
        self.policy_kwargs = dict(first.template.policy_kwargs or {})
        check_policy_kwargs(self.policy_kwargs)
        try:
            gym.spec(env_id)
        except gym.error.Error as error:
            raise ValueError(f"env {env_id!r} is not a registered gymnasium environment: {error}") from None
        self.device = get_device(device)
        self.verbose = verbose

        self.envs = make_member_envs(env_id, [m.seed for m in self._members], self.n_envs, first.settings["env_kwargs"])
        self.observation_space, self.action_space = self.envs.observation_space, self.envs.action_space
        check_spaces(self.observation_space, self.action_space)
        self.distribution = stacked_distribution(self.action_space)
        self.normalizer: MemberNormalizer | None = None
        normalize = first.settings["normalize"]
        if normalize:
            kwargs = dict(first.settings["normalize_kwargs"] or {})
            if isinstance(normalize, str):
                kwargs.update(parse_policy_kwargs(normalize))
            self.normalizer = MemberNormalizer(self.n_members, self.n_envs, (self.obs_dim,), **kwargs)

        policies = []
        for member in self._members:
            with _global_rng_kept():
                th.manual_seed(member.seed)  # as SB3's _setup_model seeds before building the policy
                policies.append(
                    ActorCriticPolicy(
                        self.observation_space, self.action_space, ConstantSchedule(0.0), use_sde=False, **self.policy_kwargs
                    )
                )
        self.policy = StackedActorCritic(policies, self.distribution, self.device)
        optimizer_kwargs = self.policy_kwargs.get("optimizer_kwargs") or {}
        self.optimizer = StackedAdam(
            self.policy.parameters(),
            betas=tuple(optimizer_kwargs.get("betas", (0.9, 0.999))),
            eps=optimizer_kwargs.get("eps", 1e-5),
        )
        self.torch_generators = [th.Generator(device=self.device).manual_seed(m.seed) for m in self._members]
        self.numpy_generators = [np.random.default_rng(m.seed) for m in self._members]
        self.num_timesteps = 0
        self.n_updates = np.zeros(self.n_members, dtype=np.int64)
        self.episode_returns: list[list[float]] = [[] for _ in self._members]
        self.episode_timesteps: list[list[int]] = [[] for _ in self._members]
        self.logs: list[dict[str, float]] = [{} for _ in self._members]
        self._progress_remaining = 1.0
        self._last_obs: np.ndarray | None = None
        self._last_episode_starts = np.ones(self.n_members * self.n_envs, dtype=bool)
        self._episode_return = np.zeros(self.n_members * self.n_envs)
        self._episode_length = np.zeros(self.n_members * self.n_envs, dtype=np.int64)
        self._eval_envs: Any = None
        self._eval_generators: list[th.Generator] | None = None
        self._gamma = th.tensor([float(m.template.gamma) for m in self._members], device=self.device)
        self._gae_lambda = th.tensor([float(m.template.gae_lambda) for m in self._members], device=self.device)

    @property
    def obs_dim(self) -> int:
        return int(np.prod(self.observation_space.shape or ()))

    @property
    def seeds(self) -> list[int]:
        return [m.seed for m in self._members]

    @property
    def variants(self) -> list[str]:
        return [m.variant for m in self._members]

    # ---------------------------------------------------------------- collection

    def _noise(self) -> th.Tensor:
        """Each member's sampling noise for a whole rollout, from its own generator: (K, n_steps, n_envs, d)."""
        shape = (self.n_steps, self.n_envs, self.distribution.noise_dim)
        draws = []
        for generator in self.torch_generators:
            noise = th.empty(shape, device=self.device)
            draws.append(
                noise.normal_(generator=generator)
                if self.distribution.gaussian_noise
                else noise.exponential_(generator=generator)
            )
        return th.stack(draws)

    def _obs_tensor(self, obs: np.ndarray) -> th.Tensor:
        return th.as_tensor(obs, device=self.device).view(self.n_members, -1, self.obs_dim)

    def _reset(self) -> None:
        raw = self.envs.reset()
        if self.normalizer is not None:
            self.normalizer.returns[:] = 0
            raw = self.normalizer.observe(raw)
        self._last_obs = raw
        self._last_episode_starts = np.ones(self.n_members * self.n_envs, dtype=bool)
        self._episode_return[:] = 0
        self._episode_length[:] = 0

    @th.no_grad()
    def _collect(self, on_step: Callable[[], None] | None = None) -> RolloutData:
        assert self._last_obs is not None
        k, t_max, e = self.n_members, self.n_steps, self.n_envs
        dist = self.distribution
        noise = self._noise()
        obs_buf = th.zeros((k, t_max, e, self.obs_dim), device=self.device)
        act_buf = th.zeros((k, t_max, e, dist.action_dim), device=self.device)
        params_buf = th.zeros((k, t_max, e, distribution_param_dim(self.action_space)), device=self.device)
        rewards_buf = th.zeros((k, t_max, e), device=self.device)
        starts_buf = th.zeros((k, t_max, e), device=self.device)
        values_buf = th.zeros((k, t_max, e), device=self.device)
        log_prob_buf = th.zeros((k, t_max, e), device=self.device)
        gamma = self._gamma.unsqueeze(1)
        for step in range(t_max):
            obs = self._obs_tensor(self._last_obs)
            params, values = self.policy.forward(obs)
            actions = dist.sample(params, noise[:, step])
            log_prob = dist.log_prob(params, actions)
            raw_obs, raw_rewards, terminated, truncated, terminal = self.envs.step(dist.env_actions(actions))
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
                terminal_values = self.policy.values(self._obs_tensor(terminal))
                mask = th.as_tensor(bootstrap, device=self.device).view(k, e)
                rewards_t = th.where(mask, rewards_t + gamma * terminal_values, rewards_t)
            obs_buf[:, step] = obs
            act_buf[:, step] = actions
            params_buf[:, step] = params
            rewards_buf[:, step] = rewards_t
            starts_buf[:, step] = th.as_tensor(self._last_episode_starts, device=self.device).view(k, e).float()
            values_buf[:, step] = values
            log_prob_buf[:, step] = log_prob
            self._last_obs = new_obs
            self._last_episode_starts = dones
            if on_step is not None:
                on_step()
        last_values = self.policy.values(self._obs_tensor(self._last_obs))
        dones_t = th.as_tensor(self._last_episode_starts, device=self.device).view(k, e)
        advantages, returns = compute_gae(
            rewards_buf, values_buf, starts_buf, last_values, dones_t, self._gamma, self._gae_lambda
        )
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

    def _record_episodes(self, rewards: np.ndarray, dones: np.ndarray) -> None:
        self._episode_return += rewards
        self._episode_length += 1
        for index in np.flatnonzero(dones):
            member = int(index) // self.n_envs
            self.episode_returns[member].append(round(float(self._episode_return[index]), 6))  # as Monitor records it
            self.episode_timesteps[member].append(self.num_timesteps)
            self._episode_return[index] = 0.0
            self._episode_length[index] = 0

    # ---------------------------------------------------------------- update

    def coefficients(self, progress_remaining: float) -> MemberCoefficients:
        """Every member's settings for an update at ``progress_remaining`` (see :meth:`MemberCoefficients.at`)."""
        return MemberCoefficients.at([m.template for m in self._members], progress_remaining, self.device)

    @property
    def kl_controllers(self) -> list[Any]:
        """Each member's KL controller (None without a KL penalty); ``kl_controllers[k].value`` is its beta."""
        return [m.template.kl_controller for m in self._members]

    def _minibatch_orders(self) -> list[np.ndarray]:
        size = self.n_steps * self.n_envs
        return [np.stack([rng.permutation(size) for rng in self.numpy_generators]) for _ in range(self.n_epochs)]

    def _train(self, data: RolloutData) -> None:
        progress = self._progress_remaining
        coefficients = self.coefficients(progress)
        stats = update(
            self.policy,
            self.optimizer,
            data,
            coefficients,
            self._minibatch_orders(),
            self.batch_size,
            self.normalize_advantage,
        )
        self.n_updates += stats["n_epochs_run"]
        for k, (member, controller) in enumerate(zip(self._members, self.kl_controllers)):
            if controller is not None:
                controller.end_update(float(stats["kl"][k]), n_steps=self.n_steps * self.n_envs)
            log = {f"train/{name}": float(values[k]) for name, values in stats.items() if name != "n_epochs_run"}
            log["train/n_updates"] = int(self.n_updates[k])
            log["train/kl_coef"] = float(coefficients.kl_coef[k])
            log["train/ent_coef"] = float(coefficients.ent_coef[k])
            if member.template.surrogate != "unclipped":
                log["train/clip_range"] = float(coefficients.clip_range[k])
            if member.template.clip_range_vf is not None and coefficients.clip_range_vf is not None:
                log["train/clip_range_vf"] = float(coefficients.clip_range_vf[k])
            if controller is None:
                log.pop("train/kl_penalty", None)
            self.logs[k] = log
            if self.verbose >= 1:
                print(f"{member.label}: " + ", ".join(f"{key}={value:.4g}" for key, value in log.items()))

    # ---------------------------------------------------------------- public API

    def learn(
        self,
        total_timesteps: int,
        callback: PopulationCallback | None = None,
        progress_bar: bool = False,
        reset_num_timesteps: bool = True,
    ) -> Population:
        """Train every member for ``total_timesteps`` of its own (whole rollouts, as SB3 rounds them).

        :param total_timesteps: per member; schedules see the progress over this budget
        :param callback: a :class:`PopulationCallback` (e.g. :class:`PopulationEvalCallback`)
        :param progress_bar: a tqdm/rich bar over the population's steps (all members together), as SB3's
        :param reset_num_timesteps: False continues counting (and the schedules' budget) as SB3's ``learn`` does
        """
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be an int >= 1, got {total_timesteps!r}")
        if reset_num_timesteps:
            self.num_timesteps = 0
        total = int(total_timesteps) + (0 if reset_num_timesteps else self.num_timesteps)
        if reset_num_timesteps or self._last_obs is None:
            self._reset()
        bar = None
        if progress_bar:
            try:
                from tqdm.rich import tqdm
            except ImportError as error:
                raise ImportError(
                    "You must install tqdm and rich in order to use the progress bar callback. "
                    "It is included if you install stable-baselines3 with the extra packages: "
                    "`pip install stable-baselines3[extra]`"
                ) from error
            bar = tqdm(total=total * self.n_members, initial=self.num_timesteps * self.n_members)
        step_size = self.n_envs * self.n_members
        on_step = None if bar is None else (lambda: bar.update(step_size))
        running = callback is None or callback.on_learn_start(self) is not False
        try:
            while running and self.num_timesteps < total:
                data = self._collect(on_step)
                self._progress_remaining = min(1.0, max(0.0, 1.0 - self.num_timesteps / total))
                self._train(data)
                running = callback is None or callback.on_update(self) is not False
        finally:
            if bar is not None:
                bar.close()
        return self

    @th.no_grad()
    def evaluate(self, n_eval_episodes: int = 10, deterministic: bool = True) -> np.ndarray:
        """Each member's mean return over ``n_eval_episodes`` episodes on its own evaluation environment, seeded
        ``seed + EVAL_SEED_OFFSET`` at its first use (as ``SeededRun.evaluate`` does with ``evaluate_policy``),
        with the member's VecNormalize observation statistics and raw rewards.

        :return: (K,) mean returns
        """
        if isinstance(n_eval_episodes, bool) or not isinstance(n_eval_episodes, (int, np.integer)) or n_eval_episodes < 1:
            raise ValueError(f"n_eval_episodes must be an int >= 1, got {n_eval_episodes!r}")
        if self._eval_envs is None:
            seeds = [m.seed + EVAL_SEED_OFFSET for m in self._members]
            self._eval_envs = make_member_envs(self.env_id, seeds, 1, self._members[0].settings["env_kwargs"])
            self._eval_generators = [th.Generator(device=self.device).manual_seed(s) for s in seeds]
        obs = self._eval_envs.reset()
        returns = np.zeros(self.n_members)
        episodes: list[list[float]] = [[] for _ in self._members]
        # A member that has its episodes goes on stepping until every member has theirs; what those extra steps draw
        # (initial states, sampling noise) is rolled back afterwards, so that its next evaluation starts where a solo
        # evaluate_policy would have left it, whatever its companions.
        done_states: list[Any] = [None] * self.n_members
        while min(len(e) for e in episodes) < n_eval_episodes:
            normalized = obs if self.normalizer is None else self.normalizer.normalize_obs(obs)
            params, _ = self.policy.forward(self._obs_tensor(normalized))
            if deterministic:
                actions = self.distribution.mode(params)
            else:
                assert self._eval_generators is not None
                noise = th.stack(
                    [
                        th.empty((1, self.distribution.noise_dim), device=self.device).normal_(generator=g)
                        if self.distribution.gaussian_noise
                        else th.empty((1, self.distribution.noise_dim), device=self.device).exponential_(generator=g)
                        for g in self._eval_generators
                    ]
                )
                actions = self.distribution.sample(params, noise)
            obs, rewards, terminated, truncated, _ = self._eval_envs.step(self.distribution.env_actions(actions))
            returns += rewards
            for k in np.flatnonzero(terminated | truncated):
                if len(episodes[k]) < n_eval_episodes:
                    episodes[k].append(float(returns[k]))
                    if len(episodes[k]) == n_eval_episodes:
                        generator = None if self._eval_generators is None else self._eval_generators[k].get_state()
                        done_states[k] = (self._eval_envs.rng_state(int(k)), generator)
                returns[k] = 0.0
        for member, (env_state, generator_state) in enumerate(done_states):
            self._eval_envs.set_rng_state(member, env_state)
            if generator_state is not None and self._eval_generators is not None:
                self._eval_generators[member].set_state(generator_state)
        return np.array([np.mean(e) for e in episodes])

    def models(self) -> list[BaseAlgorithm]:
        """The members as ordinary SB3 models of their variants' classes, built as a solo run of the member's seed
        would be (``make_model``) and given the member's weights, Adam state, KL controller, timesteps and
        VecNormalize statistics: ``save``, ``load``, ``predict``, ``evaluate_policy`` and ``learn`` work on them."""
        result: list[BaseAlgorithm] = []
        for k, member in enumerate(self._members):
            with _global_rng_kept():
                model = make_model(member.variant, self.env_id, member.entry, seed=member.seed, device=self.device)
            assert isinstance(model, VariantPPO)
            model.policy.load_state_dict(self.policy.member_state_dict(k), strict=True)
            state = self.optimizer.member_state(k)
            if state["step"] > 0:
                optimizer = model.policy.optimizer
                saved = optimizer.state_dict()
                exp_avg = self.policy.to_member_layout(state["exp_avg"][0]).values()
                exp_avg_sq = self.policy.to_member_layout(state["exp_avg_sq"][0]).values()
                saved["state"] = {
                    i: {"step": th.tensor(state["step"]), "exp_avg": m.to(self.device), "exp_avg_sq": v.to(self.device)}
                    for i, (m, v) in enumerate(zip(exp_avg, exp_avg_sq))
                }
                optimizer.load_state_dict(saved)
            model.kl_controller = copy.deepcopy(self.kl_controllers[k])
            model.num_timesteps = self.num_timesteps
            model._n_updates = int(self.n_updates[k])
            env = model.get_env()
            if self.normalizer is not None and isinstance(env, VecNormalize):
                env.obs_rms = self.normalizer.obs_rms[k].copy()  # type: ignore[assignment]
                env.ret_rms = self.normalizer.ret_rms[k].copy()
            result.append(model)
        return result

    def close(self) -> None:
        """Close the training and evaluation environments."""
        self.envs.close()
        if self._eval_envs is not None:
            self._eval_envs.close()

    def save(self, path: str | Path) -> None:
        """Save the whole population (parameters, Adam states, KL controllers, normalisation statistics, random
        streams, counters and the environments' state), so that :meth:`load` resumes where it stopped.

        Environments whose state does not pickle (Box2D's) are not saved: a loaded population then starts new
        episodes on fresh environments (seeded as at the start), as a loaded SB3 model does on a new env."""
        envs: dict[str, Any] = {"envs": self.envs, "_eval_envs": self._eval_envs}
        resumable = self.envs.resumable and (self._eval_envs is None or self._eval_envs.resumable)
        try:
            pickle.dumps(envs)
        except Exception:  # an environment that does not pickle
            resumable = False
        if not resumable:
            envs = {"_last_obs": None}  # fresh environments, reset (and seeded as at the start) by the next learn()
        state = {
            "env_id": self.env_id,
            "members": self.member_specs,
            "hyperparams": self.hyperparams,
            "verbose": self.verbose,
            "params": self.policy.flat.detach().cpu(),
            "adam": self.optimizer.state(),
            "torch_generators": [g.get_state() for g in self.torch_generators],
            "numpy_generators": [rng.bit_generator.state for rng in self.numpy_generators],
            "kl_controllers": self.kl_controllers,
            "plain": {
                name: getattr(self, name)
                for name in (
                    "normalizer",
                    "num_timesteps",
                    "n_updates",
                    "episode_returns",
                    "episode_timesteps",
                    "logs",
                    "_progress_remaining",
                    "_last_obs",
                    "_last_episode_starts",
                    "_episode_return",
                    "_episode_length",
                )
            },
            "envs": envs,
        }
        th.save(state, path)

    @classmethod
    def load(cls, path: str | Path, device: th.device | str = "auto") -> Population:
        """A population saved with :meth:`save`, ready to ``learn(..., reset_num_timesteps=False)`` on."""
        state = th.load(path, map_location="cpu", weights_only=False)
        population = cls(state["env_id"], state["members"], state["hyperparams"], device=device, verbose=state["verbose"])
        with th.no_grad():
            population.policy.flat.copy_(state["params"])
        population.optimizer.load_state(state["adam"])
        for generator, saved in zip(population.torch_generators, state["torch_generators"]):
            generator.set_state(saved)
        for rng, saved in zip(population.numpy_generators, state["numpy_generators"]):
            rng.bit_generator.state = saved
        for member, controller in zip(population._members, state["kl_controllers"]):
            member.template.kl_controller = controller
        population.__dict__.update(state["plain"])
        if "envs" in state["envs"]:
            population.envs.close()
        population.__dict__.update(state["envs"])
        return population
