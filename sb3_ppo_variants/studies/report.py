"""What an ablation leaves behind in ``--out``: the CSVs, the statistics, the figures, and the Markdown report -- the
numbers, the figures, and the protocol that produced them. It reads only the study (any worker, any machine, at any
time); the command imports it when it reports (rliable, matplotlib and pandas cost seconds; workers need none)."""

from __future__ import annotations

import datetime as dt
import os
import platform
import socket
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from sb3_ppo_variants.evaluation import EVAL_SEED_OFFSET
from sb3_ppo_variants.studies import plots
from sb3_ppo_variants.studies.ablation import AblationResults, Plan, collect_results, last_line
from sb3_ppo_variants.studies.registry import algorithm_class
from sb3_ppo_variants.studies.statistics import (
    AGGREGATE,
    ALPHA,
    METRIC_NAMES,
    METRICS,
    AblationStatistics,
    curve_intervals,
    summarize,
)

__all__ = ["FILES", "PACKAGES", "package_versions", "write_outputs", "write_report"]

#: Distributions whose versions the report states.
PACKAGES = (
    "sb3-ppo-variants",
    "stable-baselines3",
    "sb3-contrib",
    "gymnasium",
    "torch",
    "numpy",
    "optuna",
    "rliable",
    "scipy",
    "pandas",
)
#: The CSV files written into ``--out`` (``NAME.csv``), as the report's "Raw data" describes them.
FILES = {
    "runs": "one row per run (final score; `failed`: why a run failed, when scored as the random policy)",
    "curves": "evaluation curves",
    "episodes": "training-episode returns (timestep: the end of the evaluation segment the episode ended in)",
    "batches": "one row per batch (trial): how its cells were trained, solo or as a population, and why",
    "statistics": "interval estimates",
    "improvement": "probabilities of improvement",
    "curve_statistics": "learning-curve IQM and CIs",
}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _order(variants: list[str], envs: list[str]) -> Any:
    """A ``sort_values`` key: variants and environments in the command's order."""
    ranks = {"variant": {name: i for i, name in enumerate(variants)}, "env_id": {name: i for i, name in enumerate(envs)}}
    return lambda column: column.map(ranks[column.name]) if column.name in ranks else column


def write_outputs(plan: Plan) -> tuple[Path, AblationResults]:
    """Collect the grid's results, write the CSVs (:data:`FILES`), compute the statistics, draw the figures, write
    ``report.md``. Failed cells are left out of the statistics, or, with ``plan.failed_as_random``, scored as the
    random policy (``references[env].random_mean``). :return: the report's path and the results"""
    out = plan.out
    out.mkdir(parents=True, exist_ok=True)
    results = collect_results(plan.study, plan.keys)
    failed = [key for key, state in results.status.items() if state == "failed" and key in results.failed]
    results.runs["failed"] = ""
    if plan.failed_as_random and failed:  # scored as a uniformly random policy: the reference table's lower end
        rows = []
        for key in failed:
            variant, env_id, seed = key.rsplit("|", 2)
            reason = last_line(results.failed[key][-1], "failed")[:300]
            score = plan.references[env_id].random_mean
            rows.append({"variant": variant, "env_id": env_id, "seed": int(seed), "failed": reason, "final_score": score})
        results.runs = pd.concat([results.runs, pd.DataFrame(rows)], ignore_index=True)
    for name in ("runs", "curves", "episodes", "batches"):
        getattr(results, name).to_csv(out / f"{name}.csv", index=False)
    order = _order([spec.name for spec in plan.specs], plan.envs)
    results.runs = results.runs.sort_values(["variant", "env_id", "seed"], key=order).reset_index(drop=True)
    results.curves = results.curves.sort_values(["variant", "env_id", "seed"], key=order, kind="stable")
    stats = summarize(results.runs, plan.references, plan.baseline, reps=plan.bootstrap_reps)
    curve_stats = curve_intervals(results.curves, reps=plan.bootstrap_reps)
    computed = {"statistics": stats.intervals, "improvement": stats.improvement, "curve_statistics": curve_stats}
    for name, frame in computed.items():
        frame.to_csv(out / f"{name}.csv", index=False)
    figures: dict[str, Path] = {}
    for env_id in plan.envs:
        if env_id in set(curve_stats["env_id"]):
            path = out / "plots" / f"curves_{plots.slug(env_id)}.png"
            figures[f"curves_{env_id}"] = plots.plot_learning_curves(curve_stats, results.curves, env_id, path)
    for scope in dict.fromkeys(stats.intervals.get("env_id", [])):
        path = out / "plots" / f"intervals_{plots.slug(scope)}.png"
        figures[f"intervals_{scope}"] = plots.plot_intervals(stats.intervals, scope, path)
    if len(stats.improvement):
        figures["improvement"] = plots.plot_improvement(stats.improvement, out / "plots" / "improvement.png")
    return write_report(plan, results, stats, figures), results


