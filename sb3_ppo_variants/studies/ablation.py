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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.evaluation import evaluation_points
from sb3_ppo_variants.population import STRUCTURAL_SETTINGS
from sb3_ppo_variants.studies.arms import VariantSpec, filter_hyperparams, hyperparams_for
from sb3_ppo_variants.studies.liveness import WORKER_ATTR, recover_stale_trials
from sb3_ppo_variants.studies.reference import ReferenceScore
from sb3_ppo_variants.studies.registry import PLAIN_VARIANTS, algorithm_class
from sb3_ppo_variants.studies.runner import Cell, CellResult, Objective, RunProtocol, run_worker, train_batch
from sb3_ppo_variants.studies.storage import StudyMismatchError, open_study, protocol_of

__all__ = [
    "COLUMNS",
    "DEFAULT_MEMBERS_PER_PROCESS",
    "DEFAULT_STUDY_NAME",
    "MAX_ATTEMPTS",
    "AblationResults",
    "Plan",
    "Protocol",
    "collect_results",
    "enqueue_missing",
    "failures",
    "grid_status",
    "last_line",
    "make_batches",
    "open_ablation_study",
    "plan_cells",
    "run_ablation_worker",
]

DEFAULT_STUDY_NAME = "ablation"
#: Cells trained together in one trial, at most.
DEFAULT_MEMBERS_PER_PROCESS = 8
#: A cell that failed (an error in its own training) runs at most this many times in a study.
MAX_ATTEMPTS = 2
#: User attributes an ablation trial writes while it runs (a retry inherits them, so they are cleared first).
RUN_ATTRS = ("claimed", "results", "failures", "batch_mode", "duplicate_of", "idle")
#: Settings of an rl-zoo3 entry that fix the shapes of a run: the population's own list, rl-zoo3's frame stack, gSDE.
SHAPE_KEYS = (*STRUCTURAL_SETTINGS, "frame_stack", "use_sde")
#: What a cell trains: two recipes with these equal are the same run (where the settings were read from is not).
TRAINING_FIELDS = ("algorithm", "hyperparams", "model_kwargs")

Train = Callable[[Sequence[Cell], RunProtocol], list[CellResult]]


