"""The variant settings of every algorithm class (what is not the host's): one object, validated in one place.

Every class takes them keyword-only after its host's parameters; a setting left at ``None`` takes the class's
default (:attr:`~sb3_ppo_variants.algorithm.VariantAlgorithm.defaults`: a named variant is ``VariantPPO`` with other
defaults, not another signature).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch as th
from stable_baselines3.common.policies import BasePolicy

from sb3_ppo_variants import kl, losses
from sb3_ppo_variants.controllers import KLController
from sb3_ppo_variants.reference import KLReference
from sb3_ppo_variants.schedules import ScheduleLike, check_schedule

__all__ = [
    "KL_PENALTIES",
    "KL_REFERENCE_PLACES",
    "REWARD_KL_ESTIMATORS",
    "KLDirection",
    "KLEstimatorName",
    "KLPenaltyName",
    "KLReferencePlace",
    "SurrogateName",
    "VariantSettings",
]

#: The built-in surrogate names (any name registered in ``losses.SURROGATES`` is accepted too).
SurrogateName = Literal["clipped", "unclipped", "dual_clip", "spo"]
KLPenaltyName = Literal["none", "fixed", "adaptive", "proportional"]
#: The built-in estimators (any name registered with ``kl.register_kl_estimator`` is accepted too); ``"full"`` is
#: the exact KL over the actions, the name TRL gives it for the KL to a reference in the reward.
KLEstimatorName = Literal["exact", "full", "k1", "k2", "k3", "abs"]
KLDirection = Literal["forward", "reverse"]
KLReferencePlace = Literal["loss", "reward"]

KL_PENALTIES: tuple[str, ...] = ("none", "fixed", "adaptive", "proportional")
KL_REFERENCE_PLACES: tuple[str, ...] = ("loss", "reward")
#: The estimators of the KL to a reference in the reward (TRL's ``kl_penalty``: "kl" = k1, "abs", "mse" = k2, "full").
REWARD_KL_ESTIMATORS: tuple[str, ...] = ("k1", "abs", "k2", "k3", "full")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _positive_float(name: str, value: Any, *, allow_none: bool = False, above: float = 0.0) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        allowed = f"a float > {above:g}" + (" or None" if allow_none else "")
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__}: {value!r}")
    if not value > above:
        raise ValueError(f"{name} must be a float > {above:g}, got {value!r}")
    return float(value)


@dataclass
class VariantSettings:
    """The settings of the variant loss, validated on construction (a ``ValueError``/``TypeError`` naming the argument,
    its value and what is allowed). The meaning of each is documented on :class:`~sb3_ppo_variants.algorithm.
    VariantAlgorithm`. ``resolved()`` fills the settings that depend on others (``kl_penalty``, ``kl_estimator``)."""

    surrogate: str | losses.SurrogateFn = "clipped"
    dual_clip: float = 3.0
    kl_penalty: str | KLController | None = "none"
    kl_coef: ScheduleLike = 1.0
    kl_target: float | None = None
    kl_horizon: float = 10_000
    kl_estimator: str | None = None
    kl_direction: str = "forward"
    kl_reference: BasePolicy | KLReference | str | os.PathLike[str] | None = None
    kl_reference_in: str = "loss"

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Each setting's default (the defaults of :class:`~sb3_ppo_variants.algorithm.VariantPPO`)."""
        return {f.name: f.default for f in fields(cls)}

    def __post_init__(self) -> None:
        losses.get_surrogate(self.surrogate)  # a registered name or a function, else a ValueError naming the names
        self.dual_clip = _positive_float("dual_clip", self.dual_clip, above=1.0)  # type: ignore[assignment]
        self.kl_target = _positive_float("kl_target", self.kl_target, allow_none=True)
        self.kl_horizon = _positive_float("kl_horizon", self.kl_horizon)  # type: ignore[assignment]
        self.kl_coef = check_schedule(self.kl_coef, "kl_coef")  # type: ignore[assignment]  # None only with allow_none
        if self.kl_penalty is None:  # ClipKLPPO's default: "fixed" without a kl_target, "adaptive" with one
            self.kl_penalty = "fixed" if self.kl_target is None else "adaptive"
        if not isinstance(self.kl_penalty, KLController):
            _choice("kl_penalty", self.kl_penalty, KL_PENALTIES)
            if self.kl_penalty in ("adaptive", "proportional") and self.kl_target is None:
                raise ValueError(f"kl_target must be given (a float > 0) when kl_penalty={self.kl_penalty!r}")
        self.kl_direction = _choice("kl_direction", self.kl_direction, kl.KL_DIRECTIONS)
        self.kl_reference_in = _choice("kl_reference_in", self.kl_reference_in, KL_REFERENCE_PLACES)
        in_reward = self.kl_reference is not None and self.kl_reference_in == "reward"
        if self.kl_estimator is None:
            self.kl_estimator = "k1" if in_reward else "exact"
        if in_reward:
            _choice("kl_estimator", self.kl_estimator, REWARD_KL_ESTIMATORS)
        else:
            _choice("kl_estimator", self.kl_estimator, tuple(kl.KL_ESTIMATORS))
            if self.kl_estimator != "exact":
                kl.sampled_kl(th.zeros(1), self.kl_estimator, self.kl_direction)  # registered for that direction?
        if isinstance(self.kl_reference, KLReference):  # another model's frozen reference: copied, like a policy
            self.kl_reference = self.kl_reference.policy
        if self.kl_reference is not None:
            self._check_reference_setting()

    def _check_reference_setting(self) -> None:
        if not isinstance(self.kl_reference, (BasePolicy, str, os.PathLike)):
            raise TypeError(
                f"kl_reference must be None, a policy or the path of a saved one, got {type(self.kl_reference).__name__}"
            )
        if self.kl_penalty == "none":
            raise ValueError(
                f"kl_reference={self.kl_reference!r} needs a KL penalty: kl_penalty must be one of {KL_PENALTIES[1:]} "
                "or a KLController, got 'none' (use a variant with a KL penalty, e.g. ClipKLPPO)"
            )
        if self.kl_reference_in == "loss" and self.kl_estimator != "exact":
            raise ValueError(
                f"kl_estimator must be 'exact' with a kl_reference in the loss, got {self.kl_estimator!r} "
                f"(the sampled estimators {REWARD_KL_ESTIMATORS[:-1]} are for kl_reference_in='reward')"
            )
        if self.kl_direction != "forward":
            raise ValueError(
                f"kl_direction={self.kl_direction!r} applies to the KL to pi_old; with a kl_reference the penalty is "
                "KL(pi || pi_ref): leave kl_direction at 'forward'"
            )
