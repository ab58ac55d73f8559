"""The mathematics as pure functions: hand-computed values, torch.distributions, and the sampled estimators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import make_proba_distribution
from torch.distributions import Bernoulli, Categorical, Normal, kl_divergence

from sb3_ppo_variants import losses
from sb3_ppo_variants.kl import (
    bernoulli_kl,
    categorical_kl,
    diag_gaussian_kl,
    distribution_param_dim,
    distribution_params,
    exact_kl,
    sampled_kl,
)


def test_categorical_kl_hand_computed() -> None:
    p = th.tensor([[0.5, 0.5]])
    q = th.tensor([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    # float32 (ours) vs float64 (hand formula): measured 1.6e-7 relative
    assert categorical_kl(p.log(), q.log()).item() == pytest.approx(expected, rel=1e-6)
    # logits are unnormalised: adding a constant changes nothing; identical distributions give 0
    assert categorical_kl(p.log() + 3.0, q.log() - 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert categorical_kl(q.log(), q.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_diag_gaussian_kl_hand_computed() -> None:
    # KL(N(0, 1) || N(1, 2)) = log 2 + (1 + 1) / 8 - 1/2 per dimension
    one = diag_gaussian_kl(th.zeros(1, 1), th.ones(1, 1), th.ones(1, 1), 2 * th.ones(1, 1))
    assert one.item() == pytest.approx(math.log(2) + 2 / 8 - 0.5, rel=1e-6)
    three = diag_gaussian_kl(th.zeros(1, 3), th.ones(1, 3), th.ones(1, 3), 2 * th.ones(1, 3))
    # three equal float32 terms summed (x + x is exact, + x rounds once) equal 3 * x rounded once
    assert th.equal(three, 3 * one)


def test_bernoulli_kl_hand_computed() -> None:
    p, q = 0.2, 0.6
    expected = p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
    logit = lambda x: math.log(x / (1 - x))  # noqa: E731
    value = bernoulli_kl(th.tensor([[logit(p), logit(p)]]), th.tensor([[logit(q), logit(p)]]))
    assert value.item() == pytest.approx(expected, rel=1e-5)


def _random_sb3_distribution(space: spaces.Space, batch: int, generator: th.Generator, use_sde: bool = False):
    dist = make_proba_distribution(space, use_sde=use_sde)
    if isinstance(space, spaces.Discrete):
        return dist.proba_distribution(th.randn(batch, int(space.n), generator=generator))
    if isinstance(space, spaces.MultiDiscrete):
        return dist.proba_distribution(th.randn(batch, int(space.nvec.sum()), generator=generator))
    if isinstance(space, spaces.MultiBinary):
        return dist.proba_distribution(th.randn(batch, int(space.n), generator=generator))
    dim = int(np.prod(space.shape))
    mean = th.randn(batch, dim, generator=generator)
    if use_sde:
        latent = th.randn(batch, 4, generator=generator)
        dist.proba_distribution_net(latent_dim=4)  # builds the noise matrix's shape
        log_std = 0.3 * th.randn(4, dim, generator=generator)
        dist.sample_weights(log_std)
        return dist.proba_distribution(mean, log_std, latent)
    return dist.proba_distribution(mean, 0.5 * th.randn(dim, generator=generator))


def _torch_kl(space: spaces.Space, old, new) -> th.Tensor:
    if isinstance(space, spaces.Discrete):
        return kl_divergence(Categorical(logits=old.distribution.logits), Categorical(logits=new.distribution.logits))
    if isinstance(space, spaces.MultiDiscrete):
        return sum(
            kl_divergence(Categorical(logits=o.logits), Categorical(logits=n.logits))
            for o, n in zip(old.distribution, new.distribution)
        )
    if isinstance(space, spaces.MultiBinary):
        return kl_divergence(Bernoulli(logits=old.distribution.logits), Bernoulli(logits=new.distribution.logits)).sum(-1)
    o, n = old.distribution, new.distribution
    return kl_divergence(Normal(o.loc, o.scale), Normal(n.loc, n.scale)).sum(-1)


SPACES = {
    "discrete": (spaces.Discrete(5), False),
    "multidiscrete": (spaces.MultiDiscrete([3, 2, 4]), False),
    "multibinary": (spaces.MultiBinary(3), False),
    "box": (spaces.Box(-1, 1, (2,)), False),
    "box_sde": (spaces.Box(-1, 1, (2,)), True),
}


@pytest.mark.parametrize("name", list(SPACES))
def test_exact_kl_matches_torch_distributions(name: str) -> None:
    space, use_sde = SPACES[name]
    generator = th.Generator().manual_seed(0)
    old = _random_sb3_distribution(space, 16, generator, use_sde)
    params = distribution_params(old).clone()
    assert params.shape == (16, distribution_param_dim(space))
    new = _random_sb3_distribution(space, 16, generator, use_sde)
    expected = _torch_kl(space, old, new)
    actual = exact_kl(params, new)
    assert actual.shape == (16,)
    # our closed forms vs torch.distributions' kl_divergence (other formulas, float32): measured 4.8e-7 abs, 4.0e-7 rel
    assert th.allclose(actual, expected, rtol=1e-5, atol=1e-6)
    assert (actual > 0).all()
    # a distribution against its own parameters: every term cancels exactly
    assert th.equal(exact_kl(distribution_params(new), new), th.zeros(16))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_sampled_estimators_approach_exact_kl(estimator: str) -> None:
    generator = th.Generator().manual_seed(1)
    old, new = Normal(th.tensor(0.0), th.tensor(1.0)), Normal(th.tensor(0.1), th.tensor(1.0))
    exact = kl_divergence(old, new).item()  # 0.005
    actions = old.loc + old.scale * th.randn(400_000, generator=generator)
    log_ratio = new.log_prob(actions) - old.log_prob(actions)
    estimate = sampled_kl(log_ratio, estimator).mean().item()
    # k2 is biased, but for close distributions the bias is third order (Schulman's note)
    assert estimate == pytest.approx(exact, rel=0.1)


def test_sampled_estimators_hand_values_and_signs() -> None:
    log_ratio = th.tensor([0.0, math.log(2.0), -math.log(2.0)])
    assert th.equal(sampled_kl(log_ratio, "k1"), -log_ratio)
    assert th.equal(sampled_kl(log_ratio, "k2"), 0.5 * log_ratio**2)
    # hand values in float64 rounded to float32 vs torch's float32 exp/log: equal here, allclose's default
    # rtol=1e-5 allows for exp's last-bit rounding on another platform
    assert th.allclose(sampled_kl(log_ratio, "k3"), th.tensor([0.0, 1.0 - math.log(2.0), -0.5 + math.log(2.0)]))
    assert (sampled_kl(th.linspace(-3, 3, 101), "k3") >= 0).all()
    with pytest.raises(ValueError, match="kl_estimator"):
        sampled_kl(log_ratio, "exact")


def test_clipped_surrogate_hand_computed() -> None:
    ratio = th.tensor([1.0, 1.5, 0.5, 1.5, 0.5])
    advantages = th.tensor([2.0, 1.0, 1.0, -1.0, -1.0])
    # per sample min(rA, clip(r)A), eps=0.2: 2, min(1.5, 1.2)=1.2, min(0.5, 0.8)=0.5,
    # min(-1.5, -1.2)=-1.5, min(-0.5, -0.8)=-0.8
    expected = -(2.0 + 1.2 + 0.5 - 1.5 - 0.8) / 5
    assert losses.clipped_surrogate_loss(ratio, advantages, 0.2).item() == pytest.approx(expected)
    # float32 mean vs float64 hand value (0.8 has no exact float32 form): measured 1.5e-8 relative
    assert losses.unclipped_surrogate_loss(ratio, advantages).item() == pytest.approx(-(2 + 1.5 + 0.5 - 1.5 - 0.5) / 5)
    assert losses.clip_fraction(ratio, 0.2).item() == pytest.approx(4 / 5)
    # a ratio of exactly 1 gives the plain advantage, with or without clipping, and zero KL
    ones = th.ones(5)
    assert losses.clipped_surrogate_loss(ones, advantages, 0.2).item() == pytest.approx(-advantages.mean().item())
    assert losses.clip_fraction(ones, 0.2).item() == 0.0
    assert sampled_kl(th.zeros(5), "k3").abs().max().item() == 0.0


def test_dual_clip_surrogate_hand_computed() -> None:
    ratio = th.tensor([4.0, 0.5, 1.5])
    advantages = th.tensor([-1.0, -1.0, 1.0])
    # r=4, A=-1: max(min(-4, -1.2), 3 * -1) = -3; r=0.5, A=-1: max(-0.8, -3) = -0.8; r=1.5, A=1: min(1.5, 1.2) = 1.2
    assert losses.dual_clip_surrogate_loss(ratio, advantages, 0.2, 3.0).item() == pytest.approx(-(-3 - 0.8 + 1.2) / 3)
    assert losses.clipped_surrogate_loss(ratio, advantages, 0.2).item() == pytest.approx(-(-4 - 0.8 + 1.2) / 3)
    # where the ratio stays below c on negative advantages, dual clip is plain clipping
    assert losses.dual_clip_surrogate_loss(ratio, advantages, 0.2, 5.0).item() == pytest.approx(
        losses.clipped_surrogate_loss(ratio, advantages, 0.2).item()
    )


def test_clipped_surrogate_gradient_vanishes_outside_the_trust_region() -> None:
    ratio = th.tensor([1.5, 0.5], requires_grad=True)
    losses.clipped_surrogate_loss(ratio, th.tensor([1.0, -1.0]), 0.2).backward()
    assert th.equal(ratio.grad, th.zeros(2))


def test_value_and_entropy_losses_hand_computed() -> None:
    values, old, returns = th.tensor([1.0, 3.0]), th.tensor([0.0, 0.0]), th.tensor([2.0, 2.0])
    # small integers: every float32 operation is exact
    assert losses.value_loss(values, old, returns).item() == (1 + 1) / 2
    # clipped at +-0.5 around the old value: predictions 0.5, 0.5
    assert losses.value_loss(values, old, returns, clip_range_vf=0.5).item() == pytest.approx((1.5**2 + 1.5**2) / 2)
    assert losses.entropy_loss(th.tensor([0.5, 1.5]), th.zeros(2)).item() == pytest.approx(-1.0)
    assert losses.entropy_loss(None, th.tensor([-1.0, -3.0])).item() == -2.0


def test_categorical_kl_upcasts_half_precision_logits() -> None:
    generator = th.Generator().manual_seed(0)
    p_logits = (th.randn(64, 16, generator=generator) * 3).to(th.bfloat16)
    q_logits = (p_logits.float() + 0.05 * th.randn(64, 16, generator=generator)).to(th.bfloat16)
    exact = categorical_kl(p_logits.double(), q_logits.double())  # the same bfloat16 values, in float64
    kl = categorical_kl(p_logits, q_logits)
    assert kl.dtype == th.float32
    # computed in float32 from the same inputs: float32 rounding of log-probabilities of size ~10 (about 1e-6 each)
    assert th.allclose(kl.double(), exact, rtol=1e-3, atol=1e-5)
    # in bfloat16 itself the KL, a difference of log-probabilities, keeps about two digits
    in_bfloat16 = (th.log_softmax(p_logits, -1).exp() * (th.log_softmax(p_logits, -1) - th.log_softmax(q_logits, -1))).sum(-1)
    assert not th.allclose(in_bfloat16.double(), exact, rtol=1e-3, atol=1e-5)


def test_diag_gaussian_kl_takes_the_log_of_each_std() -> None:
    # KL(N(0, s0) || N(0, s1)) = log(s1 / s0) + s0^2 / (2 s1^2) - 1/2, with s0 = 1e-20, s1 = 1e20 in float32:
    # (s0 / s1)^2 = 1e-80 underflows to 0, and log(0) would make the KL infinite; 2 (log s0 - log s1) does not.
    kl = diag_gaussian_kl(th.zeros(1, 1), th.full((1, 1), 1e-20), th.zeros(1, 1), th.full((1, 1), 1e20))
    assert kl.item() == pytest.approx(40 * math.log(10) - 0.5, rel=1e-6)  # float32 logs of 1e+-20: ~1e-7 relative
