"""Rollout buffers that also keep, per step, the parameters of the policy's distribution at collection time.

They let the exact KL(pi_old || pi) be computed in the update without a copy of the old policy and
without extra forward passes. The parameters are written by :meth:`~OldDistributionBufferMixin.store_distribution`
just before the host's ``add()`` for the same step (the algorithm calls it from a forward hook on the policy).

One mixin serves every host buffer (SB3's ``RolloutBuffer``/``DictRolloutBuffer``, sb3-contrib's maskable and
recurrent ones): the sample type is the base's fields plus the stored ones, ``_get_samples`` keeps the base's
signature, and recurrent minibatches pad the stored parameters with a neutral distribution (logits 0, std 1), so
that a padded step has a finite KL (zero after the validity mask) and a finite gradient.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Generator
from typing import Any

import numpy as np
import torch as th
from sb3_contrib.common.maskable.buffers import MaskableDictRolloutBuffer, MaskableRolloutBuffer
from sb3_contrib.common.maskable.distributions import (
    MaskableCategoricalDistribution,
    MaskableMultiCategoricalDistribution,
    make_masked_proba_distribution,
)
from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer, RecurrentRolloutBuffer
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    make_proba_distribution,
)
from stable_baselines3.common.type_aliases import RolloutBufferSamples

__all__ = [
    "STORED_DISTRIBUTIONS",
    "OldDistributionBufferMixin",
    "OldDistributionDictRolloutBuffer",
    "OldDistributionRolloutBuffer",
    "RolloutBufferSamplesWithDistribution",
    "neutral_distribution_params",
    "samples_with_distributions",
    "with_old_distribution",
]

#: The distributions a buffer keeps per step besides the host's fields, by field name (an attribute of the buffer,
#: (buffer_size, n_envs, d), and a field of its samples, (batch, d)). Each holds :func:`~sb3_ppo_variants.kl.
#: distribution_params` of one policy; adding a stored distribution (say, a reference policy's) is one entry here.
#: ``ref_dist_params`` is the frozen reference policy's (``kl_reference``), kept only where the exact KL to it is needed
#: in the update (``keeps_reference_rows``): elsewhere it is None, in the buffer and in the samples.
STORED_DISTRIBUTIONS: tuple[str, ...] = ("old_dist_params", "ref_dist_params")

_RECURRENT = (RecurrentRolloutBuffer, RecurrentDictRolloutBuffer)
_MASKABLE = (MaskableRolloutBuffer, MaskableDictRolloutBuffer)


def neutral_distribution_params(dist: Distribution) -> np.ndarray:
    """(d,) parameters of a fixed distribution in the layout of :func:`~sb3_ppo_variants.kl.distribution_params`:
    logits 0 (uniform) for the categorical and Bernoulli families, mean 0 and std 1 for Gaussians.

    Its width is the distribution's (a masked MultiBinary is a categorical over 2 per dimension: 2 n logits). It pads
    steps that do not exist (recurrent minibatches), where a zero std would make the KL infinite.
    """
    if isinstance(dist, (CategoricalDistribution, MaskableCategoricalDistribution)):
        return np.zeros(dist.action_dim, dtype=np.float32)
    if isinstance(dist, (MultiCategoricalDistribution, MaskableMultiCategoricalDistribution)):  # incl. MaskableBernoulli
        return np.zeros(int(np.sum(dist.action_dims)), dtype=np.float32)
    if isinstance(dist, BernoulliDistribution):
        return np.zeros(dist.action_dims, dtype=np.float32)
    if isinstance(dist, (DiagGaussianDistribution, StateDependentNoiseDistribution)):
        return np.concatenate([np.zeros(dist.action_dim, dtype=np.float32), np.ones(dist.action_dim, dtype=np.float32)])
    raise TypeError(f"No stored parameters for action distribution {type(dist).__name__}")


def samples_with_distributions(base: type) -> type:
    """The sample type of a host buffer (a NamedTuple class) extended with the :data:`STORED_DISTRIBUTIONS` fields."""
    if base not in _SAMPLE_TYPES:
        fields = [*base._fields, *STORED_DISTRIBUTIONS]  # type: ignore[attr-defined]
        _SAMPLE_TYPES[base] = namedtuple(f"{base.__name__}WithDistribution", fields)  # type: ignore[misc]
    return _SAMPLE_TYPES[base]


_SAMPLE_TYPES: dict[type, type] = {}

#: SB3's ``RolloutBufferSamples`` fields plus the stored distributions' parameters.
RolloutBufferSamplesWithDistribution = samples_with_distributions(RolloutBufferSamples)


class OldDistributionBufferMixin:
    """Adds the :data:`STORED_DISTRIBUTIONS` fields, (buffer_size, n_envs, d) each, to a host rollout buffer."""

    old_dist_params: np.ndarray
    ref_dist_params: np.ndarray | None
    #: whether ``ref_dist_params`` is kept: the reference's full rows per step (for a language model, a vocabulary's
    #: width per token), needed only for the exact KL to the reference in the update
    keeps_reference_rows: bool = False
    #: (buffer_size, n_envs) the KL to the reference of each step at collection, where there is a reference policy: the
    #: exact KL(pi_old || pi_ref), or the estimate at the sampled action that a reward placement subtracts
    reference_kl: np.ndarray
    #: (buffer_size, n_envs) log pi_ref(a_t | s_t) of the action taken, where there is a reference policy
    reference_log_prob: np.ndarray
    #: (n_envs,) the ``dones`` after the last step of the rollout (given to ``compute_returns_and_advantage``)
    last_dones: np.ndarray
    #: beta of a KL to the reference subtracted from each step's reward before GAE (``kl_reference_in="reward"``)
    reward_kl_coef: float = 0.0
    #: (d,) the parameters a padded step gets (see :func:`neutral_distribution_params`)
    neutral_dist_params: np.ndarray
    rewards: np.ndarray
    buffer_size: int
    n_envs: int
    pos: int
    generator_ready: bool

    def reset(self) -> None:
        if not hasattr(self, "neutral_dist_params"):
            space = self.action_space  # type: ignore[attr-defined]
            dist = make_masked_proba_distribution(space) if isinstance(self, _MASKABLE) else make_proba_distribution(space)
            self.neutral_dist_params = neutral_distribution_params(dist)
        for name in STORED_DISTRIBUTIONS:
            kept = name != "ref_dist_params" or self.keeps_reference_rows
            shape = (self.buffer_size, self.n_envs, len(self.neutral_dist_params))
            setattr(self, name, np.zeros(shape, dtype=np.float32) if kept else None)
        self.reference_kl = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.reference_log_prob = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.last_dones = np.zeros(self.n_envs, dtype=np.float32)
        super().reset()  # type: ignore[misc]

    def store_distribution(self, name: str, params: th.Tensor) -> None:
        """Record a distribution of the step about to be added (call before ``add``).

        :param name: one of :data:`STORED_DISTRIBUTIONS`
        :param params: (n_envs, d) from :func:`~sb3_ppo_variants.kl.distribution_params`
        """
        getattr(self, name)[self.pos] = params.reshape(self.n_envs, -1).cpu().numpy()

    def store_old_distribution(self, params: th.Tensor) -> None:
        """Record the collecting policy's distribution of the step about to be added (call before ``add``)."""
        self.store_distribution("old_dist_params", params)

    def store_reference_step(self, log_prob: th.Tensor, kl: th.Tensor) -> None:
        """Record, for the step about to be added (call before ``add``), the reference's log-probability of the
        action taken and the KL to the reference (see :attr:`reference_kl`), (n_envs,) each."""
        self.reference_log_prob[self.pos] = log_prob.reshape(self.n_envs).cpu().numpy()
        self.reference_kl[self.pos] = kl.reshape(self.n_envs).cpu().numpy()

    def responses(self) -> int:
        """The number of episodes (responses, for a language model) that ended within the rollout."""
        ended_inside = self.episode_starts[1:].sum()  # type: ignore[attr-defined]
        return int(ended_inside + np.sum(self.last_dones))

    def compute_returns_and_advantage(self, last_values: th.Tensor, dones: np.ndarray) -> None:
        self.last_dones = np.asarray(dones, dtype=np.float32).reshape(self.n_envs)
        # TRL's PPO: the KL penalty to the reference is part of each step's reward, so GAE spreads it.
        if self.reward_kl_coef:
            self.rewards = self.rewards - self.reward_kl_coef * self.reference_kl
        super().compute_returns_and_advantage(last_values, dones)  # type: ignore[misc]

    def get(self, batch_size: int | None = None) -> Generator[Any, None, None]:
        if not self.generator_ready:
            for name in STORED_DISTRIBUTIONS:
                if getattr(self, name) is not None:
                    setattr(self, name, self.swap_and_flatten(getattr(self, name)))  # type: ignore[attr-defined]
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(self, batch_inds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        # The base's signature passes through: (batch_inds, env) for SB3's and the maskable buffers,
        # (batch_inds, env_change, env) for the recurrent ones.
        samples = super()._get_samples(batch_inds, *args, **kwargs)  # type: ignore[misc]
        stored = [
            None if getattr(self, name) is None else self._stored_samples(getattr(self, name)[batch_inds], samples)
            for name in STORED_DISTRIBUTIONS
        ]
        return samples_with_distributions(type(samples))(*samples, *stored)

    def _stored_samples(self, values: np.ndarray, samples: Any) -> th.Tensor:
        """(batch, d) stored parameters of a minibatch; a recurrent one padded like its other fields, with the
        neutral distribution on the padded steps (those whose ``mask`` is 0)."""
        if not isinstance(self, _RECURRENT):
            return self.to_torch(values)  # type: ignore[attr-defined]
        # ``pad`` is the recurrent buffer's padding of this minibatch's sequences, set by its ``_get_samples``.
        padded = self.pad(values).reshape(-1, values.shape[-1])
        valid = (samples.mask > 1e-8).unsqueeze(1)
        return th.where(valid, padded, th.as_tensor(self.neutral_dist_params, device=padded.device))


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
