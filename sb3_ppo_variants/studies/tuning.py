"""Optuna tuning of a variant on an environment: the objective, the study, and what a study leaves behind.

A trial trains ``K`` seeded runs of the sampled hyperparameters in lockstep
(:class:`~sb3_ppo_variants.studies.runs.SeededRun`); at each of ``E`` evaluation points every run is
evaluated (deterministic episodes on a separate evaluation env, seeded apart from training) and the
mean over seeds is reported to the pruner. The trial's value is the mean over seeds of the last
evaluation; per-seed values are kept in its user attributes (``seed_scores``, ``seed_curves``).

Counting trials towards ``max_total_trials`` (all workers together): a trial counts when it is
COMPLETE, PRUNED, RUNNING or WAITING, or FAIL because its hyperparameters raised (``fail_kind ==
"error"``: a NaN, a bad combination). A FAIL of an interrupted trial (Ctrl-C), of a killed worker
(Optuna's heartbeat, or :func:`recover_dead_trials`) or of a trial beyond the cap does not count: the
first two have their parameters enqueued again, so the next run (or another worker) retries them.
Each trial checks, before training, that fewer than ``max_total_trials`` counted trials precede it
(trial numbers are assigned atomically by the storage), so workers racing for the last slot cannot
overshoot: the loser ends FAIL with ``fail_kind == "over_cap"`` without training.

Killed workers: with a database URL, Optuna's heartbeat fails a silent trial and enqueues its
parameters again. File storages (journal, SQLite) have no heartbeat; each trial records its worker
(host, boot, pid, process start time), and :func:`recover_dead_trials` -- run when a study is opened
and after every trial -- fails the RUNNING trials whose worker on *this* host is gone and enqueues
their parameters again (Optuna's :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.studies.liveness import process_identity, worker_is_dead
from sb3_ppo_variants.studies.runs import EVAL_SEED_OFFSET, SeededRun, evaluation_points
from sb3_ppo_variants.studies.search_spaces import check_combination, params_to_kwargs, suggest_params

__all__ = [
    "MAX_RETRY",
    "OUTPUT_FILES",
    "PRUNERS",
    "SAMPLERS",
    "Objective",
    "StudyMismatchError",
    "TuningSettings",
    "best_hyperparams",
    "counts_toward_total",
    "make_pruner",
    "make_sampler",
    "n_counted",
    "open_study",
    "process_identity",
    "recover_dead_trials",
    "run_trials",
    "write_outputs",
]

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
#: How many times the parameters of a trial whose worker died are run again.
MAX_RETRY = 2
#: User attributes a trial writes while it runs; a retried trial inherits them, so they are cleared first.
_RUN_ATTRS = ("seed_curves", "seed_scores", "fail_reason", "fail_kind", "prune_reason")


class StudyMismatchError(ValueError):
    """An existing study was created with other settings (variant, env, budget, seeds, fixed hyperparameters)."""


@dataclass(frozen=True)
class TuningSettings:
    """What a trial trains and how it is scored; the same for every trial and worker of a study.

    :param variant: a key of ``sb3_ppo_variants.VARIANTS``
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
        """JSON form, as stored in the study's user attributes."""
        return json.loads(json.dumps(asdict(self)))

    @property
    def evaluation_points(self) -> list[int]:
        return evaluation_points(self.timesteps, self.n_evaluations)


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


def open_study(
    storage: BaseStorage,
    study_name: str,
    settings: TuningSettings,
    sampler: str = "tpe",
    sampler_seed: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    n_startup_trials: int = 5,
) -> optuna.Study:
    """Create the study, or load it to resume; refuse a study created with other settings.

    A given ``sampler_seed`` is offset by the number of trials already stored, so that a resumed study
    does not replay the random start of the sampler.

    :raises StudyMismatchError: when the stored settings differ from ``settings``
    """
    study = optuna.create_study(
        storage=storage, study_name=study_name, direction="maximize", load_if_exists=True, pruner=pruner
    )
    stored = study.user_attrs.get("settings")
    wanted = settings.as_attrs()
    if stored is None:
        study.set_user_attr("settings", wanted)
    elif stored != wanted:
        differences = ", ".join(
            f"{key}: stored {stored.get(key)!r}, given {wanted.get(key)!r}"
            for key in sorted(set(stored) | set(wanted))
            if stored.get(key) != wanted.get(key)
        )
        raise StudyMismatchError(
            f"--study-name {study_name!r} already exists with other settings ({differences}); "
            "resume it with the same settings, or choose another --study-name or --out"
        )
    seed = None if sampler_seed is None else sampler_seed + len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(sampler, seed, n_startup_trials)
    return study


