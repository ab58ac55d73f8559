"""The named variants: a choice of loss terms each, a few lines each (the training loop is VariantAlgorithm's).

A choice of terms is a small settings class (``ClipVariant``, ``KLVariant``, ...), composed onto each host base
(:class:`~sb3_ppo_variants.algorithm.VariantPPO` and the sb3-contrib hosts' bases).
Its ``variant`` attribute names the plain variant it is (the key of ``VARIANTS`` whose search space it shares).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from stable_baselines3.common.type_aliases import GymEnv

from sb3_ppo_variants.algorithm import MaskableVariantPPO, RecurrentVariantPPO, VariantPPO
from sb3_ppo_variants.schedules import ScheduleLike

if TYPE_CHECKING:
    from sb3_ppo_variants.algorithm import VariantAlgorithm

    _Settings = VariantAlgorithm
else:
    _Settings = object

__all__ = [
    "KLPPO",
    "AdaptiveKLPPO",
    "AdaptiveKLVariant",
    "ClipKLPPO",
    "ClipKLVariant",
    "ClipPPO",
    "ClipVariant",
    "KLVariant",
    "MaskableAdaptiveKLPPO",
    "MaskableClipKLPPO",
    "MaskableClipPPO",
    "MaskableKLPPO",
    "RecurrentAdaptiveKLPPO",
    "RecurrentClipKLPPO",
    "RecurrentClipPPO",
    "RecurrentKLPPO",
]


class ClipVariant(_Settings):
    """The clipped surrogate and no KL penalty. Takes every argument of the host base but ``surrogate``,
    ``kl_penalty``, ``kl_coef``, ``kl_target`` and ``kl_estimator``."""

    variant: ClassVar[str] = "clip"

    def __init__(self, policy: Any, env: GymEnv | str, **kwargs: Any):
        super().__init__(policy, env, surrogate="clipped", kl_penalty="none", **kwargs)


class KLVariant(_Settings):
    """The paper's "fixed KL penalty": unclipped surrogate r A minus beta * KL(pi_old || pi).

    :param kl_coef: beta >= 0, a float or a schedule (default 1.0)
    :param kl_estimator: "exact" (default), "k1", "k2" or "k3"
    """

    variant: ClassVar[str] = "kl"

    def __init__(
        self,
        policy: Any,
        env: GymEnv | str,
        kl_coef: ScheduleLike = 1.0,
        kl_estimator: str = "exact",
        **kwargs: Any,
    ):
        super().__init__(
            policy, env, surrogate="unclipped", kl_penalty="fixed", kl_coef=kl_coef, kl_estimator=kl_estimator, **kwargs
        )


class AdaptiveKLVariant(_Settings):
    """The paper's "adaptive KL penalty": unclipped surrogate, beta halved or doubled after each update
    to keep the mean KL near ``kl_target``.

    :param kl_coef: initial beta > 0 (default 1.0)
    :param kl_target: d_targ > 0 (default 0.01)
    :param kl_estimator: "exact" (default), "k1", "k2" or "k3"
    :param kl_penalty: the adaptive rule: "adaptive" (the paper's, default) or "proportional" (Ziegler et al. 2019)
    """

    variant: ClassVar[str] = "adaptive_kl"

    def __init__(
        self,
        policy: Any,
        env: GymEnv | str,
        kl_coef: ScheduleLike = 1.0,
        kl_target: float = 0.01,
        kl_estimator: str = "exact",
        kl_penalty: str = "adaptive",
        **kwargs: Any,
    ):
        if kl_penalty not in ("adaptive", "proportional"):
            raise ValueError(f"kl_penalty must be 'adaptive' or 'proportional' for {type(self).__name__}, got {kl_penalty!r}")
        super().__init__(
            policy,
            env,
            surrogate="unclipped",
            kl_penalty=kl_penalty,
            kl_coef=kl_coef,
            kl_target=kl_target,
            kl_estimator=kl_estimator,
            **kwargs,
        )


class ClipKLVariant(_Settings):
    """Clipped surrogate plus a KL penalty: fixed ``kl_coef``, or adaptive when ``kl_target`` is given
    (RLlib's default PPO shape).

    :param kl_coef: beta >= 0 (fixed), or the initial beta > 0 (adaptive); default 0.2
    :param kl_target: None for a fixed beta, else d_targ > 0 of the adaptive rule
    :param kl_estimator: "exact" (default), "k1", "k2" or "k3"
    :param kl_penalty: None (default): "fixed" without ``kl_target``, "adaptive" with it; or any of
        ``KL_PENALTIES`` but "none" (e.g. "proportional", with a ``kl_target``)
    """

    variant: ClassVar[str] = "clip_kl"

    def __init__(
        self,
        policy: Any,
        env: GymEnv | str,
        kl_coef: ScheduleLike = 0.2,
        kl_target: float | None = None,
        kl_estimator: str = "exact",
        kl_penalty: str | None = None,
        **kwargs: Any,
    ):
        if kl_penalty == "none":
            raise ValueError(f"kl_penalty must not be 'none' for {type(self).__name__} (use ClipPPO)")
        super().__init__(
            policy,
            env,
            surrogate="clipped",
            kl_penalty=kl_penalty or ("fixed" if kl_target is None else "adaptive"),
            kl_coef=kl_coef,
            kl_target=kl_target,
            kl_estimator=kl_estimator,
            **kwargs,
        )


class ClipPPO(ClipVariant, VariantPPO):
    """PPO with the clipped surrogate and no KL penalty: the same numbers as ``stable_baselines3.PPO``
    for the same seed and arguments. Takes every argument of :class:`VariantPPO` but ``surrogate``,
    ``kl_penalty``, ``kl_coef``, ``kl_target`` and ``kl_estimator``."""


class KLPPO(KLVariant, VariantPPO):
    """PPO with the paper's "fixed KL penalty" (see :class:`KLVariant`)."""


class AdaptiveKLPPO(AdaptiveKLVariant, VariantPPO):
    """PPO with the paper's "adaptive KL penalty" (see :class:`AdaptiveKLVariant`)."""


class ClipKLPPO(ClipKLVariant, VariantPPO):
    """PPO with the clipped surrogate plus a KL penalty (see :class:`ClipKLVariant`)."""


class MaskableClipPPO(ClipVariant, MaskableVariantPPO):
    """MaskablePPO with the clipped surrogate and no KL penalty: the same numbers as ``sb3_contrib.MaskablePPO``."""


class MaskableKLPPO(KLVariant, MaskableVariantPPO):
    """MaskablePPO with the paper's "fixed KL penalty" over the masked distributions (see :class:`KLVariant`)."""


class MaskableAdaptiveKLPPO(AdaptiveKLVariant, MaskableVariantPPO):
    """MaskablePPO with the paper's "adaptive KL penalty" (see :class:`AdaptiveKLVariant`)."""


class MaskableClipKLPPO(ClipKLVariant, MaskableVariantPPO):
    """MaskablePPO with the clipped surrogate plus a KL penalty (see :class:`ClipKLVariant`)."""


class RecurrentClipPPO(ClipVariant, RecurrentVariantPPO):
    """RecurrentPPO with the clipped surrogate and no KL penalty: the same numbers as ``sb3_contrib.RecurrentPPO``."""


class RecurrentKLPPO(KLVariant, RecurrentVariantPPO):
    """RecurrentPPO with the paper's "fixed KL penalty" (see :class:`KLVariant`)."""


class RecurrentAdaptiveKLPPO(AdaptiveKLVariant, RecurrentVariantPPO):
    """RecurrentPPO with the paper's "adaptive KL penalty" (see :class:`AdaptiveKLVariant`)."""


class RecurrentClipKLPPO(ClipKLVariant, RecurrentVariantPPO):
    """RecurrentPPO with the clipped surrogate plus a KL penalty (see :class:`ClipKLVariant`)."""
