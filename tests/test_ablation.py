"""The ablation tool: names of arms, the grid kept in an Optuna storage (each cell recorded once, resumable), the command."""

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
from study_helpers import worker_lock

from sb3_ppo_variants import VARIANTS, VariantPPO
from sb3_ppo_variants.hyperparams import make_model
from sb3_ppo_variants.studies import ablation, runner
from sb3_ppo_variants.studies.arms import factorial_names, filter_hyperparams, hyperparams_for, label_names, parse_variant
from sb3_ppo_variants.studies.cli.ablate import main
from sb3_ppo_variants.studies.liveness import WORKER_ATTR
from sb3_ppo_variants.studies.reference import load_reference_scores
from sb3_ppo_variants.studies.registry import algorithm_class
from sb3_ppo_variants.studies.runner import (
    Cell,
    CellResult,
    RunProtocol,
    train_batch,
)
from sb3_ppo_variants.studies.storage import StudyMismatchError, open_storage

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
    got = _learned_parameters(algorithm_class(cell.algorithm), {**cell.defaults, **TINY}, **cell.overrides)
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
    entry, where, algorithm = hyperparams_for(parse_variant("noclip+kl+ent_sched"), "E-v0", source, "f.yml")
    assert entry == {"gamma": 0.9, "kl_coef": 0.7, "kl_estimator": "exact"} and where == "f.yml [E-v0][noclip+kl+ent_sched]"
    assert algorithm == "variant_ppo"
    entry, _, _ = hyperparams_for(parse_variant("noclip+kl+ent_const"), "E-v0", source, "f.yml")
    assert entry["kl_coef"] == 0.3
    entry, _, _ = hyperparams_for(parse_variant("clip+kl"), "E-v0", source, "f.yml")
    assert entry == {"gamma": 0.9, "kl_coef": 0.2, "kl_estimator": "exact"}  # ClipKLPPO's beta under the default
    entry, where, algorithm = hyperparams_for(parse_variant("clip"), "Other-v0", source, "f.yml")
    assert entry == {} and "Other-v0 not in f.yml" in where and algorithm == "clip"


LABELS = {
    "CartPole-v1": {
        "default": {"n_envs": 2, "gamma": 0.9},
        "no_kl": {"variant": "clip"},
        "kl_loss": {"variant": "clip_kl", "kl_coef": 0.1},
    },
    "Acrobot-v1": {"default": {"n_envs": 1}, "no_kl": {"variant": "sb3_ppo", "n_epochs": 3}},
}


def test_labels_of_the_hyperparameters_file_are_arms_with_their_own_entry_and_algorithm() -> None:
    labels = label_names(LABELS)
    assert labels == {"no_kl", "kl_loss"}
    specs = [parse_variant(name, labels=labels) for name in ("no_kl", "kl_loss")]
    tasks = {
        (t.variant, t.env_id): t for t in ablation.plan_cells(specs[:1], ["CartPole-v1", "Acrobot-v1"], [0], LABELS, "f.yml")
    }
    assert (tasks["no_kl", "CartPole-v1"].algorithm, tasks["no_kl", "CartPole-v1"].hyperparams) == (
        "clip",
        {"n_envs": 2, "gamma": 0.9},
    )
    assert (tasks["no_kl", "Acrobot-v1"].algorithm, tasks["no_kl", "Acrobot-v1"].hyperparams) == (
        "sb3_ppo",
        {"n_envs": 1, "n_epochs": 3},
    )
    (kl_loss,) = ablation.plan_cells(specs[1:], ["CartPole-v1"], [0], LABELS, "f.yml")
    assert kl_loss.algorithm == "clip_kl" and kl_loss.hyperparams == {"n_envs": 2, "gamma": 0.9, "kl_coef": 0.1}
    assert kl_loss.hyperparams_source == "f.yml [CartPole-v1][kl_loss]"
    with pytest.raises(
        ValueError, match=r"--variants kl_loss: a label that the entry of Acrobot-v1 in f\.yml does not define"
    ):
        ablation.plan_cells(specs[1:], ["Acrobot-v1"], [0], LABELS, "f.yml")
    bad = {"CartPole-v1": {"default": {}, "odd": {"variant": "ppo2"}}}
    with pytest.raises(ValueError, match=r"--variants odd: its variant on CartPole-v1 must be one of .*got 'ppo2'"):
        ablation.plan_cells([parse_variant("odd", labels={"odd"})], ["CartPole-v1"], [0], bad, "f.yml")
    with pytest.raises(ValueError, match=r"or a label of the hyperparameters file \(\['kl_loss', 'no_kl'\]\)"):
        parse_variant("kl_los", labels=labels)


