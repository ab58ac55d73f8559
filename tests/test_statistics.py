"""Statistics of an ablation on inputs whose answers are known, and the reference-score normalisation."""

from __future__ import annotations

import itertools
from math import comb

import numpy as np
import pandas as pd
import pytest
from rliable import library as rly
from rliable import metrics
from scipy.stats import mannwhitneyu

from sb3_ppo_variants.studies.reference import load_reference_scores, normalize
from sb3_ppo_variants.studies.statistics import (
    AGGREGATE,
    ALPHA,
    curve_intervals,
    interval_estimates,
    permutation_p_value,
    probability_of_improvement,
    score_matrices,
    summarize,
    verdict,
)

REPS = 300  # enough for the properties below; the tool's default is 2000


def _scores(seed: int = 0, runs: int = 7, tasks: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(runs, tasks)) * 10


def _point(frame: pd.DataFrame, variant: str, metric: str) -> pd.Series:
    return frame[(frame["variant"] == variant) & (frame["metric"] == metric)].iloc[0]


def test_identical_score_matrices_give_probability_one_half() -> None:
    scores = _scores()
    frame = probability_of_improvement({"a": scores, "b": scores.copy()}, baseline="b", reps=REPS)
    row = frame.iloc[0]
    assert (row["variant"], row["baseline"]) == ("a", "b")
    assert row["probability"] == 0.5
    assert row["low"] <= 0.5 <= row["high"]


def test_dominating_scores_give_probability_one_and_zero() -> None:
    low = _scores()
    high = low + 1000.0  # every run of every task above every run of the other
    better = probability_of_improvement({"high": high, "low": low}, baseline="low", reps=REPS).iloc[0]
    worse = probability_of_improvement({"high": high, "low": low}, baseline="high", reps=REPS).iloc[0]
    # every comparison counts 1 (or 0): means of ones and zeros are exact
    assert better["probability"] == 1.0
    assert worse["probability"] == 0.0
    assert better["low"] == 1.0 and worse["high"] == 0.0


def test_probability_of_improvement_is_averaged_over_tasks() -> None:
    base = _scores(tasks=2)
    other = base.copy()
    other[:, 1] += 1000.0  # task 0 identical (0.5), task 1 dominated (1.0)
    row = probability_of_improvement({"x": other, "y": base}, baseline="y", reps=REPS).iloc[0]
    assert row["probability"] == pytest.approx(0.75)


def test_a_shifted_matrix_shifts_every_estimate_and_interval_by_the_shift() -> None:
    scores, shift = _scores(), 3.25
    # Same seed, so the same bootstrap resamples: the intervals move with the scores too.
    frame = pd.concat(
        [
            interval_estimates({"base": scores}, reps=REPS, seed=1),
            interval_estimates({"shifted": scores + shift}, reps=REPS, seed=1),
        ]
    )
    for metric in ("mean", "median", "iqm"):
        base, shifted = _point(frame, "base", metric), _point(frame, "shifted", metric)
        for column in ("point", "low", "high"):
            # mean(x + shift) vs mean(x) + shift: the same value, rounded in another order (float64, ~1e-16 relative)
            assert shifted[column] == pytest.approx(base[column] + shift), (metric, column)


def test_iqm_is_the_mean_of_the_middle_half_and_intervals_contain_the_points() -> None:
    scores = np.arange(1.0, 9.0)[:, None]  # 8 runs, 1 task: the middle half is 3, 4, 5, 6
    frame = interval_estimates({"v": scores}, reps=REPS)
    assert _point(frame, "v", "iqm")["point"] == 4.5  # small integers and halves: exact in float64
    assert _point(frame, "v", "mean")["point"] == 4.5
    skewed = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 100.0])[:, None]
    frame = pd.concat([frame, interval_estimates({"skewed": skewed}, reps=REPS)])
    assert _point(frame, "skewed", "iqm")["point"] == pytest.approx(0.75)  # mean of 0, 1, 1, 1: the outlier is cut
    assert _point(frame, "skewed", "mean")["point"] == pytest.approx(104.0 / 8)
    assert ((frame["low"] <= frame["point"] + 1e-12) & (frame["point"] <= frame["high"] + 1e-12)).all()
    assert (frame["low"] < frame["high"]).all()


def test_intervals_are_reproducible_and_leave_the_global_generator_alone() -> None:
    scores = {"a": _scores(1), "b": _scores(2)}
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    first = interval_estimates(scores, reps=REPS, seed=5)
    assert np.array_equal(np.random.get_state()[1], before)
    second = interval_estimates(scores, reps=REPS, seed=5)
    other_seed = interval_estimates(scores, reps=REPS, seed=6)
    pd.testing.assert_frame_equal(first, second)
    assert not np.allclose(first["low"], other_seed["low"])  # another bootstrap seed, other resamples: the check can fail