def _interval(point: float, low: float, high: float, digits: int) -> str:
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _merged_metrics(rows: pd.DataFrame, digits: int) -> list[list[str]]:
    """The metrics of :data:`METRICS` grouped by identical columns (as printed) over every variant of ``rows``."""
    groups: dict[str, list[str]] = {}
    for metric in METRICS:
        column = rows[rows["metric"] == metric]
        text = "|".join(_interval(p, lo, hi, digits) for p, lo, hi in zip(column["point"], column["low"], column["high"]))
        groups.setdefault(text, []).append(metric)
    return list(groups.values())


def _scope_table(stats: AblationStatistics, scope: str, digits: int) -> list[str]:
    """The table of one scope; metrics whose columns are identical are shown once, with a note saying why."""
    rows = stats.intervals[stats.intervals["env_id"] == scope]
    improvement = stats.improvement[stats.improvement["env_id"] == scope] if len(stats.improvement) else pd.DataFrame()
    groups = _merged_metrics(rows, digits)
    header = ["variant", "runs", *(" = ".join(METRIC_NAMES[m] for m in group) + " [95% CI]" for group in groups)]
    header += [f"P(> {stats.baseline}) [95% CI]", "exact p", "verdict"]
    lines = []
    for variant in dict.fromkeys(rows["variant"]):
        cells = [variant, str(int(rows[rows["variant"] == variant]["runs"].iloc[0]))]
        for group in groups:
            row = rows[(rows["variant"] == variant) & (rows["metric"] == group[0])].iloc[0]
            cells.append(_interval(row["point"], row["low"], row["high"], digits))
        match = improvement[improvement["variant"] == variant] if len(improvement) else improvement
        if len(match):
            row = match.iloc[0]
            cells += [_interval(row["probability"], row["low"], row["high"], 2), f"{row['p_value']:.3g}", row["verdict"]]
        else:
            cells += ["baseline" if variant == stats.baseline else "-", "-", "-"]
        lines.append(cells)
    table = _table(header, lines)
    merged = [group for group in groups if len(group) > 1]
    if merged:
        n_runs = int(rows["runs"].max())
        why = []
        one_env = scope != AGGREGATE or len(stats.aggregate_envs) == 1
        if any("median" in group and "mean" in group for group in merged) and one_env:
            why.append(
                "rliable's median is the median over environments of each environment's mean, so on one "
                "environment it is the mean"
            )
        if any("iqm" in group and "mean" in group for group in merged) and n_runs < 4:
            why.append(f"the IQM trims 25% of the runs at each end, which is nothing of {n_runs} runs")
        table += ["", "Identical columns are shown once" + (f": {'; '.join(why)}." if why else " (equal at this seed count).")]
    return table


def _image(figures: dict[str, Path], name: str, alt: str, out: Path) -> list[str]:
    path = figures.get(name)
    return [f"![{alt}]({path.relative_to(out).as_posix()})", ""] if path else []


def _failures(results: AblationResults, plan: Plan) -> list[str]:
    """Per arm: "k of n runs failed", with the reasons; and how failed runs enter the statistics."""
    lines = []
    for spec in plan.specs:
        keys = [key for key in results.status if key.rsplit("|", 2)[0] == spec.name]
        failed = [key for key in keys if results.status[key] == "failed" and key in results.failed]
        if not failed:
            continue
        reasons = Counter(last_line(results.failed[key][-1], "(no reason recorded)")[:300] for key in failed)
        tries = Counter(len(results.failed[key]) for key in failed)
        lines.append(
            f"- **{spec.name}: {len(failed)} of {len(keys)} runs failed** "
            f"({', '.join(f'{n} after {k} attempt(s)' for k, n in sorted(tries.items()))}): "
            + "; ".join(f"{n} x `{reason}`" for reason, n in reasons.most_common())
        )
    if lines:
        lines.append(
            "- Failed runs are scored as the random policy (the reference table's random-policy return) in the "
            "statistics (--failed-as-random)."
            if plan.failed_as_random
            else "- Failed runs are left out of the statistics (and counted above); --failed-as-random scores them as "
            "the random policy instead. Leaving them out favours an arm that fails often: read its numbers as "
            "'when it does not fail'."
        )
    return lines


