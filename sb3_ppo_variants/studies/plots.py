"""PNG figures of an ablation (matplotlib, Agg backend): learning curves, metric intervals, P(improvement)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sb3_ppo_variants.studies.statistics import AGGREGATE, METRIC_NAMES, METRICS

__all__ = ["plot_improvement", "plot_intervals", "plot_learning_curves", "slug"]


def slug(text: str) -> str:
    """A file-name-safe version of an env id or variant name."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _colors(variants: list[str]) -> dict[str, tuple[float, ...]]:
    cmap = plt.get_cmap("tab10" if len(variants) <= 10 else "tab20")
    return {variant: cmap(index % cmap.N) for index, variant in enumerate(variants)}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pad(ax: Axes, rows: pd.DataFrame) -> None:
    """Leave room around the intervals, so that a zero-width one (every run equal) stays visible at the edge."""
    low, high = float(rows["low"].min()), float(rows["high"].max())
    pad = 0.06 * (high - low) or 0.05 * max(abs(high), 1.0)
    ax.set_xlim(low - pad, high + pad)


def plot_learning_curves(curve_stats: pd.DataFrame, curves: pd.DataFrame, env_id: str, path: str | Path) -> Path:
    """IQM over seeds of the evaluation return against timesteps, a 95% bootstrap band, and each seed faintly.

    :param curve_stats: :func:`~sb3_ppo_variants.studies.statistics.curve_intervals` rows
    :param curves: the raw evaluation rows (variant, env_id, seed, nominal, eval_return)
    """
    stats = curve_stats[curve_stats["env_id"] == env_id]
    raw = curves[curves["env_id"] == env_id]
    variants = list(dict.fromkeys(stats["variant"]))
    colors = _colors(variants)
    fig, ax = plt.subplots(figsize=(7.5, 4.5), layout="constrained")
    for variant in variants:
        rows = stats[stats["variant"] == variant]
        color = colors[variant]
        for _, seed_rows in raw[raw["variant"] == variant].groupby("seed"):
            ax.plot(seed_rows["nominal"], seed_rows["eval_return"], color=color, alpha=0.18, linewidth=0.8)
        ax.plot(
            rows["nominal"],
            rows["iqm"],
            color=color,
            linewidth=2,
            marker="o",
            markersize=3,
            label=f"{variant} (n={int(rows['runs'].max())})",
        )
        ax.fill_between(rows["nominal"], rows["low"], rows["high"], color=color, alpha=0.2, linewidth=0)
    ax.set_title(f"{env_id}: IQM of the evaluation return over seeds (band: 95% bootstrap CI; thin: seeds)", fontsize=10)
    ax.set_xlabel("training timesteps")
    ax.set_ylabel("mean deterministic return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, Path(path))


def plot_intervals(intervals: pd.DataFrame, env_id: str, path: str | Path) -> Path:
    """Mean, median and IQM of the final scores with their 95% bootstrap intervals, one panel per metric."""
    rows = intervals[intervals["env_id"] == env_id]
    variants = list(dict.fromkeys(rows["variant"]))
    colors = _colors(variants)
    fig, axes = plt.subplots(
        1, len(METRICS), figsize=(3.4 * len(METRICS), 0.45 * len(variants) + 1.6), sharey=True, layout="constrained"
    )
    for ax, metric in zip(axes, METRICS):
        for index, variant in enumerate(variants):
            row = rows[(rows["variant"] == variant) & (rows["metric"] == metric)].iloc[0]
            ax.barh(index, row["high"] - row["low"], left=row["low"], height=0.6, color=colors[variant], alpha=0.75)
            ax.vlines(row["point"], index - 0.35, index + 0.35, color="black")
        ax.set_title(METRIC_NAMES[metric], fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        _pad(ax, rows[rows["metric"] == metric])
        ax.set_yticks(range(len(variants)), variants)
    axes[0].invert_yaxis()  # shared: the first variant on top in every panel
    scale = "normalised score (0 = random, 1 = rl-zoo3 PPO)" if env_id == AGGREGATE else f"{env_id} return"
    fig.supxlabel(f"{scale}; bar: 95% stratified bootstrap CI, tick: point estimate", fontsize=9)
    fig.suptitle("over environments" if env_id == AGGREGATE else env_id, fontsize=11)
    return _save(fig, Path(path))


def plot_improvement(improvement: pd.DataFrame, path: str | Path) -> Path:
    """P(variant > baseline) with 95% bootstrap intervals, one panel per scope (aggregate first, then each env)."""
    scopes = sorted(dict.fromkeys(improvement["env_id"]), key=lambda scope: scope != AGGREGATE)
    fig, axes = plt.subplots(
        1,
        len(scopes),
        figsize=(3.6 * len(scopes) + 1.5, 0.45 * improvement["variant"].nunique() + 1.6),
        squeeze=False,
        layout="constrained",
    )
    baseline = improvement["baseline"].iloc[0]
    for ax, scope in zip(axes[0], scopes):
        rows = improvement[improvement["env_id"] == scope].reset_index(drop=True)
        colors = _colors(list(rows["variant"]))
        for index, row in rows.iterrows():
            ax.barh(index, row["high"] - row["low"], left=row["low"], height=0.6, color=colors[row["variant"]], alpha=0.75)
            ax.vlines(row["probability"], index - 0.35, index + 0.35, color="black")
        ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_yticks(range(len(rows)), rows["variant"])
        ax.invert_yaxis()
        ax.set_title("over environments" if scope == AGGREGATE else scope, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    fig.supxlabel(f"P(variant > {baseline}) of the final score; bar: 95% bootstrap CI; 0.5: no difference", fontsize=9)
    return _save(fig, Path(path))