# --- counting trials towards max_total_trials -------------------------------------------------


def counts_toward_total(trial: FrozenTrial) -> bool:
    """Whether ``trial`` takes one of the ``max_total_trials`` slots (see the module docstring)."""
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("fail_kind") == "error"
    return True


def n_counted(study: optuna.Study, include_waiting: bool = False) -> int:
    """Trials of ``study`` that count towards ``max_total_trials`` (WAITING ones only if asked)."""
    return sum(
        counts_toward_total(t) and (include_waiting or t.state != TrialState.WAITING) for t in study.get_trials(deepcopy=False)
    )


def _slots_taken_before(trial: optuna.Trial) -> int:
    """Counted trials numbered below ``trial`` (WAITING included: they run before new trials)."""
    return sum(counts_toward_total(t) for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number)


class StopAtTotalTrials:
    """Callback: stop this worker once the study holds ``max_total_trials`` counted trials (all workers)."""

    def __init__(self, max_total_trials: int) -> None:
        self.max_total_trials = max_total_trials

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if n_counted(study) >= self.max_total_trials:
            study.stop()


# --- workers that died mid-trial (file storages) -------------------------------------------------


def recover_dead_trials(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Fail the RUNNING trials whose worker on this host died, and enqueue their parameters again.

    Only for storages without a heartbeat (journal, SQLite): with a heartbeat Optuna does it.

    :return: the numbers of the trials failed
    """
    if is_heartbeat_enabled(storage):
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not isinstance(worker, dict) or not worker_is_dead(worker):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            reason = f"its worker (pid {worker.get('pid')} on {worker.get('host')}) died mid-trial"
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_user_attr(trial_id, "fail_kind", "worker_died")
            if not storage.set_trial_state_values(trial_id, TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another worker got there first
        _retry(study, storage.get_trial(trial_id))
        recovered.append(trial.number)
    return recovered


def _retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue the parameters of a FAIL trial again, up to MAX_RETRY times (Optuna's heartbeat retry)."""
    with warnings.catch_warnings():  # experimental since Optuna 2.8; Optuna silences it the same way
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)


class RecoverDeadTrials:
    """Callback: :func:`recover_dead_trials` after every trial."""

    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        recover_dead_trials(study, self.storage)


# --- the objective -------------------------------------------------------------------------------


