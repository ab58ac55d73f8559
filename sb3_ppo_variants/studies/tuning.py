"""Optuna tuning of a variant on an environment: its protocol, sampler, pruner, the work of one trial, the outputs.

A trial samples the variant's search space (:mod:`~sb3_ppo_variants.studies.search_spaces`) and trains its
K seeds as one batch (:func:`~sb3_ppo_variants.studies.runner.train_batch`): at each of ``E`` evaluation points
every seed is evaluated (deterministic episodes on an evaluation env seeded apart from training) and the mean over
seeds is reported to the pruner. The trial's value is the mean over seeds of the last evaluation; per-seed values
are kept in its user attributes (``seed_scores``, ``seed_curves``). Trials run in
:func:`~sb3_ppo_variants.studies.runner.run_worker`: the cap over all workers, failed trials and dead workers are
handled there, the same way as for an ablation.

What a study leaves behind (:func:`write_tuning_outputs`, from the study alone, at any time): ``trials.csv``,
``best_hyperparams.yml`` (readable by ``load_hyperparams`` and rl-zoo3), Optuna's plots and ``summary.md``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET, evaluation_points
from sb3_ppo_variants.studies.liveness import experimental_allowed
from sb3_ppo_variants.studies.registry import plain_variant
from sb3_ppo_variants.studies.runner import Cell, Objective, RunProtocol, train_batch
from sb3_ppo_variants.studies.search_spaces import check_combination, params_to_kwargs, suggest_params
from sb3_ppo_variants.studies.storage import open_study

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "TUNING_FILES",
    "TrialSeededSampler",
    "TuningSettings",
    "best_hyperparams",
    "best_trial",
    "confirm_best",
    "confirmation_seeds",
    "fail_reasons",
    "make_pruner",
    "make_sampler",
    "open_tuning_study",
    "tuning_objective",
    "write_tuning_outputs",
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
    study = open_study(storage, study_name, asdict(settings), pruner=pruner)
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


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The study's best trial, or None before any trial completed."""
    try:
        return study.best_trial
    except ValueError:
        return None


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
    best = best_trial(study)
    if best is None or n_seeds < 1:
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


# ----------------------------------------------------------------------------------------------- outputs


def fail_reasons(study: optuna.Study) -> dict[int, str]:
    """Trial number -> why it failed, for every FAIL trial: its recorded reason, or, for a trial failed on behalf of
    a dead or silent worker (no reason can be written then), that and the number of its retry."""
    trials = study.get_trials(deepcopy=False)
    # Optuna's retry records the trials it retries, oldest first: the last one is the trial it stands in for.
    retries = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    reasons = {}
    for trial in trials:
        if trial.state != TrialState.FAIL:
            continue
        reason = trial.user_attrs.get("fail_reason") or "its worker died or stopped beating mid-trial"
        if trial.number in retries:
            reason += f" (run again as trial {retries[trial.number]})"
        reasons[trial.number] = reason
    return reasons


#: The files of ``--out`` besides the plots.
TUNING_FILES = {"trials": "trials.csv", "best": "best_hyperparams.yml", "summary": "summary.md"}
_SLICE_PARAMS = ("clip_range", "kl_coef", "kl_target", "ent_coef")


def _confirmation(study: optuna.Study, best: FrozenTrial) -> dict[str, Any] | None:
    confirmation = study.user_attrs.get("confirmation")
    return confirmation if confirmation and confirmation.get("trial") == best.number else None


