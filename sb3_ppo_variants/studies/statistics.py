"""Statistics of an ablation with rliable (Agarwal et al. 2021, https://arxiv.org/abs/2108.13264).

- Point estimates and 95% stratified bootstrap confidence intervals of the mean, the median and the IQM
  (interquartile mean) of the final scores: per environment on the raw returns, and over environments on
  min-max normalised scores (see :mod:`sb3_ppo_variants.studies.reference`).
- The probability of improvement P(X > Y) of each variant X over a baseline Y (the Mann-Whitney U statistic
  averaged over environments), with its stratified independent bootstrap interval.
- Learning curves: the IQM over seeds at each evaluation point, with its bootstrap interval.

All of it is rliable's (``get_interval_estimates``, ``metrics.aggregate_*``, ``probability_of_improvement``).
rliable 1.2 draws its bootstrap indices from NumPy's global generator whatever ``random_state`` says, so the
global generator is seeded (and restored) around each call: the same scores give the same intervals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rliable import library as rly
from rliable import metrics

from sb3_ppo_variants.studies.reference import ReferenceScore

__all__ = [
    "AGGREGATE",
    "METRICS",
    "AblationStatistics",
    "curve_intervals",
    "interval_estimates",
    "probability_of_improvement",
    "score_matrices",
    "summarize",
]

#: The aggregate metrics, in the order of the tables and plots.
METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": metrics.aggregate_mean,
    "median": metrics.aggregate_median,
    "iqm": metrics.aggregate_iqm,
}
#: The ``env_id`` of rows aggregated over environments.
AGGREGATE = "aggregate"


@contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _all_metrics(scores: np.ndarray) -> np.ndarray:
    return np.array([metric(scores) for metric in METRICS.values()])


def interval_estimates(score_dict: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Mean, median and IQM with 95% stratified bootstrap intervals.

    :param score_dict: variant -> scores of shape (runs, tasks)
    :param reps: bootstrap replications
    :return: rows (variant, metric, point, low, high)
    """
    with _global_numpy_seed(seed):
        points, intervals = rly.get_interval_estimates(score_dict, _all_metrics, reps=reps)
    rows = []
    for variant in score_dict:
        for index, metric in enumerate(METRICS):
            low, high = intervals[variant][:, index]
            rows.append(
                {
                    "variant": variant,
                    "metric": metric,
                    "point": float(points[variant][index]),
                    "low": float(low),
                    "high": float(high),
                }
            )
    return pd.DataFrame(rows, columns=["variant", "metric", "point", "low", "high"])


