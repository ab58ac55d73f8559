"""The one study runner: what a trial trains (a batch of cells), and the worker loop that runs trials.

Tuning and ablation are each an Optuna study plus a *work function* ``trial -> value``:

- a tuning trial samples hyperparameters and trains its K seeds as one batch (pruned on the mean over seeds);
- an ablation trial takes an enqueued batch of cells -- (variant, env, seed) runs of one environment and equal
  shapes -- trains them as one batch and stores each cell's curve and score.

**Training a batch** (:func:`train_batch`): every cell is a :class:`Cell`, trained under one
:class:`RunProtocol` (budget, evaluation points, episodes) and returned as a :class:`CellResult`. The batch is
offered to :class:`~sb3_ppo_variants.Population` (its members' parameters stacked, one forward pass and one optimiser
step for all): when the population's constructor refuses it (a ``ValueError``: a variant it does not host, gSDE,
images, unequal shapes, ...), the cells run solo, in lockstep (:class:`SeededRun`),
and the population's reason is kept -- so no second list of conditions can drift from what the population accepts.
Either way each cell has its own random streams, so its result does not depend on its companions, and in an ablation
a cell that fails fails alone (``isolate``). Each result's ``mode`` says how it ran; the ablation report lists it.

**The worker loop** (:func:`run_worker`): each worker -- a process on any machine sharing the storage --
calls ``study.optimize`` with:

- ``catch=(Exception,)``: a trial whose work raises (a NaN, a bad combination) is stored FAIL with its reason
  (user attributes ``fail_kind = "error"``, ``fail_reason``) and the worker goes on;
- Optuna's ``MaxTrialsCallback`` for the study's cap (``--max-total-trials``), shared by every worker;
- :class:`StopWhenQueueEmpty` for studies whose work is enqueued (an ablation's batches);
- dead workers' trials failed and enqueued again (:mod:`~sb3_ppo_variants.studies.liveness`).

A trial is recorded complete at most once, but may be *executed* more than once: the work of a worker that dies
mid-run is lost and run again (an ablation cell too: :mod:`~sb3_ppo_variants.studies.ablation`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import optuna
import torch as th
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from sb3_ppo_variants.algorithm import NonFiniteLossError
from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.hyperparams import make_env, make_model, split_hyperparams
from sb3_ppo_variants.population import Population, PopulationEvalCallback
from sb3_ppo_variants.studies.liveness import mark_worker, recover_stale_trials

__all__ = [
    "CAPPED_STATES",
    "Cell",
    "CellResult",
    "Objective",
    "RunProtocol",
    "SeededRun",
    "StopWhenQueueEmpty",
    "n_counted",
    "run_worker",
    "train_batch",
]

_DIGITS = 4  # returns are rounded to this many decimals in the storage


@dataclass(frozen=True)
class Cell:
    """One seeded run to train: an algorithm of :mod:`~sb3_ppo_variants.studies.registry` on an environment. In an
    ablation it is a cell of the grid, stored in its trial as a JSON recipe (:meth:`recipe`) that any worker can run.

    :param hyperparams: the rl-zoo3 entry (constructor arguments mixed with ``n_envs``, ``policy``, ...)
    :param model_kwargs: constructor arguments that win over the entry
    :param variant: the ablation arm's name (the key of the results); ``algorithm`` is the registry name it builds
    :param hyperparams_source: where the entry was read from, for the report
    :param dropped: keys of a shared entry that ``algorithm`` does not take (left out of ``hyperparams``)
    """

    algorithm: str
    env_id: str
    seed: int
    hyperparams: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    variant: str = ""
    hyperparams_source: str = ""
    dropped: Sequence[str] = ()

    @property
    def key(self) -> str:
        return f"{self.variant}|{self.env_id}|{self.seed}"

    def recipe(self) -> dict[str, Any]:
        """The cell as a trial stores it (JSON, with its ``key``)."""
        return json.loads(json.dumps({**asdict(self), "key": self.key}))

    @classmethod
    def from_recipe(cls, recipe: Mapping[str, Any]) -> Cell:
        return cls(**{item.name: recipe[item.name] for item in fields(cls)})


@dataclass(frozen=True)
class RunProtocol:
    """What every cell of a batch shares.

    :param timesteps: training budget of each cell (schedules span it)
    :param eval_points: timesteps at which each cell is evaluated (0: before training), increasing
    :param n_eval_episodes: deterministic episodes per evaluation, on an env seeded with seed + EVAL_SEED_OFFSET
    """

    timesteps: int
    eval_points: tuple[int, ...]
    n_eval_episodes: int = 10


@dataclass
class CellResult:
    """A cell's curve and score: ``curve_nominal`` (the points asked for), ``curve_timesteps`` (reached: whole
    rollouts), ``curve_returns`` (mean deterministic evaluation return), the training episodes (Monitor returns,
    stochastic policy; ``episode_timesteps``: the end of the segment each ended in), ``final_score`` (the last
    evaluation) and the cell's own ``wall_time_s``; ``failure``: why the cell failed (it has no score then), and
    ``mode``: how it was trained (``population`` or ``solo``)."""

    curve_nominal: list[int] = field(default_factory=list)
    curve_timesteps: list[int] = field(default_factory=list)
    curve_returns: list[float] = field(default_factory=list)
    episode_timesteps: list[int] = field(default_factory=list)
    episode_returns: list[float] = field(default_factory=list)
    wall_time_s: float = 0.0
    failure: str | None = None
    mode: str = "solo"

    @property
    def final_score(self) -> float:
        return self.curve_returns[-1] if self.curve_returns else math.nan

    def as_attrs(self) -> dict[str, Any]:
        """JSON form, as a trial stores it (returns rounded to 4 decimals)."""
        attrs = asdict(self)
        for name in ("curve_returns", "episode_returns"):
            attrs[name] = [round(float(value), _DIGITS) for value in attrs[name]]
        attrs["final_score"] = round(float(self.final_score), _DIGITS)
        attrs["wall_time_s"] = round(self.wall_time_s, 2)
        return attrs


# ----------------------------------------------------------------------------------------------- a solo run


def _get_rng() -> tuple[Any, Any, Any]:
    return th.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng(state: tuple[Any, Any, Any]) -> None:
    th.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


class SeededRun:
    """One cell's training run with its own random streams and a separate evaluation env (seeded with
    ``seed + EVAL_SEED_OFFSET``), advanced in segments and evaluated in between (``protocol.n_eval_episodes``
    deterministic episodes). Advanced in segments it is identical to one ``learn()`` call: its schedules see the
    progress of the whole budget (``protocol.timesteps``), not of the segment (SB3's ``learn(reset_num_timesteps=False)``
    alone would restart every schedule at each segment), and it keeps its own random streams (SB3 draws from the global
    torch/numpy/random generators, so runs interleaved in one process would otherwise feed on each other's streams).
    """

    def __init__(self, cell: Cell, protocol: RunProtocol) -> None:
        self.total_timesteps = protocol.timesteps
        self.n_eval_episodes = protocol.n_eval_episodes
        self.episode_returns: list[float] = []
        self.episode_timesteps: list[int] = []
        outer = _get_rng()
        hyperparams = dict(cell.hyperparams)
        self.model: BaseAlgorithm = make_model(cell.algorithm, cell.env_id, hyperparams, seed=cell.seed, **cell.model_kwargs)
        self._rng = _get_rng()
        _set_rng(outer)
        _, settings = split_hyperparams(hyperparams)
        self.eval_env: VecEnv = make_env(cell.env_id, settings, seed=cell.seed + EVAL_SEED_OFFSET, n_envs=1)
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


# ----------------------------------------------------------------------------------------------- a batch


#: ``on_evaluation(timestep, scores)``: scores of every cell at a point; returns False to stop the batch, or raises.
OnEvaluation = Callable[[int, np.ndarray], "bool | None"]


def train_batch(
    cells: Sequence[Cell], protocol: RunProtocol, on_evaluation: OnEvaluation | None = None, isolate: bool = False
) -> list[CellResult]:
    """Train ``cells`` under ``protocol`` (as a population or solo: see the module docstring), one result per cell.

    :param on_evaluation: sees every cell's score at each evaluation point (the cells advance in lockstep; tuning
        reports their mean to its pruner); it may stop the batch (return False: the results so far are returned) or
        raise (e.g. ``optuna.TrialPruned``)
    :param isolate: a cell whose training or evaluation raises fails alone: its result carries the reason
        (``failure``) and the other cells go on (an ablation). Without it the error propagates (a tuning trial fails
        as a whole). A population that raises is trained again cell by cell, solo, so that only the failing cell fails.
    """
    members = [{"variant": c.algorithm, "seed": c.seed, **c.hyperparams, **c.model_kwargs} for c in cells]
    envs = sorted({cell.env_id for cell in cells})
    try:
        if len(envs) > 1:
            raise ValueError(f"the cells are on several environments {envs}")
        population = Population(envs[0], members)
    except ValueError as error:  # the population's own judgement of what it can train
        return _train_solo(cells, protocol, on_evaluation, isolate, why=str(error))
    try:
        results = _train_population(population, protocol, on_evaluation)
    except Exception as error:
        if not isolate or isinstance(error, optuna.TrialPruned):
            raise
        if all(failure is not None for failure in population.failures):  # every member failed alone: recorded
            results = _population_results(population, None)
        else:  # an error of the whole population (an environment's): each cell again, solo, failing alone
            why = f"the population failed ({type(error).__name__}: {error})"[:300]
            return _train_solo(cells, protocol, on_evaluation, isolate, why=why)
    failed = [result.failure for result in results if result.failure]
    if failed and not isolate:
        raise NonFiniteLossError(failed[0])
    return results


def _train_population(population: Population, protocol: RunProtocol, on_evaluation: OnEvaluation | None) -> list[CellResult]:
    """Train ``population``; a member that fails (``population.failures``) stops alone and its result says why."""
    clock = time.perf_counter()
    callback = PopulationEvalCallback(list(protocol.eval_points), protocol.n_eval_episodes, on_evaluation=on_evaluation)
    try:
        population.learn(protocol.timesteps, callback=callback)
    finally:
        population.close()
    return _population_results(population, callback, time.perf_counter() - clock)


def _population_results(
    population: Population, callback: PopulationEvalCallback | None, seconds: float = 0.0
) -> list[CellResult]:
    """Each member's :class:`CellResult`; its ``wall_time_s`` is an equal share of ``seconds``."""
    results = []
    for index, failure in enumerate(population.failures):
        result = CellResult(wall_time_s=seconds / population.n_members, mode="population")
        result.failure = None if failure is None else str(failure)
        if callback is not None and failure is None:
            result.curve_nominal, result.curve_timesteps = list(callback.timesteps), list(callback.reached)
            result.curve_returns = [float(value) for value in callback.scores[:, index]] if len(callback.scores) else []
            result.episode_timesteps = list(population.episode_timesteps[index])
            result.episode_returns = list(population.episode_returns[index])
        results.append(result)
    return results