# ------------------------------------------------------------------------------------------------ the grid


def _fake_train(calls: list[str]) -> ablation.Train:
    def train(cells: Any, protocol: RunProtocol) -> list[CellResult]:
        results = []
        for cell in cells:
            calls.append(cell.key)
            score = float(cell.seed) + (10.0 if cell.algorithm == "kl" else 0.0)
            T = protocol.timesteps
            results.append(CellResult([0, T], [0, T], [0.0, score], [T], [score]))
        return results

    return train


def _study(tmp_path: Path, protocol: ablation.Protocol | None = None) -> optuna.Study:
    storage = open_storage(None, tmp_path)
    return ablation.open_ablation_study(storage, "ablation", protocol or ablation.Protocol(100, 50, 1))


def _tasks(variants: tuple[str, ...] = ("clip", "kl"), seeds: int = 2, gamma: float = 0.9) -> list[Cell]:
    source = {"CartPole-v1": {"gamma": gamma}}
    return ablation.plan_cells([parse_variant(v) for v in variants], ["CartPole-v1"], range(seeds), source, "test")


def _complete_per_cell(study: optuna.Study) -> Counter[str]:
    return Counter(key for t in study.get_trials(states=(TrialState.COMPLETE,)) for key in t.user_attrs["results"])


def _enqueue(study: optuna.Study, tasks: list[Cell]) -> None:
    study.enqueue_trial({}, user_attrs={"batch": [task.recipe() for task in tasks]})


def test_duplicated_and_overlapping_batches_still_record_every_cell_exactly_once(tmp_path: Path) -> None:
    study, tasks = _study(tmp_path), _tasks(seeds=3)
    for task in tasks:  # what two workers that enqueue at the same moment leave behind
        _enqueue(study, [task])
        _enqueue(study, [task])
    _enqueue(study, tasks[:4])  # and batches of other compositions
    _enqueue(study, tasks[2:])
    calls: list[str] = []
    assert ablation.run_ablation_worker(study, train=_fake_train(calls)) == len(tasks)
    assert sorted(calls) == sorted(task.key for task in tasks)
    assert _complete_per_cell(study) == Counter(task.key for task in tasks)
    skipped = [t for t in study.get_trials() if "duplicate_of" in t.user_attrs]
    assert len(skipped) == len(tasks) + 2 and all(t.state == TrialState.PRUNED for t in skipped)
    assert not study.get_trials(states=(TrialState.WAITING, TrialState.RUNNING))


def test_a_worker_skips_a_cell_that_a_lower_trial_holds(tmp_path: Path) -> None:
    study, tasks = _study(tmp_path), _tasks()
    _enqueue(study, tasks[:2])
    _enqueue(study, tasks[1:3])
    first = study.ask()  # worker A pops trial 0 and is running it
    assert first.number == 0 and first.user_attrs["batch"]
    calls: list[str] = []
    assert ablation.run_ablation_worker(study, train=_fake_train(calls)) == 1  # worker B: trial 1, only its free cell
    assert calls == [tasks[2].key]
    assert study.trials[1].user_attrs["claimed"] == [tasks[2].key]
    assert ablation.enqueue_missing(study, tasks[:3]) == []  # a live RUNNING cell is not enqueued again
    assert ablation.grid_status(study, [t.key for t in tasks]) == {
        tasks[0].key: "running",
        tasks[1].key: "running",
        tasks[2].key: "complete",
        tasks[3].key: "missing",
    }


