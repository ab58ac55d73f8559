"""Names of algorithms -> classes: the one place the study tools (and ``make_model``) look a name up.

- the named variants, ``sb3_ppo_variants.VARIANTS`` (``clip``, ``kl``, ``adaptive_kl``, ``clip_kl``, and any
  variant added there, such as the sb3-contrib hosts' ``maskable_clip_kl`` or ``recurrent_kl``);
- ``variant_ppo``: :class:`~sb3_ppo_variants.VariantPPO` itself, the class of the ablation's factorial cells;
- the baselines: ``sb3_ppo`` (``stable_baselines3.PPO``), ``trpo``, ``maskable_ppo``, ``recurrent_ppo``
  (sb3-contrib's TRPO, MaskablePPO, RecurrentPPO).

Imports nothing optional: :func:`sb3_ppo_variants.hyperparams.make_model` uses it.
"""

from __future__ import annotations

import importlib

from stable_baselines3.common.base_class import BaseAlgorithm

__all__ = ["BASELINES", "PLAIN_VARIANTS", "algorithm_class", "algorithm_names", "plain_variant"]

#: Baseline name -> "module:class"; imported when asked for.
BASELINES = {
    "sb3_ppo": "stable_baselines3:PPO",
    "trpo": "sb3_contrib:TRPO",
    "maskable_ppo": "sb3_contrib:MaskablePPO",
    "recurrent_ppo": "sb3_contrib:RecurrentPPO",
}
#: The named variants on SB3's PPO (what a population can train and what has a search space of its own).
PLAIN_VARIANTS = ("clip", "kl", "adaptive_kl", "clip_kl")
#: Prefixes of the variants hosted on sb3-contrib's algorithms; the rest of the name is the plain variant.
_HOST_PREFIXES = ("maskable_", "recurrent_")
_GENERAL = "variant_ppo"


def algorithm_names() -> list[str]:
    """Every name :func:`algorithm_class` accepts, in the order of the docs."""
    from sb3_ppo_variants import VARIANTS

    return [*VARIANTS, _GENERAL, *BASELINES]


def algorithm_class(name: str | type[BaseAlgorithm]) -> type[BaseAlgorithm]:
    """The class of a name (see the module docstring); a class is returned as it is.

    :raises ValueError: naming the value and the names allowed
    """
    if isinstance(name, type):
        return name
    from sb3_ppo_variants import VARIANTS, VariantPPO

    if name in VARIANTS:
        return VARIANTS[name]
    if name == _GENERAL:
        return VariantPPO
    if name in BASELINES:
        module, _, attribute = BASELINES[name].partition(":")
        return getattr(importlib.import_module(module), attribute)  # type: ignore[no-any-return]
    raise ValueError(f"variant must be one of {algorithm_names()}, got {name!r}")


def plain_variant(name: str) -> str:
    """The variant on SB3's PPO that a contrib-hosted variant is (``maskable_clip_kl`` -> ``clip_kl``): its search
    space is that variant's. Other names are returned as they are."""
    for prefix in _HOST_PREFIXES:
        if name.startswith(prefix) and name[len(prefix) :] in PLAIN_VARIANTS:
            return name[len(prefix) :]
    return name
