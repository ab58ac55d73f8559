"""The population's facade: K PPO runs of equal shapes trained together, one forward pass and one optimiser step for
all of them, each member a solo run's mathematics with its own seeds and random streams.

The concerns live apart: the members and their settings (:mod:`.members`), the collection state (:mod:`.collection`),
the update (:mod:`.trainer`), the stacked networks and Adam (:mod:`.policy`), the environments (:mod:`.vec_env`).
"""

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
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.utils import get_device
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_variants.algorithm import NonFiniteLossError, VariantPPO
from sb3_ppo_variants.controllers import KLController
from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.hyperparams import make_model, parse_policy_kwargs
from sb3_ppo_variants.population.allocator import retain_freed_memory
from sb3_ppo_variants.population.collection import Collector
from sb3_ppo_variants.population.distributions import stacked_distribution
from sb3_ppo_variants.population.members import (
    STRUCTURAL_SETTINGS,
    MemberFailure,
    MemberStreams,
    check_policy_kwargs,
    check_spaces,
    resolve_members,
)
from sb3_ppo_variants.population.policy import StackedActorCritic, StackedAdam
from sb3_ppo_variants.population.trainer import FAILURE_CHECKS, MemberCoefficients, RolloutData, update
from sb3_ppo_variants.population.vec_env import MemberNormalizer, make_member_envs
from sb3_ppo_variants.schedules import ConstantSchedule

__all__ = [
    "STRUCTURAL_SETTINGS",
    "MemberFailure",
    "Population",
    "PopulationCallback",
    "PopulationEvalCallback",
    "PopulationState",
    "check_policy_kwargs",
    "check_spaces",
]


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


@dataclass
class PopulationState:
    """Everything a population learned and where it stands: what :meth:`Population.save` writes and
    :meth:`Population.load` restores (CPU tensors, numpy arrays and plain objects).

    :attr env_id: the gymnasium id; ``members``, ``hyperparams``, ``verbose``: the constructor's arguments
    :attr params: (K, P) the stacked parameters
    :attr adam: the optimiser's state (:meth:`StackedAdam.state`)
    :attr streams: per member, its generators' states (:meth:`MemberStreams.state`)
    :attr kl_controllers: per member, its KL controller (None without a penalty)
    :attr n_updates: (K,) epochs run, SB3's ``_n_updates``
    :attr logs: per member, the train/ values of its last update
    :attr failures: per member, None or its :class:`MemberFailure`
    :attr progress_remaining: of the last update
    :attr collection: the collection state (:meth:`Collector.state`)
    :attr envs: the training and evaluation environments, or None when they do not pickle (Box2D's): a loaded
        population then starts new episodes on fresh environments, seeded as at the start
    """

    env_id: str
    members: list[dict[str, Any]]
    hyperparams: dict[str, Any] | None
    verbose: int
    params: th.Tensor
    adam: dict[str, Any]
    streams: list[dict[str, Any]]
    kl_controllers: list[Any]
    n_updates: np.ndarray
    logs: list[dict[str, float]]
    failures: list[MemberFailure | None]
    progress_remaining: float
    collection: dict[str, Any]
    envs: dict[str, Any] | None


