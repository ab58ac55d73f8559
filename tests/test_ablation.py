"""The ablation tool: names of variants, the grid kept in an Optuna storage (exactly once, resumable), the command."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch as th
from helpers import PLAIN_VARIANTS
from optuna.trial import TrialState
from sb3_contrib import TRPO
from stable_baselines3 import PPO

from sb3_ppo_variants import VARIANTS, VariantPPO
from sb3_ppo_variants.experiments import ablation
from sb3_ppo_variants.experiments.ablate_cli import main
from sb3_ppo_variants.experiments.factorial import factorial_names, filter_hyperparams, parse_variant
from sb3_ppo_variants.experiments.storage import open_storage
from sb3_ppo_variants.hyperparams import make_model

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_envs": 1, "n_steps": 32, "batch_size": 32, "n_epochs": 2, "policy_kwargs": "dict(net_arch=[16])"}
#: A real grid small enough for tests: 2 variants x 1 env x 2 seeds, 1024 steps each (rl-zoo3's CartPole entry).
GRID = ["--envs", "CartPole-v1", "--variants", "clip", "clip_kl", "--seeds", "2", "--timesteps", "1024", "--eval-freq", "512"]
GRID += ["--n-eval-episodes", "2", "--bootstrap-reps", "200"]


# ------------------------------------------------------------------------------------------------ names


def test_factorial_grid_has_every_combination_once() -> None:
    names = factorial_names()
    assert len(names) == len(set(names)) == 12
    cells = {tuple(parse_variant(name).components.values()) for name in names}
    assert len(cells) == 12
    surrogates, penalties, entropies = (set(values) for values in zip(*cells))
    assert surrogates == {"clipped", "unclipped"}
    assert penalties == {"none", "fixed", "adaptive"}
    assert entropies == {"constant 0.01", "lin_0.01"}
    assert len(factorial_names(entropy=False)) == 6


def test_entropy_component_sets_ent_coef() -> None:
    assert parse_variant("clip+ent_const").overrides["ent_coef"] == 0.01
    assert parse_variant("clip+ent_sched").overrides["ent_coef"] == "lin_0.01"
    assert parse_variant("clip+ent_sched", ent_schedule="exp_0.01_0.0001").overrides["ent_coef"] == "exp_0.01_0.0001"
    assert "ent_coef" not in parse_variant("clip+kl").overrides  # no token: the hyperparameters decide


@pytest.mark.parametrize("name", ["clip+clip", "bogus", "noclip+ent_sched+kl", "clip_kl+kl", "", "trpo+ent_sched"])
def test_unknown_names_are_refused_with_the_grammar(name: str) -> None:
    with pytest.raises(ValueError, match=r"--variants: .*allowed: a named variant"):
        parse_variant(name)


def test_bad_entropy_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="--ent-schedule"):
        parse_variant("clip+ent_sched", ent_schedule="lin")


def _learned_parameters(algorithm: Any, hyperparams: dict[str, Any], **overrides: Any) -> list[th.Tensor]:
    model = make_model(algorithm, "CartPole-v1", hyperparams, seed=3, **overrides)
    model.learn(64)
    return [p.detach().clone() for p in model.policy.parameters()]


EQUIVALENT_CELLS = {"clip": "clip", "kl": "noclip+kl", "adaptive_kl": "noclip+adaptive_kl", "clip_kl": "clip+kl"}


@pytest.mark.parametrize("variant", PLAIN_VARIANTS)
def test_named_variant_and_its_factorial_cell_are_the_same_training(variant: str) -> None:
    cell = parse_variant(EQUIVALENT_CELLS[variant])
    named = parse_variant(variant)
    assert named.components == cell.components
    expected = _learned_parameters(VARIANTS[variant], TINY)
    got = _learned_parameters(cell.algorithm_class(), {**cell.defaults, **TINY}, **cell.overrides)
    assert all(th.equal(a, b) for a, b in zip(expected, got))


def test_baselines_drop_the_arguments_they_do_not_take() -> None:
    entry = {"n_envs": 8, "policy": "MlpPolicy", "n_epochs": 20, "clip_range": "lin_0.2", "kl_coef": 0.5, "gamma": 0.98}
    kept, dropped = filter_hyperparams(TRPO, entry)
    assert dropped == ["clip_range", "kl_coef", "n_epochs"]
    assert kept == {"n_envs": 8, "policy": "MlpPolicy", "gamma": 0.98}
    kept, dropped = filter_hyperparams(PPO, entry)
    assert dropped == ["kl_coef"]
    assert filter_hyperparams(VariantPPO, entry) == (entry, [])


def test_hyperparams_for_prefers_the_cell_then_its_named_variant_then_default() -> None:
    source = {"E-v0": {"default": {"gamma": 0.9}, "kl": {"kl_coef": 0.3}, "noclip+kl+ent_sched": {"kl_coef": 0.7}}}
    entry, where = ablation.hyperparams_for(parse_variant("noclip+kl+ent_sched"), "E-v0", source, "f.yml")
    assert entry == {"gamma": 0.9, "kl_coef": 0.7, "kl_estimator": "exact"} and where == "f.yml [E-v0][noclip+kl+ent_sched]"
    entry, _ = ablation.hyperparams_for(parse_variant("noclip+kl+ent_const"), "E-v0", source, "f.yml")
    assert entry["kl_coef"] == 0.3
    entry, _ = ablation.hyperparams_for(parse_variant("clip+kl"), "E-v0", source, "f.yml")
    assert entry == {"gamma": 0.9, "kl_coef": 0.2, "kl_estimator": "exact"}  # ClipKLPPO's beta under the default
    entry, where = ablation.hyperparams_for(parse_variant("clip"), "Other-v0", source, "f.yml")
    assert entry == {} and "Other-v0 not in f.yml" in where


# ------------------------------------------------------------------------------------------------ the grid


def _fake_runner(calls: list[str]) -> ablation.Runner:
    def runner(recipe: dict[str, Any], protocol: ablation.Protocol) -> dict[str, Any]:
        calls.append(recipe["key"])
        score = float(recipe["seed"]) + (10.0 if recipe["variant"] == "kl" else 0.0)
        return {
            "curve_nominal": [0, protocol.timesteps],
            "curve_timesteps": [0, protocol.timesteps],
            "curve_returns": [0.0, score],
            "episode_timesteps": [protocol.timesteps],
            "episode_returns": [score],
            "final_score": score,
            "wall_time_s": 0.0,
        }

    return runner


def _study(tmp_path: Path, protocol: ablation.Protocol | None = None) -> optuna.Study:
    storage = open_storage(None, tmp_path)
    return ablation.open_study(storage, "ablation", protocol or ablation.Protocol(100, 50, 1))


def _tasks(variants: tuple[str, ...] = ("clip", "kl"), seeds: int = 2, gamma: float = 0.9) -> list[ablation.CellTask]:
    source = {"CartPole-v1": {"gamma": gamma}}
    return ablation.plan_cells([parse_variant(v) for v in variants], ["CartPole-v1"], range(seeds), source, "test")


def _complete_per_cell(study: optuna.Study) -> Counter[str]:
    return Counter(t.user_attrs["cell"]["key"] for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_duplicated_enqueues_still_run_every_cell_exactly_once(tmp_path: Path) -> None:
    study, tasks = _study(tmp_path), _tasks()
    for task in tasks:  # what two workers that enqueue at the same moment leave behind
        study.enqueue_trial({}, user_attrs={"cell": task.recipe()})
        study.enqueue_trial({}, user_attrs={"cell": task.recipe()})
    calls: list[str] = []
    assert ablation.run_worker(study, runner=_fake_runner(calls)) == len(tasks)
    assert sorted(calls) == sorted(task.key for task in tasks)
    assert _complete_per_cell(study) == Counter(task.key for task in tasks)
    duplicates = [t for t in study.get_trials() if "duplicate_of" in t.user_attrs]
    assert len(duplicates) == len(tasks) and all(t.state == TrialState.FAIL for t in duplicates)


def test_a_worker_yields_a_cell_that_a_lower_trial_holds(tmp_path: Path) -> None:
    study, task = _study(tmp_path), _tasks()[0]
    study.enqueue_trial({}, user_attrs={"cell": task.recipe()})
    study.enqueue_trial({}, user_attrs={"cell": task.recipe()})
    first = ablation.claim_next(study)  # worker A pops trial 0 and is running it
    assert first is not None and first.number == 0
    assert ablation.claim_next(study) is None  # worker B pops trial 1, sees trial 0 RUNNING, fails its own
    assert study.trials[1].state == TrialState.FAIL and study.trials[1].user_attrs["duplicate_of"] == 0
    assert ablation.enqueue_missing(study, [task]) == []  # a live RUNNING cell is not enqueued again


def test_resume_runs_only_missing_failed_and_dead_cells(tmp_path: Path) -> None:
    study, tasks = _study(tmp_path), _tasks(seeds=3)
    assert len(ablation.enqueue_missing(study, tasks)) == 6
    assert ablation.enqueue_missing(study, tasks) == []  # all WAITING already
    calls: list[str] = []
    assert ablation.run_worker(study, runner=_fake_runner(calls), max_runs=2) == 2
    done = {t.user_attrs["cell"]["key"]: t.number for t in study.get_trials(states=(TrialState.COMPLETE,))}

    def broken(recipe: dict[str, Any], protocol: ablation.Protocol) -> dict[str, Any]:
        raise RuntimeError("diverged")

    assert ablation.run_worker(study, runner=broken, max_runs=1) == 0  # one cell fails with an error ...
    failed = [t for t in study.get_trials(states=(TrialState.FAIL,))]
    assert len(failed) == 1 and "RuntimeError: diverged" in failed[0].user_attrs["error"]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    crashed = ablation.claim_next(study)  # ... and one worker is killed while running one
    assert crashed is not None
    owner = {**crashed.user_attrs["owner"], "pid": int(dead.stdout)}
    crashed.set_user_attr("owner", owner)
    assert study.trials[crashed.number].state == TrialState.RUNNING

    calls.clear()
    again = ablation.enqueue_missing(study, tasks)  # the dead worker's trial is failed, both cells come back
    assert study.trials[crashed.number].state == TrialState.FAIL
    assert {t.key for t in again} == {failed[0].user_attrs["cell"]["key"], crashed.user_attrs["cell"]["key"]}
    ablation.run_worker(study, runner=_fake_runner(calls))
    assert sorted(calls) == sorted(set(t.key for t in tasks) - set(done))  # nothing complete ran again
    assert _complete_per_cell(study) == Counter(t.key for t in tasks)
    results = ablation.collect_results(study)
    trials = {
        ablation.cell_key(v, e, s): n
        for v, e, s, n in results.runs[["variant", "env_id", "seed", "trial"]].itertuples(index=False)
    }
    assert all(trials[key] == number for key, number in done.items())
    assert len(results.runs) == 6 and results.failed == {} and results.duplicates == []


def test_other_protocol_or_hyperparameters_on_the_same_study_are_refused(tmp_path: Path) -> None:
    study = _study(tmp_path)
    ablation.enqueue_missing(study, _tasks())
    ablation.run_worker(study, runner=_fake_runner([]))
    with pytest.raises(ablation.ProtocolMismatchError, match="timesteps 100 -> 200"):
        _study(tmp_path, ablation.Protocol(200, 50, 1))
    with pytest.raises(ablation.ProtocolMismatchError, match="cell clip\\|CartPole-v1\\|0 was run with"):
        ablation.enqueue_missing(study, _tasks(gamma=0.5))
    assert len(ablation.enqueue_missing(study, _tasks(variants=("clip", "kl", "clip_kl")))) == 2  # a grid may grow


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("field", ["timesteps", "eval_freq", "n_eval_episodes"])
def test_protocol_refuses_non_positive_values(field: str, value: int) -> None:
    kwargs = {"timesteps": 10, "eval_freq": 5, "n_eval_episodes": 1, field: value}
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be an integer >= 1, got {value}"):
        ablation.Protocol(**kwargs)


def test_eval_schedule_ends_at_the_budget() -> None:
    assert ablation.eval_schedule(ablation.Protocol(1000, 300)) == [300, 600, 900, 1000]
    assert ablation.eval_schedule(ablation.Protocol(1000, 1000)) == [1000]
    assert ablation.eval_schedule(ablation.Protocol(1000, 5000)) == [1000]


# ------------------------------------------------------------------------------------------------ the command


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--envs": ["NoSuchEnv-v9"]}, "--envs: 'NoSuchEnv-v9' is not a registered gymnasium environment"),
        ({"--variants": ["clip", "ppo2"]}, "--variants: unknown name 'ppo2'"),
        ({"--seeds": ["0"]}, "--seeds must be >= 1, got 0"),
        ({"--timesteps": ["0"]}, "--timesteps must be >= 1, got 0"),
        ({"--eval-freq": ["-5"]}, "--eval-freq must be >= 1, got -5"),
        ({"--workers": ["0"]}, "--workers must be >= 1, got 0"),
        ({"--baseline": ["trpo"]}, "--baseline must be one of --variants"),
        ({"--storage": ["postgresql://postgres@127.0.0.1:9/none"]}, "--storage .* does not connect"),
        ({"--storage": ["study.txt"]}, "--storage 'study.txt': a file storage must end in .log"),
        ({"--hyperparams": ["{missing}"]}, "--hyperparams .* cannot be read"),
    ],
)
def test_bad_input_fails_before_any_run(tmp_path: Path, capsys: Any, change: dict[str, list[str]], message: str) -> None:
    argv = [*GRID, "--out", str(tmp_path / "out")]
    for flag, values in change.items():
        values = [v.format(missing=tmp_path / "missing.yml") for v in values]
        if flag in argv:
            index = argv.index(flag)
            end = index + 1
            while end < len(argv) and not argv[end].startswith("--"):
                end += 1
            argv[index + 1 : end] = values
        else:
            argv += [flag, *values]
    assert main(argv) == 2
    assert re.search(message, capsys.readouterr().err)
    assert (
        not (tmp_path / "out" / "study.log").exists()
        or not optuna.load_study(study_name="ablation", storage=open_storage(None, tmp_path / "out")).trials
    )


def test_unwritable_out_fails_before_any_run(tmp_path: Path, capsys: Any) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([*GRID, "--out", str(blocker / "out")]) == 2
    assert f"--out '{blocker / 'out'}' is not a writable directory" in capsys.readouterr().err


def test_hyperparams_without_the_env_fail_before_any_run(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "hp.yml"
    path.write_text("Acrobot-v1: {n_envs: 2}\n")
    assert main([*GRID, "--hyperparams", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "has no entry for ['CartPole-v1']" in capsys.readouterr().err


def test_hyperparams_that_do_not_build_fail_before_any_run(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "hp.yml"
    path.write_text("CartPole-v1: {n_envs: 1, n_stepz: 32}\n")
    assert main([*GRID, "--hyperparams", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "--variants clip on CartPole-v1" in err and "n_stepz" in err
    assert not (tmp_path / "out" / "study.log").exists()


def _load(out: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="ablation", storage=open_storage(storage, out))


def _cli(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tuning" / "ablate.py"), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _wait_for_complete(out: Path, n: int, process: subprocess.Popen[str], timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "study.log").exists():
            if len(_load(out).get_trials(states=(TrialState.COMPLETE,))) >= n:
                return
        if process.poll() is not None:
            pytest.fail(f"the command ended early: {process.stdout.read() if process.stdout else ''}")
        time.sleep(0.3)
    pytest.fail("timed out waiting for a run to complete")


@pytest.mark.slow
def test_tiny_grid_writes_everything_and_resumes_only_missing_runs_after_a_kill(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    process = _cli([*GRID, "--out", str(out)])
    _wait_for_complete(out, 1, process)
    process.send_signal(signal.SIGKILL)  # interrupted hard: no chance to clean up
    process.wait()
    before = {
        t.user_attrs["cell"]["key"]: (t.number, t.datetime_complete)
        for t in _load(out).get_trials(states=(TrialState.COMPLETE,))
    }
    assert 1 <= len(before) < 4

    assert main([*GRID, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{4 - len(before)} to run" in printed and f"report: {out / 'report.md'}" in printed
    study = _load(out)
    assert _complete_per_cell(study) == Counter({f"{v}|CartPole-v1|{s}": 1 for v in ("clip", "clip_kl") for s in (0, 1)})
    after = {
        t.user_attrs["cell"]["key"]: (t.number, t.datetime_complete) for t in study.get_trials(states=(TrialState.COMPLETE,))
    }
    assert all(after[key] == value for key, value in before.items())  # completed runs were not redone
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["variant"]) == {"clip", "clip_kl"} and runs["timesteps"].ge(1024).all()
    curves = pd.read_csv(out / "curves.csv")
    assert curves.groupby(["variant", "seed"])["nominal"].apply(list).map(lambda x: x == [0, 512, 1024]).all()
    final = curves[curves["nominal"] == 1024].set_index(["variant", "seed"])["eval_return"]
    assert np.allclose(runs.set_index(["variant", "seed"])["final_score"].sort_index(), final.sort_index())
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) > 0 and episodes["episode_return"].between(1, 500).all()
    report = (out / "report.md").read_text()
    for figure in ("curves_CartPole-v1.png", "intervals_aggregate.png", "intervals_CartPole-v1.png", "improvement.png"):
        assert (out / "plots" / figure).stat().st_size > 5000
        assert f"(plots/{figure})" in report
    assert "P(clip_kl > clip)" in report and "Seeds: [0, 1]" in report and "1024 timesteps per run" in report
    assert "stable-baselines3 2.9" in report or "stable-baselines3" in report
    statistics = pd.read_csv(out / "statistics.csv")
    assert set(statistics["env_id"]) == {"CartPole-v1", "aggregate"} and len(statistics) == 2 * 2 * 3


@pytest.mark.slow
def test_two_local_workers_run_every_cell_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*GRID, "--workers", "2", "--out", str(out)]) == 0
    study = _load(out)
    assert _complete_per_cell(study) == Counter({f"{v}|CartPole-v1|{s}": 1 for v in ("clip", "clip_kl") for s in (0, 1)})
    owners = {t.user_attrs["owner"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert os.getpid() not in owners  # run by the spawned workers, not by the command itself


@pytest.mark.slow
@pytest.mark.postgres
def test_two_commands_on_one_postgresql_study_run_every_cell_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    # Two machines started together: both create the tables and the study, both enqueue the grid, both claim.
    processes = [_cli([*GRID, "--storage", postgres_url, "--out", str(tmp_path / f"m{i}")]) for i in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="ablation", storage=postgres_url)
    assert _complete_per_cell(study) == Counter({f"{v}|CartPole-v1|{s}": 1 for v in ("clip", "clip_kl") for s in (0, 1)})
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for i in range(2):  # the first to finish may have reported while the other still ran its last cell
        assert 1 <= len(pd.read_csv(tmp_path / f"m{i}" / "runs.csv")) <= 4
    assert main([*GRID, "--storage", postgres_url, "--out", str(tmp_path / "report"), "--report-only"]) == 0
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 4
