"""The grid of an ablation -- (arm, env, seed) cells -- kept in an Optuna study, each cell recorded complete once.

The cells are enqueued in *batches* (:func:`enqueue_missing`): cells of one environment with equal shapes, up to
``members_per_process`` each, so that a batch can be trained as one population. Each batch is one trial, enqueued
with ``study.enqueue_trial`` and the recipes of its cells in the user attribute ``batch`` (arm, algorithm,
hyperparameters, constructor arguments, seed), so that any worker on any machine trains the same thing. Workers
pull the batches through ``study.optimize`` (:func:`run_ablation_worker`, on the
:mod:`~sb3_ppo_variants.studies.runner`); a finished batch stores each cell's curve and score (``results``),
and how it was trained (``batch_mode``: solo or population, and why).

**At most once.** Two workers that start together may both enqueue a cell, and a dead worker's batch comes back
as a retry. So when a worker's trial starts, it keeps only the cells no other trial *holds* (``claimed``) -- a
trial holds its batch while WAITING, its claimed cells while RUNNING (its whole batch until it has claimed) and
the cells it stored while COMPLETE -- skipping a cell held by a COMPLETE trial or by a lower-numbered trial. Of
two trials with one cell, only the lower-numbered can ever run it: its worker sees no lower holder, and the
other's sees it (WAITING or RUNNING). A trial that keeps nothing, or that Optuna created because the queue ran
dry, ends PRUNED (``duplicate_of``, ``idle``) without training.

**Failures and resuming**: a cell is the unit of failure: a cell whose own training raises (a non-finite loss, an
error in its environment) is recorded in its trial's ``failures`` with the reason, and its batch's other cells
complete. A cell with no COMPLETE, WAITING or RUNNING trial holding it -- never run, interrupted, its worker dead, or
failed fewer than :data:`MAX_ATTEMPTS` times -- is enqueued again (the command retries a failed cell once, at
once); COMPLETE cells never run again.
The study's protocol (budget, evaluation frequency and episodes) is stored with the study; another protocol is
refused (:class:`~sb3_ppo_variants.studies.storage.StudyMismatchError`), and so is another recipe for a cell that
is already complete.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.evaluation import evaluation_points
from sb3_ppo_variants.studies.arms import VariantSpec, filter_hyperparams, hyperparams_for
from sb3_ppo_variants.studies.liveness import WORKER_ATTR, recover_stale_trials
from sb3_ppo_variants.studies.registry import PLAIN_VARIANTS, algorithm_class
from sb3_ppo_variants.studies.runner import (
    SHAPE_KEYS,
    Cell,
    CellResult,
    Objective,
    RunProtocol,
    run_worker,
    train_batch,
)
from sb3_ppo_variants.studies.storage import StudyMismatchError, open_study, protocol_of

__all__ = [
    "DEFAULT_MEMBERS_PER_PROCESS",
    "DEFAULT_STUDY_NAME",
    "MAX_ATTEMPTS",
    "AblationResults",
    "CellTask",
    "Protocol",
    "ablation_objective",
    "cell_key",
    "collect_results",
    "enqueue_missing",
    "failures",
    "grid_status",
    "make_batches",
    "open_ablation_study",
    "plan_cells",
    "run_ablation_worker",
]

DEFAULT_STUDY_NAME = "ablation"
#: Cells trained together in one trial, at most.
DEFAULT_MEMBERS_PER_PROCESS = 8
#: User attributes an ablation trial writes while it runs (a retry inherits them, so they are cleared first).
RUN_ATTRS = ("claimed", "results", "failures", "batch_mode", "duplicate_of", "idle")

Train = Callable[[Sequence[Cell], RunProtocol], list[CellResult]]
#: A cell that failed (an error in its own training) runs at most this many times in a study.
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class Protocol:
    """What every run of a study shares.

    :param timesteps: training budget of each run (the schedules' whole budget)
    :param eval_freq: evaluate before training and at evenly spaced points at most ``eval_freq`` apart, the last at
        the end of the budget
    :param n_eval_episodes: deterministic episodes per evaluation, on an env seeded apart from training
    """

    timesteps: int
    eval_freq: int
    n_eval_episodes: int = 10

    def __post_init__(self) -> None:
        for name in ("timesteps", "eval_freq", "n_eval_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")

    @property
    def run_protocol(self) -> RunProtocol:
        points = evaluation_points(self.timesteps, math.ceil(self.timesteps / self.eval_freq))
        return RunProtocol(self.timesteps, (0, *points), self.n_eval_episodes)


def cell_key(variant: str, env_id: str, seed: int) -> str:
    return f"{variant}|{env_id}|{seed}"


@dataclass
class CellTask:
    """The recipe of one run, JSON-able: what a worker needs to run the cell anywhere.

    :param variant: the arm's name (the key of the results); ``algorithm`` is the registry name it builds
    """

    variant: str
    env_id: str
    seed: int
    algorithm: str
    hyperparams: dict[str, Any]
    model_kwargs: dict[str, Any]
    hyperparams_source: str
    dropped: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return cell_key(self.variant, self.env_id, self.seed)

    def recipe(self) -> dict[str, Any]:
        """The task as stored in a trial's ``batch`` (with its ``key``)."""
        return json.loads(json.dumps({**asdict(self), "key": self.key}))


def _cell(recipe: dict[str, Any]) -> Cell:
    return Cell(recipe["algorithm"], recipe["env_id"], recipe["seed"], recipe["hyperparams"], recipe["model_kwargs"])


def plan_cells(
    specs: Iterable[VariantSpec], envs: Iterable[str], seeds: Iterable[int], source: dict[str, Any] | None, label: str
) -> list[CellTask]:
    """Every (arm, env, seed) cell with its recipe, in the order arm, env, seed.

    :raises ValueError: for a label an env's entry does not define (see :func:`~sb3_ppo_variants.studies.arms.hyperparams_for`)
    """
    tasks = []
    for spec in specs:
        for env_id in envs:
            entry, where, algorithm = hyperparams_for(spec, env_id, source, label)
            entry.pop("n_timesteps", None)  # rl-zoo3's budget: the protocol's timesteps replace it
            entry, dropped = filter_hyperparams(algorithm_class(algorithm), entry)
            for seed in seeds:
                tasks.append(CellTask(spec.name, env_id, int(seed), algorithm, entry, dict(spec.overrides), where, dropped))
    return tasks


def make_batches(tasks: Sequence[CellTask], members_per_process: int, min_batches: int = 1) -> list[list[CellTask]]:
    """Group ``tasks`` into batches: cells of one env that can be one population together (or, if not, of one
    algorithm), each group split evenly into batches of at most ``members_per_process`` cells -- and into at least
    ``min_batches`` where the group is large enough, so that that many local workers all have work."""
    if members_per_process < 1:
        raise ValueError(f"--members-per-process must be >= 1, got {members_per_process}")
    groups: dict[str, list[CellTask]] = defaultdict(list)
    for task in tasks:
        merged = {**task.hyperparams, **task.model_kwargs}
        shape = {key: merged.get(key) for key in SHAPE_KEYS}
        # a population hosts the plain variants and VariantPPO (factorial cells); a baseline batches with itself only.
        # Grouping only: whether a batch trains as one population is the Population's own decision (train_batch).
        solo_only = task.algorithm not in (*PLAIN_VARIANTS, "variant_ppo")
        signature = json.dumps([task.env_id, shape, task.algorithm if solo_only else ""], sort_keys=True, default=str)
        groups[signature].append(task)
    batches = []
    for group in groups.values():
        n = max(math.ceil(len(group) / members_per_process), min(min_batches, len(group)))
        batches += [list(part) for part in np.array_split(np.array(group, dtype=object), n)]
    return batches


# ----------------------------------------------------------------------------------------------- the study


def open_ablation_study(storage: optuna.storages.BaseStorage, study_name: str, protocol: Protocol) -> optuna.Study:
    """Create or load the study, refusing another protocol (:func:`~sb3_ppo_variants.studies.storage.open_study`)."""
    return open_study(storage, study_name, asdict(protocol), sampler=optuna.samplers.RandomSampler())


def _protocol(study: optuna.Study) -> Protocol:
    return Protocol(**protocol_of(study))


def _batch(trial: FrozenTrial) -> list[dict[str, Any]]:
    return list(trial.user_attrs.get("batch") or [])


def _held(trial: FrozenTrial) -> set[str]:
    """The cells ``trial`` holds (see the module docstring)."""
    if trial.state == TrialState.WAITING:
        return {recipe["key"] for recipe in _batch(trial)}
    if trial.state == TrialState.RUNNING:
        worker = trial.user_attrs.get(WORKER_ATTR)
        claimed = trial.user_attrs.get("claimed")
        if isinstance(worker, dict) and worker.get("trial") == trial.number and claimed is not None:
            return set(claimed)
        return {recipe["key"] for recipe in _batch(trial)}
    if trial.state == TrialState.COMPLETE:
        return set(trial.user_attrs.get("results") or {})
    return set()


def _holders(trials: Iterable[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    holders: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in trials:
        for key in _held(trial):
            holders[key].append(trial)
    return holders


#: What a cell trains: two recipes with these equal are the same run (where the settings were read from is not).
TRAINING_FIELDS = ("algorithm", "hyperparams", "model_kwargs")


def _training(recipe: dict[str, Any]) -> str:
    return json.dumps({name: recipe[name] for name in TRAINING_FIELDS}, sort_keys=True)


def failures(trials: Iterable[FrozenTrial]) -> dict[str, list[str]]:
    """Cell key -> the reasons of its failed attempts: a cell that failed in a completed batch, or every cell of a
    batch that failed as a whole with an error (a dead worker's or an interrupted batch is no attempt)."""
    found: dict[str, list[str]] = defaultdict(list)
    for trial in trials:
        if trial.state == TrialState.COMPLETE:
            for key, reason in (trial.user_attrs.get("failures") or {}).items():
                found[key].append(reason)
        elif trial.state == TrialState.FAIL and trial.user_attrs.get("fail_kind") == "error":
            for key in trial.user_attrs.get("claimed") or [recipe["key"] for recipe in _batch(trial)]:
                found[key].append(trial.user_attrs.get("fail_reason") or "")
    return found


def enqueue_missing(
    study: optuna.Study,
    tasks: Sequence[CellTask],
    members_per_process: int = DEFAULT_MEMBERS_PER_PROCESS,
    min_batches: int = 1,
) -> list[CellTask]:
    """Enqueue, in batches (:func:`make_batches`), the cells no trial holds and that failed fewer than
    :data:`MAX_ATTEMPTS` times; return them.

    :raises StudyMismatchError: when a COMPLETE cell was run with another recipe (other hyperparameters)
    """
    recover_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    holders = _holders(trials)
    recipes = {recipe["key"]: recipe for trial in trials if trial.state == TrialState.COMPLETE for recipe in _batch(trial)}
    failed = failures(trials)
    missing = []
    for task in tasks:
        done = [t for t in holders.get(task.key, []) if t.state == TrialState.COMPLETE]
        if done and _training(recipes[task.key]) != _training(task.recipe()):
            raise StudyMismatchError(
                f"cell {task.key} was run with {_training(recipes[task.key])}, this command asks for "
                f"{_training(task.recipe())}; use another --out / --storage / --study-name for other hyperparameters"
            )
        if task.key not in holders and len(failed.get(task.key, [])) < MAX_ATTEMPTS:
            missing.append(task)
    for batch in make_batches(missing, members_per_process, min_batches):
        study.enqueue_trial({}, user_attrs={"batch": [task.recipe() for task in batch]})
    return missing


def _claim(trial: optuna.Trial, batch: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    """The recipes of ``batch`` no other trial holds first, and the numbers of the trials that hold the others."""
    holders = _holders(t for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number)
    keep, others = [], set()
    for recipe in batch:
        ahead = [t.number for t in holders.get(recipe["key"], []) if t.state == TrialState.COMPLETE or t.number < trial.number]
        if ahead:
            others.add(min(ahead))
        else:
            keep.append(recipe)
    return keep, sorted(others)


def _run_batch(trial: optuna.Trial, train: Train) -> float:
    batch = trial.user_attrs.get("batch")
    if batch is None:  # the queue ran dry between this worker's look and Optuna's ask(): not a batch
        trial.set_user_attr("idle", True)
        trial.study.stop()
        raise optuna.TrialPruned("no batch was waiting")
    keep, others = _claim(trial, batch)
    trial.set_user_attr("claimed", [recipe["key"] for recipe in keep])
    if not keep:
        trial.set_user_attr("duplicate_of", others)
        raise optuna.TrialPruned(f"every cell of the batch is held by trials {others}")
    results = train([_cell(recipe) for recipe in keep], _protocol(trial.study).run_protocol)
    mode, _, why = results[0].mode.partition(": ")
    trial.set_user_attr("batch_mode", {"mode": mode, "why": why})
    done = {recipe["key"]: result for recipe, result in zip(keep, results) if result.failure is None}
    trial.set_user_attr("failures", {r["key"]: x.failure for r, x in zip(keep, results) if x.failure is not None})
    trial.set_user_attr("results", {key: result.as_attrs() for key, result in done.items()})
    return float(len(done))  # the value of a batch: its completed cells


def _train_isolated(cells: Sequence[Cell], protocol: RunProtocol) -> list[CellResult]:
    return train_batch(cells, protocol, isolate=True)


def ablation_objective(train: Train = _train_isolated) -> Objective:
    """The objective of an ablation's workers: run the enqueued batch of each trial.

    :param train: ``(cells, protocol) -> results`` (:func:`~sb3_ppo_variants.studies.runner.train_batch`; tests
        pass a cheap fake)
    """
    return Objective(lambda trial: _run_batch(trial, train), run_attrs=RUN_ATTRS)


def run_ablation_worker(
    study: optuna.Study,
    train: Train = _train_isolated,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    max_trials: int | None = None,
) -> int:
    """Run batches until none is waiting (or ``max_trials`` trials were started); return how many cells completed.

    :param on_trial: an ``optimize`` callback, called after each trial (a progress bar)
    """
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    run_worker(
        study, ablation_objective(train), n_trials=max_trials, until_queue_empty=True, callbacks=[on_trial] if on_trial else []
    )
    return sum(
        len(t.user_attrs.get("results") or {})
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.number not in before
    )


# ----------------------------------------------------------------------------------------------- results


@dataclass
class AblationResults:
    """Everything a study holds, as tables.

    :param runs: one row per completed cell: variant, env_id, seed, final_score, timesteps, wall_time_s, trial, host
    :param curves: one row per evaluation: variant, env_id, seed, timestep (actual), nominal, eval_return
    :param episodes: one row per training episode: variant, env_id, seed, timestep, episode_return
    :param recipes: cell key -> recipe (algorithm, hyperparameters, constructor arguments, where they came from)
    :param failed: cell key -> the reasons of its failed attempts, for cells with no result
    :param duplicates: cells stored by more than one COMPLETE trial (should never happen; kept visible)
    :param batches: one row per COMPLETE trial: trial, cells, mode (solo / population), why
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    episodes: pd.DataFrame
    recipes: dict[str, dict[str, Any]]
    failed: dict[str, list[str]]
    duplicates: list[str]
    protocol: Protocol
    batches: pd.DataFrame

    def restrict(self, keys: set[str]) -> None:
        """Keep only the cells ``keys`` (a study may hold more than one command's grid)."""
        for name in ("runs", "curves", "episodes"):
            frame = getattr(self, name)
            keep = np.array([cell_key(v, e, s) in keys for v, e, s in zip(frame["variant"], frame["env_id"], frame["seed"])])
            setattr(self, name, frame[keep.astype(bool)].reset_index(drop=True))  # (an empty list would select columns)
        self.failed = {key: error for key, error in self.failed.items() if key in keys}
        self.recipes = {key: recipe for key, recipe in self.recipes.items() if key in keys}
        cells = self.runs.groupby("trial").size()
        self.batches = self.batches[self.batches["trial"].isin(cells.index)].reset_index(drop=True)
        self.batches["cells"] = [int(cells[trial]) for trial in self.batches["trial"]]


def collect_results(study: optuna.Study) -> AblationResults:
    """The completed cells of the study as DataFrames (the lowest-numbered trial if a cell ever completed twice)."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    runs, curves, episodes, batches = [], [], [], []
    recipes: dict[str, dict[str, Any]] = {}
    stored: dict[str, list[int]] = defaultdict(list)
    for trial in trials:
        if trial.state != TrialState.COMPLETE:
            continue
        by_key = {recipe["key"]: recipe for recipe in _batch(trial)}
        results = trial.user_attrs.get("results") or {}
        mode = trial.user_attrs.get("batch_mode") or {}
        batches.append({"trial": trial.number, "cells": len(results), "mode": mode.get("mode"), "why": mode.get("why")})
        for key, attrs in results.items():
            stored[key].append(trial.number)
            if len(stored[key]) > 1:
                continue
            cell = recipes[key] = by_key[key]
            ids = {"variant": cell["variant"], "env_id": cell["env_id"], "seed": cell["seed"]}
            runs.append(
                {
                    **ids,
                    "final_score": attrs["final_score"],
                    "timesteps": attrs["curve_timesteps"][-1],
                    "wall_time_s": attrs.get("wall_time_s"),
                    "trial": trial.number,
                    "host": (trial.user_attrs.get(WORKER_ATTR) or {}).get("host"),
                }
            )
            for t, n, r in zip(attrs["curve_timesteps"], attrs["curve_nominal"], attrs["curve_returns"]):
                curves.append({**ids, "timestep": t, "nominal": n, "eval_return": r})
            for t, r in zip(attrs["episode_timesteps"], attrs["episode_returns"]):
                episodes.append({**ids, "timestep": t, "episode_return": r})
    failed = {key: reasons for key, reasons in failures(trials).items() if key not in stored}
    columns = {
        "runs": ["variant", "env_id", "seed", "final_score", "timesteps", "wall_time_s", "trial", "host"],
        "curves": ["variant", "env_id", "seed", "timestep", "nominal", "eval_return"],
        "episodes": ["variant", "env_id", "seed", "timestep", "episode_return"],
    }
    return AblationResults(
        runs=pd.DataFrame(runs, columns=columns["runs"]),
        curves=pd.DataFrame(curves, columns=columns["curves"]),
        episodes=pd.DataFrame(episodes, columns=columns["episodes"]),
        recipes=recipes,
        failed=failed,
        duplicates=sorted(key for key, numbers in stored.items() if len(numbers) > 1),
        protocol=_protocol(study),
        batches=pd.DataFrame(batches, columns=["trial", "cells", "mode", "why"]),
    )


def grid_status(study: optuna.Study, keys: Iterable[str]) -> dict[str, str]:
    """For each cell key: ``complete``, ``running``, ``waiting``, ``failed`` (tried, not held) or ``missing``."""
    trials = study.get_trials(deepcopy=False)
    holders = _holders(trials)
    tried = {recipe["key"] for trial in trials for recipe in _batch(trial)}
    status = {}
    for key in keys:
        states = {t.state for t in holders.get(key, [])}
        for state, name in (
            (TrialState.COMPLETE, "complete"),
            (TrialState.RUNNING, "running"),
            (TrialState.WAITING, "waiting"),
        ):
            if state in states:
                status[key] = name
                break
        else:
            status[key] = "failed" if key in tried else "missing"
    return status