class Population:
    """K PPO runs trained together: their parameters stacked into (K, ...) tensors, one forward pass and one Adam
    step for all of them. Member k is a solo run of its settings, term for term (SB3's GAE with the time-limit
    bootstrap, per-minibatch advantage normalisation, ``target_kl`` early stopping, its own KL controller), with its
    own environments (seeded ``seed + i`` as ``make_vec_env`` seeds a solo run) and its own VecNormalize statistics.

    Independence: on the CPU, a member's parameters, logs and episodes after ``learn()`` are identical, bit for bit,
    whether it trains alone or among any companions (tested with ``torch.equal``). Its other random streams (weight
    init, action noise, minibatch order, evaluation noise) come from ``numpy.random.SeedSequence(seed).spawn(4)``, so no
    two coincide; they are not SB3's streams, so a member's numbers differ from a solo SB3 run's of the same seed,
    while their distributions agree (``benchmarks/population_learning.py``). On a GPU, kernels may differ with K.

    Failures: a member whose loss terms, gradient or next parameters go non-finite stops updating, keeping its last
    finite parameters; ``failures[k]`` records why and when. The others train on, unchanged. ``learn()`` raises
    ``NonFiniteLossError`` only when every member has failed. A failed member's ``episode_returns`` end at its failure,
    :meth:`evaluate` gives it NaN, and :meth:`models` gives its last finite parameters with ``model.failure`` set.

    Not members: ``kl_reference`` (a ``ValueError``: the members' KL is to the policy that collected the rollout),
    gSDE, other policies than ``MlpPolicy``, frame stacking -- train those solo.

    :param env_id: gymnasium id
    :param members: one dict per member: ``{"variant": name (default "clip"), "seed": int, **settings}``; ``variant``
        is a plain ``VARIANTS`` key or ``"variant_ppo"`` (every switch free); settings are ``VariantPPO`` constructor
        arguments (``surrogate``, ``kl_penalty``, ``kl_coef``, ``kl_target``, ``kl_estimator``, ``kl_direction``,
        ``dual_clip``, ``clip_range``, ...) or rl-zoo3 entry keys, and take precedence over ``hyperparams``
    :param hyperparams: rl-zoo3 style entry (as :func:`sb3_ppo_variants.hyperparams.make_model` takes)
    :param device: as in SB3 (``"auto"``, ``"cpu"``, ``"cuda"``); on the CPU the population calls
        :func:`~sb3_ppo_variants.population.retain_freed_memory` (glibc's allocator keeps freed memory in the process)
    :param verbose: 1 prints each member's train/ values after each update
    :attr failures: per member, None while it trains, else a :class:`MemberFailure` (``str()`` says why and when)
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
        self._members = resolve_members(members, hyperparams)
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
        if self.device.type == "cpu":
            retain_freed_memory()  # the update's MB-sized temporaries otherwise fault in fresh pages each step
        self.verbose = verbose

        envs = make_member_envs(env_id, [m.seed for m in self._members], self.n_envs, first.settings["env_kwargs"])
        self.observation_space, self.action_space = envs.observation_space, envs.action_space
        check_spaces(self.observation_space, self.action_space)
        self.distribution = stacked_distribution(self.action_space)
        normalizer: MemberNormalizer | None = None
        normalize = first.settings["normalize"]
        if normalize:
            kwargs = dict(first.settings["normalize_kwargs"] or {})
            if isinstance(normalize, str):
                kwargs.update(parse_policy_kwargs(normalize))
            normalizer = MemberNormalizer(self.n_members, self.n_envs, (self.obs_dim,), **kwargs)
        self.collector = Collector(envs, normalizer, self.device)

        self.streams = [MemberStreams.from_seed(m.seed, self.device) for m in self._members]
        policies = []
        for streams in self.streams:
            with _global_rng_kept():
                th.manual_seed(streams.init_seed)  # as SB3's _setup_model seeds before building the policy
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
        self.n_updates = np.zeros(self.n_members, dtype=np.int64)
        self.logs: list[dict[str, float]] = [{} for _ in self._members]
        self.failures: list[MemberFailure | None] = [None] * self.n_members
        self._progress_remaining = 1.0
        self._eval_envs: Any = None
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

    @property
    def envs(self) -> Any:
        """The members' training environments (K x n_envs)."""
        return self.collector.envs

    @property
    def normalizer(self) -> MemberNormalizer | None:
        """The members' VecNormalize statistics, or None."""
        return self.collector.normalizer

    @property
    def num_timesteps(self) -> int:
        """Each member's timesteps so far."""
        return self.collector.num_timesteps

    @num_timesteps.setter
    def num_timesteps(self, value: int) -> None:
        self.collector.num_timesteps = value

    @property
    def episode_returns(self) -> list[list[float]]:
        """Per member, the returns of its finished episodes (a failed member's end at its failure)."""
        return self.collector.episode_returns

    @property
    def episode_timesteps(self) -> list[list[int]]:
        """Per member, its timesteps when each episode finished."""
        return self.collector.episode_timesteps

    @property
    def failed(self) -> np.ndarray:
        """(K,) bool, the members that failed."""
        return np.array([failure is not None for failure in self.failures])

    # ---------------------------------------------------------------- collection

    def _noise(self) -> th.Tensor:
        """Each member's sampling noise for a whole rollout, from its own generator: (K, n_steps, n_envs, d)."""
        shape = (self.n_steps, self.n_envs, self.distribution.noise_dim)
        draws = []
        for streams in self.streams:
            noise = th.empty(shape, device=self.device)
            generator = streams.action_noise
            gaussian = self.distribution.gaussian_noise
            draws.append(noise.normal_(generator=generator) if gaussian else noise.exponential_(generator=generator))
        return th.stack(draws)

    def _reset(self) -> None:
        self.collector.reset()

    def _collect(self, on_step: Callable[[], None] | None = None) -> RolloutData:
        frozen = th.as_tensor(self.failed, device=self.device)
        return self.collector.collect(
            self.policy, self._noise(), self.n_steps, self._gamma, self._gae_lambda, frozen=frozen, on_step=on_step
        )

    # ---------------------------------------------------------------- update

    def coefficients(self, progress_remaining: float) -> MemberCoefficients:
        """Every member's settings for an update at ``progress_remaining`` (see :meth:`MemberCoefficients.at`)."""
        return MemberCoefficients.at(
            [m.template for m in self._members],
            progress_remaining,
            self.device,
            kl_directions=[m.kl_direction for m in self._members],
        )

    @property
    def kl_controllers(self) -> list[Any]:
        """Each member's KL controller (None without a KL penalty); ``kl_controllers[k].value`` is its beta."""
        return [m.template.kl_controller for m in self._members]

    def _minibatch_orders(self) -> np.ndarray:
        """(n_epochs, K, N): each member's minibatch orders of one update, one call of its own generator each
        (``Generator.permuted`` shuffles every epoch's row at once; its cost is the shuffles themselves, ~2 ms per
        member at N = 2048 and 10 epochs, small beside the update's)."""
        size = self.n_steps * self.n_envs
        rows = np.tile(np.arange(size), (self.n_epochs, 1))  # contiguous: permuted() is ~2x slower on a broadcast view
        return np.ascontiguousarray(np.stack([s.minibatch_order.permuted(rows, axis=1) for s in self.streams], axis=1))

    def _train(self, data: RolloutData) -> None:
        progress = self._progress_remaining
        coefficients = self.coefficients(progress)
        failed = th.as_tensor(self.failed, device=self.device)
        result = update(
            self.policy,
            self.optimizer,
            data,
            coefficients,
            self._minibatch_orders(),
            self.batch_size,
            self.normalize_advantage,
            failed=failed,
        )
        stats = result.stats
        n_steps = self.n_steps * self.n_envs
        for k, (member, controller) in enumerate(zip(self._members, self.kl_controllers)):
            if self.failures[k] is not None:
                continue
            if result.failed[k]:
                terms = {name: float(values[k]) for name, values in result.failure_terms.items()}
                check = FAILURE_CHECKS[int(result.failure_check[k])]
                update_number = self.num_timesteps // n_steps  # one update per rollout, in lockstep
                self.failures[k] = MemberFailure(
                    k, member.label, check, self.num_timesteps, update_number, terms if check == "loss" else {}
                )
                self.collector.stopped[k] = True
                if self.verbose >= 1:
                    print(str(self.failures[k]))
                continue
            self.n_updates[k] += int(result.n_epochs_run[k])
            if controller is not None:
                controller.end_update(float(stats["kl"][k]), n_steps=n_steps)
            log = {f"train/{name}": float(values[k]) for name, values in stats.items()}
            log["train/n_updates"] = int(self.n_updates[k])
            log["train/kl_coef"] = float(coefficients.kl_coef[k])
            log["train/ent_coef"] = float(coefficients.ent_coef[k])
            if member.template.surrogate != "unclipped":
                log["train/clip_range"] = float(coefficients.clip_range[k])
            if member.template.clip_range_vf is not None:
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
        :raises NonFiniteLossError: once every member has failed (see :attr:`failures`)
        """
        if isinstance(total_timesteps, bool) or not isinstance(total_timesteps, (int, np.integer)) or total_timesteps < 1:
            raise ValueError(f"total_timesteps must be an int >= 1, got {total_timesteps!r}")
        self._raise_if_all_failed()
        if reset_num_timesteps:
            self.num_timesteps = 0
        total = int(total_timesteps) + (0 if reset_num_timesteps else self.num_timesteps)
        if reset_num_timesteps or self.collector.last_obs is None:
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
                self._raise_if_all_failed()
                running = callback is None or callback.on_update(self) is not False
        finally:
            if bar is not None:
                bar.close()
        return self

    def _raise_if_all_failed(self) -> None:
        if all(failure is not None for failure in self.failures):
            raise NonFiniteLossError("Population: every member failed: " + "; ".join(str(f) for f in self.failures))

    @th.no_grad()
    def evaluate(self, n_eval_episodes: int = 10, deterministic: bool = True) -> np.ndarray:
        """Each member's mean return over ``n_eval_episodes`` episodes on its own evaluation environment, seeded
        ``seed + EVAL_SEED_OFFSET`` at its first use (as ``SeededRun.evaluate`` does with ``evaluate_policy``),
        with the member's VecNormalize observation statistics and raw rewards.

        :return: (K,) mean returns; NaN for a member that failed (its result is not a learning result at this budget)
        """
        if isinstance(n_eval_episodes, bool) or not isinstance(n_eval_episodes, (int, np.integer)) or n_eval_episodes < 1:
            raise ValueError(f"n_eval_episodes must be an int >= 1, got {n_eval_episodes!r}")
        if self._eval_envs is None:
            seeds = [m.seed + EVAL_SEED_OFFSET for m in self._members]
            self._eval_envs = make_member_envs(self.env_id, seeds, 1, self._members[0].settings["env_kwargs"])
        failed = self.failed
        if failed.all():
            return np.full(self.n_members, np.nan)
        normalizer = self.normalizer
        obs = self._eval_envs.reset()
        returns = np.zeros(self.n_members)
        episodes: list[list[float]] = [[] for _ in self._members]
        # A member that has its episodes goes on stepping until every member has theirs; what those extra steps draw
        # (initial states, sampling noise) is rolled back afterwards, so that its next evaluation starts where a solo
        # evaluate_policy would have left it, whatever its companions.
        done_states: list[Any] = [None] * self.n_members
        generators = [s.evaluation_noise for s in self.streams]
        while min(len(e) for k, e in enumerate(episodes) if not failed[k]) < n_eval_episodes:
            normalized = obs if normalizer is None else normalizer.normalize_obs(obs)
            params, _ = self.policy.forward(self.collector.obs_tensor(normalized))
            if deterministic:
                actions = self.distribution.mode(params)
            else:
                noise = th.stack(
                    [
                        th.empty((1, self.distribution.noise_dim), device=self.device).normal_(generator=g)
                        if self.distribution.gaussian_noise
                        else th.empty((1, self.distribution.noise_dim), device=self.device).exponential_(generator=g)
                        for g in generators
                    ]
                )
                actions = self.distribution.sample(params, noise)
            actions = th.nan_to_num(actions) if failed.any() else actions
            obs, rewards, terminated, truncated, _ = self._eval_envs.step(self.distribution.env_actions(actions))
            returns += rewards
            for k in np.flatnonzero(terminated | truncated):
                if len(episodes[k]) < n_eval_episodes:
                    episodes[k].append(float(returns[k]))
                    if len(episodes[k]) == n_eval_episodes:
                        done_states[k] = (self._eval_envs.rng_state(int(k)), generators[k].get_state())
                returns[k] = 0.0
        for member, state in enumerate(done_states):
            if state is not None:
                self._eval_envs.set_rng_state(member, state[0])
                generators[member].set_state(state[1])
        return np.array([np.nan if failed[k] else np.mean(e) for k, e in enumerate(episodes)])

    def models(self) -> list[BaseAlgorithm]:
        """The members as ordinary SB3 models of their variants' classes (``VariantPPO`` for ``"variant_ppo"``), built
        as a solo run of the member's seed would be (``make_model``) and given the member's weights, Adam state, KL
        controller, timesteps and VecNormalize statistics: ``save``, ``load``, ``predict``, ``evaluate_policy`` and
        ``learn`` work on them.

        A member that failed comes with its last finite parameters (and Adam state), and its model's ``failure``
        attribute holds its :class:`MemberFailure` (None for the others): the caller decides whether to use it.
        """
        result: list[BaseAlgorithm] = []
        for k, member in enumerate(self._members):
            with _global_rng_kept():
                entry = copy.deepcopy(member.model_entry)
                model = make_model(member.variant, self.env_id, entry, seed=member.seed, device=self.device)
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
            if isinstance(model.kl_penalty, KLController):  # a controller given as the setting is the model's controller
                model.kl_penalty = model.kl_controller
            model.num_timesteps = self.num_timesteps
            model._n_updates = int(self.n_updates[k])
            model.failure = self.failures[k]  # type: ignore[attr-defined]
            env = model.get_env()
            normalizer = self.normalizer
            if normalizer is not None and isinstance(env, VecNormalize):
                env.obs_rms = normalizer.member_obs_rms(k)  # type: ignore[assignment]
                env.ret_rms = normalizer.member_ret_rms(k)
            result.append(model)
        return result

    def close(self) -> None:
        """Close the training and evaluation environments."""
        self.envs.close()
        if self._eval_envs is not None:
            self._eval_envs.close()

    def state(self) -> PopulationState:
        """Everything the population learned and where it stands (copies on the CPU)."""
        envs: dict[str, Any] | None = {"envs": self.envs, "eval_envs": self._eval_envs}
        resumable = self.envs.resumable and (self._eval_envs is None or self._eval_envs.resumable)
        try:
            pickle.dumps(envs)
        except Exception:  # an environment that does not pickle
            resumable = False
        collection = self.collector.state()
        if not resumable:
            envs = None
            collection["last_obs"] = None  # fresh environments, reset (and seeded as at the start) by the next learn()
        return copy.deepcopy(
            PopulationState(
                env_id=self.env_id,
                members=self.member_specs,
                hyperparams=self.hyperparams,
                verbose=self.verbose,
                params=self.policy.flat.detach().cpu(),
                adam=self.optimizer.state(),
                streams=[s.state() for s in self.streams],
                kl_controllers=self.kl_controllers,
                n_updates=self.n_updates,
                logs=self.logs,
                failures=self.failures,
                progress_remaining=self._progress_remaining,
                collection=collection,
                envs=envs,
            )
        )

    @classmethod
    def from_state(cls, state: PopulationState, device: th.device | str = "auto") -> Population:
        """A population built from its settings and given ``state`` (see :meth:`state`)."""
        population = cls(state.env_id, state.members, state.hyperparams, device=device, verbose=state.verbose)
        with th.no_grad():
            population.policy.flat.copy_(state.params)
        population.optimizer.load_state(state.adam)
        for streams, saved in zip(population.streams, state.streams):
            streams.load_state(saved)
        for member, controller in zip(population._members, state.kl_controllers):
            member.template.kl_controller = controller
        population.n_updates = np.array(state.n_updates)
        population.logs = list(state.logs)
        population.failures = list(state.failures)
        population._progress_remaining = state.progress_remaining
        if state.envs is not None:
            population.collector.envs.close()
            population.collector.envs = state.envs["envs"]
            population._eval_envs = state.envs["eval_envs"]
        population.collector.load_state(state.collection)
        return population

    def save(self, path: str | Path) -> None:
        """Save the whole population (:class:`PopulationState`: parameters, Adam states, KL controllers, normalisation
        statistics, random streams, counters, failures and the environments' state), so that :meth:`load` resumes
        where it stopped.

        Environments whose state does not pickle (Box2D's) are not saved: a loaded population then starts new
        episodes on fresh environments (seeded as at the start), as a loaded SB3 model does on a new env."""
        th.save(self.state(), path)

    @classmethod
    def load(cls, path: str | Path, device: th.device | str = "auto") -> Population:
        """A population saved with :meth:`save`, ready to ``learn(..., reset_num_timesteps=False)`` on."""
        state = th.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, PopulationState):
            raise ValueError(f"{path} does not hold a saved Population (got {type(state).__name__})")
        return cls.from_state(state, device=device)
