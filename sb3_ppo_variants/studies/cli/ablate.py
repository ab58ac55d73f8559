"""``sb3pv-ablate`` / ``python tuning/ablate.py``: variants x environments x seeds, statistics, plots and a report.

Thin: validate every argument before any run (:func:`prepare`), run the grid kept in the study
(:mod:`~sb3_ppo_variants.studies.ablation`: rerun to resume, share ``--storage`` between machines), then report
(:mod:`~sb3_ppo_variants.studies.report`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import optuna
import torch as th
import yaml

from sb3_ppo_variants.hyperparams import make_model
from sb3_ppo_variants.studies import ablation
from sb3_ppo_variants.studies.ablation import Plan
from sb3_ppo_variants.studies.arms import DEFAULT_ENT_COEF, DEFAULT_ENT_SCHEDULE, factorial_names, label_names, parse_variant
from sb3_ppo_variants.studies.reference import load_reference_scores
from sb3_ppo_variants.studies.runner import Cell
from sb3_ppo_variants.studies.storage import StorageError, StudyMismatchError, open_storage, storage_label

__all__ = ["build_parser", "main"]

DEFAULT_HYPERPARAMS_LABEL = "sb3_ppo_variants/data/zoo_ppo.yml (rl-zoo3's PPO entries)"
#: Integer arguments that must be >= 1 (with --heartbeat-interval and --bootstrap-reps).
_POSITIVE = ("seeds", "timesteps", "eval_freq", "n_eval_episodes", "workers", "members_per_process", "torch_threads")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sb3pv-ablate",
        description="Ablation study: variants x environments x seeds, kept in an Optuna storage (resumable, shareable "
        "between machines), with rliable statistics, plots and a Markdown report.",
    )
    parser.add_argument("--envs", nargs="+", required=True, metavar="ENV", help="gymnasium ids")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        metavar="NAME",
        help="named variants (clip kl adaptive_kl clip_kl), baselines (sb3_ppo trpo maskable_ppo recurrent_ppo), "
        "factorial cells such as clip+adaptive_kl+ent_sched, or labels defined in --hyperparams "
        "(grammar: sb3_ppo_variants.studies.arms)",
    )
    parser.add_argument(
        "--factorial",
        action="store_true",
        help="add every cell of {clip, noclip} x {no KL, kl, adaptive_kl} x {ent_const, ent_sched} (12 variants)",
    )
    parser.add_argument("--seeds", type=int, default=3, metavar="K", help="seeds 0..K-1 per variant and env (default 3)")
    parser.add_argument("--timesteps", type=int, default=30_000, metavar="T", help="training budget per run (default 30000)")
    parser.add_argument(
        "--eval-freq",
        type=int,
        default=5_000,
        metavar="N",
        help="evaluate at 0 and at evenly spaced points at most N timesteps apart, the last at the end (default 5000)",
    )
    parser.add_argument("--n-eval-episodes", type=int, default=10, help="deterministic episodes per evaluation (default 10)")
    parser.add_argument(
        "--hyperparams",
        metavar="FILE",
        help="rl-zoo3 format YAML, per env and optionally per variant (e.g. what tuning wrote); "
        "default: rl-zoo3's PPO entries shipped with the package (CartPole-v1, Acrobot-v1, Pendulum-v1, LunarLander-v3), "
        "the algorithm's defaults for other envs",
    )
    parser.add_argument("--ent-coef", type=float, default=DEFAULT_ENT_COEF, help="ent_const's coefficient (default 0.01)")
    parser.add_argument("--ent-schedule", default=DEFAULT_ENT_SCHEDULE, help="ent_sched's schedule (default lin_0.01)")
    parser.add_argument("--baseline", help="variant the others are compared with (default sb3_ppo if run, else clip)")
    parser.add_argument("--storage", help="*.log (journal), *.db (SQLite) or a database URL; default OUT/study.log")
    parser.add_argument("--study-name", default=ablation.DEFAULT_STUDY_NAME, help="default 'ablation'")
    parser.add_argument("--workers", type=int, default=1, metavar="W", help="local worker processes (default 1)")
    parser.add_argument(
        "--members-per-process",
        type=int,
        default=ablation.DEFAULT_MEMBERS_PER_PROCESS,
        metavar="M",
        help="cells of one env trained together in one trial, at most (default "
        f"{ablation.DEFAULT_MEMBERS_PER_PROCESS}); the grid is split into at least W batches per env where it can be",
    )
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch threads per worker (default 1: small MLPs gain nothing from more, and several threads per worker "
        "on busy cores made CartPole training 10-30x slower here)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="directory of the report, CSVs, plots (and storage)")
    parser.add_argument("--reference-scores", metavar="CSV", help="min-max normalisation table (default: shipped)")
    parser.add_argument("--bootstrap-reps", type=int, default=2000, help="bootstrap replications (default 2000)")
    parser.add_argument("--report-only", action="store_true", help="do not run anything: report what the storage holds")
    parser.add_argument(
        "--failed-as-random",
        action="store_true",
        help="score a run that failed (twice: a failed run is retried once) as the random policy of the reference table "
        "(default: leave it out of the statistics; the report counts it per arm either way)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=int,
        default=60,
        metavar="S",
        help="seconds between heartbeats of a running batch on a database storage (SQLite, PostgreSQL); a batch "
        "silent for twice that is failed and run again (default 60)",
    )
    return parser


def _check_env(env_id: str) -> None:
    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        raise ValueError(f"--envs: {env_id!r} is not a registered gymnasium environment ({error})") from None
    try:
        gym.make(env_id).close()
    except Exception as error:  # a missing dependency (Box2D, MuJoCo): say so now, not after an hour of other runs
        raise ValueError(f"--envs: {env_id!r} cannot be created here: {type(error).__name__}: {error}") from None


def _check_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out):
            pass
    except OSError as error:
        raise ValueError(f"--out {str(out)!r} is not a writable directory: {error}") from None


def _load_hyperparams(path: str | None, envs: list[str]) -> tuple[dict[str, Any], str]:
    if path is None:
        text = resources.files("sb3_ppo_variants").joinpath("data", "zoo_ppo.yml").read_text()
        return yaml.safe_load(text), DEFAULT_HYPERPARAMS_LABEL
    try:
        with open(path) as file:
            data = yaml.safe_load(file) or {}
    except OSError as error:
        raise ValueError(f"--hyperparams {path!r} cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--hyperparams {path!r} must map env ids to entries, got {type(data).__name__}")
    missing = [env for env in envs if env not in data]
    if missing:
        raise ValueError(f"--hyperparams {path!r} has no entry for {missing}; it has {sorted(data)}")
    return data, path


def _check_builds(cells: list[Cell]) -> None:
    """Build each (variant, env) model once, so that a bad hyperparameter fails now rather than in a worker."""
    seen = set()
    for cell in cells:
        if (cell.variant, cell.env_id) in seen:
            continue
        seen.add((cell.variant, cell.env_id))
        try:
            model = make_model(cell.algorithm, cell.env_id, dict(cell.hyperparams), seed=0, **cell.model_kwargs)
        except Exception as error:
            raise ValueError(
                f"--variants {cell.variant} on {cell.env_id} with hyperparameters from {cell.hyperparams_source} "
                f"cannot be built: {type(error).__name__}: {error}"
            ) from None
        model.get_env().close()  # type: ignore[union-attr]


def prepare(args: argparse.Namespace, argv: Sequence[str] = ()) -> Plan:
    """Validate every argument and open the study; raises ValueError (naming the argument) before any run."""
    for name in (*_POSITIVE, "heartbeat_interval", "bootstrap_reps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    envs = list(dict.fromkeys(args.envs))
    for env_id in envs:
        _check_env(env_id)
    source, label = _load_hyperparams(args.hyperparams, envs)
    names = list(dict.fromkeys([*args.variants, *(factorial_names() if args.factorial else [])]))
    if not names:
        raise ValueError("--variants: give at least one name (or --factorial)")
    specs = [parse_variant(name, args.ent_coef, args.ent_schedule, label_names(source)) for name in names]
    if args.baseline is not None and args.baseline not in names:
        raise ValueError(f"--baseline must be one of --variants {names}, got {args.baseline!r}")
    references = load_reference_scores(args.reference_scores)
    if args.failed_as_random:
        unknown = [env for env in envs if env not in references]
        if unknown:
            raise ValueError(
                f"--failed-as-random needs a random-policy score for every env; none for {unknown} in --reference-scores"
            )
    protocol = ablation.Protocol(args.timesteps, args.eval_freq, args.n_eval_episodes)
    out = Path(args.out)
    _check_out(out)
    seeds = list(range(args.seeds))
    cells = ablation.plan_cells(specs, envs, seeds, source, label)
    if not args.report_only:
        _check_builds(cells)
    storage = open_storage(args.storage, out, heartbeat_interval=args.heartbeat_interval)
    study = ablation.open_ablation_study(storage, args.study_name, protocol)
    return Plan(
        specs,
        envs,
        seeds,
        cells,
        references,
        out,
        args.storage,
        storage_label(args.storage, out),
        study,
        command="python tuning/ablate.py " + shlex.join(argv),
        baseline=args.baseline,
        bootstrap_reps=args.bootstrap_reps,
        failed_as_random=args.failed_as_random,
    )


def _worker_entry(storage_arg: str | None, out: str, study_name: str, torch_threads: int, heartbeat: int) -> None:
    """A spawned worker: its own storage connection; runs cells until none is waiting."""
    th.set_num_threads(torch_threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_arg, out, heartbeat_interval=heartbeat))
    ablation.run_ablation_worker(study)


def _complete(study: optuna.Study, keys: list[str]) -> int:
    return sum(state == "complete" for state in ablation.grid_status(study, keys).values())


def _run_queue(plan: Plan, workers: int, threads: int, heartbeat: int, bar: Any) -> None:
    """Run the queued batches here, with ``workers`` processes, until none is waiting."""
    if workers == 1:

        def progress(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update(_complete(study, plan.keys) - bar.n)
            if trial.state == optuna.trial.TrialState.FAIL:
                bar.write(f"failed: trial {trial.number}: {trial.user_attrs.get('fail_reason')}")
            for key, reason in (trial.user_attrs.get("failures") or {}).items():
                bar.write(f"failed: {key}: {ablation.last_line(reason)[:200]}")

        ablation.run_ablation_worker(plan.study, on_trial=progress)
        return
    context = multiprocessing.get_context("spawn")
    arguments = (plan.storage, str(plan.out), plan.study.study_name, threads, heartbeat)
    processes = [context.Process(target=_worker_entry, args=arguments) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        while any(process.is_alive() for process in processes):
            time.sleep(2.0)
            bar.update(_complete(plan.study, plan.keys) - bar.n)
    finally:
        for process in processes:
            process.join()
    bad = [process.exitcode for process in processes if process.exitcode != 0]
    if bad:
        bar.write(f"{len(bad)} worker(s) exited with codes {bad}")


def run(
    plan: Plan,
    workers: int,
    threads: int = 1,
    members_per_process: int = ablation.DEFAULT_MEMBERS_PER_PROCESS,
    heartbeat: int = 60,
) -> None:
    """Enqueue the missing cells and run them here with ``workers`` processes, with a progress bar over runs; then
    enqueue and run once more the cells that failed (a failed cell runs at most ``ablation.MAX_ATTEMPTS`` times)."""
    from tqdm.auto import tqdm

    enqueued = ablation.enqueue_missing(plan.study, plan.cells, members_per_process, min_batches=workers)
    done = _complete(plan.study, plan.keys)
    print(
        f"{len(plan.cells)} runs in the grid: {done} already complete, {len(plan.cells) - done} to run "
        f"({len(enqueued)} newly queued; storage {plan.storage_label})"
    )
    bar = tqdm(total=len(plan.cells), initial=done, unit="run", desc="ablation runs", dynamic_ncols=True)
    try:
        for attempt in range(ablation.MAX_ATTEMPTS):
            _run_queue(plan, workers, threads, heartbeat, bar)
            if attempt + 1 < ablation.MAX_ATTEMPTS:
                retried = ablation.enqueue_missing(plan.study, plan.cells, members_per_process, min_batches=workers)
                if not retried:
                    break
                bar.write(f"retrying {len(retried)} failed run(s) once: {', '.join(c.key for c in retried[:8])}")
    finally:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    """Run the command; 0 when every run of the grid is complete or running elsewhere, 1 when some failed or were
    not run, 2 for bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        plan = prepare(args, argv)
    except (ValueError, KeyError, StorageError, StudyMismatchError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"sb3pv-ablate: error: {message}", file=sys.stderr)
        return 2
    if not args.report_only:
        try:
            th.set_num_threads(args.torch_threads)
            run(plan, args.workers, args.torch_threads, args.members_per_process, args.heartbeat_interval)
        except KeyboardInterrupt:
            print("\ninterrupted: rerun the same command to run the missing cells", file=sys.stderr)
            return 130
    from sb3_ppo_variants.studies.report import write_outputs  # rliable, matplotlib: only when reporting

    path, results = write_outputs(plan)
    print(f"report: {path}")
    elsewhere = [key for key, state in results.status.items() if state == "running"]
    if elsewhere:
        print(
            f"{len(elsewhere)} runs are still running in other workers; when they finish, "
            "rerun the command (with --report-only to only report)"
        )
    incomplete = sorted(key for key, state in results.status.items() if state not in ("complete", "running"))
    if incomplete:
        print(
            f"{len(incomplete)} of {len(results.status)} runs are not complete: {', '.join(incomplete[:8])}"
            + (" ..." if len(incomplete) > 8 else "")
        )
        for key, reasons in sorted(results.failed.items()):
            print(f"  {key}: {ablation.last_line(reasons[-1])[:200]}")
        return 1
    return 0
