"""The Optuna tuning tool: search spaces, the objective, the study's bookkeeping, the command line.

Learning runs are tiny (CartPole-v1, a few thousand steps, one torch thread); the ones that start
subprocesses or train several trials are marked ``slow`` and run in CI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from helpers import PLAIN_VARIANTS
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from study_helpers import worker_lock

from sb3_ppo_variants.hyperparams import load_hyperparams, make_model
from sb3_ppo_variants.population import Population
from sb3_ppo_variants.schedules import as_schedule
from sb3_ppo_variants.studies import runner, tuning
from sb3_ppo_variants.studies.cli.tune import main
from sb3_ppo_variants.studies.liveness import recover_stale_trials
from sb3_ppo_variants.studies.runner import Objective, n_counted, run_worker
from sb3_ppo_variants.studies.search_spaces import (
    ENT_SCHEDULES,
    EXPONENTIAL_END_RATIO,
    SEARCH_SPACES,
    check_combination,
    entropy_coefficient,
    params_to_kwargs,
    suggest_params,
)
from sb3_ppo_variants.studies.storage import StudyMismatchError, open_storage
from sb3_ppo_variants.studies.tuning import TuningSettings, fail_reasons, open_tuning_study, tuning_objective

REPO = Path(__file__).resolve().parents[1]
TUNE = str(REPO / "tuning" / "tune.py")
ENV = "CartPole-v1"

#: What each variant tunes (Optuna parameter names), and the constructor attribute each lands in.
EXPECTED_PARAMS = {
    "clip": {"clip_range", "ent_coef", "ent_schedule"},
    "kl": {"kl_coef", "ent_coef", "ent_schedule"},
    "adaptive_kl": {"kl_target", "kl_coef", "ent_coef", "ent_schedule"},
    "clip_kl": {"clip_range", "kl_coef", "ent_coef", "ent_schedule"},
}
#: rl-zoo3's PPO sampler's parameter names (rl_zoo3 2.9.2 sample_ppo_params, less its ent_coef and clip_range).
RL_ZOO3_PARAMS = {
    "batch_size_pow", "n_steps_pow", "one_minus_gamma", "one_minus_gae_lambda", "learning_rate", "n_epochs",
    "max_grad_norm", "net_arch", "activation_fn",
}  # fmt: skip


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Two busy cores: several torch threads per process make PPO ~10x slower here."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _sampled(variant: str, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return suggest_params(study.ask(), variant, **kwargs)


# --- search spaces ---------------------------------------------------------------------------------


def test_every_variant_has_one_search_space():
    assert set(SEARCH_SPACES) == set(PLAIN_VARIANTS) == set(EXPECTED_PARAMS)


@pytest.mark.parametrize("variant", sorted(PLAIN_VARIANTS))
def test_sampled_params_build_the_variant_with_those_values(variant):
    for seed in range(3):
        params = _sampled(variant, seed)
        assert set(params) == EXPECTED_PARAMS[variant]
        kwargs = params_to_kwargs(params)
        model = make_model(variant, ENV, {"n_steps": 64, "batch_size": 32}, seed=0, **kwargs)
        try:
            if "clip_range" in params:
                assert model.clip_range(1.0) == params["clip_range"]
            if "kl_target" in params:
                assert model.kl_target == params["kl_target"]
            if "kl_coef" in params:
                assert model.kl_controller.value == params["kl_coef"]
            assert as_schedule(model.ent_coef)(1.0) == params["ent_coef"]
        finally:
            model.get_env().close()


def test_beta_kl_target_and_ent_coef_are_sampled_on_a_log_scale():
    study = optuna.create_study()
    for variant in PLAIN_VARIANTS:
        suggest_params(study.ask(), variant)
    distributions = {name: d for trial in study.trials for name, d in trial.distributions.items()}
    assert {name for name, d in distributions.items() if getattr(d, "log", False)} == {"kl_coef", "kl_target", "ent_coef"}


@pytest.mark.parametrize("shape", ENT_SCHEDULES)
def test_entropy_schedule_shape_starts_at_ent_coef_and_ends_as_documented(shape):
    start = 0.02
    schedule = as_schedule(entropy_coefficient(start, shape))
    end = {"constant": start, "linear": 0.0, "cosine": 0.0, "exponential": start / EXPONENTIAL_END_RATIO}[shape]
    # the schedules' float64 formulas against hand values: cos(pi / 2) is 6.1e-17, not 0, and start * 100**-0.5 is
    # start / 10 up to rounding (~1e-16 relative)
    assert schedule(1.0) == pytest.approx(start)
    assert schedule(0.0) == pytest.approx(end)
    middle = {"constant": start, "linear": start / 2, "cosine": start / 2, "exponential": start / 10}[shape]
    assert schedule(0.5) == pytest.approx(middle)


def test_unknown_shape_and_variant_are_refused():
    with pytest.raises(ValueError, match="ent_schedule must be one of"):
        entropy_coefficient(0.01, "triangle")
    with pytest.raises(ValueError, match="variant must be one of"):
        _sampled("ppo2")


def test_wide_space_adds_rl_zoo3_ranges_and_fixed_settings_are_not_sampled():
    wide = _sampled("clip", wide=True)
    assert set(wide) == EXPECTED_PARAMS["clip"] | RL_ZOO3_PARAMS
    assert 1e-5 <= wide["learning_rate"] <= 2e-3 and 5 <= wide["n_steps_pow"] <= 12
    fixed = _sampled("clip", wide=True, fixed={"n_steps", "clip_range", "ent_coef", "gamma", "policy_kwargs"})
    expected = {"n_steps_pow", "clip_range", "ent_coef", "ent_schedule", "one_minus_gamma", "net_arch", "activation_fn"}
    assert set(fixed) == (EXPECTED_PARAMS["clip"] | RL_ZOO3_PARAMS) - expected


def test_rl_zoo3_parameters_become_constructor_arguments_make_model_builds():
    params = {"batch_size_pow": 5, "n_steps_pow": 6, "one_minus_gamma": 0.01, "one_minus_gae_lambda": 0.05,
              "learning_rate": 1e-3, "net_arch": "tiny", "activation_fn": "relu", "ent_coef": 0.01,
              "ent_schedule": "linear"}  # fmt: skip
    kwargs = params_to_kwargs(params)
    # gamma = 1 - one_minus_gamma, computed as the converter does (1 - 0.01 is not 0.99 in float64)
    assert kwargs == {"batch_size": 32, "n_steps": 64, "gamma": 1.0 - 0.01, "gae_lambda": 1.0 - 0.05,
                      "learning_rate": 1e-3, "ent_coef": "lin_0.01_0.0", "policy_kwargs":
                      "dict(net_arch=dict(pi=[64], vf=[64]), activation_fn=nn.ReLU)"}  # fmt: skip
    model = make_model("clip", ENV, kwargs, seed=0)
    assert (model.batch_size, model.n_steps, model.policy.activation_fn) == (32, 64, torch.nn.ReLU)
    assert model.policy.net_arch == {"pi": [64], "vf": [64]} and model.gamma == 1.0 - 0.01


def test_check_combination_refuses_a_minibatch_larger_than_a_rollout():
    assert check_combination({"n_steps": 64, "n_envs": 2, "batch_size": 128}) is None
    reason = check_combination({"n_steps": 64, "n_envs": 2, "batch_size": 256})
    assert reason is not None and "batch_size=256" in reason and "128" in reason


def test_check_combination_refuses_a_rollout_larger_than_the_budget():
    assert check_combination({"n_steps": 512, "n_envs": 2}, timesteps=1024) is None
    reason = check_combination({"n_steps": 512, "n_envs": 4}, timesteps=1024)
    assert reason is not None and "2048" in reason and "budget of 1024" in reason


# --- bookkeeping: counting, the cap, dead workers (no training) --------------------------------------


def open_study(storage: Any, name: str, settings: TuningSettings, **kwargs: Any) -> optuna.Study:
    return open_tuning_study(storage, name, settings, **kwargs)


def run_trials(study: optuna.Study, settings: TuningSettings, n_trials: int, max_total_trials: int | None = None) -> int:
    """One worker of a tuning study, as the command runs it."""
    return run_worker(study, tuning_objective(settings), n_trials, max_total_trials)


def _settings(variant: str = "clip", **overrides: Any) -> TuningSettings:
    values: dict[str, Any] = {
        "variant": variant,
        "env_id": ENV,
        "timesteps": 1024,
        "seeds": (0, 1),
        "n_evaluations": 2,
        "n_eval_episodes": 3,
        "hyperparams": {"n_envs": 2, "n_steps": 128, "batch_size": 64},
    }
    values.update(overrides)
    return TuningSettings(**values)


@pytest.fixture
def no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("this test must not train")

    monkeypatch.setattr(runner, "SeededRun", refuse)


def _finished(state: TrialState, **user_attrs: Any) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=state,
        value=1.0 if state == TrialState.COMPLETE else None,
        params={"clip_range": 0.2},
        distributions={"clip_range": FloatDistribution(0.05, 0.4)},
        user_attrs=user_attrs,
    )


def test_the_cap_counts_complete_pruned_and_running_trials_and_stops_the_worker():
    study = optuna.create_study(direction="maximize")
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        study.add_trial(_finished(state))
    assert n_counted(study) == 2  # a failed trial takes no slot
    assert run_worker(study, Objective(lambda trial: 1.0), n_trials=5, max_total_trials=4) == 2
    assert n_counted(study) == 4

    def another_worker_finishes_one(trial: optuna.Trial) -> float:
        study.add_trial(_finished(TrialState.COMPLETE))
        return 1.0

    # 4 + this trial + the other worker's = 6: Optuna's MaxTrialsCallback stops this worker after its trial
    assert run_worker(study, Objective(another_worker_finishes_one), n_trials=5, max_total_trials=6) == 1
    assert run_worker(study, Objective(lambda trial: 1.0), n_trials=5, max_total_trials=6) == 0
    assert n_counted(study) == 6


def test_one_sampler_seed_gives_each_trial_its_own_stream_across_workers_and_reproducibly(tmp_path):
    settings = _settings()

    def sampled(study: optuna.Study) -> dict[str, Any]:
        trial = study.ask()
        params = suggest_params(trial, "clip")
        study.tell(trial, 1.0)
        return params

    storage = open_storage(None, tmp_path / "a")
    first, second = (open_study(storage, "s", settings, sampler="random", sampler_seed=0) for _ in range(2))
    together = [sampled(first), sampled(second), sampled(first)]  # two workers started with one seed, interleaved
    assert len({tuple(sorted(p.items())) for p in together}) == 3
    alone = open_study(open_storage(None, tmp_path / "b"), "s", settings, sampler="random", sampler_seed=0)
    assert [sampled(alone) for _ in range(3)] == together  # trial k's parameters depend on (seed, k) only


def test_run_trials_does_nothing_on_a_full_study(tmp_path, no_training):
    storage = open_storage(None, tmp_path)
    settings = _settings()
    study = open_study(storage, "full", settings)
    for _ in range(3):
        study.add_trial(_finished(TrialState.COMPLETE))
    assert run_trials(study, settings, n_trials=5, max_total_trials=3) == 0
    assert len(study.trials) == 3


def test_a_study_is_resumed_only_with_its_own_settings(tmp_path):
    storage = open_storage(None, tmp_path)
    open_study(storage, "s", _settings())
    open_study(storage, "s", _settings())  # same settings: resumes
    with pytest.raises(StudyMismatchError, match=r"timesteps: stored 1024, given 2048"):
        open_study(storage, "s", _settings(timesteps=2048))


def test_recover_stale_trials_fails_and_requeues_only_trials_of_dead_workers(tmp_path):
    storage = open_storage(None, tmp_path)
    study = open_study(storage, "s", _settings())
    distribution = {"clip_range": FloatDistribution(0.05, 0.4)}
    dead_lock, _ = worker_lock(tmp_path / "study.log", die=True)
    live_lock, alive = worker_lock(tmp_path / "study.log", die=False)
    workers = {
        "dead": {"lock": dead_lock},  # killed with -9: its lock file stays, unlocked
        "alive": {"lock": live_lock},
        "this process": {"lock": None},
        # a lock file this machine cannot see (another machine, with our host name and a pid that is not running)
        "elsewhere": {"lock": str(tmp_path / "elsewhere" / "x.lock"), "host": os.uname().nodename, "pid": 2**22 + 1},
    }
    numbers = {}
    for name, worker in workers.items():
        trial = study.ask(distribution)
        trial.set_user_attr("worker", {**worker, "trial": trial.number})
        numbers[name] = trial.number
    unmarked = study.ask(distribution).number  # a worker killed before it wrote its identity: given a grace period
    try:
        recovered = recover_stale_trials(study)
    finally:
        alive.communicate("")
    assert recovered == [numbers["dead"]]
    trials = study.get_trials()
    failed = trials[numbers["dead"]]
    assert failed.state == TrialState.FAIL and not Path(dead_lock).exists()
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == failed.number]
    assert retry.state == TrialState.WAITING and retry.params == failed.params
    reasons = fail_reasons(study)
    assert reasons[failed.number] == f"its worker died or stopped beating mid-trial (run again as trial {retry.number})"
    for name in ("alive", "this process", "elsewhere"):
        assert trials[numbers[name]].state == TrialState.RUNNING
    assert trials[unmarked].state == TrialState.RUNNING
    assert recover_stale_trials(study) == [], "a second pass finds nothing more"


BEATING_WORKER = """
import importlib.util, os, signal, sys, optuna
def load(name, path):  # storage.py and liveness.py alone (optuna, no torch): quick to start
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
load("sb3_ppo_variants.studies.liveness", "sb3_ppo_variants/studies/liveness.py")
storage = load("storage", "sb3_ppo_variants/studies/storage.py").open_storage(sys.argv[1], heartbeat_interval=1)
study = optuna.load_study(study_name="s", storage=storage)
number = study.ask().number
trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name("s"), number)
storage.record_heartbeat(trial_id)  # what study.optimize's heartbeat thread does, once
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_on_sqlite_a_trial_whose_worker_stopped_beating_is_failed_and_enqueued_again(tmp_path):
    path = str(tmp_path / "study.db")
    study = optuna.create_study(study_name="s", storage=open_storage(path, heartbeat_interval=1))
    worker = subprocess.run([sys.executable, "-c", BEATING_WORKER, path], cwd=REPO, timeout=120, capture_output=True)
    assert worker.returncode == -signal.SIGKILL, worker.stderr
    (killed,) = study.get_trials()
    assert killed.state == TrialState.RUNNING
    deadline = time.monotonic() + 30  # stale after the grace period, twice the heartbeat interval
    while study.get_trials()[0].state == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
        recover_stale_trials(study)
    killed, retry = study.get_trials()
    assert killed.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert retry.system_attrs["failed_trial"] == killed.number


