"""KL to a frozen reference policy (kl_reference, kl_reference_in) and the proportional KL controller."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch as th
from helpers import recorded as _recorded
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_variants import (
    KLPPO,
    VARIANTS,
    ClipKLPPO,
    ClipPPO,
    MaskableClipKLPPO,
    MaskableClipPPO,
    MaskableVariantPPO,
    ProportionalKLController,
)
from sb3_ppo_variants.kl import distribution_params, reference_kl

SMALL = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0}


def test_reference_kl_against_torch_distributions():
    th.manual_seed(0)
    batch = 5
    logits, reference_logits = th.randn(batch, 4) * 2, th.randn(batch, 4)
    dist = CategoricalDistribution(4).proba_distribution(logits)
    expected = th.distributions.kl_divergence(
        th.distributions.Categorical(logits=logits), th.distributions.Categorical(logits=reference_logits)
    )
    th.testing.assert_close(reference_kl(dist, reference_logits), expected)

    mean, log_std = th.randn(batch, 3), th.randn(batch, 3) * 0.3
    gaussian = DiagGaussianDistribution(3).proba_distribution(mean, log_std)
    ref_mean, ref_std = th.randn(batch, 3), th.rand(batch, 3) + 0.5
    expected = th.distributions.kl_divergence(
        th.distributions.Normal(mean, log_std.exp()), th.distributions.Normal(ref_mean, ref_std)
    ).sum(dim=1)
    th.testing.assert_close(reference_kl(gaussian, th.cat([ref_mean, ref_std], dim=1)), expected)

    multi = MultiCategoricalDistribution([2, 3]).proba_distribution(th.randn(batch, 5))
    ref = th.randn(batch, 5)
    own = distribution_params(multi)
    expected = sum(
        th.distributions.kl_divergence(th.distributions.Categorical(logits=p), th.distributions.Categorical(logits=q))
        for p, q in zip(th.split(own, [2, 3], dim=1), th.split(ref, [2, 3], dim=1))
    )
    th.testing.assert_close(reference_kl(multi, ref), expected)

    bernoulli = BernoulliDistribution(3).proba_distribution(th.randn(batch, 3))
    ref = th.randn(batch, 3)
    expected = th.distributions.kl_divergence(
        th.distributions.Bernoulli(logits=distribution_params(bernoulli)), th.distributions.Bernoulli(logits=ref)
    ).sum(dim=1)
    th.testing.assert_close(reference_kl(bernoulli, ref), expected)
    # a distribution's KL to itself is 0
    th.testing.assert_close(reference_kl(dist, logits), th.zeros(batch), atol=1e-6, rtol=0)


def test_proportional_controller_by_hand():
    controller = ProportionalKLController(0.1, kl_target=0.05, horizon=1000)
    assert controller.begin_update(1.0) == 0.1
    controller.end_update(0.2, n_steps=100)  # error 3 clipped to 0.2: beta *= 1 + 0.2 * 0.1
    assert controller.value == pytest.approx(0.1 * 1.02)
    controller.end_update(0.04, n_steps=100)  # error -0.2: beta *= 1 - 0.02
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.98)
    controller.end_update(0.055, n_steps=500)  # error 0.1: beta *= 1 + 0.1 * 0.5
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.98 * 1.05)
    controller.end_update(0.0, n_steps=1000)  # error -1 clipped to -0.2
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.98 * 1.05 * 0.8)


def test_proportional_controller_state_survives_save_load(tmp_path):
    model = ClipKLPPO(
        "MlpPolicy", "CartPole-v1", kl_penalty="proportional", kl_coef=0.5, kl_target=1e-4, kl_horizon=100, **SMALL
    )
    model.learn(128)
    controller = model.kl_controller
    assert isinstance(controller, ProportionalKLController)
    assert controller.value != 0.5  # it moved (the KL is far from its target)
    model.save(tmp_path / "model.zip")
    loaded = ClipKLPPO.load(tmp_path / "model.zip")
    assert isinstance(loaded.kl_controller, ProportionalKLController)
    assert loaded.kl_controller.value == controller.value
    assert (loaded.kl_controller.kl_target, loaded.kl_controller.horizon) == (1e-4, 100.0)


def _reference_file(tmp_path, clip_class: type = ClipPPO) -> str:
    """The initial policy of a CartPole model of ``clip_class`` built with SMALL's seed, saved with SB3's policy.save."""
    path = str(tmp_path / "reference.pt")
    clip_class("MlpPolicy", "CartPole-v1", **SMALL).policy.save(path)
    return path


def test_reference_equal_to_the_initial_policy_gives_zero_kl_and_stays_frozen(tmp_path):
    path = _reference_file(tmp_path)
    model = ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=path, kl_reference_in="loss", kl_coef=0.5, **SMALL)
    reference = model.reference_policy
    assert reference is not None
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    assert all(not p.requires_grad for p in reference.parameters())
    model.learn(64)  # one rollout, collected by the initial policy: its KL to the reference is 0
    assert np.abs(model.rollout_buffer.reference_kl).max() < 1e-6
    th.testing.assert_close(model.rollout_buffer.old_dist_params, model.rollout_buffer.ref_dist_params)
    model.learn(192, reset_num_timesteps=False)
    assert model.logger.name_to_value["train/kl_ref"] > 0  # the policy moved away from it
    for name, value in reference.state_dict().items():
        th.testing.assert_close(value, before[name])
    assert model.reference_policy is reference
    assert not any(p is q for p in reference.parameters() for q in model.policy.parameters())


def test_kl_in_the_reward_is_subtracted_before_gae(tmp_path):
    path = _reference_file(tmp_path)
    model = KLPPO("MlpPolicy", "CartPole-v1", kl_reference=path, kl_reference_in="reward", kl_coef=3.0, **SMALL)
    model.learn(64 * 3)
    buffer = model.rollout_buffer
    assert buffer.reward_kl_coef == 3.0 and buffer.reference_kl.max() > 1e-4
    # CartPole pays 1 per step (no truncation within 64 steps): the stored reward is 1 - beta * KL(pi_old || pi_ref)
    np.testing.assert_allclose(buffer.rewards, 1.0 - 3.0 * buffer.reference_kl, rtol=1e-6)
    # the episode rewards the user sees are the environment's
    assert all(info["r"] == info["l"] for info in model.ep_info_buffer)


def test_reference_policy_object_is_copied_and_survives_save_load(tmp_path):
    reference = ClipPPO("MlpPolicy", "CartPole-v1", seed=1).policy
    model = ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=reference, **SMALL)
    assert model.reference_policy is not reference
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = ClipKLPPO.load(tmp_path / "model.zip")
    assert loaded.reference_policy is not None
    obs = th.as_tensor(np.zeros((1, 4), dtype=np.float32))
    with th.no_grad():
        th.testing.assert_close(
            loaded.reference_policy.get_distribution(obs).distribution.logits,
            reference.get_distribution(obs).distribution.logits,
        )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_takes_the_reference_settings(name, tmp_path):
    cls = VARIANTS[name]
    if not cls.supports_reference:
        message = "needs a KL penalty" if cls.variant == "clip" else "kl_reference is not supported on RecurrentPPO hosts"  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=message):
            cls("MlpLstmPolicy", "CartPole-v1", kl_reference=_reference_file(tmp_path), **SMALL)
        return
    # a policy file of the same host's policy class (SB3's policy.load builds the class it is called on)
    maskable = issubclass(cls, MaskableVariantPPO)
    clip_class = next(c for c in VARIANTS.values() if issubclass(c, MaskableVariantPPO) == maskable and c.variant == "clip")  # type: ignore[attr-defined]
    path = _reference_file(tmp_path, clip_class)
    if cls.variant == "clip":  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=r"kl_reference=.* needs a KL penalty"):
            cls("MlpPolicy", "CartPole-v1", kl_reference=path, **SMALL)
        return
    model = cls("MlpPolicy", "CartPole-v1", kl_reference=path, kl_reference_in="reward", **SMALL)
    assert model.reference_policy is not None and model.kl_reference_in == "reward"


def test_reference_bad_input(tmp_path):
    path = _reference_file(tmp_path)
    with pytest.raises(ValueError, match="kl_reference_in must be one of"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=path, kl_reference_in="advantage")
    with pytest.raises(ValueError, match="kl_estimator must be 'exact' with a kl_reference"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=path, kl_estimator="k3")
    with pytest.raises(ValueError, match=r"kl_reference='.*missing.pt': cannot load a reference policy"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=str(tmp_path / "missing.pt"))
    with pytest.raises(TypeError, match="kl_reference must be None, a policy or the path"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=3)
    acrobot = ClipPPO("MlpPolicy", "Acrobot-v1").policy  # 3 actions, 6 observations
    with pytest.raises(
        ValueError, match=r"kl_reference: its action space Discrete\(3\) does not match the policy's Discrete\(2\)"
    ):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=acrobot)
    with pytest.raises(ValueError, match="kl_target must be given"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_penalty="proportional")
    with pytest.raises(ValueError, match="kl_horizon must be"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_penalty="proportional", kl_target=0.1, kl_horizon=0)


def _masked_env() -> InvalidActionEnvDiscrete:
    return InvalidActionEnvDiscrete(dim=10, n_invalid_actions=6)


@pytest.mark.parametrize("place", ["loss", "reward"])
def test_reference_on_a_maskable_host_is_evaluated_under_the_masks_of_collection(place: str) -> None:
    # The reference is the model's own initial policy and the learning rate is 0: the KL must be 0, and an adaptive
    # beta must see it (it used to see -log(4/10) = 0.916: the unmasked reference against the masked policy).
    kwargs = {"n_steps": 64, "batch_size": 32, "n_epochs": 2, "seed": 0, "learning_rate": 0.0}
    reference = MaskableClipPPO("MlpPolicy", _masked_env(), **kwargs).policy
    model = MaskableClipKLPPO(
        "MlpPolicy", _masked_env(), kl_reference=reference, kl_reference_in=place, kl_target=0.01, kl_coef=0.5, **kwargs
    )
    logger = _recorded(model)
    model.learn(64)
    logger.flush_pending()
    assert logger.history["train/kl_ref"] == [0.0]
    assert not model.rollout_buffer.reference_kl.any()
    assert model.kl_controller.value == 0.25  # KL 0 < target / 1.5: halved, not doubled
    if place == "reward":  # k1 at the sampled token: log pi_old(a) - log pi_ref(a) = 0, and the rewards are the env's
        np.testing.assert_array_equal(model.rollout_buffer.reference_log_prob, model.rollout_buffer.log_probs)


def test_a_plain_policy_is_refused_as_the_reference_of_a_maskable_host() -> None:
    with pytest.raises(ValueError, match="on a MaskablePPO host the reference must be a MaskableActorCriticPolicy"):
        MaskableClipKLPPO("MlpPolicy", _masked_env(), kl_reference=ClipPPO("MlpPolicy", _masked_env()).policy)


def _logits(policy, observation: np.ndarray) -> th.Tensor:
    with th.no_grad():
        return policy.get_distribution(th.as_tensor(observation[None])).distribution.logits


def test_the_saved_reference_is_the_frozen_copy_not_the_source_object(tmp_path):
    source = ClipPPO("MlpPolicy", "CartPole-v1", seed=1).policy
    observation = np.array([0.1, -0.2, 0.03, 0.4], dtype=np.float32)
    frozen = _logits(source, observation).clone()
    model = ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=source, **SMALL)
    with th.no_grad():  # the user goes on changing the source policy after construction
        for parameter in source.parameters():
            parameter.add_(1.0)
    assert th.equal(_logits(model.reference_policy, observation), frozen)
    model.save(tmp_path / "model.zip")
    for parameter in source.parameters():
        parameter.data.zero_()
    loaded = ClipKLPPO.load(tmp_path / "model.zip")
    assert th.equal(_logits(loaded.reference_policy, observation), frozen)
    assert all(not p.requires_grad for p in loaded.reference_policy.parameters())


def test_a_path_reference_loads_without_its_file(tmp_path):
    path = _reference_file(tmp_path)
    observation = np.array([0.1, -0.2, 0.03, 0.4], dtype=np.float32)
    model = ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=path, **SMALL).learn(64)
    expected = _logits(model.reference_policy, observation)
    model.save(tmp_path / "model.zip")
    os.remove(path)
    loaded = ClipKLPPO.load(tmp_path / "model.zip", env=make_vec_env("CartPole-v1"))
    assert th.equal(_logits(loaded.reference_policy, observation), expected)
    assert "reference.pt" in repr(loaded.kl_reference)
    loaded.learn(64, reset_num_timesteps=False)  # and trains on, anchored to it
    assert model.logger.name_to_value["train/kl_ref"] >= 0


def test_an_unreadable_reference_path_is_a_value_error_naming_kl_reference(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a policy")
    with pytest.raises(ValueError, match=r"kl_reference='.*garbage.pt': cannot load a reference policy"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=str(garbage))
    with pytest.raises(ValueError, match=r"kl_reference='.*nowhere': cannot load a reference policy"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=tmp_path / "nowhere")