class Objective:
    """Mean over seeds of the final deterministic evaluation return of the sampled hyperparameters.

    :param settings: what to train and how to score it
    :param max_total_trials: the cap over the whole study, or None
    """

    def __init__(self, settings: TuningSettings, max_total_trials: int | None = None) -> None:
        self.settings = settings
        self.max_total_trials = max_total_trials
        self.n_calls = 0
        self.last_trial: int | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        self.n_calls += 1
        self.last_trial = trial.number
        for key in _RUN_ATTRS:
            if trial.user_attrs.get(key) is not None:  # inherited by a retry
                trial.set_user_attr(key, None)
        trial.set_user_attr("worker", process_identity())
        if self.max_total_trials is not None and _slots_taken_before(trial) >= self.max_total_trials:
            trial.set_user_attr("fail_kind", "over_cap")
            trial.set_user_attr("fail_reason", f"not run: the study already has --max-total-trials {self.max_total_trials}")
            trial.study.stop()
            return math.nan  # FAIL, quietly: nothing was trained
        params = suggest_params(trial, self.settings.variant, self.settings.wide, fixed=self.settings.hyperparams)
        hyperparams = {**self.settings.hyperparams, **params_to_kwargs(params)}
        reason = check_combination(hyperparams, self.settings.timesteps)
        if reason is not None:
            trial.set_user_attr("prune_reason", reason)
            raise optuna.TrialPruned(reason)
        try:
            return self._train_and_score(trial, hyperparams)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("fail_kind", "error")
            trial.set_user_attr("fail_reason", f"{type(error).__name__}: {error}")
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_kind", "interrupted")
            trial.set_user_attr("fail_reason", "interrupted (KeyboardInterrupt)")
            raise

    def _train_and_score(self, trial: optuna.Trial, hyperparams: dict[str, Any]) -> float:
        settings = self.settings
        runs: list[SeededRun] = []
        try:
            for seed in settings.seeds:
                runs.append(
                    SeededRun(
                        settings.variant,
                        settings.env_id,
                        seed,
                        settings.timesteps,
                        hyperparams=hyperparams,
                        n_eval_episodes=settings.n_eval_episodes,
                    )
                )
            curves: list[list[float]] = [[] for _ in runs]
            for step in settings.evaluation_points:
                for run, curve in zip(runs, curves):
                    run.advance(step)
                    curve.append(run.evaluate())
                mean = float(np.mean([curve[-1] for curve in curves]))
                trial.set_user_attr("seed_curves", curves)
                if not math.isfinite(mean):
                    raise FloatingPointError(f"the mean evaluation return at {step} timesteps is {mean}")
                trial.report(mean, step)
                if trial.should_prune():
                    reason = f"pruned at {step} timesteps: mean return {mean:.6g} over {len(runs)} seeds"
                    trial.set_user_attr("prune_reason", reason)
                    raise optuna.TrialPruned(reason)
            trial.set_user_attr("seed_scores", [curve[-1] for curve in curves])
            return mean
        finally:
            for run in runs:
                run.close()


def run_trials(
    study: optuna.Study,
    storage: BaseStorage,
    settings: TuningSettings,
    n_trials: int,
    max_total_trials: int | None = None,
    show_progress_bar: bool = True,
) -> int:
    """Run up to ``n_trials`` trials in this process, stopping when the study holds ``max_total_trials``.

    A trial that raises is recorded as FAIL with its reason (user attribute ``fail_reason``) and the
    study goes on. Trials of dead workers are recovered first (see :func:`recover_dead_trials`). On
    KeyboardInterrupt the interrupted trial is failed, its parameters are enqueued again for the next
    run, and the KeyboardInterrupt propagates.

    :return: how many trials this call started (0 when the study is already full)
    """
    recover_dead_trials(study, storage)
    if max_total_trials is not None:
        n_trials = min(n_trials, max_total_trials - n_counted(study))
    if n_trials <= 0:
        return 0
    callbacks: list[Any] = [RecoverDeadTrials(storage)]
    if max_total_trials is not None:
        callbacks.append(StopAtTotalTrials(max_total_trials))
    objective = Objective(settings, max_total_trials)
    try:
        study.optimize(
            objective,
            n_trials=n_trials,
            catch=(Exception,),
            callbacks=callbacks,
            gc_after_trial=True,
            show_progress_bar=show_progress_bar,
        )
    except KeyboardInterrupt:
        if objective.last_trial is not None:
            last = study.get_trials(deepcopy=False)[objective.last_trial]
            if last.state == TrialState.FAIL and last.user_attrs.get("fail_kind") == "interrupted":
                _retry(study, last)
        raise
    return objective.n_calls


# --- outputs -------------------------------------------------------------------------------------

OUTPUT_FILES = {
    "trials": "trials.csv",
    "best": "best_hyperparams.yml",
    "summary": "summary.md",
}
_SLICE_PARAMS = ("clip_range", "kl_coef", "kl_target", "ent_coef")


def _best_trial(study: optuna.Study) -> FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no trial completed yet
        return None


def best_hyperparams(trial: FrozenTrial, settings: TuningSettings) -> dict[str, Any]:
    """The rl-zoo3 entry of a trial: the fixed settings, the sampled ones, and the budget they were tuned for."""
    return {**settings.hyperparams, **params_to_kwargs(trial.params), "n_timesteps": settings.timesteps}