# --- bad input: a clear error before any training ------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--variant", "ppo2"], "argument --variant: invalid choice: 'ppo2'"),
        (["--env", "NoSuchEnv-v0"], "argument --env: 'NoSuchEnv-v0' is not a registered"),
        (["--seeds", "0"], "argument --seeds: must be an integer >= 1, got 0"),
        (["--n-trials", "-1"], "argument --n-trials: must be an integer >= 1, got -1"),
        (["--max-total-trials", "0"], "argument --max-total-trials: must be an integer >= 1"),
        (["--timesteps", "x"], "argument --timesteps: must be an integer >= 1, got 'x'"),
        (["--n-evaluations", "0"], "argument --n-evaluations: must be an integer >= 1"),
        (["--timesteps", "3", "--n-evaluations", "4"], "argument --n-evaluations: 4 evaluations need --timesteps"),
        (["--timesteps", "1000"], "is larger than the budget of 1000 timesteps"),
        (["--pruner", "asha"], "argument --pruner: invalid choice: 'asha'"),
        (["--sampler", "cmaes"], "argument --sampler: invalid choice: 'cmaes'"),
        (["--storage", "postgresql://postgres@127.0.0.1:1/nowhere"], "does not connect"),
        (["--storage", "study.txt"], "must end in .log"),
        (["--hyperparams", "missing.yml"], "argument --hyperparams: no such file"),
        (["--hyperparams", "{other_env}"], "no hyperparameters for env 'CartPole-v1'"),
        (["--hyperparams", "{misspelt}"], "unexpected keyword argument 'n_step'"),
    ],
)
def test_bad_input_is_refused_before_anything_starts(tmp_path, capsys, no_training, extra, message):
    (tmp_path / "other_env.yml").write_text("Pendulum-v1:\n  n_envs: 2\n")
    (tmp_path / "misspelt.yml").write_text("CartPole-v1:\n  n_step: 64\n")
    extra = [str(tmp_path / f"{a[1:-1]}.yml") if a.startswith("{") else a for a in extra]
    argv = ["--variant", "clip", "--env", ENV, "--out", str(tmp_path / "out"), *extra]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing may be created before the input is valid"


