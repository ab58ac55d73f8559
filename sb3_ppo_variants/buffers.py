"""Rollout buffers that also keep, per step, the parameters of the policy's distribution at collection time.

They let the exact KL(pi_old || pi) be computed in the update without a copy of the old policy and
without extra forward passes. The parameters are written by :meth:`store_old_distribution` just
before SB3's ``add()`` for the same step (the algorithm calls it from a forward hook on the policy).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.vec_env import VecNormalize

from sb3_ppo_variants.kl import distribution_param_dim

__all__ = [
    "OldDistributionBufferMixin",
    "OldDistributionDictRolloutBuffer",
    "OldDistributionRolloutBuffer",
    "RolloutBufferSamplesWithDistribution",
    "with_old_distribution",
]


class RolloutBufferSamplesWithDistribution(NamedTuple):
    """SB3's ``RolloutBufferSamples`` fields plus the old distribution's parameters."""

    observations: Any  # th.Tensor, or a dict of them for Dict observation spaces
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    old_dist_params: th.Tensor


class OldDistributionBufferMixin:
    """Adds ``old_dist_params`` (buffer_size, n_envs, d) to an SB3 rollout buffer."""

    old_dist_params: np.ndarray
    buffer_size: int
    n_envs: int
    pos: int
    generator_ready: bool

    def reset(self) -> None:
        width = distribution_param_dim(self.action_space)  # type: ignore[attr-defined]
        self.old_dist_params = np.zeros((self.buffer_size, self.n_envs, width), dtype=np.float32)
        super().reset()  # type: ignore[misc]

    def store_old_distribution(self, params: th.Tensor) -> None:
        """Record the distribution of the step about to be added (call before ``add``)."""
        self.old_dist_params[self.pos] = params.reshape(self.n_envs, -1).cpu().numpy()

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        if not self.generator_ready:
            self.old_dist_params = self.swap_and_flatten(self.old_dist_params)  # type: ignore[attr-defined]
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> Any:
        samples = super()._get_samples(batch_inds, env)  # type: ignore[misc]
        old_dist_params = self.to_torch(self.old_dist_params[batch_inds])  # type: ignore[attr-defined]
        return RolloutBufferSamplesWithDistribution(*samples, old_dist_params)  # type: ignore[call-arg]


class OldDistributionRolloutBuffer(OldDistributionBufferMixin, RolloutBuffer):  # type: ignore[misc]
    """SB3's ``RolloutBuffer`` that also keeps the old distribution's parameters."""


class OldDistributionDictRolloutBuffer(OldDistributionBufferMixin, DictRolloutBuffer):  # type: ignore[misc]
    """SB3's ``DictRolloutBuffer`` (Dict observations) that also keeps the old distribution's parameters."""


_KNOWN: dict[type, type] = {
    RolloutBuffer: OldDistributionRolloutBuffer,
    DictRolloutBuffer: OldDistributionDictRolloutBuffer,
}


def with_old_distribution(buffer_class: type[RolloutBuffer]) -> type[RolloutBuffer]:
    """The buffer class, extended to keep the old distribution (a user's own subclass gets the mixin)."""
    if issubclass(buffer_class, OldDistributionBufferMixin):
        return buffer_class
    if not issubclass(buffer_class, (RolloutBuffer, DictRolloutBuffer)):
        raise TypeError(f"rollout_buffer_class must be a subclass of RolloutBuffer or DictRolloutBuffer, got {buffer_class!r}")
    if buffer_class not in _KNOWN:
        _KNOWN[buffer_class] = type(f"OldDistribution{buffer_class.__name__}", (OldDistributionBufferMixin, buffer_class), {})
    return _KNOWN[buffer_class]
