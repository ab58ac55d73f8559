"""The shared training loop: equality with SB3's PPO, the KL controllers, logging, schedules, bad input."""

from __future__ import annotations

import inspect
import itertools
import math
from typing import Any

import pytest
import torch as th
from helpers import PLAIN_VARIANTS
from helpers import params as _params
from helpers import recorded as _recorded
from sb3_contrib import MaskablePPO, RecurrentPPO
from sb3_contrib.common.envs import InvalidActionEnvDiscrete
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_ppo_variants import (
    KLPPO,
    VARIANTS,
    AdaptiveKLController,
    AdaptiveKLPPO,
    ClipKLPPO,
    ClipPPO,
    FixedKLController,
    KLController,
    MaskableVariantPPO,
    NonFiniteLossError,
    RecurrentVariantPPO,
    VariantPPO,
)
from sb3_ppo_variants.schedules import LinearSchedule
from sb3_ppo_variants.settings import VariantSettings


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_clip_ppo_equals_sb3_ppo(env_id: str) -> None:
    kwargs = dict(n_steps=128, batch_size=32, n_epochs=3, seed=7, device="cpu")
    # Build and train one model completely before the next: SB3 seeds the global RNGs at construction.
    reference = _params(PPO("MlpPolicy", env_id, **kwargs).learn(512))
    ours = _params(ClipPPO("MlpPolicy", env_id, **kwargs).learn(512))
    assert th.equal(ours, reference)
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
    ({"kl_target": 0.0}, ValueError, "kl_target must be a float > 0"),
    ({"kl_target": -0.01}, ValueError, "kl_target must be a float > 0"),
    ({"kl_target": "0.01"}, TypeError, "kl_target must be a float"),
    ({"kl_estimator": "k4"}, ValueError, r"kl_estimator must be one of \('exact', 'k1', 'k2', 'k3'.*\), got 'k4'"),
    ({"surrogate": "dual"}, ValueError, r"surrogate must be one of the registered names \[.*'spo'.*\] or a function"),
    ({"kl_direction": "backward"}, ValueError, r"kl_direction must be one of \('forward', 'reverse'\), got 'backward'"),
    ({"kl_penalty": "fixed", "kl_estimator": "abs", "kl_direction": "reverse"}, ValueError, "for a sampled reverse KL"),
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


def test_named_variants_fix_their_terms_by_defaults() -> None:
    # a named variant is its host base with other defaults: the same signature; a value that contradicts its name is
    # a ValueError naming both (ClipPPO running SPO would be a surprise), what its name allows is settable
    assert (ClipPPO("MlpPolicy", "CartPole-v1").surrogate, ClipPPO("MlpPolicy", "CartPole-v1").kl_penalty) == (
        "clipped",
        "none",
    )
    with pytest.raises(ValueError, match=r"surrogate='spo' contradicts variant 'clip' \(ClipPPO has surrogate='clipped'\)"):
        ClipPPO("MlpPolicy", "CartPole-v1", surrogate="spo")
    with pytest.raises(
        ValueError, match=r"kl_penalty='none' contradicts variant 'clip_kl' \(ClipKLPPO has kl_penalty 'fixed'"
    ):
        ClipKLPPO("MlpPolicy", "CartPole-v1", kl_penalty="none")
    with pytest.raises(ValueError, match=r"kl_penalty='fixed' contradicts variant 'adaptive_kl'"):
        AdaptiveKLPPO("MlpPolicy", "CartPole-v1", kl_penalty="fixed")
    assert AdaptiveKLPPO("MlpPolicy", "CartPole-v1", kl_penalty="proportional").kl_penalty == "proportional"
    assert VariantPPO("MlpPolicy", "CartPole-v1", surrogate="spo").surrogate == "spo"
    assert ClipKLPPO("MlpPolicy", "CartPole-v1", kl_target=0.02).kl_penalty == "adaptive"
    assert ClipKLPPO("MlpPolicy", "CartPole-v1").kl_penalty == "fixed"
    assert ClipKLPPO("MlpPolicy", "CartPole-v1").kl_coef == 0.2
    assert AdaptiveKLPPO("MlpPolicy", "CartPole-v1").kl_target == 0.01


def _host(cls: type) -> type:
    return next(base for base in cls.__mro__ if base in (PPO, MaskablePPO, RecurrentPPO))


