"""The public extension points of the loss: registered surrogate terms and sampled KL estimators, with hand values."""

from __future__ import annotations

import math

import pytest
import torch as th

from sb3_ppo_variants import kl, losses


def test_spo_by_hand() -> None:
    # -mean(r A - |A| / (2 eps) (r - 1)^2), eps = 0.2: (r, A) = (1, 2): -2; (1.5, -1): 1.5 + 0.25 / 0.4 = 2.125;
    # (0.5, 4): -(2 - 4 * 0.25 / 0.4) = 0.5
    ratio = th.tensor([1.0, 1.5, 0.5], dtype=th.float64)
    advantages = th.tensor([2.0, -1.0, 4.0], dtype=th.float64)
    expected = (-2.0 + 2.125 + 0.5) / 3
    assert losses.spo_surrogate_loss(ratio, advantages, 0.2).item() == pytest.approx(expected, rel=1e-15)
    # ratio 1: no penalty, exactly the unclipped term
    ones = th.ones(3, dtype=th.float64)
    assert th.equal(losses.spo_surrogate_loss(ones, advantages, 0.2), losses.unclipped_surrogate_loss(ones, advantages))


def test_surrogates_take_a_member_axis() -> None:
    ratio = th.tensor([[1.0, 1.5], [0.5, 1.0]])
    advantages = th.tensor([[2.0, -1.0], [4.0, 1.0]])
    clip_range = th.tensor([[0.2], [0.1]])
    for name, fn in losses.SURROGATES.items():
        stacked = fn(ratio, advantages, clip_range)
        assert stacked.shape == (2,), name
        for k in range(2):
            assert th.equal(stacked[k], fn(ratio[k], advantages[k], clip_range[k, 0].item())), name


def test_register_surrogate_and_errors() -> None:
    def mine(ratio: th.Tensor, advantages: th.Tensor, clip_range: float) -> th.Tensor:
        return -(ratio * advantages).mean(dim=-1)

    try:
        assert losses.register_surrogate("test_mine", mine) is mine
        assert losses.get_surrogate("test_mine") is mine
        with pytest.raises(ValueError, match="already registered"):
            losses.register_surrogate("test_mine", lambda r, a, c: r)
        with pytest.raises(ValueError, match=r"surrogate must be one of.*'nope'"):
            losses.get_surrogate("nope")
        assert losses.get_surrogate(mine) is mine
    finally:
        losses.SURROGATES.pop("test_mine", None)


def test_surrogate_options_go_to_the_terms_that_name_them() -> None:
    settings = {"dual_clip": 2.0}
    assert losses.surrogate_options(losses.SURROGATES["dual_clip"], settings) == settings
    assert losses.surrogate_options(losses.SURROGATES["clipped"], settings) == {}


def test_reverse_sampled_estimators_by_hand() -> None:
    log_ratio = th.tensor([0.0, math.log(2.0), math.log(0.5)], dtype=th.float64)
    r = log_ratio.exp()
    # ratio 1 gives 0 for every estimator, both directions
    for direction, table in kl.SAMPLED_KL_ESTIMATORS.items():
        for name in table:
            assert kl.sampled_kl(log_ratio[:1], name, direction).item() == 0.0
    k1 = kl.sampled_kl(log_ratio, "k1", "reverse")
    assert k1.tolist() == pytest.approx([0.0, 2 * math.log(2.0), -0.5 * math.log(2.0)], rel=1e-15)
    k3 = kl.sampled_kl(log_ratio, "k3", "reverse")
    assert k3.tolist() == pytest.approx([0.0, 2 * math.log(2.0) - 1.0, -0.5 * math.log(2.0) + 0.5], rel=1e-15)
    assert (kl.sampled_kl(th.linspace(-3, 3, 101), "k3", "reverse") >= 0).all()
    assert th.equal(kl.sampled_kl(log_ratio, "k2", "reverse"), 0.5 * r * log_ratio**2)


def test_reverse_k1_and_k3_are_unbiased() -> None:
    # pi_old = (0.5, 0.3, 0.2), pi = (0.2, 0.3, 0.5): E_old[r log r] over the three actions = KL(pi || pi_old)
    old = th.tensor([0.5, 0.3, 0.2], dtype=th.float64)
    new = th.tensor([0.2, 0.3, 0.5], dtype=th.float64)
    reverse = (new * (new.log() - old.log())).sum()
    log_ratio = new.log() - old.log()
    for name in ("k1", "k3"):
        expectation = (old * kl.sampled_kl(log_ratio, name, "reverse")).sum()
        assert expectation.item() == pytest.approx(reverse.item(), rel=1e-12), name


def test_register_kl_estimator() -> None:
    def halved_k2(log_ratio: th.Tensor) -> th.Tensor:
        return 0.25 * log_ratio**2

    try:
        kl.register_kl_estimator("test_half_k2", halved_k2)
        assert "test_half_k2" in kl.KL_ESTIMATORS
        assert th.equal(kl.sampled_kl(th.tensor([2.0]), "test_half_k2"), th.tensor([1.0]))
        with pytest.raises(ValueError, match="other than 'exact'"):
            kl.register_kl_estimator("exact", halved_k2)
        with pytest.raises(ValueError, match="direction must be one of"):
            kl.register_kl_estimator("x", halved_k2, direction="sideways")
        with pytest.raises(ValueError, match=r"for a sampled reverse KL, got 'test_half_k2'"):
            kl.sampled_kl(th.tensor([2.0]), "test_half_k2", "reverse")
    finally:
        kl.SAMPLED_KL_ESTIMATORS["forward"].pop("test_half_k2", None)
    assert "test_half_k2" not in kl.KL_ESTIMATORS
