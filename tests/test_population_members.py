"""Every VariantPPO setting is a member setting: the general class with any switches, a named variant with switches that
do not contradict it, registered terms; the controllers move beta as a solo run's; what a population cannot hold fails."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch as th

from sb3_ppo_variants import VARIANTS, Population, VariantPPO, losses
from sb3_ppo_variants.kl import SAMPLED_KL_ESTIMATORS
from sb3_ppo_variants.population.members import resolve_members
from sb3_ppo_variants.population.trainer import MemberCoefficients

SMALL = dict(n_steps=64, n_envs=2, batch_size=32, n_epochs=2)
#: whether this version's VariantPPO takes kl_direction and registered surrogates (the drop-in issue adds them)
HOST_HAS_KL_DIRECTION = "kl_direction" in inspect.signature(VariantPPO.__init__).parameters


def _accepts_surrogate(name: str) -> bool:
    try:
        VariantPPO("MlpPolicy", None, surrogate=name, _init_setup_model=False)  # type: ignore[arg-type]
    except ValueError:
        return False
    return True


def test_variant_ppo_members_take_every_switch_and_named_variants_the_switches_they_do_not_fix() -> None:
    members = [
        dict(variant="variant_ppo", seed=0, surrogate="dual_clip", dual_clip=2.0, kl_penalty="adaptive", kl_target=0.01),
        dict(variant="variant_ppo", seed=1, surrogate="unclipped", kl_penalty="fixed", kl_coef=0.3, kl_estimator="k1"),
        dict(variant="variant_ppo", seed=2, kl_penalty="proportional", kl_coef=0.5, kl_target=0.02, kl_horizon=500),
        dict(variant="clip", seed=3, surrogate="clipped", kl_penalty="none"),  # repeats what ClipPPO fixes
        dict(variant="kl", seed=4, surrogate="unclipped", kl_estimator="k2"),
        dict(variant="clip_kl", seed=5, kl_penalty="proportional", kl_target=0.01),
    ]
    resolved = resolve_members(members, SMALL)
    templates = [m.template for m in resolved]
    assert [t.surrogate for t in templates] == ["dual_clip", "unclipped", "clipped", "clipped", "unclipped", "clipped"]
    assert [t.kl_penalty for t in templates] == ["adaptive", "fixed", "proportional", "none", "fixed", "proportional"]
    assert [t.kl_estimator for t in templates] == ["exact", "k1", "exact", "exact", "k2", "exact"]
    assert templates[0].dual_clip == 2.0 and templates[2].kl_controller.horizon == 500
    coefficients = MemberCoefficients.at(templates, 1.0, th.device("cpu"))
    forward = "forward"
    expected_terms = [("exact", forward), ("k1", forward), ("exact", forward), None, ("k2", forward), ("exact", forward)]
    assert coefficients.kl_term == expected_terms
    pop = Population("CartPole-v1", members, hyperparams=SMALL, device="cpu").learn(256)
    models = pop.models()
    assert [type(m) for m in models] == [
        VariantPPO,
        VariantPPO,
        VariantPPO,
        VARIANTS["clip"],
        VARIANTS["kl"],
        VARIANTS["clip_kl"],
    ]
    assert models[0].surrogate == "dual_clip" and models[0].dual_clip == 2.0 and models[4].kl_estimator == "k2"
    assert pop.logs[3]["train/kl_coef"] == 0.0 and "train/kl_penalty" not in pop.logs[3]


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (
            dict(variant="clip", surrogate="dual_clip"),
            r"surrogate='dual_clip' contradicts variant 'clip' \(ClipPPO has surrogate='clipped'\)",
        ),
        (
            dict(variant="clip", kl_penalty="fixed"),
            r"kl_penalty='fixed' contradicts variant 'clip' \(ClipPPO has kl_penalty='none'\)",
        ),
        (
            dict(variant="kl", surrogate="clipped"),
            r"surrogate='clipped' contradicts variant 'kl' \(KLPPO has surrogate='unclipped'\)",
        ),
        (dict(variant="kl", kl_penalty="adaptive"), r"kl_penalty='adaptive' contradicts variant 'kl'"),
        (
            dict(variant="adaptive_kl", kl_penalty="fixed"),
            r"kl_penalty='fixed' contradicts variant 'adaptive_kl' \(AdaptiveKLPPO has kl_penalty 'adaptive' or",
        ),
        (
            dict(variant="clip_kl", kl_penalty="none"),
            r"kl_penalty='none' contradicts variant 'clip_kl' \(ClipKLPPO has kl_penalty 'fixed' or",
        ),
        (dict(variant="variant_ppo", surrogate="nope"), r"surrogate must be one of"),
        (dict(variant="variant_ppo", kl_penalty="fixed", kl_estimator="k9"), r"kl_estimator must be one of"),
        (
            dict(variant="clip_kl", kl_reference="some/policy.zip"),
            r"kl_reference='some/policy.zip' is not supported in a population",
        ),
    ],
)
def test_contradicting_or_unsupported_member_settings_fail_naming_both(member: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Population("CartPole-v1", [dict(seed=0), {**member, "seed": 1}], hyperparams=SMALL, device="cpu")


def test_proportional_controller_moves_beta_by_the_formula_per_update() -> None:
    """kl_target 1e-12: the error is clipped at +0.2, so beta *= 1 + 0.2 * n / horizon after every update, with n = n_steps
    x n_envs = 128 steps per update (1.02x with horizon 1280) -- as a solo run's controller does for the same KL."""
    member = dict(variant="variant_ppo", seed=0, kl_penalty="proportional", kl_coef=0.5, kl_target=1e-12, kl_horizon=1280)
    pop = Population("CartPole-v1", [member], hyperparams=SMALL, device="cpu").learn(3 * 128)
    expected = 0.5
    for _ in range(3):
        expected *= 1.0 + 0.2 * 128 / 1280
    assert pop.kl_controllers[0].value == expected
    assert pop.logs[0]["train/kl_coef"] == pytest.approx(0.5 * 1.02**2)  # beta in force during the third update (float32)
    solo = VariantPPO(
        "MlpPolicy", "CartPole-v1", n_steps=128, kl_penalty="proportional", kl_coef=0.5, kl_target=1e-12, kl_horizon=1280
    )
    for _ in range(3):
        solo.kl_controller.end_update(pop.logs[0]["train/kl"], n_steps=solo.n_steps * solo.n_envs)
    assert solo.kl_controller.value == expected