@dataclass(frozen=True)
class Protocol:
    """What every run of a study shares.

    :param timesteps: training budget of each run (the schedules' whole budget)
    :param eval_freq: evaluate before training and at evenly spaced points at most ``eval_freq`` apart, the last at the
        end of the budget
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


@dataclass
class Plan:
    """A validated ablation command (``sb3pv-ablate``): the grid, its study, and how to report it."""

    specs: list[VariantSpec]
    envs: list[str]
    seeds: list[int]
    cells: list[Cell]
    references: dict[str, ReferenceScore]
    out: Path
    storage: str | None
    storage_label: str
    study: optuna.Study
    command: str = ""
    baseline: str | None = None
    bootstrap_reps: int = 2000
    failed_as_random: bool = False

    @property
    def keys(self) -> list[str]:
        return [cell.key for cell in self.cells]


def plan_cells(
    specs: Iterable[VariantSpec], envs: Iterable[str], seeds: Iterable[int], source: dict[str, Any] | None, label: str
) -> list[Cell]:
    """Every (arm, env, seed) cell with its recipe, in the order arm, env, seed.

    :raises ValueError: for a label an env's entry does not define (see :func:`~sb3_ppo_variants.studies.arms.hyperparams_for`)
    """
    cells = []
    for spec in specs:
        for env_id in envs:
            entry, where, algorithm = hyperparams_for(spec, env_id, source, label)
            entry.pop("n_timesteps", None)  # rl-zoo3's budget: the protocol's timesteps replace it
            entry, dropped = filter_hyperparams(algorithm_class(algorithm), entry)
            for seed in seeds:
                cells.append(Cell(algorithm, env_id, int(seed), entry, dict(spec.overrides), spec.name, where, dropped))
    return cells


def make_batches(cells: Sequence[Cell], members_per_process: int, min_batches: int = 1) -> list[list[Cell]]:
    """Group ``cells`` into batches: cells of one env that can be one population together (or, if not, of one
    algorithm), each group split evenly into batches of at most ``members_per_process`` cells -- and into at least
    ``min_batches`` where the group is large enough, so that that many local workers all have work."""
    if members_per_process < 1:
        raise ValueError(f"--members-per-process must be >= 1, got {members_per_process}")
    groups: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        merged = {**cell.hyperparams, **cell.model_kwargs}
        shape = {key: merged.get(key) for key in SHAPE_KEYS}
        # a population hosts the plain variants and VariantPPO (factorial cells); a baseline batches with itself only.
        # Grouping only: whether a batch trains as one population is the Population's own decision (train_batch).
        solo_only = cell.algorithm not in (*PLAIN_VARIANTS, "variant_ppo")
        signature = json.dumps([cell.env_id, shape, cell.algorithm if solo_only else ""], sort_keys=True, default=str)
        groups[signature].append(cell)
    batches = []
    for group in groups.values():
        n = max(math.ceil(len(group) / members_per_process), min(min_batches, len(group)))
        batches += [list(part) for part in np.array_split(np.array(group, dtype=object), n)]
    return batches


# ----------------------------------------------------------------------------------------------- the study


def open_ablation_study(storage: optuna.storages.BaseStorage, study_name: str, protocol: Protocol) -> optuna.Study:
    """Create or load the study, refusing another protocol (:func:`~sb3_ppo_variants.studies.storage.open_study`)."""
    return open_study(storage, study_name, asdict(protocol), sampler=optuna.samplers.RandomSampler())


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


def last_line(reason: str, default: str = "") -> str:
    """The last line of a failure reason (a traceback's ends with the error), or ``default`` for an empty one."""
    return (reason.strip().splitlines() or [default])[-1]


def enqueue_missing(
    study: optuna.Study, cells: Sequence[Cell], members_per_process: int = DEFAULT_MEMBERS_PER_PROCESS, min_batches: int = 1
) -> list[Cell]:
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
    for cell in cells:
        done = [t for t in holders.get(cell.key, []) if t.state == TrialState.COMPLETE]
        if done and _training(recipes[cell.key]) != _training(cell.recipe()):
            raise StudyMismatchError(
                f"cell {cell.key} was run with {_training(recipes[cell.key])}, this command asks for "
                f"{_training(cell.recipe())}; use another --out / --storage / --study-name for other hyperparameters"
            )
        if cell.key not in holders and len(failed.get(cell.key, [])) < MAX_ATTEMPTS:
            missing.append(cell)
    for batch in make_batches(missing, members_per_process, min_batches):
        study.enqueue_trial({}, user_attrs={"batch": [cell.recipe() for cell in batch]})
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
    results = train([Cell.from_recipe(recipe) for recipe in keep], Protocol(**protocol_of(trial.study)).run_protocol)
    mode, _, why = results[0].mode.partition(": ")
    trial.set_user_attr("batch_mode", {"mode": mode, "why": why})
    done = {recipe["key"]: result for recipe, result in zip(keep, results) if result.failure is None}
    trial.set_user_attr("failures", {r["key"]: x.failure for r, x in zip(keep, results) if x.failure is not None})
    trial.set_user_attr("results", {key: result.as_attrs() for key, result in done.items()})
    return float(len(done))  # the value of a batch: its completed cells


def _train_isolated(cells: Sequence[Cell], protocol: RunProtocol) -> list[CellResult]:
    return train_batch(cells, protocol, isolate=True)


def run_ablation_worker(
    study: optuna.Study,
    train: Train = _train_isolated,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    max_trials: int | None = None,
) -> int:
    """Run batches until none is waiting (or ``max_trials`` trials were started); return how many cells completed.

    :param train: ``(cells, protocol) -> results`` (:func:`~sb3_ppo_variants.studies.runner.train_batch`, each cell
        failing alone; tests pass a cheap fake)
    :param on_trial: an ``optimize`` callback, called after each trial (a progress bar)
    """
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    objective = Objective(lambda trial: _run_batch(trial, train), run_attrs=RUN_ATTRS)
    run_worker(study, objective, n_trials=max_trials, until_queue_empty=True, callbacks=[on_trial] if on_trial else [])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sum(len(t.user_attrs.get("results") or {}) for t in complete if t.number not in before)


# ----------------------------------------------------------------------------------------------- results

#: The tables of :class:`AblationResults` (and of the CSV files of the same names), with their columns.
COLUMNS = {
    "runs": ["variant", "env_id", "seed", "final_score", "timesteps", "wall_time_s", "trial", "host"],
    "curves": ["variant", "env_id", "seed", "timestep", "nominal", "eval_return"],
    "episodes": ["variant", "env_id", "seed", "timestep", "episode_return"],
    "batches": ["trial", "cells", "mode", "why"],
}


@dataclass
class AblationResults:
    """What a study holds about a grid, as tables (columns: :data:`COLUMNS`).

    :param runs: one row per completed cell (its final score)
    :param curves: one row per evaluation (``timestep``: reached, ``nominal``: asked for)
    :param episodes: one row per training episode
    :param batches: one row per COMPLETE trial: how its cells were trained (solo / population, and why)
    :param recipes: cell key -> recipe (algorithm, hyperparameters, constructor arguments, where they came from)
    :param failed: cell key -> the reasons of its failed attempts, for cells with no result
    :param duplicates: cells stored by more than one COMPLETE trial (should never happen; kept visible)
    :param status: cell key -> ``complete``, ``running``, ``waiting``, ``failed`` (tried, not held) or ``missing``
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    episodes: pd.DataFrame
    batches: pd.DataFrame
    recipes: dict[str, dict[str, Any]]
    failed: dict[str, list[str]]
    duplicates: list[str]
    status: dict[str, str]
    protocol: Protocol


def collect_results(study: optuna.Study, keys: Sequence[str] | None = None) -> AblationResults:
    """The cells ``keys`` of the study (None: every cell it holds; a study may hold more than one command's grid);
    a cell that ever completed twice is read from the lowest-numbered trial."""
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    if keys is None:
        keys = list(dict.fromkeys(recipe["key"] for trial in trials for recipe in _batch(trial)))
    wanted = set(keys)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in COLUMNS}
    recipes: dict[str, dict[str, Any]] = {}
    stored: dict[str, list[int]] = defaultdict(list)
    for trial in (t for t in trials if t.state == TrialState.COMPLETE):
        by_key = {recipe["key"]: recipe for recipe in _batch(trial)}
        cells = 0
        for key, attrs in (trial.user_attrs.get("results") or {}).items():
            stored[key].append(trial.number)
            if len(stored[key]) > 1 or key not in wanted:
                continue
            cells += 1
            cell = recipes[key] = by_key[key]
            ids = {"variant": cell["variant"], "env_id": cell["env_id"], "seed": cell["seed"]}
            host = (trial.user_attrs.get(WORKER_ATTR) or {}).get("host")
            timesteps = attrs["curve_timesteps"]
            run = {"final_score": attrs["final_score"], "timesteps": timesteps[-1], "wall_time_s": attrs.get("wall_time_s")}
            rows["runs"].append({**ids, **run, "trial": trial.number, "host": host})
            for t, n, r in zip(timesteps, attrs["curve_nominal"], attrs["curve_returns"]):
                rows["curves"].append({**ids, "timestep": t, "nominal": n, "eval_return": r})
            for t, r in zip(attrs["episode_timesteps"], attrs["episode_returns"]):
                rows["episodes"].append({**ids, "timestep": t, "episode_return": r})
        if cells:
            mode = trial.user_attrs.get("batch_mode") or {}
            rows["batches"].append({"trial": trial.number, "cells": cells, "mode": mode.get("mode"), "why": mode.get("why")})
    tables = {name: pd.DataFrame(rows[name], columns=columns) for name, columns in COLUMNS.items()}
    return AblationResults(
        tables["runs"],
        tables["curves"],
        tables["episodes"],
        tables["batches"],
        recipes=recipes,
        failed={key: reasons for key, reasons in failures(trials).items() if key not in stored and key in wanted},
        duplicates=sorted(key for key, numbers in stored.items() if len(numbers) > 1),
        status=_status(trials, keys),
        protocol=Protocol(**protocol_of(study)),
    )


#: A cell's status when trials in these states hold it, first match first.
_HELD = ((TrialState.COMPLETE, "complete"), (TrialState.RUNNING, "running"), (TrialState.WAITING, "waiting"))


def _status(trials: Sequence[FrozenTrial], keys: Iterable[str]) -> dict[str, str]:
    holders = _holders(trials)
    tried = {recipe["key"] for trial in trials for recipe in _batch(trial)}
    status = {}
    for key in keys:
        states = {t.state for t in holders.get(key, [])}
        held = [name for state, name in _HELD if state in states]
        status[key] = held[0] if held else "failed" if key in tried else "missing"
    return status


def grid_status(study: optuna.Study, keys: Iterable[str]) -> dict[str, str]:
    """For each cell key: ``complete``, ``running``, ``waiting``, ``failed`` (tried, not held) or ``missing``."""
    return _status(study.get_trials(deepcopy=False), keys)
