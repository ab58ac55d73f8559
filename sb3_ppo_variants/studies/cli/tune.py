"""``python tuning/tune.py`` / ``sb3pv-tune``: tune a variant's epsilon, beta and entropy coefficient with Optuna.

Thin: parse and validate the arguments (all of them, before any training), then call
:mod:`sb3_ppo_variants.studies.tuning` and the study runner (:mod:`sb3_ppo_variants.studies.runner`).
Running the same command again resumes the study; with ``--max-total-trials`` it finishes it, whichever machines
share the storage.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym

from sb3_ppo_variants import VARIANTS
from sb3_ppo_variants.studies.runner import n_counted, run_worker
from sb3_ppo_variants.studies.search_spaces import check_combination
from sb3_ppo_variants.studies.storage import StorageError, StudyMismatchError, open_storage, storage_label
from sb3_ppo_variants.studies.tuning import (
    PRUNERS,
    SAMPLERS,
    TuningSettings,
    confirm_best,
    make_pruner,
    open_tuning_study,
    tuning_objective,
    write_tuning_outputs,
)

__all__ = ["build_parser", "main"]

DEFAULT_TIMESTEPS = 100_000


def _int_at_least(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def build_parser() -> argparse.ArgumentParser:
    positive, non_negative = _int_at_least(1), _int_at_least(0)
    parser = argparse.ArgumentParser(
        prog="tune.py",
        description="Tune a PPO variant on an environment with Optuna: each trial is the mean deterministic evaluation "
        "return over K seeded runs. Run the same command again to resume; on several machines, share --storage.",
    )
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS), help="the variant to tune")
    parser.add_argument("--env", required=True, help="gymnasium environment id, e.g. CartPole-v1")
    parser.add_argument("--n-trials", type=positive, default=20, help="trials this invocation runs (default 20)")
    parser.add_argument(
        "--max-total-trials",
        type=positive,
        default=None,
        help="cap on the trials of the whole study, all workers together: complete, pruned and running trials count "
        "(trials already stored too)",
    )
    parser.add_argument(
        "--confirm-seeds",
        type=non_negative,
        default=5,
        help="after the search, retrain the best configuration on this many seeds no trial used, as one batch, and "
        "report its score beside the search's (default 5; 0: skip)",
    )
    parser.add_argument(
        "--timesteps",
        type=positive,
        default=None,
        help=f"training budget of each run (default: n_timesteps of --hyperparams, else {DEFAULT_TIMESTEPS})",
    )
    parser.add_argument("--seeds", type=positive, default=3, help="seeded runs per trial, K (default 3)")
    parser.add_argument("--seed", type=non_negative, default=0, help="first training seed; seeds are SEED..SEED+K-1")
    parser.add_argument("--n-evaluations", type=positive, default=4, help="evaluations (pruner reports) per run, E")
    parser.add_argument("--n-eval-episodes", type=positive, default=10, help="deterministic episodes per evaluation")
    parser.add_argument(
        "--storage",
        default=None,
        help="a journal file (*.log), a SQLite file (*.db) or a database URL (postgresql://user@host/db) shared by "
        "several machines (default: OUT/study.log)",
    )
    parser.add_argument("--study-name", default=None, help="default: VARIANT-ENV")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    parser.add_argument("--sampler-seed", type=non_negative, default=None, help="seed of the sampler (default: random)")
    parser.add_argument("--pruner", choices=PRUNERS, default="median")
    parser.add_argument(
        "--n-startup-trials",
        type=non_negative,
        default=5,
        help="trials sampled at random (tpe) and never pruned before pruning starts (median); default 5",
    )
    parser.add_argument(
        "--n-warmup-evaluations",
        type=non_negative,
        default=None,
        help="(median pruner) evaluations of a trial that are never pruned (default: E // 3)",
    )
    parser.add_argument("--hyperparams", default=None, help="rl-zoo3 format YAML with fixed settings for --env")
    parser.add_argument(
        "--wide", action="store_true", help="also tune rl-zoo3's PPO ranges: learning rate, n_steps, batch size, gamma, ..."
    )
    parser.add_argument("--out", default=None, help="output directory (default: runs/tune/STUDY_NAME)")
    parser.add_argument(
        "--heartbeat-interval",
        type=positive,
        default=60,
        help="seconds between heartbeats of a running trial (SQLite, database URLs); a trial silent for twice that is "
        "failed and retried",
    )
    parser.add_argument("--torch-threads", type=positive, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--no-progress-bar", action="store_true")
    return parser


def _check_env(parser: argparse.ArgumentParser, env_id: str) -> None:
    try:
        gym.spec(env_id)
    except gym.error.Error as error:
        parser.error(f"argument --env: {env_id!r} is not a registered gymnasium environment ({error})")


def _fixed_hyperparams(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    from sb3_ppo_variants.hyperparams import load_hyperparams

    if args.hyperparams is None:
        return {}
    if not Path(args.hyperparams).is_file():
        parser.error(f"argument --hyperparams: no such file {args.hyperparams!r}")
    try:
        return load_hyperparams(args.hyperparams, args.env, args.variant)
    except (KeyError, ValueError, OSError) as error:
        parser.error(f"argument --hyperparams: {error.args[0] if error.args else error}")
    except Exception as error:  # a YAML syntax error
        parser.error(f"argument --hyperparams: {args.hyperparams!r} is not readable YAML: {error}")


def _check_builds(parser: argparse.ArgumentParser, settings: TuningSettings) -> None:
    """Build (without training) a model from the fixed settings: misspelt or invalid keys fail here, not mid-study."""
    from sb3_ppo_variants.hyperparams import make_model

    try:
        model = make_model(settings.variant, settings.env_id, dict(settings.hyperparams), seed=0)
    except Exception as error:
        parser.error(
            f"argument --hyperparams: the settings {dict(settings.hyperparams)} do not build a {settings.variant!r} "
            f"model on {settings.env_id}: {type(error).__name__}: {error}"
        )
    env = model.get_env()
    if env is not None:
        env.close()


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> TuningSettings:
    """Validated :class:`TuningSettings`; every error goes through ``parser.error`` (exit status 2)."""
    _check_env(parser, args.env)
    fixed = _fixed_hyperparams(parser, args)
    timesteps = args.timesteps or int(float(fixed.get("n_timesteps", DEFAULT_TIMESTEPS)))
    fixed.pop("n_timesteps", None)
    if args.n_evaluations > timesteps:
        parser.error(f"argument --n-evaluations: {args.n_evaluations} evaluations need --timesteps >= that, got {timesteps}")
    settings = TuningSettings(
        variant=args.variant,
        env_id=args.env,
        timesteps=timesteps,
        seeds=tuple(range(args.seed, args.seed + args.seeds)),
        n_evaluations=args.n_evaluations,
        n_eval_episodes=args.n_eval_episodes,
        hyperparams=fixed,
        wide=args.wide,
    )
    sampled = {"n_steps", "batch_size"} - set(fixed) if args.wide else set()
    reason = None if sampled else check_combination(fixed, timesteps)
    if reason is not None:  # every trial would be refused: say so now
        parser.error(f"arguments --hyperparams/--timesteps (with PPO's defaults n_steps=2048, batch_size=64): {reason}")
    _check_builds(parser, settings)
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, args)
    study_name = args.study_name or f"{args.variant}-{args.env}"
    out = Path(args.out) if args.out else Path("runs") / "tune" / re.sub(r"[^\w.-]", "_", study_name)
    warmup = args.n_evaluations // 3 if args.n_warmup_evaluations is None else args.n_warmup_evaluations
    pruner = make_pruner(args.pruner, settings, args.n_startup_trials, warmup)
    try:
        storage = open_storage(args.storage, out, heartbeat_interval=args.heartbeat_interval)
        study = open_tuning_study(
            storage, study_name, settings, args.sampler, args.sampler_seed, pruner, args.n_startup_trials
        )
    except (StorageError, StudyMismatchError) as error:
        parser.error(str(error))
    label = storage_label(args.storage, out)

    import matplotlib
    import torch

    matplotlib.use("Agg")
    torch.set_num_threads(args.torch_threads)
    cap = f" of at most {args.max_total_trials}" if args.max_total_trials else ""
    print(f"study {study_name!r} in {label}: {n_counted(study)} trials{cap} so far; this run: up to {args.n_trials}")
    interrupted = False
    try:
        objective = tuning_objective(settings)
        run_worker(study, objective, args.n_trials, args.max_total_trials, show_progress_bar=not args.no_progress_bar)
        if args.confirm_seeds:
            print(f"confirming the best trial on {args.confirm_seeds} fresh seeds")
            confirm_best(study, settings, args.confirm_seeds)
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
    written = write_tuning_outputs(study, settings, out, label)
    print(f"{n_counted(study)} trials in the study; summary: {written['summary']}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
