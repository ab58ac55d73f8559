"""KL to a frozen reference policy (kl_reference, kl_reference_in) and the proportional KL controller."""

from __future__ import annotations

import math
import os

import gymnasium as gym
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
    AdaptiveKLPPO,
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
    # our formulas vs torch.distributions' (other operations, float32) here and below: measured at most 3.6e-7
    # absolute (assert_close's float32 default: rtol 1.3e-6, atol 1e-5)
    th.testing.assert_close(reference_kl(dist, reference_logits), expected)

    mean, log_std = th.randn(batch, 3), th.randn(batch, 3) * 0.3
    gaussian = DiagGaussianDistribution(3).proba_distribution(mean, log_std)
    ref_mean, ref_std = th.randn(batch, 3), th.rand(batch, 3) + 0.5
    expected = th.distributions.kl_divergence(
        th.distributions.Normal(mean, log_std.exp()), th.distributions.Normal(ref_mean, ref_std)
    ).sum(dim=1)
    # other operations than torch's Normal KL, equal here (measured 0)
    th.testing.assert_close(reference_kl(gaussian, th.cat([ref_mean, ref_std], dim=1)), expected)

    multi = MultiCategoricalDistribution([2, 3]).proba_distribution(th.randn(batch, 5))
    ref = th.randn(batch, 5)
    own = distribution_params(multi)
    expected = sum(
        th.distributions.kl_divergence(th.distributions.Categorical(logits=p), th.distributions.Categorical(logits=q))
        for p, q in zip(th.split(own, [2, 3], dim=1), th.split(ref, [2, 3], dim=1))
    )
    # measured 2.4e-7 absolute
    th.testing.assert_close(reference_kl(multi, ref), expected)

    bernoulli = BernoulliDistribution(3).proba_distribution(th.randn(batch, 3))
    ref = th.randn(batch, 3)
    expected = th.distributions.kl_divergence(
        th.distributions.Bernoulli(logits=distribution_params(bernoulli)), th.distributions.Bernoulli(logits=ref)
    ).sum(dim=1)
    # measured 1.2e-7 absolute
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
        assert th.equal(
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
    # another model's frozen reference is taken like a policy: copied
    sibling = KLPPO("MlpPolicy", "CartPole-v1", kl_reference=loaded.kl_reference, **SMALL)
    assert sibling.reference_policy is not loaded.reference_policy
    assert th.equal(_logits(sibling.reference_policy, observation), frozen)


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


# --- The KL to a reference in the reward, as TRL does it (per token, at the sampled action) -------------------------


class OneStepBandit(gym.Env):
    """Two actions, one step: reward 1 for action 0, 0 for action 1 (the same observation every time)."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.ones(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.ones(1, np.float32), float(action == 0), True, False, {}


class FixedLengthEpisodes(gym.Env):
    """Episodes (responses) of exactly ``length`` steps, reward 0: the counting of responses is known by hand."""

    observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(3)

    def __init__(self, length: int = 4):
        self.length, self.t = length, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.t += 1
        return np.full(1, self.t / self.length, np.float32), 0.0, self.t == self.length, False, {}


LINEAR = {"net_arch": {"pi": [], "vf": []}}  # logits = W obs + b: on the bandit's constant observation, any distribution
P_REF = 0.05


def _bandit_reference(seed: int) -> th.nn.Module:
    """A policy of the bandit with pi_ref(action 0) = 0.05 (a linear policy whose weights are 0 and biases the logits)."""
    reference = ClipPPO("MlpPolicy", OneStepBandit(), policy_kwargs=LINEAR, seed=seed).policy
    with th.no_grad():
        reference.action_net.weight.zero_()
        reference.action_net.bias.copy_(th.tensor([math.log(P_REF), math.log(1 - P_REF)]))
    return reference


@pytest.mark.slow
@pytest.mark.parametrize(("beta", "tolerance"), [(5.0, 0.04), (0.5, 0.07)])
@pytest.mark.parametrize("place", ["loss", "reward"])
def test_both_placements_reach_the_kl_regularised_optimum_of_a_bandit(place: str, beta: float, tolerance: float) -> None:
    # pi*(a) ~ pi_ref(a) exp(r(a) / beta): 0.060 at beta 5, 0.280 at beta 0.5. In the reward the KL used to be the
    # state's KL alone, which exerts no pull on the action taken (0.50 and 0.54 here); k1 at the sampled action does.
    # Without advantage normalisation, which would rescale the reward and so the effective beta (see NOTES.md).
    weight = P_REF * math.exp(1 / beta)
    optimum = weight / (weight + 1 - P_REF)
    reference = _bandit_reference(seed=0)
    model = ClipKLPPO(
        "MlpPolicy", OneStepBandit(), learning_rate="lin_0.1", n_steps=128, batch_size=128, n_epochs=4,
        normalize_advantage=False, policy_kwargs=LINEAR, seed=0, kl_coef=beta, kl_reference=reference,
        kl_reference_in=place,
    )  # fmt: skip
    assert model.kl_estimator == ("k1" if place == "reward" else "exact")
    model.policy.action_net.load_state_dict(reference.action_net.state_dict())  # start at the reference, as in RLHF
    model.learn(2048)
    with th.no_grad():
        p = model.policy.get_distribution(th.ones(1, 1)).distribution.probs[0, 0].item()
    assert abs(p - optimum) < tolerance, (p, optimum)


def _shifted_reference() -> th.nn.Module:
    """Another CartPole policy, its action logits shifted by (0.5, -0.5): a KL to the model's of about 0.1 per step."""
    reference = ClipPPO("MlpPolicy", "CartPole-v1", seed=1).policy
    with th.no_grad():
        reference.action_net.bias.add_(th.tensor([0.5, -0.5]))
    return reference


@pytest.mark.parametrize("estimator", ["k1", "abs", "k2", "k3"])
def test_the_reward_penalty_is_the_estimator_at_the_sampled_action(estimator: str) -> None:
    reference = _shifted_reference()
    model = KLPPO(
        "MlpPolicy", "CartPole-v1", kl_reference=reference, kl_reference_in="reward", kl_estimator=estimator,
        kl_coef=2.0, **SMALL,
    )  # fmt: skip
    model.learn(64)
    buffer = model.rollout_buffer
    assert buffer.ref_dist_params is None  # only the taken action's log-probability is kept, not the full rows
    log_r = th.as_tensor(buffer.reference_log_prob - buffer.log_probs, dtype=th.float64)  # log pi_ref(a) - log pi_old(a)
    by_hand = {"k1": -log_r, "abs": log_r.abs(), "k2": log_r**2 / 2, "k3": th.expm1(log_r) - log_r}[estimator]
    # float32 storage of the log-probabilities and of the estimate
    np.testing.assert_allclose(buffer.reference_kl, by_hand.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(buffer.reference_kl).max() > 0.05
    # CartPole pays 1 per step (no truncation within 64 steps): the stored reward is 1 - beta * k(a_t)
    np.testing.assert_allclose(buffer.rewards, 1.0 - 2.0 * buffer.reference_kl, rtol=1e-6)
    # the reference's log-probability of the taken action is its distribution's
    observations = th.as_tensor(buffer.observations.reshape(-1, 4))
    with th.no_grad():
        expected = model.reference_policy.get_distribution(observations).log_prob(th.as_tensor(buffer.actions.reshape(-1)))
    # the rollout evaluated the reference n_envs rows at a time, this the whole buffer in one batch (matmuls of
    # other shapes may round differently): equal here (measured 0)
    np.testing.assert_allclose(buffer.reference_log_prob.reshape(-1), expected.numpy(), rtol=1e-6)


def test_full_reward_penalty_and_the_loss_placement_keep_the_exact_kl() -> None:
    reference = _shifted_reference()
    for kwargs in ({"kl_reference_in": "reward", "kl_estimator": "full"}, {"kl_reference_in": "loss"}):
        model = KLPPO("MlpPolicy", "CartPole-v1", kl_reference=reference, **kwargs, **SMALL).learn(64)
        buffer = model.rollout_buffer
        assert buffer.ref_dist_params is not None
        old, ref = th.as_tensor(buffer.old_dist_params), th.as_tensor(buffer.ref_dist_params)
        exact = th.distributions.kl_divergence(
            th.distributions.Categorical(logits=old), th.distributions.Categorical(logits=ref)
        )
        np.testing.assert_allclose(buffer.reference_kl.reshape(-1), exact.numpy(), rtol=1e-5, atol=1e-7)  # float32
    with pytest.raises(ValueError, match="kl_estimator must be 'exact' with a kl_reference in the loss, got 'k1'"):
        KLPPO("MlpPolicy", "CartPole-v1", kl_reference=reference, kl_estimator="k1")
    with pytest.raises(ValueError, match=r"kl_estimator must be one of \('k1', 'abs', 'k2', 'k3', 'full'\), got 'exact'"):
        KLPPO("MlpPolicy", "CartPole-v1", kl_reference=reference, kl_reference_in="reward", kl_estimator="exact")


@pytest.mark.parametrize(("kl_target", "factor"), [(1e6, 1 - 0.2 * 8 / 80), (1e-9, 1 + 0.2 * 8 / 80)])
@pytest.mark.parametrize("place", ["loss", "reward"])
def test_proportional_controller_with_a_reference_counts_responses(place: str, kl_target: float, factor: float) -> None:
    # TRL's units: d = KL per response (summed over its tokens), n = responses per update. Two envs of 16 steps each,
    # responses of exactly 4 steps: n = 8 (not 32 steps). With a target far above (below) any KL the error is clipped to
    # -0.2 (+0.2): beta *= 1 -+ 0.2 * 8 / 80 -- per step it would have been 1 -+ 0.2 * 32 / 80.
    reference = ClipPPO("MlpPolicy", FixedLengthEpisodes(), seed=1).policy
    env = make_vec_env(FixedLengthEpisodes, n_envs=2, seed=0)
    model = AdaptiveKLPPO(
        "MlpPolicy", env, n_steps=16, batch_size=32, n_epochs=1, seed=0, kl_penalty="proportional", kl_coef=0.5,
        kl_target=kl_target, kl_horizon=80, kl_reference=reference, kl_reference_in=place,
    )  # fmt: skip
    logger = _recorded(model)
    model.learn(32)
    logger.flush_pending()
    assert model.rollout_buffer.responses() == 8
    # the controller's 0.5 * (1 + (-+0.2) * 8 / 80) is the same float64 arithmetic as 0.5 * factor
    assert model.kl_controller.value == 0.5 * factor
    # logged in both units: a response is 4 steps
    assert logger.history["train/kl_ref_per_response"][0] == pytest.approx(4 * logger.history["train/kl_ref"][0], rel=1e-12)
    assert logger.history["train/kl_ref"][0] > 0


def test_responses_are_the_episodes_that_ended_in_the_rollout() -> None:
    # 2 envs x 5 steps: env 0 ends episodes at its 2nd and 4th steps (its 3rd and 5th start new ones; its 1st start
    # is the previous rollout's end), env 1 only after the last step (the dones given to compute_returns_and_advantage).
    env = make_vec_env(FixedLengthEpisodes, n_envs=2, seed=0)
    model = KLPPO("MlpPolicy", env, n_steps=5, batch_size=10, seed=0)
    buffer = model.rollout_buffer
    buffer.reset()
    buffer.episode_starts[:] = np.array([[1, 0], [0, 0], [1, 0], [0, 0], [1, 0]], dtype=np.float32)
    buffer.compute_returns_and_advantage(th.zeros(2), np.array([0, 1]))
    assert buffer.responses() == 3
