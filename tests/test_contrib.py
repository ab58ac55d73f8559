"""The variants on sb3-contrib's MaskablePPO and RecurrentPPO: masked and padded KL, equality with the contrib
originals, the rollout KL under masks, save/load, argument checks, the registry and two learning runs."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from helpers import params, recorded
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete, InvalidActionEnvMultiBinary, InvalidActionEnvMultiDiscrete
from sb3_contrib.common.maskable.distributions import (
    MaskableBernoulliDistribution,
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
)
from sb3_contrib.common.maskable.evaluation import evaluate_policy as masked_evaluate_policy
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from torch.distributions import Categorical, kl_divergence

from sb3_ppo_variants import VARIANTS
from sb3_ppo_variants.algorithm import MaskableVariantPPO, RecurrentVariantPPO, VariantPPO
from sb3_ppo_variants.buffers import neutral_distribution_params
from sb3_ppo_variants.hyperparams import make_model
from sb3_ppo_variants.kl import distribution_params, exact_kl, masked_categorical_kl

LN = math.log

# --------------------------------------------------------------------------------------------------------------
# Masked exact KL, by hand
# --------------------------------------------------------------------------------------------------------------


def _masked(raw_logits: th.Tensor, masks: th.Tensor) -> MaskableCategoricalDistribution:
    dist = MaskableCategoricalDistribution(raw_logits.shape[-1]).proba_distribution(raw_logits)
    dist.apply_masking(masks)
    return dist


@pytest.mark.parametrize("dtype", [th.float32, th.bfloat16])
def test_masked_categorical_kl_by_hand(dtype: th.dtype) -> None:
    """p = (1/4, 1/2, [masked], 1/4), q = (1/3, 1/3, [masked], 1/3): KL = 1/2 ln(3/4) + 1/2 ln(3/2) = 1/2 ln(9/8);
    dKL/dz = q - p on the allowed logits, exactly 0 on the masked one (whose raw logits are far from the others)."""
    masks = th.tensor([[True, True, False, True]])
    old = _masked(th.tensor([[0.0, LN(2.0), 5.0, 0.0]], dtype=dtype), masks)
    new_raw = th.tensor([[0.0, 0.0, -3.0, 0.0]], dtype=dtype, requires_grad=True)
    new = _masked(new_raw, masks)
    old_params = distribution_params(old).detach()
    kl = exact_kl(old_params, new)
    assert kl.dtype == th.float32  # half precision is computed in float32
    # bfloat16 rounds the inputs (ln 2 -> 0.691): against the hand value within that, and against float64 on the
    # rounded inputs within float32's precision.
    assert kl.item() == pytest.approx(0.5 * LN(9 / 8), rel=1e-6 if dtype == th.float32 else 3e-2)
    allowed = masks[0]
    p = th.softmax(old_params[0][allowed].double(), 0)
    q = th.softmax(new_raw[0][allowed].detach().double(), 0)
    # float32 (ours) vs float64 softmax on the same rounded inputs: measured 2.8e-7 relative
    assert kl.item() == pytest.approx((p * (p.log() - q.log())).sum().item(), rel=1e-5)
    (grad,) = th.autograd.grad(kl.sum(), new_raw)
    assert grad[0, 2].item() == 0.0
    assert th.isfinite(grad).all()
    expected = th.tensor([1 / 3 - 1 / 4, 1 / 3 - 1 / 2, 0.0, 1 / 3 - 1 / 4])
    # autograd through softmax vs hand fractions: equal in float32 (measured 0); bfloat16's rounded inputs: 1.6e-3
    assert th.allclose(grad[0].float(), expected, atol=1e-6 if dtype == th.float32 else 5e-3)


def test_masked_categorical_kl_float16_masked_logits_are_inf_but_kl_is_finite() -> None:
    """In float16 sb3-contrib's -1e8 is -inf: the plain formula gives 0 * (-inf + inf) = NaN, the masked one 0."""
    masks = th.tensor([[True, False, True]])
    old = _masked(th.tensor([[0.5, 1.0, -0.5]], dtype=th.float16), masks)
    new_raw = th.tensor([[0.0, 2.0, 0.0]], dtype=th.float16, requires_grad=True)
    new = _masked(new_raw, masks)
    assert th.isinf(old.distribution.logits[0, 1])
    kl = exact_kl(distribution_params(old).detach(), new)
    p = th.softmax(th.tensor([0.5, -0.5]), 0)
    # float16 inputs and softmax (ours) vs float32 hand formula: measured 1.9e-4 absolute
    assert kl.item() == pytest.approx((p * (p.log() - math.log(0.5))).sum().item(), abs=2e-3)
    (grad,) = th.autograd.grad(kl.sum(), new_raw)
    assert th.isfinite(grad).all() and grad[0, 1].item() == 0.0


