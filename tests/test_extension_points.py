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
    # rel 1e-15: the hand value sums the three terms in another order than the tensor mean (float64 rounding)
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
    # rel 1e-15 below: math.log / exp in Python against torch's float64 exp of a log (last-bit rounding)
    k1 = kl.sampled_kl(log_ratio, "k1", "reverse")
    assert k1.tolist() == pytest.approx([0.0, 2 * math.log(2.0), -0.5 * math.log(2.0)], rel=1e-15)
    k3 = kl.sampled_kl(log_ratio, "k3", "reverse")
    # same rounding source as k1 above
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
        # rel 1e-12: two float64 sums of different terms that are equal in exact arithmetic
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


# --- Through the algorithms: the public route only ----------------------------------------------------------------

SMALL = {"n_steps": 64, "batch_size": 32, "n_epochs": 3, "learning_rate": 3e-3, "seed": 3}


def _trained(cls: type, env_id: str = "CartPole-v1", **kwargs: object) -> th.Tensor:
    model = cls("MlpPolicy", env_id, **{**SMALL, **kwargs}).learn(128)
    return th.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()


def _my_clipped(ratio: th.Tensor, advantages: th.Tensor, clip_range: float) -> th.Tensor:
    # a user's copy of the clipped surrogate, written from the paper (the operations of SB3's PPO.train)
    unclipped = advantages * ratio
    clipped = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return -th.min(unclipped, clipped).mean(dim=-1)


def _my_dual_clip(ratio: th.Tensor, advantages: th.Tensor, clip_range: float, dual_clip: float = 3.0) -> th.Tensor:
    clipped = th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range))
    return -th.where(advantages < 0, th.max(clipped, dual_clip * advantages), clipped).mean(dim=-1)


@pytest.mark.parametrize("host", ["VariantPPO", "MaskableVariantPPO", "RecurrentVariantPPO"])
def test_a_user_registered_copy_of_the_clipped_term_trains_to_the_same_parameters(host: str) -> None:
    # the general classes take every switch (a named variant refuses one that contradicts its name)
    from sb3_contrib.common.envs import InvalidActionEnvDiscrete

    import sb3_ppo_variants

    cls = getattr(sb3_ppo_variants, host)
    policy = "MlpLstmPolicy" if host.startswith("Recurrent") else "MlpPolicy"

    def env() -> object:
        return InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4) if host.startswith("Maskable") else "CartPole-v1"

    losses.register_surrogate("test_my_clipped", _my_clipped)
    try:
        built_in = cls(policy, env(), surrogate="clipped", **SMALL).learn(128)
        mine = cls(policy, env(), surrogate="test_my_clipped", **SMALL).learn(128)
        by_function = cls(policy, env(), surrogate=_my_clipped, **SMALL).learn(128)
    finally:
        losses.SURROGATES.pop("test_my_clipped")
    vectors = [th.nn.utils.parameters_to_vector(m.policy.parameters()) for m in (built_in, mine, by_function)]
    assert th.equal(vectors[0], vectors[1]) and th.equal(vectors[0], vectors[2])


def test_a_user_term_gets_its_own_settings_by_keyword() -> None:
    from sb3_ppo_variants import VariantPPO

    built_in = _trained(VariantPPO, surrogate="dual_clip", dual_clip=1.05)
    mine = _trained(VariantPPO, surrogate=_my_dual_clip, dual_clip=1.05)
    assert th.equal(built_in, mine)
    assert not th.equal(mine, _trained(VariantPPO, surrogate=_my_dual_clip))  # its default 3.0 would not bind here


def test_spo_by_name_trains_and_differs_from_the_clipped_term() -> None:
    from sb3_ppo_variants import ClipPPO, VariantPPO

    spo = _trained(VariantPPO, surrogate="spo")
    assert th.isfinite(spo).all()
    assert not th.equal(spo, _trained(ClipPPO))


def test_reverse_exact_kl_by_hand() -> None:
    from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution

    # pi_old = (0.5, 0.5), pi = (0.25, 0.75): KL(pi || pi_old) = 0.25 log(0.5) + 0.75 log(1.5)
    old = th.tensor([[0.5, 0.5]], dtype=th.float64).log()
    dist = CategoricalDistribution(2).proba_distribution(th.tensor([[0.25, 0.75]], dtype=th.float64).log())
    reverse = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    forward = 0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75)
    # Python's float64 formula vs torch's float64 log_softmax and sums: measured 8.5e-16 relative
    assert kl.exact_kl(old, dist, "reverse").item() == pytest.approx(reverse, rel=1e-14, abs=0)
    assert kl.exact_kl(old, dist).item() == pytest.approx(forward, rel=1e-14, abs=0)
    assert kl.exact_kl(old, CategoricalDistribution(2).proba_distribution(old), "reverse").item() == 0.0
    # Gaussians: KL(N(1, 2) || N(0, 1)) = log(1/2) + (4 + 1) / 2 - 1/2
    gaussian = DiagGaussianDistribution(1).proba_distribution(th.ones(1, 1, dtype=th.float64), th.full((1, 1), math.log(2.0)))
    old_gaussian = th.tensor([[0.0, 1.0]], dtype=th.float64)
    # Python's float64 formula vs torch's float64 log and divisions: equal here (measured 0)
    assert kl.exact_kl(old_gaussian, gaussian, "reverse").item() == pytest.approx(math.log(0.5) + 2.0, rel=1e-14, abs=0)
    with pytest.raises(ValueError, match="kl_direction must be one of"):
        kl.exact_kl(old, dist, "sideways")


@pytest.mark.parametrize("estimator", ["exact", "k3"])
def test_kl_direction_reverse_penalises_the_reverse_kl(estimator: str) -> None:
    from helpers import recorded

    from sb3_ppo_variants import KLPPO

    penalties = {}
    for direction in ("forward", "reverse"):
        model = KLPPO("MlpPolicy", "Pendulum-v1", kl_estimator=estimator, kl_direction=direction, **SMALL)
        logger = recorded(model)
        model.learn(128)
        logger.flush_pending()
        penalties[direction] = logger.history["train/kl_penalty"]
        assert model.kl_direction == direction
        # train/kl is the exact KL of the chosen direction, >= 0
        assert all(value >= 0 for value in logger.history["train/kl"])
    # the first minibatch of each run is identical (ratio 1 gives 0 in both directions); later ones differ
    assert penalties["forward"] != penalties["reverse"]


def test_kl_direction_with_a_reference_is_refused(tmp_path) -> None:
    from sb3_ppo_variants import ClipKLPPO, ClipPPO

    reference = ClipPPO("MlpPolicy", "CartPole-v1").policy
    with pytest.raises(ValueError, match="kl_direction='reverse' applies to the KL to pi_old"):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_reference=reference, kl_direction="reverse")
