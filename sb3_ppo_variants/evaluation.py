"""How runs are evaluated, shared by solo runs, populations and the study tools (no optional dependency).

An evaluation is ``n_eval_episodes`` deterministic episodes on an environment of its own, seeded with
``training seed + EVAL_SEED_OFFSET`` so that it is never a training environment of any seed.
"""

from __future__ import annotations

__all__ = ["EVAL_SEED_OFFSET", "evaluation_points"]

#: Evaluation environments are seeded with ``training seed + EVAL_SEED_OFFSET``: never a training seed.
EVAL_SEED_OFFSET = 1_000_003


def evaluation_points(total_timesteps: int, n_evaluations: int) -> list[int]:
    """``n_evaluations`` evenly spaced timesteps ending at ``total_timesteps``."""
    if n_evaluations < 1:
        raise ValueError(f"n_evaluations must be >= 1, got {n_evaluations}")
    return [round(total_timesteps * (i + 1) / n_evaluations) for i in range(n_evaluations)]
