"""The named variants: a choice of loss terms each, a few lines each (the training loop is VariantAlgorithm's).

A choice of terms is a small class of defaults (``ClipVariant``, ``KLVariant``, ...), composed onto each host base
(:class:`~sb3_ppo_variants.algorithm.VariantPPO` and the sb3-contrib hosts' bases): a named variant has its host
base's signature (the host's parameters first, then the settings, keyword-only) and differs only by its defaults.
Its ``variant`` attribute names the plain variant it is (the key of ``VARIANTS`` whose search space it shares).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from sb3_ppo_variants.algorithm import MaskableVariantPPO, RecurrentVariantPPO, VariantPPO
from sb3_ppo_variants.controllers import KLController

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
    """The clipped surrogate and no KL penalty (the defaults of :class:`~sb3_ppo_variants.algorithm.VariantPPO`)."""

    variant: ClassVar[str] = "clip"
    defaults: ClassVar[dict[str, Any]] = {"surrogate": "clipped", "kl_penalty": "none"}
    allowed: ClassVar[dict[str, tuple[Any, ...]]] = {"surrogate": ("clipped",), "kl_penalty": ("none",)}


class KLVariant(_Settings):
    """The paper's "fixed KL penalty": unclipped surrogate r A minus beta * KL(pi_old || pi), beta = ``kl_coef``
    (default 1.0, a float or a schedule)."""

    variant: ClassVar[str] = "kl"
    defaults: ClassVar[dict[str, Any]] = {"surrogate": "unclipped", "kl_penalty": "fixed", "kl_coef": 1.0}
    allowed: ClassVar[dict[str, tuple[Any, ...]]] = {"surrogate": ("unclipped",), "kl_penalty": ("fixed", KLController)}


class AdaptiveKLVariant(_Settings):
    """The paper's "adaptive KL penalty": unclipped surrogate, beta (initially ``kl_coef``, default 1.0) halved or
    doubled after each update to keep the mean KL near ``kl_target`` (default 0.01); ``kl_penalty="proportional"``
    for Ziegler et al.'s rule instead."""

    variant: ClassVar[str] = "adaptive_kl"
    defaults: ClassVar[dict[str, Any]] = {
        "surrogate": "unclipped",
        "kl_penalty": "adaptive",
        "kl_coef": 1.0,
        "kl_target": 0.01,
    }
    allowed: ClassVar[dict[str, tuple[Any, ...]]] = {
        "surrogate": ("unclipped",),
        "kl_penalty": ("adaptive", "proportional", KLController),
    }


class ClipKLVariant(_Settings):
    """Clipped surrogate plus a KL penalty (RLlib's default PPO shape): a fixed beta = ``kl_coef`` (default 0.2), or
    the adaptive rule when a ``kl_target`` is given (``kl_penalty`` left at None); any other ``kl_penalty`` too."""

    variant: ClassVar[str] = "clip_kl"
    defaults: ClassVar[dict[str, Any]] = {"surrogate": "clipped", "kl_penalty": None, "kl_coef": 0.2}
    allowed: ClassVar[dict[str, tuple[Any, ...]]] = {
        "surrogate": ("clipped",),
        "kl_penalty": ("fixed", "adaptive", "proportional", KLController),
    }


class ClipPPO(ClipVariant, VariantPPO):
    """PPO with the clipped surrogate and no KL penalty: the same numbers as ``stable_baselines3.PPO``
    for the same seed and arguments (:class:`VariantPPO` with its own defaults)."""


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