def test_probability_of_improvement_is_rliables_and_its_interval_matches_rliables_bootstrap() -> None:
    x, y = _scores(3, runs=6, tasks=2), _scores(4, runs=5, tasks=2)
    row = probability_of_improvement({"x": x, "y": y}, baseline="y", reps=1000).iloc[0]
    assert row["probability"] == metrics.probability_of_improvement(x, y)
    np.random.seed(0)
    _, rliable_interval = rly.get_interval_estimates({"p": (x, y)}, metrics.probability_of_improvement, reps=1000)
    # Two bootstraps of the same scheme with different random draws: the ends differ by Monte Carlo error only
    # (the ends' standard error at 1000 replications is ~0.015 here).
    assert np.ravel(rliable_interval["p"]) == pytest.approx([row["low"], row["high"]], abs=0.05)


def test_the_exact_test_at_three_seeds_cannot_go_below_one_tenth() -> None:
    high, low = np.array([[1.0], [2.0], [3.0]]), np.array([[-1.0], [-2.0], [-3.0]])
    row = probability_of_improvement({"high": high, "low": low}, baseline="low", reps=REPS).iloc[0]
    assert (row["probability"], row["low"], row["high"]) == (1.0, 1.0, 1.0)  # the bootstrap alone says "certain"
    assert row["p_value"] == 2 / comb(6, 3)  # 3 beat 3 outright, or 3 lose outright: 2 of the 20 splits
    assert row["verdict"] == "no clear difference"
    five = probability_of_improvement({"high": np.arange(5.0, 10.0)[:, None], "low": np.arange(5.0)[:, None]}, "low")
    assert five.iloc[0]["p_value"] == 2 / comb(10, 5) and five.iloc[0]["verdict"] == "better"


@pytest.mark.parametrize(("n", "m", "seed"), [(3, 3, 0), (5, 5, 1), (4, 7, 2), (10, 10, 3)])
def test_the_exact_test_on_one_task_is_the_exact_mann_whitney_test(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 1)), rng.normal(size=(m, 1))
    # Two exact computations of the same distribution, summed in different orders: equal to float rounding.
    assert permutation_p_value(x, y) == pytest.approx(mannwhitneyu(x[:, 0], y[:, 0], method="exact").pvalue, rel=1e-12)


def test_the_exact_test_with_ties_and_several_tasks_counts_every_split() -> None:
    x = np.array([[1.0, 2.0], [1.0, 3.0], [2.0, 2.0]])
    y = np.array([[1.0, 1.0], [2.0, 2.0], [0.0, 3.0], [1.0, 2.0]])
    pooled = np.concatenate([x, y])

    def statistic(chosen: tuple[int, ...]) -> float:
        mask = np.isin(np.arange(len(pooled)), chosen)
        return float(metrics.probability_of_improvement(pooled[mask], pooled[~mask]))

    observed = statistic((0, 1, 2))
    splits = list(itertools.combinations(range(len(pooled)), len(x)))
    # P(X > Y) of a split is a multiple of 1/(2 n m T) = 1/48: compare distances to 0.5 in those units.
    extreme = sum(round(48 * abs(statistic(c) - 0.5)) >= round(48 * abs(observed - 0.5)) for c in splits)
    assert permutation_p_value(x, y) == extreme / len(splits)


def test_the_verdict_needs_the_interval_and_the_test() -> None:
    assert verdict(0.9, 0.6, 1.0, 0.01) == "better"
    assert verdict(0.1, 0.0, 0.4, 0.01) == "worse"
    assert verdict(0.9, 0.6, 1.0, 0.1) == "no clear difference"  # the interval alone
    assert verdict(0.7, 0.45, 0.9, 0.01) == "no clear difference"  # the test alone
    assert verdict(0.9, 0.6, 1.0, ALPHA) == "no clear difference"  # p < alpha, strictly


#: Repetitions of a synthetic study per setting, and bootstrap replications per comparison: the rule's calibration
#: within a few seconds (the exact test needs no replications; 500 bootstrap replications move the interval's ends by
#: Monte Carlo error only).
CALIBRATION_REPETITIONS = 300
CALIBRATION_REPS = 500


def _verdicts(n: int, shift: float, seed: int) -> list[str]:
    """Verdicts of X (normal, mean ``shift`` sd) against Y (standard normal), n runs each, one task."""
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(CALIBRATION_REPETITIONS):
        scores = {"x": rng.normal(shift, 1.0, size=(n, 1)), "y": rng.normal(0.0, 1.0, size=(n, 1))}
        found.append(probability_of_improvement(scores, "y", reps=CALIBRATION_REPS).iloc[0]["verdict"])
    return found


@pytest.mark.parametrize("n", [3, 5, 10])
def test_identical_arms_get_a_verdict_in_at_most_five_percent_of_studies(n: int) -> None:
    found = _verdicts(n, 0.0, seed=n)
    rate = sum(v != "no clear difference" for v in found) / len(found)
    assert rate <= 0.05, rate
    if n == 3:
        assert rate == 0.0  # the exact test's floor at 3 vs 3 is p = 0.1


def test_a_shift_of_one_and_a_half_standard_deviations_at_ten_seeds_is_found_in_most_studies() -> None:
    found = _verdicts(10, 1.5, seed=100)
    assert sum(v == "better" for v in found) / len(found) >= 0.7
    assert "worse" not in found


