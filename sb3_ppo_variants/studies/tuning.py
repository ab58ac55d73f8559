"""Optuna tuning of a variant on an environment: its protocol, sampler, pruner, and the work of one trial.

A trial samples the variant's search space (:mod:`~sb3_ppo_variants.studies.search_spaces`) and trains its
K seeds as one batch (:func:`~sb3_ppo_variants.studies.runner.train_batch`): at each of ``E`` evaluation points
every seed is evaluated (deterministic episodes on an evaluation env seeded apart from training) and the mean over
seeds is reported to the pruner. The trial's value is the mean over seeds of the last evaluation; per-seed values
are kept in its user attributes (``seed_scores``, ``seed_curves``). Trials run in
:func:`~sb3_ppo_variants.studies.runner.run_worker`: the cap over all workers, failed trials and dead workers are
handled there, the same way as for an ablation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.storages import BaseStorage

from sb3_ppo_variants.evaluation import evaluation_points
from sb3_ppo_variants.studies.registry import plain_variant
from sb3_ppo_variants.studies.runner import Cell, Objective, RunProtocol, train_batch
from sb3_ppo_variants.studies.search_spaces import check_combination, params_to_kwargs, suggest_params
from sb3_ppo_variants.studies.storage import open_study

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "TuningSettings",
    "best_hyperparams",
    "make_pruner",
    "make_sampler",
    "open_tuning_study",
    "tuning_objective",
]

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
#: User attributes a tuning trial writes while it runs (a retry inherits them, so they are cleared first).
RUN_ATTRS = ("seed_curves", "seed_scores", "prune_reason")


@dataclass(frozen=True)
class TuningSettings:
    """What a trial trains and how it is scored: the protocol of a tuning study, the same for every worker.

    :param variant: a ``VARIANTS`` key; a contrib-hosted one (``maskable_clip_kl``) tunes its plain variant's space
    :param env_id: gymnasium id
    :param timesteps: training budget of each run (schedules span it)
    :param seeds: training seeds; evaluation envs are seeded with ``seed + EVAL_SEED_OFFSET``
    :param n_evaluations: evaluation points (reports to the pruner), evenly spaced, the last at ``timesteps``
    :param n_eval_episodes: deterministic episodes per evaluation
    :param hyperparams: fixed rl-zoo3 entry (``n_envs``, ``n_steps``, ...); its keys are not sampled
    :param wide: add rl-zoo3's PPO ranges to the variant's space
    """

    variant: str
    env_id: str
    timesteps: int
    seeds: tuple[int, ...]
    n_evaluations: int
    n_eval_episodes: int = 10
    hyperparams: Mapping[str, Any] = field(default_factory=dict)
    wide: bool = False

    def as_attrs(self) -> dict[str, Any]:
        """JSON form, as stored in the study's ``protocol`` user attribute."""
        return json.loads(json.dumps(asdict(self)))

    @property
    def evaluation_points(self) -> list[int]:
        return evaluation_points(self.timesteps, self.n_evaluations)

    @property
    def run_protocol(self) -> RunProtocol:
        return RunProtocol(self.timesteps, tuple(self.evaluation_points), self.n_eval_episodes)


def make_sampler(name: str, seed: int | None = None, n_startup_trials: int = 5) -> optuna.samplers.BaseSampler:
    """``tpe`` (Optuna's defaults: multivariate, constant liar for parallel workers) or ``random``."""
    if name == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=n_startup_trials, seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def make_pruner(
    name: str, settings: TuningSettings, n_startup_trials: int = 5, n_warmup_evaluations: int = 0
) -> optuna.pruners.BasePruner:
    """A pruner over the evaluation points (steps are timesteps).

    :param name: ``median``, ``hyperband`` or ``none``
    :param n_startup_trials: (median) trials that finish before any pruning
    :param n_warmup_evaluations: (median) evaluations of a trial that are never pruned
    """
    points = settings.evaluation_points
    if name == "median":
        # A trial is not pruned at steps below n_warmup_steps: the first evaluation it may be pruned at is number w.
        warmup = points[n_warmup_evaluations] if n_warmup_evaluations < len(points) else points[-1] + 1
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=points[0], max_resource=settings.timesteps, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {PRUNERS}, got {name!r}")


def open_tuning_study(
    storage: BaseStorage,
    study_name: str,
    settings: TuningSettings,
    sampler: str = "tpe",
    sampler_seed: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    n_startup_trials: int = 5,
) -> optuna.Study:
    """Create the study, or load it to resume (see :func:`~sb3_ppo_variants.studies.storage.open_study`).

    A given ``sampler_seed`` is offset by the number of trials already stored, so that a resumed study does not
    replay the random start of the sampler.

    :raises StudyMismatchError: when the stored settings differ from ``settings``
    """
    study = open_study(storage, study_name, settings.as_attrs(), pruner=pruner)
    seed = None if sampler_seed is None else sampler_seed + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sampler, seed, n_startup_trials)
    return study


def _train_and_score(trial: optuna.Trial, settings: TuningSettings) -> float:
    """The work of one trial: sample, refuse an impossible combination (PRUNED), train the K seeds, score."""
    variant = plain_variant(settings.variant)
    params = suggest_params(trial, variant, settings.wide, fixed=settings.hyperparams)
    hyperparams = {**settings.hyperparams, **params_to_kwargs(params)}
    reason = check_combination(hyperparams, settings.timesteps)
    if reason is not None:
        trial.set_user_attr("prune_reason", reason)
        raise optuna.TrialPruned(reason)
    cells = [Cell(settings.variant, settings.env_id, seed, hyperparams) for seed in settings.seeds]
    curves: list[list[float]] = [[] for _ in cells]

    def report(step: int, scores: np.ndarray) -> None:
        for curve, score in zip(curves, scores):
            curve.append(float(score))
        trial.set_user_attr("seed_curves", curves)
        mean = float(np.mean(scores))
        if not math.isfinite(mean):
            raise FloatingPointError(f"the mean evaluation return at {step} timesteps is {mean}")
        trial.report(mean, step)
        if trial.should_prune():
            reason = f"pruned at {step} timesteps: mean return {mean:.6g} over {len(cells)} seeds"
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)

    results = train_batch(cells, settings.run_protocol, on_evaluation=report)
    scores = [result.final_score for result in results]
    trial.set_user_attr("seed_scores", scores)
    return float(np.mean(scores))


def tuning_objective(settings: TuningSettings, max_total_trials: int | None = None) -> Objective:
    """The objective of a tuning study's workers (for :func:`~sb3_ppo_variants.studies.runner.run_worker`)."""
    return Objective(lambda trial: _train_and_score(trial, settings), max_total_trials, run_attrs=RUN_ATTRS)


def best_hyperparams(trial: optuna.trial.FrozenTrial, settings: TuningSettings) -> dict[str, Any]:
    """The rl-zoo3 entry of a trial: the fixed settings, the sampled ones, and the budget they were tuned for."""
    return {**settings.hyperparams, **params_to_kwargs(trial.params), "n_timesteps": settings.timesteps}