def test_masked_categorical_kl_without_masks_is_the_plain_kl() -> None:
    old, new = th.randn(5, 4), th.randn(5, 4)
    expected = kl_divergence(Categorical(logits=old), Categorical(logits=new))
    # our float32 formula vs torch's (other operations): measured 3.0e-7 absolute
    assert th.allclose(masked_categorical_kl(old, new, None), expected, atol=1e-6)


def _reference_masked_kl(old: th.Tensor, new: th.Tensor, masks: th.Tensor, dims: list[int]) -> th.Tensor:
    """Sum over sub-spaces of torch's KL between categoricals renormalised over the allowed actions only."""
    total = th.zeros(old.shape[0])
    for o, n, m in zip(old.split(dims, 1), new.split(dims, 1), masks.split(dims, 1), strict=True):
        for i in range(old.shape[0]):
            total[i] += kl_divergence(Categorical(logits=o[i][m[i]]), Categorical(logits=n[i][m[i]]))
    return total


@pytest.mark.parametrize(
    "dist, dims", [(MaskableMultiCategoricalDistribution([2, 3, 4]), [2, 3, 4]), (MaskableBernoulliDistribution(3), [2, 2, 2])]
)
def test_masked_multi_categorical_and_bernoulli_kl(dist, dims: list[int]) -> None:
    """A masked MultiBinary is a categorical over 2 per dimension: its stored width is 2 n, taken from the distribution."""
    th.manual_seed(0)
    batch, width = 6, sum(dims)
    masks = th.rand(batch, width) > 0.3
    for start in np.cumsum([0, *dims[:-1]]):  # keep one allowed action per sub-space
        masks[:, start] = True
    old_raw, new_raw = th.randn(batch, width), th.randn(batch, width)
    dist.proba_distribution(old_raw)
    dist.apply_masking(masks)
    old_params = distribution_params(dist).detach().clone()
    assert old_params.shape == (batch, width) == (batch, len(neutral_distribution_params(dist)))
    dist.proba_distribution(new_raw)
    dist.apply_masking(masks)
    # batched masked float32 KL vs torch's per-row KL over the allowed actions: measured 1.6e-7 absolute
    assert th.allclose(exact_kl(old_params, dist), _reference_masked_kl(old_raw, new_raw, masks, dims), atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Recurrent padding: neutral stored parameters, a finite KL and finite gradients
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "CartPole-v1"])
def test_recurrent_padding_is_neutral_and_gives_finite_kl_and_gradients(env_id: str) -> None:
    env = make_vec_env(env_id, n_envs=2, seed=0)
    model = VARIANTS["recurrent_kl"](
        "MlpLstmPolicy", env, n_steps=16, batch_size=24, n_epochs=1, seed=0, policy_kwargs=dict(lstm_hidden_size=8)
    )
    model.learn(32)
    buffer = model.rollout_buffer
    inds = np.arange(4, 26)  # from env 0's steps (12) into env 1's (10): two sequences of unequal length
    data = model._ordered_samples(inds)
    valid = model._valid(data)
    assert (~valid).sum() > 0, "the minibatch must contain padding"
    neutral = th.as_tensor(buffer.neutral_dist_params)
    assert th.equal(data.old_dist_params[~valid], neutral.expand(int((~valid).sum()), -1))
    assert th.equal(data.old_dist_params[valid], th.as_tensor(buffer.old_dist_params[inds]))
    if env_id == "Pendulum-v1":
        assert neutral.tolist() == [0.0, 1.0]  # mean 0, std 1: a zero std would give KL = inf

    model.policy.set_training_mode(True)
    model._evaluate(data, model._actions(data.actions))
    per_step = exact_kl(data.old_dist_params, model.policy.action_dist)
    assert th.isfinite(per_step).all()
    kl = per_step[valid].mean()
    model.policy.optimizer.zero_grad()
    kl.backward()
    grads = [p.grad for p in model.policy.parameters() if p.grad is not None]
    assert grads and all(th.isfinite(g).all() for g in grads)
    # The padded steps add exactly nothing: the penalty is the mean over the real steps alone.
    model._evaluate(data, model._actions(data.actions))
    real = exact_kl(data.old_dist_params, model.policy.action_dist)[valid]
    assert kl.item() == real.mean().item()


