"""What a study leaves behind: the tuning study's trials, best hyperparameters, plots and summary; the ablation's
CSVs, statistics, figures and report. Both read only the study (any worker, any machine, at any time)."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET

if TYPE_CHECKING:  # the ablation's modules (pandas, rliable, matplotlib) are imported by its functions only
    from sb3_ppo_variants.studies.ablation import AblationResults
    from sb3_ppo_variants.studies.arms import VariantSpec
    from sb3_ppo_variants.studies.reference import ReferenceScore
from sb3_ppo_variants.studies.search_spaces import params_to_kwargs
from sb3_ppo_variants.studies.tuning import TuningSettings, best_hyperparams

__all__ = ["TUNING_FILES", "export_csv", "fail_reasons", "write_ablation_outputs", "write_tuning_outputs"]


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
        reason = trial.user_attrs.get("fail_reason")
        if not reason:
            reason = "its worker died or stopped beating mid-trial"
        if trial.number in retries:
            reason += f" (run again as trial {retries[trial.number]})"
        reasons[trial.number] = reason
    return reasons


# ----------------------------------------------------------------------------------------------- tuning


TUNING_FILES = {
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


def _confirmation(study: optuna.Study, best: FrozenTrial) -> dict[str, Any] | None:
    confirmation = study.user_attrs.get("confirmation")
    return confirmation if confirmation and confirmation.get("trial") == best.number else None


def write_best_yaml(study: optuna.Study, settings: TuningSettings, path: Path) -> FrozenTrial | None:
    """``{env_id: entry}`` of the best trial, readable by ``load_hyperparams`` and rl-zoo3; None if no trial completed."""
    best = _best_trial(study)
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
            with warnings.catch_warnings():  # Optuna's matplotlib plots are experimental: nothing our users can act on
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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


def _tuning_summary(
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


# ----------------------------------------------------------------------------------------------- ablation


def export_csv(results: AblationResults, out_dir: str | Path) -> dict[str, Path]:
    """Write ``runs.csv``, ``curves.csv``, ``episodes.csv`` (the raw results) and ``batches.csv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in ("runs", "curves", "episodes", "batches"):
        paths[name] = out / f"{name}.csv"
        getattr(results, name).to_csv(paths[name], index=False)
    return paths


def _order(variants: list[str], envs: list[str]) -> Any:
    def key(column: Any) -> Any:
        if column.name == "variant":
            return column.map({name: index for index, name in enumerate(variants)})
        if column.name == "env_id":
            return column.map({name: index for index, name in enumerate(envs)})
        return column

    return key


def write_ablation_outputs(
    study: optuna.Study,
    specs: list[VariantSpec],
    envs: list[str],
    seeds: list[int],
    keys: list[str],
    references: dict[str, ReferenceScore],
    out: Path,
    storage_label: str,
    argv: list[str],
    baseline: str | None = None,
    bootstrap_reps: int = 2000,
    failed_as_random: bool = False,
) -> tuple[Path, AblationResults]:
    """Collect the grid's results (the cells ``keys``), export the CSVs, compute the statistics, draw the figures,
    write the report. Failed cells are left out of the statistics, or, with ``failed_as_random``, scored as the
    random policy (``references[env].random_mean``). :return: the report's path and the results"""
    # Imported here: rliable (arch, scipy), matplotlib and pandas cost seconds per process; tuning workers need none.
    import pandas as pd

    from sb3_ppo_variants.studies import ablation, plots, report, statistics

    results = ablation.collect_results(study)
    results.restrict(set(keys))
    status = ablation.grid_status(study, keys)
    failed = [key for key in keys if status[key] == "failed" and key in results.failed]
    results.runs["failed"] = ""
    if failed_as_random and failed:  # scored as a uniformly random policy: the reference table's lower end
        rows = []
        for key in failed:
            variant, env_id, seed = key.rsplit("|", 2)
            reason = results.failed[key][-1].strip().splitlines()[-1:] or ["failed"]
            rows.append({"variant": variant, "env_id": env_id, "seed": int(seed), "failed": reason[0][:300]})
            rows[-1]["final_score"] = references[env_id].random_mean
        results.runs = pd.concat([results.runs, pd.DataFrame(rows)], ignore_index=True)
    files = export_csv(results, out)
    names = [spec.name for spec in specs]
    results.runs = results.runs.sort_values(["variant", "env_id", "seed"], key=_order(names, envs)).reset_index(drop=True)
    results.curves = results.curves.sort_values(["variant", "env_id", "seed"], key=_order(names, envs), kind="stable")
    stats = statistics.summarize(results.runs, references, baseline, reps=bootstrap_reps)
    curve_stats = statistics.curve_intervals(results.curves, reps=bootstrap_reps)
    for name, frame in (
        ("statistics", stats.intervals),
        ("improvement", stats.improvement),
        ("curve_statistics", curve_stats),
    ):
        files[name] = out / f"{name}.csv"
        frame.to_csv(files[name], index=False)
    figures: dict[str, Path] = {}
    figure_dir = out / "plots"
    for env_id in envs:
        if env_id in set(curve_stats["env_id"]):
            path = figure_dir / f"curves_{plots.slug(env_id)}.png"
            figures[f"curves_{env_id}"] = plots.plot_learning_curves(curve_stats, results.curves, env_id, path)
    for scope in dict.fromkeys(stats.intervals.get("env_id", [])):
        figures[f"intervals_{scope}"] = plots.plot_intervals(
            stats.intervals, scope, figure_dir / f"intervals_{plots.slug(scope)}.png"
        )
    if len(stats.improvement):
        figures["improvement"] = plots.plot_improvement(stats.improvement, figure_dir / "improvement.png")
    context = report.ReportContext(
        specs=specs,
        envs=envs,
        seeds=seeds,
        references=references,
        storage=storage_label,
        study_name=study.study_name,
        command="python tuning/ablate.py " + shlex.join(argv),
        bootstrap_reps=bootstrap_reps,
        grid=status,
        plots=figures,
        failed_as_random=failed_as_random,
        files={
            "one row per run (final score; `failed`: why a run failed, when scored as the random policy)": files["runs"],
            "evaluation curves": files["curves"],
            "training-episode returns (timestep: the end of the evaluation segment the episode ended in)": files["episodes"],
            "one row per batch (trial): how its cells were trained, solo or as a population, and why": files["batches"],
            "interval estimates": files["statistics"],
            "probabilities of improvement": files["improvement"],
            "learning-curve IQM and CIs": files["curve_statistics"],
        },
    )
    return report.write_report(out / "report.md", results, stats, context), results
