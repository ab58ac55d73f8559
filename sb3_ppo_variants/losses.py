"""The terms of the PPO objective as small pure functions of tensors.

    L(theta) = - S(r, A) + c_vf * V_loss - c_ent * H[pi] + beta * D(pi_old || pi)

Each function returns the term as it enters the loss to *minimise* (surrogates are negated), averaged
over the minibatch: the last axis. Inputs may carry leading dimensions, such as the member dimension of a
population, ``(K, batch)``, with coefficients of shape ``(K, 1)`` (one per member); the result is then ``(K,)``.
They are written in the same operation order as ``stable_baselines3.PPO.train``
so that a clipped variant reproduces SB3's numbers bit for bit.
"""

from __future__ import annotations

import torch as th
from torch.nn import functional as F

__all__ = [
    "clip_fraction",
    "clipped_surrogate_loss",
    "dual_clip_surrogate_loss",
    "entropy_loss",
    "unclipped_surrogate_loss",
    "value_loss",
]


def clipped_surrogate_loss(ratio: th.Tensor, advantages: th.Tensor, clip_range: float | th.Tensor) -> th.Tensor:
    """-E[min(r A, clip(r, 1 - eps, 1 + eps) A)] (Schulman et al. 2017, eq. 7).

    :param ratio: (batch,) pi(a|s) / pi_old(a|s)
    :param advantages: (batch,)
    :param clip_range: eps > 0 (a float, or (K, 1) per member)
    :return: scalar, or (K,) for (K, batch) inputs
    """
    policy_loss_1 = advantages * ratio
    # torch's stubs take a float or a tensor as the bounds, not the union
    policy_loss_2 = advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)  # type: ignore[arg-type]
    return -th.min(policy_loss_1, policy_loss_2).mean(dim=-1)


def dual_clip_surrogate_loss(
    ratio: th.Tensor, advantages: th.Tensor, clip_range: float | th.Tensor, dual_clip: float | th.Tensor
) -> th.Tensor:
    """Dual-clip PPO (Ye et al. 2020, https://arxiv.org/abs/1912.09729): the clipped objective, further bounded
    below by c * A where A < 0, so that a huge ratio on a negative advantage cannot dominate the update.

    -E[ max(min(r A, clip(r, 1 - eps, 1 + eps) A), c A) if A < 0 else min(r A, clip(r, 1 - eps, 1 + eps) A) ]

    :param dual_clip: c > 1
    :return: scalar, or (K,) for (K, batch) inputs
    """
    bounds = 1 - clip_range, 1 + clip_range
    clipped = th.min(advantages * ratio, advantages * th.clamp(ratio, *bounds))  # type: ignore[arg-type]
    bounded = th.where(advantages < 0, th.max(clipped, dual_clip * advantages), clipped)
    return -bounded.mean(dim=-1)


def unclipped_surrogate_loss(ratio: th.Tensor, advantages: th.Tensor) -> th.Tensor:
    """-E[r A], the importance-sampled policy-gradient surrogate (the paper's L^CPI).

    :return: scalar, or (K,) for (K, batch) inputs
    """
    return -(advantages * ratio).mean(dim=-1)


def clip_fraction(ratio: th.Tensor, clip_range: float | th.Tensor) -> th.Tensor:
    """Fraction of samples with |r - 1| > eps (a diagnostic, logged as ``train/clip_fraction``)."""
    return th.mean((th.abs(ratio - 1) > clip_range).float(), dim=-1)


def value_loss(
    values: th.Tensor, old_values: th.Tensor, returns: th.Tensor, clip_range_vf: float | th.Tensor | None = None
) -> th.Tensor:
    """MSE between the TD(lambda) returns and the value prediction, optionally clipped around the old value.

    :param values: (batch,) current predictions
    :param old_values: (batch,) predictions at collection time
    :param returns: (batch,) targets
    :param clip_range_vf: None for no clipping, else the largest allowed change of the prediction
    :return: scalar, or (K,) for (K, batch) inputs
    """
    if clip_range_vf is None:
        values_pred = values
    else:
        values_pred = old_values + th.clamp(values - old_values, -clip_range_vf, clip_range_vf)  # type: ignore[arg-type]
    return F.mse_loss(returns, values_pred, reduction="none").mean(dim=-1)


def entropy_loss(entropy: th.Tensor | None, log_prob: th.Tensor) -> th.Tensor:
    """-E[H[pi]]; when the distribution has no analytic entropy, E[-log pi(a|s)] estimates it.

    :return: scalar, or (K,) for (K, batch) inputs
    """
    if entropy is None:
        return -th.mean(-log_prob, dim=-1)
    return -th.mean(entropy, dim=-1)
