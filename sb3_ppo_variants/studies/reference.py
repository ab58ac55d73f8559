"""Reference scores for min-max normalisation: 0 = a uniformly random policy, 1 = rl-zoo3's published PPO score.

The table ships with the package (``sb3_ppo_variants/data/reference_scores.csv``): the random-policy returns
were measured with gymnasium 1.4.0 (100 episodes, reset seeds 1000-1099, action-space seed 0); the PPO
scores are rl-zoo3's benchmark figures, single runs whose std is over evaluation episodes, not over seeds.
A normalised score of 1 therefore means "as good as one tuned rl-zoo3 PPO run after its full budget".
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["REFERENCE_COLUMNS", "ReferenceScore", "load_reference_scores", "normalize"]

#: Columns a reference table must have (a user's own table may add more).
REFERENCE_COLUMNS = ("env_id", "random_mean", "ppo_reference_mean")


@dataclass(frozen=True)
class ReferenceScore:
    """The two ends of the normalisation of one environment, and where the upper one comes from."""

    env_id: str
    random_mean: float
    ppo_reference_mean: float
    ppo_reference_timesteps: int | None = None
    ppo_reference_source: str = ""

    def normalize(self, score: np.ndarray | float) -> np.ndarray:
        """``(score - random) / (reference - random)``: 0 is a random policy, 1 the reference PPO score."""
        return (np.asarray(score, dtype=float) - self.random_mean) / (self.ppo_reference_mean - self.random_mean)


def load_reference_scores(path: str | Path | None = None) -> dict[str, ReferenceScore]:
    """The reference table, per environment id.

    :param path: a CSV with at least the columns ``env_id, random_mean, ppo_reference_mean``; None for the
        table shipped with the package
    :raises ValueError: when a column is missing or an environment's two ends are equal
    """
    if path is None:
        text = resources.files("sb3_ppo_variants").joinpath("data", "reference_scores.csv").read_text()
        frame = pd.read_csv(io.StringIO(text))
        label = "the package's reference_scores.csv"
    else:
        frame = pd.read_csv(path)
        label = str(path)
    missing = [column for column in REFERENCE_COLUMNS if column not in frame.columns]
    if missing:
        raise ValueError(f"reference scores {label}: missing columns {missing}; required {list(REFERENCE_COLUMNS)}")
    scores: dict[str, ReferenceScore] = {}
    for row in frame.to_dict("records"):
        timesteps = row.get("ppo_reference_timesteps")
        score = ReferenceScore(
            env_id=str(row["env_id"]),
            random_mean=float(row["random_mean"]),
            ppo_reference_mean=float(row["ppo_reference_mean"]),
            ppo_reference_timesteps=None if timesteps is None or pd.isna(timesteps) else int(timesteps),
            ppo_reference_source=str(row.get("ppo_reference_source") or ""),
        )
        if not score.ppo_reference_mean != score.random_mean:
            raise ValueError(f"reference scores {label}: {score.env_id} has random_mean == ppo_reference_mean")
        scores[score.env_id] = score
    return scores


def normalize(scores: np.ndarray | float, env_id: str, references: dict[str, ReferenceScore]) -> np.ndarray:
    """Min-max normalise the returns ``scores`` of ``env_id``.

    :raises KeyError: naming the environments the table has, when ``env_id`` is not among them
    """
    if env_id not in references:
        raise KeyError(f"no reference score for env {env_id!r}; the table has {sorted(references)}")
    return references[env_id].normalize(scores)