def test_resume_runs_only_missing_failed_and_dead_cells(tmp_path: Path) -> None:
    study, tasks = _study(tmp_path), _tasks(seeds=3)
    assert len(ablation.enqueue_missing(study, tasks, members_per_process=1)) == 6
    assert ablation.enqueue_missing(study, tasks) == []  # all WAITING already
    calls: list[str] = []
    assert ablation.run_ablation_worker(study, train=_fake_train(calls), max_trials=2) == 2
    done = {key: t.number for t in study.get_trials(states=(TrialState.COMPLETE,)) for key in t.user_attrs["results"]}

    def broken(cells: Any, protocol: RunProtocol) -> list[CellResult]:
        raise RuntimeError("diverged")

    assert ablation.run_ablation_worker(study, train=broken, max_trials=1) == 0  # one cell fails with an error ...
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert failed.user_attrs["fail_reason"] == "RuntimeError: diverged"
    dead_lock, _ = worker_lock(tmp_path / "study.log", die=True)
    crashed = study.ask()  # ... and one worker is killed while running one
    crashed.set_user_attr("worker", {"lock": dead_lock, "trial": crashed.number})
    assert study.trials[crashed.number].state == TrialState.RUNNING

    calls.clear()
    again = ablation.enqueue_missing(study, tasks)  # the dead worker's trial is failed and retried, the failed cell queued
    assert study.trials[crashed.number].state == TrialState.FAIL
    assert [t.key for t in again] == [failed.user_attrs["batch"][0]["key"]]
    (retry,) = [t for t in study.get_trials() if t.system_attrs.get("failed_trial") == crashed.number]
    assert retry.state == TrialState.WAITING and retry.user_attrs["batch"] == crashed.user_attrs["batch"]
    ablation.run_ablation_worker(study, train=_fake_train(calls))
    assert sorted(calls) == sorted(set(t.key for t in tasks) - set(done))  # nothing complete ran again
    assert _complete_per_cell(study) == Counter(t.key for t in tasks)
    results = ablation.collect_results(study)
    trials = {f"{v}|{e}|{s}": n for v, e, s, n in results.runs[["variant", "env_id", "seed", "trial"]].itertuples(index=False)}
    assert all(trials[key] == number for key, number in done.items())
    assert len(results.runs) == 6 and results.failed == {} and results.duplicates == []


def test_other_protocol_or_hyperparameters_on_the_same_study_are_refused(tmp_path: Path) -> None:
    study = _study(tmp_path)
    ablation.enqueue_missing(study, _tasks())
    ablation.run_ablation_worker(study, train=_fake_train([]))
    with pytest.raises(StudyMismatchError, match="timesteps: stored 100, given 200"):
        _study(tmp_path, ablation.Protocol(200, 50, 1))
    with pytest.raises(StudyMismatchError, match="cell clip\\|CartPole-v1\\|0 was run with"):
        ablation.enqueue_missing(study, _tasks(gamma=0.5))
    assert len(ablation.enqueue_missing(study, _tasks(variants=("clip", "kl", "clip_kl")))) == 2  # a grid may grow
    # the same settings read from the same file under another path (hp.yml, ./hp.yml, another machine): the same cells
    same = [parse_variant(v) for v in ("clip", "kl")]
    relabelled = ablation.plan_cells(same, ["CartPole-v1"], range(2), {"CartPole-v1": {"gamma": 0.9}}, "./elsewhere/test")
    assert ablation.enqueue_missing(study, relabelled) == []