def write_best_yaml(study: optuna.Study, settings: TuningSettings, path: Path) -> FrozenTrial | None:
    """``{env_id: entry}`` of the best trial, readable by ``load_hyperparams`` and rl-zoo3; None if no trial completed."""
    best = best_trial(study)
    if best is None:
        return None
    confirmation = _confirmation(study, best)
    confirmed = (
        f"# On fresh seeds {confirmation['seeds']} (no trial used them): mean return {confirmation['mean']:.6g}, per seed "
        f"{confirmation['scores']}; the search's score above is biased upward (it won on its own seeds).\n"
        if confirmation
        else "# Not confirmed on fresh seeds (--confirm-seeds 0, or a new best trial since): its score is biased upward.\n"
    )
    header = (
        f"# Best of study {study.study_name!r}: variant {settings.variant!r}, trial {best.number}, "
        f"mean return {best.value:.6g} over seeds {list(settings.seeds)}.\n{confirmed}"
        f"# Rebuild: make_model({settings.variant!r}, {settings.env_id!r}, "
        f"load_hyperparams({path.name!r}, {settings.env_id!r}), seed=...)\n"
    )
    body = yaml.safe_dump({settings.env_id: best_hyperparams(best, settings)}, sort_keys=False)
    path.write_text(header + body)
    return best


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """PNG plots (Optuna's matplotlib backend). :return: file name -> "" when written, else why not."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    names = {name for t in study.get_trials(deepcopy=False) for name in t.params}
    figures: dict[str, Any] = {
        "history.png": lambda: plots.plot_optimization_history(study),
        "intermediate_values.png": lambda: plots.plot_intermediate_values(study),
        "importances.png": lambda: plots.plot_param_importances(study),
    }
    for name in _SLICE_PARAMS:
        if name in names:
            figures[f"slice_{name}.png"] = lambda name=name: plots.plot_slice(study, params=[name])
    status: dict[str, str] = {}
    for filename, plot in figures.items():
        try:
            with experimental_allowed():
                axes = plot()
            figure = np.ravel(axes)[0].figure
            figure.savefig(out / filename, dpi=100, bbox_inches="tight")
            plt.close(figure)
            status[filename] = ""
        except Exception as error:  # e.g. importances need two completed trials with varying parameters
            status[filename] = f"{type(error).__name__}: {error}"
            plt.close("all")
    return status


def _tuning_summary(
    study: optuna.Study, settings: TuningSettings, storage_label: str, best: FrozenTrial | None, plots: dict[str, str]
) -> str:
    counts = Counter(trial.state for trial in study.get_trials(deepcopy=False))
    seeds = list(settings.seeds)
    lines = [
        f"# Tuning `{settings.variant}` on `{settings.env_id}`",
        "",
        f"- study `{study.study_name}` in `{storage_label}`",
        f"- each trial: {settings.timesteps} timesteps x {len(seeds)} seeds {seeds}; {settings.n_evaluations} evaluations of "
        f"{settings.n_eval_episodes} deterministic episodes on an evaluation env seeded with seed + {EVAL_SEED_OFFSET}",
        f"- search space: {'variant terms + rl-zoo3 PPO ranges' if settings.wide else 'variant terms'}; "
        f"fixed: {dict(settings.hyperparams) or 'nothing'}",
        "- trials: " + ", ".join(f"{counts[state]} {state.name.lower()}" for state in TrialState if counts[state]),
        "",
    ]
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        scores = best.user_attrs.get("seed_scores")
        confirmation = _confirmation(study, best)
        lines += [
            f"## Best: trial {best.number}, mean return {best.value:.6g}",
            "",
            "| | seeds | mean return | per seed |",
            "|---|---|---|---|",
            f"| the search (biased upward: it won on these seeds) | {seeds} | {best.value:.6g} | {scores} |",
        ]
        if confirmation:
            lines.append(
                f"| fresh seeds (the estimate to report) | {confirmation['seeds']} | {confirmation['mean']:.6g} | "
                f"{confirmation['scores']} |"
            )
        lines += [
            "",
            "The best trial's score is the maximum over the trials' noisy scores, so it overestimates its configuration; "
            "its score on seeds the search never used does not (Eimer et al. 2023, "
            "https://arxiv.org/abs/2306.01324)."
            + ("" if confirmation else " Not confirmed yet: rerun the command with --confirm-seeds N."),
            "",
            "| hyperparameter | value |",
            "|---|---|",
            *(f"| {key} | `{value}` |" for key, value in params_to_kwargs(best.params).items()),
            "",
            f"`{TUNING_FILES['best']}` rebuilds it: `make_model({settings.variant!r}, {settings.env_id!r}, "
            f"load_hyperparams({TUNING_FILES['best']!r}, {settings.env_id!r}), seed=0)`.",
            "",
        ]
    reasons = fail_reasons(study)
    if reasons:
        lines += ["## Failed trials", ""]
        lines += [f"- trial {number}: {reason}" for number, reason in reasons.items()]
        lines += [""]
    lines += ["## Files", "", f"- `{TUNING_FILES['trials']}`: every trial (parameters, values, user attributes)"]
    lines += [f"- `{name}`" + (f": not drawn ({why})" if why else "") for name, why in plots.items()]
    return "\n".join(lines) + "\n"


def write_tuning_outputs(
    study: optuna.Study, settings: TuningSettings, out: str | Path, storage_label: str
) -> dict[str, Path]:
    """Write the trials CSV, the best hyperparameters YAML, the plots and ``summary.md`` into ``out``.

    :return: name -> path of the files written
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    study.trials_dataframe().to_csv(out / TUNING_FILES["trials"], index=False)
    written["trials"] = out / TUNING_FILES["trials"]
    best = write_best_yaml(study, settings, out / TUNING_FILES["best"])
    if best is not None:
        written["best"] = out / TUNING_FILES["best"]
    plots = write_plots(study, out)
    written.update({name: out / name for name, why in plots.items() if not why})
    (out / TUNING_FILES["summary"]).write_text(_tuning_summary(study, settings, storage_label, best, plots))
    written["summary"] = out / TUNING_FILES["summary"]
    return written
