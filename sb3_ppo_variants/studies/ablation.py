"""The grid of an ablation -- (variant, env, seed) cells -- kept in an Optuna study, run exactly once each.

Each cell is one trial, enqueued with :meth:`optuna.Study.enqueue_trial` and the whole recipe of the run in its
user attributes (algorithm, hyperparameters, constructor arguments, seed), so that any worker on any machine
runs the same thing. Optuna's queue of WAITING trials is the grid: :meth:`optuna.Study.ask` moves a WAITING
trial to RUNNING for exactly one worker (atomically, in every storage). Around that:

- **Enqueueing** (:func:`enqueue_missing`) adds a trial for each cell that has no COMPLETE, WAITING or live
  RUNNING trial. Two workers that start together may both enqueue a cell; that is resolved when claiming.
- **Claiming** (:func:`claim_next`): a worker that pops a trial whose cell already has a COMPLETE trial, or a
  WAITING or RUNNING trial with a lower number, marks its own FAIL (user attribute ``duplicate_of``) without
  running it. Of two duplicates, only the lower-numbered one can ever run: its claimer sees no lower trial,
  and the other's claimer sees it (WAITING or RUNNING) -- so each cell completes at most once.
- **Resuming**: a cell whose trial FAILED (an error, an interrupt) or whose RUNNING trial is stale is enqueued
  again; COMPLETE cells are never rerun. A RUNNING trial is stale when its worker (``owner``: the
  :func:`~sb3_ppo_variants.studies.liveness.process_identity` of the process and the trial's number) is on
  this host and surely gone (:func:`~sb3_ppo_variants.studies.liveness.worker_is_dead`: no such pid, a
  zombie, a reused pid or an earlier boot); on a database storage also when its heartbeat stopped
  (Optuna fails it and enqueues a retry). A RUNNING trial of another host in a journal or SQLite file cannot
  be judged: it is left alone until that host reruns the command.

The study's protocol (budget, evaluation frequency and episodes) is stored with the study; a command with a
different protocol on the same study is refused rather than mixing incomparable runs.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_ppo_variants.algorithm import VariantPPO
from sb3_ppo_variants.hyperparams import load_hyperparams
from sb3_ppo_variants.studies.arms import VariantSpec, filter_hyperparams
from sb3_ppo_variants.studies.liveness import process_identity, worker_is_dead
from sb3_ppo_variants.studies.runs import SeededRun

__all__ = [
    "DEFAULT_STUDY_NAME",
    "AblationResults",
    "CellTask",
    "Protocol",
    "ProtocolMismatchError",
    "algorithm_of",
    "cell_key",
    "claim_next",
    "collect_results",
    "enqueue_missing",
    "eval_schedule",
    "export_csv",
    "grid_status",
    "hyperparams_for",
    "open_study",
    "plan_cells",
    "run_cell",
    "run_worker",
]

DEFAULT_STUDY_NAME = "ablation"
#: A RUNNING trial without an owner (its worker died between claiming it and writing its owner) is stale after this.
OWNERLESS_GRACE_SECONDS = 120.0
_DIGITS = 4  # returns are rounded to this many decimals in the storage


class ProtocolMismatchError(ValueError):
    """The study in the storage was created with another protocol (or another recipe for a finished cell)."""


@dataclass(frozen=True)
class Protocol:
    """What every run of a study shares.

    :param timesteps: training budget of each run (the schedules' whole budget)
    :param eval_freq: evaluate every ``eval_freq`` timesteps (and at 0 and at the end)
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


def cell_key(variant: str, env_id: str, seed: int) -> str:
    return f"{variant}|{env_id}|{seed}"


@dataclass
class CellTask:
    """The recipe of one run, JSON-able: what a worker needs to run the cell anywhere."""

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
        """The task as stored in the trial's ``cell`` user attribute (with its ``key``)."""
        return json.loads(json.dumps({**asdict(self), "key": self.key}))


def eval_schedule(protocol: Protocol) -> list[int]:
    """Timesteps at which a run is evaluated: every ``eval_freq``, and at the end of the budget (0 comes first)."""
    points = list(range(protocol.eval_freq, protocol.timesteps, protocol.eval_freq))
    return [*points, protocol.timesteps]


def hyperparams_for(spec: VariantSpec, env_id: str, source: dict[str, Any] | None, label: str) -> tuple[dict[str, Any], str]:
    """The rl-zoo3 entry for ``spec`` on ``env_id``: the first of ``spec.hyperparams_keys`` the entry is split by,
    else its ``default`` (or the whole entry), over the variant's KL defaults.

    :param source: the loaded YAML (env id -> entry), or None for the algorithms' own defaults
    :param label: where ``source`` comes from, for the report
    :return: the entry and a description of where it came from
    """
    if source is None or env_id not in source:
        where = "the algorithm's defaults" + ("" if source is None else f" ({env_id} not in {label})")
        return dict(spec.defaults), where
    entry = source[env_id] or {}
    key = next((k for k in spec.hyperparams_keys if isinstance(entry, dict) and isinstance(entry.get(k), dict)), None)
    merged = load_hyperparams(source, env_id, key)
    where = f"{label} [{env_id}]" + (f"[{key}]" if key else "")
    return {**spec.defaults, **merged}, where


def plan_cells(
    specs: Iterable[VariantSpec], envs: Iterable[str], seeds: Iterable[int], source: dict[str, Any] | None, label: str
) -> list[CellTask]:
    """Every (variant, env, seed) cell with its recipe, in the order variant, env, seed."""
    tasks = []
    for spec in specs:
        for env_id in envs:
            entry, where = hyperparams_for(spec, env_id, source, label)
            entry.pop("n_timesteps", None)  # rl-zoo3's budget: the protocol's timesteps replace it
            entry, dropped = filter_hyperparams(spec.algorithm_class(), entry)
            for seed in seeds:
                tasks.append(
                    CellTask(spec.name, env_id, int(seed), spec.algorithm, entry, dict(spec.overrides), where, dropped)
                )
    return tasks


# ----------------------------------------------------------------------------------------------- the study


def open_study(storage: optuna.storages.BaseStorage, study_name: str, protocol: Protocol) -> optuna.Study:
    """Create or load the study, and check that it was created with the same protocol.

    :raises ProtocolMismatchError: naming the fields that differ
    """
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(),
    )
    wanted = asdict(protocol)
    stored = study.user_attrs.get("protocol")
    if stored is None:
        try:
            study.set_user_attr("protocol", wanted)
        except Exception:  # two workers creating the study together: the other one's insert won; read it
            pass
        stored = optuna.load_study(study_name=study_name, storage=storage).user_attrs.get("protocol", wanted)
    if stored != wanted:
        diff = {key: (stored.get(key), wanted[key]) for key in wanted if stored.get(key) != wanted[key]}
        raise ProtocolMismatchError(
            f"study {study_name!r} in this storage was run with {stored}; this command asks for {wanted} "
            f"(differs: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in diff.items())}). Use the same settings to resume, "
            "or another --out / --storage / --study-name for a new study"
        )
    return study


