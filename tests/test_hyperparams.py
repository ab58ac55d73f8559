"""rl-zoo3 hyperparameter files build working models of every variant; schedules survive save/load."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch as th
from helpers import PLAIN_VARIANTS, RecordingLogger
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_variants import ClipKLPPO, ClipPPO
from sb3_ppo_variants.hyperparams import load_hyperparams, make_model, split_hyperparams
from sb3_ppo_variants.schedules import CosineSchedule, ExponentialSchedule, LinearSchedule

ZOO = Path(__file__).parent / "data" / "ppo_zoo.yml"


@pytest.mark.parametrize("variant", [*PLAIN_VARIANTS, "sb3_ppo"])
def test_zoo_cartpole_entry_builds_every_variant(variant: str) -> None:
    model = make_model(variant, "CartPole-v1", load_hyperparams(ZOO, "CartPole-v1"), seed=0)
    assert model.n_envs == 8
    assert (model.n_steps, model.batch_size, model.n_epochs, model.gamma, model.gae_lambda) == (32, 256, 20, 0.98, 0.8)
    assert model.n_timesteps == 100_000  # type: ignore[attr-defined]
    assert model.lr_schedule(0.5) == pytest.approx(0.0005)
    assert model.clip_range(0.5) == pytest.approx(0.1)  # type: ignore[operator]
    model.learn(512)
    assert model.num_timesteps == 512


def test_per_variant_entry_policy_kwargs_and_normalize() -> None:
    entry = load_hyperparams(ZOO, "Pendulum-v1", variant="clip_kl")
    assert entry["kl_coef"] == "exp_0.5_0.05" and entry["n_envs"] == 2
    model = make_model("clip_kl", "Pendulum-v1", entry, seed=0)
    assert isinstance(model, ClipKLPPO)
    assert isinstance(model.get_env(), VecNormalize)
    assert model.policy.mlp_extractor.policy_net[0].out_features == 32
    assert isinstance(model.policy.mlp_extractor.policy_net[1], th.nn.ReLU)
    assert model.kl_controller is not None and model.kl_controller.kl_coef == ExponentialSchedule(0.5, 0.05)  # type: ignore[attr-defined]
    assert model.ent_coef == CosineSchedule(0.01, 0.0)
    # the shared part applies to another variant, without clip_kl's settings
    other = load_hyperparams(ZOO, "Pendulum-v1", variant="kl")
    assert "kl_coef" not in other and other["n_steps"] == 64


def test_split_and_errors() -> None:
    model_kwargs, settings = split_hyperparams(load_hyperparams(ZOO, "CartPole-v1"))
    assert set(settings) == {"n_envs", "n_timesteps", "policy"}
    assert "n_envs" not in model_kwargs and model_kwargs["clip_range"] == "lin_0.2"
    with pytest.raises(KeyError, match="no hyperparameters for env 'Acrobot-v1'"):
        load_hyperparams(ZOO, "Acrobot-v1")
    with pytest.raises(ValueError, match="variant must be one of"):
        make_model("ppo2", "CartPole-v1", {})
    with pytest.raises(ValueError, match="not a registered gymnasium environment"):
        make_model("clip", "NoSuchEnv-v0", {})


def test_sb3_ppo_baseline_gets_callables_for_schedule_strings() -> None:
    model = make_model("sb3_ppo", "CartPole-v1", {"learning_rate": "lin_0.001", "clip_range": "lin_0.2", "n_steps": 64})
    assert type(model) is PPO
    assert model.clip_range(0.25) == pytest.approx(0.05)  # type: ignore[operator]


def test_schedules_survive_save_and_load(tmp_path: Path) -> None:
    model = ClipKLPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, ent_coef="lin_0.05",
                      kl_coef="lin_0.4", clip_range="lin_0.2", seed=0)  # fmt: skip
    logger = RecordingLogger()
    model.set_logger(logger)
    model.learn(64 * 5)
    logger.flush_pending()
    model.save(tmp_path / "model")
    loaded = ClipKLPPO.load(tmp_path / "model", env=model.get_env())
    assert loaded.ent_coef == LinearSchedule(0.05, 0.0)
    assert loaded.kl_controller.kl_coef == LinearSchedule(0.4, 0.0)  # type: ignore[union-attr]
    assert loaded.clip_range(0.5) == pytest.approx(0.1)  # type: ignore[operator]
    logger2 = RecordingLogger()
    loaded.set_logger(logger2)
    loaded.learn(64 * 5)
    logger2.flush_pending()
    for history in (logger.history, logger2.history):
        values = history["train/ent_coef"]
        assert len(values) == 5
        assert all(a > b for a, b in itertools.pairwise(values))  # decreasing ...
        assert values[-1] == pytest.approx(0.0, abs=1e-9)  # ... to 0 at the end of each learn()
        # kl_coef follows its own schedule, lin_0.4, at the same progress
        assert history["train/kl_coef"] == pytest.approx([8 * v for v in values])
    assert logger2.history["train/ent_coef"] == pytest.approx(logger.history["train/ent_coef"])


def test_clip_range_vf_and_learning_rate_schedule_strings() -> None:
    model = ClipPPO("MlpPolicy", "CartPole-v1", clip_range_vf="lin_0.5", learning_rate="exp_0.001_0.00001", n_steps=64)
    assert model.clip_range_vf(0.5) == pytest.approx(0.25)  # type: ignore[misc,operator]
    assert model.lr_schedule(0.5) == pytest.approx(1e-4)