def test_batches_group_cells_of_one_env_and_shape_and_split_them_evenly() -> None:
    source = {"CartPole-v1": {"n_steps": 32}, "Acrobot-v1": {"n_steps": 64}}
    specs = [parse_variant(v) for v in ("clip", "kl", "clip_kl", "sb3_ppo")]
    tasks = ablation.plan_cells(specs, ["CartPole-v1", "Acrobot-v1"], range(5), source, "test")
    batches = ablation.make_batches(tasks, members_per_process=8)
    for batch in batches:
        assert len({t.env_id for t in batch}) == 1 and len(batch) <= 8
        assert len({t.algorithm == "sb3_ppo" for t in batch}) == 1, "a baseline is never in a batch of variants"
    # per env: 15 variant cells -> 2 batches (8 + 7), 5 baseline cells -> 1 batch
    assert sorted(len(b) for b in batches) == [5, 5, 7, 7, 8, 8]
    assert sorted(t.key for b in batches for t in b) == sorted(t.key for t in tasks)
    assert sorted(len(b) for b in ablation.make_batches(tasks[:4], 8, min_batches=2)) == [2, 2]
    with pytest.raises(ValueError, match="--members-per-process must be >= 1, got 0"):
        ablation.make_batches(tasks, 0)


PLAIN = [Cell("clip", "CartPole-v1", 0, TINY), Cell("clip_kl", "CartPole-v1", 1, TINY, {"kl_coef": 0.5})]
FACTORIAL_SWITCHES = parse_variant("noclip+kl+ent_sched").overrides


@pytest.mark.parametrize(
    ("cells", "why"),
    [
        (PLAIN, None),
        # factorial cells (VariantPPO with its switches) beside a named variant
        ([*PLAIN, Cell("variant_ppo", "CartPole-v1", 2, {**TINY, "kl_coef": 1.0}, FACTORIAL_SWITCHES)], None),
        ([*PLAIN, Cell("trpo", "CartPole-v1", 0, {k: v for k, v in TINY.items() if k != "n_epochs"})], "member 2: variant"),
        ([*PLAIN, Cell("clip", "CartPole-v1", 2, {**TINY, "n_steps": 64})], "n_steps must be equal"),
        ([*PLAIN, Cell("clip", "Acrobot-v1", 0, TINY)], "several environments"),
        ([Cell("clip", "CartPole-v1", 0, {**TINY, "policy_kwargs": "dict(optimizer_class=th.optim.SGD)"})], "Adam only"),
    ],
)
def test_the_population_decides_which_batches_it_trains_and_the_others_run_solo_with_its_reason(
    cells: list[Cell], why: str | None
) -> None:
    results = train_batch(cells, RunProtocol(32, (32,), n_eval_episodes=1))
    modes = {result.mode for result in results}
    assert len(modes) == 1 and all(result.curve_nominal == [32] and result.failure is None for result in results)
    if why is None:
        assert modes == {"population"}
    else:
        (mode,) = modes
        assert mode.startswith("solo: ") and why in mode


@pytest.mark.parametrize("companion", ["clip", "sb3_ppo"])  # a population; solo runs (a baseline is never a member)
def test_a_batch_trains_each_cell_as_it_would_train_alone(companion: str) -> None:
    protocol = RunProtocol(128, (0, 64, 128), n_eval_episodes=2)
    cells = [Cell(companion, "CartPole-v1", 0, TINY), Cell("clip_kl", "CartPole-v1", 1, TINY)]
    train_alone = train_batch if companion == "clip" else runner._train_solo  # alone in the same mode
    alone = train_alone([Cell("clip_kl", "CartPole-v1", 1, TINY)], protocol, None)
    together = train_batch(cells, protocol)
    assert together[1].mode.partition(":")[0] == ("population" if companion == "clip" else "solo")
    ignored = {"wall_time_s": 0, "mode": ""}
    assert together[1].as_attrs() | ignored == alone[0].as_attrs() | ignored
    assert together[1].curve_nominal == [0, 64, 128] and together[1].curve_timesteps == [0, 64, 128]
    assert together[1].episode_returns and together[0].curve_returns != together[1].curve_returns