def _train_solo(
    cells: Sequence[Cell], protocol: RunProtocol, on_evaluation: OnEvaluation | None, isolate: bool = False, why: str = ""
) -> list[CellResult]:
    runs: list[SeededRun | None] = []
    results = [CellResult(mode=f"solo: {why}" if why else "solo") for _ in cells]

    def failed(index: int, error: Exception) -> None:
        if not isolate:
            raise error
        results[index].failure = f"{type(error).__name__}: {error}"[-2000:]
        run = runs[index]
        runs[index] = None
        if run is not None:
            run.close()

    try:
        for index, (cell, result) in enumerate(zip(cells, results)):
            clock = time.perf_counter()
            runs.append(None)
            try:
                runs[index] = SeededRun(cell, protocol)
            except Exception as error:
                failed(index, error)
            result.wall_time_s += time.perf_counter() - clock
        for point in protocol.eval_points:
            for index, result in enumerate(results):
                run = runs[index]
                if run is None:
                    continue
                clock = time.perf_counter()
                try:
                    run.advance(point)
                    score = run.evaluate()
                except Exception as error:
                    failed(index, error)
                    continue
                result.curve_nominal.append(point)
                result.curve_timesteps.append(run.num_timesteps)
                result.curve_returns.append(score)
                result.wall_time_s += time.perf_counter() - clock
            scores = np.array([math.nan if r.failure else r.curve_returns[-1] for r in results])
            if on_evaluation is not None and on_evaluation(point, scores) is False:
                break
    finally:
        for run in runs:
            if run is not None:
                run.close()
    for run, result in zip(runs, results):
        if run is not None:
            result.episode_timesteps = list(run.episode_timesteps)
            result.episode_returns = list(run.episode_returns)
    return results


