"""Population training: K PPO runs of equal shapes trained together in stacked (K, ...) tensors.

members = [dict(variant="clip_kl", seed=s, kl_coef=0.1) for s in range(8)]
pop = Population("CartPole-v1", members, hyperparams=entry).learn(100_000)
scores = pop.evaluate(n_eval_episodes=10)   # (K,)
models = pop.models()                       # K ordinary SB3 models (ClipKLPPO, ...)
pop.failures                                # per member: None, or why and when it failed
"""

from sb3_ppo_variants.population.allocator import retain_freed_memory
from sb3_ppo_variants.population.members import MemberFailure, check_policy_kwargs, check_spaces
from sb3_ppo_variants.population.population import (
    STRUCTURAL_SETTINGS,
    Population,
    PopulationCallback,
    PopulationEvalCallback,
    PopulationState,
)

__all__ = [
    "STRUCTURAL_SETTINGS",
    "MemberFailure",
    "Population",
    "PopulationCallback",
    "PopulationEvalCallback",
    "PopulationState",
    "check_policy_kwargs",
    "check_spaces",
    "retain_freed_memory",
]