def test_a_cell_whose_training_raises_fails_alone_with_its_reason_and_its_batch_completes(tmp_path: Path) -> None:
    study = _study(tmp_path, ablation.Protocol(64, 64, 1))
    good = ablation.plan_cells([parse_variant("clip")], ["CartPole-v1"], [0], {"CartPole-v1": TINY}, "test")
    bad = ablation.plan_cells(
        [parse_variant("clip")], ["CartPole-v1"], [1], {"CartPole-v1": {**TINY, "clip_range": -0.1}}, "t"
    )
    _enqueue(study, [*bad, *good])  # one batch: the population refuses it, its cells run solo, each failing alone
    assert ablation.run_ablation_worker(study) == 1
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE and list(trial.user_attrs["results"]) == [good[0].key]
    (reason,) = trial.user_attrs["failures"].values()
    assert list(trial.user_attrs["failures"]) == [bad[0].key] and "clip_range" in reason and "-0.1" in reason
    mode = trial.user_attrs["batch_mode"]
    assert mode["mode"] == "solo" and "member 0 (clip, seed 1): clip_range" in mode["why"]
    assert ablation.collect_results(study).failed == {bad[0].key: [reason]}
    assert ablation.grid_status(study, [bad[0].key, good[0].key]) == {bad[0].key: "failed", good[0].key: "complete"}


def test_a_failed_cell_is_enqueued_again_once(tmp_path: Path) -> None:
    study, tasks = _study(tmp_path), _tasks()

    def fails_kl_seed_0(cells: Any, protocol: RunProtocol) -> list[CellResult]:
        results = _fake_train([])(cells, protocol)
        for cell, result in zip(cells, results):
            if (cell.algorithm, cell.seed) == ("kl", 0):
                result.failure = "ValueError: diverged"
        return results

    assert len(ablation.enqueue_missing(study, tasks)) == 4
    ablation.run_ablation_worker(study, train=fails_kl_seed_0)
    assert [t.key for t in ablation.enqueue_missing(study, tasks)] == ["kl|CartPole-v1|0"]  # the retry
    ablation.run_ablation_worker(study, train=fails_kl_seed_0)
    assert ablation.enqueue_missing(study, tasks) == []  # failed twice: reported, not run again
    results = ablation.collect_results(study)
    assert results.failed == {"kl|CartPole-v1|0": ["ValueError: diverged"] * 2} and len(results.runs) == 3


@pytest.mark.parametrize("value", [0, -1])
@pytest.mark.parametrize("field", ["timesteps", "eval_freq", "n_eval_episodes"])
def test_protocol_refuses_non_positive_values(field: str, value: int) -> None:
    kwargs = {"timesteps": 10, "eval_freq": 5, "n_eval_episodes": 1, field: value}
    with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be an integer >= 1, got {value}"):
        ablation.Protocol(**kwargs)


def test_evaluation_points_start_at_zero_are_at_most_eval_freq_apart_and_end_at_the_budget() -> None:
    assert ablation.Protocol(1000, 300).run_protocol.eval_points == (0, 250, 500, 750, 1000)
    assert ablation.Protocol(1024, 512).run_protocol.eval_points == (0, 512, 1024)
    assert ablation.Protocol(1000, 1000).run_protocol.eval_points == (0, 1000)
    assert ablation.Protocol(1000, 5000).run_protocol.eval_points == (0, 1000)


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