# ----------------------------------------------------------------------------------------------- the loop

#: The trials that take a slot of a study's cap (``--max-total-trials``): finished with a result, or running.
CAPPED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def n_counted(study: optuna.Study) -> int:
    """Trials of ``study`` that take a slot of its cap (:data:`CAPPED_STATES`)."""
    return len(study.get_trials(deepcopy=False, states=CAPPED_STATES))


class StopWhenQueueEmpty:
    """Callback: stop this worker once no trial is WAITING (a study whose work is enqueued, such as an ablation)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            study.stop()


class Objective:
    """The objective every worker optimises: a tool's ``work`` (``trial -> value``), after recording the worker
    (:func:`~sb3_ppo_variants.studies.liveness.mark_worker`) and clearing what a retried trial inherited
    (``run_attrs``: the user attributes the work writes); an interrupt is recorded as ``fail_kind = "interrupted"``.
    """

    RUN_ATTRS = ("fail_reason", "fail_kind")

    def __init__(self, work: Callable[[optuna.Trial], float], run_attrs: Container[str] = ()) -> None:
        self.work = work
        self.run_attrs = run_attrs
        self.n_calls = 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.n_calls += 1
        mark_worker(trial)  # first: until it is written, a killed worker's trial is judged only after a grace period
        for key, value in trial.user_attrs.items():
            if (key in self.RUN_ATTRS or key in self.run_attrs) and value is not None:
                trial.set_user_attr(key, None)
        try:
            return self.work(trial)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("fail_kind", "error")
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}"[-2000:])
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_kind", "interrupted")
            trial.set_user_attr("fail_reason", "interrupted (KeyboardInterrupt)")
            raise


def run_worker(
    study: optuna.Study,
    objective: Objective,
    n_trials: int | None = None,
    max_total_trials: int | None = None,
    until_queue_empty: bool = False,
    show_progress_bar: bool = False,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> int:
    """Run trials of ``study`` in this process: up to ``n_trials``, until the cap, or until no trial is waiting.

    Dead workers' trials are failed and enqueued again first (on database storages ``optimize`` does it again
    before every trial). This worker starts no more trials than the cap leaves; like Optuna's ``MaxTrialsCallback``,
    the cap is checked between trials, so workers that start a trial at the same moment may each finish theirs.

    :param max_total_trials: the cap over the whole study, all workers together (None: no cap)
    :param until_queue_empty: stop when no trial is WAITING (and do not start when none is)
    :param callbacks: more ``optimize`` callbacks (e.g. a progress bar)
    :return: how many trials this call started (0 when the study is full or its queue empty)
    """
    recover_stale_trials(study)
    stops: list[Callable[[optuna.Study, FrozenTrial], None]] = []
    if max_total_trials is not None:
        left = max_total_trials - n_counted(study)
        n_trials = left if n_trials is None else min(n_trials, left)
        stops.append(MaxTrialsCallback(max_total_trials, states=CAPPED_STATES))
    if until_queue_empty:
        stops.append(StopWhenQueueEmpty())
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return 0
    if n_trials is not None and n_trials <= 0:
        return 0
    before = objective.n_calls
    study.optimize(
        objective,
        n_trials=n_trials,
        catch=(Exception,),
        callbacks=[*stops, *callbacks],
        gc_after_trial=False,  # Optuna's default: a full gc.collect() took 0.7 s per trial here, torch loaded
        show_progress_bar=show_progress_bar,
    )
    return objective.n_calls - before
