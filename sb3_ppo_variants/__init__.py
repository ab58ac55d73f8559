"""PPO variants as drop-in Stable-Baselines3 algorithms, and tools to tune and compare them."""

import gymnasium as _gymnasium

from sb3_ppo_variants.algorithm import NonFiniteLossError, VariantPPO
from sb3_ppo_variants.controllers import AdaptiveKLController, FixedKLController, KLController, ProportionalKLController
from sb3_ppo_variants.variants import KLPPO, AdaptiveKLPPO, ClipKLPPO, ClipPPO

__version__ = "0.1.0"

# The arithmetic environment (sb3_ppo_variants.arithmetic): registered by an entry-point string, imported on make.
if "sb3pv/Arithmetic-v0" not in _gymnasium.registry:
    _gymnasium.register("sb3pv/Arithmetic-v0", entry_point="sb3_ppo_variants.arithmetic.env:ArithmeticEnv")

#: Short names of the named variants, as used by the tuning and ablation tools.
VARIANTS: dict[str, type[VariantPPO]] = {
    "clip": ClipPPO,
    "kl": KLPPO,
    "adaptive_kl": AdaptiveKLPPO,
    "clip_kl": ClipKLPPO,
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
    "NonFiniteLossError",
    "ProportionalKLController",
    "VariantPPO",
    "__version__",
]