def test_a_report_of_a_study_without_results_says_so(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    assert main([*GRID, "--out", str(out), "--report-only"]) == 1
    assert "4 of 4 runs are not complete" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "4 missing" in report and "No completed run." in report
    assert len(pd.read_csv(out / "runs.csv")) == 0


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


def _wait_for_complete(
    out: Path, n: int, process: subprocess.Popen[str], timeout: float = 240, then_marked_running: bool = False
) -> None:
    """Until ``n`` trials are complete (and, with ``then_marked_running``, a running trial has recorded its worker:
    a trial killed before that is judged only after ``liveness.UNMARKED_GRACE_SECONDS``)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "study.log").exists():
            try:
                trials = _load(out).get_trials()
            except KeyError:  # the journal exists, the study is not written to it yet
                trials = []
            complete = sum(t.state == TrialState.COMPLETE for t in trials)
            marked = any(
                t.state == TrialState.RUNNING and (t.user_attrs.get(WORKER_ATTR) or {}).get("trial") == t.number
                for t in trials
            )
            if complete >= n and (marked or not then_marked_running):
                return
        if process.poll() is not None:
            pytest.fail(f"the command ended early: {process.stdout.read() if process.stdout else ''}")
        # Poll often: the caller kills the command while its next batch runs, and a batch of the tiny grid takes
        # ~0.28 s on quiet cores (15:28 UTC 2026-12-02); at 0.3 s between looks the kill once came after both batches
        # had completed. Loading the journal takes under 1 ms.
        time.sleep(0.01)
    pytest.fail("timed out waiting for a run to complete")


@pytest.mark.slow
def test_tiny_grid_writes_everything_and_resumes_only_missing_runs_after_a_kill(tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    # three batches of two cells, killed once the first has completed and a later one is running (each takes ~0.3 s
    # on quiet cores): the kill lands while the second or the third batch runs
    grid = [*GRID, "--seeds", "3", "--members-per-process", "2", "--out", str(out)]
    process = _cli(grid)
    _wait_for_complete(out, 1, process, then_marked_running=True)
    process.send_signal(signal.SIGKILL)  # interrupted hard: no chance to clean up
    process.wait()
    before = {
        key: (t.number, t.datetime_complete)
        for t in _load(out).get_trials(states=(TrialState.COMPLETE,))
        for key in t.user_attrs["results"]
    }
    assert len(before) in (2, 4)

    assert main(grid) == 0
    printed = capsys.readouterr().out
    assert f"{6 - len(before)} to run" in printed and f"report: {out / 'report.md'}" in printed
    study = _load(out)
    cells = {f"{v}|CartPole-v1|{s}": 1 for v in ("clip", "clip_kl") for s in (0, 1, 2)}
    assert _complete_per_cell(study) == Counter(cells)
    after = {
        key: (t.number, t.datetime_complete)
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        for key in t.user_attrs["results"]
    }
    assert all(after[key] == value for key, value in before.items())  # completed runs were not redone
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))

    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 6 and set(runs["variant"]) == {"clip", "clip_kl"} and runs["timesteps"].ge(1024).all()
    curves = pd.read_csv(out / "curves.csv")
    assert curves.groupby(["variant", "seed"])["nominal"].apply(list).map(lambda x: x == [0, 512, 1024]).all()
    final = curves[curves["nominal"] == 1024].set_index(["variant", "seed"])["eval_return"]
    # the final score is the last curve point, both rounded to 4 decimals in the storage
    assert np.array_equal(runs.set_index(["variant", "seed"])["final_score"].sort_index(), final.sort_index())
    episodes = pd.read_csv(out / "episodes.csv")
    assert len(episodes) > 0 and episodes["episode_return"].between(1, 500).all()
    report = (out / "report.md").read_text()
    for figure in ("curves_CartPole-v1.png", "intervals_aggregate.png", "intervals_CartPole-v1.png", "improvement.png"):
        assert (out / "plots" / figure).stat().st_size > 5000
        assert f"(plots/{figure})" in report
    assert "P(clip_kl > clip)" in report and "Seeds: [0, 1, 2]" in report and "1024 timesteps per run" in report
    assert "stable-baselines3 2.9" in report or "stable-baselines3" in report
    assert "- Batches: 3 batch(es), 6 cells: population" in report
    assert pd.read_csv(out / "batches.csv")["cells"].tolist() == [2, 2, 2]
    statistics = pd.read_csv(out / "statistics.csv")
    assert set(statistics["env_id"]) == {"CartPole-v1", "aggregate"} and len(statistics) == 2 * 2 * 3


@pytest.mark.slow
def test_an_arm_that_diverges_fails_alone_and_the_report_counts_it(tmp_path: Path, capsys: Any) -> None:
    hyperparams = tmp_path / "hp.yml"
    entry = "{n_envs: 1, n_steps: 32, batch_size: 32, n_epochs: 2, policy_kwargs: 'dict(net_arch=[16])'}"
    hyperparams.write_text(
        f"CartPole-v1:\n  default: {entry}\n  steady: {{variant: clip}}\n  boom: {{variant: clip, learning_rate: 1.0e+20}}\n"
    )
    argv = ["--envs", "CartPole-v1", "--variants", "steady", "boom", "--seeds", "2", "--timesteps", "256"]
    argv += ["--eval-freq", "128", "--n-eval-episodes", "2", "--bootstrap-reps", "100", "--hyperparams", str(hyperparams)]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "retrying 2 failed run(s) once" in captured.out + captured.err
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert sorted(runs["variant"]) == ["steady", "steady"]  # boom's failures removed none of steady's seeds
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**boom: 2 of 2 runs failed** (2 after 2 attempt(s))" in report
    assert "Failed runs are left out of the statistics" in report
    assert main([*argv, "--out", str(tmp_path / "out"), "--report-only", "--failed-as-random"]) == 1
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index(["variant", "seed"])
    random_policy = load_reference_scores()["CartPole-v1"].random_mean
    assert runs.loc[("boom", 0), "final_score"] == random_policy and isinstance(runs.loc[("boom", 0), "failed"], str)
    assert "scored as the random policy" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_two_local_workers_run_every_cell_exactly_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main([*GRID, "--workers", "2", "--out", str(out)]) == 0
    study = _load(out)
    assert _complete_per_cell(study) == Counter({f"{v}|CartPole-v1|{s}": 1 for v in ("clip", "clip_kl") for s in (0, 1)})
    workers = {t.user_attrs["worker"]["pid"] for t in study.get_trials(states=(TrialState.COMPLETE,))}
    assert len(workers) == 2 and os.getpid() not in workers  # run by both spawned workers, not by the command itself


@pytest.mark.slow
@pytest.mark.postgres
def test_two_commands_on_one_postgresql_study_run_every_cell_exactly_once(tmp_path: Path, postgres_url: str) -> None:
    # Two machines started together: both create the tables and the study, both enqueue the grid, both claim.
    grid = [*GRID, "--members-per-process", "1", "--storage", postgres_url]  # four batches: both machines claim cells
    processes = [_cli([*grid, "--out", str(tmp_path / f"m{i}")]) for i in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="ablation", storage=postgres_url)
    assert _complete_per_cell(study) == Counter({f"{v}|CartPole-v1|{s}": 1 for v in ("clip", "clip_kl") for s in (0, 1)})
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    for i in range(2):  # the first to finish may have reported while the other still ran its last cell
        assert len(pd.read_csv(tmp_path / f"m{i}" / "runs.csv")) <= 4
    assert main([*GRID, "--storage", postgres_url, "--out", str(tmp_path / "report"), "--report-only"]) == 0
    assert len(pd.read_csv(tmp_path / "report" / "runs.csv")) == 4


STARTER = """
import importlib.util, os, sys, time
from pathlib import Path
# storage.py and liveness.py alone (optuna, no torch): three interpreters importing torch on two busy cores would not
# start together
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
load("sb3_ppo_variants.studies.liveness", sys.argv[3].replace("storage.py", "liveness.py"))
storage = load("storage", sys.argv[3])
ready = Path(sys.argv[2])
(ready / str(os.getpid())).touch()
deadline = time.time() + 120
while len(list(ready.iterdir())) < 3 and time.time() < deadline:  # all three start at the same moment, imports done
    time.sleep(0.01)
study = storage.open_study(storage.open_storage(sys.argv[1]), "ablation", {"timesteps": 1024, "eval_freq": 512})
print(study.user_attrs["protocol"]["timesteps"])
"""


@pytest.mark.postgres
def test_three_workers_starting_at_once_on_an_empty_postgresql_database_all_open_the_study(
    tmp_path: Path, postgres_url: str
) -> None:
    # The race while creating Optuna's tables (UniqueViolation on CREATE TYPE) is absorbed by open_storage.
    command = [sys.executable, "-c", STARTER, postgres_url, str(tmp_path), str(ROOT / "sb3_ppo_variants/studies/storage.py")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=180) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["1024"] * 3
    assert len(optuna.get_all_study_summaries(postgres_url)) == 1