def test_baseline_must_be_present() -> None:
    with pytest.raises(ValueError, match="baseline must be one of"):
        probability_of_improvement({"a": _scores()}, baseline="clip")


def _runs(rows: list[tuple[str, str, int, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["variant", "env_id", "seed", "final_score"])


def test_score_matrices_leave_out_seeds_missing_in_an_env() -> None:
    runs = _runs([("a", "e1", 0, 1.0), ("a", "e1", 1, 2.0), ("a", "e2", 0, 3.0), ("b", "e1", 0, 5.0), ("b", "e2", 0, 6.0)])
    matrices, notes = score_matrices(runs, ["e1", "e2"])
    assert matrices["a"].tolist() == [[1.0, 3.0]]
    assert matrices["b"].tolist() == [[5.0, 6.0]]
    assert len(notes) == 1 and "a: seeds [1]" in notes[0]


def test_summarize_normalises_the_aggregate_and_picks_the_baseline() -> None:
    references = load_reference_scores()
    cartpole = references["CartPole-v1"]
    rows = []
    for seed in range(4):
        rows.append(("clip", "CartPole-v1", seed, cartpole.random_mean))  # normalised 0
        rows.append(("kl", "CartPole-v1", seed, cartpole.ppo_reference_mean))  # normalised 1
        rows.append(("clip", "NoReference-v0", seed, 1.0))
        rows.append(("kl", "NoReference-v0", seed, 2.0))
    stats = summarize(_runs(rows), references, reps=REPS)
    assert stats.baseline == "clip"
    assert stats.aggregate_envs == ["CartPole-v1"]
    assert any("NoReference-v0" in note for note in stats.notes)
    aggregate = stats.intervals[stats.intervals["env_id"] == AGGREGATE]
    # (random - random) / (reference - random) and (reference - random) / (reference - random): exactly 0 and 1
    assert _point(aggregate, "clip", "iqm")["point"] == 0.0
    assert _point(aggregate, "kl", "iqm")["point"] == 1.0
    per_env = stats.intervals[stats.intervals["env_id"] == "NoReference-v0"]
    assert _point(per_env, "kl", "mean")["point"] == pytest.approx(2.0)  # raw returns per env
    improvement = stats.improvement.set_index("env_id")
    assert improvement.loc[AGGREGATE, "probability"] == pytest.approx(1.0)
    assert set(improvement.index) == {AGGREGATE, "CartPole-v1", "NoReference-v0"}
    with_sb3 = summarize(_runs([*rows, ("sb3_ppo", "CartPole-v1", 0, 100.0)]), references, reps=REPS)
    assert with_sb3.baseline == "sb3_ppo"
    with pytest.raises(ValueError, match="--baseline"):
        summarize(_runs(rows), references, baseline="trpo", reps=REPS)


def test_curve_intervals_of_identical_seeds_collapse_on_the_curve() -> None:
    rows = []
    for seed in range(3):
        for nominal, value in ((0, 10.0), (100, 20.0), (200, 50.0)):
            rows.append({"variant": "v", "env_id": "e", "seed": seed, "nominal": nominal, "eval_return": value})
            rows.append({"variant": "w", "env_id": "e", "seed": seed, "nominal": nominal, "eval_return": value + seed})
    frame = curve_intervals(pd.DataFrame(rows), reps=REPS)
    same = frame[frame["variant"] == "v"]
    assert same["iqm"].tolist() == [10.0, 20.0, 50.0]
    assert np.array_equal(same["low"], same["iqm"]) and np.array_equal(same["high"], same["iqm"])  # resamples of equals
    spread = frame[frame["variant"] == "w"]
    assert np.allclose(spread["iqm"], [11.0, 21.0, 51.0])  # 3 runs: nothing trimmed, the mean
    assert (spread["low"] < spread["iqm"]).all() and (spread["iqm"] < spread["high"]).all()
    assert (frame["runs"] == 3).all()


def test_reference_scores_normalise_random_to_zero_and_reference_to_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    references = load_reference_scores()
    assert {"CartPole-v1", "Acrobot-v1", "Pendulum-v1", "LunarLander-v3"} <= set(references)
    for env_id, ref in references.items():
        assert ref.ppo_reference_mean > ref.random_mean, env_id
        assert normalize(ref.random_mean, env_id, references) == 0.0  # x - x is 0 and y / y is 1, exactly
        assert normalize(ref.ppo_reference_mean, env_id, references) == 1.0
    with pytest.raises(KeyError, match="no reference score for env 'Nope-v0'"):
        normalize(1.0, "Nope-v0", references)
    own = tmp_path / "refs.csv"
    own.write_text("env_id,random_mean,ppo_reference_mean\nX-v0,-10,10\n")
    assert normalize(0.0, "X-v0", load_reference_scores(own)) == 0.5  # 10 / 20, exact
    bad = tmp_path / "bad.csv"
    bad.write_text("env_id,random_mean\nX-v0,1\n")
    with pytest.raises(ValueError, match="missing columns \\['ppo_reference_mean'\\]"):
        load_reference_scores(bad)
