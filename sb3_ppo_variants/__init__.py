"""PPO variants as drop-in Stable-Baselines3 algorithms, and tools to tune and compare them."""

from sb3_ppo_variants.algorithm import NonFiniteLossError, VariantPPO
from sb3_ppo_variants.controllers import AdaptiveKLController, FixedKLController, KLController
from sb3_ppo_variants.population import Population, PopulationEvalCallback
from sb3_ppo_variants.variants import KLPPO, AdaptiveKLPPO, ClipKLPPO, ClipPPO

__version__ = "0.1.0"

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
    "Population",
    "PopulationEvalCallback",
    "VariantPPO",
    "__version__",
]
