"""rl-zoo3 entry point: zoo's own train / enjoy / -optimize / plot commands, run for real on our variants."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch as th
import yaml
from optuna.trial import TrialState

from sb3_ppo_variants import VARIANTS
from sb3_ppo_variants.studies.search_spaces import SEARCH_SPACES
from sb3_ppo_variants.zoo import ZooSampler, _with_default_config, convert_params, default_config, register

pytest.importorskip("rl_zoo3")

PLAIN = ["clip", "kl", "adaptive_kl", "clip_kl"]
#: Each variant's own settings in its shipped zoo file, on top of rl-zoo3's PPO entries.
OWN_SETTINGS = {
    "clip": {},
    "kl": {"kl_coef": 1.0},
    "adaptive_kl": {"kl_coef": 1.0, "kl_target": 0.01},
    "clip_kl": {"kl_coef": 0.2},
}
DATA = Path(__file__).resolve().parents[1] / "sb3_ppo_variants" / "data"


def zoo(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m sb3_ppo_variants.zoo ARGS`` in ``cwd``, one torch thread; fails the test on a non-zero exit."""
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "sb3_ppo_variants.zoo", *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


def journal(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def test_register_adds_every_variant_to_zoo_registries() -> None:
    import rl_zoo3
    from rl_zoo3 import hyperparams_opt

    assert register() == list(VARIANTS)
    for name, algorithm in VARIANTS.items():
        assert rl_zoo3.ALGOS[name] is algorithm
        assert isinstance(hyperparams_opt.HYPERPARAMS_SAMPLER[name], ZooSampler)
        assert hyperparams_opt.HYPERPARAMS_CONVERTER[name] is convert_params
    assert rl_zoo3.ALGOS["ppo"].__name__ == "PPO"  # zoo's own entries are left alone


@pytest.mark.parametrize("variant", PLAIN)
def test_shipped_zoo_files_are_zoo_ppo_entries_plus_the_variants_own_settings(variant: str) -> None:
    path = default_config(variant)
    assert path is not None and path.name == f"{variant}.yml"
    shipped = yaml.safe_load(path.read_text())
    reference = yaml.safe_load((DATA / "zoo_ppo.yml").read_text())
    assert set(shipped) == set(reference) | {"default"}
    for env_id, entry in reference.items():
        assert shipped[env_id] == {**entry, **OWN_SETTINGS[variant]}, env_id
        for key in ("learning_rate", "clip_range", "clip_range_vf"):  # zoo parses these: only "lin_X" strings
            value = shipped[env_id].get(key)
            assert not isinstance(value, str) or (value.startswith("lin_") and value.count("_") == 1), (env_id, key)
    assert shipped["default"] == {"n_timesteps": 1e6, "policy": "MlpPolicy", **OWN_SETTINGS[variant]}


@pytest.mark.parametrize("variant", PLAIN)
def test_shipped_zoo_files_of_the_contrib_hosts(variant: str) -> None:
    import rl_zoo3

    lstm = yaml.safe_load((Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo_lstm.yml").read_text())
    recurrent = yaml.safe_load(default_config(f"recurrent_{variant}").read_text())  # type: ignore[union-attr]
    assert recurrent["CartPoleNoVel-v1"] == {**lstm["CartPoleNoVel-v1"], **OWN_SETTINGS[variant]}
    assert recurrent["default"] == {"n_timesteps": 1e6, "policy": "MlpLstmPolicy", **OWN_SETTINGS[variant]}
    maskable = yaml.safe_load(default_config(f"maskable_{variant}").read_text())  # type: ignore[union-attr]
    assert maskable == {"default": {"n_timesteps": 1e6, "policy": "MlpPolicy", **OWN_SETTINGS[variant]}}
    assert set(VARIANTS) <= {path.stem for path in (DATA / "zoo").glob("*.yml")}  # one file per registered variant


def test_default_config_is_added_only_when_missing_and_for_our_algorithms() -> None:
    args = ["--algo", "kl", "--env", "CartPole-v1"]
    assert _with_default_config(args) == [*args, "-conf", str(default_config("kl"))]
    assert _with_default_config(["--algo=kl"])[-1] == str(default_config("kl"))
    assert _with_default_config([*args, "-conf", "mine.yml"]) == [*args, "-conf", "mine.yml"]
    assert _with_default_config(["--algo", "ppo"]) == ["--algo", "ppo"]  # zoo's own file for its own algorithms


@pytest.mark.parametrize("variant", PLAIN)
def test_sampler_is_the_tuners_space_plus_rl_zoo3s_and_converter_rebuilds_from_params(variant: str) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        kwargs = ZooSampler(variant)(trial, n_actions=2, n_envs=1, additional_args={})
        clipped = VARIANTS[variant]("MlpPolicy", "CartPole-v1").surrogate != "unclipped"
        assert ("clip_range" in trial.params) == clipped  # a dead parameter for r*A variants
        assert ("kl_coef" in trial.params) == (variant != "clip")
        assert ("kl_target" in trial.params) == (variant == "adaptive_kl")
        assert {"ent_coef", "ent_schedule", "batch_size_pow", "one_minus_gamma", "net_arch"} <= set(trial.params)
        assert convert_params(trial.params) == kwargs  # zoo's --trial-id: from trial.params alone
        assert kwargs["n_steps"] == 2 ** trial.params["n_steps_pow"] and isinstance(kwargs["policy_kwargs"], dict)
        model = VARIANTS[variant]("MlpPolicy", "CartPole-v1", **kwargs)
        assert model.n_steps == kwargs["n_steps"] and model.policy.activation_fn in (th.nn.Tanh, th.nn.ReLU)
        study.tell(trial, 0.0)
    assert set(SEARCH_SPACES) >= set(PLAIN)


@pytest.mark.parametrize("host", ["maskable", "recurrent"])
@pytest.mark.parametrize("variant", PLAIN)
def test_contrib_variants_load_with_zoos_inference_objects(tmp_path: Path, host: str, variant: str) -> None:
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete
    from test_save_load import ZOO_INFERENCE_OBJECTS

    algorithm = VARIANTS[f"{host}_{variant}"]
    env = InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10) if host == "maskable" else "CartPole-v1"
    policy = "MlpLstmPolicy" if host == "recurrent" else "MlpPolicy"
    model = algorithm(policy, env, n_steps=32, batch_size=32, n_epochs=1, seed=0).learn(32)
    model.save(tmp_path / "model")
    loaded = algorithm.load(tmp_path / "model", custom_objects=ZOO_INFERENCE_OBJECTS)
    observations = np.stack([model.observation_space.sample() for _ in range(4)])
    expected, _ = model.predict(observations, deterministic=True)
    actions, _ = loaded.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions, expected)


@pytest.fixture(scope="module")
def zoo_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """zoo's train for every variant, 5000 steps on CartPole-v1 with two evaluations, into one log folder."""
    root = tmp_path_factory.mktemp("zoo")
    for variant in PLAIN:
        zoo("train", "--algo", variant, "--env", "CartPole-v1", "-n", "5000", "--seed", "0", "--num-threads", "1",
            "--eval-freq", "1000", "--eval-episodes", "2", "-f", "logs", cwd=root)  # fmt: skip
    return root


@pytest.mark.slow
@pytest.mark.parametrize("variant", PLAIN)
def test_train_writes_zoo_log_layout_and_enjoy_loads_it(zoo_logs: Path, variant: str) -> None:
    run = zoo_logs / "logs" / variant / "CartPole-v1_1"
    assert (run / "CartPole-v1.zip").is_file() and len(list(run.glob("*.monitor.csv"))) == 8  # zoo's n_envs: 8
    config = yaml.unsafe_load((run / "CartPole-v1" / "config.yml").read_text())
    assert {key: dict(config)[key] for key in OWN_SETTINGS[variant]} == OWN_SETTINGS[variant]
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["timesteps"][-1] >= 4800 and evaluations["results"].shape[1] == 2
    model = VARIANTS[variant].load(run / "CartPole-v1.zip")
    assert type(model) is VARIANTS[variant] and model.num_timesteps >= 5000
    # zoo's enjoy loads with custom_objects={"clip_range": lambda _: 0.0, ...}: this failed before VariantPPO
    # accepted load-time overrides as SB3's PPO does.
    result = zoo("enjoy", "--algo", variant, "--env", "CartPole-v1", "-f", "logs", "--no-render", "-n", "500",
                 "--num-threads", "1", cwd=zoo_logs)  # fmt: skip
    assert f"Loading {run / 'CartPole-v1.zip'}".replace(str(zoo_logs) + "/", "") in result.stdout
    assert "Mean reward:" in result.stdout and "Episode Reward:" in result.stdout


@pytest.mark.slow
def test_a_recurrent_variant_trains_with_zoos_lstm_entry_and_enjoy_runs_it(tmp_path: Path) -> None:
    zoo("train", "--algo", "recurrent_clip_kl", "--env", "CartPoleNoVel-v1", "-n", "2048", "--seed", "0",
        "--num-threads", "1", "--eval-freq", "-1", cwd=tmp_path)  # fmt: skip
    (saved,) = (tmp_path / "logs" / "recurrent_clip_kl").glob("CartPoleNoVel-v1_*/CartPoleNoVel-v1.zip")
    model = VARIANTS["recurrent_clip_kl"].load(saved)
    assert model.policy.lstm_actor.hidden_size == 64 and model.kl_coef == 0.2  # zoo's ppo_lstm entry, our setting
    result = zoo("enjoy", "--algo", "recurrent_clip_kl", "--env", "CartPoleNoVel-v1", "-f", "logs", "--no-render",
                 "-n", "300", "--num-threads", "1", cwd=tmp_path)  # fmt: skip
    assert "Episode Reward:" in result.stdout


@pytest.mark.slow
def test_zoo_plot_scripts_read_the_logs_and_write_files(zoo_logs: Path) -> None:
    zoo("all_plots", "-a", *PLAIN, "-e", "CartPole-v1", "-f", "logs", "-o", "all", "--no-display", cwd=zoo_logs)
    summary = pickle.loads((zoo_logs / "all.pkl").read_bytes())
    for variant in PLAIN:
        curve = summary["CartPole-v1"][f"{variant.upper()}-logs"]
        evaluations = np.load(zoo_logs / "logs" / variant / "CartPole-v1_1" / "evaluations.npz")
        np.testing.assert_array_equal(curve["timesteps"], evaluations["timesteps"])
        np.testing.assert_array_equal(curve["mean"], evaluations["results"].mean(axis=1))  # zoo's own mean(axis=1)
    # (zoo's plot_from_file needs two runs or more per algorithm; one run each is what this test trains.)
    zoo("plot_train", "-a", "clip_kl", "-e", "CartPole-v1", "-f", "logs", "-w", "5", "--output", "train.png", cwd=zoo_logs)
    image = zoo_logs / "train.png"
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 10_000


@pytest.mark.slow
def test_optimize_with_journal_storage_samples_the_variants_terms_and_trial_id_rebuilds_one(tmp_path: Path) -> None:
    storage = tmp_path / "study.log"
    zoo("train", "--algo", "adaptive_kl", "--env", "CartPole-v1", "-optimize", "--n-trials", "3", "--n-timesteps", "4000",
        "--storage", str(storage), "--study-name", "adaptive", "--sampler", "random", "--pruner", "median",
        "--n-evaluations", "2", "--seed", "0", "--num-threads", "1", "--no-optim-plots", cwd=tmp_path)  # fmt: skip
    study = optuna.load_study(study_name="adaptive", storage=journal(storage))
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 3
    for trial in trials:
        assert {"kl_target", "kl_coef", "ent_coef", "ent_schedule"} <= set(trial.params)
        assert "clip_range" not in trial.params
    chosen = study.trials[1]  # zoo ignores --trial-id 0 (it tests the id for truth)
    zoo("train", "--algo", "adaptive_kl", "--env", "CartPole-v1", "-n", "1000", "--storage", str(storage),
        "--study-name", "adaptive", "--trial-id", "1", "--seed", "0", "--num-threads", "1", cwd=tmp_path)  # fmt: skip
    (saved,) = (tmp_path / "logs" / "adaptive_kl").glob("CartPole-v1_*/CartPole-v1.zip")  # zoo numbers the run
    model = VARIANTS["adaptive_kl"].load(saved)
    assert model.kl_target == pytest.approx(chosen.params["kl_target"])
    assert model.n_steps == 2 ** chosen.params["n_steps_pow"] and model.batch_size == 2 ** chosen.params["batch_size_pow"]
    assert model.gamma == 1 - chosen.params["one_minus_gamma"]  # the converter's own 1.0 - one_minus_gamma


@pytest.mark.slow
def test_a_non_finite_trial_is_pruned_by_zoos_objective_and_the_search_goes_on(tmp_path: Path) -> None:
    storage = tmp_path / "study.log"
    study = optuna.create_study(study_name="nan", storage=journal(storage), direction="maximize")
    # The unclipped surrogate with a huge step and no gradient clipping: the loss is NaN within a few updates.
    study.enqueue_trial({"learning_rate": 1e4, "max_grad_norm": 1e9, "kl_coef": 1e-3, "n_steps_pow": 6, "batch_size_pow": 6,
                         "n_epochs": 10, "ent_coef": 1e-5, "ent_schedule": "constant"})  # fmt: skip
    result = zoo("train", "--algo", "kl", "--env", "Pendulum-v1", "-optimize", "--n-trials", "2", "--n-timesteps", "3000",
                 "--storage", str(storage), "--study-name", "nan", "--sampler", "random", "--pruner", "none",
                 "--n-evaluations", "1", "--seed", "0", "--num-threads", "1", "--no-optim-plots", cwd=tmp_path)  # fmt: skip
    assert "non-finite loss term" in result.stdout  # zoo prints the error it turned into a pruned trial
    first, second = optuna.load_study(study_name="nan", storage=journal(storage)).trials
    assert first.state == TrialState.PRUNED and second.state == TrialState.COMPLETE