# --------------------------------------------------------------------------------------------------------------
# Equality with the contrib originals
# --------------------------------------------------------------------------------------------------------------


def _trained(cls, env_fn, policy: str, kwargs: dict, steps: int):
    model = cls(policy, env_fn(), seed=3, **kwargs)
    logger = recorded(model)
    model.learn(steps)
    logger.flush_pending()
    return params(model), logger.history


MASKABLE_CASES = {
    "discrete": (lambda: InvalidActionEnvDiscrete(dim=20, n_invalid_actions=10), {}),
    "multidiscrete_vf_clip": (lambda: InvalidActionEnvMultiDiscrete(dims=[4, 5], n_invalid_actions=3), {"clip_range_vf": 0.2}),
    "multibinary_no_adv_norm": (
        lambda: InvalidActionEnvMultiBinary(dims=4, n_invalid_actions=2),
        {"normalize_advantage": False, "target_kl": 0.01},
    ),
}


@pytest.mark.parametrize("case", list(MASKABLE_CASES))
def test_maskable_clip_equals_maskable_ppo(case: str) -> None:
    env_fn, extra = MASKABLE_CASES[case]
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=3, **extra)
    theirs, their_logs = _trained(MaskablePPO, env_fn, "MlpPolicy", kwargs, 128)
    ours, our_logs = _trained(VARIANTS["maskable_clip"], env_fn, "MlpPolicy", kwargs, 128)
    assert th.equal(theirs, ours)
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl", "train/loss"):
        assert their_logs[key] == our_logs[key], key


RECURRENT_CASES = {
    # 2 envs and a batch that does not divide the rollout: every minibatch has padding.
    "cartpole_2envs": (lambda: make_vec_env("CartPole-v1", n_envs=2, seed=1), {"batch_size": 24}),
    "pendulum_vf_clip_sde": (
        lambda: make_vec_env("Pendulum-v1", n_envs=2, seed=1),
        {"batch_size": 20, "clip_range_vf": 0.2, "use_sde": True, "sde_sample_freq": 4},
    ),
}


@pytest.mark.parametrize("case", list(RECURRENT_CASES))
def test_recurrent_clip_equals_recurrent_ppo(case: str) -> None:
    env_fn, extra = RECURRENT_CASES[case]
    kwargs = dict(n_steps=32, n_epochs=2, policy_kwargs=dict(lstm_hidden_size=8, net_arch=[16]), **extra)
    theirs, their_logs = _trained(RecurrentPPO, env_fn, "MlpLstmPolicy", kwargs, 128)
    ours, our_logs = _trained(VARIANTS["recurrent_clip"], env_fn, "MlpLstmPolicy", kwargs, 128)
    assert th.equal(theirs, ours)
    for key in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/approx_kl", "train/loss"):
        assert their_logs[key] == our_logs[key], key


# --------------------------------------------------------------------------------------------------------------
# The rollout KL (train/kl, the adaptive rule's d) under masks
# --------------------------------------------------------------------------------------------------------------


