"""PPO variants as drop-in Stable-Baselines3 algorithms, and tools to tune and compare them."""

import gymnasium as _gymnasium

from sb3_ppo_variants.algorithm import (
    MaskableVariantPPO,
    NonFiniteLossError,
    RecurrentVariantPPO,
    VariantAlgorithm,
    VariantPPO,
)
from sb3_ppo_variants.controllers import AdaptiveKLController, FixedKLController, KLController, ProportionalKLController
from sb3_ppo_variants.population import Population, PopulationEvalCallback
from sb3_ppo_variants.variants import (
    KLPPO,
    AdaptiveKLPPO,
    ClipKLPPO,
    ClipPPO,
    MaskableAdaptiveKLPPO,
    MaskableClipKLPPO,
    MaskableClipPPO,
    MaskableKLPPO,
    RecurrentAdaptiveKLPPO,
    RecurrentClipKLPPO,
    RecurrentClipPPO,
    RecurrentKLPPO,
)

__version__ = "0.1.0"

# The arithmetic environment (sb3_ppo_variants.arithmetic): registered by an entry-point string, imported on make.
if "sb3pv/Arithmetic-v0" not in _gymnasium.registry:
    _gymnasium.register("sb3pv/Arithmetic-v0", entry_point="sb3_ppo_variants.arithmetic.env:ArithmeticEnv")

#: Short names of the named variants, as used by the tuning and ablation tools: the four plain ones (on SB3's PPO),
#: then the same four on sb3-contrib's MaskablePPO and RecurrentPPO. A class's ``variant`` attribute names the plain
#: variant it is (``VARIANTS["maskable_clip_kl"].variant == "clip_kl"``).
VARIANTS: dict[str, type[VariantAlgorithm]] = {
    "clip": ClipPPO,
    "kl": KLPPO,
    "adaptive_kl": AdaptiveKLPPO,
    "clip_kl": ClipKLPPO,
    "maskable_clip": MaskableClipPPO,
    "maskable_kl": MaskableKLPPO,
    "maskable_adaptive_kl": MaskableAdaptiveKLPPO,
    "maskable_clip_kl": MaskableClipKLPPO,
    "recurrent_clip": RecurrentClipPPO,
    "recurrent_kl": RecurrentKLPPO,
    "recurrent_adaptive_kl": RecurrentAdaptiveKLPPO,
    "recurrent_clip_kl": RecurrentClipKLPPO,
}

__all__ = [
    "KLPPO",
    "VARIANTS",
    "AdaptiveKLController",
    "AdaptiveKLPPO",
    "ClipKLPPO",
    "ClipPPO",
    "FixedKLController",
    "KLController",
    "MaskableAdaptiveKLPPO",
    "MaskableClipKLPPO",
    "MaskableClipPPO",
    "MaskableKLPPO",
    "MaskableVariantPPO",
    "NonFiniteLossError",
    "Population",
    "PopulationEvalCallback",
    "ProportionalKLController",
    "RecurrentAdaptiveKLPPO",
    "RecurrentClipKLPPO",
    "RecurrentClipPPO",
    "RecurrentKLPPO",
    "RecurrentVariantPPO",
    "VariantAlgorithm",
    "VariantPPO",
    "__version__",
]
