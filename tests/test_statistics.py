"""Statistics of an ablation on inputs whose answers are known, and the reference-score normalisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sb3_ppo_variants.studies.reference import load_reference_scores, normalize
from sb3_ppo_variants.studies.statistics import (
    AGGREGATE,
    curve_intervals,
    interval_estimates,
    probability_of_improvement,
    score_matrices,
    summarize,
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
    assert better["probability"] == pytest.approx(1.0)
    assert worse["probability"] == pytest.approx(0.0)
    assert better["low"] == pytest.approx(1.0) and worse["high"] == pytest.approx(0.0)


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
            assert shifted[column] == pytest.approx(base[column] + shift), (metric, column)


def test_iqm_is_the_mean_of_the_middle_half_and_intervals_contain_the_points() -> None:
    scores = np.arange(1.0, 9.0)[:, None]  # 8 runs, 1 task: the middle half is 3, 4, 5, 6
    frame = interval_estimates({"v": scores}, reps=REPS)
    assert _point(frame, "v", "iqm")["point"] == pytest.approx(4.5)
    assert _point(frame, "v", "mean")["point"] == pytest.approx(4.5)
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
    assert not np.allclose(first["low"], other_seed["low"])


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
    assert _point(aggregate, "clip", "iqm")["point"] == pytest.approx(0.0)
    assert _point(aggregate, "kl", "iqm")["point"] == pytest.approx(1.0)
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
    assert np.allclose(same["low"], same["iqm"]) and np.allclose(same["high"], same["iqm"])
    spread = frame[frame["variant"] == "w"]
    assert np.allclose(spread["iqm"], [11.0, 21.0, 51.0])  # 3 runs: nothing trimmed, the mean
    assert (spread["low"] < spread["iqm"]).all() and (spread["iqm"] < spread["high"]).all()
    assert (frame["runs"] == 3).all()


def test_reference_scores_normalise_random_to_zero_and_reference_to_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    references = load_reference_scores()
    assert {"CartPole-v1", "Acrobot-v1", "Pendulum-v1", "LunarLander-v3"} <= set(references)
    for env_id, ref in references.items():
        assert ref.ppo_reference_mean > ref.random_mean, env_id
        assert normalize(ref.random_mean, env_id, references) == pytest.approx(0.0)
        assert normalize(ref.ppo_reference_mean, env_id, references) == pytest.approx(1.0)
    with pytest.raises(KeyError, match="no reference score for env 'Nope-v0'"):
        normalize(1.0, "Nope-v0", references)
    own = tmp_path / "refs.csv"
    own.write_text("env_id,random_mean,ppo_reference_mean\nX-v0,-10,10\n")
    assert normalize(0.0, "X-v0", load_reference_scores(own)) == pytest.approx(0.5)
    bad = tmp_path / "bad.csv"
    bad.write_text("env_id,random_mean\nX-v0,1\n")
    with pytest.raises(ValueError, match="missing columns \\['ppo_reference_mean'\\]"):
        load_reference_scores(bad)