# --- trials that train ----------------------------------------------------------------------------


def test_a_failing_trial_is_recorded_with_its_reason_and_the_study_goes_on(tmp_path):
    storage = open_storage(None, tmp_path)
    settings = _settings(timesteps=256, seeds=(0,), n_evaluations=1, hyperparams={"n_steps": 128, "batch_size": 64})
    study = open_study(storage, "s", settings, sampler_seed=0)
    study.enqueue_trial({"clip_range": -0.1})  # refused by the constructor
    study.enqueue_trial({"clip_range": 0.2, "ent_coef": 0.01, "ent_schedule": "linear"})
    assert run_trials(study, settings, n_trials=2) == 2
    failed, completed = study.trials
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_kind"] == "error"
    assert "clip_range" in failed.user_attrs["fail_reason"] and "-0.1" in failed.user_attrs["fail_reason"]
    assert completed.state == TrialState.COMPLETE
    assert completed.value == np.mean(completed.user_attrs["seed_scores"])  # the objective returns this mean
    assert n_counted(study) == 1  # the failed trial takes no slot of the cap


def test_an_invalid_combination_is_pruned_with_its_reason_without_training(tmp_path, no_training):
    storage = open_storage(None, tmp_path)
    settings = _settings(wide=True, hyperparams={"n_envs": 1})
    study = open_study(storage, "s", settings)
    study.enqueue_trial({"n_steps_pow": 5, "batch_size_pow": 9})
    run_trials(study, settings, n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and "batch_size=512" in trial.user_attrs["prune_reason"]


@pytest.mark.parametrize("path", ["population", "solo"])
def test_an_interrupted_trial_is_failed_and_its_environments_closed(tmp_path, monkeypatch, path):
    closed: list[bool] = []

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if path == "population":  # the tuner's plain variants train their seeds as one population
        monkeypatch.setattr(Population, "learn", interrupt)
        monkeypatch.setattr(Population, "close", lambda self: closed.extend([True] * self.n_members))
    else:

        def refuse(*args, **kwargs):
            raise ValueError("forced by the test")

        monkeypatch.setattr(runner, "Population", refuse)
        monkeypatch.setattr(runner.SeededRun, "advance", interrupt)
        monkeypatch.setattr(runner.SeededRun, "close", lambda self: closed.append(True))
    storage = open_storage(None, tmp_path)
    settings = _settings()
    study = open_study(storage, "s", settings, sampler_seed=0)
    with pytest.raises(KeyboardInterrupt):
        run_trials(study, settings, n_trials=3)
    (interrupted,) = study.get_trials()
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["fail_kind"] == "interrupted"
    assert len(closed) == len(settings.seeds), "the runs' environments are closed"
    assert n_counted(study) == 0


@pytest.mark.slow
def test_median_pruner_prunes_a_trial_that_is_clearly_worse(tmp_path):
    """Two good trials, then one with learning_rate=1.0 (its policy collapses): pruned at its first report."""
    fixed = {"n_envs": 2, "n_steps": 256, "batch_size": 64, "n_epochs": 10, "gamma": 0.99, "gae_lambda": 0.95}
    fixed.update({"max_grad_norm": 0.5, "vf_coef": 0.5, "ent_coef": 0.0, "policy_kwargs": "dict(net_arch=[64, 64])"})
    settings = _settings(timesteps=2048, seeds=(0, 1), n_evaluations=2, hyperparams=fixed, wide=True)
    storage = open_storage(None, tmp_path)
    pruner = tuning.make_pruner("median", settings, n_startup_trials=2, n_warmup_evaluations=0)
    study = open_study(storage, "s", settings, sampler_seed=0, pruner=pruner)
    for learning_rate in (3e-3, 2e-3, 1.0):
        study.enqueue_trial({"clip_range": 0.2, "learning_rate": learning_rate})
    run_trials(study, settings, n_trials=3)
    good, good2, bad = study.trials
    assert good.state == good2.state == TrialState.COMPLETE
    assert bad.state == TrialState.PRUNED, (bad.intermediate_values, good.intermediate_values, good2.intermediate_values)
    first = settings.evaluation_points[0]
    assert list(bad.intermediate_values) == [first], "pruned at its first report, before training on"
    assert bad.intermediate_values[first] < min(good.intermediate_values[first], good2.intermediate_values[first])
    assert "pruned at 1024 timesteps" in bad.user_attrs["prune_reason"]
    # each report is the mean over the seeds' evaluations at that point
    for trial in (good, good2, bad):
        curves = trial.user_attrs["seed_curves"]
        for index, (_, value) in enumerate(sorted(trial.intermediate_values.items())):
            assert value == np.mean([curve[index] for curve in curves])  # the reported mean, recomputed


@pytest.mark.slow
def test_small_study_writes_every_output_and_the_best_yaml_rebuilds_the_model(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "fixed.yml").write_text(f"{ENV}:\n  n_envs: 2\n  n_steps: 128\n  n_epochs: 5\n  n_timesteps: 1536\n")
    argv = ["--variant", "clip_kl", "--env", ENV, "--n-trials", "4", "--max-total-trials", "4", "--seeds", "2"]
    argv += ["--n-evaluations", "2", "--n-eval-episodes", "3", "--sampler-seed", "3", "--out", str(out)]
    argv += ["--hyperparams", str(tmp_path / "fixed.yml"), "--no-progress-bar"]
    assert main(argv) == 0
    for name in ("trials.csv", "best_hyperparams.yml", "summary.md", "history.png", "importances.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("history", "intermediate_values", "importances", "slice_clip_range", "slice_kl_coef", "slice_ent_coef"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    study = optuna.load_study(study_name=f"clip_kl-{ENV}", storage=open_storage(None, out))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    for trial in study.trials:
        assert len(trial.user_attrs["seed_scores"]) == 2
        assert trial.value == np.mean(trial.user_attrs["seed_scores"])
    import pandas as pd

    table = pd.read_csv(out / "trials.csv")
    assert sorted(table["number"]) == [0, 1, 2, 3] and set(table["state"]) == {"COMPLETE"}
    assert {"params_clip_range", "params_kl_coef", "params_ent_coef", "params_ent_schedule"} <= set(table.columns)

    best = study.best_trial
    summary = (out / "summary.md").read_text()
    assert f"Best: trial {best.number}" in summary and "4 complete" in summary
    entry = load_hyperparams(out / "best_hyperparams.yml", ENV)
    assert entry["clip_range"] == best.params["clip_range"]  # YAML writes floats by repr: they read back exactly
    assert entry["kl_coef"] == best.params["kl_coef"]
    assert (entry["n_timesteps"], entry["n_envs"], entry["n_steps"], entry["n_epochs"]) == (1536, 2, 128, 5)
    model = make_model("clip_kl", ENV, entry, seed=0)
    expected_ent = as_schedule(entropy_coefficient(best.params["ent_coef"], best.params["ent_schedule"]))
    for progress in (1.0, 0.5, 0.0):
        assert as_schedule(model.ent_coef)(progress) == expected_ent(progress)
    model.learn(64)
    assert model.num_timesteps >= 64
    model.get_env().close()
    # The best configuration retrained on 5 fresh seeds (seeds 0, 1 with 2 envs each use env seeds 0-2), reported beside
    confirmation = study.user_attrs["confirmation"]
    assert confirmation["trial"] == best.number and confirmation["seeds"] == [3, 4, 5, 6, 7]
    assert len(confirmation["scores"]) == 5 and confirmation["mean"] == np.mean(confirmation["scores"])
    assert f"| {confirmation['mean']:.6g} | {confirmation['scores']} |" in summary
    assert (
        f"On fresh seeds [3, 4, 5, 6, 7] (no trial used them): mean return {confirmation['mean']:.6g}"
        in (out / "best_hyperparams.yml").read_text()
    )

    # The same command again resumes the study: the cap is reached, nothing more runs.
    capsys.readouterr()
    assert main(argv) == 0
    assert "4 trials of at most 4 so far" in capsys.readouterr().out
    assert len(optuna.load_study(study_name=f"clip_kl-{ENV}", storage=open_storage(None, out)).trials) == 4


# --- several processes ------------------------------------------------------------------------------


def _tune_command(out: Path, *extra: str) -> list[str]:
    """The command line of a small study of 1024 timesteps x 2 seeds per trial (fixed settings in out/../fixed.yml)."""
    fixed = out.parent / "fixed.yml"
    fixed.write_text(f"{ENV}:\n  n_steps: 256\n  batch_size: 64\n  n_epochs: 4\n")
    command = [sys.executable, TUNE, "--variant", "clip", "--env", ENV, "--seeds", "2", "--n-evaluations", "1"]
    command += ["--timesteps", "1024", "--n-eval-episodes", "3", "--pruner", "none", "--hyperparams", str(fixed)]
    return [*command, "--no-progress-bar", "--out", str(out), *extra]


def _wait_for(condition, timeout: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(
                f"the worker exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.3)


@pytest.mark.slow
def test_killing_a_worker_and_running_the_command_again_resumes_the_study(tmp_path):
    out = tmp_path / "out"
    command = _tune_command(out, "--n-trials", "3", "--max-total-trials", "3")
    name = f"clip-{ENV}"

    def trials() -> list[optuna.trial.FrozenTrial]:
        if not (out / "study.log").exists():
            return []
        try:
            return optuna.load_study(study_name=name, storage=open_storage(None, out)).get_trials()
        except KeyError:  # the study is not created yet
            return []

    def first_done_second_running() -> bool:
        # ... and the second one has sampled all its parameters (they are suggested one by one): killed earlier,
        # its retry would keep the sampled ones and sample the rest anew.
        now = trials()
        states = [(t.state, "worker" in t.user_attrs) for t in now]
        return states[:2] == [(TrialState.COMPLETE, True), (TrialState.RUNNING, True)] and set(now[1].params) == set(
            now[0].params
        )

    worker = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(first_done_second_running, 240, worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    before = trials()
    assert before[1].state == TrialState.RUNNING, "a killed worker leaves its trial RUNNING in a journal file"

    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    after = trials()
    kept = after[0]
    assert (kept.state, kept.value, kept.params) == (before[0].state, before[0].value, before[0].params)
    killed = after[1]
    assert killed.state == TrialState.FAIL
    assert "trial 1: its worker died" in (out / "summary.md").read_text()
    retries = [t for t in after if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["worker"]["pid"] != before[1].user_attrs["worker"]["pid"], "run by the new process"
    assert n_counted(optuna.load_study(study_name=name, storage=open_storage(None, out))) == 3
    assert sum(t.state == TrialState.COMPLETE for t in after) == 3
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.WAITING)]


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_one_postgres_study_finish_the_requested_trials_once(tmp_path, postgres_url):
    total = 4
    commands = [
        [
            *_tune_command(tmp_path / f"out{i}", "--n-trials", "10", "--max-total-trials", str(total)),
            *("--storage", postgres_url, "--study-name", "shared", "--heartbeat-interval", "5"),
            *("--sampler", "random", "--sampler-seed", "0", "--confirm-seeds", "0"),  # one seed: per-trial streams
            # trials of 2 x 4096 steps: at 1024 a worker on quiet cores ran all 4 trials (a population of 2 seeds each)
            # before the other had imported torch, so "both workers took part" failed once in two CI runs
            *("--timesteps", "4096"),
        ]
        for i in range(2)
    ]
    workers = [subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True) for command in commands]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    ran = [t for t in trials if t.state == TrialState.COMPLETE]
    assert ran == trials
    # Optuna's cap is checked between trials: two workers asking at the same moment may each run one more
    assert total <= len(ran) <= total + 1
    assert len({t.number for t in trials}) == len(trials)
    assert len({tuple(sorted(t.params.items())) for t in ran}) == len(ran), "the same sampler seed, other parameters"
    for trial in ran:
        assert set(trial.params) == EXPECTED_PARAMS["clip"]
        assert len(trial.user_attrs["seed_scores"]) == 2
    assert len({t.user_attrs["worker"]["pid"] for t in ran}) == 2, "both workers took part"
    for i in range(2):
        assert (tmp_path / f"out{i}" / "summary.md").exists()
        assert os.path.getsize(tmp_path / f"out{i}" / "trials.csv") > 0
