"""Smoke tests of the benchmark scripts' --quick modes: their output has a row per algorithm and setting."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True, timeout=900, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_throughput_quick_reports_a_ratio_per_variant_and_setting() -> None:
    settings = ["CartPole-v1/sb3-defaults", "Pendulum-v1/rl-zoo3"]
    out = _run("throughput.py", "--quick", "--timesteps", "1024", "--settings", *settings)
    for setting in settings:
        for algorithm in ("sb3_ppo", "clip", "kl", "adaptive_kl", "clip_kl"):
            row = re.search(rf"^\| {re.escape(setting)} \| {algorithm} \| (\d+) \| ([\d.]+) \[([\d.]+), ([\d.]+)\]", out, re.M)
            assert row, f"no row for {setting} / {algorithm} in:\n{out}"
            steps, median, low, high = int(row[1]), *map(float, row.groups()[1:])
            assert steps > 0 and 0 < low <= median <= high
            if algorithm == "sb3_ppo":
                assert median == 1.0


@pytest.mark.slow
def test_learning_quick_reports_every_algorithm_against_the_reference(tmp_path: Path) -> None:
    out = _run("learning.py", "--quick", "--out", str(tmp_path))
    for algorithm in ("sb3_ppo", "clip"):
        row = re.search(
            rf"^\| CartPole-v1 \| 2,048 \(100,000\) \| {algorithm} \| 1 \| ([\d.]+) \+- [\d.]+ \| 500\.0 \+- 0\.0 \|",
            out,
            re.M,
        )
        assert row, out
        assert 0 < float(row[1]) <= 500
    assert (tmp_path / "CartPole-v1" / "report.md").is_file()


@pytest.mark.slow
def test_population_quick_reports_a_paired_ratio_per_population_size() -> None:
    out = _run("population.py", "--quick", "--settings", "CartPole-v1/rl-zoo3")
    for size in (1, 2):
        row = re.search(
            rf"^\| CartPole-v1/rl-zoo3 \| {size} \| (\d+) \| (\d+) \| ([\d.]+) \[([\d.]+), ([\d.]+)\] \|", out, re.M
        )
        assert row, f"no row for K={size} in:\n{out}"
        population, sb3, median, low, high = int(row[1]), int(row[2]), *map(float, row.groups()[2:])
        assert population > 0 and sb3 > 0 and 0 < low <= median <= high
        assert median == pytest.approx(population / sb3, rel=0.01)  # one round: the ratio of the two rates


@pytest.mark.slow
def test_population_learning_quick_reports_the_probability_of_improvement() -> None:
    out = _run("population_learning.py", "--quick")
    row = re.search(r"^\| CartPole-v1 \| rl-zoo3 \| 2,048 \| 2 \| ([\d.]+) \+- [\d.]+ \| ([\d.]+) \+- [\d.]+ \| "
                    r"([\d.]+) \[([\d.]+), ([\d.]+)\] \|", out, re.M)  # fmt: skip
    assert row, out
    population, solo, probability, low, high = map(float, row.groups())
    assert 0 < population <= 500 and 0 < solo <= 500
    assert 0 <= low <= probability <= high <= 1
