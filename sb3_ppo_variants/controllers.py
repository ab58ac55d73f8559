"""KL coefficient (beta) controllers. They are plain picklable objects kept in the model's ``__dict__``,
so ``model.save`` stores the adapted beta and ``Class.load`` restores it."""

from __future__ import annotations

from collections.abc import Callable

from sb3_ppo_variants.schedules import schedule_value

__all__ = ["AdaptiveKLController", "FixedKLController", "KLController", "ProportionalKLController"]


class KLController:
    """Gives beta for the coming policy update, and sees the KL that the update produced.

    :attr value: beta in force (the one of the last update, or the next one after an adaptation)
    """

    value: float

    def begin_update(self, progress_remaining: float) -> float:
        """beta to use for the update about to start."""
        raise NotImplementedError

    def end_update(self, kl: float, n_steps: int) -> None:
        """Called once per policy update with d = the mean KL per step over the rollout (to pi_old, or to the
        reference policy where there is one) and n_steps, the number of steps collected for the update
        (``n_steps * n_envs`` of the rollout). ``n_steps`` is required: the proportional rule's speed is proportional
        to it, and a forgotten one made a controller thousands of times too slow."""


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

    def end_update(self, kl: float, n_steps: int) -> None:
        if kl < self.kl_target / self.tolerance:
            self.value /= self.factor
        elif kl > self.kl_target * self.tolerance:
            self.value *= self.factor

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, kl_target={self.kl_target})"


class ProportionalKLController(KLController):
    """The proportional KL controller of Ziegler et al. 2019 ("Fine-Tuning Language Models from Human Preferences",
    https://arxiv.org/abs/1909.08593, section 2.2), as Hugging Face TRL's ``AdaptiveKLController`` implements it.

    After each policy update, with d the mean KL per step and n the number of steps collected for the update:
    ``beta *= 1 + clip(d / kl_target - 1, -clip, clip) * n / horizon``.

    :param initial: beta before the first update, > 0
    :param kl_target: the KL per step to aim at, > 0
    :param horizon: steps over which a constant error of ``clip`` changes beta by about e^clip (10000 in TRL)
    :param clip: the bound on the proportional error (0.2 in the paper and TRL)
    """

    def __init__(self, initial: float, kl_target: float, horizon: float = 10_000, clip: float = 0.2):
        self.value = float(initial)
        self.kl_target = float(kl_target)
        self.horizon = float(horizon)
        self.clip = float(clip)

    def begin_update(self, progress_remaining: float) -> float:
        return self.value

    def end_update(self, kl: float, n_steps: int) -> None:
        error = min(max(kl / self.kl_target - 1.0, -self.clip), self.clip)
        self.value *= 1.0 + error * n_steps / self.horizon

    def __repr__(self) -> str:
        return f"ProportionalKLController(value={self.value}, kl_target={self.kl_target}, horizon={self.horizon})"