def _summary(results: AblationResults, stats: AblationStatistics, plan: Plan) -> list[str]:
    counts = pd.Series(results.status).value_counts().to_dict()
    lines = [
        f"- Grid: {len(plan.specs)} variants x {len(plan.envs)} environments x {len(plan.seeds)} seeds "
        f"= {len(results.status)} runs; " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) + "."
    ]
    unfinished = sorted(key for key, state in results.status.items() if state != "complete")
    if unfinished:
        lines.append(
            f"- **Incomplete:** {len(unfinished)} runs have no result yet ({', '.join(unfinished[:12])}"
            f"{', ...' if len(unfinished) > 12 else ''}); the numbers below use the completed runs only. "
            "Rerun the same command to run the missing ones."
        )
    lines += _failures(results, plan)
    if results.duplicates:
        lines.append(f"- **Warning:** cells completed more than once (the first is used): {results.duplicates}")
    if stats.baseline is not None and len(stats.improvement):
        scope = AGGREGATE if AGGREGATE in set(stats.improvement["env_id"]) else stats.improvement["env_id"].iloc[0]
        for _, row in stats.improvement[stats.improvement["env_id"] == scope].iterrows():
            where = "over environments" if scope == AGGREGATE else f"on {scope}"
            lines.append(
                f"- P({row['variant']} > {stats.baseline}) {where} = {row['probability']:.2f} "
                f"[{row['low']:.2f}, {row['high']:.2f}], exact p = {row['p_value']:.3g}: {row['verdict']}"
            )
    n_min = int(results.runs.groupby(["variant", "env_id"]).size().min()) if len(results.runs) else 0
    if 0 < n_min < 4:
        lines.append(
            f"- With {n_min} seed(s) per arm no verdict is possible: the exact test's smallest p-value at 3 vs 3 is "
            "0.1 (2 of the 20 splits). Rerun with --seeds 5 or more (docs/power-table.md: seeds needed per effect size)."
        )
    return lines


def _protocol(results: AblationResults, stats: AblationStatistics, plan: Plan) -> list[str]:
    protocol = results.protocol
    lines = [
        f"- Seeds: {plan.seeds} (training envs and model seeded with the seed; evaluation env with seed + "
        f"{EVAL_SEED_OFFSET}).",
        f"- Budget: {protocol.timesteps} timesteps per run (rounded up to whole rollouts); the schedules run over the "
        "whole budget; an rl-zoo3 entry's `n_timesteps` is ignored.",
        f"- Evaluation: at {list(protocol.run_protocol.eval_points)} timesteps (evenly spaced, at most --eval-freq "
        f"{protocol.eval_freq} apart), {protocol.n_eval_episodes} deterministic episodes on a separate evaluation env; "
        "the curve point is their mean return.",
        "- Final score of a run: its last evaluation (at the end of the budget). Training-episode returns (Monitor, "
        "stochastic policy) are kept in `episodes.csv` but not used in the statistics.",
        f"- Statistics: rliable {package_versions()['rliable']}: mean, median and IQM (25% trimmed mean) of the final "
        f"scores with 95% stratified bootstrap CIs ({plan.bootstrap_reps} replications, percentile method); "
        "P(X > Y) is the Mann-Whitney U statistic / (n_X n_Y) averaged over environments, with a stratified "
        "independent bootstrap CI. A verdict ('better'/'worse') needs both the CI to exclude 0.5 and an exact two-sided "
        "permutation test of P(X > Y) (runs exchanged between the arms; one environment: exact Mann-Whitney) to give "
        f"p < {ALPHA}; otherwise 'no clear difference' (sb3_ppo_variants.studies.statistics). "
        "Per environment on raw returns; over environments on min-max normalised scores. "
        "rliable's median is the median over environments of the per-environment mean, so for one environment it "
        "equals the mean.",
        f"- Storage: `{plan.storage_label}`, study `{plan.study.study_name}` (each trial is a batch of cells; rerunning the "
        "command runs only the missing cells).",
        *_batches(results),
        f"- Command: `{plan.command}`",
        "",
        "### Variants",
        "",
    ]
    rows = []
    for spec in plan.specs:
        recipe = next((r for r in results.recipes.values() if r["variant"] == spec.name), None)
        algorithm = recipe["algorithm"] if recipe else spec.algorithm  # a label's algorithm is known from its cells
        rows.append(
            [
                spec.name,
                algorithm_class(algorithm).__name__ if algorithm else "-",
                spec.components.get("surrogate", "-"),
                spec.components.get("kl_penalty", "-"),
                spec.components.get("entropy", "-"),
                f"`{spec.overrides}`" if spec.overrides else "-",
                ", ".join(recipe["dropped"]) if recipe and recipe["dropped"] else "-",
            ]
        )
    lines += _table(["name", "class", "surrogate", "KL penalty", "entropy", "fixed arguments", "dropped keys"], rows)
    lines += [
        "",
        "'fixed arguments' win over the hyperparameters; 'dropped keys' are entries of a shared hyperparameter "
        "entry the class does not take (e.g. `clip_range` for TRPO).",
        "",
        "### Hyperparameters",
        "",
    ]
    seen: dict[tuple[str, str], dict[str, None]] = defaultdict(dict)  # (source, entry) -> the cells that use it
    for recipe in results.recipes.values():
        text = yaml.safe_dump(recipe["hyperparams"], sort_keys=True).strip() or "{}"
        seen[recipe["hyperparams_source"], text][f"{recipe['variant']} on {recipe['env_id']}"] = None
    for (label, text), names in seen.items():
        lines += [f"{', '.join(names)} (from {label}):", "", "```yaml", text, "```", ""]
    lines += ["### Reference scores (min-max normalisation)", ""]
    ref_rows = [
        [
            env,
            f"{ref.random_mean:g}",
            f"{ref.ppo_reference_mean:g}",
            str(ref.ppo_reference_timesteps or "-"),
            ref.ppo_reference_source,
        ]
        for env, ref in plan.references.items()
        if env in plan.envs
    ]
    lines += _table(["env", "0 = random policy", "1 = reference PPO", "reference budget", "source"], ref_rows)
    lines += [
        "",
        "The random-policy returns were measured with gymnasium 1.4.0 (100 episodes). The rl-zoo3 figures are single "
        "runs with their std over evaluation episodes, not over seeds, and after their own (larger) budgets.",
    ]
    lines += [f"- {note}" for note in stats.notes]
    return lines


