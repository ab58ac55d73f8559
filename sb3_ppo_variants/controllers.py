"""KL coefficient (beta) controllers. They are plain picklable objects kept in the model's ``__dict__``,
so ``model.save`` stores the adapted beta and ``Class.load`` restores it."""

from __future__ import annotations

from collections.abc import Callable

from sb3_ppo_variants.schedules import schedule_value

__all__ = ["AdaptiveKLController", "FixedKLController", "KLController"]


class KLController:
    """Gives beta for the coming policy update, and sees the KL that the update produced.

    :attr value: beta in force (the one of the last update, or the next one after an adaptation)
    """

    value: float

    def begin_update(self, progress_remaining: float) -> float:
        """beta to use for the update about to start."""
        raise NotImplementedError

    def end_update(self, kl: float) -> None:
        """Called once per policy update with d = the mean KL(pi_old || pi) over the rollout."""


class FixedKLController(KLController):
    """beta follows a schedule of training progress (a constant in the paper's "fixed KL penalty").

    :param kl_coef: beta, a float or a function of the remaining progress (from 1 to 0)
    """

    def __init__(self, kl_coef: float | Callable[[float], float]):
        self.kl_coef = kl_coef
        self.value = schedule_value(kl_coef, 1.0)

    def begin_update(self, progress_remaining: float) -> float:
        self.value = schedule_value(self.kl_coef, progress_remaining)
        return self.value

    def __repr__(self) -> str:
        return f"FixedKLController(kl_coef={self.kl_coef!r}, value={self.value})"


class AdaptiveKLController(KLController):
    """The PPO paper's adaptive KL penalty (Schulman et al. 2017, section 4).

    After each policy update, with d the mean KL: ``d < kl_target / tolerance -> beta /= factor``;
    ``d > kl_target * tolerance -> beta *= factor``.

    :param initial: beta before the first update, > 0
    :param kl_target: d_targ, > 0
    :param tolerance: 1.5 in the paper
    :param factor: 2 in the paper
    """

    def __init__(self, initial: float, kl_target: float, tolerance: float = 1.5, factor: float = 2.0):
        self.value = float(initial)
        self.kl_target = float(kl_target)
        self.tolerance = float(tolerance)
        self.factor = float(factor)

    def begin_update(self, progress_remaining: float) -> float:
        return self.value

    def end_update(self, kl: float) -> None:
        if kl < self.kl_target / self.tolerance:
            self.value /= self.factor
        elif kl > self.kl_target * self.tolerance:
            self.value *= self.factor

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, kl_target={self.kl_target})"