ALL_CLASSES = [*VARIANTS.values(), VariantPPO, MaskableVariantPPO, RecurrentVariantPPO]


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_signature_is_the_hosts_then_our_settings_keyword_only(cls: type) -> None:
    ours = list(inspect.signature(cls).parameters.values())
    theirs = list(inspect.signature(_host(cls)).parameters.values())
    assert [(p.name, p.kind, p.default) for p in ours[: len(theirs)]] == [(p.name, p.kind, p.default) for p in theirs]
    settings = ours[len(theirs) :]
    assert [p.name for p in settings] == list(VariantSettings.names())
    assert all(p.kind is p.KEYWORD_ONLY for p in settings)
    # the signature shows the class's own defaults
    defaults = {**VariantSettings.defaults(), **cls.defaults}
    assert {p.name: p.default for p in settings} == defaults


def test_a_positional_learning_rate_is_the_learning_rate() -> None:
    # the named variants used to take kl_coef in third place, silently
    model = KLPPO("MlpPolicy", "CartPole-v1", 1e-3)
    assert (model.learning_rate, model.kl_coef) == (1e-3, 1.0)
    assert ClipPPO("MlpPolicy", "CartPole-v1", 1e-3, 64).n_steps == 64


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_positional_call_trains_to_the_keyword_calls_parameters(name: str) -> None:
    cls = VARIANTS[name]
    policy = "MlpLstmPolicy" if issubclass(cls, RecurrentPPO) else "MlpPolicy"

    def env() -> Any:
        return InvalidActionEnvDiscrete(dim=10, n_invalid_actions=4) if issubclass(cls, MaskablePPO) else "CartPole-v1"

    chosen = {"learning_rate": 1e-3, "n_steps": 32, "batch_size": 16, "n_epochs": 2, "ent_coef": 0.01, "seed": 4}
    host_parameters = list(inspect.signature(_host(cls)).parameters.values())[2:]
    positional = [chosen.get(p.name, p.default) for p in host_parameters]
    by_position = _params(cls(policy, env(), *positional).learn(64))
    by_keyword = _params(cls(policy=policy, env=env(), **chosen).learn(64))
    assert th.equal(by_position, by_keyword)
    assert not th.equal(by_position, _params(cls(policy, env(), seed=4)))  # it trained


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


class HalvingKLController(KLController):
    """A user's controller: beta halves after every update, and it counts the updates it saw (its state)."""

    def __init__(self, initial: float):
        self.value = initial
        self.updates = 0
        self.steps_seen = 0

    def begin_update(self, progress_remaining: float) -> float:
        return self.value

    def end_update(self, kl: float, n_steps: int) -> None:
        self.value /= 2
        self.updates += 1
        self.steps_seen += n_steps


def test_kl_penalty_takes_a_controller_object_whose_state_is_saved(tmp_path) -> None:
    controller = HalvingKLController(0.8)
    model = KLPPO("MlpPolicy", "CartPole-v1", n_steps=64, batch_size=32, n_epochs=2, kl_penalty=controller, seed=0)
    assert model.kl_controller is controller and model.kl_penalty is controller
    logger = _recorded(model)
    model.learn(192)
    logger.flush_pending()
    assert (controller.updates, controller.steps_seen, controller.value) == (3, 192, 0.1)
    assert logger.history["train/kl_coef"] == [0.8, 0.4, 0.2]  # the beta of each update, as the controller gave it
    model.save(tmp_path / "model.zip")
    loaded = KLPPO.load(tmp_path / "model.zip")
    assert isinstance(loaded.kl_controller, HalvingKLController) and loaded.kl_penalty is loaded.kl_controller
    assert (loaded.kl_controller.updates, loaded.kl_controller.value) == (3, 0.1)
    loaded.set_env(make_vec_env("CartPole-v1"))
    loaded.learn(64, reset_num_timesteps=False)
    assert (loaded.kl_controller.updates, loaded.kl_controller.value) == (4, 0.05)


def test_a_built_in_controller_object_is_the_string_setting() -> None:
    kwargs = dict(n_steps=64, batch_size=32, n_epochs=2, seed=0)
    by_name = AdaptiveKLPPO("MlpPolicy", "CartPole-v1", kl_coef=0.5, kl_target=1e-4, **kwargs).learn(192)
    by_object = AdaptiveKLPPO("MlpPolicy", "CartPole-v1", kl_penalty=AdaptiveKLController(0.5, 1e-4), **kwargs).learn(192)
    assert by_object.kl_controller.value == by_name.kl_controller.value != 0.5
    assert th.equal(_params(by_object), _params(by_name))