def _batches(results: AblationResults) -> list[str]:
    """How the batches were trained: as populations, or solo and why (``batches.csv`` has one row per batch)."""
    frame = results.batches
    if frame.empty:
        return []
    lines = []
    for (mode, why), rows in frame.groupby(["mode", "why"], dropna=False, sort=False):
        text = f"{len(rows)} batch(es), {int(rows['cells'].sum())} cells: {mode}"
        lines.append(f"- Batches: {text}" + (f" ({why})" if isinstance(why, str) and why else ""))
    return lines


def _machine(results: AblationResults) -> list[str]:
    versions = package_versions()
    hosts = sorted({str(h) for h in results.runs["host"].dropna()}) if len(results.runs) else []
    wall = results.runs["wall_time_s"].sum() if len(results.runs) else 0.0
    return [
        f"- Date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Report written on: {socket.gethostname()}, {platform.platform()}, {platform.machine()}, {os.cpu_count()} CPUs",
        f"- Runs done on: {', '.join(hosts) or '-'}; total run time {wall / 60:.1f} min (sum over runs)",
        "- Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()),
    ]


def write_report(plan: Plan, results: AblationResults, stats: AblationStatistics, figures: dict[str, Path]) -> Path:
    """Write ``report.md`` into ``plan.out`` (``figures``: figure name -> path under ``plan.out``); return its path."""
    out = plan.out
    digits = 2
    lines: list[str] = [f"# Ablation: {', '.join(s.name for s in plan.specs)} on {', '.join(plan.envs)}", "", "## Summary", ""]
    lines += _summary(results, stats, plan)
    lines += [""]
    if AGGREGATE in set(stats.intervals.get("env_id", [])):
        lines += [f"## Over environments (normalised: {', '.join(stats.aggregate_envs)})", ""]
        lines += _scope_table(stats, AGGREGATE, digits)
        lines += [""]
        lines += _image(figures, "intervals_aggregate", "aggregate metrics", out)
    lines += _image(figures, "improvement", "probability of improvement", out)
    lines += ["## Per environment (raw returns of the final evaluation)", ""]
    for env_id in plan.envs:
        if env_id not in set(stats.intervals.get("env_id", [])):
            lines += [f"### {env_id}", "", "No completed run.", ""]
            continue
        lines += [f"### {env_id}", ""]
        lines += _image(figures, f"curves_{env_id}", f"learning curves {env_id}", out)
        lines += _scope_table(stats, env_id, digits)
        lines += [""]
        lines += _image(figures, f"intervals_{env_id}", f"metrics {env_id}", out)
    lines += ["## Protocol", ""]
    lines += _protocol(results, stats, plan)
    lines += ["", "## Software and machine", ""]
    lines += _machine(results)
    lines += ["", "## Raw data", ""]
    lines += [f"- `{name}.csv`: {text}" for name, text in FILES.items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
