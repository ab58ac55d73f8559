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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.evaluation import evaluation_points
from sb3_ppo_variants.studies.registry import plain_variant
from sb3_ppo_variants.studies.runner import Cell, Objective, RunProtocol, train_batch
from sb3_ppo_variants.studies.search_spaces import check_combination, params_to_kwargs, suggest_params
from sb3_ppo_variants.studies.storage import open_study

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "TrialSeededSampler",
    "TuningSettings",
    "best_hyperparams",
    "confirm_best",
    "confirmation_seeds",
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


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """Optuna's sampler ``name``, seeded for each trial from ``(seed, trial number)``.

    Trial numbers are unique across the workers of a study, so workers started together with one ``--sampler-seed``
    sample different parameters, and a study run by one worker is reproducible (a resumed one too: its new trials
    have new numbers). TPE reads the other trials from the storage, so a fresh sampler per trial loses nothing.
    """

    def __init__(self, name: str, seed: int, n_startup_trials: int = 5) -> None:
        self.name, self.seed, self.n_startup_trials = name, seed, n_startup_trials
        self._sampler = make_sampler(name, seed, n_startup_trials)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        seed = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        self._sampler = make_sampler(self.name, seed, self.n_startup_trials)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)


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

    A given ``sampler_seed`` seeds each trial from its number (:class:`TrialSeededSampler`).

    :raises StudyMismatchError: when the stored settings differ from ``settings``
    """
    study = open_study(storage, study_name, settings.as_attrs(), pruner=pruner)
    if sampler_seed is None:
        study.sampler = make_sampler(sampler, None, n_startup_trials)
    else:
        study.sampler = TrialSeededSampler(sampler, sampler_seed, n_startup_trials)
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


def tuning_objective(settings: TuningSettings) -> Objective:
    """The objective of a tuning study's workers (for :func:`~sb3_ppo_variants.studies.runner.run_worker`)."""
    return Objective(lambda trial: _train_and_score(trial, settings), run_attrs=RUN_ATTRS)


def best_hyperparams(trial: optuna.trial.FrozenTrial, settings: TuningSettings) -> dict[str, Any]:
    """The rl-zoo3 entry of a trial: the fixed settings, the sampled ones, and the budget they were tuned for."""
    return {**settings.hyperparams, **params_to_kwargs(trial.params), "n_timesteps": settings.timesteps}


def confirmation_seeds(settings: TuningSettings, n_seeds: int) -> list[int]:
    """``n_seeds`` seeds no trial trained on, and whose environments share no stream with theirs (``make_vec_env``
    seeds env i of seed s with s + i, so the fresh seeds start ``n_envs`` past the last search seed)."""
    first = max(settings.seeds) + int(settings.hyperparams.get("n_envs", 1))
    return list(range(first, first + n_seeds))


def confirm_best(study: optuna.Study, settings: TuningSettings, n_seeds: int) -> dict[str, Any] | None:
    """Retrain the best trial's configuration on ``n_seeds`` fresh seeds (:func:`confirmation_seeds`) and store the
    result in the study's user attribute ``confirmation``; a stored confirmation of the same trial is reused.

    The best trial's own score is biased upward: it won on the seeds it was scored on. Its score on seeds the search
    never saw is the estimate to report (Eimer, Lindauer and Raileanu 2023, "Hyperparameters in Reinforcement
    Learning and How To Tune Them", https://arxiv.org/abs/2306.01324).

    :return: ``{"trial", "seeds", "scores", "mean", "search_mean"}``, or None when no trial completed or ``n_seeds`` is 0
    """
    try:
        best = study.best_trial
    except ValueError:  # no trial completed yet
        return None
    if n_seeds < 1:
        return None
    seeds = confirmation_seeds(settings, n_seeds)
    stored = study.user_attrs.get("confirmation")
    if stored and stored.get("trial") == best.number and stored.get("seeds") == seeds:
        return dict(stored)
    hyperparams = {**settings.hyperparams, **params_to_kwargs(best.params)}
    cells = [Cell(settings.variant, settings.env_id, seed, hyperparams) for seed in seeds]
    scores = [round(result.final_score, 4) for result in train_batch(cells, settings.run_protocol)]
    confirmation = {"trial": best.number, "seeds": seeds, "scores": scores, "mean": float(np.mean(scores))}
    confirmation["search_mean"] = best.value
    study.set_user_attr("confirmation", confirmation)
    return confirmation