def test_kl_direction_reverse_members_use_the_reverse_estimators_and_exact_kl() -> None:
    """KL(pi || pi_old): the member's penalty is the registered reverse estimator (or the exact reverse KL), and its
    controller sees the reverse rollout KL; a forward member beside it is unchanged."""
    reverse = dict(variant="variant_ppo", seed=0, kl_penalty="adaptive", kl_target=0.01, kl_direction="reverse")
    forward = dict(variant="variant_ppo", seed=0, kl_penalty="adaptive", kl_target=0.01)
    sampled = dict(variant="variant_ppo", seed=0, kl_penalty="fixed", kl_estimator="k3", kl_direction="reverse")
    resolved = resolve_members([reverse, forward, sampled], SMALL)
    assert [m.kl_direction for m in resolved] == ["reverse", "forward", "reverse"]
    coefficients = MemberCoefficients.at(
        [m.template for m in resolved], 1.0, th.device("cpu"), [m.kl_direction for m in resolved]
    )
    assert coefficients.kl_term == [("exact", "reverse"), ("exact", "forward"), ("k3", "reverse")]
    pop = Population("CartPole-v1", [reverse, forward, sampled], hyperparams=SMALL, device="cpu").learn(384)
    assert pop.logs[0]["train/kl"] > 0 and pop.logs[0]["train/kl_penalty"] != pop.logs[1]["train/kl_penalty"]
    with pytest.raises(ValueError, match="kl_direction must be one of"):
        resolve_members([{**forward, "kl_direction": "sideways"}], SMALL)
    # the reverse k3 estimator, by hand: r log r - (r - 1) at r = e is e - (e - 1) = 1
    assert SAMPLED_KL_ESTIMATORS["reverse"]["k3"](th.tensor([1.0])).item() == pytest.approx(1.0)


def test_a_registered_surrogate_is_a_member_setting(request: pytest.FixtureRequest) -> None:
    """A term registered through losses.register_surrogate trains as a member (looked up by name in the registry)."""

    def halved(ratio: th.Tensor, advantages: th.Tensor, clip_range: Any) -> th.Tensor:
        return 0.5 * losses.clipped_surrogate_loss(ratio, advantages, clip_range)

    losses.register_surrogate("halved_for_test", halved)
    request.addfinalizer(lambda: losses.SURROGATES.pop("halved_for_test", None))
    if not _accepts_surrogate("halved_for_test"):
        pytest.skip("this version's VariantPPO accepts only its built-in surrogate names (the drop-in issue opens them)")
    members = [dict(variant="variant_ppo", seed=0, surrogate="halved_for_test"), dict(variant="variant_ppo", seed=0)]
    one_minibatch = dict(n_steps=64, n_envs=2, batch_size=128, n_epochs=1)  # the same parameters, the same rollout
    pop = Population("CartPole-v1", members, hyperparams=one_minibatch, device="cpu").learn(128)
    assert pop.logs[0]["train/policy_gradient_loss"] == 0.5 * pop.logs[1]["train/policy_gradient_loss"] != 0
