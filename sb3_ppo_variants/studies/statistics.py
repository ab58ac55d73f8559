"""Statistics of an ablation with rliable (Agarwal et al. 2021, https://arxiv.org/abs/2108.13264).

- Point estimates and 95% stratified bootstrap confidence intervals of the mean, the median and the IQM
  (interquartile mean) of the final scores: per environment on the raw returns, and over environments on
  min-max normalised scores (see :mod:`sb3_ppo_variants.studies.reference`).
- The probability of improvement P(X > Y) of each variant X over a baseline Y (the Mann-Whitney U statistic
  averaged over environments), with its stratified independent bootstrap interval, an exact permutation test, and
  the **verdict** the report's words come from (:func:`probability_of_improvement`, :data:`ALPHA`).
- Learning curves: the IQM over seeds at each evaluation point, with its bootstrap interval.

The aggregates are rliable's (``get_interval_estimates``, ``metrics.aggregate_*``). rliable 1.2 draws its
bootstrap indices from NumPy's global generator whatever ``random_state`` says, so the global generator is seeded
(and restored) around each call: the same scores give the same intervals. The bootstrap of P(X > Y) is rliable's
scheme (``StratifiedIndependentBootstrap``: each arm's runs resampled independently within each task; percentile
interval) written with NumPy over all replications at once: rliable's loop took ~1.5 s per pair at 2000
replications here, too slow for a calibration of hundreds of comparisons.

**The verdict rule.** X is ``better`` than Y when both

1. the 95% bootstrap interval of P(X > Y) lies above 0.5, and
2. an exact two-sided permutation test of "no difference" gives p < :data:`ALPHA` (0.05);

``worse`` when the interval lies below 0.5 and p < 0.05; ``no clear difference`` otherwise. Why both, and what it
means for the number of seeds (3 per arm can never give a verdict): the documentation's page on ablation studies.

The test permutes whole runs (rows of the runs x tasks matrix) between the two arms; its statistic is P(X > Y)
itself, i.e. the sum over X's runs of their midranks (averaged over tasks) in the pooled sample. With one task it is
the exact Mann-Whitney-Wilcoxon test (Mann and Whitney 1947), with ties handled exactly by conditioning on the
midranks; its null distribution is counted exactly over all C(n + m, n) splits by dynamic programming, so the
p-value is exact at any seed count. Colas, Sigaud and Oudeyer (2018, "How Many Random Seeds? Statistical Power
Analysis in Deep Reinforcement Learning Experiments", https://arxiv.org/abs/1806.08295) and Colas et al. (2019, "A
Hitchhiker's Guide to Statistical Comparisons of Reinforcement Learning Algorithms",
https://arxiv.org/abs/1904.06979) measure how the bootstrap's and the t-test's false positive rates exceed their
nominal level at small sample sizes, and recommend ranked tests there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from rliable import library as rly
from rliable import metrics

from sb3_ppo_variants.studies.reference import ReferenceScore

__all__ = [
    "AGGREGATE",
    "ALPHA",
    "METRICS",
    "METRIC_NAMES",
    "AblationStatistics",
    "curve_intervals",
    "interval_estimates",
    "permutation_p_value",
    "probability_of_improvement",
    "score_matrices",
    "summarize",
    "verdict",
]

#: The aggregate metrics, in the order of the tables and plots.
METRICS: dict[str, Callable[[np.ndarray], float]] = {
    "mean": metrics.aggregate_mean,
    "median": metrics.aggregate_median,
    "iqm": metrics.aggregate_iqm,
}
#: The metrics' names in tables and figures.
METRIC_NAMES = {"mean": "Mean", "median": "Median", "iqm": "IQM"}
#: The ``env_id`` of rows aggregated over environments.
AGGREGATE = "aggregate"
#: Level of the exact test behind a verdict (see the module docstring).
ALPHA = 0.05


def _seeded_intervals(score_dict: dict[str, np.ndarray], aggregate: Callable, reps: int, seed: int) -> tuple[dict, dict]:
    """rliable's interval estimates with NumPy's global generator seeded, and restored after (see the module docstring)."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return rly.get_interval_estimates(score_dict, aggregate, reps=reps)
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
    points, intervals = _seeded_intervals(score_dict, _all_metrics, reps, seed)
    rows = []
    for variant in score_dict:
        for index, metric in enumerate(METRICS):
            low, high = intervals[variant][:, index]
            rows.append([variant, metric, float(points[variant][index]), float(low), float(high)])
    return pd.DataFrame(rows, columns=["variant", "metric", "point", "low", "high"])


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) = mean over tasks of the Mann-Whitney U / (n m), ties counting 1/2: x (..., n, T), y (..., m, T) -> (...)."""
    difference = x[..., :, None, :] - y[..., None, :, :]  # (..., n, m, T)
    return ((difference > 0) + 0.5 * (difference == 0)).mean(axis=(-3, -2, -1))  # type: ignore[no-any-return]


def _bootstrap_interval(x: np.ndarray, y: np.ndarray, reps: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of P(X > Y) over stratified independent bootstrap resamples (rliable's scheme)."""
    tasks = np.arange(x.shape[1])
    chunk = max(1, 2_000_000 // (x.shape[0] * y.shape[0] * x.shape[1]))  # bounds the (chunk, n, m, T) array
    values = []
    for start in range(0, reps, chunk):
        size = min(chunk, reps - start)
        rows_x = rng.integers(0, x.shape[0], size=(size, *x.shape))
        rows_y = rng.integers(0, y.shape[0], size=(size, *y.shape))
        values.append(_improvement(x[rows_x, tasks], y[rows_y, tasks]))
    low, high = np.percentile(np.concatenate(values), [2.5, 97.5])
    return float(low), float(high)


def permutation_p_value(x: np.ndarray, y: np.ndarray) -> float:
    """Exact two-sided p-value of "X and Y do not differ", the statistic being P(X > Y) (see the module docstring).

    Runs (rows) are exchanged between the arms; every split of the pooled n + m runs into n and m is equally likely
    under the null. The count of splits at least as far from the null's mean as the observed one is exact (dynamic
    programming over the runs' midrank sums, in integers).

    :param x: (n, tasks) scores of X
    :param y: (m, tasks) scores of Y
    """
    from scipy.stats import rankdata

    n = x.shape[0]
    pooled = np.concatenate([x, y])
    # Midranks per task are multiples of 1/2: twice their sum over tasks is an integer per run.
    values = np.rint(2 * rankdata(pooled, axis=0).sum(axis=1)).astype(np.int64)
    total, size = int(values.sum()), len(values)
    observed = int(values[:n].sum())
    # counts[k, s]: the splits that put k of the runs seen so far in X with value sum s (floats: C(50, 25) > 2**63).
    counts = np.zeros((n + 1, int(np.sort(values)[-n:].sum()) + 1))
    counts[0, 0] = 1.0
    for value in values:
        counts[1:, value:] += counts[:-1, : counts.shape[1] - value].copy()
    sums = np.arange(counts.shape[1])
    extreme = np.abs(size * sums - n * total) >= abs(size * observed - n * total)  # |S - E[S]| >= |s - E[S]|, times size
    return float(counts[n, extreme].sum() / counts[n].sum())


def verdict(probability: float, low: float, high: float, p_value: float, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` when the interval excludes 0.5 on that side and ``p_value < alpha``; else
    ``no clear difference`` (the rule of the module docstring)."""
    if p_value < alpha and low > 0.5 and probability > 0.5:
        return "better"
    if p_value < alpha and high < 0.5 and probability < 0.5:
        return "worse"
    return "no clear difference"


def probability_of_improvement(
    score_dict: dict[str, np.ndarray], baseline: str, reps: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """P(X > baseline) for every other variant X, with its 95% stratified independent bootstrap interval, the exact
    permutation test's p-value and the verdict (see the module docstring).

    :param score_dict: variant -> scores of shape (runs, tasks); the runs of two variants may differ in number
    :param reps: bootstrap replications
    :return: rows (variant, baseline, probability, low, high, p_value, verdict)
    """
    if baseline not in score_dict:
        raise ValueError(f"baseline must be one of {sorted(score_dict)}, got {baseline!r}")
    columns = ["variant", "baseline", "probability", "low", "high", "p_value", "verdict"]
    rows = []
    reference = np.asarray(score_dict[baseline], dtype=float)
    for variant, scores in score_dict.items():
        if variant == baseline:
            continue
        scores = np.asarray(scores, dtype=float)
        probability = float(metrics.probability_of_improvement(scores, reference))
        low, high = _bootstrap_interval(scores, reference, reps, np.random.default_rng(seed))
        p_value = permutation_p_value(scores, reference)
        rows.append([variant, baseline, probability, low, high, p_value, verdict(probability, low, high, p_value)])
    return pd.DataFrame(rows, columns=columns)


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

        points, intervals = _seeded_intervals({"curve": scores}, iqm_per_point, reps, seed)
        for index, nominal in enumerate(table.columns):
            low, high = intervals["curve"][:, index]
            rows.append([env_id, variant, int(nominal), len(table), float(points["curve"][index]), float(low), float(high)])
    return pd.DataFrame(rows, columns=["env_id", "variant", "nominal", "runs", "iqm", "low", "high"])


@dataclass
class AblationStatistics:
    """The numbers of a report.

    :param intervals: rows (env_id, variant, metric, point, low, high, runs); ``env_id`` ``"aggregate"`` for the
        normalised scores over ``aggregate_envs``; per-env rows are raw returns
    :param improvement: rows (env_id, variant, baseline, probability, low, high, p_value, verdict)
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
    runs: pd.DataFrame, references: dict[str, ReferenceScore], baseline: str | None = None, reps: int = 2000, seed: int = 0
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