def write_best_yaml(study: optuna.Study, settings: TuningSettings, path: Path) -> FrozenTrial | None:
    """``{env_id: entry}`` of the best trial, readable by ``load_hyperparams`` and rl-zoo3; None if no trial completed."""
    best = _best_trial(study)
    if best is None:
        return None
    header = (
        f"# Best of study {study.study_name!r}: variant {settings.variant!r}, trial {best.number}, "
        f"mean return {best.value:.6g} over seeds {list(settings.seeds)}.\n"
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
            axes = plot()
            figure = np.ravel(axes)[0].figure
            figure.savefig(out / filename, dpi=100, bbox_inches="tight")
            plt.close(figure)
            status[filename] = ""
        except Exception as error:  # e.g. importances need two completed trials with varying parameters
            status[filename] = f"{type(error).__name__}: {error}"
            plt.close("all")
    return status


def _state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        counts[trial.state.name] += 1
    return counts


def _summary(
    study: optuna.Study, settings: TuningSettings, storage_label: str, best: FrozenTrial | None, plots: dict[str, str]
) -> str:
    counts = _state_counts(study)
    seeds = list(settings.seeds)
    lines = [
        f"# Tuning `{settings.variant}` on `{settings.env_id}`",
        "",
        f"- study `{study.study_name}` in `{storage_label}`",
        f"- each trial: {settings.timesteps} timesteps x {len(seeds)} seeds {seeds}; {settings.n_evaluations} evaluations of "
        f"{settings.n_eval_episodes} deterministic episodes on an evaluation env seeded with seed + {EVAL_SEED_OFFSET}",
        f"- search space: {'variant terms + rl-zoo3 PPO ranges' if settings.wide else 'variant terms'}; "
        f"fixed: {dict(settings.hyperparams) or 'nothing'}",
        "- trials: " + ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n),
        "",
    ]
    if best is None:
        lines += ["No trial has completed yet.", ""]
    else:
        scores = best.user_attrs.get("seed_scores")
        lines += [
            f"## Best: trial {best.number}, mean return {best.value:.6g}",
            "",
            f"Per seed: {scores}." if scores else "",
            "",
            "| hyperparameter | value |",
            "|---|---|",
            *(f"| {key} | `{value}` |" for key, value in params_to_kwargs(best.params).items()),
            "",
            f"`{OUTPUT_FILES['best']}` rebuilds it: `make_model({settings.variant!r}, {settings.env_id!r}, "
            f"load_hyperparams({OUTPUT_FILES['best']!r}, {settings.env_id!r}), seed=0)`. The training seeds are the same "
            "in every trial; confirm the choice on fresh seeds before trusting it.",
            "",
        ]
    failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
    if failed:
        lines += ["## Failed trials", ""]
        lines += [f"- trial {t.number}: {t.user_attrs.get('fail_reason') or 'no reason recorded'}" for t in failed]
        lines += [""]
    lines += ["## Files", "", f"- `{OUTPUT_FILES['trials']}`: every trial (parameters, values, user attributes)"]
    lines += [f"- `{name}`" + (f": not drawn ({why})" if why else "") for name, why in plots.items()]
    return "\n".join(lines) + "\n"


def write_outputs(study: optuna.Study, settings: TuningSettings, out: str | Path, storage_label: str) -> dict[str, Path]:
    """Write the trials CSV, the best hyperparameters YAML, the plots and ``summary.md`` into ``out``.

    :return: name -> path of the files written
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    study.trials_dataframe().to_csv(out / OUTPUT_FILES["trials"], index=False)
    written["trials"] = out / OUTPUT_FILES["trials"]
    best = write_best_yaml(study, settings, out / OUTPUT_FILES["best"])
    if best is not None:
        written["best"] = out / OUTPUT_FILES["best"]
    plots = write_plots(study, out)
    written.update({name: out / name for name, why in plots.items() if not why})
    (out / OUTPUT_FILES["summary"]).write_text(_summary(study, settings, storage_label, best, plots))
    written["summary"] = out / OUTPUT_FILES["summary"]
    return written