def test_maskable_train_kl_is_the_masked_distributions_kl() -> None:
    model = VARIANTS["maskable_adaptive_kl"](
        "MlpPolicy", InvalidActionEnvDiscrete(dim=10, n_invalid_actions=6), n_steps=64, batch_size=16, n_epochs=4, seed=0
    )
    logger = recorded(model)
    model.learn(64)
    logger.flush_pending()
    buffer = model.rollout_buffer
    obs = th.as_tensor(buffer.observations).float()
    masks = th.as_tensor(buffer.action_masks) > 0.5
    with th.no_grad():
        new = model.policy.get_distribution(obs, action_masks=masks.numpy()).distribution.logits
    old = th.as_tensor(buffer.old_dist_params)
    expected = kl_divergence(Categorical(logits=old), Categorical(logits=new)).mean().item()
    unmasked = model.policy.get_distribution(obs).distribution.logits.detach()
    # a KL near 8e-5 from O(1) float32 log-probabilities, ours vs torch's formula: measured 2.3e-5 relative
    assert logger.history["train/kl"][-1] == pytest.approx(expected, rel=1e-4)
    # Evaluated without the masks, the "KL" would be another number entirely.
    assert kl_divergence(Categorical(logits=old), Categorical(logits=unmasked)).mean().item() > 10 * expected


# --------------------------------------------------------------------------------------------------------------
# Save / load, argument checks, registry
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["maskable_adaptive_kl", "recurrent_adaptive_kl"])
def test_save_load_keeps_parameters_predictions_and_adapted_beta(tmp_path, name: str) -> None:
    cls = VARIANTS[name]
    if name.startswith("maskable"):
        env, policy, extra = InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4), "MlpPolicy", {}
    else:
        env, policy, extra = "CartPole-v1", "MlpLstmPolicy", {"policy_kwargs": dict(lstm_hidden_size=8)}
    model = cls(policy, env, n_steps=64, batch_size=32, n_epochs=2, seed=0, kl_target=1e-4, **extra)
    model.learn(128)
    beta = model.kl_controller.value
    assert beta != 1.0, "the adaptive beta must have moved for this test to mean something"
    obs = model.get_env().reset()
    action_masks = np.array([env.action_masks()]) if name.startswith("maskable") else None
    kwargs = {"action_masks": action_masks} if action_masks is not None else {}
    actions, state = model.predict(obs, deterministic=True, **kwargs)
    model.save(tmp_path / "model.zip")

    loaded = cls.load(tmp_path / "model.zip", env=model.get_env())
    assert type(loaded) is cls
    assert th.equal(params(loaded), params(model))
    assert loaded.kl_controller.value == beta
    new_actions, new_state = loaded.predict(obs, deterministic=True, **kwargs)
    np.testing.assert_array_equal(new_actions, actions)
    if state is not None:
        np.testing.assert_array_equal(new_state[0], state[0])
    loaded.learn(64, reset_num_timesteps=False)  # and it trains on
    assert loaded.kl_controller.value != beta


def test_bad_arguments_fail_before_training() -> None:
    env = InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4)
    with pytest.raises(ValueError, match=r"kl_estimator must be one of .* got 'k4'"):
        VARIANTS["maskable_kl"]("MlpPolicy", env, kl_estimator="k4")
    with pytest.raises(ValueError, match=r"surrogate must be one of .* got 'clip'"):
        RecurrentVariantPPO("MlpLstmPolicy", "CartPole-v1", surrogate="clip")
    with pytest.raises(ValueError, match="ent_coef"):
        VARIANTS["recurrent_clip"]("MlpLstmPolicy", "CartPole-v1", ent_coef="lin_x")
    with pytest.raises(TypeError, match="use_sde"):  # MaskablePPO takes no use_sde: the host's arguments are checked
        MaskableVariantPPO("MlpPolicy", env, use_sde=True)
    with pytest.raises(TypeError, match="rollout_buffer_class"):  # nor does RecurrentPPO take a buffer class
        VARIANTS["recurrent_kl"]("MlpLstmPolicy", "CartPole-v1", rollout_buffer_class=None)