def _protocol(study: optuna.Study) -> Protocol:
    return Protocol(**study.user_attrs["protocol"])


def _is_stale(trial: FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING trial whose worker is known to be gone (see the module docstring)."""
    if trial.state != TrialState.RUNNING:
        return False
    owner = trial.user_attrs.get("owner")
    if not isinstance(owner, dict) or owner.get("trial") != trial.number:  # not yet claimed, or a copied retry
        started = trial.datetime_start.timestamp() if trial.datetime_start else None
        return started is not None and (now or time.time()) - started > OWNERLESS_GRACE_SECONDS
    return worker_is_dead(owner)


def fail_stale(study: optuna.Study) -> list[int]:
    """Fail the stale RUNNING trials (dead local workers; stopped heartbeats on a database). Their numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # database storages with heartbeats; a no-op otherwise
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _is_stale(trial):
            try:
                study.tell(trial.number, state=TrialState.FAIL)
                failed.append(trial.number)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # another worker failed it first
    return failed


def _by_cell(trials: Iterable[FrozenTrial]) -> dict[str, list[FrozenTrial]]:
    cells: dict[str, list[FrozenTrial]] = defaultdict(list)
    for trial in trials:
        if "cell" in trial.user_attrs:
            cells[trial.user_attrs["cell"]["key"]].append(trial)
    return cells


def _same_recipe(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def enqueue_missing(study: optuna.Study, tasks: Iterable[CellTask]) -> list[CellTask]:
    """Enqueue the cells that have no COMPLETE, WAITING or (live) RUNNING trial; return them.

    :raises ProtocolMismatchError: when a COMPLETE cell was run with another recipe (other hyperparameters)
    """
    fail_stale(study)
    cells = _by_cell(study.get_trials(deepcopy=False))
    enqueued = []
    for task in tasks:
        recipe = task.recipe()
        trials = cells.get(task.key, [])
        for trial in trials:
            if trial.state == TrialState.COMPLETE and not _same_recipe(trial.user_attrs["cell"], recipe):
                raise ProtocolMismatchError(
                    f"cell {task.key} was run with {trial.user_attrs['cell']}, this command asks for {recipe}; "
                    "use another --out / --storage / --study-name for other hyperparameters"
                )
        if any(t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING) for t in trials):
            continue
        study.enqueue_trial({}, user_attrs={"cell": recipe})
        enqueued.append(task)
    return enqueued


def _duplicate_of(study: optuna.Study, trial: optuna.Trial, key: str) -> int | None:
    for other in _by_cell(study.get_trials(deepcopy=False)).get(key, []):
        if other.number == trial.number:
            continue
        if other.state == TrialState.COMPLETE:
            return other.number
        if other.number < trial.number and other.state in (TrialState.WAITING, TrialState.RUNNING):
            return other.number
    return None


def claim_next(study: optuna.Study) -> optuna.Trial | None:
    """Pop the next WAITING cell for this worker, or None when none is left (see the module docstring)."""
    identity = process_identity()
    while True:
        if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None
        with warnings.catch_warnings():  # we record the heartbeats ourselves (_Heartbeat), as optimize() would
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask()
        # Owner first, before any read of the storage: a worker killed after ask() and before this write leaves
        # an ownerless RUNNING trial, which is only judged stale after OWNERLESS_GRACE_SECONDS.
        trial.set_user_attr("owner", {**identity, "trial": trial.number})
        cell = trial.user_attrs.get("cell")
        if cell is None:
            # The queue emptied between the look and the ask, and Optuna created a fresh trial: not a cell.
            trial.set_user_attr("idle", True)
            study.tell(trial, state=TrialState.FAIL)
            continue
        duplicate = _duplicate_of(study, trial, cell["key"])
        if duplicate is not None:
            trial.set_user_attr("duplicate_of", duplicate)
            study.tell(trial, state=TrialState.FAIL)
            continue
        return trial


class _Heartbeat:
    """Record a trial's heartbeat while it runs, on storages that have heartbeats (Optuna does so in optimize())."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        storage = study._storage
        self._record = getattr(storage, "record_heartbeat", None)
        interval = storage.get_heartbeat_interval() if hasattr(storage, "get_heartbeat_interval") else None
        self._interval = interval
        self._trial_id = trial._trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self._record is not None and self._interval:
            self._record(self._trial_id)
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._record(self._trial_id)  # type: ignore[misc]
            except Exception:  # a transient database error must not kill the run; the next beat retries
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ----------------------------------------------------------------------------------------------- running


def _rounded(values: Iterable[float]) -> list[float]:
    return [round(float(v), _DIGITS) for v in values]


def run_cell(recipe: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """Train one cell and evaluate it at 0, every ``eval_freq`` timesteps and at the end.

    :return: JSON-able results: ``curve_timesteps`` (actual, whole rollouts), ``curve_nominal`` (the asked
        points), ``curve_returns`` (mean deterministic return of ``n_eval_episodes`` on the eval env),
        ``episode_returns`` (training episodes of the stochastic policy, from Monitor, in the order they ended) and
        ``episode_timesteps`` (the end of the training segment in which each ended: a resolution of ``eval_freq``),
        ``final_score``
        (the last evaluation, at the end of the budget) and ``wall_time_s``
    """
    start = time.perf_counter()
    run = SeededRun(
        algorithm_of(recipe),
        recipe["env_id"],
        recipe["seed"],
        protocol.timesteps,
        hyperparams=recipe["hyperparams"],
        n_eval_episodes=protocol.n_eval_episodes,
        model_kwargs=recipe["model_kwargs"],
    )
    try:
        nominal, timesteps, returns = [0], [0], [run.evaluate()]
        for point in eval_schedule(protocol):
            run.advance(point)
            nominal.append(point)
            timesteps.append(run.num_timesteps)
            returns.append(run.evaluate())
    finally:
        run.close()
    return {
        "curve_nominal": nominal,
        "curve_timesteps": timesteps,
        "curve_returns": _rounded(returns),
        "episode_timesteps": list(run.episode_timesteps),
        "episode_returns": _rounded(run.episode_returns),
        "final_score": round(float(returns[-1]), _DIGITS),
        "wall_time_s": round(time.perf_counter() - start, 2),
    }


def algorithm_of(recipe: dict[str, Any]) -> str | type[BaseAlgorithm]:
    """What :func:`~sb3_ppo_variants.hyperparams.make_model` takes for a recipe's ``algorithm``."""
    return VariantPPO if recipe["algorithm"] == "variant_ppo" else recipe["algorithm"]


Runner = Callable[[dict[str, Any], Protocol], dict[str, Any]]


def run_worker(
    study: optuna.Study,
    runner: Runner = run_cell,
    on_done: Callable[[str, bool], None] | None = None,
    max_runs: int | None = None,
) -> int:
    """Claim and run cells until none is waiting (or ``max_runs`` were started). Returns how many completed.

    A run that raises is told FAIL with the error in ``error`` and the worker goes on with the next cell (it is
    retried by the next command); an interrupt (Ctrl-C) fails the running trial and propagates.

    :param runner: ``(recipe, protocol) -> results`` (tests pass a cheap fake)
    :param on_done: called with the cell key and whether it completed, after each run
    """
    protocol = _protocol(study)
    completed = attempted = 0
    while max_runs is None or attempted < max_runs:
        trial = claim_next(study)
        if trial is None:
            break
        attempted += 1
        recipe = trial.user_attrs["cell"]
        try:
            with _Heartbeat(study, trial):
                results = runner(recipe, protocol)
        except Exception as error:
            trial.set_user_attr("error", "".join(traceback.format_exception_only(type(error), error)).strip()[-2000:])
            study.tell(trial, state=TrialState.FAIL)
            if on_done:
                on_done(recipe["key"], False)
            continue
        except BaseException:
            study.tell(trial, state=TrialState.FAIL)
            raise
        for name, value in results.items():
            trial.set_user_attr(name, value)
        study.tell(trial, results["final_score"])
        completed += 1
        if on_done:
            on_done(recipe["key"], True)
    return completed


# ----------------------------------------------------------------------------------------------- results


@dataclass
class AblationResults:
    """Everything a study holds, as tables.

    :param runs: one row per completed cell: variant, env_id, seed, final_score, timesteps, wall_time_s, trial, host
    :param curves: one row per evaluation: variant, env_id, seed, timestep (actual), nominal, eval_return
    :param episodes: one row per training episode: variant, env_id, seed, timestep, episode_return
    :param recipes: cell key -> recipe (algorithm, hyperparameters, constructor arguments, where they came from)
    :param failed: cell key -> last error, for cells with no COMPLETE trial whose last trial failed with an error
    :param duplicates: cells with more than one COMPLETE trial (should never happen; kept visible)
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    episodes: pd.DataFrame
    recipes: dict[str, dict[str, Any]]
    failed: dict[str, str]
    duplicates: list[str]
    protocol: Protocol


def collect_results(study: optuna.Study) -> AblationResults:
    """The COMPLETE cells of the study as DataFrames (the lowest-numbered trial if a cell ever completed twice)."""
    runs, curves, episodes = [], [], []
    recipes: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    duplicates = []
    for key, trials in sorted(_by_cell(study.get_trials(deepcopy=False)).items()):
        complete = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.number)
        if len(complete) > 1:
            duplicates.append(key)
        if not complete:
            errors = [t for t in sorted(trials, key=lambda t: t.number) if "error" in t.user_attrs]
            if errors:
                failed[key] = errors[-1].user_attrs["error"]
            continue
        trial = complete[0]
        attrs = trial.user_attrs
        cell = attrs["cell"]
        recipes[key] = cell
        ids = {"variant": cell["variant"], "env_id": cell["env_id"], "seed": cell["seed"]}
        runs.append(
            {
                **ids,
                "final_score": attrs["final_score"],
                "timesteps": attrs["curve_timesteps"][-1],
                "wall_time_s": attrs.get("wall_time_s"),
                "trial": trial.number,
                "host": (attrs.get("owner") or {}).get("host"),
            }
        )
        for t, n, r in zip(attrs["curve_timesteps"], attrs["curve_nominal"], attrs["curve_returns"]):
            curves.append({**ids, "timestep": t, "nominal": n, "eval_return": r})
        for t, r in zip(attrs["episode_timesteps"], attrs["episode_returns"]):
            episodes.append({**ids, "timestep": t, "episode_return": r})
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
        duplicates=duplicates,
        protocol=_protocol(study),
    )


def grid_status(study: optuna.Study, keys: Iterable[str]) -> dict[str, str]:
    """For each cell key: ``complete``, ``running``, ``waiting``, ``failed`` or ``missing``."""
    cells = _by_cell(study.get_trials(deepcopy=False))
    status = {}
    for key in keys:
        states = {t.state for t in cells.get(key, [])}
        if TrialState.COMPLETE in states:
            status[key] = "complete"
        elif TrialState.RUNNING in states:
            status[key] = "running"
        elif TrialState.WAITING in states:
            status[key] = "waiting"
        elif states:
            status[key] = "failed"
        else:
            status[key] = "missing"
    return status


def export_csv(results: AblationResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``runs.csv``, ``curves.csv`` and ``episodes.csv`` (the raw results) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("runs", "curves", "episodes"):
        paths[name] = out / f"{name}.csv"
        getattr(results, name).to_csv(paths[name], index=False)
    return paths
