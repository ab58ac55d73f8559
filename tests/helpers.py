"""Helpers shared by test modules (pytest puts tests/ on sys.path: ``from helpers import ...``)."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.logger import Logger

from sb3_ppo_variants import VARIANTS, VariantPPO

#: The registry's plain variants (on SB3's PPO), in order; the sb3-contrib ones are tested in test_contrib.py and
#: test_sb3_contrib.py (and, for tuning and ablation, once the studies pick a contrib variant's plain search space).
PLAIN_VARIANTS = [name for name, cls in VARIANTS.items() if issubclass(cls, VariantPPO)]


class RecordingLogger(Logger):
    """SB3's logger that also keeps every value dumped, per key (a real logger, nothing mocked)."""

    def __init__(self) -> None:
        super().__init__(folder=None, output_formats=[])
        self.history: dict[str, list[float]] = {}

    def dump(self, step: int = 0) -> None:
        for key, value in self.name_to_value.items():
            self.history.setdefault(key, []).append(float(value))
        super().dump(step)

    def flush_pending(self) -> None:
        """SB3 dumps before each train(): the values of the last update are still pending after learn()."""
        self.dump()


def recorded(model: Any) -> RecordingLogger:
    """Attach a fresh RecordingLogger to the model and return it."""
    logger = RecordingLogger()
    model.set_logger(logger)
    return logger


def params(model: Any) -> th.Tensor:
    """All policy parameters as one flat tensor (a copy)."""
    return th.nn.utils.parameters_to_vector(model.policy.parameters()).detach().clone()