def test_positional_host_arguments_and_schedules() -> None:
    env = InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4)
    model = MaskableVariantPPO("MlpPolicy", env, "lin_1e-3", 32, ent_coef="lin_0.01")
    # the schedules' own arithmetic: 0 + 1e-3 * 1.0 and 0 + 0.01 * 0.5 are exact
    assert model.learning_rate(1.0) == 1e-3 and model.n_steps == 32
    assert model.ent_coef(0.5) == 0.005


@pytest.mark.parametrize("name", ["recurrent_kl", "recurrent_ppo"])
def test_make_model_defaults_to_the_hosts_policy(name: str) -> None:
    """rl-zoo3 entries name no policy for classic-control envs: a recurrent host gets its MlpLstmPolicy."""
    model = make_model(name, "CartPole-v1", {"n_steps": 16, "batch_size": 16}, seed=0)
    assert type(model.policy).__name__ == "RecurrentActorCriticPolicy"
    model.learn(16)


HOSTS = {"maskable": (MaskableVariantPPO, MaskablePPO), "recurrent": (RecurrentVariantPPO, RecurrentPPO)}


def test_registry() -> None:
    plain = {name: cls for name, cls in VARIANTS.items() if issubclass(cls, VariantPPO)}
    assert list(plain) == ["clip", "kl", "adaptive_kl", "clip_kl"]
    for prefix, (base, host) in HOSTS.items():
        names = [name for name, cls in VARIANTS.items() if issubclass(cls, base)]
        assert names == [f"{prefix}_{p}" for p in plain]
        for name in names:
            cls = VARIANTS[name]
            assert issubclass(cls, host)
            # the plain variant whose terms (and search space) it shares
            assert cls.variant == name.removeprefix(f"{prefix}_") and plain[cls.variant].variant == cls.variant


# --------------------------------------------------------------------------------------------------------------
# Learning
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_maskable_kl_learns_invalid_action_env() -> None:
    """The fixed KL penalty without clipping, on sb3-contrib's test env. sb3-contrib's test_identity (ported, for
    every variant) asks >= 90 of 100 after one update of 2048 steps, where a random policy scores ~6 and an unmasked
    one ~30; all four variants and MaskablePPO score 91.05-91.4 there. Here, 8 updates: 94.95 in one probe."""
    env = InvalidActionEnvDiscrete(dim=70, n_invalid_actions=55)
    model = VARIANTS["maskable_kl"]("MlpPolicy", env, gamma=0.1, seed=32, n_steps=512, batch_size=64, n_epochs=4)
    model.learn(4096)
    mean_reward, _ = masked_evaluate_policy(model, env, n_eval_episodes=20, warn=False)
    assert mean_reward >= 90


class CueRecallEnv(gym.Env):
    """A memory task: a cue (+1 or -1) is shown at the first step only, then zeros; at the last of ``length``
    steps, the action that matches the cue is rewarded with 1. A memoryless policy scores 0.5 on average."""

    def __init__(self, length: int = 5):
        self.length = length
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.cue = 0, int(self.np_random.integers(2))
        return np.array([2.0 * self.cue - 1.0], dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        done = self.t == self.length
        reward = float(done and int(action) == self.cue)
        return np.zeros(1, dtype=np.float32), reward, done, False, {}


@pytest.mark.slow
def test_recurrent_clip_kl_learns_a_memory_task() -> None:
    env = make_vec_env(CueRecallEnv, n_envs=4, seed=0)
    model = VARIANTS["recurrent_clip_kl"](
        "MlpLstmPolicy",
        env,
        n_steps=64,
        batch_size=64,
        n_epochs=4,
        learning_rate=3e-3,
        kl_coef=0.1,
        seed=0,
        policy_kwargs=dict(lstm_hidden_size=16, net_arch=[]),
    )
    model.learn(4096)  # solved (1.0 over 50 episodes) from 2048 steps on, in one probe
    mean_reward, _ = evaluate_policy(model, make_vec_env(CueRecallEnv, n_envs=1, seed=100), n_eval_episodes=50)
    assert mean_reward >= 0.9