def probability_of_improvement(
    score_dict: dict[str, np.ndarray], baseline: str, reps: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """P(X > baseline) for every other variant X, with 95% stratified independent bootstrap intervals.

    :param score_dict: variant -> scores of shape (runs, tasks); the runs of two variants may differ in number
    :return: rows (variant, baseline, probability, low, high)
    """
    if baseline not in score_dict:
        raise ValueError(f"baseline must be one of {sorted(score_dict)}, got {baseline!r}")
    pairs = {
        f"{variant},{baseline}": (scores, score_dict[baseline])
        for variant, scores in score_dict.items()
        if variant != baseline
    }
    rows = []
    if pairs:
        with _global_numpy_seed(seed):
            points, intervals = rly.get_interval_estimates(pairs, metrics.probability_of_improvement, reps=reps)
        for pair in pairs:
            low, high = np.ravel(intervals[pair])
            rows.append(
                {
                    "variant": pair.split(",")[0],
                    "baseline": baseline,
                    "probability": float(points[pair]),
                    "low": float(low),
                    "high": float(high),
                }
            )
    return pd.DataFrame(rows, columns=["variant", "baseline", "probability", "low", "high"])


def score_matrices(runs: pd.DataFrame, envs: list[str], value: str = "final_score") -> tuple[dict[str, np.ndarray], list[str]]:
    """Variant -> (runs x envs) matrix of ``value``, with the seeds every env of that variant has.

    rliable needs rectangular matrices: a seed missing in one env (an unfinished grid) is left out of the
    variant's matrix, and a note says so.

    :return: the matrices (variants without a complete seed are left out) and the notes
    """
    matrices, notes = {}, []
    for variant, frame in runs[runs["env_id"].isin(envs)].groupby("variant", sort=False):
        table = frame.pivot_table(index="seed", columns="env_id", values=value, aggfunc="first").reindex(columns=envs)
        complete = table.dropna()
        if len(complete) < len(table):
            left_out = sorted(set(table.index) - set(complete.index))
            notes.append(f"{variant}: seeds {left_out} left out of the aggregate over {envs} (not run on every env)")
        if len(complete):
            matrices[str(variant)] = complete.to_numpy(dtype=float)
    return matrices, notes


def curve_intervals(curves: pd.DataFrame, reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """IQM over seeds of the evaluation return at each nominal timestep, per env and variant, with 95% intervals.

    :param curves: rows (variant, env_id, seed, nominal, eval_return), as :func:`collect_results` gives
    :return: rows (env_id, variant, nominal, runs, iqm, low, high)
    """
    rows = []
    for (env_id, variant), frame in curves.groupby(["env_id", "variant"], sort=False):
        table = frame.pivot_table(index="seed", columns="nominal", values="eval_return", aggfunc="first").dropna()
        if table.empty:
            continue
        scores = table.to_numpy(dtype=float)[:, None, :]  # (runs, 1 task, points)

        def iqm_per_point(x: np.ndarray) -> np.ndarray:
            return np.array([metrics.aggregate_iqm(x[..., j]) for j in range(x.shape[-1])])

        with _global_numpy_seed(seed):
            points, intervals = rly.get_interval_estimates({"curve": scores}, iqm_per_point, reps=reps)
        for index, nominal in enumerate(table.columns):
            rows.append(
                {
                    "env_id": env_id,
                    "variant": variant,
                    "nominal": int(nominal),
                    "runs": len(table),
                    "iqm": float(points["curve"][index]),
                    "low": float(intervals["curve"][0, index]),
                    "high": float(intervals["curve"][1, index]),
                }
            )
    return pd.DataFrame(rows, columns=["env_id", "variant", "nominal", "runs", "iqm", "low", "high"])


@dataclass
class AblationStatistics:
    """The numbers of a report.

    :param intervals: rows (env_id, variant, metric, point, low, high, runs); ``env_id`` ``"aggregate"`` for the
        normalised scores over ``aggregate_envs``; per-env rows are raw returns
    :param improvement: rows (env_id, variant, baseline, probability, low, high)
    :param aggregate_envs: the environments in the aggregate (those with a reference score)
    :param notes: what was left out and why
    """

    intervals: pd.DataFrame
    improvement: pd.DataFrame
    baseline: str | None
    aggregate_envs: list[str]
    notes: list[str] = field(default_factory=list)


def _normalized(runs: pd.DataFrame, references: dict[str, ReferenceScore]) -> pd.DataFrame:
    runs = runs[runs["env_id"].isin(list(references))].copy()
    runs["normalized_score"] = [
        float(references[env].normalize(score)) for env, score in zip(runs["env_id"], runs["final_score"])
    ]
    return runs


def summarize(
    runs: pd.DataFrame,
    references: dict[str, ReferenceScore],
    baseline: str | None = None,
    reps: int = 2000,
    seed: int = 0,
) -> AblationStatistics:
    """Per-env and aggregate interval estimates and probabilities of improvement of the final scores.

    :param runs: rows (variant, env_id, seed, final_score), as :func:`collect_results` gives
    :param references: reference scores; environments without one are left out of the aggregate (a note says so)
    :param baseline: the variant the others are compared with; None: ``sb3_ppo`` if present, else ``clip`` if
        present, else the first variant
    """
    variants = list(dict.fromkeys(runs["variant"]))
    envs = list(dict.fromkeys(runs["env_id"]))
    if baseline is None:
        baseline = next((name for name in ("sb3_ppo", "clip") if name in variants), variants[0] if variants else None)
    elif baseline not in variants:
        raise ValueError(f"--baseline must be one of the variants with results {variants}, got {baseline!r}")
    interval_frames, improvement_frames, notes = [], [], []

    def add(env_id: str, matrices: dict[str, np.ndarray]) -> None:
        frame = interval_estimates(matrices, reps=reps, seed=seed)
        frame.insert(0, "env_id", env_id)
        frame["runs"] = [len(matrices[v]) for v in frame["variant"]]
        interval_frames.append(frame)
        if baseline in matrices and len(matrices) > 1:
            improvement = probability_of_improvement(matrices, baseline, reps=reps, seed=seed)
            improvement.insert(0, "env_id", env_id)
            improvement_frames.append(improvement)

    for env_id in envs:
        matrices, _ = score_matrices(runs, [env_id])
        add(env_id, matrices)
    aggregate_envs = [env for env in envs if env in references]
    missing = [env for env in envs if env not in references]
    if missing:
        notes.append(f"no reference score for {missing}: left out of the normalised aggregate")
    if aggregate_envs:
        matrices, more = score_matrices(_normalized(runs, references), aggregate_envs, value="normalized_score")
        notes.extend(more)
        if matrices:
            add(AGGREGATE, matrices)
    return AblationStatistics(
        intervals=pd.concat(interval_frames, ignore_index=True) if interval_frames else pd.DataFrame(),
        improvement=pd.concat(improvement_frames, ignore_index=True) if improvement_frames else pd.DataFrame(),
        baseline=baseline,
        aggregate_envs=aggregate_envs,
        notes=notes,
    )
