"""The shared training loop: equality with SB3's PPO, the KL controllers, logging, schedules, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch as th
from helpers import PLAIN_VARIANTS
from helpers import params as _params
from helpers import recorded as _recorded
from stable_baselines3 import PPO

from sb3_ppo_variants import (
    KLPPO,
    VARIANTS,
    AdaptiveKLController,
    AdaptiveKLPPO,
    ClipKLPPO,
    ClipPPO,
    FixedKLController,
    NonFiniteLossError,
    VariantPPO,
)
from sb3_ppo_variants.schedules import LinearSchedule


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_clip_ppo_equals_sb3_ppo(env_id: str) -> None:
    kwargs = dict(n_steps=128, batch_size=32, n_epochs=3, seed=7, device="cpu")
    # Build and train one model completely before the next: SB3 seeds the global RNGs at construction.
    reference = _params(PPO("MlpPolicy", env_id, **kwargs).learn(512))
    ours = _params(ClipPPO("MlpPolicy", env_id, **kwargs).learn(512))
    assert th.allclose(ours, reference, rtol=0, atol=0)
    # ... and the test can fail: another seed gives other parameters
    other = _params(ClipPPO("MlpPolicy", env_id, **{**kwargs, "seed": 8}).learn(512))
    assert not th.allclose(other, reference)


def test_clip_ppo_equals_sb3_ppo_with_value_clipping_and_target_kl() -> None:
    kwargs = dict(n_steps=64, batch_size=16, n_epochs=5, clip_range_vf=0.1, target_kl=0.002, seed=3, device="cpu")
    reference = _params(PPO("MlpPolicy", "CartPole-v1", **kwargs).learn(256))
    ours = _params(ClipPPO("MlpPolicy", "CartPole-v1", **kwargs).learn(256))
    assert th.equal(ours, reference)


def test_adaptive_controller_follows_the_paper_rule() -> None:
    controller = AdaptiveKLController(initial=1.0, kl_target=0.01)
    controller.end_update(0.01 / 1.5 - 1e-6, n_steps=64)
    assert controller.value == 0.5
    controller.end_update(0.01, n_steps=64)  # inside [d/1.5, 1.5 d]: unchanged
    assert controller.value == 0.5
    controller.end_update(0.01 * 1.5 + 1e-6, n_steps=64)
    assert controller.value == 1.0
    controller.end_update(0.0151, n_steps=64)
    assert controller.value == 2.0


def test_fixed_controller_follows_its_schedule() -> None:
    controller = FixedKLController(LinearSchedule(1.0, 0.0))
    assert controller.begin_update(0.25) == 0.25
    assert controller.value == 0.25
    controller.end_update(100.0, n_steps=64)
    assert controller.value == 0.25


def test_adaptive_beta_adapts_once_per_update_on_the_rollout_kl() -> None:
    model = AdaptiveKLPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=4, kl_target=0.01, seed=0)
    logger = _recorded(model)
    model.learn(64 * 6)
    logger.flush_pending()
    betas, kls = logger.history["train/kl_coef"], logger.history["train/kl"]
    assert len(betas) == len(kls) == 6
    for i in range(5):  # beta of update i+1 is the rule applied to beta_i and the KL of update i
        expected = betas[i] / 2 if kls[i] < 0.01 / 1.5 else betas[i] * 2 if kls[i] > 0.015 else betas[i]
        assert betas[i + 1] == pytest.approx(expected)
    assert len(set(betas)) > 1  # it did adapt
    last = betas[-1] / 2 if kls[-1] < 0.01 / 1.5 else betas[-1] * 2 if kls[-1] > 0.015 else betas[-1]
    assert model.kl_controller.value == pytest.approx(last)


@pytest.mark.parametrize("name", PLAIN_VARIANTS)
def test_every_variant_logs_sb3_keys_and_ours(name: str) -> None:
    model = VARIANTS[name]("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, ent_coef=0.01, seed=0)
    logger = _recorded(model)
    model.learn(128)
    logger.flush_pending()
    keys = set(logger.history)
    sb3_keys = {
        "train/entropy_loss", "train/policy_gradient_loss", "train/value_loss", "train/approx_kl",
        "train/clip_fraction", "train/loss", "train/explained_variance", "train/n_updates", "train/learning_rate",
    }  # fmt: skip
    assert sb3_keys <= keys
    assert {"train/kl", "train/kl_coef", "train/ent_coef"} <= keys
    assert ("train/clip_range" in keys) == (model.surrogate != "unclipped")
    assert all(k >= 0 and math.isfinite(k) for k in logger.history["train/kl"])
    assert logger.history["train/ent_coef"] == [0.01, 0.01]
    assert logger.history["train/kl_coef"][0] == (0.0 if model.kl_controller is None else 1.0 if name != "clip_kl" else 0.2)


def test_train_kl_is_the_exact_kl_between_the_policies_before_and_after_the_update() -> None:
    model = ClipKLPPO("MlpPolicy", "CartPole-v1", n_steps=128, batch_size=32, n_epochs=3, seed=1)
    logger = _recorded(model)
    snapshots: list[th.Tensor] = []
    original = model.train

    def train() -> None:
        obs = th.as_tensor(model.rollout_buffer.observations.reshape(-1, 4))
        before = model.policy.get_distribution(obs).distribution.probs.detach()
        original()
        after = model.policy.get_distribution(obs).distribution.probs.detach()
        snapshots.append((before * (before.log() - after.log())).sum(-1).mean())

    model.train = train  # type: ignore[method-assign]
    model.learn(256)
    logger.flush_pending()
    assert len(snapshots) == 2
    for logged, measured in zip(logger.history["train/kl"], snapshots):
        assert logged == pytest.approx(measured.item(), rel=1e-3)  # float32 sums in another order
        assert logged > 0


def test_entropy_schedule_string_logs_a_decreasing_coefficient_to_near_zero() -> None:
    model = ClipPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=64, n_epochs=1, ent_coef="lin_0.05", seed=0)
    logger = _recorded(model)
    model.learn(64 * 10)
    logger.flush_pending()
    values = logger.history["train/ent_coef"]
    assert len(values) == 10
    assert all(a > b for a, b in itertools.pairwise(values))
    assert values[0] == pytest.approx(0.05 * (1 - 64 / 640))  # SB3 logs after the first rollout
    assert values[-1] == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("estimator", ["exact", "k1", "k2", "k3"])
def test_kl_estimators_drive_different_penalties(estimator: str) -> None:
    model = KLPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=32, n_epochs=3, kl_estimator=estimator, seed=0)
    logger = _recorded(model)
    model.learn(128)
    logger.flush_pending()
    assert math.isfinite(logger.history["train/kl_penalty"][-1])
    if estimator in ("exact", "k2", "k3"):
        assert logger.history["train/kl_penalty"][-1] >= 0


BAD_ARGUMENTS = [
    ({"clip_range": 0.0}, ValueError, "clip_range must be > 0"),
    ({"clip_range": -0.1}, ValueError, "clip_range"),
    ({"clip_range": "lin_x"}, ValueError, "clip_range: Malformed"),
    ({"ent_coef": -0.01}, ValueError, "ent_coef must be >= 0"),
    ({"ent_coef": "lin_-1"}, ValueError, "ent_coef"),
    ({"ent_coef": [0.1]}, TypeError, "ent_coef must be a float"),
    ({"ent_coef": None}, TypeError, "ent_coef"),
    ({"kl_coef": -1.0}, ValueError, "kl_coef must be >= 0"),
    ({"kl_target": 0.0}, ValueError, "kl_target must be > 0"),
    ({"kl_target": -0.01}, ValueError, "kl_target must be > 0"),
    ({"kl_target": "0.01"}, TypeError, "kl_target must be a float"),
    ({"kl_estimator": "k4"}, ValueError, r"kl_estimator must be one of \('exact', 'k1', 'k2', 'k3'\), got 'k4'"),
    ({"surrogate": "dual"}, ValueError, "surrogate must be one of"),
    ({"surrogate": "dual_clip", "dual_clip": 1.0}, ValueError, "dual_clip must be a float > 1"),
    ({"kl_penalty": "adaptive"}, ValueError, "kl_target must be given"),
    ({"kl_penalty": "adaptive", "kl_target": 0.01, "kl_coef": 0.0}, ValueError, "initial beta"),
    ({"target_kl": -1.0}, ValueError, "target_kl"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD_ARGUMENTS)
def test_bad_input_fails_at_construction_naming_the_argument(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        VariantPPO("MlpPolicy", "CartPole-v1", **kwargs)


@pytest.mark.parametrize("name", ["kl", "adaptive_kl", "clip_kl"])
def test_named_variants_validate_their_kl_arguments(name: str) -> None:
    with pytest.raises(ValueError, match="kl_coef"):
        VARIANTS[name]("MlpPolicy", "CartPole-v1", kl_coef=-0.1)
    with pytest.raises(ValueError, match="kl_estimator"):
        VARIANTS[name]("MlpPolicy", "CartPole-v1", kl_estimator="nope")


def test_dual_clip_surrogate_trains_and_differs_from_clipping_only_through_the_bound() -> None:
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=4, learning_rate=3e-3, seed=5)
    clipped = _params(ClipPPO("MlpPolicy", "CartPole-v1", **kwargs).learn(256))
    loose = _params(VariantPPO("MlpPolicy", "CartPole-v1", surrogate="dual_clip", dual_clip=1e9, **kwargs).learn(256))
    tight = _params(VariantPPO("MlpPolicy", "CartPole-v1", surrogate="dual_clip", dual_clip=1.01, **kwargs).learn(256))
    assert th.equal(loose, clipped)  # a bound never reached changes nothing
    assert not th.allclose(tight, clipped)  # a bound just above 1 binds


def test_clip_ppo_fixes_its_terms() -> None:
    with pytest.raises(TypeError, match="surrogate"):
        ClipPPO("MlpPolicy", "CartPole-v1", surrogate="unclipped")
    assert ClipKLPPO("MlpPolicy", "CartPole-v1", kl_target=0.02).kl_penalty == "adaptive"
    assert ClipKLPPO("MlpPolicy", "CartPole-v1").kl_penalty == "fixed"


def test_non_finite_loss_stops_learning_and_names_the_term() -> None:
    # A huge learning rate on the unclipped surrogate sends the policy to NaN within a few updates.
    model = KLPPO("MlpPolicy", "Pendulum-v1", n_steps=64, batch_size=64, n_epochs=10, learning_rate=1e4,
                  max_grad_norm=1e9, kl_coef=0.0, seed=0)  # fmt: skip
    with pytest.raises(
        NonFiniteLossError,
        match=r"non-finite loss term\(s\) at update \d+ .*(policy_gradient_loss|value_loss|entropy_loss|kl_penalty)=",
    ):
        model.learn(64 * 50)


def test_non_finite_loss_error_is_a_value_error() -> None:
    # rl-zoo3's objective prunes a trial on ValueError/AssertionError only; the name and the FloatingPointError stay.
    assert issubclass(NonFiniteLossError, ValueError)
    assert issubclass(NonFiniteLossError, FloatingPointError)
